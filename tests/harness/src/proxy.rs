//! A loopback TCP proxy for fault tests: forwards to a target port, and on command delays
//! every chunk it forwards or cuts every connection (and refuses new ones) until restored.
//! It also models a long link ([`Proxy::set_latency`]): every chunk arrives a fixed time after
//! it was sent, per direction, without limiting bandwidth (a delay line, not a slow pipe).
//! It counts the connections it forwards ([`Proxy::connections`]): a client's connection reuse
//! shows there. Threads only, so tests need no extra runtime; it stops when dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Control {
    cut: AtomicBool,
    delay_ms: AtomicU64,
    /// One-way latency towards the server and towards the client, in microseconds.
    latency_up_us: AtomicU64,
    latency_down_us: AtomicU64,
    /// Server-to-client bytes a connection may carry before it is cut (0: unlimited).
    reply_limit: AtomicU64,
    stop: AtomicBool,
    /// Connections accepted and forwarded to the target.
    accepted: AtomicU64,
    open: Mutex<Vec<TcpStream>>,
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    control: Arc<Control>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `127.0.0.1:target`.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let control = Arc::new(Control::default());
        let c = control.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if c.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                if c.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                // Forward each chunk as it comes: Nagle's algorithm would hold a small chunk
                // back while an earlier one is unacknowledged (40 ms with delayed ACKs), a delay
                // no real link adds to endpoints that set TCP_NODELAY, as Vault and reqwest do.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                c.accepted.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut open) = c.open.lock() {
                    open.extend(client.try_clone().ok());
                    open.extend(server.try_clone().ok());
                }
                for (reply, from, to) in [(false, client.try_clone(), server.try_clone()), (true, server.try_clone(), client.try_clone())] {
                    let (Ok(from), Ok(to)) = (from, to) else { continue };
                    forward(c.clone(), reply, from, to);
                }
            }
        });
        Proxy { port, control }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Client connections forwarded to the target so far (refused and cut ones not counted).
    pub fn connections(&self) -> u64 {
        self.control.accepted.load(Ordering::SeqCst)
    }

    /// Models a long link: chunks towards the server arrive `up` after they were sent, chunks
    /// towards the client `down` after (round trip `up + down`), bandwidth unlimited. Applies
    /// to chunks read afterwards; zero restores loopback.
    pub fn set_latency(&self, up: Duration, down: Duration) {
        self.control.latency_up_us.store(up.as_micros() as u64, Ordering::SeqCst);
        self.control.latency_down_us.store(down.as_micros() as u64, Ordering::SeqCst);
    }

    /// Delays every forwarded chunk (both directions) by `d`; zero restores full speed.
    pub fn set_delay(&self, d: Duration) {
        self.control.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Cuts each connection once the server has sent it `bytes` (headers included), mid-body
    /// for a large answer; 0 lifts the limit. Applies to connections opened afterwards.
    pub fn cut_replies_after(&self, bytes: u64) {
        self.control.reply_limit.store(bytes, Ordering::SeqCst);
    }

    /// Cuts every open connection and refuses new ones (`true`), or lets them through again.
    pub fn set_cut(&self, cut: bool) {
        self.control.cut.store(cut, Ordering::SeqCst);
        if cut && let Ok(mut open) = self.control.open.lock() {
            for s in open.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// One direction of a connection: a reader that applies cuts and the per-chunk delay, and a
/// writer that delivers each chunk `latency` after it was read (a delay line).
fn forward(c: Arc<Control>, reply: bool, mut from: TcpStream, mut to: TcpStream) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>, bool)>();
    let writer_control = c.clone();
    std::thread::spawn(move || {
        for (due, bytes, last) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if writer_control.cut.load(Ordering::SeqCst) || to.write_all(&bytes).is_err() || last {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        let mut carried = 0u64;
        loop {
            let mut n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let limit = c.reply_limit.load(Ordering::SeqCst);
            let cut_here = reply && limit > 0 && carried + n as u64 >= limit;
            if cut_here {
                n = (limit - carried) as usize;
            }
            carried += n as u64;
            let delay = c.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            let latency = if reply { &c.latency_down_us } else { &c.latency_up_us };
            let due = Instant::now() + Duration::from_micros(latency.load(Ordering::SeqCst));
            if c.cut.load(Ordering::SeqCst) || tx.send((due, buf[..n].to_vec(), cut_here)).is_err() || cut_here {
                break;
            }
        }
        // Dropping the sender lets the writer deliver what is queued, then close.
        drop(tx);
        let _ = from.shutdown(Shutdown::Read);
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        self.set_cut(true);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
