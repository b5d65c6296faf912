//! An OpenAI chat stream turned into the Responses API's events, chunk by chunk. Every
//! event carries `type` and a `sequence_number` counting up from 0; frames are
//! `event: <type>\ndata: <json>\n\n`, with no `[DONE]` at the end.
//!
//! Order: `response.created` and `response.in_progress` (the response `in_progress`, no
//! output yet), then per output item `response.output_item.added` → its content →
//! `response.output_item.done`, then `response.completed` (or `response.incomplete` when the
//! model stopped at its token limit or a content filter) holding the whole response, usage
//! included. A text item's content is `response.content_part.added` →
//! `response.output_text.delta`… → `response.output_text.done` →
//! `response.content_part.done`; a function call's is
//! `response.function_call_arguments.delta`… → `response.function_call_arguments.done`; a
//! reasoning item's (the provider's reasoning, sent apart) is `response.content_part.added`
//! → `response.reasoning_text.delta`… → `response.reasoning_text.done` →
//! `response.content_part.done`.
//!
//! The rules the official SDK's stream helper checks: `response.created` first; one id for
//! the response throughout; each item added once, at the next `output_index`, and done
//! before the response completes; deltas only for the item being written. Only one item
//! is open at a time: text after a tool call opens a new message item. Tool calls are
//! assembled by [`ToolCalls`]: a call's item is added once its name is known, and once the
//! arguments of the call before it are whole (interleaved calls come out one after another).
//! A failure after the first event ends the stream with `response.failed` (the response
//! with `status: "failed"`, its `error`, and the output so far).

use serde_json::{Value, json};

use super::answer::{
    Envelope, State, call_id, function_call_item, message_item, reasoning_item, refusal_item,
    status, usage,
};
use crate::chat::answer::Usage;
use crate::chat::halves::Halves;
use crate::chat::stream::{Chunk, MAX_KEPT, ToolCallDelta};
use crate::chat::tool_calls::{NewCall, Step, ToolCalls};
use crate::error::Error;
use crate::util::random_id;

/// One output item as it is written.
#[derive(Debug)]
enum Item {
    /// A reasoning item, or a message item holding a refusal: one part, streamed.
    Aside {
        kind: Aside,
        id: String,
        text: String,
        status: &'static str,
    },
    Message {
        id: String,
        text: String,
        status: &'static str,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        status: &'static str,
    },
}

impl Item {
    fn render(&self) -> Value {
        match self {
            Item::Aside {
                kind,
                id,
                text,
                status,
            } => kind.item(id, Some(text), status),
            Item::Message { id, text, status } => message_item(id, Some(text), status),
            Item::Call {
                id,
                call_id,
                name,
                arguments,
                status,
            } => function_call_item(id, call_id, name, arguments, status),
        }
    }
}

/// What an [`Item::Aside`] holds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Aside {
    /// The provider's reasoning: a `reasoning` item with a `reasoning_text` part.
    Reasoning,
    /// A refusal: a `message` item with a `refusal` part.
    Refusal,
}

impl Aside {
    fn item(self, id: &str, text: Option<&str>, status: &str) -> Value {
        match self {
            Aside::Reasoning => reasoning_item(id, text, status),
            Aside::Refusal => refusal_item(id, text, status),
        }
    }

    fn part(self, text: &str) -> Value {
        match self {
            Aside::Reasoning => json!({"type": "reasoning_text", "text": text}),
            Aside::Refusal => json!({"type": "refusal", "refusal": text}),
        }
    }

    /// Its delta event, its done event, and the done event's field for the whole text.
    fn events(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Aside::Reasoning => (
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "text",
            ),
            Aside::Refusal => ("response.refusal.delta", "response.refusal.done", "refusal"),
        }
    }
}

/// The state of one translated stream.
#[derive(Debug)]
pub struct Translator {
    envelope: Envelope,
    sequence: u64,
    started: bool,
    items: Vec<Item>,
    /// The last item is still being written.
    open: bool,
    calls: ToolCalls,
    finish: Option<String>,
    /// Bytes of text and arguments held for the final events.
    kept: usize,
    /// A surrogate pair's first half at the end of a text delta, until the next delta.
    halves: Halves,
}

/// The answer grew past [`MAX_KEPT`]: the stream is ended with `response.failed`.
#[derive(Debug, PartialEq)]
pub struct TooLong;

impl Translator {
    /// For a stream whose Response objects share `envelope`.
    pub fn new(envelope: Envelope) -> Translator {
        Translator {
            envelope,
            sequence: 0,
            started: false,
            items: Vec::new(),
            open: false,
            calls: ToolCalls::default(),
            finish: None,
            kept: 0,
            halves: Halves::default(),
        }
    }

    /// Appends one frame, numbering it.
    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        crate::chat::sse::named(out, kind, &data);
    }

    fn snapshot(&self, state: State) -> Value {
        json!({"response": self.envelope.render(state)})
    }

    /// `response.created` and `response.in_progress`, once.
    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        for kind in ["response.created", "response.in_progress"] {
            let data = self.snapshot(State {
                status: "in_progress",
                incomplete_details: Value::Null,
                error: Value::Null,
                output: Vec::new(),
                usage: Value::Null,
            });
            self.emit(out, kind, data);
        }
    }

    /// Takes in one upstream chunk. `Err` once the answer is too long to hold: the caller
    /// ends the stream with [`Translator::failed`].
    pub fn chunk(&mut self, chunk: &Chunk, out: &mut Vec<u8>) -> Result<(), TooLong> {
        self.start(out);
        let Some(choice) = chunk.choice() else {
            return Ok(());
        };
        if let Some(delta) = &choice.delta {
            let text = self.halves.text(delta.text());
            let reasoning = delta.reasoning().unwrap_or("");
            let refusal = delta.refusal().map_or(0, str::len);
            self.kept += text.len() + reasoning.len() + refusal;
            for call in &delta.tool_calls {
                let f = call.function.as_ref();
                self.kept += f.and_then(|f| f.arguments.as_ref()).map_or(0, String::len)
                    + f.and_then(|f| f.name.as_ref()).map_or(0, String::len);
            }
            if self.kept > MAX_KEPT {
                return Err(TooLong);
            }
            if !reasoning.is_empty() {
                self.aside(Aside::Reasoning, reasoning, out);
            }
            if let Some(refusal) = delta.refusal() {
                self.aside(Aside::Refusal, refusal, out);
            }
            if !text.is_empty() {
                self.text(&text, out);
            }
            for (position, call) in delta.tool_calls.iter().enumerate() {
                self.tool(position, call, out);
            }
        }
        if let Some(reason) = &choice.finish_reason {
            self.finish = Some(reason.clone());
        }
        Ok(())
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        if self.blank_inside_a_call(text) {
            return;
        }
        if !matches!(
            (self.open, self.items.last()),
            (true, Some(Item::Message { .. }))
        ) {
            self.flush_pending(out);
            self.close("completed", out);
            self.calls.interrupt();
            self.begin_message(out);
        }
        let index = self.items.len() - 1;
        let Some(Item::Message { id, text: all, .. }) = self.items.last_mut() else {
            return;
        };
        all.push_str(text);
        let data = json!({"item_id": id, "output_index": index, "content_index": 0,
            "delta": text, "logprobs": []});
        self.emit(out, "response.output_text.delta", data);
    }

    /// A blank piece in the middle of a tool call's arguments (see
    /// [`ToolCalls::leaves_out`]).
    fn blank_inside_a_call(&self, piece: &str) -> bool {
        self.open
            && matches!(self.items.last(), Some(Item::Call { .. }))
            && self.calls.leaves_out(piece)
    }

    /// A piece of the model's reasoning or refusal, in an item of its own (opened when the
    /// open item is another one).
    fn aside(&mut self, kind: Aside, piece: &str, out: &mut Vec<u8>) {
        if self.blank_inside_a_call(piece) {
            return;
        }
        let open = matches!(
            (self.open, self.items.last()),
            (true, Some(Item::Aside { kind: k, .. })) if *k == kind
        );
        if !open {
            self.flush_pending(out);
            self.close("completed", out);
            self.calls.interrupt();
            let prefix = if kind == Aside::Reasoning {
                "rs_"
            } else {
                "msg_"
            };
            let id = random_id(prefix);
            let index = self.items.len();
            let data = json!({"output_index": index, "item": kind.item(&id, None, "in_progress")});
            self.emit(out, "response.output_item.added", data);
            let data = json!({"item_id": id, "output_index": index, "content_index": 0,
                "part": kind.part("")});
            self.emit(out, "response.content_part.added", data);
            self.items.push(Item::Aside {
                kind,
                id,
                text: String::new(),
                status: "in_progress",
            });
            self.open = true;
        }
        let index = self.items.len() - 1;
        let Some(Item::Aside { id, text, .. }) = self.items.last_mut() else {
            return;
        };
        text.push_str(piece);
        let data = json!({"item_id": id, "output_index": index, "content_index": 0,
            "delta": piece});
        self.emit(out, kind.events().0, data);
    }

    /// Adds a message item and its one text part.
    fn begin_message(&mut self, out: &mut Vec<u8>) {
        let id = random_id("msg_");
        let index = self.items.len();
        let data = json!({"output_index": index, "item": message_item(&id, None, "in_progress")});
        self.emit(out, "response.output_item.added", data);
        let data = json!({"item_id": id, "output_index": index, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []}});
        self.emit(out, "response.content_part.added", data);
        self.items.push(Item::Message {
            id,
            text: String::new(),
            status: "in_progress",
        });
        self.open = true;
    }

    /// A tool-call piece, at `position` in its chunk's `tool_calls` array.
    fn tool(&mut self, position: usize, piece: &ToolCallDelta, out: &mut Vec<u8>) {
        for step in self.calls.take(position, piece) {
            match step {
                Step::Begin(call) => self.begin_call(call, out),
                Step::Arguments(args) => self.arguments(args, out),
            }
        }
    }

    /// Adds the item of a tool call, with the argument pieces that waited for it.
    fn begin_call(&mut self, p: NewCall, out: &mut Vec<u8>) {
        self.close("completed", out);
        let id = random_id("fc_");
        let call_id = call_id(&p.id);
        let item = function_call_item(&id, &call_id, &p.name, "", "in_progress");
        let data = json!({"output_index": self.items.len(), "item": item});
        self.emit(out, "response.output_item.added", data);
        self.items.push(Item::Call {
            id,
            call_id,
            name: p.name,
            arguments: String::new(),
            status: "in_progress",
        });
        self.open = true;
        self.arguments(&p.arguments, out);
    }

    /// A piece of the open call's arguments.
    fn arguments(&mut self, piece: &str, out: &mut Vec<u8>) {
        if piece.is_empty() {
            return;
        }
        let index = self.items.len() - 1;
        let Some(Item::Call { id, arguments, .. }) = self.items.last_mut() else {
            return;
        };
        arguments.push_str(piece);
        let data = json!({"item_id": id, "output_index": index, "delta": piece});
        self.emit(out, "response.function_call_arguments.delta", data);
    }

    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        for p in self.calls.flush() {
            self.begin_call(p, out);
        }
    }

    /// Finishes the open item with this status: its content's `.done` events, then
    /// `response.output_item.done` with the whole item.
    fn close(&mut self, final_status: &'static str, out: &mut Vec<u8>) {
        if !self.open {
            return;
        }
        // A call without arguments (some providers send none for a function that takes
        // none) gets "{}", as OpenAI writes it, so that the client's JSON parse of them works.
        if matches!(self.items.last(), Some(Item::Call { arguments, .. }) if arguments.trim().is_empty())
        {
            self.arguments("{}", out);
        }
        self.open = false;
        let index = self.items.len() - 1;
        let Some(item) = self.items.last_mut() else {
            return;
        };
        let done = match item {
            Item::Aside {
                kind,
                id,
                text,
                status,
            } => {
                *status = final_status;
                let part = kind.part(text);
                let (_, done, field) = kind.events();
                let mut data = json!({"item_id": id, "output_index": index, "content_index": 0});
                data[field] = json!(text);
                vec![
                    (done, data),
                    (
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                            "part": part}),
                    ),
                ]
            }
            Item::Message { id, text, status } => {
                *status = final_status;
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                vec![
                    (
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                            "text": text, "logprobs": []}),
                    ),
                    (
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                            "part": part}),
                    ),
                ]
            }
            Item::Call {
                id,
                name,
                arguments,
                status,
                ..
            } => {
                *status = final_status;
                vec![(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name,
                        "arguments": arguments}),
                )]
            }
        };
        let item = json!({"output_index": index, "item": item.render()});
        for (kind, data) in done {
            self.emit(out, kind, data);
        }
        self.emit(out, "response.output_item.done", item);
    }

    /// The stream is complete: the open item finished (an empty message when there was no
    /// output at all), then `response.completed` or `response.incomplete` with the whole
    /// response and the usage the upstream reported.
    pub fn done(&mut self, reported: &Usage, out: &mut Vec<u8>) {
        self.start(out);
        if let Some(lone) = self.halves.end() {
            self.text(lone, out);
        }
        self.flush_pending(out);
        if self.items.is_empty() {
            self.begin_message(out);
        }
        let (status, incomplete_details) = status(self.finish.as_deref());
        let item_status = if status == "completed" {
            "completed"
        } else {
            "incomplete"
        };
        self.close(item_status, out);
        let data = self.snapshot(State {
            status,
            incomplete_details,
            error: Value::Null,
            output: self.items.iter().map(Item::render).collect(),
            usage: usage(reported),
        });
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, kind, data);
    }

    /// The upstream failed after the stream began: `response.failed`, the item being
    /// written marked `incomplete`.
    pub fn failed(&mut self, error: &Error, out: &mut Vec<u8>) {
        self.start(out);
        if self.open
            && let Some(
                Item::Aside { status, .. }
                | Item::Message { status, .. }
                | Item::Call { status, .. },
            ) = self.items.last_mut()
        {
            *status = "incomplete";
        }
        let code = match error {
            Error::RateLimited { .. } => "rate_limit_exceeded",
            _ => "server_error",
        };
        let data = self.snapshot(State {
            status: "failed",
            incomplete_details: Value::Null,
            error: json!({"code": code, "message": error.to_string()}),
            output: self.items.iter().map(Item::render).collect(),
            usage: Value::Null,
        });
        self.emit(out, "response.failed", data);
    }
}
