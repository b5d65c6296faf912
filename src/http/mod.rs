//! sigorest's own small HTTP/1.1 server, on httparse, mio and rustls 0.23.
//!
//! An accept thread per listening socket judges each peer against the listener's allow list
//! at once — a refused peer gets its 403 (on HTTPS after the handshake) within 2 s, a few at
//! a time, or is closed at once when they are busy, and never takes a connection slot — and
//! admits the others up to the caps per address and in all, handing each to the event loop
//! that has the fewest (see [`crate::rt`]). There a task per connection reads one request
//! head and body under deadlines, hard limits and the body budget, and answers it:
//! - a quick request ([`Handler::is_quick`]) at once, on the loop;
//! - any other once it has one of the `-workers` places (the others wait in a bounded
//!   line): on the loop itself when the handler can answer without blocking
//!   ([`Handler::answer`], a future that awaits its upstream), else on a worker thread
//!   ([`Handler::handle`]).
//!
//! While a request is handled, its task watches the client and fires the request's
//! [`Hangup`] when it leaves. The answer is written by the same task: a complete one within
//! the write timeout, a stream piece by piece as its producer makes them (its writes may wait
//! on the client for [`Timeouts::stall`] in all). A slow reader holds nothing but its task.
//!
//! Handlers never see a socket: they get a [`Request`] and return a [`Response`], whose body is
//! complete, a closure that writes pieces to a [`Sink`] on a worker thread, or a task that
//! fills a [`Pipe`] on the loop. A handler panic becomes a 500.
//!
//! Decisions where the design is silent:
//! - `Host` is not required; targets may be origin form, absolute form (the path is kept) or
//!   `*`; anything else is 400. `Expect` values other than `100-continue` are ignored.
//! - `Transfer-Encoding` must be exactly `chunked` and is refused in HTTP/1.0 (400); chunked
//!   framing must use CRLF (a bare LF is 400; the head accepts LF, as httparse does);
//!   trailers are read within 16 KiB and dropped.
//! - A client that half-closes its side after sending a request is still there; one that
//!   closes both sides has gone. A peek cannot tell them apart, so on plain HTTP/1.1 the
//!   connection sends an interim `100 Continue` before the answer begins and looks for the
//!   reset a departed client answers it with (see `conn`). On TLS a departing client
//!   sends `close_notify` (on TLS 1.3 an encrypted record of exactly an alert's size waiting
//!   on the socket counts as one); an HTTP/1.0 half-close is answered; a FIN once the
//!   answer has begun means the client left.
//! - The access log's `ms` runs from the end of the request read to the end of the response
//!   (queue wait, handler, writing); refusals are timed from the start of the request.
//! - The status line always says `HTTP/1.1` (allowed for HTTP/1.0 clients); the framing
//!   follows the request's version.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use crate::error::Error;
pub use crate::util::Hangup;
pub use access::{AllowList, Cidr};

pub mod access;
mod budget;
mod conn;
#[cfg(test)]
mod fuzz_tests;
mod gate;
mod headers;
mod parse;
mod pipe;
mod server;
mod shared;
#[cfg(test)]
mod testwire;
pub mod tls;
mod watch;
mod write;
mod x509;

pub use headers::Headers;
pub use pipe::Pipe;
pub use server::{Server, start};
pub(crate) use write::push_decimal;

/// HTTP version of a request, which decides the framing of its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: responses without a length are close-delimited; keep-alive only on request.
    Http10,
    /// HTTP/1.1: keep-alive by default; streamed responses are chunked.
    Http11,
}

/// One parsed request, as a handler sees it.
#[derive(Debug)]
pub struct Request {
    /// Method as sent (`GET`, `POST`, `HEAD`, ...). For `HEAD` the server drops the body of
    /// whatever the handler returns, keeping its headers.
    pub method: String,
    /// Path without the query string, as sent (not percent-decoded).
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    pub version: Version,
    /// Header names in lower case, values as sent (lossy UTF-8), in order.
    pub headers: Headers,
    /// The whole body (after de-chunking).
    pub body: Vec<u8>,
    /// The client's address; IPv4-mapped IPv6 addresses are already turned into IPv4.
    pub peer: IpAddr,
    /// Whether it came over TLS.
    pub tls: bool,
    /// When the request was completely read (before it waited for a worker).
    pub received: Instant,
    /// Fires when the server notices that the client has gone away while the handler runs.
    pub hangup: Hangup,
    /// [`Handler::before_queue`] let it through before it waited for a place: what that
    /// checked is not checked (or counted) again.
    pub checked_early: bool,
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// Extra `key=value` fields a handler adds to the request's access log line
/// (model, attempts, tokens...).
pub type LogFields = Vec<(&'static str, String)>;

/// A streamed body made on a worker thread: called once with the sink for the pieces and the
/// access-log fields, which it may extend (for example with the token usage seen at the end
/// of a stream). Returning an error (usually from the sink, when the client has gone) ends
/// the connection.
pub type StreamBody = Box<dyn FnOnce(&mut dyn Sink, &mut LogFields) -> io::Result<()> + Send>;

/// The task that makes a streamed body on the event loop: it ends with its result and the
/// access-log fields it adds.
pub type Producer = Pin<Box<dyn Future<Output = (io::Result<()>, LogFields)>>>;

/// A streamed body made on the event loop: called once, on the connection's loop, with the
/// [`Pipe`] the pieces go to; returns the task that fills it. Between pieces the task waits
/// for [`Pipe::room`], so a client that does not read holds its stream back.
pub type PipedBody = Box<dyn FnOnce(Pipe) -> Producer + Send>;

/// An answer being made on the event loop (see [`Handler::answer`]).
pub type Answering = Pin<Box<dyn Future<Output = Response>>>;

/// Where a streamed body goes: each `send` is written as one piece (a chunk in HTTP/1.1) and
/// flushed to the client before it returns.
pub trait Sink {
    fn send(&mut self, piece: &[u8]) -> io::Result<()>;
}

/// Collects the pieces, for tests of streaming handlers.
impl Sink for Vec<Vec<u8>> {
    fn send(&mut self, piece: &[u8]) -> io::Result<()> {
        self.push(piece.to_vec());
        Ok(())
    }
}

/// The body of a [`Response`].
pub enum Body {
    /// Written with a `Content-Length`, head and body in one write.
    Full(Vec<u8>),
    /// Written chunked (HTTP/1.1) or close-delimited (HTTP/1.0), one write per piece; the
    /// pieces made by a closure on a worker thread.
    Stream(StreamBody),
    /// The same, the pieces made by a task on the event loop.
    Piped(PipedBody),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Full(b) => write!(f, "Full({} bytes)", b.len()),
            Body::Stream(_) => f.write_str("Stream(..)"),
            Body::Piped(_) => f.write_str("Piped(..)"),
        }
    }
}

/// What a handler returns. The server adds `Content-Length` or `Transfer-Encoding`, `Date`
/// is not sent, and `Connection` is decided by the server.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Extra fields for the access log line.
    pub log: LogFields,
    /// Close the connection after this response (the server may also decide so).
    pub close: bool,
}

/// A response's first header, in a list with room for the few a handler adds (the
/// request id, a key's limits) without growing.
fn content_type_header(content_type: &str) -> Vec<(String, String)> {
    let mut headers = Vec::with_capacity(4);
    headers.push(("Content-Type".to_string(), content_type.to_string()));
    headers
}

impl Response {
    /// A complete response with a `Content-Type`.
    pub fn full(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: content_type_header(content_type),
            body: Body::Full(body),
            log: Vec::new(),
            close: false,
        }
    }

    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        // Serialising a `Value` to a Vec cannot fail (no non-string keys, no I/O).
        let body = serde_json::to_vec(value).unwrap_or_default();
        Response::full(status, "application/json", body)
    }

    /// An error in OpenAI's shape, with its status, headers (`Retry-After`, ...) and its code
    /// in the access log.
    pub fn error(e: &Error) -> Response {
        if e.needs_log() {
            // The client gets a generic message; the details (paths, OS errors) go here.
            log::error!(code = e.code(), error:% = e; "request failed");
        }
        let mut resp = Response::json(e.status(), &e.body());
        resp.headers.extend(e.headers());
        resp.log.push(("error", e.code().to_string()));
        resp
    }

    /// A streamed response with a `Content-Type`.
    pub fn stream(status: u16, content_type: &str, body: StreamBody) -> Response {
        Response {
            status,
            headers: content_type_header(content_type),
            body: Body::Stream(body),
            log: Vec::new(),
            close: false,
        }
    }

    /// A streamed response whose pieces a task on the event loop makes (see [`PipedBody`]).
    pub fn piped(status: u16, content_type: &str, body: PipedBody) -> Response {
        Response {
            status,
            headers: content_type_header(content_type),
            body: Body::Piped(body),
            log: Vec::new(),
            close: false,
        }
    }

    /// Keeps `value` alive until the body has been written: a streamed body takes it into
    /// its closure or task (a slot of a local model is held until the stream ends); a
    /// complete body drops it here, the answer being done.
    pub fn keep_until_sent<T: Send + 'static>(mut self, value: T) -> Response {
        self.body = match self.body {
            Body::Stream(body) => Body::Stream(Box::new(move |sink, log| {
                let _kept = value;
                body(sink, log)
            })),
            Body::Piped(body) => Body::Piped(Box::new(move |pipe| {
                let producer = body(pipe);
                Box::pin(async move {
                    let _kept = value;
                    producer.await
                })
            })),
            full => full,
        };
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The application: one call per request.
pub trait Handler: Send + Sync + 'static {
    /// Answers on a worker thread: it may block.
    fn handle(&self, req: &Request) -> Response;

    /// Whether this request is answered at once, without blocking I/O (a health check, a
    /// list, a 404): it is then handled on the event loop, without a worker's place, and it
    /// is answered even while every place is taken. Default: no.
    fn is_quick(&self, _req: &Request) -> bool {
        false
    }

    /// Whether this request is answered on the event loop by [`Handler::answer`] — a future
    /// that awaits its I/O (an upstream call) and never blocks — instead of on a worker
    /// thread. Either way it first takes a worker's place. Default: no.
    fn answers_on_loop(&self, _req: &Request) -> bool {
        false
    }

    /// The answer on the event loop of a request that [`Handler::answers_on_loop`] took.
    /// Default: a 500 (a handler that answers on the loop must give this).
    fn answer(self: Arc<Self>, _req: Request) -> Answering {
        Box::pin(async {
            Response::error(&crate::error::Error::Internal {
                message: "internal error: no answer on the event loop".to_string(),
            })
        })
    }

    /// A refusal given before the request waits for a place in the line (checks that need
    /// no place and no I/O: a client's rate, its key), so that requests refused anyway
    /// never take places from others while the line is long. `None`: it goes on, with
    /// [`Request::checked_early`] set. Not asked for quick requests. Default: `None`.
    fn before_queue(&self, _req: &Request) -> Option<Response> {
        None
    }

    /// The answer to a request that left the line for a place before its handler ran: its
    /// client went away (`Error::ClientGone`), or the server is stopping and its grace has
    /// run out (`Error::ShuttingDown`). The handler's chance to count it. Default:
    /// [`Handler::error_response`].
    fn left_queue(&self, req: &Request, e: &crate::error::Error) -> Response {
        self.error_response(&req.path, e)
    }

    /// The answer for an error the server itself meets on a request for `path` (the queue
    /// full, a body too large, a malformed head): in the shape of the API at that path.
    /// Default: OpenAI's.
    fn error_response(&self, _path: &str, e: &crate::error::Error) -> Response {
        Response::error(e)
    }
}

impl<F> Handler for F
where
    F: Fn(&Request) -> Response + Send + Sync + 'static,
{
    fn handle(&self, req: &Request) -> Response {
        self(req)
    }
}

/// Live counters, shared with the application for `/api/health`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests handled at once, at most (`-workers`).
    pub workers_total: AtomicUsize,
    /// Worker threads running (for handlers that block; they start as requests need them,
    /// up to `-workers`).
    pub workers_started: AtomicUsize,
    /// Requests being handled now (on a worker thread or on an event loop).
    pub workers_busy: AtomicUsize,
    pub queue_capacity: AtomicUsize,
    pub queue_depth: AtomicUsize,
    pub connections_open: AtomicUsize,
    /// Event-loop threads.
    pub loops: AtomicUsize,
    /// Requests refused with 503 `overloaded` (queue full, or waited too long for a worker).
    pub overloaded_total: AtomicU64,
}

/// One listening socket.
#[derive(Clone)]
pub struct ListenerConfig {
    /// Usually `[::]:port` (dual-stack); port 0 picks a free port.
    pub addr: SocketAddr,
    /// Who may connect; others get 403 `ip_not_allowed` and are closed.
    pub allow: AllowList,
    /// TLS configuration for an HTTPS listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Hard limits on what a client may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line and headers, in bytes.
    pub head_bytes: usize,
    /// Header lines.
    pub header_lines: usize,
    /// Body, in bytes (declared or chunked).
    pub body_bytes: usize,
    /// Open connections; beyond this a new connection is closed at once. Refused peers
    /// (outside the allow list) do not count.
    pub connections: usize,
    /// Open connections from one address (an IPv6 /64); beyond this a new one is closed at
    /// once. 0: no cap.
    pub per_ip: usize,
    /// Request bodies in flight, all together, in bytes; a body that does not fit any more
    /// gets 503 `overloaded`. A single body is capped at the smaller of this and
    /// `body_bytes`.
    pub body_total: usize,
    /// Threads answering refused peers at once (403); beyond, a refused peer is closed at
    /// once.
    pub refusing: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_bytes: 64 * 1024,
            header_lines: 100,
            body_bytes: 32 * 1024 * 1024,
            connections: 1024,
            per_ip: 64,
            body_total: 256 * 1024 * 1024,
            refusing: 4,
        }
    }
}

/// Deadlines and timeouts.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// From a new connection (TLS handshake included), or from the first byte of a request on
    /// a kept-alive one, to the end of its head. Past it: closed silently.
    pub head: Duration,
    /// For reading the body, after the head.
    pub body: Duration,
    /// How long a kept-alive connection may sit idle before its next request.
    pub idle: Duration,
    /// Writing a complete response to the client (on its connection thread).
    pub write: Duration,
    /// How long a stream's writes may wait on a client that does not read, in all, before
    /// the stream ends: the time a slow reader can hold a worker.
    pub stall: Duration,
    /// After a 413 on a body still being sent: how long to read (and discard) before closing,
    /// so the client sees the answer instead of a reset.
    pub linger: Duration,
    /// A request that waited longer than this for a worker gets 503 `overloaded`.
    pub queue_wait: Duration,
    /// A worker beyond the first few that has had nothing to do for this long ends, so that
    /// after a burst the gateway goes back to its idle threads.
    pub worker_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            head: Duration::from_secs(10),
            body: Duration::from_secs(60),
            idle: Duration::from_secs(30),
            write: Duration::from_secs(30),
            stall: Duration::from_secs(10),
            linger: Duration::from_secs(2),
            queue_wait: Duration::from_secs(30),
            worker_idle: Duration::from_secs(60),
        }
    }
}

/// Everything [`start`] needs.
#[derive(Clone)]
pub struct ServerConfig {
    pub listeners: Vec<ListenerConfig>,
    pub workers: usize,
    /// Capacity of the channel between connection threads and workers.
    pub queue: usize,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub stats: Arc<Stats>,
}
