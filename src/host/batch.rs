//! Sync checks batched per worker, where the host allows it (Envoy).
//!
//! One HTTP call per request costs Envoy's worker more than everything else Rampart
//! does for that request (`make bench`: "trivial + sidecar call"). So a request that
//! needs the sidecar waits in this worker's queue and wakes the root context through a
//! shared queue; the host runs the root's `on_queue_ready` once the events at hand are
//! handled, and the root sends every request that queued meanwhile in one `/v1/check`.
//! Under light load a batch holds one request and costs one queue round trip more;
//! under heavy load it holds many.
//!
//! The root, not a request, sends and receives the call: a request whose client goes
//! away must not take its batch-mates' answer with it. The root resumes each request
//! through `proxy_set_effective_context`; Envoy defers their continue and local
//! replies until the root's callback returns. Hosts where any of this differs (Kong
//! never runs `on_queue_ready`; APISIX has no queues) keep one call per request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::types::Action;

use super::{abi, note_sidecar, now_ns, sidecar, stream, Compiled, Hostcalls};
use crate::engine::{Held, Paused, Step};
use crate::host_status::{self, OK};
use crate::wire::{batch_len, join_checks, CheckAnswers, Outcomes};

/// A batch unanswered this long is given up (its requests take `failure_mode`): the
/// host's own timeout answers far sooner; this only guards against a host that never
/// calls back.
const GIVE_UP_NS: u64 = 5_000_000_000;

/// Calls one worker keeps in flight. A request that finds them all busy waits for the
/// next answer and goes in the batch sent then: under load, fewer and fuller calls
/// leave Envoy's worker more time for requests. Measured (`make bench`, 2 cores): 1 in
/// flight gave the most throughput (~25k req/s) but +1.3 ms p99 at half of it, each
/// request waiting for the one before; 2 gave ~23k with a median +0.8 ms; 3 or more
/// behaved as uncapped (~19k, +1.0 ms).
const MAX_CALLS_IN_FLIGHT: usize = 2;

/// A wake not delivered this long is taken as lost; after `LOST_WAKES_TO_GIVE_UP` in a
/// row with none delivered between them, this host does not run `on_queue_ready`
/// (whatever its shared data looked like) and requests go back to one call each.
const LOST_WAKE_NS: u64 = 100_000_000;
const LOST_WAKES_TO_GIVE_UP: u32 = 3;

/// One request waiting for the sidecar.
struct Waiter {
    context_id: u32,
    compiled: Rc<Compiled>,
    paused: Box<Paused>,
    /// Its own `{"hits": [...]}`.
    body: Vec<u8>,
    /// When it started waiting: its call gets what is left of `sidecar.timeout`, so no
    /// request waits longer than that in all.
    since_ns: u64,
}

/// What the root decided for a request it resumed, kept until the request's own
/// callbacks (response headers, end of stream) collect it.
pub(super) struct Finished {
    pub response_headers: Vec<(&'static str, String)>,
    pub held: Vec<Held>,
}

struct Sent {
    at_ns: u64,
    /// In the order of the call's requests; `None` where the request has ended since.
    members: Vec<Option<Waiter>>,
}

#[derive(Default)]
struct Batcher {
    /// Set at configure time where batching works: the queue that wakes the root.
    wake: Option<u32>,
    /// The root's context id, kept even if waking fails later (calls in flight still
    /// come back to it).
    root: u32,
    wake_pending: bool,
    /// When the pending wake was sent, and wakes lost in a row.
    woken_at_ns: u64,
    lost_wakes: u32,
    waiting: Vec<Waiter>,
    in_flight: HashMap<u32, Sent>,
    finished: HashMap<u32, Finished>,
}

thread_local! {
    // One VM per worker thread: this worker's batcher, shared by its root and streams.
    static BATCHER: RefCell<Batcher> = RefCell::new(Batcher::default());
}

/// Runs `f` on this worker's batcher; `None` if it is already in use (a host that
/// re-entered the VM mid-call), which callers treat as "batching unavailable".
fn with<R>(f: impl FnOnce(&mut Batcher) -> R) -> Option<R> {
    BATCHER.with(|b| b.try_borrow_mut().ok().map(|mut b| f(&mut b)))
}

/// Turns batching on for this VM (called by the root at configure time, where the
/// host is known to run `on_queue_ready` and to own calls at the root). `false` when
/// the host refused the queue: requests then call the sidecar one by one.
pub(super) fn enable(root_id: u32, name: &str) -> bool {
    match abi::register_queue(name) {
        Ok(queue) => with(|b| {
            b.wake = Some(queue);
            b.root = root_id;
        })
        .is_some(),
        Err(s) => {
            log::info!(
                "rampart: no wake queue ({}): sync checks are sent one per request",
                host_status::describe(s)
            );
            false
        }
    }
}

/// Queues a request for the next batch and wakes the root if it is not woken yet.
/// `Err` gives the request back when batching is off or the wake failed: the caller
/// sends it alone.
pub(super) fn submit(
    context_id: u32,
    compiled: &Rc<Compiled>,
    paused: Box<Paused>,
    body: Vec<u8>,
) -> Result<(), (Box<Paused>, Vec<u8>)> {
    // Taken out only when queued: what is left goes back to the caller.
    let mut request = Some((paused, body));
    let now = now_ns();
    with(|b| {
        let Some(queue) = b.wake else {
            return;
        };
        // No wake while the calls in flight are at the cap: the next answer sends this.
        if !b.wake_pending && b.in_flight.len() < MAX_CALLS_IN_FLIGHT {
            let status = abi::enqueue(queue, b"w");
            if status != OK {
                log::warn!(
                    "rampart: waking the root failed ({}); sync checks are sent one per request",
                    host_status::describe(status)
                );
                b.wake = None;
                return;
            }
            b.wake_pending = true;
            b.woken_at_ns = now;
        }
        if let Some((paused, body)) = request.take() {
            b.waiting.push(Waiter {
                context_id,
                compiled: Rc::clone(compiled),
                paused,
                body,
                since_ns: now,
            });
        }
    });
    request.map_or(Ok(()), Err)
}

/// The root was woken: drain the queue and send what waits.
pub(super) fn on_wake(queue: u32) {
    while let Ok(Some(_)) = abi::dequeue(queue) {}
    with(|b| {
        b.wake_pending = false;
        b.lost_wakes = 0;
    });
    flush();
}

/// Sends every waiting request (root context only: the answer must come back here).
pub(super) fn flush() {
    loop {
        let chunk: Vec<Waiter> = with(|b| {
            if b.wake.is_some() && b.in_flight.len() >= MAX_CALLS_IN_FLIGHT {
                return Vec::new();
            }
            let n = match b.wake {
                Some(_) => batch_len(b.waiting.iter().map(|w| w.paused.hits())),
                None => b.waiting.len().min(1),
            };
            b.waiting.drain(..n).collect()
        })
        .unwrap_or_default();
        let Some(first) = chunk.first() else { return };
        let compiled = Rc::clone(&first.compiled);
        // Requests checked under another configuration (a reconfigure just happened)
        // go in their own batch.
        let (same, other): (Vec<Waiter>, Vec<Waiter>) =
            chunk.into_iter().partition(|w| Rc::ptr_eq(&w.compiled, &compiled));
        with(|b| {
            b.waiting.splice(0..0, other);
        });
        send(&compiled, same);
    }
}

fn send(compiled: &Compiled, members: Vec<Waiter>) {
    let Some(sc) = compiled.engine.policy.sidecar.as_ref() else {
        resolve_all(members, None);
        return;
    };
    let now = now_ns();
    let waited_ms = members
        .iter()
        .map(|w| now.saturating_sub(w.since_ns) / 1_000_000)
        .max()
        .unwrap_or(0);
    let left_ms = sc.timeout_ms.saturating_sub(waited_ms);
    if left_ms == 0 {
        // They waited their whole timeout for a free call: the sidecar is too slow.
        resolve_all(members, None);
        return;
    }
    let body = match members.as_slice() {
        [one] => one.body.clone(),
        many => join_checks(many.iter().map(|w| w.body.as_slice())),
    };
    match sidecar::dispatch(sc, sidecar::CHECK_PATH, &body, left_ms) {
        Ok(token) => {
            let sent = Sent {
                at_ns: now,
                members: members.into_iter().map(Some).collect(),
            };
            with(|b| b.in_flight.insert(token, sent));
        }
        Err(why) => {
            log::warn!("rampart: {why}");
            resolve_all(members, None);
        }
    }
}

/// The sidecar answered (or failed) a call: `false` when it was not a batch's.
pub(super) fn on_answer(token: u32, num_headers: usize, body_size: usize) -> bool {
    let Some(sent) = with(|b| b.in_flight.remove(&token)).flatten() else {
        return false;
    };
    let reply = sidecar::reply(num_headers, body_size);
    if sent.members.len() > 1 && reply.status.as_deref() == Some(b"400".as_slice()) {
        // A sidecar from before batched checks (a rolling upgrade): it refused the body
        // and counted nothing. From now on each request makes its own call.
        if with(|b| b.wake.take()).flatten().is_some() {
            log::warn!(
                "rampart: the sidecar does not take batched checks (upgrade it); sync checks are sent one per request"
            );
        }
        for w in sent.members.into_iter().flatten() {
            let compiled = Rc::clone(&w.compiled);
            send(&compiled, vec![w]);
        }
        flush();
        return true;
    }
    let answers: Option<Vec<Outcomes>> = reply.body.and_then(|body| match sent.members.len() {
        1 => serde_json::from_slice::<Outcomes>(&body).ok().map(|o| vec![o]),
        n => serde_json::from_slice::<CheckAnswers>(&body)
            .ok()
            .map(|a| a.requests)
            .filter(|r| r.len() == n),
    });
    match answers {
        Some(answers) => {
            for (w, a) in sent.members.into_iter().zip(answers) {
                if let Some(w) = w {
                    resolve(w, Some(a));
                }
            }
        }
        None => resolve_all(sent.members.into_iter().flatten().collect(), None),
    }
    // Requests that asked again (a later sync layer) and any that queued meanwhile.
    flush();
    true
}

/// Gives up batches the host never answered (called on the root's tick).
pub(super) fn on_tick() {
    let now = now_ns();
    let stale: Vec<Sent> = with(|b| {
        let tokens: Vec<u32> = b
            .in_flight
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.at_ns) >= GIVE_UP_NS)
            .map(|(t, _)| *t)
            .collect();
        tokens.iter().filter_map(|t| b.in_flight.remove(t)).collect()
    })
    .unwrap_or_default();
    for s in stale {
        log::warn!("rampart: a sync check got no answer; its requests take failure_mode");
        resolve_all(s.members.into_iter().flatten().collect(), None);
    }
    // A wake the host lost must not strand requests: they go now, and a host that
    // keeps losing them stops being asked.
    with(|b| {
        if b.wake_pending && now.saturating_sub(b.woken_at_ns) >= LOST_WAKE_NS {
            b.wake_pending = false;
            b.lost_wakes += 1;
            if b.lost_wakes >= LOST_WAKES_TO_GIVE_UP && b.wake.take().is_some() {
                log::warn!("rampart: this host does not deliver queue wakes; sync checks are sent one per request");
            }
        }
    });
    flush();
}

fn resolve_all(members: Vec<Waiter>, answer: Option<Outcomes>) {
    for w in members {
        resolve(w, answer.clone());
    }
}

/// Resumes one request from the root: its hostcalls act on its own context.
fn resolve(w: Waiter, answer: Option<Outcomes>) {
    let root = with(|b| b.root).unwrap_or(0);
    let status = abi::set_effective_context(w.context_id);
    let compiled = Rc::clone(&w.compiled);
    let mut host = Hostcalls { compiled: &compiled };
    if status != OK {
        // Its stream is gone; what it held goes back.
        compiled.engine.abandon(&mut host, *w.paused);
        return;
    }
    let Ok(mut worker) = compiled.worker.try_borrow_mut() else {
        compiled.engine.abandon(&mut host, *w.paused);
        let _ = abi::continue_request();
        let _ = abi::set_effective_context(root);
        return;
    };
    note_sidecar(&mut worker, answer.is_some());
    let step = compiled
        .engine
        .resume(&mut host, &mut worker, *w.paused, answer, now_ns());
    drop(worker);
    match step {
        Step::Done(verdict) => {
            let (action, finished) = stream::conclude(verdict, compiled.family.reply_details(), true);
            if action == Action::Continue {
                let _ = abi::continue_request();
            }
            with(|b| b.finished.insert(w.context_id, finished));
        }
        Step::Ask(paused, body) => {
            let again = Waiter {
                context_id: w.context_id,
                compiled: Rc::clone(&compiled),
                paused,
                body,
                since_ns: now_ns(),
            };
            with(|b| b.waiting.push(again));
        }
    }
    let _ = abi::set_effective_context(root);
}

/// What the root decided for this request, once (its response headers, its slots).
pub(super) fn take_finished(context_id: u32) -> Option<Finished> {
    with(|b| b.finished.remove(&context_id)).flatten()
}

/// A request ended: it no longer waits for anything; what it held goes back.
pub(super) fn forget(context_id: u32) {
    let mine: Vec<Waiter> = with(|b| {
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.waiting.len() {
            if b.waiting[i].context_id == context_id {
                out.push(b.waiting.remove(i));
            } else {
                i += 1;
            }
        }
        for sent in b.in_flight.values_mut() {
            for m in sent.members.iter_mut() {
                if m.as_ref().is_some_and(|w| w.context_id == context_id) {
                    out.extend(m.take());
                }
            }
        }
        out
    })
    .unwrap_or_default();
    for w in mine {
        let mut host = Hostcalls { compiled: &w.compiled };
        w.compiled.engine.abandon(&mut host, *w.paused);
    }
}
