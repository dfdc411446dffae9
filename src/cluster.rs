//! Cluster layers, filter side: the keyed hash that names a counter at the sidecar, and
//! the worker-local view that `sync: async` layers decide against.
//!
//! Async decisions: each worker keeps, per counter, what the sidecar last said was left
//! (`remaining_at_sync`) and how many requests it admitted since. It admits while
//! `admitted < remaining_at_sync`, and reports its hits in one batch every
//! `sync_interval`; the answer (the counter's cluster-wide standing after those hits)
//! replaces the view. A counter this worker has not heard about yet starts at its full
//! limit.
//!
//! Over-admission bound: with `N` workers (all gateways' worker threads together) each
//! admitting a key at up to `λ` requests per second, sync interval `T` and sidecar round
//! trip `d`, a window admits at most
//! `limit + (N − 1) · min(limit, λ · (T + d))`: each of the other workers can spend, at
//! most, what it saw left at its last sync plus what it admits before its next answer.

use std::collections::HashMap;
#[allow(deprecated)]
use std::hash::SipHasher;
use std::hash::{Hash, Hasher};

use crate::algorithms::Decision;
use crate::wire::{add_client, Batch, Denied, Distinct, Hit, Outcome, Rule};

/// Most counters one worker tracks for async layers; past it, idle ones are dropped.
pub const MAX_VIEWS: usize = 65_536;

/// The fleet-wide key for counter names: every gateway must hash a client key the same
/// way, so it is derived from configuration (`sidecar.key_secret`), not drawn at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetKey {
    k: [u64; 4],
}

impl FleetKey {
    pub fn from_secret(secret: &str) -> FleetKey {
        let mut k = [0u64; 4];
        for (i, slot) in k.iter_mut().enumerate() {
            #[allow(deprecated)]
            let mut h = SipHasher::new_with_keys(0x7261_6d70_6172_7400 + i as u64, 0x6b65_795f_7365_6372);
            secret.hash(&mut h);
            *slot = h.finish();
        }
        FleetKey { k }
    }

    /// `<layer>:<32 hex digits>`: a 128-bit keyed hash of the layer's key parts. The
    /// client's key (an API key, say) never leaves the filter in clear.
    pub fn counter_name(&self, layer: &str, parts: &[(u8, Vec<u8>)]) -> String {
        let mut out = String::with_capacity(layer.len() + 33);
        out.push_str(layer);
        out.push(':');
        for half in 0..2 {
            #[allow(deprecated)]
            let mut h = SipHasher::new_with_keys(self.k[half * 2], self.k[half * 2 + 1]);
            h.write(layer.as_bytes());
            for (tag, bytes) in parts {
                h.write_u8(*tag);
                h.write_u64(bytes.len() as u64);
                h.write(bytes);
            }
            out.push_str(&format!("{:016x}", h.finish()));
        }
        out
    }
}

impl FleetKey {
    /// A client address as the sidecar sees it: 64-bit keyed hash, hex.
    pub fn client_tag(&self, ip: &[u8]) -> String {
        #[allow(deprecated)]
        let mut h = SipHasher::new_with_keys(self.k[1] ^ self.k[2], self.k[3]);
        h.write(ip);
        format!("{:016x}", h.finish())
    }
}

#[derive(Debug, Clone, Copy)]
struct View {
    rule: Rule,
    remaining_at_sync: u64,
    admitted: u64,
    reset_at_ns: u64,
    /// The sidecar refused the key (revoked or blocked), until this time or until a
    /// report says otherwise.
    denied: Option<(Denied, u64)>,
}

/// Hits queued for the next report, per counter.
#[derive(Debug, Clone)]
pub struct Pending {
    pub rule: Rule,
    pub count: u64,
    pub clients: Vec<String>,
    pub distinct: Option<Distinct>,
}

impl Pending {
    fn new(rule: Rule) -> Pending {
        Pending {
            rule,
            count: 0,
            clients: Vec::new(),
            distinct: None,
        }
    }
}

/// Hits sent in a report whose answer has not arrived.
pub type InFlight = Vec<(String, Pending)>;

#[derive(Default)]
pub struct Views {
    views: HashMap<String, View>,
    pending: HashMap<String, Pending>,
}

/// How long an async denial stands before the worker asks again (a report with cost 0).
const DENIAL_RECHECK_NS: u64 = 1_000_000_000;

impl Views {
    /// A refusal the sidecar reported for this counter, with how long it stands. While
    /// it does, a zero-cost hit is queued so the next report learns of a restore.
    pub fn denied(&mut self, name: &str, now: u64) -> Option<(Denied, u64)> {
        let (kind, until) = self.views.get(name)?.denied.filter(|(_, until)| *until > now)?;
        let probe = !self.pending.contains_key(name);
        if probe {
            let rule = self.views.get(name)?.rule;
            self.pending.insert(name.to_string(), Pending::new(rule));
        }
        Some((kind, until - now))
    }

    /// Decides one request locally and queues its hit (and client) for the next report.
    pub fn decide(&mut self, name: &str, rule: Rule, now: u64, client: Option<(String, Distinct)>) -> Decision {
        let window_ns = rule.window_ms().saturating_mul(1_000_000);
        if !self.views.contains_key(name) && self.views.len() >= MAX_VIEWS {
            let pending = &self.pending;
            self.views.retain(|k, v| v.admitted > 0 || pending.contains_key(k));
        }
        let fresh = View {
            rule,
            remaining_at_sync: rule.limit(),
            admitted: 0,
            reset_at_ns: now.saturating_add(window_ns),
            denied: None,
        };
        let view = self.views.entry(name.to_string()).or_insert(fresh);
        if view.rule != rule || now >= view.reset_at_ns {
            // A new window (or a new rule): optimistic until the sidecar says otherwise.
            *view = fresh;
        }
        let allowed = view.admitted < view.remaining_at_sync;
        let reset_ns = view.reset_at_ns - now;
        if allowed {
            view.admitted += 1;
            let entry = self
                .pending
                .entry(name.to_string())
                .or_insert_with(|| Pending::new(rule));
            entry.rule = rule;
            entry.count += 1;
            if let Some((c, d)) = client {
                entry.distinct = Some(d);
                add_client(&mut entry.clients, &c);
            }
        }
        Decision {
            allowed,
            limit: rule.limit(),
            remaining: view.remaining_at_sync.saturating_sub(view.admitted),
            reset_ns,
            retry_after_ns: if allowed { 0 } else { reset_ns.max(1) },
            granted: u64::from(allowed),
        }
    }

    /// Takes the queued hits as one report.
    pub fn take_report(&mut self) -> Option<(Batch, InFlight)> {
        if self.pending.is_empty() {
            return None;
        }
        let mut sent = Vec::with_capacity(self.pending.len().min(crate::wire::MAX_HITS));
        let keys: Vec<String> = self.pending.keys().take(crate::wire::MAX_HITS).cloned().collect();
        for k in keys {
            if let Some(p) = self.pending.remove(&k) {
                sent.push((k, p));
            }
        }
        let hits = sent
            .iter()
            .map(|(k, p)| Hit {
                key: k.clone(),
                rule: p.rule,
                cost: p.count,
                clients: p.clients.clone(),
                distinct: p.distinct,
            })
            .collect();
        Some((Batch { hits }, sent))
    }

    /// Applies the sidecar's answer to a report. On failure the hits are queued again,
    /// so the cluster still learns of them once the sidecar is back.
    pub fn apply_report(&mut self, sent: InFlight, answer: Option<&[Outcome]>, now: u64) {
        match answer {
            Some(outcomes) if outcomes.len() == sent.len() => {
                for ((name, p), o) in sent.into_iter().zip(outcomes) {
                    if let Some(v) = self.views.get_mut(&name) {
                        if v.rule == p.rule {
                            v.admitted = v.admitted.saturating_sub(p.count);
                            v.remaining_at_sync = o.remaining;
                            v.reset_at_ns = now.saturating_add(o.reset_ms.saturating_mul(1_000_000));
                            let stands = o.retry_after_ms.saturating_mul(1_000_000).max(DENIAL_RECHECK_NS);
                            v.denied = o.denied.map(|d| (d, now.saturating_add(stands)));
                        }
                    }
                }
            }
            _ => {
                for (name, p) in sent {
                    let entry = self.pending.entry(name).or_insert_with(|| Pending::new(p.rule));
                    entry.count += p.count;
                    entry.distinct = entry.distinct.or(p.distinct);
                    for c in &p.clients {
                        add_client(&mut entry.clients, c);
                    }
                }
            }
        }
    }

    pub fn pending_hits(&self) -> u64 {
        self.pending.values().map(|p| p.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const RULE: Rule = Rule::FixedWindow {
        limit: 10,
        window_ms: 60_000,
    };

    #[test]
    fn counter_names_are_keyed_and_never_contain_the_key() {
        let a = FleetKey::from_secret("fleet-secret");
        let b = FleetKey::from_secret("other-secret");
        let parts = vec![(4u8, b"sk_live_123".to_vec())];
        let name = a.counter_name("keys", &parts);
        assert!(name.starts_with("keys:") && name.len() == 5 + 32, "{name}");
        assert!(!name.contains("sk_live"));
        assert_eq!(name, a.counter_name("keys", &parts), "stable across calls and gateways");
        assert_ne!(name, b.counter_name("keys", &parts), "the secret changes every name");
        assert_ne!(name, a.counter_name("edge", &parts));
    }

    #[test]
    fn async_view_admits_what_was_left_and_learns_from_reports() {
        let mut v = Views::default();
        let admitted = (0..15).filter(|_| v.decide("k", RULE, S, None).allowed).count();
        assert_eq!(admitted, 10, "an unknown counter starts at its limit");
        let (batch, sent) = v.take_report().expect("hits to report");
        assert_eq!(batch.hits[0].cost, 10);
        // Other gateways used the counter too: the sidecar says 0 left.
        let o = Outcome {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset_ms: 30_000,
            retry_after_ms: 0,
            skipped: false,
            ..Default::default()
        };
        v.apply_report(sent, Some(&[o]), 2 * S);
        assert!(!v.decide("k", RULE, 3 * S, None).allowed);
        // After the reset the view starts over.
        assert!(v.decide("k", RULE, 33 * S, None).allowed);
    }

    #[test]
    fn failed_report_requeues_hits() {
        let mut v = Views::default();
        v.decide("k", RULE, S, None);
        v.decide("k", RULE, S, None);
        let (_, sent) = v.take_report().expect("report");
        assert_eq!(v.pending_hits(), 0);
        v.apply_report(sent, None, S);
        assert_eq!(v.pending_hits(), 2);
    }
}
