//! End-to-end runs of the `vsync` binary, as users run it: a config file, `vsync run --once`,
//! the process's wall time and peak RSS (start-up checks, loading, scanning, copying and
//! committing all count).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::Error;

/// One process run.
#[derive(Debug, Clone)]
pub struct BinaryRun {
    /// Wall time, start to exit.
    pub secs: f64,
    /// The process's peak RSS.
    pub rss_mb: f64,
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// What it printed (stdout, then stderr).
    pub output: String,
}

/// The `vsync` binary: `VSYNC_BIN`, else the one built beside this harness (`cargo build
/// --release -p vsync -p vsync-bench` puts both in `target/release`).
pub fn vsync_exe() -> Result<PathBuf, Error> {
    if let Ok(path) = std::env::var("VSYNC_BIN") {
        return Ok(PathBuf::from(path));
    }
    let here = std::env::current_exe()?;
    let dir = here.parent().ok_or("the harness has no directory")?;
    // Test binaries live one level down, in `deps/`.
    for candidate in [dir.join("vsync"), dir.join("..").join("vsync")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!("no `vsync` binary beside {}: build it first (cargo build --release -p vsync), or set VSYNC_BIN", here.display()).into())
}

/// What one binary run syncs.
pub struct RunConfig<'a> {
    pub origin: &'a str,
    pub origin_mount: &'a str,
    pub dest: &'a str,
    pub dest_mount: &'a str,
    pub versions: &'a str,
    /// `None`: the default (`"auto"`).
    pub workers: Option<usize>,
    pub state: &'a Path,
}

/// Writes the config of `run` into `dir/vsync-<n>.toml`.
pub fn write_config(dir: &Path, n: usize, run: &RunConfig<'_>) -> Result<PathBuf, Error> {
    let token = vsync_test_harness::DEV_ROOT_TOKEN;
    let state = format!("{{ backend = \"file\", path = \"{}\" }}", run.state.display());
    let workers = run.workers.map(|w| format!("workers = {w}\n")).unwrap_or_default();
    let text = format!(
        "[origin]\nvault = {{ address = \"{}\", token = \"{token}\" }}\nmounts = [\"{}\"]\nstate = {state}\ntimeout = \"1h\"\n{workers}\n\
         [[destination]]\nname = \"bench\"\nvault = {{ address = \"{}\", token = \"{token}\" }}\nmounts = {{ \"{}\" = \"{}\" }}\n\
         state = {state}\ntimeout = \"1h\"\nversions = \"{}\"\n{workers}",
        run.origin, run.origin_mount, run.dest, run.origin_mount, run.dest_mount, run.versions
    );
    let path = dir.join(format!("vsync-{n}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Runs `vsync --config CONFIG run --once`, timing the process.
pub fn run_once(exe: &Path, config: &Path) -> Result<BinaryRun, Error> {
    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg("--config")
        .arg(config)
        .args(["run", "--once"])
        // VSYNC_BENCH_LOG=info shows where a run spends its time (printed to stderr).
        .env("VSYNC_LOG", std::env::var("VSYNC_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut pipes = [child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>), child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>)];
    let readers: Vec<_> = pipes
        .iter_mut()
        .map(|p| {
            let mut pipe = p.take();
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(p) = pipe.as_mut() {
                    let _ = p.read_to_string(&mut text);
                }
                text
            })
        })
        .collect();
    let (code, rss_kb) = wait_with_rusage(child.id())?;
    let secs = started.elapsed().as_secs_f64();
    let output = readers.into_iter().map(|r| r.join().unwrap_or_default()).collect::<Vec<_>>().join("");
    if std::env::var_os("VSYNC_BENCH_LOG").is_some() {
        eprintln!("{output}");
    }
    Ok(BinaryRun { secs, rss_mb: rss_kb as f64 / 1024.0, code, output })
}

/// Waits for `pid` and reads its own resource usage (`wait4`): exit code and peak RSS in KB.
fn wait_with_rusage(pid: u32) -> Result<(Option<i32>, i64), Error> {
    let pid = i32::try_from(pid)?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    #[allow(unsafe_code)]
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, writing into the two locals above.
    #[allow(unsafe_code)]
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        return Err(format!("wait4({pid}) failed: {}", std::io::Error::last_os_error()).into());
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok((code, usage.ru_maxrss))
}

/// Per-secret failures a `--once` run printed (`N failed` of its destination line), if any.
pub fn failed_secrets(output: &str) -> Option<u64> {
    output
        .lines()
        .filter(|l| l.contains(" failed") && l.contains("added"))
        .filter_map(|l| {
            let counts = l.split(';').next()?;
            counts.split(", ").find(|p| p.ends_with(" failed")).and_then(|p| p.split_whitespace().rev().nth(1)?.parse().ok())
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    #[test]
    fn failed_secrets_reads_the_destination_line() {
        let out = "origin: 300 secrets in 1 buckets, published\ndestination bench: 300 added, 0 updated, 0 deleted, 0 unchanged, 0 checked equal, 0 skipped, 2 failed; vault requests: 300 origin data reads\n";
        assert_eq!(super::failed_secrets(out), Some(2));
        assert_eq!(super::failed_secrets("nothing"), None);
    }
}
