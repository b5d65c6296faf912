//! A client's departure as a value: the HTTP layer fires it when it sees the connection
//! closed while a handler still works, and whatever the handler waits for (an upstream
//! call, a wait for a slot) ends: the task races it against [`Hangup::fired`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::lock;

/// Tells a running handler that its client has gone away. The server fires it when it sees
/// the connection closed while a handler still works on it; a task races its waits (an
/// upstream call, a wait for a local model's slot) against [`Hangup::fired`].
#[derive(Clone, Default)]
pub struct Hangup {
    inner: Arc<HangupInner>,
}

#[derive(Default)]
struct HangupInner {
    fired: AtomicBool,
    /// The server is stopping and the request's grace has run out: what the handler waits
    /// for ends as for a hang-up, but the client is still there to be told.
    stopping: AtomicBool,
    /// Tasks waiting in [`Hangup::fired`] (the first apart: there is one in the usual
    /// case, and it needs no list).
    wakers: Mutex<(Option<Waker>, Vec<Waker>)>,
}

impl std::fmt::Debug for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hangup(fired: {})", self.is_fired())
    }
}

impl Hangup {
    /// Whether the client has gone away.
    pub fn is_fired(&self) -> bool {
        self.inner.fired.load(Ordering::Acquire)
    }

    /// Marks the client as gone and wakes the waiting tasks (once).
    pub fn fire(&self) {
        if self.inner.fired.swap(true, Ordering::AcqRel) {
            return;
        }
        self.wake_all();
    }

    /// The server is stopping and can wait no longer: what the handler waits for ends (as
    /// [`Hangup::fired`] completes), and the handler answers 503 `shutting_down` to a
    /// client that is still there.
    pub fn stop(&self) {
        if self.inner.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        self.wake_all();
    }

    /// Whether [`Hangup::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// Whether the work ended because the server stopped it while its client is still
    /// there (to be answered 503 `shutting_down`), not because the client left.
    pub fn stopped_by_server(&self) -> bool {
        self.is_stopping() && !self.is_fired()
    }

    /// Whether the work must end: the client is gone, or the server is stopping.
    fn is_over(&self) -> bool {
        self.is_fired() || self.is_stopping()
    }

    fn wake_all(&self) {
        let (first, more) = std::mem::take(&mut *lock(&self.inner.wakers));
        for w in first.into_iter().chain(more) {
            w.wake();
        }
    }

    /// Completes when the client has gone, or the server stops (at once if so).
    pub fn fired(&self) -> Fired<'_> {
        Fired(self)
    }
}

/// See [`Hangup::fired`].
pub struct Fired<'a>(&'a Hangup);

impl Future for Fired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inner = &self.0.inner;
        if self.0.is_over() {
            return Poll::Ready(());
        }
        let mut wakers = lock(&inner.wakers);
        // Checked again under the lock: `fire` and `stop` take the wakers after setting
        // their flag.
        if self.0.is_over() {
            return Poll::Ready(());
        }
        let (first, more) = &mut *wakers;
        let known = first
            .iter()
            .chain(more.iter())
            .any(|w| w.will_wake(cx.waker()));
        if !known {
            match first {
                None => *first = Some(cx.waker().clone()),
                Some(_) => more.push(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}
