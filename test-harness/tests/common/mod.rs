#![allow(dead_code)]
//! Shared setup for the end-to-end tests.

use rampart_test_harness::envoy::{Envoy, Options};
use rampart_test_harness::upstream::Upstream;
use serde_json::Value;

pub struct Stack {
    pub envoy: Envoy,
    pub upstream: Upstream,
}

/// An upstream and one Envoy running Rampart with `plugin` on `workers` threads.
pub fn stack(plugin: &Value, workers: u32) -> Stack {
    let upstream = Upstream::start();
    let mut opts = Options::rampart(&plugin.to_string(), upstream.port);
    opts.concurrency = workers;
    let envoy = Envoy::start(&opts);
    Stack { envoy, upstream }
}

/// Reads a shipped example config.
pub fn example(name: &str) -> Value {
    let text = rampart_test_harness::read_project_file(&format!("filters/examples/{name}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("filters/examples/{name}: {e}"))
}
