//! Redis and Redis Cluster store.
//!
//! Each algorithm is one Lua script over one key, so it is atomic and runs in Cluster
//! (a single-key script always lives on one slot). Scripts take the time from Redis's
//! own `TIME`: every sidecar sharing a Redis uses one clock for window maths, whatever
//! the skew between their hosts. Scripts run with EVALSHA (loaded on first NOSCRIPT).
//! Lua instead of MULTI because each decision reads before it writes.
//!
//! Key layout: `rampart:v1:<algorithm>:<window_ms>:{<key>}` where `<key>` is the
//! filter's keyed hash (hex): API keys never reach Redis in clear. The rule is part of
//! the name so a changed window starts a fresh counter instead of misreading an old one.
//! Every key carries a TTL: it disappears once its counter would read empty again.
//!
//! Concurrency: one multiplexed connection (per node, in Cluster) carries every command;
//! the sidecar issues a batch's commands concurrently, which the connection pipelines.

use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script};

use rampart::wire::Rule;

use super::{Applied, Mode, StoreError};
use crate::metrics::METRICS;

/// Shared prologue: Redis time in microseconds, and the arguments.
/// KEYS[1] counter key; ARGV: limit, window_ms, burst, cost, record (1 = add all).
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
"#;

/// Fixed window: hash {w = window number, c = count}.
const FIXED: &str = r#"
local win = math.floor(now / w)
local v = redis.call('HMGET', KEYS[1], 'w', 'c')
local count = 0
if tonumber(v[1]) == win then count = tonumber(v[2]) or 0 end
local reset = (win + 1) * w - now
local capacity = math.max(limit - count, 0)
local g = grant(capacity)
if g > 0 then
  redis.call('HSET', KEYS[1], 'w', string.format('%d', win), 'c', string.format('%d', count + g))
  redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 1000)
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
  redis.call('PEXPIRE', KEYS[1], math.ceil((reset + w) / 1000) + 1000)
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

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

pub struct RedisStore {
    conn: Conn,
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
    pub async fn connect_single(url: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| classify(&e))?;
        // The manager reconnects by itself after Redis restarts or drops us.
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, cfg)
            .await
            .map_err(|e| classify(&e))?;
        Ok(Self::with(Conn::Single(conn), timeout))
    }

    pub async fn connect_cluster(urls: &[String], timeout: Duration) -> Result<RedisStore, StoreError> {
        let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()
            .map_err(|e| classify(&e))?;
        let conn = client.get_async_connection().await.map_err(|e| classify(&e))?;
        Ok(Self::with(Conn::Cluster(conn), timeout))
    }

    fn with(conn: Conn, timeout: Duration) -> RedisStore {
        let script = |body: &str| Script::new(&format!("{PROLOGUE}{body}"));
        RedisStore {
            conn,
            scripts: [script(FIXED), script(SLIDING), script(GCRA)],
            timeout,
        }
    }

    pub fn name(&self) -> &'static str {
        match self.conn {
            Conn::Single(_) => "redis",
            Conn::Cluster(_) => "redis-cluster",
        }
    }

    pub fn key(key: &str, rule: &Rule) -> String {
        format!("rampart:v1:{}:{}:{{{key}}}", rule.algorithm().name(), rule.window_ms())
    }

    pub async fn apply(&self, key: &str, rule: Rule, cost: u64, mode: Mode) -> Result<Applied, StoreError> {
        let script = match rule {
            Rule::FixedWindow { .. } => &self.scripts[0],
            Rule::SlidingWindow { .. } => &self.scripts[1],
            Rule::TokenBucket { .. } => &self.scripts[2],
        };
        let mut inv = script.key(Self::key(key, &rule));
        inv.arg(rule.limit())
            .arg(rule.window_ms())
            .arg(rule.burst())
            .arg(cost)
            .arg(if mode == Mode::Record { 1 } else { 0 });
        let started = Instant::now();
        let call = async {
            match self.conn.clone() {
                Conn::Single(mut c) => inv.invoke_async::<Vec<i64>>(&mut c).await,
                Conn::Cluster(mut c) => inv.invoke_async::<Vec<i64>>(&mut c).await,
            }
        };
        let result = tokio::time::timeout(self.timeout, call).await;
        METRICS.redis_latency.observe(started.elapsed());
        let values = match result {
            Err(_) => return Err(timeout_error(self.timeout)),
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(v)) => v,
        };
        let get = |i: usize| values.get(i).copied().unwrap_or(0).max(0) as u64;
        if values.len() != 5 {
            return Err(StoreError {
                transient: false,
                message: format!("script returned {values:?}"),
            });
        }
        Ok(Applied {
            granted: get(0),
            limit: get(1),
            remaining: get(2),
            reset_ms: get(3),
            retry_after_ms: get(4),
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let call = async {
            match self.conn.clone() {
                Conn::Single(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await,
                Conn::Cluster(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(timeout_error(self.timeout)),
            Ok(Err(e)) => Err(classify(&e)),
            Ok(Ok(_)) => Ok(()),
        }
    }
}
