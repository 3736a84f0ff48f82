//! The circuit breaker of one upstream (SPEC sections 2 and 8):
//!
//! ```text
//! closed ──(≥ failure_rate of ≥ min_requests calls in the last `window` failed)──▶ open
//! open ──(open_for passed)──▶ half-open: `half_open_requests` probes go through
//! half-open ──(every probe succeeded)──▶ closed    (one failed probe)──▶ open
//! ```
//!
//! While open, calls fail fast (503 `circuit-open`): the backend receives
//! nothing. Failures are connect errors, resets, timeouts, calls slower than
//! `slow_call_threshold`, and the statuses in `failure_statuses` (default
//! 502, 503, 504). The window slides in ten buckets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::CircuitBreakerConfig;

const BUCKETS: usize = 10;

/// What a circuit is doing (the `circuit_breaker_state` gauge: 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Closed,
    Open,
    HalfOpen,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Open => "open",
            Mode::HalfOpen => "half_open",
        }
    }

    fn gauge(self) -> i64 {
        match self {
            Mode::Closed => 0,
            Mode::Open => 1,
            Mode::HalfOpen => 2,
        }
    }
}

pub struct Breaker {
    pub settings: CircuitBreakerConfig,
    failure_statuses: Vec<u16>,
    bucket_len: Duration,
    state: Mutex<State>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

struct State {
    mode: Mode,
    /// Open: until when.
    open_until: Instant,
    /// Half-open: probes let through, and those that succeeded.
    probes: u32,
    probes_ok: u32,
    /// Closed: (calls, failures) per bucket, and the bucket `now` falls in.
    buckets: [(u32, u32); BUCKETS],
    current: u64,
}

/// Leave to call the upstream; report how it went with [`Permit::record`].
/// A permit dropped unreported (the client went away) gives its probe slot back.
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    done: bool,
}

impl Breaker {
    pub fn new(cfg: &CircuitBreakerConfig, upstream: &str) -> Breaker {
        let gauge = crate::telemetry::metrics().circuit_breaker_state(upstream);
        gauge.set(0);
        Breaker {
            settings: cfg.clone(),
            failure_statuses: cfg
                .failure_statuses
                .clone()
                .unwrap_or_else(|| vec![502, 503, 504]),
            bucket_len: (cfg.window.0 / BUCKETS as u32).max(Duration::from_millis(1)),
            state: Mutex::new(State {
                mode: Mode::Closed,
                open_until: Instant::now(),
                probes: 0,
                probes_ok: 0,
                buckets: [(0, 0); BUCKETS],
                current: 0,
            }),
            gauge,
        }
    }

    pub fn mode(&self) -> Mode {
        let mut s = self.lock();
        if s.mode == Mode::Open && Instant::now() >= s.open_until {
            self.set_mode(&mut s, Mode::HalfOpen);
        }
        s.mode
    }

    /// A permit to call, or `None` while the circuit is open (or every
    /// half-open probe is out).
    pub fn acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut s = self.lock();
        if s.mode == Mode::Open {
            if Instant::now() < s.open_until {
                return None;
            }
            self.set_mode(&mut s, Mode::HalfOpen);
        }
        let probe = s.mode == Mode::HalfOpen;
        if probe {
            if s.probes >= self.settings.half_open_requests.max(1) {
                return None;
            }
            s.probes += 1;
        }
        Some(Permit {
            breaker: self.clone(),
            probe,
            done: false,
        })
    }

    /// Whether an answer with `status` after `elapsed` counts as a failure.
    pub fn is_failure(&self, status: Option<u16>, elapsed: Duration) -> bool {
        match status {
            None => true,
            Some(s) => {
                self.failure_statuses.contains(&s)
                    || self.settings.slow_call_threshold.is_some_and(|t| elapsed > t.0)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_mode(&self, s: &mut State, mode: Mode) {
        if s.mode != mode {
            tracing::warn!(from = s.mode.name(), to = mode.name(), "circuit breaker");
        }
        s.mode = mode;
        match mode {
            Mode::Open => s.open_until = Instant::now() + self.settings.open_for.0,
            Mode::HalfOpen => {
                s.probes = 0;
                s.probes_ok = 0;
            }
            Mode::Closed => s.buckets = [(0, 0); BUCKETS],
        }
        self.gauge.set(mode.gauge());
    }

    fn record(&self, probe: bool, failed: bool) {
        let mut s = self.lock();
        if probe {
            if s.mode != Mode::HalfOpen {
                return;
            }
            if failed {
                self.set_mode(&mut s, Mode::Open);
            } else {
                s.probes_ok += 1;
                if s.probes_ok >= self.settings.half_open_requests.max(1) {
                    self.set_mode(&mut s, Mode::Closed);
                }
            }
            return;
        }
        if s.mode != Mode::Closed {
            return;
        }
        // Slide: buckets older than the window are emptied.
        let now = epoch_buckets(self.bucket_len);
        let stale = now.saturating_sub(s.current).min(BUCKETS as u64);
        let current = s.current;
        for k in 1..=stale {
            s.buckets[((current + k) % BUCKETS as u64) as usize] = (0, 0);
        }
        s.current = now;
        let b = &mut s.buckets[(now % BUCKETS as u64) as usize];
        b.0 += 1;
        b.1 += u32::from(failed);
        let (calls, failures) = s
            .buckets
            .iter()
            .fold((0u32, 0u32), |(c, f), b| (c + b.0, f + b.1));
        if calls >= self.settings.min_requests.max(1)
            && f64::from(failures) >= self.settings.failure_rate * f64::from(calls)
        {
            self.set_mode(&mut s, Mode::Open);
        }
    }
}

/// Buckets since a fixed point in time.
fn epoch_buckets(len: Duration) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    (epoch.elapsed().as_nanos() / len.as_nanos().max(1)) as u64
}

impl Permit {
    pub fn record(mut self, failed: bool) {
        self.done = true;
        self.breaker.record(self.probe, failed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.probe {
            let mut s = self.breaker.lock();
            if s.mode == Mode::HalfOpen {
                s.probes = s.probes.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration as D;

    fn breaker(open_for: Duration) -> Arc<Breaker> {
        Arc::new(Breaker::new(
            &CircuitBreakerConfig {
                failure_rate: 0.5,
                min_requests: 4,
                window: D(Duration::from_secs(10)),
                open_for: D(open_for),
                half_open_requests: 2,
                slow_call_threshold: Some(D(Duration::from_millis(100))),
                failure_statuses: None,
            },
            "unit",
        ))
    }

    #[test]
    fn trips_at_the_rate_after_min_requests() {
        let b = breaker(Duration::from_secs(30));
        for failed in [true, false, true] {
            b.acquire().unwrap().record(failed);
        }
        assert_eq!(b.mode(), Mode::Closed, "3 calls are under min_requests");
        b.acquire().unwrap().record(false);
        assert_eq!(b.mode(), Mode::Open, "2 of 4 failed: 50%");
        assert!(b.acquire().is_none());
    }

    #[test]
    fn half_open_probes_close_or_reopen() {
        let b = breaker(Duration::ZERO);
        for _ in 0..4 {
            b.acquire().unwrap().record(true);
        }
        assert_eq!(b.mode(), Mode::HalfOpen);
        let (p1, p2) = (b.acquire().unwrap(), b.acquire().unwrap());
        assert!(b.acquire().is_none(), "only half_open_requests probes");
        drop(p2);
        let p3 = b.acquire().expect("an unreported probe gives its slot back");
        p1.record(false);
        p3.record(false);
        assert_eq!(b.mode(), Mode::Closed);

        let b = breaker(Duration::from_millis(50));
        for _ in 0..4 {
            b.acquire().unwrap().record(true);
        }
        std::thread::sleep(Duration::from_millis(60));
        b.acquire().expect("half-open after open_for").record(true);
        assert_eq!(b.mode(), Mode::Open, "one failed probe reopens at once");
    }

    #[test]
    fn failures() {
        let b = breaker(Duration::ZERO);
        assert!(b.is_failure(None, Duration::ZERO));
        assert!(b.is_failure(Some(503), Duration::ZERO));
        assert!(!b.is_failure(Some(500), Duration::ZERO));
        assert!(b.is_failure(Some(200), Duration::from_millis(150)), "slow");
    }
}
