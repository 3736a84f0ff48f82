//! Rare branches of hot async functions, kept out of their code.
//!
//! An `.await` compiles the awaited future's `poll` into the caller's, so a
//! request's state machine carries the code of every branch it may take:
//! the request handler's was 100 KB (the plugin chain, the transcoder,
//! aggregation, upgrades, the cache), with the part a plain proxied request
//! runs scattered through it, over more instruction-cache lines (a CPU
//! with a small one spends more of a request fetching code than nginx
//! does: docs/benchmarks.md, "2026-12-06"). A future awaited through
//! [`outlined`] is polled through a vtable, so its code stays in a function
//! of its own; the price is one allocation when the branch is taken, which
//! also keeps the caller's future small.

use std::future::Future;
use std::pin::Pin;

/// A future polled out of line.
pub type Outlined<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `future`, to be polled through a vtable instead of inlined.
pub fn outlined<'a, T>(future: impl Future<Output = T> + Send + 'a) -> Outlined<'a, T> {
    Box::pin(future)
}
