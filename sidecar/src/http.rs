//! The HTTP API (DESIGN.md §4): `POST /v1/check`, `POST /v1/report`, `GET /healthz`,
//! `GET /metrics`. Bodies are `rampart::wire` JSON. Every refusal names its reason.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use rampart::wire::{Batch, Outcomes, MAX_BODY_BYTES, TOKEN_HEADER};

use crate::engine::Engine;
use crate::metrics::METRICS;
use crate::store::Store;

pub struct App {
    pub engine: Arc<Engine>,
    pub store: Arc<Store>,
    pub token: Option<String>,
}

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
            (&Method::GET, "/healthz") => match self.store.healthy().await {
                Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n"),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            },
            (&Method::GET, "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                METRICS.render(self.store.name()),
            ),
            (&Method::POST, "/v1/check") | (&Method::POST, "/v1/report") => {
                if let Some(token) = &self.token {
                    let given = req.headers().get(TOKEN_HEADER).map(|v| v.as_bytes()).unwrap_or(b"");
                    if !same(given, token.as_bytes()) {
                        METRICS.unauthorized.fetch_add(1, Relaxed);
                        return error(StatusCode::UNAUTHORIZED, "missing or wrong x-rampart-token");
                    }
                }
                let batch = match read_batch(req).await {
                    Ok(b) => b,
                    Err(r) => {
                        METRICS.bad_requests.fetch_add(1, Relaxed);
                        return r;
                    }
                };
                let result = if path == "/v1/check" {
                    self.engine.check(&batch.hits).await
                } else {
                    self.engine.report(&batch.hits).await
                };
                match result {
                    Ok(results) => match serde_json::to_vec(&Outcomes { results }) {
                        Ok(body) => reply(StatusCode::OK, "application/json", body),
                        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                    },
                    // The filter's failure_mode decides what clients see.
                    Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
                }
            }
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

async fn read_batch(req: Request<Incoming>) -> Result<Batch, Reply> {
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
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body over {MAX_BODY_BYTES} bytes"),
            ))
        }
    };
    let batch: Batch = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("body is not a hit batch: {e}")))?;
    batch.validate().map_err(|e| error(StatusCode::BAD_REQUEST, &e))?;
    Ok(batch)
}
