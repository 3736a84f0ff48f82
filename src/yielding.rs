//! Long background work (validating and compiling a config of thousands of
//! routes) that steps aside for request threads every 500 µs.
//!
//! A reload costs a tenth of a second of CPU or more. Run in one piece on a
//! busy core it delays every request in flight by a scheduler timeslice
//! (milliseconds), and `yield_now` helps only a thread that is runnable at
//! that instant. So the loops of that work call [`point`]: on a thread
//! marked with [`background`], after every 500 µs of work it sleeps 50 µs,
//! so a request thread that woke meanwhile gets the core at once.
//!
//! Pauses alone still let a reload take half of a saturated core from its
//! requests (p99 ×4–6 with reloads back to back in `PIN=1 bench/reload.sh`),
//! so a background thread also runs at nice 10: under full load it gets
//! about a tenth of a core, on an idle core all of it. A reload of 10,000
//! routes then takes ~150 ms on an idle machine and a few seconds on a
//! saturated one. Elsewhere (request threads) `point` is a no-op.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Work between pauses.
const SLICE: Duration = Duration::from_micros(500);
/// How long it steps aside: a sleep, not `yield_now`, which gives the core
/// away only to a thread that is runnable at that very moment.
const PAUSE: Duration = Duration::from_micros(50);
/// Calls between clock reads.
const CHECK_EVERY: u32 = 4;

thread_local! {
    /// `Some(last yield)` on a background thread.
    static STATE: Cell<Option<(Instant, u32)>> = const { Cell::new(None) };
}

/// Marks the calling thread as doing background work.
pub fn background() {
    STATE.with(|s| s.set(Some((Instant::now(), 0))));
    lower_priority();
}

/// A background thread's nice value (weight 110 against a request
/// thread's 1024).
const NICE: i32 = 10;

/// Lowers the calling thread's priority to [`NICE`]. Linux only: there a
/// nice value belongs to one thread, elsewhere to the whole process.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: setpriority takes integers only, no pointers, so it cannot
    // touch this process's memory. With PRIO_PROCESS and who = 0, Linux
    // applies it to the calling thread alone. A failure (not permitted)
    // leaves the priority as it was, which is harmless.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

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

    #[cfg(target_os = "linux")]
    #[test]
    fn background_threads_run_at_a_lower_priority() {
        fn nice() -> i32 {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            // Fields after the command name: state is field 3, nice field 19.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            after.split(' ').nth(16).unwrap().parse().unwrap()
        }
        let before = nice();
        let in_background = std::thread::spawn(move || {
            background();
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(in_background, NICE.max(before));
        // Only that thread: this one keeps its priority.
        assert_eq!(nice(), before);
    }
}
