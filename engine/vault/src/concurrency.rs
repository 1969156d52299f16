//! Adaptive request concurrency for one Vault side (`workers = "auto"`).
//!
//! Between regions a round trip costs 50-150 ms, and the number of requests in flight decides
//! throughput; on loopback the server's CPU does. No fixed number suits both, so each client
//! (one per Vault side) gates its requests through a [`Limiter`] whose limit follows what it
//! observes, in the spirit of Vector's adaptive request concurrency and Netflix's gradient
//! limiters (the controller here is our own):
//!
//! - The limit starts at [`INITIAL_LIMIT`] and grows while the limit itself is what holds the
//!   side back (requests waited for a slot) and latency holds: doubling per epoch until the
//!   first sign of congestion ("slow start"), then by a tenth per epoch.
//! - An epoch is about one round trip: it ends after as many answers as the limit, or after
//!   twice the mean round trip, whichever comes first, so a 100 ms link grows the limit about
//!   ten times a second and loopback far faster.
//! - Latency growth (an epoch's mean round trip over twice the path's baseline plus
//!   [`LATENCY_SLACK`]) shrinks the limit by 15%, never below [`INITIAL_LIMIT`]: queueing at a
//!   busy server is not a reason to go slower than a fixed default would.
//! - Back-pressure (429, a 503 that is not "sealed", other 5xx, timeouts, connection errors)
//!   halves it, at most once per epoch, down to 1.
//! - The baseline is the lowest round trip seen; it may rise by a tenth per
//!   [`BASELINE_WINDOW`], so it follows a path that gets slower for good without ratcheting up
//!   with the queueing this side causes itself.
//!
//! LIST and SCAN requests pass the gate but are not sampled: their answer time is the size of
//! the listing, not the path.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The limit an adaptive side starts at (the old fixed default of `workers`).
pub const INITIAL_LIMIT: usize = 4;

/// The highest limit an adaptive side reaches (`workers = "auto"`).
pub const MAX_LIMIT: usize = vsync_core::AUTO_WORKERS_MAX;

/// Absolute latency slack over twice the baseline before latency counts as growth: loopback
/// round trips of a fraction of a millisecond jitter by about their own size.
pub const LATENCY_SLACK: Duration = Duration::from_millis(1);

/// How long the lowest observed round trip stands as the path's baseline.
pub const BASELINE_WINDOW: Duration = Duration::from_secs(10);

/// How a client limits its requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Concurrency {
    /// No limit of its own (the caller bounds its tasks: `workers = N`).
    #[default]
    Unlimited,
    /// Adaptive, from 1 up to `max` (`workers = "auto"`).
    Adaptive {
        /// The cap.
        max: usize,
    },
}

/// What one answer tells the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Served: its round trip is a latency sample.
    Served,
    /// Served, but its time says nothing about the path (a listing, a refusal).
    Unsampled,
    /// The server pushed back or could not be reached.
    Pressure,
    /// A rate-limit answer (429): back-pressure, and counted as throttled.
    Throttled,
}

/// A snapshot of a side's limiter, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConcurrencySnapshot {
    /// Whether the side adapts (`workers = "auto"`).
    pub adaptive: bool,
    /// The current limit (0 when unlimited).
    pub limit: usize,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Rate-limit answers (429) so far.
    pub throttled: u64,
}

/// Gates one side's requests; shared by a client's clones.
#[derive(Debug)]
pub struct Limiter {
    max: Option<usize>,
    state: Mutex<State>,
    freed: Notify,
    throttled: AtomicU64,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    slow_start: bool,
    baseline: Option<Duration>,
    /// The lowest round trip of the window now running, and when it started.
    window_low: Option<Duration>,
    window_start: Instant,
    epoch: Epoch,
    /// Mean round trip of the last epoch with samples.
    mean: Duration,
}

#[derive(Debug)]
struct Epoch {
    start: Instant,
    answers: u32,
    samples: u32,
    total: Duration,
    /// A request waited for a slot during the epoch: the limit held the side back.
    saturated: bool,
    pressure: bool,
}

impl Epoch {
    fn new(now: Instant) -> Self {
        Self { start: now, answers: 0, samples: 0, total: Duration::ZERO, saturated: false, pressure: false }
    }
}

impl Limiter {
    /// A limiter for `concurrency`.
    pub fn new(concurrency: Concurrency) -> Self {
        let now = Instant::now();
        let max = match concurrency {
            Concurrency::Unlimited => None,
            Concurrency::Adaptive { max } => Some(max.max(1)),
        };
        Self {
            max,
            state: Mutex::new(State::new(INITIAL_LIMIT.min(max.unwrap_or(INITIAL_LIMIT)) as f64, now)),
            freed: Notify::new(),
            throttled: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a slot. Unlimited sides never wait.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        if self.max.is_none() {
            self.lock().in_flight += 1;
            return Permit { limiter: Some(self.clone()), started: Instant::now() };
        }
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut s = self.lock();
                if (s.in_flight as f64) < s.limit.floor().max(1.0) {
                    s.in_flight += 1;
                    return Permit { limiter: Some(self.clone()), started: Instant::now() };
                }
                s.epoch.saturated = true;
            }
            freed.await;
        }
    }

    /// The side's figures now.
    pub fn snapshot(&self) -> ConcurrencySnapshot {
        let s = self.lock();
        ConcurrencySnapshot {
            adaptive: self.max.is_some(),
            limit: if self.max.is_some() { s.limit.floor() as usize } else { 0 },
            in_flight: s.in_flight,
            throttled: self.throttled.load(Ordering::Relaxed),
        }
    }

    fn finish(&self, started: Instant, signal: Signal) {
        if signal == Signal::Throttled {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let grew = {
            let mut s = self.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            let Some(max) = self.max else { return };
            s.observe(now, started, signal, max)
        };
        if grew { self.freed.notify_waiters() } else { self.freed.notify_one() }
    }
}

impl State {
    /// A controller at `limit`, in slow start, with no round trip seen yet.
    fn new(limit: f64, now: Instant) -> Self {
        Self {
            limit,
            in_flight: 0,
            slow_start: true,
            baseline: None,
            window_low: None,
            window_start: now,
            epoch: Epoch::new(now),
            mean: Duration::ZERO,
        }
    }

    /// Takes one answer (of a request sent at `started`) into the epoch; at the epoch's end, or
    /// on back-pressure, adjusts the limit. Returns whether it grew (every waiter may go).
    fn observe(&mut self, now: Instant, started: Instant, signal: Signal, max: usize) -> bool {
        let rtt = now.duration_since(started);
        self.epoch.answers += 1;
        match signal {
            Signal::Served => {
                self.epoch.samples += 1;
                self.epoch.total += rtt;
                self.note_low(now, rtt);
            }
            // Answers to requests sent before the last cut say nothing of the smaller limit.
            Signal::Pressure | Signal::Throttled if started >= self.epoch.start => self.epoch.pressure = true,
            Signal::Pressure | Signal::Throttled | Signal::Unsampled => {}
        }
        if self.epoch.pressure {
            // Back off at once, then give the smaller limit an epoch before judging again.
            self.limit = (self.limit * 0.5).max(1.0);
            self.slow_start = false;
            self.epoch = Epoch::new(now);
            return false;
        }
        let long = (self.mean * 2).max(Duration::from_millis(1));
        if (self.epoch.answers as f64) < self.limit && now.duration_since(self.epoch.start) < long {
            return false;
        }
        let before = self.limit;
        if self.epoch.samples > 0 {
            self.mean = self.epoch.total / self.epoch.samples;
        }
        let congested = self.baseline.is_some_and(|b| self.epoch.samples > 0 && self.mean > b * 2 + LATENCY_SLACK);
        if congested {
            self.slow_start = false;
            self.limit = (self.limit * 0.85).max((INITIAL_LIMIT as f64).min(self.limit));
        } else if self.epoch.saturated {
            self.limit = if self.slow_start { self.limit * 2.0 } else { self.limit + (self.limit * 0.1).max(1.0) };
        }
        self.limit = self.limit.min(max as f64);
        self.epoch = Epoch::new(now);
        self.limit > before
    }

    /// The baseline: the lowest round trip seen, which may rise by at most a tenth per
    /// [`BASELINE_WINDOW`] to follow a path that got slower for good. Under sustained load
    /// every round trip carries the queueing this side itself causes; a baseline taken from
    /// them alone would ratchet up with the limit.
    fn note_low(&mut self, now: Instant, rtt: Duration) {
        if now.duration_since(self.window_start) >= BASELINE_WINDOW {
            self.baseline = match (self.window_low, self.baseline) {
                (Some(low), Some(base)) => Some(low.min(base.mul_f64(1.1))),
                (low, base) => low.or(base),
            };
            self.window_low = None;
            self.window_start = now;
        }
        self.window_low = Some(self.window_low.map_or(rtt, |l| l.min(rtt)));
        self.baseline = Some(self.baseline.map_or(rtt, |b| b.min(rtt)));
    }
}

/// A slot of a side's limiter, held for one request attempt; give it back with
/// [`Permit::done`] (dropping it frees the slot without a sample).
#[derive(Debug)]
pub struct Permit {
    limiter: Option<Arc<Limiter>>,
    started: Instant,
}

impl Permit {
    /// Frees the slot and tells the controller how the answer went.
    pub fn done(mut self, signal: Signal) {
        if let Some(l) = self.limiter.take() {
            l.finish(self.started, signal);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(l) = self.limiter.take() {
            l.finish(self.started, Signal::Unsampled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(limit: f64) -> State {
        State::new(limit, Instant::now())
    }

    /// One epoch: as many answers as the limit, each sent `rtt` before it came, the limit
    /// reached.
    fn epoch(s: &mut State, rtt: Duration, signal: Signal) {
        s.epoch.saturated = true;
        let n = s.limit.ceil() as u32;
        // Requests of this epoch were sent after it started.
        let now = s.epoch.start + rtt;
        for _ in 0..n {
            s.observe(now, now - rtt, signal, MAX_LIMIT);
        }
    }

    #[test]
    fn a_long_flat_path_grows_fast_to_the_cap() {
        let mut s = state(INITIAL_LIMIT as f64);
        let mut epochs = 0;
        while s.limit < MAX_LIMIT as f64 {
            epoch(&mut s, Duration::from_millis(100), Signal::Served);
            epochs += 1;
            assert!(epochs < 10, "slow start doubles per epoch: {}", s.limit);
        }
        assert_eq!(s.limit, MAX_LIMIT as f64);
    }

    #[test]
    fn latency_growth_shrinks_to_the_initial_limit_and_pressure_below_it() {
        let mut s = state(64.0);
        epoch(&mut s, Duration::from_millis(1), Signal::Served);
        for _ in 0..40 {
            epoch(&mut s, Duration::from_millis(20), Signal::Served);
        }
        assert_eq!(s.limit, INITIAL_LIMIT as f64, "queueing alone never goes under the old default");
        for _ in 0..5 {
            epoch(&mut s, Duration::from_millis(1), Signal::Throttled);
        }
        assert_eq!(s.limit, 1.0, "throttling halves down to one");
        assert!(!s.slow_start);
        // Served again: it grows back by a tenth (at least one) per epoch.
        epoch(&mut s, Duration::from_millis(1), Signal::Served);
        assert_eq!(s.limit, 2.0);
    }

    #[test]
    fn an_unsaturated_side_keeps_its_limit() {
        let mut s = state(8.0);
        let now = Instant::now();
        for _ in 0..8 {
            s.observe(now + Duration::from_millis(5), now, Signal::Served, MAX_LIMIT);
        }
        assert_eq!(s.limit, 8.0, "the limit grows only when requests waited for it");
    }

    #[tokio::test]
    async fn the_gate_holds_requests_to_the_limit() {
        let l = Arc::new(Limiter::new(Concurrency::Adaptive { max: 16 }));
        let permits: Vec<Permit> = futures_lite(&l, INITIAL_LIMIT).await;
        assert_eq!(l.snapshot().in_flight, INITIAL_LIMIT);
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the fifth request waits");
        drop(permits);
        let p = tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
        p.done(Signal::Served);
        let unlimited = Arc::new(Limiter::new(Concurrency::Unlimited));
        let many = futures_lite(&unlimited, 1000).await;
        assert_eq!((many.len(), unlimited.snapshot().limit), (1000, 0));
    }

    async fn futures_lite(l: &Arc<Limiter>, n: usize) -> Vec<Permit> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(l.acquire().await);
        }
        out
    }
}

#[cfg(test)]
mod baseline_tests {
    use super::*;

    #[test]
    fn the_baseline_rises_a_tenth_per_window_at_most() {
        let now = Instant::now();
        let mut s = State::new(8.0, now);
        s.slow_start = false;
        s.note_low(now, Duration::from_millis(10));
        // A whole window of round trips inflated by queueing.
        let later = now + BASELINE_WINDOW;
        s.note_low(later, Duration::from_millis(50));
        s.note_low(later + BASELINE_WINDOW, Duration::from_millis(50));
        assert_eq!(s.baseline, Some(Duration::from_millis(11)), "one window's rise: 10%");
    }
}
