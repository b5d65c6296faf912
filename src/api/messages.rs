//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: the Anthropic Messages front of
//! [`super::call`], for Claude Code and the anthropic SDKs. The request is translated into an
//! OpenAI chat request (`crate::anthropic::request`), runs through the same pipeline as
//! chat completions (access, memory first, sessions, retries, breakers), and the answer —
//! complete or streamed — is translated back. Errors are in Anthropic's shape.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::call::{self, Answered, Framed, Translate};
use super::caller::Caller;
use crate::anthropic::stream::Translator;
use crate::anthropic::{REQUEST_ID, answer, error, request, request_id};
use crate::chat::answer::Usage;
use crate::chat::request::{ChatRequest, json_object};
use crate::chat::stream::Chunk;
use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{LogFields, Request, Response};
use crate::ledger::CallRecord;

/// `POST /v1/messages`.
pub(super) async fn create(
    gw: &Arc<Gateway>,
    req: &Request,
    caller: &Caller,
) -> Result<Response, Error> {
    Ok(call::recorded(
        gw,
        req,
        caller,
        crate::ledger::route::MESSAGES,
        error::response,
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
    let (body, chat) = translate(gw, &req.body)?;
    let estimate = call::prompt_estimate(gw, &chat, body.get("tools"));
    // (Read from the body once, by `translate`.)
    let thinking = chat.thinking == Some(true);
    let resp = match call::run(gw, req, caller, &chat, log, rec).await? {
        Answered::Complete(done) => {
            let message = answer::message(&done.answer, &chat.model, thinking, estimate);
            done.respond(
                "application/json",
                serde_json::to_vec(&message).unwrap_or_default(),
            )
        }
        Answered::Stream(stream) => stream.respond(
            "text/event-stream",
            Framed::new(Translator::new(&chat.model, estimate).thinking(thinking)),
        ),
    };
    // (An error gets its own, where it is rendered: `error::response`.)
    Ok(resp.with_header(REQUEST_ID, request_id()))
}

/// The Messages body, and the chat request it becomes.
fn translate(gw: &Gateway, raw: &[u8]) -> Result<(Map<String, Value>, ChatRequest), Error> {
    let body = json_object(raw, "Messages")?;
    let claude = body
        .get("model")
        .and_then(Value::as_str)
        .and_then(|name| gw.listed().get(name).map(|m| m.is_claude()))
        .unwrap_or(false);
    let mut chat =
        ChatRequest::from_object(request::to_chat(&body, claude)?, gw.settings.max_timeout)?;
    chat.thinking = Some(answer::wants_thinking(&body));
    chat.cache_marks = claude;
    chat.translated = true;
    Ok((body, chat))
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, an estimate (see
/// `chat::tokens`) of what the request would send, memory block included. `max_tokens` is
/// not needed here. The model is checked as `POST /v1/messages` checks it (404 unknown,
/// 403 not the key's), though the estimate does not depend on it.
pub(super) fn count_tokens(
    gw: &Gateway,
    req: &Request,
    caller: &Caller,
) -> Result<Response, Error> {
    let counted = json_object(&req.body, "count_tokens").and_then(|mut body| {
        body.entry("max_tokens").or_insert(json!(1));
        let chat =
            ChatRequest::from_object(request::to_chat(&body, false)?, gw.settings.max_timeout)?;
        call::check_model(gw, caller, &chat.model)?;
        Ok(call::prompt_estimate(gw, &chat, body.get("tools")))
    });
    Ok(match counted {
        Ok(n) => {
            Response::json(200, &json!({"input_tokens": n})).with_header(REQUEST_ID, request_id())
        }
        Err(e) => error::response(&e),
    })
}

/// Anthropic's events, from the upstream's chunks.
impl Translate for Translator {
    fn chunk(&mut self, chunk: &Chunk, out: &mut Vec<u8>) -> Result<(), String> {
        Translator::chunk(self, chunk, out);
        Ok(())
    }

    fn done(&mut self, usage: &Usage, out: &mut Vec<u8>) {
        Translator::done(self, usage, out);
    }

    fn failed(&mut self, e: &Error, out: &mut Vec<u8>) {
        Translator::failed(self, &error::body(e), out);
    }

    fn keepalive(&mut self, out: &mut Vec<u8>) {
        self.ping(out);
    }
}
