//! A scripted fake upstream: an OpenAI-compatible provider (or an Ollama) on `127.0.0.1:0`.
//!
//! It has its own small std-only HTTP/1.1 server — independent of `sigorest::http`, so the
//! gateway is never tested with itself — with a thread per connection, keep-alive,
//! `Content-Length` and chunked request bodies, `Expect: 100-continue` and TCP_NODELAY.
//!
//! - Every request is recorded ([`Recorded`]: method, path with query, lower-case headers, raw
//!   and parsed body, arrival time, connection id), and every connection ([`Connection`]: when
//!   it opened and closed, and whether the client left while a reply was under way).
//! - `POST …/chat/completions` is answered from a FIFO queue of [`Reply`]s ([`FakeUpstream::push`]),
//!   then from a default ([`FakeUpstream::set_default`]; initially [`echo_reply`]). Other paths
//!   are answered by [`FakeUpstream::route`]s, anything else by a 404 in OpenAI's error shape.
//!   A request is recorded and its reply taken from the queue in one step, so the n-th queued
//!   reply answers the n-th chat request recorded.
//! - Every wait inside a reply (delay, gap, hang) is a read on the socket with a deadline, so
//!   a client going away is seen at once, without polling. Dropping the fake shuts every
//!   socket down, which ends every wait, and joins its threads.
//!
//! ```ignore
//! let fake = FakeUpstream::start();
//! fake.push_n(2, Reply::status(503));
//! fake.push(Reply::chat_stream(&["Hel", "lo"]).gap(Duration::from_millis(50)));
//! // point the gateway at fake.base_url(), send, then:
//! let seen = fake.wait_for_requests(3, Duration::from_secs(2));
//! ```

#![allow(dead_code)]

mod reply;
mod wire;

pub use reply::{Reply, Responder, echo_reply};

use std::collections::{HashMap, VecDeque};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use reply::Kind;
use wire::{Conn, Gone, Head, ReadError, head};

/// Writes to a client that does not read give up after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Drop` waits for the connection threads before leaving them behind.
const DROP_GRACE: Duration = Duration::from_secs(5);

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Position among all requests this fake received (0-based).
    pub index: usize,
    /// The [`Connection::id`] it came on.
    pub conn_id: u64,
    pub method: String,
    /// Path including the query string, as sent.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// In order received; names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body after chunked decoding.
    pub body: Vec<u8>,
    /// The body parsed as JSON, when it parses.
    pub json: Option<Value>,
    /// When the request head and body had been read.
    pub at: Instant,
}

impl Recorded {
    /// The first header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without its query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON body's `model`.
    pub fn model(&self) -> Option<&str> {
        self.json.as_ref()?.get("model")?.as_str()
    }

    /// Whether the JSON body asks for `"stream": true`.
    pub fn is_stream(&self) -> bool {
        self.json
            .as_ref()
            .and_then(|j| j.get("stream"))
            .and_then(Value::as_bool)
            == Some(true)
    }

    /// The text of the last `user` message (string content, or text parts joined by spaces).
    pub fn last_user_text(&self) -> Option<String> {
        let messages = self.json.as_ref()?.get("messages")?.as_array()?;
        let last = messages.iter().rev().find(|m| m["role"] == "user")?;
        Some(reply::content_text(&last["content"]))
    }

    fn keep_alive(&self) -> bool {
        let connection = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.version == "HTTP/1.0" {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        }
    }
}

/// One TCP connection the fake accepted.
#[derive(Clone, Debug)]
pub struct Connection {
    /// 0, 1, 2… in order of acceptance.
    pub id: u64,
    pub peer: SocketAddr,
    pub opened_at: Instant,
    /// When it was closed, by either side (`None`: still open).
    pub closed_at: Option<Instant>,
    /// The client closed it while a reply was under way (delay, stream, hang).
    pub client_left_mid_reply: bool,
    /// Requests received on it.
    pub requests: usize,
}

/// The scripted fake upstream. Cheap methods, all `&self`; `Send + Sync`. Dropping it stops
/// the accept loop, shuts every open connection down and joins the threads.
pub struct FakeUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Notified on every change of `state` (request recorded, connection opened or closed).
    changed: Condvar,
    stopping: AtomicBool,
    /// Prefix of every thread name, unique in the process: `fk<instance>.`.
    prefix: String,
}

struct State {
    requests: Vec<Recorded>,
    queue: VecDeque<Reply>,
    default: Arc<dyn Responder>,
    routes: Vec<(String, String, Arc<dyn Responder>)>,
    connections: Vec<Connection>,
    /// A clone of every open socket, to shut them down on drop.
    sockets: HashMap<u64, TcpStream>,
    handles: Vec<JoinHandle<()>>,
    live_threads: usize,
    /// Chat requests being answered now (recorded, reply not yet finished), and the most
    /// there ever were at once.
    chats_in_flight: usize,
    max_chats_in_flight: usize,
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

impl FakeUpstream {
    /// Binds `127.0.0.1:0` and starts accepting.
    pub fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake upstream: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake upstream: local_addr");
        let prefix = format!("fk{}.", INSTANCES.fetch_add(1, Ordering::Relaxed));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                requests: Vec::new(),
                queue: VecDeque::new(),
                default: Arc::new(echo_reply),
                routes: Vec::new(),
                connections: Vec::new(),
                sockets: HashMap::new(),
                handles: Vec::new(),
                live_threads: 0,
                chats_in_flight: 0,
                max_chats_in_flight: 0,
            }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            prefix,
        });
        let accept = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("{}accept", shared.prefix))
                .spawn(move || accept_loop(shared, listener))
                .expect("fake upstream: spawn accept thread")
        };
        FakeUpstream {
            shared,
            addr,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`: the part before `/chat/completions`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT` followed by `path` (`""` gives the bare origin, as for Ollama).
    pub fn url(&self, path: &str) -> String {
        if path.is_empty() || path.starts_with('/') {
            format!("http://{}{path}", self.addr)
        } else {
            format!("http://{}/{path}", self.addr)
        }
    }

    /// The prefix of the names of this fake's threads (accept: `<prefix>accept`, connection
    /// `n`: `<prefix>c<n>`), unique in the process and short enough for Linux's 15 bytes.
    pub fn thread_prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Queues a reply for the next `POST …/chat/completions`.
    pub fn push(&self, reply: Reply) {
        self.shared.lock().queue.push_back(reply);
    }

    /// Queues the same reply `n` times ("fail twice, then …").
    pub fn push_n(&self, n: usize, reply: Reply) {
        let mut state = self.shared.lock();
        state.queue.extend(std::iter::repeat_n(reply, n));
    }

    /// Replies still queued.
    pub fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// The answer for `POST …/chat/completions` once the queue is empty: a [`Reply`] or a
    /// closure `Fn(&Recorded) -> Reply`.
    pub fn set_default(&self, responder: impl Responder) {
        self.shared.lock().default = Arc::new(responder);
    }

    /// Answers `method path` (path without query, exact) with a [`Reply`] or a closure; a
    /// later route for the same pair replaces the earlier. Routes win over the chat queue.
    pub fn route(&self, method: &str, path: &str, responder: impl Responder) {
        let mut state = self.shared.lock();
        state
            .routes
            .retain(|(m, p, _)| !(m.eq_ignore_ascii_case(method) && p == path));
        state
            .routes
            .push((method.to_string(), path.to_string(), Arc::new(responder)));
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Requests whose path without query is `path` (the chat calls apart from, say, the
    /// gateway's background `GET /api/tags`).
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        let state = self.shared.lock();
        state
            .requests
            .iter()
            .filter(|r| r.path_only() == path)
            .cloned()
            .collect()
    }

    /// The JSON body of the last request that had one (`None`: no such request yet).
    pub fn last_json(&self) -> Option<Value> {
        let state = self.shared.lock();
        state.requests.iter().rev().find_map(|r| r.json.clone())
    }

    /// Waits until at least `n` requests have arrived and returns all of them; panics with
    /// what did arrive when `timeout` passes first.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.try_wait_for_requests(n, timeout).unwrap_or_else(|| {
            let seen: Vec<String> = self
                .requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect();
            panic!("fake upstream: expected {n} requests within {timeout:?}, got {seen:?}")
        })
    }

    /// [`FakeUpstream::wait_for_requests`] without the panic.
    pub fn try_wait_for_requests(&self, n: usize, timeout: Duration) -> Option<Vec<Recorded>> {
        self.shared.wait(timeout, |s| {
            (s.requests.len() >= n).then(|| s.requests.clone())
        })
    }

    /// Waits until at least `n` requests to `path` (without query) have arrived and returns
    /// them; panics when `timeout` passes first.
    pub fn wait_for_requests_to(&self, path: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        let matching = |s: &State| -> Vec<Recorded> {
            s.requests
                .iter()
                .filter(|r| r.path_only() == path)
                .cloned()
                .collect()
        };
        self.shared
            .wait(timeout, |s| Some(matching(s)).filter(|m| m.len() >= n))
            .unwrap_or_else(|| {
                panic!(
                    "fake upstream: expected {n} requests to {path} within {timeout:?}, got {}",
                    self.requests_to(path).len()
                )
            })
    }

    /// Chat requests being answered now: recorded, their reply not finished (a slow reply
    /// counts for its whole delay, a stream until its last byte or the client's departure).
    pub fn chats_in_flight(&self) -> usize {
        self.shared.lock().chats_in_flight
    }

    /// The most chat requests that were ever being answered at once.
    pub fn max_chats_in_flight(&self) -> usize {
        self.shared.lock().max_chats_in_flight
    }

    /// Every connection so far, in order of acceptance.
    pub fn connections(&self) -> Vec<Connection> {
        self.shared.lock().connections.clone()
    }

    pub fn open_connections(&self) -> usize {
        self.shared
            .lock()
            .connections
            .iter()
            .filter(|c| c.closed_at.is_none())
            .count()
    }

    /// Connections the client closed while a reply (delay, stream, hang) was under way.
    pub fn stream_closed_by_client_count(&self) -> usize {
        self.shared
            .lock()
            .connections
            .iter()
            .filter(|c| c.client_left_mid_reply)
            .count()
    }

    /// Waits until the client has left mid-reply on at least `n` connections and returns
    /// those connections; panics when `timeout` passes first.
    pub fn wait_for_client_aborts(&self, n: usize, timeout: Duration) -> Vec<Connection> {
        let aborted = |s: &State| -> Vec<Connection> {
            s.connections
                .iter()
                .filter(|c| c.client_left_mid_reply)
                .cloned()
                .collect()
        };
        self.shared
            .wait(timeout, |s| Some(aborted(s)).filter(|a| a.len() >= n))
            .unwrap_or_else(|| {
                panic!(
                    "fake upstream: expected {n} client aborts within {timeout:?}, got {:?}",
                    self.connections()
                )
            })
    }

    /// Waits until exactly `n` connections are open; false when `timeout` passes first.
    pub fn wait_for_open_connections(&self, n: usize, timeout: Duration) -> bool {
        self.shared
            .wait(timeout, |s| {
                (s.connections
                    .iter()
                    .filter(|c| c.closed_at.is_none())
                    .count()
                    == n)
                    .then_some(())
            })
            .is_some()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for socket in self.shared.lock().sockets.values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // std's listener cannot be unblocked otherwise: connect to it so `accept` returns.
        let woken = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(accept) = self.accept.take().filter(|_| woken) {
            let _ = accept.join();
        }
        let deadline = Instant::now() + DROP_GRACE;
        let mut state = self.shared.lock();
        while state.live_threads > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .map_or_else(|e| e.into_inner().0, |r| r.0);
        }
        // With no live thread left every handle is finishing: joining cannot block for long.
        let all_done = state.live_threads == 0;
        let handles = std::mem::take(&mut state.handles);
        drop(state);
        for handle in handles.into_iter().filter(|h| all_done || h.is_finished()) {
            let _ = handle.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking responder must not take the recordings down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits on `changed` until `check` gives a value, or `timeout` passes.
    fn wait<T>(&self, timeout: Duration, mut check: impl FnMut(&State) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(found) = check(&state) {
                return Some(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .map_or_else(|e| e.into_inner().0, |r| r.0);
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Records a request and picks its responder in one step under the lock, so the queue
    /// is consumed in the order requests are recorded. The responder runs outside the lock.
    fn record(&self, conn_id: u64, head: Head, body: Vec<u8>) -> (Recorded, Arc<dyn Responder>) {
        let json = if body.is_empty() {
            None
        } else {
            serde_json::from_slice(&body).ok()
        };
        let mut state = self.lock();
        let recorded = Recorded {
            index: state.requests.len(),
            conn_id,
            method: head.method,
            path: head.path,
            version: head.version,
            headers: head.headers,
            body,
            json,
            at: Instant::now(),
        };
        let responder = state.responder_for(&recorded);
        if is_chat(&recorded) {
            state.chats_in_flight += 1;
            state.max_chats_in_flight = state.max_chats_in_flight.max(state.chats_in_flight);
        }
        state.requests.push(recorded.clone());
        if let Some(conn) = state.connections.get_mut(conn_id as usize) {
            conn.requests += 1;
        }
        drop(state);
        self.changed.notify_all();
        (recorded, responder)
    }

    fn closed(&self, conn_id: u64, by_client_mid_reply: bool) {
        let by_client = by_client_mid_reply && !self.stopping.load(Ordering::SeqCst);
        self.update(|s| {
            if let Some(conn) = s.connections.get_mut(conn_id as usize) {
                conn.closed_at.get_or_insert_with(Instant::now);
                conn.client_left_mid_reply |= by_client;
            }
        });
    }
}

impl State {
    /// A route, else (for `POST …/chat/completions`) the next queued reply or the default,
    /// else a 404.
    fn responder_for(&mut self, req: &Recorded) -> Arc<dyn Responder> {
        let path = req.path_only();
        let route = self
            .routes
            .iter()
            .find(|(m, p, _)| m.eq_ignore_ascii_case(&req.method) && p == path);
        if let Some((_, _, responder)) = route {
            return responder.clone();
        }
        if req.method == "POST" && path.ends_with("/chat/completions") {
            return match self.queue.pop_front() {
                Some(reply) => Arc::new(reply),
                None => self.default.clone(),
            };
        }
        let message = format!("fake upstream: no route for {} {}", req.method, path);
        Arc::new(Reply::error(404, message))
    }
}

/// A chat request (counted in [`FakeUpstream::chats_in_flight`]).
fn is_chat(req: &Recorded) -> bool {
    req.method == "POST" && req.path_only().ends_with("/chat/completions")
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            // EMFILE and the like: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let (Ok(peer), Ok(clone)) = (stream.peer_addr(), stream.try_clone()) else {
            continue;
        };
        // Registered under the lock that `Drop` takes to shut sockets down: none is missed.
        let mut state = shared.lock();
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let id = state.connections.len() as u64;
        state.connections.push(Connection {
            id,
            peer,
            opened_at: Instant::now(),
            closed_at: None,
            client_left_mid_reply: false,
            requests: 0,
        });
        state.sockets.insert(id, clone);
        let worker = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("{}c{id}", shared.prefix))
            .spawn(move || serve(worker, id, stream));
        match spawned {
            Ok(handle) => {
                state.live_threads += 1;
                state.handles.retain(|h| !h.is_finished());
                state.handles.push(handle);
            }
            Err(_) => {
                state.sockets.remove(&id);
                if let Some(conn) = state.connections.get_mut(id as usize) {
                    conn.closed_at = Some(Instant::now());
                }
            }
        }
        drop(state);
        shared.changed.notify_all();
    }
}

/// Marks the connection closed and the thread gone, whichever way `serve` ends.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.closed(self.id, false);
        self.shared.update(|s| {
            if let Some(socket) = s.sockets.remove(&self.id) {
                let _ = socket.shutdown(Shutdown::Both);
            }
            s.live_threads -= 1;
        });
    }
}

/// How a reply ended.
enum Next {
    KeepAlive,
    Close,
}

fn serve(shared: Arc<Shared>, id: u64, stream: TcpStream) {
    let _guard = ConnGuard {
        shared: shared.clone(),
        id,
    };
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    loop {
        let (head, body) = match conn.read_request() {
            Ok(request) => request,
            Err(ReadError::Eof) => return,
            Err(ReadError::Bad(why)) => {
                let body = json!({"error": {"message": format!("fake upstream: {why}"),
                    "type": "invalid_request_error", "param": null, "code": "bad_request"}});
                let _ = conn.write_json(400, &body, &[], false);
                return;
            }
        };
        let (req, responder) = shared.record(id, head, body);
        let chat = is_chat(&req);
        let reply = responder.respond(&req);
        let sent = send(&mut conn, &req, &reply);
        if chat {
            shared.update(|s| s.chats_in_flight -= 1);
        }
        match sent {
            Ok(Next::KeepAlive) if req.keep_alive() => {}
            Ok(_) => {
                let _ = conn.stream.shutdown(Shutdown::Both);
                return;
            }
            Err(Gone) => {
                shared.closed(id, true);
                return;
            }
        }
    }
}

fn send(conn: &mut Conn, req: &Recorded, reply: &Reply) -> Result<Next, Gone> {
    conn.wait(Some(reply.delay))?;
    if let Some((status, body)) = reply.render_json(req) {
        conn.write_json(status, &body, &reply.headers, req.keep_alive())?;
        return Ok(Next::KeepAlive);
    }
    let stream = match &reply.kind {
        Kind::Garbage(bytes) => {
            conn.write(bytes)?;
            return Ok(Next::Close);
        }
        Kind::Hang => {
            conn.wait(None)?;
            return Err(Gone);
        }
        Kind::Stream(stream) => stream,
        Kind::Close | Kind::Json { .. } | Kind::Chat { .. } => return Ok(Next::Close),
    };
    // HTTP/1.0 has no chunked encoding.
    let chunked = stream.chunked && req.version == "HTTP/1.1";
    let framing = if chunked {
        ("Transfer-Encoding", "chunked")
    } else {
        ("Connection", "close")
    };
    let defaults = [
        ("Content-Type", "text/event-stream"),
        ("Cache-Control", "no-cache"),
        framing,
    ];
    conn.write(&head(200, &defaults, &reply.headers))?;
    conn.wait(Some(stream.first_delay))?;
    let writes = reply.stream_writes(req);
    for (i, bytes) in writes.iter().enumerate() {
        if stream.cut_after == Some(i) {
            return Ok(Next::Close);
        }
        if i > 0 {
            conn.wait(Some(stream.gap))?;
        }
        // An empty chunk would end the body: an empty write is only a pause.
        if bytes.is_empty() {
            continue;
        }
        if chunked {
            let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
            chunk.extend_from_slice(bytes);
            chunk.extend_from_slice(b"\r\n");
            conn.write(&chunk)?;
        } else {
            conn.write(bytes)?;
        }
    }
    if stream.cut_after.is_some() {
        return Ok(Next::Close);
    }
    if stream.then_hang {
        conn.wait(None)?;
        return Err(Gone);
    }
    if !chunked {
        return Ok(Next::Close);
    }
    conn.write(b"0\r\n\r\n")?;
    Ok(Next::KeepAlive)
}
