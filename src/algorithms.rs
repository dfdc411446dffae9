//! The rate-limit algorithms as pure state transitions: `(state, now) -> (decision, state)`.
//!
//! State travels as a small fixed-size byte string so the same code serves node-local
//! shared data and, later, the sidecar. A state whose tag or length does not match the
//! algorithm (a fresh slot, or a layer whose algorithm changed on reload) reads as empty.
//! All times are nanoseconds since the Unix epoch, supplied by the caller: one clock,
//! injected, so window maths is tested deterministically.

use crate::policy::Algorithm;

pub const NS_PER_MS: u64 = 1_000_000;
/// Retry-After given for a concurrency rejection: in-flight slots free up at the pace of
/// the upstream, which the filter cannot predict.
pub const CONCURRENCY_RETRY_NS: u64 = 1_000_000_000;

/// Encoded state: one tag byte and up to three little-endian u64 fields.
pub const STATE_LEN: usize = 25;
pub type State = [u8; STATE_LEN];

const TAG_FIXED: u8 = 1;
const TAG_SLIDING: u8 = 2;
const TAG_GCRA: u8 = 3;
const TAG_CONCURRENCY: u8 = 4;

/// What one layer says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    /// Requests left after this one and every other token `granted` with it.
    pub remaining: u64,
    /// Until the counter is back to full, in nanoseconds.
    pub reset_ns: u64,
    /// When rejected: how long until a retry can succeed, in nanoseconds.
    pub retry_after_ns: u64,
    /// Tokens taken from the counter (more than one when coalesced hits are charged together).
    pub granted: u64,
}

impl Decision {
    fn allow(limit: u64, capacity: u64, granted: u64, reset_ns: u64) -> Self {
        Decision {
            allowed: true,
            limit,
            remaining: capacity.saturating_sub(granted),
            reset_ns,
            retry_after_ns: 0,
            granted,
        }
    }

    fn reject(limit: u64, reset_ns: u64, retry_after_ns: u64) -> Self {
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset_ns,
            retry_after_ns,
            granted: 0,
        }
    }
}

fn tag_of(alg: &Algorithm) -> u8 {
    match alg {
        Algorithm::FixedWindow { .. } => TAG_FIXED,
        Algorithm::SlidingWindow { .. } => TAG_SLIDING,
        Algorithm::TokenBucket { .. } => TAG_GCRA,
        Algorithm::Concurrency => TAG_CONCURRENCY,
    }
}

/// A stored state's fields (all zeros when absent or not this algorithm's).
pub fn decode(alg: &Algorithm, raw: Option<&[u8]>) -> [u64; 3] {
    match raw {
        Some(b) if b.len() == STATE_LEN && b[0] == tag_of(alg) => {
            let mut f = [0u64; 3];
            for (i, field) in f.iter_mut().enumerate() {
                let mut w = [0u8; 8];
                w.copy_from_slice(&b[1 + i * 8..9 + i * 8]);
                *field = u64::from_le_bytes(w);
            }
            f
        }
        _ => [0; 3],
    }
}

fn encode(alg: &Algorithm, f: [u64; 3]) -> State {
    let mut s = [0u8; STATE_LEN];
    s[0] = tag_of(alg);
    for (i, v) in f.iter().enumerate() {
        s[1 + i * 8..9 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    s
}

/// How many tokens to take from a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// One request.
    One,
    /// As many as fit, up to this many (the sidecar's coalesced hits).
    UpTo(u64),
    /// Exactly this many, recorded even past the limit (hits already admitted
    /// elsewhere, reported after the fact).
    Record(u64),
}

impl Want {
    fn grant(self, capacity: u64) -> u64 {
        match self {
            Want::One => capacity.min(1),
            Want::UpTo(n) => capacity.min(n),
            Want::Record(n) => n,
        }
    }
}

/// Charges one request against `raw` state. Returns the decision and, when the state
/// changed, the new state to store.
pub fn admit(alg: &Algorithm, limit: u64, burst: u64, raw: Option<&[u8]>, now: u64) -> (Decision, Option<State>) {
    charge(alg, limit, burst, raw, now, Want::One)
}

/// The general form of `admit`: takes `want` tokens. `decision.granted` says how many
/// were taken; a decision is `allowed` when the counter had room before this charge.
pub fn charge(
    alg: &Algorithm,
    limit: u64,
    burst: u64,
    raw: Option<&[u8]>,
    now: u64,
    want: Want,
) -> (Decision, Option<State>) {
    let (d, next) = charge_fields(alg, limit, burst, decode(alg, raw), now, want);
    (d, next.map(|f| encode(alg, f)))
}

/// The state's three numbers, without the tag (entries of a counter table store these).
pub type Fields = [u64; 3];

/// `charge` on decoded fields; all zeros is a fresh counter.
pub fn charge_fields(
    alg: &Algorithm,
    limit: u64,
    burst: u64,
    f: Fields,
    now: u64,
    want: Want,
) -> (Decision, Option<Fields>) {
    match *alg {
        Algorithm::FixedWindow { window_ms } => fixed(window_ms * NS_PER_MS, limit, f, now, want),
        Algorithm::SlidingWindow { window_ms } => sliding(window_ms * NS_PER_MS, limit, f, now, want),
        Algorithm::TokenBucket { window_ms, .. } => gcra(window_ms * NS_PER_MS, limit, burst, f, now, want),
        Algorithm::Concurrency => {
            // In-flight slots are taken and returned one by one.
            let in_flight = f[0];
            if in_flight < limit {
                let d = Decision::allow(limit, limit - in_flight, 1, 0);
                (d, Some([in_flight + 1, 0, 0]))
            } else {
                (Decision::reject(limit, 0, CONCURRENCY_RETRY_NS), None)
            }
        }
    }
}

/// Returns one in-flight request to a concurrency counter. `None` when nothing changes.
pub fn release(alg: &Algorithm, raw: Option<&[u8]>) -> Option<State> {
    release_fields(alg, decode(alg, raw)).map(|f| encode(alg, f))
}

/// `release` on decoded fields.
pub fn release_fields(alg: &Algorithm, f: Fields) -> Option<Fields> {
    if *alg != Algorithm::Concurrency {
        return None;
    }
    let in_flight = f[0];
    (in_flight > 0).then(|| [in_flight - 1, 0, 0])
}

/// What a counter still holds at `now`, as an ordering key: 0 when it holds nothing (it
/// would read as fresh, so its table entry is free to reuse); otherwise, the more it
/// holds, the more its client would be forgiven if it were dropped. Requests counted in
/// the window (weighted, for sliding windows), requests in flight, or for token buckets
/// the time until the bucket is full again, in ms.
pub fn usage(alg: &Algorithm, f: Fields, now: u64) -> u64 {
    match *alg {
        Algorithm::FixedWindow { window_ms } => {
            let w = (window_ms * NS_PER_MS).max(1);
            if f[0] == now / w {
                f[1]
            } else {
                0
            }
        }
        Algorithm::SlidingWindow { window_ms } => {
            let s = SlidingNow::of(f, (window_ms * NS_PER_MS).max(1), now);
            s.est.div_ceil(s.w as u128).min(u64::MAX as u128) as u64
        }
        Algorithm::TokenBucket { .. } => f[0].saturating_sub(now).div_ceil(NS_PER_MS),
        Algorithm::Concurrency => f[0],
    }
}

fn fixed(w: u64, limit: u64, f: Fields, now: u64, want: Want) -> (Decision, Option<Fields>) {
    let w = w.max(1);
    let win = now / w;
    let count = if f[0] == win { f[1] } else { 0 };
    let end = (win + 1) * w;
    let reset_ns = end - now;
    let capacity = limit.saturating_sub(count);
    let g = want.grant(capacity);
    let next = (g > 0).then_some([win, count.saturating_add(g), 0]);
    if capacity > 0 {
        (Decision::allow(limit, capacity, g, reset_ns), next)
    } else {
        (Decision::reject(limit, reset_ns, reset_ns), next)
    }
}

/// A sliding window's standing at `now`: this window's count, the previous one's, and
/// the estimate, scaled by `w` to stay in integers: prev * (w - elapsed) + cur * w.
struct SlidingNow {
    w: u64,
    win: u64,
    cur: u64,
    prev: u64,
    elapsed: u64,
    est: u128,
}

impl SlidingNow {
    fn of(f: Fields, w: u64, now: u64) -> SlidingNow {
        let win = now / w;
        let (cur, prev) = if f[0] == win {
            (f[1], f[2])
        } else if f[0].wrapping_add(1) == win {
            (0, f[1])
        } else {
            (0, 0)
        };
        let elapsed = now - win * w;
        let est = prev as u128 * (w - elapsed) as u128 + cur as u128 * w as u128;
        SlidingNow {
            w,
            win,
            cur,
            prev,
            elapsed,
            est,
        }
    }
}

/// Two-counter sliding window: the previous window's count weighted by how much of it
/// still overlaps the sliding window, plus the current count. Assumes requests were
/// spread evenly over the previous window; the error is bounded by that window's count.
fn sliding(w: u64, limit: u64, f: Fields, now: u64, want: Want) -> (Decision, Option<Fields>) {
    let SlidingNow {
        w,
        win,
        cur,
        prev,
        elapsed,
        est,
    } = SlidingNow::of(f, w.max(1), now);
    let (w128, limit128) = (w as u128, limit as u128);
    let reset_ns = w - elapsed;
    // Whole requests that still fit under the limit, this one included.
    let capacity = (limit128 * w128).saturating_sub(est) / w128;
    let capacity = capacity.min(u64::MAX as u128) as u64;
    let g = want.grant(capacity);
    let next = (g > 0).then_some([win, cur.saturating_add(g), prev]);
    if capacity > 0 {
        return (Decision::allow(limit, capacity, g, reset_ns), next);
    }
    let retry_after_ns = if cur >= limit {
        // Wait into the next window, where `cur` becomes the weighted previous count.
        let excess = (cur - limit + 1) as u128;
        reset_ns + ((w128 * excess).div_ceil(cur.max(1) as u128)) as u64
    } else {
        // prev * (w - e) <= (limit - 1 - cur) * w  ⇔  e >= w - (limit-1-cur) * w / prev.
        let room = (limit - 1 - cur) as u128 * w128;
        let need = w128 - room / (prev.max(1) as u128);
        (need as u64).saturating_sub(elapsed).max(1)
    };
    (Decision::reject(limit, reset_ns, retry_after_ns), next)
}

/// GCRA: the state is the theoretical arrival time (TAT) of the next request. Each
/// request advances it by the emission interval `t = window / limit`; a request is
/// admitted while the TAT stays within `burst * t` of now.
fn gcra(w: u64, limit: u64, burst: u64, f: Fields, now: u64, want: Want) -> (Decision, Option<Fields>) {
    let t = (w / limit.max(1)).max(1);
    let tolerance = t.saturating_mul(burst);
    let tat = f[0].max(now);
    let capacity = if tat.saturating_add(t) - now <= tolerance {
        (tolerance - (tat - now)) / t
    } else {
        0
    };
    let g = want.grant(capacity);
    let new_tat = tat.saturating_add(t.saturating_mul(g));
    let next = (g > 0).then_some([new_tat, 0, 0]);
    if capacity > 0 {
        (Decision::allow(burst, capacity, g, new_tat - now), next)
    } else {
        let retry_after_ns = (tat.saturating_add(t) - tolerance).saturating_sub(now);
        (Decision::reject(burst, new_tat - now, retry_after_ns), next)
    }
}

/// Whole seconds for headers, rounded up so a client that waits that long succeeds.
pub fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// Runs `n` requests at `now` through `alg`, threading state; returns how many passed.
    fn run(alg: &Algorithm, limit: u64, burst: u64, state: &mut Option<State>, now: u64, n: u64) -> u64 {
        let mut ok = 0;
        for _ in 0..n {
            let (d, next) = admit(alg, limit, burst, state.as_ref().map(|s| &s[..]), now);
            if d.allowed {
                ok += 1;
            }
            if next.is_some() {
                *state = next;
            }
        }
        ok
    }

    #[test]
    fn usage_is_what_dropping_a_counter_would_forgive() {
        let t0 = 1_000 * 60 * S; // the start of a 1-minute window
        let fixed = Algorithm::FixedWindow { window_ms: 60_000 };
        let mut st = None;
        run(&fixed, 5, 5, &mut st, t0, 3);
        let f = decode(&fixed, st.as_ref().map(|s| &s[..]));
        assert_eq!(usage(&fixed, f, t0 + S), 3);
        assert_eq!(usage(&fixed, f, t0 + 60 * S), 0, "the next window holds nothing");
        let sliding = Algorithm::SlidingWindow { window_ms: 60_000 };
        let mut st = None;
        run(&sliding, 10, 10, &mut st, t0, 4);
        let f = decode(&sliding, st.as_ref().map(|s| &s[..]));
        assert_eq!(usage(&sliding, f, t0 + S), 4);
        assert_eq!(
            usage(&sliding, f, t0 + 90 * S),
            2,
            "half of the previous window still counts"
        );
        assert_eq!(usage(&sliding, f, t0 + 120 * S), 0);
        let bucket = Algorithm::TokenBucket {
            window_ms: 1_000,
            burst: 10,
        };
        let mut st = None;
        run(&bucket, 10, 10, &mut st, t0, 2);
        let f = decode(&bucket, st.as_ref().map(|s| &s[..]));
        assert_eq!(usage(&bucket, f, t0), 200, "ms until the bucket is full again");
        assert_eq!(usage(&bucket, f, t0 + S), 0);
        assert_eq!(usage(&Algorithm::Concurrency, [3, 0, 0], t0), 3);
    }

    #[test]
    fn fixed_window_counts_and_resets() {
        let alg = Algorithm::FixedWindow { window_ms: 60_000 };
        let mut st = None;
        let t0 = 1_000 * 60 * S + 10 * S; // 10 s into a window
        assert_eq!(run(&alg, 5, 5, &mut st, t0, 8), 5);
        let (d, _) = admit(&alg, 5, 5, st.as_ref().map(|s| &s[..]), t0);
        assert!(!d.allowed);
        assert_eq!(ceil_secs(d.retry_after_ns), 50);
        assert_eq!(run(&alg, 5, 5, &mut st, t0 + 50 * S, 8), 5, "new window starts fresh");
    }

    #[test]
    fn fixed_window_remaining_counts_down() {
        let alg = Algorithm::FixedWindow { window_ms: 1_000 };
        let (d, s) = admit(&alg, 3, 3, None, 5 * S);
        assert_eq!((d.allowed, d.remaining), (true, 2));
        let (d, _) = admit(&alg, 3, 3, s.as_ref().map(|s| &s[..]), 5 * S);
        assert_eq!((d.allowed, d.remaining), (true, 1));
    }

    #[test]
    fn sliding_window_weights_previous_window() {
        let alg = Algorithm::SlidingWindow { window_ms: 60_000 };
        let mut st = None;
        let start = 100 * 60 * S;
        assert_eq!(run(&alg, 10, 10, &mut st, start, 10), 10);
        // Half way into the next window, half of the previous 10 still count: 5 more fit.
        assert_eq!(run(&alg, 10, 10, &mut st, start + 90 * S, 10), 5);
        // Two windows later everything has slid out.
        assert_eq!(run(&alg, 10, 10, &mut st, start + 240 * S, 20), 10);
    }

    #[test]
    fn sliding_window_retry_after_is_enough() {
        let alg = Algorithm::SlidingWindow { window_ms: 10_000 };
        let mut st = None;
        let start = 1000 * 10 * S;
        run(&alg, 4, 4, &mut st, start, 4);
        let (d, _) = admit(&alg, 4, 4, st.as_ref().map(|s| &s[..]), start + S);
        assert!(!d.allowed);
        // Waiting exactly retry_after must admit one request.
        let later = start + S + d.retry_after_ns;
        assert_eq!(run(&alg, 4, 4, &mut st, later, 1), 1);
        // ...and one nanosecond less must not (the estimate is monotone in time).
        let mut st2 = None;
        run(&alg, 4, 4, &mut st2, start, 4);
        assert_eq!(run(&alg, 4, 4, &mut st2, later - 1_000_000, 1), 0);
    }

    #[test]
    fn token_bucket_burst_then_rate() {
        let alg = Algorithm::TokenBucket {
            window_ms: 1_000,
            burst: 5,
        };
        let mut st = None;
        let t0 = 50 * S;
        assert_eq!(run(&alg, 10, 5, &mut st, t0, 20), 5, "burst admits 5 at once");
        // Rate 10/s: 100 ms buys exactly one more.
        assert_eq!(run(&alg, 10, 5, &mut st, t0 + S / 10, 3), 1);
        let (d, _) = admit(&alg, 10, 5, st.as_ref().map(|s| &s[..]), t0 + S / 10);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, S / 10);
        // Idle for a second: the bucket is full again, not fuller.
        assert_eq!(run(&alg, 10, 5, &mut st, t0 + 5 * S, 20), 5);
    }

    #[test]
    fn concurrency_acquire_release() {
        let alg = Algorithm::Concurrency;
        let mut st = None;
        assert_eq!(run(&alg, 2, 2, &mut st, S, 3), 2);
        st = release(&alg, st.as_ref().map(|s| &s[..]));
        assert_eq!(run(&alg, 2, 2, &mut st, S, 3), 1);
        // Releasing more than was taken never underflows.
        let mut s = st;
        for _ in 0..5 {
            if let Some(n) = release(&alg, s.as_ref().map(|s| &s[..])) {
                s = Some(n);
            }
        }
        assert_eq!(decode(&alg, s.as_ref().map(|s| &s[..]))[0], 0);
    }

    #[test]
    fn coalesced_charges_never_take_more_than_the_limit() {
        for alg in [
            Algorithm::FixedWindow { window_ms: 60_000 },
            Algorithm::SlidingWindow { window_ms: 60_000 },
            Algorithm::TokenBucket {
                window_ms: 60_000,
                burst: 1_000,
            },
        ] {
            let mut st: Option<State> = None;
            let mut taken = 0;
            loop {
                let (d, next) = charge(&alg, 1_000, 1_000, st.as_ref().map(|s| &s[..]), 7 * S, Want::UpTo(7));
                if d.granted == 0 {
                    break;
                }
                assert_eq!(d.remaining + d.granted + taken, 1_000, "{alg:?}");
                taken += d.granted;
                st = next;
            }
            assert_eq!(taken, 1_000, "{alg:?}: the whole quota, and not one more");
        }
    }

    #[test]
    fn record_counts_past_the_limit_and_up_to_takes_what_fits() {
        let alg = Algorithm::FixedWindow { window_ms: 60_000 };
        let (d, st) = charge(&alg, 5, 5, None, S, Want::Record(9));
        assert_eq!((d.allowed, d.remaining), (true, 0));
        let (d, _) = charge(&alg, 5, 5, st.as_ref().map(|s| &s[..]), S, Want::One);
        assert!(!d.allowed, "nine recorded, five allowed: full");
        let (d, st) = charge(&alg, 5, 5, None, S, Want::UpTo(3));
        assert_eq!((d.granted, d.remaining), (3, 2));
        let (d, _) = charge(&alg, 5, 5, st.as_ref().map(|s| &s[..]), S, Want::UpTo(3));
        assert_eq!((d.granted, d.remaining), (2, 0));
    }

    #[test]
    fn foreign_or_garbage_state_reads_as_empty() {
        let fixed = Algorithm::FixedWindow { window_ms: 1_000 };
        let gcra_state = encode(
            &Algorithm::TokenBucket {
                window_ms: 1_000,
                burst: 1,
            },
            [u64::MAX, 0, 0],
        );
        let (d, _) = admit(&fixed, 1, 1, Some(&gcra_state), S);
        assert!(d.allowed);
        let (d, _) = admit(&fixed, 1, 1, Some(b"garbage"), S);
        assert!(d.allowed);
        let (d, _) = admit(&fixed, 1, 1, Some(&[]), S);
        assert!(d.allowed);
    }

    #[test]
    fn clock_going_backwards_does_not_panic() {
        for alg in [
            Algorithm::FixedWindow { window_ms: 1_000 },
            Algorithm::SlidingWindow { window_ms: 1_000 },
            Algorithm::TokenBucket {
                window_ms: 1_000,
                burst: 3,
            },
        ] {
            let mut st = None;
            run(&alg, 3, 3, &mut st, 100 * S, 5);
            run(&alg, 3, 3, &mut st, 10 * S, 5);
            run(&alg, 3, 3, &mut st, 0, 5);
        }
    }
}
