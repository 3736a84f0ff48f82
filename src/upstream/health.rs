//! Passive health checks: a target whose calls fail `unhealthy_threshold`
//! times in a row (or time out `timeout_threshold` times in a row) is
//! ejected, taking no traffic for [`EJECT_FOR`]; then it is tried again.
//! On by default (SPEC section 8: thresholds 5 and 3).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long an ejected target takes no traffic.
pub const EJECT_FOR: Duration = Duration::from_secs(30);

/// How a call to a target went, for its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused, reset, or answered 502/503/504.
    Failure,
    /// No answer in time.
    Timeout,
}

/// The thresholds (`health_checks.passive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    pub unhealthy_threshold: u32,
    pub timeout_threshold: u32,
}

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Ejected,
    /// The first success after an ejection ended.
    Readmitted,
}

#[derive(Default)]
pub struct TargetHealth {
    failures: AtomicU32,
    timeouts: AtomicU32,
    /// Milliseconds since [`epoch`] until which the target is ejected; 0 = not.
    ejected_until: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

impl TargetHealth {
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// When the ejection ends, if the target is ejected.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Counts the outcome; says when it changed whether the target takes traffic.
    pub fn record(&self, outcome: Outcome, passive: Passive) -> Change {
        match outcome {
            Outcome::Success => {
                // Loads first: nothing is written in the common case.
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
                if self.timeouts.load(Ordering::Relaxed) != 0 {
                    self.timeouts.store(0, Ordering::Relaxed);
                }
                if self.ejected_until.load(Ordering::Relaxed) != 0
                    && self.ejected_until.swap(0, Ordering::Relaxed) != 0
                {
                    return Change::Readmitted;
                }
                Change::None
            }
            Outcome::Failure => self.count(&self.failures, passive.unhealthy_threshold),
            Outcome::Timeout => self.count(&self.timeouts, passive.timeout_threshold),
        }
    }

    fn count(&self, counter: &AtomicU32, threshold: u32) -> Change {
        if threshold == 0 || counter.fetch_add(1, Ordering::Relaxed) + 1 < threshold {
            return Change::None;
        }
        counter.store(0, Ordering::Relaxed);
        self.ejected_until
            .store(now_ms() + EJECT_FOR.as_millis() as u64, Ordering::Relaxed);
        Change::Ejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_eject() {
        let h = TargetHealth::default();
        let p = Passive {
            unhealthy_threshold: 3,
            timeout_threshold: 2,
        };
        assert_eq!(h.record(Outcome::Failure, p), Change::None);
        assert_eq!(h.record(Outcome::Failure, p), Change::None);
        assert_eq!(
            h.record(Outcome::Success, p),
            Change::None,
            "a success resets the count"
        );
        assert_eq!(h.record(Outcome::Failure, p), Change::None);
        assert_eq!(h.record(Outcome::Failure, p), Change::None);
        assert!(!h.is_ejected());
        assert_eq!(h.record(Outcome::Failure, p), Change::Ejected);
        assert!(h.is_ejected());
        assert!(h.ejected_for().unwrap() > Duration::from_secs(29));
        assert_eq!(h.record(Outcome::Success, p), Change::Readmitted);
        assert!(!h.is_ejected());
        let t = TargetHealth::default();
        assert_eq!(t.record(Outcome::Timeout, p), Change::None);
        assert_eq!(t.record(Outcome::Timeout, p), Change::Ejected);
    }
}
