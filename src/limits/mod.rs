//! Client limits, with no sockets and no HTTP: per key, requests a minute ([`window`], a
//! sliding window) and requests in flight ([`Slot`]s); per client address, a token bucket
//! ([`bucket`]). The router asks; these only count. Time comes from the injected clock.
//!
//! A key's counters are kept by its name, so a reload that changes a key's limits keeps
//! what it has used; a slot holds its own counter, so a request that outlives a reload (or
//! the key) still gives its slot back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::util::clock::Clock;
use crate::util::lock;

pub mod bucket;
pub mod window;

pub use bucket::{IpLimit, Rate};
use window::Window;

/// A key's limits, from `keys.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRules {
    pub rpm: Option<u32>,
    pub concurrency: Option<u32>,
}

/// A key's requests-a-minute budget after a request: for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u32,
    pub remaining: u32,
}

/// Why a key's request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `rpm` requests in the last minute already; one is allowed in `retry_after_s`.
    Rpm { limit: u32, retry_after_s: u64 },
    /// `concurrency` requests in flight already.
    Concurrency { limit: u32 },
}

/// What [`KeyLimits::admit`] says.
#[derive(Debug)]
pub struct Admission {
    /// `Ok`: the request goes on and holds this slot until it ends.
    pub result: Result<Slot, Refusal>,
    /// The key's budget now (`None`: no `rpm` limit).
    pub budget: Option<Budget>,
}

#[derive(Debug, Default)]
struct KeyState {
    window: Window,
    in_flight: u32,
}

/// A request in flight for a key: given back when dropped (the answer written, the stream
/// ended, the client gone).
#[derive(Debug)]
pub struct Slot {
    state: Arc<Mutex<KeyState>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

/// Every key's counters.
pub struct KeyLimits {
    clock: Arc<dyn Clock>,
    states: Mutex<HashMap<String, Arc<Mutex<KeyState>>>>,
}

impl KeyLimits {
    pub fn new(clock: Arc<dyn Clock>) -> KeyLimits {
        KeyLimits {
            clock,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Lets a request of key `name` through under `rules`, or refuses it; a refused request
    /// is not counted. The `rpm` check comes first: its `Retry-After` is the longer wait.
    pub fn admit(&self, name: &str, rules: KeyRules) -> Admission {
        let now = self.clock.now();
        let state = lock(&self.states)
            .entry(name.to_string())
            .or_default()
            .clone();
        let mut s = lock(&state);
        let budget = |s: &mut KeyState| {
            rules.rpm.map(|limit| Budget {
                limit,
                remaining: s.window.remaining(now, limit),
            })
        };
        if let Some(limit) = rules.rpm
            && let Err(retry_after_s) = s.window.check(now, limit)
        {
            return Admission {
                result: Err(Refusal::Rpm {
                    limit,
                    retry_after_s,
                }),
                budget: budget(&mut s),
            };
        }
        if let Some(limit) = rules.concurrency
            && s.in_flight >= limit
        {
            return Admission {
                result: Err(Refusal::Concurrency { limit }),
                budget: budget(&mut s),
            };
        }
        if rules.rpm.is_some() {
            s.window.record(now);
        }
        s.in_flight += 1;
        let budget = budget(&mut s);
        drop(s);
        Admission {
            result: Ok(Slot { state }),
            budget,
        }
    }

    /// Forgets the counters of keys no longer in the file (after a reload) — once they are
    /// idle: a key with requests in flight, or in its last minute's window, keeps them, so
    /// that a key removed and put back (two reloads while its requests run) goes on from
    /// where it was instead of from zero. An idle one goes at the next reload.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let now = self.clock.now();
        lock(&self.states).retain(|name, state| {
            if keep(name) {
                return true;
            }
            let mut s = lock(state);
            s.in_flight > 0 || !s.window.is_empty(now)
        });
    }

    /// Requests of key `name` in flight now.
    #[cfg(test)]
    pub fn in_flight(&self, name: &str) -> u32 {
        lock(&self.states)
            .get(name)
            .map_or(0, |s| lock(s).in_flight)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::util::clock::ManualClock;

    fn limits() -> (KeyLimits, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (KeyLimits::new(clock.clone()), clock)
    }

    const RPM_3: KeyRules = KeyRules {
        rpm: Some(3),
        concurrency: None,
    };

    #[test]
    fn rpm_counts_admitted_requests_only() {
        let (l, clock) = limits();
        for remaining in [2, 1, 0] {
            let a = l.admit("alice", RPM_3);
            assert!(a.result.is_ok());
            assert_eq!(
                a.budget,
                Some(Budget {
                    limit: 3,
                    remaining
                })
            );
        }
        let refused = l.admit("alice", RPM_3);
        assert_eq!(
            refused.result.unwrap_err(),
            Refusal::Rpm {
                limit: 3,
                retry_after_s: 60
            }
        );
        assert_eq!(
            refused.budget,
            Some(Budget {
                limit: 3,
                remaining: 0
            })
        );
        assert!(
            l.admit("bob", RPM_3).result.is_ok(),
            "each key its own window"
        );
        clock.advance(Duration::from_secs(60));
        assert!(l.admit("alice", RPM_3).result.is_ok());
    }

    #[test]
    fn concurrency_counts_slots_until_dropped() {
        let (l, _) = limits();
        let two = KeyRules {
            rpm: None,
            concurrency: Some(2),
        };
        let a = l.admit("k", two).result.unwrap();
        let b = l.admit("k", two).result.unwrap();
        assert_eq!(l.in_flight("k"), 2);
        let refused = l.admit("k", two);
        assert_eq!(
            refused.result.unwrap_err(),
            Refusal::Concurrency { limit: 2 }
        );
        assert_eq!(refused.budget, None);
        drop(a);
        assert_eq!(l.in_flight("k"), 1);
        let c = l.admit("k", two).result.unwrap();
        drop((b, c));
        assert_eq!(l.in_flight("k"), 0);
    }

    #[test]
    fn a_concurrency_refusal_does_not_use_the_rpm_budget() {
        let (l, _) = limits();
        let rules = KeyRules {
            rpm: Some(5),
            concurrency: Some(1),
        };
        let held = l.admit("k", rules);
        assert_eq!(
            held.budget,
            Some(Budget {
                limit: 5,
                remaining: 4
            })
        );
        let refused = l.admit("k", rules);
        assert!(refused.result.is_err());
        assert_eq!(
            refused.budget,
            Some(Budget {
                limit: 5,
                remaining: 4
            })
        );
        drop(held);
    }

    #[test]
    fn many_threads_never_get_more_slots_than_allowed() {
        let (l, _) = limits();
        let l = Arc::new(l);
        let rules = KeyRules {
            rpm: None,
            concurrency: Some(3),
        };
        let peak = Arc::new(Mutex::new((0u32, 0u32)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, peak) = (l.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        if let Ok(slot) = l.admit("k", rules).result {
                            {
                                let mut p = lock(&peak);
                                p.0 += 1;
                                p.1 = p.1.max(p.0);
                            }
                            std::thread::yield_now();
                            lock(&peak).0 -= 1;
                            drop(slot);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(lock(&peak).1 <= 3, "{:?}", lock(&peak));
        assert_eq!(l.in_flight("k"), 0);
    }

    #[test]
    fn a_slot_outlives_a_reload_that_drops_its_key() {
        let (l, _) = limits();
        let one = KeyRules {
            rpm: None,
            concurrency: Some(1),
        };
        let slot = l.admit("gone", one).result.unwrap();
        l.retain(|name| name != "gone");
        assert_eq!(
            l.in_flight("gone"),
            1,
            "kept while its request runs: put back, it goes on from there"
        );
        assert!(l.admit("gone", one).result.is_err());
        drop(slot);
        assert_eq!(l.in_flight("gone"), 0);
        assert!(l.admit("gone", one).result.is_ok());
    }

    #[test]
    fn a_dropped_key_is_forgotten_once_idle() {
        let (l, clock) = limits();
        drop(l.admit("gone", RPM_3).result.unwrap());
        l.retain(|name| name != "gone");
        // Put back within the minute: its window is still there.
        for _ in 0..2 {
            assert!(l.admit("gone", RPM_3).result.is_ok());
        }
        assert!(l.admit("gone", RPM_3).result.is_err(), "3 a minute in all");
        clock.advance(Duration::from_secs(60));
        l.retain(|name| name != "gone");
        assert!(lock(&l.states).is_empty(), "idle: forgotten");
    }
}
