//! The embedded store: counters in this process, for a single sidecar. Uses the very
//! algorithms the filter runs (`rampart::algorithms`), with this process's clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rampart::algorithms::{self, State, Want};
use rampart::wire::Rule;

use super::{Applied, Mode};

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
    max_keys: usize,
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
            max_keys: max_keys.max(1),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    pub fn apply(&self, key: &str, rule: Rule, cost: u64, mode: Mode) -> Applied {
        self.apply_at(key, rule, cost, mode, now_ns())
    }

    pub fn apply_at(&self, key: &str, rule: Rule, cost: u64, mode: Mode, now: u64) -> Applied {
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
        }
    }
}
