//! Small helpers that every other module may use and that use nothing of the crate: mutex
//! locking that survives poisoning, the wall clock in Unix seconds, the replaceable clock,
//! atomic file writes, SHA-256 and hex, help text on stdout, the hang-up signal of a
//! request, a throttle for recurring warnings, and a concurrency limit with a queue.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod clock;
pub mod digest;
pub mod fs;
mod hangup;
pub mod stdout;

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
/// process and unlikely to repeat across processes. Not a secret: a counter mixed with keys
/// drawn once from std's per-process random hash keys and the clock. Cheap (every call's
/// answer gets one): a counter, two multiplications and the digits, no formatting machinery.
pub fn random_id(prefix: &str) -> String {
    use std::hash::BuildHasher;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEYS: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let &(k1, k2) = KEYS.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let state = std::collections::hash_map::RandomState::new();
        (state.hash_one(nanos), state.hash_one(!nanos))
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `mix` is a bijection: distinct counts give distinct first halves.
    let a = mix(k1 ^ n);
    let b = mix(k2 ^ a);
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    push_hex(&mut id, a, 16);
    push_hex(&mut id, b, 8);
    id
}

/// A 64-bit finaliser (xor-shifts and odd multipliers, each step invertible): every bit of
/// the input moves about half the bits of the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The low `digits` hex digits of `v`, most significant first.
fn push_hex(out: &mut String, v: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((v >> (i * 4)) & 0xf) as usize]));
    }
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
        let many: std::collections::HashSet<String> = (0..10_000).map(|_| random_id("")).collect();
        assert_eq!(many.len(), 10_000);
        let mut s = String::new();
        push_hex(&mut s, 0xab_cdef, 8);
        assert_eq!(s, "00abcdef");
    }
}
