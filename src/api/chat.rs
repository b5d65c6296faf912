//! `POST /v1/chat/completions`: the OpenAI front of [`super::call`]. The request is any
//! OpenAI chat-completions body plus the extensions; a complete answer is the upstream's
//! body as it came; a stream is relayed event by event as it arrives, with the usage chunk
//! only when the client asked for it, ending with `data: [DONE]`, or with a final
//! `data: {"error": ...}` event when the upstream fails after the first event.

use std::io;
use std::sync::Arc;

use serde_json::Value;

use super::call::{self, Answered, StreamFront};
use super::caller::Caller;
use crate::chat::answer::Usage;
use crate::chat::request::ChatRequest;
use crate::chat::sse;
use crate::chat::stream::Chunk;
use crate::chat::tool_calls::{CallOrder, Place};
use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{LogFields, Request, Response, Sink};
use crate::ledger::CallRecord;

/// `POST /v1/chat/completions`.
pub(super) async fn completions(
    gw: &Arc<Gateway>,
    req: &Request,
    caller: &Caller,
) -> Result<Response, Error> {
    Ok(call::recorded(
        gw,
        req,
        caller,
        crate::ledger::route::CHAT,
        Response::error,
        async |rec, log| answer(gw, req, caller, log, rec).await,
    )
    .await)
}

async fn answer(
    gw: &Arc<Gateway>,
    req: &Request,
    caller: &Caller,
    log: &mut LogFields,
    rec: &mut CallRecord,
) -> Result<Response, Error> {
    let chat = ChatRequest::parse(&req.body, gw.settings.max_timeout)?;
    Ok(match call::run(gw, req, caller, &chat, log, rec).await? {
        Answered::Complete(mut done) => {
            let body = std::mem::take(&mut done.body);
            done.respond("application/json", body)
        }
        Answered::Stream(stream) => stream.respond(
            "text/event-stream",
            Relay {
                wants_usage: chat.client_wants_usage,
                calls: Vec::new(),
            },
        ),
    })
}

/// OpenAI's events relayed as they came — but for the numbers of tool-call pieces and what
/// they repeat of their call.
struct Relay {
    /// The client asked for the usage chunk itself (the gateway always asks the upstream).
    wants_usage: bool,
    /// Which call each tool-call piece belongs to, per choice (`n` > 1; the first
    /// [`MAX_CHOICES`] are told apart, the others relayed as they come).
    calls: Vec<CallOrder>,
}

/// Choices of an `n` > 1 stream whose tool calls the relay numbers.
const MAX_CHOICES: usize = 16;

impl StreamFront for Relay {
    fn chunk(&mut self, raw: &str, chunk: &Chunk, sink: &mut dyn Sink) -> io::Result<()> {
        if chunk.usage_only() && !self.wants_usage {
            return Ok(());
        }
        match self.renumbered(raw, chunk) {
            Some(fixed) => sink.send(&sse::frame(&fixed)),
            None => sink.send(&sse::frame(raw)),
        }
    }

    fn done(&mut self, _usage: &Usage, sink: &mut dyn Sink) -> io::Result<()> {
        sink.send(sse::DONE)
    }

    fn failed(&mut self, error: &Error, sink: &mut dyn Sink) -> io::Result<()> {
        sink.send(&sse::frame(&error.body().to_string()))
    }
}

impl Relay {
    /// The chunk with each tool-call piece numbered by the call it belongs to in its choice
    /// (see [`CallOrder`]), when a piece's `index` is missing or is not that number, and
    /// without the `id`, `type` and name a piece repeats of its call: OpenAI's clients (the
    /// SDKs' stream helpers, most chat front ends) put a call together by its `index`,
    /// joining the strings of its pieces, and Gemini sends no index, some providers give
    /// every call `index: 0`, and Fireworks repeats a call's id and name in every piece
    /// (`rep1rep1rep1`). `None`: the chunk goes as it came (every chunk without tool calls,
    /// every well-formed one), not parsed again.
    fn renumbered(&mut self, raw: &str, chunk: &Chunk) -> Option<String> {
        // Per choice in the chunk (its place in `choices`, its number): each piece's place.
        let mut changes: Vec<(usize, Vec<Place>)> = Vec::new();
        for (at, choice) in chunk.choices.iter().enumerate() {
            let Some(delta) = choice.delta.as_ref().filter(|d| !d.tool_calls.is_empty()) else {
                continue;
            };
            let number = usize::try_from(choice.number().unwrap_or(0)).unwrap_or(usize::MAX);
            if number >= MAX_CHOICES {
                continue;
            }
            if self.calls.len() <= number {
                self.calls.resize_with(number + 1, CallOrder::default);
            }
            let order = &mut self.calls[number];
            let places: Vec<Place> = delta
                .tool_calls
                .iter()
                .enumerate()
                .map(|(position, piece)| order.place(position, piece))
                .collect();
            let same = delta
                .tool_calls
                .iter()
                .zip(&places)
                .all(|(p, place)| p.index == Some(place.call) && !place.repeats.any());
            if !same {
                changes.push((at, places));
            }
        }
        if changes.is_empty() {
            return None;
        }
        let mut value: Value = serde_json::from_str(raw).ok()?;
        for (at, places) in changes {
            let Some(list) = value
                .pointer_mut(&format!("/choices/{at}/delta/tool_calls"))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for (piece, place) in list.iter_mut().zip(places) {
                let Some(piece) = piece.as_object_mut() else {
                    continue;
                };
                piece.insert("index".into(), place.call.into());
                let repeats = place.repeats;
                if repeats.id {
                    piece.remove("id");
                }
                if repeats.kind {
                    piece.remove("type");
                }
                if repeats.name
                    && let Some(function) = piece.get_mut("function").and_then(Value::as_object_mut)
                {
                    function.remove("name");
                }
            }
        }
        Some(value.to_string())
    }
}
