//! Long background work (validating and compiling a config of thousands of
//! routes) that steps aside for request threads every 500 µs.
//!
//! A reload costs a tenth of a second of CPU or more. Run in one piece on a
//! busy core it delays every request in flight by a scheduler timeslice
//! (milliseconds); lowering its priority only makes it slower without
//! shortening the slices, and `yield_now` helps only a thread that is
//! runnable at that instant. So the loops of that work call [`point`]: on a
//! thread marked with [`background`], after every 500 µs of work it sleeps
//! 50 µs, so a request thread that woke meanwhile gets the core at once.
//! The reload takes ~1.2× longer (measured in `bench/reload.sh`). Elsewhere
//! (request threads) `point` is a no-op.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Work between pauses.
const SLICE: Duration = Duration::from_micros(500);
/// How long it steps aside: a sleep, not `yield_now`, which gives the core
/// away only to a thread that is runnable at that very moment.
const PAUSE: Duration = Duration::from_micros(50);
/// Calls between clock reads.
const CHECK_EVERY: u32 = 16;

thread_local! {
    /// `Some(last yield)` on a background thread.
    static STATE: Cell<Option<(Instant, u32)>> = const { Cell::new(None) };
}

/// Marks the calling thread as doing background work.
pub fn background() {
    STATE.with(|s| s.set(Some((Instant::now(), 0))));
}

/// A point where background work may yield the CPU.
#[inline]
pub fn point() {
    STATE.with(|s| {
        if let Some((since, n)) = s.get() {
            let n = n + 1;
            if n < CHECK_EVERY {
                s.set(Some((since, n)));
            } else if since.elapsed() >= SLICE {
                std::thread::sleep(PAUSE);
                s.set(Some((Instant::now(), 0)));
            } else {
                s.set(Some((since, 0)));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_background_threads_yield() {
        // A request thread: no state, nothing happens.
        point();
        assert!(STATE.with(|s| s.get()).is_none());
        std::thread::spawn(|| {
            background();
            for _ in 0..100 {
                point();
            }
            assert!(STATE.with(|s| s.get()).is_some());
        })
        .join()
        .unwrap();
    }
}
