#![allow(dead_code)]
//! Shared setup for the end-to-end tests.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_test_harness::envoy::{Envoy, Options};
use rampart_test_harness::gateway::{self, Gateway, Proxy};
use rampart_test_harness::http::{Client, Response};
use rampart_test_harness::upstream::Upstream;
use serde_json::{json, Value};

pub struct Stack {
    pub envoy: Envoy,
    pub upstream: Upstream,
}

/// An upstream and one Envoy running Rampart with `plugin` on `workers` threads.
pub fn stack(plugin: &Value, workers: u32) -> Stack {
    let upstream = Upstream::start();
    let mut opts = Options::rampart(&plugin.to_string(), upstream.port);
    opts.concurrency = workers;
    let envoy = Envoy::start(&opts);
    Stack { envoy, upstream }
}

/// Reads a shipped example config.
pub fn example(name: &str) -> Value {
    let text = rampart_test_harness::read_project_file(&format!("filters/examples/{name}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("filters/examples/{name}: {e}"))
}

/// Runs `case` on every proxy available here (Envoy; Kong's and APISIX's engines when
/// `../shared` has them), one after the other, naming the proxy when it fails.
pub fn on_every_proxy(case: impl Fn(Proxy)) {
    for proxy in gateway::proxies() {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| case(proxy))) {
            eprintln!("--- the case above failed on {}", proxy.traits().name);
            resume_unwind(e);
        }
    }
}

/// One gateway of `proxy` in front of its own upstream.
pub struct Single {
    pub gateway: Gateway,
    pub upstream: Upstream,
}

pub fn single(proxy: Proxy, plugin: &Value, workers: u32) -> Single {
    let upstream = Upstream::start();
    let gateway = Gateway::start(proxy, &gateway::Options::new(plugin, upstream.port).workers(workers));
    Single { gateway, upstream }
}

/// Sends `n` GETs on one connection and returns the status codes.
pub fn statuses(c: &mut Client, path: &str, headers: &[(&str, &[u8])], n: usize) -> Vec<u16> {
    (0..n).map(|_| c.get(path, headers).expect("request").status).collect()
}

/// Sends `n` GETs with `key` as the API key on one connection, one at a time; the
/// answers and the slowest of them.
pub fn timed(mut c: Client, key: &str, n: usize) -> (Vec<Response>, Duration) {
    let mut slowest = Duration::ZERO;
    let answers = (0..n)
        .map(|_| {
            let t = Instant::now();
            let r = c
                .get("/", &[("x-api-key", key.as_bytes())])
                .expect("every request is answered");
            slowest = slowest.max(t.elapsed());
            r
        })
        .collect();
    (answers, slowest)
}

pub fn count(v: &[u16], status: u16) -> usize {
    v.iter().filter(|s| **s == status).count()
}

/// A plugin config with one cluster layer keyed by API key.
pub fn keyed(sync: &str, limit: u64, failure_mode: &str, fallback: Option<u64>, timeout: &str) -> Value {
    let mut layer = json!({"name": "keys", "key": "header:x-api-key", "algorithm": "fixed_window",
        "limit": limit, "window": "1h", "scope": "cluster", "sync": sync});
    if sync == "async" {
        layer["sync_interval"] = json!("100ms");
    }
    if let Some(f) = fallback {
        layer["fallback"] = json!({"limit": f});
    }
    json!({
        "sidecar": {"upstream": "rampart_sidecar", "timeout": timeout, "key_secret": "test-fleet-secret-0123"},
        "failure_mode": failure_mode,
        "layers": [layer]
    })
}

/// Sends `per_gateway` requests with `key` to each gateway port from its own thread,
/// all at once, `gap` apart; returns how many were admitted.
pub fn hammer(ports: &[u16], key: &str, per_gateway: usize, gap: Duration) -> u64 {
    let ok = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = ports
        .iter()
        .map(|&port| {
            let (ok, key) = (Arc::clone(&ok), key.to_string());
            std::thread::spawn(move || {
                let mut c = Client::new(port);
                for _ in 0..per_gateway {
                    std::thread::sleep(gap);
                    let r = c.get("/", &[("x-api-key", key.as_bytes())]).expect("request");
                    assert!(
                        r.status == 200 || r.status == 429,
                        "unexpected {}: {}",
                        r.status,
                        r.body_text()
                    );
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    ok.load(Ordering::SeqCst)
}
