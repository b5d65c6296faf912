//! sigorest's HTTP/1.1 client for providers, on the event loops: a call is a task that
//! waits for its sockets instead of holding a thread, on pooled keep-alive connections
//! (per loop and destination), clear or TLS (rustls, the web's roots or given ones),
//! directly or through the environment's HTTP proxy (CONNECT).
//!
//! The request goes out in one write (head and body together up to [`ONE_WRITE`]); the
//! answer's head is parsed with httparse, its body framed by `Content-Length`, chunks or
//! the connection's end. A body read to its end gives the connection back to the pool; one
//! dropped before (a stream the client left, a deadline) closes it. A pooled connection
//! that turns out closed by the server — the request cannot be written, or the connection
//! ends at once after it ([`STALE_WITHIN`]) with nothing of an answer — is replaced by a
//! new one, once; a later end is the provider's failure, not sent again here.
//!
//! Deadlines are the caller's: it bounds a call with [`crate::rt::time::timeout_at`];
//! the client itself only bounds connecting ([`CONNECT_TIMEOUT`], split between a name's
//! addresses).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::env::Env;
use crate::rt::net::TcpStream;
use crate::rt::time::timeout_at;
use crate::rt::tls::Stream;
use crate::rt::wire::write_all;

mod conn;
mod names;
mod pool;
mod proxy;
mod response;
pub(crate) mod url;

use conn::Conn;
use names::Names;
pub(crate) use pool::Key;
use proxy::Proxy;
pub(crate) use response::{Framing, Head};
pub(crate) use url::Url;

/// Connecting (TCP, proxy tunnel, TLS) may take this long at most.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Head and body up to this size go out in one write.
const ONE_WRITE: usize = 64 * 1024;
/// Largest answer head.
const MAX_HEAD: usize = 64 * 1024;
/// What a name that resolves to nothing fails with.
pub(crate) const HOST_NOT_FOUND: &str = "host not found";
/// The most room made for a body before its bytes come.
const PREALLOCATE: usize = 256 * 1024;
/// The shortest time one of several addresses is given to connect.
const MIN_PER_ADDRESS: Duration = Duration::from_millis(10);
/// A reused connection that ends (a reset, a close) this soon after the request was
/// written, with nothing of an answer, was closed by the server while it sat idle: the
/// server's close crossed the request, or its reset answers it within a round trip, which
/// is well under a second even over a satellite link. A provider that took the request,
/// worked on it, then dropped the connection ends it later — an LLM provider takes longer
/// than that to answer anything, and what it did in less is little — and must not get the
/// request a second time (it may bill each, and the client's `retries` would not hold).
const STALE_WITHIN: Duration = Duration::from_secs(1);

static CLIENTS: AtomicU64 = AtomicU64::new(0);

/// The client; clones share its TLS settings, names and pools.
#[derive(Clone)]
pub(crate) struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<Proxy>,
    names: Names,
}

/// One request.
pub(crate) struct Request<'a> {
    /// Its head up to its `Content-Length`: the request line and headers, each ending with
    /// CRLF (see [`crate::upstream::target::request_head`]).
    pub(crate) head: &'a [u8],
    pub(crate) url: &'a Url,
    pub(crate) body: &'a [u8],
    /// A `Content-Length` goes out (a POST, or any request with a body).
    pub(crate) length: bool,
    /// A HEAD request (its answer has no body whatever its headers say).
    pub(crate) head_request: bool,
    /// Never through the proxy (Ollama, loopback upstreams).
    pub(crate) direct: bool,
}

/// Why a call got no answer.
#[derive(Debug)]
pub(crate) enum Error {
    /// No connection: the name, TCP, the proxy's tunnel or the TLS handshake failed.
    Connect(io::Error),
    /// The proxy refused the tunnel with this status.
    Proxy(u16),
    /// The request could not be sent.
    Send(io::Error),
    /// The connection failed or ended before the answer's head was complete.
    Receive(io::Error),
    /// What came back is not an HTTP answer.
    Protocol(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "cannot connect: {e}"),
            Error::Proxy(status) => write!(f, "the proxy refused the tunnel ({status})"),
            Error::Send(e) => write!(f, "sending the request: {e}"),
            Error::Receive(e) => write!(f, "waiting for the answer: {e}"),
            Error::Protocol(m) => f.write_str(m),
        }
    }
}

/// An answer: its head, and its body to read.
pub(crate) struct Response {
    pub(crate) head: Head,
    pub(crate) body: Body,
}

impl Client {
    /// A client trusting the web's root certificates, with the proxy of the process
    /// environment.
    pub(crate) fn new() -> Client {
        Client::with_roots(None, &Env::from_process())
    }

    /// A client trusting only `certs` when given (`sigoe -cacert`), with the proxy `env`
    /// names.
    pub(crate) fn with_roots(
        certs: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
        env: &Env,
    ) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        match certs {
            Some(certs) => {
                for c in certs {
                    if let Err(e) = roots.add(c) {
                        log::warn!(error:% = e; "a trusted certificate was not usable");
                    }
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            // The ring provider supports the default versions: this cannot fail.
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        Client {
            inner: Arc::new(Inner {
                id: CLIENTS.fetch_add(1, Ordering::Relaxed),
                tls: Arc::new(tls),
                proxy: Proxy::from_env(env),
                names: Names::default(),
            }),
        }
    }

    /// Sends `req` and waits for the head of its answer (any status). The body is read
    /// from the response.
    pub(crate) async fn send(&self, req: &Request<'_>) -> Result<Response, Error> {
        let proxy = self
            .inner
            .proxy
            .as_ref()
            .filter(|p| !req.direct && p.applies_to(&req.url.host));
        let key = Key {
            client: self.inner.id,
            https: req.url.https,
            host: Arc::clone(&req.url.host),
            port: req.url.port,
            proxied: proxy.is_some(),
        };
        let bytes = request_bytes(req);
        let head_only = req.head_request;
        let mut reused = pool::take(&key);
        loop {
            let was_reused = reused.is_some();
            let mut conn = match reused.take() {
                Some(conn) => conn,
                // Boxed: connecting is rare (connections are pooled) and its future large;
                // inline it would grow every call's future.
                None => Box::pin(self.connect(req.url, proxy)).await?,
            };
            match exchange(&mut conn, &bytes, req.body, head_only).await {
                Ok(head) => {
                    let body = Body::new(conn, &head, key);
                    return Ok(Response { head, body });
                }
                // The server closed the idle connection just before: a new one. Said at
                // INFO, since the request goes out twice (though the first never reached
                // the provider's work).
                Err(e) if was_reused && e.stale => {
                    log::info!(host:% = req.url.host, error:% = e.error; "the provider had closed a pooled connection; the request was sent again on a new one");
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    /// A new connection to `url`: through the proxy's tunnel when given, then TLS for
    /// `https`, all within [`CONNECT_TIMEOUT`].
    async fn connect(&self, url: &Url, proxy: Option<&Proxy>) -> Result<Conn, Error> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let made = timeout_at(
            deadline,
            std::pin::pin!(async {
                let (host, port) = match proxy {
                    Some(p) => (p.host.as_str(), p.port),
                    None => (&*url.host, url.port),
                };
                let addrs = self.inner.names.resolve(host, port).await.map_err(|e| {
                    if e.kind() == io::ErrorKind::NotFound || e.raw_os_error().is_none() {
                        io::Error::new(io::ErrorKind::NotFound, HOST_NOT_FOUND)
                    } else {
                        e
                    }
                })?;
                let tcp = connect_any(&addrs, deadline).await.inspect_err(|_| {
                    // The remembered addresses may be stale: look the name up again next time.
                    self.inner.names.forget();
                })?;
                let _ = tcp.set_nodelay(true);
                let mut conn = Conn::new(Stream::plain(tcp));
                if let Some(p) = proxy {
                    tunnel(&mut conn, url, p).await?;
                }
                if !url.https {
                    return Ok(conn);
                }
                let name = rustls::pki_types::ServerName::try_from(url.host.to_string())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let session = rustls::ClientConnection::new(Arc::clone(&self.inner.tls), name)
                    .map_err(io::Error::other)?;
                let Conn { stream, .. } = conn;
                let mut stream = Stream::tls(stream.into_tcp(), session);
                stream.handshake().await?;
                Ok(Conn::new(stream))
            }),
        )
        .await;
        match made {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(ConnectError::Io(e))) => Err(Error::Connect(e)),
            Ok(Err(ConnectError::Proxy(status))) => Err(Error::Proxy(status)),
            Err(_) => Err(Error::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                "no connection within the connect timeout",
            ))),
        }
    }
}

/// The request (its head, its length, and the body when small) as one buffer.
fn request_bytes(req: &Request<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(req.head.len() + 40 + req.body.len().min(ONE_WRITE));
    out.extend_from_slice(req.head);
    if req.length || !req.body.is_empty() {
        out.extend_from_slice(b"Content-Length: ");
        crate::http::push_decimal(&mut out, req.body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if req.body.len() <= ONE_WRITE {
        out.extend_from_slice(req.body);
    }
    out
}

/// A connection attempt's failure.
enum ConnectError {
    Io(io::Error),
    Proxy(u16),
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Io(e)
    }
}

/// Connects to the first address that answers; each but the last gets half of the time
/// left (at least [`MIN_PER_ADDRESS`]).
async fn connect_any(addrs: &[SocketAddr], deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, HOST_NOT_FOUND);
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = if i + 1 == addrs.len() {
            left
        } else {
            (left / 2).max(MIN_PER_ADDRESS)
        };
        match timeout_at(
            Instant::now() + share,
            std::pin::pin!(TcpStream::connect(*addr)),
        )
        .await
        {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            }
        }
    }
    Err(last)
}

/// Opens the proxy's tunnel to `url` (CONNECT).
async fn tunnel(conn: &mut Conn, url: &Url, proxy: &Proxy) -> Result<(), ConnectError> {
    let target = url.host_port();
    let mut ask = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.authorization {
        ask.push_str("Proxy-Authorization: ");
        ask.push_str(auth);
        ask.push_str("\r\n");
    }
    ask.push_str("\r\n");
    write_all(&mut conn.stream, ask.as_bytes()).await?;
    let head = read_head(conn, true).await.map_err(|e| match e {
        HeadError::Io(e) => ConnectError::Io(e),
        HeadError::Protocol(m) => ConnectError::Io(io::Error::new(io::ErrorKind::InvalidData, m)),
    })?;
    if !(200..300).contains(&head.status) {
        return Err(ConnectError::Proxy(head.status));
    }
    if !conn.buffered().is_empty() {
        return Err(ConnectError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "the proxy sent bytes before the tunnel was used",
        )));
    }
    Ok(())
}

/// A failed exchange, and whether it looks like a pooled connection the server had
/// closed: the request could not be written, or the connection ended within
/// [`STALE_WITHIN`] of it with nothing of an answer.
struct Failed {
    error: Error,
    stale: bool,
}

/// Writes the request and reads the head of its answer (skipping interim 1xx heads).
async fn exchange(
    conn: &mut Conn,
    bytes: &[u8],
    body: &[u8],
    head_only: bool,
) -> Result<Head, Failed> {
    let write = async {
        write_all(&mut conn.stream, bytes).await?;
        if body.len() > ONE_WRITE {
            write_all(&mut conn.stream, body).await?;
        }
        Ok::<(), io::Error>(())
    };
    if let Err(e) = write.await {
        let stale = is_reset(&e);
        return Err(Failed {
            error: Error::Send(e),
            stale,
        });
    }
    let written = Instant::now();
    // An interim answer (100 Continue) says the server has the request.
    let mut interim = false;
    loop {
        let head = match read_head(conn, head_only).await {
            Ok(head) => head,
            Err(HeadError::Io(e)) => {
                let nothing = !interim && conn.buffered().is_empty();
                return Err(Failed {
                    stale: is_reset(&e) && nothing && written.elapsed() < STALE_WITHIN,
                    error: Error::Receive(e),
                });
            }
            Err(HeadError::Protocol(m)) => {
                return Err(Failed {
                    error: Error::Protocol(m),
                    stale: false,
                });
            }
        };
        if (100..200).contains(&head.status) && head.status != 101 {
            interim = true;
            continue;
        }
        return Ok(head);
    }
}

/// The connection reset or ended with nothing received.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

enum HeadError {
    Io(io::Error),
    Protocol(String),
}

async fn read_head(conn: &mut Conn, head_only: bool) -> Result<Head, HeadError> {
    loop {
        if !conn.buffered().is_empty()
            && let Some((head, used)) =
                response::parse_head(conn.buffered(), head_only).map_err(HeadError::Protocol)?
        {
            conn.consume(used);
            return Ok(head);
        }
        if conn.buffered().len() > MAX_HEAD {
            return Err(HeadError::Protocol(format!(
                "not HTTP: the answer's head is larger than {} KiB",
                MAX_HEAD / 1024
            )));
        }
        let had = conn.buffered().len();
        if conn.fill().await.map_err(HeadError::Io)? == 0 {
            let e = if had == 0 {
                io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")
            } else {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the answer's head was cut")
            };
            return Err(HeadError::Io(e));
        }
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    Io(io::Error),
    /// The framing is broken (a bad chunk).
    Protocol(String),
    /// Larger than the limit given.
    TooLarge(u64),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Io(e) => write!(f, "{e}"),
            BodyError::Protocol(m) => f.write_str(m),
            BodyError::TooLarge(n) => write!(f, "answer larger than {n} bytes"),
        }
    }
}

/// An answer's body, read as it comes. Read to its end, its connection goes back to the
/// pool when the body is dropped; dropped before, the connection is closed.
pub(crate) struct Body {
    conn: Option<Conn>,
    framing: Framing,
    /// Bytes left of a `Content-Length` body.
    left: u64,
    chunked: response::Chunked,
    done: bool,
    keep_alive: bool,
    key: Key,
}

impl Body {
    fn new(conn: Conn, head: &Head, key: Key) -> Body {
        let (left, done) = match head.framing {
            Framing::Empty => (0, true),
            Framing::Length(n) => (n, n == 0),
            Framing::Chunked | Framing::UntilClose => (0, false),
        };
        Body {
            conn: Some(conn),
            framing: head.framing,
            left,
            chunked: response::Chunked::default(),
            done,
            keep_alive: head.keep_alive,
            key,
        }
    }

    /// Whether the whole body has been read.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the connection can serve another request once the body has been read: not
    /// when the server said `Connection: close`, nor when the body ends only with the
    /// connection.
    pub(crate) fn reusable(&self) -> bool {
        self.keep_alive && self.framing != Framing::UntilClose
    }

    /// Appends the next bytes of the body to `out`, waiting for them; false at its end.
    pub(crate) async fn next(&mut self, out: &mut Vec<u8>) -> Result<bool, BodyError> {
        loop {
            if self.done {
                return Ok(false);
            }
            let Some(conn) = self.conn.as_mut() else {
                return Ok(false);
            };
            let before = out.len();
            if !conn.buffered().is_empty() {
                match self.framing {
                    Framing::Empty => self.done = true,
                    Framing::Length(_) => {
                        let n = (self.left.min(conn.buffered().len() as u64)) as usize;
                        out.extend_from_slice(&conn.buffered()[..n]);
                        conn.consume(n);
                        self.left -= n as u64;
                        self.done = self.left == 0;
                    }
                    Framing::Chunked => {
                        let used = self
                            .chunked
                            .decode(conn.buffered(), out)
                            .map_err(BodyError::Protocol)?;
                        conn.consume(used);
                        self.done = self.chunked.is_done();
                    }
                    Framing::UntilClose => {
                        out.extend_from_slice(conn.buffered());
                        let n = conn.buffered().len();
                        conn.consume(n);
                    }
                }
                if out.len() > before || self.done {
                    return Ok(!self.done || out.len() > before);
                }
            }
            let n = conn.fill().await.map_err(BodyError::Io)?;
            if n == 0 {
                if self.framing == Framing::UntilClose {
                    self.done = true;
                    self.keep_alive = false;
                    return Ok(false);
                }
                return Err(BodyError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the answer was cut short",
                )));
            }
        }
    }

    /// Reads the whole body, refusing one over `limit` bytes.
    pub(crate) async fn read_all(&mut self, limit: u64) -> Result<Vec<u8>, BodyError> {
        if let Framing::Length(n) = self.framing
            && n > limit
        {
            return Err(BodyError::TooLarge(limit));
        }
        // Room for what the head announces, up to a bound: a length is only a claim
        // until the bytes come.
        let mut out = Vec::with_capacity(match self.framing {
            Framing::Length(n) => (n as usize).min(PREALLOCATE),
            _ => 1024,
        });
        while self.next(&mut out).await? {
            if out.len() as u64 > limit {
                return Err(BodyError::TooLarge(limit));
            }
        }
        if out.len() as u64 > limit {
            return Err(BodyError::TooLarge(limit));
        }
        Ok(out)
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.done
            && self.keep_alive
        {
            pool::put(self.key.clone(), conn);
        }
    }
}

/// Idle connections on this thread's loop (tests).
#[cfg(test)]
pub(crate) fn idle_here() -> usize {
    pool::idle_here()
}

#[cfg(test)]
pub(crate) mod tests;
