//! Redis servers on loopback from Debian's `redis-server` (the Makefile installs it): one
//! node, a Redis Cluster (masters, optionally with replicas), and a Sentinel set over a
//! master and a replica. Nothing is persisted beyond a node's own directory, which a
//! restarted node keeps (a Cluster node finds its place again from `nodes.conf`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
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

/// A port for a Cluster node: its bus listens on port + 10000, which must exist and be
/// free too.
pub fn free_cluster_port() -> u16 {
    for _ in 0..200 {
        let p = free_port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
        // Ephemeral ports are often high: try one below, at random.
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = 20_000 + (n % 30_000) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair (p, p + 10000) below 55000")
}

pub struct RedisNode {
    pub port: u16,
    pub guard: Guard,
    args: Vec<String>,
    dir: TempDir,
}

impl RedisNode {
    fn spawn(extra: &[&str]) -> RedisNode {
        for _ in 0..3 {
            if let Some(n) = RedisNode::try_spawn_on(free_port(), extra, TempDir::new("redis")) {
                return n;
            }
        }
        RedisNode::spawn_on(free_port(), extra)
    }

    fn spawn_on(port: u16, extra: &[&str]) -> RedisNode {
        RedisNode::try_spawn_on(port, extra, TempDir::new("redis"))
            .unwrap_or_else(|| panic!("redis-server on {port} exited before serving"))
    }

    /// `None` when the server exits first (its port was taken).
    fn try_spawn_on(port: u16, extra: &[&str], dir: TempDir) -> Option<RedisNode> {
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let guard = Self::run(&args, &dir);
        let mut node = RedisNode { port, guard, args, dir };
        node.wait_up().then_some(node)
    }

    fn run(args: &[String], dir: &TempDir) -> Guard {
        let child = Command::new("redis-server")
            .args(args)
            .arg("--dir")
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server (make test installs it): {e}"));
        Guard {
            child,
            name: "redis".into(),
        }
    }

    fn wait_up(&mut self) -> bool {
        let port = self.port;
        wait_for("redis to answer PING", Duration::from_secs(20), || {
            if self.guard.exited().is_some() {
                return Some(false);
            }
            command(port, "PING")
                .ok()
                .filter(|r| r.starts_with("+PONG") || r.starts_with("-LOADING"))
                .map(|_| true)
        })
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

    /// Kills it (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.guard.child.kill();
        let _ = self.guard.child.wait();
    }

    /// Starts it again on its port, with its arguments and its directory.
    pub fn restart(&mut self) {
        self.kill();
        self.guard = Self::run(&self.args, &self.dir);
        assert!(self.wait_up(), "redis on {} did not come back", self.port);
    }

    /// Number of keys in the node's database.
    pub fn dbsize(&self) -> u64 {
        command(self.port, "DBSIZE")
            .ok()
            .and_then(|r| r.trim().trim_start_matches(':').parse().ok())
            .unwrap_or(0)
    }

    /// `master` or `slave`, from `INFO replication` (`None` when it does not answer).
    pub fn role(&self) -> Option<String> {
        let info = command(self.port, "INFO replication").ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("role:"))
            .map(|r| r.trim().to_string())
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// A Redis Cluster: `masters` nodes with slots spread by redis-cli, each with
/// `replicas` replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisNode>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        RedisCluster::start_with_replicas(masters, 0, Duration::from_secs(5))
    }

    /// `node_timeout`: how long a master is unreachable before its replica takes over.
    pub fn start_with_replicas(masters: usize, replicas: usize, node_timeout: Duration) -> RedisCluster {
        let timeout = node_timeout.as_millis().to_string();
        let nodes: Vec<RedisNode> = (0..masters * (1 + replicas))
            .map(|_| {
                let extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", &timeout];
                (0..5)
                    .find_map(|_| RedisNode::try_spawn_on(free_cluster_port(), &extra, TempDir::new("redis")))
                    .unwrap_or_else(|| panic!("no cluster node would start"))
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        // redis-cli creates clusters of 3 masters or more; one master takes every slot.
        if nodes.len() == 1 {
            let reply = command(nodes[0].port, "CLUSTER ADDSLOTSRANGE 0 16383").unwrap_or_default();
            assert!(reply.starts_with("+OK"), "CLUSTER ADDSLOTSRANGE: {reply}");
        } else {
            Self::create(&addrs, replicas);
        }
        let cluster = RedisCluster { nodes };
        for n in &cluster.nodes {
            wait_for("cluster_state:ok on every node", Duration::from_secs(30), || {
                command(n.port, "CLUSTER INFO")
                    .ok()
                    .filter(|r| r.contains("cluster_state:ok"))
                    .map(|_| ())
            });
        }
        if replicas > 0 {
            wait_for("every replica in sync", Duration::from_secs(30), || {
                let replicas_up = cluster
                    .nodes
                    .iter()
                    .filter(|n| {
                        command(n.port, "INFO replication")
                            .is_ok_and(|i| i.contains("role:slave") && i.contains("master_link_status:up"))
                    })
                    .count();
                (replicas_up == masters * replicas).then_some(())
            });
        }
        cluster
    }

    fn create(addrs: &[String], replicas: usize) {
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// The seed list for `--redis-cluster`.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    /// Indexes of the nodes that are masters now.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].role().as_deref() == Some("master"))
            .collect()
    }

    /// Indexes of the replicas of node `master` (from its `INFO replication`).
    pub fn replicas_of(&self, master: usize) -> Vec<usize> {
        let info = command(self.nodes[master].port, "INFO replication").unwrap_or_default();
        (0..self.nodes.len())
            .filter(|&i| info.contains(&format!("port={},", self.nodes[i].port)))
            .collect()
    }
}

/// A master, one replica and three sentinels watching them under the name `rampart`.
pub struct RedisSentinels {
    pub master: RedisNode,
    pub replica: RedisNode,
    pub sentinels: Vec<RedisNode>,
}

pub const SENTINEL_MASTER: &str = "rampart";

impl RedisSentinels {
    /// `down_after`: how long the master is unreachable before the sentinels fail over.
    pub fn start(down_after: Duration) -> RedisSentinels {
        let master = RedisNode::start();
        let replica = RedisNode::spawn(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        wait_for("the replica in sync", Duration::from_secs(30), || {
            command(replica.port, "INFO replication")
                .ok()
                .filter(|i| i.contains("master_link_status:up"))
                .map(|_| ())
        });
        let sentinels: Vec<RedisNode> = (0..3)
            .map(|_| {
                (0..5)
                    .find_map(|_| Self::sentinel(master.port, down_after))
                    .unwrap_or_else(|| panic!("no sentinel would start"))
            })
            .collect();
        let set = RedisSentinels {
            master,
            replica,
            sentinels,
        };
        // Ready when every sentinel knows the replica and the two other sentinels:
        // otherwise a failover could not reach its quorum.
        for s in &set.sentinels {
            wait_for(
                "sentinels that know each other and the replica",
                Duration::from_secs(60),
                || {
                    let replicas = command(s.port, &format!("SENTINEL replicas {SENTINEL_MASTER}")).ok()?;
                    let others = command(s.port, &format!("SENTINEL sentinels {SENTINEL_MASTER}")).ok()?;
                    let known = others.matches("runid").count();
                    (replicas.contains(&set.replica.port.to_string()) && known >= 2).then_some(())
                },
            );
        }
        set
    }

    fn sentinel(master_port: u16, down_after: Duration) -> Option<RedisNode> {
        let dir = TempDir::new("sentinel");
        let port = free_port();
        let conf = dir.0.join("sentinel.conf");
        let ms = down_after.as_millis();
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {SENTINEL_MASTER} {ms}\n\
             sentinel failover-timeout {SENTINEL_MASTER} {}\n\
             sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
            dir.0.display(),
            ms * 4
        );
        std::fs::write(&conf, text).unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server --sentinel: {e}"));
        let mut node = RedisNode {
            port,
            guard: Guard {
                child,
                name: "sentinel".into(),
            },
            args: Vec::new(),
            dir,
        };
        node.wait_up().then_some(node)
    }

    /// The seed list for `--redis-sentinel`.
    pub fn urls(&self) -> String {
        self.sentinels.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    /// The port of the master the sentinels name now.
    pub fn master_port(&self) -> Option<u16> {
        let reply = self
            .sentinels
            .iter()
            .find_map(|s| command(s.port, &format!("SENTINEL get-master-addr-by-name {SENTINEL_MASTER}")).ok())?;
        // *2 $9 127.0.0.1 $n <port>
        reply.lines().nth(4).and_then(|p| p.trim().parse().ok())
    }
}
