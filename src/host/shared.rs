//! Node-local counters: the host's shared data where it has one (Envoy: one map per
//! `vm_id` shared by all worker threads; Kong: an nginx shm zone shared by all worker
//! processes), or this VM's own memory where it does not (APISIX answers
//! UNIMPLEMENTED). Probed once at configure time with a call that cannot trap.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::abi;
use crate::engine::Engine;
use crate::host_status::{self, CAS_MISMATCH, OK};
use crate::slots::{Seed, SEED_KEY, SEED_LEN};

pub enum SharedData {
    Host,
    /// Per-VM counters: one worker's view only. Holds at most the slot tables' keys.
    Local {
        map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
    },
}

impl SharedData {
    pub fn probe() -> SharedData {
        match abi::shared_get(SEED_KEY) {
            Ok(_) => SharedData::Host,
            Err(status) => {
                log::warn!(
                    "rampart: this host has no shared data ({}): local layers count per worker process",
                    host_status::describe(status)
                );
                SharedData::Local {
                    map: RefCell::new(HashMap::new()),
                    next_cas: Cell::new(0),
                }
            }
        }
    }

    /// Whether a write with cas 0 replaces an existing value, as in proxy-wasm-cpp-host
    /// (Envoy); Kong refuses it. Tells the host family apart at configure time.
    pub fn blind_writes_replace(&self) -> bool {
        const PROBE: &str = "rampart/v1/probe";
        match self {
            SharedData::Host => abi::shared_set(PROBE, b"1", 0) == OK && abi::shared_set(PROBE, b"1", 0) == OK,
            SharedData::Local { .. } => false,
        }
    }

    pub fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), u32> {
        match self {
            SharedData::Host => abi::shared_get(key),
            SharedData::Local { map, .. } => Ok(map
                .borrow()
                .get(key)
                .map_or((None, 0), |(v, cas)| (Some(v.clone()), *cas))),
        }
    }

    /// Compare-and-swap write with Envoy's semantics (cas 0: unconditional).
    pub fn set(&self, key: &str, value: &[u8], cas: u32) -> u32 {
        match self {
            SharedData::Host => abi::shared_set(key, value, cas),
            SharedData::Local { map, next_cas } => {
                let mut map = map.borrow_mut();
                if let Some((_, current)) = map.get(key) {
                    if cas != 0 && cas != *current {
                        return CAS_MISMATCH;
                    }
                }
                next_cas.set(next_cas.get().wrapping_add(1).max(1));
                map.insert(key.to_string(), (value.to_vec(), next_cas.get()));
                OK
            }
        }
    }

    /// The proxy-wide hash seed. The first VM to configure draws it and stores it; every
    /// worker then reads the same one, so a key maps to the same slot on all.
    pub fn seed(&self) -> Result<Seed, String> {
        let read = || -> Result<Option<Seed>, String> {
            match self.get(SEED_KEY) {
                Ok((v, _)) => Ok(v.as_deref().and_then(Seed::from_bytes)),
                Err(s) => Err(format!("cannot read the hash seed: {}", host_status::describe(s))),
            }
        };
        if let Some(seed) = read()? {
            return Ok(seed);
        }
        let mut fresh = [0u8; SEED_LEN];
        getrandom::getrandom(&mut fresh).map_err(|e| format!("no randomness for the hash seed: {e}"))?;
        // Kong stores a cas-0 write only if the key is absent (CAS_MISMATCH otherwise):
        // either way, whichever seed is there now is the one to use.
        let status = self.set(SEED_KEY, &fresh, 0);
        if status != OK && status != CAS_MISMATCH {
            return Err(format!("cannot store the hash seed: {}", host_status::describe(status)));
        }
        read()?.ok_or_else(|| "the hash seed vanished from shared data".to_string())
    }

    /// Creates every slot of every table up front. Memory is then fixed before the first
    /// request, and no request ever writes an absent key (which Envoy stores
    /// unconditionally, so two workers creating one key at once could lose a hit).
    /// VM-local counters need neither: they are created on first use, within the same
    /// bound.
    pub fn create_slots(&self, engine: &Engine) -> Result<(), String> {
        if matches!(self, SharedData::Local { .. }) {
            return Ok(());
        }
        for key in engine.all_bucket_keys() {
            match self.get(&key) {
                Ok((Some(_), _)) => {}
                Ok((None, cas)) if cas != 0 => {}
                Ok((None, _)) => {
                    let status = self.set(&key, &[], 0);
                    if status != OK && status != CAS_MISMATCH {
                        return Err(format!(
                            "cannot create counter {key}: {}",
                            host_status::describe(status)
                        ));
                    }
                }
                Err(s) => return Err(format!("cannot read counter {key}: {}", host_status::describe(s))),
            }
        }
        Ok(())
    }
}
