//! Fleet limits through Redis failovers: a Redis Cluster of 3 masters + 3 replicas and a
//! Sentinel set (3 sentinels, a master and a replica), one rampart-sidecar, one Envoy
//! with a cluster `sync` layer. A master is killed (SIGKILL) mid-traffic: no request
//! waits past `sidecar.timeout`, fallback limits hold while the store is down, and
//! limits are exact again on every key within 5 seconds of the promotion. Then the same
//! after a planned `CLUSTER FAILOVER`, and after the old master rejoins as a replica.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_test_harness::envoy::{Envoy, Options};
use rampart_test_harness::http::Client;
use rampart_test_harness::process::wait_for;
use rampart_test_harness::redis::{command, RedisCluster, RedisSentinels};
use rampart_test_harness::sidecar::Sidecar;
use rampart_test_harness::upstream::Upstream;
use serde_json::json;

const LIMIT: u64 = 3;
const FALLBACK: u64 = 2;
const TIMEOUT_MS: u64 = 250;
/// Fresh keys per probe: with 3 masters, each gets some (24 keys all missing one master:
/// (2/3)^24, about 6e-5).
const PROBE_KEYS: usize = 24;
const RECOVERY_BOUND: Duration = Duration::from_secs(5);

/// An Envoy with a cluster `sync` layer through `sidecar`, checked exact before any
/// failure.
fn gateway(sidecar: &Sidecar, upstream: &Upstream) -> Envoy {
    let plugin = json!({
        "sidecar": {"upstream": "rampart_sidecar", "timeout": format!("{TIMEOUT_MS}ms"),
                    "key_secret": "failover-test-secret"},
        "failure_mode": "open",
        "layers": [{"name": "keys", "key": "header:x-api-key", "algorithm": "fixed_window",
                    "limit": LIMIT, "window": "1h", "scope": "cluster", "sync": "sync",
                    "fallback": {"limit": FALLBACK}}]
    });
    let envoy = Envoy::start(&Options::fleet(&plugin.to_string(), upstream.port, sidecar.port));
    assert!(probe(&envoy).iter().all(|&a| a == LIMIT), "exact before any failure");
    envoy
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

/// Sends LIMIT + 1 requests on each of PROBE_KEYS fresh keys; how many each admitted.
fn probe(envoy: &Envoy) -> Vec<u64> {
    let mut c = envoy.client();
    (0..PROBE_KEYS)
        .map(|_| {
            let key = format!("probe-{}", NEXT_KEY.fetch_add(1, Ordering::SeqCst));
            (0..=LIMIT)
                .filter(|_| c.get("/", &[("x-api-key", key.as_bytes())]).expect("request").status == 200)
                .count() as u64
        })
        .collect()
}

/// Probes until every key is exact again; returns when that was first seen. Every probe
/// on the way must hold either the cluster limit or the fallback limit.
fn exact_again(envoy: &Envoy, what: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let admitted = probe(envoy);
        let seen = Instant::now();
        assert!(
            admitted.iter().all(|&a| a <= LIMIT + FALLBACK),
            "{what}: more than limit + fallback admitted: {admitted:?}"
        );
        if admitted.iter().all(|&a| a == LIMIT) {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: never exact again: {admitted:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Probes until every key is exact again after `since` (a promotion, a rejoin), says how
/// long that took, and holds it to the 5-second bound.
fn exact_within_bound(envoy: &Envoy, since: Instant, what: &str) -> Duration {
    let took = exact_again(envoy, what).saturating_duration_since(since);
    eprintln!("{what}: every key exact {took:?} after");
    assert!(took <= RECOVERY_BOUND, "{what}: exact only {took:?} after");
    took
}

/// Waits until the node on `port` is a replica in sync with its master.
fn wait_in_sync_as_replica(port: u16, what: &str) {
    wait_for(what, Duration::from_secs(60), || {
        let info = command(port, "INFO replication").ok()?;
        (info.contains("role:slave") && info.contains("master_link_status:up")).then_some(())
    });
}

/// Traffic from a few threads on fresh keys until stopped: the slowest answer, and any
/// status other than 200/429.
struct Traffic {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    slowest: Arc<Mutex<Duration>>,
    odd: Arc<Mutex<Vec<u16>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(port: u16) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let slowest = Arc::new(Mutex::new(Duration::ZERO));
        let odd = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..3)
            .map(|t| {
                let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
                let (slowest, odd) = (Arc::clone(&slowest), Arc::clone(&odd));
                std::thread::spawn(move || {
                    let mut c = Client::new(port);
                    let mut i = 0u64;
                    // Bounded in time by the test's own deadlines; in count here.
                    while !stop.load(Ordering::SeqCst) && i < 1_000_000 {
                        i += 1;
                        let key = format!("traffic-{t}-{}", i / 4);
                        let started = Instant::now();
                        // 0: no answer at all.
                        let status = c.get("/", &[("x-api-key", key.as_bytes())]).map_or(0, |r| r.status);
                        let took = started.elapsed();
                        let mut s = slowest.lock().unwrap();
                        *s = (*s).max(took);
                        if status != 200 && status != 429 {
                            odd.lock().unwrap().push(status);
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            answered,
            slowest,
            odd,
            threads,
        }
    }

    /// Starts traffic and, once it flows, kills a master under it; returns the traffic
    /// and when the master died.
    fn kill_under(port: u16, kill: impl FnOnce()) -> (Traffic, Instant) {
        let traffic = Traffic::start(port);
        wait_for("traffic to flow", Duration::from_secs(10), || {
            (traffic.answered.load(Ordering::SeqCst) >= 30).then_some(())
        });
        let killed = Instant::now();
        kill();
        (traffic, killed)
    }

    /// Stops it and checks every request was answered in time, with a limit's status.
    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("traffic thread");
        }
        let slowest = *self.slowest.lock().unwrap();
        eprintln!("slowest answer during the failover: {slowest:?} (sidecar.timeout {TIMEOUT_MS} ms)");
        // Time to answer once the timeout fired: the fallback's shared-data update and
        // the loopback round trip, on a loaded 2-core machine.
        assert!(
            slowest < Duration::from_millis(TIMEOUT_MS + 250),
            "a request waited {slowest:?}"
        );
        assert_eq!(
            *self.odd.lock().unwrap(),
            Vec::<u16>::new(),
            "statuses other than 200/429"
        );
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Waits for the sidecar to log the recovery, then checks the outage and the recovery
/// were each logged once; returns the log.
fn outage_logged_once(sidecar: &Sidecar) -> String {
    let logged = Instant::now() + Duration::from_secs(10);
    while count(&sidecar.log(), "store answering again") == 0 {
        assert!(Instant::now() < logged, "no recovery logged:\n{}", sidecar.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = sidecar.log();
    assert_eq!(count(&log, "store unreachable"), 1, "{log}");
    assert_eq!(count(&log, "store answering again"), 1, "{log}");
    log
}

#[test]
fn cluster_failovers_crash_planned_and_rejoin_are_exact_again_within_5s() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1, Duration::from_millis(1500));
    let sidecar = Sidecar::start(&["--redis-cluster", &cluster.urls(), "--redis-timeout", "100ms"]);
    let upstream = Upstream::start();
    let envoy = gateway(&sidecar, &upstream);

    // A master dies mid-traffic.
    let victim = cluster.masters()[0];
    let heir = cluster.replicas_of(victim)[0];
    let (traffic, killed) = Traffic::kill_under(envoy.port, || cluster.nodes[victim].kill());
    // While its slots have no master, keys there get the fallback limit. (A key whose
    // requests straddle a failure and a success may get both: at most limit + fallback.)
    let during = probe(&envoy);
    assert!(
        during.contains(&FALLBACK) && during.iter().all(|&a| a <= LIMIT + FALLBACK),
        "while the master is down, keys on it get the fallback limit: {during:?}"
    );
    wait_for("the replica's promotion", Duration::from_secs(30), || {
        (cluster.nodes[heir].role().as_deref() == Some("master")).then_some(())
    });
    let promoted = Instant::now();
    eprintln!("master killed: replica promoted after {:?}", promoted - killed);
    exact_within_bound(&envoy, promoted, "after the promotion");
    traffic.finish();
    // The log tells the outage and the recovery, each once, and the topology change.
    let log = outage_logged_once(&sidecar);
    assert!(count(&log, "topology changed") >= 1, "{log}");
    let health = rampart_test_harness::http::get_once(sidecar.port, "/healthz").unwrap();
    assert_eq!(health.status, 200, "{}", health.body_text());
    assert!(
        health.body_text().contains("\"store\":\"redis-cluster\""),
        "{}",
        health.body_text()
    );
    let metrics = sidecar.metrics_text();
    assert!(
        !metrics.contains("rampart_sidecar_topology_refreshes_total 0"),
        "{metrics}"
    );

    // The old master comes back and rejoins as a replica of its heir.
    cluster.nodes[victim].restart();
    wait_in_sync_as_replica(cluster.nodes[victim].port, "the old master to rejoin as a replica");
    exact_within_bound(&envoy, Instant::now(), "after the old master rejoined");

    // A planned failover: the old master takes its slots back.
    let reply = command(cluster.nodes[victim].port, "CLUSTER FAILOVER").unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");
    wait_for("the planned failover", Duration::from_secs(30), || {
        (cluster.nodes[victim].role().as_deref() == Some("master")).then_some(())
    });
    exact_within_bound(&envoy, Instant::now(), "after CLUSTER FAILOVER");
}

#[test]
fn sentinel_failover_and_rejoin_are_exact_again_within_5s() {
    let mut set = RedisSentinels::start(Duration::from_millis(1000));
    let sidecar = Sidecar::start(&[
        "--redis-sentinel",
        &set.urls(),
        "--sentinel-master",
        rampart_test_harness::redis::SENTINEL_MASTER,
        "--redis-timeout",
        "100ms",
    ]);
    let upstream = Upstream::start();
    let envoy = gateway(&sidecar, &upstream);

    let (traffic, killed) = Traffic::kill_under(envoy.port, || set.master.kill());
    // The one master is down: keys get the fallback limit until the sentinels have
    // promoted the replica (which may happen mid-probe: a key straddling it gets at most
    // limit + fallback).
    let during = probe(&envoy);
    assert!(
        during[0] == FALLBACK && during.iter().all(|&a| a <= LIMIT + FALLBACK),
        "while the master is down, the fallback limit holds: {during:?}\n{}",
        sidecar.log()
    );
    let replica_port = set.replica.port;
    wait_for("the sentinels' failover", Duration::from_secs(30), || {
        (set.master_port() == Some(replica_port) && set.replica.role().as_deref() == Some("master")).then_some(())
    });
    let promoted = Instant::now();
    eprintln!(
        "master killed: sentinels promoted the replica after {:?}",
        promoted - killed
    );
    exact_within_bound(&envoy, promoted, "after the promotion");
    traffic.finish();
    let log = outage_logged_once(&sidecar);
    assert_eq!(count(&log, "sentinel failover noticed"), 1, "{log}");

    // The old master comes back; the sentinels make it a replica of the new one.
    set.master.restart();
    wait_in_sync_as_replica(set.master.port, "the old master to become a replica");
    exact_within_bound(&envoy, Instant::now(), "after the old master rejoined");
}
