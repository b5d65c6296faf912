//! The load generator: one thread per keep-alive connection, each sending the same
//! pre-built request bytes as fast as the answers come back, and timing every answer with
//! `Instant` (and, for streams, the arrival of every event). Raw std sockets and a
//! hand-rolled response reader, so that the generator costs far less than what it measures:
//! the direct-to-fake numbers are its ceiling.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{find, since_epoch};
use sigorest::parts::lock;

/// How long a connection waits for a byte of an answer before counting an error.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Stack of a load thread.
const STACK: usize = 128 * 1024;

/// What one load run sends, where, and for how long.
#[derive(Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    /// The complete request (head and body).
    pub request: Arc<Vec<u8>>,
    /// The answers are SSE streams whose events are timed.
    pub stream: bool,
    pub conns: usize,
    /// Sent but not recorded (fills the gateway's upstream pool, wakes threads).
    pub warmup: Duration,
    /// Connection `i` of `n` starts `stagger * i / n` after the others (within the warm-up),
    /// so that streams of equal length do not all start and end at the same instant.
    pub stagger: Duration,
    pub measure: Duration,
}

/// Live counters, for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub errors: AtomicU64,
}

/// What one load run saw, in nanoseconds.
#[derive(Debug, Default)]
pub struct Samples {
    /// Request written → answer complete (a whole stream, for streams).
    pub latency: Vec<u64>,
    /// Request written → first event arrived (streams).
    pub first_event: Vec<u64>,
    /// Event sent by the fake → event arrived here, for every event (streams).
    pub event_delay: Vec<u64>,
    pub errors: u64,
    /// The measuring window.
    pub window: Duration,
    /// CPU time of the bench's own process (the load and the fake upstream) per answer,
    /// warm-up included, in µs: set by the caller, which reads it around the run.
    pub bench_cpu_us: Option<f64>,
}

/// Builds a `POST` request with a JSON body.
pub fn post(addr: SocketAddr, path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Runs the plan: connects every connection, then sends until warm-up and measuring window
/// have passed. Connections that fail are counted as errors and reopened.
pub fn run(plan: &Plan, progress: &Arc<Progress>) -> Samples {
    let gate = Arc::new(Gate::default());
    let mut handles = Vec::with_capacity(plan.conns);
    for i in 0..plan.conns {
        let (plan, gate, counters) = (plan.clone(), gate.clone(), progress.clone());
        let spawned = thread::Builder::new()
            .name("bench-load".into())
            .stack_size(STACK)
            .spawn(move || drive(&plan, i, &gate, &counters));
        match spawned {
            Ok(h) => handles.push(h),
            Err(_) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    gate.open_when_ready(handles.len());
    let mut all = Samples {
        window: plan.measure,
        errors: (plan.conns - handles.len()) as u64,
        ..Samples::default()
    };
    for h in handles {
        if let Ok(s) = h.join() {
            all.latency.extend(s.latency);
            all.first_event.extend(s.first_event);
            all.event_delay.extend(s.event_delay);
            all.errors += s.errors;
        }
    }
    all
}

/// Holds the load threads until every one has connected, then lets them all go at once.
#[derive(Default)]
struct Gate {
    ready: AtomicUsize,
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    /// A load thread: "I am ready", then wait for the start.
    fn arrive(&self) {
        self.ready.fetch_add(1, Ordering::AcqRel);
        let mut open = lock(&self.open);
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The runner: wait until `n` threads are ready, then start them.
    fn open_when_ready(&self, n: usize) {
        while self.ready.load(Ordering::Acquire) < n {
            thread::sleep(Duration::from_millis(1));
        }
        *lock(&self.open) = true;
        self.opened.notify_all();
    }
}

/// One connection's loop.
fn drive(plan: &Plan, index: usize, gate: &Gate, progress: &Progress) -> Samples {
    let mut conn = Conn::open(plan.addr).ok();
    let mut s = Samples::default();
    gate.arrive();
    let begin = Instant::now();
    let offset = plan.stagger.min(plan.warmup) * index as u32 / plan.conns.max(1) as u32;
    thread::sleep(offset);
    let from = begin + plan.warmup;
    let end = from + plan.measure;
    let mut events = Vec::new();
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let measuring = t0 >= from;
        let c = match &mut conn {
            Some(c) => c,
            None => match Conn::open(plan.addr) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    s.errors += u64::from(measuring);
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        events.clear();
        match c.exchange(&plan.request, plan.stream, &mut events) {
            Ok(answer) if answer.status == 200 && (!plan.stream || !events.is_empty()) => {
                progress.done.fetch_add(1, Ordering::Relaxed);
                if measuring {
                    s.latency.push(nanos(answer.done - t0));
                    if let Some((first, _)) = events.first() {
                        s.first_event.push(nanos(*first - t0));
                    }
                    s.event_delay.extend(events.iter().map(|&(_, d)| d));
                }
                if answer.close {
                    conn = None;
                }
            }
            other => {
                s.errors += u64::from(measuring);
                progress.errors.fetch_add(1, Ordering::Relaxed);
                if !matches!(other, Ok(Answer { close: false, .. })) {
                    conn = None;
                }
            }
        }
    }
    s
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// When its last byte arrived.
    pub done: Instant,
    /// The server closes the connection after it.
    pub close: bool,
}

/// A client connection with its read buffer.
pub struct Conn {
    tcp: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// When the last read returned.
    last_read: Instant,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> io::Result<Conn> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(Conn {
            tcp,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            last_read: Instant::now(),
        })
    }

    /// Sends `request` and reads its answer. For a chunked answer, every SSE event that
    /// carries a send stamp is pushed to `events` as (arrival, nanoseconds in transit).
    pub fn exchange(
        &mut self,
        request: &[u8],
        stream: bool,
        events: &mut Vec<(Instant, u64)>,
    ) -> io::Result<Answer> {
        self.tcp.write_all(request)?;
        let head_end = loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n\r\n") {
                break self.start + i + 4;
            }
            self.fill()?;
        };
        let head = &self.buf[self.start..head_end];
        let status = head
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status line"))?;
        let (length, chunked, close) = framing(head);
        self.start = head_end;
        if chunked {
            self.read_chunks(|data, at| {
                if stream {
                    stamps(data, at, events);
                }
            })?;
        } else {
            let mut left = length.unwrap_or(0);
            while left > 0 {
                if self.start == self.end {
                    self.fill()?;
                }
                let n = left.min(self.end - self.start);
                self.start += n;
                left -= n;
            }
        }
        Ok(Answer {
            status,
            done: self.last_read,
            close,
        })
    }

    /// Reads more bytes into the buffer (moving unread bytes to the front when needed).
    fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start == 0 {
                self.buf.resize(self.buf.len() * 2, 0);
            } else {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
        }
        let n = self.tcp.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.last_read = Instant::now();
        self.end += n;
        Ok(())
    }

    /// Reads a chunked body, handing each chunk's data to `f` with the time its last byte
    /// arrived.
    fn read_chunks(&mut self, mut f: impl FnMut(&[u8], Instant)) -> io::Result<()> {
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n") {
                    break self.start + i;
                }
                self.fill()?;
            };
            let size = std::str::from_utf8(&self.buf[self.start..line_end])
                .ok()
                .map(|l| l.split(';').next().unwrap_or("").trim())
                .and_then(|l| usize::from_str_radix(l, 16).ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            self.start = line_end + 2;
            while self.end - self.start < size + 2 {
                self.fill()?;
            }
            if size == 0 {
                // No trailers from the servers measured here: the CRLF ends the body.
                self.start += 2;
                return Ok(());
            }
            f(&self.buf[self.start..self.start + size], self.last_read);
            self.start += size + 2;
        }
    }
}

/// `Content-Length`, chunked, and whether the server closes after this answer.
fn framing(head: &[u8]) -> (Option<usize>, bool, bool) {
    let text = String::from_utf8_lossy(head);
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    (length, chunked, close)
}

/// Finds the fake's send stamps (`data: {"id":"t<nanos>"`) in a piece of an event stream.
fn stamps(data: &[u8], at: Instant, events: &mut Vec<(Instant, u64)>) {
    const MARK: &[u8] = b"data: {\"id\":\"t";
    let now = since_epoch_at(at);
    let mut rest = data;
    while let Some(i) = find(rest, MARK) {
        rest = &rest[i + MARK.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let sent = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(sent) = sent {
            events.push((at, now.saturating_sub(sent)));
        }
    }
}

/// Nanoseconds from the bench's epoch to `at`.
fn since_epoch_at(at: Instant) -> u64 {
    let now = Instant::now();
    since_epoch().saturating_sub(nanos(now.saturating_duration_since(at)))
}

/// Sends one request on each of `n` fresh connections at the same moment and waits for all
/// answers: returns the wall time from the start to the last answer, and the errors.
pub fn burst(addr: SocketAddr, request: &Arc<Vec<u8>>, n: usize) -> (Duration, u64) {
    let gate = Arc::new(Gate::default());
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let (gate, request) = (gate.clone(), request.clone());
        let spawned = thread::Builder::new()
            .name("bench-burst".into())
            .stack_size(STACK)
            .spawn(move || {
                let conn = Conn::open(addr);
                gate.arrive();
                let mut events = Vec::new();
                match conn.and_then(|mut c| c.exchange(&request, false, &mut events)) {
                    Ok(a) if a.status == 200 => Some(a.done),
                    _ => None,
                }
            });
        if let Ok(h) = spawned {
            handles.push(h);
        }
    }
    gate.open_when_ready(handles.len());
    let began = Instant::now();
    let mut last = began;
    let mut errors = (n - handles.len()) as u64;
    for h in handles {
        match h.join().ok().flatten() {
            Some(t) => last = last.max(t),
            None => errors += 1,
        }
    }
    (last.saturating_duration_since(began), errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_stamps_are_read() {
        let (len, chunked, close) =
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nConnection: close\r\n\r\n");
        assert_eq!((len, chunked, close), (Some(12), false, true));
        let (len, chunked, close) =
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((len, chunked, close), (None, true, false));

        let mut events = Vec::new();
        let at = Instant::now();
        stamps(
            b"data: {\"id\":\"t5\",\"x\":1}\n\ndata: {\"id\":\"usage\"}\n\ndata: {\"id\":\"t7\"}\n\n",
            at,
            &mut events,
        );
        assert_eq!(events.len(), 2);
    }
}
