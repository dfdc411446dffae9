//! Malformed plugin configurations shared by the refusal tests and the JSON Schema
//! agreement test: (config text, expected start of the error line, reason fragment).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
#![allow(dead_code)]

/// A valid layer that each case mutates.
pub const OK_LAYER: &str = r#"{"name":"edge","key":"ip","algorithm":"fixed_window","limit":10,"window":"1m"}"#;

pub fn with_layer(layer: &str) -> String {
    format!(r#"{{"layers":[{layer}]}}"#)
}

/// (config text, expected start of the error line, expected fragment of the reason)
pub fn cases() -> Vec<(String, &'static str, &'static str)> {
    let l = |extra: &str| with_layer(&OK_LAYER.replacen('{', &format!("{{{extra},"), 1));
    let replace = |from: &str, to: &str| with_layer(&OK_LAYER.replace(from, to));
    vec![
        // Whole-document problems.
        ("".into(), "configuration:", "empty"),
        ("{".into(), "configuration:", "not valid JSON"),
        ("[]".into(), "configuration:", "expected an object"),
        ("{}".into(), "layers:", "required"),
        (r#"{"layers":[]}"#.into(), "layers:", "empty"),
        (r#"{"layers":{}}"#.into(), "layers:", "expected a list"),
        (
            format!(r#"{{"layers":[{OK_LAYER}],"bogus":1}}"#),
            "bogus:",
            "unknown field",
        ),
        // Layer fields.
        (l(r#""extra":true"#), "layers[0].extra:", "unknown field"),
        (replace(r#""name":"edge","#, ""), "layers[0].name:", "required"),
        (replace(r#""edge""#, r#""has space""#), "layers[0].name:", "A-Z"),
        (replace(r#""edge""#, "7"), "layers[0].name:", "expected a string"),
        (
            format!(r#"{{"layers":[{OK_LAYER},{OK_LAYER}]}}"#),
            "layers[1].name:",
            "earlier layer",
        ),
        (
            replace(r#""limit":10"#, r#""limit":0"#),
            "layers[0].limit:",
            "out of range",
        ),
        (
            replace(r#""limit":10"#, r#""limit":-5"#),
            "layers[0].limit:",
            "out of range",
        ),
        (
            replace(r#""limit":10"#, r#""limit":1.5"#),
            "layers[0].limit:",
            "whole number",
        ),
        (
            replace(r#""limit":10"#, r#""limit":"10""#),
            "layers[0].limit:",
            "whole number",
        ),
        (replace(r#","limit":10"#, ""), "layers[0].limit:", "required"),
        (
            replace(r#""1m""#, r#""1x""#),
            "layers[0].window:",
            "\"1x\" is not a duration",
        ),
        (replace(r#""1m""#, "60"), "layers[0].window:", "duration string"),
        (replace(r#""1m""#, r#""0s""#), "layers[0].window:", "out of range"),
        (replace(r#","window":"1m""#, ""), "layers[0].window:", "required"),
        (replace("fixed_window", "leaky"), "layers[0].algorithm:", "not one of"),
        (
            replace(r#""key":"ip""#, r#""key":"cookie:x""#),
            "layers[0].key:",
            "not a key",
        ),
        (
            replace(r#""key":"ip""#, r#""key":"header:""#),
            "layers[0].key:",
            "valid header",
        ),
        (
            replace(r#""key":"ip""#, r#""key":"header:bad name""#),
            "layers[0].key:",
            "valid header",
        ),
        (replace(r#""key":"ip""#, r#""key":[]"#), "layers[0].key:", "empty list"),
        (
            replace(r#""key":"ip""#, r#""key":["ip","ip"]"#),
            "layers[0].key[1]:",
            "twice",
        ),
        (
            replace(r#""key":"ip""#, r#""key":["ip",3]"#),
            "layers[0].key[1]:",
            "expected a key",
        ),
        (
            replace(r#""key":"ip""#, r#""key":"query:a&b""#),
            "layers[0].key:",
            "query parameter",
        ),
        (l(r#""burst":5"#), "layers[0].burst:", "token_bucket"),
        (l(r#""status":200"#), "layers[0].status:", "out of range"),
        (l(r#""shadow":"yes""#), "layers[0].shadow:", "true or false"),
        (l(r#""missing":"maybe""#), "layers[0].missing:", "not one of"),
        (l(r#""scope":"planet""#), "layers[0].scope:", "not one of"),
        (l(r#""sync":"sync""#), "layers[0].sync:", "scope"),
        (l(r#""fallback":{"limit":3}"#), "layers[0].fallback:", "scope"),
        (l(r#""scope":"cluster""#), "layers[0].scope:", "sidecar"),
        (
            with_layer(r#"{"name":"c","key":"route","algorithm":"concurrency","limit":5,"scope":"cluster"}"#),
            "layers[0].scope:",
            "in flight",
        ),
        (
            format!(r#"{{"sidecar":{{"upstream":"s","key_secret":"short"}},"layers":[{OK_LAYER}]}}"#),
            "sidecar.key_secret:",
            "16",
        ),
        (l(r#""slots":0"#), "layers[0].slots:", "out of range"),
        (
            replace(r#""key":"ip""#, r#""key":"global","slots":8"#),
            "layers[0].slots:",
            "one counter",
        ),
        (
            l(r#""match":{"path_prefix":"orders"}"#),
            "layers[0].match.path_prefix:",
            "start with",
        ),
        (
            l(r#""match":{"methods":["get"]}"#),
            "layers[0].match.methods[0]:",
            "upper-case",
        ),
        (l(r#""match":{"methods":[]}"#), "layers[0].match.methods:", "empty"),
        (l(r#""match":{"host":"x"}"#), "layers[0].match.host:", "unknown field"),
        (
            l(r#""tiers":{"from":"header:x-plan","limits":{"free":{"limit":1}}}"#),
            "layers[0].tiers.default:",
            "required",
        ),
        (
            l(r#""tiers":{"from":"header:x-plan","default":"gold","limits":{"free":{"limit":1}}}"#),
            "layers[0].tiers.default:",
            "not one of the tiers",
        ),
        (
            l(r#""tiers":{"from":"query:plan","default":"free","limits":{"free":{"limit":1}}}"#),
            "layers[0].tiers.from:",
            "header:",
        ),
        (
            l(r#""tiers":{"from":"header:x-plan","default":"free","limits":{}}"#),
            "layers[0].tiers.limits:",
            "empty",
        ),
        (
            l(r#""tiers":{"from":"header:x-plan","default":"free","limits":{"free":{"limit":0}}}"#),
            "layers[0].tiers.limits.free.limit:",
            "out of range",
        ),
        (
            l(r#""tiers":{"from":"header:x-plan","default":"free","limits":{"free":{"rate":1}}}"#),
            "layers[0].tiers.limits.free.rate:",
            "unknown field",
        ),
        (
            with_layer(r#"{"name":"c","key":"route","algorithm":"concurrency","limit":5,"window":"1s"}"#),
            "layers[0].window:",
            "in flight",
        ),
        // Top-level blocks.
        (
            format!(r#"{{"headers":"loud","layers":[{OK_LAYER}]}}"#),
            "headers:",
            "not one of",
        ),
        (
            format!(r#"{{"failure_mode":"sideways","layers":[{OK_LAYER}]}}"#),
            "failure_mode:",
            "not one of",
        ),
        (
            format!(r#"{{"client_ip":{{"from":"cookie"}},"layers":[{OK_LAYER}]}}"#),
            "client_ip.from:",
            "not one of",
        ),
        (
            format!(r#"{{"client_ip":{{"from":"peer","trusted_hops":2}},"layers":[{OK_LAYER}]}}"#),
            "client_ip.trusted_hops:",
            "xff",
        ),
        (
            format!(r#"{{"client_ip":{{"from":"xff","trusted_hops":99}},"layers":[{OK_LAYER}]}}"#),
            "client_ip.trusted_hops:",
            "out of range",
        ),
        (
            format!(r#"{{"sidecar":{{"authority":"x"}},"layers":[{OK_LAYER}]}}"#),
            "sidecar.upstream:",
            "required",
        ),
        (
            format!(r#"{{"sidecar":{{"upstream":"s","timeout":"forever"}},"layers":[{OK_LAYER}]}}"#),
            "sidecar.timeout:",
            "not a duration",
        ),
        (
            format!(r#"{{"sidecar":{{"upstream":"s","token":"a b"}},"layers":[{OK_LAYER}]}}"#),
            "sidecar.token:",
            "visible ASCII",
        ),
        (
            l(r#""max_ips_per_key":{"limit":5,"window":"10m"}"#),
            "layers[0].max_ips_per_key:",
            "scope",
        ),
        (
            format!(
                r#"{{"sidecar":{{"upstream":"s"}},"layers":[{}]}}"#,
                OK_LAYER.replacen(
                    '{',
                    r#"{"scope":"cluster","max_ips_per_key":{"limit":0,"window":"10m"},"#,
                    1
                )
            ),
            "layers[0].max_ips_per_key.limit:",
            "out of range",
        ),
        (
            format!(
                r#"{{"sidecar":{{"upstream":"s"}},"layers":[{}]}}"#,
                OK_LAYER.replacen(
                    '{',
                    r#"{"scope":"cluster","max_ips_per_key":{"limit":5,"window":"10m","action":"ban"},"#,
                    1
                )
            ),
            "layers[0].max_ips_per_key.action:",
            "not one of",
        ),
        (
            format!(
                r#"{{"sidecar":{{"upstream":"s"}},"layers":[{}]}}"#,
                OK_LAYER.replacen(
                    '{',
                    r#"{"scope":"cluster","max_ips_per_key":{"limit":5,"window":"10m","cooldown":"1h"},"#,
                    1
                )
            ),
            "layers[0].max_ips_per_key.cooldown:",
            "block",
        ),
    ]
}
