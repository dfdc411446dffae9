//! Which window hashes this sidecar has already given their expiry.
//!
//! A window hash needs `PEXPIRE NX` once, after its first hit; sending it with every hit
//! would double Redis's work. So each sidecar sends it with the first hit it files in a
//! hash and remembers that it did, until the hash expires. Only an answered call counts
//! as done. After a connection error or a failover the memory is dropped: a promoted
//! replica may have missed an expiry its master set, and sending `PEXPIRE NX` again is
//! harmless.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Mutex;

use super::layout::WindowHash;

/// Most hashes remembered; past this the memory starts over (it only saves commands).
const MAX_REMEMBERED: usize = 1_000_000;

#[derive(Default)]
pub struct Expiries {
    /// Hash → when it expires (Redis µs).
    done: Mutex<HashMap<WindowHash, u64>>,
}

impl Expiries {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<WindowHash, u64>> {
        self.done.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether each hash still needs its expiry sent (one lock for a whole batch).
    pub fn needed(&self, hashes: impl IntoIterator<Item = WindowHash>, now_us: u64) -> Vec<bool> {
        let map = self.map();
        hashes
            .into_iter()
            .map(|h| map.get(&h).is_none_or(|until| *until <= now_us))
            .collect()
    }

    /// These hashes were given their expiry (until the given Redis µs).
    pub fn sent(&self, hashes: impl IntoIterator<Item = (WindowHash, u64)>, now_us: u64) {
        let mut map = self.map();
        if map.len() >= MAX_REMEMBERED {
            map.retain(|_, until| *until > now_us);
            if map.len() >= MAX_REMEMBERED / 2 {
                map.clear();
            }
        }
        map.extend(hashes);
    }

    /// Forgets everything (the connection failed or moved).
    pub fn forget(&self) {
        self.map().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_the_hash_expires() {
        let e = Expiries::default();
        let rule = rampart::wire::Rule::FixedWindow {
            limit: 1,
            window_ms: 1000,
        };
        let h = WindowHash::at("k", &rule, 7_000_000);
        assert_eq!(e.needed([h], 100), [true]);
        e.sent([(h, 200)], 100);
        assert_eq!(
            e.needed([h, WindowHash::at("k", &rule, 7_000_000)], 150),
            [false, false]
        );
        assert_eq!(
            e.needed([WindowHash::at("k", &rule, 8_000_000)], 150),
            [true],
            "another window"
        );
        assert_eq!(
            e.needed([h], 200),
            [true],
            "expired: a new hash of that name needs it again"
        );
        e.sent([(h, 300)], 200);
        e.forget();
        assert_eq!(e.needed([h], 250), [true]);
    }
}
