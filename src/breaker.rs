//! Per-model circuit breakers.
//!
//! Three consecutive failed requests (connect error, timeout, 5xx) open a model's breaker
//! for five minutes; then one trial request is let through (half-open): success closes it,
//! failure opens it again. 4xx and 429 do not count. The lock is held for bookkeeping only,
//! never across an upstream call.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::clock::Clock;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

/// How a request ended, as far as its model's breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer (2xx).
    Success,
    /// Connect error, timeout, 5xx or garbage, after the retries.
    Failure,
    /// 4xx, 429, the client went away, or a local refusal: says nothing about the model.
    Neutral,
}

/// One breaker as `/api/health` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub state: State,
    pub consecutive_failures: u32,
    /// Seconds until an open breaker lets a trial through (0 otherwise).
    pub retry_in_s: u64,
}

/// The breakers of all models.
pub struct Breakers {
    clock: Arc<dyn Clock>,
    threshold: u32,
    open_for: Duration,
}

/// Leave to make one request. Finish it with [`Permit::finish`]; dropped unfinished (a
/// panic) it counts as [`Outcome::Neutral`], so a half-open breaker never stays stuck.
pub struct Permit {
    _private: (),
}

impl Permit {
    /// Records how the request ended.
    pub fn finish(self, outcome: Outcome) {
        let _ = outcome;
        todo!()
    }
}

impl Breakers {
    /// Breakers with the design's policy: 3 failures, open for 5 minutes.
    pub fn new(clock: Arc<dyn Clock>) -> Breakers {
        Breakers::with_policy(clock, 3, Duration::from_secs(300))
    }

    pub fn with_policy(clock: Arc<dyn Clock>, threshold: u32, open_for: Duration) -> Breakers {
        Breakers {
            clock,
            threshold,
            open_for,
        }
    }

    /// Asks to send a request to `model`. `Err(seconds)` while the breaker is open (the
    /// seconds until the trial, at least 1) or while a half-open trial is already running.
    pub fn admit(&self, model: &str) -> Result<Permit, u64> {
        let _ = (model, &self.clock, self.threshold, self.open_for);
        todo!()
    }

    /// Every model that has a breaker, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, Status)> {
        todo!()
    }
}
