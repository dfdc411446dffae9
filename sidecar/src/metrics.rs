//! Prometheus text metrics, kept in atomics: decisions, Redis latency, errors, cache.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Latency histogram with fixed bucket bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: [AtomicU64; 12],
    sum_us: AtomicU64,
    count: AtomicU64,
}

const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            bounds: LATENCY_BOUNDS,
            buckets: [const { AtomicU64::new(0) }; 12],
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

pub struct Metrics {
    pub allowed: AtomicU64,
    pub rejected: AtomicU64,
    pub recorded: AtomicU64,
    pub cache_hits: AtomicU64,
    pub coalesced: AtomicU64,
    pub store_calls: AtomicU64,
    pub errors_transient: AtomicU64,
    pub errors_permanent: AtomicU64,
    pub bad_requests: AtomicU64,
    pub flagged: AtomicU64,
    pub denied: AtomicU64,
    pub unauthorized: AtomicU64,
    pub check_calls: AtomicU64,
    pub checked_requests: AtomicU64,
    /// Memory store: entries that left a full map having expired, or while live.
    pub memory_expired: AtomicU64,
    pub memory_replaced: AtomicU64,
    /// Memory store: new blocks, flags or revocations refused by a full map.
    pub memory_refused: AtomicU64,
    pub redis_latency: Histogram,
}

pub static METRICS: Metrics = Metrics {
    allowed: AtomicU64::new(0),
    rejected: AtomicU64::new(0),
    recorded: AtomicU64::new(0),
    cache_hits: AtomicU64::new(0),
    coalesced: AtomicU64::new(0),
    store_calls: AtomicU64::new(0),
    errors_transient: AtomicU64::new(0),
    errors_permanent: AtomicU64::new(0),
    bad_requests: AtomicU64::new(0),
    flagged: AtomicU64::new(0),
    denied: AtomicU64::new(0),
    unauthorized: AtomicU64::new(0),
    check_calls: AtomicU64::new(0),
    checked_requests: AtomicU64::new(0),
    memory_expired: AtomicU64::new(0),
    memory_replaced: AtomicU64::new(0),
    memory_refused: AtomicU64::new(0),
    redis_latency: Histogram::new(),
};

impl Metrics {
    pub fn render(&self, store: &str) -> String {
        let mut out = String::with_capacity(2048);
        let mut counter = |name: &str, help: &str, labels: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{labels} {}",
                v.load(Relaxed)
            );
        };
        counter(
            "rampart_sidecar_decisions_allowed_total",
            "Hits admitted by /v1/check.",
            "",
            &self.allowed,
        );
        counter(
            "rampart_sidecar_decisions_rejected_total",
            "Hits rejected by /v1/check.",
            "",
            &self.rejected,
        );
        counter(
            "rampart_sidecar_check_calls_total",
            "Calls to /v1/check (a gateway worker batches the requests that arrive together).",
            "",
            &self.check_calls,
        );
        counter(
            "rampart_sidecar_checked_requests_total",
            "Gateway requests checked by /v1/check; over check_calls it is the mean batch size.",
            "",
            &self.checked_requests,
        );
        counter(
            "rampart_sidecar_hits_recorded_total",
            "Hits recorded by /v1/report.",
            "",
            &self.recorded,
        );
        counter(
            "rampart_sidecar_cache_hits_total",
            "Rejections answered from the over-limit cache.",
            "",
            &self.cache_hits,
        );
        counter(
            "rampart_sidecar_coalesced_hits_total",
            "Hits merged into another hit's store call.",
            "",
            &self.coalesced,
        );
        counter(
            "rampart_sidecar_store_calls_total",
            "Counter updates sent to the store.",
            "",
            &self.store_calls,
        );
        counter(
            "rampart_sidecar_store_errors_total",
            "Store errors by class.",
            "{class=\"transient\"}",
            &self.errors_transient,
        );
        counter(
            "rampart_sidecar_store_errors_total",
            "Store errors by class.",
            "{class=\"permanent\"}",
            &self.errors_permanent,
        );
        counter(
            "rampart_sidecar_bad_requests_total",
            "Requests refused as malformed or too large.",
            "",
            &self.bad_requests,
        );
        counter(
            "rampart_sidecar_unauthorized_total",
            "Requests refused for a missing or wrong token.",
            "",
            &self.unauthorized,
        );
        counter(
            "rampart_sidecar_memory_evictions_total",
            "Memory store entries that made room for new ones: expired (nothing forgiven) or live.",
            "{reason=\"expired\"}",
            &self.memory_expired,
        );
        counter(
            "rampart_sidecar_memory_evictions_total",
            "Memory store entries that made room for new ones: expired (nothing forgiven) or live.",
            "{reason=\"replaced\"}",
            &self.memory_replaced,
        );
        counter(
            "rampart_sidecar_memory_refused_total",
            "New blocks, flags or revocations a full memory store refused (--max-keys).",
            "",
            &self.memory_refused,
        );
        self.redis_latency
            .render(&mut out, "rampart_sidecar_redis_seconds", "Redis script latency.");
        let _ = writeln!(out, "# HELP rampart_sidecar_info Store in use.\n# TYPE rampart_sidecar_info gauge\nrampart_sidecar_info{{store=\"{store}\"}} 1");
        out
    }
}
