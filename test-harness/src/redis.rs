//! Redis servers on loopback: one node, or a 3-master Redis Cluster, from Debian's
//! `redis-server` (the Makefile installs it). Nothing is persisted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, wait_for, Guard, TempDir};

/// Sends one inline command and returns the raw reply (enough for PING, INFO, ...).
pub fn command(port: u16, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{cmd}\r\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

pub struct RedisNode {
    pub port: u16,
    pub guard: Guard,
    _dir: TempDir,
}

impl RedisNode {
    fn spawn(extra: &[&str]) -> RedisNode {
        for _ in 0..3 {
            if let Some(n) = RedisNode::try_spawn_on(free_port(), extra) {
                return n;
            }
        }
        RedisNode::spawn_on(free_port(), extra)
    }

    fn spawn_on(port: u16, extra: &[&str]) -> RedisNode {
        RedisNode::try_spawn_on(port, extra).unwrap_or_else(|| panic!("redis-server on {port} exited before serving"))
    }

    /// `None` when the server exits first (its port was taken).
    fn try_spawn_on(port: u16, extra: &[&str]) -> Option<RedisNode> {
        let dir = TempDir::new("redis");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--protected-mode", "yes", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir.0)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server (make test installs it): {e}"));
        let mut node = RedisNode {
            port,
            guard: Guard {
                child,
                name: "redis".into(),
            },
            _dir: dir,
        };
        let up = wait_for("redis to answer PING", Duration::from_secs(20), || {
            if node.guard.exited().is_some() {
                return Some(false);
            }
            command(port, "PING")
                .ok()
                .filter(|r| r.starts_with("+PONG"))
                .map(|_| true)
        });
        up.then_some(node)
    }

    pub fn start() -> RedisNode {
        RedisNode::spawn(&[])
    }

    /// A fresh server on a given port (to bring one back where clients expect it).
    pub fn start_on(port: u16) -> RedisNode {
        RedisNode::spawn_on(port, &[])
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        signal(self.guard.pid(), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.guard.pid(), "CONT");
    }

    /// Number of keys in the node's database.
    pub fn dbsize(&self) -> u64 {
        command(self.port, "DBSIZE")
            .ok()
            .and_then(|r| r.trim().trim_start_matches(':').parse().ok())
            .unwrap_or(0)
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// A Redis Cluster of `masters` nodes (no replicas), slots spread by redis-cli.
pub struct RedisCluster {
    pub nodes: Vec<RedisNode>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        let nodes: Vec<RedisNode> = (0..masters)
            .map(|_| RedisNode::spawn(&["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]))
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            wait_for("cluster_state:ok on every node", Duration::from_secs(30), || {
                command(n.port, "CLUSTER INFO")
                    .ok()
                    .filter(|r| r.contains("cluster_state:ok"))
                    .map(|_| ())
            });
        }
        RedisCluster { nodes }
    }

    /// The seed list for `--redis-cluster`.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }
}
