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
//! BENCH_BASELINE_SIDECAR=<another rampart-sidecar binary> runs the sync layer through
//! it as well (same Redis, same rounds, and one connection at a time).

mod chart;
mod engines;
mod load;
mod sidecar;

use rampart_test_harness::envoy::{Envoy, Filter, Options};
use rampart_test_harness::redis::RedisNode;
use rampart_test_harness::sidecar::Sidecar;
use serde_json::json;

use engines::engines;
use load::{median, medians, paced, wrk, Sample, LONE_ROUNDS};
use sidecar::{lone_checks, sidecar_alone};

/// Which sidecar a scenario's cluster layers call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    None,
    /// The bench's sidecar, this build.
    Sidecar,
    /// BENCH_BASELINE_SIDECAR's build, on the same Redis.
    Baseline,
}

impl Via {
    fn calls(self) -> bool {
        self != Via::None
    }
}

struct Scenario {
    name: &'static str,
    filter: Filter,
    /// Wire the cluster template to this sidecar.
    sidecar: Via,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Rampart's local layers: an IP layer and an API-key layer, limits high enough that
/// every benchmark request is admitted (the admitted path is the common one).
pub fn rampart_local() -> String {
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
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("engines") => {
            engines(rounds, seconds, connections);
            return;
        }
        Ok("sidecar") => {
            let redis = RedisNode::start();
            let sidecar = Sidecar::start(&["--redis", &redis.url(), "--threads", "2"]);
            sidecar_alone(&redis, &sidecar, seconds);
            return;
        }
        _ => {}
    }
    let mut scenarios = vec![
        Scenario {
            name: "no filter",
            filter: Filter::None,
            sidecar: Via::None,
        },
        Scenario {
            name: "native local_ratelimit",
            filter: Filter::NativeLocalRatelimit {
                tokens_per_second: 1_000_000_000,
            },
            sidecar: Via::None,
        },
        Scenario {
            name: "no-op wasm filter",
            filter: Filter::Noop,
            sidecar: Via::None,
        },
        Scenario {
            name: "trivial cas + header",
            filter: Filter::Trivial { call: false },
            sidecar: Via::None,
        },
        Scenario {
            name: "rampart local (ip + key)",
            filter: Filter::Rampart(rampart_local()),
            sidecar: Via::None,
        },
        Scenario {
            name: "trivial + sidecar call",
            filter: Filter::Trivial { call: true },
            sidecar: Via::Sidecar,
        },
        Scenario {
            name: "rampart cluster sync",
            filter: Filter::Rampart(rampart_cluster("sync")),
            sidecar: Via::Sidecar,
        },
        Scenario {
            name: "rampart cluster async",
            filter: Filter::Rampart(rampart_cluster("async")),
            sidecar: Via::Sidecar,
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
                sidecar: Via::None,
            },
        );
    }
    // BENCH_BASELINE_SIDECAR=<another build of rampart-sidecar>: the sync layer through
    // it too (same Redis), in the same rounds and in the one-connection runs.
    let baseline_sidecar = std::env::var("BENCH_BASELINE_SIDECAR").ok();
    if baseline_sidecar.is_some() {
        let at = scenarios
            .iter()
            .position(|s| s.name == "rampart cluster sync")
            .map_or(scenarios.len(), |i| i + 1);
        scenarios.insert(
            at,
            Scenario {
                name: "baseline sidecar sync",
                filter: Filter::Rampart(rampart_cluster("sync")),
                sidecar: Via::Baseline,
            },
        );
    }
    if quick {
        scenarios.retain(|s| !s.sidecar.calls());
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
    let (url, threads) = (redis.url(), env_or("BENCH_SIDECAR_THREADS", 2).to_string());
    let sidecar_args = ["--redis", &url, "--threads", &threads];
    let sidecar = Sidecar::start(&sidecar_args);
    let baseline = baseline_sidecar.map(|b| Sidecar::start_binary(std::path::Path::new(&b), &sidecar_args));
    let envoys: Vec<Envoy> = scenarios
        .iter()
        .map(|s| {
            let port = match (s.sidecar, &baseline) {
                (Via::Baseline, Some(b)) => b.port,
                _ => sidecar.port,
            };
            let opts = Options {
                filter: s.filter.clone(),
                upstream_port: 1,
                concurrency: 1,
                template: if s.sidecar.calls() {
                    "filters/envoy/envoy-cluster.yaml"
                } else {
                    "filters/envoy/envoy.yaml"
                },
                sidecar_port: s.sidecar.calls().then_some(port),
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
    let med = medians(&samples);
    for (s, m) in scenarios.iter().zip(&med) {
        println!("{:<28} {:>12.0} {:>10.3} {:>10.3}", s.name, m.rps, m.p50_ms, m.p99_ms);
    }
    let mut chart: Vec<(String, f64)> = Vec::new();
    if let Some(sync) = scenarios.iter().position(|s| s.name == "rampart cluster sync") {
        sync_latency(&envoys, &med, sync, seconds);
        let reference = scenarios.iter().position(|s| s.name == "trivial + sidecar call");
        lone_requests(&envoys, &scenarios, sync, reference, seconds);
        let mut sidecars = vec![("this build", sidecar.port)];
        sidecars.extend(baseline.as_ref().map(|b| ("baseline sidecar", b.port)));
        lone_checks(&sidecars, seconds);
    }
    if !quick && std::env::var("BENCH_ONLY").is_err() {
        chart.extend(sidecar_alone(&redis, &sidecar, seconds));
    }
    let engine_ratios = if std::env::var("BENCH_ONLY").is_err() {
        engines(rounds, seconds, connections)
    } else {
        Vec::new()
    };
    println!();
    let none = &med[0];
    for (s, m) in scenarios.iter().zip(&med).filter(|(s, _)| s.sidecar.calls()) {
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
            if !ours.starts_with("baseline") && !reference.starts_with("baseline") {
                chart.insert(0, (format!("Envoy: {ours} / {reference}"), a / b));
            }
        }
    }
    chart.extend(engine_ratios);
    draw_chart(&chart, rounds, seconds);
    // Last, as DESIGN.md §7 asks: every configuration against the native filter.
    let native = med[1].rps.max(1.0);
    println!();
    for (s, m) in scenarios.iter().zip(&med) {
        println!("ratio {:<28} {:.3}x native local_ratelimit", s.name, m.rps / native);
    }
}

/// Writes the ratios as an SVG beside the text (`target/bench/ratios.svg`).
fn draw_chart(bars: &[(String, f64)], rounds: u64, seconds: u64) {
    let dir = rampart_test_harness::project_file("target/bench");
    let path = dir.join("ratios.svg");
    let title =
        format!("make bench: throughput against each configuration's reference ({rounds} rounds x {seconds} s)");
    match std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|_| chart::draw(&path, &title, bars))
    {
        Ok(()) => println!("\nchart: {}", path.display()),
        Err(e) => eprintln!("warning: no chart ({}): {e}", path.display()),
    }
}

/// One request at a time (wrk -c1): what a lone sync request pays when there is nothing
/// to batch, against no filter and against the least a filter making one sidecar call
/// can do. Alternated, medians of `LONE_ROUNDS` runs.
fn lone_requests(envoys: &[Envoy], scenarios: &[Scenario], sync: usize, reference: Option<usize>, seconds: u64) {
    let mut runs: Vec<usize> = vec![0, sync];
    runs.extend(scenarios.iter().position(|s| s.sidecar == Via::Baseline));
    runs.extend(reference);
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); runs.len()];
    for _ in 0..LONE_ROUNDS {
        for (k, &i) in runs.iter().enumerate() {
            samples[k].push(wrk(envoys[i].port, seconds, 1));
        }
    }
    println!("\none connection (wrk -c1, medians of {LONE_ROUNDS}):");
    let med = medians(&samples);
    for (
        &i,
        Sample {
            rps,
            p50_ms: p50,
            p99_ms: p99,
        },
    ) in runs.iter().zip(&med)
    {
        println!(
            "  {:<28} {rps:>10.0} req/s  p50 {p50:.3} ms  p99 {p99:.3} ms",
            scenarios[i].name
        );
    }
    for (k, &i) in runs.iter().enumerate().skip(1) {
        println!(
            "p99 one connection {:<24} +{:.3} ms over no filter (p50 +{:.3} ms)",
            scenarios[i].name,
            med[k].p99_ms - med[0].p99_ms,
            med[k].p50_ms - med[0].p50_ms
        );
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
