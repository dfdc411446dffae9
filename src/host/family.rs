//! Which proxy-wasm host this is, told apart once at configure time by what its shared
//! data does (HOSTS.md), and everything Rampart does differently because of it.

use super::shared::SharedData;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// proxy-wasm-cpp-host (Envoy): a blind write (cas 0) replaces a value.
    CppHost,
    /// Kong's ngx_wasm_module: shared data, but a blind write on an existing key fails.
    NgxWasm,
    /// api7/wasm-nginx-module (APISIX): no shared data; properties are nginx variables.
    WasmNginx,
}

impl Family {
    pub fn detect(shared: &SharedData) -> Family {
        match shared {
            SharedData::Local { .. } => Family::WasmNginx,
            _ if shared.blind_writes_replace() => Family::CppHost,
            _ => Family::NgxWasm,
        }
    }

    /// The host appended the connecting peer to X-Forwarded-For (Envoy with
    /// `use_remote_address`); the nginx hosts hand the filter the header as received.
    pub fn xff_ends_with_peer(self) -> bool {
        self == Family::CppHost
    }

    /// The host runs `on_queue_ready` on the root and lets it resume requests: sync
    /// checks can be batched per worker.
    pub fn batches(self) -> bool {
        self == Family::CppHost
    }

    /// Properties are nginx variables only (`remote_addr`, not `source.address`).
    pub fn nginx_variables(self) -> bool {
        self == Family::WasmNginx
    }

    /// `details` of local replies: Envoy logs them as response code details; Kong's
    /// engine makes them the reason phrase ("429 rampart"), so they are empty there.
    pub fn reply_details(self) -> &'static str {
        match self {
            Family::CppHost => "rampart",
            _ => "",
        }
    }

    /// Close the client connection after a request that called the sidecar. Kong's
    /// engine (ngx_wasm_module 3bed278) corrupts a kept-alive connection whose request
    /// made an HTTP call and was then proxied: a later request on it crashes the worker
    /// (signal 11; seen with a filter that does nothing but one call). `Connection:
    /// close` on that response ends the connection before it is reused.
    pub fn close_after_call(self) -> bool {
        self == Family::NgxWasm
    }
}
