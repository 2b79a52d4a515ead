//! Rare paths of the request future, kept out of the common path's code.

use std::future::Future;
use std::pin::Pin;

/// `fut` boxed behind `dyn Future`: its state is allocated only when the path is taken, and its
/// code is polled through a pointer instead of being inlined into the caller's (several KB of
/// a rare path's code between a hot path's blocks spread the hot path over more cache lines).
pub fn rare<'a, T>(fut: impl Future<Output = T> + Send + 'a) -> Pin<Box<dyn Future<Output = T> + Send + 'a>> {
    Box::pin(fut)
}
