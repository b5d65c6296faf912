//! Writing a [`Response`]: status line and headers, then the body with a `Content-Length` in
//! the same buffer (one write), or as chunks (HTTP/1.1) or close-delimited (HTTP/1.0), one
//! write and one flush per piece. Also the access log line.
//!
//! The server owns the framing headers (`Content-Length`, `Transfer-Encoding`, `Connection`):
//! a handler's own are dropped, and so is any header that could split the response.

use std::io::{self, Write};
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use super::wire::{Wire, write_all_within};
use super::{Body, LogFields, Response, Sink, Version};

/// How a response is to be written, from its request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply {
    pub version: Version,
    /// A `HEAD` request: headers only.
    pub head_only: bool,
    /// The client wants keep-alive and the server agrees (not shutting down).
    pub keep_alive: bool,
    pub write_timeout: Duration,
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

/// Writes `resp` for a request described by `reply`. Never panics, even when a stream
/// closure does; a failed write ends keep-alive.
pub(crate) fn write_response<W: Wire + ?Sized>(
    w: &mut W,
    reply: &Reply,
    resp: Response,
) -> Outcome {
    let Response {
        status,
        headers,
        body,
        mut log,
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
    let mut out = head(status, &headers, framing, connection);
    let failed = |log| Outcome {
        status,
        keep_alive: false,
        log,
    };
    match body {
        Body::Full(b) => {
            if !reply.head_only && !no_body {
                out.extend_from_slice(&b);
            }
            if write_all_within(w, &out, reply.write_timeout).is_err() {
                return failed(log);
            }
        }
        Body::Stream(_) if reply.head_only || no_body => {
            if write_all_within(w, &out, reply.write_timeout).is_err() {
                return failed(log);
            }
        }
        Body::Stream(f) => {
            if write_all_within(w, &out, reply.write_timeout).is_err() {
                return failed(log);
            }
            let chunked = framing == Framing::Chunked;
            let mut sink = PieceSink {
                w: &mut *w,
                chunked,
                timeout: reply.write_timeout,
                failed: false,
            };
            let result = catch_unwind(AssertUnwindSafe(|| f(&mut sink, &mut log)));
            match result {
                Ok(Ok(())) if chunked => {
                    if write_all_within(w, b"0\r\n\r\n", reply.write_timeout).is_err() {
                        return failed(log);
                    }
                }
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    log::debug!(error:% = e; "stream ended early");
                    return failed(log);
                }
                Err(_) => {
                    log::error!(status = status; "stream body panicked; connection closed");
                    return failed(log);
                }
            }
        }
    }
    Outcome {
        status,
        keep_alive,
        log,
    }
}

/// The [`Sink`] a stream closure writes to.
struct PieceSink<'a, W: Wire + ?Sized> {
    w: &'a mut W,
    chunked: bool,
    timeout: Duration,
    failed: bool,
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
        let result = if self.chunked {
            let mut out = Vec::with_capacity(piece.len() + 20);
            let _ = write!(out, "{:x}\r\n", piece.len());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
            write_all_within(self.w, &out, self.timeout)
        } else {
            write_all_within(self.w, piece, self.timeout)
        };
        if result.is_err() {
            self.failed = true;
        }
        result
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
