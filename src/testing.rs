//! An in-memory `Host` for unit tests, with Envoy's shared-data semantics (a CAS token
//! per key; an absent key is written unconditionally).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::engine::{Engine, Event, Host, HostError, SetOutcome, Step, Verdict, WorkerState, EVENTS};
use crate::slots::Seed;

#[derive(Default)]
pub struct Shared {
    pub map: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    /// Make this many upcoming sets fail with CAS_MISMATCH (simulated contention).
    pub force_mismatch: usize,
    pub fail_with: Option<u32>,
    pub gets: u64,
    pub sets: u64,
}

#[derive(Default)]
pub struct FakeHost {
    headers: Vec<(String, Vec<u8>)>,
    peer: Option<Vec<u8>>,
    pub shared: Shared,
    pub counts: HashMap<(usize, usize), u64>,
    pub header_reads: usize,
}

impl FakeHost {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_header(mut self, name: &str, value: &[u8]) -> Self {
        self.set_header(name, value);
        self
    }

    pub fn with_peer(mut self, peer: &str) -> Self {
        self.peer = Some(peer.as_bytes().to_vec());
        self
    }

    pub fn set_peer(&mut self, peer: &str) {
        self.peer = Some(peer.as_bytes().to_vec());
    }

    pub fn set_header(&mut self, name: &str, value: &[u8]) {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_string(), value.to_vec()));
    }

    /// Starts a new request on the same proxy: same shared data and metrics.
    pub fn next_request(&mut self) -> &mut Self {
        self.headers.clear();
        self.peer = None;
        self
    }

    pub fn count_of(&self, layer: usize, event: Event) -> u64 {
        self.counts.get(&(layer, event.index())).copied().unwrap_or(0)
    }
}

impl Host for FakeHost {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.header_reads += 1;
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    fn peer_address(&mut self) -> Option<Vec<u8>> {
        self.peer.clone()
    }

    fn shared_get(&mut self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
        self.shared.gets += 1;
        if let Some(code) = self.shared.fail_with {
            return Err(HostError(code));
        }
        Ok(match self.shared.map.get(key) {
            Some((v, cas)) => (Some(v.clone()), *cas),
            None => (None, 0),
        })
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, HostError> {
        self.shared.sets += 1;
        if let Some(code) = self.shared.fail_with {
            return Err(HostError(code));
        }
        if self.shared.force_mismatch > 0 {
            self.shared.force_mismatch -= 1;
            return Ok(SetOutcome::CasMismatch);
        }
        if let Some((_, current)) = self.shared.map.get(key) {
            if cas != 0 && cas != *current {
                return Ok(SetOutcome::CasMismatch);
            }
        }
        self.shared.next_cas += 1;
        self.shared
            .map
            .insert(key.to_string(), (value.to_vec(), self.shared.next_cas));
        Ok(SetOutcome::Stored)
    }

    fn count(&mut self, layer: usize, event: Event) {
        debug_assert!(EVENTS.contains(&event));
        *self.counts.entry((layer, event.index())).or_default() += 1;
    }
}

/// One worker: the engine plus its own state.
pub struct Worker {
    pub engine: Engine,
    pub state: RefCell<WorkerState>,
}

impl Worker {
    /// Checks a request whose layers need no sidecar call: the answer is final.
    pub fn check(&self, host: &mut FakeHost, now: u64) -> Verdict {
        match self.engine.check(host, &mut self.state.borrow_mut(), now) {
            Step::Done(v) => v,
            Step::Ask(..) => panic!("this test expected no sidecar call"),
        }
    }

    /// Another worker of the same proxy: same policy and seed, its own state.
    pub fn sibling(&self) -> Worker {
        let engine = Engine::new(self.engine.policy.clone(), SEED);
        Worker {
            state: RefCell::new(engine.worker_state()),
            engine,
        }
    }
}

impl std::ops::Deref for Worker {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

const SEED: Seed = Seed { k0: 7, k1: 11 };

/// A worker for a JSON policy, with a fixed seed.
pub fn engine(json: &str) -> Worker {
    let policy = crate::config::compile(json.as_bytes()).unwrap_or_else(|e| panic!("test config refused: {e}"));
    let engine = Engine::new(policy, SEED);
    Worker {
        state: RefCell::new(engine.worker_state()),
        engine,
    }
}
