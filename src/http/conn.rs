//! One connection thread per admitted connection: TLS handshake, then a loop of reading a
//! request under its deadlines, answering it — here for a quick answer, through the worker
//! pool otherwise, while watching the client — until the connection ends. Also the refusal
//! of a peer outside the allow list, on a thread of the small refusal budget.
//!
//! The thread owns the connection between requests; a worker owns it while it writes the
//! response and then sends it back on a per-request channel (or closes it), with whatever
//! of a complete response the client had not taken yet, which this thread then finishes:
//! a slow reader holds this cheap thread, not a worker. The socket is shared through an
//! `Arc`, so the thread can watch it (`peek`) while a worker writes on it, and the server
//! can shut it down at the end of a shutdown's grace, with one descriptor.

use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use rustls::{ServerConnection, StreamOwned};

use super::access::AllowList;
use super::budget::Lease;
use super::parse::{InBuf, ReadError, Rejection, read_body, read_head};
use super::shared::Shared;
use super::wire::{Io, Sock, Transport, is_transient};
use super::write::{Access, Outcome, Pending, Reply, finish, write_response};
use super::{Hangup, Request, Response, Version};
use crate::error::Error;

/// The interim answer that tells a half-closed client from one that has gone.
const PROBE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// How long a departed client's reset may take to come back after the probe (loopback and
/// a LAN: well under this).
const PROBE_ECHO: Duration = Duration::from_millis(20);
/// The first look at the client after its request went to a worker.
const FIRST_LOOK: Duration = Duration::from_millis(20);
/// While a worker answers, how often the connection thread looks whether the client left.
const POLL: Duration = Duration::from_millis(250);
/// A TLS record header's first byte for an alert (a `close_notify`, usually).
const TLS_ALERT: u8 = 0x15;
/// TLS 1.3 hides the record type: every record says "application data" (0x17). An encrypted
/// alert is the 2 alert bytes, the inner type byte and a 16-byte AEAD tag: 19 bytes.
const TLS13_RECORD: u8 = 0x17;
const TLS13_ALERT_LEN: u16 = 2 + 1 + 16;
/// Everything a refused peer gets: handshake, 403, lingering read, in all.
pub(crate) const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// A listener's settings, as its connections need them.
pub(crate) struct ListenerCtx {
    pub(crate) allow: AllowList,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) port: u16,
}

/// A request on its way to a worker, with its connection.
pub(crate) struct Job {
    pub(crate) req: Request,
    /// The request body's share of the server's body budget.
    pub(crate) lease: Lease,
    pub(crate) conn: Conn,
    pub(crate) reply: Reply,
    /// Where the connection goes back; dropping it closes the connection.
    pub(crate) back: Sender<Back>,
    /// Its place in the queue ([`Shared::queued`](super::shared::Shared)).
    pub(crate) seq: u64,
}

/// What a worker gives back.
pub(crate) enum Back {
    /// The answer is out; the connection is ready for the next request.
    Ready(Conn),
    /// The client has not taken all of the answer yet: the rest is this thread's to write.
    Rest(Box<Rest>),
}

pub(crate) struct Rest {
    pub(crate) conn: Conn,
    pub(crate) pending: Pending,
    pub(crate) out: Outcome,
    pub(crate) access: Access,
}

/// A connection between requests: the transport and the bytes read ahead.
pub(crate) struct Conn {
    pub(crate) io: Io,
    buf: InBuf,
}

/// What the connection thread is serving.
struct Serving<'a> {
    shared: &'a Shared,
    jobs: &'a Sender<Job>,
    sock: Sock,
    peer: IpAddr,
    tls: bool,
    id: u64,
    /// Set while the thread waits for a request (handshake, idle, head): a shutdown then
    /// shuts the socket's read side, which ends the wait at once.
    waiting: Arc<AtomicBool>,
}

/// The connection thread's body. The caller has admitted (and counted) the connection and
/// uncounts it when this returns, however it returns.
pub(crate) fn run(
    shared: &Shared,
    listener: &ListenerCtx,
    tcp: TcpStream,
    peer: IpAddr,
    id: u64,
    jobs: &Sender<Job>,
) {
    let started = Instant::now();
    let t = &shared.timeouts;
    let sock = Sock(Arc::new(tcp));
    let _ = sock.0.set_write_timeout(Some(t.write));
    let waiting = shared.track(id, sock.clone());
    let stop = || shared.is_stopping();
    let Some(mut conn) = open(shared, listener, &sock, started + t.head, &stop) else {
        return;
    };
    let s = Serving {
        shared,
        jobs,
        sock,
        peer,
        tls: listener.tls.is_some(),
        id,
        waiting,
    };
    let mut deadline = started + t.head;
    loop {
        let Some((req, reply, lease)) = read_request(&s, &mut conn, deadline) else {
            return;
        };
        let Some(c) = answer(&s, conn, req, reply, lease) else {
            return;
        };
        conn = c;
        let Some(d) = next_request(&s, &mut conn) else {
            return;
        };
        deadline = d;
    }
}

/// The transport: clear, or through the TLS handshake (under the head deadline).
fn open(
    shared: &Shared,
    listener: &ListenerCtx,
    sock: &Sock,
    deadline: Instant,
    stop: &dyn Fn() -> bool,
) -> Option<Conn> {
    let transport = match &listener.tls {
        None => Transport::Plain(sock.clone()),
        Some(cfg) => Transport::Tls(Box::new(handshake(sock.clone(), cfg, deadline, stop)?)),
    };
    Some(Conn {
        io: Io {
            transport,
            sock: sock.clone(),
            write_timeout: None,
            read_timeout: None,
        },
        buf: InBuf::new(&shared.limits),
    })
}

/// Between requests: waits (up to the idle timeout) for the next one's first byte; returns
/// the deadline of its head. `None`: the connection is over.
fn next_request(s: &Serving<'_>, conn: &mut Conn) -> Option<Instant> {
    let t = &s.shared.timeouts;
    let stop = || s.shared.is_stopping();
    // Before looking at the flag, so that a shutdown either sees this or is seen here.
    s.waiting.store(true, Ordering::SeqCst);
    if stop() {
        conn.io.close(t.write);
        return None;
    }
    conn.buf.shrink();
    if conn.buf.is_empty()
        && let Err(e) = conn.buf.fill(&mut conn.io, Instant::now() + t.idle, &stop)
    {
        if matches!(e, ReadError::Stopped | ReadError::Timeout) {
            conn.io.close(t.write);
        }
        return None;
    }
    Some(Instant::now() + t.head)
}

/// Reads one request: its head by `deadline`, then its body within the body timeout and
/// the body budget. `None`: no request (closed, refused and answered, timed out).
fn read_request(
    s: &Serving<'_>,
    conn: &mut Conn,
    deadline: Instant,
) -> Option<(Request, Reply, Lease)> {
    let shared = s.shared;
    let (t, limits) = (&shared.timeouts, &shared.limits);
    let stop = || shared.is_stopping();
    s.waiting.store(true, Ordering::SeqCst);
    let began = Instant::now();
    let mut lease = Lease::new(&shared.bodies);
    let read = read_head(&mut conn.io, &mut conn.buf, limits, deadline, &stop).and_then(|head| {
        // The request is under way: a shutdown lets it finish.
        s.waiting.store(false, Ordering::SeqCst);
        let mut reserve = |n: usize| lease.grow(n);
        let body = read_body(
            &mut conn.io,
            &mut conn.buf,
            &head,
            limits,
            (t.body, t.write),
            &mut reserve,
        )?;
        Ok((head, body))
    });
    let (head, body) = match read {
        Ok(r) => r,
        Err(ReadError::Reject(rejection)) => {
            refuse(shared, conn, s.peer, *rejection, Some(began));
            return None;
        }
        Err(e) => {
            log::debug!(ip:% = s.peer, reason:? = e; "connection closed without a request");
            return None;
        }
    };
    let reply = Reply {
        version: head.version,
        head_only: head.method == "HEAD",
        keep_alive: head.keep_alive,
        write_timeout: t.write,
        stall: t.stall,
    };
    let req = Request {
        method: head.method,
        path: head.path,
        query: head.query,
        version: head.version,
        headers: head.headers,
        body,
        peer: s.peer,
        tls: s.tls,
        received: Instant::now(),
        hangup: Hangup::default(),
    };
    Some((req, reply, lease))
}

/// Answers a request: a quick one here, any other through a worker (or 503 when the queue
/// is full). Returns the connection when it may serve another request.
fn answer(s: &Serving<'_>, conn: Conn, req: Request, reply: Reply, lease: Lease) -> Option<Conn> {
    let shared = s.shared;
    if shared.handler.is_quick(&req) {
        let resp = shared.call_handler(&req);
        drop(lease);
        return write_here(shared, conn, &req, reply, resp);
    }
    let (back, returned) = crossbeam_channel::bounded(1);
    let hangup = req.hangup.clone();
    let http11 = req.version == super::Version::Http11;
    shared.set_hangup(s.id, Some(hangup.clone()));
    let seq = shared.queued.fetch_add(1, Ordering::SeqCst) + 1;
    let received = req.received;
    let sent = s.jobs.try_send(Job {
        req,
        lease,
        conn,
        reply,
        back,
        seq,
    });
    let back = match sent {
        Ok(()) => {
            let depth = s.jobs.len();
            shared.stats.queue_depth.store(depth, Ordering::Relaxed);
            let busy = shared.stats.workers_busy.load(Ordering::Acquire);
            shared.pool.grow(busy, shared.is_stopping());
            let queued = Queued {
                shared,
                seq,
                received,
            };
            wait_for_worker(&returned, &s.sock, (s.tls, http11), &hangup, &queued)
        }
        Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
            shared.set_hangup(s.id, None);
            let Job {
                req, conn, reply, ..
            } = job;
            shared
                .stats
                .overloaded_total
                .fetch_add(1, Ordering::Relaxed);
            let overloaded = Error::Overloaded { retry_after_s: 1 };
            let resp = shared.handler.error_response(&req.path, &overloaded);
            return write_here(shared, conn, &req, reply, resp);
        }
    };
    shared.set_hangup(s.id, None);
    let (back, looked) = back;
    let mut back = back?;
    if looked {
        // `peer` set a read timeout of its own on the socket.
        match &mut back {
            Back::Ready(conn) => conn.io.read_timeout = None,
            Back::Rest(rest) => rest.conn.io.read_timeout = None,
        }
    }
    match back {
        Back::Ready(conn) => Some(conn),
        Back::Rest(rest) => finish_rest(shared, *rest),
    }
}

/// Writes a response on this thread, logs it, and keeps the connection if it may go on.
fn write_here(
    shared: &Shared,
    mut conn: Conn,
    req: &Request,
    reply: Reply,
    resp: Response,
) -> Option<Conn> {
    let reply = Reply {
        keep_alive: reply.keep_alive && !shared.is_stopping(),
        ..reply
    };
    let out = write_response(&mut conn.io, &reply, resp);
    super::write::access_log(
        &req.method,
        &req.path,
        out.status,
        req.peer,
        req.received,
        &out.log,
    );
    keep(shared, conn, out.keep_alive)
}

/// Writes what a worker left of an answer, within the write timeout.
fn finish_rest(shared: &Shared, rest: Rest) -> Option<Conn> {
    let Rest {
        mut conn,
        pending,
        out,
        access,
    } = rest;
    let out = finish(&mut conn.io, pending, out, shared.timeouts.write);
    access.log(&out);
    keep(shared, conn, out.keep_alive)
}

fn keep(shared: &Shared, mut conn: Conn, keep_alive: bool) -> Option<Conn> {
    if keep_alive && !shared.is_stopping() {
        Some(conn)
    } else {
        conn.io.close(shared.timeouts.write);
        None
    }
}

/// Waits for the worker to give the connection back (`None`: it closed it), and meanwhile
/// looks every [`POLL`] whether the client has gone, to fire the request's [`Hangup`];
/// says whether it looked (which sets the socket's read timeout).
///
/// A client that only half-closed its side after sending (`printf … | nc`) is still there
/// and gets its answer; one that closed both sides has gone. Both look the same — the
/// end of its data — until something is sent: so on plain HTTP/1.1 the thread then sends
/// an interim `100 Continue` (which every HTTP/1.1 client must take before the answer),
/// unless the answer has begun. A client that has gone answers it with a reset, seen at the
/// next look; one that half-closed reads it and waits. Over TLS a client that leaves sends
/// `close_notify` first (seen at once); HTTP/1.0 allows no interim answer, and its
/// half-closed clients are answered.
fn wait_for_worker(
    returned: &Receiver<Back>,
    sock: &Sock,
    (tls, http11): (bool, bool),
    hangup: &Hangup,
    queued: &Queued<'_>,
) -> (Option<Back>, bool) {
    let mut probed = false;
    let mut looked = false;
    // The first look comes soon: a half-closing client closes right after sending, and is
    // best told apart before the answer begins.
    let mut wait = FIRST_LOOK;
    loop {
        match returned.recv_timeout(wait) {
            Ok(back) => return (Some(back), looked),
            Err(RecvTimeoutError::Disconnected) => return (None, looked),
            Err(RecvTimeoutError::Timeout) if queued.expired() => {
                // Every worker busy for longer than the queue may wait: the oldest waiting
                // request (this one, or one queued before it) gets its 503 now.
                queued.shared.pool.refuse_oldest();
            }
            Err(RecvTimeoutError::Timeout) if hangup.is_fired() => {}
            Err(RecvTimeoutError::Timeout) => {
                looked = true;
                match peer(&sock.0, tls) {
                    Peer::Here => {}
                    Peer::Gone => hangup.fire(),
                    Peer::Ended if tls => hangup.fire(),
                    Peer::Ended if !http11 || probed => {}
                    Peer::Ended => {
                        probed = true;
                        match probe(sock, hangup) {
                            Probe::Here => {}
                            // Its FIN came once the answer had begun: it left while reading.
                            Probe::Gone | Probe::TooLate => hangup.fire(),
                        }
                    }
                }
            }
        }
        wait = POLL;
    }
}

/// A request in the workers' queue, as its connection thread follows it.
struct Queued<'a> {
    shared: &'a Shared,
    seq: u64,
    received: Instant,
}

impl Queued<'_> {
    /// Still queued after `queue_wait`.
    fn expired(&self) -> bool {
        self.received.elapsed() > self.shared.timeouts.queue_wait
            && self.shared.taken.load(Ordering::SeqCst) < self.seq
    }
}

/// What a look at the client's side of the connection shows.
#[derive(Debug, PartialEq, Eq)]
enum Peer {
    /// Nothing new, or data (a pipelined request).
    Here,
    /// The end of its data: it closed, or only half-closed.
    Ended,
    /// A reset, an error, or a TLS alert: it has gone.
    Gone,
}

/// Looks at the client's side: peeks only, so it does not disturb the worker writing on
/// the same socket.
fn peer(sock: &TcpStream, tls: bool) -> Peer {
    if sock
        .set_read_timeout(Some(Duration::from_millis(1)))
        .is_err()
    {
        return Peer::Gone;
    }
    let mut first = [0u8; 5];
    match sock.peek(&mut first) {
        Ok(0) => Peer::Ended,
        Ok(n) if tls && tls_alert(&first[..n]) => Peer::Gone,
        Ok(_) => Peer::Here,
        Err(e) if is_transient(&e) => Peer::Here,
        Err(_) => Peer::Gone,
    }
}

/// What the probe of a client whose data has ended says.
enum Probe {
    /// It read the interim answer: it only half-closed, and waits for its answer.
    Here,
    /// It answered with a reset: it has gone.
    Gone,
    /// The answer has begun: nothing more can be sent in between.
    TooLate,
}

/// Sends the interim `100 Continue` unless the answer has begun, then waits a moment for a
/// departed client's reset. A reset after the client's FIN does not show in a read (that
/// still says end of data); it is the socket's pending error.
fn probe(sock: &Sock, hangup: &Hangup) -> Probe {
    let sent = hangup.before_response(|| {
        // 25 bytes into an empty send buffer (nothing of the answer went out): at once.
        std::io::Write::write_all(&mut &*sock.0, PROBE)
    });
    match sent {
        None => Probe::TooLate,
        Some(Err(_)) => Probe::Gone,
        Some(Ok(())) => {
            std::thread::sleep(PROBE_ECHO);
            match sock.0.take_error() {
                Ok(None) => Probe::Here,
                _ => Probe::Gone,
            }
        }
    }
}

/// Whether peeked bytes start with a TLS alert record: in clear (TLS 1.2), or an encrypted
/// record of exactly an alert's size (TLS 1.3). A 2-byte application write would look the
/// same; an HTTP client does not send one between requests.
fn tls_alert(peeked: &[u8]) -> bool {
    match peeked {
        [TLS_ALERT, ..] => true,
        [TLS13_RECORD, _, _, hi, lo, ..] => u16::from_be_bytes([*hi, *lo]) == TLS13_ALERT_LEN,
        _ => false,
    }
}

/// Answers a refused request with its error and `Connection: close`, then closes with a
/// lingering read. `since`: when the request began, for its access log line (`None`: no
/// line — a refused peer is logged by the accept loop).
fn refuse(
    shared: &Shared,
    conn: &mut Conn,
    peer: IpAddr,
    rejection: Rejection,
    since: Option<Instant>,
) {
    let t = &shared.timeouts;
    let Rejection {
        error,
        method,
        path,
    } = rejection;
    log::debug!(ip:% = peer, error:% = error; "request refused");
    if matches!(error, Error::Overloaded { .. }) {
        // The body budget spent: refused as a full queue is, and counted with it.
        shared
            .stats
            .overloaded_total
            .fetch_add(1, Ordering::Relaxed);
    }
    let reply = Reply {
        version: Version::Http11,
        head_only: method.as_deref() == Some("HEAD"),
        keep_alive: false,
        write_timeout: t.write,
        stall: t.stall,
    };
    let resp = shared
        .handler
        .error_response(path.as_deref().unwrap_or(""), &error);
    let out = write_response(&mut conn.io, &reply, resp);
    if let Some(since) = since {
        let method = method.as_deref().unwrap_or("-");
        let path = path.as_deref().unwrap_or("-");
        super::write::access_log(method, path, out.status, peer, since, &out.log);
    }
    conn.io.close(t.write);
    conn.io.linger(t.linger);
}

/// A peer outside the listener's allow list, on a thread of the refusal budget: 403 (after
/// the TLS handshake on HTTPS), then closed — everything within [`REFUSAL_TIME`] (or the
/// head and linger timeouts, when shorter). It holds no connection slot.
pub(crate) fn refuse_peer(shared: &Shared, listener: &ListenerCtx, tcp: TcpStream, peer: IpAddr) {
    let t = &shared.timeouts;
    let started = Instant::now();
    let sock = Sock(Arc::new(tcp));
    let stop = || shared.is_stopping();
    let handshake_by = started + t.head.min(REFUSAL_TIME / 2);
    let Some(mut conn) = open(shared, listener, &sock, handshake_by, &stop) else {
        return;
    };
    let left = REFUSAL_TIME.saturating_sub(started.elapsed());
    let reply = Reply {
        version: Version::Http11,
        head_only: false,
        keep_alive: false,
        write_timeout: t.write.min(left),
        stall: Duration::ZERO,
    };
    let _ = write_response(
        &mut conn.io,
        &reply,
        Response::error(&Error::IpNotAllowed { ip: peer }),
    );
    conn.io.close(reply.write_timeout);
    let left = REFUSAL_TIME.saturating_sub(started.elapsed());
    conn.io.linger(t.linger.min(left));
}

/// The TLS handshake, under the connection's head deadline. `None`: the client failed it,
/// left, or was too slow (closed without an answer).
fn handshake(
    mut sock: Sock,
    config: &Arc<rustls::ServerConfig>,
    deadline: Instant,
    stop: &dyn Fn() -> bool,
) -> Option<StreamOwned<ServerConnection, Sock>> {
    let mut tls = ServerConnection::new(Arc::clone(config)).ok()?;
    while tls.is_handshaking() {
        let left = deadline.checked_duration_since(Instant::now())?;
        if stop() || left.is_zero() {
            return None;
        }
        sock.0.set_read_timeout(Some(left)).ok()?;
        sock.0.set_write_timeout(Some(left)).ok()?;
        match tls.complete_io(&mut sock) {
            // Nothing to read or write while still handshaking (the peer sent close_notify):
            // no progress is possible, and looping would spin.
            Ok((0, 0)) => return None,
            Ok(_) => {}
            Err(e) if is_transient(&e) => {}
            Err(e) => {
                log::debug!(error:% = e; "TLS handshake failed");
                return None;
            }
        }
    }
    Some(StreamOwned::new(tls, sock))
}
