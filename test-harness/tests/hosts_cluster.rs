//! Cluster layers on every proxy: gateways of one kind sharing Redis through their
//! sidecars (sync exact, async within its bound), and what clients see when the sidecar
//! is down, refuses the call, errors or never answers. Host differences come from the
//! host table (`gateway::Traits`).

mod common;

use std::time::{Duration, Instant};

use common::{hammer, keyed, on_every_proxy, timed};
use rampart_test_harness::gateway::{Gateway, Options, Proxy};
use rampart_test_harness::http::Response;
use rampart_test_harness::redis::RedisNode;
use rampart_test_harness::sidecar::Sidecar;
use rampart_test_harness::upstream::{Answer, Silent, Upstream};
use serde_json::Value;

/// Gateways of one proxy, each with its own sidecar, all sharing one Redis.
struct Fleet {
    gateways: Vec<Gateway>,
    upstream: Upstream,
    _sidecars: Vec<Sidecar>,
    _redis: RedisNode,
}

fn fleet(proxy: Proxy, n: usize, plugin: &Value) -> Fleet {
    let redis = RedisNode::start();
    let upstream = Upstream::start();
    let sidecars: Vec<Sidecar> = (0..n).map(|_| Sidecar::start(&["--redis", &redis.url()])).collect();
    let gateways = sidecars
        .iter()
        .map(|sc| Gateway::start(proxy, &Options::new(plugin, upstream.port).with_sidecar(sc.port)))
        .collect();
    Fleet {
        gateways,
        upstream,
        _sidecars: sidecars,
        _redis: redis,
    }
}

#[test]
fn sync_admits_exactly_the_limit_across_gateways_sharing_redis() {
    on_every_proxy(|proxy| {
        let f = fleet(proxy, 2, &keyed("sync", 40, "closed", None, "500ms"));
        assert_eq!(
            hammer(&ports(&f.gateways), "shared-key", 30, Duration::ZERO),
            40,
            "60 requests over 2 gateways, limit 40"
        );
        assert_eq!(f.upstream.served(), 40);
        // Headers carry the fleet-wide numbers.
        let r = f.gateways[1].client().get("/", &[("x-api-key", b"fresh")]).unwrap();
        assert_eq!(r.header_u64("x-ratelimit-remaining"), Some(39));
        assert_eq!(hammer(&ports(&f.gateways[..1]), "fresh", 1, Duration::ZERO), 1);
        assert_eq!(
            f.gateways[1]
                .client()
                .get("/", &[("x-api-key", b"fresh")])
                .unwrap()
                .header_u64("x-ratelimit-remaining"),
            Some(37)
        );
    });
}

#[test]
fn async_stays_within_the_stated_bound_across_gateways() {
    on_every_proxy(|proxy| {
        const LIMIT: u64 = 60;
        let f = fleet(proxy, 3, &keyed("async", LIMIT, "open", None, "500ms"));
        // Paced at about 100 requests/s per gateway, so the bound is tighter than 3x limit.
        let started = Instant::now();
        let admitted = hammer(&ports(&f.gateways), "async-key", 100, Duration::from_millis(10));
        let elapsed = started.elapsed().as_secs_f64();
        if !proxy.traits().async_reports {
            // No tick to report on: async layers run as sync there, exactly.
            assert_eq!(admitted, LIMIT);
            return;
        }
        // README: limit + (N - 1) * min(limit, λ (T + d)), N = 3 workers, T = 100 ms; λ
        // is one gateway's request rate in this run, d a generous 50 ms round trip.
        let lambda = 100.0 / elapsed;
        let bound = LIMIT + 2 * (LIMIT.min((lambda * 0.15).ceil() as u64));
        eprintln!("async: admitted {admitted} of 300 in {elapsed:.2}s (λ {lambda:.0}/s per gateway), bound {bound}");
        assert!(
            admitted >= LIMIT,
            "admitted {admitted}: async must not under-admit a fresh key"
        );
        assert!(admitted <= bound, "admitted {admitted} > bound {bound}");
        assert!(
            bound < 3 * LIMIT,
            "the pacing should make the bound meaningful ({bound})"
        );
        // Once the reports have landed every gateway knows the key is spent.
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(hammer(&ports(&f.gateways), "async-key", 5, Duration::ZERO), 0);
    });
}

fn ports(gateways: &[Gateway]) -> Vec<u16> {
    gateways.iter().map(Gateway::port).collect()
}

/// The ways a sidecar call fails.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Nothing listens: connection refused.
    Down,
    /// The sidecar refuses the call (wrong token: 401).
    Refusing,
    /// It answers 500.
    Erroring,
    /// It accepts and never answers: the call times out.
    Silent,
}

/// A sidecar address that fails as `fault` says, and what keeps it failing.
fn failing_sidecar(fault: Fault) -> (u16, Box<dyn std::any::Any>) {
    match fault {
        Fault::Down => {
            let mut sc = Sidecar::start(&[]);
            sc.kill();
            (sc.port, Box::new(sc))
        }
        Fault::Refusing => {
            let sc = Sidecar::start(&["--token", "the-fleet-token"]);
            (sc.port, Box::new(sc))
        }
        Fault::Erroring => {
            let up = Upstream::answering(|_, _| Answer {
                status: "500 Internal Server Error",
                content_type: "text/plain",
                body: b"boom".to_vec(),
            });
            (up.port, Box::new(up))
        }
        Fault::Silent => {
            let s = Silent::start();
            (s.port, Box::new(s))
        }
    }
}

/// A refusal's JSON body, where the host keeps bodies after this fault.
fn assert_refusal(proxy: Proxy, fault: Fault, r: &Response, error: &str) {
    assert!(r.header_u64("retry-after").is_some_and(|s| s >= 1), "{:?}", r.headers);
    let answered = matches!(fault, Fault::Refusing | Fault::Erroring);
    if answered || proxy.traits().body_after_failed_call {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        assert_eq!(body["error"], error, "{}", r.body_text());
        assert_eq!(body["layer"], "keys");
    } else {
        assert!(r.body.is_empty(), "{}", r.body_text());
    }
}

#[test]
fn failure_modes_hold_when_the_sidecar_is_down_refusing_erroring_or_silent() {
    on_every_proxy(|proxy| {
        let upstream = Upstream::start();
        for fault in [Fault::Down, Fault::Refusing, Fault::Erroring, Fault::Silent] {
            let (port, _keep) = failing_sidecar(fault);
            let opts = |plugin: &Value| Options::new(plugin, upstream.port).with_sidecar(port);

            let open = Gateway::start(proxy, &opts(&keyed("sync", 5, "open", Some(2), "250ms")));
            let (answers, slowest) = timed(open.client(), "k", 4);
            let got: Vec<u16> = answers.iter().map(|r| r.status).collect();
            assert_eq!(got, [200, 200, 429, 429], "{fault:?}, open: the fallback limit 2 holds");
            assert_refusal(proxy, fault, &answers[2], "rate_limited");
            assert!(
                slowest < Duration::from_millis(1000),
                "{fault:?}: a request waited {slowest:?}"
            );
            open.metrics_reach(&[("rampart_keys_sidecar_errors", 4.0), ("rampart_keys_fail_open", 4.0)]);

            let closed = Gateway::start(proxy, &opts(&keyed("sync", 5, "closed", None, "250ms")));
            let (answers, slowest) = timed(closed.client(), "k", 2);
            assert!(answers.iter().all(|r| r.status == 503), "{fault:?}, closed");
            assert_refusal(proxy, fault, &answers[0], "rate_limiter_unavailable");
            assert!(
                slowest < Duration::from_millis(1000),
                "{fault:?}: a request waited {slowest:?}"
            );
        }
        assert_eq!(upstream.served(), 2 * 4, "only fallback admissions reached the service");
    });
}

#[test]
fn sidecar_killed_fail_open_uses_fallback_then_exact_again() {
    on_every_proxy(|proxy| {
        let redis = RedisNode::start();
        let mut sidecar = Sidecar::start(&["--redis", &redis.url()]);
        let port = sidecar.port;
        let upstream = Upstream::start();
        let plugin = keyed("sync", 5, "open", Some(2), "250ms");
        let g = Gateway::start(proxy, &Options::new(&plugin, upstream.port).with_sidecar(port));
        let statuses = |key: &str, n| timed(g.client(), key, n).0.iter().map(|r| r.status).collect::<Vec<_>>();
        assert_eq!(statuses("k1", 6), [200, 200, 200, 200, 200, 429]);
        sidecar.kill();
        assert_eq!(
            statuses("k2", 4),
            [200, 200, 429, 429],
            "fallback limit 2 while the sidecar is gone"
        );
        // Back on the same port: exact again, and k1's counter survived in Redis.
        let _sidecar = Sidecar::start_on(port, &["--redis", &redis.url()]);
        assert_eq!(statuses("k1", 1), [429]);
        assert_eq!(statuses("k3", 6), [200, 200, 200, 200, 200, 429]);
    });
}
