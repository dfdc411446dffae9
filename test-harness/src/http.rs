//! A small blocking HTTP/1.1 client with keep-alive: enough to drive Envoy from tests
//! with exact control over headers (hostile values included), and fast enough to send
//! hundreds of thousands of requests from a few threads.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_u64(&self, name: &str) -> Option<u64> {
        self.header(name).and_then(|v| v.trim().parse().ok())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Client {
    port: u16,
    conn: Option<BufReader<TcpStream>>,
    scratch: Vec<u8>,
}

const IO_TIMEOUT: Duration = Duration::from_secs(20);

impl Client {
    pub fn new(port: u16) -> Client {
        Client {
            port,
            conn: None,
            scratch: Vec::with_capacity(512),
        }
    }

    fn connection(&mut self) -> io::Result<&mut BufReader<TcpStream>> {
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            self.conn = Some(BufReader::with_capacity(16 * 1024, s));
        }
        self.conn.as_mut().ok_or_else(|| io::Error::other("no connection"))
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &[u8])]) -> io::Result<Response> {
        self.request("GET", path, headers)
    }

    pub fn post(&mut self, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> io::Result<Response> {
        self.send("POST", path, headers, body)
    }

    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &[u8])]) -> io::Result<Response> {
        self.send(method, path, headers, b"")
    }

    /// Sends one request, reusing the connection; reconnects once if the server had
    /// closed it.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> io::Result<Response> {
        match self.try_request(method, path, headers, body) {
            Ok(r) => Ok(r),
            Err(_) => {
                self.conn = None;
                self.try_request(method, path, headers, body)
            }
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> io::Result<Response> {
        let mut req = std::mem::take(&mut self.scratch);
        req.clear();
        write!(req, "{method} {path} HTTP/1.1\r\nhost: rampart.test\r\n")?;
        for (n, v) in headers {
            req.extend_from_slice(n.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n");
        }
        write!(req, "content-length: {}\r\n\r\n", body.len())?;
        req.extend_from_slice(body);
        let conn = self.connection()?;
        let sent = conn.get_mut().write_all(&req);
        self.scratch = req;
        sent?;
        let conn = self.connection()?;
        let (resp, keep) = read_response(conn)?;
        if !keep {
            self.conn = None;
        }
        Ok(resp)
    }
}

fn read_line(r: &mut BufReader<TcpStream>, line: &mut String) -> io::Result<()> {
    line.clear();
    if r.read_line(line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    Ok(())
}

fn read_response(r: &mut BufReader<TcpStream>) -> io::Result<(Response, bool)> {
    let mut line = String::new();
    read_line(r, &mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        read_line(r, &mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let keep = !find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut body = Vec::new();
    if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            read_line(r, &mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| io::Error::other(format!("bad chunk size {line:?}: {e}")))?;
            if size == 0 {
                read_line(r, &mut line)?;
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            read_line(r, &mut line)?;
        }
    } else if !keep {
        r.read_to_end(&mut body)?;
    }
    Ok((Response { status, headers, body }, keep))
}

/// One GET on a fresh connection (admin endpoints, readiness probes).
pub fn get_once(port: u16, path: &str) -> io::Result<Response> {
    Client::new(port).get(path, &[])
}
