//! `rampart-sidecar keys ...`: revoke, restore, list and inspect API keys fleet-wide
//! through a sidecar's admin API. The API key is hashed here exactly as the filter
//! hashes it (`rampart::cluster::FleetKey`, keyed with the fleet's `key_secret`), so it
//! never travels or lands anywhere in clear.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rampart::cluster::FleetKey;
use rampart::engine::DEFAULT_KEY_SECRET;

use crate::http::ADMIN_TOKEN_HEADER;

pub const HELP: &str = "\
rampart-sidecar keys: revoke or inspect API keys on every gateway of the fleet.

USAGE:
  rampart-sidecar keys revoke  --layer NAME --api-key KEY [--reason TEXT]
  rampart-sidecar keys restore --layer NAME --api-key KEY
  rampart-sidecar keys inspect --layer NAME --api-key KEY
  rampart-sidecar keys list

OPTIONS:
  --sidecar HOST:PORT   A sidecar of the fleet (they share Redis). Default 127.0.0.1:8081.
  --admin-token TOKEN   The sidecar's --admin-token (or RAMPART_ADMIN_TOKEN).
  --key-secret SECRET   The filter's sidecar.key_secret (or RAMPART_KEY_SECRET); without
                        it the filter's built-in default is assumed.
  --layer NAME          The cluster layer keyed by the API key (e.g. keys).
  --api-key KEY         The API key, in clear: it is hashed here before it is sent.
  --query               The layer is keyed by a query parameter (query:<name>), not a header.
  --name LAYER:HASH     The counter name instead of --layer/--api-key (as logs show it).
  --reason TEXT         Why, kept with the revocation.

A revoked key gets 403 {\"error\":\"key_revoked\"} from every gateway: at once on sync
layers, within one sync interval on async ones. `restore` also lifts blocks and flags.
";

struct Opts {
    sidecar: String,
    admin_token: Option<String>,
    key_secret: String,
    layer: Option<String>,
    api_key: Option<String>,
    query: bool,
    name: Option<String>,
    reason: String,
}

fn parse(args: &[String]) -> Result<(String, Opts), String> {
    let mut it = args.iter();
    let action = it
        .next()
        .ok_or("give an action: revoke, restore, inspect or list")?
        .clone();
    let mut o = Opts {
        sidecar: "127.0.0.1:8081".into(),
        admin_token: std::env::var("RAMPART_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()),
        key_secret: std::env::var("RAMPART_KEY_SECRET")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or(DEFAULT_KEY_SECRET.into()),
        layer: None,
        api_key: None,
        query: false,
        name: None,
        reason: "revoked by an operator".into(),
    };
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--sidecar" => o.sidecar = value("--sidecar")?,
            "--admin-token" => o.admin_token = Some(value("--admin-token")?),
            "--key-secret" => o.key_secret = value("--key-secret")?,
            "--layer" => o.layer = Some(value("--layer")?),
            "--api-key" => o.api_key = Some(value("--api-key")?),
            "--name" => o.name = Some(value("--name")?),
            "--reason" => o.reason = value("--reason")?,
            "--query" => o.query = true,
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok((action, o))
}

impl Opts {
    /// The counter name the filter uses for this layer and key.
    fn counter_name(&self) -> Result<String, String> {
        if let Some(n) = &self.name {
            return Ok(n.clone());
        }
        let (Some(layer), Some(key)) = (&self.layer, &self.api_key) else {
            return Err("give --layer and --api-key (or --name)".into());
        };
        // Tags as in the filter's key parts: 4 = header, 5 = query parameter.
        let tag = if self.query { 5 } else { 4 };
        Ok(FleetKey::from_secret(&self.key_secret).counter_name(layer, &[(tag, key.as_bytes().to_vec())]))
    }
}

/// One HTTP/1.1 request to the admin API; returns status and body.
fn call(o: &Opts, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let token = o
        .admin_token
        .as_deref()
        .ok_or("give --admin-token (or set RAMPART_ADMIN_TOKEN)")?;
    let mut s =
        TcpStream::connect(&o.sidecar).map_err(|e| format!("cannot reach the sidecar at {}: {e}", o.sidecar))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\n{ADMIN_TOKEN_HEADER}: {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        o.sidecar,
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("malformed answer")?;
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((status, body))
}

pub fn main(args: &[String]) -> i32 {
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return if args.is_empty() { 2 } else { 0 };
    }
    let run = || -> Result<String, String> {
        let (action, o) = parse(args)?;
        let (method, path, body) = match action.as_str() {
            "list" => ("GET", "/v1/admin/keys".to_string(), String::new()),
            "inspect" => (
                "GET",
                format!("/v1/admin/keys/inspect?key={}", o.counter_name()?),
                String::new(),
            ),
            "revoke" => {
                let body = serde_json::json!({ "key": o.counter_name()?, "reason": o.reason }).to_string();
                ("POST", "/v1/admin/keys/revoke".to_string(), body)
            }
            "restore" => (
                "POST",
                "/v1/admin/keys/restore".to_string(),
                serde_json::json!({ "key": o.counter_name()? }).to_string(),
            ),
            other => return Err(format!("unknown action {other:?}: revoke, restore, inspect or list")),
        };
        let (status, answer) = call(&o, method, &path, &body)?;
        if status != 200 {
            return Err(format!("sidecar answered {status}: {}", answer.trim()));
        }
        Ok(answer)
    };
    match run() {
        Ok(answer) => {
            println!("{}", answer.trim());
            0
        }
        Err(e) => {
            eprintln!("rampart-sidecar keys: {e}");
            1
        }
    }
}
