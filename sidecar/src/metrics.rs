//! The sidecar's Prometheus metrics (the `prometheus` crate: one registry, rendered as
//! text on `GET /metrics`). Names are part of what operators alert on: keep them.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub allowed: IntCounter,
    pub rejected: IntCounter,
    pub check_calls: IntCounter,
    pub checked_requests: IntCounter,
    pub recorded: IntCounter,
    pub cache_hits: IntCounter,
    pub coalesced: IntCounter,
    pub store_calls: IntCounter,
    pub errors_transient: IntCounter,
    pub errors_permanent: IntCounter,
    pub bad_requests: IntCounter,
    pub unauthorized: IntCounter,
    pub flagged: IntCounter,
    pub denied: IntCounter,
    /// Hits refused because the queue was full (back-pressure).
    pub refused: IntCounter,
    pub memory_expired: IntCounter,
    pub memory_replaced: IntCounter,
    pub memory_refused: IntCounter,
    pub topology_refreshes: IntCounter,
    /// 1 while the store answers, 0 while it fails.
    pub store_up: IntGauge,
    /// Counter updates sent to Redis as plain pipelined commands, and through the script.
    pub redis_pipelined: IntCounter,
    pub redis_scripted: IntCounter,
    /// How this sidecar learned of guard changes (one Redis, Sentinel): log entries read,
    /// and loads of every guard (at start, after connection errors, entries missing).
    pub guard_entries: IntCounter,
    pub guard_loads: IntCounter,
    store_info: IntGaugeVec,
    pub redis_latency: Histogram,
}

/// Latency buckets, seconds.
const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

// Registration only fails on a duplicate or malformed name, fixed below: a failure is a
// bug in this file, caught by `renders_every_metric`.
#[allow(clippy::expect_used)]
fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric name");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

#[allow(clippy::expect_used)]
fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("metric name");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

#[allow(clippy::expect_used)]
impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let errors = counter_vec(
            &r,
            "rampart_sidecar_store_errors_total",
            "Store errors by class.",
            "class",
        );
        let evictions = counter_vec(
            &r,
            "rampart_sidecar_memory_evictions_total",
            "Memory store entries that made room for new ones: expired (nothing forgiven) or live.",
            "reason",
        );
        let redis_counters = counter_vec(
            &r,
            "rampart_sidecar_redis_counters_total",
            "Counter updates sent to Redis, by path: pipeline (window counters, plain commands) or script \
             (token buckets, distinct clients, and everything while Redis's clock is not known yet).",
            "path",
        );
        let store_up = IntGauge::new(
            "rampart_sidecar_store_up",
            "1 while the store answers, 0 while it fails.",
        )
        .expect("metric name");
        r.register(Box::new(store_up.clone())).expect("metric registered once");
        let store_info =
            IntGaugeVec::new(Opts::new("rampart_sidecar_info", "Store in use."), &["store"]).expect("metric name");
        r.register(Box::new(store_info.clone()))
            .expect("metric registered once");
        let redis_latency = Histogram::with_opts(
            HistogramOpts::new(
                "rampart_sidecar_redis_seconds",
                "Redis round trips: a batch's script call or pipeline, admin calls, health pings.",
            )
            .buckets(LATENCY_BOUNDS.to_vec()),
        )
        .expect("metric name");
        r.register(Box::new(redis_latency.clone()))
            .expect("metric registered once");
        Metrics {
            allowed: counter(
                &r,
                "rampart_sidecar_decisions_allowed_total",
                "Hits admitted by /v1/check.",
            ),
            rejected: counter(
                &r,
                "rampart_sidecar_decisions_rejected_total",
                "Hits rejected by /v1/check.",
            ),
            check_calls: counter(
                &r,
                "rampart_sidecar_check_calls_total",
                "Calls to /v1/check (a gateway worker batches the requests that arrive together).",
            ),
            checked_requests: counter(
                &r,
                "rampart_sidecar_checked_requests_total",
                "Gateway requests checked by /v1/check; over check_calls it is the mean batch size.",
            ),
            recorded: counter(
                &r,
                "rampart_sidecar_hits_recorded_total",
                "Hits recorded by /v1/report.",
            ),
            cache_hits: counter(
                &r,
                "rampart_sidecar_cache_hits_total",
                "Rejections answered from the over-limit cache.",
            ),
            coalesced: counter(
                &r,
                "rampart_sidecar_coalesced_hits_total",
                "Hits merged into another hit's store call.",
            ),
            store_calls: counter(
                &r,
                "rampart_sidecar_store_calls_total",
                "Counter updates sent to the store.",
            ),
            errors_transient: errors.with_label_values(&["transient"]),
            errors_permanent: errors.with_label_values(&["permanent"]),
            bad_requests: counter(
                &r,
                "rampart_sidecar_bad_requests_total",
                "Requests refused as malformed or too large.",
            ),
            unauthorized: counter(
                &r,
                "rampart_sidecar_unauthorized_total",
                "Requests refused for a missing or wrong token.",
            ),
            flagged: counter(
                &r,
                "rampart_sidecar_keys_flagged_total",
                "Hits on keys over their distinct-client limit (action flag).",
            ),
            denied: counter(
                &r,
                "rampart_sidecar_keys_denied_total",
                "Hits refused because the key is revoked or blocked.",
            ),
            refused: counter(
                &r,
                "rampart_sidecar_backpressure_refused_total",
                "Hits refused because the sidecar's queue was full (503).",
            ),
            memory_expired: evictions.with_label_values(&["expired"]),
            memory_replaced: evictions.with_label_values(&["replaced"]),
            memory_refused: counter(
                &r,
                "rampart_sidecar_memory_refused_total",
                "New blocks, flags or revocations a full memory store refused (--max-keys).",
            ),
            topology_refreshes: counter(
                &r,
                "rampart_sidecar_topology_refreshes_total",
                "Times the sidecar followed a Redis Cluster or Sentinel failover to a new master.",
            ),
            store_up,
            redis_pipelined: redis_counters.with_label_values(&["pipeline"]),
            redis_scripted: redis_counters.with_label_values(&["script"]),
            guard_entries: counter(
                &r,
                "rampart_sidecar_guard_feed_entries_total",
                "Revocations, restores and blocks this sidecar read from the guard feed (one Redis, Sentinel).",
            ),
            guard_loads: counter(
                &r,
                "rampart_sidecar_guard_feed_loads_total",
                "Times this sidecar loaded every guard: at start, after connection errors, or when the feed lacked entries.",
            ),
            store_info,
            redis_latency,
            registry: r,
        }
    }

    /// Names the store in `rampart_sidecar_info` (once, at start).
    pub fn set_store(&self, store: &str) {
        self.store_info.with_label_values(&[store]).set(1);
        self.store_up.set(1);
    }

    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(4096);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric() {
        METRICS.set_store("memory");
        METRICS.errors_transient.inc();
        METRICS.redis_latency.observe(0.002);
        let text = METRICS.render();
        for name in [
            "rampart_sidecar_decisions_allowed_total 0",
            "rampart_sidecar_store_errors_total{class=\"transient\"} 1",
            "rampart_sidecar_store_errors_total{class=\"permanent\"} 0",
            "rampart_sidecar_memory_evictions_total{reason=\"replaced\"} 0",
            "rampart_sidecar_topology_refreshes_total 0",
            "rampart_sidecar_redis_counters_total{path=\"pipeline\"} 0",
            "rampart_sidecar_redis_counters_total{path=\"script\"} 0",
            // Other tests of this binary load feeds: the families, not their values.
            "# TYPE rampart_sidecar_guard_feed_entries_total counter",
            "# TYPE rampart_sidecar_guard_feed_loads_total counter",
            "rampart_sidecar_info{store=\"memory\"} 1",
            "rampart_sidecar_store_up 1",
            "rampart_sidecar_redis_seconds_bucket{le=\"0.0025\"} 1",
        ] {
            assert!(text.contains(name), "no {name:?} in\n{text}");
        }
        // One HELP and TYPE per family, as Prometheus requires.
        assert_eq!(text.matches("# TYPE rampart_sidecar_store_errors_total").count(), 1);
    }
}
