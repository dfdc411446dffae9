//! Checks one request against every layer of a policy.
//!
//! The engine sees the proxy only through the `Host` trait, so the whole decision path
//! is unit-tested natively with `testing::FakeHost`; `host/` implements the trait with
//! proxy-wasm hostcalls.

use crate::algorithms::{self, Decision};
use crate::client_ip::{self, ClientIp};
use crate::headers::{self, Report};
use crate::lease::Leases;
use crate::policy::{Algorithm, IpSource, KeyPart, Layer, Policy};
use crate::query;
use crate::slots::{self, Seed};

/// A hostcall that failed: the host's status code, for the log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

/// Outcome of a compare-and-swap write to shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Stored,
    CasMismatch,
}

/// What is counted per layer and exported as metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Allowed,
    Rejected,
    ShadowRejected,
    /// The counter could not be read or written; the request was admitted.
    StoreError,
}

pub const EVENTS: [Event; 4] = [
    Event::Allowed,
    Event::Rejected,
    Event::ShadowRejected,
    Event::StoreError,
];

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Allowed => "allowed",
            Event::Rejected => "rejected",
            Event::ShadowRejected => "shadow_rejected",
            Event::StoreError => "store_errors",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The proxy as the engine needs it.
pub trait Host {
    /// A request header (`:path`, `:method` included). `None` when absent.
    fn header(&mut self, name: &str) -> Option<Vec<u8>>;
    /// The downstream peer address as the host reports it.
    fn peer_address(&mut self) -> Option<Vec<u8>>;
    /// Shared data value and its CAS token. `Ok((None, 0))` when the key is absent.
    fn shared_get(&mut self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError>;
    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, HostError>;
    fn count(&mut self, layer: usize, event: Event);
}

/// Attempts at a compare-and-swap before the request is admitted uncounted. Contention
/// comes from other workers touching the same slot at the same instant; a handful of
/// rounds resolves it, and a bound keeps a pathological host from spinning the request.
pub const MAX_CAS_ATTEMPTS: usize = 32;

/// A counter this stream holds and must give back when it ends (concurrency layers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub layer: usize,
    pub slot: u32,
}

/// A local reply the filter must send instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// What the request path decided, and what the stream must remember.
#[derive(Debug, Default)]
pub struct Verdict {
    pub rejection: Option<Rejection>,
    /// Headers to add to the upstream response.
    pub response_headers: Vec<(&'static str, String)>,
    pub held: Vec<Held>,
}

/// Lazily read request facts: each is fetched at most once per request, and only when
/// some layer needs it.
struct Facts {
    path: Option<Option<Vec<u8>>>,
    method: Option<Option<Vec<u8>>>,
    ip: Option<Option<ClientIp>>,
}

impl Facts {
    fn new() -> Self {
        Facts {
            path: None,
            method: None,
            ip: None,
        }
    }

    fn path<H: Host>(&mut self, host: &mut H) -> Option<&[u8]> {
        self.path.get_or_insert_with(|| host.header(":path")).as_deref()
    }

    fn method<H: Host>(&mut self, host: &mut H) -> Option<&[u8]> {
        self.method.get_or_insert_with(|| host.header(":method")).as_deref()
    }

    fn ip<H: Host>(&mut self, host: &mut H, source: IpSource, ipv6_prefix: u8) -> Option<ClientIp> {
        *self.ip.get_or_insert_with(|| {
            let peer = host.peer_address();
            let xff = match source {
                IpSource::Xff { .. } => host.header("x-forwarded-for"),
                IpSource::Peer => None,
            };
            client_ip::resolve(source, ipv6_prefix, peer.as_deref(), xff.as_deref())
        })
    }
}

/// A compiled policy plus the per-layer counter tables, ready to check requests.
pub struct Engine {
    pub policy: Policy,
    seed: Seed,
    prefixes: Vec<String>,
}

impl Engine {
    pub fn new(policy: Policy, seed: Seed) -> Self {
        let prefixes = policy.layers.iter().map(slots::prefix).collect();
        Engine { policy, seed, prefixes }
    }

    /// The shared-data key of one slot of one layer.
    pub fn slot_key(&self, layer: usize, slot: u32) -> String {
        let prefix = self.prefixes.get(layer).map_or("", String::as_str);
        slots::key(prefix, slot)
    }

    /// Every shared-data key this policy can ever touch: the whole memory footprint.
    pub fn all_slot_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.policy
            .layers
            .iter()
            .enumerate()
            .flat_map(move |(i, l)| (0..l.slots).map(move |s| self.slot_key(i, s)))
    }

    /// Empty worker-local leases for this policy (none for concurrency layers, whose
    /// slots are returned one by one).
    pub fn leases(&self) -> Leases {
        Leases::new(self.policy.layers.iter().map(|l| {
            if l.algorithm == Algorithm::Concurrency {
                0
            } else {
                l.slots
            }
        }))
    }

    /// Checks a request against every layer, in order, charging each until one rejects.
    /// `leases` is this worker's; see `lease.rs`.
    pub fn check<H: Host>(&self, host: &mut H, leases: &mut Leases, now_ns: u64) -> Verdict {
        let mut facts = Facts::new();
        let mut verdict = Verdict::default();
        let mut tightest: Option<(usize, Decision)> = None;
        for (i, layer) in self.policy.layers.iter().enumerate() {
            if !self.matches(layer, &mut facts, host) {
                continue;
            }
            let Some(hash) = self.key_hash(i, layer, &mut facts, host) else {
                if layer.deny_missing {
                    self.reject_missing(i, layer, host, &mut verdict);
                    return verdict;
                }
                continue;
            };
            let slot = slots::index(hash, layer.slots);
            let tier = layer.tiers.as_ref().and_then(|t| host.header(&t.from_header));
            let (limit, burst) = layer.limits_for(tier.as_deref());
            let mut lease = leases.get(i, slot);
            let decision = match lease.as_mut().and_then(|l| l.take(now_ns, limit)) {
                Some(d) => d,
                None => {
                    let key = self.slot_key(i, slot);
                    let leasing = lease.is_some();
                    let charged = update(host, &key, |raw| {
                        algorithms::admit(&layer.algorithm, limit, burst, raw, now_ns, leasing)
                    });
                    match charged {
                        Ok(d) => {
                            if let Some(l) = lease {
                                l.store(&d, now_ns, limit);
                            }
                            d
                        }
                        Err(_) => {
                            host.count(i, Event::StoreError);
                            continue;
                        }
                    }
                }
            };
            if decision.allowed {
                host.count(i, Event::Allowed);
                if layer.algorithm == Algorithm::Concurrency {
                    verdict.held.push(Held { layer: i, slot });
                }
            } else if layer.shadow {
                host.count(i, Event::ShadowRejected);
            } else {
                host.count(i, Event::Rejected);
                // Nothing will be forwarded: give back what earlier layers hold now.
                self.release(host, &mut verdict.held);
                verdict.rejection = Some(self.rejection(i, layer, &decision));
                return verdict;
            }
            if tightest.is_none_or(|(_, t)| decision.remaining < t.remaining) {
                tightest = Some((i, decision));
            }
        }
        if let Some((i, d)) = tightest {
            verdict.response_headers = headers::render(self.policy.headers, &self.report(i, &d));
        }
        verdict
    }

    /// Returns concurrency slots held by a stream. Call when the stream ends, however
    /// it ends; clears `held` so a second call does nothing.
    pub fn release<H: Host>(&self, host: &mut H, held: &mut Vec<Held>) {
        for h in held.drain(..) {
            let Some(layer) = self.policy.layers.get(h.layer) else {
                continue;
            };
            let key = self.slot_key(h.layer, h.slot);
            let released = update(host, &key, |raw| ((), algorithms::release(&layer.algorithm, raw)));
            if released.is_err() {
                host.count(h.layer, Event::StoreError);
            }
        }
    }

    fn matches<H: Host>(&self, layer: &Layer, facts: &mut Facts, host: &mut H) -> bool {
        if let Some(prefix) = &layer.matcher.path_prefix {
            match facts.path(host) {
                Some(p) if p.starts_with(prefix.as_bytes()) => {}
                _ => return false,
            }
        }
        if !layer.matcher.methods.is_empty() {
            let Some(m) = facts.method(host) else {
                return false;
            };
            if !layer.matcher.methods.iter().any(|x| x.as_bytes() == m) {
                return false;
            }
        }
        true
    }

    /// Hashes the layer's key for this request; `None` when a part is missing.
    fn key_hash<H: Host>(&self, index: usize, layer: &Layer, facts: &mut Facts, host: &mut H) -> Option<u64> {
        let mut h = self.seed.hasher(index as u64);
        for part in &layer.key {
            match part {
                KeyPart::Ip => {
                    let ip = facts.ip(host, self.policy.ip_source, self.policy.ipv6_prefix)?;
                    slots::write_part(&mut h, 1, ip.as_bytes());
                }
                KeyPart::Global => slots::write_part(&mut h, 2, b""),
                KeyPart::Route => slots::write_part(&mut h, 3, b""),
                KeyPart::Header(name) => {
                    let v = host.header(name).filter(|v| !v.is_empty())?;
                    slots::write_part(&mut h, 4, &v);
                }
                KeyPart::Query(name) => {
                    let v = query::param(facts.path(host)?, name.as_bytes()).filter(|v| !v.is_empty())?;
                    slots::write_part(&mut h, 5, &v);
                }
            }
        }
        Some(slots::finish(h))
    }

    fn report<'a>(&'a self, i: usize, d: &Decision) -> Report<'a> {
        let layer = &self.policy.layers[i];
        Report {
            layer: &layer.name,
            limit: d.limit,
            remaining: d.remaining,
            reset_s: algorithms::ceil_secs(d.reset_ns),
            window_s: layer.algorithm.window_ms().div_ceil(1000),
        }
    }

    fn rejection(&self, i: usize, layer: &Layer, d: &Decision) -> Rejection {
        let retry_after = algorithms::ceil_secs(d.retry_after_ns).max(1);
        let mut hs = headers::render(self.policy.headers, &self.report(i, d));
        hs.push(("retry-after", retry_after.to_string()));
        hs.push(("content-type", "application/json".to_string()));
        Rejection {
            status: layer.status,
            headers: hs,
            body: headers::rejection_body("rate_limited", &layer.name, retry_after),
        }
    }

    fn reject_missing<H: Host>(&self, i: usize, layer: &Layer, host: &mut H, verdict: &mut Verdict) {
        host.count(i, Event::Rejected);
        self.release(host, &mut verdict.held);
        verdict.rejection = Some(Rejection {
            status: layer.status,
            headers: vec![("content-type", "application/json".to_string())],
            body: headers::rejection_body("missing_key", &layer.name, 0),
        });
    }
}

/// Read-modify-write of one shared-data counter with compare-and-swap, so that workers
/// updating the same slot concurrently never lose a hit.
pub fn update<H, T, F>(host: &mut H, key: &str, mut f: F) -> Result<T, HostError>
where
    H: Host,
    F: FnMut(Option<&[u8]>) -> (T, Option<algorithms::State>),
{
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (raw, cas) = host.shared_get(key)?;
        let (out, next) = f(raw.as_deref());
        let Some(next) = next else { return Ok(out) };
        if host.shared_set(key, &next, cas)? == SetOutcome::Stored {
            return Ok(out);
        }
    }
    Err(HostError(crate::host_status::CAS_MISMATCH))
}
