//! What only Envoy shows: its admin metrics, header modes, and the shipped envoy.yaml.
//! The cases every host must pass run on all three proxies in `hosts_local.rs`.

mod common;

use common::{count, example, stack, statuses};
use rampart_test_harness::envoy::{Envoy, Options};
use rampart_test_harness::upstream::Upstream;
use serde_json::json;

#[test]
fn header_modes_draft_ietf_both_none() {
    let upstream = Upstream::start();
    for mode in ["draft", "ietf", "both", "none"] {
        let plugin = json!({"headers": mode, "layers": [
            {"name": "edge", "key": "ip", "algorithm": "fixed_window", "limit": 10, "window": "1m"}]});
        let envoy = Envoy::start(&Options::rampart(&plugin.to_string(), upstream.port));
        let r = envoy.client().get("/", &[]).unwrap();
        assert_eq!(r.status, 200);
        let draft = r.header("x-ratelimit-remaining").is_some();
        let ietf = r.header("ratelimit").is_some();
        assert_eq!(
            (draft, ietf),
            (mode == "draft" || mode == "both", mode == "ietf" || mode == "both"),
            "{mode}"
        );
        if ietf {
            assert_eq!(r.header("ratelimit-policy"), Some("\"edge\";q=10;w=60"));
            let rl = r.header("ratelimit").unwrap();
            assert!(rl.starts_with("\"edge\";r=9;t="), "{rl}");
        }
    }
}

#[test]
fn shadow_layer_counts_and_reports_but_never_rejects() {
    let plugin = json!({"layers": [
        {"name": "trial", "key": "global", "algorithm": "fixed_window", "limit": 3, "window": "1h", "shadow": true}]});
    let s = stack(&plugin, 1);
    let mut c = s.envoy.client();
    let got: Vec<_> = (0..8).map(|_| c.get("/", &[]).unwrap()).collect();
    assert!(got.iter().all(|r| r.status == 200));
    assert_eq!(got[7].header_u64("x-ratelimit-remaining"), Some(0));
    s.envoy.metrics_reach(&[
        ("rampart_trial_allowed", 3.0),
        ("rampart_trial_shadow_rejected", 5.0),
        ("rampart_trial_rejected", 0.0),
    ]);
}

#[test]
fn metrics_match_what_clients_saw() {
    let plugin = json!({"layers": [
        {"name": "edge", "key": "ip", "algorithm": "fixed_window", "limit": 7, "window": "1h"},
        {"name": "api-keys", "key": "header:x-api-key", "algorithm": "fixed_window", "limit": 2, "window": "1h"}]});
    let s = stack(&plugin, 2);
    let mut c = s.envoy.client();
    let with_key = statuses(&mut c, "/", &[("x-api-key", b"k1")], 4);
    let without = statuses(&mut c, "/", &[], 6);
    assert_eq!(with_key, [200, 200, 429, 429]);
    assert_eq!(count(&without, 200), 3);
    s.envoy.metrics_reach(&[
        ("rampart_edge_allowed", 7.0),
        ("rampart_edge_rejected", 3.0),
        ("rampart_api_keys_allowed", 2.0),
        ("rampart_api_keys_rejected", 2.0),
        ("rampart_edge_store_errors", 0.0),
    ]);
}

#[test]
fn shipped_envoy_yaml_embeds_the_shipped_example() {
    let yaml: serde_json::Value =
        serde_norway::from_str(&rampart_test_harness::read_project_file("filters/envoy/envoy.yaml")).unwrap();
    let filters =
        &yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
    let embedded = filters[0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap();
    let embedded: serde_json::Value = serde_json::from_str(embedded).unwrap();
    assert_eq!(
        embedded,
        example("edge-and-keys.json"),
        "envoy.yaml and edge-and-keys.json drifted apart"
    );
}
