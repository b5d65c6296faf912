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
use crate::http::{Body, Hangup, LogFields, Request, Response, Sink};
use crate::ledger::{CLIENT_GONE, CallRecord, PendingCall, UpstreamError};
use crate::upstream::breaker::{Outcome, Permit};
use crate::upstream::retry::Failure;
use crate::upstream::{OpenStream, read_open_stream};

/// `POST /v1/chat/completions`. The fields gathered for the access log (model, attempts,
/// tokens) go with the answer whether it succeeded or not.
pub(super) fn completions(gw: &Gateway, req: &Request) -> Result<Response, Error> {
    let mut log: LogFields = Vec::new();
    let mut call = CallRecord::new("chat"); // ledger
    let mut resp = match answer(gw, req, &mut log, &mut call) {
        Ok(resp) => resp,
        Err(e) => Response::error(&e),
    };
    resp.log.splice(0..0, log);
    // ledger: every answer but a stream is recorded here; a stream records itself at its end.
    if !matches!(resp.body, Body::Stream(_)) {
        call.finish(resp.status, req.received, req.hangup.is_fired());
        gw.ledger.record(&call);
    }
    Ok(resp)
}

fn answer(
    gw: &Gateway,
    req: &Request,
    log: &mut LogFields,
    call: &mut CallRecord,
) -> Result<Response, Error> {
    let creq = ChatRequest::parse(&req.body)?;
    let resolved = gw.resolve(&creq.model)?;
    let model = resolved.model;
    call.model = Some(model.clone()); // ledger
    log.push(("model", model.short.clone()));
    if let Some(env) = model.provider.key_env() {
        if resolved.target.key.is_none() {
            return Err(Error::ProviderNotConfigured { env });
        }
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

    let upstream_started = Instant::now(); // ledger
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
        call.attempts = opened.attempts; // ledger
        return match opened.result {
            Ok(stream) => {
                // ledger: the stream's record goes with its body, from its first event.
                call.first_token = Some(req.received.elapsed());
                let mut pending = gw.ledger.pending(std::mem::take(call), req.received);
                pending.call.upstream_time = Some(upstream_started.elapsed());
                let wants_usage = creq.client_wants_usage;
                let hangup = req.hangup.clone();
                Ok(relay(
                    gw,
                    stream,
                    permit,
                    prepared,
                    wants_usage,
                    hangup,
                    pending,
                ))
            }
            Err(failure) => {
                call.upstream_time = Some(upstream_started.elapsed()); // ledger
                // A client that left interrupted the wait: not the provider's failure.
                let gone = req.hangup.is_fired();
                Err(fail(permit, failure, &prepared.short, gone, call))
            }
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
    call.attempts = done.attempts; // ledger
    call.upstream_time = Some(upstream_started.elapsed()); // ledger
    let (answer, parsed) = match done.result {
        Ok(done) => (done.body, done.answer),
        Err(failure) => return Err(fail(permit, failure, &prepared.short, false, call)),
    };
    permit.finish(Outcome::Success);
    log_tokens(log, parsed.prompt_tokens, parsed.completion_tokens);
    call.prompt_tokens = parsed.prompt_tokens; // ledger
    call.completion_tokens = parsed.completion_tokens; // ledger
    prepared.save_turn(&gw.sessions, answer::assistant_message(parsed.content));
    Ok(Response::full(200, "application/json", answer))
}

/// The 200 whose body relays the rest of an opened stream. `pending` is its ledger record,
/// finished when the stream ends (or, if the body never runs, when it is dropped).
fn relay(
    gw: &Gateway,
    stream: OpenStream,
    permit: Permit,
    mut prepared: Prepared,
    client_wants_usage: bool,
    hangup: Hangup,
    mut pending: PendingCall,
) -> Response {
    // The request body is not needed any more; a stream may run for minutes.
    prepared.body = Vec::new();
    let sessions = gw.sessions.clone();
    let body = Box::new(move |sink: &mut dyn Sink, log: &mut LogFields| {
        let relaying = Instant::now(); // ledger
        let mut gathered = Gathered::default();
        let end = read_open_stream(stream, &mut gathered, |payload, fed| {
            if fed.usage_only && !client_wants_usage {
                return Ok(());
            }
            sink.send(&sse::frame(payload))
        });
        // A client that left interrupts the upstream read (see `open_stream`): the stream
        // then looks broken, but the provider did nothing wrong — no breaker failure.
        let end = match end {
            StreamEnd::Failed(_) if hangup.is_fired() => StreamEnd::Stopped(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "client went away",
            )),
            end => end,
        };
        let (prompt, completion) = gathered.usage();
        log_tokens(log, prompt, completion);
        // ledger: the tokens and the time with the provider, however the stream ended.
        pending.call.prompt_tokens = prompt;
        pending.call.completion_tokens = completion;
        pending.call.upstream_time = pending.call.upstream_time.map(|t| t + relaying.elapsed());
        match end {
            StreamEnd::Done => {
                permit.finish(Outcome::Success);
                prepared.save_turn(&sessions, gathered.assistant());
                let sent = sink.send(sse::DONE);
                pending.finish(if sent.is_ok() { 200 } else { CLIENT_GONE }); // ledger
                sent
            }
            StreamEnd::Failed(message) => {
                permit.finish(Outcome::Failure);
                log.push(("error", "upstream_error".to_string()));
                let err = Error::Upstream {
                    message: format!("{}: {message}", prepared.short),
                };
                pending.call.upstream_error = Some(UpstreamError::StreamFailed); // ledger
                pending.finish(err.status()); // ledger
                sink.send(&sse::frame(&err.body().to_string()))
            }
            StreamEnd::Stopped(e) => {
                permit.finish(Outcome::Neutral);
                log.push(("error", "client_gone".to_string()));
                pending.finish(CLIENT_GONE); // ledger
                Err(e)
            }
        }
    });
    Response::stream(200, "text/event-stream", body)
        .with_header("Cache-Control", "no-cache")
        .with_header("X-Accel-Buffering", "no")
}

/// Records a failed call with the breaker (neutral when the client had left) and its kind in
/// the ledger record, and turns it into the client's error.
fn fail(
    permit: Permit,
    failure: Failure,
    short: &str,
    client_gone: bool,
    call: &mut CallRecord,
) -> Error {
    permit.finish(if client_gone {
        Outcome::Neutral
    } else {
        failure.breaker_outcome()
    });
    call.upstream_error = Some(UpstreamError::of(&failure)); // ledger
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
