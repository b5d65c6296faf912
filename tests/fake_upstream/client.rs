//! The raw client the fake upstream's tests talk to it with, and their small helpers.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::upstream::FakeUpstream;

pub const WAIT: Duration = Duration::from_secs(2);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A minimal HTTP/1.1 client on one connection.
pub struct Client {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("response body is JSON")
    }
}

impl Client {
    pub fn connect(fake: &FakeUpstream) -> Client {
        let stream = TcpStream::connect(fake.addr()).expect("connect to the fake");
        // A broken fake fails the test instead of hanging it.
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the fake");
    }

    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut out = format!("{method} {path} HTTP/1.1\r\nHost: fake\r\n");
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes);
    }

    pub fn post_chat(&mut self, body: &Value) {
        let body = body.to_string();
        self.send(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
    }

    /// Reads more; false at EOF.
    pub fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 4096];
        match self.stream.read(&mut tmp) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read from the fake: {e}"),
        }
    }

    pub fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    pub fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(end + 2)?;
                return Some(String::from_utf8(line[..end].to_vec()).unwrap());
            }
            if !self.fill() {
                return None;
            }
        }
    }

    pub fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.line().expect("a status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let mut headers = Vec::new();
        loop {
            let line = self.line().expect("a header line");
            if line.is_empty() {
                return (status, headers);
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }

    /// One chunk of a chunked body: `Ok(None)` at the terminating chunk, `Err` at EOF.
    pub fn chunk(&mut self) -> Result<Option<Vec<u8>>, &'static str> {
        let size = self.line().ok_or("EOF before a chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| "bad chunk size")?;
        if size == 0 {
            self.line().ok_or("EOF in the trailer")?;
            return Ok(None);
        }
        let data = self.take(size).ok_or("EOF in a chunk")?;
        self.take(2).ok_or("EOF after a chunk")?;
        Ok(Some(data))
    }

    pub fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill() {}
        std::mem::take(&mut self.buf)
    }

    pub fn read_response(&mut self) -> Response {
        let (status, headers) = self.read_head();
        let response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let body = if response.header("transfer-encoding") == Some("chunked") {
            let mut body = Vec::new();
            while let Some(chunk) = self.chunk().expect("a complete chunked body") {
                body.extend(chunk);
            }
            body
        } else if let Some(length) = response.header("content-length") {
            self.take(length.parse().unwrap()).expect("the whole body")
        } else {
            self.read_to_end()
        };
        Response { body, ..response }
    }
}

pub fn chat_request(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": text}]})
}

/// One chat request on a new connection.
pub fn post(fake: &FakeUpstream, body: &Value) -> Response {
    let mut client = Client::connect(fake);
    client.post_chat(body);
    client.read_response()
}

pub fn content(response: &Response) -> String {
    response.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The `data:` payloads of an SSE body.
pub fn data_events(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// Threads of this process whose name starts with `prefix` (other tests' threads are ignored:
/// each fake has a prefix of its own).
pub fn threads_named(prefix: &str) -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end().starts_with(prefix))
        .count()
}
