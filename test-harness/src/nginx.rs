//! Kong's and APISIX's proxy-wasm engines, started as the harness starts Envoy: a config
//! written here, free ports, readiness, cleanup.
//!
//! Both are nginx builds kept beside the checkout in `../shared/` (or at the paths in
//! `RAMPART_KONG_ENGINE` / `RAMPART_APISIX_ENGINE`):
//! - `kong-engine/`: nginx with Kong's WasmX engine (ngx_wasm_module, what Kong Gateway
//!   3.9 runs filters with). The filter sits in a `proxy_wasm` directive, node-local
//!   counters in a `shm_kv` zone.
//! - `apisix-engine/`: nginx with lua-nginx-module and api7/wasm-nginx-module, driven by
//!   a Lua glue that follows `apisix/wasm.lua` phase by phase (no shared data, no tick).
//!
//! Each gateway proxies to the test's upstream, so what reaches the service can be
//! counted exactly as behind Envoy. nginx runs in the foreground in a process group of
//! its own; dropping the handle stops master and workers.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::Client;
use crate::process::{free_port, port_open, StartFailure, TempDir};
use crate::project_root;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Kong,
    Apisix,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Kong => "Kong engine (ngx_wasm_module)",
            Engine::Apisix => "APISIX engine (wasm-nginx-module)",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            Engine::Kong => "RAMPART_KONG_ENGINE",
            Engine::Apisix => "RAMPART_APISIX_ENGINE",
        }
    }

    /// The engine's directory: the environment variable, else `../shared/<engine>`.
    pub fn dir(self) -> PathBuf {
        if let Some(p) = std::env::var_os(self.env_var()) {
            return PathBuf::from(p);
        }
        let leaf = match self {
            Engine::Kong => "kong-engine",
            Engine::Apisix => "apisix-engine",
        };
        project_root().join("..").join("shared").join(leaf)
    }

    /// The nginx binary, if the engine is there.
    pub fn binary(self) -> Option<PathBuf> {
        let dir = self.dir();
        [dir.join("nginx"), dir.join("bin/nginx")]
            .into_iter()
            .find(|p| p.is_file())
    }

    /// Why this engine cannot run here, or `None` when it can.
    pub fn missing(self) -> Option<String> {
        match self.binary() {
            Some(_) => None,
            None => Some(format!(
                "{} not found in {} (set {} to its directory)",
                self.name(),
                self.dir().display(),
                self.env_var()
            )),
        }
    }
}

pub struct Options<'a> {
    pub engine: Engine,
    /// The filter and its JSON; `None` runs the engine without any filter (a baseline).
    pub filter: Option<(&'a Path, &'a str)>,
    /// Where requests go: a port on loopback, or (`None`) a server inside the same nginx
    /// without the filter that answers 200 "ok" (the bench: no other process competes).
    pub upstream_port: Option<u16>,
    pub workers: u32,
}

pub struct Nginx {
    pub port: u16,
    pub engine: Engine,
    child: Child,
    dir: TempDir,
}

/// One nginx token holds at most about 4 KB (the Kong engine's README): a longer plugin
/// JSON would be cut, so the harness refuses it rather than test something else.
const MAX_INLINE_JSON: usize = 4000;

/// nginx single-quoted string: the parser turns `\\` into `\` and `\'` into `'`.
fn quote(json: &str) -> String {
    json.replace('\\', "\\\\").replace('\'', "\\'")
}

fn write_file(path: &Path, text: &str) {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// What every config shares: foreground master, temp paths in the prefix, large header
/// buffers (hostile-header tests send 48 KB values), the upstream with keep-alive.
fn http_common(prefix: &Path, upstream_port: Option<u16>) -> String {
    let p = prefix.display();
    let (server, internal) = match upstream_port {
        Some(port) => (format!("127.0.0.1:{port}"), String::new()),
        None => (
            format!("unix:{p}/upstream.sock"),
            format!(
                "    server {{\n        listen unix:{p}/upstream.sock;\n        access_log off;\n        \
                 location / {{ return 200 \"ok\\n\"; }}\n    }}\n"
            ),
        ),
    };
    format!(
        r#"
    log_format front '$pid $status $request_time "$request"';
    access_log {p}/access.log front;
    client_body_temp_path {p}/tmp/client_body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    large_client_header_buffers 4 64k;
    keepalive_timeout 30s;
    keepalive_requests 100000;
    upstream backend {{
        server {server};
        keepalive 64;
    }}
{internal}"#
    )
}

fn main_block(prefix: &Path, workers: u32) -> String {
    let p = prefix.display();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {p}/nginx.pid;\n\
         error_log {p}/error.log info;\nworker_rlimit_core 0;\nevents {{ worker_connections 4096; }}\n"
    )
}

fn kong_conf(prefix: &Path, o: &Options, port: u16) -> String {
    let (wasm_block, directive) = match o.filter {
        Some((wasm, json)) => {
            let json = quote(json);
            assert!(
                json.len() < MAX_INLINE_JSON,
                "plugin JSON of {} bytes does not fit one nginx token",
                json.len()
            );
            (
                format!(
                    "wasm {{\n    module rampart {};\n    shm_kv * 16m;\n}}\n",
                    wasm.display()
                ),
                format!("proxy_wasm rampart '{json}';"),
            )
        }
        None => (String::new(), String::new()),
    };
    format!(
        r#"{main}
{wasm_block}
http {{
{common}
    server {{
        listen 127.0.0.1:{port} reuseport;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location / {{
            {directive}
            proxy_pass http://backend;
        }}
    }}
}}
"#,
        main = main_block(prefix, o.workers),
        common = http_common(prefix, o.upstream_port),
    )
}

fn apisix_conf(prefix: &Path, o: &Options, port: u16, engine_dir: &Path) -> String {
    let p = prefix.display();
    let (init_worker, phases) = match o.filter {
        Some((wasm, json)) => {
            // The glue reads the plugin's name, file and JSON from files, as run.sh
            // writes them.
            write_file(&prefix.join("filter.json"), json);
            write_file(&prefix.join("filter.path"), &wasm.display().to_string());
            write_file(&prefix.join("filter.name"), "rampart");
            (
                format!(
                    r#"init_worker_by_lua_block {{
        local function slurp(p)
            local f = assert(io.open(p, "rb")); local s = f:read("*a"); f:close(); return s
        end
        require("apisix_wasm_glue").init_worker(slurp("{p}/filter.name"),
                                                 slurp("{p}/filter.path"),
                                                 slurp("{p}/filter.json"))
    }}"#
                ),
                r#"set $wasm_process_req_body '';
            set $wasm_process_resp_body '';
            access_by_lua_block { require("apisix_wasm_glue").access() }
            header_filter_by_lua_block { require("apisix_wasm_glue").header_filter() }
            body_filter_by_lua_block { require("apisix_wasm_glue").body_filter() }"#
                    .to_string(),
            )
        }
        None => (String::new(), String::new()),
    };
    let lua = engine_dir.join("lua");
    format!(
        r#"{main}
http {{
    wasm_vm wasmtime;
    lua_package_path "{lua}/?.lua;{lua}/?/init.lua;;";
    lua_package_cpath ";";
    lua_socket_log_errors off;
{common}
    init_by_lua_block {{
        require "resty.core"
        require "resty.proxy-wasm"
        require "apisix_wasm_glue"
    }}
    {init_worker}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            {phases}
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://backend;
        }}
    }}
}}
"#,
        main = main_block(prefix, o.workers),
        lua = lua.display(),
        common = http_common(prefix, o.upstream_port),
    )
}

impl Nginx {
    /// Starts the engine and waits until every worker has loaded the filter; on
    /// failure, the error log says why.
    pub fn try_start(o: &Options) -> Result<Nginx, StartFailure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Nginx::try_start_once(o) {
                Err(f) if attempt < 4 && f.log.contains("Address already in use") => continue,
                other => return other,
            }
        }
    }

    fn try_start_once(o: &Options) -> Result<Nginx, StartFailure> {
        let binary = o
            .engine
            .binary()
            .unwrap_or_else(|| panic!("{}", o.engine.missing().unwrap_or_default()));
        let dir = TempDir::new("nginx");
        let prefix = dir.0.clone();
        std::fs::create_dir_all(prefix.join("tmp")).unwrap_or_else(|e| panic!("mkdir: {e}"));
        // Workers run as an unprivileged user when the master runs as root.
        let _ = Command::new("chmod").args(["-R", "a+rwx"]).arg(&prefix).status();
        let port = free_port();
        let conf = match o.engine {
            Engine::Kong => kong_conf(&prefix, o, port),
            Engine::Apisix => apisix_conf(&prefix, o, port, &o.engine.dir()),
        };
        let conf_path = prefix.join("nginx.conf");
        write_file(&conf_path, &conf);
        let out = std::fs::File::create(prefix.join("stderr.log")).unwrap_or_else(|e| panic!("create log: {e}"));
        let child = Command::new(binary)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(prefix.join("error.log"))
            // nginx reads $NGINX as inherited listening sockets.
            .env_remove("NGINX")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", o.engine.name()));
        let mut nginx = Nginx {
            port,
            engine: o.engine,
            child,
            dir,
        };
        match nginx.wait_ready(o.workers, o.filter.is_some()) {
            Ok(()) => Ok(nginx),
            Err(exit_code) => Err(StartFailure {
                exit_code,
                log: nginx.log(),
            }),
        }
    }

    /// Every worker has loaded the module (and, on Kong, configured the filter), and the
    /// port accepts. `Err` with the exit code when nginx or a worker gave up.
    fn wait_ready(&mut self, workers: u32, filter: bool) -> Result<(), Option<i32>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let loaded = match self.engine {
            Engine::Kong => "successfully loaded \"rampart\" module",
            Engine::Apisix => "loaded wasm plugin",
        };
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(status.code());
            }
            let log = self.log();
            if log.contains("exited with fatal code")
                || log.contains("[emerg]")
                || log.contains("failed to load plugin")
                || log.contains("init_worker_by_lua error")
            {
                return Err(None);
            }
            let pids: std::collections::HashSet<&str> = log
                .lines()
                .filter(|l| l.contains(loaded))
                .filter_map(|l| l.split("] ").nth(1)?.split('#').next())
                .collect();
            if (!filter || pids.len() >= workers as usize) && port_open(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.port)
    }

    /// The error log (where the filter's own lines go), NULs removed (the APISIX
    /// engine ends trap messages with one).
    pub fn log(&self) -> String {
        let read =
            |f: &str| String::from_utf8_lossy(&std::fs::read(self.dir.0.join(f)).unwrap_or_default()).replace('\0', "");
        read("error.log") + &read("stderr.log")
    }

    /// `(worker pid, status)` of every request served so far, from the access log.
    pub fn served_by_worker(&self) -> Vec<(u32, u16)> {
        let text = std::fs::read_to_string(self.dir.0.join("access.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
            })
            .collect()
    }
}

fn signal(target: &str, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Nginx {
    /// Fast shutdown of master and workers; whatever is left of the process group after
    /// a few seconds is killed.
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        signal(&pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(&format!("-{pid}"), "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A worker that crashed is a failure whatever the clients saw (nginx starts a
        // new one, so a test could pass over it).
        let log = self.log();
        if !std::thread::panicking() && log.contains("exited on signal") {
            panic!("a {} worker crashed:\n{log}", self.engine.name());
        }
    }
}
