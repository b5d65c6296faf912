//! One task per admitted connection, on an event loop: the TLS handshake, then a loop of
//! reading a request under its deadlines and answering it — at once for a quick answer, else
//! once it has a worker's place, on the loop or on a worker thread, while watching the
//! client — until the connection ends. Also the refusal of a peer outside the allow list.
//!
//! The task owns its connection throughout: the answer is written by it too, so a slow
//! reader holds nothing but this task, and a shutdown reaches every connection through its
//! loop (see `shared`).

use std::future::{Future, poll_fn};
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::ServerConnection;

use super::access::AllowList;
use super::budget::Lease;
use super::gate::{Entering, Full, Place};
use super::parse::{Framing, InBuf, ReadError, Rejection, read_body, read_head};
use super::pipe::{BlockingSink, Pipe};
use super::shared::{Shared, Slot, Tracking, handler_failed, panic_message, stream_panicked};
use super::watch::Watch;
use super::write::{Access, Out, OutBody, Producer, Reply, access_log, write_response};
use super::{Body, Hangup, Request, Response, StreamBody, Version};
use crate::error::Error;
use crate::rt::net::TcpStream;
use crate::rt::time::timeout_at;
use crate::rt::tls::Stream;
use crate::rt::wire::read;

/// Everything a refused peer gets: handshake, 403, lingering read, in all.
pub(crate) const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// After a refusal, at most this many bytes are read and dropped while lingering.
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// A listener's settings, as its connections need them.
pub(crate) struct ListenerCtx {
    pub(crate) allow: AllowList,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) port: u16,
}

/// A connection between requests: the stream and the bytes read ahead.
struct Conn {
    stream: Stream,
    buf: InBuf,
    peer: IpAddr,
}

/// The connection's task. `slot` counts it (for its address and in all) until it ends.
pub(crate) async fn serve(ctx: Arc<ListenerCtx>, tcp: TcpStream, slot: Slot) {
    let tracking = Tracking::new();
    // A forced shutdown ends the work wherever it waits (its socket closes with it).
    let mut work = pin!(run(&slot.shared, &ctx, tcp, slot.peer, &tracking));
    poll_fn(|cx| {
        if tracking.killed(cx.waker()) {
            return Poll::Ready(());
        }
        work.as_mut().poll(cx)
    })
    .await;
}

/// Runs `fut` unless the server stops first (then `None`).
async fn until_stopped<F: Future>(shared: &Shared, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if shared.is_stopping() {
            return Poll::Ready(None);
        }
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

async fn run(
    shared: &Arc<Shared>,
    ctx: &ListenerCtx,
    tcp: TcpStream,
    peer: IpAddr,
    tracking: &Tracking,
) {
    let started = Instant::now();
    let t = &shared.timeouts;
    tracking.set_waiting(true);
    let Some(stream) = open(shared, ctx, tcp, started + t.head).await else {
        return;
    };
    let mut conn = Conn {
        stream,
        buf: InBuf::new(&shared.limits),
        peer,
    };
    let mut deadline = started + t.head;
    loop {
        let Some((req, reply, lease)) = read_request(shared, &mut conn, deadline, tracking).await
        else {
            return;
        };
        if !answer(shared, &mut conn, req, reply, lease, tracking).await {
            conn.stream.close();
            return;
        }
        let Some(d) = next_request(shared, &mut conn, tracking).await else {
            return;
        };
        deadline = d;
    }
}

/// The stream: clear, or through the TLS handshake (by `deadline`, or until a shutdown).
/// `None`: the client failed the handshake, left, or was too slow (closed without an answer).
async fn open(
    shared: &Shared,
    ctx: &ListenerCtx,
    tcp: TcpStream,
    deadline: Instant,
) -> Option<Stream> {
    let Some(cfg) = &ctx.tls else {
        return Some(Stream::plain(tcp));
    };
    // Plain HTTP sent to the HTTPS port (`curl http://box:9443`): a TLS handshake starts
    // with the byte 0x16, an HTTP request with its method's capital letter. Such a client
    // gets a 400 it can read (and curl shows) instead of a TLS alert it cannot.
    let first = until_stopped(shared, timeout_at(deadline, pin!(first_byte(&tcp)))).await;
    if let Some(Ok(Some(b'A'..=b'Z'))) = first {
        let body = br#"{"error":{"code":"plain_http_on_https_port","message":"this port speaks HTTPS: use https:// (the plain HTTP port is another)","param":null,"type":"invalid_request_error"}}"#;
        let head = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // Small enough for the socket's buffer: one write, what it takes.
        let _ = tcp.try_write(&[head.as_bytes(), body].concat());
        let _ = tcp.shutdown(std::net::Shutdown::Write);
        log::debug!(port = ctx.port; "plain HTTP on the HTTPS port: 400");
        // Its request read and dropped, briefly, so that it gets the 400 and not a reset.
        let mut plain = Stream::plain(tcp);
        linger(
            &mut plain,
            deadline.min(Instant::now() + Duration::from_secs(1)),
        )
        .await;
        return None;
    }
    let session = ServerConnection::new(Arc::clone(cfg)).ok()?;
    let mut stream = Stream::tls(tcp, session);
    let shaken = until_stopped(
        shared,
        timeout_at(deadline, std::pin::pin!(stream.handshake())),
    )
    .await;
    match shaken {
        Some(Ok(Ok(()))) => Some(stream),
        Some(Ok(Err(e))) => {
            log::debug!(error:% = e; "TLS handshake failed");
            None
        }
        _ => None,
    }
}

/// The first byte a client sends, waiting for it without taking it; `None` at the end of
/// the connection or on an error.
async fn first_byte(tcp: &TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    loop {
        match tcp.peek(&mut b) {
            Ok(0) => return None,
            Ok(_) => return Some(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tcp.wait_next_read_event();
                poll_fn(|cx| tcp.poll_readable(cx)).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Between requests: waits (up to the idle timeout) for the next one's first byte; returns
/// the deadline of its head. `None`: the connection is over.
async fn next_request(shared: &Shared, conn: &mut Conn, tracking: &Tracking) -> Option<Instant> {
    let t = &shared.timeouts;
    // Before looking at the flag, so that a shutdown either sees this or is seen here.
    tracking.set_waiting(true);
    if shared.is_stopping() {
        conn.stream.close();
        return None;
    }
    conn.buf.shrink();
    if conn.buf.is_empty() {
        let idle_until = Instant::now() + t.idle;
        match until_stopped(shared, conn.buf.fill(&mut conn.stream, idle_until)).await {
            Some(Ok(_)) => {}
            Some(Err(ReadError::Timeout)) | None => {
                conn.stream.close();
                return None;
            }
            Some(Err(_)) => return None,
        }
    }
    Some(Instant::now() + t.head)
}

/// Reads one request: its head by `deadline` (or until a shutdown), then its body within
/// the body timeout and the body budget. `None`: no request (closed, refused and
/// answered, timed out).
async fn read_request(
    shared: &Shared,
    conn: &mut Conn,
    deadline: Instant,
    tracking: &Tracking,
) -> Option<(Request, Reply, Lease)> {
    let (t, limits) = (&shared.timeouts, &shared.limits);
    tracking.set_waiting(true);
    let began = Instant::now();
    let mut lease = Lease::new(&shared.bodies);
    let read = async {
        let head = match until_stopped(
            shared,
            read_head(&mut conn.stream, &mut conn.buf, limits, deadline),
        )
        .await
        {
            Some(head) => head?,
            None => return Err(ReadError::Timeout),
        };
        // The request is under way: a shutdown lets it finish.
        tracking.set_waiting(false);
        // With `Expect: 100-continue`, the pre-queue check is made now and not again.
        let checked_early =
            head.expect_continue && !matches!(head.framing, Framing::Empty | Framing::Length(0));
        if checked_early && let Some(resp) = judge_head(shared, conn, &head) {
            return Ok(Read::Answered(head, resp));
        }
        let mut reserve = |n: usize| lease.grow(n);
        let body = read_body(
            &mut conn.stream,
            &mut conn.buf,
            &head,
            limits,
            (t.body, t.write),
            &mut reserve,
        )
        .await?;
        Ok(Read::Request(head, body, checked_early))
    };
    let (head, body, checked_early) = match read.await {
        Ok(Read::Request(head, body, checked)) => (head, body, checked),
        Ok(Read::Answered(head, resp)) => {
            // Boxed: rare, and it would grow every connection's future.
            let (method, path) = (Some(head.method), Some(head.path));
            Box::pin(answer_and_close(
                shared,
                conn,
                *resp,
                method,
                path,
                Some(began),
            ))
            .await;
            return None;
        }
        Err(ReadError::Reject(rejection)) => {
            // Boxed: rare, and it would grow every connection's future.
            Box::pin(refuse(shared, conn, *rejection, Some(began))).await;
            return None;
        }
        Err(e) => {
            if matches!(e, ReadError::Timeout) {
                conn.stream.close();
            }
            log::debug!(ip:% = conn.peer, reason:? = e; "connection closed without a request");
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
    Some((request_of(head, body, conn, checked_early), reply, lease))
}

/// The handler's view of a request read on `conn`.
fn request_of(
    head: super::parse::Head,
    body: Vec<u8>,
    conn: &Conn,
    checked_early: bool,
) -> Request {
    Request {
        method: head.method,
        path: head.path,
        query: head.query,
        version: head.version,
        headers: head.headers,
        body,
        peer: conn.peer,
        tls: conn.stream.is_tls(),
        received: Instant::now(),
        hangup: Hangup::default(),
        checked_early,
    }
}

/// What reading a request gave: the request (its head, its body, and whether
/// [`Handler::before_queue`](super::Handler::before_queue) has let it through already),
/// or a head answered before its body was read.
enum Read {
    Request(super::parse::Head, Vec<u8>, bool),
    Answered(super::parse::Head, Box<Response>),
}

/// A client that sends `Expect: 100-continue` waits for `100 Continue` before it sends its
/// body (curl does for bodies over 1 KiB): a request the head alone decides — a path or
/// method the gateway does not serve, a missing or unknown key, the per-IP limit — is
/// answered before the body is asked for (RFC 9110 §10.1.1), so that a client with a stale
/// key does not upload up to 32 MiB to be told so. Quick answers (404, 405, the lists) need
/// no body; any other request is judged by [`Handler::before_queue`], which then is not
/// asked again. `None`: the request may go on.
fn judge_head(shared: &Shared, conn: &Conn, head: &super::parse::Head) -> Option<Box<Response>> {
    let early = request_of(head.clone(), Vec::new(), conn, false);
    if shared.handler.is_quick(&early) {
        return Some(Box::new(shared.call_handler(&early)));
    }
    shared.handler.before_queue(&early).map(Box::new)
}

/// Answers a request: a quick one at once, any other once it has a worker's place (503
/// when the line is full or it waited too long). Returns whether the connection may serve
/// another request.
async fn answer(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    req: Request,
    reply: Reply,
    lease: Lease,
    tracking: &Tracking,
) -> bool {
    // (Nothing of it is kept when the access log is off, `-q`.)
    let access = log::log_enabled!(log::Level::Info).then(|| Access {
        method: req.method.clone(),
        path: req.path.clone(),
        ip: req.peer,
        since: req.received,
    });
    let hangup = req.hangup.clone();
    tracking.set_hangup(Some(hangup.clone()));
    let mut watch = Watch::new(conn.stream.is_tls(), req.version == Version::Http11);
    let (resp, place) = if shared.handler.is_quick(&req) {
        (shared.call_handler(&req), None)
    } else {
        handle(shared, conn, req, &mut watch, &hangup).await
    };
    drop(lease);
    let reply = Reply {
        keep_alive: reply.keep_alive && !shared.is_stopping(),
        ..reply
    };
    let out = outgoing(shared, resp);
    // A complete answer holds no place while it is written (a slow reader must not keep a
    // worker's place); a stream holds its place until it ends.
    let place = match out.body {
        OutBody::Full(_) => {
            drop(place);
            None
        }
        OutBody::Piped(..) => place,
    };
    watch.answering(conn.stream.tcp());
    let mut looking = |cx: &mut Context<'_>, s: &Stream| watch.poll(cx, s.tcp(), &hangup);
    let out = write_response(&mut conn.stream, &reply, out, &hangup, &mut looking).await;
    if let Some(access) = &access {
        access.log(&out);
    }
    drop(place);
    tracking.set_hangup(None);
    out.keep_alive && !shared.is_stopping()
}

/// A request that is not quick: its place, then its handler, while the client is watched
/// throughout (a client that leaves the line is answered by [`Handler::left_queue`]).
async fn handle(
    shared: &Arc<Shared>,
    conn: &Conn,
    mut req: Request,
    watch: &mut Watch,
    hangup: &Hangup,
) -> (Response, Option<Place>) {
    let tcp = conn.stream.tcp();
    if !req.checked_early
        && let Some(refused) = shared.handler.before_queue(&req)
    {
        return (refused, None);
    }
    req.checked_early = true;
    let overloaded = |path: &str| {
        shared
            .stats
            .overloaded_total
            .fetch_add(1, Ordering::Relaxed);
        let e = Error::Overloaded { retry_after_s: 1 };
        shared.handler.error_response(path, &e)
    };
    let mut entering: Entering = match shared.gate.enter() {
        Ok(e) => e,
        Err(Full::Queue) => return (overloaded(&req.path), None),
    };
    // In the line, the client is watched as while its request runs: one that leaves (or a
    // shutdown's end of grace) takes the request out of the line at once, freeing its
    // place there and its connection.
    let until = req.received + shared.timeouts.queue_wait;
    let waited = watched(
        tcp,
        watch,
        hangup,
        unless_hung_up(hangup, timeout_at(until, std::pin::pin!(entering.wait()))),
    )
    .await;
    drop(entering);
    let place = match waited {
        Some(Ok(place)) => place,
        Some(Err(_)) => return (overloaded(&req.path), None),
        None => {
            let e = if hangup.stopped_by_server() {
                Error::ShuttingDown
            } else {
                Error::ClientGone
            };
            let mut resp = shared.handler.left_queue(&req, &e);
            resp.close = true;
            return (resp, None);
        }
    };
    let resp = if shared.handler.answers_on_loop(&req) {
        let answering = Arc::clone(&shared.handler).answer(req);
        watched(tcp, watch, hangup, caught(answering)).await
    } else {
        let s = Arc::clone(shared);
        let done = shared.workers.run(move || {
            let resp = s.call_handler(&req);
            // The body (and its share of the budget, given back by the caller) is not
            // needed any more: a stream may run for minutes.
            drop(req);
            resp
        });
        watched(tcp, watch, hangup, done).await.unwrap_or_else(|| {
            Response::error(&Error::Internal {
                message: "internal error: no worker could run the request".to_string(),
            })
        })
    };
    (resp, Some(place))
}

/// Runs `fut` unless `hangup` fires first (then `None`, and `fut` is dropped). A hang-up
/// already fired wins over an outcome ready at the same time.
async fn unless_hung_up<F: Future>(hangup: &Hangup, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut fired = pin!(hangup.fired());
    poll_fn(|cx| {
        if fired.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Runs `fut` while `watch` looks after the client (firing `hangup` when it leaves).
async fn watched<F: Future>(
    tcp: &TcpStream,
    watch: &mut Watch,
    hangup: &Hangup,
    fut: F,
) -> F::Output {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        watch.poll(cx, tcp, hangup);
        Poll::Pending
    })
    .await
}

/// A handler's answer on the loop, a panic in it turned into a 500.
async fn caught(mut answering: super::Answering) -> Response {
    poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| answering.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(panic) => {
                let what = panic_message(&*panic);
                log::error!(panic = what.as_str(); "handler panicked");
                Poll::Ready(handler_failed())
            }
        },
    )
    .await
}

/// A response as the connection writes it: a streamed body's producer started — on this
/// loop for a piped one, on a worker thread for a closure.
fn outgoing(shared: &Shared, resp: Response) -> Out {
    let Response {
        status,
        headers,
        body,
        log,
        close,
    } = resp;
    let body = match body {
        Body::Full(b) => OutBody::Full(b),
        Body::Piped(make) => {
            let pipe = Pipe::new();
            let producer = make(pipe.clone());
            OutBody::Piped(pipe, Some(guarded(producer)))
        }
        Body::Stream(closure) => {
            let pipe = Pipe::new();
            let fed = pipe.clone();
            drop(shared.workers.run(move || run_stream(closure, fed)));
            OutBody::Piped(pipe, None)
        }
    };
    Out {
        status,
        headers,
        body,
        log,
        close,
    }
}

/// A producer on the loop, a panic in it turned into an error (the stream ends unfinished).
pub(crate) fn guarded(mut producer: Producer) -> Producer {
    Box::pin(poll_fn(move |cx| {
        match catch_unwind(AssertUnwindSafe(|| producer.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(_) => Poll::Ready((Err(stream_panicked()), Vec::new())),
        }
    }))
}

/// A stream closure, on a worker thread, feeding its pipe.
pub(crate) fn run_stream(body: StreamBody, pipe: Pipe) {
    let mut sink = BlockingSink(pipe.clone());
    let mut log = Vec::new();
    let result = match catch_unwind(AssertUnwindSafe(|| body(&mut sink, &mut log))) {
        Ok(r) => r,
        Err(_) => Err(stream_panicked()),
    };
    pipe.finish(result, log);
}

/// Answers a refused request with its error and `Connection: close`, then closes with a
/// lingering read. `since`: when the request began, for its access log line (`None`: no
/// line — a refused peer is logged by the accept loop).
async fn refuse(shared: &Shared, conn: &mut Conn, rejection: Rejection, since: Option<Instant>) {
    let Rejection {
        error,
        method,
        path,
    } = rejection;
    log::debug!(ip:% = conn.peer, error:% = error; "request refused");
    if matches!(error, Error::Overloaded { .. }) {
        // The body budget spent: refused as a full line is, and counted with it.
        shared
            .stats
            .overloaded_total
            .fetch_add(1, Ordering::Relaxed);
    }
    let resp = shared
        .handler
        .error_response(path.as_deref().unwrap_or(""), &error);
    answer_and_close(shared, conn, resp, method, path, since).await;
}

/// Writes a complete answer to a request whose body was not read, logs it (with `since`)
/// and closes the connection.
async fn answer_and_close(
    shared: &Shared,
    conn: &mut Conn,
    resp: Response,
    method: Option<String>,
    path: Option<String>,
    since: Option<Instant>,
) {
    let t = &shared.timeouts;
    let reply = Reply {
        version: Version::Http11,
        head_only: method.as_deref() == Some("HEAD"),
        keep_alive: false,
        write_timeout: t.write,
        stall: t.stall,
    };
    let out = write_full(&mut conn.stream, &reply, resp).await;
    if let Some(since) = since {
        let method = method.as_deref().unwrap_or("-");
        let path = path.as_deref().unwrap_or("-");
        access_log(method, path, out.status, conn.peer, since, &out.log);
    }
    conn.stream.close();
    linger(&mut conn.stream, Instant::now() + t.linger).await;
}

/// Writes a response that is complete (an error), with no client to watch.
async fn write_full(stream: &mut Stream, reply: &Reply, resp: Response) -> super::write::Outcome {
    let out = Out {
        status: resp.status,
        headers: resp.headers,
        body: match resp.body {
            Body::Full(b) => OutBody::Full(b),
            // Errors are complete; a stream here would be a bug: answer without a body.
            Body::Stream(_) | Body::Piped(_) => OutBody::Full(Vec::new()),
        },
        log: resp.log,
        close: true,
    };
    write_response(stream, reply, out, &Hangup::default(), &mut |_, _| {}).await
}

/// After a close: reads and drops what the client still sends until `until` or
/// [`LINGER_BYTES`], so that it reads our answer instead of a reset. Never a full drain.
async fn linger(stream: &mut Stream, until: Instant) {
    let mut scratch = vec![0u8; 8192];
    let mut total = 0;
    while total < LINGER_BYTES {
        match timeout_at(until, std::pin::pin!(read(stream, &mut scratch))).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => return,
        }
    }
}

/// One refused peer being answered: counted among the refusals until dropped.
pub(crate) struct Refusing(pub(crate) Arc<Shared>);

impl Drop for Refusing {
    fn drop(&mut self) {
        self.0.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A peer outside the listener's allow list: 403 (after the TLS handshake on HTTPS), then
/// closed — everything within [`REFUSAL_TIME`] (or the head and linger timeouts, when
/// shorter). It holds no connection slot, only its place among the refusals.
pub(crate) async fn refuse_peer(
    counted: Refusing,
    ctx: Arc<ListenerCtx>,
    tcp: TcpStream,
    peer: IpAddr,
) {
    let shared = &counted.0;
    let t = &shared.timeouts;
    let started = Instant::now();
    let ends = started + REFUSAL_TIME;
    let handshake_by = started + t.head.min(REFUSAL_TIME / 2);
    if let Some(mut stream) = open(shared, &ctx, tcp, handshake_by).await {
        let left = ends.saturating_duration_since(Instant::now());
        let reply = Reply {
            version: Version::Http11,
            head_only: false,
            keep_alive: false,
            write_timeout: t.write.min(left),
            stall: Duration::ZERO,
        };
        let resp = Response::error(&Error::IpNotAllowed { ip: peer });
        let _ = write_full(&mut stream, &reply, resp).await;
        stream.close();
        linger(&mut stream, (Instant::now() + t.linger).min(ends)).await;
    }
}
