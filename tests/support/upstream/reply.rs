//! What the fake upstream answers: [`Reply`] (a scripted answer, built with chained methods),
//! [`Responder`] (a reply, or a closure that picks one from the request) and the OpenAI bodies
//! the fake renders (chat completions, stream chunks, errors).
//!
//! A reply is plain data, cloned for each use; the bodies that depend on the request (the
//! echoed `model`, the usage counts) are rendered only when the reply is sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Recorded;

/// One scripted answer. Start from a constructor (`Reply::chat`, `Reply::error`,
/// `Reply::stream`, …) and chain options (`.delay(..)`, `.header(..)`, `.gap(..)`, …).
#[derive(Clone, Debug)]
pub struct Reply {
    pub(super) kind: Kind,
    /// Waited before anything is written (the client closing meanwhile is noticed).
    pub(super) delay: Duration,
    /// Extra response headers; one with the name of a default header replaces it.
    pub(super) headers: Vec<(String, String)>,
    /// `model` in rendered chat bodies; `None`: the request's model.
    model: Option<String>,
    /// `(prompt_tokens, completion_tokens)`; `None`: counted from words.
    usage: Option<(u64, u64)>,
}

#[derive(Clone, Debug)]
pub(super) enum Kind {
    Json { status: u16, body: Value },
    Chat { text: String },
    Garbage(Vec<u8>),
    Close,
    Hang,
    Stream(Stream),
}

#[derive(Clone, Debug)]
pub(super) struct Stream {
    events: Events,
    pub(super) gap: Duration,
    pub(super) first_delay: Duration,
    pub(super) chunked: bool,
    pub(super) cut_after: Option<usize>,
    pub(super) then_hang: bool,
}

#[derive(Clone, Debug)]
enum Events {
    /// Payloads, each sent as `data: <payload>\n\n`.
    Data(Vec<String>),
    /// Exact bytes, one write each.
    Raw(Vec<Vec<u8>>),
    /// OpenAI chunks built from content pieces when sent (the model comes from the request).
    Chat(Vec<String>),
}

impl Reply {
    fn new(kind: Kind) -> Reply {
        Reply {
            kind,
            delay: Duration::ZERO,
            headers: Vec::new(),
            model: None,
            usage: None,
        }
    }

    /// 200 with a chat completion whose assistant message is `text` (`finish_reason: "stop"`,
    /// usage included, `model` echoing the request's unless `.model(..)` is set).
    pub fn chat(text: impl Into<String>) -> Reply {
        Reply::new(Kind::Chat { text: text.into() })
    }

    /// Any status with a JSON body.
    pub fn json(status: u16, body: Value) -> Reply {
        Reply::new(Kind::Json { status, body })
    }

    /// An error in OpenAI's shape: `{"error": {"message", "type", "param": null, "code"}}`,
    /// with `type` and `code` chosen from the status as a provider would.
    pub fn error(status: u16, message: impl Into<String>) -> Reply {
        let (kind, code) = error_kind(status);
        Reply::json(
            status,
            json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}}),
        )
    }

    /// [`Reply::error`] with the status's reason phrase as the message:
    /// `Reply::status(429).header("Retry-After", "2")`.
    pub fn status(status: u16) -> Reply {
        Reply::error(status, reason(status))
    }

    /// Writes exactly these bytes as the whole response (status line and all), then closes.
    pub fn garbage(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::new(Kind::Garbage(bytes.into()))
    }

    /// Closes the connection without answering.
    pub fn close() -> Reply {
        Reply::new(Kind::Close)
    }

    /// Never answers: holds the connection until the client closes it or the fake is dropped.
    pub fn hang() -> Reply {
        Reply::new(Kind::Hang)
    }

    /// 200 `text/event-stream` sending each payload as `data: <payload>\n\n`, one write each,
    /// chunked unless `.close_delimited()`. Nothing is added: put `"[DONE]"` in if wanted.
    pub fn stream<S: Into<String>>(events: impl IntoIterator<Item = S>) -> Reply {
        Reply::new(Kind::Stream(Stream {
            events: Events::Data(events.into_iter().map(Into::into).collect()),
            gap: Duration::ZERO,
            first_delay: Duration::ZERO,
            chunked: true,
            cut_after: None,
            then_hang: false,
        }))
    }

    /// An OpenAI stream: a role chunk, one content chunk per piece, a finish chunk
    /// (`"stop"`), a usage chunk with `choices: []`, then `[DONE]`.
    pub fn chat_stream(pieces: &[&str]) -> Reply {
        let mut reply = Reply::stream(Vec::<String>::new());
        reply.stream_mut("chat_stream").events =
            Events::Chat(pieces.iter().map(|p| p.to_string()).collect());
        reply
    }

    /// Two parallel tool calls, `f({"a":1})` (id `c1`) and `g({"b":2})` (id `c2`), streamed
    /// without a usable `index` the three ways upstreams do it: Gemini (no index, each call
    /// in a chunk of its own; here the second one's arguments in two pieces), older Ollama
    /// (no index, both calls in one chunk), and `index: 0` repeated with a new id.
    pub fn two_calls_without_an_index() -> [Reply; 3] {
        let chunk = |calls: Value| {
            json!({"choices": [{"index": 0, "delta": {"tool_calls": calls},
                "finish_reason": null}]})
            .to_string()
        };
        let call = |id: &str, name: &str, args: &str| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}});
        let at_0 = |mut v: Value| {
            v["index"] = json!(0);
            v
        };
        let f = call("c1", "f", "{\"a\":1}");
        let g = call("c2", "g", "{\"b\"");
        let g_rest = json!({"function": {"arguments": ":2}"}});
        let stream = |mut chunks: Vec<String>| {
            chunks.push(
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
                    .to_string(),
            );
            chunks.push("[DONE]".to_string());
            Reply::stream(chunks)
        };
        [
            stream(vec![
                chunk(json!([f.clone()])),
                chunk(json!([g.clone()])),
                chunk(json!([g_rest.clone()])),
            ]),
            stream(vec![chunk(json!([
                f.clone(),
                call("c2", "g", "{\"b\":2}")
            ]))]),
            stream(vec![
                chunk(json!([at_0(f)])),
                chunk(json!([at_0(g)])),
                chunk(json!([at_0(g_rest)])),
            ]),
        ]
    }

    /// The two calls of [`Reply::two_calls_without_an_index`] (`c1` `f` `{"a":1}`, `c2`
    /// `g` `{"b":2}`), interleaved: both started, then each one's arguments in turn, as
    /// some providers stream parallel calls.
    pub fn two_calls_interleaved() -> Reply {
        let piece = |v: Value| {
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [v]}, "finish_reason": null}]})
                .to_string()
        };
        let args =
            |index: u32, text: &str| json!({"index": index, "function": {"arguments": text}});
        Reply::stream([
            piece(
                json!({"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}),
            ),
            piece(
                json!({"index": 1, "id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}}),
            ),
            piece(args(0, "{\"a\"")),
            piece(args(1, "{\"b\"")),
            piece(args(0, ":1}")),
            piece(args(1, ":2}")),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
                .to_string(),
            "[DONE]".to_string(),
        ])
    }

    /// Waits this long before writing anything.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Adds a response header (replacing a default header of the same name).
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The `model` of a chat body or chat stream (default: the request's).
    pub fn model(mut self, model: &str) -> Reply {
        self.model = Some(model.to_string());
        self
    }

    /// The usage of a chat body or chat stream (default: counted from words).
    pub fn usage(mut self, prompt_tokens: u64, completion_tokens: u64) -> Reply {
        self.usage = Some((prompt_tokens, completion_tokens));
        self
    }

    /// Stream: waits this long between two events.
    pub fn gap(mut self, gap: Duration) -> Reply {
        self.stream_mut("gap").gap = gap;
        self
    }

    /// Stream: waits this long between the headers and the first event.
    pub fn first_delay(mut self, delay: Duration) -> Reply {
        self.stream_mut("first_delay").first_delay = delay;
        self
    }

    /// Stream: no chunked encoding; `Connection: close` and the end of the body is the close.
    pub fn close_delimited(mut self) -> Reply {
        self.stream_mut("close_delimited").chunked = false;
        self
    }

    /// Stream with these exact bytes, one write (and one chunk) each, instead of `data:`
    /// events: comments, `event:`/`id:` lines, `\r\n`, an event split over two writes, a last
    /// event without its blank line. Turns any reply into a stream, keeping its options.
    pub fn raw_events(mut self, writes: Vec<Vec<u8>>) -> Reply {
        if !matches!(self.kind, Kind::Stream(_)) {
            self.kind = Reply::stream(Vec::<String>::new()).kind;
        }
        self.stream_mut("raw_events").events = Events::Raw(writes);
        self
    }

    /// Stream: sends `n` events, then drops the connection without the terminating chunk.
    pub fn cut_after(mut self, n: usize) -> Reply {
        self.stream_mut("cut_after").cut_after = Some(n);
        self
    }

    /// Stream: after the events, keeps the connection open without ending the body.
    pub fn then_hang(mut self) -> Reply {
        self.stream_mut("then_hang").then_hang = true;
        self
    }

    fn stream_mut(&mut self, option: &str) -> &mut Stream {
        match &mut self.kind {
            Kind::Stream(stream) => stream,
            other => panic!("Reply::{option} applies to a stream reply, not to {other:?}"),
        }
    }

    /// The status and JSON body of a non-stream reply for `req`.
    pub(super) fn render_json(&self, req: &Recorded) -> Option<(u16, Value)> {
        match &self.kind {
            Kind::Json { status, body } => Some((*status, body.clone())),
            Kind::Chat { text } => {
                let usage = self
                    .usage
                    .unwrap_or_else(|| (prompt_tokens(req), words(text)));
                Some((200, chat_body(&self.model_for(req), text, usage)))
            }
            _ => None,
        }
    }

    /// The bytes of each write of a stream reply for `req` (before chunked framing).
    pub(super) fn stream_writes(&self, req: &Recorded) -> Vec<Vec<u8>> {
        let Kind::Stream(stream) = &self.kind else {
            return Vec::new();
        };
        let data = |payload: &str| format!("data: {payload}\n\n").into_bytes();
        match &stream.events {
            Events::Data(payloads) => payloads.iter().map(|p| data(p)).collect(),
            Events::Raw(writes) => writes.clone(),
            Events::Chat(pieces) => {
                let completion = pieces.len() as u64;
                let usage = self
                    .usage
                    .unwrap_or_else(|| (prompt_tokens(req), completion));
                chat_chunks(&self.model_for(req), pieces, usage)
                    .iter()
                    .map(|p| data(p))
                    .collect()
            }
        }
    }

    fn model_for(&self, req: &Recorded) -> String {
        self.model
            .clone()
            .or_else(|| req.model().map(str::to_string))
            .unwrap_or_else(|| "fake-model".into())
    }
}

/// Answers a request: a fixed [`Reply`] (cloned each time) or a closure
/// `Fn(&Recorded) -> Reply` (for behaviour keyed on the request).
pub trait Responder: Send + Sync + 'static {
    fn respond(&self, req: &Recorded) -> Reply;
}

impl Responder for Reply {
    fn respond(&self, _req: &Recorded) -> Reply {
        self.clone()
    }
}

impl<F> Responder for F
where
    F: Fn(&Recorded) -> Reply + Send + Sync + 'static,
{
    fn respond(&self, req: &Recorded) -> Reply {
        self(req)
    }
}

/// The initial default: `"echo: <last user message>"` as a chat completion, or as a chat
/// stream (split at spaces) when the request asks for `"stream": true`.
pub fn echo_reply(req: &Recorded) -> Reply {
    let text = format!("echo: {}", req.last_user_text().unwrap_or_default());
    if !req.is_stream() {
        return Reply::chat(text);
    }
    let mut pieces: Vec<String> = Vec::new();
    for (i, word) in text.split(' ').enumerate() {
        pieces.push(if i == 0 {
            word.to_string()
        } else {
            format!(" {word}")
        });
    }
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    Reply::chat_stream(&refs)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn completion_id() -> String {
    format!("chatcmpl-fake{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn usage_json((prompt, completion): (u64, u64)) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

fn chat_body(model: &str, text: &str, usage: (u64, u64)) -> Value {
    json!({
        "id": completion_id(), "object": "chat.completion", "created": now_unix(), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": usage_json(usage),
    })
}

fn chat_chunks(model: &str, pieces: &[String], usage: (u64, u64)) -> Vec<String> {
    let (id, created) = (completion_id(), now_unix());
    let chunk = |choices: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": choices})
    };
    let delta = |delta: Value, finish: Value| {
        chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish}])).to_string()
    };
    let mut out = vec![delta(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    out.extend(
        pieces
            .iter()
            .map(|p| delta(json!({"content": p}), Value::Null)),
    );
    out.push(delta(json!({}), json!("stop")));
    let mut last = chunk(json!([]));
    last["usage"] = usage_json(usage);
    out.push(last.to_string());
    out.push("[DONE]".to_string());
    out
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count().max(1) as u64
}

/// A made-up but stable prompt size: the words of every message's text.
fn prompt_tokens(req: &Recorded) -> u64 {
    let Some(messages) = req.json.as_ref().and_then(|j| j["messages"].as_array()) else {
        return 1;
    };
    let text: Vec<String> = messages
        .iter()
        .map(|m| content_text(&m["content"]))
        .collect();
    words(&text.join(" "))
}

/// The text of a message `content`: a string, or the `text` parts of an array joined by spaces.
pub(super) fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
            texts.join(" ")
        }
        _ => String::new(),
    }
}

fn error_kind(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("invalid_request_error", "invalid_request"),
        401 => ("authentication_error", "invalid_api_key"),
        403 => ("permission_error", "forbidden"),
        404 => ("invalid_request_error", "not_found"),
        408 => ("timeout_error", "timeout"),
        409 => ("invalid_request_error", "conflict"),
        422 => ("invalid_request_error", "unprocessable_entity"),
        429 => ("rate_limit_error", "rate_limit_exceeded"),
        500..=599 => ("server_error", "server_error"),
        _ => ("invalid_request_error", "error"),
    }
}

/// The reason phrase of a status line.
pub(super) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}
