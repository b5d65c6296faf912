//! The workers' places: at most `-workers` requests are handled at once (on a worker thread
//! or on the event loop, awaiting their upstream), at most `-queue` more wait for a place,
//! first come first served. A request that finds the queue full, or waits longer than it
//! may, gets 503 `overloaded` (the connection decides the wait, with a timer of its own);
//! one whose client leaves meanwhile leaves the line at once (the connection watches the
//! client and drops its [`Entering`]).
//!
//! The lock guards counters and the line of waiters only, never a request's work.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use super::Stats;
use crate::util::lock;

/// The places; clones share them.
#[derive(Clone)]
pub(crate) struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    size: usize,
    queue: usize,
    stats: Arc<Stats>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    busy: usize,
    /// Waiters in order: their ticket and waker.
    line: VecDeque<(u64, Option<Waker>)>,
    /// Tickets given a place while they waited, not yet collected.
    granted: Vec<u64>,
    next_ticket: u64,
}

/// A place, given back when dropped.
pub(crate) struct Place {
    inner: Arc<Inner>,
}

/// Why no place was given at once.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every place is taken and the queue is full.
    Queue,
}

impl Gate {
    pub(crate) fn new(size: usize, queue: usize, stats: Arc<Stats>) -> Gate {
        Gate {
            inner: Arc::new(Inner {
                size: size.max(1),
                queue,
                stats,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// A place: at once when one is free and nobody waits; else a place in the line (the
    /// returned future), or [`Full::Queue`]. Dropping the future leaves the line.
    pub(crate) fn enter(&self) -> Result<Entering, Full> {
        let mut s = lock(&self.inner.state);
        if s.busy < self.inner.size && s.line.is_empty() {
            s.busy += 1;
            self.inner.publish(&s);
            return Ok(Entering::Now(Some(self.place())));
        }
        if s.line.len() >= self.inner.queue {
            return Err(Full::Queue);
        }
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.line.push_back((ticket, None));
        self.inner.publish(&s);
        Ok(Entering::Waiting {
            gate: self.clone(),
            ticket,
            done: false,
        })
    }

    fn place(&self) -> Place {
        Place {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Inner {
    fn publish(&self, s: &State) {
        self.stats.workers_busy.store(s.busy, Ordering::Release);
        self.stats
            .queue_depth
            .store(s.line.len(), Ordering::Release);
    }

    /// Gives a place back: to the first in line if anyone waits (woken outside the lock).
    fn release(&self, mut s: MutexGuard<'_, State>) {
        s.busy -= 1;
        let next = grant_next(&mut s);
        self.publish(&s);
        drop(s);
        if let Some(w) = next {
            w.wake();
        }
    }
}

/// On the way in.
pub(crate) enum Entering {
    Now(Option<Place>),
    Waiting { gate: Gate, ticket: u64, done: bool },
}

impl Entering {
    /// Waits for the place.
    pub(crate) async fn wait(&mut self) -> Place {
        match self {
            Entering::Now(place) => match place.take() {
                Some(p) => p,
                // Taken already: waiting again would never end.
                None => std::future::pending().await,
            },
            Entering::Waiting { gate, ticket, done } => {
                poll_fn(|cx| {
                    let mut s = lock(&gate.inner.state);
                    if let Some(i) = s.granted.iter().position(|t| t == ticket) {
                        s.granted.swap_remove(i);
                        *done = true;
                        return Poll::Ready(gate.place());
                    }
                    if let Some(entry) = s.line.iter_mut().find(|(t, _)| t == ticket) {
                        match &entry.1 {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            _ => entry.1 = Some(cx.waker().clone()),
                        }
                    }
                    Poll::Pending
                })
                .await
            }
        }
    }
}

impl Drop for Entering {
    fn drop(&mut self) {
        if let Entering::Waiting { gate, ticket, done } = self
            && !*done
        {
            let mut s = lock(&gate.inner.state);
            if let Some(i) = s.line.iter().position(|(t, _)| t == ticket) {
                s.line.remove(i);
            } else if let Some(i) = s.granted.iter().position(|t| t == ticket) {
                // Given a place just as it gave up: pass it on.
                s.granted.swap_remove(i);
                gate.inner.release(s);
                return;
            }
            gate.inner.publish(&s);
        }
    }
}

/// Gives a free place to the first in line; its waker, to wake outside the lock.
fn grant_next(s: &mut State) -> Option<Waker> {
    let (ticket, waker) = s.line.pop_front()?;
    s.busy += 1;
    s.granted.push(ticket);
    waker
}

impl Drop for Place {
    fn drop(&mut self) {
        self.inner.release(lock(&self.inner.state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::block_on;
    use crate::rt::time::{sleep, timeout};
    use std::time::Duration;

    fn gate(size: usize, queue: usize) -> (Gate, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        (Gate::new(size, queue, Arc::clone(&stats)), stats)
    }

    #[test]
    fn places_then_a_line_then_refusal() {
        let (g, stats) = gate(1, 1);
        block_on(async {
            let first = g.enter().unwrap().wait().await;
            assert_eq!(stats.workers_busy.load(Ordering::Acquire), 1);
            let mut second = g.enter().unwrap();
            assert!(matches!(g.enter(), Err(Full::Queue)));
            assert_eq!(stats.queue_depth.load(Ordering::Acquire), 1);
            crate::rt::spawn(async move {
                sleep(Duration::from_millis(10)).await;
                drop(first);
            });
            let place = timeout(Duration::from_secs(2), second.wait())
                .await
                .unwrap();
            assert_eq!(stats.workers_busy.load(Ordering::Acquire), 1);
            assert_eq!(stats.queue_depth.load(Ordering::Acquire), 0);
            drop(place);
            assert_eq!(stats.workers_busy.load(Ordering::Acquire), 0);
        })
        .unwrap();
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_the_line_and_passes_on_a_place() {
        let (g, stats) = gate(1, 4);
        block_on(async {
            let first = g.enter().unwrap().wait().await;
            let mut impatient = g.enter().unwrap();
            assert!(
                timeout(Duration::from_millis(10), impatient.wait())
                    .await
                    .is_err()
            );
            drop(impatient);
            assert_eq!(stats.queue_depth.load(Ordering::Acquire), 0);
            // Granted as it gives up: the place goes to the next.
            let mut a = g.enter().unwrap();
            let mut b = g.enter().unwrap();
            drop(first);
            drop(a.wait().await);
            let _ = &mut a;
            let b_place = timeout(Duration::from_secs(1), b.wait()).await;
            assert!(b_place.is_ok());
            drop(b_place);
            drop(a);
            drop(b);
            assert_eq!(stats.workers_busy.load(Ordering::Acquire), 0);
            // A granted waiter that is dropped before collecting gives its place back.
            let held = g.enter().unwrap().wait().await;
            let waiting = g.enter().unwrap();
            drop(held);
            assert_eq!(stats.workers_busy.load(Ordering::Acquire), 1, "granted");
            drop(waiting);
            assert_eq!(stats.workers_busy.load(Ordering::Acquire), 0);
        })
        .unwrap();
    }
}
