//! One suite, every store: memory, Redis, Redis Cluster (real servers on loopback).

use std::time::Duration;

use rampart::wire::Rule;
use rampart_test_harness::redis::{RedisCluster, RedisNode};

use super::connection::Target;
use super::layout::WindowHash;
use super::memory::MemoryStore;
use super::redis::RedisStore;
use super::{Call, KeyState, Mode, Observe, Store};
use rampart::wire::Distinct;

const TIMEOUT: Duration = Duration::from_millis(500);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn rules() -> [Rule; 3] {
    [
        Rule::FixedWindow {
            limit: 5,
            window_ms: 3_600_000,
        },
        Rule::SlidingWindow {
            limit: 5,
            window_ms: 3_600_000,
        },
        Rule::TokenBucket {
            limit: 5,
            window_ms: 3_600_000,
            burst: 5,
        },
    ]
}

/// The behaviour every store must share.
async fn suite(store: &Store, tag: &str) {
    for rule in rules() {
        let key = format!("{tag}-{}", rule.algorithm().name());
        // One at a time: exactly the limit, then a rejection with a Retry-After.
        for i in 0..5 {
            let a = store
                .apply(&key, rule, 1, Mode::Check, Observe::default())
                .await
                .expect("apply");
            assert_eq!((a.granted, a.remaining), (1, 4 - i), "{key} hit {i}");
        }
        let a = store
            .apply(&key, rule, 1, Mode::Check, Observe::default())
            .await
            .expect("apply");
        assert_eq!(a.granted, 0, "{key}: over the limit");
        assert!(a.retry_after_ms > 0, "{key}: retry after");
        // Coalesced: a cost of 3 on a fresh counter with 5 takes 3, then 2 of the next 3.
        let key2 = format!("{key}-coalesced");
        assert_eq!(
            store
                .apply(&key2, rule, 3, Mode::Check, Observe::default())
                .await
                .expect("apply")
                .granted,
            3
        );
        let a = store
            .apply(&key2, rule, 3, Mode::Check, Observe::default())
            .await
            .expect("apply");
        assert_eq!((a.granted, a.remaining), (2, 0), "{key2}");
        // Record adds everything, even past the limit; the counter then reads full.
        let key3 = format!("{key}-record");
        let a = store
            .apply(&key3, rule, 9, Mode::Record, Observe::default())
            .await
            .expect("apply");
        assert_eq!((a.granted, a.remaining), (9, 0), "{key3}");
        assert_eq!(
            store
                .apply(&key3, rule, 1, Mode::Check, Observe::default())
                .await
                .expect("apply")
                .granted,
            0
        );
    }
    guards(store, tag).await;
    batches(store, tag).await;
    reports(store, tag).await;
}

/// Reports (pipelined on Redis) and checks share each counter; a revoked key's report
/// says so.
async fn reports(store: &Store, tag: &str) {
    let names: Vec<String> = (0..200).map(|i| format!("{tag}-report-{i}")).collect();
    for rule in [rules()[0], rules()[1]] {
        let calls: Vec<Call<'_>> = names.iter().map(|n| call(n, rule, 3, Mode::Record)).collect();
        let results = store.apply_many(&calls).await;
        for (n, r) in names.iter().zip(&results) {
            let a = r.as_ref().unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!((a.granted, a.remaining, a.state), (3, 2, KeyState::Ok), "{n} {rule:?}");
            assert!(a.reset_ms > 0 && a.reset_ms <= 3_600_000, "{a:?}");
        }
        for (round, recorded) in [(2, 6), (3, 9)] {
            for (n, r) in names.iter().zip(store.apply_many(&calls).await) {
                let a = r.unwrap_or_else(|e| panic!("{n}: {e}"));
                assert_eq!((a.granted, a.remaining), (3, 0), "{n}: {recorded} of 5 recorded");
                // Full before this report (round 3): a retry-after.
                assert_eq!(a.retry_after_ms > 0, round == 3, "{n} round {round}: {a:?}");
            }
        }
        // A check sees what was reported: full.
        let checks: Vec<Call<'_>> = names.iter().map(|n| call(n, rule, 1, Mode::Check)).collect();
        for (n, r) in names.iter().zip(store.apply_many(&checks).await) {
            assert_eq!(r.map(|a| a.granted), Ok(0), "{n}: reported full");
        }
    }
    let revoked = format!("{tag}-report-revoked");
    store.revoke(&revoked, "stolen").await.expect("revoke");
    let calls = [
        call(&names[0], rules()[0], 1, Mode::Record),
        call(&revoked, rules()[0], 1, Mode::Record),
    ];
    let results = store.apply_many(&calls).await;
    assert_eq!(
        results[1].as_ref().map(|a| a.state),
        Ok(KeyState::Revoked),
        "{results:?}"
    );
    assert_eq!(results[0].as_ref().map(|a| a.state), Ok(KeyState::Ok), "{results:?}");
}

fn call<'a>(key: &'a str, rule: Rule, cost: u64, mode: Mode) -> Call<'a> {
    Call {
        key,
        rule,
        cost,
        mode,
        seen: Observe::default(),
    }
}

/// Many counters in one call: mixed algorithms and modes, answered in order; exact when
/// batches race on one counter.
async fn batches(store: &Store, tag: &str) {
    let names: Vec<String> = (0..300).map(|i| format!("{tag}-batch-{i}")).collect();
    let calls: Vec<Call<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mode = if i % 5 == 0 { Mode::Record } else { Mode::Check };
            call(n, rules()[i % 3], 1 + (i % 7) as u64, mode)
        })
        .collect();
    let results = store.apply_many(&calls).await;
    assert_eq!(results.len(), calls.len());
    for (c, r) in calls.iter().zip(&results) {
        let a = r.as_ref().unwrap_or_else(|e| panic!("{}: {e}", c.key));
        // A fresh counter of 5 grants what fits of the cost (all of it when recording).
        let expected = if c.mode == Mode::Record { c.cost } else { c.cost.min(5) };
        assert_eq!(a.granted, expected, "{} ({:?}, cost {})", c.key, c.rule, c.cost);
        assert_eq!(a.remaining, 5u64.saturating_sub(c.cost), "{}", c.key);
    }
    // Eight batches of 25 racing on one counter of 100 (with other counters around):
    // exactly 100 granted.
    let hot = format!("{tag}-hot");
    let others: Vec<String> = (0..8 * 25).map(|i| format!("{tag}-around-{i}")).collect();
    let rule = Rule::FixedWindow {
        limit: 100,
        window_ms: 3_600_000,
    };
    let granted: u64 = futures_util::future::join_all((0..8).map(|b| {
        let calls: Vec<Call<'_>> = (0..25)
            .flat_map(|i| {
                [
                    call(&hot, rule, 1, Mode::Check),
                    call(&others[b * 25 + i], rule, 1, Mode::Check),
                ]
            })
            .collect();
        async move {
            let hot_results = store.apply_many(&calls).await;
            hot_results
                .iter()
                .step_by(2)
                .map(|r| r.as_ref().map_or(0, |a| a.granted))
                .sum::<u64>()
        }
    }))
    .await
    .into_iter()
    .sum();
    assert_eq!(granted, 100, "200 hits over 8 concurrent batches, limit 100");
}

/// Revocation, restore, and distinct-client flag and block.
async fn guards(store: &Store, tag: &str) {
    let rule = rules()[0];
    let key = format!("{tag}-revoked");
    store.revoke(&key, "stolen").await.expect("revoke");
    let a = store
        .apply(&key, rule, 1, Mode::Check, Observe::default())
        .await
        .expect("apply");
    assert_eq!(
        (a.state, a.granted),
        (KeyState::Revoked, 0),
        "a revoked key is not charged"
    );
    let info = store.inspect(&key).await.expect("inspect");
    assert!(info.revoked && info.reason.as_deref() == Some("stolen"), "{info:?}");
    assert!(store.list().await.expect("list").iter().any(|k| k.key == key));
    store.restore(&key).await.expect("restore");
    let a = store
        .apply(&key, rule, 1, Mode::Check, Observe::default())
        .await
        .expect("apply");
    assert_eq!((a.state, a.granted), (KeyState::Ok, 1));

    let clients: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    let flag = Distinct {
        limit: 3,
        window_ms: 600_000,
        block: false,
        cooldown_ms: 600_000,
    };
    let key = format!("{tag}-flag");
    let seen = |n: usize| Observe {
        clients: &clients[..n],
        distinct: Some(flag),
    };
    assert_eq!(
        store
            .apply(&key, rule, 1, Mode::Check, seen(3))
            .await
            .expect("apply")
            .state,
        KeyState::Ok
    );
    let a = store.apply(&key, rule, 1, Mode::Check, seen(5)).await.expect("apply");
    assert_eq!(
        (a.state, a.granted),
        (KeyState::Flagged, 1),
        "flagged keys are still admitted"
    );
    assert!(a.distinct >= 4, "{a:?}");

    let block = Distinct {
        block: true,
        cooldown_ms: 60_000,
        ..flag
    };
    let key = format!("{tag}-block");
    let a = store
        .apply(
            &key,
            rule,
            1,
            Mode::Check,
            Observe {
                clients: &clients,
                distinct: Some(block),
            },
        )
        .await
        .expect("apply");
    assert_eq!(a.state, KeyState::Blocked);
    assert!(a.retry_after_ms > 50_000, "{a:?}");
    let a = store
        .apply(&key, rule, 1, Mode::Check, Observe::default())
        .await
        .expect("apply");
    assert_eq!(a.state, KeyState::Blocked, "blocked for the cooldown, whoever asks");
    let listed = store.list().await.expect("list");
    assert!(listed.iter().any(|k| k.key == key && k.blocked_ms > 0), "{listed:?}");
    store.restore(&key).await.expect("restore");
    assert_eq!(
        store
            .apply(&key, rule, 1, Mode::Check, Observe::default())
            .await
            .expect("apply")
            .state,
        KeyState::Ok
    );
}

#[test]
fn memory_store() {
    rt().block_on(suite(&Store::Memory(Box::new(MemoryStore::new(1000))), "m"));
}

#[test]
fn memory_store_is_bounded_and_a_full_one_forgets_the_least() {
    const MAX: usize = 1_000;
    let m = MemoryStore::new(MAX);
    let rule = Rule::FixedWindow {
        limit: 3,
        window_ms: 3_600_000,
    };
    let check = |key: &str| m.apply(key, rule, 1, Mode::Check, Observe::default()).granted;
    let hot = "hammering-client";
    assert_eq!((0..4).map(|_| check(hot)).sum::<u64>(), 3, "at its limit");
    // Ten times the store's size in other keys passes through, one check each.
    for i in 0..10 * MAX {
        assert_eq!(check(&format!("k{i}")), 1, "key {i} admitted");
        assert!(m.len() <= MAX, "{} keys held", m.len());
        if i % 997 == 0 {
            assert_eq!(check(hot), 0, "forgiven after {i} other keys");
        }
    }
    assert_eq!(check(hot), 0, "still limited");
}

#[test]
fn a_full_memory_store_does_the_same_work_per_insert_whatever_its_size() {
    // Churn through a full store of 1,000 and one of 1,000,000 keys: each insert looks
    // at the same few entries (the old store scanned every key once full). The times
    // are printed, not asserted.
    let rule = Rule::FixedWindow {
        limit: 3,
        window_ms: 3_600_000,
    };
    for max in [1_000, 1_000_000] {
        let m = MemoryStore::new(max);
        for i in 0..max {
            m.apply(&format!("fill{i}"), rule, 1, Mode::Check, Observe::default());
        }
        assert_eq!(m.examined(), 0, "nothing to make room for until full");
        const CHURN: u64 = 20_000;
        let t = std::time::Instant::now();
        for i in 0..CHURN {
            m.apply(&format!("churn{i}"), rule, 1, Mode::Check, Observe::default());
        }
        let per = t.elapsed() / CHURN as u32;
        eprintln!(
            "full store of {max} keys: {per:?} per insert, {} entries examined",
            m.examined()
        );
        assert_eq!(m.examined(), CHURN * crate::bounded::SAMPLES as u64);
        assert_eq!(m.len(), max);
    }
}

/// A connected store, once it knows Redis's clock (so window counters go pipelined).
async fn ready(target: Target, timeout: Duration) -> Store {
    let store = RedisStore::connect(target, timeout).await.expect("connect");
    for _ in 0..100 {
        if store.pipelines() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.pipelines(), "Redis's clock sampled within 2 s");
    Store::Redis(Box::new(store))
}

async fn single(redis: &RedisNode, timeout: Duration) -> Store {
    ready(Target::Single(redis.url()), timeout).await
}

async fn clustered(cluster: &RedisCluster) -> Store {
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    ready(Target::Cluster(urls), TIMEOUT).await
}

/// Script calls a Redis node has run so far (`INFO commandstats`), not counting those
/// refused (NOSCRIPT before the client loads the script).
fn script_calls(port: u16) -> u64 {
    command_calls(port, "evalsha")
}

/// Calls of `command` a Redis node has run so far, not counting refused or failed ones.
fn command_calls(port: u16, command: &str) -> u64 {
    let stats = rampart_test_harness::redis::command(port, "INFO commandstats").unwrap_or_default();
    let Some(line) = stats.lines().find(|l| l.starts_with(&format!("cmdstat_{command}:"))) else {
        return 0;
    };
    let field = |name: &str| -> u64 {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.trim().parse().ok())
            .unwrap_or(0)
    };
    field("calls").saturating_sub(field("failed_calls") + field("rejected_calls"))
}

#[test]
fn redis_store() {
    let redis = RedisNode::start();
    rt().block_on(async {
        let store = single(&redis, TIMEOUT).await;
        suite(&store, "r").await;
    });
    // Every counter key carries a TTL, so Redis never fills with dead counters (only
    // revocations and the listing sets live until removed).
    let counters =
        every_key_expires(redis.port, "rampart:v3:*") + every_key_expires(redis.port, "rampart:v1:token_bucket:*");
    assert!(counters > 100, "{counters} counter keys");
}

/// Asserts that every key matching `pattern` on the node at `port` has a TTL; returns
/// how many there are.
fn every_key_expires(port: u16, pattern: &str) -> usize {
    let keys = rampart_test_harness::redis::command(port, &format!("KEYS {pattern}")).unwrap_or_default();
    let keys: Vec<&str> = keys.lines().filter(|l| l.starts_with("rampart:")).collect();
    for key in &keys {
        let ttl = rampart_test_harness::redis::command(port, &format!("PTTL {key}")).unwrap();
        let ttl: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
    keys.len()
}

/// The names of counter `name`'s window hashes for the window before Redis's time on
/// `port`, this one and the next (one may turn over while a test runs).
fn hashes_around_now(port: u16, name: &str, rule: Rule) -> [String; 3] {
    let time = rampart_test_harness::redis::command(port, "TIME").unwrap();
    let secs: u64 = time.lines().nth(2).and_then(|l| l.trim().parse().ok()).expect("TIME");
    let now = WindowHash::at(name, &rule, secs * 1_000_000);
    let next = WindowHash::at(name, &rule, (secs * 1000 + rule.window_ms()) * 1000);
    [now.previous().name(), now.name(), next.name()]
}

#[test]
fn redis_cluster_store() {
    let cluster = RedisCluster::start(3);
    rt().block_on(async {
        let store = clustered(&cluster).await;
        suite(&store, "c").await;
        // Spread many counters: every master must hold some.
        for i in 0..60 {
            store
                .apply(&format!("spread-{i}"), rules()[0], 1, Mode::Check, Observe::default())
                .await
                .expect("apply");
        }
    });
    for n in &cluster.nodes {
        assert!(n.dbsize() > 0, "master on port {} holds no counters", n.port);
    }
}

#[test]
fn redis_errors_are_classified() {
    let redis = RedisNode::start();
    rt().block_on(async {
        let store = single(&redis, Duration::from_millis(200)).await;
        redis.freeze();
        let err = store
            .apply("k", rules()[0], 1, Mode::Check, Observe::default())
            .await
            .expect_err("frozen redis answers nothing");
        assert!(err.transient, "{err}");
        redis.thaw();
    });
}

/// A counter whose key holds something else (another program's data, say) fails alone.
/// A token bucket's key has no window in its name, so the test can spoil it ahead.
async fn bad_counter_fails_alone(store: &Store, port: u16, tag: &str) {
    let rule = rules()[2];
    let bad = format!("{tag}-bad");
    let reply = rampart_test_harness::redis::command(port, &format!("HSET {} field value", bad_key(&bad))).unwrap();
    assert!(reply.starts_with(':'), "{reply}");
    let (a, b) = (format!("{tag}-good-a"), format!("{tag}-good-b"));
    let calls = [
        call(&a, rule, 1, Mode::Check),
        call(&bad, rule, 1, Mode::Check),
        call(&b, rule, 1, Mode::Check),
    ];
    let results = store.apply_many(&calls).await;
    assert_eq!(results[0].as_ref().map(|x| x.granted), Ok(1), "{results:?}");
    assert_eq!(results[2].as_ref().map(|x| x.granted), Ok(1), "{results:?}");
    let err = results[1].as_ref().expect_err("the bad counter fails");
    assert!(!err.transient && err.message.contains("WRONGTYPE"), "{err}");

    // The same for reports (pipelined): a window hash holding a string. Both this
    // window's and the next are spoiled, so a window turning over mid-test changes nothing.
    let fixed = rules()[0];
    let spoiled = format!("{tag}-bad-report");
    for key in &hashes_around_now(port, &spoiled, fixed)[1..] {
        let reply = rampart_test_harness::redis::command(port, &format!("SET {key} spoiled")).unwrap();
        assert!(reply.starts_with("+OK"), "{reply}");
    }
    let calls = [
        call(&a, fixed, 1, Mode::Record),
        call(&spoiled, fixed, 1, Mode::Record),
        call(&spoiled, fixed, 1, Mode::Check),
        call(&b, fixed, 1, Mode::Check),
    ];
    let results = store.apply_many(&calls).await;
    assert_eq!(results[0].as_ref().map(|x| x.granted), Ok(1), "{results:?}");
    assert_eq!(results[3].as_ref().map(|x| x.granted), Ok(1), "{results:?}");
    for bad in &results[1..3] {
        let err = bad.as_ref().expect_err("the bad counter fails, report or check");
        assert!(!err.transient && err.message.contains("WRONGTYPE"), "{err}");
    }
}

fn bad_key(name: &str) -> String {
    super::layout::counter_key(name, &rules()[2])
}

#[test]
fn redis_one_bad_counter_does_not_fail_its_neighbours() {
    let redis = RedisNode::start();
    rt().block_on(async {
        let store = single(&redis, TIMEOUT).await;
        bad_counter_fails_alone(&store, redis.port, "r").await;
    });
}

/// 120 checks and reports over many slots, three times: one pipeline per master (one
/// guard read each: `guard_read`, the guard feed's seq on one Redis, the guard script on
/// a Cluster), no script call; their window hashes expire.
async fn window_counters_pipeline_per_node(store: &Store, ports: &[u16], guard_read: &str) {
    let rule = rules()[0];
    let count = |command: &str| -> u64 { ports.iter().map(|p| command_calls(*p, command)).sum() };
    // The clock's sampler reads the feed's seq too (`GET`, once a second): a try it
    // falls into counts one read more, so the fewest reads over three tries is taken.
    let mut guard_reads = Vec::new();
    for attempt in 0..3 {
        let names: Vec<String> = (0..120).map(|i| format!("piped-{attempt}-{i}")).collect();
        let calls: Vec<Call<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| call(n, rule, 1, if i % 2 == 0 { Mode::Record } else { Mode::Check }))
            .collect();
        let before = (count("evalsha"), count(guard_read), count("hincrby"));
        let results = store.apply_many(&calls).await;
        let after = (count("evalsha"), count(guard_read), count("hincrby"));
        assert!(
            results.iter().all(|r| r.as_ref().is_ok_and(|a| a.granted == 1)),
            "{results:?}"
        );
        assert_eq!(after.0 - before.0, 0, "no batch script for window counters");
        assert_eq!(after.2 - before.2, 120, "one HINCRBY per counter");
        guard_reads.push(after.1 - before.1);
    }
    assert_eq!(
        guard_reads.iter().min(),
        Some(&(ports.len() as u64)),
        "one guard read ({guard_read}) per node: {guard_reads:?}"
    );
    let hashes: usize = ports.iter().map(|p| every_key_expires(*p, "rampart:v3:*")).sum();
    assert!(hashes >= 180, "{hashes} window hashes for 360 counters");
}

#[test]
fn redis_window_counters_go_as_one_pipeline() {
    let redis = RedisNode::start();
    rt().block_on(async {
        let store = single(&redis, TIMEOUT).await;
        window_counters_pipeline_per_node(&store, &[redis.port], "get").await;
        checks_take_back_what_they_did_not_get(&store, redis.port).await;
    });
}

/// Pipelined checks add first and take back what did not fit: the count ends at what
/// was granted, not at what was asked.
async fn checks_take_back_what_they_did_not_get(store: &Store, port: u16) {
    let rule = Rule::FixedWindow {
        limit: 5,
        window_ms: 3_600_000,
    };
    let granted: Vec<u64> = {
        let mut g = Vec::new();
        for _ in 0..3 {
            g.push(
                store
                    .apply("taker", rule, 4, Mode::Check, Observe::default())
                    .await
                    .expect("apply")
                    .granted,
            );
        }
        g
    };
    assert_eq!(granted, [4, 1, 0]);
    // The count, over this window and its neighbours (one may have just turned over).
    let count: u64 = hashes_around_now(port, "taker", rule)
        .iter()
        .map(|key| {
            let reply = rampart_test_harness::redis::command(port, &format!("HGET {key} taker")).unwrap();
            reply
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(count, 5, "12 asked, 5 granted: the count holds 5");
}

#[test]
fn redis_cluster_window_counters_go_as_one_pipeline_per_node() {
    let cluster = RedisCluster::start(3);
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    rt().block_on(async {
        let store = clustered(&cluster).await;
        window_counters_pipeline_per_node(&store, &ports, "eval").await;
    });
}

#[test]
fn redis_cluster_batches_span_slots_in_one_call_per_node() {
    let cluster = RedisCluster::start(3);
    rt().block_on(async {
        let store = clustered(&cluster).await;
        let names: Vec<String> = (0..120).map(|i| format!("spread-{i}")).collect();
        let slots: std::collections::HashSet<u16> = names.iter().map(|n| super::connection::slot_of(n)).collect();
        assert!(slots.len() > 100, "the names cover many slots");
        // Token buckets go through the script (window counters go pipelined).
        let calls: Vec<Call<'_>> = names.iter().map(|n| call(n, rules()[2], 1, Mode::Check)).collect();
        let before: u64 = cluster.nodes.iter().map(|n| script_calls(n.port)).sum();
        let results = store.apply_many(&calls).await;
        let after: u64 = cluster.nodes.iter().map(|n| script_calls(n.port)).sum();
        assert!(
            results.iter().all(|r| r.as_ref().is_ok_and(|a| a.granted == 1)),
            "{results:?}"
        );
        // 120 counters over more than 100 slots: one script call per master.
        assert_eq!(after - before, 3, "script calls for 120 counters on 3 masters");
        // The bad counter's key is written where its slot lives (the others answer MOVED).
        let owner = cluster
            .nodes
            .iter()
            .find(|n| {
                rampart_test_harness::redis::command(n.port, &format!("EXISTS {}", bad_key("c-bad")))
                    .is_ok_and(|r| r.starts_with(':'))
            })
            .expect("a node owns the bad counter's slot");
        bad_counter_fails_alone(&store, owner.port, "c").await;
    });
}

/// The standing sidecar `store` answers for a pipelined report and a pipelined check of
/// `key` (fixed window), and what the check was granted.
async fn standing(store: &Store, key: &str) -> (KeyState, KeyState, u64) {
    let rule = rules()[0];
    let results = store
        .apply_many(&[call(key, rule, 1, Mode::Record), call(key, rule, 1, Mode::Check)])
        .await;
    let report = results[0].as_ref().expect("report");
    let check = results[1].as_ref().expect("check");
    (report.state, check.state, check.granted)
}

/// Guards changed through one sidecar bind every other sidecar of the Redis at once,
/// though their pipelines read no guard key: revocation, restore, and a block set by the
/// distinct-client script. Only the feed's seq is read per pipeline.
#[test]
fn redis_guards_reach_every_sidecar_through_the_feed() {
    let redis = RedisNode::start();
    rt().block_on(async {
        let a = single(&redis, TIMEOUT).await;
        let b = single(&redis, TIMEOUT).await;
        assert_eq!(standing(&b, "fed").await, (KeyState::Ok, KeyState::Ok, 1));
        let exists = command_calls(redis.port, "exists");

        a.revoke("fed", "leaked").await.expect("revoke");
        assert_eq!(
            standing(&b, "fed").await,
            (KeyState::Revoked, KeyState::Revoked, 0),
            "the next pipeline after the revocation refuses the key"
        );
        a.restore("fed").await.expect("restore");
        assert_eq!(standing(&b, "fed").await, (KeyState::Ok, KeyState::Ok, 1));
        assert_eq!(command_calls(redis.port, "exists"), exists, "no guard key read per hit");

        let clients: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
        let block = Distinct {
            limit: 3,
            window_ms: 600_000,
            block: true,
            cooldown_ms: 60_000,
        };
        let seen = Observe {
            clients: &clients,
            distinct: Some(block),
        };
        let blocked = a.apply("fed", rules()[0], 1, Mode::Check, seen).await.expect("apply");
        assert_eq!(blocked.state, KeyState::Blocked);
        let results = b.apply_many(&[call("fed", rules()[0], 1, Mode::Check)]).await;
        let check = results[0].as_ref().expect("check");
        assert_eq!((check.state, check.granted), (KeyState::Blocked, 0));
        assert!(check.retry_after_ms > 50_000, "the block's time left: {check:?}");
    });
}

/// A sidecar far behind catches up over several reads of the log; one whose log was
/// trimmed past it, or whose Redis lost its data, loads everything again.
#[test]
fn redis_guard_feed_catches_up_and_reloads_when_entries_are_missing() {
    let redis = RedisNode::start();
    rt().block_on(async {
        let a = single(&redis, TIMEOUT).await;
        let b = single(&redis, TIMEOUT).await;
        assert_eq!(standing(&b, "behind").await.0, KeyState::Ok);

        // More changes than one read of the log returns.
        let many = 2 * super::guards::CATCH_UP + 10;
        for i in 0..many {
            a.revoke(&format!("many-{i}"), "test").await.expect("revoke");
        }
        a.revoke("behind", "test").await.expect("revoke");
        let (xrange, loads) = (
            command_calls(redis.port, "xrange"),
            command_calls(redis.port, "evalsha"),
        );
        assert_eq!(standing(&b, "behind").await.0, KeyState::Revoked);
        assert_eq!(standing(&b, "many-0").await.0, KeyState::Revoked);
        assert_eq!(command_calls(redis.port, "xrange") - xrange, 3, "three reads of 1,000");
        assert_eq!(
            command_calls(redis.port, "evalsha"),
            loads,
            "no load: the log had it all"
        );

        // The log trimmed past b: the entries after b's are gone.
        a.restore("behind").await.expect("restore");
        let trimmed = rampart_test_harness::redis::command(redis.port, "XTRIM rampart:v1:guards:log MAXLEN 0").unwrap();
        assert!(trimmed.starts_with(':'), "{trimmed}");
        a.revoke("after-trim", "test").await.expect("revoke");
        assert_eq!(
            standing(&b, "behind").await.0,
            KeyState::Ok,
            "the restore lost from the log"
        );
        assert_eq!(standing(&b, "after-trim").await.0, KeyState::Revoked);

        // Redis lost everything without dropping a connection: so do the guards, once
        // the sidecar's next sample sees the seq went back (every second).
        let flushed = rampart_test_harness::redis::command(redis.port, "FLUSHALL").unwrap();
        assert!(flushed.starts_with("+OK"), "{flushed}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let learn = || async {
            let peek = b.apply_many(&[call("after-trim", rules()[0], 0, Mode::Record)]).await;
            peek[0].as_ref().expect("report of cost 0").state
        };
        while learn().await != KeyState::Ok {
            assert!(std::time::Instant::now() < deadline, "still revoked 5 s after a flush");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(standing(&b, "after-trim").await, (KeyState::Ok, KeyState::Ok, 1));
    });
}

/// Behind Sentinel the feed follows the master: a revocation made before the master
/// dies holds on the promoted replica (the feed is forgotten on the connection errors
/// and loaded again there), and one made after the promotion reaches pipelines too.
#[test]
fn sentinel_guards_hold_across_a_failover() {
    use rampart_test_harness::redis::{RedisSentinels, SENTINEL_MASTER};
    let mut set = RedisSentinels::start(Duration::from_millis(1000));
    let target = Target::Sentinel {
        sentinels: set.urls().split(',').map(str::to_string).collect(),
        master: SENTINEL_MASTER.to_string(),
        password: None,
    };
    rt().block_on(async {
        let store = ready(target, TIMEOUT).await;
        store.revoke("before", "test").await.expect("revoke");
        assert_eq!(standing(&store, "before").await.0, KeyState::Revoked);
        // The replica has the revocation before the master goes.
        let synced = rampart_test_harness::redis::command(set.master.port, "WAIT 1 5000").unwrap();
        assert_eq!(synced.trim(), ":1", "the replica acknowledged the writes");
        set.master.kill();
        let replica = set.replica.port;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // Until the promotion calls fail (transient); then the promoted replica answers.
        loop {
            assert!(std::time::Instant::now() < deadline, "no promotion within 30 s");
            let results = store.apply_many(&[call("before", rules()[0], 1, Mode::Record)]).await;
            if set.master_port() == Some(replica) {
                if let Ok(a) = &results[0] {
                    assert_eq!(a.state, KeyState::Revoked, "the revocation held across the failover");
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // That answer may have come from the script (which reads guard keys) while the
        // new master's clock was unknown; once pipelines run again, from the feed.
        let pipelines = || matches!(&store, Store::Redis(r) if r.pipelines());
        while !pipelines() {
            assert!(std::time::Instant::now() < deadline, "pipelines again within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(standing(&store, "before").await.0, KeyState::Revoked);
        store.revoke("after", "test").await.expect("revoke on the new master");
        assert_eq!(standing(&store, "after").await.0, KeyState::Revoked);
        store.restore("before").await.expect("restore");
        assert_eq!(standing(&store, "before").await.0, KeyState::Ok);
    });
}
