//! The daemon's one rate-limited logger: a condition that repeats (a failing hook, a
//! malformed packet, a check that keeps timing out) logs one line per interval, with the
//! count of the lines it held back.
use std::{
    ops::Add,
    time::{Duration, Instant},
};

/// At most one log line per this interval for each repeating failure.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// One log line per interval for a repeating condition, with the count of those suppressed.
/// The clock is the caller's: `Instant` in the I/O shells, a protocol clock passed in by a
/// pure core (VRRP's `fsm::Time`), so its tests run on a virtual clock.
#[derive(Debug)]
pub struct LogLimit<T = Instant> {
    every: Duration,
    next: Option<T>,
    suppressed: u64,
}

impl<T> LogLimit<T> {
    pub const fn new(every: Duration) -> Self {
        LogLimit {
            every,
            next: None,
            suppressed: 0,
        }
    }
}

impl LogLimit<Instant> {
    /// `Some(suppressed)` when a line may be logged now.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }
}

impl<T: Copy + Ord + Add<Duration, Output = T>> LogLimit<T> {
    /// As [`LogLimit::allow`], at `now`.
    pub fn allow_at(&mut self, now: T) -> Option<u64> {
        match self.next {
            Some(next) if now < next => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next = Some(now + self.every);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limit() {
        let mut l = LogLimit::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(l.allow_at(t0), Some(0));
        assert_eq!(l.allow_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow_at(t0 + Duration::from_secs(59)), None);
        assert_eq!(l.allow_at(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(l.allow_at(t0 + Duration::from_secs(61)), None);
    }
}
