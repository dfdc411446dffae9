//! Plugin JSON (DESIGN.md §2) → `Policy`.
//!
//! Validation walks the JSON by hand instead of deriving serde types so that every
//! refusal names the exact field path and says what is wrong in the operator's terms,
//! e.g. `layers[2].window: "1x" is not a duration`. Unknown fields are errors.

use std::collections::HashSet;
use std::fmt;

use serde_json::{Map, Value};

use crate::duration::parse_millis;
use crate::policy::*;

/// Largest plugin configuration accepted, in bytes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
pub const MAX_LAYERS: usize = 64;
pub const MAX_KEY_PARTS: usize = 8;
pub const MAX_LIMIT: u64 = 1_000_000_000_000;
pub const MAX_WINDOW_MS: u64 = 366 * 86_400_000;
pub const MAX_TRUSTED_HOPS: u64 = 16;
/// Default size of a layer's counter table; see `slots.rs` for the trade-off.
pub const DEFAULT_SLOTS: u64 = 16_384;
pub const MAX_SLOTS: u64 = 1 << 20;
pub const DEFAULT_STATUS: u16 = 429;
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
pub const DEFAULT_SIDECAR_TIMEOUT_MS: u64 = 25;
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 100;

/// A refused configuration: the JSON path of the offending field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "configuration: {}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

type Result<T> = std::result::Result<T, ConfigError>;

fn err<T>(path: impl Into<String>, reason: impl Into<String>) -> Result<T> {
    Err(ConfigError {
        path: path.into(),
        reason: reason.into(),
    })
}

/// A JSON value shown in an error message, shortened so hostile input cannot
/// flood the log.
fn show(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 64 {
        let short: String = text.chars().take(61).collect();
        format!("{short}...")
    } else {
        text
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// One JSON object being read, with its path and its allowed field names.
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn new(path: &str, v: &'a Value, allowed: &[&str]) -> Result<Self> {
        let Value::Object(map) = v else {
            return err(path, format!("expected an object, got {}", kind(v)));
        };
        let obj = Obj {
            path: path.to_string(),
            map,
        };
        for k in map.keys() {
            if !allowed.contains(&k.as_str()) {
                let shown = show(&Value::String(k.clone()));
                return err(
                    obj.at(k),
                    format!("unknown field {shown}; expected one of: {}", allowed.join(", ")),
                );
            }
        }
        Ok(obj)
    }

    fn at(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    /// The field's value; JSON `null` counts as absent.
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    fn has(&self, k: &str) -> bool {
        self.get(k).is_some()
    }

    fn str(&self, k: &str) -> Result<Option<&'a str>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => err(self.at(k), format!("expected a string, got {}", show(v))),
        }
    }

    fn required_str(&self, k: &str) -> Result<&'a str> {
        self.str(k)?.map_or_else(|| err(self.at(k), "is required"), Ok)
    }

    fn choice(&self, k: &str, options: &[&'static str]) -> Result<Option<&'static str>> {
        let Some(s) = self.str(k)? else {
            return Ok(None);
        };
        match options.iter().find(|o| **o == s) {
            Some(o) => Ok(Some(o)),
            None => err(
                self.at(k),
                format!(
                    "{} is not one of: {}",
                    show(&Value::String(s.into())),
                    options.join(", ")
                ),
            ),
        }
    }

    fn bool(&self, k: &str) -> Result<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => err(self.at(k), format!("expected true or false, got {}", show(v))),
        }
    }

    /// An integer in `min..=max`.
    fn int(&self, k: &str, min: u64, max: u64) -> Result<Option<u64>> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        match (v.as_u64(), v.as_i64()) {
            (Some(n), _) if (min..=max).contains(&n) => Ok(Some(n)),
            (Some(_), _) | (None, Some(_)) => err(self.at(k), format!("{} is out of range {min}..={max}", show(v))),
            _ => err(
                self.at(k),
                format!("expected a whole number in {min}..={max}, got {}", show(v)),
            ),
        }
    }

    fn duration(&self, k: &str, min_ms: u64, max_ms: u64) -> Result<Option<u64>> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        let Value::String(s) = v else {
            return err(
                self.at(k),
                format!(
                    "expected a duration string such as \"1s\" or \"250ms\", got {}",
                    show(v)
                ),
            );
        };
        let Some(ms) = parse_millis(s) else {
            return err(
                self.at(k),
                format!(
                    "{} is not a duration (use a whole number with ms, s, m, h or d)",
                    show(v)
                ),
            );
        };
        if !(min_ms..=max_ms).contains(&ms) {
            return err(
                self.at(k),
                format!("{} is out of range {min_ms}ms..={max_ms}ms", show(v)),
            );
        }
        Ok(Some(ms))
    }
}

/// Parses and compiles the plugin configuration.
pub fn compile(bytes: &[u8]) -> Result<Policy> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return err("", format!("is {} bytes; the limit is {MAX_CONFIG_BYTES}", bytes.len()));
    }
    let text = std::str::from_utf8(bytes).or_else(|e| err("", format!("is not UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return err("", "is empty; give at least {\"layers\": [...]}");
    }
    let root: Value = serde_json::from_str(text).or_else(|e| err("", format!("is not valid JSON ({e})")))?;
    compile_value(&root)
}

pub fn compile_value(root: &Value) -> Result<Policy> {
    let top = Obj::new("", root, &["client_ip", "sidecar", "failure_mode", "headers", "layers"])?;
    let (ip_source, ipv6_prefix) = client_ip(&top)?;
    let sidecar = match top.get("sidecar") {
        None => None,
        Some(v) => Some(sidecar(v)?),
    };
    let failure_mode = match top.choice("failure_mode", &["open", "closed"])? {
        Some("closed") => FailureMode::Closed,
        _ => FailureMode::Open,
    };
    let headers = match top.choice("headers", &["draft", "ietf", "both", "none"])? {
        Some("ietf") => HeaderMode::Ietf,
        Some("both") => HeaderMode::Both,
        Some("none") => HeaderMode::None,
        _ => HeaderMode::Draft,
    };
    let layers_value = top.get("layers").map_or_else(|| err("layers", "is required"), Ok)?;
    let Value::Array(items) = layers_value else {
        return err(
            "layers",
            format!("expected a list of layers, got {}", kind(layers_value)),
        );
    };
    if items.is_empty() {
        return err("layers", "is empty; give at least one layer");
    }
    if items.len() > MAX_LAYERS {
        return err(
            "layers",
            format!("has {} layers; the limit is {MAX_LAYERS}", items.len()),
        );
    }
    let mut layers = Vec::with_capacity(items.len());
    let mut names = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("layers[{i}]");
        let l = layer(&path, item)?;
        if !names.insert(l.name.clone()) {
            return err(
                format!("{path}.name"),
                format!("{:?} is used by an earlier layer", l.name),
            );
        }
        if l.scope == Scope::Cluster && sidecar.is_none() {
            return err(
                format!("{path}.scope"),
                "\"cluster\" needs a top-level \"sidecar\" block",
            );
        }
        layers.push(l);
    }
    Ok(Policy {
        ip_source,
        ipv6_prefix,
        sidecar,
        failure_mode,
        headers,
        layers,
    })
}

fn client_ip(top: &Obj) -> Result<(IpSource, u8)> {
    let Some(v) = top.get("client_ip") else {
        return Ok((IpSource::Peer, DEFAULT_IPV6_PREFIX));
    };
    let o = Obj::new("client_ip", v, &["from", "trusted_hops", "ipv6_prefix"])?;
    let hops = o.int("trusted_hops", 0, MAX_TRUSTED_HOPS)?;
    let prefix = o.int("ipv6_prefix", 1, 128)?.map_or(DEFAULT_IPV6_PREFIX, |p| p as u8);
    let source = match o.choice("from", &["peer", "xff"])? {
        Some("xff") => IpSource::Xff {
            trusted_hops: hops.unwrap_or(0) as u32,
        },
        _ if hops.unwrap_or(0) != 0 => {
            return err(
                "client_ip.trusted_hops",
                "only applies with \"from\": \"xff\"; the peer address has no hops",
            )
        }
        _ => IpSource::Peer,
    };
    Ok((source, prefix))
}

fn sidecar(v: &Value) -> Result<Sidecar> {
    let o = Obj::new(
        "sidecar",
        v,
        &["upstream", "authority", "timeout", "token", "key_secret"],
    )?;
    let upstream = o.required_str("upstream")?;
    if upstream.is_empty() {
        return err(
            "sidecar.upstream",
            "is empty; name the Envoy cluster (or host:port) of rampart-sidecar",
        );
    }
    let authority = o.str("authority")?.unwrap_or("rampart-sidecar");
    if authority.is_empty() || authority.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return err(
            "sidecar.authority",
            "must be a non-empty host name without spaces or control characters",
        );
    }
    let timeout_ms = o.duration("timeout", 1, 10_000)?.unwrap_or(DEFAULT_SIDECAR_TIMEOUT_MS);
    let token = o.str("token")?;
    if let Some(t) = token {
        if t.is_empty() || t.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return err(
                "sidecar.token",
                "must be non-empty visible ASCII (it travels in a header)",
            );
        }
    }
    let key_secret = o.str("key_secret")?;
    if key_secret.is_some_and(|k| k.len() < 16) {
        return err(
            "sidecar.key_secret",
            "must be at least 16 characters: it keys the hash that hides client keys",
        );
    }
    Ok(Sidecar {
        key_secret: key_secret.map(str::to_string),
        upstream: upstream.to_string(),
        authority: authority.to_string(),
        timeout_ms,
        token: token.map(str::to_string),
    })
}

const LAYER_FIELDS: &[&str] = &[
    "name",
    "match",
    "key",
    "missing",
    "algorithm",
    "limit",
    "window",
    "burst",
    "scope",
    "sync",
    "sync_interval",
    "fallback",
    "tiers",
    "status",
    "shadow",
    "slots",
    "max_ips_per_key",
];

fn layer(path: &str, v: &Value) -> Result<Layer> {
    let o = Obj::new(path, v, LAYER_FIELDS)?;
    let name = o.required_str("name")?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return err(
            o.at("name"),
            format!(
                "{} must be 1 to 64 characters of A-Z, a-z, 0-9, _ or -",
                show(&Value::String(name.into()))
            ),
        );
    }
    let matcher = match o.get("match") {
        None => Match::default(),
        Some(m) => matcher(&o.at("match"), m)?,
    };
    let key = key_spec(&o.at("key"), o.get("key"))?;
    let deny_missing = o.choice("missing", &["skip", "deny"])? == Some("deny");
    let algorithm_name = o
        .choice(
            "algorithm",
            &["fixed_window", "sliding_window", "token_bucket", "concurrency"],
        )?
        .map_or_else(|| err(o.at("algorithm"), "is required"), Ok)?;
    let limit = o
        .int("limit", 1, MAX_LIMIT)?
        .map_or_else(|| err(o.at("limit"), "is required"), Ok)?;
    let window = o.duration("window", 1, MAX_WINDOW_MS)?;
    let burst = o.int("burst", 1, MAX_LIMIT)?;
    let algorithm = match algorithm_name {
        "concurrency" => {
            if window.is_some() {
                return err(
                    o.at("window"),
                    "does not apply to \"concurrency\", which counts requests in flight",
                );
            }
            Algorithm::Concurrency
        }
        other => {
            let window_ms = window.map_or_else(|| err(o.at("window"), format!("is required for {other:?}")), Ok)?;
            match other {
                "fixed_window" => Algorithm::FixedWindow { window_ms },
                "sliding_window" => Algorithm::SlidingWindow { window_ms },
                _ => Algorithm::TokenBucket {
                    window_ms,
                    burst: burst.unwrap_or(limit),
                },
            }
        }
    };
    if burst.is_some() && !matches!(algorithm, Algorithm::TokenBucket { .. }) {
        return err(o.at("burst"), "only applies to \"token_bucket\"");
    }
    let tiers = match o.get("tiers") {
        None => None,
        Some(t) => Some(tiers(&o.at("tiers"), t, &algorithm)?),
    };
    let scope = match o.choice("scope", &["local", "cluster"])? {
        Some("cluster") => Scope::Cluster,
        _ => Scope::Local,
    };
    if scope == Scope::Cluster && algorithm == Algorithm::Concurrency {
        return err(
            o.at("scope"),
            "\"concurrency\" counts requests in flight on this node; use \"local\"",
        );
    }
    let cluster = cluster_fields(&o, scope)?;
    let status = o.int("status", 400, 599)?.map_or(DEFAULT_STATUS, |s| s as u16);
    let shadow = o.bool("shadow")?.unwrap_or(false);
    let per_client = key.iter().any(|k| !matches!(k, KeyPart::Global | KeyPart::Route));
    let slots = match o.int("slots", 1, MAX_SLOTS)? {
        Some(_) if !per_client => {
            return err(
                o.at("slots"),
                "does not apply: a \"global\" or \"route\" key has one counter",
            )
        }
        Some(n) => n as u32,
        None if per_client => DEFAULT_SLOTS as u32,
        None => 1,
    };
    Ok(Layer {
        name: name.to_string(),
        matcher,
        key,
        deny_missing,
        algorithm,
        limit,
        tiers,
        scope,
        cluster,
        status,
        shadow,
        slots,
    })
}

fn cluster_fields(o: &Obj, scope: Scope) -> Result<Option<Cluster>> {
    if scope == Scope::Local {
        for k in ["sync", "sync_interval", "fallback", "max_ips_per_key"] {
            if o.has(k) {
                return err(o.at(k), "only applies with \"scope\": \"cluster\"");
            }
        }
        return Ok(None);
    }
    let sync = match o.choice("sync", &["sync", "async"])? {
        Some("sync") => SyncMode::Sync,
        _ => SyncMode::Async,
    };
    let interval = o.duration("sync_interval", 10, 60_000)?;
    if interval.is_some() && sync == SyncMode::Sync {
        return err(o.at("sync_interval"), "only applies with \"sync\": \"async\"");
    }
    let fallback_limit = match o.get("fallback") {
        None => None,
        Some(f) => {
            let f = Obj::new(&o.at("fallback"), f, &["limit"])?;
            Some(
                f.int("limit", 1, MAX_LIMIT)?
                    .map_or_else(|| err(f.at("limit"), "is required"), Ok)?,
            )
        }
    };
    let distinct = match o.get("max_ips_per_key") {
        None => None,
        Some(v) => {
            let d = Obj::new(&o.at("max_ips_per_key"), v, &["limit", "window", "action", "cooldown"])?;
            let limit = d
                .int("limit", 1, 1_000_000)?
                .map_or_else(|| err(d.at("limit"), "is required"), Ok)?;
            let window_ms = d
                .duration("window", 1_000, 86_400_000)?
                .map_or_else(|| err(d.at("window"), "is required"), Ok)?;
            let block = d.choice("action", &["flag", "block"])? == Some("block");
            let cooldown = d.duration("cooldown", 1_000, 7 * 86_400_000)?;
            if cooldown.is_some() && !block {
                return err(d.at("cooldown"), "only applies with \"action\": \"block\"");
            }
            Some(crate::wire::Distinct {
                limit,
                window_ms,
                block,
                cooldown_ms: cooldown.unwrap_or(window_ms),
            })
        }
    };
    Ok(Some(Cluster {
        sync,
        sync_interval_ms: interval.unwrap_or(DEFAULT_SYNC_INTERVAL_MS),
        fallback_limit,
        distinct,
    }))
}

fn matcher(path: &str, v: &Value) -> Result<Match> {
    let o = Obj::new(path, v, &["path_prefix", "methods"])?;
    let path_prefix = o.str("path_prefix")?;
    if let Some(p) = path_prefix {
        if !p.starts_with('/') {
            return err(
                o.at("path_prefix"),
                format!("{} must start with \"/\"", show(&Value::String(p.into()))),
            );
        }
    }
    let mut methods = Vec::new();
    if let Some(m) = o.get("methods") {
        let Value::Array(items) = m else {
            return err(
                o.at("methods"),
                format!("expected a list such as [\"GET\", \"POST\"], got {}", show(m)),
            );
        };
        if items.is_empty() {
            return err(o.at("methods"), "is empty; leave it out to match every method");
        }
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) if !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_uppercase()) => {
                    methods.push(s.to_string())
                }
                _ => {
                    return err(
                        format!("{}[{i}]", o.at("methods")),
                        format!("{} is not an upper-case HTTP method such as \"GET\"", show(item)),
                    )
                }
            }
        }
    }
    Ok(Match {
        path_prefix: path_prefix.map(str::to_string),
        methods,
    })
}

/// Header names as HTTP/2 carries them: lower-case token characters.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn key_part(path: &str, v: &Value) -> Result<KeyPart> {
    let Some(s) = v.as_str() else {
        return err(
            path,
            format!("expected a key such as \"ip\" or \"header:x-api-key\", got {}", show(v)),
        );
    };
    let part = match s {
        "ip" => KeyPart::Ip,
        "global" => KeyPart::Global,
        "route" => KeyPart::Route,
        _ => {
            if let Some(h) = s.strip_prefix("header:") {
                if !valid_header_name(h) {
                    return err(path, format!("{} does not name a valid header", show(v)));
                }
                KeyPart::Header(h.to_ascii_lowercase())
            } else if let Some(q) = s.strip_prefix("query:") {
                if q.is_empty() || q.len() > 128 || q.bytes().any(|b| b <= b' ' || b"&=#".contains(&b) || b >= 0x7f) {
                    return err(path, format!("{} does not name a valid query parameter", show(v)));
                }
                KeyPart::Query(q.to_string())
            } else {
                return err(
                    path,
                    format!(
                        "{} is not a key; use ip, global, route, header:<name> or query:<name>",
                        show(v)
                    ),
                );
            }
        }
    };
    Ok(part)
}

fn key_spec(path: &str, v: Option<&Value>) -> Result<Vec<KeyPart>> {
    let Some(v) = v else {
        return err(path, "is required");
    };
    let parts = match v {
        Value::Array(items) => {
            if items.is_empty() {
                return err(path, "is an empty list; give at least one key part");
            }
            if items.len() > MAX_KEY_PARTS {
                return err(path, format!("has {} parts; the limit is {MAX_KEY_PARTS}", items.len()));
            }
            let mut parts = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let p = key_part(&format!("{path}[{i}]"), item)?;
                if parts.contains(&p) {
                    return err(format!("{path}[{i}]"), format!("{} appears twice", show(item)));
                }
                parts.push(p);
            }
            parts
        }
        other => vec![key_part(path, other)?],
    };
    Ok(parts)
}

fn tiers(path: &str, v: &Value, algorithm: &Algorithm) -> Result<Tiers> {
    let o = Obj::new(path, v, &["from", "default", "limits"])?;
    let from = o.required_str("from")?;
    let from_header = match from.strip_prefix("header:") {
        Some(h) if valid_header_name(h) => h.to_ascii_lowercase(),
        _ => {
            return err(
                o.at("from"),
                format!("{} must be \"header:<name>\"", show(&Value::String(from.into()))),
            )
        }
    };
    let default = o.str("default")?.map_or_else(
        || {
            err(
                o.at("default"),
                "is required: the tier used when the header is absent or unknown",
            )
        },
        Ok,
    )?;
    let limits = o.get("limits").map_or_else(|| err(o.at("limits"), "is required"), Ok)?;
    let Value::Object(map) = limits else {
        return err(
            o.at("limits"),
            format!("expected an object of tier names, got {}", kind(limits)),
        );
    };
    if map.is_empty() {
        return err(o.at("limits"), "is empty; name at least the default tier");
    }
    let mut list = Vec::with_capacity(map.len());
    for (name, t) in map {
        let tpath = format!("{}.{}", o.at("limits"), name);
        if name.is_empty() || name.len() > 64 {
            return err(tpath, "tier names must be 1 to 64 characters");
        }
        let to = Obj::new(&tpath, t, &["limit", "burst"])?;
        let limit = to
            .int("limit", 1, MAX_LIMIT)?
            .map_or_else(|| err(to.at("limit"), "is required"), Ok)?;
        let burst = to.int("burst", 1, MAX_LIMIT)?;
        if burst.is_some() && !matches!(algorithm, Algorithm::TokenBucket { .. }) {
            return err(to.at("burst"), "only applies to \"token_bucket\"");
        }
        list.push(Tier {
            name: name.clone(),
            limit,
            burst,
        });
    }
    let Some(default) = list.iter().position(|t| t.name == default) else {
        return err(
            o.at("default"),
            format!(
                "{} is not one of the tiers in \"limits\"",
                show(&Value::String(default.into()))
            ),
        );
    };
    Ok(Tiers {
        from_header,
        default,
        tiers: list,
    })
}
