//! The fake upstream's HTTP/1.1 framing, std only: reading a request (head, then a
//! `Content-Length` or chunked body) from a connection, writing a status line and headers,
//! and waiting on a connection while watching for the client to leave.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::reply;

/// A request head larger than this is refused (400); a body larger than `MAX_BODY` too.
const MAX_HEAD: usize = 1 << 20;
const MAX_BODY: usize = 64 << 20;

/// The client went away (EOF or an error on the socket).
pub(super) struct Gone;

/// A status line and headers: `defaults`, each replaced by an `extra` of the same name, then
/// the other `extra`s.
pub(super) fn head(status: u16, defaults: &[(&str, &str)], extra: &[(String, String)]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reply::reason(status));
    let overridden = |name: &str| extra.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    for (name, value) in defaults.iter().filter(|(n, _)| !overridden(n)) {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

pub(super) struct Head {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) version: String,
    pub(super) headers: Vec<(String, String)>,
}

pub(super) enum ReadError {
    /// The client closed (or broke) the connection.
    Eof,
    /// Not HTTP/1.x as this fake reads it: answered with 400, then closed.
    Bad(&'static str),
}

impl From<Gone> for ReadError {
    fn from(_: Gone) -> ReadError {
        ReadError::Eof
    }
}

/// A connection's socket and the bytes read from it but not used yet.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) buf: Vec<u8>,
}

impl Conn {
    /// Waits `duration` (`None`: for ever) while watching the socket: returns `Gone` as soon
    /// as the client closes it. Bytes the client sends meanwhile are kept for the next request.
    pub(super) fn wait(&mut self, duration: Option<Duration>) -> Result<(), Gone> {
        if duration == Some(Duration::ZERO) {
            return Ok(());
        }
        let deadline = duration.map(|d| Instant::now() + d);
        let result = loop {
            let timeout = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => break Ok(()),
                },
                None => None,
            };
            if self.stream.set_read_timeout(timeout).is_err() {
                break Err(Gone);
            }
            if let Err(gone) = self.fill() {
                break Err(gone);
            }
        };
        let _ = self.stream.set_read_timeout(None);
        result
    }

    /// One read into `buf`: `Gone` at EOF or on an error; a read timeout (set by `wait`)
    /// returns with nothing read.
    fn fill(&mut self) -> Result<(), Gone> {
        let mut tmp = [0u8; 16 * 1024];
        match self.stream.read(&mut tmp) {
            Ok(0) => Err(Gone),
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(_) => Err(Gone),
        }
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), Gone> {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|_| Gone)
    }

    pub(super) fn write_json(
        &mut self,
        status: u16,
        body: &Value,
        extra: &[(String, String)],
        keep_alive: bool,
    ) -> Result<(), Gone> {
        let body = body.to_string();
        let length = body.len().to_string();
        let mut defaults = vec![
            ("Content-Type", "application/json"),
            ("Content-Length", &length),
        ];
        if !keep_alive {
            defaults.push(("Connection", "close"));
        }
        let mut out = head(status, &defaults, extra);
        out.extend_from_slice(body.as_bytes());
        self.write(&out)
    }

    /// Reads one request: head, then a `Content-Length` or chunked body.
    pub(super) fn read_request(&mut self) -> Result<(Head, Vec<u8>), ReadError> {
        // Robustness (RFC 9112, 2.2): empty lines before a request line are ignored.
        let head = loop {
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                break parse_head(&head)?;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Bad("request head too large"));
            }
            self.fill()?;
        };
        let header = |name: &str| {
            head.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        if header("expect").as_deref() == Some("100-continue") {
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            self.read_chunked()?
        } else if let Some(length) = header("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| ReadError::Bad("bad Content-Length"))?;
            if length > MAX_BODY {
                return Err(ReadError::Bad("body too large"));
            }
            self.take(length)?
        } else {
            Vec::new()
        };
        Ok((head, body))
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = self.line()?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(size, 16).map_err(|_| ReadError::Bad("bad chunk size"))?;
            if size == 0 {
                // Trailer fields, up to the empty line.
                while !self.line()?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err(ReadError::Bad("body too large"));
            }
            body.extend(self.take(size)?);
            if self.take(2)? != b"\r\n" {
                return Err(ReadError::Bad("chunk not followed by CRLF"));
            }
        }
    }

    /// One CRLF-terminated line, without the CRLF.
    fn line(&mut self) -> Result<String, ReadError> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).take(end).collect();
                return String::from_utf8(line).map_err(|_| ReadError::Bad("line not UTF-8"));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Bad("line too long"));
            }
            self.fill()?;
        }
    }

    /// Exactly `n` bytes.
    fn take(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }
}

fn parse_head(bytes: &[u8]) -> Result<Head, ReadError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ReadError::Bad("head not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad("bad request line"));
    };
    if method.is_empty() || !path.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad("bad request line"));
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(ReadError::Bad("bad header line"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Head {
        method: method.into(),
        path: path.into(),
        version: version.into(),
        headers,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
