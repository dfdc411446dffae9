//! `rampart-sidecar keys ...`: revoke, restore, list and inspect API keys fleet-wide
//! through a sidecar's admin API. The API key is hashed here exactly as the filter
//! hashes it (`rampart::cluster::FleetKey`, keyed with the fleet's `key_secret`), so it
//! never travels or lands anywhere in clear.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use clap::{Args, Subcommand};
use rampart::cluster::FleetKey;
use rampart::engine::DEFAULT_KEY_SECRET;

use crate::http::ADMIN_TOKEN_HEADER;

/// `rampart-sidecar keys ...`
#[derive(Args)]
#[command(
    arg_required_else_help = true,
    after_help = "A revoked key gets 403 {\"error\":\"key_revoked\"} from every gateway: at once on sync\n\
                  layers, within one sync interval on async ones. `restore` also lifts blocks and flags."
)]
pub struct KeysArgs {
    #[command(subcommand)]
    action: Action,

    /// A sidecar of the fleet (they share Redis).
    #[arg(long, global = true, value_name = "HOST:PORT", default_value = "127.0.0.1:8081")]
    sidecar: String,

    /// The sidecar's --admin-token.
    #[arg(
        long = "admin-token",
        global = true,
        value_name = "TOKEN",
        env = "RAMPART_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,

    /// The filter's sidecar.key_secret; without it the filter's built-in default.
    #[arg(
        long,
        global = true,
        value_name = "SECRET",
        env = "RAMPART_KEY_SECRET",
        hide_env_values = true
    )]
    key_secret: Option<String>,
}

#[derive(Subcommand)]
enum Action {
    /// Refuse a key on every gateway (403) until restored.
    Revoke {
        #[command(flatten)]
        key: KeyArgs,
        /// Why, kept with the revocation.
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
    /// Lift a revocation, and any block or flag.
    Restore {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Show a key's standing: revoked, blocked, flagged, distinct clients.
    Inspect {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// List the keys that are revoked, blocked or flagged now.
    List,
}

/// Which counter: a layer and an API key in clear (hashed here), or its name.
#[derive(Args)]
struct KeyArgs {
    /// The cluster layer keyed by the API key (e.g. keys).
    #[arg(long, value_name = "NAME", requires = "api_key")]
    layer: Option<String>,
    /// The API key, in clear: it is hashed here before it is sent.
    #[arg(long, value_name = "KEY", requires = "layer")]
    api_key: Option<String>,
    /// The layer is keyed by a query parameter (query:<name>), not a header.
    #[arg(long)]
    query: bool,
    /// The counter name instead of --layer/--api-key (as logs show it).
    #[arg(long, value_name = "LAYER:HASH", conflicts_with_all = ["layer", "api_key"])]
    name: Option<String>,
}

struct Opts {
    sidecar: String,
    admin_token: Option<String>,
    key_secret: String,
}

impl KeyArgs {
    /// The counter name the filter uses for this layer and key.
    fn counter_name(&self, key_secret: &str) -> Result<String, String> {
        if let Some(n) = &self.name {
            return Ok(n.clone());
        }
        let (Some(layer), Some(key)) = (&self.layer, &self.api_key) else {
            return Err("give --layer and --api-key (or --name)".into());
        };
        // Tags as in the filter's key parts: 4 = header, 5 = query parameter.
        let tag = if self.query { 5 } else { 4 };
        Ok(FleetKey::from_secret(key_secret).counter_name(layer, &[(tag, key.as_bytes().to_vec())]))
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

pub fn run(args: KeysArgs) -> i32 {
    let o = Opts {
        sidecar: args.sidecar,
        admin_token: args.admin_token.filter(|t| !t.is_empty()),
        key_secret: args
            .key_secret
            .filter(|t| !t.is_empty())
            .unwrap_or(DEFAULT_KEY_SECRET.into()),
    };
    let secret = o.key_secret.clone();
    let request = || -> Result<(&str, String, String), String> {
        Ok(match &args.action {
            Action::List => ("GET", "/v1/admin/keys".to_string(), String::new()),
            Action::Inspect { key } => (
                "GET",
                format!("/v1/admin/keys/inspect?key={}", key.counter_name(&secret)?),
                String::new(),
            ),
            Action::Revoke { key, reason } => (
                "POST",
                "/v1/admin/keys/revoke".to_string(),
                serde_json::json!({ "key": key.counter_name(&secret)?, "reason": reason }).to_string(),
            ),
            Action::Restore { key } => (
                "POST",
                "/v1/admin/keys/restore".to_string(),
                serde_json::json!({ "key": key.counter_name(&secret)? }).to_string(),
            ),
        })
    };
    let outcome = request().and_then(|(method, path, body)| {
        let (status, answer) = call(&o, method, &path, &body)?;
        if status != 200 {
            return Err(format!("sidecar answered {status}: {}", answer.trim()));
        }
        Ok(answer)
    });
    match outcome {
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
