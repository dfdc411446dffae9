//! Fixed-size counter tables under many distinct clients, on every proxy: clients within
//! their limits are not refused until the table is nearly full, and an IP rotation of
//! thirty times the table neither refuses steady clients nor resets their counters.

mod common;

use common::{on_every_proxy, single};
use rampart_test_harness::gateway::Proxy;
use rampart_test_harness::http::Client;
use serde_json::json;

/// A client address (behind one trusted proxy: the XFF entry is the client).
fn ip(i: u32) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

fn status(c: &mut Client, client: &str) -> u16 {
    c.get("/", &[("x-forwarded-for", client.as_bytes())])
        .expect("request")
        .status
}

/// A per-IP layer with a small table.
fn edge(limit: u64, slots: u32) -> serde_json::Value {
    json!({
        "client_ip": {"from": "xff", "trusted_hops": 1},
        "layers": [{"name": "edge", "key": "ip", "algorithm": "sliding_window", "limit": limit,
                    "window": "1d", "slots": slots}]
    })
}

/// `table_full` where the host exports metrics (it counts replaced entries).
fn table_full(g: &rampart_test_harness::gateway::Gateway) -> Option<f64> {
    // The tick publishes counts every 500 ms.
    std::thread::sleep(std::time::Duration::from_millis(700));
    g.metrics()
        .map(|m| m.get("rampart_edge_table_full").copied().unwrap_or(0.0))
}

#[test]
fn clients_within_their_limits_are_not_refused_until_the_table_is_nearly_full() {
    const SLOTS: u32 = 1024;
    const LIMIT: u64 = 3;
    on_every_proxy(|proxy: Proxy| {
        for (load, bound) in [(0.25, 0.001), (0.5, 0.001), (0.9, 0.01)] {
            let s = single(proxy, &edge(LIMIT, SLOTS), 1);
            let mut c = s.gateway.client();
            let clients = (f64::from(SLOTS) * load) as u32;
            // One client after another, each sending exactly its limit.
            let wrongly = (0..clients)
                .filter(|&i| (0..LIMIT).any(|_| status(&mut c, &ip(i)) != 200))
                .count();
            let share = wrongly as f64 / f64::from(clients);
            let replaced = table_full(&s.gateway);
            eprintln!(
                "{}: {clients} clients ({:.0}% of {SLOTS} slots): {wrongly} wrongly limited ({:.2}%), \
                 entries replaced: {replaced:?}",
                proxy.traits().name,
                load * 100.0,
                share * 100.0
            );
            assert!(share <= bound, "{:.2}% wrongly limited at {load} load", share * 100.0);
            // Every client owned its counter: a replacement would have forgiven one.
            if let Some(r) = replaced {
                assert!(r / f64::from(clients) <= bound, "{r} entries replaced at {load} load");
            }
            // And the counters are real: each client is at its limit now, but for a
            // client whose entry was replaced (forgiven, as *Memory* in the README says;
            // at most the bound above, and exactly as many as counted where the host
            // has metrics).
            let sample = (0..clients).step_by(37);
            let open = sample.filter(|&i| status(&mut c, &ip(i)) == 200).count();
            let forgiven = replaced.unwrap_or(f64::from(clients) * bound).ceil() as usize;
            assert!(
                open <= forgiven,
                "{open} sampled clients admitted past their limit, {forgiven} entries replaced"
            );
        }
    });
}

#[test]
fn an_ip_rotation_neither_refuses_steady_clients_nor_resets_them() {
    const SLOTS: u32 = 1024;
    const LIMIT: u64 = 5;
    const STEADY: u32 = 300;
    const ONE_SHOTS_BETWEEN: u32 = 50;
    on_every_proxy(|proxy: Proxy| {
        let s = single(proxy, &edge(LIMIT, SLOTS), 1);
        let mut c = s.gateway.client();
        let steady = |k: u32| format!("192.168.{}.{}", k >> 8, k & 255);
        let mut one_shot = 0u32;
        let mut admitted = vec![0u64; STEADY as usize];
        let mut refused_within_limit = 0;
        // Each steady client visits in two bursts (2, then 3 requests: its limit), and
        // between any two visits 50 fresh addresses send one request each: 30,000 in
        // all, thirty times the table.
        for burst in [2, 3] {
            for k in 0..STEADY {
                for _ in 0..burst {
                    if status(&mut c, &steady(k)) == 200 {
                        admitted[k as usize] += 1;
                    } else {
                        refused_within_limit += 1;
                    }
                }
                for _ in 0..ONE_SHOTS_BETWEEN {
                    assert_eq!(status(&mut c, &ip(one_shot)), 200, "one-shot {one_shot}");
                    one_shot += 1;
                }
            }
        }
        // Past their limit now: each is refused, unless the rotation made the table
        // forget it.
        for k in 0..STEADY {
            if status(&mut c, &steady(k)) == 200 {
                admitted[k as usize] += 1;
            }
        }
        let forgiven: u64 = admitted.iter().map(|a| a.saturating_sub(LIMIT)).sum();
        let worst = admitted.iter().max().copied().unwrap_or(0);
        let replaced = table_full(&s.gateway);
        eprintln!(
            "{}: {one_shot} one-shot clients, {STEADY} steady: {refused_within_limit} refused within their \
             limit, {forgiven} requests forgiven (worst client admitted {worst}), entries replaced: {replaced:?}",
            proxy.traits().name
        );
        let share = f64::from(refused_within_limit) / f64::from(STEADY * LIMIT as u32);
        assert!(
            share <= 0.01,
            "{:.2}% of steady requests refused within the limit",
            share * 100.0
        );
        // README: one-shot clients (count 1) never replace a client that has made two
        // requests in the window, so none of these is forgiven anything.
        assert_eq!(worst, LIMIT, "a steady client was admitted past its limit");
        if let Some(r) = replaced {
            assert!(r >= f64::from(one_shot - SLOTS), "the rotation filled the table: {r}");
        }
    });
}
