//! Long background work (validating and compiling a config of thousands of
//! routes) that gives the CPU back to request threads every ~100 µs.
//!
//! A reload costs a tenth of a second of CPU. Run in one piece on a busy
//! core it delays every request in flight by a scheduler timeslice (several
//! ms); lowering its priority only makes it slower without shortening the
//! slices. So the loops of that work call [`point`]: on a thread marked with
//! [`background`], every 100 µs of work it yields, letting a runnable
//! request thread go first. Elsewhere (request threads) it is a no-op.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Work between yields.
const SLICE: Duration = Duration::from_micros(100);
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
                std::thread::yield_now();
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
