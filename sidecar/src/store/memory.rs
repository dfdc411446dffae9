//! The embedded store: counters in this process, for a single sidecar. Uses the very
//! algorithms the filter runs (`rampart::algorithms`), with this process's clock.
//!
//! Memory is bounded by `--max-keys` per kind (counters, distinct-client sets, blocks,
//! flags, revocations), and a full store never clears itself: a new counter takes the
//! place of an expired one, else of the one whose loss forgives the least among 16
//! sampled (the lowest count, then the oldest), so each insert costs the same whatever
//! the store's size. A client hammering a limit holds the highest count around and is
//! the last to be forgotten. Blocks and revocations are decisions, never replaced: a
//! full map of them refuses new ones (counted, logged).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rampart::algorithms::{self, State, NS_PER_MS};
use rampart::policy::Algorithm;
use rampart::wire::Rule;

use super::{Applied, KeyInfo, KeyState, Mode, Observe};
use crate::bounded::{BoundedMap, Evicted};
use crate::metrics::METRICS;

/// Most counters held (and most of each kind of guard).
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

struct Entry {
    state: State,
    alg: Algorithm,
    /// After this (ns since epoch) the counter is back to empty and can be dropped.
    expires_ns: u64,
    /// When the counter was created: the tie-break between equal counts.
    since_ns: u64,
}

pub struct MemoryStore {
    map: Mutex<BoundedMap<Entry>>,
    guards: Mutex<Guards>,
    /// When "full" was last logged (ns): once a minute at most.
    full_logged_ns: AtomicU64,
}

/// Revocations, blocks, flags and distinct-client sets, `max_keys` of each; a client
/// set holds at most its limit + 1 members (enough to decide).
struct Guards {
    revoked: BoundedMap<String>,
    blocked: BoundedMap<u64>,
    flagged: BoundedMap<u64>,
    seen: BoundedMap<(HashSet<String>, u64)>,
}

/// Cost of dropping an entry that expires at `until`: 0 once expired, else all the same
/// (such maps refuse rather than replace).
fn live_until(until: u64, now: u64) -> u128 {
    u128::from(until > now)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl MemoryStore {
    pub fn new(max_keys: usize) -> MemoryStore {
        MemoryStore {
            map: Mutex::new(BoundedMap::new(max_keys)),
            guards: Mutex::new(Guards {
                revoked: BoundedMap::new(max_keys),
                blocked: BoundedMap::new(max_keys),
                flagged: BoundedMap::new(max_keys),
                seen: BoundedMap::new(max_keys),
            }),
            full_logged_ns: AtomicU64::new(0),
        }
    }

    /// Counts what making room did, and tells the operator once a minute.
    fn note_full(&self, what: &str, outcome: Result<Option<Evicted>, ()>, now: u64) {
        match outcome {
            Ok(None) => return,
            Ok(Some(Evicted::Expired)) => {
                METRICS.memory_expired.inc();
                return;
            }
            Ok(Some(Evicted::Replaced)) => METRICS.memory_replaced.inc(),
            Err(()) => METRICS.memory_refused.inc(),
        };
        let last = self.full_logged_ns.load(Relaxed);
        if now.saturating_sub(last) >= 60_000_000_000
            && self
                .full_logged_ns
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            match outcome {
                Err(()) => log::warn!("memory store: {what} full (--max-keys): new ones are refused; raise --max-keys"),
                _ => log::warn!(
                    "memory store: {what} full (--max-keys): the least used are replaced, forgiving what they held; \
                     raise --max-keys"
                ),
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    /// Counter entries looked at to make room, in all.
    #[cfg(test)]
    pub fn examined(&self) -> u64 {
        self.map.lock().map_or(0, |m| m.examined())
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, BoundedMap<Entry>> {
        match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn apply(&self, key: &str, rule: Rule, cost: u64, mode: Mode, seen: Observe<'_>) -> Applied {
        self.apply_at(key, rule, cost, mode, seen, now_ns())
    }

    fn guards(&self) -> std::sync::MutexGuard<'_, Guards> {
        match self.guards.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn apply_at(&self, key: &str, rule: Rule, cost: u64, mode: Mode, seen: Observe<'_>, now: u64) -> Applied {
        {
            let g = self.guards();
            if g.revoked.contains_key(key) {
                return Applied {
                    limit: rule.limit(),
                    state: KeyState::Revoked,
                    ..Applied::default()
                };
            }
            if let Some(until) = g.blocked.get(key).filter(|u| **u > now) {
                let left = (until - now).div_ceil(NS_PER_MS);
                return Applied {
                    limit: rule.limit(),
                    retry_after_ms: left,
                    state: KeyState::Blocked,
                    ..Applied::default()
                };
            }
        }
        let mut applied = self.charge(key, rule, cost, mode, now);
        if let Some(d) = seen.distinct.filter(|_| !seen.clients.is_empty()) {
            let mut g = self.guards();
            if !g.seen.contains_key(key) {
                // The set that goes is the least suspicious: fewest clients, expired first.
                let made = g.seen.insert(key, (HashSet::new(), 0), true, |(set, exp)| {
                    if *exp <= now {
                        0
                    } else {
                        set.len() as u128 + 1
                    }
                });
                self.note_full("distinct-client sets", made.map_err(|_| ()), now);
            }
            let Some(entry) = g.seen.get_mut(key) else {
                return applied;
            };
            if entry.1 <= now {
                *entry = (
                    HashSet::new(),
                    now.saturating_add(d.window_ms.saturating_mul(NS_PER_MS)),
                );
            }
            for c in seen.clients {
                if entry.0.len() as u64 > d.limit {
                    break;
                }
                entry.0.insert(c.clone());
            }
            applied.distinct = entry.0.len() as u64;
            if applied.distinct > d.limit {
                if d.block {
                    let until = now.saturating_add(d.cooldown_ms.saturating_mul(NS_PER_MS));
                    let made = g.blocked.insert(key, until, false, |u| live_until(*u, now));
                    self.note_full("blocks", made.map_err(|_| ()), now);
                    applied.state = KeyState::Blocked;
                    applied.retry_after_ms = d.cooldown_ms;
                } else {
                    let until = now.saturating_add(d.window_ms.saturating_mul(NS_PER_MS));
                    let made = g.flagged.insert(key, until, false, |u| live_until(*u, now));
                    self.note_full("flags", made.map_err(|_| ()), now);
                    applied.state = KeyState::Flagged;
                }
            }
        }
        applied
    }

    /// `false` when the store already holds `--max-keys` revocations.
    pub fn revoke(&self, key: &str, reason: &str) -> bool {
        let mut g = self.guards();
        let made = g.revoked.insert(key, reason.to_string(), false, |_| 1);
        self.note_full("revocations", made.as_ref().map(|_| None).map_err(|_| ()), now_ns());
        made.is_ok()
    }

    pub fn restore(&self, key: &str) {
        let mut g = self.guards();
        g.revoked.remove(key);
        g.blocked.remove(key);
        g.flagged.remove(key);
        g.seen.remove(key);
    }

    pub fn inspect(&self, key: &str) -> KeyInfo {
        let now = now_ns();
        let g = self.guards();
        KeyInfo {
            key: key.to_string(),
            revoked: g.revoked.contains_key(key),
            reason: g.revoked.get(key).cloned(),
            blocked_ms: g
                .blocked
                .get(key)
                .filter(|u| **u > now)
                .map_or(0, |u| (u - now).div_ceil(NS_PER_MS)),
            flagged: g.flagged.get(key).is_some_and(|u| *u > now),
            distinct: g
                .seen
                .get(key)
                .filter(|(_, e)| *e > now)
                .map_or(0, |(s, _)| s.len() as u64),
        }
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        let names: HashSet<String> = {
            let g = self.guards();
            g.revoked
                .keys()
                .chain(g.blocked.keys())
                .chain(g.flagged.keys())
                .cloned()
                .collect()
        };
        let mut out: Vec<KeyInfo> = names.iter().map(|k| self.inspect(k)).filter(KeyInfo::notable).collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    fn charge(&self, key: &str, rule: Rule, cost: u64, mode: Mode, now: u64) -> Applied {
        let alg = rule.algorithm();
        let mut map = self.counters();
        let raw = map.get(key).filter(|e| e.expires_ns > now).map(|e| e.state);
        let (d, next) = algorithms::charge(
            &alg,
            rule.limit(),
            rule.burst(),
            raw.as_ref().map(|s| &s[..]),
            now,
            mode.want(cost),
        );
        if let Some(state) = next {
            // A counter is empty again one full window after its last change (two for
            // sliding windows, whose previous window still weighs in).
            let keep = rule.window_ms().saturating_mul(2 * NS_PER_MS).max(d.reset_ns);
            let expires_ns = now.saturating_add(keep);
            if let Some(e) = map.get_mut(key).filter(|e| e.alg == alg) {
                e.state = state;
                e.expires_ns = expires_ns;
            } else {
                let fresh = Entry {
                    state,
                    alg,
                    expires_ns,
                    since_ns: now,
                };
                // What dropping a counter forgives: its count now (0: nothing), then
                // the oldest of equal counts.
                let made = map.insert(key, fresh, true, |e| {
                    let used = match e.expires_ns > now {
                        true => algorithms::usage(&e.alg, algorithms::decode(&e.alg, Some(&e.state)), now),
                        false => 0,
                    };
                    match used {
                        0 => 0,
                        n => (u128::from(n) << 64) | u128::from(e.since_ns),
                    }
                });
                drop(map);
                self.note_full("counters", made.map_err(|_| ()), now);
            }
        }
        Applied::decided(d, cost, mode)
    }
}
