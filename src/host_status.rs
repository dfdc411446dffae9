//! proxy-wasm ABI status codes (proxy-wasm spec, `WasmResult`). Kept as plain numbers:
//! a host may answer with a code the SDK's enum does not know (Kong and APISIX answer
//! UNIMPLEMENTED for whole families of calls), and reading that into a Rust enum would
//! be undefined behaviour.

pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;
pub const BAD_ARGUMENT: u32 = 2;
pub const EMPTY: u32 = 7;
pub const CAS_MISMATCH: u32 = 8;
pub const UNIMPLEMENTED: u32 = 12;

pub fn describe(status: u32) -> &'static str {
    match status {
        OK => "ok",
        NOT_FOUND => "not found",
        BAD_ARGUMENT => "bad argument",
        3 => "serialization failure",
        4 => "parse failure",
        5 => "bad expression",
        6 => "invalid memory access",
        EMPTY => "empty",
        CAS_MISMATCH => "cas mismatch",
        9 => "result mismatch",
        10 => "internal failure",
        11 => "broken connection",
        UNIMPLEMENTED => "unimplemented",
        _ => "unknown status",
    }
}
