//! An HTTP/1.1-aware loopback proxy for fault tests: it forwards each request to a real server
//! and, on command, answers requests whose method and path match a rule with a canned status and
//! body instead of forwarding them. This is how a test shows the client what a broken or
//! unexpected server (or a middlebox) would send, while every other request still reaches the
//! real `bao` behind it.
//!
//! It understands just enough HTTP/1.1 for the Vault client and the harness: keep-alive request
//! streams, `Content-Length` and chunked bodies in both directions. Each forwarded request goes
//! to the server on a fresh connection with `Connection: close`, so a response ends at EOF at the
//! latest and never has to be matched to a pooled upstream connection. Responses are re-framed
//! with a `Content-Length`. Threads only, like [`crate::Proxy`]; it stops when dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One rewrite: requests matching `method` and `path` get `status` and `body`.
#[derive(Debug, Clone)]
struct Rule {
    method: String,
    path: String,
    prefix: bool,
    status: u16,
    body: String,
}

impl Rule {
    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.eq_ignore_ascii_case(method)
            && if self.prefix { path.starts_with(&self.path) } else { path == self.path }
    }
}

#[derive(Debug, Default)]
struct Control {
    rules: Mutex<Vec<Rule>>,
    rewritten: AtomicU64,
    forwarded: AtomicU64,
    stop: AtomicBool,
    /// Open client connections by id, so dropping the proxy can cut them. Each is removed when
    /// its connection ends, so a long test does not pile up file descriptors.
    open: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
    /// Requests seen (forwarded or rewritten) by `METHOD path`, so a test can count one kind.
    seen: Mutex<HashMap<String, u64>>,
}

impl Control {
    fn track(&self, s: &TcpStream) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        if let (Ok(mut open), Ok(clone)) = (self.open.lock(), s.try_clone()) {
            open.insert(id, clone);
        }
        id
    }

    fn untrack(&self, id: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&id);
        }
    }

    fn rule_for(&self, method: &str, path: &str) -> Option<Rule> {
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        // The newest rule wins, so a test can narrow an earlier, broader one.
        rules.iter().rev().find(|r| r.matches(method, path)).cloned()
    }
}

/// A running HTTP rewriting proxy in front of `127.0.0.1:target`.
#[derive(Debug)]
pub struct HttpProxy {
    port: u16,
    control: Arc<Control>,
}

impl HttpProxy {
    /// Starts a proxy on a free loopback port forwarding to `127.0.0.1:target`.
    pub fn start(target: u16) -> HttpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind http proxy");
        let port = listener.local_addr().expect("http proxy addr").port();
        let control = Arc::new(Control::default());
        let c = control.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if c.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let id = c.track(&client);
                let c = c.clone();
                std::thread::spawn(move || {
                    serve(client, target, &c);
                    c.untrack(id);
                });
            }
        });
        HttpProxy { port, control }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on, answers requests with this method (any case) and exactly this path (the
    /// request target before `?`, as sent, so percent-encoded: `/v1/secret/metadata/a%20b`) with
    /// `status` and `body` (sent as `application/json`, even when it is not JSON) instead of
    /// forwarding them. A path ending in `*` matches every path starting with what precedes it.
    /// The newest matching rule wins.
    pub fn respond(&self, method: &str, path: &str, status: u16, body: &str) {
        let (path, prefix) = match path.strip_suffix('*') {
            Some(p) => (p, true),
            None => (path, false),
        };
        let rule = Rule {
            method: method.to_owned(),
            path: path.to_owned(),
            prefix,
            status,
            body: body.to_owned(),
        };
        self.control.rules.lock().unwrap_or_else(|e| e.into_inner()).push(rule);
    }

    /// Removes every rule: all requests are forwarded again.
    pub fn clear(&self) {
        self.control.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Requests answered by a rule so far (lets a test check its rule really fired).
    pub fn rewritten(&self) -> u64 {
        self.control.rewritten.load(Ordering::SeqCst)
    }

    /// Requests forwarded to the server so far.
    pub fn forwarded(&self) -> u64 {
        self.control.forwarded.load(Ordering::SeqCst)
    }

    /// Requests with this method (upper case) and exactly this path (before `?`) seen so far,
    /// forwarded or rewritten: `seen("GET", "/v1/sys/seal-status")` counts health probes.
    pub fn seen(&self, method: &str, path: &str) -> u64 {
        let seen = self.control.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&format!("{} {path}", method.to_ascii_uppercase())).copied().unwrap_or(0)
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        if let Ok(mut open) = self.control.open.lock() {
            for (_, s) in open.drain() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A parsed HTTP message head: the start line and the headers in order.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length").and_then(|v| v.trim().parse().ok())
    }

    fn wants_close(&self) -> bool {
        self.header("connection").is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }

    /// The headers minus hop-by-hop framing ones, which the proxy sets itself.
    fn end_to_end(&self) -> impl Iterator<Item = &(String, String)> {
        self.headers.iter().filter(|(n, _)| {
            !["connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"]
                .iter()
                .any(|h| n.eq_ignore_ascii_case(h))
        })
    }
}

/// Reads one message head; `None` at a clean EOF before any byte (the peer closed).
fn read_head(r: &mut impl BufRead) -> Option<Head> {
    let mut start = String::new();
    // Tolerate stray empty lines between keep-alive requests (RFC 9112 2.2).
    loop {
        start.clear();
        if r.read_line(&mut start).ok()? == 0 {
            return None;
        }
        if !start.trim().is_empty() {
            break;
        }
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Some(Head { start: start.trim_end().to_owned(), headers })
}

/// Reads a body framed by `head`; `until_eof` says whether an unframed body runs to EOF (a
/// response) or is empty (a request).
fn read_body(r: &mut impl BufRead, head: &Head, until_eof: bool) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    if head.is_chunked() {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let size = size.trim().split(';').next().unwrap_or("");
            let n = usize::from_str_radix(size, 16).ok()?;
            if n == 0 {
                // Trailers (ignored) up to the empty line.
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                return Some(body);
            }
            let at = body.len();
            body.resize(at + n, 0);
            r.read_exact(&mut body[at..]).ok()?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).ok()?;
        }
    }
    match head.content_length() {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).ok()?;
        }
        None if until_eof => {
            r.read_to_end(&mut body).ok()?;
        }
        None => {}
    }
    Some(body)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Serves one client connection: request after request until the client closes.
fn serve(client: TcpStream, target: u16, c: &Control) {
    let Ok(write_half) = client.try_clone() else { return };
    let mut out = write_half;
    let mut input = BufReader::new(client);
    while !c.stop.load(Ordering::SeqCst) {
        let Some(head) = read_head(&mut input) else { break };
        let Some(body) = read_body(&mut input, &head, false) else { break };
        let mut parts = head.start.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let target_path = parts.next().unwrap_or("").to_owned();
        let path = target_path.split('?').next().unwrap_or("");
        *c.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{} {path}", method.to_ascii_uppercase()))
            .or_default() += 1;
        let reply = match c.rule_for(&method, path) {
            Some(rule) => {
                c.rewritten.fetch_add(1, Ordering::SeqCst);
                let mut r = format!(
                    "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    rule.status,
                    reason(rule.status),
                    rule.body.len()
                )
                .into_bytes();
                r.extend_from_slice(rule.body.as_bytes());
                r
            }
            None => {
                c.forwarded.fetch_add(1, Ordering::SeqCst);
                match forward(&head, &method, &body, target) {
                    Some(r) => r,
                    // The server went away mid-request: drop the client too, as a cut would.
                    None => break,
                }
            }
        };
        if out.write_all(&reply).is_err() || head.wants_close() {
            break;
        }
    }
    let _ = out.shutdown(Shutdown::Both);
}

/// Sends one request to the server on a fresh connection and returns the response re-framed
/// with a `Content-Length` (so the client's keep-alive connection stays usable).
fn forward(head: &Head, method: &str, body: &[u8], target: u16) -> Option<Vec<u8>> {
    // Not tracked: it lives for one request, bounded by the read timeout, and ends when the
    // server has answered.
    let mut server = TcpStream::connect(("127.0.0.1", target)).ok()?;
    server.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    let mut req = format!("{}\r\n", head.start);
    for (n, v) in head.end_to_end() {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    server.write_all(&bytes).ok()?;
    let mut input = BufReader::new(server);
    let resp = read_head(&mut input)?;
    let status: u16 = resp.start.split_whitespace().nth(1).and_then(|s| s.parse().ok())?;
    // HEAD answers and 1xx/204/304 carry no body whatever their headers say.
    let bodyless = method.eq_ignore_ascii_case("HEAD") || status < 200 || status == 204 || status == 304;
    let resp_body = if bodyless { Vec::new() } else { read_body(&mut input, &resp, true)? };
    let mut out = format!("{}\r\n", resp.start);
    for (n, v) in resp.end_to_end() {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !bodyless {
        out.push_str(&format!("Content-Length: {}\r\n", resp_body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&resp_body);
    Some(out)
}
