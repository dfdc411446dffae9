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

/// Reads a sidecar answer. `None` for every kind of failure: no response (timeout,
/// connection refused: the host reports zero headers), a non-200 status, a body that
/// does not parse. The caller's `failure_mode` decides what clients see.
pub fn answer(num_headers: usize, body_size: usize) -> Option<Outcomes> {
    serde_json::from_slice(&answer_body(num_headers, body_size)?).ok()
}

/// The body of a successful (200) sidecar answer; `None` for every kind of failure.
pub fn answer_body(num_headers: usize, body_size: usize) -> Option<Vec<u8>> {
    answer_parts(num_headers, body_size).1
}

/// An answer's status, and its body when the status is 200; `(None, None)` when the
/// call failed (timeout, connection refused: the host reports zero headers).
pub fn answer_parts(num_headers: usize, body_size: usize) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    if num_headers == 0 {
        return (None, None);
    }
    let status = abi::header(abi::MAP_HTTP_CALL_RESPONSE_HEADERS, ":status")
        .ok()
        .flatten();
    if status.as_deref() != Some(b"200".as_slice()) {
        return (status, None);
    }
    let body = abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, body_size.min(MAX_ANSWER_BYTES))
        .ok()
        .flatten();
    (status, body)
}
