//! A per-key requests-a-minute limit as a sliding window: the instants of the requests let
//! through in the last 60 s. Exact (no burst at a window's edge, unlike a fixed window) and
//! bounded: a window never holds more instants than its limit (at most
//! [`crate::state::keys::MAX_LIMIT`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The window's length.
pub const MINUTE: Duration = Duration::from_secs(60);

/// The requests let through in the last minute.
#[derive(Debug, Default)]
pub struct Window {
    stamps: VecDeque<Instant>,
}

impl Window {
    /// Forgets the requests older than a minute.
    fn expire(&mut self, now: Instant) {
        while self
            .stamps
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= MINUTE)
        {
            self.stamps.pop_front();
        }
    }

    /// Requests still allowed in the window now.
    pub fn remaining(&mut self, now: Instant, limit: u32) -> u32 {
        self.expire(now);
        limit.saturating_sub(self.count())
    }

    /// `Err(seconds)` until a request is allowed (at least 1) when the window is full.
    pub fn check(&mut self, now: Instant, limit: u32) -> Result<(), u64> {
        self.expire(now);
        let count = self.count();
        if count < limit {
            return Ok(());
        }
        // After a reload that lowered the limit the window may hold more than `limit`: the
        // next request is allowed once all but `limit - 1` of them have expired.
        let index = (count - limit) as usize;
        let frees_at = self.stamps.get(index).map_or(now, |t| *t + MINUTE);
        let wait = frees_at.saturating_duration_since(now);
        Err(ceil_secs(wait))
    }

    /// Counts a request let through now.
    pub fn record(&mut self, now: Instant) {
        self.stamps.push_back(now);
    }

    /// Whether no request is left in the window now.
    pub fn is_empty(&mut self, now: Instant) -> bool {
        self.expire(now);
        self.stamps.is_empty()
    }

    fn count(&self) -> u32 {
        u32::try_from(self.stamps.len()).unwrap_or(u32::MAX)
    }
}

/// Whole seconds, rounded up, at least 1: what `Retry-After` says.
pub fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_limit_through_a_minute_then_slides() {
        let t0 = Instant::now();
        let mut w = Window::default();
        for i in 0..3 {
            let now = t0 + Duration::from_secs(i * 10);
            assert_eq!(w.check(now, 3), Ok(()));
            w.record(now);
        }
        let now = t0 + Duration::from_secs(25);
        assert_eq!(w.remaining(now, 3), 0);
        // The first request (at 0 s) leaves the window at 60 s: 35 s from now.
        assert_eq!(w.check(now, 3), Err(35));
        let now = t0 + Duration::from_millis(59_500);
        assert_eq!(w.check(now, 3), Err(1));
        let now = t0 + MINUTE;
        assert_eq!(w.check(now, 3), Ok(()));
        assert_eq!(w.remaining(now, 3), 1);
        w.record(now);
        // A sliding window: no second burst at the edge of a fixed minute.
        assert_eq!(w.check(now, 3), Err(10));
        assert_eq!(w.remaining(t0 + Duration::from_secs(200), 3), 3);
    }

    #[test]
    fn a_lowered_limit_waits_for_enough_to_expire() {
        let t0 = Instant::now();
        let mut w = Window::default();
        for i in 0..5 {
            w.record(t0 + Duration::from_secs(i));
        }
        let now = t0 + Duration::from_secs(5);
        // Limit 2: requests at 0..=3 s must go; the one at 3 s leaves at 63 s.
        assert_eq!(w.check(now, 2), Err(58));
        assert_eq!(w.remaining(now, 2), 0);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::from_secs(7)), 7);
    }
}
