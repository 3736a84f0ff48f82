//! Retries of failed upstream calls (SPEC `upstreams[].retries`, defaults in
//! section 8: one extra attempt on `connect_failure`, 25 ms backoff, budget 0.2).
//!
//! Whether a call may be sent again depends on what the upstream may have seen:
//!
//! - never sent (connect refused or timed out, or hyper handed the request
//!   back unwritten): any method, when `connect_failure` is listed;
//! - possibly processed (`reset`, a listed 5xx, or a head timeout as 504):
//!   idempotent methods only (RFC 9110 section 9.2.2), and only with a body
//!   the gateway still holds a copy of ([`REPLAY_LIMIT`]).
//!
//! Retries go to another target when there is one, wait an exponential
//! backoff with full jitter, never outlive the route's deadline, and draw on
//! a [`Budget`] so a failing upstream does not get its load multiplied.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

use crate::config::RetriesConfig;

/// The largest request body kept for sending again after it may have
/// reached the upstream. Larger (or unsized, chunked) bodies stream once
/// and are retried only when they were never sent.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// The most extra attempts a config may ask for.
pub const MAX_ATTEMPTS: u32 = 10;

/// The `on` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    /// Statuses 500–599, bit `status - 500`.
    statuses: u128,
}

impl RetryOn {
    /// Parses the `on` list: `connect_failure`, `reset` and 5xx statuses.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<RetryOn, String> {
        let mut on = RetryOn::default();
        for item in items {
            match item.as_ref() {
                "connect_failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                other => match other.parse::<u16>() {
                    Ok(s @ 500..=599) => on.statuses |= 1 << (s - 500),
                    _ => {
                        return Err(format!(
                            "`{other}` is not a retry condition (connect_failure, reset, or a status 500-599)"
                        ));
                    }
                },
            }
        }
        Ok(on)
    }

    pub fn status(&self, status: u16) -> bool {
        (500..=599).contains(&status) && self.statuses & (1 << (status - 500)) != 0
    }

    /// Whether any condition applies after the request may have been sent.
    pub fn after_send(&self) -> bool {
        self.reset || self.statuses != 0
    }
}

/// One upstream's retry settings and budget.
pub struct Policy {
    pub attempts: u32,
    pub on: RetryOn,
    pub backoff: Duration,
    pub budget: Budget,
}

impl Policy {
    /// From the config; the SPEC defaults when `retries` is absent.
    /// Validation has checked the fields.
    pub fn new(cfg: Option<&RetriesConfig>) -> Policy {
        let on = match cfg {
            Some(c) if !c.on.is_empty() => RetryOn::parse(&c.on).unwrap_or_default(),
            _ => RetryOn {
                connect_failure: true,
                ..RetryOn::default()
            },
        };
        Policy {
            attempts: cfg.map_or(1, |c| c.attempts.min(MAX_ATTEMPTS)),
            on,
            backoff: cfg
                .and_then(|c| c.backoff)
                .map_or(Duration::from_millis(25), |d| d.0),
            budget: Budget::new(cfg.and_then(|c| c.budget).unwrap_or(0.2)),
        }
    }

    /// The wait before extra attempt `n` (1-based): uniformly random up to
    /// `backoff × 2^(n-1)` ("full jitter", so clients that failed together
    /// do not come back together).
    pub fn backoff(&self, n: u32) -> Duration {
        let ceiling = self.backoff.saturating_mul(1 << (n.saturating_sub(1)).min(16));
        ceiling.mul_f64(fastrand::f64())
    }
}

/// RFC 9110 section 9.2.2: sending these twice has the effect of once.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Seconds the budget looks back over.
const WINDOW: u64 = 10;
/// Retries the budget always allows, per second (SPEC section 8).
const MIN_PER_SECOND: u64 = 10;

/// Retries may not exceed `ratio` of the requests of the last ten seconds,
/// but at least [`MIN_PER_SECOND`] are always allowed. Requests and retries
/// are counted in one-second slots; each slot packs its second (high 32
/// bits) and its count (low 32 bits) in one atomic, so an update is a single
/// compare-and-swap and a slot from an old second restarts at zero.
pub struct Budget {
    ratio: f64,
    requests: [AtomicU64; WINDOW as usize],
    retries: [AtomicU64; WINDOW as usize],
}

fn now_secs() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let now = crate::clock::recent();
    now.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_secs()
        + 1
}

fn bump(slots: &[AtomicU64; WINDOW as usize], now: u64) {
    let slot = &slots[(now % WINDOW) as usize];
    let mut current = slot.load(Ordering::Relaxed);
    loop {
        let next = if current >> 32 == now {
            current + 1
        } else {
            (now << 32) | 1
        };
        match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

fn total(slots: &[AtomicU64; WINDOW as usize], now: u64) -> u64 {
    slots
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .filter(|v| now - (v >> 32).min(now) < WINDOW)
        .map(|v| v & 0xffff_ffff)
        .sum()
}

impl Budget {
    pub fn new(ratio: f64) -> Budget {
        Budget {
            ratio,
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// Counts a request (not a retry).
    pub fn request(&self) {
        bump(&self.requests, now_secs());
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_retry(&self) -> bool {
        let now = now_secs();
        let allowed = (self.ratio * total(&self.requests, now) as f64).max((MIN_PER_SECOND * WINDOW) as f64);
        if total(&self.retries, now) as f64 >= allowed {
            return false;
        }
        bump(&self.retries, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        let on = RetryOn::parse(&["connect_failure", "502", "504"]).unwrap();
        assert!(on.connect_failure && !on.reset);
        assert!(on.status(502) && on.status(504) && !on.status(503) && !on.status(200));
        assert!(on.after_send());
        assert!(!RetryOn::parse(&["connect_failure"]).unwrap().after_send());
        assert!(RetryOn::parse(&["404"]).is_err());
        assert!(RetryOn::parse(&["timeout"]).is_err());
    }

    #[test]
    fn defaults_follow_the_spec() {
        let p = Policy::new(None);
        assert_eq!(p.attempts, 1);
        assert!(p.on.connect_failure && !p.on.after_send());
        assert_eq!(p.backoff, Duration::from_millis(25));
        for n in 1..5 {
            assert!(p.backoff(n) <= Duration::from_millis(25) * (1 << (n - 1)));
        }
    }

    #[test]
    fn budget_allows_the_floor_then_the_ratio() {
        let b = Budget::new(0.2);
        // No requests yet: the floor of 10/s over the window.
        let floor = (MIN_PER_SECOND * WINDOW) as usize;
        assert_eq!((0..floor + 50).filter(|_| b.try_retry()).count(), floor);
        // 1000 requests: 20% of them, which is above the floor.
        for _ in 0..1000 {
            b.request();
        }
        assert_eq!((0..500).filter(|_| b.try_retry()).count(), 200 - floor);
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT) && is_idempotent(&Method::DELETE));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}
