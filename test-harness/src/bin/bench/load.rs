//! Load generation and statistics: `wrk` runs (closed loop) and an open-loop generator.

use std::process::Command;
use std::time::Duration;

#[derive(Clone, Copy, Default)]
pub struct Sample {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
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

/// Runs of one connection (lone requests) per configuration; medians are reported.
pub const LONE_ROUNDS: usize = 5;

pub fn wrk(port: u16, seconds: u64, connections: u64) -> Sample {
    wrk_run(port, seconds, connections, None)
}

/// The same, with the requests a wrk Lua `script` makes (the sidecar's own API).
pub fn wrk_run(port: u16, seconds: u64, connections: u64, script: Option<&std::path::Path>) -> Sample {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ])
    .args(["-H", "x-api-key: bench-key"]);
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    let out = cmd
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

/// Each configuration's median throughput and latencies over its runs.
pub fn medians(samples: &[Vec<Sample>]) -> Vec<Sample> {
    samples
        .iter()
        .map(|v| Sample {
            rps: median(v.iter().map(|s| s.rps).collect()),
            p50_ms: median(v.iter().map(|s| s.p50_ms).collect()),
            p99_ms: median(v.iter().map(|s| s.p99_ms).collect()),
        })
        .collect()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Open-loop load: `rate` requests per second for `secs` over 32 connections (as many
/// as the saturation runs), driven by one event-loop thread so the load generator
/// stays light next to the proxy on the same cores. Each request has a scheduled time
/// and latency counts from it: a slow answer delays (and charges) the requests behind
/// it on its connection. Returns (p50, p99) in ms.
pub fn paced(port: u16, rate: f64, secs: f64) -> (f64, f64) {
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
