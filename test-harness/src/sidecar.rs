//! rampart-sidecar, started from the workspace's build.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http::{get_once, Client};
use crate::process::{free_port, wait_for, Guard};
use crate::project_file;

/// The sidecar binary; `cargo test --release` builds it before the tests run.
pub fn sidecar_binary() -> PathBuf {
    for profile in ["release", "debug"] {
        let p = project_file(&format!("target/{profile}/rampart-sidecar"));
        if p.exists() {
            return p;
        }
    }
    panic!("target/release/rampart-sidecar is missing: `cargo build --release -p rampart-sidecar` (make test does)")
}

pub struct Sidecar {
    pub port: u16,
    pub guard: Guard,
    /// Everything it wrote to stderr (its log), as it comes.
    log: Arc<Mutex<String>>,
}

impl Sidecar {
    /// Starts a sidecar with these store flags (`[]` = memory, `["--redis", url]`, ...).
    /// On a free port; retried on another if the port was taken before the bind.
    pub fn start(store_args: &[&str]) -> Sidecar {
        Sidecar::start_binary(&sidecar_binary(), store_args)
    }

    /// The same from another build of the sidecar (the bench compares two).
    pub fn start_binary(binary: &std::path::Path, store_args: &[&str]) -> Sidecar {
        for _ in 0..3 {
            if let Some(s) = Sidecar::try_start_on(binary, free_port(), store_args) {
                return s;
            }
        }
        Sidecar::try_start_on(binary, free_port(), store_args)
            .unwrap_or_else(|| panic!("{} exited before serving", binary.display()))
    }

    pub fn start_on(port: u16, store_args: &[&str]) -> Sidecar {
        Sidecar::try_start_on(&sidecar_binary(), port, store_args)
            .unwrap_or_else(|| panic!("rampart-sidecar exited before serving"))
    }

    fn try_start_on(binary: &std::path::Path, port: u16, store_args: &[&str]) -> Option<Sidecar> {
        let mut child = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(store_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run rampart-sidecar: {e}"));
        // Drain stdout so the sidecar never blocks on a full pipe; keep the log.
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || for _ in BufReader::new(out).lines() {});
        }
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let mut s = Sidecar {
            port,
            guard: Guard {
                child,
                name: "rampart-sidecar".into(),
            },
            log,
        };
        let up = wait_for("rampart-sidecar /healthz", Duration::from_secs(20), || {
            if s.guard.exited().is_some() {
                return Some(false);
            }
            get_once(port, "/healthz")
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| true)
        });
        up.then_some(s)
    }

    pub fn client(&self) -> Client {
        Client::new(self.port)
    }

    /// Its log so far (stderr).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn metrics_text(&self) -> String {
        get_once(self.port, "/metrics")
            .map(|r| r.body_text())
            .unwrap_or_default()
    }

    /// Kills the process (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.guard.child.kill();
        let _ = self.guard.child.wait();
    }
}
