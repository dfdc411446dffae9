//! The thin host layer: proxy-wasm contexts and hostcalls. Everything that decides
//! lives in the pure core; this module only moves bytes between the proxy and it.

mod abi;
mod logger;
mod shared;
mod sidecar;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::config;
use crate::engine::{Engine, Event, Held, Host, HostError, Paused, SetOutcome, Step, WorkerState, EVENTS};
use crate::host_status::{self, CAS_MISMATCH, NOT_FOUND, OK};
use crate::policy::SyncMode;
use shared::SharedData;

proxy_wasm::main! {{
    logger::install();
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
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
    /// This worker's leases and async views (one VM per worker thread: never shared
    /// across threads).
    worker: RefCell<WorkerState>,
    pending: RefCell<PendingMetrics>,
    /// Shortest `sync_interval` of the async layers, if any.
    report_every_ns: Option<u64>,
    shared: SharedData,
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

#[derive(Default)]
struct Root {
    compiled: Option<Rc<Compiled>>,
    last_flush_ns: u64,
    /// The async report in flight: its token, when it was sent, and the hits it carries.
    report: Option<(u32, u64, crate::cluster::InFlight)>,
}

/// A report unanswered this long is given up (its hits are queued again): a host that
/// never calls back on a timed-out dispatch (Kong before 3.9) must not stop reporting.
const REPORT_GIVE_UP_NS: u64 = 5_000_000_000;

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        let Some((expected, sent_at, sent)) = self.report.take() else {
            return;
        };
        if expected != token {
            self.report = Some((expected, sent_at, sent));
            return;
        }
        let Some(c) = self.compiled.clone() else { return };
        let answer = sidecar::answer(num_headers, body_size);
        let Ok(mut w) = c.worker.try_borrow_mut() else { return };
        let ok = answer.is_some();
        if ok == w.sidecar_failing {
            if ok {
                log::info!("rampart: sidecar reachable again; async layers are exact again");
            } else {
                log::warn!("rampart: sidecar report failed; async layers use their fallback limits");
            }
        }
        w.sidecar_failing = !ok;
        w.views
            .apply_report(sent, answer.as_ref().map(|a| a.results.as_slice()), now_ns());
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        log::info!("rampart {} starting", crate::VERSION);
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match abi::plugin_configuration(size) {
            Ok(Some(b)) => b,
            Ok(None) => Vec::new(),
            Err(s) => {
                log::error!(
                    "rampart: cannot read the plugin configuration: {}",
                    host_status::describe(s)
                );
                return false;
            }
        };
        let policy = match config::compile(&bytes) {
            Ok(p) => p,
            Err(e) => {
                log::error!("rampart: configuration refused: {e}");
                return false;
            }
        };
        let shared = SharedData::probe();
        let seed = match shared.seed() {
            Ok(s) => s,
            Err(why) => {
                log::error!("rampart: {why}");
                return false;
            }
        };
        let mut engine = Engine::new(policy, seed);
        if let Err(why) = shared.create_slots(&engine) {
            log::error!("rampart: {why}");
            return false;
        }
        let metrics = define_metrics(&engine);
        let report_every_ns = engine
            .policy
            .layers
            .iter()
            .filter_map(|l| l.cluster.as_ref().filter(|c| c.sync == SyncMode::Async))
            .map(|c| c.sync_interval_ms * 1_000_000)
            .min();
        let tick_ms = report_every_ns.map_or(METRICS_FLUSH_MS, |ns| ((ns / 1_000_000) as u32).min(METRICS_FLUSH_MS));
        if abi::set_tick_period_ms(tick_ms) != OK {
            log::info!("rampart: this host has no tick; metrics are published every {METRICS_FLUSH_AFTER} counts");
            if report_every_ns.is_some() {
                log::warn!("rampart: without a tick, async cluster layers cannot report: they run as \"sync\" here");
                engine.run_async_as_sync();
            }
        }
        log::info!("rampart: configured {} layer(s)", engine.policy.layers.len());
        let pending = PendingMetrics {
            counts: vec![[0; EVENTS.len()]; engine.policy.layers.len()],
            total: 0,
        };
        let worker = RefCell::new(engine.worker_state());
        if let Some(old) = self.compiled.take() {
            old.flush_metrics();
        }
        self.compiled = Some(Rc::new(Compiled {
            engine,
            metrics,
            worker,
            pending: RefCell::new(pending),
            report_every_ns,
            shared,
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(c) = self.compiled.clone() else { return };
        let now = now_ns();
        if now.saturating_sub(self.last_flush_ns) >= u64::from(METRICS_FLUSH_MS) * 1_000_000 {
            c.flush_metrics();
            self.last_flush_ns = now;
        }
        // The tick runs at the shortest sync_interval, so every tick reports (an
        // elapsed-time check would let jitter stretch the interval towards 2T).
        if c.report_every_ns.is_none() {
            return;
        }
        if let Some((_, sent_at, _)) = &self.report {
            if now.saturating_sub(*sent_at) < REPORT_GIVE_UP_NS {
                return;
            }
            if let (Some((_, _, sent)), Ok(mut w)) = (self.report.take(), c.worker.try_borrow_mut()) {
                log::warn!("rampart: an async report got no answer; its hits are queued again");
                w.views.apply_report(sent, None, now);
                w.sidecar_failing = true;
            }
        }
        let (Some(sidecar), Ok(mut w)) = (c.engine.policy.sidecar.as_ref(), c.worker.try_borrow_mut()) else {
            return;
        };
        let Some((batch, sent)) = w.views.take_report() else {
            return;
        };
        let body = serde_json::to_vec(&batch).unwrap_or_default();
        match sidecar::dispatch(sidecar, sidecar::REPORT_PATH, &body) {
            Ok(token) => self.report = Some((token, now, sent)),
            Err(why) => {
                log::warn!("rampart: {why}");
                w.views.apply_report(sent, None, now);
                w.sidecar_failing = true;
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        // Without a configuration there is nothing to enforce; the host already refused
        // the plugin when `on_configure` returned false.
        let compiled = self.compiled.clone()?;
        Some(Box::new(Stream {
            compiled,
            response_headers: Vec::new(),
            held: Vec::new(),
            paused: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn define_metrics(engine: &Engine) -> MetricIds {
    engine
        .policy
        .layers
        .iter()
        .map(|layer| {
            let mut ids = [None; EVENTS.len()];
            for e in EVENTS {
                let name = format!("rampart_{}_{}", layer.name.replace('-', "_"), e.name());
                ids[e.index()] = abi::define_counter(&name).ok();
            }
            ids
        })
        .collect()
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
        abi::property(&["source", "address"]).ok().flatten()
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

struct Stream {
    compiled: Rc<Compiled>,
    response_headers: Vec<(&'static str, String)>,
    held: Vec<Held>,
    /// Waiting for the sidecar: the call's token and where to resume.
    paused: Option<(u32, Box<Paused>)>,
}

impl Stream {
    fn release(&mut self) {
        let mut host = Hostcalls {
            compiled: &self.compiled,
        };
        if let Some((_, p)) = self.paused.take() {
            self.compiled.engine.abandon(&mut host, *p);
        }
        if !self.held.is_empty() {
            self.compiled.engine.release(&mut host, &mut self.held);
        }
    }

    /// Runs the engine one step: `Pause` while the sidecar is asked, `Continue` when
    /// admitted, `Pause` after sending a rejection. `resumed` is true when the request
    /// was paused before and must be continued explicitly.
    fn step(&mut self, answer: Option<(Box<Paused>, Option<crate::wire::Outcomes>)>, resumed: bool) -> Action {
        let compiled = Rc::clone(&self.compiled);
        let mut host = Hostcalls { compiled: &compiled };
        let Ok(mut worker) = compiled.worker.try_borrow_mut() else {
            // Unreachable on a single-threaded VM; if a host ever re-enters, admit rather
            // than trap.
            return self.admit(resumed);
        };
        let mut step = match answer {
            None => compiled.engine.check(&mut host, &mut worker, now_ns()),
            Some((p, a)) => {
                note_sidecar(&mut worker, a.is_some());
                compiled.engine.resume(&mut host, &mut worker, *p, a, now_ns())
            }
        };
        loop {
            match step {
                Step::Done(verdict) => {
                    drop(worker);
                    self.held = verdict.held;
                    let Some(rejection) = verdict.rejection else {
                        self.response_headers = verdict.response_headers;
                        return self.admit(resumed);
                    };
                    let headers: Vec<(&str, &str)> = rejection.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                    let status =
                        abi::send_local_response(rejection.status, "rampart", rejection.body.as_bytes(), &headers);
                    if status != OK {
                        // The host could not answer for us; letting the request through
                        // is the only way that does not hang the client.
                        log::warn!(
                            "rampart: local response failed ({}); request admitted",
                            host_status::describe(status)
                        );
                        return self.admit(resumed);
                    }
                    return Action::Pause;
                }
                Step::Ask(p, body) => {
                    let Some(sc) = compiled.engine.policy.sidecar.as_ref() else {
                        step = compiled.engine.resume(&mut host, &mut worker, *p, None, now_ns());
                        continue;
                    };
                    match sidecar::dispatch(sc, sidecar::CHECK_PATH, &body) {
                        Ok(token) => {
                            self.paused = Some((token, p));
                            return Action::Pause;
                        }
                        Err(why) => {
                            if !worker.sidecar_failing {
                                log::warn!("rampart: {why}");
                            }
                            note_sidecar(&mut worker, false);
                            step = compiled.engine.resume(&mut host, &mut worker, *p, None, now_ns());
                        }
                    }
                }
            }
        }
    }

    fn admit(&self, resumed: bool) -> Action {
        if resumed {
            let _ = abi::continue_request();
        }
        Action::Continue
    }
}

/// Records whether the sidecar answered, logging only when that changes.
fn note_sidecar(worker: &mut WorkerState, ok: bool) {
    if ok == worker.sidecar_failing {
        if ok {
            log::info!("rampart: sidecar answering again");
        } else {
            log::warn!("rampart: sidecar failed or timed out; failure_mode applies");
        }
    }
    worker.sidecar_failing = !ok;
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        let Some((expected, p)) = self.paused.take() else {
            return;
        };
        if expected != token {
            self.paused = Some((expected, p));
            return;
        }
        let answer = sidecar::answer(num_headers, body_size);
        self.step(Some((p, answer)), true);
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.step(None, false)
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for (name, value) in &self.response_headers {
            let _ = abi::add_header(abi::MAP_RESPONSE_HEADERS, name, value);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.release();
    }
}

impl Drop for Stream {
    /// A stream that ends without `on_log` (hosts differ) still gives its slots back.
    fn drop(&mut self) {
        self.release();
    }
}
