//! What every part of one server shares: the handler, limits and timeouts, the stopping
//! flag, the connections per address and per loop, the body budget, the workers' places and
//! threads. And, on each event loop, the connections it runs, so that a shutdown can wake
//! or end them there.

use std::cell::RefCell;
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Waker;

use super::budget::{BodyBudget, PerIp};
use super::gate::Gate;
use super::{Handler, Hangup, Limits, Request, Response, Stats, Timeouts};
use crate::error::Error;
use crate::rt::blocking::Pool;
use crate::rt::slab::Slab;

/// What every part of one server shares.
pub(crate) struct Shared {
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) limits: Limits,
    pub(crate) timeouts: Timeouts,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stopping: AtomicBool,
    pub(crate) prefix: String,
    /// Open connections per client address.
    pub(crate) per_ip: PerIp,
    /// Request bodies in flight, all connections together.
    pub(crate) bodies: Arc<BodyBudget>,
    /// Refused peers being answered now (see `conn::refuse_peer`).
    pub(crate) refusing: AtomicUsize,
    /// The workers' places.
    pub(crate) gate: Gate,
    /// Threads for handlers that block.
    pub(crate) workers: Pool,
    /// Connections on each event loop, to hand a new one to the least busy.
    pub(crate) loads: Vec<AtomicUsize>,
}

impl Shared {
    /// Calls the handler; a panic becomes a 500 (logged with what it said).
    pub(crate) fn call_handler(&self, req: &Request) -> Response {
        match catch_unwind(AssertUnwindSafe(|| self.handler.handle(req))) {
            Ok(resp) => resp,
            Err(panic) => panicked(req, &*panic),
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// What a panic said (its message, when it is text).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// The 500 for a handler that panicked, logged with what it said.
fn panicked(req: &Request, panic: &(dyn std::any::Any + Send)) -> Response {
    let what = panic_message(panic);
    log::error!(method = req.method.as_str(), path = req.path.as_str(), panic = what.as_str(); "handler panicked");
    handler_failed()
}

/// The client's answer when its handler panicked.
pub(crate) fn handler_failed() -> Response {
    Response::error(&Error::Internal {
        message: "internal error: the request handler failed".to_string(),
    })
}

/// The error that ends a stream whose producer panicked (logged here).
pub(crate) fn stream_panicked() -> std::io::Error {
    log::error!("stream body panicked; connection closed");
    std::io::Error::other("the stream body panicked")
}

/// One counted connection; uncounts it when dropped, however its task ends.
pub(crate) struct Slot {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: IpAddr,
    /// Its event loop.
    pub(crate) on: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.per_ip.remove(self.peer);
        if let Some(load) = self.shared.loads.get(self.on) {
            load.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared
            .stats
            .connections_open
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection as its loop's shutdown jobs see it.
#[derive(Default)]
struct Tracked {
    /// It waits for a request (handshake, idle, head): a shutdown ends the wait.
    waiting: bool,
    /// Its request's hang-up while a handler works.
    hangup: Option<Hangup>,
    /// Ended by a forced shutdown.
    killed: bool,
    waker: Option<Waker>,
}

thread_local! {
    /// The connections of this loop (one server's loops run nothing else).
    static OPEN: RefCell<Slab<Tracked>> = RefCell::new(Slab::default());
}

/// A connection's entry in its loop's list; removed when dropped.
pub(crate) struct Tracking(usize);

impl Tracking {
    pub(crate) fn new() -> Tracking {
        Tracking(OPEN.with(|o| o.borrow_mut().insert(Tracked::default())))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Tracked) -> R) -> Option<R> {
        OPEN.try_with(|o| o.borrow_mut().get_mut(self.0).map(f))
            .ok()
            .flatten()
    }

    pub(crate) fn set_waiting(&self, waiting: bool) {
        self.with(|t| t.waiting = waiting);
    }

    pub(crate) fn set_hangup(&self, hangup: Option<Hangup>) {
        self.with(|t| t.hangup = hangup);
    }

    /// Whether a forced shutdown ended it; else keeps `waker` to be woken by one.
    pub(crate) fn killed(&self, waker: &Waker) -> bool {
        self.with(|t| {
            if !t.killed {
                match &t.waker {
                    Some(w) if w.will_wake(waker) => {}
                    _ => t.waker = Some(waker.clone()),
                }
            }
            t.killed
        })
        .unwrap_or(true)
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        let _ = OPEN.try_with(|o| o.borrow_mut().remove(self.0));
    }
}

/// On a loop, in a shutdown: wakes every connection that waits for a request (it sees the
/// stopping flag and ends).
pub(crate) fn wake_waiting() {
    let wakers: Vec<Waker> = OPEN.with(|o| {
        let mut open = o.borrow_mut();
        let mut wakers = Vec::new();
        for i in 0..open.capacity() {
            if let Some(t) = open.get_mut(i)
                && t.waiting
                && let Some(w) = t.waker.clone()
            {
                wakers.push(w);
            }
        }
        wakers
    });
    for w in wakers {
        w.wake();
    }
}

/// On a loop, when a shutdown's grace has run out: tells running handlers to stop, so that
/// they answer their clients 503 `shutting_down` (a stream: a last error event) and their
/// connections close; [`force_close`] comes after it for what is left.
pub(crate) fn stop_handlers() {
    let hangups: Vec<Hangup> = OPEN.with(|o| {
        let open = o.borrow();
        (0..open.capacity())
            .filter_map(|i| open.get(i).and_then(|t| t.hangup.clone()))
            .collect()
    });
    for h in hangups {
        h.stop();
    }
}

/// On a loop, at the end of a shutdown's grace: tells running handlers that their clients
/// are gone and ends every connection.
pub(crate) fn force_close() {
    let (hangups, wakers): (Vec<Hangup>, Vec<Waker>) = OPEN.with(|o| {
        let mut open = o.borrow_mut();
        let (mut hangups, mut wakers) = (Vec::new(), Vec::new());
        for i in 0..open.capacity() {
            if let Some(t) = open.get_mut(i) {
                t.killed = true;
                hangups.extend(t.hangup.take());
                wakers.extend(t.waker.take());
            }
        }
        (hangups, wakers)
    });
    for h in hangups {
        h.fire();
    }
    for w in wakers {
        w.wake();
    }
}
