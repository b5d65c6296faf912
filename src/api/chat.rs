//! `POST /v1/chat/completions`: the OpenAI front of [`super::call`]. The request is any
//! OpenAI chat-completions body plus the extensions; a complete answer is the upstream's
//! body as it came; a stream is relayed event by event as it arrives, with the usage chunk
//! only when the client asked for it, ending with `data: [DONE]`, or with a final
//! `data: {"error": ...}` event when the upstream fails after the first event.

use std::io;
use std::sync::Arc;

use super::call::{self, Answered, StreamFront};
use super::caller::Caller;
use crate::chat::answer::Usage;
use crate::chat::request::ChatRequest;
use crate::chat::sse;
use crate::chat::stream::Chunk;
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
        "chat",
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
            },
        ),
    })
}

/// OpenAI's events relayed as they came.
struct Relay {
    /// The client asked for the usage chunk itself (the gateway always asks the upstream).
    wants_usage: bool,
}

impl StreamFront for Relay {
    fn chunk(&mut self, raw: &str, chunk: &Chunk, sink: &mut dyn Sink) -> io::Result<()> {
        if chunk.usage_only() && !self.wants_usage {
            return Ok(());
        }
        sink.send(&sse::frame(raw))
    }

    fn done(&mut self, _usage: &Usage, sink: &mut dyn Sink) -> io::Result<()> {
        sink.send(sse::DONE)
    }

    fn failed(&mut self, error: &Error, sink: &mut dyn Sink) -> io::Result<()> {
        sink.send(&sse::frame(&error.body().to_string()))
    }
}
