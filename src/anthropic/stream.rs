//! An OpenAI chat stream turned into Anthropic's Messages events, chunk by chunk:
//! `message_start` (with an input estimate: a 0 there broke Claude Code behind another
//! gateway) and a `ping`, then per content block `content_block_start` → deltas
//! (`text_delta`, `input_json_delta`) → `content_block_stop`, then `message_delta` (stop
//! reason and usage) and `message_stop`. Frames are `event: <type>\ndata: <json>\n\n`.
//!
//! The rules other gateways got wrong (`wire-formats-2.md`): a delta only for a block that
//! was started and not yet stopped; the text block is closed before a tool block starts;
//! each upstream tool call gets its own block; `message_delta` waits for the end of the
//! stream, because OpenAI's usage chunk comes after the `finish_reason`. Tool calls are
//! assembled by [`ToolCalls`]: a call's block starts once its name is known, and once the
//! arguments of the call before it are whole (interleaved calls come out one after another).

use serde_json::{Value, json};

use super::answer::{stop_reason, tool_id, usage};
use crate::chat::answer::Usage;
use crate::chat::halves::Halves;
use crate::chat::sse::named as event;
use crate::chat::stream::{Chunk, ToolCallDelta};
use crate::chat::tool_calls::{NewCall, Step, ToolCalls};
use crate::util::random_id;

/// The block being written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    Thinking(usize),
    Text(usize),
    Tool(usize),
}

/// The state of one translated stream.
#[derive(Debug)]
pub struct Translator {
    model: String,
    input_estimate: u64,
    started: bool,
    open: Option<Open>,
    next_index: usize,
    calls: ToolCalls,
    finish: Option<String>,
    had_tools: bool,
    /// The open tool block has had some of its JSON (not only white space).
    tool_json_begun: bool,
    /// The client enabled thinking: the provider's reasoning goes out as `thinking` blocks.
    thinking: bool,
    /// The model refused (its refusal went out as text).
    refused: bool,
    /// Pieces of reasoning left out (thinking not enabled): a `ping` every
    /// [`PING_EVERY`], so that a long silent reasoning still shows a live stream to the
    /// client and to any proxy with an idle timeout.
    unsent: usize,
    /// A surrogate pair's first half at the end of a text delta, until the next delta.
    halves: Halves,
}

/// Reasoning pieces left out between two `ping`s (tokens: a few seconds of reasoning).
const PING_EVERY: usize = 64;

impl Translator {
    /// For a stream answering `model` (the name the client asked for), whose prompt is
    /// estimated at `input_estimate` tokens.
    pub fn new(model: &str, input_estimate: u64) -> Translator {
        Translator {
            model: model.to_string(),
            input_estimate: input_estimate.max(1),
            started: false,
            open: None,
            next_index: 0,
            calls: ToolCalls::default(),
            finish: None,
            had_tools: false,
            tool_json_begun: false,
            thinking: false,
            refused: false,
            unsent: 0,
            halves: Halves::default(),
        }
    }

    /// With the provider's reasoning sent as `thinking` blocks (dropped otherwise).
    pub fn thinking(mut self, on: bool) -> Translator {
        self.thinking = on;
        self
    }

    /// `message_start` and a `ping`, once.
    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({"id": random_id("msg_"), "type": "message", "role": "assistant",
            "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 1,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}});
        event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": message}),
        );
        event(out, "ping", &json!({"type": "ping"}));
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some(open) = self.open.take() {
            let index = match open {
                Open::Thinking(i) | Open::Text(i) | Open::Tool(i) => i,
            };
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    /// A `ping` while the provider is silent (after `message_start`, which goes first when
    /// it has not gone yet), as Anthropic sends during long silences.
    pub fn ping(&mut self, out: &mut Vec<u8>) {
        if self.started {
            event(out, "ping", &json!({"type": "ping"}));
        } else {
            self.start(out);
        }
    }

    /// Takes in one upstream chunk.
    pub fn chunk(&mut self, chunk: &Chunk, out: &mut Vec<u8>) {
        self.start(out);
        let Some(choice) = chunk.choice() else { return };
        if let Some(delta) = &choice.delta {
            match delta.reasoning() {
                Some(reasoning) if self.thinking => self.reasoning(reasoning, out),
                Some(_) => {
                    self.unsent += 1;
                    if self.unsent.is_multiple_of(PING_EVERY) {
                        event(out, "ping", &json!({"type": "ping"}));
                    }
                }
                None => {}
            }
            let text = self.halves.text(delta.text());
            if !text.is_empty() {
                self.text(&text, out);
            }
            if let Some(refusal) = delta.refusal() {
                self.refused = true;
                self.text(refusal, out);
            }
            for (position, call) in delta.tool_calls.iter().enumerate() {
                self.tool(position, call, out);
            }
        }
        if let Some(reason) = &choice.finish_reason {
            self.finish = Some(reason.clone());
        }
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        if self.blank_inside_a_call(text) {
            return;
        }
        let index = match self.open {
            Some(Open::Text(i)) => i,
            _ => self.begin(Open::Text, json!({"type": "text", "text": ""}), out),
        };
        event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": text}}),
        );
    }

    /// A piece of the model's reasoning, in a `thinking` block (without a signature: see
    /// [`super::answer::message`]).
    fn reasoning(&mut self, text: &str, out: &mut Vec<u8>) {
        if self.blank_inside_a_call(text) {
            return;
        }
        let index = match self.open {
            Some(Open::Thinking(i)) => i,
            _ => self.begin(
                Open::Thinking,
                json!({"type": "thinking", "thinking": "", "signature": ""}),
                out,
            ),
        };
        event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "thinking_delta", "thinking": text}}),
        );
    }

    /// A blank piece in the middle of a tool call's arguments (see
    /// [`ToolCalls::leaves_out`]).
    fn blank_inside_a_call(&self, piece: &str) -> bool {
        matches!(self.open, Some(Open::Tool(_))) && self.calls.leaves_out(piece)
    }

    /// Closes what is open (a tool call waiting for its name goes out first) and starts a
    /// text or thinking block; returns its index.
    fn begin(&mut self, kind: fn(usize) -> Open, block: Value, out: &mut Vec<u8>) -> usize {
        self.flush_pending(out);
        self.close(out);
        self.calls.interrupt();
        let i = self.new_block();
        event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": block}),
        );
        self.open = Some(kind(i));
        i
    }

    fn new_block(&mut self) -> usize {
        let i = self.next_index;
        self.next_index += 1;
        i
    }

    /// A tool-call piece, at `position` in its chunk's `tool_calls` array.
    fn tool(&mut self, position: usize, piece: &ToolCallDelta, out: &mut Vec<u8>) {
        self.had_tools = true;
        for step in self.calls.take(position, piece) {
            match step {
                Step::Begin(call) => self.begin_tool(call, out),
                Step::Arguments(args) => {
                    if let Some(Open::Tool(index)) = self.open {
                        self.tool_json(index, args, out);
                    }
                }
            }
        }
    }

    /// Starts the block of a tool call, with the argument pieces that waited for it.
    fn begin_tool(&mut self, p: NewCall, out: &mut Vec<u8>) {
        self.close(out);
        let index = self.new_block();
        event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": tool_id(&p.id), "name": p.name, "input": {}}}),
        );
        self.open = Some(Open::Tool(index));
        self.tool_json_begun = false;
        self.tool_json(index, &p.arguments, out);
    }

    /// A piece of the open tool block's JSON. White space before the JSON begins is left
    /// out: the anthropic SDK parses what it has after every delta, and a first delta of
    /// only a blank fails there ("Unable to parse tool parameter JSON").
    fn tool_json(&mut self, index: usize, piece: &str, out: &mut Vec<u8>) {
        let piece = if self.tool_json_begun {
            piece
        } else {
            piece.trim_start()
        };
        if piece.is_empty() {
            return;
        }
        self.tool_json_begun = true;
        json_delta(out, index, piece);
    }

    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        for p in self.calls.flush() {
            self.begin_tool(p, out);
        }
    }

    /// The stream is complete: the open block closed, then `message_delta` with the stop
    /// reason and the usage the upstream reported, and `message_stop`.
    pub fn done(&mut self, reported: &Usage, out: &mut Vec<u8>) {
        self.start(out);
        if let Some(lone) = self.halves.end() {
            self.text(lone, out);
        }
        self.flush_pending(out);
        self.close(out);
        let mut u = usage(reported);
        if reported.prompt_tokens.is_none() {
            // Not reported: the estimate of message_start stands.
            if let Some(o) = u.as_object_mut() {
                o.remove("input_tokens");
            }
        }
        event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop_reason(), "stop_sequence": null},
            "usage": u}),
        );
        event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    fn stop_reason(&self) -> &'static str {
        if self.refused {
            "refusal"
        } else {
            stop_reason(self.finish.as_deref(), self.had_tools)
        }
    }

    /// The upstream failed after the stream began: an `error` event (`error` is the body
    /// from [`super::error::body`]).
    pub fn failed(&mut self, error: &Value, out: &mut Vec<u8>) {
        event(out, "error", error);
    }
}

fn json_delta(out: &mut Vec<u8>, index: usize, partial: &str) {
    event(
        out,
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": index,
        "delta": {"type": "input_json_delta", "partial_json": partial}}),
    );
}
