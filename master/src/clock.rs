//! The time the master decides by.
//!
//! Leases, the reaper and the pause a worker gets after giving a job back all compare
//! "now" with a deadline. Asking one injected clock instead of the system's lets a
//! test move time past a deadline at once, where it would otherwise have to sleep.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::store::Millis;

/// Where the master reads the time (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// Milliseconds since the Unix epoch, now.
    pub fn now_ms(&self) -> Millis {
        match &self.manual {
            Some(now) => now.load(Ordering::SeqCst),
            None => wall_ms(),
        }
    }
}

/// A clock that stands still until it is moved: for tests of deadlines.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `start_ms` (ms since the epoch).
    pub fn starting_at(start_ms: Millis) -> Self {
        Self {
            now: Arc::new(AtomicI64::new(start_ms)),
        }
    }

    /// A clock standing at the wall clock's time now.
    pub fn starting_now() -> Self {
        Self::starting_at(wall_ms())
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now.fetch_add(by, Ordering::SeqCst);
    }

    /// The time it stands at.
    pub fn now_ms(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }

    /// The [`Clock`] the master asks; it follows every move of this one.
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(Arc::clone(&self.now)),
        }
    }
}

/// `duration` in milliseconds, saturating.
pub fn millis(duration: Duration) -> Millis {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn wall_ms() -> Millis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    millis(since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clocks_follow() {
        let manual = ManualClock::starting_at(1_000);
        let clock = manual.clock();
        assert_eq!(clock.now_ms(), 1_000);
        manual.advance(Duration::from_millis(2_500));
        assert_eq!(clock.now_ms(), 3_500);
        assert_eq!(manual.now_ms(), 3_500);
    }

    #[test]
    fn the_system_clock_is_the_wall_clock() {
        let before = wall_ms();
        let now = Clock::system().now_ms();
        assert!(now >= before && now - before < 60_000, "{before} {now}");
    }
}
