//! Progress of long cycles: a terminal bar (counts, rate, ETA) for `--once` runs and `plan`
//! when stderr is a terminal; otherwise the engine's plain log line every few seconds.

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vsync_engine::progress::{LogProgress, Progress};

/// How often the plain progress line is written.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The progress sink for cycles: a bar for an interactive one-shot run, log lines otherwise
/// (a long-running role's output goes to a log collector, where a bar is noise).
pub fn for_cycles(interactive: bool) -> Arc<dyn Progress> {
    if interactive && std::io::stderr().is_terminal() {
        Arc::new(Bar::default())
    } else {
        Arc::new(LogProgress::new(LOG_EVERY))
    }
}

/// An indicatif bar on stderr, one per stage.
#[derive(Default)]
struct Bar {
    current: Mutex<Option<ProgressBar>>,
}

impl Progress for Bar {
    fn begin(&self, stage: &'static str, total: u64) {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} ({percent}%) {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(stage);
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Some(old) = self.current.lock().unwrap_or_else(PoisonError::into_inner).replace(bar) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = &*self.current.lock().unwrap_or_else(PoisonError::into_inner) {
            bar.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.current.lock().unwrap_or_else(PoisonError::into_inner).take() {
            bar.finish_and_clear();
        }
    }
}
