//! Command-line flags (clap): `rampart-sidecar [OPTIONS]` serves; `rampart-sidecar keys
//! ...` revokes and inspects API keys through a running sidecar.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::keys::KeysArgs;
use crate::store::memory::DEFAULT_MAX_KEYS;

const AFTER_HELP: &str = "\
STORES (at most one; the default is memory):
  (none)            Counters in this process: exact for one sidecar, lost on restart.
  --redis           One Redis; many sidecars may share it. Reconnects by itself.
  --redis-cluster   Redis Cluster; follows failovers (topology checked every second and
                    on every connection error).
  --redis-sentinel  Redis behind Sentinel; follows the master the sentinels name.

API: POST /v1/check, POST /v1/report (JSON bodies, see README), GET /healthz, GET /metrics.
Logs go to stderr with timestamps; RUST_LOG (e.g. rampart_sidecar=debug) overrides
--log-level.

KEYS (revocation, from any machine that reaches the sidecar):
  rampart-sidecar keys revoke|restore|inspect --layer NAME --api-key KEY [--reason TEXT]
  rampart-sidecar keys list
  See `rampart-sidecar keys --help`.";

#[derive(Parser)]
#[command(
    name = "rampart-sidecar",
    version,
    about = "Cluster-wide rate-limit counters for the Rampart proxy-wasm filter.",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand)]
pub enum Command {
    /// Revoke, restore, inspect or list API keys on every gateway of the fleet.
    Keys(KeysArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Address to serve HTTP on. Loopback by default: put it on another address only
    /// behind a token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub listen: String,

    /// One Redis, e.g. redis://127.0.0.1:6379.
    #[arg(long, value_name = "URL", group = "store")]
    pub redis: Option<String>,

    /// Redis Cluster seed nodes, comma-separated, e.g.
    /// redis://10.0.0.1:7000,redis://10.0.0.2:7000.
    #[arg(long, value_name = "URLS", value_delimiter = ',', group = "store")]
    pub redis_cluster: Option<Vec<String>>,

    /// Redis Sentinel addresses, comma-separated, e.g.
    /// redis://10.0.0.1:26379,redis://10.0.0.2:26379 (with --sentinel-master).
    #[arg(
        long,
        value_name = "URLS",
        value_delimiter = ',',
        group = "store",
        requires = "sentinel_master"
    )]
    pub redis_sentinel: Option<Vec<String>>,

    /// The master's name in Sentinel (its `sentinel monitor NAME ...`).
    #[arg(long, value_name = "NAME", requires = "redis_sentinel")]
    pub sentinel_master: Option<String>,

    /// Password of the Redis master Sentinel names (the sentinels' own credentials go in
    /// their URLs).
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "RAMPART_REDIS_PASSWORD",
        hide_env_values = true
    )]
    pub redis_password: Option<String>,

    /// Require this shared token in the x-rampart-token header of every /v1 call (the
    /// filter's sidecar.token).
    #[arg(long, value_name = "TOKEN", env = "RAMPART_SIDECAR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Serve the admin API (/v1/admin/keys...: revoke, restore, list, inspect) to callers
    /// with this token in x-rampart-admin-token. Without it the API is off.
    #[arg(long, value_name = "TOKEN", env = "RAMPART_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Give up on a Redis call after this long, e.g. 20ms. The filter's own
    /// sidecar.timeout should be a little longer.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = duration)]
    pub redis_timeout: Duration,

    /// Memory store: most counters held (and most blocks, flags, distinct-client sets
    /// and revocations each). A full store replaces the counter that forgives the least.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_KEYS, value_parser = positive)]
    pub max_keys: usize,

    /// Worker threads.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,

    /// Least severe log lines shown: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,
}

/// Where counters live.
pub enum StoreChoice {
    Memory,
    Redis(String),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        password: Option<String>,
    },
}

impl RunArgs {
    pub fn store(&self) -> StoreChoice {
        let urls = |v: &Vec<String>| -> Vec<String> {
            v.iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        if let Some(url) = &self.redis {
            StoreChoice::Redis(url.clone())
        } else if let Some(seeds) = &self.redis_cluster {
            StoreChoice::Cluster(urls(seeds))
        } else if let (Some(sentinels), Some(master)) = (&self.redis_sentinel, &self.sentinel_master) {
            StoreChoice::Sentinel {
                sentinels: urls(sentinels),
                master: master.clone(),
                password: self.redis_password.clone().filter(|p| !p.is_empty()),
            }
        } else {
            StoreChoice::Memory
        }
    }

    /// An empty token (an unset variable in a compose file) means no token.
    pub fn token(&self) -> Option<String> {
        self.token.clone().filter(|t| !t.is_empty())
    }

    pub fn admin_token(&self) -> Option<String> {
        self.admin_token.clone().filter(|t| !t.is_empty())
    }
}

fn duration(v: &str) -> Result<Duration, String> {
    rampart::duration::parse_millis(v)
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{v:?} is not a duration such as 50ms"))
}

fn positive(v: &str) -> Result<usize, String> {
    v.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{v:?} is not a positive number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn one_store_at_most_and_sentinel_needs_its_master() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("rampart-sidecar").chain(args.iter().copied()));
        assert!(parse(&["--redis", "redis://a:1", "--redis-cluster", "redis://b:1"]).is_err());
        assert!(parse(&["--redis-sentinel", "redis://s:26379"]).is_err());
        let cli = parse(&[
            "--redis-sentinel",
            "redis://s1:26379, redis://s2:26379",
            "--sentinel-master",
            "m",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        match cli.run.store() {
            StoreChoice::Sentinel { sentinels, master, .. } => {
                assert_eq!(sentinels, ["redis://s1:26379", "redis://s2:26379"]);
                assert_eq!(master, "m");
            }
            _ => panic!("not sentinel"),
        }
        assert!(parse(&["--redis-timeout", "soon"]).is_err());
        assert!(parse(&["--max-keys", "0"]).is_err());
        assert!(parse(&["--threads", "0"]).is_err());
    }
}
