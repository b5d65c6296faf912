//! Reading one request off a connection: the head with httparse, then the body (fixed length
//! or chunked), all under deadlines and hard limits.
//!
//! Everything here is generic over [`Wire`] (any non-blocking byte stream), so the framing
//! rules are tested on in-memory bytes; deadlines are timers of the event loop. Nothing allocates more than a
//! limit allows: the input buffer never grows past [`InBuf`]'s cap, a body never past
//! `limits.body_bytes`, and a declared body over the limit is refused before a byte of it is
//! read.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use super::{Headers, Limits, Version};
use crate::error::Error;
use crate::rt::time::timeout_at;
use crate::rt::wire::{Wire, read, write_all};

/// Bytes asked of the socket by one read into the input buffer.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes asked of the socket by one read straight into a body.
const BODY_CHUNK: usize = 64 * 1024;
/// A chunk-size line, extensions included, or one trailer line.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// All trailer lines of a chunked body together.
const MAX_TRAILERS: usize = 16 * 1024;
/// Bytes asked by the first read of a connection (and by a read that must grow the buffer).
const FIRST_READ: usize = 4 * 1024;
/// The input buffer is never smaller than this, so a chunk-size line always fits.
const MIN_BUF: usize = 8 * 1024;

/// Why no request came out of the connection.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed or reset the connection, or the socket failed: close, no answer.
    Closed,
    /// A deadline passed: close silently.
    Timeout,
    /// The request is refused: answer with this error, then close.
    Reject(Box<Rejection>),
}

/// A refused request, with what is known of it for the access log.
#[derive(Debug)]
pub(crate) struct Rejection {
    pub error: Error,
    pub method: Option<String>,
    pub path: Option<String>,
}

fn reject(error: Error) -> ReadError {
    ReadError::Reject(Box::new(Rejection {
        error,
        method: None,
        path: None,
    }))
}

fn invalid(message: &str) -> ReadError {
    reject(Error::invalid(message))
}

/// A head refused as too large (bytes or lines) with the method and path of its request
/// line, when that line is complete and well formed: the refusal is then in the shape of
/// the API the client called (Anthropic's under `/v1/messages`).
fn refused_head(bytes: &[u8], error: Error) -> ReadError {
    let line = bytes
        .iter()
        .position(|&b| b == b'\n')
        .and_then(|end| std::str::from_utf8(&bytes[..end]).ok());
    let parts = line.map(|l| {
        let mut words = l.trim_end_matches('\r').split(' ');
        (words.next(), words.next(), words.next(), words.next())
    });
    let mut r = Rejection {
        error,
        method: None,
        path: None,
    };
    if let Some((Some(method), Some(target), Some(version), None)) = parts
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && target.starts_with('/')
        && version.starts_with("HTTP/1.")
    {
        r.method = Some(method.to_string());
        r.path = Some(target.split('?').next().unwrap_or("").to_string());
    }
    ReadError::Reject(Box::new(r))
}

/// How the body of a request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: Version,
    /// Names in lower case, values lossy UTF-8, in order.
    pub headers: Headers,
    pub framing: Framing,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
    /// Whether the client wants the connection kept open after the response.
    pub keep_alive: bool,
}

/// The bytes read from a connection and not used yet: a partial head, or what a client sent
/// beyond the request being handled (pipelining). Never longer than its cap.
pub(crate) struct InBuf {
    /// Storage, zeroed once as it grows up to `cap`; only `..end` holds data.
    store: Vec<u8>,
    end: usize,
    cap: usize,
}

impl InBuf {
    pub(crate) fn new(limits: &Limits) -> InBuf {
        InBuf {
            store: Vec::new(),
            end: 0,
            cap: limits.head_bytes.max(MIN_BUF),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.end
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.end == 0
    }

    fn bytes(&self) -> &[u8] {
        &self.store[..self.end]
    }

    #[cfg(test)]
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.store.capacity()
    }

    /// Gives memory back between requests when a large head left a large buffer behind.
    pub(crate) fn shrink(&mut self) {
        if self.store.len() > 2 * READ_CHUNK && self.end <= 4096 {
            self.store.truncate(4096);
            self.store.shrink_to_fit();
        }
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.end);
        self.store.copy_within(n..self.end, 0);
        self.end -= n;
    }

    /// Reads once more from the wire, appending at most up to the cap. Returns the number of
    /// bytes added (at least one).
    pub(crate) async fn fill<W: Wire + ?Sized>(
        &mut self,
        w: &mut W,
        deadline: Instant,
    ) -> Result<usize, ReadError> {
        // Fill the storage there is; grow it (doubling) only when full, so that the usual
        // small head costs a small buffer.
        let free = self.store.len() - self.end;
        let room = self
            .cap
            .saturating_sub(self.end)
            .min(READ_CHUNK)
            .min(free.max(FIRST_READ));
        if room == 0 {
            // Callers check their limits before asking for more; this only guards the cap.
            return Err(reject(Error::HeadTooLarge { limit: self.cap }));
        }
        let want = self.end + room;
        if self.store.len() < want {
            grow_within(&mut self.store, want, self.cap);
            let zeroed = self.store.capacity().min(self.cap);
            self.store.resize(zeroed, 0);
        }
        let n = read_timed(w, &mut self.store[self.end..want], deadline).await?;
        self.end += n;
        Ok(n)
    }
}

/// Makes room for `want` bytes without letting the capacity pass `cap` (amortised doubling
/// below it).
fn grow_within(v: &mut Vec<u8>, want: usize, cap: usize) {
    if v.capacity() >= want {
        return;
    }
    let target = want.max(v.capacity().saturating_mul(2)).min(cap).max(want);
    v.reserve_exact(target - v.len());
}

/// One read bounded by `deadline`. End of stream is [`ReadError::Closed`].
pub(crate) async fn read_timed<W: Wire + ?Sized>(
    w: &mut W,
    dst: &mut [u8],
    deadline: Instant,
) -> Result<usize, ReadError> {
    match timeout_at(deadline, std::pin::pin!(read(w, dst))).await {
        Err(_) => Err(ReadError::Timeout),
        Ok(Ok(0)) | Ok(Err(_)) => Err(ReadError::Closed),
        Ok(Ok(n)) => Ok(n),
    }
}

/// Reads one whole request: [`read_head`], then [`read_body`].
#[cfg(test)]
pub(crate) async fn read_request<W: Wire + ?Sized>(
    w: &mut W,
    buf: &mut InBuf,
    limits: &Limits,
    head_deadline: Instant,
    body_timeout: Duration,
    write_timeout: Duration,
) -> Result<(Head, Vec<u8>), ReadError> {
    let head = read_head(w, buf, limits, head_deadline).await?;
    let body = read_body(
        w,
        buf,
        &head,
        limits,
        (body_timeout, write_timeout),
        &mut |_| true,
    )
    .await?;
    Ok((head, body))
}

/// The body budget is spent: 503 `overloaded`, as for a full queue.
fn over_budget() -> ReadError {
    reject(Error::Overloaded { retry_after_s: 1 })
}

/// Reads the body the head announces: refuses one declared over the limit before reading a
/// byte of it, takes its size from the server's body budget (`reserve`: the declared
/// length at once, a chunked body chunk by chunk; refused: 503), sends `100 Continue` first
/// when the client waits for it, then reads within `body_timeout`.
pub(crate) async fn read_body<W: Wire + ?Sized>(
    w: &mut W,
    buf: &mut InBuf,
    head: &Head,
    limits: &Limits,
    (body_timeout, write_timeout): (Duration, Duration),
    reserve: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, ReadError> {
    let with_request = |e: ReadError| match e {
        ReadError::Reject(mut r) => {
            r.method = Some(head.method.clone());
            r.path = Some(head.path.clone());
            ReadError::Reject(r)
        }
        other => other,
    };
    let wants_body = match head.framing {
        Framing::Empty | Framing::Length(0) => false,
        Framing::Length(n) if n > limits.body_bytes as u64 => {
            return Err(with_request(reject(Error::BodyTooLarge {
                limit: limits.body_bytes,
            })));
        }
        // Bounded by the check above.
        Framing::Length(n) if !reserve(n as usize) => return Err(with_request(over_budget())),
        Framing::Length(_) | Framing::Chunked => true,
    };
    // A client that sent some of the body already is not waiting for the interim answer.
    if head.expect_continue && wants_body && buf.is_empty() {
        let sent = timeout_at(
            Instant::now() + write_timeout,
            std::pin::pin!(write_all(w, b"HTTP/1.1 100 Continue\r\n\r\n")),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(ReadError::Closed);
        }
    }
    let deadline = Instant::now() + body_timeout;
    match head.framing {
        Framing::Empty => Ok(Vec::new()),
        // Bounded by the check above.
        Framing::Length(n) => read_exact_body(w, buf, n as usize, deadline)
            .await
            .map_err(with_request),
        Framing::Chunked => read_chunked(w, buf, limits.body_bytes, deadline, reserve)
            .await
            .map_err(with_request),
    }
}

/// Reads until a complete head is in the buffer, parses it and removes it from the buffer.
pub(crate) async fn read_head<W: Wire + ?Sized>(
    w: &mut W,
    buf: &mut InBuf,
    limits: &Limits,
    deadline: Instant,
) -> Result<Head, ReadError> {
    // A head can only end, or gain a header line, at a newline: parsing again only when new
    // bytes bring one keeps a client that sends one byte at a time from costing quadratic CPU.
    let mut parse = !buf.is_empty();
    loop {
        if parse {
            if let Some((head, used)) = parse_head(buf.bytes(), limits)? {
                buf.consume(used);
                return Ok(head);
            }
        } else if buf.len() >= limits.head_bytes {
            return Err(refused_head(
                buf.bytes(),
                Error::HeadTooLarge {
                    limit: limits.head_bytes,
                },
            ));
        }
        let before = buf.len();
        buf.fill(w, deadline).await?;
        parse = buf.bytes()[before..].contains(&b'\n');
    }
}

/// Header slots kept on the stack while parsing a head (32 bytes each); a larger
/// `Limits::header_lines` takes them from the heap.
const STACK_HEADER_SLOTS: usize = 128;

/// Parses a head from the start of `bytes`: `Ok(None)` while it is incomplete and within the
/// limits, else the head and its length.
pub(crate) fn parse_head(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Option<(Head, usize)>, ReadError> {
    let too_large = || {
        refused_head(
            bytes,
            Error::HeadTooLarge {
                limit: limits.head_bytes,
            },
        )
    };
    // The header slots live on the stack for the usual limits: a 3,200-byte allocation per
    // request (100 slots) was the one above the allocator's per-thread cache, and freeing it
    // next to the heap's top merged the free lists each time (`malloc_consolidate`, 1.5 % of
    // the CPU at concurrency 100 in `perf`).
    let mut on_stack = [const { MaybeUninit::uninit() }; STACK_HEADER_SLOTS];
    let mut on_heap = Vec::new();
    let slots = if limits.header_lines <= STACK_HEADER_SLOTS {
        &mut on_stack[..limits.header_lines]
    } else {
        on_heap.resize_with(limits.header_lines, MaybeUninit::uninit);
        &mut on_heap[..]
    };
    let mut req = httparse::Request::new(&mut []);
    let used = match req.parse_with_uninit_headers(bytes, slots) {
        Ok(httparse::Status::Partial) if bytes.len() >= limits.head_bytes => {
            return Err(too_large());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(n)) if n > limits.head_bytes => return Err(too_large()),
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refused_head(
                bytes,
                Error::TooManyHeaders {
                    limit: limits.header_lines,
                },
            ));
        }
        Err(e) => return Err(invalid(&format!("malformed request head: {e}"))),
    };
    Ok(Some((head_of(&req)?, used)))
}

/// The head a complete parse found.
fn head_of(req: &httparse::Request<'_, '_>) -> Result<Head, ReadError> {
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(invalid("malformed request line"));
    };
    let version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    let bytes: usize = req
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len())
        .sum();
    let mut headers = Headers::with_capacity(req.headers.len(), bytes);
    for h in req.headers.iter() {
        headers.push_raw(h.name, h.value);
    }
    let with_names = |e: ReadError| match e {
        ReadError::Reject(mut r) => {
            r.method = Some(method.to_string());
            r.path = Some(target.split('?').next().unwrap_or("").to_string());
            ReadError::Reject(r)
        }
        other => other,
    };
    let (path, query) = split_target(target).map_err(with_names)?;
    let framing = framing(version, &headers).map_err(with_names)?;
    coded_body(&headers, &framing).map_err(with_names)?;
    let expect_continue = version == Version::Http11
        && headers
            .iter()
            .any(|(n, v)| n == "expect" && v.eq_ignore_ascii_case("100-continue"));
    let keep_alive = keep_alive(version, &headers);
    let head = Head {
        method: method.to_string(),
        path,
        query,
        version,
        headers,
        framing,
        expect_continue,
        keep_alive,
    };
    Ok(head)
}

/// A body sent compressed (`Content-Encoding: gzip`, which some SDKs and proxies can be
/// told to do) is refused before it is read, with the reason — not a 400 about the bytes
/// not being UTF-8 once the body's JSON is read. `identity` is no encoding.
fn coded_body(headers: &Headers, framing: &Framing) -> Result<(), ReadError> {
    if matches!(framing, Framing::Empty | Framing::Length(0)) {
        return Ok(());
    }
    let coding = headers
        .iter()
        .filter(|(n, _)| *n == "content-encoding")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
    match coding {
        Some(c) => {
            let c: String = c.chars().take(32).collect();
            Err(invalid(&format!(
                "Content-Encoding '{c}' is not supported: send the body uncompressed"
            )))
        }
        None => Ok(()),
    }
}

/// Splits a request target into path and query. Origin form (`/p?q`), absolute form
/// (`http://host/p?q`, which a server must accept) and `*` are taken; anything else is refused.
fn split_target(target: &str) -> Result<(String, Option<String>), ReadError> {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if target.starts_with('/') || target == "*" {
        target.to_string()
    } else if let Some(skip) = ["http://", "https://"]
        .iter()
        .find(|s| lower.starts_with(**s))
        .map(|s| s.len())
    {
        let after = &target[skip..];
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let rest = &after[end..];
        if rest.starts_with('/') {
            rest.to_string()
        } else {
            format!("/{rest}")
        }
    } else {
        return Err(invalid("request target must be a path"));
    };
    Ok(match rest.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (rest, None),
    })
}

/// Whether the client wants the connection kept open: HTTP/1.1 unless `Connection: close`,
/// HTTP/1.0 only with `Connection: keep-alive`.
pub(crate) fn keep_alive(version: Version, headers: &Headers) -> bool {
    let has = |token: &str| {
        headers
            .iter()
            .filter(|(n, _)| *n == "connection")
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    match version {
        Version::Http11 => !has("close"),
        Version::Http10 => has("keep-alive") && !has("close"),
    }
}

/// How the body is framed. Both `Content-Length` and `Transfer-Encoding`, more than one
/// `Content-Length`, a length that is not a plain decimal number, or a transfer coding other
/// than exactly `chunked` are refused: each is a way to make two parsers disagree on where a
/// request ends (request smuggling).
pub(crate) fn framing(version: Version, headers: &Headers) -> Result<Framing, ReadError> {
    let named = |name: &'static str| headers.iter().filter(move |(n, _)| *n == name);
    let mut lengths = named("content-length").map(|(_, v)| v);
    let (length, more_lengths) = (lengths.next(), lengths.next().is_some());
    let has_te = named("transfer-encoding").next().is_some();
    let mut codings = named("transfer-encoding")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let (coding, more_codings) = (codings.next(), codings.next().is_some());
    match (length, has_te) {
        (None, false) => Ok(Framing::Empty),
        (Some(_), true) => Err(invalid(
            "both Content-Length and Transfer-Encoding: send only one",
        )),
        (None, true) => match (version, coding) {
            (Version::Http11, Some(only))
                if !more_codings && only.eq_ignore_ascii_case("chunked") =>
            {
                Ok(Framing::Chunked)
            }
            (Version::Http10, _) => Err(invalid("Transfer-Encoding is not allowed in HTTP/1.0")),
            _ => Err(invalid(
                "unsupported Transfer-Encoding: only 'chunked' is accepted",
            )),
        },
        (Some(one), false) if !more_lengths => parse_length(one),
        (Some(_), false) => Err(invalid("more than one Content-Length header")),
    }
}

fn parse_length(v: &str) -> Result<Framing, ReadError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("invalid Content-Length"));
    }
    // All digits: a number too big for u64 is simply too big for any limit.
    Ok(Framing::Length(v.parse::<u64>().unwrap_or(u64::MAX)))
}

/// Reads exactly `n` body bytes: first what is buffered, then straight from the wire.
async fn read_exact_body<W: Wire + ?Sized>(
    w: &mut W,
    buf: &mut InBuf,
    n: usize,
    deadline: Instant,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    body.reserve_exact(n.min(BODY_CHUNK));
    append_from(w, buf, &mut body, n, n, deadline).await?;
    Ok(body)
}

/// Appends `n` bytes to `body`, never letting its capacity pass `cap`. Storage is zeroed
/// only as it grows, so a client sending one byte at a time costs no more than one read each.
async fn append_from<W: Wire + ?Sized>(
    w: &mut W,
    buf: &mut InBuf,
    body: &mut Vec<u8>,
    n: usize,
    cap: usize,
    deadline: Instant,
) -> Result<(), ReadError> {
    let from_buf = n.min(buf.len());
    grow_within(body, body.len() + from_buf, cap);
    body.extend_from_slice(&buf.bytes()[..from_buf]);
    buf.consume(from_buf);
    let end = body.len() + (n - from_buf);
    let mut filled = body.len();
    while filled < end {
        let upto = end.min(filled + BODY_CHUNK);
        if body.len() < upto {
            grow_within(body, upto, cap);
            let zeroed = body.capacity().min(end);
            body.resize(zeroed, 0);
        }
        match read_timed(w, &mut body[filled..upto], deadline).await {
            Ok(got) => filled += got,
            Err(e) => {
                body.truncate(filled);
                return Err(e);
            }
        }
    }
    body.truncate(filled);
    Ok(())
}

/// Decodes a chunked body of at most `limit` bytes, each chunk taken from the budget
/// (`reserve`) before it is read; trailers are read and dropped.
async fn read_chunked<W: Wire + ?Sized>(
    w: &mut W,
    buf: &mut InBuf,
    limit: usize,
    deadline: Instant,
    reserve: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(w, buf, MAX_CHUNK_LINE, deadline).await?;
        let size = parse_chunk_size(&buf.bytes()[..line - 2])?;
        buf.consume(line);
        if size == 0 {
            break;
        }
        if size > (limit - body.len()) as u64 {
            return Err(reject(Error::BodyTooLarge { limit }));
        }
        if !reserve(size as usize) {
            return Err(over_budget());
        }
        append_from(w, buf, &mut body, size as usize, limit, deadline).await?;
        while buf.len() < 2 {
            buf.fill(w, deadline).await?;
        }
        if &buf.bytes()[..2] != b"\r\n" {
            return Err(invalid("chunk data not followed by CRLF"));
        }
        buf.consume(2);
    }
    let mut trailers = 0;
    loop {
        let line = read_line(w, buf, MAX_CHUNK_LINE, deadline).await?;
        trailers += line;
        if trailers > MAX_TRAILERS {
            return Err(invalid("chunked trailer section too large"));
        }
        buf.consume(line);
        if line == 2 {
            return Ok(body);
        }
    }
}

/// Waits for a CRLF-terminated line at the start of the buffer, at most `max` bytes long;
/// returns its length including the CRLF. A bare LF is refused.
async fn read_line<W: Wire + ?Sized>(
    w: &mut W,
    buf: &mut InBuf,
    max: usize,
    deadline: Instant,
) -> Result<usize, ReadError> {
    let mut scanned = 0;
    loop {
        let window = &buf.bytes()[..buf.len().min(max)];
        if let Some(i) = window[scanned..].iter().position(|&b| b == b'\n') {
            let i = scanned + i;
            if i == 0 || window[i - 1] != b'\r' {
                return Err(invalid("bare LF in chunked framing"));
            }
            return Ok(i + 1);
        }
        if window.len() >= max {
            return Err(invalid("chunk-size or trailer line too long"));
        }
        scanned = window.len();
        buf.fill(w, deadline).await?;
    }
}

/// `chunk-size [ BWS ";" chunk-ext ]`: hex digits, then nothing or extensions (ignored).
pub(crate) fn parse_chunk_size(line: &[u8]) -> Result<u64, ReadError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(invalid("invalid chunk size"));
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(d))
            .ok_or_else(|| invalid("chunk size overflows"))?;
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    match rest.first() {
        None | Some(b';') => Ok(size),
        Some(_) => Err(invalid("invalid chunk size")),
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
