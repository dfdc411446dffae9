//! The one rampart.wasm must instantiate on Envoy, Kong and APISIX: every import it has
//! must be provided by each host (filters/hosts/*.txt, sources in its README), and no
//! hostcall Rampart actually calls may trap there.

use std::collections::HashMap;

use rampart_test_harness::{rampart_wasm, read_project_file};

/// Hostcalls Rampart calls, and whether it survives a host that only stubs them.
/// Everything else the SDK links in is never called (trait defaults Rampart overrides).
const CALLED: &[(&str, &str, bool)] = &[
    ("env", "proxy_log", false),
    ("env", "proxy_get_buffer_bytes", false),
    ("env", "proxy_get_header_map_value", false),
    ("env", "proxy_add_header_map_value", false),
    ("env", "proxy_get_property", false),
    ("env", "proxy_send_local_response", false),
    ("env", "proxy_continue_stream", false),
    ("env", "proxy_http_call", false),
    ("env", "proxy_set_effective_context", false),
    // Probed or status-checked: a stub degrades (VM-local counters, no tick, no metrics).
    ("env", "proxy_get_shared_data", true),
    ("env", "proxy_set_shared_data", true),
    ("env", "proxy_set_tick_period_milliseconds", true),
    ("env", "proxy_define_metric", true),
    ("env", "proxy_increment_metric", true),
    // Sync-check batching: only where shared data behaves as Envoy's, and off when the
    // queue cannot be registered or woken.
    ("env", "proxy_register_shared_queue", true),
    ("env", "proxy_enqueue_shared_queue", true),
    ("env", "proxy_dequeue_shared_queue", true),
    ("wasi_snapshot_preview1", "clock_time_get", false),
    ("wasi_snapshot_preview1", "random_get", false),
];

fn imports() -> Vec<(String, String)> {
    let bytes = std::fs::read(rampart_wasm()).expect("read rampart.wasm");
    let mut out = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        if let Ok(wasmparser::Payload::ImportSection(reader)) = payload {
            for import in reader {
                let import = import.expect("import entry");
                out.push((import.module.to_string(), import.name.to_string()));
            }
        }
    }
    assert!(!out.is_empty(), "no imports found: not a proxy-wasm module?");
    out
}

fn host(name: &str) -> HashMap<(String, String), String> {
    read_project_file(&format!("filters/hosts/{name}.txt"))
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "filters/hosts/{name}.txt: bad line {l:?}");
            ((f[0].to_string(), f[1].to_string()), f[2].to_string())
        })
        .collect()
}

#[test]
fn every_import_is_provided_and_nothing_called_traps() {
    let imports = imports();
    for (module, name, _) in CALLED {
        assert!(
            imports.iter().any(|(m, n)| m == module && n == name),
            "{module}.{name} is listed as called but not imported: update CALLED"
        );
    }
    for h in ["envoy", "kong", "apisix"] {
        let provided = host(h);
        for (m, n) in &imports {
            assert!(
                provided.contains_key(&(m.clone(), n.clone())),
                "{h} does not provide {m}.{n}: instantiation would fail"
            );
        }
        for (m, n, tolerates_stub) in CALLED {
            let status = provided.get(&(m.to_string(), n.to_string())).map(String::as_str);
            match status {
                Some("ok") => {}
                Some("stub") if *tolerates_stub => {}
                other => panic!("{h}: Rampart calls {m}.{n}, which is {other:?} there"),
            }
        }
    }
}

#[test]
fn host_layer_declares_only_listed_hostcalls() {
    // Every raw import in src/host/abi.rs must be in CALLED, so the list stays honest.
    let abi = read_project_file("src/host/abi.rs");
    for line in abi.lines() {
        if let Some(rest) = line.trim().strip_prefix("fn proxy_") {
            let name = format!("proxy_{}", rest.split('(').next().unwrap_or(""));
            assert!(
                CALLED.iter().any(|(_, n, _)| *n == name),
                "src/host/abi.rs imports {name}, missing from CALLED"
            );
        }
    }
}
