//! `POST /v1/responses`: the OpenAI Responses front of [`super::call`], its stateless
//! subset, for newer OpenAI SDK code. The request is translated into a chat request
//! (`crate::responses::request`), runs through the same pipeline as chat completions
//! (access, memory first, sessions, retries, breakers), and the answer — complete or
//! streamed — is translated back into a Response object or the Responses events. Errors
//! are in OpenAI's shape, as for chat completions.

use std::io;

use super::call::{self, Answered, StreamFront};
use super::caller::Caller;
use crate::chat::answer::Usage;
use crate::chat::request::{ChatRequest, json_object};
use crate::chat::stream::Chunk;
use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{LogFields, Request, Response, Sink};
use crate::ledger::CallRecord;
use crate::responses::answer::{self, Envelope};
use crate::responses::request;
use crate::responses::stream::Translator;

/// `POST /v1/responses`.
pub(super) fn create(gw: &Gateway, req: &Request, caller: &Caller) -> Result<Response, Error> {
    Ok(call::recorded(
        gw,
        req,
        caller,
        "responses",
        Response::error,
        |rec, log| respond(gw, req, caller, log, rec),
    ))
}

fn respond(
    gw: &Gateway,
    req: &Request,
    caller: &Caller,
    log: &mut LogFields,
    rec: &mut CallRecord,
) -> Result<Response, Error> {
    let body = json_object(&req.body, "Responses")?;
    let chat = ChatRequest::from_object(request::to_chat(&body)?)?;
    let envelope = Envelope::new(&chat.model, request::echo(&body));
    Ok(match call::run(gw, req, caller, &chat, log, rec)? {
        Answered::Complete(done) => {
            let response = answer::response(&done.answer, &envelope);
            done.respond(
                "application/json",
                serde_json::to_vec(&response).unwrap_or_default(),
            )
        }
        Answered::Stream(stream) => stream.respond(
            "text/event-stream",
            Events {
                translator: Translator::new(envelope),
                buf: Vec::new(),
            },
        ),
    })
}

/// The Responses events, from the upstream's chunks.
struct Events {
    translator: Translator,
    /// The frames of one chunk, sent in one piece.
    buf: Vec<u8>,
}

impl Events {
    fn send(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        let result = if self.buf.is_empty() {
            Ok(())
        } else {
            sink.send(&self.buf)
        };
        self.buf.clear();
        result
    }
}

impl StreamFront for Events {
    fn chunk(&mut self, _raw: &str, chunk: &Chunk, sink: &mut dyn Sink) -> io::Result<()> {
        if self.translator.chunk(chunk, &mut self.buf).is_err() {
            // An answer past any model's output limit: the client is told, and the reading
            // stops (the pipeline sees it as a stop, not as the model's failure).
            let message = format!(
                "answer longer than {} MiB; stopped",
                crate::chat::stream::MAX_KEPT / (1024 * 1024)
            );
            self.translator
                .failed(&Error::Upstream { message }, &mut self.buf);
            self.send(sink)?;
            return Err(io::Error::other("answer too long"));
        }
        self.send(sink)
    }

    fn done(&mut self, usage: &Usage, sink: &mut dyn Sink) -> io::Result<()> {
        self.translator.done(usage, &mut self.buf);
        self.send(sink)
    }

    fn failed(&mut self, e: &Error, sink: &mut dyn Sink) -> io::Result<()> {
        self.translator.failed(e, &mut self.buf);
        self.send(sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_too_long_answer_ends_with_response_failed_and_stops_the_reading() {
        let mut events = Events {
            translator: Translator::new(Envelope::new("m", Default::default())),
            buf: Vec::new(),
        };
        let mut sink: Vec<Vec<u8>> = Vec::new();
        let big = "x".repeat(crate::chat::stream::MAX_KEPT / 2 + 1);
        let chunk = Chunk::parse(
            &serde_json::json!({"choices": [{"delta": {"content": big}}]}).to_string(),
        )
        .unwrap();
        assert!(events.chunk("", &chunk, &mut sink).is_ok());
        assert!(events.chunk("", &chunk, &mut sink).is_err());
        let text = String::from_utf8_lossy(&sink.concat()).into_owned();
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        assert!(last.starts_with("event: response.failed\n"), "{last:.200}");
        assert!(last.contains("MiB"));
    }
}
