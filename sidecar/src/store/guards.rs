//! Revocations and blocks as every sidecar sharing one Redis knows them: a change feed.
//!
//! Before a hit counts, its key's guards are read: revoked, or blocked for too many
//! clients. Reading them in Redis costs two key lookups per hit (`EXISTS` of
//! `rampart:v1:revoked:{k}` and `...blocked:{k}`), about a third of a distinct-counter
//! hit's whole cost to Redis, to learn what is nearly always "neither". So on one Redis
//! (and behind Sentinel) every guard change is written together with a numbered entry
//! in a log, atomically (one script): `rampart:v1:guards:seq` counts the changes and the
//! stream `rampart:v1:guards:log` holds the recent ones (seq, kind, key, until). Each
//! sidecar keeps the guards in memory, as of a seq, and a pipeline reads just that one
//! number (`GET`) in line with its counters: when the memory is as of that seq, it
//! holds exactly Redis's guards at the moment the counters were charged, as a per-hit
//! read did (as of a later seq: the guards as they stand now, newer still); when it is
//! behind, the sidecar reads the entries since (`XRANGE`), or everything again (`LOAD`)
//! when entries are missing (trimmed, or Redis restarted or failed over to a replica
//! that lagged: connection errors make the sidecar forget the feed), before answering.
//! A seq that went back with no connection error (Redis flushed) is caught by the
//! clock's sampling, every second.
//!
//! A Redis Cluster has no single place such a log could be written atomically with a
//! block a script sets on another node, so there pipelines read each counter's guards
//! (`pipelined::GUARDS`). Guards must be changed through the sidecar (`keys revoke`,
//! `keys restore`): a key written by hand in Redis is seen by scripts, not pipelines.

use std::sync::Mutex;

use redis::Value;
use rustc_hash::{FxHashMap, FxHashSet};

use super::connection::text;
use super::KeyState;

/// The change counter and the log (seq, kind, key, until µs).
pub const SEQ: &str = "rampart:v1:guards:seq";
pub const LOG: &str = "rampart:v1:guards:log";

/// Entries kept in the log (approximately: `MAXLEN ~`). A sidecar further behind
/// loads everything again.
const KEPT: u32 = 10_000;

/// Lua: `log_guard(kind, key, until_us)` numbers a guard change and logs it. Part of
/// every script that changes a guard on one Redis.
pub fn log_lua() -> String {
    format!(
        r#"
local function log_guard(kind, key, until_us)
  local n = redis.call('INCR', '{SEQ}')
  redis.call('XADD', '{LOG}', 'MAXLEN', '~', '{KEPT}', '*', 'seq', n, 'kind', kind, 'key', key,
    'until', string.format('%d', until_us))
end
"#
    )
}

/// Revokes (ARGV: 'revoke', key, reason) or restores (ARGV: 'restore', key) a key,
/// logged.
pub fn write_lua() -> String {
    log_lua()
        + r#"
local key = ARGV[2]
local tag = '{' .. key .. '}'
if ARGV[1] == 'revoke' then
  redis.call('SET', 'rampart:v1:revoked:' .. tag, ARGV[3])
  redis.call('SADD', 'rampart:v1:index:revoked', key)
  log_guard('revoked', key, 0)
else
  redis.call('DEL', 'rampart:v1:revoked:' .. tag, 'rampart:v1:blocked:' .. tag,
    'rampart:v1:flagged:' .. tag, 'rampart:v1:clients:' .. tag)
  for _, kind in ipairs({'revoked', 'blocked', 'flagged'}) do
    redis.call('SREM', 'rampart:v1:index:' .. kind, key)
  end
  log_guard('restored', key, 0)
end
return 1
"#
}

/// Every guard as of one seq, atomically: returns seq, the log's last entry id (or
/// "0-0"), Redis's time (µs), the revoked keys, and blocked keys with their end (µs),
/// flat. Blocks that have ended leave the listing set on the way.
pub const LOAD: &str = r#"
local seq = tonumber(redis.call('GET', 'rampart:v1:guards:seq')) or 0
local last = redis.call('XREVRANGE', 'rampart:v1:guards:log', '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local revoked, blocked = {}, {}
for _, k in ipairs(redis.call('SMEMBERS', 'rampart:v1:index:revoked')) do
  if redis.call('EXISTS', 'rampart:v1:revoked:{' .. k .. '}') == 1 then revoked[#revoked + 1] = k end
end
for _, k in ipairs(redis.call('SMEMBERS', 'rampart:v1:index:blocked')) do
  local left = redis.call('PTTL', 'rampart:v1:blocked:{' .. k .. '}')
  if left > 0 then
    blocked[#blocked + 1] = k
    blocked[#blocked + 1] = string.format('%d', now + left * 1000)
  else
    redis.call('SREM', 'rampart:v1:index:blocked', k)
  end
end
return {seq, id, string.format('%d', now), revoked, blocked}
"#;

/// Entries read per `XRANGE`; a sidecar this far behind reads in a few rounds.
pub const CATCH_UP: usize = 1_000;
/// Rounds of `CATCH_UP` before loading everything instead.
pub const ROUNDS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Revoked,
    Blocked,
    Restored,
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    id: String,
    seq: u64,
    kind: Kind,
    key: String,
    until_us: u64,
}

/// The guards as of one seq.
#[derive(Debug, Default)]
pub struct Known {
    seq: u64,
    /// The last log entry applied (where the next `XRANGE` starts).
    last_id: String,
    revoked: FxHashSet<String>,
    /// Blocked key → the block's end (Redis µs).
    blocked: FxHashMap<String, u64>,
}

/// The log no longer holds the entries after ours (trimmed, or another Redis):
/// load everything.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap;

impl Known {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn last_id(&self) -> &str {
        &self.last_id
    }

    /// `LOAD`'s answer.
    pub fn loaded(v: &Value) -> Option<Known> {
        let Value::Array(parts) = v else { return None };
        let [seq, id, _now, Value::Array(revoked), Value::Array(blocked)] = parts.as_slice() else {
            return None;
        };
        let mut known = Known {
            seq: number(seq)?,
            last_id: text(id)?,
            ..Known::default()
        };
        for k in revoked {
            known.revoked.insert(text(k)?);
        }
        for pair in blocked.chunks(2) {
            let [k, until] = pair else { return None };
            known.blocked.insert(text(k)?, number(until)?);
        }
        Some(known)
    }

    /// Applies entries read after `last_id`, in order. They must follow on from `seq`
    /// without a hole; otherwise nothing is applied.
    pub fn apply(&mut self, entries: &[Entry]) -> Result<(), Gap> {
        if entries
            .iter()
            .enumerate()
            .any(|(i, e)| e.seq != self.seq + 1 + i as u64)
        {
            return Err(Gap);
        }
        for e in entries {
            match e.kind {
                Kind::Revoked => {
                    self.revoked.insert(e.key.clone());
                }
                Kind::Blocked => {
                    self.blocked.insert(e.key.clone(), e.until_us);
                }
                Kind::Restored => {
                    self.revoked.remove(&e.key);
                    self.blocked.remove(&e.key);
                }
            }
            self.seq = e.seq;
            self.last_id.clone_from(&e.id);
        }
        Ok(())
    }

    /// Forgets blocks that ended before `now_us` (keeps the memory to live blocks).
    pub fn prune(&mut self, now_us: u64) {
        self.blocked.retain(|_, until| *until > now_us);
    }

    /// Key `key`'s standing at Redis time `now_us`, and a block's ms left.
    pub fn state(&self, key: &str, now_us: u64) -> (KeyState, u64) {
        if self.revoked.contains(key) {
            return (KeyState::Revoked, 0);
        }
        match self.blocked.get(key) {
            Some(until) if *until > now_us => (KeyState::Blocked, (until - now_us).div_ceil(1000)),
            _ => (KeyState::Ok, 0),
        }
    }

    /// Whether nothing is revoked or blocked (the common case: no lookups).
    pub fn clear(&self) -> bool {
        self.revoked.is_empty() && self.blocked.is_empty()
    }
}

/// `XRANGE`'s answer as entries; `None` when it is not one.
pub fn entries(v: &Value) -> Option<Vec<Entry>> {
    let Value::Array(items) = v else { return None };
    items
        .iter()
        .map(|item| {
            let Value::Array(pair) = item else { return None };
            let [id, Value::Array(fields)] = pair.as_slice() else {
                return None;
            };
            let mut e = Entry {
                id: text(id)?,
                seq: 0,
                kind: Kind::Restored,
                key: String::new(),
                until_us: 0,
            };
            for kv in fields.chunks(2) {
                let [k, v] = kv else { return None };
                match text(k)?.as_str() {
                    "seq" => e.seq = number(v)?,
                    "key" => e.key = text(v)?,
                    "until" => e.until_us = number(v)?,
                    "kind" => {
                        e.kind = match text(v)?.as_str() {
                            "revoked" => Kind::Revoked,
                            "blocked" => Kind::Blocked,
                            "restored" => Kind::Restored,
                            _ => return None,
                        }
                    }
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

/// A seq as `GET` answers it: a missing counter is 0 (nothing ever changed).
pub fn seq_of(v: &Value) -> Option<u64> {
    match v {
        Value::Nil => Some(0),
        other => number(other),
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// This sidecar's copy of the guards, the lock one catch-up at a time holds, and the
/// scripts that change and load them.
pub struct Feed {
    known: Mutex<Option<Known>>,
    pub syncing: tokio::sync::Mutex<()>,
    /// `write_lua()` and `LOAD`.
    pub write: redis::Script,
    pub load: redis::Script,
}

impl Feed {
    pub fn new() -> Feed {
        Feed {
            known: Mutex::new(None),
            syncing: tokio::sync::Mutex::new(()),
            write: redis::Script::new(&write_lua()),
            load: redis::Script::new(LOAD),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The seq known, if any.
    pub fn seq(&self) -> Option<u64> {
        self.lock().as_ref().map(Known::seq)
    }

    /// Runs `f` on the known guards (`None` until loaded).
    pub fn with<T>(&self, f: impl FnOnce(Option<&mut Known>) -> T) -> T {
        f(self.lock().as_mut())
    }

    pub fn set(&self, known: Known) {
        *self.lock() = Some(known);
    }

    /// After a connection error: Redis may be another one now.
    pub fn forget(&self) {
        *self.lock() = None;
    }

    /// Each key's standing at `now_us`, if the guards known are as of `seq` or later
    /// (a pipeline that read an older seq ran before the changes since: answering
    /// with them is answering as they stand now).
    pub fn states<'a>(
        &self,
        seq: u64,
        keys: impl Iterator<Item = &'a str>,
        now_us: u64,
    ) -> Option<Vec<(KeyState, u64)>> {
        let known = self.lock();
        let k = known.as_ref().filter(|k| k.seq >= seq)?;
        if k.clear() {
            return Some(keys.map(|_| (KeyState::Ok, 0)).collect());
        }
        Some(keys.map(|key| k.state(key, now_us)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, kind: Kind, key: &str, until_us: u64) -> Entry {
        Entry {
            id: format!("{seq}-0"),
            seq,
            kind,
            key: key.to_string(),
            until_us,
        }
    }

    #[test]
    fn entries_apply_in_order_and_a_hole_applies_nothing() {
        let mut k = Known::default();
        k.apply(&[entry(1, Kind::Revoked, "a", 0), entry(2, Kind::Blocked, "b", 5_000)])
            .expect("follows on");
        assert_eq!(k.state("a", 1_000), (KeyState::Revoked, 0));
        assert_eq!(k.state("b", 1_000), (KeyState::Blocked, 4));
        assert_eq!(k.state("b", 5_000), (KeyState::Ok, 0), "the block ended");
        assert_eq!((k.seq(), k.last_id()), (2, "2-0"));
        assert_eq!(k.apply(&[entry(4, Kind::Restored, "a", 0)]), Err(Gap));
        assert_eq!(k.state("a", 0), (KeyState::Revoked, 0), "nothing applied past a hole");
        k.apply(&[entry(3, Kind::Restored, "a", 0), entry(4, Kind::Restored, "b", 0)])
            .expect("follows on");
        assert!(k.clear());
    }

    #[test]
    fn answers_parse_and_odd_ones_are_refused() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let xrange = Value::Array(vec![Value::Array(vec![
            bulk("17-1"),
            Value::Array(
                ["seq", "3", "kind", "blocked", "key", "k", "until", "99"]
                    .map(bulk)
                    .to_vec(),
            ),
        ])]);
        assert_eq!(
            entries(&xrange),
            Some(vec![Entry {
                id: "17-1".into(),
                seq: 3,
                kind: Kind::Blocked,
                key: "k".into(),
                until_us: 99
            }])
        );
        let odd = Value::Array(vec![Value::Array(vec![
            bulk("17-1"),
            Value::Array(["kind", "unheard-of"].map(bulk).to_vec()),
        ])]);
        assert_eq!(entries(&odd), None);
        assert_eq!(seq_of(&Value::Nil), Some(0));
        assert_eq!(seq_of(&bulk("12")), Some(12));
        assert_eq!(seq_of(&bulk("-1")), None);
        let load = Value::Array(vec![
            Value::Int(7),
            bulk("5-0"),
            bulk("1000"),
            Value::Array(vec![bulk("r")]),
            Value::Array(vec![bulk("b"), bulk("3000")]),
        ]);
        let k = Known::loaded(&load).expect("LOAD answer");
        assert_eq!((k.seq(), k.last_id()), (7, "5-0"));
        assert_eq!(k.state("r", 1000), (KeyState::Revoked, 0));
        assert_eq!(k.state("b", 1000), (KeyState::Blocked, 2));
        assert!(Known::loaded(&Value::Array(vec![Value::Int(7)])).is_none());
    }

    #[test]
    fn states_answer_only_for_the_seq_known() {
        let feed = Feed::new();
        assert_eq!(feed.states(0, ["a"].into_iter(), 0), None, "nothing loaded");
        let mut k = Known::default();
        k.apply(&[entry(1, Kind::Revoked, "a", 0)]).expect("follows on");
        feed.set(k);
        assert_eq!(feed.states(2, ["a"].into_iter(), 0), None, "newer than known");
        assert_eq!(
            feed.states(0, ["a"].into_iter(), 0),
            Some(vec![(KeyState::Revoked, 0)]),
            "a read older than known: as the guards stand now"
        );
        assert_eq!(
            feed.states(1, ["a", "b"].into_iter(), 0),
            Some(vec![(KeyState::Revoked, 0), (KeyState::Ok, 0)])
        );
        feed.forget();
        assert_eq!(feed.seq(), None);
    }
}
