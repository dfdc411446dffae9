//! Redis and Redis Cluster store.
//!
//! Each algorithm is one Lua script over one key, so it is atomic and runs in Cluster
//! (a single-key script always lives on one slot). Scripts take the time from Redis's
//! own `TIME`: every sidecar sharing a Redis uses one clock for window maths, whatever
//! the skew between their hosts. Scripts run with EVALSHA (loaded on first NOSCRIPT).
//! Lua instead of MULTI because each decision reads before it writes.
//!
//! Key layout, where `<key>` is the filter's keyed hash (API keys never reach Redis in
//! clear) and every key of one client key shares the hash tag `{<key>}`, so one script
//! may touch them all, on one Cluster slot:
//! - `rampart:v1:<algorithm>:<window_ms>:{<key>}` the counter (the rule is part of the
//!   name so a changed window starts afresh); TTL: until it would read empty again
//! - `rampart:v1:revoked:{<key>}` revocation reason (no TTL: until restored)
//! - `rampart:v1:blocked:{<key>}` block for too many clients (TTL: the cooldown)
//! - `rampart:v1:flagged:{<key>}` flag for too many clients (TTL: the window)
//! - `rampart:v1:clients:{<key>}` HyperLogLog of client hashes (TTL: the window)
//! - `rampart:v1:index:<revoked|blocked|flagged>` sets of keys, for listing only.
//!
//! Concurrency: one multiplexed connection (per node, in Cluster) carries every command;
//! the sidecar issues a batch's commands concurrently, which the connection pipelines.
//! Failovers (Cluster, Sentinel) are followed by `connection::Supervised`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisError, Script};

use rampart::wire::Rule;

use super::connection::{Conn, Supervised, Target};
use super::{Applied, KeyInfo, KeyState, Mode, Observe, StoreError};
use crate::metrics::METRICS;

/// Shared prologue: Redis time in microseconds, the arguments, and the guards.
/// KEYS: counter, revoked, blocked, clients (HLL), flagged — all under one hash tag.
/// ARGV: limit, window_ms, burst, cost, record (1 = add all), distinct limit (0 = off),
/// distinct window_ms, block (1) or flag, cooldown_ms, then the client hashes.
/// Returns {granted, limit, remaining, reset_ms, retry_ms, state, distinct} with state
/// 0 ok, 1 revoked, 2 blocked, 3 flagged.
const PROLOGUE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local w = tonumber(ARGV[2]) * 1000
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local record = ARGV[5] == '1'
local function grant(capacity)
  if record then return cost end
  if capacity < cost then return capacity end
  return cost
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {0, limit, 0, 0, 0, 1, 0} end
local blocked = redis.call('PTTL', KEYS[3])
if blocked > 0 then return {0, limit, 0, 0, blocked, 2, 0} end
local r = (function()
"#;

/// Shared epilogue: distinct clients (HyperLogLog), then flag or block.
const EPILOGUE: &str = r#"
end)()
local state, seen = 0, 0
local dlimit = tonumber(ARGV[6])
if dlimit > 0 and #ARGV > 9 then
  redis.call('PFADD', KEYS[4], unpack(ARGV, 10))
  if redis.call('PTTL', KEYS[4]) < 0 then redis.call('PEXPIRE', KEYS[4], ARGV[7]) end
  seen = redis.call('PFCOUNT', KEYS[4])
  if seen > dlimit then
    if ARGV[8] == '1' then
      redis.call('SET', KEYS[3], '1', 'PX', ARGV[9])
      return {r[1], r[2], r[3], r[4], tonumber(ARGV[9]), 2, seen}
    end
    redis.call('SET', KEYS[5], seen, 'PX', ARGV[7])
    state = 3
  end
end
return {r[1], r[2], r[3], r[4], r[5], state, seen}
"#;

/// Fixed window: hash {w = window number, c = count}.
const FIXED: &str = r#"
local win = math.floor(now / w)
local v = redis.call('HMGET', KEYS[1], 'w', 'c')
local count = 0
local same = tonumber(v[1]) == win
if same then count = tonumber(v[2]) or 0 end
local reset = (win + 1) * w - now
local capacity = math.max(limit - count, 0)
local g = grant(capacity)
if g > 0 then
  redis.call('HSET', KEYS[1], 'w', string.format('%d', win), 'c', string.format('%d', count + g))
  -- HSET keeps a TTL: set it once per window, on the window's first write.
  if not same then redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 1000) end
end
local retry = 0
if capacity == 0 then retry = reset end
return {g, limit, math.max(capacity - g, 0), math.ceil(reset / 1000), math.ceil(retry / 1000)}
"#;

/// Sliding window (two counters): hash {w, c = current count, p = previous count}.
const SLIDING: &str = r#"
local win = math.floor(now / w)
local v = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local sw, cur, prev = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
if sw == win then
elseif sw == win - 1 then prev = cur; cur = 0
else prev = 0; cur = 0 end
local elapsed = now - win * w
local est = prev * (w - elapsed) / w + cur
local capacity = math.max(math.floor(limit - est + 1e-9), 0)
local reset = w - elapsed
local g = grant(capacity)
if g > 0 then
  redis.call('HSET', KEYS[1], 'w', string.format('%d', win), 'c', string.format('%d', cur + g), 'p', string.format('%d', prev))
  -- Once per window (HSET keeps a TTL): until the next window has read this one.
  if sw ~= win then redis.call('PEXPIRE', KEYS[1], math.ceil((reset + w) / 1000) + 1000) end
end
local retry = 0
if capacity == 0 then
  if cur >= limit then
    retry = reset + math.ceil(w * (cur - limit + 1) / math.max(cur, 1))
  else
    retry = math.max(w - (limit - 1 - cur) * w / math.max(prev, 1) - elapsed, 1)
  end
end
return {g, limit, math.max(capacity - g, 0), math.ceil(reset / 1000), math.ceil(retry / 1000)}
"#;

/// Token bucket (GCRA): string holding the theoretical arrival time in microseconds.
const GCRA: &str = r#"
local t_each = math.max(math.floor(w / limit), 1)
local tolerance = t_each * burst
local tat = math.max(tonumber(redis.call('GET', KEYS[1])) or 0, now)
local capacity = 0
if tat + t_each - now <= tolerance then capacity = math.floor((tolerance - (tat - now)) / t_each) end
local g = grant(capacity)
local new_tat = tat + t_each * g
if g > 0 then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
end
local retry = 0
if capacity == 0 then retry = math.max(tat + t_each - tolerance - now, 0) end
return {g, burst, math.max(capacity - g, 0), math.ceil((new_tat - now) / 1000), math.ceil(retry / 1000)}
"#;

pub struct RedisStore {
    conn: Arc<Supervised>,
    kind: &'static str,
    scripts: [Script; 3],
    timeout: Duration,
}

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
        let kind = match target {
            Target::Single(_) => "redis",
            Target::Cluster(_) => "redis-cluster",
            Target::Sentinel { .. } => "redis-sentinel",
        };
        let conn = Supervised::connect(target, timeout).await?;
        Ok(Self::with(conn, kind, timeout))
    }

    fn with(conn: Arc<Supervised>, kind: &'static str, timeout: Duration) -> RedisStore {
        let script = |body: &str| Script::new(&format!("{PROLOGUE}{body}{EPILOGUE}"));
        RedisStore {
            conn,
            kind,
            scripts: [script(FIXED), script(SLIDING), script(GCRA)],
            timeout,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind
    }

    /// What is connected now (for `/healthz`).
    pub fn describe(&self) -> String {
        self.conn.describe()
    }

    /// A failed call: transient errors may mean the topology moved.
    fn failed(&self, e: StoreError) -> StoreError {
        if e.transient {
            self.conn.nudge();
        }
        e
    }

    pub fn key(key: &str, rule: &Rule) -> String {
        format!("rampart:v1:{}:{}:{{{key}}}", rule.algorithm().name(), rule.window_ms())
    }

    fn guard_key(kind: &str, key: &str) -> String {
        format!("rampart:v1:{kind}:{{{key}}}")
    }

    pub async fn apply(
        &self,
        key: &str,
        rule: Rule,
        cost: u64,
        mode: Mode,
        seen: Observe<'_>,
    ) -> Result<Applied, StoreError> {
        let script = match rule {
            Rule::FixedWindow { .. } => &self.scripts[0],
            Rule::SlidingWindow { .. } => &self.scripts[1],
            Rule::TokenBucket { .. } => &self.scripts[2],
        };
        let mut inv = script.key(Self::key(key, &rule));
        for kind in ["revoked", "blocked", "clients", "flagged"] {
            inv.key(Self::guard_key(kind, key));
        }
        let d = seen.distinct;
        inv.arg(rule.limit())
            .arg(rule.window_ms())
            .arg(rule.burst())
            .arg(cost)
            .arg(if mode == Mode::Record { 1 } else { 0 })
            .arg(d.map_or(0, |d| d.limit))
            .arg(d.map_or(1, |d| d.window_ms))
            .arg(d.is_some_and(|d| d.block) as u8)
            .arg(d.map_or(1, |d| d.cooldown_ms));
        if d.is_some() {
            for c in seen.clients {
                inv.arg(c);
            }
        }
        let started = Instant::now();
        let call = async {
            match self.conn.conn() {
                Conn::Single(mut c) => inv.invoke_async::<Vec<i64>>(&mut c).await,
                Conn::Cluster(mut c) => inv.invoke_async::<Vec<i64>>(&mut c).await,
            }
        };
        let result = tokio::time::timeout(self.timeout, call).await;
        METRICS.redis_latency.observe(started.elapsed().as_secs_f64());
        let values = match result {
            Err(_) => return Err(self.failed(timeout_error(self.timeout))),
            Ok(Err(e)) => return Err(self.failed(classify(&e))),
            Ok(Ok(v)) => v,
        };
        let get = |i: usize| values.get(i).copied().unwrap_or(0).max(0) as u64;
        if values.len() != 7 {
            return Err(StoreError {
                transient: false,
                message: format!("script returned {values:?}"),
            });
        }
        let state = match get(5) {
            1 => KeyState::Revoked,
            2 => KeyState::Blocked,
            3 => KeyState::Flagged,
            _ => KeyState::Ok,
        };
        // Remember blocked and flagged keys for `keys list` (a separate key: another slot).
        let index = match state {
            KeyState::Blocked => Some("blocked"),
            KeyState::Flagged => Some("flagged"),
            _ => None,
        };
        if let Some(kind) = index {
            let _ = self
                .query::<i64>(redis::cmd("SADD").arg(format!("rampart:v1:index:{kind}")).arg(key))
                .await;
        }
        Ok(Applied {
            granted: get(0),
            limit: get(1),
            remaining: get(2),
            reset_ms: get(3),
            retry_after_ms: get(4),
            state,
            distinct: get(6),
        })
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let call = async {
            match self.conn.conn() {
                Conn::Single(mut c) => cmd.query_async::<T>(&mut c).await,
                Conn::Cluster(mut c) => cmd.query_async::<T>(&mut c).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(self.failed(timeout_error(self.timeout))),
            Ok(Err(e)) => Err(self.failed(classify(&e))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    pub async fn revoke(&self, key: &str, reason: &str) -> Result<(), StoreError> {
        self.query::<()>(redis::cmd("SET").arg(Self::guard_key("revoked", key)).arg(reason))
            .await?;
        self.query::<i64>(redis::cmd("SADD").arg("rampart:v1:index:revoked").arg(key))
            .await?;
        Ok(())
    }

    pub async fn restore(&self, key: &str) -> Result<(), StoreError> {
        let mut del = redis::cmd("DEL");
        for kind in ["revoked", "blocked", "flagged", "clients"] {
            del.arg(Self::guard_key(kind, key));
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
            .query(redis::cmd("GET").arg(Self::guard_key("revoked", key)))
            .await?;
        let blocked: i64 = self
            .query(redis::cmd("PTTL").arg(Self::guard_key("blocked", key)))
            .await?;
        let flagged: i64 = self
            .query(redis::cmd("EXISTS").arg(Self::guard_key("flagged", key)))
            .await?;
        let distinct: i64 = self
            .query(redis::cmd("PFCOUNT").arg(Self::guard_key("clients", key)))
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
