//! The monotonic clock of the request path.
//!
//! A reading costs ~20 ns on the VMs we run on (the TSC through the vDSO),
//! and a proxied request used to take ten. Most of them only place idle
//! periods, pool ages and read deadlines, for which a reading taken earlier
//! in the same poll of the same connection task is as good: those call
//! [`recent`]. Latency measurements call [`now`], a fresh reading, which
//! also becomes the recent one. A connection's task is polled in
//! [`scoped`]; outside it every reading is fresh, so no task ever sees
//! another's. Readings are tokio's `Instant`, what timers take.

use std::cell::Cell;
use std::future::Future;

use tokio::time::Instant;

#[derive(Clone, Copy)]
enum Recent {
    /// Not in a scoped poll: every reading is fresh.
    Outside,
    /// In a scoped poll, no reading yet.
    Unread,
    Read(Instant),
}

thread_local! {
    static RECENT: Cell<Recent> = const { Cell::new(Recent::Outside) };
}

/// A fresh reading.
pub fn now() -> Instant {
    let t = Instant::now();
    RECENT.with(|r| {
        if !matches!(r.get(), Recent::Outside) {
            r.set(Recent::Read(t));
        }
    });
    t
}

/// A reading taken in this poll of the task (at most as old as the poll),
/// or a fresh one.
pub fn recent() -> Instant {
    RECENT.with(|r| match r.get() {
        Recent::Read(t) => t,
        Recent::Unread => {
            let t = Instant::now();
            r.set(Recent::Read(t));
            t
        }
        Recent::Outside => Instant::now(),
    })
}

/// Runs `fut` with [`recent`] readings shared within each of its polls.
pub fn scoped<F: Future>(fut: F) -> Scoped<F> {
    Scoped { fut }
}

pin_project_lite::pin_project! {
    /// [`scoped`]'s future: `fut` itself and nothing more. (An `async fn`
    /// taking it would hold it twice, as its argument and pinned as a
    /// local: a connection's task was 26–33 KiB, half of it that copy.)
    pub struct Scoped<F> {
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let _scope = Scope::enter();
        self.project().fut.poll(cx)
    }
}

/// One poll's scope; leaving it (also by unwinding) forgets its reading.
struct Scope(Recent);

impl Scope {
    fn enter() -> Scope {
        Scope(RECENT.replace(Recent::Unread))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        RECENT.set(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;
    use std::time::Duration;

    /// Two readings `gap` apart, as `read` takes them.
    fn two_readings(read: fn() -> Instant, gap: Duration) -> (Instant, Instant) {
        let a = read();
        std::thread::sleep(gap);
        (a, read())
    }

    #[test]
    fn outside_a_scope_every_reading_is_fresh() {
        let (a, b) = two_readings(recent, Duration::from_millis(2));
        assert!(b - a >= Duration::from_millis(2));
    }

    #[test]
    fn a_poll_shares_one_reading_and_the_next_poll_reads_again() {
        let mut polls = Vec::new();
        let fut = scoped(poll_fn(|cx| {
            polls.push(two_readings(recent, Duration::from_millis(2)));
            if polls.len() < 2 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        }));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(fut);
        let (a1, b1) = polls[0];
        let (a2, _) = polls[1];
        assert_eq!(a1, b1, "one reading within a poll");
        assert!(
            a2 - a1 >= Duration::from_millis(2),
            "a new poll reads the clock again"
        );
        // And the scope is left behind: fresh readings again.
        let (a, b) = two_readings(recent, Duration::from_millis(2));
        assert!(b - a >= Duration::from_millis(2));
    }

    #[test]
    fn now_is_fresh_and_becomes_the_recent_reading() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(scoped(async {
            let first = recent();
            std::thread::sleep(Duration::from_millis(2));
            let fresh = now();
            assert!(fresh - first >= Duration::from_millis(2));
            assert_eq!(recent(), fresh);
        }));
    }
}
