//! A raw HTTP/1.x client for streamed answers: it writes a request on a plain or TLS socket
//! and notes the arrival time of every Server-Sent Event, so tests can tell a relayed
//! stream from a buffered one. Chunked and close-delimited bodies both work.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A streamed answer.
#[derive(Debug)]
pub struct Streamed {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// `data:` payloads, with their arrival time.
    pub events: Vec<(Instant, String)>,
    /// The whole body (de-chunked).
    pub body: Vec<u8>,
    /// Whether the body ended properly (last chunk, or EOF for close-delimited).
    pub complete: bool,
}

impl Streamed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn payloads(&self) -> Vec<&str> {
        self.events.iter().map(|(_, p)| p.as_str()).collect()
    }

    /// The JSON payloads (everything but `[DONE]`).
    pub fn chunks(&self) -> Vec<serde_json::Value> {
        self.events
            .iter()
            .filter(|(_, p)| p != "[DONE]")
            .filter_map(|(_, p)| serde_json::from_str(p).ok())
            .collect()
    }

    /// The tool calls as the openai SDK's stream helper puts them together: per `index`,
    /// the id, name and arguments of every piece joined.
    pub fn sdk_tool_calls(&self) -> Vec<(String, String, String)> {
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for piece in self
            .chunks()
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().cloned())
            .flatten()
        {
            let i = piece["index"].as_u64().expect("an index on every piece") as usize;
            if i == calls.len() {
                calls.push(Default::default());
            }
            let call = &mut calls[i];
            call.0 += piece["id"].as_str().unwrap_or("");
            call.1 += piece["function"]["name"].as_str().unwrap_or("");
            call.2 += piece["function"]["arguments"].as_str().unwrap_or("");
        }
        calls
    }

    /// The assistant text put together from the deltas.
    pub fn text(&self) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }
}

/// How to send the request.
pub struct Call<'a> {
    pub path: &'a str,
    pub body: &'a [u8],
    pub http10: bool,
    /// Stop reading (and drop the connection) after this many events.
    pub leave_after: Option<usize>,
    pub timeout: Duration,
    /// Extra request headers (`Authorization`, ...).
    pub headers: Vec<(&'a str, &'a str)>,
}

impl<'a> Call<'a> {
    pub fn post(body: &'a [u8]) -> Call<'a> {
        Call {
            path: "/v1/chat/completions",
            body,
            http10: false,
            leave_after: None,
            timeout: Duration::from_secs(20),
            headers: Vec::new(),
        }
    }
}

/// POSTs `body` to `path` with `"stream": true` set, and reads the streamed answer.
pub fn stream_json(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Streamed {
    let mut body = body.clone();
    body["stream"] = serde_json::Value::Bool(true);
    let bytes = serde_json::to_vec(&body).expect("a JSON body");
    let mut call = Call::post(&bytes);
    call.path = path;
    stream(addr, &call)
}

/// POSTs over plain TCP and reads the streamed answer.
pub fn stream(addr: SocketAddr, call: &Call) -> Streamed {
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(call.timeout)).expect("timeout");
    sock.set_nodelay(true).expect("nodelay");
    exchange(sock, addr, call)
}

/// POSTs over TLS, trusting the certificate in `cert_pem`, and reads the streamed answer.
pub fn stream_tls(addr: SocketAddr, cert_pem: &Path, call: &Call) -> Streamed {
    exchange(tls_connect(addr, cert_pem, call.timeout), addr, call)
}

/// A TLS connection to `addr` for `localhost`, trusting `cert_pem`.
pub fn tls_connect(
    addr: SocketAddr,
    cert_pem: &Path,
    timeout: Duration,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(cert_pem)
        .expect("read cert")
        .map(|c| c.expect("cert"));
    tls_connect_trusting(addr, certs, timeout)
}

/// A TLS connection to `addr` for `localhost` (handshake not yet done), by a client of its
/// own (nothing resumed) that trusts `certs`.
pub fn tls_connect_trusting(
    addr: SocketAddr,
    certs: impl IntoIterator<Item = rustls::pki_types::CertificateDer<'static>>,
    timeout: Duration,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).expect("add cert");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(timeout)).expect("timeout");
    rustls::StreamOwned::new(conn, sock)
}

fn exchange<S: Read + Write>(mut sock: S, addr: SocketAddr, call: &Call) -> Streamed {
    let version = if call.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let extra: String = call
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let head = format!(
        "POST {} {version}\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
        call.path,
        call.body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(call.body);
    sock.write_all(&req).expect("send request");
    sock.flush().expect("flush");
    read_streamed(BufReader::new(sock), call.leave_after)
}

fn read_streamed<R: BufRead>(mut r: R, leave_after: Option<usize>) -> Streamed {
    let (status, version, headers) = read_head(&mut r);
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let chunked = get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = get("content-length").and_then(|v| v.parse::<usize>().ok());
    let mut body = Body {
        out: Streamed {
            status,
            version,
            headers,
            events: Vec::new(),
            body: Vec::new(),
            complete: false,
        },
        splitter: Splitter::default(),
        leave_after,
    };
    if chunked {
        body.read_chunked(&mut r);
    } else if let Some(len) = length {
        let mut bytes = vec![0; len];
        if r.read_exact(&mut bytes).is_ok() {
            body.take(&bytes);
            body.out.complete = true;
        }
    } else {
        body.read_to_close(&mut r);
    }
    body.out
}

/// The status line and headers (names lower-cased).
fn read_head<R: BufRead>(r: &mut R) -> (u16, String, Vec<(String, String)>) {
    let mut status_line = String::new();
    r.read_line(&mut status_line).expect("status line");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default().to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_lowercase(), v.trim().to_string()));
        }
    }
    (status, version, headers)
}

/// A streamed body being read: the answer so far and the events split out of it.
struct Body {
    out: Streamed,
    splitter: Splitter,
    leave_after: Option<usize>,
}

impl Body {
    /// Takes in body bytes; false once the caller should stop reading (`leave_after`).
    fn take(&mut self, bytes: &[u8]) -> bool {
        self.out.body.extend_from_slice(bytes);
        for payload in self.splitter.push(bytes) {
            self.out.events.push((Instant::now(), payload));
            if self.leave_after.is_some_and(|n| self.out.events.len() >= n) {
                return false;
            }
        }
        true
    }

    fn read_chunked<R: BufRead>(&mut self, r: &mut R) {
        loop {
            let mut size_line = String::new();
            if r.read_line(&mut size_line).unwrap_or(0) == 0 {
                return;
            }
            let Ok(size) =
                usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
            else {
                return;
            };
            if size == 0 {
                let mut end = String::new();
                let _ = r.read_line(&mut end);
                self.out.complete = true;
                return;
            }
            let mut chunk = vec![0; size + 2];
            if r.read_exact(&mut chunk).is_err() || !self.take(&chunk[..size]) {
                return;
            }
        }
    }

    fn read_to_close<R: BufRead>(&mut self, r: &mut R) {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) => {
                    self.out.complete = true;
                    return;
                }
                Ok(n) => {
                    if !self.take(&buf[..n]) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// Splits a byte stream into SSE `data:` payloads at blank lines.
#[derive(Default)]
struct Splitter {
    pending: Vec<u8>,
}

impl Splitter {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(i) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..i + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.trim_start())
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}
