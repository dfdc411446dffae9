//! The upstream service behind Envoy: answers 200 "ok" on every path, and holds a
//! request open for `?hold_ms=N` (bounded) so concurrency limits can be observed.
//! `Upstream::answering` serves any other answer (a stand-in sidecar, say) from the
//! same keep-alive HTTP/1.1 loop. `Silent` accepts connections and never answers: a
//! sidecar that hangs.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest hold a test may ask for.
const MAX_HOLD_MS: u64 = 30_000;

/// What the server answers one request with.
pub struct Answer {
    /// Status line after the version, e.g. `"200 OK"`.
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Computes the answer from the request line and the body.
type Respond = dyn Fn(&str, &[u8]) -> Answer + Send + Sync;

pub struct Upstream {
    pub port: u16,
    pub served: Arc<AtomicU64>,
    /// Requests received and not yet answered.
    pub in_flight: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start() -> Upstream {
        Upstream::answering(|request_line, _| {
            let hold_ms = request_line
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.split_once("hold_ms="))
                .and_then(|(_, v)| v.split('&').next()?.parse::<u64>().ok())
                .map_or(0, |ms| ms.min(MAX_HOLD_MS));
            if hold_ms > 0 {
                std::thread::sleep(Duration::from_millis(hold_ms));
            }
            Answer {
                status: "200 OK",
                content_type: "text/plain",
                body: b"ok\n".to_vec(),
            }
        })
    }

    /// A server whose every answer comes from `respond`.
    pub fn answering(respond: impl Fn(&str, &[u8]) -> Answer + Send + Sync + 'static) -> Upstream {
        let respond: Arc<Respond> = Arc::new(respond);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("upstream bind: {e}"));
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("upstream addr: {e}"));
        let served = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f, st) = (Arc::clone(&served), Arc::clone(&in_flight), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s, f, respond) = (Arc::clone(&s), Arc::clone(&f), Arc::clone(&respond));
                std::thread::spawn(move || serve(conn, &s, &f, &*respond));
            }
        });
        Upstream {
            port,
            served,
            in_flight,
            stop,
        }
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one line as bytes (header values may be any bytes); `None` at EOF or error.
fn read_line(r: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> Option<()> {
    line.clear();
    match r.read_until(b'\n', line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(()),
    }
}

fn serve(conn: TcpStream, served: &AtomicU64, in_flight: &AtomicU64, respond: &Respond) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        if read_line(&mut r, &mut line).is_none() {
            return;
        }
        let request_line = String::from_utf8_lossy(&line).into_owned();
        let mut content_length = 0usize;
        loop {
            if read_line(&mut r, &mut line).is_none() {
                return;
            }
            let l = String::from_utf8_lossy(&line);
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; content_length.min(1 << 20)];
        if std::io::Read::read_exact(&mut r, &mut body).is_err() {
            return;
        }
        in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = respond(&request_line, &body);
        in_flight.fetch_sub(1, Ordering::SeqCst);
        served.fetch_add(1, Ordering::SeqCst);
        let head = format!(
            "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
            answer.status,
            answer.content_type,
            answer.body.len()
        );
        let mut reply = head.into_bytes();
        reply.extend_from_slice(&answer.body);
        if w.write_all(&reply).is_err() {
            return;
        }
    }
}

/// A server that accepts connections, reads nothing and answers nothing, holding them
/// until it is dropped: what a hung sidecar looks like from the gateway.
pub struct Silent {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("silent bind: {e}"));
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("silent addr: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                held.extend(conn.ok());
            }
        });
        Silent { port, stop }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
