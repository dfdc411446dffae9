//! Every malformed plugin configuration is refused with one line that names the field
//! path and the reason; none panics.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use rampart::config::compile;

mod corpus;

use corpus::{cases, with_layer, OK_LAYER};

#[test]
fn malformed_configs_are_refused_with_path_and_reason() {
    let cases = cases();
    assert!(cases.len() >= 25);
    for (text, path, reason) in &cases {
        let err = match compile(text.as_bytes()) {
            Ok(_) => panic!("accepted a bad config: {text}"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with(path), "for {text}\n  got: {err}\n  want path: {path}");
        assert!(
            err.contains(reason),
            "for {text}\n  got: {err}\n  want reason containing: {reason}"
        );
        assert!(!err.contains('\n'), "error must be one line: {err:?}");
    }
}

#[test]
fn non_utf8_and_oversized_configs_are_refused() {
    let err = compile(b"{\"layers\": \xff}").map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("UTF-8"), "{err}");
    let big = vec![b' '; rampart::config::MAX_CONFIG_BYTES + 1];
    let err = compile(&big).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("bytes"), "{err}");
}

#[test]
fn hostile_values_are_shortened_in_errors() {
    let long = "x".repeat(10_000);
    let text = with_layer(&OK_LAYER.replace(r#""1m""#, &format!("\"{long}\"")));
    let err = compile(text.as_bytes()).map(|_| ()).unwrap_err().to_string();
    assert!(err.len() < 300, "error line is {} bytes", err.len());
}

#[test]
fn the_design_example_compiles_all_local() {
    // DESIGN.md §2's example with every layer local: no sidecar needed.
    let text = r#"{
      "client_ip": { "from": "peer", "trusted_hops": 0 },
      "failure_mode": "open",
      "headers": "draft",
      "layers": [
        { "name": "edge", "key": "ip", "algorithm": "sliding_window", "limit": 100, "window": "1m", "scope": "local" },
        { "name": "keys", "key": "header:x-api-key", "algorithm": "sliding_window", "limit": 1000, "window": "1m",
          "tiers": { "from": "header:x-plan", "default": "free",
                     "limits": { "free": { "limit": 100 }, "paid": { "limit": 5000 } } } },
        { "name": "orders", "match": { "path_prefix": "/orders", "methods": ["POST"] },
          "key": "route", "algorithm": "concurrency", "limit": 50, "status": 503 },
        { "name": "global", "key": "global", "algorithm": "token_bucket",
          "limit": 100000, "window": "1s", "burst": 20000, "status": 503 }
      ]
    }"#;
    let p = compile(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.layers.len(), 4);
    assert_eq!(p.layers[2].status, 503);
    assert_eq!(p.layers[3].slots, 1, "a global key needs one counter");
}

#[test]
fn the_full_design_example_compiles() {
    let text = r#"{
      "client_ip": { "from": "peer", "trusted_hops": 0 },
      "sidecar": { "upstream": "rampart_sidecar", "authority": "rampart-sidecar", "timeout": "25ms", "token": null },
      "failure_mode": "open",
      "headers": "draft",
      "layers": [
        { "name": "edge", "key": "ip", "algorithm": "sliding_window",
          "limit": 100, "window": "1m", "scope": "local" },
        { "name": "keys", "key": "header:x-api-key", "algorithm": "sliding_window",
          "limit": 1000, "window": "1m", "scope": "cluster", "sync": "async", "sync_interval": "100ms",
          "fallback": { "limit": 200 },
          "tiers": { "from": "header:x-plan", "default": "free",
                     "limits": { "free": { "limit": 100 }, "paid": { "limit": 5000 } } } },
        { "name": "orders", "match": { "path_prefix": "/orders", "methods": ["POST"] },
          "key": "route", "algorithm": "concurrency", "limit": 50, "status": 503 },
        { "name": "global", "key": "global", "algorithm": "token_bucket",
          "limit": 100000, "window": "1s", "burst": 20000, "scope": "cluster", "sync": "sync", "status": 503 }
      ]
    }"#;
    let p = compile(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.layers[1].cluster.as_ref().and_then(|c| c.fallback_limit), Some(200));
    assert_eq!(
        p.layers[1].table_slots(),
        p.layers[1].slots,
        "fallback counters are node-local"
    );
    assert_eq!(p.layers[3].table_slots(), 0, "no fallback: no local table");
}

#[test]
fn every_shipped_example_compiles() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/filters/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("filters/examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read(&path).expect("read example");
            if let Err(e) = compile(&text) {
                panic!("{}: {e}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 4, "only {n} examples");
}
