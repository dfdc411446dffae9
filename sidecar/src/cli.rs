//! Command-line flags.

use std::time::Duration;

pub const HELP: &str = "\
rampart-sidecar: cluster-wide rate-limit counters for the Rampart proxy-wasm filter.

USAGE:
  rampart-sidecar [--listen ADDR] [--redis URL | --redis-cluster URL,URL,...] [OPTIONS]

STORES (pick at most one; the default is memory):
  (none)                    Counters in this process: exact for one sidecar, lost on restart.
  --redis URL               One Redis, e.g. redis://127.0.0.1:6379. Many sidecars may share it.
  --redis-cluster URLS      Redis Cluster seed nodes, comma-separated,
                            e.g. redis://10.0.0.1:7000,redis://10.0.0.2:7000.

OPTIONS:
  --listen ADDR             Address to serve HTTP on. Default 127.0.0.1:8081 (loopback:
                            put it on another address only behind a token).
  --token TOKEN             Require this shared token in the x-rampart-token header of every
                            /v1 call (the filter's sidecar.token). Also read from the
                            RAMPART_SIDECAR_TOKEN environment variable.
  --admin-token TOKEN       Serve the admin API (/v1/admin/keys...: revoke, restore, list,
                            inspect) to callers with this token in x-rampart-admin-token.
                            Also read from RAMPART_ADMIN_TOKEN. Without it the API is off.
  --redis-timeout DURATION  Give up on a Redis call after this long, e.g. 20ms. Default 50ms.
                            The filter's own sidecar.timeout should be a little longer.
  --max-keys N              Memory store: most counters held. Default 1000000.
  --threads N               Worker threads. Default 2.
  -h, --help                This text.

API: POST /v1/check, POST /v1/report (JSON bodies, see README), GET /healthz, GET /metrics.

KEYS (revocation, from any machine that reaches the sidecar):
  rampart-sidecar keys revoke|restore|inspect --layer NAME --api-key KEY [--reason TEXT]
  rampart-sidecar keys list
  with --sidecar HOST:PORT (default 127.0.0.1:8081), --admin-token (or RAMPART_ADMIN_TOKEN),
  --key-secret (or RAMPART_KEY_SECRET: the filter's sidecar.key_secret), --query for a
  layer keyed by a query parameter instead of a header, or --name LAYER:HASH instead of
  --layer/--api-key. See `rampart-sidecar keys --help`.
";

pub enum StoreChoice {
    Memory,
    Redis(String),
    Cluster(Vec<String>),
}

pub struct Args {
    pub listen: String,
    pub store: StoreChoice,
    pub token: Option<String>,
    pub admin_token: Option<String>,
    pub redis_timeout: Duration,
    pub max_keys: usize,
    pub threads: usize,
}

pub enum Parsed {
    Run(Args),
    Help,
}

pub fn parse(mut it: impl Iterator<Item = String>) -> Result<Parsed, String> {
    let mut a = Args {
        listen: "127.0.0.1:8081".into(),
        store: StoreChoice::Memory,
        token: std::env::var("RAMPART_SIDECAR_TOKEN").ok().filter(|t| !t.is_empty()),
        admin_token: std::env::var("RAMPART_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()),
        redis_timeout: Duration::from_millis(50),
        max_keys: crate::store::memory::DEFAULT_MAX_KEYS,
        threads: 2,
    };
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--listen" => a.listen = value("--listen")?,
            "--redis" => {
                if !matches!(a.store, StoreChoice::Memory) {
                    return Err("give only one of --redis and --redis-cluster".into());
                }
                a.store = StoreChoice::Redis(value("--redis")?);
            }
            "--redis-cluster" => {
                if !matches!(a.store, StoreChoice::Memory) {
                    return Err("give only one of --redis and --redis-cluster".into());
                }
                let urls: Vec<String> = value("--redis-cluster")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if urls.is_empty() {
                    return Err("--redis-cluster needs at least one redis:// URL".into());
                }
                a.store = StoreChoice::Cluster(urls);
            }
            "--token" => a.token = Some(value("--token")?).filter(|t| !t.is_empty()),
            "--admin-token" => a.admin_token = Some(value("--admin-token")?).filter(|t| !t.is_empty()),
            "--redis-timeout" => {
                let v = value("--redis-timeout")?;
                let ms = rampart::duration::parse_millis(&v)
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| format!("--redis-timeout {v:?} is not a duration such as 50ms"))?;
                a.redis_timeout = Duration::from_millis(ms);
            }
            "--max-keys" => {
                let v = value("--max-keys")?;
                a.max_keys = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--max-keys {v:?} is not a positive number"))?;
            }
            "--threads" => {
                let v = value("--threads")?;
                a.threads = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| format!("--threads {v:?} must be 1 to 256"))?;
            }
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(Parsed::Run(a))
}
