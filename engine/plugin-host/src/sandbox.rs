//! What bounds one plugin instance beyond its imports: the resource limiter (linear memory,
//! table elements, and the number of memories, tables and core instances), the per-call and
//! per-instance budget of log lines, and the caps on texts a plugin hands back to the host.
//!
//! The numbers are fixed, not configurable: they are far above what a path mapper needs (the
//! default pack has 1 memory, 2 tables and 3 core instances; see `load_bytes` for the checks at
//! load), and each is there so one misbehaving plugin cannot exhaust the engine's memory or
//! bury its log.

use std::time::{Duration, Instant};

use tracing::warn;

/// Linear memories per instance (whole store). Multi-memory is also off in the engine, so this
/// counts memories across the component's core instances.
pub(crate) const MAX_MEMORIES: usize = 1;
/// Tables per instance (whole store): the default pack uses 2.
pub(crate) const MAX_TABLES: usize = 8;
/// Core instances per plugin instance: the default pack uses 3 (the module, and the shim and
/// fixup modules `wasm-component-ld` adds); other toolchains add adapters.
pub(crate) const MAX_INSTANCES: usize = 16;
/// Host memory one table element may take, to derive the table budget from the memory limit.
pub(crate) const TABLE_ELEMENT_BYTES: u64 = 16;

/// Longest plugin error text kept, in bytes (longer texts are cut, with a marker).
pub(crate) const MAX_ERROR_TEXT: usize = 4096;
/// Longest transformer output, in bytes: a longer one fails its path.
pub(crate) const MAX_OUTPUT: usize = 4096;
/// Longest plugin log line forwarded, in bytes.
pub(crate) const MAX_LOG_LINE: usize = 4096;
/// Log lines forwarded per call.
pub(crate) const LOG_LINES_PER_CALL: u32 = 32;
/// Log lines an instance may send in a burst across calls (the bucket's size).
pub(crate) const LOG_BURST: f64 = 256.0;
/// Log lines an instance may send per second, sustained (the bucket's refill rate).
pub(crate) const LOG_RATE: f64 = 64.0;
/// At most one "lines dropped" summary per instance in this interval (more would be a flood
/// of its own); what is dropped meanwhile is counted into the next summary.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// Cuts `text` to at most `max` bytes (on a character boundary) and marks the cut.
pub(crate) fn cap_text(mut text: String, max: usize) -> String {
    if text.len() > max {
        let total = text.len();
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(&format!("… ({total} bytes, truncated)"));
    }
    text
}

/// The per-instance resource limiter. Like wasmtime's `StoreLimits` with
/// `trap_on_grow_failure`, but memory and table sizes are budgets over the whole store (every
/// memory and table the component's core instances create), and it records that a limit was
/// hit, so the trap is reported as `MemoryExceeded` without matching on error text.
#[derive(Debug)]
pub(crate) struct Limits {
    memory_limit: usize,
    memory_used: usize,
    table_limit: usize,
    table_used: usize,
    /// Set when a growth past a limit was refused.
    pub(crate) hit: bool,
}

impl Limits {
    /// Budgets for a memory limit in bytes (tables get `limit / TABLE_ELEMENT_BYTES` elements).
    pub(crate) fn new(memory_limit: u64) -> Self {
        Self {
            memory_limit: usize::try_from(memory_limit).unwrap_or(usize::MAX),
            memory_used: 0,
            table_limit: table_elements(memory_limit),
            table_used: 0,
            hit: false,
        }
    }

    /// Admits growing one memory or table from `current` to `desired` against the store-wide
    /// `used` of `limit`; `maximum` is the module's own declared maximum.
    fn grow(
        what: &str,
        used: &mut usize,
        limit: usize,
        hit: &mut bool,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = used.saturating_add(desired.saturating_sub(current));
        if total > limit {
            *hit = true;
            return Err(wasmtime::Error::msg(format!("{what} limit exceeded: growing to {total} in all (limit {limit})")));
        }
        // The module's own declared maximum: ordinary wasm semantics (`grow` returns -1).
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        *used = total;
        Ok(true)
    }
}

/// The table-element budget for a memory limit.
pub(crate) fn table_elements(memory_limit: u64) -> usize {
    usize::try_from(memory_limit / TABLE_ELEMENT_BYTES).unwrap_or(usize::MAX)
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Self::grow("memory", &mut self.memory_used, self.memory_limit, &mut self.hit, current, desired, maximum)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Self::grow("table", &mut self.table_used, self.table_limit, &mut self.hit, current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The host could not provide memory below the limit: fail the call rather than let the
        // guest's allocator abort in a less readable way.
        Err(error.context("memory growth failed"))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// How many log lines an instance may still send: at most [`LOG_LINES_PER_CALL`] per call and
/// a token bucket ([`LOG_BURST`], refilled at [`LOG_RATE`] a second) across calls. Lives with
/// the [`crate::Instance`], not its store, so a plugin cannot refill it by trapping.
#[derive(Debug)]
pub(crate) struct LogBudget {
    tokens: f64,
    refilled: Instant,
    this_call: u32,
    /// Dropped lines not yet reported.
    dropped: u64,
    last_summary: Option<Instant>,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self {
            tokens: LOG_BURST,
            refilled: Instant::now(),
            this_call: 0,
            dropped: 0,
            last_summary: None,
        }
    }
}

impl LogBudget {
    /// A call starts: the per-call count restarts and the bucket refills for the time passed.
    pub(crate) fn begin_call(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * LOG_RATE).min(LOG_BURST);
        self.refilled = now;
        self.this_call = 0;
    }

    /// Whether one more line may go out (counted as dropped when not).
    pub(crate) fn admit(&mut self) -> bool {
        if self.this_call < LOG_LINES_PER_CALL && self.tokens >= 1.0 {
            self.this_call += 1;
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// A call ended: one summary line for what was dropped, unless one went out less than
    /// [`SUMMARY_INTERVAL`] ago (then the count waits for a later call, or the drop).
    pub(crate) fn end_call(&mut self, plugin: &str) {
        let now = Instant::now();
        if self.dropped > 0 && self.last_summary.is_none_or(|t| now.duration_since(t) >= SUMMARY_INTERVAL) {
            self.summarize(plugin);
            self.last_summary = Some(now);
        }
    }

    /// Reports any dropped lines not yet reported.
    pub(crate) fn summarize(&mut self, plugin: &str) {
        if self.dropped > 0 {
            warn!(
                plugin,
                dropped = self.dropped,
                "{} plugin log lines dropped (limit: {LOG_LINES_PER_CALL} a call, {LOG_RATE} a second)",
                self.dropped
            );
            self.dropped = 0;
        }
    }
}
