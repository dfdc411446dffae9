//! Real processes on loopback for Rampart's end-to-end tests, `bench` and `demo`.
//!
//! Nothing here installs anything: Envoy comes from the project-local virtualenv the
//! Makefile creates (`.venv/bin/envoy`), the filter from `make wasm`. Every server is
//! started on a free 127.0.0.1 port, waited for by polling its readiness, and killed
//! when its handle drops.

pub mod envoy;
pub mod gateway;
pub mod http;
pub mod nginx;
pub mod process;
pub mod redis;
pub mod sidecar;
pub mod upstream;

use std::path::PathBuf;

/// The repository root.
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file shipped in the repository, e.g. `filters/examples/edge-and-keys.json`.
pub fn project_file(rel: &str) -> PathBuf {
    project_root().join(rel)
}

/// Reads a shipped file, with a message naming it when it is missing.
pub fn read_project_file(rel: &str) -> String {
    let path = project_file(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The built filter. `make wasm` (which `make test` runs first) writes it.
pub fn rampart_wasm() -> PathBuf {
    let p = project_file("target/wasm32-wasip1/release/rampart.wasm");
    assert!(p.exists(), "{} is missing: run `make wasm` first", p.display());
    p
}

/// The no-op filter used as the wasm ceiling in `bench`.
pub fn noop_wasm() -> PathBuf {
    let p = project_file("target/wasm32-wasip1/release/rampart_noop_filter.wasm");
    assert!(p.exists(), "{} is missing: run `make wasm` first", p.display());
    p
}
