//! Progress of the long parts of a destination cycle (inspecting keys, copying): the
//! [`Progress`] seam, and [`LogProgress`], which writes a plain log line every few seconds.
//! The binary puts a terminal progress bar behind the same seam for `--once` and `plan`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::info;

/// Receives progress. Called from the cycle's tasks: keep it cheap.
pub trait Progress: Send + Sync {
    /// A stage starts (`inspecting`, `copying`) with `total` steps.
    fn begin(&self, stage: &'static str, total: u64);
    /// `n` more steps of the current stage are done.
    fn advance(&self, n: u64);
    /// The current stage ended.
    fn finish(&self);
}

/// Logs `stage: done/total (percent), rate/s, ETA` at most every `every`, and once at the end
/// of a stage that logged at least once (short stages stay silent).
#[derive(Debug)]
pub struct LogProgress {
    every: Duration,
    done: AtomicU64,
    state: Mutex<Stage>,
}

#[derive(Debug)]
struct Stage {
    name: &'static str,
    total: u64,
    started: Instant,
    last: Instant,
    logged: bool,
}

impl LogProgress {
    /// A line at most every `every`.
    pub fn new(every: Duration) -> Self {
        let now = Instant::now();
        Self {
            every,
            done: AtomicU64::new(0),
            state: Mutex::new(Stage { name: "", total: 0, started: now, last: now, logged: false }),
        }
    }
}

/// `done/total (p%), r/s, ETA e` for a stage.
pub fn describe(done: u64, total: u64, elapsed: Duration) -> String {
    let rate = if elapsed.as_secs_f64() > 0.0 { done as f64 / elapsed.as_secs_f64() } else { 0.0 };
    let percent = if total > 0 { done as f64 * 100.0 / total as f64 } else { 100.0 };
    let eta = if rate > 0.0 && total > done {
        humantime::format_duration(Duration::from_secs(((total - done) as f64 / rate).ceil() as u64)).to_string()
    } else {
        "-".to_owned()
    };
    format!("{done}/{total} ({percent:.0}%), {rate:.0}/s, ETA {eta}")
}

impl Progress for LogProgress {
    fn begin(&self, stage: &'static str, total: u64) {
        let now = Instant::now();
        self.done.store(0, Ordering::Relaxed);
        if let Ok(mut s) = self.state.lock() {
            *s = Stage { name: stage, total, started: now, last: now, logged: false };
        }
    }

    fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let Ok(mut s) = self.state.try_lock() else {
            return; // another task is logging right now
        };
        if s.last.elapsed() >= self.every {
            s.last = Instant::now();
            s.logged = true;
            info!(stage = s.name, done, total = s.total, "progress: {} {}", s.name, describe(done, s.total, s.started.elapsed()));
        }
    }

    fn finish(&self) {
        if let Ok(s) = self.state.lock()
            && s.logged
        {
            let done = self.done.load(Ordering::Relaxed);
            info!(stage = s.name, done, total = s.total, "progress: {} done, {}", s.name, describe(done, s.total, s.started.elapsed()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_gives_counts_rate_and_eta() {
        assert_eq!(describe(250, 1000, Duration::from_secs(5)), "250/1000 (25%), 50/s, ETA 15s");
        assert_eq!(describe(0, 10, Duration::ZERO), "0/10 (0%), 0/s, ETA -");
        assert_eq!(describe(10, 10, Duration::from_secs(1)), "10/10 (100%), 10/s, ETA -");
    }
}
