//! How a client key becomes a place in shared data: the proxy-wide secret seed, the
//! keyed hash of a layer's key parts, and the shared-data key names of a layer's table
//! (`table.rs` says how clients live in it).
//!
//! The hash is SipHash keyed with a seed drawn at random by the first worker to
//! configure and shared by all of them, so nobody outside can compute where a client
//! lands, nor aim a collision at a chosen victim.

use std::hash::Hasher;
#[allow(deprecated)]
use std::hash::SipHasher;

use crate::policy::Layer;

/// The secret hash key shared by every worker of one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    pub k0: u64,
    pub k1: u64,
}

pub const SEED_LEN: usize = 16;

impl Seed {
    pub fn from_bytes(b: &[u8]) -> Option<Seed> {
        if b.len() != SEED_LEN {
            return None;
        }
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&b[..8]);
        k1.copy_from_slice(&b[8..]);
        Some(Seed {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
        })
    }

    pub fn to_bytes(self) -> [u8; SEED_LEN] {
        let mut b = [0u8; SEED_LEN];
        b[..8].copy_from_slice(&self.k0.to_le_bytes());
        b[8..].copy_from_slice(&self.k1.to_le_bytes());
        b
    }

    /// A hasher for one layer. Mixing the layer index in keeps two clients that share a
    /// slot in one layer from sharing slots in every layer.
    #[allow(deprecated)]
    pub fn hasher(&self, layer: u64) -> SipHasher {
        SipHasher::new_with_keys(self.k0 ^ layer.wrapping_mul(0x9E37_79B9_7F4A_7C15), self.k1)
    }
}

impl Seed {
    /// The slot hash of a layer's tagged key parts.
    pub fn hash(&self, layer: u64, parts: &[(u8, Vec<u8>)]) -> u64 {
        let mut h = self.hasher(layer);
        for (tag, bytes) in parts {
            write_part(&mut h, *tag, bytes);
        }
        finish(h)
    }
}

/// Adds one key part, tagged and length-prefixed so that composite keys cannot be
/// confused (`["a", "bc"]` never hashes like `["ab", "c"]`).
#[allow(deprecated)]
pub fn write_part(h: &mut SipHasher, tag: u8, bytes: &[u8]) {
    h.write_u8(tag);
    h.write_u64(bytes.len() as u64);
    h.write(bytes);
}

#[allow(deprecated)]
pub fn finish(h: SipHasher) -> u64 {
    h.finish()
}

/// Maps a hash uniformly onto `0..slots` without a division.
pub fn index(hash: u64, slots: u32) -> u32 {
    ((hash as u128 * slots as u128) >> 64) as u32
}

/// Shared-data key prefix of a layer's table. It names everything the stored state's
/// meaning depends on (the table layout's version, algorithm, window, size), so a
/// reload that changes any of them starts a fresh table instead of misreading the old
/// one; a reload that only changes limits keeps the counters.
pub fn prefix(layer: &Layer) -> String {
    format!(
        "rampart/v2/{}/{}/{}/{}/",
        layer.name,
        layer.algorithm.name(),
        layer.algorithm.window_ms(),
        layer.slots
    )
}

pub fn key(prefix: &str, slot: u32) -> String {
    format!("{prefix}{slot:x}")
}

/// Shared-data key holding the proxy's hash seed.
pub const SEED_KEY: &str = "rampart/v1/seed";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_stays_in_range_and_spreads() {
        let seed = Seed { k0: 1, k1: 2 };
        let mut hits = vec![0u32; 64];
        for i in 0..64_000u32 {
            let mut h = seed.hasher(0);
            write_part(&mut h, 1, &i.to_le_bytes());
            let s = index(finish(h), 64);
            hits[s as usize] += 1;
        }
        // 1,000 expected per slot; a fair hash stays well within ±20%.
        assert!(hits.iter().all(|&n| (800..1200).contains(&n)), "{hits:?}");
        assert_eq!(index(u64::MAX, 7), 6);
        assert_eq!(index(0, 7), 0);
    }

    #[test]
    fn composite_parts_do_not_alias() {
        let seed = Seed { k0: 9, k1: 9 };
        let hash = |parts: &[&[u8]]| {
            let mut h = seed.hasher(0);
            for p in parts {
                write_part(&mut h, 4, p);
            }
            finish(h)
        };
        assert_ne!(hash(&[b"a", b"bc"]), hash(&[b"ab", b"c"]));
    }

    #[test]
    fn seed_round_trips() {
        let s = Seed {
            k0: 0x0102_0304_0506_0708,
            k1: u64::MAX,
        };
        assert_eq!(Seed::from_bytes(&s.to_bytes()), Some(s));
        assert_eq!(Seed::from_bytes(b"short"), None);
    }
}
