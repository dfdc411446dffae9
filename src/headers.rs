//! Rate-limit response headers (DESIGN.md §3) and the rejection body.

use std::fmt::Write;

use crate::policy::HeaderMode;

/// The numbers of the most restrictive layer that applied to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report<'a> {
    pub layer: &'a str,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the quota is whole again.
    pub reset_s: u64,
    /// The policy window in seconds (0 for concurrency), for `RateLimit-Policy`.
    pub window_s: u64,
}

/// Header name/value pairs for `report` in the configured mode.
pub fn render(mode: HeaderMode, report: &Report) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(5);
    if matches!(mode, HeaderMode::Draft | HeaderMode::Both) {
        out.push(("x-ratelimit-limit", report.limit.to_string()));
        out.push(("x-ratelimit-remaining", report.remaining.to_string()));
        out.push(("x-ratelimit-reset", report.reset_s.to_string()));
    }
    if matches!(mode, HeaderMode::Ietf | HeaderMode::Both) {
        // draft-ietf-httpapi-ratelimit-headers: structured-field lists keyed by policy name.
        let mut policy = format!("\"{}\";q={}", report.layer, report.limit);
        if report.window_s > 0 {
            let _ = write!(policy, ";w={}", report.window_s);
        }
        out.push(("ratelimit-policy", policy));
        out.push((
            "ratelimit",
            format!("\"{}\";r={};t={}", report.layer, report.remaining, report.reset_s),
        ));
    }
    out
}

/// The JSON body of a rejection. Layer names are validated to `[A-Za-z0-9_-]`, so they
/// need no escaping.
pub fn rejection_body(error: &str, layer: &str, retry_after_s: u64) -> String {
    format!("{{\"error\":\"{error}\",\"layer\":\"{layer}\",\"retry_after\":{retry_after_s}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Report = Report {
        layer: "edge",
        limit: 100,
        remaining: 42,
        reset_s: 30,
        window_s: 60,
    };

    #[test]
    fn draft_headers() {
        let h = render(HeaderMode::Draft, &R);
        assert_eq!(
            h,
            vec![
                ("x-ratelimit-limit", "100".to_string()),
                ("x-ratelimit-remaining", "42".to_string()),
                ("x-ratelimit-reset", "30".to_string()),
            ]
        );
    }

    #[test]
    fn ietf_headers() {
        let h = render(HeaderMode::Ietf, &R);
        assert_eq!(
            h,
            vec![
                ("ratelimit-policy", "\"edge\";q=100;w=60".to_string()),
                ("ratelimit", "\"edge\";r=42;t=30".to_string()),
            ]
        );
    }

    #[test]
    fn both_and_none() {
        assert_eq!(render(HeaderMode::Both, &R).len(), 5);
        assert!(render(HeaderMode::None, &R).is_empty());
    }

    #[test]
    fn body_is_json() {
        let b = rejection_body("rate_limited", "edge", 7);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["layer"], "edge");
        assert_eq!(v["retry_after"], 7);
    }
}
