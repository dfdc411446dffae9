//! The downstream peer's address, read from whichever property this host exposes.
//!
//! Envoy and Kong answer `source.address` (Envoy with the port, Kong without);
//! api7/wasm-nginx-module (APISIX) answers only nginx variables, so there it is
//! `remote_addr`, and `source.address` is NotFound. The order is chosen once at
//! configure time from what the host is known to be; if the first choice finds
//! nothing on a request, the others are tried and the one that answers becomes the
//! first choice, so the steady state costs one hostcall. When none answers, the
//! operator hears it once: `ip` layers then do not apply (and count `no_client_ip`),
//! which must never happen silently.

use std::cell::Cell;

use super::abi;

const SOURCE_ADDRESS: &[&str] = &["source", "address"];
const REMOTE_ADDR: &[&str] = &["remote_addr"];

pub struct PeerAddress {
    candidates: [&'static [&'static str]; 2],
    /// Index of the candidate that answered last.
    first: Cell<usize>,
    missing_logged: Cell<bool>,
}

impl PeerAddress {
    /// `nginx_variables`: the host answers properties from nginx variables only.
    pub fn new(nginx_variables: bool) -> PeerAddress {
        let candidates = if nginx_variables {
            [REMOTE_ADDR, SOURCE_ADDRESS]
        } else {
            [SOURCE_ADDRESS, REMOTE_ADDR]
        };
        PeerAddress {
            candidates,
            first: Cell::new(0),
            missing_logged: Cell::new(false),
        }
    }

    pub fn read(&self) -> Option<Vec<u8>> {
        let first = self.first.get();
        let order = [first, 1 - first];
        for (tried, i) in order.into_iter().enumerate() {
            let path = self.candidates[i];
            if let Ok(Some(v)) = abi::property(path).map(|v| v.filter(|v| !v.is_empty())) {
                if tried > 0 {
                    log::info!("rampart: this host gives the client address as {:?}", path.join("."));
                    self.first.set(i);
                }
                return Some(v);
            }
        }
        if !self.missing_logged.replace(true) {
            log::warn!(
                "rampart: this host gives no client address (tried source.address and remote_addr): \
                 \"ip\" keys do not apply; counted as rampart_<layer>_no_client_ip"
            );
        }
        None
    }
}
