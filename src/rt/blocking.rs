//! Threads for work that blocks (files, name lookups, a handler written for threads), so
//! that it never holds an event loop. Threads start as work needs them, up to a maximum;
//! beyond the first few, a thread that had nothing to do for a while ends.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::oneshot;
use crate::util::lock;

type Job = Box<dyn FnOnce() + Send>;

enum Msg {
    Run(Job),
    /// One thread ends (see [`Pool::stop`]).
    Exit,
}

/// The threads for the blocking steps of requests on the event loops (session files, name
/// lookups, a model discovery): many may wait at once, none stays when idle.
pub(crate) fn io() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new("sigorest-io", 64, 0, Duration::from_secs(10)))
}

/// A pool of threads for blocking work; clones share it.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Sender<Msg>,
    queue: Receiver<Msg>,
    name: String,
    max: usize,
    keep: usize,
    idle_time: Duration,
    stack: usize,
    /// Threads running (or being started).
    started: AtomicUsize,
    /// Jobs sent and not taken yet: more than the idle threads, a thread more is wanted.
    waiting: AtomicUsize,
    idle: AtomicUsize,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Told the number of threads whenever it changes.
    on_threads: Option<Box<dyn Fn(usize) + Send + Sync>>,
}

impl Pool {
    /// At most `max` threads named `name`; `keep` of them stay when idle, the others end
    /// after `idle_time` without work. Their stacks are 256 KiB.
    pub(crate) fn new(name: &str, max: usize, keep: usize, idle_time: Duration) -> Pool {
        Pool::with_stack(name, max, keep, idle_time, 256 * 1024)
    }

    /// The same with stacks of `stack` bytes (0: the platform's default).
    pub(crate) fn with_stack(
        name: &str,
        max: usize,
        keep: usize,
        idle_time: Duration,
        stack: usize,
    ) -> Pool {
        let (jobs, queue) = crossbeam_channel::unbounded();
        Pool {
            inner: Arc::new(Inner {
                jobs,
                queue,
                name: name.to_string(),
                max: max.max(1),
                keep,
                idle_time,
                stack,
                started: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                idle: AtomicUsize::new(0),
                handles: Mutex::new(Vec::new()),
                on_threads: None,
            }),
        }
    }

    /// Tells `hook` the number of threads whenever it changes (for a gauge).
    pub(crate) fn counting(mut self, hook: Box<dyn Fn(usize) + Send + Sync>) -> Pool {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.on_threads = Some(hook);
        }
        self
    }

    /// Starts the threads that stay (`keep`) now.
    pub(crate) fn start_kept(&self) -> std::io::Result<()> {
        for _ in 0..self.inner.keep {
            self.try_spawn()?;
        }
        Ok(())
    }

    /// Runs `f` on a thread of the pool; the receiver gets its result (`None` if it
    /// panicked).
    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.execute(Box::new(move || {
            if let Ok(v) = catch_unwind(AssertUnwindSafe(f)) {
                let _ = tx.send(v);
            } else {
                log::error!("a blocking job panicked");
            }
        }));
        rx
    }

    fn execute(&self, job: Job) {
        let inner = &self.inner;
        inner.waiting.fetch_add(1, Ordering::SeqCst);
        // The channel is unbounded and the pool holds its receiver: sending cannot fail.
        let _ = inner.jobs.send(Msg::Run(job));
        if inner.idle.load(Ordering::SeqCst) < inner.waiting.load(Ordering::SeqCst) {
            self.spawn();
        }
    }

    fn spawn(&self) {
        if let Err(e) = self.try_spawn() {
            log::warn!(error:% = e; "cannot start a thread for blocking work");
        }
    }

    fn try_spawn(&self) -> std::io::Result<()> {
        let inner = &self.inner;
        let n = inner.started.fetch_add(1, Ordering::SeqCst);
        if n >= inner.max {
            inner.started.fetch_sub(1, Ordering::SeqCst);
            return Ok(());
        }
        inner.counted(n + 1);
        let pool = Arc::clone(inner);
        let mut builder = thread::Builder::new().name(inner.name.clone());
        if inner.stack > 0 {
            builder = builder.stack_size(inner.stack);
        }
        match builder.spawn(move || work(&pool)) {
            Ok(h) => {
                let mut handles = lock(&inner.handles);
                handles.retain(|h| !h.is_finished());
                handles.push(h);
                Ok(())
            }
            Err(e) => {
                let n = inner.started.fetch_sub(1, Ordering::SeqCst);
                inner.counted(n - 1);
                Err(e)
            }
        }
    }

    /// Threads running now.
    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        self.inner.started.load(Ordering::SeqCst)
    }

    /// Tells every thread to end once the work sent before is done; returns their handles
    /// to join.
    pub(crate) fn stop(&self) -> Vec<JoinHandle<()>> {
        let handles = std::mem::take(&mut *lock(&self.inner.handles));
        for _ in 0..handles.len() {
            let _ = self.inner.jobs.send(Msg::Exit);
        }
        handles
    }
}

impl Inner {
    fn counted(&self, n: usize) {
        if let Some(hook) = &self.on_threads {
            hook(n);
        }
    }
}

fn work(pool: &Inner) {
    loop {
        pool.idle.fetch_add(1, Ordering::SeqCst);
        let got = pool.queue.recv_timeout(pool.idle_time);
        pool.idle.fetch_sub(1, Ordering::SeqCst);
        match got {
            Ok(Msg::Run(job)) => {
                pool.waiting.fetch_sub(1, Ordering::SeqCst);
                job();
            }
            Ok(Msg::Exit) => {
                let n = pool.started.fetch_sub(1, Ordering::SeqCst);
                pool.counted(n - 1);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                let out = pool
                    .started
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                        (n > pool.keep).then(|| n - 1)
                    });
                if let Ok(n) = out {
                    // A job sent meanwhile, that saw this thread idle and started none,
                    // would wait: stay for it.
                    if !pool.queue.is_empty() && pool.idle.load(Ordering::SeqCst) == 0 {
                        pool.started.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    pool.counted(n - 1);
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
