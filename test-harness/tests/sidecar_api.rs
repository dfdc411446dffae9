//! rampart-sidecar's HTTP API and CLI, against a real process on loopback.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rampart_test_harness::http::{get_once, Client};
use rampart_test_harness::redis::RedisNode;
use rampart_test_harness::sidecar::{sidecar_binary, Sidecar};
use serde_json::{json, Value};

const TOKEN: (&str, &[u8]) = ("x-rampart-token", b"s3cret-token");

fn hit(key: &str, limit: u64, cost: u64) -> Value {
    json!({"key": key, "algorithm": "fixed_window", "limit": limit, "window_ms": 3_600_000, "cost": cost})
}

fn post(c: &mut Client, path: &str, body: &Value) -> (u16, Value) {
    let r = c
        .post(
            path,
            &[TOKEN, ("content-type", b"application/json")],
            body.to_string().as_bytes(),
        )
        .unwrap();
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

#[test]
fn api_refuses_bad_requests_with_reasons() {
    let sc = Sidecar::start(&["--token", "s3cret-token"]);
    let mut c = sc.client();
    let ok = json!({"hits": [hit("k", 5, 1)]});
    // No token, wrong token.
    let r = c.post("/v1/check", &[], ok.to_string().as_bytes()).unwrap();
    assert_eq!(r.status, 401);
    let r = c
        .post("/v1/check", &[("x-rampart-token", b"nope")], ok.to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status, 401);
    // Malformed and invalid bodies name the problem.
    let r = c.post("/v1/check", &[TOKEN], b"{not json").unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body_text().contains("body is not a check"), "{}", r.body_text());
    let (status, body) = post(&mut c, "/v1/check", &json!({"hits": [hit("k", 0, 1)]}));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("hits[0]: limit"), "{body}");
    let (status, _) = post(&mut c, "/v1/check", &json!({"hits": []}));
    assert_eq!(status, 400);
    let (status, _) = post(&mut c, "/v1/check", &json!({"hits": [hit(&"x".repeat(300), 5, 1)]}));
    assert_eq!(status, 400);
    // Oversized: refused from the declared length, before the body is read (a client
    // still writing then sees the connection close, so only the head is sent here).
    {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", sc.port)).unwrap();
        raw.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /v1/check HTTP/1.1\r\nhost: x\r\nx-rampart-token: s3cret-token\r\ncontent-length: {}\r\n\r\n{{",
            2 << 20
        );
        raw.write_all(head.as_bytes()).unwrap();
        let mut answer = vec![0u8; 4096];
        let n = raw.read(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    // Wrong method, unknown path.
    assert_eq!(get_once(sc.port, "/v1/check").unwrap().status, 405);
    assert_eq!(get_once(sc.port, "/nope").unwrap().status, 404);
    // Still serving.
    let (status, body) = post(&mut Client::new(sc.port), "/v1/check", &ok);
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["allowed"], true);
    let metrics = sc.metrics_text();
    for name in [
        "rampart_sidecar_decisions_allowed_total 1",
        "rampart_sidecar_unauthorized_total 2",
        "rampart_sidecar_bad_requests_total",
        "rampart_sidecar_redis_seconds_bucket",
        "rampart_sidecar_store_errors_total{class=\"transient\"} 0",
    ] {
        assert!(metrics.contains(name), "missing {name:?} in\n{metrics}");
    }
}

#[test]
fn check_is_ordered_and_report_records_past_the_limit() {
    let sc = Sidecar::start(&["--token", "s3cret-token"]);
    let mut c = sc.client();
    // Second hit rejects: the third is skipped, not charged.
    let (_, body) = post(
        &mut c,
        "/v1/check",
        &json!({"hits": [hit("a", 5, 1), hit("b", 1, 2), hit("c", 5, 1)]}),
    );
    let r = &body["results"];
    assert_eq!(
        (
            r[0]["allowed"].clone(),
            r[1]["allowed"].clone(),
            r[2]["skipped"].clone()
        ),
        (json!(true), json!(false), json!(true))
    );
    let (_, body) = post(&mut c, "/v1/check", &json!({"hits": [hit("c", 5, 1)]}));
    assert_eq!(
        body["results"][0]["remaining"], 4,
        "c was not charged by the rejected request"
    );
    // Reports add everything, even past the limit.
    let (status, body) = post(&mut c, "/v1/report", &json!({"hits": [hit("d", 5, 7)]}));
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["remaining"], 0);
    let (_, body) = post(&mut c, "/v1/check", &json!({"hits": [hit("d", 5, 1)]}));
    assert_eq!(body["results"][0]["allowed"], false);
}

#[test]
fn batched_checks_answer_each_request_in_order_and_exactly() {
    let sc = Sidecar::start(&["--token", "s3cret-token"]);
    let mut c = sc.client();
    // Three requests on key "a" (limit 2), then one whose first hit passes and whose
    // second finds "a" spent.
    let one = |hits: Vec<Value>| json!({ "hits": hits });
    let (status, body) = post(
        &mut c,
        "/v1/check",
        &json!({"requests": [
            one(vec![hit("a", 2, 1)]),
            one(vec![hit("a", 2, 1)]),
            one(vec![hit("a", 2, 1)]),
            one(vec![hit("b", 9, 1), hit("a", 2, 1)]),
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let r = body["requests"].as_array().unwrap();
    assert_eq!(r.len(), 4);
    let allowed = |i: usize, j: usize| r[i]["results"][j]["allowed"].as_bool().unwrap();
    assert_eq!(
        (0..3).filter(|&i| allowed(i, 0)).count(),
        2,
        "exactly the limit of key a is admitted: {body}"
    );
    assert!(allowed(3, 0) && !allowed(3, 1), "{body}");
    assert!(r[3]["results"][1]["retry_after_ms"].as_u64().unwrap() > 0);
    // A bad request inside a batch names where it is.
    let (status, body) = post(
        &mut c,
        "/v1/check",
        &json!({"requests": [one(vec![hit("a", 2, 1)]), one(vec![])]}),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("requests[1]: hits is empty"),
        "{body}"
    );
    let metrics = String::from_utf8(get_once(sc.port, "/metrics").unwrap().body).unwrap();
    assert!(metrics.contains("rampart_sidecar_check_calls_total 1\n"), "{metrics}");
    assert!(
        metrics.contains("rampart_sidecar_checked_requests_total 4\n"),
        "{metrics}"
    );
}

#[test]
fn concurrent_hits_on_one_key_are_coalesced_and_exact() {
    let redis = RedisNode::start();
    let sc = Sidecar::start(&["--redis", &redis.url(), "--token", "s3cret-token"]);
    let ok = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (ok, port) = (Arc::clone(&ok), sc.port);
            std::thread::spawn(move || {
                let mut c = Client::new(port);
                for _ in 0..25 {
                    let (status, body) = post(&mut c, "/v1/check", &json!({"hits": [hit("hot", 150, 1)]}));
                    assert_eq!(status, 200);
                    if body["results"][0]["allowed"] == true {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ok.load(Ordering::SeqCst), 150, "400 concurrent hits, limit 150");
    let metrics = sc.metrics_text();
    let calls: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rampart_sidecar_store_calls_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let cached: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rampart_sidecar_cache_hits_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!("400 hits -> {calls} store calls, {cached} answered from the over-limit cache");
    assert!(calls < 400.0, "no coalescing or caching happened: {calls} store calls");
    assert!(cached > 0.0, "the over-limit cache never answered");
}

#[test]
fn cli_help_and_bad_flags() {
    let out = Command::new(sidecar_binary()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--redis ",
        "--redis-cluster",
        "--redis-sentinel",
        "--sentinel-master",
        "--token",
        "--redis-timeout",
        "--max-keys",
        "--threads",
        "--log-level",
        "RAMPART_SIDECAR_TOKEN",
    ] {
        assert!(help.contains(flag), "--help does not explain {flag}");
    }
    let out = Command::new(sidecar_binary()).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--bogus'"));
    let out = Command::new(sidecar_binary())
        .args(["--redis-sentinel", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "Sentinel needs --sentinel-master");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sentinel-master"));
    let out = Command::new(sidecar_binary()).arg("keys").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "keys without an action shows its help");
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoke"));
    let out = Command::new(sidecar_binary())
        .args(["--redis-timeout", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(sidecar_binary())
        .args(["--listen", "127.0.0.1:1", "--redis", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreachable Redis is a clear start-up error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis://127.0.0.1:1"));
}

#[test]
fn a_full_memory_store_keeps_a_limited_key_while_ten_times_its_size_pass_through() {
    let sc = Sidecar::start(&["--max-keys", "1000", "--token", "s3cret-token"]);
    let mut c = sc.client();
    let allowed = |c: &mut Client, h: Value| post(c, "/v1/check", &json!({"hits": [h]})).1["results"][0].clone();
    for expected in [true, true, true, false] {
        assert_eq!(allowed(&mut c, hit("hammering", 3, 1))["allowed"], expected);
    }
    // 10,000 other keys, 100 per call, one check each.
    for call in 0..100 {
        let hits: Vec<Value> = (0..100).map(|i| hit(&format!("k{call}-{i}"), 3, 1)).collect();
        let body = json!({"requests": hits.iter().map(|h| json!({"hits": [h]})).collect::<Vec<_>>()});
        let (status, answer) = post(&mut c, "/v1/check", &body);
        assert_eq!(status, 200);
        assert!(answer["requests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["results"][0]["allowed"] == true));
    }
    // Still limited. Asked under another limit (4), so the over-limit cache cannot
    // answer for the store: the store still counts its 3.
    let o = allowed(&mut c, hit("hammering", 4, 1));
    assert_eq!(
        (o["allowed"].clone(), o["remaining"].clone()),
        (json!(true), json!(0)),
        "{o}"
    );
    assert_eq!(allowed(&mut c, hit("hammering", 3, 1))["allowed"], false);
    let metrics = sc.metrics_text();
    let replaced: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rampart_sidecar_memory_evictions_total{reason=\"replaced\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no eviction metric:\n{metrics}"));
    assert!(replaced >= 9_000.0, "{replaced} counters replaced");
}
