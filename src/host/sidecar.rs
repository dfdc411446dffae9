//! Calls to rampart-sidecar through the host's `dispatch_http_call`.

use std::time::Duration;

use proxy_wasm::hostcalls;

use super::abi;
use crate::host_status;
use crate::policy::Sidecar;
use crate::wire::{Outcomes, TOKEN_HEADER};

pub const CHECK_PATH: &str = "/v1/check";
pub const REPORT_PATH: &str = "/v1/report";
/// Largest answer read back (a full batch of outcomes is well below it).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Sends `body` to the sidecar; the answer arrives in `on_http_call_response` with the
/// returned token, within `timeout_ms`. `Err` (logged by the caller) when the host
/// refused the call, e.g. an unknown upstream cluster.
pub fn dispatch(sidecar: &Sidecar, path: &str, body: &[u8], timeout_ms: u64) -> Result<u32, String> {
    let mut headers = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", sidecar.authority.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(t) = &sidecar.token {
        headers.push((TOKEN_HEADER, t.as_str()));
    }
    let timeout = Duration::from_millis(timeout_ms);
    hostcalls::dispatch_http_call(&sidecar.upstream, headers, Some(body), Vec::new(), timeout).map_err(|s| {
        format!(
            "dispatch to {:?} refused: {}",
            sidecar.upstream,
            host_status::describe(s as u32)
        )
    })
}

/// How a call to the sidecar ended.
pub struct Reply {
    /// The answer's HTTP status; `None` when no answer came (timeout, refused
    /// connection: Envoy reports zero headers, Kong a `:dispatch_status`).
    pub status: Option<Vec<u8>>,
    /// The body of a 200 answer.
    pub body: Option<Vec<u8>>,
    /// The host named the failure itself in a `:dispatch_status` pseudo-header (Kong's
    /// engine: "timeout", "broken connection", ...).
    pub engine_failure: bool,
}

impl Reply {
    /// The check or report outcomes; `None` for every kind of failure: no answer, a
    /// non-200 status, a body that does not parse. The caller's `failure_mode` decides
    /// what clients see.
    pub fn outcomes(&self) -> Option<Outcomes> {
        serde_json::from_slice(self.body.as_deref()?).ok()
    }
}

/// Reads what came back for the call being answered.
pub fn reply(num_headers: usize, body_size: usize) -> Reply {
    let mut reply = Reply {
        status: None,
        body: None,
        engine_failure: false,
    };
    let header = |name| abi::header(abi::MAP_HTTP_CALL_RESPONSE_HEADERS, name).ok().flatten();
    if num_headers > 0 {
        reply.status = header(":status");
    }
    if reply.status.is_none() {
        // Kong's engine reports a failed call with zero headers in the callback's
        // arguments, yet answers `:dispatch_status` when asked.
        reply.engine_failure = header(":dispatch_status").is_some();
        return reply;
    }
    if reply.status.as_deref() == Some(b"200".as_slice()) {
        reply.body = abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, body_size.min(MAX_ANSWER_BYTES))
            .ok()
            .flatten();
    }
    reply
}
