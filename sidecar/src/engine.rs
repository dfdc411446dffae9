//! Turns batches of hits into store calls without becoming the bottleneck.
//!
//! - **Coalescing**: every hit goes through one queue. A single worker drains whatever
//!   is queued (up to `MAX_BATCH`), merges hits on the same counter into one store call
//!   (cost N: the store admits as many as fit, handed out in arrival order), and issues
//!   all calls of the batch concurrently, which the Redis connection pipelines. Under
//!   load batches grow by themselves: the busier, the fewer store calls per hit.
//! - **Over-limit cache**: a counter that rejected is remembered until its
//!   Retry-After; checks against it are answered without the store. Capped at
//!   `MAX_CACHED` entries; when full, the entry closest to reopening makes room.
//! - `/v1/check` is ordered: a request's hits are charged one after another and the
//!   first rejection skips the rest, so a rejected request eats no later quota.

use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rampart::wire::{add_client, Denied, Distinct, Hit, Outcome, Rule};
use tokio::sync::{mpsc, oneshot};

use crate::bounded::BoundedMap;
use crate::health::Health;
use crate::metrics::METRICS;
use crate::store::{Applied, Call, KeyState, Mode, Observe, Store, StoreError};

/// A batch still running after this no longer counts against `MAX_BATCHES_IN_FLIGHT`
/// (a healthy Redis answers a batch in well under a millisecond or two).
const SLOW_BATCH: Duration = Duration::from_millis(10);
/// Most hits one batch drains from the queue.
pub const MAX_BATCH: usize = 4096;
/// Queue length before new hits are refused (back-pressure instead of unbounded memory).
pub const MAX_QUEUE: usize = 65_536;
/// Batches whose store calls may be in flight at once.
pub const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// Most counters remembered as over their limit.
pub const MAX_CACHED: usize = 100_000;

struct Job {
    key: String,
    rule: Rule,
    cost: u64,
    mode: Mode,
    clients: Vec<String>,
    distinct: Option<Distinct>,
    reply: oneshot::Sender<Result<Applied, StoreError>>,
}

#[derive(Clone, Copy)]
struct Closed {
    until: Instant,
    rule: Rule,
    outcome: Outcome,
}

pub struct Engine {
    queue: mpsc::Sender<Job>,
    closed: Mutex<BoundedMap<Closed>>,
    pub health: Arc<Health>,
}

impl Engine {
    pub fn start(store: Arc<Store>) -> Arc<Engine> {
        let (tx, rx) = mpsc::channel(MAX_QUEUE);
        let health = Arc::new(Health::default());
        tokio::spawn(run(store, rx, Arc::clone(&health)));
        let watched = Arc::clone(&health);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                watched.tick();
            }
        });
        Arc::new(Engine {
            queue: tx,
            closed: Mutex::new(BoundedMap::new(MAX_CACHED)),
            health,
        })
    }

    async fn submit(&self, hit: &Hit, mode: Mode) -> Result<Applied, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            key: hit.key.clone(),
            rule: hit.rule,
            cost: hit.cost,
            mode,
            clients: hit.clients.clone(),
            distinct: hit.distinct,
            reply,
        };
        self.queue.try_send(job).map_err(|_| {
            self.health.refused();
            StoreError {
                transient: true,
                message: "sidecar queue full".into(),
            }
        })?;
        rx.await.unwrap_or_else(|_| {
            Err(StoreError {
                transient: true,
                message: "sidecar worker stopped".into(),
            })
        })
    }

    fn cached(&self, hit: &Hit) -> Option<Outcome> {
        let mut closed = self.closed.lock().ok()?;
        let c = closed.get(&hit.key)?;
        if c.rule != hit.rule {
            return None;
        }
        let now = Instant::now();
        if now >= c.until {
            closed.remove(&hit.key);
            return None;
        }
        let left = (c.until - now).as_millis() as u64;
        Some(Outcome {
            retry_after_ms: left.max(1),
            ..c.outcome
        })
    }

    fn remember(&self, hit: &Hit, outcome: Outcome) {
        let Ok(mut closed) = self.closed.lock() else { return };
        let now = Instant::now();
        let until = now + Duration::from_millis(outcome.retry_after_ms);
        let entry = Closed {
            until,
            rule: hit.rule,
            outcome,
        };
        // Full: the entry closest to reopening goes (a lost entry only costs a store
        // call), expired ones first.
        let _ = closed.insert(&hit.key, entry, true, |c| match c.until.checked_duration_since(now) {
            Some(left) if !left.is_zero() => left.as_millis() + 1,
            _ => 0,
        });
    }

    /// Ordered check of one request's hits.
    pub async fn check(&self, hits: &[Hit]) -> Result<Vec<Outcome>, StoreError> {
        let mut out = Vec::with_capacity(hits.len());
        let mut rejected = false;
        for hit in hits {
            if rejected {
                out.push(Outcome {
                    allowed: false,
                    limit: hit.rule.limit(),
                    remaining: 0,
                    reset_ms: 0,
                    retry_after_ms: 0,
                    skipped: true,
                    ..Default::default()
                });
                continue;
            }
            if let Some(o) = self.cached(hit) {
                METRICS.cache_hits.inc();
                METRICS.rejected.inc();
                rejected = true;
                out.push(o);
                continue;
            }
            let a = self.submit(hit, Mode::Check).await?;
            let denied = denial(a.state);
            let allowed = denied.is_none() && a.granted >= hit.cost;
            let o = Outcome {
                allowed,
                limit: a.limit,
                remaining: a.remaining,
                reset_ms: a.reset_ms,
                retry_after_ms: if allowed { 0 } else { a.retry_after_ms.max(1) },
                denied,
                flagged: a.state == KeyState::Flagged,
                ..Default::default()
            };
            note(a.state);
            if allowed {
                METRICS.allowed.inc();
            } else {
                METRICS.rejected.inc();
                rejected = true;
                if denied.is_none() {
                    self.remember(hit, o);
                }
            }
            out.push(o);
        }
        Ok(out)
    }

    /// Records already-admitted hits and returns each counter's standing.
    pub async fn report(&self, hits: &[Hit]) -> Result<Vec<Outcome>, StoreError> {
        let results = join_all(hits.iter().map(|h| self.submit(h, Mode::Record))).await;
        let mut out = Vec::with_capacity(hits.len());
        for (hit, r) in hits.iter().zip(results) {
            let a = r?;
            METRICS.recorded.inc_by(hit.cost);
            note(a.state);
            out.push(Outcome {
                allowed: a.remaining > 0,
                limit: a.limit,
                remaining: a.remaining,
                reset_ms: a.reset_ms,
                retry_after_ms: a.retry_after_ms,
                denied: denial(a.state),
                flagged: a.state == KeyState::Flagged,
                ..Default::default()
            });
        }
        Ok(out)
    }
}

fn denial(state: KeyState) -> Option<Denied> {
    match state {
        KeyState::Revoked => Some(Denied::Revoked),
        KeyState::Blocked => Some(Denied::Blocked),
        _ => None,
    }
}

fn note(state: KeyState) {
    match state {
        KeyState::Flagged => METRICS.flagged.inc(),
        KeyState::Revoked | KeyState::Blocked => METRICS.denied.inc(),
        KeyState::Ok => {}
    };
}

/// The single worker: drain, merge by counter, apply concurrently, hand out results.
async fn run(store: Arc<Store>, mut rx: mpsc::Receiver<Job>, health: Arc<Health>) {
    // A few batches may be in flight at once: a new batch need not wait for the last
    // one's Redis round trip (that wait is latency every sync request would pay), yet
    // hits arriving meanwhile still pile up into the next batch and coalesce.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let jobs = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let store = Arc::clone(&store);
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let work = execute(&store, jobs, &health);
            tokio::pin!(work);
            // A batch that waits on a slow or dead node (a Cluster master mid-failover)
            // gives its place up: batches on healthy nodes must not queue behind it.
            tokio::select! {
                _ = &mut work => drop(permit),
                _ = tokio::time::sleep(SLOW_BATCH) => {
                    drop(permit);
                    work.await;
                }
            }
        });
    }
}

/// Merges a batch by counter and applies all merged hits at once: the store charges
/// them in as few calls as it can (one script call per Redis node and 128 counters).
async fn execute(store: &Arc<Store>, batch: Vec<Job>, health: &Health) {
    // Fx rather than SipHash: counter names are the filter's keyed hashes, which no
    // client can choose to collide, and the table lives for one batch.
    let mut groups: FxHashMap<(String, Rule, Mode), Vec<Job>> = FxHashMap::default();
    for job in batch {
        groups
            .entry((job.key.clone(), job.rule, job.mode))
            .or_default()
            .push(job);
    }
    struct Merged {
        key: String,
        rule: Rule,
        mode: Mode,
        cost: u64,
        clients: Vec<String>,
        distinct: Option<Distinct>,
        jobs: Vec<Job>,
    }
    let merged: Vec<Merged> = groups
        .into_iter()
        .map(|((key, rule, mode), jobs)| {
            METRICS.coalesced.inc_by(jobs.len() as u64 - 1);
            // Merged hits carry their clients together (deduplicated, capped).
            let mut clients: Vec<String> = Vec::new();
            for c in jobs.iter().flat_map(|j| j.clients.iter()) {
                add_client(&mut clients, c);
            }
            Merged {
                cost: jobs.iter().map(|j| j.cost).sum(),
                distinct: jobs.iter().find_map(|j| j.distinct),
                key,
                rule,
                mode,
                clients,
                jobs,
            }
        })
        .collect();
    METRICS.store_calls.inc_by(merged.len() as u64);
    let calls: Vec<Call<'_>> = merged
        .iter()
        .map(|m| Call {
            key: &m.key,
            rule: m.rule,
            cost: m.cost,
            mode: m.mode,
            seen: Observe {
                clients: &m.clients,
                distinct: m.distinct,
            },
        })
        .collect();
    let results = store.apply_many(&calls).await;
    drop(calls);
    for (m, result) in merged.into_iter().zip(results) {
        match &result {
            Ok(_) => health.answered(),
            Err(e) => health.failed(e),
        }
        distribute(m.jobs, result);
    }
}

/// Hands a merged result back to the jobs in arrival order: each takes its cost from
/// what was granted while it lasts.
fn distribute(jobs: Vec<Job>, result: Result<Applied, StoreError>) {
    let applied = match result {
        Ok(a) => a,
        Err(e) => {
            if e.transient {
                METRICS.errors_transient.inc();
            } else {
                METRICS.errors_permanent.inc();
            }
            for j in jobs {
                let _ = j.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut left = applied.granted;
    for j in jobs {
        let granted = j.cost.min(left);
        left -= granted;
        // Jobs served from the merged grant see the remaining that includes the rest
        // of the grant, as if they had been charged one by one.
        let a = Applied {
            granted,
            remaining: applied.remaining + left,
            ..applied
        };
        let _ = j.reply.send(Ok(a));
    }
}
