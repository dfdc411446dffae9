//! Rampart: layered API rate limiting as one proxy-wasm filter.
//!
//! The pure core (`config`, `policy`, `algorithms`, `client_ip`, `query`, `slots`,
//! `headers`, `engine`) has no proxy-wasm dependency and is unit-tested natively.
//! Only `host` touches the proxy, and it is compiled for wasm32 alone.

pub mod algorithms;
pub mod client_ip;
pub mod cluster;
pub mod config;
pub mod denials;
pub mod duration;
pub mod engine;
pub mod headers;
pub mod host_status;
pub mod policy;
pub mod query;
pub mod slots;
pub mod table;
pub mod wire;

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod testing;

#[cfg(target_arch = "wasm32")]
mod host;

/// The version logged at VM start, with the git revision when built from a checkout.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+", env!("RAMPART_GIT_REV"));
