//! The thin host layer: proxy-wasm contexts and hostcalls. Everything that decides
//! lives in the pure core; this module only moves bytes between the proxy and it.

mod abi;
mod batch;
mod family;
mod logger;
mod peer;
mod root;
mod shared;
mod sidecar;
mod stream;

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::{Engine, Event, Host, HostError, SetOutcome, WorkerState, EVENTS};
use crate::host_status::{CAS_MISMATCH, NOT_FOUND, OK};
use shared::SharedData;

proxy_wasm::main! {{
    logger::install();
    proxy_wasm::set_root_context(|id| Box::new(root::Root::new(id)));
}}

/// Metric ids per layer, indexed by `Event::index`. `None` where the host refused to
/// define the metric (APISIX ships stubs): counting is then skipped, never fatal.
type MetricIds = Vec<[Option<u32>; EVENTS.len()]>;

/// How often buffered metric counts are pushed to the host.
const METRICS_FLUSH_MS: u32 = 500;
/// Counts buffered before a flush happens on the request path regardless of the tick
/// (hosts without a tick still publish).
const METRICS_FLUSH_AFTER: u64 = 256;

/// Metric counts not yet pushed: every `increment_metric` is a hostcall, so requests
/// count locally and the tick publishes.
struct PendingMetrics {
    counts: Vec<[u64; EVENTS.len()]>,
    total: u64,
}

struct Compiled {
    engine: Engine,
    metrics: MetricIds,
    /// This worker's remembered rejections and async views (one VM per worker thread: never shared
    /// across threads).
    worker: RefCell<WorkerState>,
    pending: RefCell<PendingMetrics>,
    /// Shortest `sync_interval` of the async layers, if any.
    report_every_ns: Option<u64>,
    shared: SharedData,
    peer: peer::PeerAddress,
    family: family::Family,
}

impl Compiled {
    fn flush_metrics(&self) {
        let Ok(mut p) = self.pending.try_borrow_mut() else {
            return;
        };
        if p.total == 0 {
            return;
        }
        for (layer, counts) in p.counts.iter_mut().enumerate() {
            for (event, n) in counts.iter_mut().enumerate() {
                if *n > 0 {
                    if let Some(Some(id)) = self.metrics.get(layer).map(|ids| ids[event]) {
                        let _ = abi::increment(id, *n as i64);
                    }
                    *n = 0;
                }
            }
        }
        p.total = 0;
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `engine::Host` over hostcalls, for one stream.
struct Hostcalls<'a> {
    compiled: &'a Compiled,
}

impl Host for Hostcalls<'_> {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        abi::header(abi::MAP_REQUEST_HEADERS, name).ok().flatten()
    }

    fn peer_address(&mut self) -> Option<Vec<u8>> {
        self.compiled.peer.read()
    }

    fn shared_get(&mut self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
        self.compiled.shared.get(key).map_err(HostError)
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, HostError> {
        match self.compiled.shared.set(key, value, cas) {
            OK => Ok(SetOutcome::Stored),
            CAS_MISMATCH => Ok(SetOutcome::CasMismatch),
            NOT_FOUND => Ok(SetOutcome::CasMismatch),
            other => Err(HostError(other)),
        }
    }

    fn count(&mut self, layer: usize, event: Event) {
        let full = match self.compiled.pending.try_borrow_mut() {
            Ok(mut p) => {
                if let Some(c) = p.counts.get_mut(layer) {
                    c[event.index()] += 1;
                    p.total += 1;
                }
                p.total >= METRICS_FLUSH_AFTER
            }
            Err(_) => false,
        };
        if full {
            self.compiled.flush_metrics();
        }
    }
}

/// Records whether the sidecar answered (a check or a report), logging only when that
/// changes: async layers use their fallback while it fails.
fn note_sidecar(worker: &mut WorkerState, ok: bool) {
    if ok == worker.sidecar_failing {
        if ok {
            log::info!("rampart: sidecar answering again; cluster layers are exact again");
        } else {
            log::warn!("rampart: sidecar failed or timed out; failure_mode and fallback limits apply");
        }
    }
    worker.sidecar_failing = !ok;
}
