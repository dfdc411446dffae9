//! `make demo`: Envoy with Rampart and the shipped example config, in front of a small
//! upstream. Shows admitted requests counting down, then a 429 with its headers.

use std::io::{IsTerminal, Read};

use rampart_test_harness::envoy::{Envoy, Options};
use rampart_test_harness::http::Response;
use rampart_test_harness::read_project_file;
use rampart_test_harness::redis::RedisNode;
use rampart_test_harness::sidecar::Sidecar;
use rampart_test_harness::upstream::Upstream;

const EXAMPLE: &str = "filters/examples/edge-and-keys.json";
const FLEET: &str = "filters/examples/fleet.json";

/// Two gateways, one sidecar, one Redis: the "keys" layer's limit holds across both.
fn fleet_demo(upstream: &Upstream) -> (RedisNode, Sidecar, Envoy, Envoy) {
    let redis = RedisNode::start();
    let sidecar = Sidecar::start(&["--redis", &redis.url()]);
    let plugin = read_project_file(FLEET);
    let a = Envoy::start(&Options::fleet(&plugin, upstream.port, sidecar.port));
    let b = Envoy::start(&Options::fleet(&plugin, upstream.port, sidecar.port));
    println!(
        "\nTwo gateways sharing one limit ({FLEET}): A on :{}, B on :{}, rampart-sidecar on :{}, Redis on :{}",
        a.port, b.port, sidecar.port, redis.port
    );
    println!("  layer \"keys\" is cluster-wide (sync): 100/min per X-Api-Key on the free tier, across all gateways\n");
    let (mut ca, mut cb) = (a.client(), b.client());
    let mut admitted = 0;
    for n in 1..=104 {
        let (name, c) = if n % 2 == 1 {
            ("gateway A", &mut ca)
        } else {
            ("gateway B", &mut cb)
        };
        match c.get("/", &[("x-api-key", b"carol")]) {
            Ok(r) => {
                if r.status == 200 {
                    admitted += 1;
                }
                if n <= 3 || (98..=104).contains(&n) {
                    show(n, &format!("{name}, carol"), &r);
                } else if n == 4 {
                    println!("  ...");
                }
            }
            Err(e) => println!("  #{n} failed: {e}"),
        }
    }
    println!("  {admitted} of 104 admitted across both gateways: the limit is the fleet's, not each gateway's.");
    (redis, sidecar, a, b)
}

fn show(n: usize, who: &str, r: &Response) {
    let h = |name: &str| r.header(name).unwrap_or("-").to_string();
    print!(
        "  #{n:<3} {who:<22} -> {}   X-RateLimit-Limit {:<3} Remaining {:<3} Reset {:<3}",
        r.status,
        h("x-ratelimit-limit"),
        h("x-ratelimit-remaining"),
        h("x-ratelimit-reset")
    );
    if r.status != 200 {
        print!(" Retry-After {}  body {}", h("retry-after"), r.body_text().trim());
    }
    println!();
}

fn main() {
    let plugin = read_project_file(EXAMPLE);
    let upstream = Upstream::start();
    let envoy = Envoy::start(&Options::rampart(&plugin, upstream.port));
    println!(
        "Rampart demo: Envoy on http://127.0.0.1:{} (admin :{}) with {EXAMPLE}",
        envoy.port, envoy.admin_port
    );
    println!("  layer \"edge\": 100 requests/min per client IP (sliding window)");
    println!("  layer \"keys\": per X-Api-Key, 5/min on the free tier, 50/min with X-Plan: paid\n");

    let mut c = envoy.client();
    println!("Free-tier key \"alice\", 7 requests:");
    for n in 1..=7 {
        match c.get("/", &[("x-api-key", b"alice")]) {
            Ok(r) => show(n, "x-api-key: alice", &r),
            Err(e) => println!("  #{n} failed: {e}"),
        }
    }
    println!("\nPaid-tier key \"bob\" has its own, larger quota:");
    for n in 1..=2 {
        if let Ok(r) = c.get("/", &[("x-api-key", b"bob"), ("x-plan", b"paid")]) {
            show(n, "x-api-key: bob (paid)", &r);
        }
    }
    // Rampart publishes its counts on a 500 ms tick.
    let m = envoy.metrics_reach(&[("rampart_keys_allowed", 7.0), ("rampart_keys_rejected", 2.0)]);
    println!("\nMetrics from Envoy's /stats/prometheus:");
    let mut names: Vec<_> = m.iter().filter(|(k, _)| k.starts_with("rampart_")).collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in names {
        println!("  {k} {v}");
    }
    println!(
        "\nUpstream served {} requests; rejected ones never reached it.",
        upstream.served()
    );

    let _fleet = fleet_demo(&upstream);

    if std::io::stdin().is_terminal() {
        println!(
            "\nStill running. Try:  curl -i -H 'x-api-key: alice' http://127.0.0.1:{}/",
            envoy.port
        );
        println!("Press Ctrl-C (or Enter) to stop; Envoy and the upstream stop with it.");
        let _ = std::io::stdin().read(&mut [0u8; 1]);
    }
}
