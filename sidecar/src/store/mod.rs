//! Where cluster-wide counters live. One interface, chosen at start-up: the embedded
//! memory store (one sidecar) or Redis (single node or Cluster, shared by many
//! sidecars). The same test suite runs against every store.

pub mod memory;
pub mod redis;
#[cfg(test)]
mod tests;

use rampart::wire::Rule;

/// What charging a counter did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Tokens taken (check) or recorded (report).
    pub granted: u64,
    pub limit: u64,
    /// Left after this charge.
    pub remaining: u64,
    pub reset_ms: u64,
    /// When nothing fitted: how long until something will.
    pub retry_after_ms: u64,
}

/// Check takes as many of `cost` as fit; Record adds all of it, limit or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Check,
    Record,
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
    Memory(memory::MemoryStore),
    Redis(redis::RedisStore),
}

impl Store {
    pub async fn apply(&self, key: &str, rule: Rule, cost: u64, mode: Mode) -> Result<Applied, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.apply(key, rule, cost, mode)),
            Store::Redis(r) => r.apply(key, rule, cost, mode).await,
        }
    }

    pub async fn healthy(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.ping().await,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(r) => r.name(),
        }
    }
}
