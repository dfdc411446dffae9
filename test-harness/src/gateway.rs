//! One gateway, whichever proxy runs it: Envoy, Kong's engine or APISIX's engine, each
//! loading the same `rampart.wasm` with the same plugin JSON. End-to-end cases are
//! written once against `Gateway` and run on every proxy that is available here; what
//! legitimately differs between the hosts is data in `Traits` (the README's host table),
//! not branches in the tests.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::envoy::{self, Envoy};
use crate::http::Client;
use crate::nginx::{self, Engine, Nginx};
use crate::process::StartFailure;
use crate::rampart_wasm;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    Envoy,
    Kong,
    Apisix,
}

/// What a host does differently, as the README's host table states it.
#[derive(Debug)]
pub struct Traits {
    pub name: &'static str,
    /// Node-local counters are shared by every worker (Envoy's threads share data per
    /// `vm_id`; Kong's worker processes share an shm zone). Where not (APISIX has no
    /// shared data) each worker process counts on its own.
    pub shared_counters: bool,
    /// Async cluster layers report on a tick. Without a tick (APISIX) they run as sync.
    pub async_reports: bool,
    /// Rampart's metrics can be read (Envoy's admin `/stats/prometheus`); the engines
    /// here have no exporter (Kong exports them through its Prometheus plugin).
    pub metrics: bool,
    /// A refused configuration keeps the proxy from starting (Envoy refuses the
    /// listener, Kong's worker exits); APISIX instead answers 503 to every request.
    pub refused_config_stops_start: bool,
    /// A rejection decided after the host itself failed a sidecar call (a timeout)
    /// keeps its JSON body. Kong's engine loses bodies there (README, host table), so
    /// Rampart sends status and headers only.
    pub body_after_failed_call: bool,
}

pub const ENVOY: Traits = Traits {
    name: "Envoy 1.40",
    shared_counters: true,
    async_reports: true,
    metrics: true,
    refused_config_stops_start: true,
    body_after_failed_call: true,
};

pub const KONG: Traits = Traits {
    name: "Kong engine (ngx_wasm_module 3bed278, Wasmtime 26)",
    shared_counters: true,
    async_reports: true,
    metrics: false,
    refused_config_stops_start: true,
    body_after_failed_call: false,
};

pub const APISIX: Traits = Traits {
    name: "APISIX engine (wasm-nginx-module 0.7.0, Wasmtime 26)",
    shared_counters: false,
    async_reports: false,
    metrics: false,
    refused_config_stops_start: false,
    body_after_failed_call: true,
};

impl Proxy {
    pub fn traits(self) -> &'static Traits {
        match self {
            Proxy::Envoy => &ENVOY,
            Proxy::Kong => &KONG,
            Proxy::Apisix => &APISIX,
        }
    }

    fn engine(self) -> Option<Engine> {
        match self {
            Proxy::Envoy => None,
            Proxy::Kong => Some(Engine::Kong),
            Proxy::Apisix => Some(Engine::Apisix),
        }
    }

    /// Why this proxy cannot run here (`None`: it can). Envoy is always installed by
    /// `make test`; the engines are found in `../shared/` or through the environment.
    pub fn missing(self) -> Option<String> {
        self.engine().and_then(Engine::missing)
    }
}

/// Every proxy available on this machine; prints one line for each one skipped.
pub fn proxies() -> Vec<Proxy> {
    [Proxy::Envoy, Proxy::Kong, Proxy::Apisix]
        .into_iter()
        .filter(|p| match p.missing() {
            None => true,
            Some(why) => {
                eprintln!("skipped on this machine: {why}");
                false
            }
        })
        .collect()
}

pub struct Options {
    pub plugin: Value,
    pub upstream_port: u16,
    /// rampart-sidecar's port: Envoy's `rampart_sidecar` cluster points there; on the
    /// engines, whose calls take an address, `sidecar.upstream` becomes `127.0.0.1:port`.
    pub sidecar_port: Option<u16>,
    /// Envoy worker threads, or nginx worker processes.
    pub workers: u32,
}

impl Options {
    pub fn new(plugin: &Value, upstream_port: u16) -> Options {
        Options {
            plugin: plugin.clone(),
            upstream_port,
            sidecar_port: None,
            workers: 1,
        }
    }

    pub fn with_sidecar(mut self, port: u16) -> Options {
        self.sidecar_port = Some(port);
        self
    }

    pub fn workers(mut self, n: u32) -> Options {
        self.workers = n;
        self
    }
}

pub enum Gateway {
    Envoy(Envoy),
    Nginx(Nginx),
}

impl Gateway {
    pub fn start(proxy: Proxy, o: &Options) -> Gateway {
        Gateway::try_start(proxy, o).unwrap_or_else(|f| {
            panic!(
                "{} did not start (exit {:?}):\n{}",
                proxy.traits().name,
                f.exit_code,
                f.log
            )
        })
    }

    pub fn try_start(proxy: Proxy, o: &Options) -> Result<Gateway, StartFailure> {
        let Some(engine) = proxy.engine() else {
            let plugin = o.plugin.to_string();
            let mut opts = match o.sidecar_port {
                Some(port) => envoy::Options::fleet(&plugin, o.upstream_port, port),
                None => envoy::Options::rampart(&plugin, o.upstream_port),
            };
            opts.concurrency = o.workers;
            return Envoy::try_start(&opts).map(Gateway::Envoy);
        };
        let mut plugin = o.plugin.clone();
        if let (Some(port), Some(sidecar)) = (o.sidecar_port, plugin.get_mut("sidecar")) {
            sidecar["upstream"] = json!(format!("127.0.0.1:{port}"));
        }
        let wasm = rampart_wasm();
        let plugin_json = plugin.to_string();
        Nginx::try_start(&nginx::Options {
            engine,
            filter: Some((&wasm, &plugin_json)),
            upstream_port: Some(o.upstream_port),
            workers: o.workers,
        })
        .map(Gateway::Nginx)
    }

    pub fn port(&self) -> u16 {
        match self {
            Gateway::Envoy(e) => e.port,
            Gateway::Nginx(n) => n.port,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.port())
    }

    pub fn log(&self) -> String {
        match self {
            Gateway::Envoy(e) => e.log(),
            Gateway::Nginx(n) => n.log(),
        }
    }

    /// Rampart's metrics, where the host exports them (`Traits::metrics`).
    pub fn metrics(&self) -> Option<HashMap<String, f64>> {
        match self {
            Gateway::Envoy(e) => Some(e.prometheus()),
            Gateway::Nginx(_) => None,
        }
    }

    /// Waits until every `(metric, value)` holds where the host exports metrics; does
    /// nothing elsewhere.
    pub fn metrics_reach(&self, expect: &[(&str, f64)]) {
        if let Gateway::Envoy(e) = self {
            e.metrics_reach(expect);
        }
    }

    /// `(worker, status)` per request served, where the host logs it (the engines).
    pub fn served_by_worker(&self) -> Option<Vec<(u32, u16)>> {
        match self {
            Gateway::Envoy(_) => None,
            Gateway::Nginx(n) => Some(n.served_by_worker()),
        }
    }
}
