//! What the operator hears about the store: one line when it stops answering (with the
//! error's class), one when it answers again, never one per request. Also the
//! back-pressure line, at most once a minute with how many hits were refused.
//!
//! During a Redis Cluster failover the calls to the other masters go on succeeding
//! while those to the lost one fail; "answering again" therefore waits for a second
//! without any error, so one outage is one pair of lines.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::METRICS;
use crate::store::StoreError;

/// Errors must stop for this long before the store counts as answering again.
const QUIET_BEFORE_BACK: Duration = Duration::from_secs(1);
/// Back-pressure is reported at most this often.
const BACKPRESSURE_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Outage {
    since: Option<Instant>,
    last_error: Option<Instant>,
    /// A call succeeded after the last error.
    answered_since: bool,
    errors: u64,
}

#[derive(Default)]
pub struct Health {
    /// Fast path: a success while nothing is failing takes no lock.
    failing: AtomicBool,
    outage: Mutex<Outage>,
    refused: AtomicU64,
    refused_logged: Mutex<Option<Instant>>,
}

impl Health {
    pub fn failed(&self, e: &StoreError) {
        let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        o.errors += 1;
        o.last_error = Some(now);
        o.answered_since = false;
        if o.since.is_none() {
            o.since = Some(now);
            self.failing.store(true, Relaxed);
            METRICS.store_up.set(0);
            let class = if e.transient { "transient" } else { "permanent" };
            log::warn!("store unreachable ({class} error): {}", e.message);
        }
    }

    pub fn answered(&self) {
        if !self.failing.load(Relaxed) {
            return;
        }
        let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        o.answered_since = true;
        self.settle(&mut o);
    }

    /// Called every so often: an outage whose errors have stopped, with a success since,
    /// is over even when no call comes to say so.
    pub fn tick(&self) {
        if self.failing.load(Relaxed) {
            let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
            self.settle(&mut o);
        }
    }

    fn settle(&self, o: &mut Outage) {
        let (Some(since), Some(last)) = (o.since, o.last_error) else {
            return;
        };
        if !o.answered_since || last.elapsed() < QUIET_BEFORE_BACK {
            return;
        }
        log::info!(
            "store answering again after {:.1}s ({} failed calls)",
            since.elapsed().saturating_sub(last.elapsed()).as_secs_f64(),
            o.errors
        );
        *o = Outage::default();
        self.failing.store(false, Relaxed);
        METRICS.store_up.set(1);
    }

    pub fn answering(&self) -> bool {
        !self.failing.load(Relaxed)
    }

    /// `hits` refused because the queue is full.
    pub fn refused(&self, hits: u64) {
        METRICS.refused.inc_by(hits);
        let n = self.refused.fetch_add(hits, Relaxed) + hits;
        let mut last = self.refused_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= BACKPRESSURE_EVERY) {
            *last = Some(Instant::now());
            self.refused.store(0, Relaxed);
            log::warn!(
                "queue full: refused {n} hits with 503 (back-pressure) since the last such line; \
                 the store is slower than the traffic"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_one_state_until_errors_stop() {
        let h = Health::default();
        let e = StoreError {
            transient: true,
            message: "gone".into(),
        };
        assert!(h.answering());
        h.failed(&e);
        h.answered();
        h.failed(&e);
        assert!(!h.answering(), "successes between errors do not end the outage");
        std::thread::sleep(QUIET_BEFORE_BACK);
        h.tick();
        assert!(!h.answering(), "no success since the last error");
        h.answered();
        assert!(h.answering());
        h.failed(&e);
        h.answered();
        std::thread::sleep(QUIET_BEFORE_BACK);
        h.tick();
        assert!(
            h.answering(),
            "a success, then a quiet second: over without another call"
        );
    }
}
