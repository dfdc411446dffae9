//! The compiled, immutable policy: what `config` produces from the plugin JSON and
//! what every request is checked against. Nothing here is parsed per request.

/// Where the client address comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSource {
    /// The connection's peer address (port stripped).
    Peer,
    /// The X-Forwarded-For entry `trusted_hops` places from the right.
    Xff { trusted_hops: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMode {
    Draft,
    Ietf,
    Both,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    Open,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Local,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Sync,
    Async,
}

/// One component of a layer's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Ip,
    Global,
    Route,
    /// Lower-cased header name.
    Header(String),
    Query(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    FixedWindow {
        window_ms: u64,
    },
    SlidingWindow {
        window_ms: u64,
    },
    /// Rate `limit` per `window_ms`, capacity `burst` (GCRA).
    TokenBucket {
        window_ms: u64,
        burst: u64,
    },
    Concurrency,
}

impl Algorithm {
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::FixedWindow { .. } => "fixed_window",
            Algorithm::SlidingWindow { .. } => "sliding_window",
            Algorithm::TokenBucket { .. } => "token_bucket",
            Algorithm::Concurrency => "concurrency",
        }
    }

    /// The window reported in `RateLimit-Policy` (`w=`), in milliseconds.
    pub fn window_ms(&self) -> u64 {
        match *self {
            Algorithm::FixedWindow { window_ms }
            | Algorithm::SlidingWindow { window_ms }
            | Algorithm::TokenBucket { window_ms, .. } => window_ms,
            Algorithm::Concurrency => 0,
        }
    }
}

/// Which requests a layer applies to. Empty parts match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    pub path_prefix: Option<String>,
    /// Upper-case method names.
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    pub limit: u64,
    /// Token bucket capacity for this tier; `None` keeps the layer's.
    pub burst: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiers {
    /// Lower-cased header carrying the tier name.
    pub from_header: String,
    /// Index into `tiers` used when the header is absent or names no known tier.
    pub default: usize,
    pub tiers: Vec<Tier>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub sync: SyncMode,
    pub sync_interval_ms: u64,
    pub fallback_limit: Option<u64>,
    /// `max_ips_per_key`, in the form the sidecar enforces it.
    pub distinct: Option<crate::wire::Distinct>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub name: String,
    pub matcher: Match,
    pub key: Vec<KeyPart>,
    /// Reject (with `status`) when the key cannot be extracted, instead of skipping.
    pub deny_missing: bool,
    pub algorithm: Algorithm,
    pub limit: u64,
    pub tiers: Option<Tiers>,
    pub scope: Scope,
    pub cluster: Option<Cluster>,
    pub status: u16,
    pub shadow: bool,
    /// Size of this layer's fixed counter table (see `slots.rs`).
    pub slots: u32,
}

impl Layer {
    /// Slots of this layer's node-local table: its counters when local, its `fallback`
    /// counters when cluster-scoped (none without a fallback).
    pub fn table_slots(&self) -> u32 {
        match (&self.scope, &self.cluster) {
            (Scope::Local, _) => self.slots,
            (
                Scope::Cluster,
                Some(Cluster {
                    fallback_limit: Some(_),
                    ..
                }),
            ) => self.slots,
            (Scope::Cluster, _) => 0,
        }
    }

    pub fn sync_mode(&self) -> Option<SyncMode> {
        self.cluster.as_ref().map(|c| c.sync)
    }

    /// Limit and burst for a request, after tier resolution.
    pub fn limits_for(&self, tier_value: Option<&[u8]>) -> (u64, u64) {
        let layer_burst = match self.algorithm {
            Algorithm::TokenBucket { burst, .. } => burst,
            _ => self.limit,
        };
        let Some(tiers) = &self.tiers else {
            return (self.limit, layer_burst);
        };
        let tier = tier_value
            .and_then(|v| tiers.tiers.iter().find(|t| t.name.as_bytes() == v))
            .or_else(|| tiers.tiers.get(tiers.default));
        match tier {
            Some(t) => (t.limit, t.burst.unwrap_or(t.limit)),
            None => (self.limit, layer_burst),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// Keys the hash that names counters at the sidecar; shared by the whole fleet.
    pub key_secret: Option<String>,
    pub upstream: String,
    pub authority: String,
    pub timeout_ms: u64,
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub ip_source: IpSource,
    /// IPv6 clients are keyed by this many leading bits (default 64).
    pub ipv6_prefix: u8,
    pub sidecar: Option<Sidecar>,
    pub failure_mode: FailureMode,
    pub headers: HeaderMode,
    pub layers: Vec<Layer>,
}
