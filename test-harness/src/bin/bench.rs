//! `make bench`: the same load against Envoy with different filters, in one run.
//!
//! Configurations are alternated round by round (A B C D, A B C D, ...) and medians
//! reported, because these machines are noisy. Every route answers with Envoy's
//! `direct_response`, so no upstream competes for the CPU and the differences are the
//! filters' own cost. Load comes from `wrk` on loopback with a bounded duration.
//!
//! Environment: BENCH_ROUNDS (default 5), BENCH_SECONDS per run (default 5),
//! BENCH_CONNECTIONS (default 32).

use std::process::Command;

use rampart_test_harness::envoy::{Envoy, Filter, Options};
use rampart_test_harness::redis::RedisNode;
use rampart_test_harness::sidecar::Sidecar;
use serde_json::json;

struct Scenario {
    name: &'static str,
    filter: Filter,
    /// Wire the cluster template to the bench's sidecar.
    sidecar: bool,
}

#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Rampart's local layers: an IP layer and an API-key layer, limits high enough that
/// every benchmark request is admitted (the admitted path is the common one).
fn rampart_local() -> String {
    json!({"layers": [
        {"name": "edge", "key": "ip", "algorithm": "sliding_window", "limit": 1_000_000_000u64, "window": "1m"},
        {"name": "keys", "key": "header:x-api-key", "algorithm": "sliding_window", "limit": 1_000_000_000u64, "window": "1m"}
    ]})
    .to_string()
}

/// An IP layer plus a cluster-wide API-key layer in `sync` or `async` mode.
fn rampart_cluster(sync: &str) -> String {
    json!({
        "sidecar": {"upstream": "rampart_sidecar", "timeout": "250ms", "key_secret": "bench-fleet-secret-0123"},
        "layers": [
            {"name": "edge", "key": "ip", "algorithm": "sliding_window", "limit": 1_000_000_000u64, "window": "1m"},
            {"name": "keys", "key": "header:x-api-key", "algorithm": "sliding_window", "limit": 1_000_000_000u64,
             "window": "1m", "scope": "cluster", "sync": sync}
        ]
    })
    .to_string()
}

fn parse_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

fn wrk(port: u16, seconds: u64, connections: u64) -> Sample {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
        .args(["-H", "x-api-key: bench-key"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk (make bench installs it): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut s = Sample::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Requests/sec:") => s.rps = words.next().and_then(|v| v.parse().ok()).unwrap_or(0.0),
            Some("50.000%") | Some("50%") => s.p50_ms = words.next().and_then(parse_ms).unwrap_or(0.0),
            Some("99.000%") | Some("99%") => s.p99_ms = words.next().and_then(parse_ms).unwrap_or(0.0),
            _ => {}
        }
    }
    if text.contains("Non-2xx") {
        eprintln!("warning: non-2xx responses in a run on port {port}:\n{text}");
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn direct_response(envoy_json: &mut serde_json::Value) {
    let vh = &mut envoy_json["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0];
    vh["routes"] =
        json!([{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}]);
}

fn main() {
    let rounds = env_or("BENCH_ROUNDS", 5);
    let seconds = env_or("BENCH_SECONDS", 5);
    let connections = env_or("BENCH_CONNECTIONS", 32);
    let scenarios = [
        Scenario {
            name: "no filter",
            filter: Filter::None,
            sidecar: false,
        },
        Scenario {
            name: "native local_ratelimit",
            filter: Filter::NativeLocalRatelimit {
                tokens_per_second: 1_000_000_000,
            },
            sidecar: false,
        },
        Scenario {
            name: "no-op wasm filter",
            filter: Filter::Noop,
            sidecar: false,
        },
        Scenario {
            name: "rampart local (ip + key)",
            filter: Filter::Rampart(rampart_local()),
            sidecar: false,
        },
        Scenario {
            name: "rampart cluster sync",
            filter: Filter::Rampart(rampart_cluster("sync")),
            sidecar: true,
        },
        Scenario {
            name: "rampart cluster async",
            filter: Filter::Rampart(rampart_cluster("async")),
            sidecar: true,
        },
    ];
    let redis = RedisNode::start();
    let sidecar = Sidecar::start(&["--redis", &redis.url()]);
    let envoys: Vec<Envoy> = scenarios
        .iter()
        .map(|s| {
            let opts = Options {
                filter: s.filter.clone(),
                upstream_port: 1,
                concurrency: 1,
                template: if s.sidecar {
                    "filters/envoy/envoy-cluster.yaml"
                } else {
                    "filters/envoy/envoy.yaml"
                },
                sidecar_port: s.sidecar.then_some(sidecar.port),
            };
            Envoy::start_with(&opts, direct_response)
        })
        .collect();
    eprintln!("bench: {rounds} alternated rounds x {} configurations x {seconds}s, wrk -t1 -c{connections}, Envoy --concurrency 1", scenarios.len());
    for e in &envoys {
        wrk(e.port, 1, connections); // warm-up
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); scenarios.len()];
    for round in 0..rounds {
        for (i, e) in envoys.iter().enumerate() {
            let s = wrk(e.port, seconds, connections);
            eprintln!(
                "  round {} {:<28} {:>10.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms",
                round + 1,
                scenarios[i].name,
                s.rps,
                s.p50_ms,
                s.p99_ms
            );
            samples[i].push(s);
        }
    }
    println!(
        "\n{:<28} {:>12} {:>10} {:>10}",
        "configuration (medians)", "req/s", "p50 ms", "p99 ms"
    );
    let med: Vec<Sample> = samples
        .iter()
        .map(|v| Sample {
            rps: median(v.iter().map(|s| s.rps).collect()),
            p50_ms: median(v.iter().map(|s| s.p50_ms).collect()),
            p99_ms: median(v.iter().map(|s| s.p99_ms).collect()),
        })
        .collect();
    for (s, m) in scenarios.iter().zip(&med) {
        println!("{:<28} {:>12.0} {:>10.3} {:>10.3}", s.name, m.rps, m.p50_ms, m.p99_ms);
    }
    sidecar_alone(&redis, &sidecar, seconds, connections);
    let native = med[1].rps.max(1.0);
    println!();
    for (s, m) in scenarios.iter().zip(&med) {
        println!("ratio {:<28} {:.3}x native local_ratelimit", s.name, m.rps / native);
    }
    let none = &med[0];
    for (s, m) in scenarios.iter().zip(&med).filter(|(s, _)| s.sidecar) {
        println!("p99 {:<30} +{:.3} ms over no filter", s.name, m.p99_ms - none.p99_ms);
    }
}

/// The sidecar alone: hits accounted per second through /v1/check (one hit per call) and
/// /v1/report (100 hits per call), against redis-benchmark's INCR on the same Redis.
fn sidecar_alone(redis: &RedisNode, sidecar: &Sidecar, seconds: u64, connections: u64) {
    let dir = rampart_test_harness::process::TempDir::new("bench");
    let script = |name: &str, path: &str, hits: usize, modulo: usize| {
        let p = dir.0.join(name);
        let body = format!(
            "{{\\\"hits\\\":[{}]}}",
            (0..hits)
                .map(|h| format!("{{\\\"key\\\":\\\"k%d-{h}\\\",\\\"algorithm\\\":\\\"fixed_window\\\",\\\"limit\\\":1000000000,\\\"window_ms\\\":60000}}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let lua = format!(
            "local i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"POST\", \"{path}\", {{[\"Content-Type\"] = \"application/json\"}}, string.format(\"{body}\", i % {modulo}{}))\nend\n",
            format!(", i % {modulo}").repeat(hits.saturating_sub(1))
        );
        std::fs::write(&p, lua).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    };
    // Checks spread over 10 hot keys (concurrent hits on one key coalesce); reports carry
    // 100 distinct keys per call, cost 1 each.
    let check = script("check.lua", "/v1/check", 1, 10);
    let report = script("report.lua", "/v1/report", 100, 1000);
    let run = |lua: &std::path::Path| {
        let out = Command::new("wrk")
            .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "-s"])
            .arg(lua)
            .arg(format!("http://127.0.0.1:{}/", sidecar.port))
            .output()
            .unwrap_or_else(|e| panic!("wrk: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let check_rps = run(&check);
    let report_rps = run(&report);
    let incr = |pipeline: &str| {
        let out = Command::new("redis-benchmark")
            .args([
                "-p",
                &redis.port.to_string(),
                "-t",
                "incr",
                "-n",
                "300000",
                "-c",
                "32",
                "-q",
                "-P",
                pipeline,
            ])
            .output()
            .unwrap_or_else(|e| panic!("redis-benchmark: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // The last "INCR:" is the summary; earlier ones are progress lines.
        text.rsplit("INCR:")
            .next()
            .and_then(|t| t.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (plain, pipelined) = (incr("1"), incr("16"));
    println!("\nsidecar alone (Redis store, wrk -c{connections}):");
    println!("  /v1/check, 1 hit per call, 10 keys {:>10.0} hits/s", check_rps);
    println!("  /v1/report, 100 hits per call    {:>12.0} hits/s", report_rps * 100.0);
    println!("  redis-benchmark INCR             {:>12.0} ops/s", plain);
    println!("  redis-benchmark INCR -P 16       {:>12.0} ops/s", pipelined);
    println!(
        "ratio sidecar report hits/s        {:.3}x redis-benchmark pipelined INCR",
        report_rps * 100.0 / pipelined.max(1.0)
    );
}
