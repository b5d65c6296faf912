//! One event loop: the tasks of one thread, the mio poll that tells which of their sockets
//! are ready, and their timers.
//!
//! Tasks are futures that stay on the thread that started them (they need not be `Send`).
//! A task's waker puts it back in the ready queue: directly when woken on its own thread
//! (the usual case: a socket event or a timer handled by the loop), else through the loop's
//! remote queue and, when the loop sleeps, its mio waker.
//!
//! Sockets are registered edge-triggered for both directions at once and remember whether
//! the last event said ready, so that a read that found less than it asked for (or nothing)
//! sends the task to sleep without another system call, and the next edge wakes it.
//!
//! Timers are kept in a sorted map keyed by deadline and a sequence number, so that a timer
//! dropped before it fires (a deadline that was met) leaves nothing behind.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::{Events, Interest, Token};

use super::slab::Slab;
use crate::util::lock;

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;
/// Work handed to a loop from another thread; it runs on the loop (usually to spawn a task).
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// The token of the loop's own mio waker.
const WAKER: Token = Token(usize::MAX);
/// Tasks polled in a row before the loop looks at its sockets again.
const BATCH: usize = 512;
/// Socket events taken from the kernel at once.
const EVENTS: usize = 512;

thread_local! {
    /// The loop running on this thread, if any.
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

/// The part of a loop that other threads reach: its remote queue and its waker.
pub(crate) struct Shared {
    waker: mio::Waker,
    remote: Mutex<Remote>,
    /// Set while the loop is about to block in (or blocks in) the poll.
    sleeping: AtomicBool,
    /// The loop should end (see [`Core::run`]).
    pub(crate) stopping: AtomicBool,
}

#[derive(Default)]
struct Remote {
    wakes: Vec<TaskRef>,
    jobs: Vec<Job>,
}

impl Shared {
    /// Runs `job` on the loop's thread, soon.
    pub(crate) fn send(&self, job: Job) {
        lock(&self.remote).jobs.push(job);
        self.nudge();
    }

    /// Wakes the loop if it sleeps (or is about to).
    fn nudge(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }

    /// Tells the loop to end and wakes it.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// A task's identity: its slot and the generation of what lives there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TaskRef {
    index: usize,
    generation: u64,
}

struct TaskWaker {
    shared: Arc<Shared>,
    task: TaskRef,
    /// In the ready queue (or about to be): another wake adds nothing.
    queued: AtomicBool,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let here = CURRENT
            .try_with(|c| match &*c.borrow() {
                Some(core) if Arc::ptr_eq(&core.shared, &self.shared) => {
                    core.ready.borrow_mut().push_back(self.task);
                    true
                }
                _ => false,
            })
            .unwrap_or(false);
        if !here {
            lock(&self.shared.remote).wakes.push(self.task);
            self.shared.nudge();
        }
    }
}

struct TaskSlot {
    future: Option<LocalFuture>,
    waker: Arc<TaskWaker>,
    generation: u64,
}

/// What the loop knows of one registered socket.
#[derive(Default)]
struct IoSlot {
    readable: bool,
    writable: bool,
    /// The peer's end of data (or an error) has been seen: final, never cleared, so that a
    /// read that takes the last bytes and leaves the end for the next call does not wait
    /// for an event that will not come again.
    read_closed: bool,
    write_closed: bool,
    read: Option<Waker>,
    write: Option<Waker>,
}

/// A direction of readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    Read,
    Write,
}

/// A future that [`Core::run`] drives outside the task list (the one `block_on` waits for).
pub(crate) trait Main {
    /// It was woken since it was last polled.
    fn woken(&self) -> bool;
    /// Polls it; true when it is done.
    fn poll(&mut self) -> bool;
}

static LOOPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One loop's state, on its thread.
pub(crate) struct Core {
    /// Unique in the process: sockets and timers name their loop by it.
    pub(crate) id: u64,
    pub(crate) shared: Arc<Shared>,
    registry: mio::Registry,
    tasks: RefCell<Slab<TaskSlot>>,
    ready: RefCell<VecDeque<TaskRef>>,
    next_generation: Cell<u64>,
    io: RefCell<Slab<IoSlot>>,
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next_timer: Cell<u64>,
}

/// A loop before it runs: its poll (which moves to the loop's thread) and the shared part.
pub(crate) struct Parts {
    pub(crate) poll: mio::Poll,
    pub(crate) shared: Arc<Shared>,
}

impl Parts {
    pub(crate) fn new() -> io::Result<Parts> {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        Ok(Parts {
            poll,
            shared: Arc::new(Shared {
                waker,
                remote: Mutex::new(Remote::default()),
                sleeping: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
            }),
        })
    }
}

impl Core {
    /// The loop running on this thread.
    pub(crate) fn current() -> Option<Rc<Core>> {
        CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
    }

    /// Runs `f` with this thread's loop if it is loop `id`; `None` on any other thread.
    pub(crate) fn with<R>(id: u64, f: impl FnOnce(&Core) -> R) -> Option<R> {
        CURRENT
            .try_with(|c| c.borrow().as_deref().filter(|core| core.id == id).map(f))
            .ok()
            .flatten()
    }

    /// The id of this thread's loop, if it has one.
    pub(crate) fn current_id() -> Option<u64> {
        CURRENT
            .try_with(|c| c.borrow().as_ref().map(|core| core.id))
            .ok()
            .flatten()
    }

    /// The loop of this thread, made now (and kept for the thread) when there is none: for
    /// [`super::block_on`] on threads that are not event loops.
    pub(crate) fn current_or_new() -> io::Result<(Rc<Core>, Option<mio::Poll>)> {
        if let Some(core) = Core::current() {
            return Ok((core, None));
        }
        let parts = Parts::new()?;
        let core = Core::install(&parts)?;
        Ok((core, Some(parts.poll)))
    }

    /// Makes the loop of `parts` this thread's current one.
    pub(crate) fn install(parts: &Parts) -> io::Result<Rc<Core>> {
        let core = Rc::new(Core {
            id: LOOPS.fetch_add(1, Ordering::Relaxed),
            shared: Arc::clone(&parts.shared),
            registry: parts.poll.registry().try_clone()?,
            tasks: RefCell::new(Slab::default()),
            ready: RefCell::new(VecDeque::new()),
            next_generation: Cell::new(0),
            io: RefCell::new(Slab::default()),
            timers: RefCell::new(BTreeMap::new()),
            next_timer: Cell::new(0),
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(Rc::clone(&core)));
        Ok(core)
    }

    /// Forgets this thread's loop (its tasks are dropped).
    pub(crate) fn uninstall() {
        let core = CURRENT.try_with(|c| c.borrow_mut().take()).ok().flatten();
        if let Some(core) = core {
            core.drop_tasks();
        }
    }

    /// Starts a task on this loop.
    pub(crate) fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        let generation = self.next_generation.get();
        self.next_generation.set(generation + 1);
        let mut tasks = self.tasks.borrow_mut();
        let task = TaskRef {
            index: tasks.next_index(),
            generation,
        };
        let waker = Arc::new(TaskWaker {
            shared: Arc::clone(&self.shared),
            task,
            queued: AtomicBool::new(true),
        });
        tasks.insert(TaskSlot {
            future: Some(Box::pin(future)),
            waker,
            generation,
        });
        drop(tasks);
        self.ready.borrow_mut().push_back(task);
    }

    /// Tasks alive on this loop.
    #[cfg(test)]
    pub(crate) fn task_count(&self) -> usize {
        self.tasks.borrow().len()
    }

    fn run_task(&self, task: TaskRef) {
        let (mut future, waker) = {
            let mut tasks = self.tasks.borrow_mut();
            let Some(slot) = tasks.get_mut(task.index) else {
                return;
            };
            if slot.generation != task.generation {
                return;
            }
            let Some(future) = slot.future.take() else {
                return;
            };
            (future, Arc::clone(&slot.waker))
        };
        waker.queued.store(false, Ordering::Release);
        let waker = Waker::from(waker);
        let mut cx = Context::from_waker(&waker);
        let polled = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
        match polled {
            Ok(Poll::Pending) => {
                if let Some(slot) = self.tasks.borrow_mut().get_mut(task.index) {
                    slot.future = Some(future);
                }
            }
            Ok(Poll::Ready(())) => self.end_task(task, future),
            Err(_) => {
                log::error!("a task panicked; it was ended (its connection closed)");
                self.end_task(task, future);
            }
        }
    }

    fn end_task(&self, task: TaskRef, future: LocalFuture) {
        let slot = self.tasks.borrow_mut().remove(task.index);
        // Dropped outside the borrow: a future's drop deregisters sockets and timers.
        drop(slot);
        drop(future);
    }

    fn drop_tasks(&self) {
        let tasks = self.tasks.borrow_mut().drain();
        drop(tasks);
        self.ready.borrow_mut().clear();
    }

    /// Moves what other threads queued into this loop: wakes and jobs.
    fn take_remote(&self) {
        let remote = std::mem::take(&mut *lock(&self.shared.remote));
        self.ready.borrow_mut().extend(remote.wakes);
        for job in remote.jobs {
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                log::error!("a job handed to an event loop panicked");
            }
        }
    }

    fn remote_pending(&self) -> bool {
        let remote = lock(&self.shared.remote);
        !remote.wakes.is_empty() || !remote.jobs.is_empty()
    }

    /// Polls ready tasks (at most a batch); true when some are left.
    fn run_ready(&self) -> bool {
        for _ in 0..BATCH {
            let next = self.ready.borrow_mut().pop_front();
            match next {
                Some(task) => self.run_task(task),
                None => return false,
            }
        }
        !self.ready.borrow().is_empty()
    }

    /// Runs the loop until it is told to stop, or — with a `main` future (see
    /// [`super::block_on`]) — until that one is done.
    pub(crate) fn run(
        &self,
        poll: &mut mio::Poll,
        mut main: Option<&mut dyn Main>,
    ) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            self.take_remote();
            if let Some(main) = main.as_mut()
                && main.woken()
                && main.poll()
            {
                return Ok(());
            }
            let more = self.run_ready();
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut timeout = if more {
                Some(Duration::ZERO)
            } else {
                self.next_timeout()
            };
            // Announced before the last look at what other threads queued: a wake sent
            // after this look finds the flag and wakes the poll.
            self.shared.sleeping.store(true, Ordering::SeqCst);
            if self.remote_pending() || main.as_ref().is_some_and(|m| m.woken()) {
                timeout = Some(Duration::ZERO);
            }
            let polled = poll.poll(&mut events, timeout);
            self.shared.sleeping.store(false, Ordering::SeqCst);
            match polled {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                self.dispatch(event);
            }
            self.fire_timers(Instant::now());
        }
    }

    fn dispatch(&self, event: &mio::event::Event) {
        let (r, w) = {
            let mut io = self.io.borrow_mut();
            let Some(slot) = io.get_mut(event.token().0) else {
                return;
            };
            let mut wakers = (None, None);
            slot.read_closed |= event.is_read_closed() || event.is_error();
            slot.write_closed |= event.is_write_closed() || event.is_error();
            if event.is_readable() || slot.read_closed {
                slot.readable = true;
                wakers.0 = slot.read.take();
            }
            if event.is_writable() || slot.write_closed {
                slot.writable = true;
                wakers.1 = slot.write.take();
            }
            wakers
        };
        if let Some(r) = r {
            r.wake();
        }
        if let Some(w) = w {
            w.wake();
        }
    }

    // Sockets.

    /// Registers `source` for both directions, ready in both until told otherwise.
    pub(crate) fn register<S: Source + ?Sized>(&self, source: &mut S) -> io::Result<usize> {
        let token = self.io.borrow_mut().insert(IoSlot {
            readable: true,
            writable: true,
            ..IoSlot::default()
        });
        let registered = self.registry.register(
            source,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = registered {
            self.io.borrow_mut().remove(token);
            return Err(e);
        }
        Ok(token)
    }

    /// Ends a registration (before the socket closes).
    pub(crate) fn deregister<S: Source + ?Sized>(&self, source: &mut S, token: usize) {
        let _ = self.registry.deregister(source);
        let slot = self.io.borrow_mut().remove(token);
        drop(slot);
    }

    /// Whether the socket was last seen ready in `dir`; if not, the task is woken when it is.
    pub(crate) fn poll_ready(&self, token: usize, dir: Ready, cx: &mut Context<'_>) -> Poll<()> {
        let mut io = self.io.borrow_mut();
        let Some(slot) = io.get_mut(token) else {
            // Not registered (cannot happen while the socket lives): let the call fail.
            return Poll::Ready(());
        };
        let (flag, waker) = match dir {
            Ready::Read => (slot.readable || slot.read_closed, &mut slot.read),
            Ready::Write => (slot.writable || slot.write_closed, &mut slot.write),
        };
        if flag {
            return Poll::Ready(());
        }
        match waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Whether the socket was last seen ready in `dir` (no waker is kept).
    pub(crate) fn is_ready(&self, token: usize, dir: Ready) -> bool {
        self.io.borrow().get(token).is_some_and(|slot| match dir {
            Ready::Read => slot.readable || slot.read_closed,
            Ready::Write => slot.writable || slot.write_closed,
        })
    }

    /// The socket is not ready in `dir` any more (a call would block): the next event says
    /// when it is.
    pub(crate) fn clear_ready(&self, token: usize, dir: Ready) {
        if let Some(slot) = self.io.borrow_mut().get_mut(token) {
            match dir {
                Ready::Read => slot.readable = false,
                Ready::Write => slot.writable = false,
            }
        }
    }

    // Timers.

    /// Wakes `waker` at `at`; the key removes or changes the timer.
    pub(crate) fn add_timer(&self, at: Instant, waker: Waker) -> (Instant, u64) {
        let seq = self.next_timer.get();
        self.next_timer.set(seq + 1);
        self.timers.borrow_mut().insert((at, seq), waker);
        (at, seq)
    }

    /// Replaces the waker of a timer still pending; false when it has fired.
    pub(crate) fn renew_timer(&self, key: (Instant, u64), waker: &Waker) -> bool {
        match self.timers.borrow_mut().get_mut(&key) {
            Some(w) => {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
                true
            }
            None => false,
        }
    }

    pub(crate) fn remove_timer(&self, key: (Instant, u64)) {
        let removed = self.timers.borrow_mut().remove(&key);
        drop(removed);
    }

    fn next_timeout(&self) -> Option<Duration> {
        let timers = self.timers.borrow();
        let (at, _) = timers.keys().next()?;
        // Rounded up to the next millisecond, so that the poll does not return just before
        // the deadline and spin until it.
        let left = at.saturating_duration_since(Instant::now());
        Some(Duration::from_millis(left.as_micros().div_ceil(1000) as u64))
    }

    fn fire_timers(&self, now: Instant) {
        loop {
            let due = {
                let mut timers = self.timers.borrow_mut();
                match timers.first_key_value() {
                    Some((&(at, _), _)) if at <= now => timers.pop_first().map(|(_, w)| w),
                    _ => None,
                }
            };
            match due {
                Some(w) => w.wake(),
                None => return,
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn timer_count(&self) -> usize {
        self.timers.borrow().len()
    }

    #[cfg(test)]
    pub(crate) fn io_count(&self) -> usize {
        self.io.borrow().len()
    }
}
