//! Cluster layers where only Envoy is the point: Redis Cluster and Redis faults behind
//! the sidecar, and sync checks batched per worker (Envoy alone batches). The cases
//! every host must pass run on all three proxies in `hosts_cluster.rs`.

mod common;

use common::{hammer, keyed};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_test_harness::envoy::{Envoy, Options};
use rampart_test_harness::http::Client;
use rampart_test_harness::redis::{RedisCluster, RedisNode};
use rampart_test_harness::sidecar::Sidecar;
use rampart_test_harness::upstream::{Answer, Upstream};
use serde_json::Value;

fn gateways(n: usize, plugin: &Value, upstream: &Upstream, sidecar: &Sidecar) -> Vec<Envoy> {
    (0..n)
        .map(|_| Envoy::start(&Options::fleet(&plugin.to_string(), upstream.port, sidecar.port)))
        .collect()
}

#[test]
fn redis_cluster_spreads_counters_and_stays_exact() {
    let cluster = RedisCluster::start(3);
    let sidecar = Sidecar::start(&["--redis-cluster", &cluster.urls()]);
    let upstream = Upstream::start();
    let envoys = gateways(3, &keyed("sync", 3, "closed", None, "500ms"), &upstream, &sidecar);
    for k in 0..24 {
        let key = format!("tenant-{k}");
        assert_eq!(
            hammer(
                &envoys.iter().map(|e| e.port).collect::<Vec<_>>(),
                &key,
                2,
                Duration::ZERO
            ),
            3,
            "{key}: 6 requests, limit 3"
        );
    }
    for n in &cluster.nodes {
        assert!(n.dbsize() > 0, "master on port {} holds no counters", n.port);
    }
}

/// Sends requests one by one, timing each; returns statuses and the slowest.
fn timed(envoy: &Envoy, key: &str, n: usize) -> (Vec<u16>, Duration) {
    let (answers, slowest) = common::timed(envoy.client(), key, n);
    (answers.iter().map(|r| r.status).collect(), slowest)
}

#[test]
fn redis_frozen_paused_and_killed_degrade_then_recover() {
    let mut redis = RedisNode::start();
    let redis_port = redis.port;
    let sidecar = Sidecar::start(&["--redis", &redis.url(), "--redis-timeout", "50ms"]);
    let upstream = Upstream::start();
    let envoy = &gateways(1, &keyed("sync", 4, "open", Some(1), "250ms"), &upstream, &sidecar)[0];
    assert_eq!(timed(envoy, "a", 5).0, [200, 200, 200, 200, 429]);

    // Frozen (SIGSTOP): nothing answers; the filter's timeout bounds every request.
    redis.freeze();
    let (statuses, slowest) = timed(envoy, "b", 3);
    assert_eq!(statuses, [200, 429, 429], "fallback limit 1");
    assert!(slowest < Duration::from_millis(1000), "a request waited {slowest:?}");
    redis.thaw();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        timed(envoy, "c", 5).0,
        [200, 200, 200, 200, 429],
        "exact again after thaw"
    );

    // CLIENT PAUSE: Redis holds every client for a while.
    rampart_test_harness::redis::command(redis_port, "CLIENT PAUSE 1500 ALL").unwrap();
    let (statuses, slowest) = timed(envoy, "d", 2);
    assert_eq!(statuses, [200, 429]);
    assert!(slowest < Duration::from_millis(1000), "a request waited {slowest:?}");
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        timed(envoy, "e", 5).0,
        [200, 200, 200, 200, 429],
        "exact again after the pause"
    );

    // Killed and restarted on the same port (empty): the sidecar reconnects.
    redis.kill();
    let (statuses, _) = timed(envoy, "f", 2);
    assert_eq!(statuses, [200, 429]);
    redis = RedisNode::start_on(redis_port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = timed(envoy, "g", 1);
        if s == [200] || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        timed(envoy, "h", 5).0,
        [200, 200, 200, 200, 429],
        "exact after Redis came back"
    );
    drop(redis);
}

/// A counter from the sidecar's /metrics.
fn sidecar_counter(sidecar: &Sidecar, name: &str) -> u64 {
    let text = sidecar.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// `threads` clients, each sending `each` requests with `key` to the gateway on `port`
/// at once; every answer's status and how long it took.
fn crowd(port: u16, key: &'static str, threads: usize, each: usize) -> Vec<(u16, Duration)> {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::new(port);
                (0..each)
                    .map(|_| {
                        let t = Instant::now();
                        let status = c.get("/", &[("x-api-key", key.as_bytes())]).expect("request").status;
                        (status, t.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect()
}

/// Just the statuses of a `crowd`.
fn crowd_statuses(port: u16, key: &'static str, threads: usize, each: usize) -> Vec<u16> {
    crowd(port, key, threads, each).into_iter().map(|(s, _)| s).collect()
}

#[test]
fn concurrent_sync_checks_are_batched_and_stay_exact() {
    let sidecar = Sidecar::start(&[]);
    let upstream = Upstream::start();
    // Two workers: each batches its own requests and is woken by its own queue.
    let envoy = Envoy::start(&Options {
        concurrency: 2,
        ..Options::fleet(
            &keyed("sync", 100, "closed", None, "500ms").to_string(),
            upstream.port,
            sidecar.port,
        )
    });
    let statuses = crowd_statuses(envoy.port, "crowded-key", 48, 5);
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(admitted, 100, "240 concurrent requests, limit 100: {statuses:?}");
    assert!(statuses.iter().all(|&s| s == 200 || s == 429), "{statuses:?}");
    assert_eq!(upstream.served(), 100);
    // Requests that arrived together went to the sidecar together.
    let calls = sidecar_counter(&sidecar, "rampart_sidecar_check_calls_total");
    let checked = sidecar_counter(&sidecar, "rampart_sidecar_checked_requests_total");
    assert!(checked >= 100, "checked {checked}");
    assert!(calls < checked, "no batching: {calls} calls for {checked} requests");
}

#[test]
fn clients_leaving_mid_batch_do_not_strand_the_others() {
    let redis = RedisNode::start();
    let sidecar = Sidecar::start(&["--redis", &redis.url(), "--redis-timeout", "1500ms"]);
    let upstream = Upstream::start();
    let envoy = &gateways(1, &keyed("sync", 1_000, "closed", None, "2s"), &upstream, &sidecar)[0];
    // Redis frozen: every check waits in a batch. Half of the clients hang up while
    // theirs wait; the rest must still get their answer once Redis is back.
    redis.freeze();
    let port = envoy.port;
    let leavers: Vec<_> = (0..12)
        .map(|_| {
            std::thread::spawn(move || {
                use std::io::Write;
                for _ in 0..3 {
                    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                    let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-api-key: leaving-key\r\n\r\n");
                    std::thread::sleep(Duration::from_millis(30));
                }
            })
        })
        .collect();
    let stayers = std::thread::spawn(move || crowd_statuses(port, "staying-key", 12, 1));
    for l in leavers {
        l.join().expect("leaver");
    }
    std::thread::sleep(Duration::from_millis(100));
    redis.thaw();
    let started = Instant::now();
    let answers = stayers.join().expect("stayers");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        answers.iter().all(|&s| s == 200),
        "every remaining client is answered: {answers:?}"
    );
    // And the gateway goes on as before.
    let r = envoy.client().get("/", &[("x-api-key", b"staying-key")]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header_u64("x-ratelimit-remaining"), Some(1_000 - 13));
}

/// A sidecar from before batched checks: one request per call; a `requests` body is
/// refused with 400, as an older sidecar refuses an unknown field.
struct OldSidecar {
    server: Upstream,
    batched: Arc<AtomicU64>,
    single: Arc<AtomicU64>,
}

impl OldSidecar {
    fn start() -> OldSidecar {
        let (batched, single) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (b, s) = (Arc::clone(&batched), Arc::clone(&single));
        let server = Upstream::answering(move |_, body| {
            let (status, answer) = if body.starts_with(br#"{"requests""#) {
                b.fetch_add(1, Ordering::SeqCst);
                (
                    "400 Bad Request",
                    r#"{"error":"unknown field `requests`, expected `hits`"}"#,
                )
            } else {
                s.fetch_add(1, Ordering::SeqCst);
                (
                    "200 OK",
                    r#"{"results":[{"allowed":true,"limit":1000,"remaining":999,"reset_ms":60000,"retry_after_ms":0}]}"#,
                )
            };
            Answer {
                status,
                content_type: "application/json",
                body: answer.as_bytes().to_vec(),
            }
        });
        OldSidecar {
            server,
            batched,
            single,
        }
    }
}

#[test]
fn an_older_sidecar_gets_one_request_per_call_and_nothing_fails() {
    let old = OldSidecar::start();
    let upstream = Upstream::start();
    let envoy = Envoy::start(&Options::fleet(
        &keyed("sync", 1_000, "closed", None, "1s").to_string(),
        upstream.port,
        old.server.port,
    ));
    // Crowds until a batch has been tried (bounded); every request is still admitted.
    for _ in 0..10 {
        let statuses = crowd_statuses(envoy.port, "upgrading-key", 32, 2);
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
        if old.batched.load(Ordering::SeqCst) > 0 {
            break;
        }
    }
    let tried = old.batched.load(Ordering::SeqCst);
    assert!(tried > 0, "no batch was ever sent");
    // From then on, one request per call.
    let statuses = crowd_statuses(envoy.port, "upgrading-key", 32, 2);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(
        old.batched.load(Ordering::SeqCst),
        tried,
        "batches after the sidecar refused one"
    );
    assert!(old.single.load(Ordering::SeqCst) >= 64);
}

#[test]
fn queued_requests_still_wait_no_longer_than_the_timeout() {
    let redis = RedisNode::start();
    // The sidecar waits on Redis longer than the filter waits on the sidecar.
    let sidecar = Sidecar::start(&["--redis", &redis.url(), "--redis-timeout", "3s"]);
    let upstream = Upstream::start();
    let envoy = &gateways(
        1,
        &keyed("sync", 1_000, "open", Some(10_000), "300ms"),
        &upstream,
        &sidecar,
    )[0];
    redis.freeze();
    // A crowd: some requests wait behind calls in flight before their own is sent. Each
    // must be answered (by the fallback) within the 300 ms timeout, not a multiple of it.
    let answers = crowd(envoy.port, "queued-key", 32, 2);
    redis.thaw();
    assert!(answers.iter().all(|(s, _)| *s == 200), "fail open: {answers:?}");
    let slowest = answers.iter().map(|(_, d)| *d).max().unwrap_or_default();
    assert!(slowest < Duration::from_millis(500), "a request waited {slowest:?}");
}
