//! A stand-in gateway for the bench's tests, so that compare mode can be tested without
//! the release binary: a pass-through proxy on 127.0.0.1 that sends every chat completion
//! on to the fake upstream's base URL (its slow one for the slow model), over one upstream
//! connection per client connection, and relays the answer byte for byte. It runs in the
//! test process, or as a child process (the test binary started again on one ignored test)
//! to stand in for a gateway the bench starts by command.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// Where the proxy sends requests.
#[derive(Clone)]
pub struct Route {
    /// `http://HOST:PORT/PREFIX`, as a gateway's upstream base URL.
    pub base: String,
    pub slow_base: String,
    pub slow_model: String,
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    stopping: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(port: u16, route: Route) -> io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = stopping.clone();
        thread::spawn(move || {
            for tcp in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    return;
                }
                let Ok(tcp) = tcp else { continue };
                let route = route.clone();
                thread::spawn(move || serve(tcp, &route));
            }
        });
        Ok(Proxy { addr, stopping })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// `http://HOST:PORT/PREFIX` → the address and the prefix.
fn split_base(base: &str) -> Option<(SocketAddr, String)> {
    let rest = base.strip_prefix("http://")?;
    let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    Some((host.parse().ok()?, format!("/{prefix}")))
}

/// One head: its lines without the blank one, and the body length it announces.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<(Vec<String>, usize, bool)>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if line == "\r\n" {
            break;
        }
        lines.push(line);
    }
    let header = |name: &str| {
        lines.iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    Ok(Some((lines, length, chunked)))
}

/// Serves one client connection until it closes.
fn serve(tcp: TcpStream, route: &Route) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut out) = tcp.try_clone() else { return };
    let mut client = BufReader::new(tcp);
    let mut upstream: Option<(String, BufReader<TcpStream>)> = None;
    while let Ok(Some((lines, length, _))) = read_head(&mut client) {
        let mut body = vec![0; length];
        if client.read_exact(&mut body).is_err() {
            return;
        }
        let chat = lines
            .first()
            .is_some_and(|l| l.starts_with("POST ") && l.contains("chat/completions"));
        if !chat {
            let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        }
        let slow =
            String::from_utf8_lossy(&body).contains(&format!("\"model\":\"{}\"", route.slow_model));
        let base = if slow { &route.slow_base } else { &route.base };
        if relay(&mut upstream, base, &body, &mut out).is_err() {
            return;
        }
        if lines
            .iter()
            .any(|l| l.trim().eq_ignore_ascii_case("connection: close"))
        {
            return;
        }
    }
}

/// Sends one chat completion to `base` (reusing the upstream connection when it goes
/// there) and copies the answer to `out`.
fn relay(
    upstream: &mut Option<(String, BufReader<TcpStream>)>,
    base: &str,
    body: &[u8],
    out: &mut TcpStream,
) -> io::Result<()> {
    let (addr, prefix) = split_base(base).ok_or(io::ErrorKind::InvalidInput)?;
    if upstream.as_ref().is_none_or(|(b, _)| b != base) {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        *upstream = Some((base.to_string(), BufReader::new(tcp)));
    }
    let Some((_, up)) = upstream.as_mut() else {
        return Err(io::ErrorKind::NotConnected.into());
    };
    let head = format!(
        "POST {}/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        prefix.trim_end_matches('/'),
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    up.get_mut().write_all(&request)?;
    let (lines, length, chunked) = read_head(up)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    let mut answer = lines.concat().into_bytes();
    answer.extend_from_slice(b"\r\n");
    out.write_all(&answer)?;
    if !chunked {
        let mut rest = vec![0; length];
        up.read_exact(&mut rest)?;
        return out.write_all(&rest);
    }
    loop {
        let mut size_line = String::new();
        up.read_line(&mut size_line)?;
        let size = usize::from_str_radix(size_line.trim(), 16)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let mut chunk = vec![0; size + 2];
        up.read_exact(&mut chunk)?;
        let mut piece = size_line.into_bytes();
        piece.extend_from_slice(&chunk);
        out.write_all(&piece)?;
        if size == 0 {
            return Ok(());
        }
    }
}
