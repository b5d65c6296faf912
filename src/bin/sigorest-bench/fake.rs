//! The bench's instant fake upstream: an OpenAI-compatible provider on 127.0.0.1 with raw
//! std sockets, one thread per connection, keep-alive and TCP_NODELAY, so that what the
//! bench measures through the gateway is the gateway and not the provider.
//!
//! `POST .../chat/completions` answers a small chat completion (JSON), or with
//! `"stream":true` in the body an SSE stream of `events` chunks `gap` apart. Both wait the
//! profile's `delay` first; a path starting with `/delay-<ms>/` waits that long instead (the
//! gateway's provider base URLs point there for the "slow model" test). Every stream chunk
//! carries its send time in its `id` (`"id":"t<nanoseconds since the bench's epoch>"`), so
//! the load generator in the same process can measure how long each event took to arrive.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use socket2::SockRef;

use super::{find, since_epoch};
use sigorest::parts::lock;

/// Stack of a fake connection thread: it parses a head and writes canned bytes.
const STACK: usize = 64 * 1024;
/// Threads kept waiting for connections beyond this many end.
const MAX_IDLE: usize = 256;
/// Largest request head or body the fake accepts.
const MAX_REQUEST: usize = 1024 * 1024;

/// How the fake answers.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Before the JSON answer, or before the first stream event.
    pub delay: Duration,
    /// Chunks with content in a stream (the last one carries `finish_reason`).
    pub events: usize,
    /// Between two stream events.
    pub gap: Duration,
}

/// A running fake upstream.
pub struct Fake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Arc<TcpListener>,
    stopped: bool,
}

struct Shared {
    profile: Profile,
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// Threads waiting in `accept`.
    idle: AtomicUsize,
    /// Open connections, so that `stop` can end them.
    open: Mutex<HashMap<u64, TcpStream>>,
}

impl Fake {
    /// Starts the fake on 127.0.0.1 on `port` (0: one the kernel picks).
    pub fn start(profile: Profile, port: u16) -> io::Result<Fake> {
        let listener = Arc::new(TcpListener::bind(("127.0.0.1", port))?);
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            profile,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            idle: AtomicUsize::new(0),
            open: Mutex::new(HashMap::new()),
        });
        spawn_acceptor(&listener, &shared)?;
        Ok(Fake {
            addr,
            shared,
            listener,
            stopped: false,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every open connection.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stopped = true;
        self.shared.stopping.store(true, Ordering::Release);
        // Wakes every thread blocked in `accept` (Linux), which then sees the flag; the
        // connection covers platforms where it does not.
        let _ = SockRef::from(&*self.listener).shutdown(Shutdown::Read);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for s in lock(&self.shared.open).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if !self.stopped {
            self.halt();
        }
    }
}

/// Starts one more thread waiting for a connection.
fn spawn_acceptor(listener: &Arc<TcpListener>, shared: &Arc<Shared>) -> io::Result<()> {
    shared.idle.fetch_add(1, Ordering::AcqRel);
    let (l, s) = (Arc::clone(listener), Arc::clone(shared));
    let spawned = thread::Builder::new()
        .name("fake-conn".into())
        .stack_size(STACK)
        .spawn(move || accept_and_serve(&l, &s));
    if spawned.is_err() {
        shared.idle.fetch_sub(1, Ordering::AcqRel);
    }
    spawned.map(drop)
}

/// A fake thread: accepts a connection, serves it until it closes, and goes back to
/// accepting. Threads are reused rather than started per connection, so that a client that
/// opens a connection per request (the gateway does, per stream) does not make the fake pay
/// a thread start each time; there is always one more thread waiting than connections open.
fn accept_and_serve(listener: &Arc<TcpListener>, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let Ok((tcp, _)) = accepted else {
            // Out of descriptors: let connections end before accepting more.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        if shared.idle.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last waiting thread took this one: keep one waiting.
            let _ = spawn_acceptor(listener, shared);
        }
        let _ = tcp.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(c) = tcp.try_clone() {
            lock(&shared.open).insert(id, c);
        }
        let _ = serve(tcp, shared);
        lock(&shared.open).remove(&id);
        if shared.idle.fetch_add(1, Ordering::AcqRel) >= MAX_IDLE {
            shared.idle.fetch_sub(1, Ordering::AcqRel);
            return;
        }
    }
}

/// One parsed request: what the fake needs of it.
struct Asked {
    delay: Duration,
    stream: bool,
    usage: bool,
    found: bool,
    keep_alive: bool,
}

/// Serves requests on one connection until the client closes it.
fn serve(mut tcp: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut len = 0;
    let json = json_answer();
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = find(&buf[..len], b"\r\n\r\n") {
                break i + 4;
            }
            if len == buf.len() {
                if buf.len() >= MAX_REQUEST {
                    return Ok(());
                }
                buf.resize(buf.len() * 2, 0);
            }
            let n = tcp.read(&mut buf[len..])?;
            if n == 0 {
                return Ok(());
            }
            len += n;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let body_len = content_length(&head).min(MAX_REQUEST);
        while len < head_end + body_len {
            if len == buf.len() {
                buf.resize((head_end + body_len).max(buf.len() * 2), 0);
            }
            let n = tcp.read(&mut buf[len..])?;
            if n == 0 {
                return Ok(());
            }
            len += n;
        }
        let asked = understand(&head, &buf[head_end..head_end + body_len], &shared.profile);
        // Keep what a pipelining client sent beyond this request.
        buf.copy_within(head_end + body_len..len, 0);
        len -= head_end + body_len;

        if !asked.found {
            let body = br#"{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":"not_found"}}"#;
            let mut out = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(body);
            tcp.write_all(&out)?;
        } else if asked.stream {
            stream(&mut tcp, &asked, &shared.profile)?;
        } else {
            if !asked.delay.is_zero() {
                thread::sleep(asked.delay);
            }
            tcp.write_all(&json)?;
        }
        if !asked.keep_alive {
            let _ = tcp.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

fn understand(head: &str, body: &[u8], profile: &Profile) -> Asked {
    let mut words = head.split(' ');
    let method = words.next().unwrap_or("");
    let path = words.next().unwrap_or("");
    let (delay, rest) = match path.strip_prefix("/delay-").and_then(|p| p.split_once('/')) {
        Some((ms, rest)) => match ms.parse::<u64>() {
            Ok(ms) => (Duration::from_millis(ms), rest),
            Err(_) => (profile.delay, path),
        },
        None => (profile.delay, path),
    };
    let keep_alive = !head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("connection: close"));
    Asked {
        delay,
        stream: find(body, b"\"stream\":true").is_some(),
        usage: find(body, b"\"include_usage\":true").is_some(),
        found: method == "POST" && rest.ends_with("chat/completions"),
        keep_alive,
    }
}

/// The `Content-Length` of a request head (0 when absent).
fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The canned chat completion, head included.
fn json_answer() -> Vec<u8> {
    let body = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}"#;
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Appends one SSE event as one HTTP chunk.
fn chunk(out: &mut Vec<u8>, event: &str) {
    let _ = write!(out, "{:x}\r\n{event}\r\n", event.len());
}

/// A content chunk stamped with its send time.
fn content_event(i: usize, last: bool) -> String {
    let finish = if last { r#""stop""# } else { "null" };
    format!(
        r#"data: {{"id":"t{}","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4.1","choices":[{{"index":0,"delta":{{"content":"tok{i} "}},"finish_reason":{finish}}}]}}

"#,
        since_epoch()
    )
}

/// Writes the SSE answer: head, `events` stamped chunks `gap` apart (the first after the
/// delay), the usage chunk when asked for, `[DONE]`, and the end of the chunked body.
fn stream(tcp: &mut TcpStream, asked: &Asked, profile: &Profile) -> io::Result<()> {
    let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    if !asked.delay.is_zero() {
        tcp.write_all(&out)?;
        out.clear();
        thread::sleep(asked.delay);
    }
    let n = profile.events.max(1);
    for i in 0..n {
        if i > 0 && !profile.gap.is_zero() {
            thread::sleep(profile.gap);
        }
        let last = i + 1 == n;
        chunk(&mut out, &content_event(i, last));
        if last {
            if asked.usage {
                chunk(
                    &mut out,
                    "data: {\"id\":\"usage\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4.1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":9,\"total_tokens\":18}}\n\n",
                );
            }
            chunk(&mut out, "data: [DONE]\n\n");
            out.extend_from_slice(b"0\r\n\r\n");
        }
        tcp.write_all(&out)?;
        out.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_understood() {
        let p = Profile {
            delay: Duration::from_millis(3),
            events: 2,
            gap: Duration::ZERO,
        };
        let a = understand(
            "POST /delay-1000/v1/chat/completions HTTP/1.1\r\nConnection: close\r\n\r\n",
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            &p,
        );
        assert_eq!(a.delay, Duration::from_secs(1));
        assert!(a.stream && a.usage && a.found && !a.keep_alive);
        let a = understand("POST /v1/chat/completions HTTP/1.1\r\n\r\n", b"{}", &p);
        assert_eq!(a.delay, Duration::from_millis(3));
        assert!(!a.stream && a.found && a.keep_alive);
        assert!(!understand("GET /v1/models HTTP/1.1\r\n\r\n", b"", &p).found);
        assert_eq!(
            content_length("POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n"),
            12
        );
    }
}
