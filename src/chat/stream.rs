//! Reading a chat-completions stream, for the server and `sigoe` alike: its chunks gathered
//! into text, tool calls and usage, errors inside it seen in the same parse, and its end
//! told apart from a cut. Pure: the events come from any reader.

use std::io;

use serde::Deserialize;
use serde_json::Value;

use super::answer::{assistant_message, assistant_with_calls, reasoning_text};
use super::halves::{Halves, Text};
use super::parts::Content;
use super::provider_error::{error_in, member_message, reported};
use super::sse::Event;
use super::tool_calls::CallOrder;
use crate::state::session::Message;

/// How reading a stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// `[DONE]`, or a clean end after the model said it had finished.
    Done,
    /// The provider failed: an error event, a cut, garbage. One line.
    Failed(String),
    /// No event within the request's `timeout` of the one before ([`NO_EVENT`]): a
    /// timeout, which a client that chose a short `timeout` may have brought on itself.
    TimedOut,
    /// The consumer of the events stopped (the client went away, stdout closed).
    Stopped(io::Error),
}

/// Why a stream timed out between two events.
pub const NO_EVENT: &str = "no event within the timeout";

/// Whether a read ended because its wait ran out.
pub fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// Most text and tool-call bytes kept from one stream for its session turn. Far beyond any
/// model's output limit; past it the stream ends with an error instead of growing.
pub const MAX_KEPT: usize = 8 * 1024 * 1024;

/// What one event of a stream does: each data event is parsed once, taken in by
/// `gathered`, then handed to `each` with its parse. `None` while the stream goes on, else
/// how it ended. An error from `each` stops the reading ([`StreamEnd::Stopped`]); the
/// caller closes the connection.
pub fn take_event(
    event: io::Result<Option<Event>>,
    gathered: &mut Gathered,
    each: impl FnOnce(&str, &Chunk) -> io::Result<()>,
) -> Option<StreamEnd> {
    match event {
        Ok(Some(Event::Data(payload))) => {
            let chunk = match Chunk::parse(&payload) {
                Ok(chunk) => chunk,
                Err(message) => return Some(StreamEnd::Failed(reported(&message))),
            };
            if let Err(why) = gathered.take(&chunk) {
                return Some(StreamEnd::Failed(why));
            }
            if let Err(e) = each(&payload, &chunk) {
                return Some(StreamEnd::Stopped(e));
            }
            None
        }
        Ok(Some(Event::Done)) => Some(StreamEnd::Done),
        // A clean end after the model said it had finished is a complete stream (some
        // servers omit `[DONE]`); otherwise it was cut.
        Ok(None) if gathered.finished => Some(StreamEnd::Done),
        Ok(None) => Some(StreamEnd::Failed(
            "stream ended before it was complete".into(),
        )),
        Err(e) if timed_out(&e) => Some(StreamEnd::TimedOut),
        Err(e) => Some(StreamEnd::Failed(format!("stream broken: {e}"))),
    }
}

/// One chunk of a chat-completions stream, parsed once per event. Fields a provider leaves
/// out are empty.
#[derive(Debug, Default, Deserialize)]
pub struct Chunk {
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Present (even `null`) when the provider reports an error inside the stream.
    #[serde(default, deserialize_with = "present")]
    error: Option<Value>,
}

/// `Some` for a member that is there, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Debug, Default, Deserialize)]
pub struct ChunkChoice {
    /// Which choice (`n` > 1 streams send each in chunks of its own); read leniently.
    #[serde(default)]
    index: Value,
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Where Moonshot puts a stream's usage (in its last choice, not beside `choices`);
    /// [`Chunk::parse`] moves it to the chunk's `usage`.
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Delta {
    /// The text (see [`Text`] for halves of a surrogate pair cut apart by the stream), and
    /// the reasoning of `thinking` parts when it came as a list of parts (Mistral).
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    pub tool_calls: Vec<ToolCallDelta>,
    /// The model's reasoning, as DeepSeek, Kimi, GLM, vLLM and llama-server send it (any
    /// type read: only a string is used).
    #[serde(default)]
    reasoning_content: Value,
    /// The same, as Ollama and OpenRouter name it (vLLM sends both).
    #[serde(default)]
    reasoning: Value,
    /// A refusal (OpenAI's models, with structured outputs), instead of content.
    #[serde(default)]
    refusal: Value,
}

impl ChunkChoice {
    /// Which choice this is (`n` > 1), when the provider said so in a number.
    pub fn number(&self) -> Option<u64> {
        self.index.as_u64()
    }
}

impl Delta {
    /// The text this delta carries: its `content` string, or the text of its text parts.
    pub fn text(&self) -> Option<&Text> {
        self.content.as_ref().map(|c| &c.text)
    }

    /// The piece of reasoning this delta carries, if any: `reasoning_content` or
    /// `reasoning`, else the reasoning of `thinking` parts in its `content`.
    pub fn reasoning(&self) -> Option<&str> {
        reasoning_text(&self.reasoning_content, &self.reasoning).or_else(|| {
            self.content
                .as_ref()
                .map(|c| c.thinking.as_str())
                .filter(|t| !t.is_empty())
        })
    }

    /// The piece of a refusal this delta carries, if any.
    pub fn refusal(&self) -> Option<&str> {
        self.refusal.as_str().filter(|s| !s.is_empty())
    }
}

/// A piece of a tool call: the first piece of a call usually carries its `id` and name,
/// the next ones fragments of its arguments; `index` says which call, when the upstream
/// sends one ([`CallOrder`] tells the calls apart without it).
#[derive(Debug, Default, Deserialize)]
pub struct ToolCallDelta {
    #[serde(default)]
    pub index: Option<usize>,
    #[serde(default)]
    pub id: Option<String>,
    /// `"function"` (any type read: only a string is used).
    #[serde(default, rename = "type")]
    pub kind: Value,
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FunctionDelta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

pub use super::answer::Usage;
use super::answer::lenient_json;

impl Chunk {
    /// Parses one data event. `Err` with the provider's message when it is an error object;
    /// a payload that is not a chunk as expected gives an empty chunk (relayed as it is).
    /// One parse tells text, tool calls, usage and any error (perf at 100 concurrent
    /// streams: a second parse into a `Value` just to look for `error` was a sixth of the
    /// gateway's CPU while relaying).
    pub fn parse(payload: &str) -> Result<Chunk, String> {
        // Half an emoji (a lone surrogate escape) must not cost the chunk its text.
        // `content` takes them itself (see `Text`); this is for the other strings.
        let parsed = lenient_json::<Chunk>(payload);
        match parsed {
            Ok(Chunk {
                error: Some(err), ..
            }) => Err(member_message(&err)),
            Ok(mut chunk) => {
                if chunk.usage.is_none() {
                    chunk.usage = chunk.choices.iter_mut().find_map(|c| c.usage.take());
                }
                Ok(chunk)
            }
            Err(_) => match error_in(payload) {
                Some(message) => Err(message),
                None => Ok(Chunk::default()),
            },
        }
    }

    /// The first choice, when it is choice 0 (a stream with `n` > 1 sends the others in
    /// chunks of their own, which the gateway relays and does not read).
    pub fn choice(&self) -> Option<&ChunkChoice> {
        self.choices
            .first()
            .filter(|c| c.index.as_u64().is_none_or(|i| i == 0))
    }

    /// The assistant text this chunk adds (often empty).
    #[cfg(test)]
    pub fn text(&self) -> &str {
        self.content().map_or("", |t| t)
    }

    /// The text of the first choice's delta, when it has some.
    pub fn content(&self) -> Option<&Text> {
        self.choice()
            .and_then(|c| c.delta.as_ref())
            .and_then(Delta::text)
    }

    /// It carries only the usage (`choices: []`).
    pub fn usage_only(&self) -> bool {
        self.choices.is_empty() && self.usage.is_some()
    }
}

/// Most choices of a stream told apart (OpenAI's `n` is at most 128).
const MAX_CHOICES: usize = 128;

/// Most tool calls kept from one stream for its session turn; the ones after are left out.
const MAX_TURN_CALLS: usize = 128;

/// What is kept from a stream: whether it finished, the usage, and — only when a session
/// needs them — the assistant's text and tool calls.
#[derive(Debug)]
pub struct Gathered {
    keep: bool,
    kept: usize,
    text: String,
    /// Which call each tool-call piece belongs to.
    order: CallOrder,
    /// Each call's id, name and arguments, in the order the calls started.
    tool_calls: Vec<TurnCall>,
    /// Every choice seen has its finish reason (at least one choice seen).
    finished: bool,
    /// The choices seen by index, and whether each has finished (at most
    /// [`MAX_CHOICES`]: `n` is at most 128).
    choices: Vec<(u64, bool)>,
    /// A usage-only chunk came after the finish reason: the answer is whole, `[DONE]` or
    /// not (OpenAI's usage chunk is the last before `[DONE]`, after every choice's end).
    complete: bool,
    usage: Usage,
    /// A surrogate pair's first half at the end of the text, until the next delta.
    halves: Halves,
}

impl Default for Gathered {
    /// Keeps the text and tool calls.
    fn default() -> Self {
        Gathered::keeping(true)
    }
}

impl Gathered {
    /// `keep`: whether the text and tool calls are kept (for a session turn).
    pub fn keeping(keep: bool) -> Gathered {
        Gathered {
            keep,
            kept: 0,
            text: String::new(),
            order: CallOrder::default(),
            tool_calls: Vec::new(),
            finished: false,
            choices: Vec::new(),
            complete: false,
            usage: Usage::default(),
            halves: Halves::default(),
        }
    }

    /// Takes in one chunk; `Err` when the kept text would pass [`MAX_KEPT`].
    pub fn take(&mut self, chunk: &Chunk) -> Result<(), String> {
        if let Some(u) = &chunk.usage {
            self.usage.merge(u);
        }
        if self.finished && chunk.usage_only() {
            self.complete = true;
        }
        for c in &chunk.choices {
            self.note_choice(c);
        }
        let Some(choice) = chunk.choice() else {
            return Ok(());
        };
        let Some(delta) = choice.delta.as_ref().filter(|_| self.keep) else {
            return Ok(());
        };
        let added = delta.text().map_or(0, |c| c.len())
            + delta
                .tool_calls
                .iter()
                .map(|t| {
                    t.id.as_ref().map_or(0, String::len)
                        + t.function.as_ref().map_or(0, |f| {
                            f.name.as_ref().map_or(0, String::len)
                                + f.arguments.as_ref().map_or(0, String::len)
                        })
                })
                .sum::<usize>();
        self.kept += added;
        if self.kept > MAX_KEPT {
            return Err(format!(
                "answer longer than {} MiB; stopped",
                MAX_KEPT / (1024 * 1024)
            ));
        }
        self.text.push_str(&self.halves.text(delta.text()));
        for (position, tc) in delta.tool_calls.iter().enumerate() {
            let place = self.order.place(position, tc);
            let call = place.call;
            if call >= MAX_TURN_CALLS {
                continue;
            }
            if self.tool_calls.len() <= call {
                self.tool_calls.resize(call + 1, TurnCall::default());
            }
            let slot = &mut self.tool_calls[call];
            if let Some(id) = tc.id.as_deref().filter(|_| slot.id.is_empty()) {
                slot.id.push_str(id);
            }
            if let Some(f) = &tc.function {
                // A name repeated in every piece (Fireworks) is the call's name once.
                if !place.repeats.name {
                    slot.name.push_str(f.name.as_deref().unwrap_or(""));
                }
                slot.arguments
                    .push_str(f.arguments.as_deref().unwrap_or(""));
            }
        }
        Ok(())
    }

    #[cfg(test)]
    /// The assistant's text so far (when kept).
    pub fn text(&self) -> String {
        self.whole_text()
    }

    /// The text, with U+FFFD for a surrogate pair's first half at its end that no second
    /// half followed.
    fn whole_text(&self) -> String {
        let mut text = self.text.clone();
        if self.halves.holding() {
            text.push('\u{fffd}');
        }
        text
    }

    /// Notes a choice's piece: the answer has finished when every choice seen has its
    /// finish reason — with `n` > 1 one choice's end is not the answer's. An empty
    /// `finish_reason` (`""`, as some servers write for "not yet") is none.
    fn note_choice(&mut self, c: &ChunkChoice) {
        let index = c.index.as_u64().unwrap_or(0);
        let ends = c.finish_reason.as_deref().is_some_and(|r| !r.is_empty());
        if let Some((_, done)) = self.choices.iter_mut().find(|(i, _)| *i == index) {
            *done |= ends;
        } else if self.choices.len() < MAX_CHOICES {
            self.choices.push((index, ends));
        }
        self.finished = self.choices.iter().all(|&(_, done)| done);
    }

    #[cfg(test)]
    /// Whether every choice seen has its `finish_reason`.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Whether the answer is whole: its finish reason, then its usage chunk, have come.
    /// Only `[DONE]` (or the end of the body) may follow.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// The token usage, as far as the stream reported it.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// The assistant's turn for the session: its text, and its tool calls.
    pub fn assistant(&self) -> Message {
        if self.tool_calls.is_empty() {
            return assistant_message(Value::String(self.whole_text()));
        }
        let calls = self
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()));
        assistant_with_calls(self.whole_text(), calls)
    }
}

/// One tool call of a stream, gathered for the session turn.
#[derive(Debug, Default, Clone)]
struct TurnCall {
    id: String,
    name: String,
    arguments: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Parses and takes in one chunk; returns whether it only carries usage.
    fn feed(g: &mut Gathered, payload: &str) -> bool {
        let chunk = Chunk::parse(payload).unwrap();
        g.take(&chunk).unwrap();
        chunk.usage_only()
    }

    #[test]
    fn a_surrogate_pair_split_across_two_chunks_is_one_character_in_the_turn() {
        let raw = |json: &str| format!(r#"{{"choices":[{{"delta":{{"content":"{json}"}}}}]}}"#);
        let mut g = Gathered::default();
        feed(&mut g, &raw(r"A\ud83d"));
        feed(&mut g, &raw(r"\ude00B"));
        assert_eq!(g.text(), "A\u{1F600}B");
        assert_eq!(g.assistant().content, json!("A\u{1F600}B"));
        // Not a pair: U+FFFD each, the last one too.
        let mut g = Gathered::default();
        for part in [r"A\ud83d", "B", r"\ude00C\ud83d"] {
            feed(&mut g, &raw(part));
        }
        assert_eq!(g.text(), "A\u{fffd}B\u{fffd}C\u{fffd}");
        assert_eq!(g.assistant().content, json!("A\u{fffd}B\u{fffd}C\u{fffd}"));
    }

    #[test]
    fn half_an_emoji_in_a_chunk_keeps_its_text() {
        let chunk = Chunk::parse(r#"{"choices":[{"delta":{"content":"x\ud83d"}}]}"#).unwrap();
        assert_eq!(chunk.text(), "x\u{fffd}");
    }

    #[test]
    fn moonshot_usage_in_the_last_choice_and_odd_counts_are_read() {
        let mut g = Gathered::default();
        feed(&mut g, r#"{"choices":[{"delta":{"content":"Hi"}}]}"#);
        feed(
            &mut g,
            r#"{"choices":[{"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":20,"completion_tokens":3,"cached_tokens":16}}]}"#,
        );
        let u = g.usage();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens()),
            (Some(20), Some(3), 16)
        );
        // A count of the wrong type is not reported; the rest of the chunk is still read.
        let chunk =
            Chunk::parse(r#"{"choices":[],"usage":{"prompt_tokens":"7","completion_tokens":-1}}"#)
                .unwrap();
        let u = chunk.usage.as_ref().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(7), None));
    }

    #[test]
    fn gathering_text_tool_calls_and_usage() {
        let mut g = Gathered::default();
        assert!(!feed(
            &mut g,
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#
        ));
        assert!(!feed(
            &mut g,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#
        ));
        assert!(!feed(
            &mut g,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"}}]}"#
        ));
        assert!(!feed(
            &mut g,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":"{\"x\""}}]}}]}"#
        ));
        assert!(!feed(
            &mut g,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}"#
        ));
        assert!(!g.finished());
        assert!(!feed(
            &mut g,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#
        ));
        assert!(g.finished());
        assert!(feed(
            &mut g,
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#
        ));
        assert_eq!(g.text(), "Hello");
        assert_eq!(g.assistant().content, json!("Hello"));
        assert_eq!(
            g.assistant().tool_calls,
            Some(json!([{"id": "call_1", "type": "function",
                "function": {"name": "f", "arguments": "{\"x\":1}"}}]))
        );
        assert_eq!(
            (g.usage().prompt_tokens, g.usage().completion_tokens),
            (Some(9), Some(2))
        );
        // Junk and odd indexes are ignored, not fatal.
        assert!(!feed(&mut g, "not json"));
        assert!(!feed(
            &mut g,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":100000}]}}]}"#
        ));
    }

    #[test]
    fn a_session_turn_keeps_calls_without_an_index_apart() {
        // Gemini (a call per chunk, no index), older Ollama (all calls in one chunk, no
        // index), an upstream repeating index 0 with a new id, and Fireworks (the id, type
        // and name again in every piece).
        let streams = [
            vec![
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\""}}]}}]}"#,
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"f","arguments":":1}"}}]}}]}"#,
                r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"c2","type":"function","function":{"name":"g","arguments":"{\"b\":2}"}}]}}]}"#,
                r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"c2","type":"function","function":{"name":"g","arguments":""}}]}}]}"#,
            ],
            vec![
                r#"{"choices":[{"delta":{"tool_calls":[{"id":"c1","function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}"#,
                r#"{"choices":[{"delta":{"tool_calls":[{"id":"c2","function":{"name":"g","arguments":"{\"b\":2}"}}]}}]}"#,
            ],
            vec![
                r#"{"choices":[{"delta":{"tool_calls":[{"id":"c1","function":{"name":"f","arguments":"{\"a\":1}"}},{"id":"c2","function":{"name":"g","arguments":"{\"b\":2}"}}]}}]}"#,
            ],
            vec![
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}"#,
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c2","function":{"name":"g","arguments":"{\"b\""}}]}}]}"#,
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":":2}"}}]}}]}"#,
            ],
        ];
        for chunks in streams {
            let mut g = Gathered::default();
            for chunk in &chunks {
                feed(&mut g, chunk);
            }
            assert_eq!(
                g.assistant().tool_calls,
                Some(json!([
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{\"b\":2}"}}
                ])),
                "{chunks:?}"
            );
        }
    }

    #[test]
    fn without_a_session_only_usage_and_the_end_are_kept() {
        let mut g = Gathered::keeping(false);
        assert!(!feed(
            &mut g,
            r#"{"choices":[{"delta":{"content":"Hello"},"finish_reason":"stop"}]}"#
        ));
        assert!(feed(
            &mut g,
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#
        ));
        assert_eq!(g.text(), "");
        assert!(g.finished());
        assert_eq!(g.usage().completion_tokens, Some(2));
    }

    #[test]
    fn an_answer_is_complete_once_its_usage_chunk_follows_its_finish_reason() {
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        let finish = |i: u32| {
            format!(r#"{{"choices":[{{"index":{i},"delta":{{}},"finish_reason":"stop"}}]}}"#)
        };
        // A usage chunk before the end (some providers send usage as they go) is not it.
        let mut g = Gathered::keeping(false);
        feed(&mut g, r#"{"choices":[{"delta":{"content":"a"}}]}"#);
        feed(&mut g, usage);
        assert!(!g.complete());
        feed(&mut g, &finish(0));
        assert!(
            !g.complete(),
            "the finish reason alone: the usage may follow"
        );
        feed(&mut g, usage);
        assert!(g.complete());
        // n > 1: the usage chunk comes after every choice's end.
        let mut g = Gathered::keeping(false);
        for payload in [finish(0), finish(1), usage.to_string()] {
            feed(&mut g, &payload);
        }
        assert!(g.complete());
        // n > 1 with one choice still going: a usage chunk as it goes is not the end.
        let mut g = Gathered::keeping(false);
        let piece =
            |i: u32| format!(r#"{{"choices":[{{"index":{i},"delta":{{"content":"x"}}}}]}}"#);
        for payload in [piece(0), piece(1), finish(0), usage.to_string()] {
            feed(&mut g, &payload);
        }
        assert!(!g.finished() && !g.complete(), "choice 1 has not finished");
        feed(&mut g, &finish(1));
        assert!(g.finished());
        // An empty finish reason (`""`, some servers' "not yet") is none.
        let mut g = Gathered::keeping(false);
        feed(
            &mut g,
            r#"{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":""}]}"#,
        );
        feed(&mut g, usage);
        assert!(!g.finished() && !g.complete());
        // Moonshot's usage rides in the finishing choice: not a usage chunk of its own.
        let mut g = Gathered::keeping(false);
        feed(
            &mut g,
            r#"{"choices":[{"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":1}}]}"#,
        );
        assert!(g.finished() && !g.complete());
    }

    #[test]
    fn a_session_turn_stops_growing_at_the_cap() {
        let mut g = Gathered::default();
        let big = "x".repeat(MAX_KEPT / 2 + 1);
        let chunk =
            Chunk::parse(&json!({"choices": [{"delta": {"content": big}}]}).to_string()).unwrap();
        assert!(g.take(&chunk).is_ok());
        let err = g.take(&chunk).unwrap_err();
        assert!(err.contains("MiB"), "{err}");
        // Without a session the same stream goes on.
        let mut g = Gathered::keeping(false);
        assert!(g.take(&chunk).is_ok() && g.take(&chunk).is_ok());
    }

    #[test]
    fn errors_inside_a_stream_are_seen_in_the_same_parse() {
        let error = |p: &str| Chunk::parse(p).err();
        assert_eq!(
            error(r#"{"error":{"message":"quota exceeded","type":"x"}}"#).as_deref(),
            Some("quota exceeded")
        );
        assert_eq!(
            error(r#"{"error":"overloaded"}"#).as_deref(),
            Some("overloaded")
        );
        // As before: an `error` member of any value counts, and odd shapes are still read.
        assert_eq!(error(r#"{"error":null}"#).as_deref(), Some("null"));
        assert_eq!(
            error(r#"{"choices":"junk","error":{"message":"bad"}}"#).as_deref(),
            Some("bad")
        );
        let ok = Chunk::parse(r#"{"choices":[{"delta":{"content":"x"}}]}"#).unwrap();
        assert_eq!(ok.text(), "x");
        assert!(!ok.usage_only());
    }

    fn chunk(text: &str) -> String {
        json!({"choices": [{"index": 0, "delta": {"content": text}}]}).to_string()
    }

    /// Reads `rest` after `first`, collecting what `each` saw.
    fn read(first: Event, rest: &str) -> (StreamEnd, Vec<(String, bool)>, Gathered) {
        read_bytes(first, rest.as_bytes())
    }

    /// Reads a stream to its end: `first`, then the events of `rest`.
    fn read_stream(
        first: Event,
        rest: &[u8],
        gathered: &mut Gathered,
        mut each: impl FnMut(&str, &Chunk) -> io::Result<()>,
    ) -> StreamEnd {
        let mut parser = crate::chat::sse::EventParser::new();
        parser.feed(rest);
        let mut event = Ok(Some(first));
        loop {
            if let Some(end) = take_event(event, gathered, &mut each) {
                return end;
            }
            event = match parser.next_event() {
                Ok(None) => parser.finish(),
                other => other,
            };
        }
    }

    fn read_bytes(first: Event, rest: &[u8]) -> (StreamEnd, Vec<(String, bool)>, Gathered) {
        let mut gathered = Gathered::default();
        let mut seen = Vec::new();
        let end = read_stream(first, rest, &mut gathered, |_, chunk| {
            seen.push((chunk.text().to_string(), chunk.usage_only()));
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
        // Bytes that are not UTF-8 are read as U+FFFD: the stream goes on.
        let rest =
            b"data: {\"choices\":[{\"delta\":{\"content\":\"caf\xc3\"}}]}\n\ndata: [DONE]\n\n";
        let (end, _, g) = read_bytes(Event::Data(chunk("a")), rest);
        assert!(matches!(end, StreamEnd::Done), "{end:?}");
        assert_eq!(g.text(), "acaf\u{fffd}");
    }

    #[test]
    fn a_consumer_error_stops_the_reading() {
        let rest = format!("data: {}\n\ndata: [DONE]\n\n", chunk("b"));
        let mut g = Gathered::default();
        let mut calls = 0;
        let end = read_stream(Event::Data(chunk("a")), rest.as_bytes(), &mut g, |_, _| {
            calls += 1;
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        });
        assert!(matches!(end, StreamEnd::Stopped(e) if e.kind() == io::ErrorKind::BrokenPipe));
        assert_eq!(calls, 1);
    }
}
