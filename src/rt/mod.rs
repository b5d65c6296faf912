//! sigorest's event loops: a few threads (one per core) that each run many connections and
//! upstream calls as tasks, waking only for what is ready — no thread per connection, no
//! thread hand-off per request, no thread held by a slow upstream or a slow client.
//!
//! - [`Runtime`]: the loop threads; [`LoopHandle`] hands work to one from any thread.
//! - [`spawn`]: a task on the loop of the current thread (tasks never change threads, so
//!   they need not be `Send`).
//! - [`block_on`]: runs one future to its end on the calling thread, with a loop of its own
//!   (sigoe, the background threads, tests).
//! - [`net::TcpStream`], [`time`]: sockets and timers for tasks.
//! - [`blocking::Pool`]: threads for work that blocks (files, name lookups), whose result a
//!   task awaits.
//!
//! Readiness comes from mio (epoll on Linux); everything above it is ours.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle};

pub(crate) mod blocking;
mod core;
pub(crate) mod net;
pub(crate) mod oneshot;
pub(crate) mod slab;
pub(crate) mod time;
pub(crate) mod tls;
pub(crate) mod wire;

pub(crate) use self::core::Job;
use self::core::{Core, Main, Parts, Shared};

/// Stack of a loop thread: it runs parsers, JSON and TLS, never deep recursion.
const LOOP_STACK: usize = 512 * 1024;

/// The event-loop threads.
pub(crate) struct Runtime {
    loops: Vec<LoopHandle>,
    threads: Vec<JoinHandle<()>>,
}

/// One loop, as other threads reach it.
#[derive(Clone)]
pub(crate) struct LoopHandle {
    shared: Arc<Shared>,
}

impl LoopHandle {
    /// Runs `job` on the loop's thread (usually to spawn a task there).
    pub(crate) fn send(&self, job: Job) {
        self.shared.send(job);
    }
}

impl Runtime {
    /// Starts `n` loop threads (at least one), named `name` + their number.
    pub(crate) fn start(n: usize, name: &str) -> io::Result<Runtime> {
        let mut runtime = Runtime {
            loops: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..n.max(1) {
            let parts = Parts::new()?;
            let handle = LoopHandle {
                shared: Arc::clone(&parts.shared),
            };
            let thread = thread::Builder::new()
                .name(format!("{name}{i}"))
                .stack_size(LOOP_STACK)
                .spawn(move || run_loop(parts));
            match thread {
                Ok(t) => {
                    runtime.loops.push(handle);
                    runtime.threads.push(t);
                }
                Err(e) => {
                    runtime.stop();
                    return Err(e);
                }
            }
        }
        Ok(runtime)
    }

    pub(crate) fn loops(&self) -> &[LoopHandle] {
        &self.loops
    }

    /// Ends every loop (their tasks are dropped: sockets closed) and waits for the threads.
    pub(crate) fn stop(&mut self) {
        for l in &self.loops {
            l.shared.stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Ends every loop and waits for the threads until `deadline`; true when all ended
    /// (the others are left to end on their own).
    pub(crate) fn stop_within(&mut self, deadline: std::time::Instant) -> bool {
        for l in &self.loops {
            l.shared.stop();
        }
        while self.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline
        {
            thread::sleep(std::time::Duration::from_millis(2));
        }
        let mut all = true;
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            } else {
                all = false;
            }
        }
        all
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_loop(mut parts: Parts) {
    let core = match Core::install(&parts) {
        Ok(core) => core,
        Err(e) => {
            log::error!(error:% = e; "an event loop could not start");
            return;
        }
    };
    if let Err(e) = core.run(&mut parts.poll, None) {
        log::error!(error:% = e; "an event loop failed");
    }
    drop(core);
    Core::uninstall();
}

/// Starts a task on this thread's event loop. Outside a loop (a bug) the task is dropped
/// and an error logged.
pub(crate) fn spawn(future: impl Future<Output = ()> + 'static) {
    match Core::current() {
        Some(core) => core.spawn(future),
        None => log::error!("a task was started outside an event loop and dropped"),
    }
}

struct MainWaker {
    woken: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        // From another thread: the loop may sleep in its poll.
        self.shared.send(Box::new(|| {}));
    }
}

struct MainFuture<'a, F: Future> {
    future: std::pin::Pin<&'a mut F>,
    waker: Arc<MainWaker>,
    output: Option<F::Output>,
}

impl<F: Future> Main for MainFuture<'_, F> {
    fn woken(&self) -> bool {
        self.waker.woken.load(Ordering::SeqCst)
    }

    fn poll(&mut self) -> bool {
        self.waker.woken.store(false, Ordering::SeqCst);
        let waker = Waker::from(Arc::clone(&self.waker));
        let mut cx = Context::from_waker(&waker);
        match self.future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => {
                self.output = Some(v);
                true
            }
            Poll::Pending => false,
        }
    }
}

/// Runs `future` to its end on this thread, with tasks it spawns, on a loop of this thread
/// (made the first time and kept, so that pooled connections are reused by the next call).
/// Never call it on a loop thread: it would stop that loop's other tasks.
pub(crate) fn block_on<F: Future>(future: F) -> io::Result<F::Output> {
    let (core, poll) = Core::current_or_new()?;
    let Some(mut poll) = poll.or_else(|| POLL.with(|p| p.borrow_mut().take())) else {
        return Err(io::Error::other("block_on inside a running event loop"));
    };
    let future = pin!(future);
    let mut main = MainFuture {
        future,
        waker: Arc::new(MainWaker {
            woken: AtomicBool::new(true),
            shared: Arc::clone(&core.shared),
        }),
        output: None,
    };
    let ran = core.run(&mut poll, Some(&mut main));
    POLL.with(|p| *p.borrow_mut() = Some(poll));
    ran?;
    main.output
        .ok_or_else(|| io::Error::other("the event loop stopped before the future ended"))
}

thread_local! {
    /// The poll of this thread's `block_on` loop between calls.
    static POLL: std::cell::RefCell<Option<mio::Poll>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
mod tests;
