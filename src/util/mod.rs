//! Small helpers that every other module may use and that use nothing of the crate: mutex
//! locking that survives poisoning, the wall clock in Unix seconds, the replaceable clock,
//! atomic file writes, the hang-up signal of a request, and a concurrency limit with a queue.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod clock;
pub mod fs;
mod hangup;
pub mod slots;

pub use hangup::Hangup;

/// Locks a mutex, recovering the data from a poisoned one: every mutex in sigorest guards
/// plain bookkeeping that stays consistent when a holder panics.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
