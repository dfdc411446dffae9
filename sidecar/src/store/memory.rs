//! The embedded store: counters in this process, for a single sidecar. Uses the very
//! algorithms the filter runs (`rampart::algorithms`), with this process's clock.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rampart::algorithms::{self, State, Want};
use rampart::wire::Rule;

use super::{Applied, KeyInfo, KeyState, Mode, Observe};

/// Most counters held; past it, expired ones are dropped first, then the whole map is
/// cleared (every limit restarts) rather than growing without bound.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

struct Entry {
    state: State,
    /// After this (ns since epoch) the counter is back to empty and can be dropped.
    expires_ns: u64,
}

pub struct MemoryStore {
    map: Mutex<HashMap<String, Entry>>,
    guards: Mutex<Guards>,
    max_keys: usize,
}

/// Revocations, blocks, flags and distinct-client sets. Each map holds at most
/// `max_keys` entries; a client set at most its limit + 1 members (enough to decide).
#[derive(Default)]
struct Guards {
    revoked: HashMap<String, String>,
    blocked: HashMap<String, u64>,
    flagged: HashMap<String, u64>,
    seen: HashMap<String, (HashSet<String>, u64)>,
}

fn bounded<V>(map: &mut HashMap<String, V>, max: usize, live: impl Fn(&V) -> bool) -> bool {
    if map.len() >= max {
        map.retain(|_, v| live(v));
    }
    map.len() < max
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

const NS_PER_MS: u64 = 1_000_000;

impl MemoryStore {
    pub fn new(max_keys: usize) -> MemoryStore {
        MemoryStore {
            map: Mutex::new(HashMap::new()),
            guards: Mutex::new(Guards::default()),
            max_keys: max_keys.max(1),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
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
            let max = self.max_keys;
            if !g.seen.contains_key(key) && !bounded(&mut g.seen, max, |(_, exp)| *exp > now) {
                return applied;
            }
            let entry = g.seen.entry(key.to_string()).or_insert_with(|| (HashSet::new(), 0));
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
                    if bounded(&mut g.blocked, max, |u| *u > now) {
                        g.blocked.insert(key.to_string(), until);
                    }
                    applied.state = KeyState::Blocked;
                    applied.retry_after_ms = d.cooldown_ms;
                } else {
                    let until = now.saturating_add(d.window_ms.saturating_mul(NS_PER_MS));
                    if bounded(&mut g.flagged, max, |u| *u > now) {
                        g.flagged.insert(key.to_string(), until);
                    }
                    applied.state = KeyState::Flagged;
                }
            }
        }
        applied
    }

    pub fn revoke(&self, key: &str, reason: &str) {
        let mut g = self.guards();
        let max = self.max_keys;
        if g.revoked.contains_key(key) || bounded(&mut g.revoked, max, |_| true) {
            g.revoked.insert(key.to_string(), reason.to_string());
        }
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
        let want = match mode {
            Mode::Check => Want::UpTo(cost),
            Mode::Record => Want::Record(cost),
        };
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let raw = map.get(key).filter(|e| e.expires_ns > now).map(|e| e.state);
        let (d, next) = algorithms::charge(
            &alg,
            rule.limit(),
            rule.burst(),
            raw.as_ref().map(|s| &s[..]),
            now,
            want,
        );
        if let Some(state) = next {
            // A counter is empty again one full window after its last change (two for
            // sliding windows, whose previous window still weighs in).
            let keep = rule.window_ms().saturating_mul(2 * NS_PER_MS).max(d.reset_ns);
            if map.len() >= self.max_keys && !map.contains_key(key) {
                map.retain(|_, e| e.expires_ns > now);
                if map.len() >= self.max_keys {
                    log::warn!("memory store full ({} keys): clearing all counters", map.len());
                    map.clear();
                }
            }
            map.insert(
                key.to_string(),
                Entry {
                    state,
                    expires_ns: now.saturating_add(keep),
                },
            );
        }
        let granted = match mode {
            Mode::Check => d.granted,
            Mode::Record => cost,
        };
        Applied {
            granted,
            limit: d.limit,
            remaining: d.remaining,
            reset_ms: d.reset_ns.div_ceil(NS_PER_MS),
            retry_after_ms: d.retry_after_ns.div_ceil(NS_PER_MS),
            ..Applied::default()
        }
    }
}
