//! Tool calls assembled from a stream's pieces: which call each piece belongs to
//! ([`CallOrder`], for the session turn and the translators alike), and, for the
//! translators that turn an OpenAI stream into another API's events (Anthropic Messages,
//! Responses), where each call is a block or item of its own that starts with the call's id
//! and name, when to start a call and when to send its arguments ([`ToolCalls`]).
//!
//! The first piece of a call usually carries its id and name, the next ones fragments of its
//! arguments; a call is started once its name has come (its argument pieces wait until
//! then). Most providers send calls one after another; a call that starts while the open
//! one's arguments are not whole yet waits for them (interleaved calls), so each call's
//! block gets all of its arguments.

use std::collections::{BTreeMap, HashMap};
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
///
/// A piece that goes on with a call may repeat what the call already had: Fireworks sends
/// the id, `type` and name again in every piece of a call. [`CallOrder::place`] says so
/// ([`Repeats`]), for the chat relay to take them out and the session turn to skip them
/// (OpenAI's clients join a call's pieces: `rep1rep1rep1`, `get_weatherget_weather`).
#[derive(Debug, Default)]
pub struct CallOrder {
    /// The call that holds each slot.
    slots: HashMap<usize, Held>,
    /// How many calls started.
    started: usize,
}

/// The call that holds a slot, as far as the rule needs to know it. Only hashes are kept,
/// so that a stream with many calls holds a few bytes per call whatever the length of the
/// ids and names an upstream sends; two ids with the same hash would make one call, as
/// before this rule.
#[derive(Debug)]
struct Held {
    call: usize,
    /// A hash of the call's id, once one came.
    id: Option<u64>,
    /// A hash of the call's name, once one came (the first: names come whole).
    name: Option<u64>,
    /// A hash of the call's `type`, once one came.
    kind: Option<u64>,
}

/// Where a piece goes: its call, and what it repeats of that call.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Place {
    /// The call's number (see [`CallOrder`]).
    pub call: usize,
    pub repeats: Repeats,
}

/// The members of a piece equal to those its call already had from its earlier pieces
/// (never on the piece that starts a call).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Repeats {
    pub id: bool,
    pub name: bool,
    /// `type`.
    pub kind: bool,
}

impl Repeats {
    pub fn any(self) -> bool {
        self.id || self.name || self.kind
    }
}

/// A hash of a member's text, when it has some.
fn hash_of(text: Option<&str>) -> Option<u64> {
    text.filter(|t| !t.is_empty()).map(|t| {
        let mut h = DefaultHasher::new();
        t.hash(&mut h);
        h.finish()
    })
}

impl CallOrder {
    /// The number of the call `piece` belongs to; `position` is its place in its chunk's
    /// `tool_calls` array.
    #[cfg(test)]
    pub fn call_of(&mut self, position: usize, piece: &ToolCallDelta) -> usize {
        self.place(position, piece).call
    }

    /// The call `piece` belongs to, and what it repeats of it; `position` is its place in
    /// its chunk's `tool_calls` array.
    pub fn place(&mut self, position: usize, piece: &ToolCallDelta) -> Place {
        let slot = piece.index.unwrap_or(position);
        let id = hash_of(piece.id.as_deref());
        let name = hash_of(piece.function.as_ref().and_then(|f| f.name.as_deref()));
        let kind = hash_of(piece.kind.as_str());
        let goes_on = |held: &Held| match (id, held.id) {
            (Some(id), Some(held_id)) => id == held_id,
            (Some(_), None) => piece.index.is_some() || held.name.is_none(),
            (None, _) => piece.index.is_some() || name.is_none() || held.name.is_none(),
        };
        if let Some(held) = self.slots.get_mut(&slot).filter(|held| goes_on(held)) {
            let repeats = Repeats {
                id: id.is_some() && held.id == id,
                name: name.is_some() && held.name == name,
                kind: kind.is_some() && held.kind == kind,
            };
            held.id = held.id.or(id);
            held.name = held.name.or(name);
            held.kind = held.kind.or(kind);
            return Place {
                call: held.call,
                repeats,
            };
        }
        if self.started >= MAX_CALLS {
            // An upstream that makes calls without end: no memory grows for the rest; a
            // piece with an index keeps it, the others count as one more call.
            return Place {
                call: piece.index.unwrap_or(MAX_CALLS),
                repeats: Repeats::default(),
            };
        }
        let call = self.started;
        self.started += 1;
        self.slots.insert(
            slot,
            Held {
                call,
                id,
                name,
                kind,
            },
        );
        Place {
            call,
            repeats: Repeats::default(),
        }
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

/// Argument bytes held for calls that wait for the open one, at most: past that they start
/// as they are, the open call giving way (an upstream gone wrong must not grow memory).
const MAX_HELD: usize = 4 << 20;

/// The calls of one stream.
///
/// One call's block is open at a time. A call that starts while the open call's arguments
/// are not yet a whole JSON value is held, its pieces kept, until they are (some providers
/// start every call, then send each one's arguments): its block then starts with what it
/// has. So interleaved calls come out whole, one after another, and the usual stream (each
/// call's arguments whole before the next starts) goes out piece by piece as it comes.
#[derive(Debug, Default)]
pub struct ToolCalls {
    /// Which call each piece belongs to.
    order: CallOrder,
    /// The call whose block is open.
    open: Option<usize>,
    /// How far the open call's arguments are.
    open_args: JsonDepth,
    /// The last call that had its block. Calls begin in the order they started, so every
    /// call up to this one had its block, or gave way.
    begun: Option<usize>,
    /// Calls started but not begun, in order: waiting for their name, or for the open call.
    held: BTreeMap<usize, NewCall>,
    /// Their argument bytes.
    held_bytes: usize,
}

impl ToolCalls {
    /// Takes one piece, at `position` in its chunk's `tool_calls` array; returns what to do,
    /// in order.
    pub fn take<'a>(&mut self, position: usize, piece: &'a ToolCallDelta) -> Vec<Step<'a>> {
        let place = self.order.place(position, piece);
        let call = place.call;
        let f = piece.function.as_ref();
        // A name repeated in every piece (Fireworks) is the call's name once.
        let name = f
            .and_then(|f| f.name.as_deref())
            .filter(|_| !place.repeats.name)
            .unwrap_or("");
        let args = f.and_then(|f| f.arguments.as_deref()).unwrap_or("");
        if self.open == Some(call) {
            if args.is_empty() {
                return Vec::new();
            }
            self.open_args.feed(args);
            let mut steps = vec![Step::Arguments(args)];
            steps.extend(self.ready().into_iter().map(Step::Begin));
            return steps;
        }
        if self.begun.is_some_and(|last| call <= last) && !self.held.contains_key(&call) {
            log::debug!(call = call; "tool-call piece for a closed block dropped");
            return Vec::new();
        }
        let held = self.held.entry(call).or_insert_with(|| NewCall {
            call,
            ..NewCall::default()
        });
        if let Some(id) = piece.id.as_deref().filter(|id| !id.is_empty()) {
            held.id = id.to_string();
        }
        held.name.push_str(name);
        held.arguments.push_str(args);
        self.held_bytes += args.len();
        if self.held_bytes > MAX_HELD {
            return self.flush().into_iter().map(Step::Begin).collect();
        }
        self.ready().into_iter().map(Step::Begin).collect()
    }

    /// The held calls that may start now, in order: while the open call's arguments are
    /// whole (or none is open), the first held call once it has its name — or as it is, when
    /// a later one has its name (a call that never gets one must not hold the others).
    fn ready(&mut self) -> Vec<NewCall> {
        let mut out = Vec::new();
        while self.open.is_none() || self.open_args.whole() {
            let Some(first) = self.held.first_key_value().map(|(_, c)| c) else {
                break;
            };
            let nameless = first.name.is_empty();
            if nameless && !self.held.values().skip(1).any(|c| !c.name.is_empty()) {
                break;
            }
            let Some((_, c)) = self.held.pop_first() else {
                break;
            };
            out.push(self.begin(c, nameless));
        }
        out
    }

    /// Every held call, to start as it is (before something else starts, and at the end of
    /// the stream).
    pub fn flush(&mut self) -> Vec<NewCall> {
        let held = std::mem::take(&mut self.held);
        held.into_values().map(|c| self.begin(c, true)).collect()
    }

    /// Whether a piece of text or reasoning is left out: a blank one while the open call's
    /// arguments are under way and not yet whole JSON (some models send a line break between
    /// pieces) would close the call's block and cut its arguments.
    pub fn leaves_out(&self, piece: &str) -> bool {
        piece.trim().is_empty()
            && self.open.is_some()
            && self.open_args.opened
            && !self.open_args.whole()
    }

    /// Something else (text) took the open block's place.
    pub fn interrupt(&mut self) {
        self.open = None;
    }

    /// `c` has its block now. One that starts as it is counts as whole: it holds no other.
    fn begin(&mut self, c: NewCall, as_it_is: bool) -> NewCall {
        self.held_bytes = self.held_bytes.saturating_sub(c.arguments.len());
        self.begun = Some(c.call);
        self.open = Some(c.call);
        self.open_args = JsonDepth::default();
        if as_it_is {
            self.open_args.given_up = true;
        } else {
            self.open_args.feed(&c.arguments);
        }
        c
    }
}

/// Whether a call's arguments, as they come, are a whole JSON object or array yet: the
/// brackets outside strings, counted.
#[derive(Debug, Default)]
struct JsonDepth {
    depth: u32,
    opened: bool,
    in_string: bool,
    escaped: bool,
    /// Counts as whole whatever comes.
    given_up: bool,
}

impl JsonDepth {
    fn feed(&mut self, text: &str) {
        for b in text.bytes() {
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    self.depth = self.depth.saturating_add(1);
                    self.opened = true;
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
    }

    fn whole(&self) -> bool {
        self.given_up || (self.opened && self.depth == 0 && !self.in_string)
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
            ..ToolCallDelta::default()
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
        for c in t.flush() {
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
            ..ToolCallDelta::default()
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
        // Interleaved calls are told apart.
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
    fn what_a_piece_repeats_of_its_call_is_told() {
        // Fireworks: the id, type and name again in every piece of a call.
        let pieces: Vec<ToolCallDelta> = serde_json::from_value(json!([
            {"index": 0, "id": "rep1", "type": "function", "function": {"name": "get_weather", "arguments": "{"}},
            {"index": 0, "id": "rep1", "type": "function", "function": {"name": "get_weather", "arguments": "}"}},
            {"index": 0, "function": {"arguments": ""}},
            {"index": 1, "id": "rep2", "type": "function", "function": {"name": "f"}},
            {"index": 1, "type": "function", "function": {"name": "g"}},
        ]))
        .unwrap();
        let mut order = CallOrder::default();
        let places: Vec<Place> = pieces.iter().map(|p| order.place(0, p)).collect();
        let all = Repeats {
            id: true,
            name: true,
            kind: true,
        };
        assert_eq!(
            places,
            [
                Place::default(),
                Place {
                    call: 0,
                    repeats: all
                },
                Place::default(),
                Place {
                    call: 1,
                    repeats: Repeats::default()
                },
                Place {
                    call: 1,
                    repeats: Repeats {
                        kind: true,
                        ..Repeats::default()
                    }
                },
            ],
            "a name other than the call's is no repeat"
        );
        assert!(all.any() && !Repeats::default().any());
        // A call whose first piece had no name: the name that follows is no repeat.
        let mut order = CallOrder::default();
        order.place(0, &piece(0, Some("a"), None, "{"));
        let named = order.place(0, &piece(0, Some("a"), Some("f"), "}"));
        assert_eq!(
            named.repeats,
            Repeats {
                id: true,
                ..Repeats::default()
            }
        );
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
        assert_eq!(t.flush(), []);
    }

    #[test]
    fn interleaved_calls_come_out_whole_one_after_another() {
        // Every call started, then each one's arguments.
        let calls = written(&[
            json!([{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]),
            json!([{"index": 1, "id": "c2", "function": {"name": "g", "arguments": ""}}]),
            json!([{"index": 0, "function": {"arguments": "{\"a\":"}}]),
            json!([{"index": 1, "function": {"arguments": "{\"b\":"}}]),
            json!([{"index": 0, "function": {"arguments": "\"}{\\\"\"}"}}]),
            json!([{"index": 1, "function": {"arguments": "[2]}"}}]),
        ]);
        assert_eq!(
            calls,
            [
                call("c1", "f", r#"{"a":"}{\""}"#),
                call("c2", "g", r#"{"b":[2]}"#)
            ]
        );
        // Pieces of two calls in one chunk, alternating.
        let calls = written(&[
            json!([{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{"}},
                   {"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{"}}]),
            json!([{"index": 0, "function": {"arguments": "}"}},
                   {"index": 1, "function": {"arguments": "}"}}]),
        ]);
        assert_eq!(calls, [call("c1", "f", "{}"), call("c2", "g", "{}")]);
        // The usual stream goes out piece by piece: nothing is held.
        let mut t = ToolCalls::default();
        let first = piece(0, Some("a"), Some("f"), "{\"x\"");
        let steps = t.take(0, &first);
        assert!(matches!(&steps[..], [Step::Begin(c)] if c.arguments == "{\"x\""));
        assert_eq!(
            t.take(0, &piece(0, None, None, ":1")),
            [Step::Arguments(":1")]
        );
        assert_eq!(
            t.take(0, &piece(0, None, None, "}")),
            [Step::Arguments("}")]
        );
        let second = piece(1, Some("b"), Some("g"), "{");
        let steps = t.take(0, &second);
        assert!(matches!(&steps[..], [Step::Begin(c)] if c.call == 1));
        // A call whose arguments never become whole holds the next ones to the end.
        let mut t = ToolCalls::default();
        assert_eq!(t.take(0, &piece(0, Some("a"), Some("f"), "")).len(), 1);
        assert!(t.take(0, &piece(1, Some("b"), Some("g"), "{}")).is_empty());
        let rest = t.flush();
        assert_eq!((rest.len(), rest[0].arguments.as_str()), (1, "{}"));
    }

    #[test]
    fn a_held_call_whose_pieces_repeat_its_name_keeps_it_once() {
        // Interleaved, and every piece repeating its call's id and name (Fireworks).
        let calls = written(&[
            json!([{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{"}}]),
            json!([{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{"}}]),
            json!([{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "}"}}]),
            json!([{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "}"}}]),
        ]);
        assert_eq!(calls, [call("c1", "f", "{}"), call("c2", "g", "{}")]);
    }

    #[test]
    fn held_arguments_are_bounded() {
        let mut t = ToolCalls::default();
        assert_eq!(t.take(0, &piece(0, Some("a"), Some("f"), "{")).len(), 1);
        let big = "x".repeat(MAX_HELD / 2 + 1);
        assert!(t.take(0, &piece(1, Some("b"), Some("g"), &big)).is_empty());
        // Past the bound the held call starts as it is; the open one gives way.
        let more = piece(1, None, None, &big);
        let steps = t.take(0, &more);
        assert!(
            matches!(&steps[..], [Step::Begin(c)] if c.call == 1 && c.arguments.len() == 2 * big.len())
        );
        assert!(t.take(0, &piece(0, None, None, "}")).is_empty());
    }
}
