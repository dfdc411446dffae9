//! The sidecar alone, against `redis-benchmark` on the same Redis.

use std::process::Command;

use rampart_test_harness::redis::RedisNode;
use rampart_test_harness::sidecar::Sidecar;

/// The sidecar alone: hits accounted per second through /v1/check (one hit per call) and
/// /v1/report (100 hits per call), against redis-benchmark's INCR on the same Redis.
pub fn sidecar_alone(redis: &RedisNode, sidecar: &Sidecar, seconds: u64, connections: u64) {
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

