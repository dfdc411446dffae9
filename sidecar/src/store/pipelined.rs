//! Window counters as plain pipelined commands, without a script.
//!
//! Redis runs a plain `HINCRBY` at close to its own `INCR` speed, and the same from a
//! script at half that (every call out of Lua costs). A window counter needs nothing
//! more: `HINCRBY` answers the count after the hit atomically, so hits on one counter
//! are decided exactly in the order Redis receives them. A report (hits another gateway
//! admitted already) just adds. A check that does not fit takes back what did not fit
//! afterwards (`HINCRBY -n`, a second round trip only for such checks); until then the
//! count reads higher than it is, but only ever past the limit (what fitted filled it
//! exactly), so any check that sees the extra would have been refused anyway. A batch
//! for one node goes as one pipeline:
//!
//! 1. the guards' read: on one Redis the guard feed's seq (`GET`, see `guards`: the
//!    sidecar knows every revocation and block as of that seq); on a Cluster node a
//!    small script reading each counter's revocation and block (details only when set),
//! 2. per counter `HINCRBY <window hash> <name> <cost>` (a sliding window first reads
//!    the previous window's count, `HGET`),
//! 3. `PEXPIRE <hash> <ms> NX` for each hash this sidecar has not yet given its expiry
//!    (`Expiries`).
//!
//! Windows are named from `RedisClock`, Redis's time as tracked here; the answers are
//! worked out by the same algorithms the filter and the memory store run. A revoked or
//! blocked key's check is refused and takes nothing; its report is answered as such
//! (its hits are counted all the same: they were admitted already, and the key is
//! refused from now on anyway). Counters a pipeline could not charge because their slot
//! moved (MOVED, ASK), and checks whose guards could not be read, are sent again
//! through the script, which routes each by its own key.

use redis::{Pipeline, Value};

use rampart::algorithms;
use rampart::wire::Rule;

use super::expiries::Expiries;
use super::guards;
use super::layout::{self, WindowHash};
use super::redis::script_state;
use super::{Applied, Call, KeyState, Mode, StoreError};

/// Guards of a batch of counters on a Cluster node (ARGV: their names). Returns, flat,
/// for each revoked or blocked one: its position (from 1), 1 (revoked) or 2 (blocked),
/// and the block's ms left.
pub const GUARDS: &str = r#"
local keys = {}
for i = 1, #ARGV do
  keys[2 * i - 1] = 'rampart:v1:revoked:{' .. ARGV[i] .. '}'
  keys[2 * i] = 'rampart:v1:blocked:{' .. ARGV[i] .. '}'
end
local out = {}
if #keys == 0 then return out end
-- One EXISTS for all when they share a slot; keys of many slots fail it (even with
-- allow-cross-slot-keys), and then each counter asks for its own two (one slot).
local whole, found = pcall(redis.call, 'EXISTS', unpack(keys))
if whole and found == 0 then return out end
for i = 1, #ARGV do
  if redis.call('EXISTS', keys[2 * i - 1], keys[2 * i]) > 0 then
    if redis.call('EXISTS', keys[2 * i - 1]) == 1 then
      out[#out + 1], out[#out + 2], out[#out + 3] = i, 1, 0
    else
      local left = redis.call('PTTL', keys[2 * i])
      if left > 0 then out[#out + 1], out[#out + 2], out[#out + 3] = i, 2, left end
    end
  end
end
return out
"#;

/// Whether a call can go as plain commands: a window counter that carries no
/// distinct-client observation (those need the script's HyperLogLog and block).
pub fn eligible(c: &Call<'_>) -> bool {
    layout::windowed(&c.rule) && (c.seen.distinct.is_none() || c.seen.clients.is_empty())
}

/// One counter of a pipeline: where its replies are.
struct Slot {
    /// Index into the batch's calls.
    call: usize,
    /// The window it was filed in, and that window's hash.
    win: u64,
    hash: String,
    /// Reply positions: the previous window's count (sliding windows), the new count.
    prev: Option<usize>,
    incr: usize,
}

/// How to read the answer of a pipeline for one node.
pub struct Plan {
    slots: Vec<Slot>,
    commands: usize,
    /// Hashes given their expiry by this pipeline: which, until when (Redis µs), and
    /// the reply saying it was done.
    expiring: Vec<(WindowHash, u64, usize)>,
    now_us: u64,
}

/// What became of one counter of a pipeline.
pub enum Filed {
    Done(Result<Applied, StoreError>),
    /// Its slot lives elsewhere now: send it again, routed by its own key.
    Moved,
}

impl Plan {
    /// The pipeline for `chunk` (indexes into `calls`, all eligible, all on one node),
    /// filed at Redis time `now_us`. Its first command reads the guards (`read`).
    pub fn new(
        calls: &[Call<'_>],
        chunk: &[usize],
        now_us: u64,
        read: GuardRead<'_>,
        expiries: &Expiries,
    ) -> (Pipeline, Plan) {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        match read {
            GuardRead::Seq => {
                pipe.cmd("GET").arg(guards::SEQ);
            }
            GuardRead::Script(lua) => {
                pipe.add_command(guard_script(calls, chunk, lua));
            }
        }
        let mut replies = 1;
        let mut slots = Vec::with_capacity(chunk.len());
        let mut expiring: Vec<(WindowHash, u64, usize)> = Vec::new();
        let hashes: Vec<WindowHash> = chunk
            .iter()
            .map(|&i| WindowHash::at(calls[i].key, &calls[i].rule, now_us))
            .collect();
        let needed = expiries.needed(hashes.iter().copied(), now_us);
        for ((&i, hash), needed) in chunk.iter().zip(hashes).zip(needed) {
            let c = &calls[i];
            let prev = matches!(c.rule, Rule::SlidingWindow { .. }).then(|| {
                pipe.cmd("HGET").arg(hash.previous().name()).arg(c.key);
                replies += 1;
                replies - 1
            });
            let name = hash.name();
            pipe.cmd("HINCRBY").arg(&name).arg(c.key).arg(c.cost);
            let incr = replies;
            replies += 1;
            if needed && !expiring.iter().any(|(h, _, _)| *h == hash) {
                pipe.cmd("PEXPIRE").arg(&name).arg(hash.ttl_ms(now_us)).arg("NX");
                expiring.push((hash, hash.expires_us(now_us), replies));
                replies += 1;
            }
            slots.push(Slot {
                call: i,
                win: hash.win,
                hash: name,
                prev,
                incr,
            });
        }
        let plan = Plan {
            slots,
            commands: replies,
            expiring,
            now_us,
        };
        (pipe, plan)
    }

    /// Commands in the pipeline (each answers once).
    pub fn commands(&self) -> usize {
        self.commands
    }

    /// Reads the pipeline's replies, with each counter's standing and a block's ms left
    /// in `states` (in `chunk` order; `None` when the guards could not be read): an
    /// outcome per counter, in `chunk` order, and what to take back (window hash,
    /// counter, amount: what checks added but did not get). Without guards (a slot of
    /// the batch moved, or the feed could not be read), reports still counted and are
    /// answered without them (the next report sees a revocation); checks are taken back
    /// and sent again.
    pub fn read(
        self,
        calls: &[Call<'_>],
        replies: &[Value],
        states: Option<Vec<(KeyState, u64)>>,
        expiries: &Expiries,
    ) -> (Vec<Filed>, Vec<(String, usize, u64)>) {
        let guarded = states.is_some();
        let states = states.unwrap_or_else(|| vec![(KeyState::Ok, 0u64); self.slots.len()]);
        let done = self
            .expiring
            .into_iter()
            .filter(|(_, _, reply)| matches!(replies.get(*reply), Some(Value::Int(_))))
            .map(|(hash, until, _)| (hash, until));
        expiries.sent(done, self.now_us);
        let now_ns = self.now_us.saturating_mul(1000);
        let mut take_back = Vec::new();
        let filed = self
            .slots
            .into_iter()
            .zip(states)
            .map(|(slot, (state, left))| {
                let c = &calls[slot.call];
                let count = |pos: usize| -> Result<u64, Value> {
                    match replies.get(pos) {
                        Some(Value::Int(n)) => Ok((*n).max(0) as u64),
                        Some(Value::Nil) => Ok(0),
                        Some(Value::BulkString(b)) => {
                            Ok(std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).unwrap_or(0))
                        }
                        Some(other) => Err(other.clone()),
                        None => Err(Value::Nil),
                    }
                };
                let (prev, after) = match (slot.prev.map(count).transpose(), count(slot.incr)) {
                    (Ok(prev), Ok(after)) => (prev.unwrap_or(0), after),
                    (Err(e), _) | (_, Err(e)) => return failed(e),
                };
                let check = c.mode == Mode::Check;
                // A check refused, or not known to be allowed, takes nothing.
                if check && !guarded {
                    take_back.push((slot.hash, slot.call, c.cost));
                    return Filed::Moved;
                }
                if state != KeyState::Ok {
                    if check {
                        take_back.push((slot.hash, slot.call, c.cost));
                    }
                    return Filed::Done(Ok(Applied {
                        limit: c.rule.limit(),
                        retry_after_ms: left,
                        state,
                        ..Applied::default()
                    }));
                }
                let (d, _) = algorithms::charge_fields(
                    &c.rule.algorithm(),
                    c.rule.limit(),
                    c.rule.burst(),
                    [slot.win, after.saturating_sub(c.cost), prev],
                    now_ns,
                    c.mode.want(c.cost),
                );
                if check && d.granted < c.cost {
                    take_back.push((slot.hash, slot.call, c.cost - d.granted));
                }
                Filed::Done(Ok(Applied::decided(d, c.cost, c.mode)))
            })
            .collect();
        (filed, take_back)
    }
}

/// How a pipeline reads its counters' guards.
#[derive(Clone, Copy)]
pub enum GuardRead<'a> {
    /// One Redis: the feed's seq (`guards`).
    Seq,
    /// A Cluster node: this guard script (`GUARDS`, flagged for the Cluster).
    Script(&'a str),
}

/// The guard script's answer as each of `n` counters' standing and a block's ms left;
/// `None` when it is no answer (the script failed: a slot moved).
pub fn scripted_states(answer: &Value, n: usize) -> Option<Vec<(KeyState, u64)>> {
    let Value::Array(found) = answer else { return None };
    let mut states = vec![(KeyState::Ok, 0u64); n];
    for g in found.chunks(3) {
        if let [Value::Int(pos), Value::Int(state), Value::Int(left)] = g {
            if let Some(s) = usize::try_from(*pos - 1).ok().and_then(|p| states.get_mut(p)) {
                *s = (script_state(*state), (*left).max(0) as u64);
            }
        }
    }
    Some(states)
}

/// The guard script call for `chunk` (ARGV: the counters' names).
fn guard_script(calls: &[Call<'_>], chunk: &[usize], guards: &str) -> redis::Cmd {
    let mut check = redis::cmd("EVAL");
    check.arg(guards).arg(0);
    for &i in chunk {
        check.arg(calls[i].key);
    }
    check
}

/// Takes back what checks added but did not get: `HINCRBY <hash> <counter> -n` each.
pub fn take_back(calls: &[Call<'_>], what: &[(String, usize, u64)]) -> Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (hash, call, n) in what {
        pipe.cmd("HINCRBY").arg(hash).arg(calls[*call].key).arg(-(*n as i64));
    }
    pipe
}

/// A counter's command failed: moved slots are sent again; anything else is its own
/// permanent error (a key of the wrong type).
fn failed(reply: Value) -> Filed {
    let message = match &reply {
        Value::ServerError(e) => format!("{} {}", e.code(), e.details().unwrap_or_default()),
        other => format!("unexpected reply {other:?}"),
    };
    if message.starts_with("MOVED") || message.starts_with("ASK") || message.starts_with("TRYAGAIN") {
        return Filed::Moved;
    }
    Filed::Done(Err(StoreError {
        transient: false,
        message,
    }))
}
