//! A stream after its first event: relayed through its front as the client takes it, then
//! the books (breaker, session, tokens, ledger).

use std::cell::RefCell;
use std::io;
use std::time::Instant;

use super::{CannotGoOn, MODEL_HEADER, StreamFront, Streaming, log_tokens, save_turn};
use crate::chat::stream::{Gathered, NO_EVENT, StreamEnd};
use crate::error::Error;
use crate::http::{LogFields, Pipe, Response};
use crate::ledger::{CLIENT_GONE, UpstreamError};
use crate::upstream::breaker::Outcome;
use crate::upstream::{Keepalive, read_open_stream};

impl Streaming {
    /// The 200 whose body relays the rest of the stream through `front`, then does the
    /// bookkeeping: the breaker told how it went, the session turn kept when the stream
    /// completed, the tokens logged.
    pub(crate) fn respond(
        self: Box<Self>,
        content_type: &str,
        front: impl StreamFront + 'static,
    ) -> Response {
        let mut this = self;
        let short = this.model.short.clone();
        let held = std::mem::take(&mut this.held);
        let body = Box::new(move |pipe: Pipe| -> crate::http::Producer {
            Box::pin(this.relay(front, pipe))
        });
        Response::piped(200, content_type, body)
            .with_header(MODEL_HEADER, short)
            .with_header("Cache-Control", "no-cache")
            .with_header("X-Accel-Buffering", "no")
            .keep_until_sent(held)
    }

    /// The rest of the stream, through `front` into the pipe, as the client takes it; then
    /// the books.
    async fn relay(
        self: Box<Self>,
        mut front: impl StreamFront,
        pipe: Pipe,
    ) -> (io::Result<()>, LogFields) {
        let Streaming {
            stream,
            permit,
            mut prepared,
            sessions,
            model,
            held: _,
            pending,
            hangup,
            keepalive,
            timeout_counts,
        } = *self;
        let mut log = LogFields::new();
        // The request body is not needed any more; a stream may run for minutes.
        prepared.body = Vec::new();
        let relaying = Instant::now();
        let mut pending = pending;
        let mut gathered = Gathered::keeping(prepared.keeps_session());
        // The events and the keep-alives go through the same front into the same pipe.
        let relay = RefCell::new((&mut front, pipe.clone()));
        let mut quiet = || {
            let (front, sink) = &mut *relay.borrow_mut();
            front.keepalive(sink)
        };
        let end = read_open_stream(
            stream,
            &mut gathered,
            &hangup,
            |raw, chunk| {
                let (front, sink) = &mut *relay.borrow_mut();
                front.chunk(raw, chunk, sink)
            },
            async || pipe.room().await,
            Some(Keepalive {
                every: keepalive,
                send: &mut quiet,
            }),
        )
        .await;
        let mut sink = pipe;
        let usage = gathered.usage();
        log_tokens(&mut log, usage);
        if let Some(p) = pending.as_mut() {
            p.call.prompt_tokens = usage.prompt_tokens;
            p.call.completion_tokens = usage.completion_tokens;
            p.call.upstream_time = p.call.upstream_time.map(|t| t + relaying.elapsed());
        }
        let (status, result) = match end {
            StreamEnd::Done => {
                permit.finish(Outcome::Success);
                save_turn(&prepared, &sessions, gathered.assistant()).await;
                let sent = front.done(usage, &mut sink);
                (if sent.is_ok() { 200 } else { CLIENT_GONE }, sent)
            }
            // Silence between two events is a timeout, counted as one before the first
            // event is (see `timeout_outcome`); any other failure counts against the model.
            StreamEnd::TimedOut | StreamEnd::Failed(_) => {
                let short = &model.short;
                let (outcome, code, error, kind) = match end {
                    StreamEnd::Failed(message) => (
                        Outcome::Failure,
                        "upstream_error",
                        Error::Upstream {
                            message: format!("{short}: {message}"),
                        },
                        UpstreamError::StreamFailed,
                    ),
                    _ => (
                        timeout_counts,
                        "upstream_timeout",
                        Error::UpstreamTimeout {
                            message: format!("{short}: {NO_EVENT}"),
                        },
                        UpstreamError::Timeout,
                    ),
                };
                permit.finish(outcome);
                log.push(("error", code.to_string()));
                if let Some(p) = pending.as_mut() {
                    p.call.upstream_error = Some(kind);
                }
                (error.status(), front.failed(&error, &mut sink))
            }
            // The answer grew past a limit: the client has its failure event, and the
            // provider did nothing wrong.
            StreamEnd::Stopped(e) if CannotGoOn::is(&e) => {
                permit.finish(Outcome::Neutral);
                log.push(("error", "answer_too_long".to_string()));
                if let Some(p) = pending.as_mut() {
                    p.call.upstream_error = Some(UpstreamError::BadAnswer);
                }
                (502, Ok(()))
            }
            // The server's shutdown grace ran out: the client gets a last error event.
            StreamEnd::Stopped(_) if hangup.stopped_by_server() => {
                permit.finish(Outcome::Neutral);
                log.push(("error", "shutting_down".to_string()));
                let error = Error::ShuttingDown;
                (error.status(), front.failed(&error, &mut sink))
            }
            StreamEnd::Stopped(e) => {
                permit.finish(Outcome::Neutral);
                log.push(("error", "client_gone".to_string()));
                (CLIENT_GONE, Err(e))
            }
        };
        if let Some(p) = pending {
            p.finish(status);
        }
        (result, log)
    }
}
