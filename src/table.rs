//! Node-local counter tables in which every client owns its counter until the table is
//! genuinely full, in memory fixed at configure time.
//!
//! Envoy never deletes a shared-data key (HOSTS.md), so a key per client would let an
//! attacker rotating IPs or API keys grow the proxy's memory without end. A layer's
//! table instead holds `slots` entries in buckets of `BUCKET` entries, one shared-data
//! key per bucket, all created at configure time. A client's keyed hash picks two
//! buckets and a 32-bit fingerprint; its entry (fingerprint, when it was created, its
//! counter) lives in one of the two.
//!
//! - **Lookup** reads the first bucket, and the second only if the client is not in
//!   the first: an admitted request costs one read and one compare-and-swap.
//! - **Insert** goes to the first bucket while it holds fewer than `FIRST_FILL` live
//!   entries (so nearly every client is found with one read), else to the less loaded
//!   of the two buckets. Two choices keep both from filling long before the table does.
//!   An entry whose counter holds nothing any more (its window has passed, its bucket
//!   is full again, nothing in flight) is free.
//! - **Full**: when all `2 * BUCKET` entries of a newcomer's two buckets are live, it
//!   replaces the one whose loss forgives the least: the smallest count, and among
//!   equal counts the oldest (a client one request old is the least likely to come
//!   back soon the longer it has been quiet). That client is forgiven what its counter
//!   held. So a client hammering a closed limit (the highest count around) is the last
//!   to lose its entry, and the one-shot clients of an IP rotation (count 1) replace
//!   each other, never a client that has made two requests in the window. The one
//!   thing a rotation can make the table forget is a client's first request, when
//!   more newcomers than the table holds land between its first and second.
//!   `rampart_<layer>_table_full` counts each replacement: raise `slots` when it grows.
//!
//! Simulated (and measured end to end in `tests`): with entries live for as many
//! distinct clients as 50% of `slots`, no newcomer finds both buckets full; at 90%,
//! about 0.1% do.

use crate::algorithms::Fields;
use crate::slots;

/// Entries per bucket (one shared-data key).
pub const BUCKET: usize = 16;
/// An entry: fingerprint (u32), creation time in ms (u32), the counter (3 x u64).
pub const ENTRY_LEN: usize = 32;
/// A newcomer stays in its first bucket while that holds fewer live entries than this.
/// Simulated at 90% load: 16 (first bucket always) leaves 1.8% of newcomers without a
/// free entry; 8 leaves 0.01% but finds only 78% of clients in the first bucket; 12
/// leaves 0.08% and finds 86% (98% at half load).
const FIRST_FILL: usize = 12;

/// Buckets of a table of `slots` entries.
pub fn buckets_for(slots: u32) -> u32 {
    slots.div_ceil(BUCKET as u32).max(1)
}

/// Where a client's entry may live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Home {
    pub buckets: [u32; 2],
    /// Never 0: 0 marks an empty entry.
    pub fp: u32,
}

impl Home {
    pub fn of(hash: u64, buckets: u32) -> Home {
        let first = slots::index(hash, buckets);
        // The bucket index comes from the hash's high bits and the fingerprint from its
        // low ones; the second bucket from a remix of the whole.
        let second = slots::index(hash.rotate_left(29).wrapping_mul(0x9E37_79B9_7F4A_7C15), buckets);
        let fp = match hash as u32 {
            0 => 1,
            fp => fp,
        };
        Home {
            buckets: [first, second],
            fp,
        }
    }

    /// Whether the two buckets are one (a one-bucket table, or a chance collision).
    pub fn one_bucket(&self) -> bool {
        self.buckets[0] == self.buckets[1]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub fp: u32,
    /// When the client got this entry (ms, wrapping every 49 days; compared as an age):
    /// the tie-break between equal counts when the table is full.
    pub since_ms: u32,
    pub fields: Fields,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Entry {
    fn decode(b: &[u8]) -> Entry {
        Entry {
            fp: u32_at(b, 0),
            since_ms: u32_at(b, 4),
            fields: [u64_at(b, 8), u64_at(b, 16), u64_at(b, 24)],
        }
    }

    fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.fp.to_le_bytes());
        out[4..8].copy_from_slice(&self.since_ms.to_le_bytes());
        for (i, f) in self.fields.iter().enumerate() {
            out[8 + i * 8..16 + i * 8].copy_from_slice(&f.to_le_bytes());
        }
    }
}

/// A bucket's entries. A value that is not whole entries, or holds more than a bucket
/// can (a table written by another version), reads as empty.
pub fn entries(bucket: &[u8]) -> impl Iterator<Item = Entry> + '_ {
    let valid = bucket.len().is_multiple_of(ENTRY_LEN) && bucket.len() <= BUCKET * ENTRY_LEN;
    let bytes = if valid { bucket } else { &[] };
    bytes.chunks_exact(ENTRY_LEN).map(Entry::decode)
}

/// The client's entry in this bucket, and its position.
pub fn find(bucket: &[u8], fp: u32) -> Option<(usize, Entry)> {
    entries(bucket).enumerate().find(|(_, e)| e.fp == fp)
}

/// The bucket with entry `at` set to `e`. The value grows by whole entries only as far
/// as it is used, so a sparse table stays small.
pub fn put(bucket: &[u8], at: usize, e: &Entry) -> Vec<u8> {
    let mut out: Vec<u8> = entries(bucket)
        .flat_map(|x| {
            let mut b = [0u8; ENTRY_LEN];
            x.encode(&mut b);
            b
        })
        .collect();
    let need = (at + 1) * ENTRY_LEN;
    if out.len() < need {
        out.resize(need, 0);
    }
    e.encode(&mut out[at * ENTRY_LEN..need]);
    out
}

/// Where a newcomer's entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// 0 or 1: which of the client's two buckets.
    pub which: usize,
    pub at: usize,
    /// It replaces a live entry (the table is full around this client).
    pub replaces: bool,
}

/// A bucket's free positions and live entries, by `usage` (0: free).
struct Fill {
    free: Option<usize>,
    live: usize,
}

fn fill(bucket: &[u8], usage: &impl Fn(&Entry) -> u64) -> Fill {
    let mut f = Fill { free: None, live: 0 };
    let mut n = 0;
    for (i, e) in entries(bucket).enumerate() {
        n = i + 1;
        if e.fp == 0 || usage(&e) == 0 {
            f.free.get_or_insert(i);
        } else {
            f.live += 1;
        }
    }
    if f.free.is_none() && n < BUCKET {
        f.free = Some(n);
    }
    f
}

/// Chooses a newcomer's place among its two buckets (the second is ignored when
/// `one_bucket`); `usage` says what an entry's counter holds now (0: free); `now_ms` is
/// the clock entries' `since_ms` come from.
pub fn place(buckets: [&[u8]; 2], one_bucket: bool, now_ms: u32, usage: impl Fn(&Entry) -> u64) -> Placement {
    let first = fill(buckets[0], &usage);
    if let Some(at) = first.free.filter(|_| first.live < FIRST_FILL || one_bucket) {
        return Placement {
            which: 0,
            at,
            replaces: false,
        };
    }
    let second = if one_bucket {
        Fill {
            free: None,
            live: usize::MAX,
        }
    } else {
        fill(buckets[1], &usage)
    };
    let free = match (first.free, second.free) {
        (Some(a), Some(b)) => Some(if second.live < first.live { (1, b) } else { (0, a) }),
        (Some(a), None) => Some((0, a)),
        (None, Some(b)) => Some((1, b)),
        (None, None) => None,
    };
    if let Some((which, at)) = free {
        return Placement {
            which,
            at,
            replaces: false,
        };
    }
    // Full: replace the entry whose loss forgives the least; among equals, the oldest.
    let candidates = buckets
        .iter()
        .take(if one_bucket { 1 } else { 2 })
        .enumerate()
        .flat_map(|(which, b)| entries(b).enumerate().map(move |(at, e)| (which, at, e)));
    let mut best: Option<(u64, u32, usize, usize)> = None;
    for (which, at, e) in candidates {
        let (u, age) = (usage(&e), now_ms.wrapping_sub(e.since_ms));
        let better = match best {
            None => true,
            Some((bu, bage, _, _)) => u < bu || (u == bu && age > bage),
        };
        if better {
            best = Some((u, age, which, at));
        }
    }
    let (which, at) = best.map_or((0, 0), |(_, _, w, a)| (w, a));
    Placement {
        which,
        at,
        replaces: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fp: u32, since_ms: u32, count: u64) -> Entry {
        Entry {
            fp,
            since_ms,
            fields: [count, 0, 0],
        }
    }

    fn bucket(es: &[Entry]) -> Vec<u8> {
        es.iter().enumerate().fold(Vec::new(), |b, (i, e)| put(&b, i, e))
    }

    fn count(e: &Entry) -> u64 {
        e.fields[0]
    }

    #[test]
    fn entries_round_trip_and_grow_only_as_used() {
        let e = Entry {
            fp: 0xdead_beef,
            since_ms: 7,
            fields: [1, u64::MAX, 3],
        };
        let b = put(&[], 2, &e);
        assert_eq!(b.len(), 3 * ENTRY_LEN);
        assert_eq!(find(&b, 0xdead_beef), Some((2, e)));
        assert_eq!(entries(&b).filter(|x| x.fp == 0).count(), 2);
        assert_eq!(find(&b, 1), None);
        // Not whole entries, or too many: read as empty.
        assert_eq!(entries(&b[..ENTRY_LEN + 1]).count(), 0);
        assert_eq!(entries(&vec![1u8; (BUCKET + 1) * ENTRY_LEN]).count(), 0);
    }

    #[test]
    fn home_spreads_and_never_uses_fingerprint_zero() {
        let h = Home::of(0xffff_ffff_0000_0000, 64);
        assert_eq!(h.fp, 1);
        let mut first = vec![0u32; 64];
        let mut second = vec![0u32; 64];
        let mut same = 0;
        for i in 0..64_000u64 {
            let h = Home::of(i.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (i << 40), 64);
            first[h.buckets[0] as usize] += 1;
            second[h.buckets[1] as usize] += 1;
            same += u32::from(h.one_bucket());
        }
        assert!(first.iter().chain(&second).all(|&n| (700..1300).contains(&n)));
        assert!(same < 2000, "the two buckets coincide {same} times in 64,000");
    }

    #[test]
    fn newcomers_fill_the_first_bucket_then_the_less_loaded() {
        let full_enough: Vec<Entry> = (1..=FIRST_FILL as u32).map(|i| entry(i, 0, 1)).collect();
        let b0 = bucket(&full_enough);
        let p = place([&[], &[]], false, 100, count);
        assert_eq!((p.which, p.at, p.replaces), (0, 0, false));
        let p = place([&b0, &[]], false, 100, count);
        assert_eq!((p.which, p.at, p.replaces), (1, 0, false), "the second is emptier");
        let b1 = bucket(
            &(100..100 + FIRST_FILL as u32 + 2)
                .map(|i| entry(i, 0, 1))
                .collect::<Vec<_>>(),
        );
        let p = place([&b0, &b1], false, 100, count);
        assert_eq!((p.which, p.at), (0, FIRST_FILL), "the first is emptier");
    }

    #[test]
    fn an_idle_entry_is_free() {
        let mut es: Vec<Entry> = (1..=BUCKET as u32).map(|i| entry(i, 0, 5)).collect();
        es[9].fields[0] = 0;
        let b = bucket(&es);
        let p = place([&b, &b], true, 100, count);
        assert_eq!((p.which, p.at, p.replaces), (0, 9, false));
    }

    #[test]
    fn when_full_the_least_forgiven_and_then_the_oldest_goes() {
        let b0 = bucket(&(1..=BUCKET as u32).map(|i| entry(i, 10, 5)).collect::<Vec<_>>());
        let mut es: Vec<Entry> = (100..100 + BUCKET as u32).map(|i| entry(i, 10, 3)).collect();
        es[4] = entry(7, 20, 3);
        es[6] = entry(8, 5, 3);
        let b1 = bucket(&es);
        let p = place([&b0, &b1], false, 100, count);
        assert_eq!((p.which, p.at, p.replaces), (1, 6, true), "count 3, the oldest");
        // Ages, not raw times: an entry from before the clock wrapped is older.
        es[6] = entry(8, u32::MAX - 5, 3);
        let p = place([&b0, &bucket(&es)], false, 100, count);
        assert_eq!((p.which, p.at), (1, 6));
    }
}
