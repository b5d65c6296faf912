//! The HTTP layer from the outside: a server started in-process on port 0 with a small test
//! application, attacked with raw sockets (and a real TLS client in `tls`).
//!
//! Synchronisation is by polls with deadlines and channels; the few sleeps are the behaviour
//! under test (a slow handler, a stalled client). Timeouts in these configs are short so that
//! no test takes more than a few seconds.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::json;
use sigorest::http::AllowList;
use sigorest::http::{
    Handler, Limits, ListenerConfig, Request, Response, Server, ServerConfig, Stats, Timeouts,
    start,
};

mod abuse;
mod lifecycle;
mod protocol;
pub mod tls;

/// Short timeouts, so that tests of them are quick.
pub fn test_timeouts() -> Timeouts {
    Timeouts {
        head: Duration::from_millis(800),
        body: Duration::from_secs(2),
        idle: Duration::from_millis(800),
        write: Duration::from_secs(2),
        stall: Duration::from_secs(2),
        linger: Duration::from_millis(500),
        queue_wait: Duration::from_secs(5),
        worker_idle: Duration::from_secs(60),
    }
}

pub fn loopback_allow() -> AllowList {
    AllowList::parse("127.0.0.0/8,::1/128").unwrap()
}

/// A test server and the events its handler reports.
pub struct Harness {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub events: Receiver<String>,
}

impl Harness {
    /// A plain listener on 127.0.0.1:0, 4 workers, after `tweak`.
    pub fn start(tweak: impl FnOnce(&mut ServerConfig)) -> Harness {
        let mut config = ServerConfig {
            listeners: vec![ListenerConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                allow: loopback_allow(),
                tls: None,
            }],
            workers: 4,
            queue: 1024,
            limits: Limits::default(),
            timeouts: test_timeouts(),
            stats: Arc::new(Stats::default()),
        };
        tweak(&mut config);
        let (tx, events) = crossbeam_channel::unbounded();
        let server = start(config, app(tx)).expect("server starts");
        let addr = server.local_addrs()[0];
        Harness {
            server: Some(server),
            addr,
            events,
        }
    }

    pub fn client(&self) -> Client<TcpStream> {
        Client::connect(self.addr)
    }

    pub fn stats(&self) -> &Stats {
        self.server.as_ref().unwrap().stats()
    }

    pub fn stop(&mut self, grace: Duration) -> bool {
        self.server.take().unwrap().shutdown(grace)
    }

    /// Waits for the handler to report something.
    pub fn event(&self, within: Duration) -> Option<String> {
        self.events.recv_timeout(within).ok()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(1));
        }
    }
}

fn query<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
    req.query
        .as_deref()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn number(req: &Request, key: &str, default: u64) -> u64 {
    query(req, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The test application.
fn app(events: Sender<String>) -> Arc<dyn Handler> {
    Arc::new(move |req: &Request| -> Response {
        match req.path.as_str() {
            "/echo" => Response::full(200, "application/octet-stream", req.body.clone())
                .with_header("X-Method", req.method.clone()),
            "/info" => Response::json(
                200,
                &json!({
                    "peer": req.peer.to_string(),
                    "tls": req.tls,
                    "version": format!("{:?}", req.version),
                    "query": req.query,
                }),
            ),
            "/slow" => {
                thread::sleep(Duration::from_millis(number(req, "ms", 500)));
                Response::full(200, "text/plain", b"slow".to_vec())
            }
            "/stream" => {
                let (n, ms) = (number(req, "n", 3), number(req, "ms", 200));
                Response::stream(
                    200,
                    "text/event-stream",
                    Box::new(move |sink, log| {
                        for i in 0..n {
                            if i > 0 {
                                thread::sleep(Duration::from_millis(ms));
                            }
                            sink.send(format!("data: piece {i}\n\n").as_bytes())?;
                            sink.send(b"")?;
                        }
                        log.push(("pieces", n.to_string()));
                        Ok(())
                    }),
                )
            }
            "/big" => {
                let n = number(req, "bytes", 1 << 20) as usize;
                Response::full(200, "application/octet-stream", vec![b'b'; n])
            }
            "/firehose" => {
                let (n, size) = (number(req, "n", 1000), number(req, "size", 65536) as usize);
                let events = events.clone();
                Response::stream(
                    200,
                    "application/octet-stream",
                    Box::new(move |sink, _| {
                        let piece = vec![b'f'; size];
                        let sent = (0..n).try_for_each(|_| sink.send(&piece));
                        let _ = events.send(format!("firehose: {}", sent.is_ok()));
                        sent
                    }),
                )
            }
            "/panic" => panic!("test handler panics on purpose"),
            "/hold" => {
                let events = events.clone();
                let fired = wait_for(Duration::from_secs(5), || req.hangup.is_fired());
                let _ = events.send(format!("hold: hangup={fired}"));
                Response::full(200, "text/plain", b"held".to_vec())
            }
            "/hold-stream" => {
                let (events, hangup) = (events.clone(), req.hangup.clone());
                Response::stream(
                    200,
                    "text/plain",
                    Box::new(move |sink, _| {
                        sink.send(b"first")?;
                        let fired = wait_for(Duration::from_secs(5), || hangup.is_fired());
                        let _ = events.send(format!("hold-stream: hangup={fired}"));
                        Ok(())
                    }),
                )
            }
            _ => Response::full(404, "text/plain", b"no".to_vec()),
        }
    })
}

/// Polls `cond` every 5 ms until it holds or `within` passes.
pub fn wait_for(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Threads of this test process whose name starts with `prefix`.
pub fn threads_named(prefix: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// For a chunked body: when each chunk arrived.
    pub chunk_times: Vec<Instant>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// The OpenAI error code of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A minimal HTTP/1.1 client over any stream, for tests.
pub struct Client<S: Read + Write> {
    r: BufReader<S>,
}

impl Client<TcpStream> {
    pub fn connect(addr: SocketAddr) -> Client<TcpStream> {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client::new(s)
    }

    pub fn tcp(&self) -> &TcpStream {
        self.r.get_ref()
    }
}

impl<S: Read + Write> Client<S> {
    pub fn new(stream: S) -> Client<S> {
        Client {
            r: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let s = self.r.get_mut();
        s.write_all(bytes)?;
        s.flush()
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        self.response().unwrap()
    }

    pub fn response(&mut self) -> io::Result<Resp> {
        self.read_response(false)
    }

    /// Reads a response to a HEAD request (no body whatever the headers say).
    pub fn head_response(&mut self) -> io::Result<Resp> {
        self.read_response(true)
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        self.r.read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(String::from_utf8_lossy(&line).trim_end().to_string())
    }

    fn read_response(&mut self, head: bool) -> io::Result<Resp> {
        let status_line = self.line()?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap_or((&line, ""));
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
            chunk_times: Vec::new(),
        };
        if head || status < 200 || status == 204 || status == 304 {
            return Ok(resp);
        }
        if resp.header("transfer-encoding").is_some() {
            loop {
                let size = usize::from_str_radix(&self.line()?, 16).map_err(io::Error::other)?;
                if size == 0 {
                    self.line()?;
                    break;
                }
                let mut chunk = vec![0; size + 2];
                self.r.read_exact(&mut chunk)?;
                resp.chunk_times.push(Instant::now());
                resp.body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(n) = resp.header("content-length") {
            let mut body = vec![0; n.parse().map_err(io::Error::other)?];
            self.r.read_exact(&mut body)?;
            resp.body = body;
        } else {
            self.r.read_to_end(&mut resp.body)?;
        }
        Ok(resp)
    }

    /// Whether the server has closed the connection (end of stream or reset) without sending
    /// anything more.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
        }
    }
}

/// Poll helper for counters.
pub fn open_connections(h: &Harness) -> usize {
    h.stats().connections_open.load(Ordering::Acquire)
}
