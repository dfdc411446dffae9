//! Turns batches of hits into store calls without becoming the bottleneck.
//!
//! - **Coalescing**: every caller's hits go through one queue as one job (a report's
//!   hits together, a check's one at a time). A single worker drains whatever is queued
//!   (up to `MAX_BATCH` jobs), merges hits on the same counter into one store call
//!   (cost N: the store admits as many as fit, handed out in arrival order), and issues
//!   all calls of the batch at once, which the store pipelines. Under load batches grow
//!   by themselves: the busier, the fewer store calls per hit. A job is answered with
//!   one message, however many hits it holds.
//! - **Over-limit cache**: a counter that rejected is remembered until its
//!   Retry-After; checks against it are answered without the store. Capped at
//!   `MAX_CACHED` entries; when full, the entry closest to reopening makes room.
//! - `/v1/check` is ordered: a request's hits are charged one after another and the
//!   first rejection skips the rest, so a rejected request eats no later quota.

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart::wire::{add_client, Denied, Distinct, Hit, Outcome, Rule};
use tokio::sync::{mpsc, oneshot};

use crate::bounded::BoundedMap;
use crate::health::Health;
use crate::metrics::METRICS;
use crate::store::{Applied, Call, KeyState, Mode, Observe, Store, StoreError};

/// A batch still running after this no longer counts against `MAX_BATCHES_IN_FLIGHT`
/// (a healthy Redis answers a batch in well under a millisecond or two).
const SLOW_BATCH: Duration = Duration::from_millis(10);
/// Most jobs one batch drains from the queue.
pub const MAX_BATCH: usize = 4096;
/// Hits queued (not yet in a batch) before new ones are refused: back-pressure instead
/// of unbounded memory.
pub const MAX_QUEUE: usize = 65_536;
/// Batches whose store calls may be in flight at once.
pub const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// Most counters remembered as over their limit.
pub const MAX_CACHED: usize = 100_000;

/// What a job's hits got, in their order (or the store's error for each).
type Answers = Vec<Result<Applied, StoreError>>;

/// One caller's hits, all in one mode, answered together.
struct Job {
    hits: Vec<Hit>,
    mode: Mode,
    reply: oneshot::Sender<Answers>,
}

#[derive(Clone, Copy)]
struct Closed {
    until: Instant,
    rule: Rule,
    outcome: Outcome,
}

pub struct Engine {
    queue: mpsc::Sender<Job>,
    /// Hits in the queue (a job holds one or many).
    queued: Arc<AtomicUsize>,
    closed: Mutex<BoundedMap<Closed>>,
    pub health: Arc<Health>,
}

impl Engine {
    pub fn start(store: Arc<Store>) -> Arc<Engine> {
        let (tx, rx) = mpsc::channel(MAX_QUEUE);
        let health = Arc::new(Health::default());
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(store, rx, Arc::clone(&health), Arc::clone(&queued)));
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
            queued,
            closed: Mutex::new(BoundedMap::new(MAX_CACHED)),
            health,
        })
    }

    /// Queues `hits` as one job; what each got, in order.
    async fn submit(&self, hits: Vec<Hit>, mode: Mode) -> Result<Answers, StoreError> {
        let (reply, rx) = oneshot::channel();
        let count = hits.len();
        let full = || {
            self.queued.fetch_sub(count, Relaxed);
            self.health.refused(count as u64);
            StoreError {
                transient: true,
                message: "sidecar queue full".into(),
            }
        };
        if self.queued.fetch_add(count, Relaxed) + count > MAX_QUEUE {
            return Err(full());
        }
        self.queue.try_send(Job { hits, mode, reply }).map_err(|_| full())?;
        rx.await.map_err(|_| StoreError {
            transient: true,
            message: "sidecar worker stopped".into(),
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
        Ok(self.check_many(&[hits]).await?.pop().unwrap_or_default())
    }

    /// Ordered checks of several requests at once: each request's hits are charged one
    /// after another and its first rejection skips the rest, while the requests go
    /// side by side, their n-th hits queued as one job.
    pub async fn check_many(&self, requests: &[&[Hit]]) -> Result<Vec<Vec<Outcome>>, StoreError> {
        let mut out: Vec<Vec<Outcome>> = requests.iter().map(|r| Vec::with_capacity(r.len())).collect();
        let mut rejected = vec![false; requests.len()];
        let rounds = requests.iter().map(|r| r.len()).max().unwrap_or(0);
        for round in 0..rounds {
            // Which requests ask the store this round, and their hits.
            let mut asking: Vec<usize> = Vec::new();
            let mut hits: Vec<Hit> = Vec::new();
            for (i, request) in requests.iter().enumerate() {
                let Some(hit) = request.get(round) else { continue };
                if rejected[i] {
                    out[i].push(Outcome {
                        allowed: false,
                        limit: hit.rule.limit(),
                        skipped: true,
                        ..Default::default()
                    });
                } else if let Some(o) = self.cached(hit) {
                    METRICS.cache_hits.inc();
                    METRICS.rejected.inc();
                    rejected[i] = true;
                    out[i].push(o);
                } else {
                    asking.push(i);
                    hits.push(hit.clone());
                }
            }
            if hits.is_empty() {
                continue;
            }
            let answers = self.submit(hits, Mode::Check).await?;
            for (i, a) in asking.into_iter().zip(answers) {
                let a = a?;
                let hit = &requests[i][round];
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
                    rejected[i] = true;
                    if denied.is_none() {
                        self.remember(hit, o);
                    }
                }
                out[i].push(o);
            }
        }
        Ok(out)
    }

    /// Records already-admitted hits and returns each counter's standing.
    pub async fn report(&self, hits: Vec<Hit>) -> Result<Vec<Outcome>, StoreError> {
        let cost: u64 = hits.iter().map(|h| h.cost).sum();
        let answers = self.submit(hits, Mode::Record).await?;
        let mut out = Vec::with_capacity(answers.len());
        for a in answers {
            let a = a?;
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
        METRICS.recorded.inc_by(cost);
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
async fn run(store: Arc<Store>, mut rx: mpsc::Receiver<Job>, health: Arc<Health>, queued: Arc<AtomicUsize>) {
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
        queued.fetch_sub(jobs.iter().map(|j| j.hits.len()).sum(), Relaxed);
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

/// One counter's hits in a batch, merged into one store call.
struct Merged<'a> {
    key: &'a str,
    rule: Rule,
    mode: Mode,
    cost: u64,
    clients: Vec<String>,
    distinct: Option<Distinct>,
}

/// Merges a batch by counter and applies all merged hits at once: the store charges
/// them in as few calls as it can (one pipeline or script call per Redis node), then
/// each job gets its hits' shares, in arrival order.
async fn execute(store: &Arc<Store>, batch: Vec<Job>, health: &Health) {
    let hits: usize = batch.iter().map(|j| j.hits.len()).sum();
    // Which merged counter each hit of the batch went to, in arrival order.
    let mut merged_of: Vec<usize> = Vec::with_capacity(hits);
    let results = {
        let mut merged: Vec<Merged<'_>> = Vec::new();
        // Fx rather than SipHash: counter names are the filter's keyed hashes, which no
        // client can choose to collide, and the table lives for one batch.
        let mut index: FxHashMap<(&str, Rule, Mode), usize> = FxHashMap::default();
        for job in &batch {
            for hit in &job.hits {
                let m = *index.entry((hit.key.as_str(), hit.rule, job.mode)).or_insert_with(|| {
                    merged.push(Merged {
                        key: &hit.key,
                        rule: hit.rule,
                        mode: job.mode,
                        cost: 0,
                        clients: Vec::new(),
                        distinct: None,
                    });
                    merged.len() - 1
                });
                let into = &mut merged[m];
                into.cost += hit.cost;
                into.distinct = into.distinct.or(hit.distinct);
                // Merged hits carry their clients together (deduplicated, capped).
                for c in &hit.clients {
                    add_client(&mut into.clients, c);
                }
                merged_of.push(m);
            }
        }
        METRICS.coalesced.inc_by((hits - merged.len()) as u64);
        METRICS.store_calls.inc_by(merged.len() as u64);
        let calls: Vec<Call<'_>> = merged
            .iter()
            .map(|m| Call {
                key: m.key,
                rule: m.rule,
                cost: m.cost,
                mode: m.mode,
                seen: Observe {
                    clients: &m.clients,
                    distinct: m.distinct,
                },
            })
            .collect();
        store.apply_many(&calls).await
    };
    for result in &results {
        match result {
            Ok(_) => health.answered(),
            Err(e) => {
                health.failed(e);
                if e.transient {
                    METRICS.errors_transient.inc();
                } else {
                    METRICS.errors_permanent.inc();
                }
            }
        }
    }
    // What is left of each merged grant, handed out in arrival order.
    let mut left: Vec<u64> = results.iter().map(|r| r.as_ref().map_or(0, |a| a.granted)).collect();
    let mut next = merged_of.into_iter();
    for job in batch {
        let answers = job
            .hits
            .iter()
            .zip(next.by_ref())
            .map(|(hit, m)| share(hit.cost, &results[m], &mut left[m]))
            .collect();
        let _ = job.reply.send(answers);
    }
}

/// A hit's share of its merged counter's result: its cost from what is `left` of the
/// grant, while it lasts.
fn share(cost: u64, result: &Result<Applied, StoreError>, left: &mut u64) -> Result<Applied, StoreError> {
    let applied = result.as_ref().map_err(Clone::clone)?;
    let granted = cost.min(*left);
    *left -= granted;
    // Hits served from the merged grant see the remaining that includes the rest of the
    // grant, as if they had been charged one by one.
    Ok(Applied {
        granted,
        remaining: applied.remaining + *left,
        ..*applied
    })
}
