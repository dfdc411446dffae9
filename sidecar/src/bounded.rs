//! A map that never holds more than `max` entries and never empties itself to stay
//! there: when a new key arrives at a full map, it takes the place of the entry whose
//! loss costs least, chosen among a few sampled at random (as Redis samples keys for
//! its `maxmemory` policies), so each insert costs the same whatever the map's size.
//!
//! Entries live in a vector (random sampling and removal are O(1): swap with the last)
//! with a hash index from key to position.

use std::collections::HashMap;

/// Entries sampled to find one to give up. With 16 samples the chosen entry costs less
/// than about 94% of the map's entries (1 - 1/17 in expectation); any sampled expired
/// entry goes first.
pub const SAMPLES: usize = 16;

/// Why an entry left to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// It held nothing any more (cost 0): nothing was forgiven.
    Expired,
    /// It was live: whatever it held is forgotten.
    Replaced,
}

pub struct BoundedMap<V> {
    entries: Vec<(String, V)>,
    index: HashMap<String, usize>,
    max: usize,
    rng: u64,
    /// Entries looked at to make room, in all: the whole cost of being full.
    examined: u64,
}

impl<V> BoundedMap<V> {
    pub fn new(max: usize) -> BoundedMap<V> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x853c_49e6_748f_ea9b, |d| d.as_nanos() as u64);
        BoundedMap {
            entries: Vec::new(),
            index: HashMap::new(),
            max: max.max(1),
            rng: seed | 1,
            examined: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn examined(&self) -> u64 {
        self.examined
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.index.get(key).map(|&i| &mut self.entries[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let i = self.index.remove(key)?;
        let (_, v) = self.entries.swap_remove(i);
        if let Some((moved, _)) = self.entries.get(i) {
            self.index.insert(moved.clone(), i);
        }
        Some(v)
    }

    /// xorshift64*: enough to spread samples; nothing here needs to be unpredictable.
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Sets `key` to `value`. When `key` is new and the map is full, the sampled entry
    /// with the lowest `cost` leaves first (0: it holds nothing), and is reported; with
    /// `make_room: false` a full map refuses the new key instead (`Err`).
    pub fn insert(
        &mut self,
        key: &str,
        value: V,
        make_room: bool,
        cost: impl Fn(&V) -> u128,
    ) -> Result<Option<Evicted>, V> {
        if let Some(&i) = self.index.get(key) {
            self.entries[i].1 = value;
            return Ok(None);
        }
        let mut evicted = None;
        if self.entries.len() >= self.max {
            // Expired entries are free whatever the caller allows.
            let n = self.entries.len();
            let mut best: Option<(u128, usize)> = None;
            for k in 0..SAMPLES.min(n) {
                // A map no larger than the sample is looked at whole.
                let i = if n <= SAMPLES {
                    k
                } else {
                    (self.next() % n as u64) as usize
                };
                let c = cost(&self.entries[i].1);
                self.examined += 1;
                if best.is_none_or(|(b, _)| c < b) {
                    best = Some((c, i));
                }
            }
            match best {
                Some((0, i)) => evicted = Some((Evicted::Expired, i)),
                Some((_, i)) if make_room => evicted = Some((Evicted::Replaced, i)),
                _ => return Err(value),
            }
        }
        if let Some((_, i)) = evicted {
            let old = self.entries[i].0.clone();
            self.remove(&old);
        }
        self.index.insert(key.to_string(), self.entries.len());
        self.entries.push((key.to_string(), value));
        Ok(evicted.map(|(why, _)| why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_max_and_keeps_the_costly_entries() {
        let mut m: BoundedMap<u64> = BoundedMap::new(100);
        assert_eq!(m.insert("precious", 1_000, true, |v| u128::from(*v)), Ok(None));
        let mut replaced = 0;
        for i in 0..10_000u64 {
            match m.insert(&format!("k{i}"), 1, true, |v| u128::from(*v)) {
                Ok(Some(Evicted::Replaced)) => replaced += 1,
                Ok(_) => {}
                Err(_) => panic!("make_room never refuses"),
            }
            assert!(m.len() <= 100);
        }
        assert_eq!(m.get("precious"), Some(&1_000), "the costliest entry stays");
        assert!(replaced >= 9_899);
        // Index and entries agree after all the swaps.
        for k in m.keys().cloned().collect::<Vec<_>>() {
            assert!(m.get(&k).is_some());
        }
    }

    #[test]
    fn expired_entries_go_first_and_a_refusing_map_keeps_live_ones() {
        let mut m: BoundedMap<u64> = BoundedMap::new(4);
        for (k, v) in [("a", 5), ("b", 0), ("c", 5), ("d", 5)] {
            m.insert(k, v, false, |v| u128::from(*v)).unwrap();
        }
        // Only b is expired; a map of 4 is looked at whole.
        assert_eq!(m.insert("e", 5, false, |v| u128::from(*v)), Ok(Some(Evicted::Expired)));
        assert!(!m.contains_key("b"));
        assert_eq!(m.insert("f", 5, false, |v| u128::from(*v)), Err(5));
        assert_eq!(m.len(), 4);
        assert_eq!(m.remove("a"), Some(5));
        assert_eq!(m.insert("f", 5, false, |v| u128::from(*v)), Ok(None));
    }
}
