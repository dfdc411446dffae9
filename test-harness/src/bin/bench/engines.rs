//! Kong's and APISIX's engines: the same local layers as on Envoy.

use rampart_test_harness::nginx::{self, Engine, Nginx};

use crate::load::{medians, wrk, Sample};

/// Kong's and APISIX's engines: no filter, the no-op wasm filter and Rampart's local
/// layers on each, alternated round by round; ratios to the no-op filter (returned for
/// the chart: Rampart's only).
pub fn engines(rounds: u64, seconds: u64, connections: u64) -> Vec<(String, f64)> {
    let rampart = rampart_test_harness::rampart_wasm();
    let noop = rampart_test_harness::noop_wasm();
    let local = crate::rampart_local();
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
        return Vec::new();
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
    let med = medians(&samples);
    for ((name, _), m) in runs.iter().zip(&med) {
        println!("{name:<36} {:>12.0} {:>10.3} {:>10.3}", m.rps, m.p50_ms, m.p99_ms);
    }
    let mut chart = Vec::new();
    for (i, (name, _)) in runs.iter().enumerate() {
        // Each engine's three runs are consecutive: none, no-op, rampart.
        let noop = med[i - i % 3 + 1].rps.max(1.0);
        println!("ratio {name:<36} {:.3}x its no-op wasm filter", med[i].rps / noop);
        if i % 3 == 2 {
            chart.push((format!("{name} / its no-op wasm filter"), med[i].rps / noop));
        }
    }
    chart
}

fn short(engine: Engine) -> &'static str {
    match engine {
        Engine::Kong => "kong",
        Engine::Apisix => "apisix",
    }
}
