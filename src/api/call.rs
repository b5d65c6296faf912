//! One chat call, whichever API it came in by (OpenAI chat completions, Anthropic messages):
//! the model resolved and checked, the body prepared (memory, session history), the breaker
//! asked, the upstream called with retries, and the bookkeeping done once the answer is in —
//! the breaker told, the session kept, the tokens logged.
//!
//! The API fronts translate their request into a [`ChatRequest`] and the answer back: a
//! complete answer is handed over as [`Completed`]; a stream is relayed through the front's
//! [`StreamFront`], which turns each upstream chunk into the events its clients expect.
//!
//! A client that goes away is never held against the model: an attempt cut short by the
//! client's hang-up leaves the breaker as it was.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use crate::chat::answer::{Answer, Usage, assistant_message};
use crate::chat::prepared::Prepared;
use crate::chat::request::ChatRequest;
use crate::chat::stream::{Chunk, Gathered, StreamEnd};
use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{Hangup, LogFields, Request, Response, Sink};
use crate::state::catalog::Model;
use crate::state::session::SessionStore;
use crate::upstream::breaker::{Outcome, Permit};
use crate::upstream::retry::Failure;
use crate::upstream::{OpenStream, read_open_stream};

/// The response header naming the model that answered (its short code).
pub(crate) const MODEL_HEADER: &str = "x-sigorest-model";

/// What a call gave (boxed: both are a few hundred bytes, moved around by value).
pub(crate) enum Answered {
    Complete(Box<Completed>),
    Stream(Box<Streaming>),
}

/// A complete answer.
pub(crate) struct Completed {
    /// The upstream's body as received.
    pub body: Vec<u8>,
    /// What was read of it.
    pub answer: Answer,
    /// The model that answered.
    pub model: Model,
}

/// A stream whose first event has arrived, waiting to be relayed.
pub(crate) struct Streaming {
    stream: OpenStream,
    permit: Permit,
    prepared: Prepared,
    sessions: Arc<SessionStore>,
    /// The model that answers.
    pub model: Model,
}

/// How an API front turns an upstream stream into its own events.
pub(crate) trait StreamFront: Send {
    /// One upstream chunk: `raw` as received, `chunk` its parse.
    fn chunk(&mut self, raw: &str, chunk: &Chunk, sink: &mut dyn Sink) -> io::Result<()>;
    /// The stream is complete; `usage` is what the upstream reported.
    fn done(&mut self, usage: &Usage, sink: &mut dyn Sink) -> io::Result<()>;
    /// The upstream failed after the first event: the front's final error event.
    fn failed(&mut self, error: &Error, sink: &mut dyn Sink) -> io::Result<()>;
}

/// Runs one call up to its answer (for a stream: up to its first event).
pub(crate) fn run(
    gw: &Gateway,
    req: &Request,
    chat: &ChatRequest,
    log: &mut LogFields,
) -> Result<Answered, Error> {
    let resolved = gw.resolve(&chat.model)?;
    let model = resolved.model;
    log.push(("model", model.short.clone()));
    if let Some(env) = model.provider.key_env() {
        if resolved.target.key.is_none() {
            return Err(Error::ProviderNotConfigured { env });
        }
    }
    let memory = gw.memory();
    let prepared = Prepared::new(chat, &model, &memory, &gw.sessions)?;
    let permit = gw
        .breakers
        .admit(&model.short)
        .map_err(|retry_after_s| Error::CircuitOpen {
            model: model.short.clone(),
            retry_after_s,
        })?;

    if chat.stream {
        let opened = gw.upstream.open_stream(
            &resolved.target,
            &prepared.body,
            chat.timeout,
            chat.timeout,
            chat.retries,
            &req.hangup,
        );
        log.push(("attempts", opened.attempts.to_string()));
        return match opened.result {
            Ok(stream) => Ok(Answered::Stream(Box::new(Streaming {
                stream,
                permit,
                prepared,
                sessions: gw.sessions.clone(),
                model,
            }))),
            Err(f) => Err(fail(permit, f, &model.short, &req.hangup)),
        };
    }

    let deadline = Instant::now() + chat.timeout;
    let done = gw.upstream.complete(
        &resolved.target,
        &prepared.body,
        deadline,
        chat.retries,
        &req.hangup,
    );
    log.push(("attempts", done.attempts.to_string()));
    let done = match done.result {
        Ok(done) => done,
        Err(f) => return Err(fail(permit, f, &model.short, &req.hangup)),
    };
    permit.finish(Outcome::Success);
    log_tokens(log, &done.answer.usage);
    prepared.save_turn(&gw.sessions, assistant_message(done.answer.content.clone()));
    Ok(Answered::Complete(Box::new(Completed {
        body: done.body,
        answer: done.answer,
        model,
    })))
}

impl Completed {
    /// A 200 with this body, naming the model that answered in [`MODEL_HEADER`].
    pub(crate) fn respond(&self, content_type: &str, body: Vec<u8>) -> Response {
        Response::full(200, content_type, body).with_header(MODEL_HEADER, self.model.short.clone())
    }
}

impl Streaming {
    /// The 200 whose body relays the rest of the stream through `front`, then does the
    /// bookkeeping: the breaker told how it went, the session turn kept when the stream
    /// completed, the tokens logged.
    pub(crate) fn respond(
        self: Box<Self>,
        content_type: &str,
        mut front: impl StreamFront + 'static,
    ) -> Response {
        let Streaming {
            stream,
            permit,
            mut prepared,
            sessions,
            model,
        } = *self;
        let short = model.short.clone();
        // The request body is not needed any more; a stream may run for minutes.
        prepared.body = Vec::new();
        let body = Box::new(move |sink: &mut dyn Sink, log: &mut LogFields| {
            let mut gathered = Gathered::keeping(prepared.keeps_session());
            let end = read_open_stream(stream, &mut gathered, |raw, chunk| {
                front.chunk(raw, chunk, sink)
            });
            log_tokens(log, gathered.usage());
            match end {
                StreamEnd::Done => {
                    permit.finish(Outcome::Success);
                    prepared.save_turn(&sessions, gathered.assistant());
                    front.done(gathered.usage(), sink)
                }
                StreamEnd::Failed(message) => {
                    permit.finish(Outcome::Failure);
                    log.push(("error", "upstream_error".to_string()));
                    let error = Error::Upstream {
                        message: format!("{}: {message}", model.short),
                    };
                    front.failed(&error, sink)
                }
                StreamEnd::Stopped(e) => {
                    permit.finish(Outcome::Neutral);
                    log.push(("error", "client_gone".to_string()));
                    Err(e)
                }
            }
        });
        Response::stream(200, content_type, body)
            .with_header(MODEL_HEADER, short)
            .with_header("Cache-Control", "no-cache")
            .with_header("X-Accel-Buffering", "no")
    }
}

/// Records a failed call with the breaker and turns it into the client's error. A call
/// that failed because its client left says nothing about the model.
fn fail(permit: Permit, failure: Failure, short: &str, hangup: &Hangup) -> Error {
    let outcome = if hangup.is_fired() {
        Outcome::Neutral
    } else {
        failure.breaker_outcome()
    };
    permit.finish(outcome);
    failure.into_error(short)
}

/// Adds the token usage, where the provider reported it, to the access log line.
fn log_tokens(log: &mut LogFields, usage: &Usage) {
    if let Some(n) = usage.prompt_tokens {
        log.push(("prompt_tokens", n.to_string()));
    }
    if let Some(n) = usage.completion_tokens {
        log.push(("completion_tokens", n.to_string()));
    }
}
