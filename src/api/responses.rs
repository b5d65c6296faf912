//! `POST /v1/responses`: the OpenAI Responses front of [`super::call`], its stateless
//! subset, for newer OpenAI SDK code. The request is translated into a chat request
//! (`crate::responses::request`), runs through the same pipeline as chat completions
//! (access, memory first, sessions, retries, breakers), and the answer — complete or
//! streamed — is translated back into a Response object or the Responses events. Errors
//! are in OpenAI's shape, as for chat completions.

use std::sync::Arc;

use serde_json::json;

use super::call::{self, Answered, Framed, Translate};
use super::caller::Caller;
use crate::chat::answer::Usage;
use crate::chat::request::{ChatRequest, json_object};
use crate::chat::stream::Chunk;
use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{LogFields, Request, Response};
use crate::ledger::CallRecord;
use crate::responses::answer::{self, Envelope};
use crate::responses::request;
use crate::responses::stream::Translator;

/// `POST /v1/responses`.
pub(super) async fn create(
    gw: &Arc<Gateway>,
    req: &Request,
    caller: &Caller,
) -> Result<Response, Error> {
    Ok(call::recorded(
        gw,
        req,
        caller,
        crate::ledger::route::RESPONSES,
        Response::error,
        async |rec, log| respond(gw, req, caller, log, rec).await,
    )
    .await)
}

async fn respond(
    gw: &Arc<Gateway>,
    req: &Request,
    caller: &Caller,
    log: &mut LogFields,
    rec: &mut CallRecord,
) -> Result<Response, Error> {
    let body = json_object(&req.body, "Responses")?;
    let mut chat = ChatRequest::from_object(request::to_chat(&body)?, gw.settings.max_timeout)?;
    chat.translated = true;
    let envelope = Envelope::new(&chat.model, request::echo(&body));
    Ok(match call::run(gw, req, caller, &chat, log, rec).await? {
        Answered::Complete(done) => {
            let response = answer::response(&done.answer, &envelope);
            done.respond(
                "application/json",
                serde_json::to_vec(&response).unwrap_or_default(),
            )
        }
        Answered::Stream(stream) => {
            stream.respond("text/event-stream", Framed::new(Translator::new(envelope)))
        }
    })
}

/// `POST /v1/responses/input_tokens`: `{"object": "response.input_tokens", "input_tokens": N}`
/// for a body that `POST /v1/responses` would take, an estimate (see `chat::tokens`) of what
/// it would send, memory block included, as for Anthropic's `count_tokens`. The model may be
/// left out here (OpenAI's own endpoint allows that): the estimate does not depend on it.
/// One that is given is checked as `POST /v1/responses` checks it (404 unknown, 403 not
/// the key's).
pub(super) fn input_tokens(
    gw: &Gateway,
    req: &Request,
    caller: &Caller,
) -> Result<Response, Error> {
    let mut body = json_object(&req.body, "input_tokens")?;
    let named = body.contains_key("model");
    body.entry("model").or_insert(json!("-"));
    let chat = ChatRequest::from_object(request::to_chat(&body)?, gw.settings.max_timeout)?;
    if named {
        call::check_model(gw, caller, &chat.model)?;
    }
    let n = call::prompt_estimate(gw, &chat, body.get("tools"));
    Ok(Response::json(
        200,
        &json!({"object": "response.input_tokens", "input_tokens": n}),
    ))
}

/// The Responses events, from the upstream's chunks.
impl Translate for Translator {
    fn chunk(&mut self, chunk: &Chunk, out: &mut Vec<u8>) -> Result<(), String> {
        // An answer past any model's output limit: the client is told, and the reading stops.
        Translator::chunk(self, chunk, out).map_err(|_| {
            format!(
                "answer longer than {} MiB; stopped",
                crate::chat::stream::MAX_KEPT / (1024 * 1024)
            )
        })
    }

    fn done(&mut self, usage: &Usage, out: &mut Vec<u8>) {
        Translator::done(self, usage, out);
    }

    fn failed(&mut self, e: &Error, out: &mut Vec<u8>) {
        Translator::failed(self, e, out);
    }
}
