//! A concurrency limit with a short first-come-first-served queue: at most `limit` holders at
//! once, at most `queue` more waiting, each for a bounded time. A waiter whose client hangs up
//! leaves the queue at once, so its place goes to the next one.
//!
//! The lock guards counters only and is never held while a holder works. Waiting is on a
//! condition variable; every change (a slot freed, a waiter gone, a hang-up) wakes all
//! waiters, and only the one at the head of the queue may take a free slot — with queues
//! of a few entries that costs nothing and keeps the order.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Hangup, lock};

/// Weight of the newest hold time in the running average (an exponential moving average).
const AVERAGE_WEIGHT: f64 = 0.3;
/// `Retry-After` before any slot has been held.
const DEFAULT_RETRY_S: u64 = 5;
/// The largest `Retry-After` suggested.
const MAX_RETRY_S: u64 = 120;

/// The limiter; clones share it.
#[derive(Clone)]
pub struct Slots {
    inner: Arc<Inner>,
}

struct Inner {
    limit: usize,
    queue: usize,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    busy: usize,
    /// Tickets of the waiters, oldest first.
    waiting: VecDeque<u64>,
    next_ticket: u64,
    /// Running average of how long a slot is held, in seconds.
    average_hold_s: Option<f64>,
}

/// Why no slot was given.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// Every slot is taken and the queue is full.
    QueueFull { limit: usize, queue: usize },
    /// No slot came free within the wait.
    Waited { waited: Duration, limit: usize },
    /// The client hung up while waiting.
    Gone,
}

/// What `/api/health` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlotStatus {
    pub limit: usize,
    pub busy: usize,
    pub waiting: usize,
    pub queue: usize,
}

/// One slot, given back when dropped.
pub struct SlotGuard {
    inner: Arc<Inner>,
    taken: Instant,
}

impl std::fmt::Debug for SlotGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotGuard")
    }
}

impl Slots {
    /// `limit` holders at once (at least 1), `queue` more waiting.
    pub fn new(limit: usize, queue: usize) -> Slots {
        Slots {
            inner: Arc::new(Inner {
                limit: limit.max(1),
                queue,
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
        }
    }

    /// Takes a slot: at once when one is free and nobody waits, else after waiting in line
    /// for at most `wait`. A fired `hangup` ends the wait at once.
    pub fn acquire(&self, wait: Duration, hangup: &Hangup) -> Result<SlotGuard, Refused> {
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        if state.busy < inner.limit && state.waiting.is_empty() {
            state.busy += 1;
            return Ok(self.guard());
        }
        if state.waiting.len() >= inner.queue || wait.is_zero() {
            return Err(Refused::QueueFull {
                limit: inner.limit,
                queue: inner.queue,
            });
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.push_back(ticket);
        drop(state);
        // The callback takes the lock before it wakes the waiters, so a hang-up can never
        // fall between our check of `is_fired` and the wait.
        let woken = self.inner.clone();
        hangup.on_hangup(move || {
            let _state = lock(&woken.state);
            woken.changed.notify_all();
        });
        let started = Instant::now();
        let deadline = started + wait;
        let mut state = lock(&inner.state);
        let outcome = loop {
            if hangup.is_fired() {
                break Err(Refused::Gone);
            }
            if state.busy < inner.limit && state.waiting.front() == Some(&ticket) {
                state.busy += 1;
                break Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(Refused::Waited {
                    waited: started.elapsed(),
                    limit: inner.limit,
                });
            }
            state = inner
                .changed
                .wait_timeout(state, left)
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
        };
        state.waiting.retain(|t| *t != ticket);
        // Whoever is at the head now may be able to go (a slot left free behind us).
        inner.changed.notify_all();
        drop(state);
        outcome.map(|()| self.guard())
    }

    fn guard(&self) -> SlotGuard {
        SlotGuard {
            inner: self.inner.clone(),
            taken: Instant::now(),
        }
    }

    pub fn status(&self) -> SlotStatus {
        let state = lock(&self.inner.state);
        SlotStatus {
            limit: self.inner.limit,
            busy: state.busy,
            waiting: state.waiting.len(),
            queue: self.inner.queue,
        }
    }

    /// A `Retry-After` for a refused request: how long a slot is usually held (a running
    /// average), rounded up, 1 to 120 s; 5 s before any slot has been held.
    pub fn retry_after_s(&self) -> u64 {
        retry_after_s(lock(&self.inner.state).average_hold_s)
    }
}

fn retry_after_s(average_hold_s: Option<f64>) -> u64 {
    match average_hold_s {
        Some(s) if s.is_finite() => (s.ceil() as u64).clamp(1, MAX_RETRY_S),
        _ => DEFAULT_RETRY_S,
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let held = self.taken.elapsed().as_secs_f64();
        let mut state = lock(&self.inner.state);
        state.busy = state.busy.saturating_sub(1);
        state.average_hold_s = Some(match state.average_hold_s {
            Some(avg) => avg + AVERAGE_WEIGHT * (held - avg),
            None => held,
        });
        self.inner.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    const LONG: Duration = Duration::from_secs(30);

    /// Waits until `n` requests are waiting.
    fn until_waiting(slots: &Slots, n: usize) {
        let deadline = Instant::now() + LONG;
        while slots.status().waiting != n {
            assert!(Instant::now() < deadline, "{:?}", slots.status());
            thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn limit_then_queue_then_refusal() {
        let slots = Slots::new(2, 1);
        let h = Hangup::default();
        let a = slots.acquire(LONG, &h).unwrap();
        let _b = slots.acquire(LONG, &h).unwrap();
        assert_eq!(slots.status().busy, 2);
        let waiter = {
            let slots = slots.clone();
            thread::spawn(move || slots.acquire(LONG, &Hangup::default()).map(|_| ()))
        };
        until_waiting(&slots, 1);
        // The queue (1) is full now: refused at once.
        assert_eq!(
            slots.acquire(LONG, &h).unwrap_err(),
            Refused::QueueFull { limit: 2, queue: 1 }
        );
        drop(a);
        assert_eq!(waiter.join().unwrap(), Ok(()));
        let s = slots.status();
        assert_eq!((s.busy, s.waiting), (1, 0), "the waiter took and gave back");
    }

    #[test]
    fn a_wait_that_passes_is_refused_and_leaves_the_queue() {
        let slots = Slots::new(1, 4);
        let h = Hangup::default();
        let _held = slots.acquire(LONG, &h).unwrap();
        match slots.acquire(Duration::from_millis(20), &h) {
            Err(Refused::Waited { limit: 1, waited }) => {
                assert!(waited >= Duration::from_millis(20))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(slots.status().waiting, 0);
        // No wait at all: refused at once while busy.
        assert!(matches!(
            slots.acquire(Duration::ZERO, &h),
            Err(Refused::QueueFull { .. })
        ));
    }

    #[test]
    fn a_hang_up_frees_the_place_in_the_queue() {
        let slots = Slots::new(1, 1);
        let _held = slots.acquire(LONG, &Hangup::default()).unwrap();
        let gone = Hangup::default();
        let waiter = {
            let (slots, gone) = (slots.clone(), gone.clone());
            thread::spawn(move || slots.acquire(LONG, &gone).map(|_| ()))
        };
        until_waiting(&slots, 1);
        gone.fire();
        assert_eq!(waiter.join().unwrap(), Err(Refused::Gone));
        assert_eq!(slots.status().waiting, 0);
        // Its place is free for the next one.
        let next = {
            let slots = slots.clone();
            thread::spawn(move || slots.acquire(LONG, &Hangup::default()).is_ok())
        };
        until_waiting(&slots, 1);
        drop(_held);
        assert!(next.join().unwrap());
    }

    #[test]
    fn waiters_are_served_in_order() {
        let slots = Slots::new(1, 8);
        let held = slots.acquire(LONG, &Hangup::default()).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for i in 0..5 {
            let (mine, tx) = (slots.clone(), tx.clone());
            threads.push(thread::spawn(move || {
                let g = mine.acquire(LONG, &Hangup::default()).unwrap();
                tx.send(i).unwrap();
                drop(g);
            }));
            until_waiting(&slots, i + 1);
        }
        drop(held);
        let order: Vec<usize> = (0..5).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn retry_after_follows_the_hold_times() {
        assert_eq!(retry_after_s(None), 5);
        assert_eq!(retry_after_s(Some(0.01)), 1);
        assert_eq!(retry_after_s(Some(7.2)), 8);
        assert_eq!(retry_after_s(Some(1e9)), 120);
        assert_eq!(retry_after_s(Some(f64::NAN)), 5);
        let slots = Slots::new(1, 0);
        assert_eq!(slots.retry_after_s(), 5);
        drop(slots.acquire(LONG, &Hangup::default()).unwrap());
        assert_eq!(slots.retry_after_s(), 1, "a short hold");
    }
}
