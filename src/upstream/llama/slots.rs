//! A concurrency limit with a short first-come-first-served queue: at most `limit` holders at
//! once, at most `queue` more waiting, each for a bounded time. Waiting is a task on an
//! event loop — no thread is held while a request waits in line. A waiter whose client
//! hangs up (or whose future is dropped) leaves the queue at once, so its place goes to the
//! next one.
//!
//! The lock guards counters only and is never held while a holder works or a waiter waits.
//! Only the waiter at the head of the queue may take a free slot, so the order holds; it is
//! woken when a slot is given back, when the waiter before it leaves, or when the one
//! before it took a slot and another is still free.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::rt::time::sleep_until;
use crate::util::{Hangup, lock};

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
}

#[derive(Default)]
struct State {
    busy: usize,
    /// The waiters, oldest first.
    waiting: VecDeque<Waiter>,
    next_ticket: u64,
    /// Running average of how long a slot is held, in seconds.
    average_hold_s: Option<f64>,
}

struct Waiter {
    ticket: u64,
    /// The task to wake when it may go (none before its first wait).
    waker: Option<Waker>,
}

impl State {
    /// Wakes the waiter at the head when a slot is free for it.
    fn wake_head(&mut self, limit: usize) {
        if self.busy < limit
            && let Some(w) = self.waiting.front_mut().and_then(|w| w.waker.take())
        {
            w.wake();
        }
    }
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

/// A place in the queue; leaving it (taken a slot, given up, or dropped with its future)
/// lets the next waiter look.
struct Place<'a> {
    inner: &'a Inner,
    ticket: u64,
}

impl Place<'_> {
    /// Takes a free slot when this waiter is at the head; else keeps `waker` to be woken.
    fn try_take(&self, waker: &Waker) -> bool {
        let mut state = lock(&self.inner.state);
        let at_head = state.waiting.front().map(|w| w.ticket) == Some(self.ticket);
        if at_head && state.busy < self.inner.limit {
            state.busy += 1;
            return true;
        }
        if let Some(w) = state.waiting.iter_mut().find(|w| w.ticket == self.ticket) {
            match &w.waker {
                Some(old) if old.will_wake(waker) => {}
                _ => w.waker = Some(waker.clone()),
            }
        }
        false
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        state.waiting.retain(|w| w.ticket != self.ticket);
        // Whoever is at the head now may be able to go (a slot left free behind us).
        state.wake_head(self.inner.limit);
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
            }),
        }
    }

    /// Takes a slot: at once when one is free and nobody waits, else after waiting in line
    /// for at most `wait` (a task on the event loop: it needs the loop's timers). A fired
    /// `hangup` ends the wait at once.
    pub async fn acquire(&self, wait: Duration, hangup: &Hangup) -> Result<SlotGuard, Refused> {
        let inner = &*self.inner;
        let place = {
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
            state.waiting.push_back(Waiter {
                ticket,
                waker: None,
            });
            Place { inner, ticket }
        };
        let started = Instant::now();
        let mut deadline = pin!(sleep_until(started + wait));
        let mut gone = pin!(hangup.fired());
        let outcome = poll_fn(|cx| {
            if gone.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Refused::Gone));
            }
            if place.try_take(cx.waker()) {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut deadline).poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Refused::Waited {
                    waited: started.elapsed(),
                    limit: inner.limit,
                })),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        drop(place);
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
        state.wake_head(self.inner.limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::block_on;
    use std::sync::mpsc;
    use std::thread;

    const LONG: Duration = Duration::from_secs(30);

    /// `acquire` on a loop of this thread.
    fn take(slots: &Slots, wait: Duration, hangup: &Hangup) -> Result<SlotGuard, Refused> {
        block_on(slots.acquire(wait, hangup)).expect("a loop for the test")
    }

    /// `acquire` on a thread of its own; the slot is given back at once.
    fn take_apart(slots: &Slots, hangup: &Hangup) -> thread::JoinHandle<Result<(), Refused>> {
        let (slots, hangup) = (slots.clone(), hangup.clone());
        thread::spawn(move || take(&slots, LONG, &hangup).map(drop))
    }

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
        let a = take(&slots, LONG, &h).unwrap();
        let _b = take(&slots, LONG, &h).unwrap();
        assert_eq!(slots.status().busy, 2);
        let waiter = take_apart(&slots, &Hangup::default());
        until_waiting(&slots, 1);
        // The queue (1) is full now: refused at once.
        assert_eq!(
            take(&slots, LONG, &h).unwrap_err(),
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
        let _held = take(&slots, LONG, &h).unwrap();
        match take(&slots, Duration::from_millis(20), &h) {
            Err(Refused::Waited { limit: 1, waited }) => {
                assert!(waited >= Duration::from_millis(20))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(slots.status().waiting, 0);
        // No wait at all: refused at once while busy.
        assert!(matches!(
            take(&slots, Duration::ZERO, &h),
            Err(Refused::QueueFull { .. })
        ));
    }

    #[test]
    fn a_hang_up_frees_the_place_in_the_queue() {
        let slots = Slots::new(1, 1);
        let held = take(&slots, LONG, &Hangup::default()).unwrap();
        let gone = Hangup::default();
        let waiter = take_apart(&slots, &gone);
        until_waiting(&slots, 1);
        gone.fire();
        assert_eq!(waiter.join().unwrap(), Err(Refused::Gone));
        assert_eq!(slots.status().waiting, 0);
        // Its place is free for the next one.
        let next = take_apart(&slots, &Hangup::default());
        until_waiting(&slots, 1);
        drop(held);
        assert_eq!(next.join().unwrap(), Ok(()));
    }

    #[test]
    fn a_dropped_waiter_leaves_the_queue_and_the_next_one_goes() {
        let slots = Slots::new(1, 2);
        let held = take(&slots, LONG, &Hangup::default()).unwrap();
        // The first waiter's future is dropped while it waits (its task ended).
        let first = {
            let slots = slots.clone();
            thread::spawn(move || {
                block_on(async {
                    let h = Hangup::default();
                    let waiting = crate::rt::time::timeout(
                        Duration::from_millis(50),
                        slots.acquire(LONG, &h),
                    );
                    waiting.await.is_err()
                })
                .unwrap()
            })
        };
        until_waiting(&slots, 1);
        let second = take_apart(&slots, &Hangup::default());
        assert!(first.join().unwrap(), "the first waiter was cut off");
        until_waiting(&slots, 1);
        drop(held);
        assert_eq!(
            second.join().unwrap(),
            Ok(()),
            "the second one took the slot"
        );
        let s = slots.status();
        assert_eq!((s.busy, s.waiting), (0, 0));
    }

    #[test]
    fn waiters_on_one_loop_wait_without_a_thread_each() {
        // Three waiters as tasks of one loop: a thread per waiter would not be needed.
        let slots = Slots::new(1, 8);
        let held = take(&slots, LONG, &Hangup::default()).unwrap();
        let runner = {
            let slots = slots.clone();
            thread::spawn(move || {
                block_on(async {
                    let mut done = Vec::new();
                    for i in 0..3 {
                        let (slots, (tx, rx)) = (slots.clone(), crate::rt::oneshot::channel());
                        crate::rt::spawn(async move {
                            let g = slots.acquire(LONG, &Hangup::default()).await;
                            let _ = tx.send((i, g.is_ok()));
                        });
                        done.push(rx);
                    }
                    let mut got = Vec::new();
                    for rx in done {
                        got.push(rx.await);
                    }
                    got
                })
                .unwrap()
            })
        };
        until_waiting(&slots, 3);
        drop(held);
        assert_eq!(
            runner.join().unwrap(),
            [Some((0, true)), Some((1, true)), Some((2, true))],
            "each waiter got the slot in turn"
        );
    }

    #[test]
    fn waiters_are_served_in_order() {
        let slots = Slots::new(1, 8);
        let held = take(&slots, LONG, &Hangup::default()).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for i in 0..5 {
            let (mine, tx) = (slots.clone(), tx.clone());
            threads.push(thread::spawn(move || {
                let g = take(&mine, LONG, &Hangup::default()).unwrap();
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
        drop(take(&slots, LONG, &Hangup::default()).unwrap());
        assert_eq!(slots.retry_after_s(), 1, "a short hold");
    }
}
