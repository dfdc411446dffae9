//! The HTTP API (DESIGN.md §4): `POST /v1/check`, `POST /v1/report`, `GET /healthz`,
//! `GET /metrics`. Bodies are `rampart::wire` JSON. Every refusal names its reason.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use rampart::wire::{Batch, Check, CheckAnswers, Hit, Outcomes, MAX_BODY_BYTES, TOKEN_HEADER};

use crate::engine::Engine;
use crate::metrics::METRICS;
use crate::store::{Store, StoreError};

pub struct App {
    pub engine: Arc<Engine>,
    pub store: Arc<Store>,
    pub token: Option<String>,
    /// The admin API (`/v1/admin/...`) is served only when this is set.
    pub admin_token: Option<String>,
}

/// Header carrying the admin token.
pub const ADMIN_TOKEN_HEADER: &str = "x-rampart-admin-token";

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn error(status: StatusCode, reason: &str) -> Reply {
    let body = serde_json::json!({ "error": reason }).to_string();
    reply(status, "application/json", body)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl App {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Reply, Infallible> {
        Ok(self.route(req).await)
    }

    async fn route(&self, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => {
                // Which store, what it is connected to, and whether it answers now.
                let ping = self.store.healthy().await;
                let mut body = serde_json::json!({
                    "store": self.store.name(),
                    "connected_to": self.store.describe(),
                    "answering": ping.is_ok(),
                    "recent_calls_failing": !self.engine.health.answering(),
                });
                match ping {
                    Ok(()) => reply(StatusCode::OK, "application/json", body.to_string()),
                    Err(e) => {
                        body["error"] = serde_json::json!(e.to_string());
                        reply(StatusCode::SERVICE_UNAVAILABLE, "application/json", body.to_string())
                    }
                }
            }
            (&Method::GET, "/metrics") => reply(StatusCode::OK, "text/plain; version=0.0.4", METRICS.render()),
            (&Method::POST, "/v1/check") | (&Method::POST, "/v1/report") => {
                if let Some(token) = &self.token {
                    let given = req.headers().get(TOKEN_HEADER).map(|v| v.as_bytes()).unwrap_or(b"");
                    if !same(given, token.as_bytes()) {
                        METRICS.unauthorized.inc();
                        return error(StatusCode::UNAUTHORIZED, "missing or wrong x-rampart-token");
                    }
                }
                let answer = if path == "/v1/check" {
                    self.check(req).await
                } else {
                    self.report(req).await
                };
                match answer {
                    Ok(body) => reply(StatusCode::OK, "application/json", body),
                    Err(r) => r,
                }
            }
            (_, p) if p.starts_with("/v1/admin/") => self.admin(req).await,
            (_, "/v1/check" | "/v1/report" | "/healthz" | "/metrics") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "wrong method for this path")
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "unknown path; see /v1/check, /v1/report, /healthz, /metrics",
            ),
        }
    }
}

impl App {
    /// Revocation and inspection of keys (by counter name: `<layer>:<hash>`).
    /// `/v1/check`: one request's ordered hits, or several requests' (each ordered, all
    /// at once; their hits coalesce with everything else in flight).
    async fn check(&self, req: Request<Incoming>) -> Result<Vec<u8>, Reply> {
        let parsed = match read_body(req).await {
            Ok(body) => Check::parse(&body).map_err(|e| error(StatusCode::BAD_REQUEST, &e)),
            Err(too_big) => Err(too_big),
        };
        let check = parsed.inspect_err(|_| {
            METRICS.bad_requests.inc();
        })?;
        METRICS.check_calls.inc();
        let encoded = match check {
            Check::One(batch) => {
                METRICS.checked_requests.inc();
                let results = self.engine.check(&batch.hits).await.map_err(unavailable)?;
                serde_json::to_vec(&Outcomes { results })
            }
            Check::Many(requests) => {
                METRICS.checked_requests.inc_by(requests.len() as u64);
                let hits: Vec<&[Hit]> = requests.iter().map(|r| r.hits.as_slice()).collect();
                let answers = self.engine.check_many(&hits).await.map_err(unavailable)?;
                let requests = answers.into_iter().map(|results| Outcomes { results }).collect();
                serde_json::to_vec(&CheckAnswers { requests })
            }
        };
        encoded.map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
    }

    /// `/v1/report`: admitted hits to record; answers every counter's standing.
    async fn report(&self, req: Request<Incoming>) -> Result<Vec<u8>, Reply> {
        let batch = read_batch(req, true).await.inspect_err(|_| {
            METRICS.bad_requests.inc();
        })?;
        let results = self.engine.report(batch.hits).await.map_err(unavailable)?;
        serde_json::to_vec(&Outcomes { results }).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
    }

    async fn admin(&self, req: Request<Incoming>) -> Reply {
        let Some(token) = &self.admin_token else {
            return error(
                StatusCode::NOT_FOUND,
                "the admin API is off: start the sidecar with --admin-token",
            );
        };
        let given = req
            .headers()
            .get(ADMIN_TOKEN_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or(b"");
        if !same(given, token.as_bytes()) {
            METRICS.unauthorized.inc();
            return error(StatusCode::UNAUTHORIZED, "missing or wrong x-rampart-admin-token");
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let result = match (method, path.as_str()) {
            (Method::GET, "/v1/admin/keys") => self.store.list().await.map(|keys| {
                serde_json::json!({ "keys": keys.iter().map(|k| k.json()).collect::<Vec<_>>() })
            }),
            (Method::GET, "/v1/admin/keys/inspect") => {
                let Some(key) = query.split('&').find_map(|kv| kv.strip_prefix("key=")) else {
                    return error(StatusCode::BAD_REQUEST, "give ?key=<layer>:<hash>");
                };
                let key = key.to_string();
                if let Err(why) = valid_key(&key) {
                    return error(StatusCode::BAD_REQUEST, &why);
                }
                self.store.inspect(&key).await.map(|k| k.json())
            }
            (Method::POST, "/v1/admin/keys/revoke" | "/v1/admin/keys/restore") => {
                let body = match read_body(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                let v: serde_json::Value = match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body is not JSON: {e}")),
                };
                let Some(key) = v["key"].as_str() else {
                    return error(StatusCode::BAD_REQUEST, "body needs \"key\": \"<layer>:<hash>\"");
                };
                if let Err(why) = valid_key(key) {
                    return error(StatusCode::BAD_REQUEST, &why);
                }
                if path.ends_with("revoke") {
                    let reason = v["reason"].as_str().unwrap_or("revoked").chars().take(200).collect::<String>();
                    self.store.revoke(key, &reason).await.map(|_| serde_json::json!({ "key": key, "revoked": true }))
                } else {
                    self.store.restore(key).await.map(|_| serde_json::json!({ "key": key, "revoked": false }))
                }
            }
            _ => return error(StatusCode::NOT_FOUND, "admin paths: GET /v1/admin/keys, GET /v1/admin/keys/inspect?key=, POST /v1/admin/keys/revoke, POST /v1/admin/keys/restore"),
        };
        match result {
            Ok(v) => reply(StatusCode::OK, "application/json", v.to_string()),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }
}

fn valid_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > rampart::wire::MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "key must be 1 to {} visible ASCII characters",
            rampart::wire::MAX_KEY_LEN
        ));
    }
    Ok(())
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Reply> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body over {MAX_BODY_BYTES} bytes"),
        ));
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body over {MAX_BODY_BYTES} bytes"),
        )),
    }
}

/// A store failure: the filter's `failure_mode` decides what clients see.
fn unavailable(e: StoreError) -> Reply {
    error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
}

async fn read_batch(req: Request<Incoming>, zero_cost: bool) -> Result<Batch, Reply> {
    let body = read_body(req).await?;
    let batch: Batch = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("body is not a hit batch: {e}")))?;
    batch
        .validate(zero_cost)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &e))?;
    Ok(batch)
}
