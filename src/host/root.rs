//! The root context: configure (compile, probe the host, create the tables), the tick
//! (publish metrics, send async reports) and the answers to those reports.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use super::batch;
use super::family::Family;
use super::shared::SharedData;
use super::stream::Stream;
use super::{
    abi, note_sidecar, now_ns, sidecar, Compiled, MetricIds, PendingMetrics, METRICS_FLUSH_AFTER, METRICS_FLUSH_MS,
};
use crate::config;
use crate::engine::{Engine, EVENTS};
use crate::host_status::{self, OK};
use crate::policy::SyncMode;

#[derive(Default)]
pub(super) struct Root {
    /// This root's context id: batched sync checks are resumed from here.
    id: u32,
    compiled: Option<Rc<Compiled>>,
    last_flush_ns: u64,
    /// The async report in flight: its token, when it was sent, and the hits it carries.
    report: Option<(u32, u64, crate::cluster::InFlight)>,
}

impl Root {
    pub(super) fn new(id: u32) -> Root {
        Root { id, ..Root::default() }
    }
}

/// A report unanswered this long is given up (its hits are queued again): a host that
/// never calls back on a timed-out dispatch (Kong before 3.9) must not stop reporting.
const REPORT_GIVE_UP_NS: u64 = 5_000_000_000;

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        if batch::on_answer(token, num_headers, body_size) {
            return;
        }
        let Some((expected, sent_at, sent)) = self.report.take() else {
            return;
        };
        if expected != token {
            self.report = Some((expected, sent_at, sent));
            return;
        }
        let Some(c) = self.compiled.clone() else { return };
        let answer = sidecar::reply(num_headers, body_size).outcomes();
        let Ok(mut w) = c.worker.try_borrow_mut() else { return };
        note_sidecar(&mut w, answer.is_some());
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
        let ticks = abi::set_tick_period_ms(tick_ms) == OK;
        if !ticks {
            log::info!("rampart: this host has no tick; metrics are published every {METRICS_FLUSH_AFTER} counts");
            if report_every_ns.is_some() {
                log::warn!("rampart: without a tick, async cluster layers cannot report: they run as \"sync\" here");
                engine.run_async_as_sync();
            }
        }
        let family = Family::detect(&shared);
        engine.xff_ends_with_peer = family.xff_ends_with_peer();
        if engine
            .policy
            .layers
            .iter()
            .any(|l| l.sync_mode() == Some(SyncMode::Sync))
            && ticks
            && family.batches()
        {
            if let Some(name) = wake_queue_name() {
                batch::enable(self.id, &name);
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
            peer: super::peer::PeerAddress::new(family.nginx_variables()),
            family,
        }));
        true
    }

    fn on_queue_ready(&mut self, queue: u32) {
        batch::on_wake(queue);
    }

    fn on_tick(&mut self) {
        batch::on_tick();
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
                note_sidecar(&mut w, false);
            }
        }
        let (Some(sidecar), Ok(mut w)) = (c.engine.policy.sidecar.as_ref(), c.worker.try_borrow_mut()) else {
            return;
        };
        let Some((batch, sent)) = w.views.take_report() else {
            return;
        };
        let body = serde_json::to_vec(&batch).unwrap_or_default();
        match sidecar::dispatch(sidecar, sidecar::REPORT_PATH, &body, sidecar.timeout_ms) {
            Ok(token) => self.report = Some((token, now, sent)),
            Err(why) => {
                log::warn!("rampart: {why}");
                w.views.apply_report(sent, None, now);
                note_sidecar(&mut w, false);
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a configuration there is nothing to enforce; the host already refused
        // the plugin when `on_configure` returned false.
        let compiled = self.compiled.clone()?;
        Some(Box::new(Stream::new(context_id, compiled)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A queue name of this VM's own: queues are per `vm_id`, and every worker's root must
/// be woken by its own requests only.
fn wake_queue_name() -> Option<String> {
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).ok()?;
    Some(format!("rampart/v1/wake/{:016x}", u64::from_le_bytes(r)))
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
