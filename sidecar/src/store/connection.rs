//! Redis connections that follow failovers.
//!
//! Cluster clients that refresh their slot map only on MOVED or ASK never recover from
//! a master that died: a dead master answers nothing, so nothing redirects, and every
//! call keeps failing after a replica was promoted (redis-rs reconnects to the same
//! address; mature clients such as Lettuce and ioredis refresh on connection errors and
//! on a timer). So a watcher here does what they do:
//!
//! - **Cluster**: every second, and at once after a connection error (at most every
//!   200 ms), it asks a reachable node for `CLUSTER SLOTS`, trying the masters it knows
//!   first and then every node ever seen (seeds, replicas). When the slot owners
//!   differ from those of the current connection, it builds a new one from them and
//!   swaps it in. A planned `CLUSTER FAILOVER` redirects with MOVED, which the client
//!   follows by itself; the watcher catches up within a second.
//! - **Sentinel**: the same cadence, asking the sentinels in turn
//!   `SENTINEL get-master-addr-by-name`; when the master moved, it connects to the new
//!   one and swaps. A demoted master answering READONLY counts as an error and hurries
//!   the next look.
//! - **One Redis**: redis-rs's connection manager reconnects to the same address by
//!   itself; there is nothing to follow.
//!
//! Calls in flight on the old connection fail (transiently: `failure_mode` applies);
//! the next calls use the new one.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{RedisFuture, Value};
use tokio::sync::Notify;

use super::redis::classify;
use super::StoreError;
use crate::metrics::METRICS;

/// How often the topology is looked at without errors.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// The soonest a connection error brings the next look.
const NUDGE_GAP: Duration = Duration::from_millis(200);

/// CRC16 (XMODEM), as Redis Cluster hashes keys to slots; a byte at a time from a table
/// (every hit hashes its counter's name, some twice).
fn crc16(bytes: &[u8]) -> u16 {
    const TABLE: [u16; 256] = {
        let mut t = [0u16; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = (i as u16) << 8;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
                bit += 1;
            }
            t[i] = crc;
            i += 1;
        }
        t
    };
    bytes
        .iter()
        .fold(0u16, |crc, &b| (crc << 8) ^ TABLE[usize::from((crc >> 8) as u8 ^ b)])
}

/// The Cluster slot of every key of counter `name`: they share the hash tag `{name}`.
pub fn slot_of(name: &str) -> u16 {
    crc16(name.as_bytes()) % 16384
}

/// What to connect to.
#[derive(Clone, Debug)]
pub enum Target {
    Single(String),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        password: Option<String>,
    },
}

/// A connection to use now (cheap to clone: both kinds multiplex one socket per node).
/// Commands, pipelines and scripts run on either alike (`ConnectionLike`).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Slot ranges and the address of the master serving each, sorted: two maps are the
/// same topology when these are equal.
type SlotOwners = Vec<(i64, i64, String)>;

/// What the current connection was built from.
#[derive(Default, Debug, Clone)]
struct View {
    /// Cluster: the slot owners, and every node address seen (`host:port`).
    owners: SlotOwners,
    nodes: Vec<String>,
    /// Sentinel: the master's address.
    master: Option<String>,
}

pub struct Supervised {
    target: Target,
    timeout: Duration,
    current: RwLock<Conn>,
    view: Mutex<View>,
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

async fn within<T>(t: Duration, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
    match tokio::time::timeout(t, f).await {
        Err(_) => Err(StoreError {
            transient: true,
            message: format!("no answer within {t:?}"),
        }),
        Ok(Err(e)) => Err(classify(&e)),
        Ok(Ok(v)) => Ok(v),
    }
}

/// One short-lived connection to ask a node or a sentinel something.
async fn ask(url: &str, cmd: &redis::Cmd, t: Duration) -> Result<Value, StoreError> {
    let client = redis::Client::open(url).map_err(|e| classify(&e))?;
    let mut c: MultiplexedConnection = within(t, client.get_multiplexed_async_connection()).await?;
    within(t, cmd.query_async::<Value>(&mut c)).await
}

/// A reply as text (bulk, simple or a number), for parsing Redis's answers.
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `CLUSTER SLOTS`: [[start, end, [host, port, id, ...], replica...], ...].
fn parse_slots(v: &Value) -> Option<(SlotOwners, Vec<String>)> {
    let Value::Array(ranges) = v else { return None };
    let mut owners = Vec::new();
    let mut nodes = Vec::new();
    for r in ranges {
        let Value::Array(parts) = r else { return None };
        let (Some(Value::Int(start)), Some(Value::Int(end))) = (parts.first(), parts.get(1)) else {
            return None;
        };
        for (i, node) in parts.iter().skip(2).enumerate() {
            let Value::Array(n) = node else { continue };
            let (Some(host), Some(port)) = (n.first().and_then(text), n.get(1).and_then(text)) else {
                continue;
            };
            let addr = format!("{host}:{port}");
            if i == 0 {
                owners.push((*start, *end, addr.clone()));
            }
            if !nodes.contains(&addr) {
                nodes.push(addr);
            }
        }
    }
    owners.sort();
    (!owners.is_empty()).then_some((owners, nodes))
}

async fn cluster_connection(nodes: &[String], t: Duration) -> Result<ClusterConnection, StoreError> {
    let urls: Vec<String> = nodes.iter().map(|n| format!("redis://{n}")).collect();
    let client = redis::cluster::ClusterClientBuilder::new(urls)
        .connection_timeout(t)
        .response_timeout(t)
        // The call's own timeout bounds it; retries past it only queue work behind a
        // dead node. The watcher, not retries, gets us to the new master.
        .retries(1)
        .min_retry_wait(10)
        .max_retry_wait(50)
        .build()
        .map_err(|e| classify(&e))?;
    within(t * 4, client.get_async_connection()).await
}

async fn single_connection(url: &str, t: Duration) -> Result<ConnectionManager, StoreError> {
    let client = redis::Client::open(url).map_err(|e| classify(&e))?;
    // The manager reconnects by itself after Redis restarts or drops us.
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(t))
        .set_response_timeout(Some(t))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    within(t * 4, ConnectionManager::new_with_config(client, cfg)).await
}

fn master_url(addr: &str, password: &Option<String>) -> String {
    match password {
        Some(p) => format!("redis://:{p}@{addr}"),
        None => format!("redis://{addr}"),
    }
}

impl Supervised {
    /// Connects (failing when nothing answers) and starts following the topology.
    pub async fn connect(target: Target, timeout: Duration) -> Result<Arc<Supervised>, StoreError> {
        let (conn, view) = match &target {
            Target::Single(url) => (Conn::Single(single_connection(url, timeout).await?), View::default()),
            Target::Cluster(seeds) => {
                let nodes: Vec<String> = seeds.iter().map(|s| host_port(s)).collect();
                let conn = Conn::Cluster(cluster_connection(&nodes, timeout).await?);
                let mut view = View {
                    nodes,
                    ..View::default()
                };
                if let Some((owners, seen)) = Self::probe_slots(&view.nodes, &[], timeout).await {
                    view.owners = owners;
                    merge(&mut view.nodes, seen);
                }
                (conn, view)
            }
            Target::Sentinel {
                sentinels,
                master,
                password,
            } => {
                let addr = Self::ask_sentinels(sentinels, master, timeout).await?;
                let conn = single_connection(&master_url(&addr, password), timeout).await?;
                (
                    Conn::Single(conn),
                    View {
                        master: Some(addr),
                        ..View::default()
                    },
                )
            }
        };
        let s = Arc::new(Supervised {
            target,
            timeout,
            current: RwLock::new(conn),
            view: Mutex::new(view),
            wake: Notify::new(),
        });
        if !matches!(s.target, Target::Single(_)) {
            tokio::spawn(Arc::clone(&s).watch());
        }
        Ok(s)
    }

    pub fn conn(&self) -> Conn {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The address of the master owning `slot`, as last seen (Cluster only).
    pub fn owner_of(&self, slot: u16) -> Option<String> {
        let v = lock(&self.view);
        let slot = i64::from(slot);
        v.owners
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, a)| a.clone())
    }

    /// A call failed in a way a topology change could explain: look again soon.
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// What is connected, for `/healthz`.
    pub fn describe(&self) -> String {
        let v = lock(&self.view).clone();
        match &self.target {
            Target::Single(url) => host_port(url),
            Target::Cluster(_) => {
                let mut masters: Vec<&str> = v.owners.iter().map(|(_, _, a)| a.as_str()).collect();
                masters.sort();
                masters.dedup();
                format!("masters {}", masters.join(","))
            }
            Target::Sentinel { master, .. } => {
                format!("master {master} at {}", v.master.as_deref().unwrap_or("?"))
            }
        }
    }

    async fn watch(self: Arc<Self>) {
        let mut last = Instant::now();
        loop {
            let woken = tokio::select! {
                _ = self.wake.notified() => true,
                _ = tokio::time::sleep(WATCH_EVERY) => false,
            };
            if woken {
                let since = last.elapsed();
                if since < NUDGE_GAP {
                    tokio::time::sleep(NUDGE_GAP - since).await;
                }
            }
            last = Instant::now();
            match &self.target {
                Target::Single(_) => return,
                Target::Cluster(_) => self.follow_cluster().await,
                Target::Sentinel {
                    sentinels,
                    master,
                    password,
                } => self.follow_sentinel(sentinels, master, password).await,
            }
        }
    }

    /// The slot map from the first node that answers: masters first, then the rest.
    async fn probe_slots(nodes: &[String], masters: &[String], t: Duration) -> Option<(SlotOwners, Vec<String>)> {
        let ordered = masters.iter().chain(nodes.iter().filter(|n| !masters.contains(n)));
        for node in ordered {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SLOTS");
            if let Ok(v) = ask(&format!("redis://{node}"), &cmd, t).await {
                if let Some(found) = parse_slots(&v) {
                    return Some(found);
                }
            }
        }
        None
    }

    async fn follow_cluster(&self) {
        let view = lock(&self.view).clone();
        let masters: Vec<String> = view.owners.iter().map(|(_, _, a)| a.clone()).collect();
        let Some((owners, seen)) = Self::probe_slots(&view.nodes, &masters, self.timeout).await else {
            return;
        };
        if owners == view.owners {
            lock(&self.view).nodes = merged(view.nodes, seen);
            return;
        }
        // New owners first: the new connection learns the map from them.
        let mut nodes: Vec<String> = owners.iter().map(|(_, _, a)| a.clone()).collect();
        nodes.dedup();
        let nodes = merged(merged(nodes, seen), view.nodes);
        match cluster_connection(&nodes, self.timeout).await {
            Ok(conn) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Conn::Cluster(conn);
                let moved = changed_owners(&view.owners, &owners);
                *lock(&self.view) = View {
                    owners,
                    nodes,
                    master: None,
                };
                METRICS.topology_refreshes.inc();
                log::warn!("redis cluster topology changed ({moved}); now sending there");
            }
            Err(e) => log::debug!("redis cluster: cannot connect after a topology change yet: {e}"),
        }
    }

    async fn ask_sentinels(sentinels: &[String], master: &str, t: Duration) -> Result<String, StoreError> {
        let mut last = None;
        for s in sentinels {
            let mut cmd = redis::cmd("SENTINEL");
            cmd.arg("get-master-addr-by-name").arg(master);
            match ask(s, &cmd, t).await {
                Ok(Value::Array(a)) if a.len() == 2 => {
                    if let (Some(host), Some(port)) = (text(&a[0]), text(&a[1])) {
                        return Ok(format!("{host}:{port}"));
                    }
                }
                Ok(other) => {
                    last = Some(StoreError {
                        transient: false,
                        message: format!("sentinel {s} does not know master {master:?} ({other:?})"),
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(StoreError {
            transient: true,
            message: "no sentinel given".into(),
        }))
    }

    async fn follow_sentinel(&self, sentinels: &[String], master: &str, password: &Option<String>) {
        let addr = match Self::ask_sentinels(sentinels, master, self.timeout).await {
            Ok(a) => a,
            Err(e) => {
                log::debug!("sentinels: {e}");
                return;
            }
        };
        let before = lock(&self.view).master.clone();
        if before.as_deref() == Some(addr.as_str()) {
            return;
        }
        match single_connection(&master_url(&addr, password), self.timeout).await {
            Ok(conn) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Conn::Single(conn);
                lock(&self.view).master = Some(addr.clone());
                METRICS.topology_refreshes.inc();
                log::warn!(
                    "sentinel failover noticed: master {master:?} moved from {} to {addr}; now sending there",
                    before.as_deref().unwrap_or("?")
                );
            }
            Err(e) => log::debug!("sentinel master {addr} does not answer yet: {e}"),
        }
    }
}

fn merge(into: &mut Vec<String>, more: Vec<String>) {
    for n in more {
        if !into.contains(&n) {
            into.push(n);
        }
    }
}

fn merged(mut a: Vec<String>, b: Vec<String>) -> Vec<String> {
    merge(&mut a, b);
    a
}

/// "slots 0-5460 127.0.0.1:7000 -> 127.0.0.1:7004" for every range whose owner changed.
fn changed_owners(before: &SlotOwners, after: &SlotOwners) -> String {
    let lines: Vec<String> = after
        .iter()
        .filter(|r| !before.contains(r))
        .map(|(s, e, a)| {
            let old = before
                .iter()
                .find(|(bs, be, _)| bs == s && be == e)
                .map_or("?", |(_, _, o)| o.as_str());
            format!("slots {s}-{e} {old} -> {a}")
        })
        .collect();
    if lines.is_empty() {
        "slot ranges redrawn".into()
    } else {
        lines.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn slot_maps_compare_by_owner_and_list_every_node() {
        let v = Value::Array(vec![
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("10.0.0.2", 7001)]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.3", 7003),
            ]),
        ]);
        let (owners, nodes) = parse_slots(&v).unwrap();
        assert_eq!(
            owners,
            vec![(0, 5460, "10.0.0.1:7000".into()), (5461, 16383, "10.0.0.2:7001".into())]
        );
        assert_eq!(nodes, ["10.0.0.2:7001", "10.0.0.1:7000", "10.0.0.3:7003"]);
        let after = vec![(0, 5460, "10.0.0.3:7003".into()), (5461, 16383, "10.0.0.2:7001".into())];
        assert_eq!(
            changed_owners(&owners, &after),
            "slots 0-5460 10.0.0.1:7000 -> 10.0.0.3:7003"
        );
        assert_eq!(parse_slots(&Value::Array(vec![])), None);
        assert_eq!(parse_slots(&Value::Nil), None);
    }

    #[test]
    fn slots_are_redis_cluster_slots() {
        // `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("bar"), 5061);
        assert_eq!(slot_of("a"), 15495);
        assert_eq!(slot_of("b"), 3300);
        assert_eq!(slot_of("123456789"), 12739);
        assert_eq!(slot_of(""), 0);
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn addresses_come_out_of_urls() {
        assert_eq!(host_port("redis://:pw@10.0.0.1:26379/0"), "10.0.0.1:26379");
        assert_eq!(host_port("redis://h:1"), "h:1");
        assert_eq!(master_url("h:1", &Some("pw".into())), "redis://:pw@h:1");
    }
}
