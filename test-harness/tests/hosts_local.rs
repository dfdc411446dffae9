//! Local layers on every proxy: the same cases on Envoy, Kong's engine and APISIX's
//! engine (where `../shared` has them), each loading the same rampart.wasm. What differs
//! between hosts is read from the host table (`gateway::Traits`), never branched on by
//! proxy name.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{count, example, on_every_proxy, single, statuses};
use rampart_test_harness::gateway::{Gateway, Options};
use rampart_test_harness::http::Client;
use rampart_test_harness::process::wait_for;
use rampart_test_harness::upstream::Upstream;
use serde_json::{json, Value};

fn body(r: &rampart_test_harness::http::Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

#[test]
fn shipped_example_limits_api_keys_by_tier_and_reports_headers() {
    on_every_proxy(|proxy| {
        let s = single(proxy, &example("edge-and-keys.json"), 1);
        let mut c = s.gateway.client();
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
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            body(&r),
            json!({"error": "rate_limited", "layer": "keys", "retry_after": retry})
        );
        // The paid tier has its own, larger limit (and bob his own counter).
        let paid: &[(&str, &[u8])] = &[("x-api-key", b"bob"), ("x-plan", b"paid")];
        assert_eq!(count(&statuses(&mut c, "/", paid, 55), 200), 50);
        // An unknown tier is the default one.
        let odd: &[(&str, &[u8])] = &[("x-api-key", b"cy"), ("x-plan", b"platinum")];
        assert_eq!(statuses(&mut c, "/", odd, 6), [200, 200, 200, 200, 200, 429]);
        // The IP layer (100/min) comes first, so it charged all 6 + 55 + 6 requests,
        // including those the key layer then refused; without a key only it applies.
        let got = statuses(&mut c, "/", &[], 40);
        assert_eq!(count(&got, 200), 100 - 6 - 55 - 6);
        let r = c.get("/", &[]).unwrap();
        assert_eq!(body(&r)["layer"], "edge", "the peer address is the edge key");
        assert_eq!(
            s.upstream.served(),
            5 + 50 + 5 + 33,
            "rejected requests never reach the upstream"
        );
    });
}

#[test]
fn per_ip_layer_limits_by_the_peer_address() {
    on_every_proxy(|proxy| {
        let plugin = json!({"layers": [
            {"name": "edge", "key": "ip", "algorithm": "fixed_window", "limit": 3, "window": "1h"}]});
        let s = single(proxy, &plugin, 1);
        let mut c = s.gateway.client();
        // A header a client writes is not its address.
        let spoof: &[(&str, &[u8])] = &[("x-forwarded-for", b"203.0.113.9")];
        assert_eq!(statuses(&mut c, "/", spoof, 5), [200, 200, 200, 429, 429]);
        assert!(!s.gateway.log().contains("no client address"), "{}", s.gateway.log());
    });
}

#[test]
fn every_key_kind_gets_its_own_counters() {
    on_every_proxy(|proxy| {
        let layer = |name: &str, prefix: &str, key: Value| {
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
        let s = single(proxy, &plugin, 1);
        let mut c = s.gateway.client();
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
    });
}

#[test]
fn spoofed_forwarded_for_never_becomes_the_key() {
    on_every_proxy(|proxy| {
        // One trusted load balancer in front of the gateway: the entry it appended is
        // the client; everything left of it was written by the client. The same JSON
        // on every host: Envoy appends the LB's address itself, the nginx engines do
        // not, and Rampart counts the peer as that entry there.
        let plugin = json!({
            "client_ip": {"from": "xff", "trusted_hops": 1},
            "layers": [{"name": "edge", "key": "ip", "algorithm": "fixed_window", "limit": 3, "window": "1h"}]
        });
        let s = single(proxy, &plugin, 1);
        let mut c = s.gateway.client();
        // A client rotates the left part it controls; what the LB saw does not change.
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
    });
}

#[test]
fn algorithms_fixed_sliding_and_token_bucket() {
    on_every_proxy(|proxy| {
        let plugin = json!({"layers": [
            {"name": "fixed", "match": {"path_prefix": "/fixed"}, "key": "route", "algorithm": "fixed_window", "limit": 4, "window": "1h"},
            {"name": "sliding", "match": {"path_prefix": "/sliding"}, "key": "route", "algorithm": "sliding_window", "limit": 4, "window": "1h"},
            {"name": "bucket", "match": {"path_prefix": "/bucket"}, "key": "route", "algorithm": "token_bucket", "limit": 1, "window": "1m", "burst": 3},
            {"name": "refill", "match": {"path_prefix": "/refill"}, "key": "route", "algorithm": "token_bucket", "limit": 10, "window": "1s", "burst": 1}
        ]});
        let s = single(proxy, &plugin, 1);
        let mut c = s.gateway.client();
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
    });
}

#[test]
fn missing_keys_skip_the_layer_or_deny() {
    on_every_proxy(|proxy| {
        let plugin = json!({"layers": [
            {"name": "optional", "key": "header:x-team", "algorithm": "fixed_window", "limit": 1, "window": "1h"},
            {"name": "required", "key": "query:api_key", "missing": "deny", "status": 401,
             "algorithm": "fixed_window", "limit": 100, "window": "1h"}
        ]});
        let s = single(proxy, &plugin, 1);
        let mut c = s.gateway.client();
        assert_eq!(statuses(&mut c, "/?api_key=k", &[], 3), [200; 3], "no x-team: skipped");
        let r = c.get("/", &[]).unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(
            body(&r),
            json!({"error": "missing_key", "layer": "required", "retry_after": 0})
        );
        assert_eq!(c.get("/?api_key=", &[]).unwrap().status, 401, "empty is missing");
        assert_eq!(s.upstream.served(), 3);
    });
}

#[test]
fn concurrency_counts_requests_in_flight_and_releases_on_end_and_reset() {
    on_every_proxy(|proxy| {
        let plugin = json!({"layers": [
            {"name": "orders", "match": {"path_prefix": "/orders", "methods": ["POST"]}, "key": "route",
             "algorithm": "concurrency", "limit": 2, "status": 503}
        ]});
        let s = single(proxy, &plugin, 2);
        let port = s.gateway.port();
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
        let mut c = s.gateway.client();
        let r = c.request("POST", "/orders", &[]).unwrap();
        // Where workers count alone, this request may land on a worker holding none.
        if proxy.traits().shared_counters {
            assert_eq!(r.status, 503);
            assert!(r.header_u64("retry-after").is_some_and(|v| v >= 1));
            assert!(r.body_text().contains("\"layer\":\"orders\""));
        }
        assert_eq!(c.get("/orders", &[]).unwrap().status, 200, "GET is not matched");
        for h in held {
            assert_eq!(h.join().unwrap(), 200);
        }
        // Both finished: the slots are back.
        assert_eq!(c.request("POST", "/orders", &[]).unwrap().status, 200);

        // Clients that hang up mid-request reset their streams: the slots come back too.
        let abandoned: Vec<_> = (0..2).map(|_| held_open(port)).collect();
        wait_for("two abandoned requests held", Duration::from_secs(10), || {
            (s.upstream.in_flight() == 2).then_some(())
        });
        if proxy.traits().shared_counters {
            assert_eq!(c.request("POST", "/orders", &[]).unwrap().status, 503);
        }
        drop(abandoned);
        // Every worker must have its slots back: a crowd of short requests all pass.
        wait_for("slots released after resets", Duration::from_secs(10), || {
            let ok = (0..4).all(|_| Client::new(port).request("POST", "/orders", &[]).unwrap().status == 200);
            ok.then_some(())
        });
    });
}

/// A request the upstream holds for 20 s, on a connection left open. The nginx engines
/// give a finished request's concurrency slot back in their log phase, just after the
/// client has its answer, so a request sent right after may still be refused: it is
/// sent again (a held one answers nothing within 200 ms).
fn held_open(port: u16) -> std::net::TcpStream {
    use std::io::{Read, Write};
    for _ in 0..50 {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.write_all(b"POST /orders?hold_ms=20000 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut first = [0u8; 1];
        match conn.read(&mut first) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return conn;
            }
            _ => continue,
        }
    }
    panic!("no request held by the upstream in 50 tries")
}

#[test]
fn two_workers_count_exactly_where_the_host_shares_counters() {
    on_every_proxy(|proxy| {
        const LIMIT: u64 = 300;
        let plugin = json!({"layers": [
            {"name": "global", "key": "global", "algorithm": "fixed_window", "limit": LIMIT, "window": "1d"}]});
        let s = single(proxy, &plugin, 2);
        let ok = Arc::new(AtomicU64::new(0));
        let other = Arc::new(Mutex::new(Vec::new()));
        let port = s.gateway.port();
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
        let admitted = ok.load(Ordering::SeqCst);
        assert_eq!(s.upstream.served(), admitted);
        if proxy.traits().shared_counters {
            assert_eq!(admitted, LIMIT);
        } else {
            // Each worker process counts alone: exactly the limit per worker that saw
            // that many requests, all requests of one that saw fewer.
            let per_worker = s.gateway.served_by_worker().expect("the engine logs workers");
            let mut seen: HashMap<u32, (u64, u64)> = HashMap::new();
            for (pid, status) in per_worker {
                let e = seen.entry(pid).or_default();
                e.0 += 1;
                e.1 += u64::from(status == 200);
            }
            let expected: u64 = seen.values().map(|(n, _)| (*n).min(LIMIT)).sum();
            eprintln!("per-worker counts (requests, admitted): {seen:?}");
            assert!(seen.values().all(|(n, ok)| *ok == (*n).min(LIMIT)), "{seen:?}");
            assert_eq!(admitted, expected);
        }
        s.gateway.metrics_reach(&[
            ("rampart_global_allowed", LIMIT as f64),
            ("rampart_global_rejected", 800.0 - LIMIT as f64),
        ]);
    });
}

#[test]
fn bad_configuration_is_refused_with_the_field_path() {
    on_every_proxy(|proxy| {
        let upstream = Upstream::start();
        let bad = json!({"layers": [
            {"name": "edge", "key": "ip", "algorithm": "fixed_window", "limit": 10, "window": "1m"},
            {"name": "keys", "key": "header:x-api-key", "algorithm": "fixed_window", "limit": 10, "window": "1m"},
            {"name": "oops", "key": "ip", "algorithm": "fixed_window", "limit": 10, "window": "1x"}]});
        let line = r#"rampart: configuration refused: layers[2].window: "1x" is not a duration"#;
        let log = match Gateway::try_start(proxy, &Options::new(&bad, upstream.port)) {
            Err(failure) => {
                assert!(proxy.traits().refused_config_stops_start, "{}", failure.log);
                failure.log
            }
            Ok(g) => {
                assert!(!proxy.traits().refused_config_stops_start, "started with a bad config");
                // The plugin is refused on every request, and nothing reaches the service.
                assert_eq!(g.client().get("/", &[]).unwrap().status, 503);
                assert_eq!(upstream.served(), 0);
                g.log()
            }
        };
        assert!(log.contains(line), "log did not name the field:\n{log}");
        assert!(!log.contains("panicked"), "{log}");
    });
}

#[test]
fn hostile_header_values_neither_crash_nor_collide() {
    on_every_proxy(|proxy| {
        let plugin = json!({"layers": [
            {"name": "keys", "key": "header:x-api-key", "algorithm": "fixed_window", "limit": 1, "window": "1h"}]});
        let s = single(proxy, &plugin, 1);
        let mut c = s.gateway.client();
        let big = vec![b'k'; 48 * 1024];
        let hostile: Vec<&[u8]> = vec![&big, b"{tag}", b"\xff\xfe\xfd", b"a,b", b"  spaced  ", b"%00"];
        let mut checked = 0;
        for v in &hostile {
            let first = c.get("/", &[("x-api-key", v)]).unwrap().status;
            let second = c.get("/", &[("x-api-key", v)]).unwrap().status;
            // A proxy may refuse some bytes itself (400); what reaches Rampart is counted.
            if first != 400 {
                assert_eq!((first, second), (200, 429), "value starting {:?}", &v[..v.len().min(8)]);
                checked += 1;
            }
        }
        assert!(checked >= 4, "only {checked} values reached the filter");
        // Still serving, nothing trapped.
        assert_eq!(c.get("/", &[("x-api-key", b"fresh")]).unwrap().status, 200);
        assert!(!s.gateway.log().contains("panicked"));
    });
}

#[test]
fn every_shipped_example_runs_on_every_proxy() {
    on_every_proxy(|proxy| {
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
            // Examples with cluster layers run against a sidecar.
            let sidecar = plugin
                .get("sidecar")
                .map(|_| rampart_test_harness::sidecar::Sidecar::start(&[]));
            let mut opts = Options::new(&plugin, upstream.port);
            if let Some(sc) = &sidecar {
                opts = opts.with_sidecar(sc.port);
            }
            let g = Gateway::start(proxy, &opts);
            let r = g
                .client()
                .get(
                    "/?api_key=k",
                    &[("x-api-key", b"k"), ("x-forwarded-for", b"198.51.100.1")],
                )
                .unwrap();
            assert_eq!(r.status, 200, "{name}: {}", r.body_text());
            if sidecar.is_some() {
                g.metrics_reach(&[("rampart_keys_allowed", 1.0), ("rampart_keys_sidecar_errors", 0.0)]);
            }
            assert!(
                r.header("x-ratelimit-remaining").is_some() || r.header("ratelimit").is_some(),
                "{name}: no rate-limit headers in {:?}",
                r.headers
            );
        }
    });
}
