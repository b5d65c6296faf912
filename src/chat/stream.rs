//! Reading a chat-completions stream, for the server and `sigoe` alike: its chunks gathered
//! into text, tool calls and usage, errors inside it seen in the same parse, and its end
//! told apart from a cut. Pure: the events come from any reader.

use std::io::{self, BufRead};

use serde::Deserialize;
use serde_json::Value;

use super::answer::assistant_message;
use super::provider_error::{error_in, member_message, reported};
use super::sse::{Event, EventReader};
use crate::state::session::Message;

/// How reading a stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// `[DONE]`, or a clean end after the model said it had finished.
    Done,
    /// The provider failed: an error event, a cut, a timeout, garbage. One line.
    Failed(String),
    /// The consumer of the events stopped (the client went away, stdout closed).
    Stopped(io::Error),
}

/// What one chunk brought, as the consumer of a stream sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed<'a> {
    /// The chunk carries only the usage (`choices: []`).
    pub usage_only: bool,
    /// The assistant text the chunk added (often empty).
    pub text: &'a str,
}

/// Reads a stream to its end, starting with its `first` event: each data event is gathered
/// into `gathered`, then handed to `each` with what it brought. An error from `each` stops
/// the reading ([`StreamEnd::Stopped`]); the caller closes the connection.
pub fn read_stream<R: BufRead>(
    first: Event,
    events: &mut EventReader<R>,
    gathered: &mut Gathered,
    mut each: impl FnMut(&str, Fed<'_>) -> io::Result<()>,
) -> StreamEnd {
    let mut next = Some(Ok(Some(first)));
    loop {
        let event = next.take().unwrap_or_else(|| events.next_event());
        match event {
            Ok(Some(Event::Data(payload))) => {
                let before = gathered.text.len();
                let chunk = gathered.take(&payload);
                if let Some(message) = chunk.error {
                    return StreamEnd::Failed(reported(&message));
                }
                let usage_only = chunk.usage_only;
                let fed = Fed {
                    usage_only,
                    text: &gathered.text[before..],
                };
                if let Err(e) = each(&payload, fed) {
                    return StreamEnd::Stopped(e);
                }
            }
            Ok(Some(Event::Done)) => return StreamEnd::Done,
            // A clean end after the model said it had finished is a complete stream (some
            // servers omit `[DONE]`); otherwise it was cut.
            Ok(None) if gathered.finished => return StreamEnd::Done,
            Ok(None) => return StreamEnd::Failed("stream ended before it was complete".into()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                return StreamEnd::Failed("no event within the timeout".into());
            }
            Err(e) => return StreamEnd::Failed(format!("stream broken: {e}")),
        }
    }
}

/// What is kept from a stream: the assistant's text, tool-call fragments, usage.
#[derive(Debug, Default)]
pub struct Gathered {
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

/// What one chunk was, from its one parse.
#[derive(Debug, Default, PartialEq)]
pub struct Taken {
    /// It only carries the usage (`choices: []`).
    pub usage_only: bool,
    /// It is an `{"error": ...}` object: the provider's message.
    pub error: Option<String>,
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
    #[cfg(test)]
    /// Takes in one chunk; returns whether it only carries usage (`choices: []`).
    pub fn feed(&mut self, payload: &str) -> bool {
        self.take(payload).usage_only
    }

    /// Takes in one chunk and says what it was. One parse per event tells its text, usage
    /// and any error (perf at 100 concurrent streams: a second parse into a `Value` just to
    /// look for `error` was a sixth of the gateway's CPU while relaying).
    pub fn take(&mut self, payload: &str) -> Taken {
        let Ok(chunk) = serde_json::from_str::<Chunk>(payload) else {
            // Not a chunk as expected; it may still be an error object of another shape.
            return Taken {
                usage_only: false,
                error: error_in(payload),
            };
        };
        if let Some(err) = &chunk.error {
            return Taken {
                usage_only: false,
                error: Some(member_message(err)),
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
        Taken {
            usage_only: chunk.choices.is_empty() && chunk.usage.is_some(),
            error: None,
        }
    }

    /// The assistant's text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    #[cfg(test)]
    /// Whether a chunk carried a `finish_reason`.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// `(prompt_tokens, completion_tokens)`, when the stream reported them.
    pub fn usage(&self) -> (Option<u64>, Option<u64>) {
        (self.prompt_tokens, self.completion_tokens)
    }

    /// The assistant's turn for the session: its text, and its tool calls as text lines.
    pub fn assistant(&self) -> Message {
        let mut content = self.text.clone();
        for (name, args) in &self.tool_calls {
            if !content.is_empty() {
                content.push('\n');
            }
            content.push_str(&format!("[tool call {name}({args})]"));
        }
        assistant_message(Value::String(content))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gathering_text_tool_calls_and_usage() {
        let mut g = Gathered::default();
        assert!(!g.feed(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#));
        assert!(!g.feed(r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#));
        assert!(!g.feed(r#"{"choices":[{"index":0,"delta":{"content":"lo"}}]}"#));
        assert!(!g.feed(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"x\""}}]}}]}"#));
        assert!(!g.feed(
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}"#
        ));
        assert!(!g.finished());
        assert!(!g.feed(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#));
        assert!(g.finished());
        assert!(g.feed(
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#
        ));
        assert_eq!(g.text(), "Hello");
        assert_eq!(
            g.assistant().content,
            json!("Hello\n[tool call f({\"x\":1})]")
        );
        assert_eq!(g.usage(), (Some(9), Some(2)));
        // Junk and odd indexes are ignored, not fatal.
        assert!(!g.feed("not json"));
        assert!(!g.feed(r#"{"choices":[{"delta":{"tool_calls":[{"index":100000}]}}]}"#));
    }

    #[test]
    fn errors_inside_a_stream_are_seen_in_the_same_parse() {
        let mut g = Gathered::default();
        let error = |g: &mut Gathered, p: &str| g.take(p).error;
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
            g.take(r#"{"choices":[{"delta":{"content":"x"}}]}"#),
            Taken::default()
        );
        assert_eq!(g.text(), "x");
    }

    fn chunk(text: &str) -> String {
        json!({"choices": [{"index": 0, "delta": {"content": text}}]}).to_string()
    }

    /// Reads `rest` after `first`, collecting what `each` saw.
    fn read(first: Event, rest: &str) -> (StreamEnd, Vec<(String, bool)>, Gathered) {
        read_bytes(first, rest.as_bytes())
    }

    fn read_bytes(first: Event, rest: &[u8]) -> (StreamEnd, Vec<(String, bool)>, Gathered) {
        let mut events = EventReader::new(rest);
        let mut gathered = Gathered::default();
        let mut seen = Vec::new();
        let end = read_stream(first, &mut events, &mut gathered, |_, fed| {
            seen.push((fed.text.to_string(), fed.usage_only));
            Ok(())
        });
        (end, seen, gathered)
    }

    #[test]
    fn a_stream_read_to_done_hands_out_each_piece() {
        let rest = format!(
            "data: {}\n\ndata: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
            chunk("lo"),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
        );
        let (end, seen, g) = read(Event::Data(chunk("Hel")), &rest);
        assert!(matches!(end, StreamEnd::Done), "{end:?}");
        let expected = [("Hel", false), ("lo", false), ("", false), ("", true)];
        let seen: Vec<(&str, bool)> = seen.iter().map(|(t, u)| (t.as_str(), *u)).collect();
        assert_eq!(seen, expected);
        assert_eq!(g.text(), "Hello");
    }

    #[test]
    fn how_streams_end() {
        // Finished, then a clean end without [DONE]: complete.
        let finish = json!({"choices": [{"delta": {}, "finish_reason": "stop"}]});
        let (end, _, _) = read(Event::Data(chunk("a")), &format!("data: {finish}\n\n"));
        assert!(matches!(end, StreamEnd::Done), "{end:?}");
        // Cut before finishing.
        let (end, _, g) = read(Event::Data(chunk("a")), "");
        assert!(matches!(end, StreamEnd::Failed(m) if m.contains("before it was complete")));
        assert_eq!(g.text(), "a");
        // An error event from the provider.
        let (end, seen, _) = read(
            Event::Data(chunk("a")),
            "data: {\"error\":{\"message\":\"quota\"}}\n\n",
        );
        assert!(matches!(end, StreamEnd::Failed(m) if m.contains("quota")));
        assert_eq!(seen.len(), 1);
        // Done as the first event.
        let (end, seen, _) = read(Event::Done, "data: never read\n\n");
        assert!(matches!(end, StreamEnd::Done));
        assert!(seen.is_empty());
        // Bytes that are not UTF-8.
        let (end, _, _) = read_bytes(Event::Data(chunk("a")), b"data: \xff\n\n");
        assert!(matches!(end, StreamEnd::Failed(m) if m.contains("stream broken")));
    }

    #[test]
    fn a_consumer_error_stops_the_reading() {
        let rest = format!("data: {}\n\ndata: [DONE]\n\n", chunk("b"));
        let mut events = EventReader::new(rest.as_bytes());
        let mut g = Gathered::default();
        let mut calls = 0;
        let end = read_stream(Event::Data(chunk("a")), &mut events, &mut g, |_, _| {
            calls += 1;
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        });
        assert!(matches!(end, StreamEnd::Stopped(e) if e.kind() == io::ErrorKind::BrokenPipe));
        assert_eq!(calls, 1);
    }
}
