//! `POST /v1/chat/completions`: validate, resolve the model, build the upstream body, call it
//! (retries, breaker), answer, and keep the session.
//!
//! Streams are relayed event by event as they arrive: the first event is awaited (and the
//! call retried) before the 200 goes out, so a failure before it is a normal JSON error;
//! after it, a failure becomes a final `data: {"error": ...}` event. The assistant's text is
//! gathered from the deltas and stored in the session only when the stream completes.

use std::io;
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;

use crate::breaker::{Outcome, Permit};
use crate::chat::{self, ChatRequest};
use crate::error::Error;
use crate::gateway::App;
use crate::http::{LogFields, Request, Response, Sink};
use crate::retry::Failure;
use crate::session::Message;
use crate::sse::{self, Event};
use crate::upstream::OpenStream;

/// Everything one completion needs after validation.
struct Call {
    short: String,
    session: Option<(String, Option<Message>)>,
}

impl App {
    pub(crate) fn chat(&self, req: &Request) -> Response {
        let mut log: LogFields = Vec::new();
        match self.chat_inner(req, &mut log) {
            Ok(mut resp) => {
                resp.log.splice(0..0, log);
                resp
            }
            Err(e) => {
                let mut resp = e.to_response();
                resp.log.splice(0..0, log);
                resp
            }
        }
    }

    fn chat_inner(&self, req: &Request, log: &mut LogFields) -> Result<Response, Error> {
        let creq = ChatRequest::parse(&req.body)?;
        let resolved = self.resolve(&creq.model)?;
        let model = resolved.model;
        log.push(("model", model.short.clone()));
        if let Some(env) = model.provider.key_env() {
            if resolved.target.key.is_none() {
                return Err(Error::ProviderNotConfigured { env });
            }
        }
        let history = match &creq.session_id {
            Some(id) => self.sessions.history(&model.short, id)?,
            None => Vec::new(),
        };
        let memory = self.memory();
        let body = creq.upstream_body(&model, &memory, &history);
        let body = serde_json::to_vec(&body).map_err(|e| Error::Internal {
            message: e.to_string(),
        })?;
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(model = model.short.as_str(), body = String::from_utf8_lossy(&body).as_ref(); "upstream request");
        }
        let permit =
            self.breakers
                .admit(&model.short)
                .map_err(|retry_after_s| Error::CircuitOpen {
                    model: model.short.clone(),
                    retry_after_s,
                })?;
        let call = Call {
            short: model.short.clone(),
            session: creq
                .session_id
                .clone()
                .map(|id| (id, creq.last_user_message())),
        };

        if creq.stream {
            let opened = self.upstream.open_stream(
                &resolved.target,
                &body,
                creq.timeout,
                creq.timeout,
                creq.retries,
                &req.hangup,
            );
            log.push(("attempts", opened.attempts.to_string()));
            return match opened.result {
                Ok(stream) => Ok(self.relay(stream, permit, call, creq.client_wants_usage)),
                Err(failure) => Err(fail(permit, failure, &call.short)),
            };
        }

        let deadline = Instant::now() + creq.timeout;
        let done =
            self.upstream
                .complete(&resolved.target, &body, deadline, creq.retries, &req.hangup);
        log.push(("attempts", done.attempts.to_string()));
        let (answer, parsed) = match done.result {
            Ok(done) => (done.body, done.answer),
            Err(failure) => return Err(fail(permit, failure, &call.short)),
        };
        permit.finish(Outcome::Success);
        if let Some(n) = parsed.prompt_tokens {
            log.push(("prompt_tokens", n.to_string()));
        }
        if let Some(n) = parsed.completion_tokens {
            log.push(("completion_tokens", n.to_string()));
        }
        if let Some((id, user)) = &call.session {
            self.save_turn(
                &call.short,
                id,
                user.clone(),
                chat::assistant_message(parsed.content),
            );
        }
        Ok(Response::full(200, "application/json", answer))
    }

    /// Appends a turn to a session. A failure to write is logged, not returned: the client
    /// has its answer, and the old session file is intact (writes are atomic).
    fn save_turn(&self, short: &str, id: &str, user: Option<Message>, assistant: Message) {
        let turn: Vec<Message> = user.into_iter().chain(Some(assistant)).collect();
        if let Err(e) = self.sessions.append(short, id, &turn) {
            log::error!(model = short, session = id, error = e.to_string().as_str(); "session not saved");
        }
    }

    fn relay(
        &self,
        stream: OpenStream,
        permit: Permit,
        call: Call,
        client_wants_usage: bool,
    ) -> Response {
        let sessions = self.sessions.clone();
        let body = Box::new(move |sink: &mut dyn Sink, log: &mut LogFields| {
            let OpenStream {
                first,
                mut events,
                agent,
            } = stream;
            let mut gathered = Gathered::default();
            let mut next = Some(Ok(Some(first)));
            let end = loop {
                let event = next.take().unwrap_or_else(|| events.next_event());
                match event {
                    Ok(Some(Event::Data(payload))) => {
                        let fed = gathered.feed(&payload);
                        if let Some(message) = fed.error {
                            break End::Failed(format!("provider reported an error: {message}"));
                        }
                        if fed.usage_only && !client_wants_usage {
                            continue;
                        }
                        if let Err(e) = sink.send(&sse::frame(&payload)) {
                            break End::ClientGone(e);
                        }
                    }
                    Ok(Some(Event::Done)) => break End::Done,
                    // A clean end after the model said it had finished is a complete stream
                    // (some servers omit `[DONE]`); otherwise it was cut.
                    Ok(None) if gathered.finished => break End::Done,
                    Ok(None) => break End::Failed("stream ended before it was complete".into()),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                        ) =>
                    {
                        break End::Failed("no event within the timeout".into());
                    }
                    Err(e) => break End::Failed(format!("stream broken: {e}")),
                }
            };
            // The upstream connection is closed here, whatever happened.
            drop(events);
            agent.shutdown();
            gathered.log(log);
            match end {
                End::Done => {
                    permit.finish(Outcome::Success);
                    if let Some((id, user)) = &call.session {
                        let turn: Vec<Message> = user
                            .clone()
                            .into_iter()
                            .chain(Some(gathered.assistant()))
                            .collect();
                        if let Err(e) = sessions.append(&call.short, id, &turn) {
                            log::error!(model = call.short.as_str(), session = id.as_str(), error = e.to_string().as_str(); "session not saved");
                        }
                    }
                    sink.send(sse::DONE)
                }
                End::Failed(message) => {
                    permit.finish(Outcome::Failure);
                    log.push(("error", "upstream_error".to_string()));
                    let err = Error::Upstream {
                        message: format!("{}: {message}", call.short),
                    };
                    sink.send(&sse::frame(&err.body().to_string()))
                }
                End::ClientGone(e) => {
                    permit.finish(Outcome::Neutral);
                    log.push(("error", "client_gone".to_string()));
                    Err(e)
                }
            }
        });
        Response::stream(200, "text/event-stream", body)
            .with_header("Cache-Control", "no-cache")
            .with_header("X-Accel-Buffering", "no")
    }
}

/// Records a failed call with the breaker and turns it into the client's error.
fn fail(permit: Permit, failure: Failure, short: &str) -> Error {
    permit.finish(failure.breaker_outcome());
    failure.into_error(short)
}

enum End {
    Done,
    Failed(String),
    ClientGone(io::Error),
}

/// What the gateway keeps from a stream: the assistant's text, tool-call fragments, usage.
#[derive(Default)]
struct Gathered {
    text: String,
    tool_calls: Vec<(String, String)>,
    finished: bool,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    /// Present (even `null`) when the provider reports an error inside the stream.
    #[serde(default, deserialize_with = "present")]
    error: Option<Value>,
}

/// `Some` for a member that is there, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// What one chunk was.
#[derive(Debug, Default, PartialEq)]
struct Fed {
    /// It only carries usage (`choices: []`).
    usage_only: bool,
    /// It is an `{"error": ...}` object: the provider's message.
    error: Option<String>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallDelta>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl Gathered {
    /// Takes in one chunk: one parse per event tells its text, usage and any error.
    fn feed(&mut self, payload: &str) -> Fed {
        let Ok(chunk) = serde_json::from_str::<Chunk>(payload) else {
            // Not a chunk as expected; it may still be an error object of another shape.
            return Fed {
                usage_only: false,
                error: crate::upstream::error_event(payload),
            };
        };
        if let Some(err) = &chunk.error {
            return Fed {
                usage_only: false,
                error: Some(crate::upstream::error_message(err)),
            };
        }
        if let Some(u) = &chunk.usage {
            self.prompt_tokens = u.prompt_tokens.or(self.prompt_tokens);
            self.completion_tokens = u.completion_tokens.or(self.completion_tokens);
        }
        for choice in chunk.choices.iter().take(1) {
            if choice.finish_reason.is_some() {
                self.finished = true;
            }
            let Some(delta) = &choice.delta else { continue };
            if let Some(c) = &delta.content {
                self.text.push_str(c);
            }
            for tc in &delta.tool_calls {
                if tc.index > 128 {
                    continue;
                }
                if self.tool_calls.len() <= tc.index {
                    self.tool_calls
                        .resize(tc.index + 1, (String::new(), String::new()));
                }
                if let Some(f) = &tc.function {
                    let slot = &mut self.tool_calls[tc.index];
                    if let Some(n) = &f.name {
                        slot.0.push_str(n);
                    }
                    if let Some(a) = &f.arguments {
                        slot.1.push_str(a);
                    }
                }
            }
        }
        Fed {
            usage_only: chunk.choices.is_empty() && chunk.usage.is_some(),
            error: None,
        }
    }

    /// The assistant's turn for the session: its text, and its tool calls as text lines.
    fn assistant(&self) -> Message {
        let mut content = self.text.clone();
        for (name, args) in &self.tool_calls {
            if !content.is_empty() {
                content.push('\n');
            }
            content.push_str(&format!("[tool call {name}({args})]"));
        }
        chat::assistant_message(Value::String(content))
    }

    fn log(&self, log: &mut LogFields) {
        if let Some(n) = self.prompt_tokens {
            log.push(("prompt_tokens", n.to_string()));
        }
        if let Some(n) = self.completion_tokens {
            log.push(("completion_tokens", n.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn usage_only(g: &mut Gathered, payload: &str) -> bool {
        let fed = g.feed(payload);
        assert_eq!(fed.error, None, "{payload}");
        fed.usage_only
    }

    #[test]
    fn errors_inside_a_stream_are_seen_in_the_same_parse() {
        let mut g = Gathered::default();
        let error = |g: &mut Gathered, p: &str| g.feed(p).error;
        assert_eq!(
            error(
                &mut g,
                r#"{"error":{"message":"quota exceeded","type":"x"}}"#
            )
            .as_deref(),
            Some("quota exceeded")
        );
        assert_eq!(
            error(&mut g, r#"{"error":"overloaded"}"#).as_deref(),
            Some("overloaded")
        );
        // As before: an `error` member of any value counts, and odd shapes are still read.
        assert_eq!(error(&mut g, r#"{"error":null}"#).as_deref(), Some("null"));
        assert_eq!(
            error(&mut g, r#"{"choices":"junk","error":{"message":"bad"}}"#).as_deref(),
            Some("bad")
        );
        assert_eq!(
            g.feed(r#"{"choices":[{"delta":{"content":"x"}}]}"#),
            Fed::default()
        );
        assert_eq!(g.text, "x");
    }

    #[test]
    fn gathering_text_tool_calls_and_usage() {
        let mut g = Gathered::default();
        assert!(!usage_only(
            &mut g,
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#
        ));
        assert!(!usage_only(
            &mut g,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#
        ));
        assert!(!usage_only(
            &mut g,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"}}]}"#
        ));
        assert!(!usage_only(
            &mut g,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"x\""}}]}}]}"#
        ));
        assert!(!usage_only(
            &mut g,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}"#
        ));
        assert!(!g.finished);
        assert!(!usage_only(
            &mut g,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#
        ));
        assert!(g.finished);
        assert!(usage_only(
            &mut g,
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#
        ));
        assert_eq!(g.text, "Hello");
        assert_eq!(
            g.assistant().content,
            json!("Hello\n[tool call f({\"x\":1})]")
        );
        let mut log = Vec::new();
        g.log(&mut log);
        assert_eq!(
            log,
            [
                ("prompt_tokens", "9".to_string()),
                ("completion_tokens", "2".to_string())
            ]
        );
        // Junk and odd indexes are ignored, not fatal.
        assert!(!usage_only(&mut g, "not json"));
        assert!(!usage_only(
            &mut g,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":100000}]}}]}"#
        ));
    }
}
