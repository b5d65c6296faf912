//! Listeners, accept threads, the event loops and the worker threads, and shutdown.
//!
//! An accept thread per listening socket judges each peer against the allow list first: a
//! refused peer gets its 403 from a task of its own (`limits.refusing` at once, each done
//! within `conn::REFUSAL_TIME`) or is closed at once when they are all busy, and never
//! takes a connection slot. An allowed peer is admitted up to `limits.per_ip` connections
//! from its address and `limits.connections` in all, and handed to the event loop with the
//! fewest connections, where a task serves it ([`super::conn`]). Handlers that block run on
//! worker threads, started as requests need them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::budget::{BodyBudget, PerIp};
use super::conn::{self, ListenerCtx, Refusing};
use super::gate::Gate;
use super::shared::{self as shared_mod, Shared, Slot};
use super::{Handler, ServerConfig, Stats};
use crate::rt::blocking::Pool;
use crate::rt::{LoopHandle, Runtime};
use crate::util::Throttle;

/// Worker threads started with the server; the others start as requests need them.
const INITIAL_WORKERS: usize = 4;
/// Event loops at most, whatever the number of cores.
const MAX_LOOPS: usize = 8;
/// How long shutdown waits, after the grace, for what it has forced to end.
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
    runtime: Option<Runtime>,
    stopped: bool,
    /// Set from another thread, it ends a shutdown's grace at once (a second SIGTERM).
    cut_short: Arc<AtomicBool>,
}

/// One event loop per core (at most [`MAX_LOOPS`]).
fn loops_wanted() -> usize {
    thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_LOOPS)
}

/// Binds every listener (dual-stack when the address is `[::]`), starts the event loops,
/// the first worker threads and the accept threads, and returns at once. A port that cannot
/// be bound is an error here, not later.
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
    let runtime = Runtime::start(loops_wanted(), &format!("{prefix}l"))?;
    stats.loops.store(runtime.loops().len(), Ordering::Relaxed);
    let counted = Arc::clone(&stats);
    let pool = Pool::with_stack(
        &format!("{prefix}w"),
        workers,
        INITIAL_WORKERS.min(workers),
        config.timeouts.worker_idle,
        0,
    )
    .counting(Box::new(move |n| {
        counted.workers_started.store(n, Ordering::Release);
    }));
    let shared = Arc::new(Shared {
        handler,
        per_ip: PerIp::new(limits.per_ip),
        bodies: BodyBudget::new(limits.body_total),
        refusing: AtomicUsize::new(0),
        limits,
        timeouts: config.timeouts.clone(),
        gate: Gate::new(workers, config.queue, Arc::clone(&stats)),
        workers: pool,
        loads: runtime
            .loops()
            .iter()
            .map(|_| AtomicUsize::new(0))
            .collect(),
        stats: Arc::clone(&stats),
        stopping: AtomicBool::new(false),
        prefix,
    });
    let mut server = Server {
        addrs: Vec::new(),
        stats,
        shared: Arc::clone(&shared),
        listeners: Vec::new(),
        accept_threads: Vec::new(),
        runtime: Some(runtime),
        stopped: false,
        cut_short: Arc::new(AtomicBool::new(false)),
    };
    // On an error below, dropping `server` stops what was started.
    shared.workers.start_kept()?;
    let loops: Arc<[LoopHandle]> = server
        .runtime
        .as_ref()
        .map(|r| r.loops().to_vec())
        .unwrap_or_default()
        .into();
    for (i, (listener, l)) in bound.into_iter().enumerate() {
        let addr = listener.local_addr()?;
        let ctx = ListenerCtx {
            allow: l.allow.clone(),
            tls: l.tls.clone(),
            port: addr.port(),
        };
        let (shared, accepting, loops) = (
            Arc::clone(&shared),
            Arc::clone(&listener),
            Arc::clone(&loops),
        );
        let handle = thread::Builder::new()
            .name(format!("{}a{i}", shared.prefix))
            .spawn(move || accept_loop(&shared, &accepting, &Arc::new(ctx), &loops))?;
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

/// The warnings of one accept loop, each at most once per [`WARN_EVERY`].
struct Warnings {
    accept: Throttle,
    spawn: Throttle,
    full: Throttle,
    per_ip: Throttle,
    refused: Throttle,
}

impl Default for Warnings {
    fn default() -> Warnings {
        Warnings {
            accept: Throttle::every(WARN_EVERY),
            spawn: Throttle::every(WARN_EVERY),
            full: Throttle::every(WARN_EVERY),
            per_ip: Throttle::every(WARN_EVERY),
            refused: Throttle::every(WARN_EVERY),
        }
    }
}

fn accept_loop(
    shared: &Arc<Shared>,
    listener: &TcpListener,
    ctx: &Arc<ListenerCtx>,
    loops: &[LoopHandle],
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
                    refuse(shared, ctx, loops, tcp, peer);
                    let last = format_args!("{peer} on port {}", ctx.port);
                    warn.refused.warn("ip_not_allowed: refused clients", &last);
                    continue;
                }
                match admit(shared, ctx, loops, tcp, peer) {
                    Ok(()) => {}
                    Err(Refused::Full) => warn.full.warn(
                        "connection limit reached; new connections are closed",
                        &shared.limits.connections,
                    ),
                    Err(Refused::PerIp) => warn.per_ip.warn(
                        "connection limit per address reached; its new connections are closed",
                        &peer,
                    ),
                    Err(Refused::Setup(e)) => warn.spawn.warn("cannot set a new connection up", &e),
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
    Setup(io::Error),
}

/// The loop with the fewest connections (the first of equals).
fn least_busy(shared: &Shared) -> usize {
    shared
        .loads
        .iter()
        .enumerate()
        .min_by_key(|(_, n)| n.load(Ordering::Acquire))
        .map_or(0, |(i, _)| i)
}

/// A refused peer: its 403 from a task of its own when the refusals allow one more, else
/// closed at once.
fn refuse(
    shared: &Arc<Shared>,
    ctx: &Arc<ListenerCtx>,
    loops: &[LoopHandle],
    tcp: TcpStream,
    peer: IpAddr,
) {
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
    let counted = Refusing(Arc::clone(shared));
    let Some(on) = loops.get(least_busy(shared)) else {
        return;
    };
    let ctx = Arc::clone(ctx);
    on.send(Box::new(
        move || match crate::rt::net::TcpStream::from_std(tcp) {
            Ok(tcp) => crate::rt::spawn(conn::refuse_peer(counted, ctx, tcp, peer)),
            Err(e) => log::debug!(error:% = e; "a refused peer's socket could not be set up"),
        },
    ));
}

/// Counts the connection (for its address, its loop and in all) and hands it to its loop,
/// or closes it at once.
fn admit(
    shared: &Arc<Shared>,
    ctx: &Arc<ListenerCtx>,
    loops: &[LoopHandle],
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
    let on = least_busy(shared);
    if let Some(load) = shared.loads.get(on) {
        load.fetch_add(1, Ordering::AcqRel);
    }
    // From here the slot uncounts the connection however it ends.
    let slot = Slot {
        shared: Arc::clone(shared),
        peer,
        on,
    };
    if let Err(e) = tcp.set_nodelay(true) {
        return Err(Refused::Setup(e));
    }
    let Some(home) = loops.get(on) else {
        return Err(Refused::Setup(io::Error::other("no event loop")));
    };
    let ctx = Arc::clone(ctx);
    home.send(Box::new(
        move || match crate::rt::net::TcpStream::from_std(tcp) {
            Ok(tcp) => crate::rt::spawn(conn::serve(ctx, tcp, slot)),
            Err(e) => log::warn!(error:% = e; "a new connection could not be set up"),
        },
    ));
    Ok(())
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

    /// The event-loop threads.
    pub fn loops(&self) -> usize {
        self.stats.loops.load(Ordering::Acquire)
    }

    /// Stops accepting, closes idle connections, lets requests in flight (streams included)
    /// finish for up to `grace`, then closes the rest. Returns whether everything finished in
    /// time. Every thread the server started has ended or is ending when it returns.
    pub fn shutdown(mut self, grace: Duration) -> bool {
        self.stop(grace)
    }

    /// A flag that, once set, ends a shutdown's grace at once: the requests still running
    /// are closed as when the grace runs out.
    pub fn grace_cutter(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cut_short)
    }

    /// Runs `job` on every event loop.
    fn on_every_loop(&self, job: fn()) {
        if let Some(r) = &self.runtime {
            for l in r.loops() {
                l.send(Box::new(job));
            }
        }
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
        // `Connection: close`, after which their tasks end.
        self.on_every_loop(shared_mod::wake_waiting);
        let conns_open = || self.stats.connections_open.load(Ordering::Acquire) > 0;
        let cut = || self.cut_short.load(Ordering::Acquire);
        wait_while(deadline, || conns_open() && !cut());
        let in_time = !conns_open();
        if !in_time {
            // The requests still running answer 503 `shutting_down` (a stream ends with an
            // error event), and are counted; what is still open after that is closed.
            // (Also after a second signal: the answers take milliseconds, and the books then
            // hold every request the clients were told about.)
            self.on_every_loop(shared_mod::stop_handlers);
            wait_while(Instant::now() + FORCE_WAIT, conns_open);
            self.on_every_loop(shared_mod::force_close);
            wait_while(Instant::now() + FORCE_WAIT, conns_open);
        }
        // Refusals are done within a couple of seconds, even while stopping.
        wait_while(Instant::now() + FORCE_WAIT, || {
            self.shared.refusing.load(Ordering::Acquire) > 0
        });
        let mut workers = self.shared.workers.stop();
        let workers_done = join_until(&mut workers, Instant::now() + FORCE_WAIT);
        let loops_done = match self.runtime.take() {
            Some(mut r) => r.stop_within(Instant::now() + FORCE_WAIT),
            None => true,
        };
        in_time && accepting_done && workers_done && loops_done
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
