//! Checks one request against every layer of a policy.
//!
//! The engine sees the proxy only through the `Host` trait, so the whole decision path
//! is unit-tested natively with `testing::FakeHost`; `host/` implements the trait with
//! proxy-wasm hostcalls.

use crate::algorithms::{self, Decision, Fields};
use crate::client_ip::{self, ClientIp};
use crate::cluster::{FleetKey, Views};
use crate::denials::{Denial, Denials};
use crate::headers::{self, Report};
use crate::policy::{Algorithm, FailureMode, IpSource, KeyPart, Layer, Policy, Scope, SyncMode};
use crate::query;
use crate::slots::{self, Seed};
use crate::table::{self, Entry, Home};
use crate::wire::{Batch, Denied, Distinct, Hit, Outcomes, Rule};

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
    /// The sidecar failed or timed out for a cluster layer.
    SidecarError,
    /// Admitted (or judged by the fallback limit) because the sidecar failed and
    /// `failure_mode` is open.
    FailOpen,
    /// The key is used from more distinct clients than `max_ips_per_key` allows.
    Flagged,
    /// Refused with 403: the key is revoked, or blocked for too many clients.
    Denied,
    /// The layer's key needs the client address and the host gave none: the layer did
    /// not apply to this request.
    NoClientIp,
    /// A client found no entry of its own nor a free one in its two buckets and replaced
    /// another client's (forgiving what it held): the table is full around it.
    TableFull,
}

pub const EVENTS: [Event; 10] = [
    Event::Allowed,
    Event::Rejected,
    Event::ShadowRejected,
    Event::StoreError,
    Event::SidecarError,
    Event::FailOpen,
    Event::Flagged,
    Event::Denied,
    Event::NoClientIp,
    Event::TableFull,
];

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Allowed => "allowed",
            Event::Rejected => "rejected",
            Event::ShadowRejected => "shadow_rejected",
            Event::StoreError => "store_errors",
            Event::SidecarError => "sidecar_errors",
            Event::FailOpen => "fail_open",
            Event::Flagged => "flagged",
            Event::Denied => "denied",
            Event::NoClientIp => "no_client_ip",
            Event::TableFull => "table_full",
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

/// Keys counter names when the configuration gives no `sidecar.key_secret`. Names are
/// still hashes, but anyone can compute them; set a secret in production.
pub const DEFAULT_KEY_SECRET: &str = "rampart default key secret";

/// Attempts at a compare-and-swap before the request is admitted uncounted. Contention
/// comes from other workers touching the same slot at the same instant; a handful of
/// rounds resolves it, and a bound keeps a pathological host from spinning the request.
pub const MAX_CAS_ATTEMPTS: usize = 32;

/// A counter this stream holds and must give back when it ends (concurrency layers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub layer: usize,
    /// The client's hash: where its entry is in the layer's table.
    pub client: u64,
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
#[derive(Default)]
pub struct Facts {
    path: Option<Option<Vec<u8>>>,
    method: Option<Option<Vec<u8>>>,
    ip: Option<Option<ClientIp>>,
}

impl Facts {
    fn path<H: Host>(&mut self, host: &mut H) -> Option<&[u8]> {
        self.path.get_or_insert_with(|| host.header(":path")).as_deref()
    }

    fn method<H: Host>(&mut self, host: &mut H) -> Option<&[u8]> {
        self.method.get_or_insert_with(|| host.header(":method")).as_deref()
    }

    fn ip<H: Host>(&mut self, host: &mut H, policy: &Policy, xff_ends_with_peer: bool) -> Option<ClientIp> {
        *self.ip.get_or_insert_with(|| {
            let peer = host.peer_address();
            let xff = match policy.ip_source {
                IpSource::Xff { .. } => host.header("x-forwarded-for"),
                IpSource::Peer => None,
            };
            client_ip::resolve(
                policy.ip_source,
                policy.ipv6_prefix,
                peer.as_deref(),
                xff.as_deref(),
                xff_ends_with_peer,
            )
        })
    }
}

/// A compiled policy plus the per-layer counter tables, ready to check requests.
pub struct Engine {
    pub policy: Policy,
    seed: Seed,
    fleet: FleetKey,
    prefixes: Vec<String>,
    /// Whether the host appended the peer to X-Forwarded-For (see `client_ip::resolve`).
    pub xff_ends_with_peer: bool,
}

/// What one worker keeps between requests.
pub struct WorkerState {
    /// Rejections this worker remembers until their Retry-After.
    pub denials: Denials,
    pub views: Views,
    /// The last report to the sidecar failed: async layers use their fallback.
    pub sidecar_failing: bool,
    /// Flagged keys already logged by this worker (bounded).
    pub flagged_logged: std::collections::HashSet<String>,
}

/// Flagged keys one worker logs at most (each once); the metric counts them all.
pub const MAX_FLAG_LOGS: usize = 1024;

/// A request waiting for the sidecar: where to continue, and what was asked.
pub struct Paused {
    next: usize,
    facts: Facts,
    tightest: Option<(usize, Decision)>,
    held: Vec<Held>,
    /// Layers in the call, in order.
    asked: Vec<Asked>,
}

impl Paused {
    /// Hits in this request's call to the sidecar (one per layer asked).
    pub fn hits(&self) -> usize {
        self.asked.len()
    }
}

/// One cluster layer a paused request asked the sidecar about.
struct Asked {
    layer: usize,
    /// The client's hash in the layer's fallback table.
    client: u64,
    limit: u64,
    burst: u64,
    /// The counter's name at the sidecar (a hash; safe to log).
    name: String,
}

pub enum Step {
    Done(Verdict),
    /// Send `body` to `POST /v1/check`, then call `Engine::resume`.
    Ask(Box<Paused>, Vec<u8>),
}

impl Engine {
    pub fn new(policy: Policy, seed: Seed) -> Self {
        let prefixes = policy.layers.iter().map(slots::prefix).collect();
        let secret = policy
            .sidecar
            .as_ref()
            .and_then(|s| s.key_secret.as_deref())
            .unwrap_or(DEFAULT_KEY_SECRET);
        let fleet = FleetKey::from_secret(secret);
        Engine {
            policy,
            seed,
            fleet,
            prefixes,
            xff_ends_with_peer: true,
        }
    }

    /// For hosts without a tick (APISIX): async layers could never report, so they
    /// become sync layers, once, here.
    pub fn run_async_as_sync(&mut self) {
        for c in self.policy.layers.iter_mut().filter_map(|l| l.cluster.as_mut()) {
            c.sync = SyncMode::Sync;
        }
    }

    pub fn worker_state(&self) -> WorkerState {
        WorkerState {
            denials: self.denials(),
            views: Views::default(),
            sidecar_failing: false,
            flagged_logged: Default::default(),
        }
    }

    /// The shared-data key of one bucket of one layer's table.
    pub fn bucket_key(&self, layer: usize, bucket: u32) -> String {
        let prefix = self.prefixes.get(layer).map_or("", String::as_str);
        slots::key(prefix, bucket)
    }

    /// Every shared-data key this policy can ever touch: the whole memory footprint.
    pub fn all_bucket_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.policy.layers.iter().enumerate().flat_map(move |(i, l)| {
            let buckets = match l.table_slots() {
                0 => 0,
                n => table::buckets_for(n),
            };
            (0..buckets).map(move |b| self.bucket_key(i, b))
        })
    }

    /// An empty rejection memory for this policy (none for concurrency layers, whose
    /// room comes back when other requests end, nor for cluster layers).
    pub fn denials(&self) -> Denials {
        Denials::new(self.policy.layers.iter().map(|l| {
            if l.algorithm == Algorithm::Concurrency || l.scope == Scope::Cluster {
                0
            } else {
                l.slots
            }
        }))
    }

    /// Checks a request against every layer, in order, charging each until one rejects.
    /// Returns `Step::Ask` when a `sync` cluster layer needs the sidecar.
    pub fn check<H: Host>(&self, host: &mut H, ws: &mut WorkerState, now_ns: u64) -> Step {
        let p = Paused {
            next: 0,
            facts: Facts::default(),
            tightest: None,
            held: Vec::new(),
            asked: Vec::new(),
        };
        self.run(host, ws, p, now_ns)
    }

    /// Continues a paused request with the sidecar's answer (`None`: it failed or timed
    /// out).
    pub fn resume<H: Host>(
        &self,
        host: &mut H,
        ws: &mut WorkerState,
        mut p: Paused,
        answer: Option<Outcomes>,
        now_ns: u64,
    ) -> Step {
        let asked = std::mem::take(&mut p.asked);
        let outcomes = answer.map(|a| a.results).filter(|r| r.len() == asked.len());
        for (n, a) in asked.into_iter().enumerate() {
            let (i, layer) = (a.layer, &self.policy.layers[a.layer]);
            let decision = match outcomes.as_ref().and_then(|o| o.get(n)) {
                Some(o) if o.skipped => break,
                Some(o) => {
                    if let Some(kind) = o.denied {
                        let left = o.retry_after_ms.saturating_mul(1_000_000);
                        return Step::Done(self.denied(host, i, layer, kind, left, &mut p.held));
                    }
                    if o.flagged {
                        self.flagged(host, ws, i, layer, &a.name);
                    }
                    Some(Decision {
                        allowed: o.allowed,
                        limit: o.limit,
                        remaining: o.remaining,
                        reset_ns: o.reset_ms.saturating_mul(1_000_000),
                        retry_after_ns: o.retry_after_ms.saturating_mul(1_000_000),
                        granted: 1,
                    })
                }
                None => {
                    host.count(i, Event::SidecarError);
                    match self.sidecar_failed(host, i, layer, a.client, a.limit, a.burst, now_ns) {
                        Failed::Decided(d) => Some(d),
                        Failed::Admit => None,
                        Failed::Closed => return Step::Done(self.unavailable(host, i, layer, &mut p.held)),
                    }
                }
            };
            if let Some(d) = decision {
                if let Some(v) = self.settle(host, i, layer, None, d, &mut p) {
                    return Step::Done(v);
                }
            }
        }
        self.run(host, ws, p, now_ns)
    }

    /// Gives up on a paused request (its stream ended while the sidecar was asked):
    /// returns what it holds.
    pub fn abandon<H: Host>(&self, host: &mut H, mut p: Paused) {
        self.release(host, &mut p.held);
    }

    fn run<H: Host>(&self, host: &mut H, ws: &mut WorkerState, mut p: Paused, now_ns: u64) -> Step {
        while p.next < self.policy.layers.len() {
            let i = p.next;
            p.next += 1;
            let layer = &self.policy.layers[i];
            if !self.matches(layer, &mut p.facts, host) {
                continue;
            }
            let Some(parts) = self.key_parts(i, layer, &mut p.facts, host) else {
                if layer.deny_missing {
                    return Step::Done(self.reject_missing(i, layer, host, &mut p.held));
                }
                continue;
            };
            // Only layers with a node-local table (local, or a cluster fallback) use it.
            let client = match layer.table_slots() {
                0 => 0,
                _ => self.seed.hash(i as u64, &parts),
            };
            let tier = layer.tiers.as_ref().and_then(|t| host.header(&t.from_header));
            let (limit, burst) = layer.limits_for(tier.as_deref());
            let decision = match layer.sync_mode() {
                None => {
                    let memory = ws.denials.get(i, client);
                    match self.charge_local(host, i, client, memory, &layer.algorithm, limit, burst, now_ns) {
                        Ok(d) => d,
                        Err(_) => {
                            host.count(i, Event::StoreError);
                            continue;
                        }
                    }
                }
                Some(SyncMode::Async) => {
                    let rule = Rule::new(&layer.algorithm, limit, burst);
                    match rule {
                        Some(rule) if !ws.sidecar_failing => {
                            let name = self.fleet.counter_name(&layer.name, &parts);
                            if let Some((kind, left)) = ws.views.denied(&name, now_ns) {
                                return Step::Done(self.denied(host, i, layer, kind, left, &mut p.held));
                            }
                            let client = self.client(layer, &mut p.facts, host);
                            ws.views.decide(&name, rule, now_ns, client)
                        }
                        _ => {
                            host.count(i, Event::SidecarError);
                            match self.sidecar_failed(host, i, layer, client, limit, burst, now_ns) {
                                Failed::Decided(d) => d,
                                Failed::Admit => continue,
                                Failed::Closed => return Step::Done(self.unavailable(host, i, layer, &mut p.held)),
                            }
                        }
                    }
                }
                Some(SyncMode::Sync) => {
                    // Ask now; layers after this one wait for the answer.
                    let Some(rule) = Rule::new(&layer.algorithm, limit, burst) else {
                        continue;
                    };
                    let name = self.fleet.counter_name(&layer.name, &parts);
                    let (clients, distinct) = match self.client(layer, &mut p.facts, host) {
                        Some((c, d)) => (vec![c], Some(d)),
                        None => (Vec::new(), None),
                    };
                    let hit = Hit {
                        key: name.clone(),
                        rule,
                        cost: 1,
                        clients,
                        distinct,
                    };
                    p.asked.push(Asked {
                        layer: i,
                        client,
                        limit,
                        burst,
                        name,
                    });
                    let body = serde_json::to_vec(&Batch { hits: vec![hit] }).unwrap_or_default();
                    return Step::Ask(Box::new(p), body);
                }
            };
            let held = (layer.scope == Scope::Local && layer.algorithm == Algorithm::Concurrency).then_some(client);
            if let Some(v) = self.settle(host, i, layer, held, decision, &mut p) {
                return Step::Done(v);
            }
        }
        let mut verdict = Verdict {
            held: std::mem::take(&mut p.held),
            ..Verdict::default()
        };
        if let Some((i, d)) = p.tightest {
            verdict.response_headers = headers::render(self.policy.headers, &self.report(i, &d));
        }
        Step::Done(verdict)
    }

    /// Records one layer's decision; returns the final verdict when it rejects.
    fn settle<H: Host>(
        &self,
        host: &mut H,
        i: usize,
        layer: &Layer,
        held: Option<u64>,
        d: Decision,
        p: &mut Paused,
    ) -> Option<Verdict> {
        if d.allowed {
            host.count(i, Event::Allowed);
            if let Some(client) = held {
                p.held.push(Held { layer: i, client });
            }
        } else if layer.shadow {
            host.count(i, Event::ShadowRejected);
        } else {
            return Some(self.refuse(host, i, Event::Rejected, &mut p.held, self.rejection(i, layer, &d)));
        }
        if p.tightest.is_none_or(|(_, t)| d.remaining < t.remaining) {
            p.tightest = Some((i, d));
        }
        None
    }

    /// One node-local counter update, unless this worker remembers the counter refusing.
    #[allow(clippy::too_many_arguments)]
    fn charge_local<H: Host>(
        &self,
        host: &mut H,
        i: usize,
        client: u64,
        memory: Option<&mut Denial>,
        alg: &Algorithm,
        limit: u64,
        burst: u64,
        now_ns: u64,
    ) -> Result<Decision, HostError> {
        if let Some(d) = memory.as_ref().and_then(|m| m.recall(now_ns, limit)) {
            return Ok(d);
        }
        let d = self
            .update_entry(host, i, client, alg, now_ns, true, |f| {
                algorithms::charge_fields(alg, limit, burst, f, now_ns, algorithms::Want::One)
            })?
            // A claim always yields an entry; no answer would be a broken store.
            .ok_or(HostError(crate::host_status::NOT_FOUND))?;
        if let Some(m) = memory {
            m.note(&d, now_ns, limit);
        }
        Ok(d)
    }

    /// Read-modify-write of one client's entry in layer `i`'s table, with
    /// compare-and-swap so that workers updating one bucket at once never lose a hit.
    /// `f` maps the counter (all zeros when new) to a result and, when it changed, the
    /// counter to store. A client without an entry gets one when `claim` (see `table`);
    /// otherwise `Ok(None)`.
    #[allow(clippy::too_many_arguments)]
    fn update_entry<H: Host, T>(
        &self,
        host: &mut H,
        i: usize,
        client: u64,
        alg: &Algorithm,
        now_ns: u64,
        claim: bool,
        mut f: impl FnMut(Fields) -> (T, Option<Fields>),
    ) -> Result<Option<T>, HostError> {
        let buckets = table::buckets_for(self.policy.layers[i].table_slots());
        let home = Home::of(client, buckets);
        let n = if home.one_bucket() { 1 } else { 2 };
        // The second bucket's name is only made when the first does not hold the client.
        let mut keys: [Option<String>; 2] = [Some(self.bucket_key(i, home.buckets[0])), None];
        for _ in 0..MAX_CAS_ATTEMPTS {
            let mut read: [(Vec<u8>, u32); 2] = Default::default();
            let mut found = None;
            for which in 0..n {
                let key = keys[which].get_or_insert_with(|| self.bucket_key(i, home.buckets[which]));
                let (raw, cas) = host.shared_get(key)?;
                read[which] = (raw.unwrap_or_default(), cas);
                if let Some((at, e)) = table::find(&read[which].0, home.fp) {
                    found = Some((which, at, e));
                    break;
                }
            }
            let (which, at, entry, replaces) = match found {
                Some((which, at, e)) => (which, at, e, false),
                None if !claim => return Ok(None),
                None => {
                    let usage = |e: &Entry| algorithms::usage(alg, e.fields, now_ns);
                    let now_ms = (now_ns / 1_000_000) as u32;
                    let p = table::place([&read[0].0, &read[1].0], n == 1, now_ms, usage);
                    let fresh = Entry {
                        fp: home.fp,
                        since_ms: now_ms,
                        fields: [0; 3],
                    };
                    (p.which, p.at, fresh, p.replaces)
                }
            };
            let (out, next) = f(entry.fields);
            let Some(fields) = next else { return Ok(Some(out)) };
            let (bucket, cas) = &read[which];
            let value = table::put(bucket, at, &Entry { fields, ..entry });
            let key = keys[which].get_or_insert_with(|| self.bucket_key(i, home.buckets[which]));
            if host.shared_set(key, &value, *cas)? == SetOutcome::Stored {
                if replaces {
                    host.count(i, Event::TableFull);
                }
                return Ok(Some(out));
            }
        }
        Err(HostError(crate::host_status::CAS_MISMATCH))
    }

    /// What a cluster layer does when the sidecar failed.
    #[allow(clippy::too_many_arguments)]
    fn sidecar_failed<H: Host>(
        &self,
        host: &mut H,
        i: usize,
        layer: &Layer,
        client: u64,
        limit: u64,
        burst: u64,
        now_ns: u64,
    ) -> Failed {
        if self.policy.failure_mode == FailureMode::Closed {
            return Failed::Closed;
        }
        host.count(i, Event::FailOpen);
        let Some(fallback) = layer.cluster.as_ref().and_then(|c| c.fallback_limit) else {
            return Failed::Admit;
        };
        // Scale a token bucket's burst with the fallback rate; other algorithms ignore it.
        let fb_burst = (burst.saturating_mul(fallback) / limit.max(1)).max(1);
        match self.charge_local(host, i, client, None, &layer.algorithm, fallback, fb_burst, now_ns) {
            Ok(d) => Failed::Decided(d),
            Err(_) => {
                host.count(i, Event::StoreError);
                Failed::Admit
            }
        }
    }

    /// The client tag and distinct-client rule for a layer with `max_ips_per_key`.
    fn client<H: Host>(&self, layer: &Layer, facts: &mut Facts, host: &mut H) -> Option<(String, Distinct)> {
        let rule = layer.cluster.as_ref()?.distinct?;
        let ip = facts.ip(host, &self.policy, self.xff_ends_with_peer)?;
        Some((self.fleet.client_tag(ip.as_bytes()), rule))
    }

    /// Counts a flag and logs it once per key per worker (the name is a hash).
    fn flagged<H: Host>(&self, host: &mut H, ws: &mut WorkerState, i: usize, layer: &Layer, name: &str) {
        host.count(i, Event::Flagged);
        if ws.flagged_logged.len() < MAX_FLAG_LOGS && ws.flagged_logged.insert(name.to_string()) {
            let limit = layer.cluster.as_ref().and_then(|c| c.distinct).map_or(0, |d| d.limit);
            log::warn!(
                "rampart: key {name} on layer {} is used from more than {limit} distinct clients",
                layer.name
            );
        }
    }

    /// 403 for a key the sidecar refuses outright.
    fn denied<H: Host>(
        &self,
        host: &mut H,
        i: usize,
        layer: &Layer,
        kind: Denied,
        left_ns: u64,
        held: &mut Vec<Held>,
    ) -> Verdict {
        let (error, retry) = match kind {
            Denied::Revoked => ("key_revoked", 0),
            Denied::Blocked => ("key_blocked", algorithms::ceil_secs(left_ns).max(1)),
        };
        self.refuse(
            host,
            i,
            Event::Denied,
            held,
            error_reply(403, error, &layer.name, retry),
        )
    }

    fn unavailable<H: Host>(&self, host: &mut H, i: usize, layer: &Layer, held: &mut Vec<Held>) -> Verdict {
        let reply = error_reply(503, "rate_limiter_unavailable", &layer.name, 1);
        self.refuse(host, i, Event::Rejected, held, reply)
    }

    /// Ends a request with a local reply: counts `event` for layer `i` and, since nothing
    /// will be forwarded, gives back what earlier layers hold.
    fn refuse<H: Host>(&self, host: &mut H, i: usize, event: Event, held: &mut Vec<Held>, r: Rejection) -> Verdict {
        host.count(i, event);
        self.release(host, held);
        Verdict {
            rejection: Some(r),
            ..Verdict::default()
        }
    }

    /// Returns concurrency slots held by a stream. Call when the stream ends, however
    /// it ends; clears `held` so a second call does nothing.
    pub fn release<H: Host>(&self, host: &mut H, held: &mut Vec<Held>) {
        for h in held.drain(..) {
            let Some(layer) = self.policy.layers.get(h.layer) else {
                continue;
            };
            // A client whose entry was replaced meanwhile has nothing left to give back.
            let alg = &layer.algorithm;
            let released = self.update_entry(host, h.layer, h.client, alg, 0, false, |f| {
                ((), algorithms::release_fields(alg, f))
            });
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

    /// The layer's key parts for this request, tagged; `None` when a part is missing.
    fn key_parts<H: Host>(
        &self,
        i: usize,
        layer: &Layer,
        facts: &mut Facts,
        host: &mut H,
    ) -> Option<Vec<(u8, Vec<u8>)>> {
        let mut parts = Vec::with_capacity(layer.key.len());
        for part in &layer.key {
            parts.push(match part {
                KeyPart::Ip => match facts.ip(host, &self.policy, self.xff_ends_with_peer) {
                    Some(ip) => (1, ip.as_bytes().to_vec()),
                    None => {
                        host.count(i, Event::NoClientIp);
                        return None;
                    }
                },
                KeyPart::Global => (2, Vec::new()),
                KeyPart::Route => (3, Vec::new()),
                KeyPart::Header(name) => (4, host.header(name).filter(|v| !v.is_empty())?),
                KeyPart::Query(name) => (
                    5,
                    query::param(facts.path(host)?, name.as_bytes()).filter(|v| !v.is_empty())?,
                ),
            });
        }
        Some(parts)
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
        let mut r = error_reply(layer.status, "rate_limited", &layer.name, retry_after);
        r.headers
            .extend(headers::render(self.policy.headers, &self.report(i, d)));
        r
    }

    fn reject_missing<H: Host>(&self, i: usize, layer: &Layer, host: &mut H, held: &mut Vec<Held>) -> Verdict {
        let reply = error_reply(layer.status, "missing_key", &layer.name, 0);
        self.refuse(host, i, Event::Rejected, held, reply)
    }
}

/// A JSON error reply; `Retry-After` when `retry_after_s` is not 0.
fn error_reply(status: u16, error: &str, layer: &str, retry_after_s: u64) -> Rejection {
    let mut headers = vec![("content-type", "application/json".to_string())];
    if retry_after_s > 0 {
        headers.push(("retry-after", retry_after_s.to_string()));
    }
    Rejection {
        status,
        headers,
        body: headers::rejection_body(error, layer, retry_after_s),
    }
}

/// Outcome of a cluster layer whose sidecar failed.
enum Failed {
    Decided(Decision),
    Admit,
    Closed,
}
