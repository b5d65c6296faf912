//! Writing a [`Response`]: status line and headers, then the body with a `Content-Length`
//! (a small body in the same buffer: one write), or as chunks (HTTP/1.1) or close-delimited
//! (HTTP/1.0), one write and one flush per piece. Also the access log line.
//!
//! The server owns the framing headers (`Content-Length`, `Transfer-Encoding`, `Connection`):
//! a handler's own are dropped, and so is any header that could split the response.
//!
//! A slow reader must not hold a worker (see `design.md`): the worker writes a complete
//! response only as far as the client takes it at once ([`write_for_worker`]) and hands
//! the rest ([`Pending`]) to the connection thread, which finishes it within the write
//! timeout. A stream has to be written by the worker, piece by piece as its body produces
//! them; its writes may wait on the client for [`Reply::stall`] in all, then the stream ends
//! and the connection closes.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use super::wire::Wire;
use super::{Body, LogFields, Response, Sink, StreamBody, Version};

/// How long a worker's write of a complete response may wait for the client before the
/// connection thread takes over the rest.
const WORKER_TRY: Duration = Duration::from_millis(1);
/// A body up to this size is copied behind the head, for one write; a larger one is written
/// after it as it is.
const COPY_BODY: usize = 16 * 1024;

/// How a response is to be written, from its request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply {
    pub version: Version,
    /// A `HEAD` request: headers only.
    pub head_only: bool,
    /// The client wants keep-alive and the server agrees (not shutting down).
    pub keep_alive: bool,
    /// A complete response must be out within this.
    pub write_timeout: Duration,
    /// A stream's writes may wait on the client this long in all.
    pub stall: Duration,
}

/// What happened, for the access log and the connection.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub status: u16,
    /// The connection may serve another request.
    pub keep_alive: bool,
    /// The handler's log fields (a stream may have added some).
    pub log: LogFields,
}

/// A response as the worker left it.
pub(crate) enum Written {
    Done(Outcome),
    /// The client has not taken all of it yet: the rest, for the connection thread.
    Rest(Pending, Outcome),
}

/// Bytes still to go to the client, in order, the first buffer from `at`. Flushed last.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    bufs: VecDeque<Vec<u8>>,
    at: usize,
}

impl Pending {
    fn push(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.bufs.push_back(bytes);
        }
    }

    /// Writes (and flushes) until everything is out or `deadline` passes. `Ok(false)`: the
    /// client has not taken it all by then, and what is left stays here; `Err`: the
    /// connection failed.
    pub(crate) fn write_until<W: Wire + ?Sized>(
        &mut self,
        w: &mut W,
        deadline: Instant,
    ) -> io::Result<bool> {
        let arm = |w: &mut W| -> io::Result<bool> {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            w.set_write_timeout(left.max(Duration::from_millis(1)))?;
            Ok(true)
        };
        while let Some(front) = self.bufs.front() {
            if self.at >= front.len() {
                self.bufs.pop_front();
                self.at = 0;
                continue;
            }
            if !arm(w)? {
                return Ok(false);
            }
            match w.write(&front[self.at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_full(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if !arm(w)? {
            return Ok(false);
        }
        match w.flush() {
            Ok(()) => Ok(true),
            Err(e) if is_full(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A write that timed out: the client is not reading (fast enough).
fn is_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reason phrases for the statuses sigorest and its handlers use.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// HTTP/1.0 stream: the end of the body is the end of the connection.
    UntilClose,
    /// 1xx, 204, 304: no body and no length.
    None,
}

/// Whether a header from a handler may be written as is.
fn header_ok(name: &str, value: &str) -> bool {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty()
        && name.bytes().all(token)
        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
        && !["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
}

/// The status line and headers, ending with the blank line.
fn head(
    status: u16,
    headers: &[(String, String)],
    framing: Framing,
    connection: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers.iter().filter(|(n, v)| header_ok(n, v)) {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    match framing {
        Framing::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::UntilClose | Framing::None => {}
    }
    if let Some(c) = connection {
        let _ = write!(out, "Connection: {c}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A response framed for its request: the head, and the body to follow it.
struct Framed {
    status: u16,
    head: Vec<u8>,
    body: Body,
    /// The body is not sent (HEAD, 204, 304).
    silent: bool,
    chunked: bool,
    keep_alive: bool,
    log: LogFields,
}

/// Decides status, framing and `Connection` for `resp`, and renders its head.
fn frame(reply: &Reply, resp: Response) -> Framed {
    let Response {
        status,
        headers,
        body,
        log,
        close,
    } = resp;
    let status = if (200..=999).contains(&status) {
        status
    } else {
        log::error!(status = status; "handler returned an invalid status; sending 500");
        500
    };
    let no_body = status == 204 || status == 304;
    let framing = match (&body, reply.version) {
        _ if no_body => Framing::None,
        (Body::Full(b), _) => Framing::Length(b.len()),
        (Body::Stream(_), Version::Http11) => Framing::Chunked,
        (Body::Stream(_), Version::Http10) => Framing::UntilClose,
    };
    let keep_alive =
        reply.keep_alive && !close && (framing != Framing::UntilClose || reply.head_only);
    let connection = match (keep_alive, reply.version) {
        (false, _) => Some("close"),
        (true, Version::Http10) => Some("keep-alive"),
        (true, Version::Http11) => None,
    };
    Framed {
        status,
        head: head(status, &headers, framing, connection),
        body,
        silent: reply.head_only || no_body,
        chunked: framing == Framing::Chunked,
        keep_alive,
        log,
    }
}

/// Writes `resp` completely (within the write timeout), on the connection thread. Never
/// panics, even when a stream closure does; a failed write ends keep-alive.
pub(crate) fn write_response<W: Wire + ?Sized>(
    w: &mut W,
    reply: &Reply,
    resp: Response,
) -> Outcome {
    match start(w, reply, resp, reply.write_timeout) {
        Written::Done(out) => out,
        // The whole write timeout is gone: the client is not reading.
        Written::Rest(_, out) => failed(out),
    }
}

/// Writes `resp` on a worker: a complete response as far as the client takes it at once
/// (the rest is returned for the connection thread), a stream to its end.
pub(crate) fn write_for_worker<W: Wire + ?Sized>(
    w: &mut W,
    reply: &Reply,
    resp: Response,
) -> Written {
    start(w, reply, resp, WORKER_TRY)
}

/// Finishes what a worker left (on the connection thread).
pub(crate) fn finish<W: Wire + ?Sized>(
    w: &mut W,
    mut rest: Pending,
    out: Outcome,
    timeout: Duration,
) -> Outcome {
    match rest.write_until(w, Instant::now() + timeout) {
        Ok(true) => out,
        _ => failed(out),
    }
}

fn failed(out: Outcome) -> Outcome {
    Outcome {
        keep_alive: false,
        ..out
    }
}

/// A complete body gets `first_try` to go out before the rest is handed back.
fn start<W: Wire + ?Sized>(
    w: &mut W,
    reply: &Reply,
    resp: Response,
    first_try: Duration,
) -> Written {
    let f = frame(reply, resp);
    let out = Outcome {
        status: f.status,
        keep_alive: f.keep_alive,
        log: f.log,
    };
    let mut pending = Pending::default();
    let mut head = f.head;
    match f.body {
        Body::Stream(body) if !f.silent => {
            return Written::Done(write_stream(w, reply, head, f.chunked, body, out));
        }
        Body::Full(b) if !f.silent && b.len() <= COPY_BODY => {
            head.extend_from_slice(&b);
            pending.push(head);
        }
        Body::Full(b) if !f.silent => {
            pending.push(head);
            pending.push(b);
        }
        Body::Full(_) | Body::Stream(_) => pending.push(head),
    }
    match pending.write_until(w, Instant::now() + first_try) {
        Ok(true) => Written::Done(out),
        Ok(false) => Written::Rest(pending, out),
        Err(_) => Written::Done(failed(out)),
    }
}

/// Writes a stream's head and runs its body into a [`PieceSink`].
fn write_stream<W: Wire + ?Sized>(
    w: &mut W,
    reply: &Reply,
    head: Vec<u8>,
    chunked: bool,
    body: StreamBody,
    mut out: Outcome,
) -> Outcome {
    let mut sink = PieceSink {
        w: &mut *w,
        chunked,
        write_timeout: reply.write_timeout,
        stall_left: reply.stall,
        failed: false,
    };
    if sink.put(head).is_err() {
        return failed(out);
    }
    let result = catch_unwind(AssertUnwindSafe(|| body(&mut sink, &mut out.log)));
    match result {
        Ok(Ok(())) if chunked => {
            if sink.put(b"0\r\n\r\n".to_vec()).is_err() {
                return failed(out);
            }
            out
        }
        Ok(Ok(())) => out,
        Ok(Err(e)) => {
            log::debug!(error:% = e; "stream ended early");
            failed(out)
        }
        Err(_) => {
            log::error!(status = out.status; "stream body panicked; connection closed");
            failed(out)
        }
    }
}

/// The [`Sink`] a stream closure writes to. Its writes may wait on the client for
/// `stall_left` in all (and one write for the write timeout at most).
struct PieceSink<'a, W: Wire + ?Sized> {
    w: &'a mut W,
    chunked: bool,
    write_timeout: Duration,
    stall_left: Duration,
    failed: bool,
}

impl<W: Wire + ?Sized> PieceSink<'_, W> {
    /// Writes these bytes as they are, within what is left of the stall budget.
    fn put(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        let began = Instant::now();
        let mut pending = Pending::default();
        pending.push(bytes);
        let bound = self.write_timeout.min(self.stall_left);
        let result = pending.write_until(self.w, began + bound);
        self.stall_left = self.stall_left.saturating_sub(began.elapsed());
        match result {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.failed = true;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client does not read the stream",
                ))
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }
}

impl<W: Wire + ?Sized> Sink for PieceSink<'_, W> {
    fn send(&mut self, piece: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        // An empty chunk would end the body.
        if piece.is_empty() {
            return Ok(());
        }
        if self.chunked {
            let mut out = Vec::with_capacity(piece.len() + 20);
            let _ = write!(out, "{:x}\r\n", piece.len());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
            self.put(out)
        } else {
            self.put(piece.to_vec())
        }
    }
}

/// Who asked what, for the access log line written when the answer is out.
#[derive(Debug)]
pub(crate) struct Access {
    pub method: String,
    pub path: String,
    pub ip: IpAddr,
    /// The line's `ms` counts from here.
    pub since: Instant,
}

impl Access {
    pub(crate) fn log(&self, out: &Outcome) {
        access_log(
            &self.method,
            &self.path,
            out.status,
            self.ip,
            self.since,
            &out.log,
        );
    }
}

/// One access log line at INFO: method, path (never the query), status, client address,
/// duration, and the handler's fields. Never headers.
pub(crate) fn access_log(
    method: &str,
    path: &str,
    status: u16,
    ip: IpAddr,
    since: Instant,
    extra: &LogFields,
) {
    if !log::log_enabled!(log::Level::Info) {
        return;
    }
    let fields = access_fields(method, path, status, ip, since.elapsed(), extra);
    // Counts and durations go out as numbers (typed in JSON logs), everything else as text.
    let numbers: Vec<Option<f64>> = fields
        .iter()
        .map(|(k, v)| NUMERIC.contains(k).then(|| v.parse::<f64>().ok()).flatten())
        .collect();
    let kvs: Vec<(&str, log::kv::Value)> = fields
        .iter()
        .zip(&numbers)
        .map(|((k, v), n)| match n {
            Some(n) if n.fract() == 0.0 && *n >= 0.0 => (*k, log::kv::Value::from(*n as u64)),
            Some(n) => (*k, log::kv::Value::from(*n)),
            None => (*k, log::kv::Value::from(v.as_str())),
        })
        .collect();
    log::logger().log(
        &log::Record::builder()
            .args(format_args!("request"))
            .level(log::Level::Info)
            .target(module_path!())
            .module_path_static(Some(module_path!()))
            .file_static(Some(file!()))
            .line(Some(line!()))
            .key_values(&kvs)
            .build(),
    );
}

/// Access-log fields whose values are numbers.
const NUMERIC: [&str; 5] = [
    "status",
    "ms",
    "attempts",
    "prompt_tokens",
    "completion_tokens",
];

/// The access log line's fields, in order. `ms` has a hundredth of a millisecond's
/// precision: most answers from the box itself take less than one.
pub(crate) fn access_fields<'a>(
    method: &'a str,
    path: &'a str,
    status: u16,
    ip: IpAddr,
    took: Duration,
    extra: &'a LogFields,
) -> Vec<(&'a str, String)> {
    let mut fields = vec![
        ("method", method.to_string()),
        ("path", path.to_string()),
        ("status", status.to_string()),
        ("ip", ip.to_string()),
        ("ms", format!("{:.2}", took.as_secs_f64() * 1000.0)),
    ];
    fields.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    fields
}

#[cfg(test)]
#[path = "write_tests.rs"]
mod tests;
