//! `POST /v1/chat/completions`: validate, resolve the model, build the upstream body, call it
//! (retries, breaker), answer, and keep the session.
//!
//! Streams are relayed event by event as they arrive: the first event is awaited (and the
//! call retried) before the 200 goes out, so a failure before it is a normal JSON error;
//! after it, a failure becomes a final `data: {"error": ...}` event. The assistant's text is
//! gathered from the deltas and stored in the session only when the stream completes.

use std::time::Instant;

use crate::chat::answer;
use crate::chat::prepared::Prepared;
use crate::chat::request::ChatRequest;
use crate::chat::sse;
use crate::chat::stream::{Gathered, StreamEnd};
use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{LogFields, Request, Response, Sink};
use crate::upstream::breaker::{Outcome, Permit};
use crate::upstream::retry::Failure;
use crate::upstream::{OpenStream, read_open_stream};

/// `POST /v1/chat/completions`. The fields gathered for the access log (model, attempts,
/// tokens) go with the answer whether it succeeded or not.
pub(super) fn completions(gw: &Gateway, req: &Request) -> Result<Response, Error> {
    let mut log: LogFields = Vec::new();
    let mut resp = match answer(gw, req, &mut log) {
        Ok(resp) => resp,
        Err(e) => Response::error(&e),
    };
    resp.log.splice(0..0, log);
    Ok(resp)
}

fn answer(gw: &Gateway, req: &Request, log: &mut LogFields) -> Result<Response, Error> {
    let creq = ChatRequest::parse(&req.body, gw.settings.max_timeout)?;
    let resolved = gw.resolve(&creq.model)?;
    let model = resolved.model;
    log.push(("model", model.short.clone()));
    if let Some(env) = model.provider.key_env()
        && resolved.target.key.is_none()
    {
        return Err(Error::ProviderNotConfigured { env });
    }
    let memory = gw.memory();
    let prepared = Prepared::new(&creq, &model, &memory, &gw.sessions)?;
    let permit = gw
        .breakers
        .admit(&model.short)
        .map_err(|retry_after_s| Error::CircuitOpen {
            model: model.short.clone(),
            retry_after_s,
        })?;

    if creq.stream {
        let opened = gw.upstream.open_stream(
            &resolved.target,
            &prepared.body,
            creq.timeout,
            creq.timeout,
            creq.retries,
            &req.hangup,
        );
        log.push(("attempts", opened.attempts.to_string()));
        return match opened.result {
            Ok(stream) => Ok(relay(gw, stream, permit, prepared, creq.client_wants_usage)),
            Err(failure) => Err(fail(permit, failure, &prepared.short)),
        };
    }

    let deadline = Instant::now() + creq.timeout;
    let done = gw.upstream.complete(
        &resolved.target,
        &prepared.body,
        deadline,
        creq.retries,
        &req.hangup,
    );
    log.push(("attempts", done.attempts.to_string()));
    let (answer, parsed) = match done.result {
        Ok(done) => (done.body, done.answer),
        Err(failure) => return Err(fail(permit, failure, &prepared.short)),
    };
    permit.finish(Outcome::Success);
    log_tokens(log, parsed.prompt_tokens, parsed.completion_tokens);
    prepared.save_turn(&gw.sessions, answer::assistant_message(parsed.content));
    Ok(Response::full(200, "application/json", answer))
}

/// The 200 whose body relays the rest of an opened stream.
fn relay(
    gw: &Gateway,
    stream: OpenStream,
    permit: Permit,
    mut prepared: Prepared,
    client_wants_usage: bool,
) -> Response {
    // The request body is not needed any more; a stream may run for minutes.
    prepared.body = Vec::new();
    let sessions = gw.sessions.clone();
    let body = Box::new(move |sink: &mut dyn Sink, log: &mut LogFields| {
        let mut gathered = Gathered::default();
        let end = read_open_stream(stream, &mut gathered, |payload, fed| {
            if fed.usage_only && !client_wants_usage {
                return Ok(());
            }
            sink.send(&sse::frame(payload))
        });
        let (prompt, completion) = gathered.usage();
        log_tokens(log, prompt, completion);
        match end {
            StreamEnd::Done => {
                permit.finish(Outcome::Success);
                prepared.save_turn(&sessions, gathered.assistant());
                sink.send(sse::DONE)
            }
            StreamEnd::Failed(message) => {
                permit.finish(Outcome::Failure);
                log.push(("error", "upstream_error".to_string()));
                let err = Error::Upstream {
                    message: format!("{}: {message}", prepared.short),
                };
                sink.send(&sse::frame(&err.body().to_string()))
            }
            StreamEnd::Stopped(e) => {
                permit.finish(Outcome::Neutral);
                log.push(("error", "client_gone".to_string()));
                Err(e)
            }
        }
    });
    Response::stream(200, "text/event-stream", body)
        .with_header("Cache-Control", "no-cache")
        .with_header("X-Accel-Buffering", "no")
}

/// Records a failed call with the breaker and turns it into the client's error.
fn fail(permit: Permit, failure: Failure, short: &str) -> Error {
    permit.finish(failure.breaker_outcome());
    failure.into_error(short)
}

/// Adds the token usage, where the provider reported it, to the access log line.
fn log_tokens(log: &mut LogFields, prompt: Option<u64>, completion: Option<u64>) {
    if let Some(n) = prompt {
        log.push(("prompt_tokens", n.to_string()));
    }
    if let Some(n) = completion {
        log.push(("completion_tokens", n.to_string()));
    }
}
