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

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::caller::Caller;
use crate::chat::answer::{Answer, Usage};
use crate::chat::prepared::Prepared;
use crate::chat::request::{ChatRequest, DEFAULT_TIMEOUT};
use crate::chat::stream::{Chunk, Gathered, NO_EVENT, StreamEnd};
use crate::chat::tokens;
use crate::error::Error;
use crate::gateway::{Gateway, Resolved};
use crate::http::{Body, Hangup, LogFields, Pipe, Request, Response, Sink};
use crate::ledger::{CLIENT_GONE, CallRecord, PendingCall, UpstreamError};
use crate::rt::blocking;
use crate::state::catalog::Model;
use crate::state::session::{Message, SessionStore};
use crate::upstream::breaker::{Outcome, Permit};
use crate::upstream::llama::slots::SlotGuard;
use crate::upstream::retry::Failure;
use crate::upstream::{Keepalive, OpenStream, read_open_stream};

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
    /// The request's `timeout`, which bounds each gap between events.
    timeout: Duration,
}

/// How an API front turns an upstream stream into its own events.
pub(crate) trait StreamFront: Send {
    /// One upstream chunk: `raw` as received, `chunk` its parse.
    fn chunk(&mut self, raw: &str, chunk: &Chunk, sink: &mut dyn Sink) -> io::Result<()>;
    /// The stream is complete; `usage` is what the upstream reported.
    fn done(&mut self, usage: &Usage, sink: &mut dyn Sink) -> io::Result<()>;
    /// The upstream failed after the first event: the front's final error event.
    fn failed(&mut self, error: &Error, sink: &mut dyn Sink) -> io::Result<()>;
    /// The provider has been silent for a while: something that tells the client (and any
    /// proxy between) that the stream lives, and that it ignores. An SSE comment here.
    fn keepalive(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        sink.send(KEEPALIVE_COMMENT)
    }
}

/// The keep-alive of a stream in the OpenAI shapes: an SSE comment, which clients skip.
const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

/// An API front's translator of chat chunks into its own events, written into a buffer.
pub(crate) trait Translate: Send {
    /// One upstream chunk. `Err` with a reason: the answer cannot go on (it has grown past
    /// a limit); the front ends it with its failure event and the reading stops.
    fn chunk(&mut self, chunk: &Chunk, out: &mut Vec<u8>) -> Result<(), String>;
    /// The stream is complete; `usage` is what the upstream reported.
    fn done(&mut self, usage: &Usage, out: &mut Vec<u8>);
    /// The upstream failed after the first event.
    fn failed(&mut self, error: &Error, out: &mut Vec<u8>);
    /// See [`StreamFront::keepalive`].
    fn keepalive(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(KEEPALIVE_COMMENT);
    }
}

/// A [`Translate`] as a [`StreamFront`]: the frames of one upstream chunk go to the client
/// in one piece.
pub(crate) struct Framed<T> {
    translator: T,
    buf: Vec<u8>,
}

impl<T> Framed<T> {
    pub(crate) fn new(translator: T) -> Framed<T> {
        Framed {
            translator,
            buf: Vec::new(),
        }
    }

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

/// Why a front stopped reading on its own: the answer grew past a limit (its failure event
/// is out), which is neither the client leaving nor the provider failing.
#[derive(Debug)]
pub(crate) struct CannotGoOn;

impl std::fmt::Display for CannotGoOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the answer cannot go on")
    }
}

impl std::error::Error for CannotGoOn {}

impl CannotGoOn {
    fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<CannotGoOn>())
    }
}

impl<T: Translate> StreamFront for Framed<T> {
    fn chunk(&mut self, _raw: &str, chunk: &Chunk, sink: &mut dyn Sink) -> io::Result<()> {
        if let Err(message) = self.translator.chunk(chunk, &mut self.buf) {
            self.translator
                .failed(&Error::Upstream { message }, &mut self.buf);
            self.send(sink)?;
            return Err(io::Error::other(CannotGoOn));
        }
        self.send(sink)
    }

    fn done(&mut self, usage: &Usage, sink: &mut dyn Sink) -> io::Result<()> {
        self.translator.done(usage, &mut self.buf);
        self.send(sink)
    }

    fn failed(&mut self, error: &Error, sink: &mut dyn Sink) -> io::Result<()> {
        self.translator.failed(error, &mut self.buf);
        self.send(sink)
    }

    fn keepalive(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        self.translator.keepalive(&mut self.buf);
        self.send(sink)
    }
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
    let history = history(gw, chat, &session_model).await?;
    let plan = Plan {
        deadline: Instant::now() + chat.timeout,
        history,
        session_model,
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
}

/// The models to try, in order: the one asked for (or, for `auto`, the `-auto` list
/// healthiest first, open breakers left out), then the request's `fallbacks` or, without
/// them, the server's (`-fallback`). Each model once.
fn candidates(
    gw: &Gateway,
    caller: &Caller,
    chat: &ChatRequest,
    short: &str,
) -> Result<Vec<String>, Error> {
    let routing = &gw.settings.routing;
    let mut list: Vec<String> = if chat.model.eq_ignore_ascii_case("auto") {
        if routing.auto.is_empty() {
            return Err(no_auto_list(&chat.model));
        }
        let (mut ranked, mut blocked) = gw.auto_order();
        // Only the models the caller's key may use.
        ranked.retain(|m| caller.allows(m));
        blocked.retain(|m| caller.allows(m));
        // Every breaker open: try them all the same, to answer with their errors.
        if ranked.is_empty() { blocked } else { ranked }
    } else {
        let server = match routing.fallbacks_of(&chat.model) {
            [] => routing.fallbacks_of(short),
            list => list,
        };
        // `"fallbacks": []` asks for none, the server's included.
        let next = chat.fallbacks.as_deref().unwrap_or(server);
        if next.is_empty() {
            // The usual call: one model, nothing to weed out.
            return Ok(vec![chat.model.clone()]);
        }
        std::iter::once(chat.model.clone())
            .chain(next.iter().cloned())
            .collect()
    };
    let mut kept = 0;
    for i in 0..list.len() {
        let repeated = list[..kept]
            .iter()
            .any(|m| m.eq_ignore_ascii_case(&list[i]));
        if !repeated {
            list.swap(kept, i);
            kept += 1;
        }
    }
    list.truncate(kept);
    Ok(list)
}

/// `auto` asked of a gateway without an `-auto` list: 404.
fn no_auto_list(name: &str) -> Error {
    Error::ModelNotFound {
        model: name.to_string(),
        reason: "no -auto list is configured on this gateway".into(),
    }
}

/// Whether a call could ask for the model `name` at all, checked as a call checks it
/// before any provider is asked: 404 for a model that does not exist (or `auto` without an
/// `-auto` list), 403 for one the caller's key may not use, 400 for an embedding model. A
/// model that exists but cannot answer just now (its breaker open, its provider's key
/// missing, a local model loading) passes. For the token counts, which call no model; it
/// may wait for an Ollama discovery, so it runs on a worker thread.
pub(super) fn check_model(gw: &Gateway, caller: &Caller, name: &str) -> Result<(), Error> {
    if name.eq_ignore_ascii_case("auto") {
        if gw.settings.routing.auto.is_empty() {
            return Err(no_auto_list(name));
        }
        return Ok(());
    }
    match gw.resolve(name) {
        Ok(resolved) => usable(caller, &resolved.model),
        // The local model exists; it is only not ready.
        Err(Error::ModelLoading { model, .. }) => caller.may_use_code(&model),
        Err(e) => Err(e),
    }
}

/// The caller's right to a resolved model, and a chat model it must be: 403, 400.
fn usable(caller: &Caller, model: &Model) -> Result<(), Error> {
    caller.may_use(model)?;
    if model.embedding {
        return Err(Error::invalid_param(
            "model",
            format!(
                "'{}' is an embedding model: use POST /v1/embeddings",
                model.short
            ),
        ));
    }
    Ok(())
}

/// Whether the next model may answer instead, after the `index`-th failed with `e`: not
/// for an error of the request itself (a 4xx), and not for a model asked for that does
/// not exist (a typo must not be answered by another model).
fn falls_back(e: &Error, index: usize) -> bool {
    match e {
        Error::CircuitOpen { .. }
        | Error::ProviderNotConfigured { .. }
        | Error::Upstream { .. }
        | Error::UpstreamTimeout { .. }
        | Error::RateLimited { .. }
        | Error::ModelLoading { .. }
        | Error::ModelBusy { .. }
        | Error::ContextTooLong { .. } => true,
        Error::ModelNotFound { .. } | Error::ModelNotAllowed { .. } => index > 0,
        _ => false,
    }
}

/// A fallback that is not offered, or not to this key: passed over.
fn skipped(e: &Error) -> bool {
    matches!(
        e,
        Error::ModelNotFound { .. } | Error::ModelNotAllowed { .. }
    )
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
                    timeout: chat.timeout,
                })))
            }
            Err(f) => Err(fail(
                gw,
                permit,
                f,
                Failed {
                    short: &model.short,
                    hangup: &req.hangup,
                    started,
                    timeout: chat.timeout,
                },
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
                Failed {
                    short: &model.short,
                    hangup: &req.hangup,
                    started,
                    timeout: chat.timeout,
                },
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
    let prepared =
        Prepared::with_history(chat, model, &memory, &plan.history, &plan.session_model)?;
    let permit = gw
        .breakers
        .admit(&model.short)
        .map_err(|retry_after_s| Error::CircuitOpen {
            model: model.short.clone(),
            retry_after_s,
        })?;
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
            timeout,
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
                        timeout_outcome(timeout),
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

/// The history of the request's session with `session_model` (empty without a session),
/// read on a blocking thread: it is a file.
async fn history(
    gw: &Gateway,
    chat: &ChatRequest,
    session_model: &str,
) -> Result<Vec<Message>, Error> {
    let Some(id) = chat.session_id.clone() else {
        return Ok(Vec::new());
    };
    let (sessions, short) = (Arc::clone(&gw.sessions), session_model.to_string());
    blocking::io()
        .run(move || sessions.history(&short, &id))
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
            Failure::Timeout(_) => timeout_outcome(call.timeout),
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
/// two: not at all when the client set its `timeout` below the default (it chose to wait
/// less than the model may take; three `"timeout": 5` streams from a model that thinks for
/// 30 s after its first chunk would otherwise disable it for everyone), as a failure
/// otherwise (a provider silent for the default 180 s is failing).
fn timeout_outcome(timeout: Duration) -> Outcome {
    if timeout < DEFAULT_TIMEOUT {
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
        for (secs, outcome) in [
            (1, Outcome::Neutral),
            (179, Outcome::Neutral),
            (180, Outcome::Failure),
            (600, Outcome::Failure),
        ] {
            assert_eq!(
                timeout_outcome(Duration::from_secs(secs)),
                outcome,
                "{secs}"
            );
        }
        assert_eq!(timeout_outcome(DEFAULT_TIMEOUT), Outcome::Failure);
    }
}
