//! The worker pool's side: take a request off the queue, call the handler (a panic becomes a
//! 500), write the response — a complete one as far as the client takes it at once, a
//! stream to its end — and give the connection back, with any rest of the response for the
//! connection thread to finish.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

use crossbeam_channel::Receiver;

use super::conn::{Back, Job, Rest};
use super::shared::Shared;
use super::write::{Access, Reply, Written, write_for_worker};
use super::{Request, Response};
use crate::error::Error;

pub(crate) fn work(shared: &Shared, queue: &Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        shared
            .stats
            .queue_depth
            .store(queue.len(), Ordering::Relaxed);
        shared.stats.workers_busy.fetch_add(1, Ordering::AcqRel);
        // `call_handler` catches the handler's panics; this only guards against our own bugs.
        if catch_unwind(AssertUnwindSafe(|| answer(shared, job))).is_err() {
            log::error!("worker recovered from a panic while answering");
        }
        shared.stats.workers_busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Calls the handler; a panic becomes a 500 (logged with what it said).
pub(crate) fn call_handler(shared: &Shared, req: &Request) -> Response {
    match catch_unwind(AssertUnwindSafe(|| shared.handler.handle(req))) {
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

/// Handles one request on a worker and writes its response.
fn answer(shared: &Shared, job: Job) {
    let Job {
        mut req,
        lease,
        mut conn,
        reply,
        back,
    } = job;
    let t = &shared.timeouts;
    let resp = if req.received.elapsed() > t.queue_wait {
        shared
            .stats
            .overloaded_total
            .fetch_add(1, Ordering::Relaxed);
        Response::error(&Error::Overloaded { retry_after_s: 1 })
    } else {
        call_handler(shared, &req)
    };
    // The body is not needed any more (a stream may run for minutes): it and its share of
    // the body budget go now.
    req.body = Vec::new();
    drop(lease);
    let reply = Reply {
        keep_alive: reply.keep_alive && !shared.is_stopping(),
        ..reply
    };
    req.hangup.start_response();
    let written = write_for_worker(&mut conn.io, &reply, resp);
    req.hangup.clear();
    let access = Access {
        method: req.method,
        path: req.path,
        ip: req.peer,
        since: req.received,
    };
    match written {
        Written::Done(out) => {
            access.log(&out);
            if out.keep_alive && !shared.is_stopping() {
                // The connection thread waits for it; if it is gone, dropping closes it.
                let _ = back.send(Back::Ready(conn));
            } else {
                conn.io.close(t.write);
            }
        }
        Written::Rest(pending, out) => {
            let rest = Rest {
                conn,
                pending,
                out,
                access,
            };
            let _ = back.send(Back::Rest(Box::new(rest)));
        }
    }
}
