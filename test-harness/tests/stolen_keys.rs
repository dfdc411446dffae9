//! Beyond counters: a key used from too many client IPs is flagged or blocked on every
//! gateway; revocation through `rampart-sidecar keys` holds fleet-wide; hostile key
//! values neither crash, collide, nor reach Redis in clear. Real gateways of every
//! proxy (Envoy, Kong's and APISIX's engines), sidecar, Redis.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::on_every_proxy;
use rampart_test_harness::gateway::{Gateway, Options, Proxy};
use rampart_test_harness::redis::{command, RedisNode};
use rampart_test_harness::sidecar::{sidecar_binary, Sidecar};
use rampart_test_harness::upstream::Upstream;
use serde_json::{json, Value};

const SECRET: &str = "stolen-key-test-secret";
const ADMIN: &str = "admin-token-for-tests";

fn plugin(sync: &str, limit: u64, distinct: Option<Value>) -> Value {
    let mut layer = json!({"name": "keys", "key": "header:x-api-key", "algorithm": "fixed_window", "limit": limit,
        "window": "1h", "scope": "cluster", "sync": sync});
    if sync == "async" {
        layer["sync_interval"] = json!("100ms");
    }
    if let Some(d) = distinct {
        layer["max_ips_per_key"] = d;
    }
    json!({
        "client_ip": {"from": "xff", "trusted_hops": 1},
        "sidecar": {"upstream": "rampart_sidecar", "timeout": "500ms", "key_secret": SECRET},
        "failure_mode": "closed",
        "layers": [layer]
    })
}

struct Fleet {
    proxy: Proxy,
    redis: RedisNode,
    sidecar: Sidecar,
    upstream: Upstream,
}

fn fleet(proxy: Proxy) -> Fleet {
    let redis = RedisNode::start();
    let sidecar = Sidecar::start(&["--redis", &redis.url(), "--admin-token", ADMIN]);
    Fleet {
        proxy,
        redis,
        sidecar,
        upstream: Upstream::start(),
    }
}

impl Fleet {
    fn gateway(&self, plugin: &Value) -> Gateway {
        Gateway::start(
            self.proxy,
            &Options::new(plugin, self.upstream.port).with_sidecar(self.sidecar.port),
        )
    }

    /// Runs `rampart-sidecar keys ...` against this fleet's sidecar.
    fn keys(&self, args: &[&str]) -> Value {
        let out = Command::new(sidecar_binary())
            .arg("keys")
            .args(args)
            .args([
                "--sidecar",
                &format!("127.0.0.1:{}", self.sidecar.port),
                "--admin-token",
                ADMIN,
            ])
            .args(["--key-secret", SECRET])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keys {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("keys {args:?} printed no JSON: {e}"))
    }
}

fn get(gateway: &Gateway, key: &[u8], ip: &str) -> (u16, Value) {
    let r = gateway
        .client()
        .get("/", &[("x-api-key", key), ("x-forwarded-for", ip.as_bytes())])
        .unwrap();
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

fn ip(i: u32) -> String {
    format!("100.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 255, i & 255)
}

#[test]
fn key_from_a_thousand_ips_is_flagged_and_a_normal_key_is_not() {
    on_every_proxy(|proxy| {
        let f = fleet(proxy);
        let gateway = f.gateway(&plugin(
            "sync",
            100_000,
            Some(json!({"limit": 50, "window": "10m", "action": "flag"})),
        ));
        for i in 0..1000 {
            assert_eq!(get(&gateway, b"stolen", &ip(i)).0, 200, "flagging never refuses");
        }
        for i in 0..60 {
            assert_eq!(get(&gateway, b"normal", &ip(5000 + i % 3)).0, 200);
        }
        let stolen = f.keys(&["inspect", "--layer", "keys", "--api-key", "stolen"]);
        assert_eq!(stolen["flagged"], true, "{stolen}");
        let distinct = stolen["distinct_clients"].as_u64().unwrap();
        assert!(
            (900..=1100).contains(&distinct),
            "HyperLogLog estimate {distinct} for 1000 IPs"
        );
        let normal = f.keys(&["inspect", "--layer", "keys", "--api-key", "normal"]);
        assert_eq!(
            (normal["flagged"].clone(), normal["distinct_clients"].clone()),
            (json!(false), json!(3)),
            "{normal}"
        );
        let listed = f.keys(&["list"]);
        let names: Vec<&str> = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k["key"].as_str())
            .collect();
        assert_eq!(
            names,
            [stolen["key"].as_str().unwrap()],
            "only the stolen key is listed"
        );
        gateway.metrics_reach(&[("rampart_keys_flagged", 1000.0 - 50.0)]);
    });
}

#[test]
fn key_from_many_ips_is_blocked_on_every_gateway_when_configured() {
    on_every_proxy(|proxy| {
        let f = fleet(proxy);
        let cfg = plugin(
            "sync",
            100_000,
            Some(json!({"limit": 50, "window": "10m", "action": "block", "cooldown": "15m"})),
        );
        let (a, b) = (f.gateway(&cfg), f.gateway(&cfg));
        let mut first_refusal = None;
        for i in 0..200 {
            let gw = if i % 2 == 0 { &a } else { &b };
            let (status, body) = get(gw, b"leaked", &ip(i));
            if status == 403 {
                assert_eq!(body["error"], "key_blocked", "{body}");
                first_refusal.get_or_insert(i);
            }
        }
        let first = first_refusal.expect("the key was never blocked");
        assert!(
            (45..=60).contains(&first),
            "blocked after {first} distinct IPs (limit 50)"
        );
        // Blocked for the cooldown on both gateways, from any IP; other keys are untouched.
        let r = b
            .client()
            .get("/", &[("x-api-key", b"leaked"), ("x-forwarded-for", b"192.0.2.1")])
            .unwrap();
        assert_eq!(r.status, 403);
        assert!(
            r.header_u64("retry-after").is_some_and(|s| s > 800 && s <= 900),
            "{:?}",
            r.headers
        );
        assert_eq!(get(&a, b"innocent", "192.0.2.1").0, 200);
        f.keys(&["restore", "--layer", "keys", "--api-key", "leaked"]);
        assert_eq!(get(&a, b"leaked", "192.0.2.1").0, 200, "restore lifts the block");
    });
}

#[test]
fn revoke_and_restore_hold_across_three_gateways() {
    on_every_proxy(|proxy| {
        let f = fleet(proxy);
        // Two gateways ask the sidecar on every request; the third decides locally (async).
        let gateways = [
            f.gateway(&plugin("sync", 1000, None)),
            f.gateway(&plugin("sync", 1000, None)),
            f.gateway(&plugin("async", 1000, None)),
        ];
        for g in &gateways {
            assert_eq!(get(g, b"sk_live_42", "192.0.2.7").0, 200);
        }
        let revoked = f.keys(&[
            "revoke",
            "--layer",
            "keys",
            "--api-key",
            "sk_live_42",
            "--reason",
            "leaked on a forum",
        ]);
        assert_eq!(revoked["revoked"], true);
        let started = Instant::now();
        for (n, g) in gateways.iter().enumerate() {
            // Sync gateways refuse at once; the async one within about one sync interval.
            let deadline = started + Duration::from_secs(2);
            loop {
                let (status, body) = get(g, b"sk_live_42", "192.0.2.7");
                if status == 403 {
                    assert_eq!(body, json!({"error": "key_revoked", "layer": "keys", "retry_after": 0}));
                    break;
                }
                assert!(n == 2, "sync gateway {n} admitted a revoked key");
                assert!(Instant::now() < deadline, "async gateway still admits the revoked key");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        eprintln!(
            "revocation enforced on all three gateways {:?} after the CLI returned",
            started.elapsed()
        );
        let listed = f.keys(&["list"]);
        assert_eq!(listed["keys"][0]["reason"], "leaked on a forum");
        f.keys(&["restore", "--layer", "keys", "--api-key", "sk_live_42"]);
        let started = Instant::now();
        for g in &gateways {
            let deadline = started + Duration::from_secs(3);
            while get(g, b"sk_live_42", "192.0.2.7").0 != 200 {
                assert!(Instant::now() < deadline, "a gateway still refuses the restored key");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
}

#[test]
fn hostile_key_values_neither_crash_nor_collide_nor_reach_redis_in_clear() {
    on_every_proxy(|proxy| {
        let f = fleet(proxy);
        let gateway = f.gateway(&plugin("sync", 1, None));
        let big = vec![b'K'; 32 * 1024];
        let values: Vec<&[u8]> = vec![
            &big,
            b"{tag}",
            b"}{",
            b"{",
            b"\xff\xfe\xfdbytes",
            b"tab\there",
            b"plain-secret-key",
            b"plain-secret-kez",
        ];
        for v in &values {
            let (first, _) = get(&gateway, v, "192.0.2.9");
            let (second, _) = get(&gateway, v, "192.0.2.9");
            assert_eq!(
                (first, second),
                (200, 429),
                "each value has its own counter (limit 1): {:?}",
                &v[..v.len().min(12)]
            );
        }
        // Values the proxy itself refuses never reach Rampart; nothing breaks either
        // way (Envoy: 431 past max_request_headers_kb 60; nginx: 400 past its buffers).
        let huge = vec![b'K'; 64 * 1024];
        let (status, _) = get(&gateway, &huge, "192.0.2.9");
        assert!(status == 431 || status == 400, "64 KiB of headers: status {status}");
        // CRLF cannot travel inside an HTTP/1 header value: the line ends there, and what
        // follows is another header. The key is then just "line".
        let (status, _) = get(&gateway, b"line\r\nx-injected: 1", "192.0.2.9");
        assert!(status == 200 || status == 400, "CRLF in a value: status {status}");
        let crlf_counters = usize::from(status == 200);
        // An empty key means no key: the layer does not apply.
        assert_eq!(get(&gateway, b"", "192.0.2.9").0, 200);
        assert_eq!(get(&gateway, b"", "192.0.2.9").0, 200);
        // Counters are fields of the window hashes (RESP: lines that are not headers).
        let keys = command(f.redis.port, "KEYS *").unwrap();
        let mut stored = keys.clone();
        for hash in keys
            .lines()
            .filter(|l| l.starts_with("rampart:v3:fixed_window:3600000:"))
        {
            stored.push_str(&command(f.redis.port, &format!("HKEYS {hash}")).unwrap());
        }
        let counters = stored
            .lines()
            .skip(keys.lines().count())
            .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
            .count();
        assert_eq!(
            counters,
            values.len() + crlf_counters,
            "one counter per distinct value:\n{stored}"
        );
        for clear in ["{tag}", "plain-secret", "KKKKKKKK", "bytes", "tab"] {
            assert!(!stored.contains(clear), "{clear:?} reached Redis in clear:\n{stored}");
        }
        assert_eq!(get(&gateway, b"after", "192.0.2.9").0, 200, "still serving");
        assert!(!gateway.log().contains("panicked"));
    });
}
