//! A response as bytes come in, without I/O: its head (httparse), how its body is framed,
//! and a decoder for chunked bodies that works on any split of the bytes.

/// Header lines a response may have.
const MAX_HEADERS: usize = 128;
/// A chunk-size line (with extensions), or a trailer line.
const MAX_LINE: usize = 4 * 1024;
/// All trailer lines together.
const MAX_TRAILERS: usize = 16 * 1024;

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// At the end of the connection.
    UntilClose,
}

/// A response head: what the gateway reads of it (only the headers it uses are kept, so
/// that an answer's head costs no allocation).
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// The server lets the connection serve another request.
    pub(crate) keep_alive: bool,
    /// Its `Content-Type` says JSON.
    pub(crate) json: bool,
    /// `Retry-After` and `retry-after-ms`, trimmed, when sent.
    pub(crate) retry_after: Option<String>,
    pub(crate) retry_after_ms: Option<String>,
}

/// Parses a head at the start of `bytes`: `Ok(None)` while incomplete, else the head and
/// its length. `head_request`: the request was a HEAD (no body whatever the headers say).
pub(crate) fn parse_head(
    bytes: &[u8],
    head_request: bool,
) -> Result<Option<(Head, usize)>, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let used = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not HTTP: {e}")),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err("not HTTP: no status line".into());
    };
    let is = |h: &httparse::Header<'_>, name: &str| h.name.eq_ignore_ascii_case(name);
    let has = |name: &str, token: &str| {
        resp.headers
            .iter()
            .filter(|h| is(h, name))
            .filter_map(value)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let close = has("connection", "close");
    let keep_alive = if minor == 0 {
        has("connection", "keep-alive") && !close
    } else {
        !close
    };
    let text = |name: &str| {
        resp.headers
            .iter()
            .find(|h| is(h, name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let json = resp
        .headers
        .iter()
        .find(|h| is(h, "content-type"))
        .and_then(value)
        .is_some_and(|ct| ct.contains("json"));
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else if resp.headers.iter().any(|h| is(h, "transfer-encoding")) {
        // Any transfer coding ends in chunked for a response that has a body framed by it;
        // anything else runs to the end of the connection.
        let last_chunked = resp
            .headers
            .iter()
            .filter(|h| is(h, "transfer-encoding"))
            .filter_map(value)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty())
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        if last_chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        let mut lengths = resp
            .headers
            .iter()
            .filter(|h| is(h, "content-length"))
            .map(|h| value(h).unwrap_or("?"));
        match lengths.next() {
            None => Framing::UntilClose,
            Some(first) => {
                if lengths.any(|l| l != first) {
                    return Err("not HTTP: conflicting Content-Length headers".into());
                }
                if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("not HTTP: invalid Content-Length '{first}'"));
                }
                Framing::Length(first.parse().unwrap_or(u64::MAX))
            }
        }
    };
    let keep_alive = keep_alive && framing != Framing::UntilClose;
    // Retry-After only matters on an error answer.
    let (retry_after, retry_after_ms) = if status >= 300 {
        (text("retry-after"), text("retry-after-ms"))
    } else {
        (None, None)
    };
    Ok(Some((
        Head {
            status,
            framing,
            keep_alive,
            json,
            retry_after,
            retry_after_ms,
        },
        used,
    )))
}

/// A header's value, trimmed, when it is text.
fn value<'h>(h: &httparse::Header<'h>) -> Option<&'h str> {
    std::str::from_utf8(h.value).map(str::trim).ok()
}

/// Decodes a chunked body as its bytes arrive.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: State,
    line: Vec<u8>,
    trailers: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// This many data bytes to go.
    Data(u64),
    /// The line end after a chunk's data.
    DataEnd,
    /// Trailer lines, until an empty one.
    Trailers,
    Done,
}

impl Chunked {
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes what it can of `input`: data bytes go to `out`. Returns how many bytes of
    /// `input` were used (all of them, unless the body ended inside it).
    pub(crate) fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Done => break,
                State::Data(left) => {
                    let n = (left.min((input.len() - at) as u64)) as usize;
                    out.extend_from_slice(&input[at..at + n]);
                    at += n;
                    self.state = match left - n as u64 {
                        0 => State::DataEnd,
                        left => State::Data(left),
                    };
                }
                State::Size | State::DataEnd | State::Trailers => {
                    let Some(line) = self.take_line(input, &mut at)? else {
                        break;
                    };
                    self.state = self.after_line(&line)?;
                }
            }
        }
        Ok(at)
    }

    /// Gathers one line (without its end) from `input` at `at`; `None` when it goes on past
    /// the input.
    fn take_line(&mut self, input: &[u8], at: &mut usize) -> Result<Option<Vec<u8>>, String> {
        let rest = &input[*at..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.line.extend_from_slice(&rest[..i]);
                *at += i + 1;
                if self.line.len() > MAX_LINE {
                    return Err("chunked framing line too long".into());
                }
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Ok(Some(line))
            }
            None => {
                self.line.extend_from_slice(rest);
                *at = input.len();
                if self.line.len() > MAX_LINE {
                    return Err("chunked framing line too long".into());
                }
                Ok(None)
            }
        }
    }

    fn after_line(&mut self, line: &[u8]) -> Result<State, String> {
        match self.state {
            State::Size => {
                let size = chunk_size(line)?;
                Ok(if size == 0 {
                    State::Trailers
                } else {
                    State::Data(size)
                })
            }
            State::DataEnd if line.is_empty() => Ok(State::Size),
            State::DataEnd => Err("chunk data not followed by a line end".into()),
            State::Trailers if line.is_empty() => Ok(State::Done),
            State::Trailers => {
                self.trailers += line.len();
                if self.trailers > MAX_TRAILERS {
                    return Err("chunked trailers too long".into());
                }
                Ok(State::Trailers)
            }
            State::Data(_) | State::Done => Ok(self.state),
        }
    }
}

/// `hex-digits [ ; extensions ]`.
fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err("invalid chunk size".into());
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err("invalid chunk size".into());
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| "invalid chunk size")?;
    u64::from_str_radix(text, 16).map_err(|_| "invalid chunk size".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes(), false).unwrap().unwrap().0
    }

    #[test]
    fn heads_and_their_framing() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{...}",
        );
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (200, Framing::Length(12), true)
        );
        assert!(h.json);
        let h = head(
            "HTTP/1.1 429 Slow\r\nRetry-After: 3 \r\nretry-after-ms: 2500\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(
            (h.retry_after.as_deref(), h.retry_after_ms.as_deref()),
            (Some("3"), Some("2500"))
        );
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(h.keep_alive);
        assert_eq!(
            head("HTTP/1.1 204 No Content\r\n\r\n").framing,
            Framing::Empty
        );
        assert_eq!(
            head("HTTP/1.1 100 Continue\r\n\r\n").framing,
            Framing::Empty
        );
        let (h, _) = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty, "the answer to a HEAD");
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").framing,
            Framing::Length(3)
        );
    }

    #[test]
    fn incomplete_and_broken_heads() {
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-", false)
                .unwrap()
                .is_none()
        );
        assert!(parse_head(b"", false).unwrap().is_none());
        for bad in [
            "<html>hello</html>\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        ] {
            assert!(parse_head(bad.as_bytes(), false).is_err(), "{bad}");
        }
    }

    /// Decodes `input` fed in pieces of `step` bytes.
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), String> {
        let mut d = Chunked::default();
        let mut out = Vec::new();
        let mut used = 0;
        for piece in input.chunks(step) {
            let n = d.decode(piece, &mut out)?;
            used += n;
            if n < piece.len() {
                break;
            }
        }
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn chunked_bodies_on_any_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64] {
            let (out, used, done) = decode(body, step).unwrap();
            assert_eq!(out, b"hello, world", "step {step}");
            assert!(done);
            assert_eq!(used, body.len() - 4, "the next response's bytes are left");
        }
        // Bare LF line ends, as some servers send.
        let (out, _, done) = decode(b"3\nabc\n0\n\n", 4).unwrap();
        assert_eq!((out.as_slice(), done), (&b"abc"[..], true));
        let (out, _, done) = decode(b"3\r\nab", 100).unwrap();
        assert_eq!((out.as_slice(), done), (&b"ab"[..], false));
    }

    #[test]
    fn broken_chunked_framing() {
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcX\r\n",
            b"ffffffffffffffffff\r\n",
            b"3 x\r\nabc\r\n",
        ] {
            assert!(
                decode(bad, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'1'; MAX_LINE + 10];
        assert!(decode(&long, 1000).is_err());
    }
}
