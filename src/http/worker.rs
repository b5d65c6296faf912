//! The worker pool's side: take a request off the queue, call the handler (a panic becomes a
//! 500), write the response — a complete one as far as the client takes it at once, a
//! stream to its end — and give the connection back, with any rest of the response for the
//! connection thread to finish.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::conn::{Back, Job, Rest};
use super::shared::{Shared, Workers};
use super::write::{Access, Reply, Written, write_for_worker};
use crate::error::Error;

/// Workers started with the server; the others start as requests need them.
const INITIAL_WORKERS: usize = 4;

/// The worker pool: up to its size, its threads start when requests need them (every
/// started worker busy, or work waiting), and those beyond the first [`INITIAL_WORKERS`]
/// end after [`Timeouts::worker_idle`](super::Timeouts::worker_idle) without work. An idle
/// gateway so keeps a few threads instead of a hundred, also after a burst (their stacks and
/// bookkeeping back, and fewer threads for a small box to schedule); a burst of slow calls
/// still gets a worker each, at once.
pub(crate) struct Pool {
    queue: Receiver<Job>,
    size: usize,
    /// Workers running (or being started).
    started: Arc<AtomicUsize>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// The server's shared state, which the new threads take (set at its creation).
    shared: Weak<Shared>,
}

impl Pool {
    pub(crate) fn new(queue: Receiver<Job>, size: usize, shared: Weak<Shared>) -> Pool {
        Pool {
            queue,
            size: size.max(1),
            started: Arc::new(AtomicUsize::new(0)),
            handles: Mutex::new(Vec::new()),
            shared,
        }
    }

    fn spawn_more(&self, busy: usize, stopping: bool) {
        // Between the caller's queueing and this read (see `retire`).
        fence(Ordering::SeqCst);
        let started = self.started.load(Ordering::SeqCst);
        if stopping || started >= self.size || busy + self.queue.len() < started {
            return;
        }
        if let Err(e) = self.spawn() {
            log::warn!(error:% = e, workers = started; "cannot start another worker");
        }
    }

    fn spawn(&self) -> std::io::Result<()> {
        let n = self.started.fetch_add(1, Ordering::AcqRel);
        if n >= self.size {
            self.started.fetch_sub(1, Ordering::AcqRel);
            return Ok(());
        }
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let queue = self.queue.clone();
        let (started, size) = (self.started.clone(), self.size);
        let spawned = thread::Builder::new()
            .name(format!("{}w{n}", shared.prefix))
            .spawn(move || work(&shared, &queue, &started, size));
        match spawned {
            Ok(handle) => {
                let mut handles = crate::util::lock(&self.handles);
                // Workers that retired are done: their handles go, so that bursts over months
                // do not pile them up.
                handles.retain(|h| !h.is_finished());
                handles.push(handle);
                Ok(())
            }
            // (`started` counts it already; the thread itself reports in `Stats`.)
            Err(e) => {
                self.started.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }
}

impl Workers for Pool {
    fn start(&self) -> std::io::Result<()> {
        for _ in 0..self.size.min(INITIAL_WORKERS) {
            self.spawn()?;
        }
        Ok(())
    }

    /// (Two connection threads may both see the need; each start is counted first, so the
    /// size is never passed.)
    fn grow(&self, busy: usize, stopping: bool) {
        self.spawn_more(busy, stopping);
    }

    fn take_handles(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *crate::util::lock(&self.handles))
    }

    fn refuse_oldest(&self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if let Ok(job) = self.queue.try_recv() {
            taken_off(&shared, &job, &self.queue);
            if catch_unwind(AssertUnwindSafe(|| answer(&shared, job, true))).is_err() {
                log::error!("recovered from a panic while refusing a request");
            }
        }
    }
}

fn work(shared: &Arc<Shared>, queue: &Receiver<Job>, started: &AtomicUsize, size: usize) {
    shared.stats.workers_started.fetch_add(1, Ordering::AcqRel);
    loop {
        let job = match queue.recv_timeout(shared.timeouts.worker_idle) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) if retire(started, queue, size) => break,
            // One of the workers that stay: it waits without waking up, so that an idle
            // gateway stays still.
            Err(RecvTimeoutError::Timeout) => match queue.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            Err(RecvTimeoutError::Disconnected) => break,
        };
        taken_off(shared, &job, queue);
        shared.stats.workers_busy.fetch_add(1, Ordering::AcqRel);
        // `call_handler` catches the handler's panics; this only guards against our own bugs.
        if catch_unwind(AssertUnwindSafe(|| answer(shared, job, false))).is_err() {
            log::error!("worker recovered from a panic while answering");
        }
        shared.stats.workers_busy.fetch_sub(1, Ordering::AcqRel);
    }
    shared.stats.workers_started.fetch_sub(1, Ordering::AcqRel);
}

/// Books a job taken off the queue (by a worker, or refused): its place for the connection
/// threads that watch theirs, and the queue's depth.
fn taken_off(shared: &Shared, job: &Job, queue: &Receiver<Job>) {
    shared.taken.fetch_max(job.seq, Ordering::SeqCst);
    shared
        .stats
        .queue_depth
        .store(queue.len(), Ordering::Relaxed);
}

/// Counts an idle worker out unless it is one of the first [`INITIAL_WORKERS`]: true when it
/// should end.
///
/// A request queued while this worker decides must not be left to wait for a busy one: the
/// connection thread queues, then reads `started` to see whether to start a worker; this
/// worker lowers `started`, then looks at the queue. With a full fence between each side's
/// write and read, at least one of them sees the other: the connection thread starts a
/// worker, or this one stays (counted back in, unless that would pass the pool's size).
fn retire(started: &AtomicUsize, queue: &Receiver<Job>, size: usize) -> bool {
    let out = started
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n > INITIAL_WORKERS).then(|| n - 1)
        })
        .is_ok();
    if !out {
        return false;
    }
    fence(Ordering::SeqCst);
    if queue.is_empty() {
        return true;
    }
    started
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < size).then_some(n + 1)
        })
        .is_err()
}

/// Handles one request on a worker and writes its response; `refused`: 503 `overloaded`
/// without asking the handler (as for any request that waited past `queue_wait`).
fn answer(shared: &Shared, job: Job, refused: bool) {
    let Job {
        mut req,
        lease,
        mut conn,
        reply,
        back,
        seq: _,
    } = job;
    let t = &shared.timeouts;
    let resp = if refused || req.received.elapsed() > t.queue_wait {
        shared
            .stats
            .overloaded_total
            .fetch_add(1, Ordering::Relaxed);
        let overloaded = Error::Overloaded { retry_after_s: 1 };
        shared.handler.error_response(&req.path, &overloaded)
    } else {
        shared.call_handler(&req)
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
