//! Listeners, accept threads, the worker pool, and shutdown.
//!
//! An accept thread per listening socket judges each peer against the allow list first: a
//! refused peer gets its 403 on one of a few refusal threads (`limits.refusing`, each done
//! within `conn::REFUSAL_TIME`) or is closed at once when they are all busy, and never
//! takes a connection slot. An allowed peer is admitted up to `limits.per_ip` connections
//! from its address and `limits.connections` in all, and gets its own thread
//! ([`super::conn`]). Parsed requests go through one bounded
//! channel to a fixed pool of workers, which call the [`Handler`] (a panic becomes a 500),
//! write the response and hand the connection back for keep-alive.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::budget::{BodyBudget, PerIp};
use super::conn::{self, Job, ListenerCtx};
use super::shared::{Shared, Slot, Tracked};
use super::worker::Pool;
use super::{Handler, ServerConfig, Stats};
use crate::util::lock;

/// Stack of a connection thread: it parses and does TLS, nothing deep.
const CONN_STACK: usize = 256 * 1024;
/// How long shutdown waits, after the grace, for threads it has forced to end.
const FORCE_WAIT: Duration = Duration::from_secs(2);
/// Accept errors (out of descriptors...) back off from the first to the last step.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_LAST: Duration = Duration::from_millis(500);
/// At most one warning per kind of trouble in this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

static SERVERS: AtomicU64 = AtomicU64::new(0);

/// A running server.
pub struct Server {
    addrs: Vec<SocketAddr>,
    stats: Arc<Stats>,
    shared: Arc<Shared>,
    listeners: Vec<Arc<TcpListener>>,
    accept_threads: Vec<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    stopped: bool,
}

/// Binds every listener (dual-stack when the address is `[::]`), starts the accept threads
/// and the worker pool, and returns at once. A port that cannot be bound is an error here,
/// not later.
pub fn start(config: ServerConfig, handler: Arc<dyn Handler>) -> io::Result<Server> {
    let prefix = format!("sr{}-", SERVERS.fetch_add(1, Ordering::Relaxed));
    let mut bound = Vec::new();
    for l in &config.listeners {
        let listener = bind(l.addr)?;
        bound.push((Arc::new(listener), l));
    }
    let stats = Arc::clone(&config.stats);
    let workers = config.workers.max(1);
    stats.workers_total.store(workers, Ordering::Relaxed);
    stats.queue_capacity.store(config.queue, Ordering::Relaxed);
    let mut limits = config.limits.clone();
    // A body that could never fit the budget is simply too large.
    limits.body_bytes = limits.body_bytes.min(limits.body_total);
    let (jobs, queue) = crossbeam_channel::bounded::<Job>(config.queue);
    let shared = Arc::new_cyclic(|me| Shared {
        pool: Box::new(Pool::new(queue, workers, me.clone())),
        handler,
        per_ip: PerIp::new(limits.per_ip),
        bodies: BodyBudget::new(limits.body_total),
        refusing: AtomicUsize::new(0),
        limits,
        timeouts: config.timeouts.clone(),
        stats: Arc::clone(&stats),
        stopping: AtomicBool::new(false),
        prefix,
        next_id: AtomicU64::new(0),
        open: Mutex::new(HashMap::new()),
        queued: AtomicU64::new(0),
        taken: AtomicU64::new(0),
    });
    let mut server = Server {
        addrs: Vec::new(),
        stats,
        shared: Arc::clone(&shared),
        listeners: Vec::new(),
        accept_threads: Vec::new(),
        workers: Vec::new(),
        stopped: false,
    };
    // On an error below, dropping `server` (and `jobs`) stops what was started.
    shared.pool.start()?;
    for (i, (listener, l)) in bound.into_iter().enumerate() {
        let addr = listener.local_addr()?;
        let ctx = ListenerCtx {
            allow: l.allow.clone(),
            tls: l.tls.clone(),
            port: addr.port(),
        };
        let (shared, jobs, accepting) = (Arc::clone(&shared), jobs.clone(), Arc::clone(&listener));
        let handle = thread::Builder::new()
            .name(format!("{}a{i}", shared.prefix))
            .spawn(move || accept_loop(&shared, &accepting, &Arc::new(ctx), &jobs))?;
        server.addrs.push(addr);
        server.listeners.push(listener);
        server.accept_threads.push(handle);
    }
    Ok(server)
}

/// A listening socket with SO_REUSEADDR and a backlog of 1024; `[::]` is dual-stack, and
/// falls back to `0.0.0.0` on a machine without IPv6.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    match bind_one(addr) {
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && no_ipv6(&e) => {
            log::warn!(error:% = e; "IPv6 unavailable; listening on IPv4 only");
            bind_one(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                addr.port(),
            ))
        }
        r => r,
    }
}

fn no_ipv6(e: &io::Error) -> bool {
    // EAFNOSUPPORT and EADDRNOTAVAIL (Linux numbers; the kind covers the second elsewhere).
    e.kind() == io::ErrorKind::AddrNotAvailable
        || (cfg!(target_os = "linux") && matches!(e.raw_os_error(), Some(97 | 99)))
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Logs one kind of recurring trouble at most once per [`WARN_EVERY`], with how many times it
/// happened in between.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    since: u64,
}

impl Throttle {
    /// `detail` is the error, or the limit that was reached.
    fn warn(&mut self, what: &'static str, detail: &dyn std::fmt::Display) {
        self.since += 1;
        if self.last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            log::warn!(detail:% = detail, times = self.since; "{what}");
            self.last = Some(Instant::now());
            self.since = 0;
        }
    }
}

/// The warnings of one accept loop, each at most once per [`WARN_EVERY`].
#[derive(Default)]
struct Warnings {
    accept: Throttle,
    spawn: Throttle,
    full: Throttle,
    per_ip: Throttle,
    refused: Throttle,
}

fn accept_loop(
    shared: &Arc<Shared>,
    listener: &TcpListener,
    ctx: &Arc<ListenerCtx>,
    jobs: &Sender<Job>,
) {
    let mut backoff = Duration::ZERO;
    let mut warn = Warnings::default();
    loop {
        let accepted = listener.accept();
        if shared.is_stopping() {
            return;
        }
        match accepted {
            Ok((tcp, addr)) => {
                backoff = Duration::ZERO;
                let peer = addr.ip().to_canonical();
                // Judged here, on the accept thread, before anything is read or counted.
                if !ctx.allow.allows(peer) {
                    refuse(shared, ctx, tcp, peer);
                    let last = format_args!("{peer} on port {}", ctx.port);
                    warn.refused.warn("ip_not_allowed: refused clients", &last);
                    continue;
                }
                match admit(shared, ctx, jobs, tcp, peer) {
                    Ok(()) => {}
                    Err(Refused::Full) => warn.full.warn(
                        "connection limit reached; new connections are closed",
                        &shared.limits.connections,
                    ),
                    Err(Refused::PerIp) => warn.per_ip.warn(
                        "connection limit per address reached; its new connections are closed",
                        &peer,
                    ),
                    Err(Refused::Spawn(e)) => {
                        warn.spawn.warn("cannot start a connection thread", &e)
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors or buffers, or an aborted handshake: the listener is
                // fine; wait for resources to come back instead of spinning.
                warn.accept.warn("accept failed; backing off", &e);
                backoff = (backoff * 2).clamp(BACKOFF_FIRST, BACKOFF_LAST);
                thread::sleep(backoff);
            }
        }
    }
}

/// Why a connection was closed at once.
enum Refused {
    Full,
    PerIp,
    Spawn(io::Error),
}

/// A refused peer: its 403 on a refusal thread when one is free, else closed at once.
fn refuse(shared: &Arc<Shared>, ctx: &Arc<ListenerCtx>, tcp: TcpStream, peer: IpAddr) {
    let cap = shared.limits.refusing;
    let counted = shared
        .refusing
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cap).then_some(n + 1)
        });
    if counted.is_err() {
        // Dropped: closed without a word.
        return;
    }
    let (shared, ctx) = (Arc::clone(shared), Arc::clone(ctx));
    let spawned = thread::Builder::new()
        .name(format!("{}r", shared.prefix))
        .stack_size(CONN_STACK)
        .spawn({
            let shared = Arc::clone(&shared);
            move || {
                conn::refuse_peer(&shared, &ctx, tcp, peer);
                shared.refusing.fetch_sub(1, Ordering::AcqRel);
            }
        });
    if spawned.is_err() {
        shared.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts the connection (for its address and in all) and starts its thread, or closes it
/// at once.
fn admit(
    shared: &Arc<Shared>,
    ctx: &Arc<ListenerCtx>,
    jobs: &Sender<Job>,
    tcp: TcpStream,
    peer: IpAddr,
) -> Result<(), Refused> {
    if !shared.per_ip.try_add(peer) {
        return Err(Refused::PerIp);
    }
    let cap = shared.limits.connections;
    let counted =
        shared
            .stats
            .connections_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            });
    if counted.is_err() {
        shared.per_ip.remove(peer);
        return Err(Refused::Full);
    }
    let _ = tcp.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&shared.open).insert(
        id,
        Tracked {
            sock: None,
            hangup: None,
            waiting: Arc::new(AtomicBool::new(true)),
        },
    );
    let slot = Slot {
        shared: Arc::clone(shared),
        id,
        peer,
    };
    let (ctx, jobs) = (Arc::clone(ctx), jobs.clone());
    // On failure the closure, its slot and the socket are dropped: uncounted and closed.
    thread::Builder::new()
        .name(format!("{}c", shared.prefix))
        .stack_size(CONN_STACK)
        .spawn(move || {
            let slot = slot;
            conn::run(&slot.shared, &ctx, tcp, peer, slot.id, &jobs);
        })
        .map(drop)
        .map_err(Refused::Spawn)
}

impl Server {
    /// The bound addresses, in the order of `config.listeners` (real ports when 0 was asked).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The prefix of the names of every thread this server runs (`sr7-`), so that a test or
    /// a tool can find them in `/proc/self/task/*/comm`.
    pub fn thread_prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Stops accepting, closes idle connections, lets requests in flight (streams included)
    /// finish for up to `grace`, then closes the rest. Returns whether everything finished in
    /// time. Every thread the server started has ended or is ending when it returns.
    pub fn shutdown(mut self, grace: Duration) -> bool {
        self.stop(grace)
    }

    fn stop(&mut self, grace: Duration) -> bool {
        if self.stopped {
            return true;
        }
        self.stopped = true;
        let deadline = Instant::now() + grace;
        self.shared.stopping.store(true, Ordering::SeqCst);
        for l in &self.listeners {
            wake(l);
        }
        let accepting_done = join_until(&mut self.accept_threads, Instant::now() + FORCE_WAIT);
        self.listeners.clear();
        // Connections waiting for a request end now; answers in flight go out with
        // `Connection: close`, after which their threads end.
        self.shared.wake_waiting();
        let conns_open = || self.stats.connections_open.load(Ordering::Acquire) > 0;
        let in_time = wait_while(deadline, conns_open);
        if !in_time {
            self.shared.force_close();
            wait_while(Instant::now() + FORCE_WAIT, conns_open);
        }
        // Refusal threads are done within a couple of seconds, even while stopping.
        wait_while(Instant::now() + FORCE_WAIT, || {
            self.shared.refusing.load(Ordering::Acquire) > 0
        });
        // Every sender is gone with the accept and connection threads: workers end.
        self.workers.extend(self.shared.pool.take_handles());
        let workers_done = join_until(&mut self.workers, Instant::now() + FORCE_WAIT);
        in_time && accepting_done && workers_done
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// Unblocks an accept thread: a shutdown of the listening socket (Linux wakes a blocked
/// `accept` with an error), and a connection to it in case the platform does not.
fn wake(listener: &TcpListener) {
    let _ = SockRef::from(listener).shutdown(Shutdown::Read);
    if let Ok(addr) = listener.local_addr() {
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let _ = TcpStream::connect_timeout(
            &SocketAddr::new(ip, addr.port()),
            Duration::from_millis(200),
        );
    }
}

/// Polls `busy` until it is false or `deadline` passes; true when it became false.
fn wait_while(deadline: Instant, busy: impl Fn() -> bool) -> bool {
    loop {
        if !busy() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Joins the threads that end by `deadline`; the others are left to end on their own.
/// True when all were joined.
fn join_until(handles: &mut Vec<JoinHandle<()>>, deadline: Instant) -> bool {
    wait_while(deadline, || handles.iter().any(|h| !h.is_finished()));
    let mut all = true;
    for h in handles.drain(..) {
        if h.is_finished() {
            let _ = h.join();
        } else {
            all = false;
        }
    }
    all
}
