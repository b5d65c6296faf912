//! One connection thread per accepted connection: TLS handshake, allow-list refusal, then a
//! loop of reading a request under its deadlines, handing it to the worker pool, and watching
//! the client while a worker answers it, until the connection ends.
//!
//! The thread owns the connection between requests; a worker owns it while it writes the
//! response and then sends it back on a per-request channel (or closes it). The socket is
//! shared through an `Arc`, so the thread can watch it (`peek`) while a worker writes on it,
//! and the server can shut it down at the end of a shutdown's grace, with one descriptor.

use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use rustls::{ServerConnection, StreamOwned};

use super::access::AllowList;
use super::parse::{InBuf, ReadError, Rejection, read_body, read_head};
use super::shared::Shared;
use super::wire::{Io, Sock, Transport, is_transient};
use super::write::{Reply, access_log, write_response};
use super::{Hangup, Request, Response};
use crate::error::Error;

/// While a worker answers, how often the connection thread looks whether the client left.
const POLL: Duration = Duration::from_millis(250);
/// A TLS record header's first byte for an alert (a `close_notify`, usually).
const TLS_ALERT: u8 = 0x15;
/// TLS 1.3 hides the record type: every record says "application data" (0x17). An encrypted
/// alert is the 2 alert bytes, the inner type byte and a 16-byte AEAD tag: 19 bytes.
const TLS13_RECORD: u8 = 0x17;
const TLS13_ALERT_LEN: u16 = 2 + 1 + 16;

/// A listener's settings, as its connections need them.
pub(crate) struct ListenerCtx {
    pub(crate) allow: AllowList,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) port: u16,
}

/// A request on its way to a worker, with its connection.
pub(crate) struct Job {
    pub(crate) req: Request,
    pub(crate) conn: Conn,
    pub(crate) reply: Reply,
    /// Where the connection goes back for keep-alive; dropping it closes the connection.
    pub(crate) back: Sender<Conn>,
}

/// A connection between requests: the transport and the bytes read ahead.
pub(crate) struct Conn {
    pub(crate) io: Io,
    buf: InBuf,
}

/// The connection thread's body. The caller counts the connection (and uncounts it when this
/// returns, however it returns) and has judged the peer against the allow list (`allowed`).
pub(crate) fn run(
    shared: &Shared,
    listener: &ListenerCtx,
    tcp: TcpStream,
    (peer, allowed): (IpAddr, bool),
    id: u64,
    jobs: &Sender<Job>,
) {
    let started = Instant::now();
    let t = &shared.timeouts;
    let stop = || shared.is_stopping();
    let sock = Sock(Arc::new(tcp));
    let _ = sock.0.set_write_timeout(Some(t.write));
    // Set while the thread waits for a request (handshake, idle, head): a shutdown then
    // shuts the socket's read side, which ends the wait at once. Idle connections thus cost
    // no wake-ups.
    let waiting = shared.track(id, sock.clone());
    let head_deadline = started + t.head;
    let transport = match &listener.tls {
        None => Transport::Plain(sock.clone()),
        Some(cfg) => match handshake(sock.clone(), cfg, head_deadline, &stop) {
            Some(s) => Transport::Tls(Box::new(s)),
            None => return,
        },
    };
    let tls = listener.tls.is_some();
    let mut conn = Conn {
        io: Io {
            transport,
            sock: sock.clone(),
            write_timeout: None,
        },
        buf: InBuf::new(&shared.limits),
    };
    if !allowed {
        log::warn!(ip:% = peer, port = listener.port; "ip_not_allowed");
        let rejection = Rejection {
            error: Error::IpNotAllowed { ip: peer },
            method: None,
            path: None,
        };
        refuse(shared, conn, peer, rejection, started, false);
        return;
    }
    let mut first = true;
    loop {
        // Before looking at the flag, so that a shutdown either sees this or is seen here.
        waiting.store(true, Ordering::SeqCst);
        let deadline = if first {
            head_deadline
        } else {
            // Between requests: wait for the next one's first byte, then time its head.
            if stop() {
                conn.io.close(t.write);
                return;
            }
            conn.buf.shrink();
            if conn.buf.is_empty()
                && let Err(e) = conn.buf.fill(&mut conn.io, Instant::now() + t.idle, &stop)
            {
                if matches!(e, ReadError::Stopped | ReadError::Timeout) {
                    conn.io.close(t.write);
                }
                return;
            }
            Instant::now() + t.head
        };
        first = false;
        let began = Instant::now();
        let limits = &shared.limits;
        let read =
            read_head(&mut conn.io, &mut conn.buf, limits, deadline, &stop).and_then(|head| {
                // The request is under way: a shutdown lets it finish.
                waiting.store(false, Ordering::SeqCst);
                let body = read_body(&mut conn.io, &mut conn.buf, &head, limits, t.body, t.write)?;
                Ok((head, body))
            });
        let (head, body) = match read {
            Ok(r) => r,
            Err(ReadError::Reject(rejection)) => {
                refuse(shared, conn, peer, *rejection, began, true);
                return;
            }
            Err(e) => {
                log::debug!(ip:% = peer, reason:? = e; "connection closed without a request");
                return;
            }
        };
        let reply = Reply {
            version: head.version,
            head_only: head.method == "HEAD",
            keep_alive: head.keep_alive,
            write_timeout: t.write,
        };
        let hangup = Hangup::default();
        let req = Request {
            method: head.method,
            path: head.path,
            query: head.query,
            version: head.version,
            headers: head.headers,
            body,
            peer,
            tls,
            received: Instant::now(),
            hangup: hangup.clone(),
        };
        let (back, returned) = crossbeam_channel::bounded(1);
        shared.set_hangup(id, Some(hangup.clone()));
        match jobs.try_send(Job {
            req,
            conn,
            reply,
            back,
        }) {
            Ok(()) => {
                shared
                    .stats
                    .queue_depth
                    .store(jobs.len(), Ordering::Relaxed);
                match wait_for_worker(&returned, &sock, tls, &hangup) {
                    Some(c) => conn = c,
                    None => return,
                }
            }
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                let Job {
                    req,
                    conn: c,
                    reply,
                    ..
                } = job;
                conn = c;
                let reply = Reply {
                    keep_alive: reply.keep_alive && !stop(),
                    ..reply
                };
                let resp = Response::error(&Error::Overloaded { retry_after_s: 1 });
                let out = write_response(&mut conn.io, &reply, resp);
                access_log(
                    &req.method,
                    &req.path,
                    out.status,
                    peer,
                    req.received,
                    &out.log,
                );
                if !out.keep_alive {
                    conn.io.close(t.write);
                    return;
                }
            }
        }
        shared.set_hangup(id, None);
    }
}

/// Waits for the worker to give the connection back (`None`: it closed it), and meanwhile
/// looks every [`POLL`] whether the client has gone, to fire the request's [`Hangup`].
fn wait_for_worker(
    returned: &Receiver<Conn>,
    sock: &Sock,
    tls: bool,
    hangup: &Hangup,
) -> Option<Conn> {
    loop {
        match returned.recv_timeout(POLL) {
            Ok(c) => return Some(c),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {
                if !hangup.is_fired() && peer_gone(&sock.0, tls) {
                    hangup.fire();
                }
            }
        }
    }
}

/// Whether the client has closed its side: end of stream, a reset, or on TLS an alert record
/// (`close_notify`, which a TLS client sends before its FIN) waiting. Data waiting (a pipelined request) means it is still there.
/// Only peeks, so it does not disturb the worker writing on the same socket.
fn peer_gone(sock: &TcpStream, tls: bool) -> bool {
    if sock
        .set_read_timeout(Some(Duration::from_millis(1)))
        .is_err()
    {
        return true;
    }
    let mut first = [0u8; 5];
    match sock.peek(&mut first) {
        Ok(0) => true,
        Ok(n) => tls && tls_alert(&first[..n]),
        Err(e) => !is_transient(&e),
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
/// lingering read.
fn refuse(
    shared: &Shared,
    mut conn: Conn,
    peer: IpAddr,
    rejection: Rejection,
    since: Instant,
    log_access: bool,
) {
    let t = &shared.timeouts;
    let Rejection {
        error,
        method,
        path,
    } = rejection;
    log::debug!(ip:% = peer, error:% = error; "request refused");
    let reply = Reply {
        version: super::Version::Http11,
        head_only: method.as_deref() == Some("HEAD"),
        keep_alive: false,
        write_timeout: t.write,
    };
    let out = write_response(&mut conn.io, &reply, Response::error(&error));
    if log_access {
        let method = method.as_deref().unwrap_or("-");
        let path = path.as_deref().unwrap_or("-");
        access_log(method, path, out.status, peer, since, &out.log);
    }
    conn.io.close(t.write);
    conn.io.linger(t.linger);
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
