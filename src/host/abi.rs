//! The proxy-wasm hostcalls Rampart uses, declared directly so that every status comes
//! back as a plain number. The SDK's wrappers `panic!` on statuses they do not expect,
//! and a panic in a VM is a trap: on Envoy it fails every later request closed. Here a
//! failed call is a value the caller handles.

use std::ptr::{null, null_mut};

use crate::host_status::{EMPTY, NOT_FOUND, OK};

pub type Status = u32;

pub const MAP_REQUEST_HEADERS: u32 = 0;
pub const MAP_RESPONSE_HEADERS: u32 = 2;
pub const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
pub const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
const STREAM_HTTP_REQUEST: u32 = 0;
pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
pub const METRIC_COUNTER: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> Status;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> Status;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> Status;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> Status;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> Status;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> Status;
    fn proxy_set_tick_period_milliseconds(period: u32) -> Status;
    fn proxy_continue_stream(stream_type: u32) -> Status;
    fn proxy_set_effective_context(context_id: u32) -> Status;
    fn proxy_register_shared_queue(name_data: *const u8, name_size: usize, return_id: *mut u32) -> Status;
    fn proxy_enqueue_shared_queue(queue_id: u32, value_data: *const u8, value_size: usize) -> Status;
    fn proxy_dequeue_shared_queue(
        queue_id: u32,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
}

/// Takes ownership of a buffer the host filled through `proxy_on_memory_allocate`
/// (the SDK's allocator hands out `Vec<u8>` storage with capacity == size).
///
/// # Safety
/// `data` must be null or a pointer the host obtained from our allocator for `size` bytes.
unsafe fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

/// Maps NOT_FOUND/EMPTY to `Ok(None)`, other failures to `Err(status)`.
fn found(status: Status, data: *mut u8, size: usize) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: on OK the host wrote a buffer from our allocator (or null); on any other
    // status we do not read `data` beyond the null check and drop nothing the host owns.
    match status {
        OK => Ok(unsafe { take(data, size) }),
        NOT_FOUND | EMPTY => Ok(None),
        other => Err(other),
    }
}

pub fn log(level: u32, message: &str) {
    // SAFETY: pointer and length describe a live &str.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

pub fn buffer(kind: u32, size: usize) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut len) = (null_mut(), 0usize);
    // SAFETY: out-pointers are valid locals.
    let status = unsafe { proxy_get_buffer_bytes(kind, 0, size, &mut data, &mut len) };
    found(status, data, len)
}

pub fn plugin_configuration(size: usize) -> Result<Option<Vec<u8>>, Status> {
    buffer(BUFFER_PLUGIN_CONFIGURATION, size)
}

/// Resumes a request paused in `on_http_request_headers`.
pub fn continue_request() -> Status {
    // SAFETY: plain value.
    unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) }
}

pub fn header(map: u32, name: &str) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut len) = (null_mut(), 0usize);
    // SAFETY: name is a live &str; out-pointers are valid locals.
    let status = unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut len) };
    found(status, data, len)
}

pub fn add_header(map: u32, name: &str, value: &str) -> Status {
    // SAFETY: both slices are live for the call.
    unsafe { proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) }
}

/// A property by its path segments, e.g. `["source", "address"]`.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let mut encoded = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
    for (i, p) in path.iter().enumerate() {
        if i > 0 {
            encoded.push(0);
        }
        encoded.extend_from_slice(p.as_bytes());
    }
    let (mut data, mut len) = (null_mut(), 0usize);
    // SAFETY: encoded is live for the call; out-pointers are valid locals.
    let status = unsafe { proxy_get_property(encoded.as_ptr(), encoded.len(), &mut data, &mut len) };
    found(status, data, len)
}

/// Value and CAS token; `(None, 0)` when the key is absent.
pub fn shared_get(key: &str) -> Result<(Option<Vec<u8>>, u32), Status> {
    let (mut data, mut len, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: key is live; out-pointers are valid locals.
    let status = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut len, &mut cas) };
    match status {
        NOT_FOUND => Ok((None, 0)),
        _ => Ok((found(status, data, len)?, cas)),
    }
}

pub fn shared_set(key: &str, value: &[u8], cas: u32) -> Status {
    let ptr = if value.is_empty() { null() } else { value.as_ptr() };
    // SAFETY: key and value are live for the call.
    unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), ptr, value.len(), cas) }
}

/// Encodes headers the way the ABI expects: count, then (name len, value len) pairs,
/// then each name and value NUL-terminated.
fn encode_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + headers.iter().map(|(n, v)| 10 + n.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (n, v) in headers {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

pub fn send_local_response(status: u16, details: &str, body: &[u8], headers: &[(&str, &str)]) -> Status {
    let encoded = encode_headers(headers);
    // SAFETY: all slices are live for the call. -1: not a gRPC response.
    unsafe {
        proxy_send_local_response(
            status as u32,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            encoded.as_ptr(),
            encoded.len(),
            -1,
        )
    }
}

pub fn define_counter(name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: name is live; id is a valid local.
    match unsafe { proxy_define_metric(METRIC_COUNTER, name.as_ptr(), name.len(), &mut id) } {
        OK => Ok(id),
        other => Err(other),
    }
}

pub fn increment(id: u32, by: i64) -> Status {
    // SAFETY: plain values.
    unsafe { proxy_increment_metric(id, by) }
}

pub fn set_tick_period_ms(ms: u32) -> Status {
    // SAFETY: plain value.
    unsafe { proxy_set_tick_period_milliseconds(ms) }
}

/// Makes later hostcalls of this callback act on another context (a paused request
/// resumed from the root).
pub fn set_effective_context(context_id: u32) -> Status {
    // SAFETY: plain value.
    unsafe { proxy_set_effective_context(context_id) }
}

/// Registers a queue whose `on_queue_ready` runs on this VM's root context.
pub fn register_queue(name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: name is live; id is a valid local.
    match unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) } {
        OK => Ok(id),
        other => Err(other),
    }
}

pub fn enqueue(queue: u32, value: &[u8]) -> Status {
    // SAFETY: value is live for the call.
    unsafe { proxy_enqueue_shared_queue(queue, value.as_ptr(), value.len()) }
}

/// One item off a queue; `Ok(None)` when it is empty.
pub fn dequeue(queue: u32) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut len) = (null_mut(), 0usize);
    // SAFETY: out-pointers are valid locals.
    let status = unsafe { proxy_dequeue_shared_queue(queue, &mut data, &mut len) };
    found(status, data, len)
}
