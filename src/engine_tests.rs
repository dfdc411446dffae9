//! The decision path end to end against the in-memory host.

use crate::engine::{Event, MAX_CAS_ATTEMPTS};
use crate::testing::{engine, FakeHost};

const S: u64 = 1_000_000_000;
const T0: u64 = 1_000_000 * S;

fn header<'a>(hs: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

#[test]
fn ip_layer_rejects_over_limit_with_headers_and_body() {
    let e = engine(r#"{"layers":[{"name":"edge","key":"ip","algorithm":"fixed_window","limit":3,"window":"1m"}]}"#);
    let mut host = FakeHost::new().with_peer("10.0.0.1:4000");
    for remaining in ["2", "1", "0"] {
        let v = e.check(&mut host, T0);
        assert!(v.rejection.is_none());
        assert_eq!(header(&v.response_headers, "x-ratelimit-remaining"), Some(remaining));
        assert_eq!(header(&v.response_headers, "x-ratelimit-limit"), Some("3"));
    }
    let v = e.check(&mut host, T0);
    let r = v.rejection.expect("fourth request is rejected");
    assert_eq!(r.status, 429);
    assert_eq!(
        header(&r.headers, "retry-after"),
        Some("20"),
        "T0 is 20 s before the window ends"
    );
    assert_eq!(r.body, r#"{"error":"rate_limited","layer":"edge","retry_after":20}"#);
    assert_eq!(host.count_of(0, Event::Allowed), 3);
    assert_eq!(host.count_of(0, Event::Rejected), 1);
    // Another client has its own counter.
    host.next_request().set_peer("10.0.0.2:1");
    assert!(e.check(&mut host, T0).rejection.is_none());
}

#[test]
fn without_a_client_address_ip_layers_do_not_apply_and_say_so() {
    let e = engine(
        r#"{"layers":[
        {"name":"edge","key":"ip","algorithm":"fixed_window","limit":1,"window":"1m"},
        {"name":"keys","key":"header:x-api-key","algorithm":"fixed_window","limit":5,"window":"1m"}]}"#,
    );
    let mut host = FakeHost::new().with_header("x-api-key", b"k");
    for _ in 0..3 {
        assert!(e.check(&mut host, T0).rejection.is_none());
    }
    assert_eq!(host.count_of(0, Event::NoClientIp), 3);
    assert_eq!(host.count_of(0, Event::Allowed), 0);
    assert_eq!(host.count_of(1, Event::Allowed), 3, "the next layer still applies");
}

#[test]
fn rejected_request_is_not_charged_to_later_layers() {
    let e = engine(
        r#"{"layers":[
            {"name":"first","key":"global","algorithm":"fixed_window","limit":1,"window":"1m"},
            {"name":"second","key":"global","algorithm":"fixed_window","limit":100,"window":"1m"}]}"#,
    );
    let mut host = FakeHost::new();
    e.check(&mut host, T0);
    for _ in 0..5 {
        assert!(e.check(&mut host, T0).rejection.is_some());
    }
    assert_eq!(
        host.count_of(1, Event::Allowed),
        1,
        "only the admitted request reached layer two"
    );
}

#[test]
fn headers_report_the_most_restrictive_layer() {
    let e = engine(
        r#"{"headers":"both","layers":[
            {"name":"loose","key":"global","algorithm":"fixed_window","limit":100,"window":"1m"},
            {"name":"tight","key":"global","algorithm":"fixed_window","limit":5,"window":"10s"}]}"#,
    );
    let v = e.check(&mut FakeHost::new(), T0);
    assert_eq!(header(&v.response_headers, "x-ratelimit-limit"), Some("5"));
    assert_eq!(header(&v.response_headers, "x-ratelimit-remaining"), Some("4"));
    assert_eq!(
        header(&v.response_headers, "ratelimit-policy"),
        Some("\"tight\";q=5;w=10")
    );
}

#[test]
fn missing_key_skips_or_denies() {
    let skip = engine(
        r#"{"layers":[{"name":"k","key":"header:x-api-key","algorithm":"fixed_window","limit":1,"window":"1m"}]}"#,
    );
    let mut host = FakeHost::new();
    for _ in 0..3 {
        let v = skip.check(&mut host, T0);
        assert!(v.rejection.is_none());
        assert!(
            v.response_headers.is_empty(),
            "no layer applied, so no numbers to report"
        );
    }
    let deny = engine(
        r#"{"layers":[{"name":"k","key":"header:x-api-key","missing":"deny","status":401,"algorithm":"fixed_window","limit":1,"window":"1m"}]}"#,
    );
    let r = deny.check(&mut FakeHost::new(), T0).rejection.expect("denied");
    assert_eq!(r.status, 401);
    assert!(r.body.contains("missing_key"));
    // An empty header value is as missing as an absent one.
    let r = deny
        .check(&mut FakeHost::new().with_header("x-api-key", b""), T0)
        .rejection;
    assert!(r.is_some());
}

#[test]
fn composite_key_and_query_key() {
    let e = engine(
        r#"{"layers":[{"name":"kq","key":["query:key","ip"],"algorithm":"fixed_window","limit":1,"window":"1m"}]}"#,
    );
    let mut host = FakeHost::new()
        .with_peer("1.1.1.1:1")
        .with_header(":path", b"/a?key=abc");
    assert!(e.check(&mut host, T0).rejection.is_none());
    assert!(e.check(&mut host, T0).rejection.is_some());
    // Same key, percent-encoded differently: the same counter.
    host.set_header(":path", b"/b?key=%61bc");
    assert!(e.check(&mut host, T0).rejection.is_some());
    // Same key from another IP: another counter.
    host.next_request().set_peer("2.2.2.2:1");
    host.set_header(":path", b"/a?key=abc");
    assert!(e.check(&mut host, T0).rejection.is_none());
}

#[test]
fn tiers_pick_limits_from_a_header() {
    let e = engine(
        r#"{"layers":[{"name":"keys","key":"header:x-api-key","algorithm":"fixed_window","limit":1000,"window":"1m",
            "tiers":{"from":"header:x-plan","default":"free","limits":{"free":{"limit":2},"paid":{"limit":5}}}}]}"#,
    );
    let run = |plan: Option<&[u8]>| {
        let key = format!("key-{:?}", plan);
        let mut host = FakeHost::new().with_header("x-api-key", key.as_bytes());
        if let Some(p) = plan {
            host.set_header("x-plan", p);
        }
        (0..10).filter(|_| e.check(&mut host, T0).rejection.is_none()).count()
    };
    assert_eq!(run(Some(b"paid")), 5);
    assert_eq!(run(Some(b"free")), 2);
    assert_eq!(run(None), 2, "absent plan uses the default tier");
    assert_eq!(run(Some(b"platinum\r\n")), 2, "unknown plan uses the default tier");
}

#[test]
fn shadow_layer_counts_but_never_rejects() {
    let e = engine(
        r#"{"layers":[{"name":"s","key":"global","shadow":true,"algorithm":"fixed_window","limit":2,"window":"1m"}]}"#,
    );
    let mut host = FakeHost::new();
    for _ in 0..5 {
        assert!(e.check(&mut host, T0).rejection.is_none());
    }
    assert_eq!(host.count_of(0, Event::Allowed), 2);
    assert_eq!(host.count_of(0, Event::ShadowRejected), 3);
}

#[test]
fn match_limits_layers_to_paths_and_methods() {
    let e = engine(
        r#"{"layers":[{"name":"orders","match":{"path_prefix":"/orders","methods":["POST"]},"key":"route","algorithm":"fixed_window","limit":1,"window":"1m","status":503}]}"#,
    );
    let mut host = FakeHost::new()
        .with_header(":path", b"/orders/1")
        .with_header(":method", b"POST");
    assert!(e.check(&mut host, T0).rejection.is_none());
    assert_eq!(e.check(&mut host, T0).rejection.map(|r| r.status), Some(503));
    host.set_header(":method", b"GET");
    assert!(e.check(&mut host, T0).rejection.is_none());
    host.set_header(":method", b"POST");
    host.set_header(":path", b"/users");
    assert!(e.check(&mut host, T0).rejection.is_none());
}

#[test]
fn concurrency_is_held_until_released_and_released_on_later_rejection() {
    let e = engine(
        r#"{"layers":[
            {"name":"inflight","key":"route","algorithm":"concurrency","limit":2},
            {"name":"rate","key":"header:x-k","algorithm":"fixed_window","limit":1,"window":"1m"}]}"#,
    );
    let mut host = FakeHost::new();
    let mut a = e.check(&mut host, T0);
    let b = e.check(&mut host, T0);
    assert_eq!(a.held.len(), 1);
    assert_eq!(b.held.len(), 1);
    assert!(e.check(&mut host, T0).rejection.is_some(), "two in flight already");
    e.release(&mut host, &mut a.held);
    e.release(&mut host, &mut a.held); // a second release is a no-op
    assert!(a.held.is_empty());
    // Take the freed slot with a request that layer two rejects: the slot comes back at once.
    host.set_header("x-k", b"same");
    assert!(e.check(&mut host, T0).rejection.is_none());
    let rejected = e.check(&mut host, T0);
    assert!(rejected.rejection.is_some());
    assert!(rejected.held.is_empty());
    host.next_request();
    assert!(
        e.check(&mut host, T0).rejection.is_some(),
        "the slot taken by the admitted request is still held"
    );
}

#[test]
fn contention_is_retried_and_store_failure_fails_open() {
    let e = engine(r#"{"layers":[{"name":"g","key":"global","algorithm":"fixed_window","limit":1,"window":"1m"}]}"#);
    let mut host = FakeHost::new();
    host.shared.force_mismatch = 3;
    assert!(e.check(&mut host, T0).rejection.is_none());
    assert!(e.check(&mut host, T0).rejection.is_some(), "the retried write landed");
    let t1 = T0 + 60 * S;
    host.shared.force_mismatch = MAX_CAS_ATTEMPTS + 1;
    assert!(
        e.check(&mut host, t1).rejection.is_none(),
        "endless contention admits uncounted"
    );
    assert_eq!(host.count_of(0, Event::StoreError), 1);
    host.shared.force_mismatch = 0;
    assert!(
        e.check(&mut host, t1).rejection.is_none(),
        "the uncounted request took no quota"
    );
    assert!(e.check(&mut host, t1).rejection.is_some());
    host.shared.fail_with = Some(crate::host_status::UNIMPLEMENTED);
    assert!(e.check(&mut host, t1 + 60 * S).rejection.is_none());
    assert_eq!(host.count_of(0, Event::StoreError), 2);
}

#[test]
fn two_workers_admit_exactly_the_limit_and_remember_rejections() {
    let a = engine(r#"{"layers":[{"name":"g","key":"global","algorithm":"fixed_window","limit":1000,"window":"1m"}]}"#);
    let b = a.sibling();
    let mut host = FakeHost::new();
    let mut admitted = 0;
    let mut gets_at_limit = 0;
    for i in 0..3_000 {
        // Alternate workers, as Envoy spreads connections.
        let w = if i % 2 == 0 { &a } else { &b };
        if w.check(&mut host, T0).rejection.is_none() {
            admitted += 1;
        }
        if i == 1_100 {
            gets_at_limit = host.shared.gets;
        }
    }
    assert_eq!(admitted, 1_000, "exactly the limit across two workers");
    assert_eq!(
        host.shared.gets, gets_at_limit,
        "once refused, each worker stops asking until Retry-After"
    );
}

#[test]
fn remembered_rejection_ends_at_retry_after() {
    let e = engine(r#"{"layers":[{"name":"g","key":"global","algorithm":"fixed_window","limit":2,"window":"1m"}]}"#);
    let mut host = FakeHost::new();
    e.check(&mut host, T0);
    e.check(&mut host, T0);
    let gets = host.shared.gets;
    let r = e.check(&mut host, T0).rejection.expect("over the limit");
    assert_eq!(
        r.headers
            .iter()
            .find(|(n, _)| *n == "retry-after")
            .map(|(_, v)| v.as_str()),
        Some("20")
    );
    for _ in 0..10 {
        assert!(e.check(&mut host, T0 + 5 * S).rejection.is_some());
    }
    assert_eq!(host.shared.gets, gets + 1, "only the first rejection read shared data");
    assert!(e.check(&mut host, T0 + 20 * S).rejection.is_none(), "a new window");
}

#[test]
fn hostile_header_values_are_just_keys() {
    let e = engine(
        r#"{"layers":[{"name":"k","key":"header:x-api-key","algorithm":"fixed_window","limit":1,"window":"1m"}]}"#,
    );
    let mut host = FakeHost::new();
    let huge = vec![b'{'; 64 * 1024];
    for v in [&b"\r\nx: y"[..], &huge, b"\xff\xfe\x00", b"{tag}"] {
        host.set_header("x-api-key", v);
        assert!(
            e.check(&mut host, T0).rejection.is_none(),
            "first use of {:?}",
            &v[..v.len().min(8)]
        );
        assert!(e.check(&mut host, T0).rejection.is_some());
    }
}

fn peer(i: u32) -> String {
    format!("10.{}.{}.{}:1", i >> 16 & 255, i >> 8 & 255, i & 255)
}

#[test]
fn the_table_is_the_whole_footprint() {
    let e = engine(
        r#"{"layers":[{"name":"edge","key":"ip","algorithm":"fixed_window","limit":5,"window":"1m","slots":64}]}"#,
    );
    let mut host = FakeHost::new();
    for i in 0..5_000u32 {
        host.next_request().set_peer(&peer(i));
        e.check(&mut host, T0);
    }
    let all: std::collections::HashSet<String> = e.all_bucket_keys().collect();
    assert_eq!(all.len(), 64 / crate::table::BUCKET);
    assert!(host.shared.map.keys().all(|k| all.contains(k)));
    let entries: usize = host
        .shared
        .map
        .values()
        .map(|(v, _)| crate::table::entries(v).count())
        .sum();
    assert_eq!(entries, 64, "every entry used, none beyond");
    assert!(host.count_of(0, Event::TableFull) >= 5_000 - 64);
}

#[test]
fn clients_own_their_counters_until_the_table_is_full() {
    let e = engine(
        r#"{"layers":[{"name":"edge","key":"ip","algorithm":"fixed_window","limit":3,"window":"1m","slots":256}]}"#,
    );
    let mut host = FakeHost::new();
    // Half the table: each client within its limit is never refused.
    for i in 0..128u32 {
        for _ in 0..3 {
            host.next_request().set_peer(&peer(i));
            assert!(e.check(&mut host, T0).rejection.is_none(), "client {i}");
        }
    }
    assert_eq!(host.count_of(0, Event::TableFull), 0);
    // Each of them is at its limit: their fourth is refused.
    for i in 0..128u32 {
        host.next_request().set_peer(&peer(i));
        assert!(e.check(&mut host, T0).rejection.is_some(), "client {i}");
    }
}

#[test]
fn a_client_at_its_limit_outlives_a_rotation_of_ten_times_the_table() {
    let e = engine(
        r#"{"layers":[{"name":"edge","key":"ip","algorithm":"fixed_window","limit":3,"window":"1m","slots":64}]}"#,
    );
    let mut host = FakeHost::new().with_peer("192.0.2.1:1");
    for _ in 0..3 {
        assert!(e.check(&mut host, T0).rejection.is_none());
    }
    for i in 0..640u32 {
        host.next_request().set_peer(&peer(i));
        assert!(
            e.check(&mut host, T0).rejection.is_none(),
            "a one-shot client is admitted"
        );
        // The limited client keeps trying: the rotation must not reset it. (Its
        // rejections are remembered by this worker; a sibling worker reads the table.)
        host.next_request().set_peer("192.0.2.1:1");
        assert!(
            e.sibling().check(&mut host, T0).rejection.is_some(),
            "after {i} one-shots"
        );
    }
    assert!(host.count_of(0, Event::TableFull) > 500);
}

#[test]
fn a_replaced_concurrency_entry_never_releases_another_client() {
    let e = engine(r#"{"layers":[{"name":"c","key":"ip","algorithm":"concurrency","limit":1,"slots":16}]}"#);
    let mut host = FakeHost::new().with_peer("192.0.2.1:1");
    let mut held = e.check(&mut host, T0).held;
    assert_eq!(held.len(), 1);
    // Every entry of the one bucket is taken by clients still in flight; the 17th
    // replaces one of them (all hold 1: the oldest goes).
    let mut others = Vec::new();
    for i in 0..16u32 {
        host.next_request().set_peer(&peer(i));
        others.push(e.check(&mut host, T0).held);
    }
    assert_eq!(host.count_of(0, Event::TableFull), 1);
    // Whoever lost its entry gives back nothing; nobody else's count drops below what
    // is in flight.
    e.release(&mut host, &mut held);
    e.release(&mut host, &mut others[15]);
    let in_flight: u64 = host
        .shared
        .map
        .values()
        .flat_map(|(v, _)| crate::table::entries(v).map(|x| x.fields[0]).collect::<Vec<_>>())
        .sum();
    assert_eq!(in_flight, 15, "16 entries, 17 clients, two released");
}

#[test]
fn request_reads_only_what_layers_need() {
    let e = engine(r#"{"layers":[{"name":"g","key":"global","algorithm":"fixed_window","limit":5,"window":"1m"}]}"#);
    let mut host = FakeHost::new();
    e.check(&mut host, T0);
    assert_eq!(host.header_reads, 0);
}

mod cluster_layers {
    use super::*;
    use crate::engine::Step;
    use crate::wire::{Batch, Outcome, Outcomes};

    const SYNC: &str = r#"{"sidecar":{"upstream":"sc","key_secret":"0123456789abcdef"},"failure_mode":"FM","layers":[
        {"name":"keys","key":"header:x-api-key","algorithm":"fixed_window","limit":5,"window":"1m","scope":"cluster","sync":"sync"FB},
        {"name":"after","key":"global","algorithm":"fixed_window","limit":100,"window":"1m"}]}"#;

    fn policy(mode: &str, fallback: &str) -> String {
        SYNC.replace("FM", mode).replace("FB", fallback)
    }

    fn outcome(allowed: bool, remaining: u64) -> Outcomes {
        let o = Outcome {
            allowed,
            limit: 5,
            remaining,
            reset_ms: 30_000,
            retry_after_ms: if allowed { 0 } else { 30_000 },
            skipped: false,
            ..Default::default()
        };
        Outcomes { results: vec![o] }
    }

    /// Checks one request, answering the sidecar call with `answer`.
    fn ask(
        w: &crate::testing::Worker,
        host: &mut FakeHost,
        answer: Option<Outcomes>,
    ) -> (Batch, crate::engine::Verdict) {
        let mut st = w.state.borrow_mut();
        match w.engine.check(host, &mut st, T0) {
            Step::Ask(p, body) => {
                let batch: Batch = serde_json::from_slice(&body).expect("a hit batch");
                match w.engine.resume(host, &mut st, *p, answer, T0) {
                    Step::Done(v) => (batch, v),
                    Step::Ask(..) => panic!("asked twice"),
                }
            }
            Step::Done(_) => panic!("a sync layer must ask the sidecar"),
        }
    }

    #[test]
    fn sync_layer_asks_with_a_hashed_key_and_applies_the_answer() {
        let w = engine(&policy("open", ""));
        let mut host = FakeHost::new().with_header("x-api-key", b"sk_live_secret");
        let (batch, v) = ask(&w, &mut host, Some(outcome(true, 3)));
        assert_eq!(batch.hits.len(), 1);
        assert!(batch.hits[0].key.starts_with("keys:"));
        assert!(
            !serde_json::to_string(&batch).unwrap().contains("sk_live"),
            "the API key never leaves in clear"
        );
        assert!(v.rejection.is_none());
        assert_eq!(header(&v.response_headers, "x-ratelimit-remaining"), Some("3"));
        assert_eq!(host.count_of(1, Event::Allowed), 1, "the local layer after it ran");

        let (_, v) = ask(&w, &mut host, Some(outcome(false, 0)));
        assert_eq!(v.rejection.map(|r| r.status), Some(429));
        assert_eq!(
            host.count_of(1, Event::Allowed),
            1,
            "a rejected request is not charged to later layers"
        );
    }

    #[test]
    fn revoked_or_blocked_keys_get_403_and_flags_are_counted() {
        let w = engine(&policy("open", ""));
        let mut host = FakeHost::new().with_header("x-api-key", b"k");
        let denied = |kind, retry_after_ms| Outcomes {
            results: vec![Outcome {
                allowed: false,
                limit: 5,
                retry_after_ms,
                denied: Some(kind),
                ..Default::default()
            }],
        };
        let r = ask(&w, &mut host, Some(denied(crate::wire::Denied::Revoked, 0)))
            .1
            .rejection
            .expect("revoked");
        assert_eq!(r.status, 403);
        assert_eq!(r.body, r#"{"error":"key_revoked","layer":"keys","retry_after":0}"#);
        let r = ask(&w, &mut host, Some(denied(crate::wire::Denied::Blocked, 900_000)))
            .1
            .rejection
            .expect("blocked");
        assert_eq!(header(&r.headers, "retry-after"), Some("900"));
        assert_eq!(host.count_of(0, Event::Denied), 2);
        assert_eq!(host.count_of(1, Event::Allowed), 0, "later layers are not charged");
        let flagged = Outcomes {
            results: vec![Outcome {
                allowed: true,
                limit: 5,
                remaining: 4,
                flagged: true,
                ..Default::default()
            }],
        };
        assert!(
            ask(&w, &mut host, Some(flagged.clone())).1.rejection.is_none(),
            "flagging never refuses"
        );
        ask(&w, &mut host, Some(flagged));
        assert_eq!(host.count_of(0, Event::Flagged), 2);
        assert_eq!(w.state.borrow().flagged_logged.len(), 1, "logged once per key");
    }

    #[test]
    fn distinct_client_layers_send_a_hashed_client() {
        let w = engine(
            r#"{"client_ip":{"from":"xff","trusted_hops":0},"sidecar":{"upstream":"sc"},"layers":[
            {"name":"keys","key":"header:x-api-key","algorithm":"fixed_window","limit":5,"window":"1m","scope":"cluster","sync":"sync",
             "max_ips_per_key":{"limit":50,"window":"10m","action":"block","cooldown":"15m"}}]}"#,
        );
        let mut host = FakeHost::new()
            .with_header("x-api-key", b"k")
            .with_header("x-forwarded-for", b"203.0.113.7");
        let (batch, _) = ask(&w, &mut host, Some(outcome(true, 4)));
        let hit = &batch.hits[0];
        assert_eq!(hit.clients.len(), 1);
        assert!(!hit.clients[0].contains("203"), "the address is hashed");
        let d = hit.distinct.expect("distinct rule");
        assert_eq!(
            (d.limit, d.window_ms, d.block, d.cooldown_ms),
            (50, 600_000, true, 900_000)
        );
    }

    #[test]
    fn sidecar_failure_open_uses_the_fallback_limit() {
        let w = engine(&policy("open", r#","fallback":{"limit":2}"#));
        let mut host = FakeHost::new().with_header("x-api-key", b"k");
        let got: Vec<bool> = (0..4).map(|_| ask(&w, &mut host, None).1.rejection.is_none()).collect();
        assert_eq!(got, [true, true, false, false]);
        assert_eq!(host.count_of(0, Event::SidecarError), 4);
        assert_eq!(host.count_of(0, Event::FailOpen), 4);
        // Without a fallback, fail-open admits everything.
        let w = engine(&policy("open", ""));
        assert!((0..10).all(|_| ask(&w, &mut host, None).1.rejection.is_none()));
    }

    #[test]
    fn sidecar_failure_closed_answers_503() {
        let w = engine(&policy("closed", ""));
        let mut host = FakeHost::new().with_header("x-api-key", b"k");
        let r = ask(&w, &mut host, None).1.rejection.expect("closed");
        assert_eq!(r.status, 503);
        assert!(r.body.contains("rate_limiter_unavailable"));
    }

    #[test]
    fn without_a_tick_async_layers_ask_like_sync_ones() {
        let mut w = engine(
            r#"{"sidecar":{"upstream":"sc"},"layers":[
            {"name":"keys","key":"header:x-api-key","algorithm":"fixed_window","limit":3,"window":"1m","scope":"cluster","sync":"async"}]}"#,
        );
        w.engine.run_async_as_sync();
        let mut host = FakeHost::new().with_header("x-api-key", b"k");
        let (batch, v) = ask(&w, &mut host, Some(outcome(true, 2)));
        assert_eq!(batch.hits.len(), 1);
        assert!(v.rejection.is_none());
    }

    #[test]
    fn async_layer_decides_locally_and_queues_reports() {
        let w = engine(
            r#"{"sidecar":{"upstream":"sc"},"layers":[
            {"name":"keys","key":"header:x-api-key","algorithm":"fixed_window","limit":3,"window":"1m","scope":"cluster","sync":"async","fallback":{"limit":1}}]}"#,
        );
        let mut host = FakeHost::new().with_header("x-api-key", b"k");
        let got: Vec<bool> = (0..5).map(|_| w.check(&mut host, T0).rejection.is_none()).collect();
        assert_eq!(got, [true, true, true, false, false]);
        let (batch, _) = w.state.borrow_mut().views.take_report().expect("hits queued");
        assert_eq!(batch.hits[0].cost, 3);
        // While reports fail, the node-local fallback limit applies.
        w.state.borrow_mut().sidecar_failing = true;
        let mut other = FakeHost::new().with_header("x-api-key", b"other");
        let got: Vec<bool> = (0..3).map(|_| w.check(&mut other, T0).rejection.is_none()).collect();
        assert_eq!(got, [true, false, false]);
    }
}

#[test]
fn random_requests_never_panic() {
    let e = engine(
        r#"{"client_ip":{"from":"xff","trusted_hops":1},"layers":[
        {"name":"a","key":["header:x-k","ip"],"algorithm":"sliding_window","limit":3,"window":"1s"},
        {"name":"b","match":{"path_prefix":"/x","methods":["GET"]},"key":"query:k","algorithm":"token_bucket","limit":2,"window":"1s","burst":2},
        {"name":"c","key":"route","algorithm":"concurrency","limit":2},
        {"name":"d","key":"header:x-plan","missing":"deny","algorithm":"fixed_window","limit":5,"window":"1m",
         "tiers":{"from":"header:x-plan","default":"free","limits":{"free":{"limit":1},"paid":{"limit":9}}}}]}"#,
    );
    let mut seed = 0x1234_5678_9abc_def0_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let junk = |n: u64| -> Vec<u8> { (0..(n % 40)).map(|i| (n >> (i % 56)) as u8).collect() };
    let mut host = FakeHost::new();
    for i in 0..20_000u64 {
        host.next_request();
        for name in [":path", ":method", "x-k", "x-plan", "x-forwarded-for"] {
            let r = next();
            match r % 4 {
                0 => {}
                1 => host.set_header(name, &junk(next())),
                2 => host.set_header(name, b"/x?k=%zz&k=1"),
                _ => host.set_header(name, b"10.0.0.1, ::ffff:10.0.0.2, [::1]:80"),
            }
        }
        if next() % 3 == 0 {
            host.set_peer("not an address");
        } else {
            host.set_peer("192.0.2.1:1234");
        }
        let now = T0 + (next() % 10_000) * 1_000_000 + i;
        let mut v = e.check(&mut host, now);
        e.release(&mut host, &mut v.held);
    }
}
