//! Small helpers that every other module may use and that use nothing of the crate: mutex
//! locking that survives poisoning, the wall clock in Unix seconds, the replaceable clock,
//! atomic file writes, the hang-up signal of a request, a throttle for recurring warnings,
//! and a concurrency limit with a queue.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod clock;
pub mod fs;
mod hangup;

pub use hangup::Hangup;

/// Logs one kind of recurring trouble at most once per period, with how many times it
/// happened in between.
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    since: u64,
}

impl Throttle {
    /// A throttle of one warning per `every`.
    pub const fn every(every: std::time::Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            since: 0,
        }
    }

    /// Logs `what` (a WARN with `detail`, the error or the limit reached, and the times it
    /// happened since the last line) unless one was logged less than a period ago.
    pub fn warn(&mut self, what: &'static str, detail: &dyn std::fmt::Display) {
        self.since += 1;
        if self.last.is_none_or(|t| t.elapsed() >= self.every) {
            log::warn!(detail:% = detail, times = self.since; "{what}");
            self.last = Some(std::time::Instant::now());
            self.since = 0;
        }
    }
}

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

/// A fresh identifier `prefix` + 24 hex digits (`msg_…`, `req_…`): unique within the
/// process and unlikely to repeat across processes. Not a secret: std's per-process random
/// hash keys, a counter and the clock.
pub fn random_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let state = std::collections::hash_map::RandomState::new();
    let mut a = state.build_hasher();
    a.write_u128(nanos);
    a.write_u64(n);
    let mut b = state.build_hasher();
    b.write_u64(a.finish());
    b.write_u64(n);
    format!("{prefix}{:016x}{:08x}", a.finish(), b.finish() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_and_shaped() {
        let a = random_id("msg_");
        let b = random_id("msg_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 24);
        assert!(a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
