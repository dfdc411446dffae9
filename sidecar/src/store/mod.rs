//! Where cluster-wide counters live. One interface, chosen at start-up: the embedded
//! memory store (one sidecar) or Redis (single node or Cluster, shared by many
//! sidecars). The same test suite runs against every store.

mod clock;
pub mod connection;
mod expiries;
mod guards;
mod layout;
pub mod memory;
mod pipelined;
pub mod redis;
#[cfg(test)]
mod tests;

use rampart::algorithms::{Decision, Want, NS_PER_MS};
use rampart::wire::{Distinct, Rule};

/// A key's standing apart from its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyState {
    #[default]
    Ok,
    /// Revoked by an operator: nothing was charged.
    Revoked,
    /// Blocked for using too many distinct clients (`retry_after_ms` = cooldown left).
    Blocked,
    /// Over its distinct-client limit with `action: flag`: admitted, and reported.
    Flagged,
}

/// What charging a counter did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Tokens taken (check) or recorded (report).
    pub granted: u64,
    pub limit: u64,
    /// Left after this charge.
    pub remaining: u64,
    pub reset_ms: u64,
    /// When nothing fitted: how long until something will.
    pub retry_after_ms: u64,
    pub state: KeyState,
    /// Distinct clients seen for the key in the current window (0 when not tracked).
    pub distinct: u64,
}

impl Applied {
    /// What the algorithm decided for a charge of `cost`, as a store answers it.
    pub fn decided(d: Decision, cost: u64, mode: Mode) -> Applied {
        Applied {
            granted: match mode {
                Mode::Check => d.granted,
                Mode::Record => cost,
            },
            limit: d.limit,
            remaining: d.remaining,
            reset_ms: d.reset_ns.div_ceil(NS_PER_MS),
            retry_after_ms: d.retry_after_ns.div_ceil(NS_PER_MS),
            ..Applied::default()
        }
    }
}

/// Client observations that ride along with a charge.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observe<'a> {
    pub clients: &'a [String],
    pub distinct: Option<Distinct>,
}

/// What an operator sees of one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyInfo {
    pub key: String,
    pub revoked: bool,
    pub reason: Option<String>,
    /// Milliseconds of block left (0: not blocked).
    pub blocked_ms: u64,
    pub flagged: bool,
    pub distinct: u64,
}

impl KeyInfo {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "key": self.key, "revoked": self.revoked, "reason": self.reason,
            "blocked_ms": self.blocked_ms, "flagged": self.flagged, "distinct_clients": self.distinct,
        })
    }

    pub fn notable(&self) -> bool {
        self.revoked || self.blocked_ms > 0 || self.flagged
    }
}

/// One counter update for `Store::apply_many`.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The counter's name (`<layer>:<hash>`).
    pub key: &'a str,
    pub rule: Rule,
    pub cost: u64,
    pub mode: Mode,
    pub seen: Observe<'a>,
}

/// Check takes as many of `cost` as fit; Record adds all of it, limit or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Check,
    Record,
}

impl Mode {
    /// What the algorithms are asked to take for a charge of `cost`.
    pub fn want(self, cost: u64) -> Want {
        match self {
            Mode::Check => Want::UpTo(cost),
            Mode::Record => Want::Record(cost),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    /// Worth retrying: a timeout, a dropped connection, a cluster re-sharding.
    pub transient: bool,
    pub message: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.transient { "transient" } else { "permanent" };
        write!(f, "{kind} store error: {}", self.message)
    }
}

pub enum Store {
    Memory(Box<memory::MemoryStore>),
    Redis(Box<redis::RedisStore>),
}

impl Store {
    /// Charges one counter.
    #[cfg(test)]
    pub async fn apply(
        &self,
        key: &str,
        rule: Rule,
        cost: u64,
        mode: Mode,
        seen: Observe<'_>,
    ) -> Result<Applied, StoreError> {
        let call = Call {
            key,
            rule,
            cost,
            mode,
            seen,
        };
        let mut results = self.apply_many(std::slice::from_ref(&call)).await;
        results.pop().unwrap_or_else(|| {
            Err(StoreError {
                transient: false,
                message: "no answer".into(),
            })
        })
    }

    /// Charges many counters at once (each atomically, in one clock on Redis); results
    /// in the calls' order. One failing counter does not fail the others.
    pub async fn apply_many(&self, calls: &[Call<'_>]) -> Vec<Result<Applied, StoreError>> {
        match self {
            Store::Memory(m) => calls
                .iter()
                .map(|c| Ok(m.apply(c.key, c.rule, c.cost, c.mode, c.seen)))
                .collect(),
            Store::Redis(r) => r.apply_many(calls).await,
        }
    }

    pub async fn revoke(&self, key: &str, reason: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) if m.revoke(key, reason) => Ok(()),
            Store::Memory(_) => Err(StoreError {
                transient: false,
                message: "the memory store holds --max-keys revocations already".into(),
            }),
            Store::Redis(r) => r.revoke(key, reason).await,
        }
    }

    /// Lifts a revocation and any block or flag.
    pub async fn restore(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.restore(key);
                Ok(())
            }
            Store::Redis(r) => r.restore(key).await,
        }
    }

    pub async fn inspect(&self, key: &str) -> Result<KeyInfo, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.inspect(key)),
            Store::Redis(r) => r.inspect(key).await,
        }
    }

    /// Keys that are revoked, blocked or flagged now.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.list()),
            Store::Redis(r) => r.list().await,
        }
    }

    pub async fn healthy(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.ping().await,
        }
    }

    /// What the store is connected to (for `/healthz`).
    pub fn describe(&self) -> String {
        match self {
            Store::Memory(_) => "this process".into(),
            Store::Redis(r) => r.describe(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(r) => r.name(),
        }
    }
}
