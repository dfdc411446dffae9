//! Worker-local leases: quota taken from the shared counter in small batches, so that a
//! busy client costs one shared-data round trip per batch instead of one per request.
//!
//! Every hostcall costs about half a microsecond in Envoy's V8 runtime, about as much
//! as all of Rampart's own computation, so the request path avoids them. When a worker
//! charges a counter it may take up to `lease_size` tokens at once (1/16 of what is
//! left, at most 64) and spend the extra ones on the same slot's next requests, locally.
//! It also remembers a rejection until its Retry-After, so a client hammering a closed
//! limit costs no shared-data access either.
//!
//! Accuracy: the shared counter is never exceeded: leased tokens were taken from it.
//! Tokens a worker leased but did not spend before the window ends (or, for token
//! buckets, before the bucket would have refilled them) are lost, so a client may be
//! refused while another worker still holds a few of its tokens. Because leases shrink
//! to single tokens as the counter nears its limit, that is at most
//! `min(64, remaining/16)` per worker per slot, and nothing at all when a single worker
//! sees all of a client's traffic.

use crate::algorithms::Decision;

#[derive(Debug, Clone, Copy, Default)]
pub struct Lease {
    /// Leased tokens not yet spent.
    tokens: u64,
    /// The limit the lease was taken under (tiers can change it per request).
    limit: u64,
    /// Reported limit (the burst, for token buckets).
    report_limit: u64,
    /// What the shared counter had left after the lease was taken.
    remaining_after: u64,
    valid_until_ns: u64,
    reset_at_ns: u64,
    /// A remembered rejection: refuse without asking until then.
    denied_until_ns: u64,
}

impl Lease {
    /// Spends a leased token, or repeats a remembered rejection.
    pub fn take(&mut self, now: u64, limit: u64) -> Option<Decision> {
        if self.limit != limit {
            return None;
        }
        if now < self.denied_until_ns {
            return Some(Decision {
                allowed: false,
                limit: self.report_limit,
                remaining: 0,
                reset_ns: self.reset_at_ns.saturating_sub(now),
                retry_after_ns: self.denied_until_ns - now,
                granted: 0,
                valid_until_ns: 0,
            });
        }
        if self.tokens == 0 || now >= self.valid_until_ns {
            return None;
        }
        self.tokens -= 1;
        Some(Decision {
            allowed: true,
            limit: self.report_limit,
            remaining: self.remaining_after + self.tokens,
            reset_ns: self.reset_at_ns.saturating_sub(now),
            retry_after_ns: 0,
            granted: 1,
            valid_until_ns: self.valid_until_ns,
        })
    }

    /// Records what a shared-counter update returned.
    pub fn store(&mut self, d: &Decision, now: u64, limit: u64) {
        *self = Lease {
            tokens: d.granted.saturating_sub(1),
            limit,
            report_limit: d.limit,
            remaining_after: d.remaining,
            valid_until_ns: d.valid_until_ns,
            reset_at_ns: now.saturating_add(d.reset_ns),
            denied_until_ns: if d.allowed {
                0
            } else {
                now.saturating_add(d.retry_after_ns)
            },
        };
    }
}

/// One lease per slot per layer, sized at configure time: memory is fixed, like the
/// shared tables (`size_of::<Lease>()` bytes per slot per worker).
pub struct Leases {
    layers: Vec<Vec<Lease>>,
}

impl Leases {
    pub fn new(slots_per_layer: impl Iterator<Item = u32>) -> Leases {
        Leases {
            layers: slots_per_layer.map(|n| vec![Lease::default(); n as usize]).collect(),
        }
    }

    pub fn get(&mut self, layer: usize, slot: u32) -> Option<&mut Lease> {
        self.layers.get_mut(layer)?.get_mut(slot as usize)
    }
}
