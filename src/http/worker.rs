//! The worker pool's side: take a request off the queue, call the handler (a panic becomes a
//! 500), write the response on the connection, and hand the connection back for keep-alive.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

use crossbeam_channel::Receiver;

use super::Response;
use super::conn::Job;
use super::shared::Shared;
use super::write::{Reply, access_log, write_response};
use crate::error::Error;

pub(crate) fn work(shared: &Shared, queue: &Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        shared
            .stats
            .queue_depth
            .store(queue.len(), Ordering::Relaxed);
        shared.stats.workers_busy.fetch_add(1, Ordering::AcqRel);
        // `answer` catches the handler's panics; this only guards against our own bugs.
        if catch_unwind(AssertUnwindSafe(|| answer(shared, job))).is_err() {
            log::error!("worker recovered from a panic while answering");
        }
        shared.stats.workers_busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Handles one request on a worker and writes its response.
fn answer(shared: &Shared, job: Job) {
    let Job {
        req,
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
        match catch_unwind(AssertUnwindSafe(|| shared.handler.handle(&req))) {
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
    };
    let reply = Reply {
        keep_alive: reply.keep_alive && !shared.is_stopping(),
        ..reply
    };
    let out = write_response(&mut conn.io, &reply, resp);
    req.hangup.clear();
    access_log(
        &req.method,
        &req.path,
        out.status,
        req.peer,
        req.received,
        &out.log,
    );
    if out.keep_alive && !shared.is_stopping() {
        // The connection thread waits for it; if it is gone, dropping closes the connection.
        let _ = back.send(conn);
    } else {
        conn.io.close(t.write);
    }
}
