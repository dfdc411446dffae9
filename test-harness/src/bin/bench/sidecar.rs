//! The sidecar alone, against `redis-benchmark` on the same Redis in the same run: hits
//! accounted per second through `/v1/check` and `/v1/report`, on hot counters (where
//! coalescing helps) and on distinct ones (every hit its own counter: a per-IP or
//! per-key layer), then the distinct-counter reports on a Redis Cluster of 1 and of 3
//! masters.

use std::path::{Path, PathBuf};
use std::process::Command;

use rampart_test_harness::process::TempDir;

use crate::load::{medians, wrk_run, Sample, LONE_ROUNDS};
use rampart_test_harness::redis::{RedisCluster, RedisNode};
use rampart_test_harness::sidecar::Sidecar;

/// A wrk script posting bodies of `hits` hits to `path`.
struct Load {
    name: &'static str,
    path: &'static str,
    /// Hits per call (requests of a batched check, or hits of one body).
    hits: usize,
    /// Counters the hits cycle through: `None` for a fresh counter on every hit.
    keys: Option<usize>,
    cost: u64,
    /// Each hit is its own request of a batched check (`{"requests": [...]}`).
    batched: bool,
}

impl Load {
    fn script(&self, dir: &Path) -> PathBuf {
        let p = dir.join(format!("{}.lua", self.name.replace(' ', "_")));
        let cost = self.cost;
        // Each load names its counters apart (the initials of its name), so no load
        // finds counters an earlier one made: distinct counters are fresh.
        let tag: String = self.name.split_whitespace().filter_map(|w| w.chars().next()).collect();
        let one = |h: usize| {
            format!("{{\\\"key\\\":\\\"{tag}%d-{h}\\\",\\\"algorithm\\\":\\\"fixed_window\\\",\\\"limit\\\":1000000000,\\\"window_ms\\\":60000,\\\"cost\\\":{cost}}}")
        };
        let body = if self.batched {
            let requests: Vec<String> = (0..self.hits)
                .map(|h| format!("{{\\\"hits\\\":[{}]}}", one(h)))
                .collect();
            format!("{{\\\"requests\\\":[{}]}}", requests.join(","))
        } else {
            let hits: Vec<String> = (0..self.hits).map(one).collect();
            format!("{{\\\"hits\\\":[{}]}}", hits.join(","))
        };
        // `i` counts calls: `i % keys` cycles through hot counters; `i` alone never repeats.
        let index = match self.keys {
            Some(k) => format!("i % {k}"),
            None => "i".to_string(),
        };
        let lua = format!(
            "local i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"POST\", \"{}\", {{[\"Content-Type\"] = \"application/json\"}}, string.format(\"{body}\"{}))\nend\n",
            self.path,
            format!(", {index}").repeat(self.hits)
        );
        std::fs::write(&p, lua).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

/// Calls per second from wrk.
fn wrk_script(port: u16, script: &Path, seconds: u64, connections: u64) -> f64 {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "-s"])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap_or_else(|e| panic!("wrk: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.contains("Non-2xx") {
        eprintln!("warning: non-2xx answers from the sidecar:\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Commands each redis-benchmark run sends.
const REDIS_BENCHMARK_OPS: u64 = 300_000;

/// redis-benchmark ops/s from 16 connections: `INCR` plain, or a command pipelined 16
/// deep over 10 million random keys.
fn redis_benchmark(port: u16, pipelined: Option<&[&str]>) -> f64 {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args([
        "-p",
        &port.to_string(),
        "-n",
        &REDIS_BENCHMARK_OPS.to_string(),
        "-c",
        "16",
        "-q",
    ]);
    let label = match pipelined {
        None => {
            cmd.args(["-t", "incr"]);
            "INCR:".to_string()
        }
        Some(command) => {
            cmd.args(["-P", "16", "-r", "10000000"]).args(command);
            format!("{}:", command.join(" "))
        }
    };
    let out = cmd.output().unwrap_or_else(|e| panic!("redis-benchmark: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // The last one is the summary; earlier ones are progress lines.
    text.rsplit(label.as_str())
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

const HOT_CHECK: Load = Load {
    name: "check 1 hit per call 10 hot keys",
    path: "/v1/check",
    hits: 1,
    keys: Some(10),
    cost: 1,
    batched: false,
};
/// What a busy gateway worker sends: 20 requests per call, one hit each.
const HOT_CHECK20: Load = Load {
    name: "check 20 requests per call 10 hot keys",
    path: "/v1/check",
    hits: 20,
    keys: Some(10),
    cost: 1,
    batched: true,
};
/// A gateway at 20k req/s over 100 hot keys reports each key with cost ~20 per 100 ms.
const HOT_REPORT20: Load = Load {
    name: "report 100 keys x cost 20",
    path: "/v1/report",
    hits: 100,
    keys: Some(1000),
    cost: 20,
    batched: false,
};
/// A per-IP or per-key layer: every reported hit its own counter.
const DISTINCT_REPORT: Load = Load {
    name: "report 100 distinct counters x cost 1",
    path: "/v1/report",
    hits: 100,
    keys: None,
    cost: 1,
    batched: false,
};
/// Sync checks keyed per client: every request its own counter.
const DISTINCT_CHECK: Load = Load {
    name: "check 20 requests per call distinct counters",
    path: "/v1/check",
    hits: 20,
    keys: None,
    cost: 1,
    batched: true,
};

/// A lone request's check: one hit on one counter.
const LONE_CHECK: Load = Load {
    name: "check 1 hit one connection",
    path: "/v1/check",
    hits: 1,
    keys: Some(1),
    cost: 1,
    batched: false,
};

/// One `/v1/check` at a time straight to each sidecar (`(name, port)`): the sidecar's
/// own share of a lone sync request's time. Alternated, medians of `LONE_ROUNDS` runs.
pub fn lone_checks(sidecars: &[(&str, u16)], seconds: u64) {
    let dir = TempDir::new("bench-lone");
    let script = LONE_CHECK.script(&dir.0);
    for (_, port) in sidecars {
        wrk_run(*port, 1, 1, Some(&script)); // warm-up
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); sidecars.len()];
    for _ in 0..LONE_ROUNDS {
        for (k, (_, port)) in sidecars.iter().enumerate() {
            samples[k].push(wrk_run(*port, seconds, 1, Some(&script)));
        }
    }
    println!("\nsidecar alone, one connection (/v1/check of one hit, wrk -c1, medians of {LONE_ROUNDS}):");
    for ((name, _), m) in sidecars.iter().zip(medians(&samples)) {
        println!(
            "  {name:<28} {:>10.0} checks/s  p50 {:.3} ms  p99 {:.3} ms",
            m.rps, m.p50_ms, m.p99_ms
        );
    }
}

/// CPU seconds a Redis has used so far (user + system, from `INFO cpu`).
fn redis_cpu(port: u16) -> f64 {
    let info = rampart_test_harness::redis::command(port, "INFO cpu").unwrap_or_default();
    ["used_cpu_user:", "used_cpu_sys:"]
        .iter()
        .filter_map(|f| info.lines().find_map(|l| l.strip_prefix(f)?.trim().parse::<f64>().ok()))
        .sum()
}

/// The sidecar alone: hits/s per load, and the ratios to pipelined INCR that matter.
/// Returns (label, ratio) pairs for the chart.
pub fn sidecar_alone(redis: &RedisNode, sidecar: &Sidecar, seconds: u64) -> Vec<(String, f64)> {
    const CONNECTIONS: u64 = 16;
    let dir = TempDir::new("bench");
    let hits_per_s = |load: &Load, port: u16| {
        wrk_script(port, &load.script(&dir.0), seconds, CONNECTIONS) * (load.hits as u64 * load.cost) as f64
    };
    // Hits/s, and Redis CPU µs per hit (what the load costs Redis, apart from how much
    // of these 2 cores the sidecar and wrk took meanwhile).
    let run = |load: &Load| -> (f64, f64) {
        let cpu = redis_cpu(redis.port);
        let rate = hits_per_s(load, sidecar.port);
        let used = redis_cpu(redis.port) - cpu;
        (rate, used * 1e6 / (rate * seconds as f64).max(1.0))
    };
    let loads = [
        &HOT_CHECK,
        &HOT_CHECK20,
        &HOT_REPORT20,
        &DISTINCT_REPORT,
        &DISTINCT_CHECK,
    ];
    let (measured, cpu_per_hit): (Vec<f64>, Vec<f64>) = loads.iter().map(|l| run(l)).unzip();
    let plain = redis_benchmark(redis.port, None);
    let cpu = redis_cpu(redis.port);
    let pipelined = redis_benchmark(redis.port, Some(&["incr", "key:__rand_int__"]));
    let cpu_per_incr = (redis_cpu(redis.port) - cpu) * 1e6 / REDIS_BENCHMARK_OPS as f64;
    // What a counter of its own key would cost Redis at the least: a key created with
    // its expiry (fresh names: INCR above created the `key:` ones).
    let floor = redis_benchmark(
        redis.port,
        Some(&["set", "fresh:__rand_int__", "1", "px", "60000", "nx"]),
    );
    println!("\nsidecar alone (one Redis, wrk -c{CONNECTIONS}; hits/s, and Redis CPU µs per hit):");
    for ((l, m), c) in loads.iter().zip(&measured).zip(&cpu_per_hit) {
        println!("  {:<46} {m:>12.0} {c:>8.2} µs", l.name);
    }
    println!("  {:<46} {plain:>12.0}", "redis-benchmark INCR -c 16");
    println!(
        "  {:<46} {pipelined:>12.0} {cpu_per_incr:>8.2} µs",
        "redis-benchmark INCR -c 16 -P 16 -r 10000000"
    );
    println!("  {:<46} {floor:>12.0}", "redis-benchmark SET NX PX (same, fresh keys)");
    println!(
        "ratio redis-benchmark SET NX PX          {:.3}x INCR pipelined: the most a counter of its own key (with its expiry) can reach",
        floor / pipelined.max(1.0)
    );
    let ratio = |m: f64| m / pipelined.max(1.0);
    let mut chart = vec![(
        "Redis alone: SET NX PX (a key of its own per counter) / pipelined INCR".to_string(),
        ratio(floor),
    )];
    for (i, label) in [
        (2, "hot reports (cost 20)"),
        (3, "distinct reports"),
        (4, "distinct checks"),
    ] {
        println!(
            "ratio sidecar {label:<28} {:.3}x redis-benchmark pipelined INCR",
            ratio(measured[i])
        );
        chart.push((format!("sidecar {label} / pipelined INCR"), ratio(measured[i])));
    }
    // On these 2 cores the sidecar and wrk take CPU Redis would otherwise have; a Redis
    // on a core of its own carries as many hits as its CPU per hit allows.
    for (i, label) in [(3, "distinct reports"), (4, "distinct checks")] {
        let capacity = cpu_per_incr / cpu_per_hit[i].max(1e-9);
        println!(
            "ratio Redis CPU per pipelined INCR / per {label:<17} {capacity:.3}x: what a Redis of its own core carries"
        );
        chart.push((
            format!("Redis capacity: {label} (by Redis CPU per hit) / pipelined INCR"),
            capacity,
        ));
    }

    if std::env::var("BENCH_NO_CLUSTER").is_ok() {
        return chart;
    }
    // Redis Cluster: the same distinct-counter reports over 1 and 3 masters.
    println!("\ndistinct-counter reports through Redis Cluster (hits/s; all on these 2 cores):");
    for masters in [1, 3] {
        let cluster = RedisCluster::start(masters);
        let sc = Sidecar::start(&["--redis-cluster", &cluster.urls(), "--threads", "2"]);
        let hits = hits_per_s(&DISTINCT_REPORT, sc.port);
        println!("  {masters} master(s) {hits:>38.0}");
        chart.push((
            format!("cluster, {masters} master(s), distinct reports / pipelined INCR"),
            ratio(hits),
        ));
    }
    chart
}
