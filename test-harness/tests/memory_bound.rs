//! 200,000 distinct client IPs must not grow Envoy's memory: every counter Rampart can
//! ever use is created at configure time (see src/slots.rs).

mod common;

use std::time::Duration;

use common::stack;
use rampart_test_harness::http::Client;
use serde_json::json;

const CLIENTS: u32 = 200_000;
const THREADS: u32 = 4;
/// The README's bound for what traffic may add on top of the configured tables,
/// whatever the number of clients: connection buffers, allocator caches, V8 heap noise.
const GROWTH_BOUND_BYTES: u64 = 8 << 20;

fn send_distinct_ips(port: u16, from: u32, to: u32) {
    let mut c = Client::new(port);
    for i in from..to {
        // 100.64.0.0/10 addresses, one per client, as a trusted load balancer in front of
        // Envoy would write them (Envoy appends the LB's own address: trusted_hops 1).
        let xff = format!("100.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 255, i & 255);
        let r = c.get("/", &[("x-forwarded-for", xff.as_bytes())]).expect("request");
        assert!(r.status == 200 || r.status == 429, "status {}", r.status);
    }
}

#[test]
fn distinct_clients_do_not_grow_memory() {
    let plugin = json!({
        "client_ip": {"from": "xff", "trusted_hops": 1},
        "layers": [{"name": "edge", "key": "ip", "algorithm": "sliding_window", "limit": 100, "window": "1m"}]
    });
    let s = stack(&plugin, 1);
    let port = s.envoy.port;
    // Warm up connections, allocator caches and the VM before the baseline.
    send_distinct_ips(port, 0, 5_000);
    let (alloc0, rss0) = (s.envoy.allocated_bytes(), s.envoy.guard.rss_kib() * 1024);
    let per = CLIENTS / THREADS;
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| std::thread::spawn(move || send_distinct_ips(port, t * per, (t + 1) * per)))
        .collect();
    for t in threads {
        t.join().expect("load thread");
    }
    let elapsed = started.elapsed();
    let (alloc1, rss1) = (s.envoy.allocated_bytes(), s.envoy.guard.rss_kib() * 1024);
    let allowed = f64::from(CLIENTS + 5_000);
    s.envoy.metrics_reach(&[("rampart_edge_allowed", allowed)]);
    eprintln!(
        "{CLIENTS} clients in {elapsed:?}: allocated {alloc0} -> {alloc1} bytes, RSS {rss0} -> {rss1} bytes, allowed {allowed}"
    );
    assert!(
        allowed >= f64::from(CLIENTS),
        "every client was new to its slot's counter at least once"
    );
    assert!(
        alloc1 < alloc0 + GROWTH_BOUND_BYTES,
        "allocated grew {} bytes",
        alloc1.saturating_sub(alloc0)
    );
    assert!(
        rss1 < rss0 + GROWTH_BOUND_BYTES,
        "RSS grew {} bytes",
        rss1.saturating_sub(rss0)
    );
    assert!(elapsed < Duration::from_secs(600));
}
