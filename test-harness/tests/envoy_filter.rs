//! Rampart inside a real Envoy: keys, algorithms, headers, shadow mode, metrics, XFF,
//! bad input. Each test starts its own upstream and Envoy on free loopback ports.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{example, stack};
use rampart_test_harness::envoy::{Envoy, Options};
use rampart_test_harness::http::Client;
use rampart_test_harness::process::wait_for;
use rampart_test_harness::upstream::Upstream;
use serde_json::json;

/// Sends `n` GETs on one connection and returns the status codes.
fn statuses(c: &mut Client, path: &str, headers: &[(&str, &[u8])], n: usize) -> Vec<u16> {
    (0..n).map(|_| c.get(path, headers).expect("request").status).collect()
}

fn count(v: &[u16], status: u16) -> usize {
    v.iter().filter(|s| **s == status).count()
}

#[test]
fn shipped_example_limits_api_keys_by_tier_and_reports_headers() {
    let s = stack(&example("edge-and-keys.json"), 1);
    let mut c = s.envoy.client();
    let key: &[(&str, &[u8])] = &[("x-api-key", b"alice")];
    for expected_remaining in (0..5).rev() {
        let r = c.get("/", key).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header_u64("x-ratelimit-limit"), Some(5));
        assert_eq!(r.header_u64("x-ratelimit-remaining"), Some(expected_remaining));
        let reset = r.header_u64("x-ratelimit-reset").expect("reset header");
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    let r = c.get("/", key).unwrap();
    assert_eq!(r.status, 429);
    let retry = r.header_u64("retry-after").expect("retry-after");
    assert!((1..=60).contains(&retry));
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
    assert_eq!(
        body,
        json!({"error": "rate_limited", "layer": "keys", "retry_after": retry})
    );
    // The paid tier has its own, larger limit (and bob his own counter).
    let paid: &[(&str, &[u8])] = &[("x-api-key", b"bob"), ("x-plan", b"paid")];
    assert_eq!(count(&statuses(&mut c, "/", paid, 55), 200), 50);
    // The IP layer (100/min) comes first, so it charged all 6 + 55 requests, including
    // those the key layer then refused; without a key only it applies.
    let got = statuses(&mut c, "/", &[], 60);
    assert_eq!(count(&got, 200), 100 - 6 - 55);
    assert_eq!(
        s.upstream.served(),
        5 + 50 + 39,
        "rejected requests never reach the upstream"
    );
}

#[test]
fn every_key_kind_gets_its_own_counters() {
    let layer = |name: &str, prefix: &str, key: serde_json::Value| {
        json!({"name": name, "match": {"path_prefix": prefix}, "key": key,
               "algorithm": "fixed_window", "limit": 2, "window": "1h"})
    };
    let plugin = json!({
        "client_ip": {"from": "xff", "trusted_hops": 1},
        "layers": [
            layer("by-ip", "/ip", json!("ip")),
            layer("by-header", "/header", json!("header:x-user")),
            layer("by-query", "/query", json!("query:user")),
            layer("by-both", "/both", json!(["header:x-user", "ip"])),
            layer("by-route", "/route", json!("route")),
            layer("everyone", "/global", json!("global")),
        ]
    });
    let s = stack(&plugin, 1);
    let mut c = s.envoy.client();
    let ip = |a: &'static str| -> (&'static str, &'static [u8]) { ("x-forwarded-for", a.as_bytes()) };
    let user = |u: &'static str| -> (&'static str, &'static [u8]) { ("x-user", u.as_bytes()) };

    assert_eq!(statuses(&mut c, "/ip", &[ip("198.51.100.1")], 3), [200, 200, 429]);
    assert_eq!(statuses(&mut c, "/ip", &[ip("198.51.100.2")], 1), [200]);

    assert_eq!(statuses(&mut c, "/header", &[user("ann")], 3), [200, 200, 429]);
    assert_eq!(statuses(&mut c, "/header", &[user("ben")], 1), [200]);
    assert_eq!(
        statuses(&mut c, "/header", &[], 5),
        [200; 5],
        "no key: the layer does not apply"
    );

    assert_eq!(statuses(&mut c, "/query?user=cy", &[], 3), [200, 200, 429]);
    assert_eq!(
        statuses(&mut c, "/query?user=%63y", &[], 1),
        [429],
        "percent-encoding is the same key"
    );
    assert_eq!(statuses(&mut c, "/query?user=dee", &[], 1), [200]);

    assert_eq!(
        statuses(&mut c, "/both", &[user("ann"), ip("198.51.100.1")], 3),
        [200, 200, 429]
    );
    assert_eq!(statuses(&mut c, "/both", &[user("ann"), ip("198.51.100.9")], 1), [200]);

    assert_eq!(statuses(&mut c, "/route/a", &[], 1), [200]);
    assert_eq!(
        statuses(&mut c, "/route/b", &[ip("198.51.100.7")], 2),
        [200, 429],
        "one counter per route layer"
    );

    assert_eq!(statuses(&mut c, "/global", &[ip("203.0.113.1")], 1), [200]);
    assert_eq!(statuses(&mut c, "/global", &[ip("203.0.113.2")], 2), [200, 429]);
}

#[test]
fn spoofed_forwarded_for_never_becomes_the_key() {
    // One trusted load balancer in front of Envoy. Envoy (use_remote_address: true)
    // appends the connecting peer, so the header Rampart reads ends in
    // "<what the LB saw>, <the LB>" and trusted_hops 1 picks what the LB saw.
    let plugin = json!({
        "client_ip": {"from": "xff", "trusted_hops": 1},
        "layers": [{"name": "edge", "key": "ip", "algorithm": "fixed_window", "limit": 3, "window": "1h"}]
    });
    let s = stack(&plugin, 1);
    let mut c = s.envoy.client();
    // A client rotates the left part it controls; the LB's entry does not change.
    let mut got = Vec::new();
    for i in 0..6 {
        let xff = format!("10.0.0.{i}, 6.6.6.{i}, 192.0.2.44");
        got.push(c.get("/", &[("x-forwarded-for", xff.as_bytes())]).unwrap().status);
    }
    assert_eq!(got, [200, 200, 200, 429, 429, 429]);
    // Another client behind the LB has its own counter.
    assert_eq!(statuses(&mut c, "/", &[("x-forwarded-for", b"192.0.2.45")], 1), [200]);
    // No header at all: the request skipped the LB, so its own address is the key.
    assert_eq!(statuses(&mut c, "/", &[], 4), [200, 200, 200, 429]);
}

#[test]
fn algorithms_fixed_sliding_and_token_bucket() {
    let plugin = json!({"layers": [
        {"name": "fixed", "match": {"path_prefix": "/fixed"}, "key": "route", "algorithm": "fixed_window", "limit": 4, "window": "1h"},
        {"name": "sliding", "match": {"path_prefix": "/sliding"}, "key": "route", "algorithm": "sliding_window", "limit": 4, "window": "1h"},
        {"name": "bucket", "match": {"path_prefix": "/bucket"}, "key": "route", "algorithm": "token_bucket", "limit": 1, "window": "1m", "burst": 3},
        {"name": "refill", "match": {"path_prefix": "/refill"}, "key": "route", "algorithm": "token_bucket", "limit": 10, "window": "1s", "burst": 1}
    ]});
    let s = stack(&plugin, 1);
    let mut c = s.envoy.client();
    assert_eq!(statuses(&mut c, "/fixed", &[], 6), [200, 200, 200, 200, 429, 429]);
    assert_eq!(statuses(&mut c, "/sliding", &[], 6), [200, 200, 200, 200, 429, 429]);
    // Burst of 3, then one token a minute: no timing can blur the outcome.
    assert_eq!(statuses(&mut c, "/bucket", &[], 4), [200, 200, 200, 429]);
    let over = c.get("/bucket", &[]).unwrap();
    assert_eq!(over.status, 429);
    assert!(
        over.header_u64("retry-after").is_some_and(|s| (50..=60).contains(&s)),
        "{:?}",
        over.headers
    );
    // Refills at 10/s into a bucket of 1: after 150 ms a token is there again.
    assert_eq!(c.get("/refill", &[]).unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(c.get("/refill", &[]).unwrap().status, 200);
}

#[test]
fn concurrency_counts_requests_in_flight_and_releases_on_end_and_reset() {
    let plugin = json!({"layers": [
        {"name": "orders", "match": {"path_prefix": "/orders", "methods": ["POST"]}, "key": "route",
         "algorithm": "concurrency", "limit": 2, "status": 503}
    ]});
    let s = stack(&plugin, 2);
    let port = s.envoy.port;
    let held: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                Client::new(port)
                    .request("POST", "/orders?hold_ms=1500", &[])
                    .unwrap()
                    .status
            })
        })
        .collect();
    wait_for("two requests held by the upstream", Duration::from_secs(10), || {
        (s.upstream.in_flight() == 2).then_some(())
    });
    let mut c = s.envoy.client();
    let r = c.request("POST", "/orders", &[]).unwrap();
    assert_eq!(r.status, 503);
    assert!(r.header_u64("retry-after").is_some_and(|v| v >= 1));
    assert!(r.body_text().contains("\"layer\":\"orders\""));
    assert_eq!(c.get("/orders", &[]).unwrap().status, 200, "GET is not matched");
    for h in held {
        assert_eq!(h.join().unwrap(), 200);
    }
    // Both finished: the slots are back.
    assert_eq!(c.request("POST", "/orders", &[]).unwrap().status, 200);

    // Clients that hang up mid-request reset their streams: the slots come back too.
    let abandoned: Vec<_> = (0..2)
        .map(|_| {
            use std::io::Write;
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            conn.write_all(b"POST /orders?hold_ms=20000 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            conn
        })
        .collect();
    wait_for("two abandoned requests held", Duration::from_secs(10), || {
        (s.upstream.in_flight() == 2).then_some(())
    });
    assert_eq!(c.request("POST", "/orders", &[]).unwrap().status, 503);
    drop(abandoned);
    wait_for("slots released after resets", Duration::from_secs(10), || {
        (c.request("POST", "/orders", &[]).unwrap().status == 200).then_some(())
    });
}

#[test]
fn header_modes_draft_ietf_both_none() {
    let upstream = Upstream::start();
    for mode in ["draft", "ietf", "both", "none"] {
        let plugin = json!({"headers": mode, "layers": [
            {"name": "edge", "key": "ip", "algorithm": "fixed_window", "limit": 10, "window": "1m"}]});
        let envoy = Envoy::start(&Options::rampart(&plugin.to_string(), upstream.port));
        let r = envoy.client().get("/", &[]).unwrap();
        assert_eq!(r.status, 200);
        let draft = r.header("x-ratelimit-remaining").is_some();
        let ietf = r.header("ratelimit").is_some();
        assert_eq!(
            (draft, ietf),
            (mode == "draft" || mode == "both", mode == "ietf" || mode == "both"),
            "{mode}"
        );
        if ietf {
            assert_eq!(r.header("ratelimit-policy"), Some("\"edge\";q=10;w=60"));
            let rl = r.header("ratelimit").unwrap();
            assert!(rl.starts_with("\"edge\";r=9;t="), "{rl}");
        }
    }
}

#[test]
fn shadow_layer_counts_and_reports_but_never_rejects() {
    let plugin = json!({"layers": [
        {"name": "trial", "key": "global", "algorithm": "fixed_window", "limit": 3, "window": "1h", "shadow": true}]});
    let s = stack(&plugin, 1);
    let mut c = s.envoy.client();
    let got: Vec<_> = (0..8).map(|_| c.get("/", &[]).unwrap()).collect();
    assert!(got.iter().all(|r| r.status == 200));
    assert_eq!(got[7].header_u64("x-ratelimit-remaining"), Some(0));
    s.envoy.metrics_reach(&[
        ("rampart_trial_allowed", 3.0),
        ("rampart_trial_shadow_rejected", 5.0),
        ("rampart_trial_rejected", 0.0),
    ]);
}

#[test]
fn metrics_match_what_clients_saw() {
    let plugin = json!({"layers": [
        {"name": "edge", "key": "ip", "algorithm": "fixed_window", "limit": 7, "window": "1h"},
        {"name": "api-keys", "key": "header:x-api-key", "algorithm": "fixed_window", "limit": 2, "window": "1h"}]});
    let s = stack(&plugin, 2);
    let mut c = s.envoy.client();
    let with_key = statuses(&mut c, "/", &[("x-api-key", b"k1")], 4);
    let without = statuses(&mut c, "/", &[], 6);
    assert_eq!(with_key, [200, 200, 429, 429]);
    assert_eq!(count(&without, 200), 3);
    s.envoy.metrics_reach(&[
        ("rampart_edge_allowed", 7.0),
        ("rampart_edge_rejected", 3.0),
        ("rampart_api_keys_allowed", 2.0),
        ("rampart_api_keys_rejected", 2.0),
        ("rampart_edge_store_errors", 0.0),
    ]);
}

#[test]
fn exact_across_two_workers_under_concurrent_load() {
    const LIMIT: u64 = 300;
    let plugin = json!({"layers": [
        {"name": "global", "key": "global", "algorithm": "fixed_window", "limit": LIMIT, "window": "1d"}]});
    let s = stack(&plugin, 2);
    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(std::sync::Mutex::new(Vec::new()));
    let port = s.envoy.port;
    // Separate connections land on both workers; all race for one counter.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (ok, other) = (Arc::clone(&ok), Arc::clone(&other));
            std::thread::spawn(move || {
                let mut c = Client::new(port);
                for _ in 0..100 {
                    match c.get("/", &[]).unwrap().status {
                        200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        429 => {}
                        s => other.lock().unwrap().push(s),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        *other.lock().unwrap(),
        Vec::<u16>::new(),
        "statuses other than 200 and 429"
    );
    assert_eq!(ok.load(Ordering::SeqCst), LIMIT);
    assert_eq!(s.upstream.served(), LIMIT);
    s.envoy.metrics_reach(&[
        ("rampart_global_allowed", LIMIT as f64),
        ("rampart_global_rejected", 800.0 - LIMIT as f64),
    ]);
}

#[test]
fn bad_configuration_is_refused_with_the_field_path() {
    let upstream = Upstream::start();
    let bad = json!({"layers": [
        {"name": "edge", "key": "ip", "algorithm": "fixed_window", "limit": 10, "window": "1m"},
        {"name": "keys", "key": "header:x-api-key", "algorithm": "fixed_window", "limit": 10, "window": "1m"},
        {"name": "oops", "key": "ip", "algorithm": "fixed_window", "limit": 10, "window": "1x"}]});
    let failure = match Envoy::try_start(&Options::rampart(&bad.to_string(), upstream.port)) {
        Ok(_) => panic!("Envoy started with a bad Rampart configuration"),
        Err(f) => f,
    };
    assert!(
        failure
            .log
            .contains(r#"rampart: configuration refused: layers[2].window: "1x" is not a duration"#),
        "log did not name the field:\n{}",
        failure.log
    );
    assert!(!failure.log.contains("panicked"), "{}", failure.log);
}

#[test]
fn hostile_header_values_neither_crash_nor_collide() {
    let plugin = json!({"layers": [
        {"name": "keys", "key": "header:x-api-key", "algorithm": "fixed_window", "limit": 1, "window": "1h"}]});
    let s = stack(&plugin, 1);
    let mut c = s.envoy.client();
    let big = vec![b'k'; 48 * 1024];
    let hostile: Vec<&[u8]> = vec![&big, b"{tag}", b"\xff\xfe\xfd", b"a,b", b"  spaced  ", b"%00"];
    let mut checked = 0;
    for v in &hostile {
        let first = c.get("/", &[("x-api-key", v)]).unwrap().status;
        let second = c.get("/", &[("x-api-key", v)]).unwrap().status;
        // Envoy may refuse some bytes itself (400); what reaches Rampart is counted.
        if first != 400 {
            assert_eq!((first, second), (200, 429), "value starting {:?}", &v[..v.len().min(8)]);
            checked += 1;
        }
    }
    // Envoy may refuse odd bytes, but the ASCII ones must have reached Rampart.
    assert!(checked >= 4, "only {checked} values reached the filter");
    // Still serving, nothing trapped.
    assert_eq!(c.get("/", &[("x-api-key", b"fresh")]).unwrap().status, 200);
    assert!(!s.envoy.log().contains("panicked"));
}

#[test]
fn every_shipped_example_runs_in_envoy() {
    let dir = rampart_test_harness::project_file("filters/examples");
    let upstream = Upstream::start();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let plugin = example(&name);
        // Examples with cluster layers run against a sidecar, from the cluster template.
        let sidecar = plugin
            .get("sidecar")
            .map(|_| rampart_test_harness::sidecar::Sidecar::start(&[]));
        let opts = match &sidecar {
            Some(sc) => Options::fleet(&plugin.to_string(), upstream.port, sc.port),
            None => Options::rampart(&plugin.to_string(), upstream.port),
        };
        let envoy = Envoy::start(&opts);
        let r = envoy
            .client()
            .get(
                "/?api_key=k",
                &[("x-api-key", b"k"), ("x-forwarded-for", b"198.51.100.1")],
            )
            .unwrap();
        assert_eq!(r.status, 200, "{name}: {}", r.body_text());
        if sidecar.is_some() {
            let m = envoy.metrics_reach(&[("rampart_keys_allowed", 1.0)]);
            assert_eq!(
                m.get("rampart_keys_sidecar_errors"),
                Some(&0.0),
                "{name}: the sidecar answered"
            );
        }
        assert!(
            r.header("x-ratelimit-remaining").is_some() || r.header("ratelimit").is_some(),
            "{name}: no rate-limit headers in {:?}",
            r.headers
        );
    }
}

#[test]
fn shipped_envoy_yaml_embeds_the_shipped_example() {
    let yaml: serde_json::Value =
        serde_norway::from_str(&rampart_test_harness::read_project_file("filters/envoy/envoy.yaml")).unwrap();
    let filters =
        &yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
    let embedded = filters[0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap();
    let embedded: serde_json::Value = serde_json::from_str(embedded).unwrap();
    assert_eq!(
        embedded,
        example("edge-and-keys.json"),
        "envoy.yaml and edge-and-keys.json drifted apart"
    );
}
