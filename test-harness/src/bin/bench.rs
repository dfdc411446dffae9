//! `make bench`: the same load against Envoy with different filters, in one run.
//!
//! Configurations are alternated round by round (A B C D, A B C D, ...) and medians
//! reported, because these machines are noisy. Every route answers with Envoy's
//! `direct_response`, so no upstream competes for the CPU and the differences are the
//! filters' own cost. Load comes from `wrk` on loopback with a bounded duration.
//!
//! Environment: BENCH_ROUNDS (default 5), BENCH_SECONDS per run (default 5),
//! BENCH_CONNECTIONS (default 32). BENCH_QUICK=1 runs only the local configurations
//! (no sidecar, no open-loop or sidecar-alone parts): the loop for working on the
//! filter's own cost. BENCH_CONFIG=<file.json> replaces the local Rampart
//! configuration with your own plugin JSON (its limits should admit every request).
//! BENCH_SYNC_RATE=<req/s> paces the latency runs at that rate instead of half of the
//! sync configuration's saturation. BENCH_BASELINE_WASM=<file.wasm> adds another build's
//! local layers to the same rounds (to measure a change against the build before it).
//!
//! Then Kong's and APISIX's engines (where `../shared` has them), one worker each: no
//! filter, the no-op wasm filter and Rampart's local layers, alternated the same way,
//! with ratios to the no-op filter. Each engine proxies to a server inside the same
//! nginx, so the three differ only by the filter. BENCH_ONLY=engines runs just these.

use std::process::Command;
use std::time::Duration;

use rampart_test_harness::envoy::{Envoy, Filter, Options};
use rampart_test_harness::nginx::{self, Engine, Nginx};
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
    if let Ok(path) = std::env::var("BENCH_CONFIG") {
        return std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("BENCH_CONFIG {path}: {e}"));
    }
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
    let quick = env_or("BENCH_QUICK", 0) == 1;
    if std::env::var("BENCH_ONLY").is_ok_and(|o| o == "engines") {
        engines(rounds, seconds, connections);
        return;
    }
    let mut scenarios = vec![
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
            name: "trivial cas + header",
            filter: Filter::Trivial { call: false },
            sidecar: false,
        },
        Scenario {
            name: "rampart local (ip + key)",
            filter: Filter::Rampart(rampart_local()),
            sidecar: false,
        },
        Scenario {
            name: "trivial + sidecar call",
            filter: Filter::Trivial { call: true },
            sidecar: true,
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
    // BENCH_BASELINE_WASM=<another build of rampart.wasm>: its local layers run in the
    // same rounds, to measure a change against the build before it.
    if let Ok(wasm) = std::env::var("BENCH_BASELINE_WASM") {
        let at = scenarios
            .iter()
            .position(|s| s.name == "rampart local (ip + key)")
            .map_or(0, |i| i + 1);
        scenarios.insert(
            at,
            Scenario {
                name: "baseline build local (ip + key)",
                filter: Filter::RampartBuild {
                    wasm: wasm.into(),
                    plugin: rampart_local(),
                },
                sidecar: false,
            },
        );
    }
    if quick {
        scenarios.retain(|s| !s.sidecar);
    }
    // BENCH_ONLY=sync,async: the two baselines plus the configurations named.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let mut index = 0;
        scenarios.retain(|s| {
            index += 1;
            index <= 2 || only.split(',').any(|w| !w.is_empty() && s.name.contains(w))
        });
    }
    let redis = RedisNode::start();
    let sidecar = Sidecar::start(&[
        "--redis",
        &redis.url(),
        "--threads",
        &env_or("BENCH_SIDECAR_THREADS", 2).to_string(),
    ]);
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
    if let Some(sync) = scenarios.iter().position(|s| s.name == "rampart cluster sync") {
        sync_latency(&envoys, &med, sync, seconds);
    }
    if !quick && std::env::var("BENCH_ONLY").is_err() {
        sidecar_alone(&redis, &sidecar, seconds, connections);
    }
    if std::env::var("BENCH_ONLY").is_err() {
        engines(rounds, seconds, connections);
    }
    println!();
    let none = &med[0];
    for (s, m) in scenarios.iter().zip(&med).filter(|(s, _)| s.sidecar) {
        println!("p99 {:<30} +{:.3} ms over no filter", s.name, m.p99_ms - none.p99_ms);
    }
    // Rampart against the least a filter of its kind can do on this host.
    let rps = |name: &str| {
        scenarios
            .iter()
            .position(|s| s.name == name)
            .map(|i| med[i].rps.max(1.0))
    };
    for (ours, reference) in [
        ("rampart local (ip + key)", "trivial cas + header"),
        ("rampart local (ip + key)", "no-op wasm filter"),
        ("baseline build local (ip + key)", "no-op wasm filter"),
        ("rampart local (ip + key)", "baseline build local (ip + key)"),
        ("rampart cluster async", "trivial cas + header"),
        ("rampart cluster sync", "trivial + sidecar call"),
    ] {
        if let (Some(a), Some(b)) = (rps(ours), rps(reference)) {
            println!("ratio {ours:<28} {:.3}x {reference}", a / b);
        }
    }
    // Last, as DESIGN.md §7 asks: every configuration against the native filter.
    let native = med[1].rps.max(1.0);
    println!();
    for (s, m) in scenarios.iter().zip(&med) {
        println!("ratio {:<28} {:.3}x native local_ratelimit", s.name, m.rps / native);
    }
}

/// Latency at half of the sync layer's saturation, open loop (every request has a
/// scheduled time; waiting counts): no filter and sync, alternated.
fn sync_latency(envoys: &[Envoy], med: &[Sample], sync: usize, seconds: u64) {
    let chosen: Option<f64> = std::env::var("BENCH_SYNC_RATE").ok().and_then(|r| r.parse().ok());
    let rate = chosen.unwrap_or(med[sync].rps / 2.0);
    let which = if chosen.is_some() {
        "BENCH_SYNC_RATE"
    } else {
        "half of sync saturation"
    };
    let (mut none_p99, mut sync_p99) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        none_p99.push(paced(envoys[0].port, rate, seconds as f64).1);
        sync_p99.push(paced(envoys[sync].port, rate, seconds as f64).1);
    }
    let (none_p99, sync_p99) = (median(none_p99), median(sync_p99));
    println!(
        "\nopen-loop {rate:.0} req/s ({which}): p99 no filter {none_p99:.3} ms, rampart cluster sync {sync_p99:.3} ms"
    );
    println!(
        "p99 sync at {rate:.0} req/s          +{:.3} ms over no filter",
        sync_p99 - none_p99
    );
}

/// Open-loop load: `rate` requests per second for `secs` over 32 connections (as many
/// as the saturation runs), driven by one event-loop thread so the load generator
/// stays light next to the proxy on the same cores. Each request has a scheduled time
/// and latency counts from it: a slow answer delays (and charges) the requests behind
/// it on its connection. Returns (p50, p99) in ms.
fn paced(port: u16, rate: f64, secs: f64) -> (f64, f64) {
    const CONNECTIONS: usize = 32;
    let interval = Duration::from_secs_f64(CONNECTIONS as f64 / rate.max(1.0));
    let count = ((rate * secs) as usize / CONNECTIONS).max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let mut all: Vec<f64> = runtime.block_on(async move {
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                let offset = interval.mul_f64(c as f64 / CONNECTIONS as f64);
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(count);
                    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                        return lat;
                    };
                    let _ = conn.set_nodelay(true);
                    let mut buf = vec![0u8; 16 * 1024];
                    for k in 0..count {
                        let due = start + offset + interval * k as u32;
                        // Late because the last answer was slow: charged from `due`.
                        // Late because the timer (1 ms granularity) woke us late: that
                        // is the generator's delay, so counted from the actual send.
                        let from = if tokio::time::Instant::now() >= due {
                            due
                        } else {
                            tokio::time::sleep_until(due).await;
                            tokio::time::Instant::now()
                        };
                        if exchange(&mut conn, &mut buf).await.is_err() {
                            break;
                        }
                        lat.push(from.elapsed().as_secs_f64() * 1000.0);
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    });
    all.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| all.get(((all.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0.0);
    eprintln!(
        "  paced {rate:.0} req/s on port {port}: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} ms",
        pick(0.5),
        pick(0.9),
        pick(0.99),
        pick(0.999)
    );
    (pick(0.5), pick(0.99))
}

/// One keep-alive GET and its whole answer (headers, then `content-length` bytes).
async fn exchange(conn: &mut tokio::net::TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET / HTTP/1.1\r\nhost: bench\r\nx-api-key: bench-key\r\n\r\n")
        .await?;
    let mut have = 0;
    loop {
        let n = conn.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
        let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            if have == buf.len() {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let body: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if have >= end + 4 + body {
            return Ok(());
        }
    }
}

/// The sidecar alone: hits accounted per second through /v1/check (one hit per call) and
/// /v1/report (100 hits per call), against redis-benchmark's INCR on the same Redis.
fn sidecar_alone(redis: &RedisNode, sidecar: &Sidecar, seconds: u64, connections: u64) {
    let dir = rampart_test_harness::process::TempDir::new("bench");
    // `batched`: each hit is its own request of a batched check.
    let script = |name: &str, path: &str, hits: usize, modulo: usize, cost: u64, batched: bool| {
        let p = dir.0.join(name);
        let one = |h: usize| {
            format!("{{\\\"key\\\":\\\"k%d-{h}\\\",\\\"algorithm\\\":\\\"fixed_window\\\",\\\"limit\\\":1000000000,\\\"window_ms\\\":60000,\\\"cost\\\":{cost}}}")
        };
        let body = if batched {
            format!(
                "{{\\\"requests\\\":[{}]}}",
                (0..hits)
                    .map(|h| format!("{{\\\"hits\\\":[{}]}}", one(h)))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        } else {
            format!(
                "{{\\\"hits\\\":[{}]}}",
                (0..hits).map(one).collect::<Vec<_>>().join(",")
            )
        };
        let lua = format!(
            "local i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"POST\", \"{path}\", {{[\"Content-Type\"] = \"application/json\"}}, string.format(\"{body}\", i % {modulo}{}))\nend\n",
            format!(", i % {modulo}").repeat(hits.saturating_sub(1))
        );
        std::fs::write(&p, lua).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    };
    // Checks spread over 10 hot keys (concurrent hits on one key coalesce); reports carry
    // 100 distinct keys per call, cost 1 each.
    let check = script("check.lua", "/v1/check", 1, 10, 1, false);
    // What a busy gateway worker sends: 20 requests per call, one hit each.
    let check20 = script("check20.lua", "/v1/check", 20, 10, 1, true);
    let report = script("report.lua", "/v1/report", 100, 1000, 1, false);
    // A gateway at 20k req/s over 100 hot keys reports each key with cost ~20 per 100 ms.
    let report20 = script("report20.lua", "/v1/report", 100, 1000, 20, false);
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
    let check20_rps = run(&check20);
    let report_rps = run(&report);
    let report20_rps = run(&report20);
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
    println!("  /v1/check, 20 requests per call  {:>12.0} hits/s", check20_rps * 20.0);
    println!("  /v1/report, 100 keys x cost 1    {:>12.0} hits/s", report_rps * 100.0);
    println!(
        "  /v1/report, 100 keys x cost 20   {:>12.0} hits/s",
        report20_rps * 2000.0
    );
    println!("  redis-benchmark INCR             {:>12.0} ops/s", plain);
    println!("  redis-benchmark INCR -P 16       {:>12.0} ops/s", pipelined);
    let ratio = |hits_per_s: f64| hits_per_s / pipelined.max(1.0);
    println!(
        "ratio sidecar report hits/s        {:.3}x redis-benchmark pipelined INCR (cost 1)",
        ratio(report_rps * 100.0)
    );
    println!(
        "ratio sidecar report hits/s        {:.3}x redis-benchmark pipelined INCR (cost 20)",
        ratio(report20_rps * 2000.0)
    );
}

/// Kong's and APISIX's engines: no filter, the no-op wasm filter and Rampart's local
/// layers on each, alternated round by round; ratios to the no-op filter.
fn engines(rounds: u64, seconds: u64, connections: u64) {
    let rampart = rampart_test_harness::rampart_wasm();
    let noop = rampart_test_harness::noop_wasm();
    let local = rampart_local();
    let mut runs: Vec<(String, Nginx)> = Vec::new();
    for engine in [Engine::Kong, Engine::Apisix] {
        if let Some(why) = engine.missing() {
            println!("\nskipped: {why}");
            continue;
        }
        let filters: [(&str, Option<(&std::path::Path, &str)>); 3] = [
            ("no filter", None),
            ("no-op wasm filter", Some((&noop, "{}"))),
            ("rampart local (ip + key)", Some((&rampart, &local))),
        ];
        for (name, filter) in filters {
            let opts = nginx::Options {
                engine,
                filter,
                upstream_port: None,
                workers: 1,
            };
            let n = Nginx::try_start(&opts).unwrap_or_else(|f| panic!("{} did not start:\n{}", engine.name(), f.log));
            runs.push((format!("{} {name}", short(engine)), n));
        }
    }
    if runs.is_empty() {
        return;
    }
    for (_, n) in &runs {
        wrk(n.port, 1, connections);
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); runs.len()];
    for round in 0..rounds {
        for (i, (name, n)) in runs.iter().enumerate() {
            let s = wrk(n.port, seconds, connections);
            eprintln!(
                "  round {} {:<36} {:>10.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms",
                round + 1,
                name,
                s.rps,
                s.p50_ms,
                s.p99_ms
            );
            samples[i].push(s);
        }
    }
    println!("\nengines (1 worker each, wrk -c{connections}, medians)");
    println!(
        "{:<36} {:>12} {:>10} {:>10}",
        "configuration", "req/s", "p50 ms", "p99 ms"
    );
    let med: Vec<Sample> = samples
        .iter()
        .map(|v| Sample {
            rps: median(v.iter().map(|s| s.rps).collect()),
            p50_ms: median(v.iter().map(|s| s.p50_ms).collect()),
            p99_ms: median(v.iter().map(|s| s.p99_ms).collect()),
        })
        .collect();
    for ((name, _), m) in runs.iter().zip(&med) {
        println!("{name:<36} {:>12.0} {:>10.3} {:>10.3}", m.rps, m.p50_ms, m.p99_ms);
    }
    for (i, (name, _)) in runs.iter().enumerate() {
        // Each engine's three runs are consecutive: none, no-op, rampart.
        let noop = med[i - i % 3 + 1].rps.max(1.0);
        println!("ratio {name:<36} {:.3}x its no-op wasm filter", med[i].rps / noop);
    }
}

fn short(engine: Engine) -> &'static str {
    match engine {
        Engine::Kong => "kong",
        Engine::Apisix => "apisix",
    }
}
