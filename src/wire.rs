//! The HTTP bodies exchanged by the filter and rampart-sidecar (DESIGN.md §4). One
//! definition, used by both sides, so they cannot drift apart.
//!
//! `POST /v1/check`: the filter asks before forwarding (`sync` layers). Hits are applied
//! in order and the sidecar stops charging at the first rejection, so a rejected
//! request never eats quota in a later layer.
//!
//! `POST /v1/report`: the filter reports hits it already admitted (`async` layers) and
//! learns each counter's cluster-wide usage. Reported hits are always recorded, even
//! past the limit, so every gateway sees the true total.
//!
//! Keys are opaque: a keyed hash computed by the filter, never an API key in clear.

use serde::{Deserialize, Serialize};

use crate::policy::Algorithm;

/// Largest request body the sidecar accepts.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Most hits in one request.
pub const MAX_HITS: usize = 4096;
/// Header carrying the shared token when one is configured.
pub const TOKEN_HEADER: &str = "x-rampart-token";

/// The algorithm and its parameters, as the sidecar needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "snake_case")]
pub enum Rule {
    FixedWindow { limit: u64, window_ms: u64 },
    SlidingWindow { limit: u64, window_ms: u64 },
    TokenBucket { limit: u64, window_ms: u64, burst: u64 },
}

impl Rule {
    /// `None` for concurrency, which stays node-local.
    pub fn new(alg: &Algorithm, limit: u64, burst: u64) -> Option<Rule> {
        match *alg {
            Algorithm::FixedWindow { window_ms } => Some(Rule::FixedWindow { limit, window_ms }),
            Algorithm::SlidingWindow { window_ms } => Some(Rule::SlidingWindow { limit, window_ms }),
            Algorithm::TokenBucket { window_ms, .. } => Some(Rule::TokenBucket {
                limit,
                window_ms,
                burst,
            }),
            Algorithm::Concurrency => None,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match *self {
            Rule::FixedWindow { window_ms, .. } => Algorithm::FixedWindow { window_ms },
            Rule::SlidingWindow { window_ms, .. } => Algorithm::SlidingWindow { window_ms },
            Rule::TokenBucket { window_ms, burst, .. } => Algorithm::TokenBucket { window_ms, burst },
        }
    }

    pub fn limit(&self) -> u64 {
        match *self {
            Rule::FixedWindow { limit, .. } | Rule::SlidingWindow { limit, .. } | Rule::TokenBucket { limit, .. } => {
                limit
            }
        }
    }

    pub fn burst(&self) -> u64 {
        match *self {
            Rule::TokenBucket { burst, .. } => burst,
            other => other.limit(),
        }
    }

    pub fn window_ms(&self) -> u64 {
        match *self {
            Rule::FixedWindow { window_ms, .. }
            | Rule::SlidingWindow { window_ms, .. }
            | Rule::TokenBucket { window_ms, .. } => window_ms,
        }
    }

    /// Checks the numbers a client sent; the sidecar refuses a request with a bad rule.
    pub fn validate(&self) -> Result<(), String> {
        let (limit, window, burst) = (self.limit(), self.window_ms(), self.burst());
        if limit == 0 || limit > crate::config::MAX_LIMIT {
            return Err(format!(
                "limit {limit} is out of range 1..={}",
                crate::config::MAX_LIMIT
            ));
        }
        if window == 0 || window > crate::config::MAX_WINDOW_MS {
            return Err(format!(
                "window_ms {window} is out of range 1..={}",
                crate::config::MAX_WINDOW_MS
            ));
        }
        if burst == 0 || burst > crate::config::MAX_LIMIT {
            return Err(format!("burst {burst} is out of range"));
        }
        Ok(())
    }
}

/// Serialized flat (`flatten`: the rule's `algorithm`, `limit`, ... sit beside `key`);
/// read by hand (`HitVisitor`): serde's `flatten` buffers every field of every hit
/// before reading the rule, a fifth of the sidecar's time on distinct counters. Fields
/// it does not know are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// Opaque counter key (hex of a keyed hash), at most 128 characters.
    pub key: String,
    #[serde(flatten)]
    pub rule: Rule,
    /// Requests this hit stands for (async reports batch many). A report may send 0 to
    /// learn a counter's standing without recording anything.
    pub cost: u64,
    /// Keyed hashes of the client addresses behind these requests (at most
    /// `MAX_CLIENTS`), for distinct-client tracking.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// Flag or block the key when more distinct clients than this use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<Distinct>,
}

/// Most client hashes one hit carries.
pub const MAX_CLIENTS: usize = 256;

/// Adds a client hash to a hit's list: once, and no more than `MAX_CLIENTS` in all.
/// Used wherever hits are merged (async reports, coalesced sidecar calls).
pub fn add_client(clients: &mut Vec<String>, client: &str) {
    if clients.len() < MAX_CLIENTS && !clients.iter().any(|c| c == client) {
        clients.push(client.to_string());
    }
}

/// A layer's `max_ips_per_key`, as the sidecar needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Distinct {
    pub limit: u64,
    pub window_ms: u64,
    /// Block the key for `cooldown_ms` (true) or only flag it (false).
    pub block: bool,
    pub cooldown_ms: u64,
}

/// Why a key was refused regardless of its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Denied {
    /// Revoked by an operator until restored.
    Revoked,
    /// Used from too many distinct clients: blocked for the cooldown.
    Blocked,
}

/// The fields of a hit, and of the rule flattened into it.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum HitField {
    Key,
    Algorithm,
    Limit,
    WindowMs,
    Burst,
    Cost,
    Clients,
    Distinct,
    #[serde(other)]
    Other,
}

/// The names `algorithm` takes on the wire.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RuleName {
    FixedWindow,
    SlidingWindow,
    TokenBucket,
}

struct HitVisitor;

/// One field's value, refusing a second one.
fn once<'de, A: serde::de::MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    slot: &mut Option<T>,
    name: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(serde::de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

impl<'de> serde::de::Visitor<'de> for HitVisitor {
    type Value = Hit;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a hit: {\"key\", \"algorithm\", \"limit\", \"window_ms\", ...}")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Hit, A::Error> {
        use serde::de::Error;
        let (mut key, mut algorithm, mut limit, mut window_ms, mut burst) = (None, None, None, None, None);
        let (mut cost, mut clients, mut distinct) = (None, None, None);
        while let Some(field) = map.next_key::<HitField>()? {
            match field {
                HitField::Key => once(&mut map, &mut key, "key")?,
                HitField::Algorithm => once(&mut map, &mut algorithm, "algorithm")?,
                HitField::Limit => once(&mut map, &mut limit, "limit")?,
                HitField::WindowMs => once(&mut map, &mut window_ms, "window_ms")?,
                HitField::Burst => once(&mut map, &mut burst, "burst")?,
                HitField::Cost => once(&mut map, &mut cost, "cost")?,
                HitField::Clients => once(&mut map, &mut clients, "clients")?,
                HitField::Distinct => once(&mut map, &mut distinct, "distinct")?,
                HitField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let limit = limit.ok_or_else(|| A::Error::missing_field("limit"))?;
        let window_ms = window_ms.ok_or_else(|| A::Error::missing_field("window_ms"))?;
        let rule = match algorithm.ok_or_else(|| A::Error::missing_field("algorithm"))? {
            RuleName::FixedWindow => Rule::FixedWindow { limit, window_ms },
            RuleName::SlidingWindow => Rule::SlidingWindow { limit, window_ms },
            RuleName::TokenBucket => Rule::TokenBucket {
                limit,
                window_ms,
                burst: burst.ok_or_else(|| A::Error::missing_field("burst"))?,
            },
        };
        Ok(Hit {
            key: key.ok_or_else(|| A::Error::missing_field("key"))?,
            rule,
            cost: cost.unwrap_or(1),
            clients: clients.unwrap_or_default(),
            distinct: distinct.flatten(),
        })
    }
}

impl<'de> Deserialize<'de> for Hit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hit, D::Error> {
        d.deserialize_map(HitVisitor)
    }
}

pub const MAX_KEY_LEN: usize = 128;

impl Hit {
    pub fn validate(&self) -> Result<(), String> {
        if self.key.is_empty() || self.key.len() > MAX_KEY_LEN || !self.key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("key must be 1 to {MAX_KEY_LEN} visible ASCII characters"));
        }
        if self.cost > crate::config::MAX_LIMIT {
            return Err(format!("cost {} is out of range", self.cost));
        }
        if self.clients.len() > MAX_CLIENTS {
            return Err(format!("{} clients; the limit is {MAX_CLIENTS}", self.clients.len()));
        }
        if self
            .clients
            .iter()
            .any(|c| c.is_empty() || c.len() > 64 || !c.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err("clients must be 1 to 64 letters or digits (hashes)".into());
        }
        if let Some(d) = self.distinct {
            if d.limit == 0 || d.window_ms == 0 || d.cooldown_ms == 0 {
                return Err("distinct limit, window_ms and cooldown_ms must be positive".into());
            }
        }
        self.rule.validate()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub hits: Vec<Hit>,
}

/// The answer for one hit, in the order of the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_ms: u64,
    pub retry_after_ms: u64,
    /// Not evaluated because an earlier hit in the batch was rejected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Refused whatever the counter says (revoked, or blocked for too many clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<Denied>,
    /// Seen from more distinct clients than its layer allows (`action: flag`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flagged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    pub results: Vec<Outcome>,
}

/// Most requests one batched `/v1/check` carries.
pub const MAX_REQUESTS: usize = 512;

/// A `/v1/check` body: one request's ordered hits (`{"hits": [...]}`), or several
/// requests checked in one call (`{"requests": [{"hits": [...]}, ...]}`), which a
/// gateway worker sends when requests arrive faster than one call per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    One(Batch),
    Many(Vec<Batch>),
}

/// The answer to a batched check: one `Outcomes` per request, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckAnswers {
    pub requests: Vec<Outcomes>,
}

impl Check {
    /// Parses and validates a `/v1/check` body; the error names what is wrong.
    pub fn parse(body: &[u8]) -> Result<Check, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            hits: Option<Vec<Hit>>,
            requests: Option<Vec<Batch>>,
        }
        let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("body is not a check: {e}"))?;
        let check = match (raw.hits, raw.requests) {
            (Some(hits), None) => Check::One(Batch { hits }),
            (None, Some(requests)) => Check::Many(requests),
            _ => return Err("a check has either \"hits\" or \"requests\", not both or neither".into()),
        };
        match &check {
            Check::One(b) => b.validate(false)?,
            Check::Many(requests) => {
                if requests.is_empty() || requests.len() > MAX_REQUESTS {
                    return Err(format!("{} requests; 1 to {MAX_REQUESTS} per call", requests.len()));
                }
                let hits: usize = requests.iter().map(|r| r.hits.len()).sum();
                if hits > MAX_HITS {
                    return Err(format!("{hits} hits in all; the limit is {MAX_HITS}"));
                }
                for (i, r) in requests.iter().enumerate() {
                    r.validate(false).map_err(|e| format!("requests[{i}]: {e}"))?;
                }
            }
        }
        Ok(check)
    }
}

/// How many of the queued requests, with these hit counts, one batched check carries:
/// at most `MAX_REQUESTS` and `MAX_HITS` hits in all, and always at least one request
/// (a single request is never refused for its size by this count).
pub fn batch_len(hits: impl Iterator<Item = usize>) -> usize {
    let mut total = 0;
    let mut n = 0;
    for h in hits.take(MAX_REQUESTS) {
        total += h;
        if total > MAX_HITS && n > 0 {
            break;
        }
        n += 1;
    }
    n
}

/// Joins requests' already serialized `{"hits": [...]}` bodies into one batched check.
pub fn join_checks<'a>(bodies: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = b"{\"requests\":[".to_vec();
    for (i, b) in bodies.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b);
    }
    out.extend_from_slice(b"]}");
    out
}

impl Batch {
    /// `zero_cost`: whether hits may carry cost 0 (reports asking for a standing only).
    pub fn validate(&self, zero_cost: bool) -> Result<(), String> {
        if self.hits.is_empty() {
            return Err("hits is empty".into());
        }
        if self.hits.len() > MAX_HITS {
            return Err(format!("{} hits; the limit is {MAX_HITS}", self.hits.len()));
        }
        for (i, h) in self.hits.iter().enumerate() {
            if h.cost == 0 && !zero_cost {
                return Err(format!("hits[{i}]: cost 0 is only meaningful in a report"));
            }
            h.validate().map_err(|e| format!("hits[{i}]: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_flat_json() {
        let b = Batch {
            hits: vec![Hit {
                key: "ab12".into(),
                rule: Rule::SlidingWindow {
                    limit: 10,
                    window_ms: 60_000,
                },
                cost: 1,
                clients: Vec::new(),
                distinct: None,
            }],
        };
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(
            text,
            r#"{"hits":[{"key":"ab12","algorithm":"sliding_window","limit":10,"window_ms":60000,"cost":1}]}"#
        );
        assert_eq!(serde_json::from_str::<Batch>(&text).unwrap(), b);
    }

    #[test]
    fn checks_come_one_or_many() {
        let one = br#"{"hits":[{"key":"a","algorithm":"fixed_window","limit":1,"window_ms":1000}]}"#;
        let Ok(Check::One(b)) = Check::parse(one) else {
            panic!("one request refused")
        };
        let joined = join_checks([one.as_slice(), one.as_slice()].into_iter());
        assert_eq!(Check::parse(&joined), Ok(Check::Many(vec![b.clone(), b])));
        for (bad, says) in [
            (r#"{"requests":[]}"#.to_string(), "0 requests"),
            (r#"{"hits":[],"requests":[]}"#.to_string(), "not both"),
            (r#"{}"#.to_string(), "neither"),
            (r#"{"requests":[{"hits":[]}]}"#.to_string(), "requests[0]: hits is empty"),
            (r#"{"requests":[{"hits":[{"key":"a","algorithm":"fixed_window","limit":1,"window_ms":1000,"cost":0}]}]}"#.to_string(), "requests[0]: hits[0]: cost 0"),
            (r#"{"hits":[{"key":"a","algorithm":"fixed_window","limit":1,"window_ms":1000}],"x":1}"#.to_string(), "unknown field"),
            (String::from_utf8(join_checks(std::iter::repeat_n(one.as_slice(), MAX_REQUESTS + 1))).unwrap(), "513 requests"),
        ] {
            let e = Check::parse(bad.as_bytes()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn batches_stay_within_what_the_sidecar_takes() {
        assert_eq!(batch_len(std::iter::empty()), 0);
        assert_eq!(batch_len(std::iter::repeat_n(1, 10)), 10);
        assert_eq!(batch_len(std::iter::repeat_n(1, MAX_REQUESTS + 5)), MAX_REQUESTS);
        assert_eq!(batch_len(std::iter::repeat_n(64, 100)), MAX_HITS / 64);
        assert_eq!(batch_len([MAX_HITS + 1, 1].into_iter()), 1);
        assert_eq!(batch_len([MAX_HITS, 1].into_iter()), 1);
    }

    #[test]
    fn refuses_bad_hits() {
        let bad = [
            r#"{"hits":[]}"#,
            r#"{"hits":[{"key":"","algorithm":"fixed_window","limit":1,"window_ms":1}]}"#,
            r#"{"hits":[{"key":"k","algorithm":"fixed_window","limit":0,"window_ms":1}]}"#,
            r#"{"hits":[{"key":"k","algorithm":"fixed_window","limit":1,"window_ms":0}]}"#,
            r#"{"hits":[{"key":"k","algorithm":"fixed_window","limit":1,"window_ms":1,"cost":0}]}"#,
            r#"{"hits":[{"key":"k k","algorithm":"fixed_window","limit":1,"window_ms":1}]}"#,
        ];
        for b in bad {
            let parsed: Batch = serde_json::from_str(b).unwrap();
            assert!(parsed.validate(false).is_err(), "{b}");
        }
        for (bad, says) in [
            (
                r#"{"key":"k","algorithm":"leaky","limit":1,"window_ms":1}"#,
                "unknown variant `leaky`",
            ),
            (
                r#"{"algorithm":"fixed_window","limit":1,"window_ms":1}"#,
                "missing field `key`",
            ),
            (r#"{"key":"k","limit":1,"window_ms":1}"#, "missing field `algorithm`"),
            (
                r#"{"key":"k","algorithm":"fixed_window","window_ms":1}"#,
                "missing field `limit`",
            ),
            (
                r#"{"key":"k","algorithm":"token_bucket","limit":1,"window_ms":1}"#,
                "missing field `burst`",
            ),
            (
                r#"{"key":"k","key":"j","algorithm":"fixed_window","limit":1,"window_ms":1}"#,
                "duplicate field `key`",
            ),
            (
                r#"{"key":"k","algorithm":"fixed_window","limit":-1,"window_ms":1}"#,
                "invalid value",
            ),
            (
                r#"{"key":7,"algorithm":"fixed_window","limit":1,"window_ms":1}"#,
                "invalid type",
            ),
            (r#"["k","fixed_window"]"#, "a hit"),
        ] {
            let e = serde_json::from_str::<Hit>(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn hits_read_every_rule_and_ignore_fields_they_do_not_know() {
        let rules = [
            Rule::FixedWindow {
                limit: 3,
                window_ms: 1000,
            },
            Rule::SlidingWindow {
                limit: 4,
                window_ms: 2000,
            },
            Rule::TokenBucket {
                limit: 5,
                window_ms: 3000,
                burst: 7,
            },
        ];
        for rule in rules {
            let hit = Hit {
                key: "k\u{e9}".into(),
                rule,
                cost: 2,
                clients: vec!["c1".into()],
                distinct: Some(Distinct {
                    limit: 1,
                    window_ms: 2,
                    block: true,
                    cooldown_ms: 3,
                }),
            };
            let text = serde_json::to_string(&hit).unwrap();
            assert_eq!(serde_json::from_str::<Hit>(&text).unwrap(), hit, "{text}");
        }
        let sparse: Hit = serde_json::from_str(
            r#"{"burst":9,"future":{"a":[1]},"key":"k","window_ms":5,"limit":1,"algorithm":"fixed_window","distinct":null}"#,
        )
        .unwrap();
        assert_eq!(
            sparse,
            Hit {
                key: "k".into(),
                rule: Rule::FixedWindow { limit: 1, window_ms: 5 },
                cost: 1,
                clients: Vec::new(),
                distinct: None,
            },
            "a fixed window ignores burst; cost defaults to 1"
        );
    }
}
