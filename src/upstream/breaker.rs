//! Per-model circuit breakers.
//!
//! Three consecutive failed requests (connect error, timeout, 5xx) open a model's breaker
//! for five minutes; then one trial request is let through (half-open): success closes it,
//! failure opens it again. 4xx and 429 do not count. The lock is held for bookkeeping only,
//! never across an upstream call.
//!
//! Every state change bumps a breaker's generation, and each permit remembers the
//! generation it was issued in. That is how a request still in flight when the breaker
//! opened is recognised when it finally ends: its success says nothing about the model
//! *now*, so it must not close the breaker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::util::clock::Clock;
use crate::util::lock;

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

/// The breakers of all models; clones share them.
#[derive(Clone)]
pub struct Breakers {
    inner: Arc<Inner>,
}

/// Shared with every [`Permit`], which reports back here when it finishes.
struct Inner {
    clock: Arc<dyn Clock>,
    threshold: u32,
    open_for: Duration,
    /// Sorted by model, which `snapshot` wants. The names are shared with the permits, so
    /// a request's permit costs no copy of its model's name.
    entries: Mutex<BTreeMap<Arc<str>, Entry>>,
}

/// One model's breaker.
#[derive(Debug)]
struct Entry {
    state: State,
    consecutive_failures: u32,
    /// When an open breaker lets its trial through.
    open_until: Instant,
    /// Bumped on every change of `state`.
    generation: u64,
    /// Half-open: the one trial request is out.
    trial_running: bool,
}

/// Leave to make one request. Finish it with [`Permit::finish`]; dropped unfinished (a
/// panic) it counts as [`Outcome::Neutral`], so a half-open breaker never stays stuck.
pub struct Permit {
    inner: Arc<Inner>,
    model: Arc<str>,
    generation: u64,
    trial: bool,
    finished: bool,
}

impl Permit {
    /// Records how the request ended.
    pub fn finish(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    #[cfg(test)]
    /// Whether this is the half-open trial request.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    /// Runs once: `finish` consumes the permit, and `Drop` sees `finished` already set.
    fn record(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let inner = &*self.inner;
        let now = inner.clock.now();
        let mut entries = lock(&inner.entries);
        let Some(e) = entries.get_mut(&self.model) else {
            // Entries are never removed; nothing sensible to do if one were.
            return;
        };
        if self.trial && self.generation == e.generation {
            // While the trial is out the state cannot change under it (every other admit
            // is refused; only a `reset` can), so it speaks for the model now.
            e.trial_running = false;
            match outcome {
                Outcome::Success => e.close(),
                Outcome::Failure => {
                    e.consecutive_failures = e.consecutive_failures.saturating_add(1);
                    e.open(now, inner.open_for);
                }
                Outcome::Neutral => {}
            }
            return;
        }
        if self.generation != e.generation {
            // Issued before the breaker last changed state. A failure still counts while
            // open (the health page shows the streak); a success closes nothing.
            if outcome == Outcome::Failure && e.state == State::Open {
                e.consecutive_failures = e.consecutive_failures.saturating_add(1);
            }
            return;
        }
        // Same generation and not a trial: the breaker is closed, as when admitted.
        match outcome {
            Outcome::Success => e.consecutive_failures = 0,
            Outcome::Failure => {
                e.consecutive_failures = e.consecutive_failures.saturating_add(1);
                if e.consecutive_failures >= inner.threshold {
                    e.open(now, inner.open_for);
                }
            }
            Outcome::Neutral => {}
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.record(Outcome::Neutral);
    }
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            state: State::Closed,
            consecutive_failures: 0,
            open_until: now,
            generation: 0,
            trial_running: false,
        }
    }

    fn open(&mut self, now: Instant, open_for: Duration) {
        self.state = State::Open;
        // An absurd `open_for` would overflow `Instant`; "open until now" then just means
        // the next request is a trial.
        self.open_until = now.checked_add(open_for).unwrap_or(now);
        self.generation += 1;
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.consecutive_failures = 0;
        self.generation += 1;
    }

    /// Whole seconds until the trial, rounded up (0 once it is due).
    fn retry_in_s(&self, now: Instant) -> u64 {
        let left = self.open_until.saturating_duration_since(now);
        left.as_secs() + u64::from(left.subsec_nanos() > 0)
    }
}

impl Breakers {
    /// Breakers with the design's policy: 3 failures, open for 5 minutes.
    pub fn new(clock: Arc<dyn Clock>) -> Breakers {
        Breakers::with_policy(clock, 3, Duration::from_secs(300))
    }

    pub fn with_policy(clock: Arc<dyn Clock>, threshold: u32, open_for: Duration) -> Breakers {
        Breakers {
            inner: Arc::new(Inner {
                clock,
                // 0 would mean "open before the first failure"; one failure is the least.
                threshold: threshold.max(1),
                open_for,
                entries: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Asks to send a request to `model`. `Err(seconds)` while the breaker is open (the
    /// seconds until the trial, at least 1) or while a half-open trial is already running.
    pub fn admit(&self, model: &str) -> Result<Permit, u64> {
        let now = self.inner.clock.now();
        let mut entries = lock(&self.inner.entries);
        let name = match entries.get_key_value(model) {
            Some((name, _)) => Arc::clone(name),
            None => {
                let name: Arc<str> = Arc::from(model);
                entries.insert(Arc::clone(&name), Entry::new(now));
                name
            }
        };
        let Some(e) = entries.get_mut(model) else {
            // Just found or put in, under the same lock.
            return Err(1);
        };
        let trial = match e.state {
            State::Closed => false,
            State::Open => {
                let wait = e.retry_in_s(now);
                if wait > 0 {
                    return Err(wait);
                }
                e.state = State::HalfOpen;
                e.generation += 1;
                e.trial_running = true;
                true
            }
            State::HalfOpen if e.trial_running => return Err(1),
            State::HalfOpen => {
                // The last trial ended neutral (4xx, client gone): this one takes its place.
                e.trial_running = true;
                true
            }
        };
        let generation = e.generation;
        drop(entries);
        Ok(Permit {
            inner: self.inner.clone(),
            model: name,
            generation,
            trial,
            finished: false,
        })
    }

    /// Closes a model's breaker and forgets its failures, as if new: a local model that has
    /// just been started again says nothing about its crashed predecessor. Requests still in
    /// flight from before cannot reopen it (the generation changes).
    pub fn reset(&self, model: &str) {
        let mut entries = lock(&self.inner.entries);
        if let Some(e) = entries.get_mut(model)
            && (e.state != State::Closed || e.consecutive_failures > 0)
        {
            e.trial_running = false;
            e.close();
        }
    }

    /// Every model that has a breaker, sorted by name. An open breaker whose time is up
    /// shows as half-open.
    pub fn snapshot(&self) -> Vec<(String, Status)> {
        let now = self.inner.clock.now();
        lock(&self.inner.entries)
            .iter()
            .map(|(model, e)| {
                let model = model.to_string();
                // An open breaker whose time is up lets the next request through as its
                // trial: to anyone looking, it is half-open already.
                let (state, retry_in_s) = match e.state {
                    State::Open if e.retry_in_s(now) == 0 => (State::HalfOpen, 0),
                    State::Open => (State::Open, e.retry_in_s(now)),
                    other => (other, 0),
                };
                let status = Status {
                    state,
                    consecutive_failures: e.consecutive_failures,
                    retry_in_s,
                };
                (model.clone(), status)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::clock::ManualClock;
    use std::sync::Barrier;

    const OPEN_FOR: Duration = Duration::from_secs(300);

    fn setup() -> (Arc<ManualClock>, Breakers) {
        let clock = Arc::new(ManualClock::new());
        let b = Breakers::new(clock.clone());
        (clock, b)
    }

    fn run(b: &Breakers, model: &str, outcome: Outcome) {
        b.admit(model).expect("admitted").finish(outcome);
    }

    fn status(b: &Breakers, model: &str) -> Status {
        b.snapshot()
            .into_iter()
            .find(|(m, _)| m == model)
            .map(|(_, s)| s)
            .expect("model has a breaker")
    }

    /// Opens `model`'s breaker with three failures.
    fn trip(b: &Breakers, model: &str) {
        for _ in 0..3 {
            run(b, model, Outcome::Failure);
        }
        assert_eq!(status(b, model).state, State::Open);
    }

    /// Advances past the open period and takes the trial permit.
    fn trial(clock: &ManualClock, b: &Breakers, model: &str) -> Permit {
        clock.advance(OPEN_FOR);
        let p = b.admit(model).expect("trial admitted");
        assert!(p.is_trial());
        assert_eq!(status(b, model).state, State::HalfOpen);
        p
    }

    #[test]
    fn a_reset_closes_and_outlives_requests_from_before() {
        let (clock, b) = setup();
        trip(&b, "local");
        let before = {
            let t = trial(&clock, &b, "local");
            b.reset("local");
            t
        };
        let s = status(&b, "local");
        assert_eq!((s.state, s.consecutive_failures), (State::Closed, 0));
        before.finish(Outcome::Failure);
        assert_eq!(status(&b, "local").state, State::Closed, "a stale trial");
        run(&b, "local", Outcome::Failure);
        assert_eq!(status(&b, "local").consecutive_failures, 1);
        b.reset("unknown");
        assert!(b.snapshot().iter().all(|(m, _)| m != "unknown"));
    }

    #[test]
    fn permit_is_send() {
        fn send<T: Send>() {}
        send::<Permit>();
        send::<Breakers>();
    }

    #[test]
    fn opens_after_three_consecutive_failures_not_before() {
        let (_, b) = setup();
        run(&b, "gpt41", Outcome::Failure);
        run(&b, "gpt41", Outcome::Failure);
        let s = status(&b, "gpt41");
        assert_eq!((s.state, s.consecutive_failures), (State::Closed, 2));
        assert!(b.admit("gpt41").is_ok());
        run(&b, "gpt41", Outcome::Failure);
        assert_eq!(
            status(&b, "gpt41"),
            Status {
                state: State::Open,
                consecutive_failures: 3,
                retry_in_s: 300
            }
        );
    }

    #[test]
    fn neutral_neither_counts_nor_resets() {
        let (_, b) = setup();
        run(&b, "m", Outcome::Failure);
        run(&b, "m", Outcome::Failure);
        for _ in 0..10 {
            run(&b, "m", Outcome::Neutral);
        }
        let s = status(&b, "m");
        assert_eq!((s.state, s.consecutive_failures), (State::Closed, 2));
        run(&b, "m", Outcome::Failure);
        assert_eq!(status(&b, "m").state, State::Open);
    }

    #[test]
    fn success_resets_the_count() {
        let (_, b) = setup();
        run(&b, "m", Outcome::Failure);
        run(&b, "m", Outcome::Failure);
        run(&b, "m", Outcome::Success);
        assert_eq!(status(&b, "m").consecutive_failures, 0);
        run(&b, "m", Outcome::Failure);
        run(&b, "m", Outcome::Failure);
        assert_eq!(status(&b, "m").state, State::Closed);
    }

    #[test]
    fn open_fails_fast_with_the_seconds_left_rounded_up() {
        let (clock, b) = setup();
        trip(&b, "m");
        assert_eq!(b.admit("m").err(), Some(300));
        clock.advance(Duration::from_millis(500));
        assert_eq!(b.admit("m").err(), Some(300));
        clock.advance(Duration::from_millis(500));
        assert_eq!(b.admit("m").err(), Some(299));
        assert_eq!(status(&b, "m").retry_in_s, 299);
        clock.advance(Duration::from_millis(298_900));
        // 0.1 s left: still "retry in 1", never 0.
        assert_eq!(b.admit("m").err(), Some(1));
        assert_eq!(status(&b, "m").retry_in_s, 1);
    }

    #[test]
    fn half_open_lets_exactly_one_trial_through() {
        let (clock, b) = setup();
        trip(&b, "m");
        let t = trial(&clock, &b, "m");
        assert_eq!(b.admit("m").err(), Some(1));
        assert_eq!(b.admit("m").err(), Some(1));
        let s = status(&b, "m");
        assert_eq!((s.state, s.retry_in_s), (State::HalfOpen, 0));
        drop(t);
    }

    #[test]
    fn trial_success_closes() {
        let (clock, b) = setup();
        trip(&b, "m");
        trial(&clock, &b, "m").finish(Outcome::Success);
        assert_eq!(
            status(&b, "m"),
            Status {
                state: State::Closed,
                consecutive_failures: 0,
                retry_in_s: 0
            }
        );
        let p = b.admit("m").unwrap();
        assert!(!p.is_trial());
        p.finish(Outcome::Success);
        // Closed again means three fresh failures to reopen.
        run(&b, "m", Outcome::Failure);
        run(&b, "m", Outcome::Failure);
        assert_eq!(status(&b, "m").state, State::Closed);
    }

    #[test]
    fn trial_failure_reopens_for_another_period() {
        let (clock, b) = setup();
        trip(&b, "m");
        trial(&clock, &b, "m").finish(Outcome::Failure);
        let s = status(&b, "m");
        assert_eq!((s.state, s.retry_in_s), (State::Open, 300));
        assert_eq!(s.consecutive_failures, 4);
        assert_eq!(b.admit("m").err(), Some(300));
        clock.advance(Duration::from_secs(299));
        assert_eq!(b.admit("m").err(), Some(1));
        // And then another trial.
        trial(&clock, &b, "m").finish(Outcome::Success);
        assert_eq!(status(&b, "m").state, State::Closed);
    }

    #[test]
    fn neutral_trial_frees_the_slot_and_stays_half_open() {
        let (clock, b) = setup();
        trip(&b, "m");
        trial(&clock, &b, "m").finish(Outcome::Neutral);
        assert_eq!(status(&b, "m").state, State::HalfOpen);
        let again = b.admit("m").expect("slot freed");
        assert!(again.is_trial());
        assert_eq!(b.admit("m").err(), Some(1));
        again.finish(Outcome::Success);
        assert_eq!(status(&b, "m").state, State::Closed);
    }

    #[test]
    fn dropped_trial_permit_frees_the_trial() {
        let (clock, b) = setup();
        trip(&b, "m");
        let t = trial(&clock, &b, "m");
        // A worker that panicked mid-request drops its permit unfinished.
        let handle = std::thread::spawn(move || {
            let _t = t;
            panic!("handler bug");
        });
        assert!(handle.join().is_err());
        let s = status(&b, "m");
        assert_eq!((s.state, s.consecutive_failures), (State::HalfOpen, 3));
        assert!(b.admit("m").expect("trial again").is_trial());
    }

    #[test]
    fn other_models_are_unaffected() {
        let (_, b) = setup();
        trip(&b, "gpt41");
        run(&b, "kimi", Outcome::Success);
        assert!(b.admit("kimi").is_ok());
        assert!(b.admit("gpt41").is_err());
        let names: Vec<_> = b.snapshot().into_iter().map(|(m, _)| m).collect();
        assert_eq!(names, ["gpt41", "kimi"]);
        assert_eq!(status(&b, "kimi").state, State::Closed);
    }

    #[test]
    fn an_open_breaker_whose_time_is_up_shows_half_open() {
        let (clock, b) = setup();
        trip(&b, "m");
        clock.advance(OPEN_FOR - Duration::from_millis(1500));
        assert_eq!(
            status(&b, "m"),
            Status {
                state: State::Open,
                consecutive_failures: 3,
                retry_in_s: 2
            }
        );
        clock.advance(Duration::from_secs(2));
        assert_eq!(status(&b, "m").state, State::HalfOpen);
        assert_eq!(status(&b, "m").retry_in_s, 0);
    }

    #[test]
    fn snapshot_lists_admitted_models_sorted() {
        let (_, b) = setup();
        assert!(b.snapshot().is_empty());
        for m in ["zeta", "alpha", "Mid", "alpha"] {
            drop(b.admit(m));
        }
        let names: Vec<_> = b.snapshot().into_iter().map(|(m, _)| m).collect();
        assert_eq!(names, ["Mid", "alpha", "zeta"]);
        let json = serde_json::to_value(status(&b, "alpha")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"state": "closed", "consecutive_failures": 0, "retry_in_s": 0})
        );
        assert_eq!(serde_json::to_value(State::HalfOpen).unwrap(), "half_open");
    }

    #[test]
    fn stale_in_flight_requests_do_not_close_an_open_breaker() {
        let (clock, b) = setup();
        // Three slow requests that will succeed go out while all is well.
        let slow: Vec<Permit> = (0..3).map(|_| b.admit("m").unwrap()).collect();
        let slow_failure = b.admit("m").unwrap();
        trip(&b, "m");
        for p in slow {
            p.finish(Outcome::Success);
        }
        let s = status(&b, "m");
        assert_eq!((s.state, s.consecutive_failures), (State::Open, 3));
        // A stale failure while open only adds to the streak.
        slow_failure.finish(Outcome::Failure);
        assert_eq!(status(&b, "m").consecutive_failures, 4);
        assert!(b.admit("m").is_err());

        // Stale permits do not disturb a half-open trial either.
        let stale = b.admit("x").unwrap();
        trip(&b, "x");
        let t = trial(&clock, &b, "x");
        stale.finish(Outcome::Success);
        assert_eq!(status(&b, "x").state, State::HalfOpen);
        assert_eq!(b.admit("x").err(), Some(1));
        t.finish(Outcome::Failure);
        assert_eq!(status(&b, "x").state, State::Open);
    }

    #[test]
    fn stale_failures_do_not_count_after_recovery() {
        let (clock, b) = setup();
        let old: Vec<Permit> = (0..3).map(|_| b.admit("m").unwrap()).collect();
        trip(&b, "m");
        trial(&clock, &b, "m").finish(Outcome::Success);
        // Failures of requests sent before the outage say nothing about the model now.
        for p in old {
            p.finish(Outcome::Failure);
        }
        let s = status(&b, "m");
        assert_eq!((s.state, s.consecutive_failures), (State::Closed, 0));
    }

    #[test]
    fn custom_policy() {
        let clock = Arc::new(ManualClock::new());
        let b = Breakers::with_policy(clock.clone(), 1, Duration::from_millis(1500));
        run(&b, "m", Outcome::Failure);
        assert_eq!(b.admit("m").err(), Some(2));
        clock.advance(Duration::from_millis(1500));
        assert!(b.admit("m").unwrap().is_trial());
        // A zero threshold is read as one.
        let b = Breakers::with_policy(clock, 0, OPEN_FOR);
        assert!(b.admit("m").is_ok());
        assert_eq!(status(&b, "m").state, State::Closed);
    }

    #[test]
    fn hundred_threads_at_once_keep_counts_consistent() {
        let clock = Arc::new(ManualClock::new());
        // A threshold above the thread count: every failure must be counted, none lost.
        let b = Arc::new(Breakers::with_policy(clock.clone(), 1000, OPEN_FOR));
        let start = Arc::new(Barrier::new(100));
        let threads: Vec<_> = (0..100)
            .map(|i| {
                let (b, start) = (b.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let p = b.admit("m").unwrap();
                    // Permits are held by many threads at once, as in-flight requests are.
                    std::thread::yield_now();
                    p.finish(if i % 2 == 0 {
                        Outcome::Failure
                    } else {
                        Outcome::Neutral
                    });
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = status(&b, "m");
        assert_eq!((s.state, s.consecutive_failures), (State::Closed, 50));
    }

    #[test]
    fn hundred_threads_race_for_one_trial() {
        let (clock, b) = setup();
        let b = Arc::new(b);
        trip(&b, "m");
        clock.advance(OPEN_FOR);
        let start = Arc::new(Barrier::new(100));
        let threads: Vec<_> = (0..100)
            .map(|_| {
                let (b, start) = (b.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    // Hold the permit until every thread has asked.
                    let got = b.admit("m");
                    start.wait();
                    got.is_ok()
                })
            })
            .collect();
        let admitted = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&ok| ok)
            .count();
        assert_eq!(admitted, 1);
        // The winner's permit was dropped unfinished: the slot is free again.
        assert_eq!(status(&b, "m").state, State::HalfOpen);
        assert!(b.admit("m").unwrap().is_trial());
    }

    #[test]
    fn mixed_storm_never_deadlocks_and_stays_coherent() {
        let (clock, b) = setup();
        let b = Arc::new(b);
        let threads: Vec<_> = (0..100)
            .map(|i| {
                let (b, clock) = (b.clone(), clock.clone());
                std::thread::spawn(move || {
                    for k in 0..20 {
                        if (i + k) % 17 == 0 {
                            clock.advance(Duration::from_secs(60));
                        }
                        if let Ok(p) = b.admit(if i % 3 == 0 { "a" } else { "b" }) {
                            match (i * 7 + k) % 4 {
                                0 => p.finish(Outcome::Success),
                                1 | 2 => p.finish(Outcome::Failure),
                                _ => drop(p),
                            }
                        }
                        let _ = b.snapshot();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for (_, s) in b.snapshot() {
            match s.state {
                State::Closed => assert!(s.consecutive_failures < 3, "{s:?}"),
                State::Open => assert!(s.consecutive_failures >= 3, "{s:?}"),
                State::HalfOpen => {}
            }
        }
        // No permit is out any more, so no trial slot may still be taken.
        for m in ["a", "b"] {
            let e = lock(&b.inner.entries);
            assert!(
                !e[m].trial_running,
                "{m}: a finished trial left the slot taken"
            );
        }
    }
}
