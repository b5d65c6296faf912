//! `POST /v1/chat/completions`: validate, resolve the model, build the upstream body, call it
//! (retries, breaker), answer, and keep the session.
//!
//! Streams are relayed event by event as they arrive: the first event is awaited (and the
//! call retried) before the 200 goes out, so a failure before it is a normal JSON error;
//! after it, a failure becomes a final `data: {"error": ...}` event. The assistant's text is
//! gathered from the deltas and stored in the session only when the stream completes.

use std::time::Instant;

use crate::breaker::{Outcome, Permit};
use crate::chat::{self, ChatRequest};
use crate::completion::{self, Gathered, Prepared, StreamEnd};
use crate::error::Error;
use crate::gateway::App;
use crate::http::{LogFields, Request, Response, Sink};
use crate::retry::Failure;
use crate::sse;
use crate::upstream::OpenStream;

impl App {
    pub(crate) fn chat(&self, req: &Request) -> Response {
        let mut log: LogFields = Vec::new();
        match self.chat_inner(req, &mut log) {
            Ok(mut resp) => {
                resp.log.splice(0..0, log);
                resp
            }
            Err(e) => {
                let mut resp = e.to_response();
                resp.log.splice(0..0, log);
                resp
            }
        }
    }

    fn chat_inner(&self, req: &Request, log: &mut LogFields) -> Result<Response, Error> {
        let creq = ChatRequest::parse(&req.body)?;
        let resolved = self.resolve(&creq.model)?;
        let model = resolved.model;
        log.push(("model", model.short.clone()));
        if let Some(env) = model.provider.key_env() {
            if resolved.target.key.is_none() {
                return Err(Error::ProviderNotConfigured { env });
            }
        }
        let memory = self.memory();
        let prepared = Prepared::new(&creq, &model, &memory, &self.sessions)?;
        let permit =
            self.breakers
                .admit(&model.short)
                .map_err(|retry_after_s| Error::CircuitOpen {
                    model: model.short.clone(),
                    retry_after_s,
                })?;

        if creq.stream {
            let opened = self.upstream.open_stream(
                &resolved.target,
                &prepared.body,
                creq.timeout,
                creq.timeout,
                creq.retries,
                &req.hangup,
            );
            log.push(("attempts", opened.attempts.to_string()));
            return match opened.result {
                Ok(stream) => Ok(self.relay(stream, permit, prepared, creq.client_wants_usage)),
                Err(failure) => Err(fail(permit, failure, &prepared.short)),
            };
        }

        let deadline = Instant::now() + creq.timeout;
        let done = self.upstream.complete(
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
        prepared.save_turn(&self.sessions, chat::assistant_message(parsed.content));
        Ok(Response::full(200, "application/json", answer))
    }

    fn relay(
        &self,
        stream: OpenStream,
        permit: Permit,
        mut prepared: Prepared,
        client_wants_usage: bool,
    ) -> Response {
        // The request body is not needed any more; a stream may run for minutes.
        prepared.body = Vec::new();
        let sessions = self.sessions.clone();
        let body = Box::new(move |sink: &mut dyn Sink, log: &mut LogFields| {
            let mut gathered = Gathered::default();
            let end = completion::read_open_stream(stream, &mut gathered, |payload, fed| {
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
