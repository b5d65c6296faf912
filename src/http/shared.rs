//! What every thread of one server shares: the handler, limits and timeouts, the stopping
//! flag, the open connections (so that a shutdown can wake or end them), their count per
//! address and the body budget.

use std::collections::HashMap;
use std::net::Shutdown;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::budget::{BodyBudget, PerIp};
use super::wire::Sock;
use super::{Handler, Hangup, Limits, Request, Response, Stats, Timeouts};
use crate::error::Error;
use crate::util::lock;

/// What every thread of one server shares.
pub(crate) struct Shared {
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) limits: Limits,
    pub(crate) timeouts: Timeouts,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stopping: AtomicBool,
    pub(crate) prefix: String,
    pub(crate) next_id: AtomicU64,
    /// Open connections, so that shutdown can end them after its grace.
    pub(crate) open: Mutex<HashMap<u64, Tracked>>,
    /// Open connections per client address.
    pub(crate) per_ip: PerIp,
    /// Request bodies in flight, all connections together.
    pub(crate) bodies: Arc<BodyBudget>,
    /// Threads answering refused peers now (see `conn::refuse_peer`).
    pub(crate) refusing: std::sync::atomic::AtomicUsize,
    /// The workers (see `worker::Pool`), as the connection threads see them.
    pub(crate) pool: Box<dyn Workers>,
    /// Jobs queued so far: each job's `seq` is its number in this count.
    pub(crate) queued: AtomicU64,
    /// The highest `seq` a worker (or a refusal) has taken off the queue. The queue is
    /// first in, first out, so a job whose `seq` is above it is still waiting (or was taken
    /// just now).
    pub(crate) taken: AtomicU64,
}

/// The worker pool, as the rest of the server uses it.
pub(crate) trait Workers: Send + Sync {
    /// Starts the first workers.
    fn start(&self) -> std::io::Result<()>;
    /// After a request was queued: one more worker when every started one is busy or has
    /// work waiting, up to the pool's size.
    fn grow(&self, busy: usize, stopping: bool);
    /// The started workers' threads, for the server to join when it stops.
    fn take_handles(&self) -> Vec<std::thread::JoinHandle<()>>;
    /// Takes the oldest job off the queue, if any, and answers it 503 `overloaded` here: a
    /// connection thread whose own request has waited past `queue_wait` calls it, so that
    /// the wait is bounded while every worker is busy with long calls.
    fn refuse_oldest(&self);
}

pub(crate) struct Tracked {
    pub(crate) sock: Option<Sock>,
    pub(crate) hangup: Option<Hangup>,
    /// The connection waits for a request (see [`Shared::wake_waiting`]).
    pub(crate) waiting: Arc<AtomicBool>,
}

impl Shared {
    /// Calls the handler; a panic becomes a 500 (logged with what it said).
    pub(crate) fn call_handler(&self, req: &Request) -> Response {
        match catch_unwind(AssertUnwindSafe(|| self.handler.handle(req))) {
            Ok(resp) => resp,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                log::error!(method = req.method.as_str(), path = req.path.as_str(), panic = what.as_str(); "handler panicked");
                Response::error(&Error::Internal {
                    message: "internal error: the request handler failed".to_string(),
                })
            }
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Registers the connection's socket; returns its "waiting for a request" flag.
    pub(crate) fn track(&self, id: u64, sock: Sock) -> Arc<AtomicBool> {
        let waiting = Arc::new(AtomicBool::new(true));
        if let Some(t) = lock(&self.open).get_mut(&id) {
            t.sock = Some(sock);
            t.waiting = Arc::clone(&waiting);
        }
        waiting
    }

    /// Ends every wait for a request (idle keep-alive, handshake, head) by shutting the read
    /// side of its socket: the blocked read returns at once. Requests under way are left alone.
    pub(crate) fn wake_waiting(&self) {
        let open = lock(&self.open);
        for t in open.values().filter(|t| t.waiting.load(Ordering::SeqCst)) {
            if let Some(s) = &t.sock {
                let _ = s.0.shutdown(Shutdown::Read);
            }
        }
    }

    pub(crate) fn set_hangup(&self, id: u64, hangup: Option<Hangup>) {
        if let Some(t) = lock(&self.open).get_mut(&id) {
            t.hangup = hangup;
        }
    }

    /// Shuts every open socket down (their threads see errors at once) and tells running
    /// handlers that their clients are gone.
    pub(crate) fn force_close(&self) {
        let hangups: Vec<Hangup> = {
            let open = lock(&self.open);
            for s in open.values().filter_map(|t| t.sock.as_ref()) {
                let _ = s.0.shutdown(Shutdown::Both);
            }
            open.values().filter_map(|t| t.hangup.clone()).collect()
        };
        for h in hangups {
            h.fire();
        }
    }
}

/// One counted connection; uncounts it when dropped, on whatever path its thread ends.
pub(crate) struct Slot {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u64,
    pub(crate) peer: std::net::IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.shared.open).remove(&self.id);
        self.shared.per_ip.remove(self.peer);
        self.shared
            .stats
            .connections_open
            .fetch_sub(1, Ordering::AcqRel);
    }
}
