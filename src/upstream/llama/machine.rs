//! The supervisor's decisions, without processes or sockets: when to start llama-server,
//! when to look at its health, when it counts as ready or as hung, how long to wait before
//! starting it again, and what `/api/health` says about it. Time comes in as arguments
//! (the supervisor reads its [`crate::util::clock::Clock`]), so the tests move it by hand.
//!
//! - It is *starting* until its `/health` first answers 200, *ready* from then on, and
//!   *restarting* after any failure until it is ready again; *stopped* once sigorest stops it.
//! - A 503 (llama-server's "Loading model") is an answer: it is alive. Health checks in a row
//!   without any answer make it hung — [`LlamaTiming::misses`] of them once it has answered
//!   at least once, or no answer at all within [`LlamaTiming::first_answer`] of its start
//!   (an old llama-server that only listens once its model is loaded must not be killed
//!   while loading).
//! - After an exit (or a hang, or a failed start) the next start waits
//!   [`LlamaTiming::backoff_first`], doubled for each failure in a row, at most
//!   [`LlamaTiming::backoff_max`]; a run that stayed ready for [`LlamaTiming::stable_after`]
//!   starts the count again.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::LlamaTiming;

/// What llama-server is doing, as `/api/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting,
    Ready,
    Restarting,
    Stopped,
}

/// The result of one health check.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// `/health` answered 200.
    Ready,
    /// It answered with another status (503 while loading).
    Loading,
    /// No answer: refused, timed out, not HTTP. Says why.
    NoAnswer(String),
}

/// What a health check means.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Fine,
    /// Ready now, and not before.
    BecameReady,
    /// It counts as hung: stop it (it will be started again). Says why.
    Hung(String),
}

/// The supervisor's state.
#[derive(Debug)]
pub struct Machine {
    timing: LlamaTiming,
    phase: Phase,
    /// When `phase` began.
    since: Instant,
    /// The running process: its pid and when it was started.
    running: Option<(u32, Instant)>,
    /// Whether the running (or the last) process answered a health check at all.
    answered: bool,
    misses: u32,
    ready_since: Option<Instant>,
    restarts: u32,
    failures_in_row: u32,
    last_exit: Option<String>,
    /// Why it was stopped, when it was judged hung.
    hung: Option<String>,
    next_start: Instant,
    next_check: Instant,
    stopping: bool,
}

/// One look at the state, for `/api/health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineStatus {
    pub state: Phase,
    /// How many times it was started again after an exit, a hang or a failed start.
    pub restarts: u32,
    /// How the last process ended (`null` while the first one runs).
    pub last_exit: Option<String>,
    /// Seconds in this state.
    pub state_for_s: u64,
    /// Seconds until the next start, while waiting for it.
    pub restart_in_s: Option<u64>,
    pub pid: Option<u32>,
}

impl Machine {
    /// Nothing running yet; the first start is due at once.
    pub fn new(timing: LlamaTiming, now: Instant) -> Machine {
        Machine {
            timing,
            phase: Phase::Starting,
            since: now,
            running: None,
            answered: false,
            misses: 0,
            ready_since: None,
            restarts: 0,
            failures_in_row: 0,
            last_exit: None,
            hung: None,
            next_start: now,
            next_check: now,
            stopping: false,
        }
    }

    #[cfg(test)]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// Whether the last process answered a health check (its port worked).
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// How long until a start is due (zero: now). `None`: no start is coming (one runs, or
    /// sigorest is stopping).
    pub fn until_start(&self, now: Instant) -> Option<Duration> {
        (self.running.is_none() && !self.stopping)
            .then(|| self.next_start.saturating_duration_since(now))
    }

    /// How long until the next health check (zero: now); `None` when nothing runs.
    pub fn until_check(&self, now: Instant) -> Option<Duration> {
        self.running
            .map(|_| self.next_check.saturating_duration_since(now))
    }

    /// A process has been started.
    pub fn started(&mut self, now: Instant, pid: u32) {
        self.running = Some((pid, now));
        self.answered = false;
        self.misses = 0;
        self.next_check = now + self.timing.check_starting;
    }

    /// Takes in one health check.
    pub fn checked(&mut self, now: Instant, probe: Probe) -> Verdict {
        let Some((_, started)) = self.running else {
            return Verdict::Fine;
        };
        let verdict = match probe {
            Probe::Ready | Probe::Loading => {
                self.answered = true;
                self.misses = 0;
                if probe == Probe::Ready && self.phase != Phase::Ready {
                    self.enter(Phase::Ready, now);
                    self.ready_since = Some(now);
                    Verdict::BecameReady
                } else {
                    Verdict::Fine
                }
            }
            Probe::NoAnswer(why) => {
                self.misses = self.misses.saturating_add(1);
                let first = self.timing.first_answer;
                if self.answered && self.misses >= self.timing.misses {
                    Verdict::Hung(format!(
                        "{} health checks in a row got no answer (last: {why})",
                        self.misses
                    ))
                } else if !self.answered && now.saturating_duration_since(started) >= first {
                    Verdict::Hung(format!(
                        "no answer to a health check within {} s of its start (last: {why})",
                        first.as_secs()
                    ))
                } else {
                    Verdict::Fine
                }
            }
        };
        if let Verdict::Hung(why) = &verdict {
            self.hung = Some(why.clone());
        }
        let every = if self.phase == Phase::Ready {
            self.timing.check_ready
        } else {
            self.timing.check_starting
        };
        self.next_check = now + every;
        verdict
    }

    /// The process has ended (`how`: "exited with status 1", ...). Returns the wait before
    /// the next start, `None` when none will come (sigorest is stopping).
    pub fn exited(&mut self, now: Instant, how: &str) -> Option<Duration> {
        self.running = None;
        let how = match self.hung.take() {
            Some(why) => format!("stopped by sigorest: {why}; then {how}"),
            None => how.to_string(),
        };
        self.failed(now, how)
    }

    /// A process could not be started at all.
    pub fn start_failed(&mut self, now: Instant, why: &str) -> Option<Duration> {
        self.running = None;
        self.answered = false;
        self.failed(now, format!("could not be started: {why}"))
    }

    fn failed(&mut self, now: Instant, how: String) -> Option<Duration> {
        self.last_exit = Some(how);
        if self.stopping {
            self.enter(Phase::Stopped, now);
            return None;
        }
        let stable = self
            .ready_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.timing.stable_after);
        if stable {
            self.failures_in_row = 0;
        }
        self.failures_in_row = self.failures_in_row.saturating_add(1);
        self.restarts = self.restarts.saturating_add(1);
        self.ready_since = None;
        self.enter(Phase::Restarting, now);
        let wait = backoff(&self.timing, self.failures_in_row);
        self.next_start = now + wait;
        Some(wait)
    }

    /// sigorest is stopping: no more starts. Stopped at once when nothing runs.
    pub fn stopping(&mut self, now: Instant) {
        self.stopping = true;
        if self.running.is_none() && self.phase != Phase::Stopped {
            self.enter(Phase::Stopped, now);
        }
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        if self.phase != phase {
            self.phase = phase;
            self.since = now;
        }
    }

    pub fn status(&self, now: Instant) -> MachineStatus {
        let waiting = self.running.is_none() && !self.stopping;
        MachineStatus {
            state: self.phase,
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            state_for_s: now.saturating_duration_since(self.since).as_secs(),
            restart_in_s: waiting
                .then(|| ceil_secs(self.next_start.saturating_duration_since(now))),
            pid: self.running.map(|(pid, _)| pid),
        }
    }

    /// What it is doing, for a client's "not ready" error.
    pub fn describe(&self, now: Instant) -> String {
        let after = || self.last_exit.as_deref().unwrap_or("a failure");
        match (self.phase, self.running) {
            (Phase::Ready, _) => "ready".to_string(),
            (Phase::Stopped, _) => "llama-server is stopped".to_string(),
            (Phase::Starting, Some(_)) => "llama-server is loading the model".to_string(),
            (Phase::Starting, None) => "llama-server is about to start".to_string(),
            (Phase::Restarting, Some(_)) => {
                format!("llama-server is loading the model again; it {}", after())
            }
            (Phase::Restarting, None) => format!(
                "llama-server starts again in {} s; it {}",
                ceil_secs(self.next_start.saturating_duration_since(now)),
                after()
            ),
        }
    }
}

/// The wait before the start after `failures` failures in a row (at least 1).
pub fn backoff(timing: &LlamaTiming, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    timing
        .backoff_first
        .checked_mul(1u32 << doublings)
        .unwrap_or(timing.backoff_max)
        .min(timing.backoff_max)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::clock::{Clock, ManualClock};

    fn timing() -> LlamaTiming {
        LlamaTiming::default()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn starting_loading_ready() {
        let clock = ManualClock::new();
        let mut m = Machine::new(timing(), clock.now());
        assert_eq!(m.phase(), Phase::Starting);
        assert_eq!(m.until_start(clock.now()), Some(Duration::ZERO));
        assert_eq!(m.until_check(clock.now()), None);
        m.started(clock.now(), 42);
        assert_eq!(m.until_start(clock.now()), None);
        assert_eq!(m.until_check(clock.now()), Some(Duration::from_millis(500)));
        assert_eq!(m.describe(clock.now()), "llama-server is loading the model");
        clock.advance(secs(1));
        assert_eq!(m.checked(clock.now(), Probe::Loading), Verdict::Fine);
        assert!(!m.is_ready());
        clock.advance(secs(1));
        assert_eq!(m.checked(clock.now(), Probe::Ready), Verdict::BecameReady);
        assert!(m.is_ready());
        assert_eq!(
            m.until_check(clock.now()),
            Some(secs(5)),
            "ready: checked less often"
        );
        assert_eq!(m.checked(clock.now(), Probe::Ready), Verdict::Fine);
        let s = m.status(clock.now());
        assert_eq!((s.state, s.restarts, s.pid), (Phase::Ready, 0, Some(42)));
        assert_eq!((s.last_exit, s.restart_in_s), (None, None));
    }

    #[test]
    fn an_exit_restarts_with_a_growing_backoff() {
        let clock = ManualClock::new();
        let mut m = Machine::new(timing(), clock.now());
        let mut waits = Vec::new();
        for _ in 0..8 {
            m.started(clock.now(), 7);
            let wait = m.exited(clock.now(), "exited with status 1").unwrap();
            assert_eq!(m.until_start(clock.now()), Some(wait));
            waits.push(wait.as_secs());
            clock.advance(wait);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        let s = m.status(clock.now());
        assert_eq!(s.state, Phase::Restarting);
        assert_eq!(s.restarts, 8);
        assert_eq!(s.last_exit.as_deref(), Some("exited with status 1"));
        assert_eq!(s.restart_in_s, Some(0));
        assert!(m.describe(clock.now()).contains("exited with status 1"));
    }

    #[test]
    fn a_long_ready_run_resets_the_backoff() {
        let clock = ManualClock::new();
        let mut m = Machine::new(timing(), clock.now());
        m.started(clock.now(), 1);
        assert_eq!(m.exited(clock.now(), "x"), Some(secs(1)));
        m.started(clock.now(), 2);
        assert_eq!(m.exited(clock.now(), "x"), Some(secs(2)));
        m.started(clock.now(), 3);
        m.checked(clock.now(), Probe::Ready);
        clock.advance(secs(10));
        assert_eq!(
            m.exited(clock.now(), "x"),
            Some(secs(4)),
            "10 s ready is not stable"
        );
        m.started(clock.now(), 4);
        m.checked(clock.now(), Probe::Ready);
        clock.advance(secs(61));
        assert_eq!(
            m.exited(clock.now(), "x"),
            Some(secs(1)),
            "a stable run starts over"
        );
        assert_eq!(m.status(clock.now()).restarts, 4);
    }

    #[test]
    fn misses_after_an_answer_mean_hung() {
        let clock = ManualClock::new();
        let mut m = Machine::new(timing(), clock.now());
        m.started(clock.now(), 9);
        m.checked(clock.now(), Probe::Ready);
        let miss = || Probe::NoAnswer("timed out".into());
        assert_eq!(m.checked(clock.now(), miss()), Verdict::Fine);
        assert_eq!(m.checked(clock.now(), miss()), Verdict::Fine);
        // An answer in between starts the count again.
        assert_eq!(m.checked(clock.now(), Probe::Loading), Verdict::Fine);
        assert!(m.is_ready(), "a 503 while ready is still an answer");
        m.checked(clock.now(), miss());
        m.checked(clock.now(), miss());
        match m.checked(clock.now(), miss()) {
            Verdict::Hung(why) => assert!(why.contains("3 health checks"), "{why}"),
            other => panic!("{other:?}"),
        }
        // The supervisor stops it; the exit carries the reason.
        assert_eq!(
            m.exited(clock.now(), "exited with status 143"),
            Some(secs(1))
        );
        let last = m.status(clock.now()).last_exit.unwrap();
        assert!(
            last.starts_with("stopped by sigorest: 3 health checks"),
            "{last}"
        );
        assert!(last.ends_with("then exited with status 143"), "{last}");
    }

    #[test]
    fn no_first_answer_for_long_means_hung() {
        let clock = ManualClock::new();
        let mut m = Machine::new(timing(), clock.now());
        m.started(clock.now(), 9);
        for _ in 0..20 {
            clock.advance(secs(25));
            assert_eq!(
                m.checked(clock.now(), Probe::NoAnswer("refused".into())),
                Verdict::Fine
            );
        }
        clock.advance(secs(100));
        assert!(matches!(
            m.checked(clock.now(), Probe::NoAnswer("refused".into())),
            Verdict::Hung(why) if why.contains("600 s")
        ));
    }

    #[test]
    fn a_failed_start_counts_like_an_exit() {
        let clock = ManualClock::new();
        let mut m = Machine::new(timing(), clock.now());
        assert_eq!(m.start_failed(clock.now(), "No such file"), Some(secs(1)));
        let s = m.status(clock.now());
        assert_eq!(s.state, Phase::Restarting);
        assert_eq!(
            s.last_exit.as_deref(),
            Some("could not be started: No such file")
        );
        assert_eq!(s.restart_in_s, Some(1));
        assert!(m.describe(clock.now()).contains("starts again in 1 s"));
    }

    #[test]
    fn stopping_ends_the_restarts() {
        let clock = ManualClock::new();
        let mut m = Machine::new(timing(), clock.now());
        m.started(clock.now(), 5);
        m.checked(clock.now(), Probe::Ready);
        m.stopping(clock.now());
        assert!(m.is_ready(), "still serving requests in flight");
        assert_eq!(m.exited(clock.now(), "exited with status 0"), None);
        assert_eq!(m.phase(), Phase::Stopped);
        assert_eq!(m.until_start(clock.now()), None);
        let s = m.status(clock.now());
        assert_eq!((s.restarts, s.restart_in_s, s.pid), (0, None, None));

        let mut idle = Machine::new(timing(), clock.now());
        idle.stopping(clock.now());
        assert_eq!(idle.phase(), Phase::Stopped);
    }

    #[test]
    fn backoff_never_overflows() {
        let t = timing();
        assert_eq!(backoff(&t, 0), secs(1));
        assert_eq!(backoff(&t, u32::MAX), secs(60));
        let huge = LlamaTiming {
            backoff_first: Duration::MAX,
            ..timing()
        };
        assert_eq!(backoff(&huge, 5), secs(60));
    }
}
