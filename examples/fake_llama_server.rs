//! A stand-in for llama.cpp's `llama-server`, for sigorest's tests (`cargo test` builds it into
//! `target/debug/examples/`). It takes the same flags — `--host`, `--port`, `-m FILE`,
//! `--parallel N`; anything else is ignored — and serves:
//!
//! - `GET /health`: 503 `{"error": {"code": 503, "message": "Loading model", ...}}` while
//!   it "loads", then 200 `{"status": "ok"}`, as llama-server does;
//! - `POST /v1/chat/completions`: a fixed answer, `llama says: <last user text>`, or a
//!   stream of `llama`, ` says`, ` hi` with `"stream": true`. A user text starting with
//!   `hold` makes the answer wait until the file `FILE.release` exists (a stream sends its
//!   first event before it waits);
//! - `GET /stats`: `{"requests", "in_flight", "max_in_flight"}` of chat completions.
//!
//! It is steered by files next to the model file `FILE`:
//!
//! | file | effect |
//! |---|---|
//! | `FILE.loading` | loading while it exists (checked when asked) |
//! | `FILE.crash` | removed, then the server exits with status 3 |
//! | `FILE.hang` | removed, then the server stops answering anything (but keeps running) |
//! | `FILE.ignore-term` | at start: SIGTERM is ignored (only SIGKILL ends it) |
//! | `FILE.pids` | it appends its pid when it starts |
//! | `FILE.args` | it writes its arguments, one a line, when it starts |
//!
//! With `LLAMA_API_KEY` in its environment (llama-server's other way to get `--api-key`),
//! `POST /v1/...` needs `Authorization: Bearer <that key>` (or one of a list `k1,k2`): 401
//! otherwise, as llama-server.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Fake {
    model: PathBuf,
    /// The key `/v1/` requests must bring.
    key: Option<String>,
    loaded: AtomicBool,
    hung: AtomicBool,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Fake {
    fn file(&self, suffix: &str) -> PathBuf {
        let mut name = self.model.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }

    fn loading(&self) -> bool {
        if self.loaded.load(Ordering::Acquire) {
            return false;
        }
        if self.file(".loading").exists() {
            return true;
        }
        self.loaded.store(true, Ordering::Release);
        false
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |names: &[&str]| {
        args.iter()
            .position(|a| names.contains(&a.as_str()))
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let host = value(&["--host"]).unwrap_or_else(|| "127.0.0.1".into());
    let port = value(&["--port"]).unwrap_or_else(|| "8080".into());
    let Some(model) = value(&["-m", "--model"]) else {
        eprintln!("error: no model (-m FILE)");
        std::process::exit(1);
    };
    let fake = Arc::new(Fake {
        model: PathBuf::from(model),
        key: std::env::var("LLAMA_API_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
        loaded: AtomicBool::new(false),
        hung: AtomicBool::new(false),
        requests: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
    });
    let mut pids = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(fake.file(".pids"))
        .expect("pid file");
    let _ = writeln!(pids, "{}", std::process::id());
    let _ = fs::write(fake.file(".args"), args.join("\n"));
    if fake.file(".ignore-term").exists() {
        // Registering a handler replaces the default action (exit) with setting a flag.
        let flag = Arc::new(AtomicBool::new(false));
        let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, flag);
    }
    let listener = match TcpListener::bind(format!("{host}:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot bind {host}:{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("fake llama-server listening on {host}:{port}");
    let watched = fake.clone();
    thread::spawn(move || watch(&watched));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let fake = fake.clone();
        thread::spawn(move || serve(&fake, stream));
    }
}

/// Looks for `.crash` and `.hang` every 20 ms.
fn watch(fake: &Fake) {
    loop {
        if fs::remove_file(fake.file(".crash")).is_ok() {
            eprintln!("crashing as told");
            std::process::exit(3);
        }
        if fs::remove_file(fake.file(".hang")).is_ok() {
            eprintln!("hanging as told");
            fake.hung.store(true, Ordering::Release);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One connection: requests with `Content-Length` bodies, kept alive.
fn serve(fake: &Fake, stream: TcpStream) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut length = 0usize;
        let mut authorization = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                } else if n.eq_ignore_ascii_case("authorization") {
                    authorization = v.trim().to_string();
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        while fake.hung.load(Ordering::Acquire) {
            thread::sleep(Duration::from_secs(1));
        }
        // A list `k1,k2`, as llama-server takes it: any one of them opens it.
        let refused = fake.key.as_ref().is_some_and(|keys| {
            path.starts_with("/v1/")
                && !keys
                    .split(',')
                    .any(|key| authorization == format!("Bearer {}", key.trim()))
        });
        let ok = match (method.as_str(), path.as_str()) {
            _ if refused => send_json(
                &mut out,
                401,
                &json!({"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}}),
            ),
            ("GET", "/health") if fake.loading() => send_json(&mut out, 503, &loading()),
            ("GET", "/health") => send_json(&mut out, 200, &json!({"status": "ok"})),
            ("GET", "/stats") => send_json(
                &mut out,
                200,
                &json!({
                    "requests": fake.requests.load(Ordering::Acquire),
                    "in_flight": fake.in_flight.load(Ordering::Acquire),
                    "max_in_flight": fake.max_in_flight.load(Ordering::Acquire),
                }),
            ),
            ("POST", "/v1/chat/completions") => chat(fake, &body, &mut out),
            _ => send_json(
                &mut out,
                404,
                &json!({"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}),
            ),
        };
        if !ok {
            return;
        }
    }
}

fn loading() -> Value {
    json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
}

fn chat(fake: &Fake, body: &[u8], out: &mut TcpStream) -> bool {
    if fake.loading() {
        return send_json(out, 503, &loading());
    }
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    fake.requests.fetch_add(1, Ordering::AcqRel);
    let now = fake.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    fake.max_in_flight.fetch_max(now, Ordering::AcqRel);
    let hold = text.starts_with("hold");
    let model = req["model"].as_str().unwrap_or("").to_string();
    let ok = if req["stream"] == true {
        stream(out, &model, hold.then(|| fake.file(".release")))
    } else {
        if hold {
            wait_for(&fake.file(".release"));
        }
        send_json(
            out,
            200,
            &json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1760000000,
                "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": format!("llama says: {text}")}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}),
        )
    };
    fake.in_flight.fetch_sub(1, Ordering::AcqRel);
    ok
}

fn wait_for(file: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !file.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

fn send_json(out: &mut TcpStream, status: u16, body: &Value) -> bool {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.write_all(format!("{head}{body}").as_bytes()).is_ok()
}

/// A chunked event stream, closed afterwards; with `hold`, the rest waits for that file
/// after the first event.
fn stream(out: &mut TcpStream, model: &str, hold: Option<PathBuf>) -> bool {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if out.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1760000000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for piece in ["llama", " says", " hi"] {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    events.push("[DONE]".to_string());
    for (i, e) in events.iter().enumerate() {
        if i == 1
            && let Some(file) = &hold
        {
            wait_for(file);
        }
        let data = format!("data: {e}\n\n");
        let piece = format!("{:x}\r\n{data}\r\n", data.len());
        if out
            .write_all(piece.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return false;
        }
    }
    let _ = out.write_all(b"0\r\n\r\n");
    false
}
