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
use crate::chat::tool_calls::CallOrder;
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
                calls: CallOrder::default(),
            },
        ),
    })
}

/// OpenAI's events relayed as they came — but for the numbers of tool-call pieces and what
/// they repeat of their call.
struct Relay {
    /// The client asked for the usage chunk itself (the gateway always asks the upstream).
    wants_usage: bool,
    /// Which call each tool-call piece belongs to.
    calls: CallOrder,
}

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
    /// The chunk with each tool-call piece of its first choice numbered by the call it
    /// belongs to (see [`CallOrder`]), when a piece's `index` is missing or is not that
    /// number, and without the `id`, `type` and name a piece repeats of its call: OpenAI's
    /// clients (the SDKs' stream helpers, most chat front ends) put a call together by its
    /// `index`, joining the strings of its pieces, and Gemini sends no index, some
    /// providers give every call `index: 0`, and Fireworks repeats a call's id and name in
    /// every piece (`rep1rep1rep1`). `None`: the chunk goes as it came (every chunk without
    /// tool calls, every well-formed one), not parsed again.
    fn renumbered(&mut self, raw: &str, chunk: &Chunk) -> Option<String> {
        let pieces = &chunk.choice()?.delta.as_ref()?.tool_calls;
        let mut places = Vec::with_capacity(pieces.len());
        for (position, piece) in pieces.iter().enumerate() {
            places.push(self.calls.place(position, piece));
        }
        let same = pieces
            .iter()
            .zip(&places)
            .all(|(p, place)| p.index == Some(place.call) && !place.repeats.any());
        if same {
            return None;
        }
        let mut value: Value = serde_json::from_str(raw).ok()?;
        let list = value
            .pointer_mut("/choices/0/delta/tool_calls")?
            .as_array_mut()?;
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
        Some(value.to_string())
    }
}
