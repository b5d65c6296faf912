//! Tool calls assembled from a stream's pieces: which call each piece belongs to
//! ([`CallOrder`], for the session turn and the translators alike), and, for the
//! translators that turn an OpenAI stream into another API's events (Anthropic Messages,
//! Responses), where each call is a block or item of its own that starts with the call's id
//! and name, when to start a call and when to send its arguments ([`ToolCalls`]).
//!
//! The first piece of a call usually carries its id and name, the next ones fragments of its
//! arguments; a call is started once its name has come (its argument pieces wait until
//! then). Providers send calls one after another: a piece for a call that already gave way
//! to another one (interleaved calls) can no longer be sent, and is dropped.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use super::stream::ToolCallDelta;

/// Calls told apart in one stream; every piece of a call past them counts as one more
/// (a model makes a few calls at once; thousands are an upstream gone wrong).
pub const MAX_CALLS: usize = 1024;

/// Which call of a stream each tool-call piece belongs to. Calls are numbered from 0 in the
/// order they started.
///
/// OpenAI says which call a piece belongs to with its `index`, but not every upstream sends
/// one: Gemini's OpenAI-compatible API and older Ollama leave it out (Gemini sends each whole
/// call in a chunk of its own, each at position 0 of the chunk's `tool_calls`; Ollama sends
/// all the calls in one chunk), and some upstreams repeat `index: 0` for every call but give
/// each a new `id`. The rule:
///
/// - A piece's slot is its `index`, or, when it has none, its position in its chunk's
///   `tool_calls` array.
/// - A piece starts a new call when no call holds its slot yet, or when it carries an `id`
///   other than the id of the call that holds the slot.
/// - A piece without an `index` also starts a new call when the call that holds its slot
///   already has its name and the piece brings a name, or an id where that call has none.
/// - Otherwise the piece goes on with the call that holds its slot (its arguments are added
///   to that call's). A new call takes the slot over from the one before it.
///
/// So a well-formed stream (an index on every piece, the id and name only on a call's first
/// piece, the arguments split over many pieces) keeps its calls as the upstream numbered
/// them, and index-less pieces without an id or a name go on with the call at their place.
#[derive(Debug, Default)]
pub struct CallOrder {
    /// The call that holds each slot.
    slots: HashMap<usize, Held>,
    /// How many calls started.
    started: usize,
}

/// The call that holds a slot, as far as the rule needs to know it.
#[derive(Debug)]
struct Held {
    call: usize,
    /// A hash of the call's id, once one came. Only a hash is kept, so that a stream with
    /// many calls holds a few bytes per call whatever the length of the ids an upstream
    /// sends; two ids with the same hash would make one call, as before this rule.
    id: Option<u64>,
    named: bool,
}

impl CallOrder {
    /// The number of the call `piece` belongs to; `position` is its place in its chunk's
    /// `tool_calls` array.
    pub fn call_of(&mut self, position: usize, piece: &ToolCallDelta) -> usize {
        let slot = piece.index.unwrap_or(position);
        let id = piece.id.as_deref().filter(|id| !id.is_empty()).map(|id| {
            let mut h = DefaultHasher::new();
            id.hash(&mut h);
            h.finish()
        });
        let named = piece
            .function
            .as_ref()
            .and_then(|f| f.name.as_deref())
            .is_some_and(|name| !name.is_empty());
        let goes_on = |held: &Held| match (id, held.id) {
            (Some(id), Some(held_id)) => id == held_id,
            (Some(_), None) => piece.index.is_some() || !held.named,
            (None, _) => piece.index.is_some() || !(named && held.named),
        };
        if let Some(held) = self.slots.get_mut(&slot).filter(|held| goes_on(held)) {
            held.id = held.id.or(id);
            held.named |= named;
            return held.call;
        }
        if self.started >= MAX_CALLS {
            // An upstream that makes calls without end: no memory grows for the rest; a
            // piece with an index keeps it, the others count as one more call.
            return piece.index.unwrap_or(MAX_CALLS);
        }
        let call = self.started;
        self.started += 1;
        self.slots.insert(slot, Held { call, id, named });
        call
    }
}

/// A call to start: close whatever is open, open the call's block, then send `arguments`
/// (what came before the name, often empty).
#[derive(Debug, Default, PartialEq)]
pub struct NewCall {
    /// The call's number in the stream (see [`CallOrder`]).
    pub call: usize,
    /// The provider's id (empty when it sent none).
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// What a translator does with a piece.
#[derive(Debug, PartialEq)]
pub enum Step<'a> {
    Begin(NewCall),
    /// More arguments for the open call.
    Arguments(&'a str),
}

/// The calls of one stream.
#[derive(Debug, Default)]
pub struct ToolCalls {
    /// Which call each piece belongs to.
    order: CallOrder,
    /// The call whose block is open.
    open: Option<usize>,
    /// The last call that had its block. Calls begin in the order they started, so every
    /// call up to this one had its block.
    begun: Option<usize>,
    /// A call waiting for its name.
    pending: Option<NewCall>,
}

impl ToolCalls {
    /// Takes one piece, at `position` in its chunk's `tool_calls` array; returns what to do,
    /// in order (a call waiting for its name goes out as it is when another one starts).
    pub fn take<'a>(&mut self, position: usize, piece: &'a ToolCallDelta) -> Vec<Step<'a>> {
        let call = self.order.call_of(position, piece);
        let f = piece.function.as_ref();
        let name = f.and_then(|f| f.name.as_deref()).unwrap_or("");
        let args = f.and_then(|f| f.arguments.as_deref()).unwrap_or("");
        if self.open == Some(call) {
            return if args.is_empty() {
                Vec::new()
            } else {
                vec![Step::Arguments(args)]
            };
        }
        if self.begun.is_some_and(|last| call <= last) {
            log::debug!(call = call; "tool-call piece for a closed block dropped");
            return Vec::new();
        }
        let mut steps = Vec::new();
        let mut p = match self.pending.take() {
            Some(p) if p.call == call => p,
            other => {
                self.pending = other;
                steps.extend(self.flush().map(Step::Begin));
                NewCall {
                    call,
                    ..NewCall::default()
                }
            }
        };
        if let Some(id) = piece.id.as_deref().filter(|id| !id.is_empty()) {
            p.id = id.to_string();
        }
        p.name.push_str(name);
        p.arguments.push_str(args);
        if p.name.is_empty() {
            self.pending = Some(p);
        } else {
            steps.push(Step::Begin(self.begun(p)));
        }
        steps
    }

    /// The call waiting for its name, to start as it is (before something else starts, and
    /// at the end of the stream).
    pub fn flush(&mut self) -> Option<NewCall> {
        let p = self.pending.take()?;
        Some(self.begun(p))
    }

    /// Something else (text) took the open block's place.
    pub fn interrupt(&mut self) {
        self.open = None;
    }

    fn begun(&mut self, p: NewCall) -> NewCall {
        self.begun = Some(p.call);
        self.open = Some(p.call);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::stream::FunctionDelta;
    use serde_json::{Value, json};

    fn piece(index: usize, id: Option<&str>, name: Option<&str>, args: &str) -> ToolCallDelta {
        ToolCallDelta {
            index: Some(index),
            id: id.map(str::to_string),
            function: Some(FunctionDelta {
                name: name.map(str::to_string),
                arguments: Some(args.to_string()),
            }),
        }
    }

    /// The calls a translator would write for these chunks' `tool_calls` arrays, as
    /// (id, name, arguments), read the way a stream's chunks are.
    fn written(chunks: &[Value]) -> Vec<(String, String, String)> {
        let mut t = ToolCalls::default();
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let add = |step: Step<'_>, calls: &mut Vec<(String, String, String)>| match step {
            Step::Begin(c) => calls.push((c.id, c.name, c.arguments)),
            Step::Arguments(a) => {
                if let Some(last) = calls.last_mut() {
                    last.2.push_str(a);
                }
            }
        };
        for chunk in chunks {
            let pieces: Vec<ToolCallDelta> = serde_json::from_value(chunk.clone()).unwrap();
            for (position, p) in pieces.iter().enumerate() {
                for step in t.take(position, p) {
                    add(step, &mut calls);
                }
            }
        }
        if let Some(c) = t.flush() {
            add(Step::Begin(c), &mut calls);
        }
        calls
    }

    fn call(id: &str, name: &str, args: &str) -> (String, String, String) {
        (id.into(), name.into(), args.into())
    }

    #[test]
    fn calls_past_the_cap_hold_no_memory_and_keep_their_index() {
        let mut order = CallOrder::default();
        for i in 0..MAX_CALLS + 500 {
            // Well-formed past the cap: each keeps the index it came with.
            let n = order.call_of(0, &piece(i, Some(&format!("c{i}")), Some("f"), "{}"));
            assert_eq!(n, i);
        }
        assert_eq!(order.slots.len(), MAX_CALLS);
        // Without an index, the rest are one more call.
        let bare = ToolCallDelta {
            index: None,
            id: Some("x".into()),
            function: None,
        };
        assert_eq!(order.call_of(0, &bare), MAX_CALLS);
    }

    #[test]
    fn a_well_formed_stream_keeps_the_upstream_calls() {
        // An index on every piece, the id and name on the first, the arguments in pieces.
        let calls = written(&[
            json!([{"index": 0, "id": "c1", "type": "function",
                "function": {"name": "f", "arguments": ""}}]),
            json!([{"index": 0, "function": {"arguments": "{\"a\""}}]),
            json!([{"index": 0, "function": {"arguments": ":1}"}}]),
            json!([{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{"}}]),
            json!([{"index": 1, "function": {"arguments": "}"}}]),
        ]);
        assert_eq!(calls, [call("c1", "f", "{\"a\":1}"), call("c2", "g", "{}")]);
        // Interleaved calls are still told apart (the late piece of the first is dropped).
        let mut order = CallOrder::default();
        let numbers: Vec<usize> = [
            piece(0, Some("c1"), Some("a"), "{"),
            piece(1, Some("c2"), Some("b"), "{"),
            piece(0, None, None, "}"),
            piece(1, None, None, "}"),
        ]
        .iter()
        .map(|p| order.call_of(0, p))
        .collect();
        assert_eq!(numbers, [0, 1, 0, 1]);
    }

    #[test]
    fn calls_without_an_index_one_per_chunk_are_told_apart_by_their_id() {
        // Gemini: each whole call in a chunk of its own, at position 0.
        let calls = written(&[
            json!([{"id": "c1", "type": "function",
                "function": {"name": "f", "arguments": "{\"a\":1}"}}]),
            json!([{"id": "c2", "type": "function",
                "function": {"name": "g", "arguments": "{\"b\":2}"}}]),
        ]);
        assert_eq!(
            calls,
            [call("c1", "f", "{\"a\":1}"), call("c2", "g", "{\"b\":2}")]
        );
        // Without ids, the second name starts the second call; pieces with neither an id
        // nor a name go on with the call at their place.
        let calls = written(&[
            json!([{"function": {"name": "f", "arguments": "{\"a\""}}]),
            json!([{"function": {"arguments": ":1}"}}]),
            json!([{"function": {"name": "g", "arguments": "{}"}}]),
        ]);
        assert_eq!(calls, [call("", "f", "{\"a\":1}"), call("", "g", "{}")]);
    }

    #[test]
    fn calls_without_an_index_in_one_chunk_are_told_apart_by_their_place() {
        // Older Ollama: all the calls in one chunk.
        let calls = written(&[json!([
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{\"b\":2}"}},
        ])]);
        assert_eq!(
            calls,
            [call("c1", "f", "{\"a\":1}"), call("c2", "g", "{\"b\":2}")]
        );
        // Two calls started in one chunk, their arguments in the next: each piece goes on
        // with the call at its place.
        let chunks: [Vec<ToolCallDelta>; 2] = [
            serde_json::from_value(json!([
                {"id": "c1", "function": {"name": "f"}},
                {"id": "c2", "function": {"name": "g"}},
            ]))
            .unwrap(),
            serde_json::from_value(json!([
                {"function": {"arguments": "{}"}},
                {"function": {"arguments": "{}"}},
            ]))
            .unwrap(),
        ];
        let mut order = CallOrder::default();
        let numbers: Vec<usize> = chunks
            .iter()
            .flat_map(|pieces| pieces.iter().enumerate())
            .map(|(position, p)| order.call_of(position, p))
            .collect();
        assert_eq!(numbers, [0, 1, 0, 1]);
    }

    #[test]
    fn a_repeated_index_with_a_new_id_is_a_new_call() {
        let calls = written(&[
            json!([{"index": 0, "id": "c1", "type": "function",
                "function": {"name": "f", "arguments": "{\"a\":1}"}}]),
            json!([{"index": 0, "id": "c2", "type": "function",
                "function": {"name": "g", "arguments": "{\"b\""}}]),
            json!([{"index": 0, "function": {"arguments": ":2}"}}]),
        ]);
        assert_eq!(
            calls,
            [call("c1", "f", "{\"a\":1}"), call("c2", "g", "{\"b\":2}")]
        );
        // The same id again (some providers repeat it on every piece) is the same call.
        let calls = written(&[
            json!([{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{"}}]),
            json!([{"index": 0, "id": "c1", "function": {"arguments": "}"}}]),
            json!([{"id": "c1", "function": {"arguments": ""}}]),
        ]);
        assert_eq!(calls, [call("c1", "f", "{}")]);
    }

    #[test]
    fn calls_start_once_named_and_late_pieces_are_dropped() {
        let mut t = ToolCalls::default();
        let first = piece(0, Some("a"), Some("f"), "{");
        assert_eq!(
            t.take(0, &first),
            [Step::Begin(NewCall {
                call: 0,
                id: "a".into(),
                name: "f".into(),
                arguments: "{".into()
            })]
        );
        let more = piece(0, None, None, "}");
        assert_eq!(t.take(0, &more), [Step::Arguments("}")]);
        // A call without its name yet waits, its pieces kept.
        let nameless = piece(1, Some("b"), None, "{\"x\"");
        assert!(t.take(0, &nameless).is_empty());
        let named = piece(1, None, Some("g"), ":1}");
        assert_eq!(
            t.take(0, &named),
            [Step::Begin(NewCall {
                call: 1,
                id: "b".into(),
                name: "g".into(),
                arguments: "{\"x\":1}".into()
            })]
        );
        // A piece for call 0, whose block gave way: dropped.
        let late = piece(0, None, None, "late");
        assert!(t.take(0, &late).is_empty());
        // Another call starting flushes one still waiting for its name.
        let waiting = piece(2, Some("c"), None, "x");
        assert!(t.take(0, &waiting).is_empty());
        let next = piece(3, Some("d"), Some("h"), "");
        let steps = t.take(0, &next);
        assert_eq!(steps.len(), 2);
        assert!(matches!(&steps[0], Step::Begin(c) if c.call == 2 && c.name.is_empty()));
        assert!(matches!(&steps[1], Step::Begin(c) if c.call == 3));
        // After text interrupted it, the open call takes no more pieces either.
        t.interrupt();
        assert!(t.take(0, &piece(3, None, None, "more")).is_empty());
        assert_eq!(t.flush(), None);
    }
}
