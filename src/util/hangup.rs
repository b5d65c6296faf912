//! A client's departure as a value: the HTTP layer fires it when it sees the connection
//! closed while a handler still works, and whatever the handler is blocked on (an upstream
//! call, a wait for a slot) registers a callback that interrupts it. It also keeps the
//! connection thread's one probe of a client and the answer from writing at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::lock;

type Callback = Box<dyn FnOnce() + Send>;

/// Tells a running handler that its client has gone away. The server fires it when it sees
/// the connection closed while a handler still works on it; a handler registers what to
/// interrupt (an upstream call) with [`Hangup::on_hangup`].
#[derive(Clone, Default)]
pub struct Hangup {
    inner: Arc<HangupInner>,
}

#[derive(Default)]
struct HangupInner {
    fired: AtomicBool,
    callbacks: Mutex<Vec<Callback>>,
    /// The answer's writing has begun: from then on only it writes on the connection.
    responding: Mutex<bool>,
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

    /// Runs `f` when the client goes away; at once if it already has.
    pub fn on_hangup(&self, f: impl FnOnce() + Send + 'static) {
        let mut callbacks = lock(&self.inner.callbacks);
        if self.is_fired() {
            drop(callbacks);
            f();
        } else {
            callbacks.push(Box::new(f));
        }
    }

    /// Marks the client as gone and runs the registered callbacks (once).
    pub fn fire(&self) {
        let callbacks = {
            let mut guard = lock(&self.inner.callbacks);
            if self.inner.fired.swap(true, Ordering::AcqRel) {
                return;
            }
            std::mem::take(&mut *guard)
        };
        for f in callbacks {
            f();
        }
    }

    /// The answer is about to be written: nothing else may write on the connection now
    /// (see [`Hangup::before_response`]).
    pub fn start_response(&self) {
        *lock(&self.inner.responding) = true;
    }

    /// Runs `f` — a write on the connection while the answer is being made — unless the
    /// answer's writing has begun; the answer waits for `f` to end. `None`: too late.
    pub fn before_response<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let responding = lock(&self.inner.responding);
        (!*responding).then(f)
    }

    /// Forgets the registered callbacks (the handler is done with what they would interrupt).
    pub fn clear(&self) {
        lock(&self.inner.callbacks).clear();
    }
}
