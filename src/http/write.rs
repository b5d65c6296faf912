//! Writing a [`Response`]: status line and headers, then the body with a `Content-Length`
//! (a small body in the same buffer: one write), or as chunks (HTTP/1.1) or close-delimited
//! (HTTP/1.0), one write per piece. Also the access log line.
//!
//! The server owns the framing headers (`Content-Length`, `Transfer-Encoding`, `Connection`):
//! a handler's own are dropped, and so is any header that could split the response.
//!
//! A response is written by its connection's task on the event loop, so a slow reader holds
//! nothing but that task: a complete answer may take [`Reply::write_timeout`] in all; a
//! stream's writes may wait on the client for [`Reply::stall`] in all, then the stream ends
//! (its producer's next piece fails) and the connection closes.

use std::future::{Future, poll_fn};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::pipe::{Next, Pipe};
use super::{Hangup, LogFields, Version};
use crate::rt::time::{Sleep, sleep_until, timeout_at};
use crate::rt::wire::{Wire, write_all};

/// How long a stream's producer on the loop may take to notice that its client has gone
/// (the pipe failed, the hang-up fired) and finish its books, before it is dropped.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// Looks after the client while a stream is written (see `watch`): called at every turn.
pub(crate) type WatchFn<'a, W> = &'a mut dyn FnMut(&mut Context<'_>, &W);

/// A body up to this size is copied behind the head, for one write; a larger one is written
/// after it as it is.
const COPY_BODY: usize = 16 * 1024;

/// The task that makes a streamed body's pieces on the event loop (see [`super::Body::Piped`]).
pub(crate) type Producer = Pin<Box<dyn Future<Output = (io::Result<()>, LogFields)>>>;

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

/// The status line and headers, ending with the blank line. (Written byte by byte, not
/// through `format!`: this runs for every response.)
fn head(
    status: u16,
    headers: &[(String, String)],
    framing: Framing,
    connection: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        128 + headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>(),
    );
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(&mut out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in headers.iter().filter(|(n, v)| header_ok(n, v)) {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(&mut out, n as u64);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::UntilClose | Framing::None => {}
    }
    if let Some(c) = connection {
        out.extend_from_slice(b"Connection: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Appends `n` in decimal.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `n` in lower-case hexadecimal (a chunk's size).
fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A response's body as the connection writes it.
pub(crate) enum OutBody {
    Full(Vec<u8>),
    /// Pieces from a pipe, made by a producer on this loop (or on a worker thread, which
    /// then feeds the pipe itself).
    Piped(Pipe, Option<Producer>),
}

/// A response as the connection writes it: its head's parts and its body.
pub(crate) struct Out {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: OutBody,
    pub log: LogFields,
    pub close: bool,
}

/// A response framed for its request: the head, and the body to follow it.
pub(crate) struct Framed {
    pub(crate) status: u16,
    pub(crate) head: Vec<u8>,
    pub(crate) body: OutBody,
    /// The body is not sent (HEAD, 204, 304).
    pub(crate) silent: bool,
    pub(crate) chunked: bool,
    pub(crate) keep_alive: bool,
    pub(crate) log: LogFields,
}

/// Decides status, framing and `Connection` for `resp`, and renders its head.
pub(crate) fn frame(reply: &Reply, resp: Out) -> Framed {
    let Out {
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
        (OutBody::Full(b), _) => Framing::Length(b.len()),
        (OutBody::Piped(..), Version::Http11) => Framing::Chunked,
        (OutBody::Piped(..), Version::Http10) => Framing::UntilClose,
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

/// Writes a response completely: a complete one within the write timeout, a stream to its
/// end within its stall budget, with `watch` looking after the client meanwhile. A failed
/// or unfinished write ends keep-alive; for a stream it also fires `hangup` and fails the
/// pipe, which ends its producer.
pub(crate) async fn write_response<W: Wire + ?Sized>(
    w: &mut W,
    reply: &Reply,
    resp: Out,
    hangup: &Hangup,
    watch: WatchFn<'_, W>,
) -> Outcome {
    let f = frame(reply, resp);
    let mut out = Outcome {
        status: f.status,
        keep_alive: f.keep_alive,
        log: f.log,
    };
    let mut head = f.head;
    let written = match f.body {
        OutBody::Piped(pipe, producer) if !f.silent => {
            let stream = Stream {
                reply,
                chunked: f.chunked,
                pipe: &pipe,
                hangup,
            };
            let (written, log) = write_piped(w, head, stream, producer, watch).await;
            out.log.extend(log);
            written
        }
        OutBody::Piped(pipe, producer) => {
            // HEAD: the producer is not run; a worker feeding the pipe stops at its next piece.
            drop(producer);
            pipe.fail(io::ErrorKind::BrokenPipe);
            write_within(w, &head, reply.write_timeout).await
        }
        OutBody::Full(b) if !f.silent && b.len() <= COPY_BODY => {
            head.extend_from_slice(&b);
            write_within(w, &head, reply.write_timeout).await
        }
        OutBody::Full(b) if !f.silent => {
            let deadline = Instant::now() + reply.write_timeout;
            let head_written = timeout_at(deadline, std::pin::pin!(write_all(w, &head))).await;
            match head_written {
                Ok(Ok(())) => {
                    write_within(w, &b, deadline.saturating_duration_since(Instant::now())).await
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            }
        }
        OutBody::Full(_) => write_within(w, &head, reply.write_timeout).await,
    };
    if let Err(e) = written {
        log::debug!(error:% = e, status = out.status; "response not written whole");
        out.keep_alive = false;
    }
    out
}

/// Writes all of `bytes` within `timeout`.
async fn write_within<W: Wire + ?Sized>(
    w: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> io::Result<()> {
    match timeout_at(
        Instant::now() + timeout,
        std::pin::pin!(write_all(w, bytes)),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client does not read",
        )),
    }
}

/// A piece framed for the wire: a chunk in HTTP/1.1, as it is otherwise.
fn framed_piece(piece: Vec<u8>, chunked: bool) -> Vec<u8> {
    if !chunked {
        return piece;
    }
    let mut out = Vec::with_capacity(piece.len() + 20);
    push_hex(&mut out, piece.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&piece);
    out.extend_from_slice(b"\r\n");
    out
}

/// What a stream is written with.
struct Stream<'a> {
    reply: &'a Reply,
    chunked: bool,
    pipe: &'a Pipe,
    hangup: &'a Hangup,
}

/// Writes a stream: the head, then each piece as it comes out of the pipe, running the
/// producer (when it lives on this loop) as it goes. The client may keep the writes waiting
/// for `reply.stall` in all. Past it, or when a write fails, the hang-up fires and the pipe
/// is failed, and a producer on this loop gets [`WIND_DOWN`] to finish its books. Returns
/// how the stream ended and the producer's log fields.
async fn write_piped<W: Wire + ?Sized>(
    w: &mut W,
    head: Vec<u8>,
    s: Stream<'_>,
    mut producer: Option<Producer>,
    watch: WatchFn<'_, W>,
) -> (io::Result<()>, LogFields) {
    let mut pending = head;
    let mut at = 0;
    let mut flushed = false;
    let mut ended: Option<(io::Result<()>, LogFields)> = None;
    let mut stall_left = s.reply.stall;
    // While the client keeps a write waiting: since when, and the alarm for the budget.
    let mut blocked: Option<(Instant, Sleep)> = None;
    // The stream has failed: why, and the alarm that ends the producer's wind-down.
    let mut failed: Option<(io::Error, Sleep)> = None;
    let result = poll_fn(|cx| {
        loop {
            if let Some(p) = producer.as_mut()
                && let Poll::Ready((result, log)) = p.as_mut().poll(cx)
            {
                producer = None;
                s.pipe.finish(result, log);
            }
            if let Some((e, alarm)) = failed.as_mut() {
                if producer.is_some() && Pin::new(alarm).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Whatever the producer said last, the stream is cut.
                if let Poll::Ready(Next::End(result, log)) = s.pipe.poll_next(cx) {
                    ended = Some((result, log));
                }
                return Poll::Ready(Err(io::Error::new(e.kind(), e.to_string())));
            }
            watch(cx, w);
            let step = write_step(w, cx, (&mut pending, &mut at, &mut flushed), &mut ended, &s);
            let error = match step {
                Step::Again => continue,
                Step::Wait => {
                    let (_, alarm) = blocked.get_or_insert_with(|| {
                        let now = Instant::now();
                        (now, sleep_until(now + stall_left))
                    });
                    if Pin::new(alarm).poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client does not read the stream",
                    )
                }
                Step::Wrote => {
                    if let Some((since, _)) = blocked.take() {
                        stall_left = stall_left.saturating_sub(since.elapsed());
                    }
                    continue;
                }
                Step::Idle => return Poll::Pending,
                Step::Done(r) => return Poll::Ready(r),
                Step::Failed(e) => e,
            };
            s.hangup.fire();
            s.pipe.fail(io::ErrorKind::BrokenPipe);
            failed = Some((error, sleep_until(Instant::now() + WIND_DOWN)));
        }
    })
    .await;
    if let Err(e) = &result {
        log::debug!(error:% = e; "stream ended early");
    }
    let log = ended.map(|(_, log)| log).unwrap_or_default();
    (result, log)
}

/// One turn of a stream's writing.
enum Step {
    /// Progress: look again.
    Again,
    /// Some bytes went out.
    Wrote,
    /// The client keeps a write waiting.
    Wait,
    /// Waiting for the producer.
    Idle,
    /// The stream is over, with this result.
    Done(io::Result<()>),
    /// A write failed.
    Failed(io::Error),
}

/// The bytes being written: the buffer, how far it went, and whether what went is flushed.
type Writing<'a> = (&'a mut Vec<u8>, &'a mut usize, &'a mut bool);

fn write_step<W: Wire + ?Sized>(
    w: &mut W,
    cx: &mut Context<'_>,
    (pending, at, flushed): Writing<'_>,
    ended: &mut Option<(io::Result<()>, LogFields)>,
    s: &Stream<'_>,
) -> Step {
    if *at < pending.len() {
        return match w.poll_write(cx, &pending[*at..]) {
            Poll::Ready(Ok(0)) => Step::Failed(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                *at += n;
                *flushed = false;
                Step::Wrote
            }
            Poll::Ready(Err(e)) => Step::Failed(e),
            Poll::Pending => Step::Wait,
        };
    }
    if !*flushed {
        match w.poll_flush(cx) {
            Poll::Ready(Ok(())) => *flushed = true,
            Poll::Ready(Err(e)) => return Step::Failed(e),
            Poll::Pending => return Step::Wait,
        }
    }
    if let Some((result, _)) = ended {
        return Step::Done(match result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        });
    }
    match s.pipe.poll_next(cx) {
        Poll::Ready(Next::Piece(p)) => {
            // An empty chunk would end the body.
            if !p.is_empty() {
                *pending = framed_piece(p, s.chunked);
                *at = 0;
            }
            Step::Again
        }
        Poll::Ready(Next::End(result, log)) => {
            if result.is_ok() && s.chunked {
                *pending = b"0\r\n\r\n".to_vec();
                *at = 0;
            }
            *ended = Some((result, log));
            Step::Again
        }
        Poll::Pending => Step::Idle,
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
