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
//!
//! Here: the call up to its answer (or a stream's first event). In `plan`: the models it
//! tries and when the next one may answer; in `relay`: a stream after its first event; in
//! `front`: the fronts' side of a stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::caller::Caller;
use crate::chat::answer::{Answer, Usage};
use crate::chat::prepared::Prepared;
use crate::chat::request::{ChatRequest, default_timeout};
use crate::chat::tokens;
use crate::error::Error;
use crate::gateway::{Gateway, Resolved};
use crate::http::{Body, Hangup, LogFields, Request, Response};
use crate::ledger::{CallRecord, PendingCall, UpstreamError};
use crate::rt::blocking;
use crate::state::catalog::Model;
use crate::state::session::{Message, SessionStore};
use crate::upstream::OpenStream;
use crate::upstream::breaker::{Outcome, Permit};
use crate::upstream::llama::slots::SlotGuard;
use crate::upstream::retry::Failure;

mod front;
mod plan;
mod relay;

pub(crate) use front::{CannotGoOn, Framed, StreamFront, Translate};
pub(in crate::api) use plan::check_model;
use plan::{candidates, falls_back, skipped, usable};

/// The response header naming the model that answered (its short code).
pub(crate) const MODEL_HEADER: &str = "x-sigorest-model";

/// The prompt's tokens, estimated (see [`tokens`]): the memory block, the messages and the
/// tools, in the client's shape (the session history, read later, is not counted).
pub(super) fn prompt_estimate(gw: &Gateway, chat: &ChatRequest, tools: Option<&Value>) -> u64 {
    let memory = gw.memory();
    let system =
        (!memory.content.is_empty()).then(|| json!({"role": "system", "content": memory.content}));
    tokens::estimate(chat.messages().iter().chain(&system), tools)
}

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
    pub model: Arc<Model>,
}

/// A stream whose first event has arrived, waiting to be relayed.
pub(crate) struct Streaming {
    stream: OpenStream,
    permit: Permit,
    prepared: Prepared,
    sessions: Arc<SessionStore>,
    /// The model that answers.
    pub model: Arc<Model>,
    /// What must live until the stream ends (a local model's slot, a key's place).
    pub held: Vec<Box<dyn Send>>,
    /// The stream's ledger record, finished when it ends.
    pending: Option<PendingCall>,
    /// The client's hang-up, which interrupts the upstream read: a stream cut that way is
    /// the client's doing, not the provider's.
    hangup: Hangup,
    /// Silence after which the client gets a keep-alive (`-stream-keepalive`).
    keepalive: Duration,
    /// How running out of the request's `timeout`, which bounds each gap between events,
    /// counts for the breaker (see [`timeout_outcome`]).
    timeout_counts: Outcome,
}

/// Runs one call up to its answer (for a stream: up to its first event): the model asked
/// for, then — when it cannot answer (its breaker open, its provider failing after the
/// retries, its context too small) — each fallback in turn, all within the request's one
/// `timeout`. The session is the one of the model asked for, whichever model answers.
pub(crate) async fn run(
    gw: &Arc<Gateway>,
    req: &Request,
    caller: &Caller,
    chat: &ChatRequest,
    log: &mut LogFields,
    rec: &mut CallRecord,
) -> Result<Answered, Error> {
    let session_model = gw.short_code(&chat.model);
    let candidates = candidates(gw, caller, chat, &session_model)?;
    // Each client key has sessions of its own: no key reads or adds to another's.
    let session_owner = caller.key_name().map(str::to_string);
    let history = history(gw, chat, session_owner.clone(), &session_model).await?;
    let plan = Plan {
        deadline: Instant::now() + chat.timeout,
        history,
        session_model,
        session_owner,
    };
    let mut attempts = 0;
    // For the access log: the models called (a request sent to their provider), in order,
    // and those passed over without a call (not offered, not this key's, breaker open, no
    // provider key, context too small, no local slot in time, no time left).
    let mut tried: Vec<String> = Vec::new();
    let mut passed_over: Vec<String> = Vec::new();
    let mut outcome: Option<(Result<Answered, Error>, &str)> = None;
    // When no model answers, the failure that is the answer: the last of a model that was
    // called, or, when none was, that of the model asked for — never one of a fallback
    // that was merely skipped (not offered, not this key's) or not called while another
    // was. The answer, the access log and the books all name its model.
    let mut kept: Option<Kept<'_>> = None;
    for (i, name) in candidates.iter().enumerate() {
        if i > 0 && Instant::now() >= plan.deadline {
            // The models before used up the request's time (one hung until it): this one
            // is not called, and nothing of it is counted — not its breaker, not its
            // provider's errors, not the books. The answer stays the failure before.
            passed_over.push(gw.short_code(name));
            continue;
        }
        let more = i + 1 < candidates.len();
        let (result, t) = attempt(gw, req, caller, chat, name, more, &plan).await;
        attempts += t.attempts;
        let short = t
            .model
            .as_ref()
            .map_or_else(|| name.clone(), |m| m.short.clone());
        if t.attempts > 0 {
            tried.push(short);
        } else {
            passed_over.push(short);
        }
        rec.upstream_time = match (rec.upstream_time, t.took) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        let failure = match result {
            Err(e) if i > 0 && skipped(&e) => None,
            Err(e) if !req.hangup.is_fired() && falls_back(&e, i) => Some(Kept {
                error: e,
                name,
                tried: t,
            }),
            other => {
                // An answer, or an error that is the answer (the request is wrong, the
                // client left): the books are this model's.
                if let Some(k) = kept.take() {
                    k.count_apart(gw);
                }
                outcome = Some((other, name));
                rec.model = t.model;
                rec.upstream_error = t.error;
                rec.attempts = t.attempts;
                break;
            }
        };
        if let Some(f) = failure {
            if more && Instant::now() < plan.deadline {
                log::info!(model = name.as_str(), error = f.error.code(); "model cannot answer; trying the next one");
            }
            // A failure of a model that was called replaces the one kept; one of a model
            // that was not (its breaker open, no key) does not replace the first.
            let replaces = kept.is_none() || f.tried.attempts > 0;
            let (keep, apart) = if replaces {
                (Some(f), kept.take())
            } else {
                (kept.take(), Some(f))
            };
            kept = keep;
            if let Some(a) = apart {
                a.count_apart(gw);
            }
        }
    }
    if outcome.is_none()
        && let Some(k) = kept
    {
        rec.model = k.tried.model;
        rec.upstream_error = k.tried.error;
        rec.attempts = k.tried.attempts;
        outcome = Some((Err(k.error), k.name));
    }
    let (mut outcome, named) = outcome.unwrap_or((Err(Error::invalid("no model to try")), ""));
    let tally = Tally {
        named,
        tried: &tried,
        skipped: &passed_over,
        attempts,
    };
    account(gw, req, &mut outcome, tally, log, rec);
    outcome
}

/// The models a call went through, for its access-log line: the one whose answer (or
/// failure) it is, those called in order, those passed over without a call, and the
/// attempts at their providers.
struct Tally<'a> {
    named: &'a str,
    tried: &'a [String],
    skipped: &'a [String],
    attempts: u32,
}

/// A model's failure that may end up the call's answer (see [`run`]).
struct Kept<'a> {
    error: Error,
    name: &'a str,
    tried: Tried,
}

impl Kept<'_> {
    /// Counts the provider's failures and retries of a model whose failure is not the
    /// answer (the answer's model is counted with the call's record).
    fn count_apart(self, gw: &Gateway) {
        let provider = self.tried.model.as_ref().map_or("", |m| m.provider.name());
        gw.ledger
            .count_attempts(provider, self.tried.error, self.tried.attempts);
    }
}

/// The call's access-log fields and ledger record, once its outcome is known; a stream's
/// record goes into the stream, to be finished when it ends.
fn account(
    gw: &Gateway,
    req: &Request,
    outcome: &mut Result<Answered, Error>,
    Tally {
        named,
        tried,
        skipped,
        attempts,
    }: Tally<'_>,
    log: &mut LogFields,
    rec: &mut CallRecord,
) {
    // The fields are for the access log only: none are made when it is off (`-q`).
    if log::log_enabled!(log::Level::Info) {
        let model = outcome.as_ref().map_or_else(
            |_| match &rec.model {
                Some(m) => m.short.clone(),
                None => named.to_string(),
            },
            |a| a.model().short.clone(),
        );
        // `tried` only when it says more than `model`; `skipped` without `model`, whose
        // own `attempts=0` says it was not called.
        let just_model = matches!(tried, [only] if *only == model);
        let tried = (!tried.is_empty() && !just_model).then(|| tried.join("|"));
        let skipped: Vec<&str> = skipped
            .iter()
            .map(String::as_str)
            .filter(|s| *s != model)
            .collect();
        log.push(("model", model));
        if let Some(tried) = tried {
            log.push(("tried", tried));
        }
        if !skipped.is_empty() {
            log.push(("skipped", skipped.join("|")));
        }
        log.push(("attempts", attempts.to_string()));
    }
    match outcome {
        Ok(Answered::Complete(done)) => {
            log_tokens(log, &done.answer.usage);
            rec.prompt_tokens = done.answer.usage.prompt_tokens;
            rec.completion_tokens = done.answer.usage.completion_tokens;
        }
        Ok(Answered::Stream(stream)) => {
            // The stream's record travels with its body, from its first event.
            rec.first_token = Some(req.received.elapsed());
            stream.pending = Some(gw.ledger.pending(std::mem::take(rec), req.received));
            stream.hangup = req.hangup.clone();
        }
        Err(_) => {}
    }
}

/// Runs an endpoint's work with its ledger record (the route and the caller's key set) and
/// the access-log fields it gathers, which go with its answer whether it worked or not.
/// A complete answer is counted here; a stream counts itself when it ends.
pub(crate) async fn recorded(
    gw: &Gateway,
    req: &Request,
    caller: &Caller,
    route: &'static str,
    render: fn(&Error) -> Response,
    work: impl AsyncFnOnce(&mut CallRecord, &mut LogFields) -> Result<Response, Error>,
) -> Response {
    let mut log: LogFields = Vec::new();
    let mut rec = CallRecord::new(route);
    rec.key = caller.key_name().map(str::to_string);
    let mut resp = work(&mut rec, &mut log)
        .await
        .unwrap_or_else(|e| render(&e));
    resp.log.splice(0..0, log);
    // A stream (piped) took its record along, to count itself when it ends.
    if matches!(resp.body, Body::Full(_)) {
        rec.finish(resp.status, req.received, req.hangup.is_fired());
        gw.ledger.record(&rec);
    }
    resp
}

/// What one candidate's turn cost, for the books.
#[derive(Default)]
pub(super) struct Tried {
    /// Attempts made at the provider.
    attempts: u32,
    /// The model, once resolved.
    model: Option<Arc<Model>>,
    /// Time with the provider.
    took: Option<Duration>,
    /// How the provider failed, when it did (not when the client left).
    pub(super) error: Option<UpstreamError>,
}

/// What every candidate of one call shares.
struct Plan {
    /// The request's `timeout`, over all candidates.
    deadline: Instant,
    history: Vec<Message>,
    /// The model whose session the turn goes to.
    session_model: String,
    /// The client key whose session it is.
    session_owner: Option<String>,
}

/// One model's turn: resolved, checked, its breaker asked, called. Returns the attempts
/// made at the provider.
async fn attempt(
    gw: &Arc<Gateway>,
    req: &Request,
    caller: &Caller,
    chat: &ChatRequest,
    name: &str,
    more: bool,
    plan: &Plan,
) -> (Result<Answered, Error>, Tried) {
    let resolved = match resolve(gw, name).await {
        Ok(r) => r,
        Err(e) => return (Err(e), Tried::default()),
    };
    let mut tried = Tried {
        model: Some(resolved.model.clone()),
        ..Tried::default()
    };
    let (prepared, permit) = match ready(gw, caller, chat, &resolved, more, plan) {
        Ok(r) => r,
        Err(e) => return (Err(e), tried),
    };
    // A local model's slot: held for the whole answer (a stream's until it ends).
    let slot = match gw.local_slot(&resolved.model, &req.hangup).await {
        Ok(slot) => slot,
        Err(e) => return (Err(e), tried),
    };
    let call = Upcall {
        gw,
        req,
        chat,
        resolved,
        prepared,
        permit,
        started: Instant::now(),
    };
    let result = if chat.stream {
        // Boxed: a stream's future is large and lives long; inline, it would grow every
        // completion's future too.
        Box::pin(call.stream(plan, slot, &mut tried)).await
    } else {
        call.complete(plan, &mut tried).await
    };
    (result, tried)
}

/// One candidate's upstream call, everything before it done.
struct Upcall<'a> {
    gw: &'a Arc<Gateway>,
    req: &'a Request,
    chat: &'a ChatRequest,
    resolved: Resolved,
    prepared: Prepared,
    permit: Permit,
    started: Instant,
}

impl Upcall<'_> {
    /// Opens the stream (retried up to its first event); its slot, when it has one, goes
    /// with it.
    async fn stream(
        self,
        plan: &Plan,
        slot: Option<SlotGuard>,
        tried: &mut Tried,
    ) -> Result<Answered, Error> {
        let Upcall {
            gw,
            req,
            chat,
            resolved,
            prepared,
            permit,
            started,
        } = self;
        let remaining = plan.deadline.saturating_duration_since(started);
        let opened = gw
            .upstream
            .open_stream(
                &resolved.target,
                &prepared.body,
                remaining,
                chat.timeout,
                chat.retries,
                &req.hangup,
            )
            .await;
        tried.attempts = opened.attempts;
        tried.took = Some(started.elapsed());
        let model = resolved.model;
        match opened.result {
            Ok(stream) => {
                gw.scores.record(&model.short, true, started.elapsed());
                let held = slot
                    .into_iter()
                    .map(|s| Box::new(s) as Box<dyn Send>)
                    .collect();
                Ok(Answered::Stream(Box::new(Streaming {
                    stream,
                    permit,
                    prepared,
                    sessions: gw.sessions.clone(),
                    model,
                    held,
                    pending: None,
                    hangup: Hangup::default(),
                    keepalive: gw.settings.stream_keepalive,
                    timeout_counts: timeout_outcome(chat.timeout, gw.settings.max_timeout),
                })))
            }
            Err(f) => Err(fail(
                gw,
                permit,
                f,
                failed(&model, req, chat, started),
                tried,
            )),
        }
    }

    /// The whole answer, with the session turn kept.
    async fn complete(self, plan: &Plan, tried: &mut Tried) -> Result<Answered, Error> {
        let Upcall {
            gw,
            req,
            chat,
            resolved,
            prepared,
            permit,
            started,
        } = self;
        let done = gw
            .upstream
            .complete(
                &resolved.target,
                &prepared.body,
                plan.deadline,
                chat.retries,
                &req.hangup,
                // All of the answer only where it is read: a session turn, a translation.
                prepared.keeps_session() || chat.translated,
            )
            .await;
        tried.attempts = done.attempts;
        tried.took = Some(started.elapsed());
        let model = resolved.model;
        match done.result {
            Ok(done) => {
                permit.finish(Outcome::Success);
                gw.scores.record(&model.short, true, started.elapsed());
                if prepared.keeps_session() {
                    save_turn(&prepared, &gw.sessions, done.answer.assistant()).await;
                }
                Ok(Answered::Complete(Box::new(Completed {
                    body: done.body,
                    answer: done.answer,
                    model,
                })))
            }
            Err(f) => Err(fail(
                gw,
                permit,
                f,
                failed(&model, req, chat, started),
                tried,
            )),
        }
    }
}

/// Everything before the upstream call of a resolved model: the caller's right to it, its
/// key present, the body built, its context big enough (when another model could answer
/// instead), its breaker's permit.
fn ready(
    gw: &Gateway,
    caller: &Caller,
    chat: &ChatRequest,
    resolved: &Resolved,
    more: bool,
    plan: &Plan,
) -> Result<(Prepared, Permit), Error> {
    let model = &resolved.model;
    usable(caller, model)?;
    if let Some(env) = model.provider.key_env()
        && resolved.target.key().is_none()
    {
        return Err(Error::ProviderNotConfigured { env });
    }
    let memory = gw.memory();
    if more && model.context > 0 {
        let history: Vec<Value> = plan
            .history
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let system = json!({"role": "system", "content": memory.content});
        let messages = history.iter().chain(chat.messages()).chain([&system]);
        let tokens = tokens::estimate(messages, chat.tools());
        if tokens > model.context {
            return Err(Error::ContextTooLong {
                model: model.short.clone(),
                tokens,
                limit: model.context,
            });
        }
    }
    let prepared = Prepared::with_history(
        chat,
        model,
        &memory,
        &plan.history,
        &plan.session_model,
        plan.session_owner.as_deref(),
    )?;
    let permit = gw.admit(&model.short)?;
    Ok((prepared, permit))
}

impl Answered {
    /// The model that answers.
    pub(crate) fn model(&self) -> &Model {
        match self {
            Answered::Complete(c) => &c.model,
            Answered::Stream(s) => &s.model,
        }
    }
}

impl Completed {
    /// A 200 with this body, naming the model that answered in [`MODEL_HEADER`].
    pub(crate) fn respond(&self, content_type: &str, body: Vec<u8>) -> Response {
        Response::full(200, content_type, body).with_header(MODEL_HEADER, self.model.short.clone())
    }
}

/// The history of the request's session with `session_model`, of the client key `owner`
/// (empty without a session), read on a blocking thread: it is a file.
async fn history(
    gw: &Gateway,
    chat: &ChatRequest,
    owner: Option<String>,
    session_model: &str,
) -> Result<Vec<Message>, Error> {
    let Some(id) = chat.session_id.clone() else {
        return Ok(Vec::new());
    };
    let (sessions, short) = (Arc::clone(&gw.sessions), session_model.to_string());
    blocking::io()
        .run(move || sessions.history(owner.as_deref(), &short, &id))
        .await
        .unwrap_or_else(|| Err(blocking_failed("reading the session")))
}

/// Keeps the session turn of an answer, on a blocking thread (a file write); done when it
/// is written (or its failure logged).
async fn save_turn(prepared: &Prepared, sessions: &Arc<SessionStore>, assistant: Message) {
    let Some(turn) = prepared.turn(assistant) else {
        return;
    };
    let sessions = Arc::clone(sessions);
    let _ = blocking::io().run(move || turn.save(&sessions)).await;
}

/// The error for a blocking job that could not run (it panicked).
fn blocking_failed(doing: &str) -> Error {
    Error::Internal {
        message: format!("internal error while {doing}"),
    }
}

/// Finds a model: at once when no discovery is needed, else (an `ollama-…` name not known
/// yet, which may ask Ollama) on a blocking thread.
pub(super) async fn resolve(gw: &Arc<Gateway>, name: &str) -> Result<Resolved, Error> {
    if let Some(resolved) = gw.resolve_now(name) {
        return resolved;
    }
    let (g, name) = (Arc::clone(gw), name.to_string());
    blocking::io()
        .run(move || g.resolve(&name))
        .await
        .unwrap_or_else(|| Err(blocking_failed("looking the model up")))
}

/// The call a failure ended: its model, its client's hang-up, when it started, and the
/// request's `timeout`.
pub(super) struct Failed<'a> {
    pub(super) short: &'a str,
    pub(super) hangup: &'a Hangup,
    pub(super) started: Instant,
    pub(super) timeout: Duration,
}

/// What [`fail`] needs of a chat call to `model` that started at `started`.
fn failed<'a>(
    model: &'a Model,
    req: &'a Request,
    chat: &ChatRequest,
    started: Instant,
) -> Failed<'a> {
    Failed {
        short: &model.short,
        hangup: &req.hangup,
        started,
        timeout: chat.timeout,
    }
}

/// Records a failed call with the breaker and the model's score, and turns it into the
/// client's error. A call that failed because its client left says nothing about the model,
/// nor does one that never reached it (no time left), nor one that ran out of a `timeout`
/// the client set below the default: a client that gives a model that thinks for 30 s
/// only 5 would otherwise open its breaker for everyone.
pub(super) fn fail(
    gw: &Gateway,
    permit: Permit,
    failure: Failure,
    call: Failed<'_>,
    tried: &mut Tried,
) -> Error {
    if call.hangup.stopped_by_server() {
        // The server's shutdown grace ran out: nothing to say about the model.
        permit.finish(Outcome::Neutral);
        return Error::ShuttingDown;
    }
    // No attempt: the request's time was gone before anything was sent (a fallback reached
    // after the models before it used it all), and a model never asked did nothing wrong.
    let outcome = if call.hangup.is_fired() || tried.attempts == 0 {
        Outcome::Neutral
    } else {
        tried.error = Some(UpstreamError::of(&failure));
        match failure {
            Failure::Timeout(_) => timeout_outcome(call.timeout, gw.settings.max_timeout),
            _ => failure.breaker_outcome(),
        }
    };
    let (short, started) = (call.short, call.started);
    if outcome == Outcome::Failure {
        gw.scores.record(short, false, started.elapsed());
    }
    permit.finish(outcome);
    if let Failure::Status {
        status: status @ (401 | 403),
        ..
    } = failure
    {
        warn_refused_key(short, status);
    }
    failure.into_error(short)
}

/// How a timeout counts for the model's breaker, before a stream's first event or between
/// two: not at all when the client set its `timeout` below the gateway's default (180 s, or
/// `-max-timeout` when lower: it chose to wait less than the model may take; three
/// `"timeout": 5` streams from a model that thinks for 30 s after its first chunk would
/// otherwise disable it for everyone), as a failure otherwise (a provider silent for the
/// whole default is failing).
fn timeout_outcome(timeout: Duration, max_timeout: Duration) -> Outcome {
    if timeout < default_timeout(max_timeout) {
        Outcome::Neutral
    } else {
        Outcome::Failure
    }
}

/// A provider's 401 or 403 goes to the client as it came (the design's "upstream 4xx: same
/// status"), but it is nearly always the gateway's own provider key that is wrong, which
/// only the operator can mend: a WARN says so, at most once a minute.
fn warn_refused_key(short: &str, status: u16) {
    static REFUSED: std::sync::Mutex<crate::util::Throttle> = std::sync::Mutex::new(
        crate::util::Throttle::every(std::time::Duration::from_secs(60)),
    );
    crate::util::lock(&REFUSED).warn(
        "the provider refused the gateway's credentials: check the provider's API key (its environment variable) for this model",
        &format_args!("{short} answered {status}"),
    );
}

/// Adds the token usage, where the provider reported it, to the access log line.
fn log_tokens(log: &mut LogFields, usage: &Usage) {
    if !log::log_enabled!(log::Level::Info) {
        return;
    }
    if let Some(n) = usage.prompt_tokens {
        log.push(("prompt_tokens", n.to_string()));
    }
    if let Some(n) = usage.completion_tokens {
        log.push(("completion_tokens", n.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_timeout_the_client_chose_short_is_neutral_for_the_breaker() {
        const MAX: Duration = Duration::from_secs(600);
        for (secs, outcome) in [
            (1, Outcome::Neutral),
            (179, Outcome::Neutral),
            (180, Outcome::Failure),
            (600, Outcome::Failure),
        ] {
            assert_eq!(
                timeout_outcome(Duration::from_secs(secs), MAX),
                outcome,
                "{secs}"
            );
        }
        assert_eq!(
            timeout_outcome(crate::chat::request::DEFAULT_TIMEOUT, MAX),
            Outcome::Failure
        );
        // Under a -max-timeout below 180 s, the default is that maximum: running out of it
        // counts, a shorter one the client chose does not.
        let max = Duration::from_secs(120);
        assert_eq!(timeout_outcome(max, max), Outcome::Failure);
        assert_eq!(
            timeout_outcome(Duration::from_secs(119), max),
            Outcome::Neutral
        );
    }
}
