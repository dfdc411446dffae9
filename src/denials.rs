//! Remembered rejections: once a counter refuses a client, this worker refuses it again
//! without touching shared data until the Retry-After has passed.
//!
//! This is exact, not an approximation: until Retry-After, other workers can only add to
//! the counter, never free room in it (for concurrency layers they can, so those are
//! never remembered). A client hammering a closed limit then costs no shared-data access.
//! `slots` entries per layer, sized at configure time: memory is fixed like the shared
//! tables. An entry remembers whose rejection it holds, so two clients that meet in
//! one entry only ever cost a lookup, never a wrong answer.

use crate::algorithms::Decision;

#[derive(Debug, Clone, Copy, Default)]
pub struct Denial {
    /// Whose rejection this is (the client's hash).
    client: u64,
    /// The limit the rejection was made under (tiers can change it per request).
    limit: u64,
    /// Reported limit (the burst, for token buckets).
    report_limit: u64,
    reset_at_ns: u64,
    /// Refuse without asking until then.
    until_ns: u64,
}

impl Denial {
    /// The remembered rejection, if it still stands for a request under `limit`.
    pub fn recall(&self, now: u64, limit: u64) -> Option<Decision> {
        (self.limit == limit && now < self.until_ns).then(|| Decision {
            allowed: false,
            limit: self.report_limit,
            remaining: 0,
            reset_ns: self.reset_at_ns.saturating_sub(now),
            retry_after_ns: self.until_ns - now,
            granted: 0,
        })
    }

    /// Remembers a rejection (and forgets one when the counter admitted).
    pub fn note(&mut self, d: &Decision, now: u64, limit: u64) {
        let client = self.client;
        *self = if d.allowed {
            Denial {
                client,
                ..Denial::default()
            }
        } else {
            Denial {
                client,
                limit,
                report_limit: d.limit,
                reset_at_ns: now.saturating_add(d.reset_ns),
                until_ns: now.saturating_add(d.retry_after_ns),
            }
        };
    }
}

pub struct Denials {
    layers: Vec<Vec<Denial>>,
}

impl Denials {
    pub fn new(slots_per_layer: impl Iterator<Item = u32>) -> Denials {
        Denials {
            layers: slots_per_layer.map(|n| vec![Denial::default(); n as usize]).collect(),
        }
    }

    /// The memory of `client`'s rejection on `layer`: its own, or a fresh one that
    /// takes over the entry.
    pub fn get(&mut self, layer: usize, client: u64) -> Option<&mut Denial> {
        let entries = self.layers.get_mut(layer)?;
        let n = u32::try_from(entries.len()).ok().filter(|n| *n > 0)?;
        let d = entries.get_mut(crate::slots::index(client, n) as usize)?;
        if d.client != client {
            *d = Denial {
                client,
                ..Denial::default()
            };
        }
        Some(d)
    }
}
