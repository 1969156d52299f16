//! The clock port: where the engine takes the wall time from.
//!
//! The engine reads the wall time to evaluate versions (a KV v2 version whose `deletion_time`
//! has passed is deleted) and to stamp records (status records, commit times). Taking it from a
//! [`Clock`] rather than calling `SystemTime::now()` lets a simulator run the engine on a
//! simulated clock; production uses [`SystemClock`].

use std::sync::Arc;
use std::time::SystemTime;

/// A source of wall-clock time.
pub trait Clock: Send + Sync {
    /// The current wall time.
    fn now(&self) -> SystemTime;
}

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The machine's clock as a shared clock (the default of every engine part that holds one).
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_follows_the_machine() {
        let before = SystemTime::now();
        let now = SystemClock.now();
        assert!(now >= before);
    }
}
