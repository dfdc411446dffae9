//! Where a window counter lives in Redis: a field of a hash shared by many counters.
//!
//! A counter of its own key costs Redis a key and an expiry entry, and creating a key
//! with its expiry (`SET NX PX`) is twice the cost of a plain `INCR`: a layer where
//! every client owns its counter runs at half Redis's speed before any counting. So a
//! window's counts are fields of hashes instead, one hash per (rule, window, shard):
//! `rampart:v3:<fixed_window|sliding_window>:<window_ms>:{<shard tag>}:<window number>`,
//! field `<counter name>`. A hit is one `HINCRBY`; the hash gets its expiry once (the
//! first sidecar to touch it in a window sets it, `PEXPIRE NX`), not once per counter.
//!
//! Shards follow Cluster slots: a counter's shard tag is one of `TAGS_PER_SLOT` short
//! strings that hash to the very slot of the counter's name, so its count sits on the
//! node (and slot) of its revocation and block keys (`{<counter name>}`), and one script
//! may touch both. Several tags per slot keep hashes small: Redis keeps a hash of up to
//! 512 fields as one packed list, scanned on every access, and a scan of hundreds of
//! fields costs more than the hit itself. 65,536 hashes per window hold a million
//! counters at ~15 fields each.

use std::sync::OnceLock;

use rampart::policy::Algorithm;
use rampart::wire::Rule;

use super::connection::slot_of;

const SLOTS: usize = 16_384;
/// Hashes per Cluster slot for each window of each rule.
pub const TAGS_PER_SLOT: usize = 4;

/// For each slot, `TAGS_PER_SLOT` strings whose Cluster slot is that slot: the first
/// ones met counting up in base 36, so every sidecar finds the same.
fn tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut found: Vec<Vec<String>> = vec![Vec::new(); SLOTS];
        let mut missing = SLOTS * TAGS_PER_SLOT;
        let mut n: u64 = 0;
        while missing > 0 {
            let tag = base36(n);
            let slot = &mut found[usize::from(slot_of(&tag))];
            if slot.len() < TAGS_PER_SLOT {
                slot.push(tag);
                missing -= 1;
            }
            n += 1;
        }
        found.into_iter().flatten().collect()
    })
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// FNV-1a: picks one of a slot's tags, independent of the slot's own CRC16.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Which shard counter `name` is in: one of the tags of `slot_of(name)`.
fn shard_of(name: &str) -> usize {
    let slot = usize::from(slot_of(name));
    slot * TAGS_PER_SLOT + (fnv(name.as_bytes()) % TAGS_PER_SLOT as u64) as usize
}

/// The shard tag of counter `name`: hashes to `slot_of(name)`.
#[cfg(test)]
fn shard_tag(name: &str) -> &'static str {
    &tags()[shard_of(name)]
}

/// One window hash: which rule, shard and window. Small and `Copy`, so the sidecar can
/// remember many (`Expiries`); it names itself when a command needs the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowHash {
    shard: u32,
    /// What names the hash: fixed or sliding, and the window's length.
    algorithm: Algorithm,
    /// The window's number: Redis µs / the window's length.
    pub win: u64,
}

impl WindowHash {
    /// The hash holding counter `name` of a windowed `rule` in the window under way at
    /// Redis time `now_us`.
    pub fn at(name: &str, rule: &Rule, now_us: u64) -> WindowHash {
        let algorithm = rule.algorithm();
        WindowHash {
            shard: shard_of(name) as u32,
            algorithm,
            win: now_us / window_us(&algorithm),
        }
    }

    /// The same counter's hash for the window before.
    pub fn previous(self) -> WindowHash {
        WindowHash {
            win: self.win.wrapping_sub(1),
            ..self
        }
    }

    /// What the names of this counter's window hashes start with (the batch script
    /// appends the window number it reads off Redis's clock).
    pub fn prefix(&self) -> String {
        let tag = &tags()[self.shard as usize];
        let mut key = String::with_capacity(48 + tag.len());
        key.push_str("rampart:v3:");
        key.push_str(self.algorithm.name());
        key.push(':');
        key.push_str(itoa::Buffer::new().format(self.algorithm.window_ms()));
        key.push_str(":{");
        key.push_str(tag);
        key.push_str("}:");
        key
    }

    /// The hash's name. Built by hand: this runs for every hit, and `format!` was a
    /// tenth of the sidecar's time on distinct counters.
    pub fn name(&self) -> String {
        let mut name = self.prefix();
        name.push_str(itoa::Buffer::new().format(self.win));
        name
    }

    /// How long the hash must live (ms) at Redis time `now_us`: until it reads empty
    /// again (a sliding window's also while the next one reads it), and a second more.
    pub fn ttl_ms(&self, now_us: u64) -> u64 {
        let w = window_us(&self.algorithm);
        let reset = ((self.win + 1) * w).saturating_sub(now_us);
        let keep = match self.algorithm {
            Algorithm::SlidingWindow { .. } => reset + w,
            _ => reset,
        };
        keep.div_ceil(1000) + 1000
    }

    /// When the hash expires (Redis µs), given its expiry at `now_us`.
    pub fn expires_us(&self, now_us: u64) -> u64 {
        now_us + self.ttl_ms(now_us) * 1000
    }
}

fn window_us(algorithm: &Algorithm) -> u64 {
    algorithm.window_ms().max(1) * 1000
}

/// Whether the counter is a field of window hashes (the token bucket keeps a key of
/// its own: its state is a time, rewritten on each hit, not a count).
pub fn windowed(rule: &Rule) -> bool {
    !matches!(rule, Rule::TokenBucket { .. })
}

/// What the batch script is given for counter `name`: its window hashes' prefix, or for
/// a token bucket its key.
pub fn counter_key(name: &str, rule: &Rule) -> String {
    if windowed(rule) {
        WindowHash::at(name, rule, 0).prefix()
    } else {
        format!("rampart:v1:{}:{}:{{{name}}}", rule.algorithm().name(), rule.window_ms())
    }
}

/// A guard key of counter `name` (`revoked`, `blocked`, `flagged`, `clients`): under the
/// counter's own hash tag, in the slot of its window hashes.
pub fn guard_key(kind: &str, name: &str) -> String {
    format!("rampart:v1:{kind}:{{{name}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tag_hashes_to_its_slot() {
        let t = tags();
        assert_eq!(t.len(), SLOTS * TAGS_PER_SLOT);
        for (i, tag) in t.iter().enumerate() {
            assert_eq!(usize::from(slot_of(tag)), i / TAGS_PER_SLOT, "{tag}");
        }
        let distinct: std::collections::HashSet<&String> = t.iter().collect();
        assert_eq!(distinct.len(), t.len());
    }

    #[test]
    fn a_counter_shares_the_slot_of_its_guards() {
        for i in 0..2000 {
            let name = format!("ip:{i:032x}");
            let rule = Rule::FixedWindow {
                limit: 1,
                window_ms: 1000,
            };
            let key = counter_key(&name, &rule);
            let tag = key.split('{').nth(1).and_then(|r| r.split('}').next()).unwrap_or("");
            assert_eq!(slot_of(tag), slot_of(&name), "{name}");
        }
    }

    #[test]
    fn names_read_as_documented() {
        let fixed = Rule::FixedWindow {
            limit: 1,
            window_ms: 60_000,
        };
        let tag = shard_tag("ip:ab");
        let prefix = format!("rampart:v3:fixed_window:60000:{{{tag}}}:");
        assert_eq!(counter_key("ip:ab", &fixed), prefix);
        let hash = WindowHash::at("ip:ab", &fixed, 29_000_123 * 60_000_000 + 5);
        assert_eq!(hash.win, 29_000_123);
        assert_eq!(hash.name(), format!("{prefix}29000123"));
        assert_eq!(hash.previous().name(), format!("{prefix}29000122"));
        assert_eq!(
            WindowHash::at("ip:ab", &fixed, 0).previous().name(),
            format!("{prefix}{}", u64::MAX)
        );
        // 5 µs into the window: 60 s less 5 µs to go, rounded up, and a second more.
        assert_eq!(hash.ttl_ms(29_000_123 * 60_000_000 + 5), 61_000);
        let sliding = Rule::SlidingWindow {
            limit: 1,
            window_ms: 60_000,
        };
        assert_eq!(
            WindowHash::at("ip:ab", &sliding, 5).ttl_ms(5),
            121_000,
            "read by the next window too"
        );
        let bucket = Rule::TokenBucket {
            limit: 1,
            window_ms: 1000,
            burst: 1,
        };
        assert_eq!(counter_key("ip:ab", &bucket), "rampart:v1:token_bucket:1000:{ip:ab}");
    }

    #[test]
    fn counters_spread_over_every_tag_of_a_slot() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            seen.insert(shard_tag(&format!("k{i}")));
        }
        // 200,000 names over 65,536 tags: nearly all are used.
        assert!(seen.len() > 60_000, "{}", seen.len());
    }
}
