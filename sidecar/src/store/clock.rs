//! Redis's clock, as this sidecar tracks it, for work sent without a script.
//!
//! Scripts read `TIME` themselves. Plain pipelined commands cannot: their keys (which
//! window a hit falls in) are named before Redis sees them. So the sidecar keeps the
//! offset between Redis's clock and its own monotonic clock, from `TIME` answers: the
//! estimate is off by at most half the round trip of the sample it came from, so the
//! quickest recent sample is kept (under load a `TIME` waits behind batches; two clocks
//! that tick alike need no fresh sample to stay in step). A host's wall clock stepping
//! does not move it. Every sidecar sharing a Redis thus files hits under one clock,
//! Redis's, give or take a fraction of a millisecond.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A sample whose round trip took longer says too little about when Redis read its clock.
const MAX_RTT: Duration = Duration::from_millis(50);
/// A kept sample gives way to a slower one after this long (drift between two clocks
/// is parts per million: a millisecond a quarter hour at worst).
const KEEP: Duration = Duration::from_secs(30);
/// Without any answer for this long the estimate is not used (Redis is unreachable,
/// and may come back as another host with another clock).
const STALE: Duration = Duration::from_secs(5);

pub struct RedisClock {
    origin: Instant,
    /// Redis time minus local time since `origin`, in µs.
    offset_us: AtomicI64,
    /// The kept sample's round trip, and when it was taken (µs since `origin`; 0: none).
    rtt_us: AtomicU64,
    sampled_us: AtomicU64,
    /// When Redis last answered a sample (µs since `origin`; 0: never, or forgotten).
    answered_us: AtomicU64,
}

impl Default for RedisClock {
    fn default() -> Self {
        RedisClock {
            origin: Instant::now(),
            offset_us: AtomicI64::new(0),
            rtt_us: AtomicU64::new(0),
            sampled_us: AtomicU64::new(0),
            answered_us: AtomicU64::new(0),
        }
    }
}

impl RedisClock {
    fn local_us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_micros() as u64 + 1
    }

    /// Redis answered `TIME` with `redis_us` to a call sent at `sent`, answered at
    /// `received`. Only the sampler calls this, so its loads and stores need not be one
    /// step.
    pub fn observe(&self, redis_us: u64, sent: Instant, received: Instant) {
        let rtt = received.saturating_duration_since(sent);
        if rtt > MAX_RTT {
            return;
        }
        let (rtt, at) = (rtt.as_micros() as u64, self.local_us(received));
        self.answered_us.store(at, Relaxed);
        let kept = self.sampled_us.load(Relaxed);
        let better = kept == 0 || rtt <= self.rtt_us.load(Relaxed) || at.saturating_sub(kept) > KEEP.as_micros() as u64;
        if better {
            let mid = self.local_us(sent) + rtt / 2;
            self.offset_us.store(redis_us as i64 - mid as i64, Relaxed);
            self.rtt_us.store(rtt, Relaxed);
            self.sampled_us.store(at, Relaxed);
        }
    }

    /// Redis's time now, in µs since the epoch; `None` when Redis has not answered a
    /// sample lately.
    pub fn now_us(&self) -> Option<u64> {
        let now = self.local_us(Instant::now());
        // An answer always leaves a kept sample (the first one is kept).
        let answered = self.answered_us.load(Relaxed);
        if answered == 0 || now.saturating_sub(answered) > STALE.as_micros() as u64 {
            return None;
        }
        u64::try_from(now as i64 + self.offset_us.load(Relaxed)).ok()
    }

    /// Forgets the estimate (the connection failed: Redis may come back as another host).
    pub fn forget(&self) {
        self.answered_us.store(0, Relaxed);
        self.sampled_us.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_from_the_middle_of_the_round_trip() {
        let c = RedisClock::default();
        assert_eq!(c.now_us(), None, "no sample yet");
        let sent = Instant::now();
        let received = sent + Duration::from_micros(200);
        c.observe(1_000_000_000_000, sent, received);
        let est = c.now_us().expect("an estimate");
        // Redis read its clock ~100 µs after `sent`; we are a little after that now.
        let since_sent = Instant::now().duration_since(sent).as_micros() as u64;
        let expected = 1_000_000_000_000 - 100 + since_sent;
        assert!(est.abs_diff(expected) <= 10, "{est} vs {expected}");
        c.forget();
        assert_eq!(c.now_us(), None);
    }

    #[test]
    fn the_quickest_sample_is_kept() {
        let c = RedisClock::default();
        let sent = Instant::now();
        c.observe(5, sent, sent + Duration::from_millis(60));
        assert_eq!(c.now_us(), None, "too slow to say anything");
        c.observe(1_000_000_000, sent, sent + Duration::from_micros(100));
        let good = c.now_us().expect("an estimate");
        // A slower sample that disagrees by 2 ms is not taken over the quick one.
        c.observe(1_000_002_000, sent, sent + Duration::from_millis(4));
        let now = c.now_us().expect("an estimate");
        assert!(now.abs_diff(good) < 1_000, "{now} vs {good}");
    }
}
