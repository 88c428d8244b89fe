//! Time, as the daemons read it: the one module that reads the real clock.
//!
//! Decisions never read time themselves. A driver asks its [`Clock`] for
//! `now` and passes it in, so a test can hand the same driver a
//! [`ManualClock`] and move it by days in a line. [`SystemClock`] is the
//! real one. Wall time is milliseconds since the Unix epoch (`i64`, what the
//! audit log and the databases store); monotonic time is an [`Instant`], for
//! deadlines, timeouts and latencies that must not jump with the wall clock.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall and monotonic time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn unix_ms(&self) -> i64;
    /// A monotonic instant.
    fn instant(&self) -> Instant;
}

/// A clock handle, cheap to clone into every task; the real clock unless a
/// test hands in another.
#[derive(Debug, Clone)]
pub struct SharedClock(Arc<dyn Clock>);

impl SharedClock {
    /// A handle on `clock`.
    pub fn new(clock: impl Clock + 'static) -> SharedClock {
        SharedClock(Arc::new(clock))
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> i64 {
        self.0.unix_ms()
    }

    /// A monotonic instant.
    pub fn instant(&self) -> Instant {
        self.0.instant()
    }
}

impl Default for SharedClock {
    /// The real clock.
    fn default() -> SharedClock {
        SharedClock::new(SystemClock)
    }
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_ms(&self) -> i64 {
        unix_ms()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// Milliseconds since the Unix epoch from the real clock. Drivers that hold
/// no [`Clock`] (a CLI command, a one-off start-up record) call this.
pub fn unix_ms() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A monotonic instant from the real clock, for latencies and deadlines.
pub fn instant() -> Instant {
    Instant::now()
}

/// A clock that moves only when told to: both its wall and its monotonic
/// time advance together by [`ManualClock::advance`].
#[derive(Debug, Clone)]
pub struct ManualClock {
    /// Wall time and the offset added to `base` for monotonic time.
    state: Arc<Mutex<(i64, Duration)>>,
    /// The monotonic origin (an `Instant` cannot be made from a number).
    base: Instant,
}

impl ManualClock {
    /// A clock that reads `unix_ms` until it is advanced.
    pub fn new(unix_ms: i64) -> ManualClock {
        ManualClock { state: Arc::new(Mutex::new((unix_ms, Duration::ZERO))), base: Instant::now() }
    }

    /// Moves both times forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state.lock().expect("a clock's lock is never held across a panic");
        state.0 = state.0.saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
        state.1 += by;
    }

    /// This clock as a [`SharedClock`] (the handle still moves it).
    pub fn shared(&self) -> SharedClock {
        SharedClock::new(self.clone())
    }
}

impl Clock for ManualClock {
    fn unix_ms(&self) -> i64 {
        self.state.lock().expect("a clock's lock is never held across a panic").0
    }

    fn instant(&self) -> Instant {
        self.base + self.state.lock().expect("a clock's lock is never held across a panic").1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_both_times_together() {
        let clock = ManualClock::new(1_000);
        let shared = clock.shared();
        let start = shared.instant();
        clock.advance(Duration::from_secs(86_400 * 400));
        assert_eq!(shared.unix_ms(), 1_000 + 86_400_000 * 400);
        assert_eq!(shared.instant() - start, Duration::from_secs(86_400 * 400));
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        assert!(SystemClock.unix_ms() > 1_577_836_800_000);
    }
}
