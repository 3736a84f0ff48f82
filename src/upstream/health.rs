//! Target health, from two sources (SPEC `upstreams[].health_checks`):
//!
//! - passive, on by default (thresholds 5 and 3): a target whose calls fail
//!   `unhealthy_threshold` times in a row (or time out `timeout_threshold`
//!   times in a row) is ejected, taking no traffic for [`EJECT_FOR`] or
//!   until an active check passes; then it is tried again;
//! - active, when configured: `GET path` every `interval`, within
//!   `timeout`; a 2xx or 3xx answer passes. `unhealthy_threshold` failed
//!   checks in a row take the target out of rotation, `healthy_threshold`
//!   passed checks in a row bring it back.
//!
//! A target takes traffic when neither source holds it out.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::ActiveHealthCheckConfig;

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
    /// Held out by failed active checks.
    down: AtomicBool,
    /// The active checker was started (once per target).
    checking: AtomicBool,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

impl TargetHealth {
    /// Whether the target is out of rotation, by either source.
    pub fn is_ejected(&self) -> bool {
        if self.down.load(Ordering::Relaxed) {
            return true;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Whether failed active checks hold the target out.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
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

    /// Records an active check's verdict, given the run of equal verdicts
    /// it ends (`run`, this one included).
    fn checked(&self, passed: bool, run: u32, active: &ActiveHealthCheckConfig) -> Change {
        if passed {
            // A passed check also ends a passive ejection.
            let ejected = self.ejected_until.load(Ordering::Relaxed) != 0
                && self.ejected_until.swap(0, Ordering::Relaxed) != 0;
            let up = run >= active.healthy_threshold.max(1)
                && self.down.load(Ordering::Relaxed)
                && self.down.swap(false, Ordering::Relaxed);
            if up || (ejected && !self.is_down()) {
                return Change::Readmitted;
            }
        } else if run >= active.unhealthy_threshold.max(1) && !self.down.swap(true, Ordering::Relaxed) {
            return Change::Ejected;
        }
        Change::None
    }

    fn count(&self, counter: &AtomicU32, threshold: u32) -> Change {
        if threshold == 0 || counter.fetch_add(1, Ordering::Relaxed) + 1 < threshold {
            return Change::None;
        }
        counter.store(0, Ordering::Relaxed);
        // Calls already in flight when the target was ejected fail too:
        // they extend the ejection but are not a new one.
        let was = self
            .ejected_until
            .swap(now_ms() + EJECT_FOR.as_millis() as u64, Ordering::Relaxed);
        if was != 0 && now_ms() < was {
            return Change::None;
        }
        Change::Ejected
    }
}

/// Runs `target`'s active checks until the target is dropped (its
/// upstream is gone from the config). Once per target: a target kept across
/// a reload keeps its checker. Needs a tokio runtime.
pub fn start_checks(target: &std::sync::Arc<super::Target>, upstream: &super::Upstream) {
    let Some(active) = target.active.clone() else {
        return;
    };
    if target.health.checking.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak: Weak<super::Target> = std::sync::Arc::downgrade(target);
    let (name, http2, scheme) = (
        upstream.name.clone(),
        matches!(
            upstream.protocol,
            crate::config::Protocol::Http2 | crate::config::Protocol::Grpc
        ),
        upstream.scheme(),
    );
    tokio::spawn(async move {
        let mut run = (true, 0u32);
        let mut tick = tokio::time::interval(active.interval.0.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(target) = weak.upgrade() else { return };
            let passed = check(&target, &active, http2, &scheme).await;
            run = if passed == run.0 {
                (passed, run.1.saturating_add(1))
            } else {
                (passed, 1)
            };
            let change = target.health.checked(passed, run.1, &active);
            super::report(&name, &target, change, "active health check");
        }
    });
}

/// One check: `GET path` answered 2xx or 3xx within the timeout, the body
/// read (up to a bound) so the connection can serve again.
async fn check(
    target: &super::Target,
    active: &ActiveHealthCheckConfig,
    http2: bool,
    scheme: &http::uri::Scheme,
) -> bool {
    use http_body::Body as _;
    const MAX_BODY: usize = 64 * 1024;
    let deadline = Instant::now() + active.timeout.0;
    let uri = if http2 {
        format!("{scheme}://{}{}", target.authority, active.path)
    } else {
        active.path.clone()
    };
    let Ok(mut req) = http::Request::get(uri)
        .header(http::header::USER_AGENT, "portcullis-health-check")
        .body(crate::body::RequestBody::full(bytes::Bytes::new()))
    else {
        return false;
    };
    if !http2 {
        *req.version_mut() = http::Version::HTTP_11;
        if let Ok(host) = http::HeaderValue::from_str(target.authority.as_str()) {
            req.headers_mut().insert(http::header::HOST, host);
        }
    }
    let exchange = async {
        let resp = target.pool.send(Box::new(req), deadline).await.ok()?;
        let passed = resp.status().is_success() || resp.status().is_redirection();
        let mut body = resp.into_body();
        let mut read = 0;
        while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            read += frame.ok()?.data_ref().map_or(0, |d| d.len());
            if read > MAX_BODY {
                // Dropped unfinished: the connection closes.
                return Some(passed);
            }
        }
        Some(passed)
    };
    tokio::time::timeout_at(deadline, exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
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

    #[test]
    fn active_checks_need_runs_and_end_passive_ejections() {
        let active = ActiveHealthCheckConfig {
            path: "/health".into(),
            interval: crate::config::Duration::secs(5),
            timeout: crate::config::Duration::secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        };
        let h = TargetHealth::default();
        assert_eq!(h.checked(false, 1, &active), Change::None);
        assert_eq!(h.checked(false, 2, &active), Change::None);
        assert_eq!(h.checked(false, 3, &active), Change::Ejected);
        assert!(h.is_ejected() && h.is_down());
        assert_eq!(h.checked(false, 4, &active), Change::None, "reported once");
        assert_eq!(h.checked(true, 1, &active), Change::None);
        assert!(h.is_ejected());
        assert_eq!(h.checked(true, 2, &active), Change::Readmitted);
        assert!(!h.is_ejected());

        // Passively ejected: the next passed check brings it back.
        let passive = Passive {
            unhealthy_threshold: 1,
            timeout_threshold: 1,
        };
        assert_eq!(h.record(Outcome::Failure, passive), Change::Ejected);
        assert!(h.is_ejected() && !h.is_down());
        assert_eq!(h.checked(true, 3, &active), Change::Readmitted);
        assert!(!h.is_ejected());
    }
}
