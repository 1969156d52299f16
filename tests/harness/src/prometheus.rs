//! A real Prometheus server and `promtool` (Debian's `prometheus` package) for the monitoring
//! tests: the server runs on a free loopback port with its own configuration and storage in a
//! temporary directory, scrapes the given targets every second, and is stopped by PID (its
//! process group) when dropped. Like `bao`, a missing binary is a failure with install
//! instructions, never a skipped test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port_pair, http_request, signal_group};

/// The path of `name` (`prometheus` or `promtool`): `VSYNC_PROMETHEUS_DIR/name`, else PATH,
/// else `/usr/bin`; panics with how to install it.
pub fn prometheus_tool(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("VSYNC_PROMETHEUS_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()));
    let usr_bin = Path::new("/usr/bin").join(name);
    on_path.or_else(|| usr_bin.is_file().then_some(usr_bin)).unwrap_or_else(|| {
        panic!(
            "`{name}` is not on PATH nor in /usr/bin. The monitoring tests run a real Prometheus and \
             promtool and are never skipped. Install them with `apt-get install -y prometheus` \
             (Debian; or set VSYNC_PROMETHEUS_DIR to a directory holding both), or run the README's \
             test command, which installs them (scripts/setup.sh)."
        )
    })
}

/// Percent-encodes a query-string value.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on loopback.
#[derive(Debug)]
pub struct Prometheus {
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts a server that scrapes `targets` (`host:port`, job `vsync`, every 1 s) and
    /// evaluates `rule_files` every 1 s; returns once it answers `/-/ready`.
    pub fn start(targets: &[String], rule_files: &[PathBuf]) -> Prometheus {
        let bin = prometheus_tool("prometheus");
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new().prefix("vsync-prometheus-").tempdir().unwrap();
            let rules: String = rule_files.iter().map(|f| format!("  - {:?}\n", f.display().to_string())).collect();
            let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
            let config = format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n{rules}\
                 scrape_configs:\n  - job_name: vsync\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            );
            std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
            let mut server = Prometheus { port: free_port_pair(), child: None, dir };
            match server.spawn(&bin) {
                Ok(()) => return server,
                Err(log) => last_log = log, // the port was taken meanwhile: try another
            }
        }
        panic!("prometheus did not start after 5 attempts; last log:\n{last_log}");
    }

    fn spawn(&mut self, bin: &Path) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", self.dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", self.dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            #[allow(unsafe_code)]
            // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display())));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.api("/-/ready").0 == 200 {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("not ready after 60 s:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `GET path` on the server: status and JSON body.
    pub fn api(&self, path: &str) -> (u16, Value) {
        http_request(self.port, "GET", path, None, None)
    }

    /// An instant query through `/api/v1/query`: the `data` object (`resultType`, `result`).
    /// Panics unless Prometheus answers `status: success`.
    pub fn query(&self, promql: &str) -> Value {
        let (code, body) = self.api(&format!("/api/v1/query?query={}", url_encode(promql)));
        assert!(code == 200 && body["status"] == "success", "query `{promql}`: HTTP {code}: {body}");
        body["data"].clone()
    }

    /// Stops the server (its process group).
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
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}
