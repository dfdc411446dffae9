//! Redis store: one Redis, Redis Cluster or Redis behind Sentinel.
//!
//! Window counters (checks and reports) go as plain pipelined commands (`pipelined`),
//! their windows named by Redis's clock as the sidecar tracks it (`clock`); every other
//! charge (token buckets, distinct clients) goes through one Lua script per batch
//! (`BATCH`): atomically per counter, under Redis's own `TIME`. Either way every sidecar
//! sharing a Redis uses one clock for window maths whatever the skew between their
//! hosts. Lua instead of MULTI because each decision reads before it writes. On Redis
//! Cluster a script may only touch keys of the node it runs on, so a batch is split by
//! the node owning each counter's slot (from the slot map the connection follows); a
//! counter whose slot moved meanwhile answers "non local key" (or MOVED, in a
//! pipeline) and is retried alone, routed by its own key. Scripts run with EVALSHA
//! (loaded on first NOSCRIPT).
//!
//! Key layout: `layout` (window hashes shared by the counters of a slot) and, under
//! each counter's own hash tag `{<key>}` (`<key>` is the filter's keyed hash: API keys
//! never reach Redis in clear):
//! - `rampart:v1:token_bucket:<window_ms>:{<key>}` a token bucket's theoretical arrival
//!   time in microseconds; TTL: until the bucket is full again
//! - `rampart:v1:revoked:{<key>}` revocation reason (no TTL: until restored)
//! - `rampart:v1:blocked:{<key>}` block for too many clients (TTL: the cooldown)
//! - `rampart:v1:flagged:{<key>}` flag for too many clients (TTL: the window)
//! - `rampart:v1:clients:{<key>}` HyperLogLog of client hashes (TTL: the window)
//! - `rampart:v1:index:<revoked|blocked|flagged>` sets of keys, for listing (and
//!   loading the guard feed)
//! - `rampart:v1:guards:seq`, `rampart:v1:guards:log`: the guard feed (`guards`; one
//!   Redis or Sentinel): a count of guard changes and the stream of the recent ones.
//!
//! Concurrency: one multiplexed connection (per node, in Cluster) carries every command;
//! the sidecar issues a batch's calls concurrently, which the connection pipelines.
//! Failovers (Cluster, Sentinel) are followed by `connection::Supervised`.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use futures_util::future::join_all;
use redis::{RedisError, Script, Value};

use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};

use super::clock::RedisClock;
use super::connection::{slot_of, Conn, Supervised, Target};
use super::expiries::Expiries;
use super::guards::{self, Feed, Known};
use super::layout::{self, WindowHash};
use super::pipelined::{self, Filed, GuardRead, Plan};
use super::{Applied, Call, KeyInfo, KeyState, Mode, StoreError};
use crate::metrics::METRICS;

/// Every counter update the sidecar does not send as plain commands (and all of them
/// until Redis's clock is known): one script call charges a batch of counters, each
/// checked for revocation and blocks, charged with its own algorithm, and its distinct
/// clients counted, under one `TIME` (Redis's clock for all sidecars). Each counter
/// runs under `pcall`: one that fails (a key of the wrong type, or one another Cluster
/// node owns) answers its own error and its neighbours go on.
///
/// Redis calls made from Lua cost about a microsecond each, far more than the Lua around
/// them, so the script makes as few as it can: one `EXISTS` for every guard of the
/// batch (on a Cluster node, one per counter); a window count is one `HINCRBY` on its
/// window hash (`layout`), plus that hash's `PEXPIRE NX` when the sidecar has not sent
/// it yet (or named another window than Redis's clock does). A check that does not fit
/// takes back what it added; sliding windows also read the previous window (`HGET`).
///
/// Keys are built in the script, not declared: on Redis Cluster the script carries
/// `allow-cross-slot-keys` and is sent to the node that owns every counter of the batch
/// (KEYS[1], the first counter, routes it); declared keys would have to share one slot.
///
/// On one Redis (`feed`, a line set ahead of the script) a block is logged in the guard
/// feed (`guards`) with the block itself.
///
/// ARGV: the number of counters, the sidecar's estimate of Redis's time (µs; 0 when it
/// has none), then for each counter: its name, its key (window hashes' prefix, or the
/// token bucket's key), algorithm name, limit, window_ms, burst, cost, flags (1: record,
/// add all past the limit; 2: give the window hash its expiry) and the number of
/// distinct-client arguments that follow (0, or 4 + the client hashes: limit,
/// window_ms, block (1) or flag, cooldown_ms, hashes...). Returns seven entries per
/// counter, flat: granted, limit, remaining, reset_ms, retry_ms, state (0 ok, 1 revoked,
/// 2 blocked, 3 flagged) and distinct clients, or the string "ERR <message>" and six
/// zeros; then Redis's time (µs).
const BATCH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local guessed = tonumber(ARGV[2])

local function grant(capacity, cost, record)
  if record then return cost end
  if capacity < cost then return capacity end
  return cost
end

-- The expiry (ms) a window hash of window `win` needs to last `keep` µs more, or nil
-- when the sidecar has given it already (and named the same window).
local function expiry(asked, win, w, keep)
  if asked or math.floor(guessed / w) ~= win then return math.ceil(keep / 1000) + 1000 end
  return nil
end

-- Adds `cost` to counter `field` of window hash `h`, giving the hash its expiry when
-- asked. Returns the count before.
local function add(h, field, cost, expire_ms)
  local after = redis.call('HINCRBY', h, field, cost)
  if expire_ms then redis.call('PEXPIRE', h, expire_ms, 'NX') end
  return after - cost
end

-- Fixed window: the count of window `win` in field `field` of hash `<prefix><win>`.
local function fixed(field, prefix, limit, w, burst, cost, record, asked)
  local win = math.floor(now / w)
  local h = prefix .. win
  local reset = (win + 1) * w - now
  local before = add(h, field, cost, expiry(asked, win, w, reset))
  local capacity = math.max(limit - before, 0)
  local g = grant(capacity, cost, record)
  if g < cost then redis.call('HINCRBY', h, field, g - cost) end
  local retry = 0
  if capacity == 0 then retry = reset end
  return g, limit, math.max(capacity - g, 0), math.ceil(reset / 1000), math.ceil(retry / 1000)
end

-- Sliding window: this window's count and the previous one's, weighted by how much of
-- it still overlaps the last `w`. A window's hash lives until the next one has read it.
local function sliding(field, prefix, limit, w, burst, cost, record, asked)
  local win = math.floor(now / w)
  local h = prefix .. win
  local elapsed = now - win * w
  local reset = w - elapsed
  local prev = tonumber(redis.call('HGET', prefix .. (win - 1), field)) or 0
  local cur = add(h, field, cost, expiry(asked, win, w, reset + w))
  local est = prev * (w - elapsed) / w + cur
  local capacity = math.max(math.floor(limit - est + 1e-9), 0)
  local g = grant(capacity, cost, record)
  if g < cost then redis.call('HINCRBY', h, field, g - cost) end
  local retry = 0
  if capacity == 0 then
    if cur >= limit then
      retry = reset + math.ceil(w * (cur - limit + 1) / math.max(cur, 1))
    else
      retry = math.max(w - (limit - 1 - cur) * w / math.max(prev, 1) - elapsed, 1)
    end
  end
  return g, limit, math.max(capacity - g, 0), math.ceil(reset / 1000), math.ceil(retry / 1000)
end

-- Token bucket (GCRA): key `k` holds the theoretical arrival time in microseconds.
local function gcra(field, k, limit, w, burst, cost, record)
  local t_each = math.max(math.floor(w / limit), 1)
  local tolerance = t_each * burst
  local tat = math.max(tonumber(redis.call('GET', k)) or 0, now)
  local capacity = 0
  if tat + t_each - now <= tolerance then capacity = math.floor((tolerance - (tat - now)) / t_each) end
  local g = grant(capacity, cost, record)
  local new_tat = tat + t_each * g
  if g > 0 then
    redis.call('SET', k, string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
  end
  local retry = 0
  if capacity == 0 then retry = math.max(tat + t_each - tolerance - now, 0) end
  return g, burst, math.max(capacity - g, 0), math.ceil((new_tat - now) / 1000), math.ceil(retry / 1000)
end

local algorithms = {fixed_window = fixed, sliding_window = sliding, token_bucket = gcra}

-- Whether any counter of the batch has a revocation or a block (decided below).
local guarded = false

-- One counter: its seven answers as values (tables would cost Redis more than the
-- counting itself).
local function one(a)
  local field = ARGV[a]
  local tag = '{' .. field .. '}'
  local limit = tonumber(ARGV[a + 3])
  if guarded and redis.call('EXISTS', 'rampart:v1:revoked:' .. tag, 'rampart:v1:blocked:' .. tag) > 0 then
    if redis.call('EXISTS', 'rampart:v1:revoked:' .. tag) == 1 then return 0, limit, 0, 0, 0, 1, 0 end
    local left = redis.call('PTTL', 'rampart:v1:blocked:' .. tag)
    if left > 0 then return 0, limit, 0, 0, left, 2, 0 end
  end
  local alg = algorithms[ARGV[a + 2]]
  if not alg then error('unknown algorithm ' .. ARGV[a + 2]) end
  local flags = tonumber(ARGV[a + 7])
  local g, lim, rem, reset, retry = alg(field, ARGV[a + 1], limit, tonumber(ARGV[a + 4]) * 1000,
    tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]), flags % 2 == 1, flags >= 2)
  local state, seen = 0, 0
  local extra = tonumber(ARGV[a + 8])
  if extra > 4 then
    local dlimit, dwin, block, cooldown = tonumber(ARGV[a + 9]), ARGV[a + 10], ARGV[a + 11], ARGV[a + 12]
    local clients = 'rampart:v1:clients:' .. tag
    redis.call('PFADD', clients, unpack(ARGV, a + 13, a + 8 + extra))
    if redis.call('PTTL', clients) < 0 then redis.call('PEXPIRE', clients, dwin) end
    seen = redis.call('PFCOUNT', clients)
    if seen > dlimit then
      if block == '1' then
        redis.call('SET', 'rampart:v1:blocked:' .. tag, '1', 'PX', cooldown)
        if feed then
          redis.call('SADD', 'rampart:v1:index:blocked', field)
          log_guard('blocked', field, now + tonumber(cooldown) * 1000)
        end
        return g, lim, rem, reset, tonumber(cooldown), 2, seen
      end
      redis.call('SET', 'rampart:v1:flagged:' .. tag, seen, 'PX', dwin)
      state = 3
    end
  end
  return g, lim, rem, reset, retry, state, seen
end

local n = tonumber(ARGV[1])
local guards = {}
local a = 3
for i = 1, n do
  local tag = '{' .. ARGV[a] .. '}'
  guards[#guards + 1] = 'rampart:v1:revoked:' .. tag
  guards[#guards + 1] = 'rampart:v1:blocked:' .. tag
  a = a + 9 + tonumber(ARGV[a + 8])
end
-- On a Cluster node keys of many slots fail this call (allow-cross-slot-keys or not);
-- then each counter checks its own two, which share its slot.
local ok, found = pcall(redis.call, 'EXISTS', unpack(guards))
guarded = not ok or found > 0

-- One flat array, seven entries per counter: nested tables cost Redis a microsecond
-- each to build and convert.
local out = {}
local o = 0
a = 3
for i = 1, n do
  local ok, r1, r2, r3, r4, r5, r6, r7 = pcall(one, a)
  if ok then
    out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5], out[o + 6], out[o + 7] = r1, r2, r3, r4, r5, r6, r7
  else
    if type(r1) == 'table' and r1.err then r1 = r1.err end
    out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5], out[o + 6], out[o + 7] = 'ERR ' .. tostring(r1), 0, 0, 0, 0, 0, 0
  end
  o = o + 7
  a = a + 9 + tonumber(ARGV[a + 8])
end
out[o + 1] = now
return out
"#;

/// Counters one script call charges at most: the script holds the server while it
/// runs (a few microseconds per counter).
const MAX_PER_CALL: usize = 128;

/// Which deployment the store talks to: decides its name and whether batches are
/// split by owning node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    Single,
    Cluster,
    Sentinel,
}

impl Topology {
    fn of(target: &Target) -> Topology {
        match target {
            Target::Single(_) => Topology::Single,
            Target::Cluster(_) => Topology::Cluster,
            Target::Sentinel { .. } => Topology::Sentinel,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Topology::Single => "redis",
            Topology::Cluster => "redis-cluster",
            Topology::Sentinel => "redis-sentinel",
        }
    }
}

/// How pipelines learn their counters' guards.
enum Guards {
    /// One Redis or Sentinel: the feed, the guards as this sidecar knows them.
    Feed(Arc<Feed>),
    /// A Cluster: the guard script (`pipelined::GUARDS`, flagged for the Cluster).
    Script(String),
}

impl Guards {
    fn feed(&self) -> Option<&Arc<Feed>> {
        match self {
            Guards::Feed(feed) => Some(feed),
            Guards::Script(_) => None,
        }
    }
}

pub struct RedisStore {
    conn: Arc<Supervised>,
    topology: Topology,
    /// The batch script; on Cluster with `allow-cross-slot-keys` (Redis 7.0 and later).
    script: Script,
    guards: Guards,
    timeout: Duration,
    clock: Arc<RedisClock>,
    expiries: Expiries,
}

/// How often Redis's clock is sampled.
const CLOCK_EVERY: Duration = Duration::from_secs(1);

/// Which Redis errors are worth retrying (and let `failure_mode` decide, not a bug).
pub fn classify(e: &RedisError) -> StoreError {
    let transient = e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_io_error()
        || e.is_cluster_error()
        || !matches!(e.retry_method(), redis::RetryMethod::NoRetry);
    StoreError {
        transient,
        message: e.to_string(),
    }
}

fn malformed(what: &str) -> StoreError {
    StoreError {
        transient: false,
        message: format!("unexpected script answer: {what}"),
    }
}

/// One counter's answer: seven numbers, or "ERR <message>" first for a counter that
/// failed alone (permanent: a key of the wrong type; "non local key" is retried by the
/// caller).
fn applied(v: &[Value]) -> Result<Applied, StoreError> {
    if let Some(Value::BulkString(b)) = v.first() {
        return Err(StoreError {
            transient: false,
            message: String::from_utf8_lossy(b).into_owned(),
        });
    }
    let numbers: Option<Vec<u64>> = v
        .iter()
        .map(|x| match x {
            Value::Int(n) => Some((*n).max(0) as u64),
            _ => None,
        })
        .collect();
    let Some(n) = numbers.filter(|n| n.len() == 7) else {
        return Err(malformed(&format!("{v:?}")));
    };
    Ok(Applied {
        granted: n[0],
        limit: n[1],
        remaining: n[2],
        reset_ms: n[3],
        retry_after_ms: n[4],
        state: script_state(n[5] as i64),
        distinct: n[6],
    })
}

/// A key's standing as the scripts answer it (`BATCH`, `pipelined::GUARDS`).
pub fn script_state(code: i64) -> KeyState {
    match code {
        1 => KeyState::Revoked,
        2 => KeyState::Blocked,
        3 => KeyState::Flagged,
        _ => KeyState::Ok,
    }
}

/// Samples Redis's clock every `CLOCK_EVERY` while the store lives, and checks that the
/// guard feed's seq has not gone back (Redis flushed without a reconnection: the feed
/// is loaded again; pipelines take a seq behind the one known for an older read).
async fn sample_clock(conn: Weak<Supervised>, clock: Arc<RedisClock>, feed: Option<Arc<Feed>>) {
    let mut every = tokio::time::interval(CLOCK_EVERY);
    loop {
        every.tick().await;
        let Some(conn) = conn.upgrade() else { return };
        let sent = Instant::now();
        let answer = tokio::time::timeout(
            CLOCK_EVERY,
            redis::cmd("TIME").query_async::<(u64, u64)>(&mut conn.conn()),
        )
        .await;
        match answer {
            Ok(Ok((secs, micros))) => clock.observe(secs * 1_000_000 + micros, sent, Instant::now()),
            _ => clock.forget(),
        }
        let Some(feed) = &feed else { continue };
        let known = feed.seq();
        let seq = tokio::time::timeout(
            CLOCK_EVERY,
            redis::cmd("GET")
                .arg(guards::SEQ)
                .query_async::<Value>(&mut conn.conn()),
        )
        .await;
        match (known, seq) {
            (Some(known), Ok(Ok(seq))) if guards::seq_of(&seq).is_some_and(|s| s < known) => feed.forget(),
            _ => {}
        }
    }
}

fn timeout_error(after: Duration) -> StoreError {
    StoreError {
        transient: true,
        message: format!("no answer from Redis within {after:?}"),
    }
}

impl RedisStore {
    /// Connects to one Redis, a Cluster or the master Sentinel names; fails when
    /// nothing answers.
    pub async fn connect(target: Target, timeout: Duration) -> Result<RedisStore, StoreError> {
        let topology = Topology::of(&target);
        let cluster = topology == Topology::Cluster;
        let flagged = |lua: &str| match cluster {
            true => format!("#!lua flags=allow-cross-slot-keys\n{lua}"),
            false => lua.to_string(),
        };
        let batch = format!("local feed = {}\n{}{BATCH}", !cluster, guards::log_lua());
        let guards = match cluster {
            true => Guards::Script(flagged(pipelined::GUARDS)),
            false => Guards::Feed(Arc::new(Feed::new())),
        };
        let conn = Supervised::connect(target, timeout).await?;
        let clock = Arc::new(RedisClock::default());
        let feed = guards.feed().cloned();
        tokio::spawn(sample_clock(Arc::downgrade(&conn), Arc::clone(&clock), feed));
        let store = RedisStore {
            conn,
            topology,
            script: Script::new(&flagged(&batch)),
            guards,
            timeout,
            clock,
            expiries: Expiries::default(),
        };
        // Now rather than on the first hit (which would wait for it); a failure here is
        // retried by the first pipeline.
        if let Some(feed) = store.guards.feed() {
            let _ = store.load_guards(feed).await;
        }
        Ok(store)
    }

    pub fn name(&self) -> &'static str {
        self.topology.name()
    }

    /// Whether window counters go pipelined now (Redis's clock is known).
    #[cfg(test)]
    pub fn pipelines(&self) -> bool {
        self.clock.now_us().is_some()
    }

    /// What is connected now (for `/healthz`).
    pub fn describe(&self) -> String {
        self.conn.describe()
    }

    /// A failed call: transient errors may mean the topology moved, and a promoted
    /// replica may lack expiries its master was given.
    fn failed(&self, e: StoreError) -> StoreError {
        if e.transient {
            self.conn.nudge();
            self.expiries.forget();
            if let Some(feed) = self.guards.feed() {
                feed.forget();
            }
            // Redis may come back as another host, with another clock: windows are
            // named by scripts until the next sample.
            self.clock.forget();
        }
        e
    }

    /// Charges every call, in as few round trips as the topology allows: per node (one
    /// Redis, or grouped by the slot map on a Cluster), window counters go as one
    /// pipeline of plain commands (`pipelined`) and everything else (token buckets,
    /// distinct clients) as script calls of up to `MAX_PER_CALL` counters. Results come
    /// back in the calls' order.
    pub async fn apply_many(&self, calls: &[Call<'_>]) -> Vec<Result<Applied, StoreError>> {
        let mut results: Vec<Option<Result<Applied, StoreError>>> = vec![None; calls.len()];
        let now_us = self.clock.now_us();
        // Indexes of calls, grouped by the node believed to own them.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        if self.topology == Topology::Cluster {
            let mut by_node: HashMap<Option<String>, Vec<usize>> = HashMap::new();
            for (i, c) in calls.iter().enumerate() {
                by_node.entry(self.conn.owner_of(slot_of(c.key))).or_default().push(i);
            }
            groups.extend(by_node.into_values());
        } else {
            groups.push((0..calls.len()).collect());
        }
        let mut scripted: Vec<Vec<usize>> = Vec::new();
        let mut piped: Vec<Vec<usize>> = Vec::new();
        for group in groups {
            // Pipelines name windows by Redis's time: until the first sample, scripts.
            let (plain, other): (Vec<usize>, Vec<usize>) = group
                .into_iter()
                .partition(|&i| now_us.is_some() && pipelined::eligible(&calls[i]));
            METRICS.redis_pipelined.inc_by(plain.len() as u64);
            METRICS.redis_scripted.inc_by(other.len() as u64);
            scripted.extend(other.chunks(MAX_PER_CALL).map(<[usize]>::to_vec));
            piped.extend(plain.chunks(MAX_PER_CALL).map(<[usize]>::to_vec));
        }
        let now_us = now_us.unwrap_or(0);
        let (by_script, by_pipe) = tokio::join!(
            join_all(scripted.iter().map(|chunk| self.invoke(calls, chunk))),
            join_all(piped.iter().map(|chunk| self.file(calls, chunk, now_us)))
        );
        // Script answers read like pipelines': "non local key" is a slot that moved.
        let by_script = scripted.iter().zip(by_script).map(|(chunk, answer)| {
            answer.map(|per_counter| {
                per_counter
                    .into_iter()
                    .map(|r| match r {
                        Err(e) if chunk.len() > 1 && e.message.contains("non local key") => Filed::Moved,
                        other => Filed::Done(other),
                    })
                    .collect::<Vec<Filed>>()
            })
        });
        // Counters another node owned (the map moved under us): each alone, routed by
        // its own key, which the cluster client redirects.
        let mut alone = Vec::new();
        for (chunk, answer) in scripted.iter().chain(&piped).zip(by_script.chain(by_pipe)) {
            match answer {
                Err(e) => {
                    for &i in chunk {
                        results[i] = Some(Err(e.clone()));
                    }
                }
                Ok(filed) => {
                    for (&i, f) in chunk.iter().zip(filed) {
                        match f {
                            Filed::Moved => alone.push(i),
                            Filed::Done(r) => results[i] = Some(r),
                        }
                    }
                }
            }
        }
        if !alone.is_empty() {
            METRICS.redis_scripted.inc_by(alone.len() as u64);
            self.conn.nudge();
            let retried = join_all(alone.iter().map(|i| self.invoke(calls, std::slice::from_ref(i)))).await;
            for (&i, r) in alone.iter().zip(retried) {
                results[i] = Some(r.and_then(|mut v| v.pop().unwrap_or_else(|| Err(malformed("no answer")))));
            }
        }
        let out: Vec<Result<Applied, StoreError>> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(malformed("no answer"))))
            .collect();
        // Remember blocked and flagged keys for `keys list` (sets of their own).
        for (c, r) in calls.iter().zip(&out) {
            let index = match r {
                Ok(a) if a.state == KeyState::Blocked => "blocked",
                Ok(a) if a.state == KeyState::Flagged => "flagged",
                _ => continue,
            };
            let _ = self
                .query::<i64>(redis::cmd("SADD").arg(format!("rampart:v1:index:{index}")).arg(c.key))
                .await;
        }
        out
    }

    /// Sends `chunk` (window counters, all on one node) as one pipeline filed at Redis
    /// time `now_us`, then takes back what checks did not get; an outcome per counter,
    /// or the pipeline's own failure.
    async fn file(&self, calls: &[Call<'_>], chunk: &[usize], now_us: u64) -> Result<Vec<Filed>, StoreError> {
        // On a Cluster, to the master of the first counter's slot: the node of them all.
        let slot = chunk.first().map_or(0, |&i| slot_of(calls[i].key));
        let read = match &self.guards {
            Guards::Feed(_) => GuardRead::Seq,
            Guards::Script(lua) => GuardRead::Script(lua),
        };
        let (pipe, plan) = Plan::new(calls, chunk, now_us, read, &self.expiries);
        let replies = self.send(pipe, plan.commands(), slot).await?;
        let first = replies.first().unwrap_or(&Value::Nil);
        let states = match &self.guards {
            Guards::Feed(feed) => self.fed_states(feed, first, calls, chunk, now_us).await,
            Guards::Script(_) => pipelined::scripted_states(first, chunk.len()),
        };
        let (filed, back) = plan.read(calls, &replies, states, &self.expiries);
        if !back.is_empty() {
            // Not taken back (Redis gone meanwhile): the count reads high until its
            // window ends, refusing early rather than admitting past the limit.
            let _ = self.send(pipelined::take_back(calls, &back), back.len(), slot).await;
        }
        Ok(filed)
    }

    /// The standing of `chunk`'s keys (at Redis time `now_us`) for a pipeline that read
    /// the feed's seq `seen`: from the feed, caught up first when it is behind. `None`
    /// when the feed cannot be read (the caller answers as without guards).
    async fn fed_states(
        &self,
        feed: &Feed,
        seen: &Value,
        calls: &[Call<'_>],
        chunk: &[usize],
        now_us: u64,
    ) -> Option<Vec<(KeyState, u64)>> {
        let seen = guards::seq_of(seen)?;
        let keys = || chunk.iter().map(|&i| calls[i].key);
        if let Some(states) = feed.states(seen, keys(), now_us) {
            return Some(states);
        }
        self.catch_up(feed, seen).await.ok()?;
        // The feed may be past `seen` now: those changes were made before this answer.
        feed.with(|known| known.map(|k| keys().map(|key| k.state(key, now_us)).collect()))
    }

    /// Brings the feed up to Redis's seq (a pipeline read `seen`): the log's entries
    /// since the last one applied, or everything again when entries are missing (the
    /// log trimmed past ours, Redis restarted or replaced: its seq went back).
    async fn catch_up(&self, feed: &Feed, seen: u64) -> Result<(), StoreError> {
        let _alone = feed.syncing.lock().await;
        if feed.seq().is_some_and(|known| known >= seen) {
            return Ok(());
        }
        for _ in 0..guards::ROUNDS {
            let Some((known, last_id)) = feed.with(|k| k.map(|k| (k.seq(), k.last_id().to_string()))) else {
                break;
            };
            let mut pipe = redis::pipe();
            pipe.cmd("GET")
                .arg(guards::SEQ)
                .cmd("XRANGE")
                .arg(guards::LOG)
                .arg(format!("({last_id}"))
                .arg("+")
                .arg("COUNT")
                .arg(guards::CATCH_UP);
            let (current, read): (Value, Value) = self.round_trip(pipe.query_async(&mut self.conn.conn())).await?;
            let current = guards::seq_of(&current).ok_or_else(|| malformed(&format!("guard seq {current:?}")))?;
            let Some(entries) = guards::entries(&read).filter(|_| current >= known) else {
                break;
            };
            let now = self.clock.now_us().unwrap_or(0);
            let applied = feed.with(|k| {
                k.map(|k| {
                    k.prune(now);
                    k.apply(&entries)
                })
            });
            if applied != Some(Ok(())) {
                break;
            }
            METRICS.guard_entries.inc_by(entries.len() as u64);
            if feed.seq() >= Some(current) {
                return Ok(());
            }
            if entries.len() < guards::CATCH_UP {
                break;
            }
        }
        self.load_guards(feed).await
    }

    /// Changes a guard and logs it in the feed, in one script (`guards::write_lua`).
    async fn logged(&self, feed: &Feed, args: &[&str]) -> Result<(), StoreError> {
        let mut write = feed.write.prepare_invoke();
        write.arg(args);
        self.round_trip(write.invoke_async::<i64>(&mut self.conn.conn()))
            .await
            .map(|_| ())
    }

    /// Loads every guard into the feed, as of Redis's seq now.
    async fn load_guards(&self, feed: &Feed) -> Result<(), StoreError> {
        let loaded = self
            .round_trip(feed.load.prepare_invoke().invoke_async::<Value>(&mut self.conn.conn()))
            .await?;
        let known = Known::loaded(&loaded).ok_or_else(|| malformed(&format!("guard load {loaded:?}")))?;
        feed.set(known);
        METRICS.guard_loads.inc();
        Ok(())
    }

    /// One pipeline of `commands` commands, on a Cluster to the master of `slot`.
    async fn send(&self, pipe: redis::Pipeline, commands: usize, slot: u16) -> Result<Vec<Value>, StoreError> {
        let replies = self
            .round_trip(async {
                match self.conn.conn() {
                    // A Cluster client sends a pipeline to one slot's node only when told.
                    Conn::Cluster(mut c) => {
                        let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                        c.route_pipeline(pipe, 0, commands, route).await
                    }
                    mut one => pipe.query_async::<Vec<Value>>(&mut one).await,
                }
            })
            .await?;
        if replies.len() != commands {
            return Err(malformed(&format!("{} replies to {commands} commands", replies.len())));
        }
        Ok(replies)
    }

    /// One script call for `chunk` (indexes into `calls`, all on one node); an answer
    /// per counter, or the call's own failure.
    async fn invoke(
        &self,
        calls: &[Call<'_>],
        chunk: &[usize],
    ) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
        let Some(&first) = chunk.first() else {
            return Ok(Vec::new());
        };
        // KEYS[1] routes the call (Cluster) to the node owning the first counter.
        let mut inv = self
            .script
            .key(layout::counter_key(calls[first].key, &calls[first].rule));
        // Without an estimate of Redis's time, every window hash is given its expiry.
        let guessed = self.clock.now_us();
        inv.arg(chunk.len()).arg(guessed.unwrap_or(0));
        let hashes: Vec<WindowHash> = chunk
            .iter()
            .map(|&i| WindowHash::at(calls[i].key, &calls[i].rule, guessed.unwrap_or(0)))
            .collect();
        // Which window hashes the sidecar has given their expiry already.
        let asked: Vec<bool> = match guessed {
            None => vec![true; chunk.len()],
            Some(now) => self.expiries.needed(hashes.iter().copied(), now),
        };
        for ((&i, hash), asked) in chunk.iter().zip(&hashes).zip(asked) {
            let c = &calls[i];
            let windowed = layout::windowed(&c.rule);
            let key = match windowed {
                true => hash.prefix(),
                false => layout::counter_key(c.key, &c.rule),
            };
            let asked = asked && windowed;
            let flags = u8::from(c.mode == Mode::Record) + 2 * u8::from(asked);
            inv.arg(c.key)
                .arg(&key)
                .arg(c.rule.algorithm().name())
                .arg(c.rule.limit())
                .arg(c.rule.window_ms())
                .arg(c.rule.burst())
                .arg(c.cost)
                .arg(flags);
            match c.seen.distinct.filter(|_| !c.seen.clients.is_empty()) {
                None => {
                    inv.arg(0);
                }
                Some(d) => {
                    inv.arg(4 + c.seen.clients.len())
                        .arg(d.limit)
                        .arg(d.window_ms)
                        .arg(u8::from(d.block))
                        .arg(d.cooldown_ms);
                    for client in c.seen.clients {
                        inv.arg(client);
                    }
                }
            }
        }
        let mut values = self
            .round_trip(inv.invoke_async::<Vec<Value>>(&mut self.conn.conn()))
            .await?;
        let now = match values.pop() {
            Some(Value::Int(now)) if values.len() == 7 * chunk.len() => now.max(0) as u64,
            _ => {
                return Err(malformed(&format!(
                    "{} values for {} counters",
                    values.len() + 1,
                    chunk.len()
                )))
            }
        };
        let answers: Vec<Result<Applied, StoreError>> = values.chunks(7).map(applied).collect();
        // Every window hash a counter was charged in has its expiry now: the script gave
        // it (asked, or named another window than the sidecar), or the sidecar had.
        // Revoked and blocked counters were not charged.
        let expired: Vec<(WindowHash, u64)> = chunk
            .iter()
            .zip(&answers)
            .filter(|(&i, a)| {
                layout::windowed(&calls[i].rule)
                    && a.as_ref()
                        .is_ok_and(|a| !matches!(a.state, KeyState::Revoked | KeyState::Blocked))
            })
            .map(|(&i, _)| {
                let hash = WindowHash::at(calls[i].key, &calls[i].rule, now);
                (hash, hash.expires_us(now))
            })
            .collect();
        self.expiries.sent(expired, now);
        Ok(answers)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.round_trip(cmd.query_async::<T>(&mut self.conn.conn())).await
    }

    /// One round trip to Redis: bounded by the store's timeout, timed, and its failure
    /// classified (`failed`).
    async fn round_trip<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, call).await;
        METRICS.redis_latency.observe(started.elapsed().as_secs_f64());
        match result {
            Err(_) => Err(self.failed(timeout_error(self.timeout))),
            Ok(Err(e)) => Err(self.failed(classify(&e))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    pub async fn revoke(&self, key: &str, reason: &str) -> Result<(), StoreError> {
        if let Some(feed) = self.guards.feed() {
            return self.logged(feed, &["revoke", key, reason]).await;
        }
        self.query::<()>(redis::cmd("SET").arg(layout::guard_key("revoked", key)).arg(reason))
            .await?;
        self.query::<i64>(redis::cmd("SADD").arg("rampart:v1:index:revoked").arg(key))
            .await?;
        Ok(())
    }

    pub async fn restore(&self, key: &str) -> Result<(), StoreError> {
        if let Some(feed) = self.guards.feed() {
            return self.logged(feed, &["restore", key]).await;
        }
        let mut del = redis::cmd("DEL");
        for kind in ["revoked", "blocked", "flagged", "clients"] {
            del.arg(layout::guard_key(kind, key));
        }
        self.query::<i64>(&del).await?;
        for kind in ["revoked", "blocked", "flagged"] {
            self.query::<i64>(redis::cmd("SREM").arg(format!("rampart:v1:index:{kind}")).arg(key))
                .await?;
        }
        Ok(())
    }

    pub async fn inspect(&self, key: &str) -> Result<KeyInfo, StoreError> {
        let reason: Option<String> = self
            .query(redis::cmd("GET").arg(layout::guard_key("revoked", key)))
            .await?;
        let blocked: i64 = self
            .query(redis::cmd("PTTL").arg(layout::guard_key("blocked", key)))
            .await?;
        let flagged: i64 = self
            .query(redis::cmd("EXISTS").arg(layout::guard_key("flagged", key)))
            .await?;
        let distinct: i64 = self
            .query(redis::cmd("PFCOUNT").arg(layout::guard_key("clients", key)))
            .await?;
        Ok(KeyInfo {
            key: key.to_string(),
            revoked: reason.is_some(),
            reason,
            blocked_ms: blocked.max(0) as u64,
            flagged: flagged == 1,
            distinct: distinct.max(0) as u64,
        })
    }

    pub async fn list(&self) -> Result<Vec<KeyInfo>, StoreError> {
        let mut names = std::collections::BTreeSet::new();
        for kind in ["revoked", "blocked", "flagged"] {
            let members: Vec<String> = self
                .query(redis::cmd("SMEMBERS").arg(format!("rampart:v1:index:{kind}")))
                .await?;
            names.extend(members);
        }
        let mut out = Vec::new();
        for name in names {
            let info = self.inspect(&name).await?;
            if info.notable() {
                out.push(info);
            }
        }
        Ok(out)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }
}
