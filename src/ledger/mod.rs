//! The gateway's books: every model call ends as one [`CallRecord`], and
//! [`Ledger::record`] — the one place calls are counted — adds it to the Prometheus metrics
//! and to the usage totals per key and model that survive a restart.
//!
//! - [`registry`]: the generic counter, gauge and histogram families and the text format.
//! - [`usage`]: today, this month and all time per (key, model), and their file.
//!
//! Labels come from closed sets only: the model's short code as the gateway resolved it (a
//! request refused before a model was known counts under `model=""`), the provider's name,
//! the status code, the route (a constant), the client key's name, constants for kinds. A
//! session id, an address, a prompt or a model name a client made up never becomes a label.
//!
//! The usage file is written in batches, never once per request (an SD card wears out): by a
//! background thread at most every `-usage-flush` seconds when something changed, and at
//! shutdown. A crash loses at most that many seconds of usage; the file itself is written
//! atomically, so it always holds the last batch whole.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};

use crate::state::catalog::Model;
use crate::upstream::retry::Failure;
use crate::util::{lock, unix_now};
use registry::{CounterVec, Exposition, HistogramVec};
use usage::{Loaded, Report, Totals, Usage};

mod labels;
pub mod registry;
pub mod usage;

/// The `route` label's values: one per API whose requests call a provider (every answer of
/// theirs is counted), and [`route::OTHER`] for the refusals of the client rules (401 and
/// 429, before any endpoint ran) on every other path — the lists, the token counts, the
/// memory, the status pages, unknown paths — whose other answers are not counted.
pub mod route {
    pub const CHAT: &str = "chat";
    pub const MESSAGES: &str = "messages";
    pub const RESPONSES: &str = "responses";
    pub const EMBEDDINGS: &str = "embeddings";
    pub const OTHER: &str = "other";
}

/// The status recorded for a request whose client went away before its answer was complete
/// (nginx's "client closed request").
pub const CLIENT_GONE: u16 = 499;

/// Buckets of LLM latencies: from fast refusals to ten-minute streams.
const LLM_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Buckets of the gateway's own overhead: half a millisecond to seconds (a queue wait).
const OVERHEAD_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Why a call's provider failed it (after the retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection: refused, DNS, TLS, reset.
    Connect,
    /// No answer in time.
    Timeout,
    /// 429 after the retries.
    RateLimited,
    /// 5xx.
    ServerError,
    /// 4xx other than 429 (a bad key, a refused request).
    ClientError,
    /// A 2xx that was not a completion or a stream.
    BadAnswer,
    /// A stream that failed after its first event (an error event, a cut, garbage); a gap
    /// too long between two events is a `Timeout`.
    StreamFailed,
}

impl UpstreamError {
    pub fn of(failure: &Failure) -> UpstreamError {
        match failure {
            Failure::Connect(_) => UpstreamError::Connect,
            Failure::Timeout(_) => UpstreamError::Timeout,
            Failure::BadAnswer(_) | Failure::BadCompletion(_) => UpstreamError::BadAnswer,
            // The client left: not the provider's failure (callers do not record it).
            Failure::Cancelled => UpstreamError::ClientError,
            Failure::Status { status: 429, .. } => UpstreamError::RateLimited,
            Failure::Status { status, .. } if *status >= 500 => UpstreamError::ServerError,
            Failure::Status { .. } => UpstreamError::ClientError,
        }
    }

    /// The `kind` label.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::RateLimited => "rate_limited",
            UpstreamError::ServerError => "server_error",
            UpstreamError::ClientError => "client_error",
            UpstreamError::BadAnswer => "bad_answer",
            UpstreamError::StreamFailed => "stream_failed",
        }
    }
}

/// One model call as the books see it, filled in by the endpoint as it goes.
#[derive(Debug, Clone, Default)]
pub struct CallRecord {
    /// Which API: one of [`route`]'s constants, never from the request.
    pub route: &'static str,
    /// The model the gateway resolved; `None` when the request was refused before (bad
    /// body, unknown model, a refusal of the client rules, a client that left the queue).
    pub model: Option<std::sync::Arc<Model>>,
    /// The client key's name, when the request came with one that is in `keys.csv` (never
    /// the text of an unknown key).
    pub key: Option<String>,
    /// The status the client got; for a stream, how it ended (200 complete, 502 failed after
    /// the first event, [`CLIENT_GONE`]).
    pub status: u16,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// From the end of the request's read (queue wait included) to the end of the answer.
    pub duration: Duration,
    /// Time spent with the provider (retries and their waits included, a stream to its end).
    pub upstream_time: Option<Duration>,
    /// For a stream: from the end of the request's read to its first event.
    pub first_token: Option<Duration>,
    pub upstream_error: Option<UpstreamError>,
    /// Upstream attempts (0: none made).
    pub attempts: u32,
}

impl CallRecord {
    pub fn new(route: &'static str) -> CallRecord {
        CallRecord {
            route,
            ..CallRecord::default()
        }
    }

    /// Closes the record: the status, and the time since the request was read. A client
    /// that went away makes it a [`CLIENT_GONE`], and never an upstream error: a hang-up
    /// says nothing about the provider.
    pub fn finish(&mut self, status: u16, received: Instant, client_gone: bool) {
        self.status = if client_gone { CLIENT_GONE } else { status };
        if client_gone {
            self.upstream_error = None;
        }
        self.duration = received.elapsed();
    }
}

/// A stream's record, carried into its body: recorded when the stream ends, or — when the
/// body never runs to its end (the client left before the head was written, a panic) —
/// recorded as [`CLIENT_GONE`] when dropped. Either way exactly once.
pub struct PendingCall {
    ledger: Arc<Ledger>,
    received: Instant,
    pub call: CallRecord,
    done: bool,
}

impl PendingCall {
    pub fn finish(mut self, status: u16) {
        self.close(status);
    }

    fn close(&mut self, status: u16) {
        if self.done {
            return;
        }
        self.done = true;
        self.call
            .finish(status, self.received, status == CLIENT_GONE);
        self.ledger.record(&self.call);
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.close(CLIENT_GONE);
    }
}

/// The metric families the ledger counts into.
#[derive(Debug, Clone)]
struct Metrics {
    requests: CounterVec<5>,
    duration: HistogramVec<2>,
    first_token: HistogramVec<1>,
    overhead: HistogramVec<1>,
    tokens: CounterVec<3>,
    cost: CounterVec<2>,
    upstream_errors: CounterVec<2>,
    retries: CounterVec<1>,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            requests: CounterVec::new(
                "sigorest_requests_total",
                "Model API requests (route chat, messages, responses, embeddings), and the refusals of the client rules (401, 429) on the other paths (route other), by route, model short code (\"\" when refused before a model was known), provider, HTTP status and client key name (\"\" without a known key).",
                ["route", "model", "provider", "status", "key"],
            ),
            duration: HistogramVec::new(
                "sigorest_request_duration_seconds",
                "Model API requests from the end of the request's read to the end of the answer (a stream to its end).",
                ["route", "model"],
                LLM_BUCKETS,
            ),
            first_token: HistogramVec::new(
                "sigorest_time_to_first_token_seconds",
                "Streams: from the end of the request's read to the provider's first event.",
                ["model"],
                LLM_BUCKETS,
            ),
            overhead: HistogramVec::new(
                "sigorest_overhead_seconds",
                "What the gateway added to a call that reached a provider: request duration minus the time with the provider (queue wait, parsing, sessions, writing).",
                ["route"],
                OVERHEAD_BUCKETS,
            ),
            tokens: CounterVec::new(
                "sigorest_tokens_total",
                "Tokens the providers reported, by model, kind (prompt or completion) and client key name.",
                ["model", "kind", "key"],
            ),
            cost: CounterVec::new(
                "sigorest_cost_usd_total",
                "Cost in US dollars from the catalog's prices per million tokens (Ollama: 0), by model and client key name.",
                ["model", "key"],
            ),
            upstream_errors: CounterVec::new(
                "sigorest_upstream_errors_total",
                "Requests a provider failed after the retries, by provider and kind.",
                ["provider", "kind"],
            ),
            retries: CounterVec::new(
                "sigorest_upstream_retries_total",
                "Upstream attempts beyond the first, by provider.",
                ["provider"],
            ),
        }
    }

    /// One model's turn at its provider: how it failed (after the retries), and the
    /// attempts beyond the first.
    fn count_attempts(&mut self, provider: &str, error: Option<UpstreamError>, attempts: u32) {
        if let Some(kind) = error {
            self.upstream_errors.inc([provider, kind.name()]);
        }
        if attempts > 1 {
            self.retries.add([provider], f64::from(attempts - 1));
        }
    }

    fn render(&self, e: &mut Exposition) {
        e.counter(&self.requests);
        e.histogram(&self.duration);
        e.histogram(&self.first_token);
        e.histogram(&self.overhead);
        e.counter(&self.tokens);
        e.counter(&self.cost);
        e.counter(&self.upstream_errors);
        e.counter(&self.retries);
    }
}

struct State {
    metrics: Metrics,
    usage: Usage,
    /// Usage changed since the last write.
    dirty: bool,
}

/// The metrics and the usage totals, shared by every request.
pub struct Ledger {
    state: Mutex<State>,
    /// The usage file; `None` when it could not be read (so it is never overwritten).
    path: Option<PathBuf>,
    flush_every: Duration,
    /// Held across one write, so writes go out in order.
    writing: Mutex<()>,
    /// The last write failed (logged once per run of failures).
    failing: Mutex<bool>,
    flusher: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

impl Ledger {
    /// Opens the books on the usage file at `path`. A torn or corrupt file is moved aside and
    /// the totals start empty; an unreadable one is left alone and nothing is written this
    /// run. Neither stops the server. Temporary files of an earlier write cut short are
    /// removed.
    pub fn open(path: PathBuf, flush_every: Duration) -> Ledger {
        let now = unix_now();
        let (usage, path) = match usage::load(&path, now) {
            Loaded::Read(u) => (u, Some(path)),
            Loaded::MovedAside(u, aside, why) => {
                log::warn!(
                    "usage file {} does not parse ({why}); moved it to {} and started the totals afresh",
                    path.display(),
                    aside.display()
                );
                (u, Some(path))
            }
            Loaded::Unreadable(e) => {
                log::error!(
                    "usage file {} cannot be read ({e}); usage is counted but not saved until a restart",
                    path.display()
                );
                (Usage::new(now), None)
            }
        };
        if let Some(p) = &path {
            let removed = crate::util::fs::remove_stale_temps(p);
            if removed > 0 {
                log::info!(removed = removed; "removed temporary files of an interrupted usage write");
            }
        }
        Ledger {
            state: Mutex::new(State {
                metrics: Metrics::new(),
                usage,
                dirty: false,
            }),
            path,
            flush_every: flush_every.max(Duration::from_millis(10)),
            writing: Mutex::new(()),
            failing: Mutex::new(false),
            flusher: Mutex::new(None),
        }
    }

    /// Counts one finished call in the metrics and, when its model is known, in the usage.
    pub fn record(&self, rec: &CallRecord) {
        let model = rec.model.as_ref();
        let short = model.map_or("", |m| m.short.as_str());
        let provider = model.map_or("", |m| m.provider.name());
        let key = rec.key.as_deref().unwrap_or("");
        let status = status_label(rec.status);
        let prompt = rec.prompt_tokens.unwrap_or(0);
        let completion = rec.completion_tokens.unwrap_or(0);
        let cost = model.map_or(0.0, |m| cost_usd(m, prompt, completion));
        let now = unix_now();

        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let m = &mut state.metrics;
        m.requests.inc([rec.route, short, provider, status, key]);
        m.duration
            .observe([rec.route, short], rec.duration.as_secs_f64());
        if let Some(t) = rec.first_token {
            m.first_token.observe([short], t.as_secs_f64());
        }
        if let Some(u) = rec.upstream_time {
            let overhead = rec.duration.saturating_sub(u);
            m.overhead.observe([rec.route], overhead.as_secs_f64());
        }
        m.count_attempts(provider, rec.upstream_error, rec.attempts);
        let Some(model) = model else { return };
        m.tokens.add([short, "prompt", key], prompt as f64);
        m.tokens.add([short, "completion", key], completion as f64);
        m.cost.add([short, key], cost);
        let totals = Totals {
            requests: 1,
            errors: u64::from(!(200..300).contains(&rec.status)),
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost_usd: cost,
        };
        state.usage.add(key, &model.short, &totals, now);
        state.dirty = true;
    }

    /// A provider's failure and retries on a model the call then left for the next one
    /// (the model that answered, or failed last, is counted with the call's record).
    pub fn count_attempts(&self, provider: &str, error: Option<UpstreamError>, attempts: u32) {
        lock(&self.state)
            .metrics
            .count_attempts(provider, error, attempts);
    }

    /// A stream's record, to be finished when the stream ends (see [`PendingCall`]).
    pub fn pending(self: &Arc<Self>, call: CallRecord, received: Instant) -> PendingCall {
        PendingCall {
            ledger: Arc::clone(self),
            received,
            call,
            done: false,
        }
    }

    /// Adds the counted families to a scrape.
    pub fn render(&self, e: &mut Exposition) {
        lock(&self.state).metrics.render(e);
    }

    /// `GET /api/usage`.
    pub fn report(&self) -> Report {
        lock(&self.state).usage.report(unix_now())
    }

    /// Today's totals per model (the status page).
    pub fn today_by_model(&self) -> std::collections::BTreeMap<String, Totals> {
        lock(&self.state).usage.today_by_model(unix_now())
    }

    /// Upstream errors since the start: (provider, kind, count), in label order.
    pub fn upstream_errors(&self) -> Vec<(String, String, u64)> {
        lock(&self.state)
            .metrics
            .upstream_errors
            .iter()
            .map(|([p, k], n)| (p.clone(), k.clone(), n as u64))
            .collect()
    }

    /// Writes the usage file when the totals changed since the last write. On failure they
    /// stay marked as changed, for the next try.
    pub fn flush(&self) -> std::io::Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let _writing = lock(&self.writing);
        let bytes = {
            let mut state = lock(&self.state);
            if !state.dirty {
                return Ok(false);
            }
            state.dirty = false;
            state.usage.to_bytes()
        };
        // Key names and what they spent: private, as the sessions beside it (a missing
        // directory is created 0700, the file 0600).
        let written = crate::util::fs::create_private_dir(crate::util::fs::parent_dir(path))
            .and_then(|()| crate::util::fs::write_atomic(path, &bytes, Some(0o600)));
        if let Err(e) = written {
            lock(&self.state).dirty = true;
            return Err(e);
        }
        Ok(true)
    }

    /// [`Ledger::flush`], logging a failure (once per run of failures) instead of returning it.
    fn flush_logged(&self) {
        let result = self.flush();
        let mut failing = lock(&self.failing);
        match result {
            Err(e) if !*failing => {
                *failing = true;
                if let Some(p) = &self.path {
                    log::error!(
                        "cannot write the usage file {}: {e}; will retry",
                        p.display()
                    );
                }
            }
            Err(_) => {}
            Ok(_) if *failing => {
                *failing = false;
                log::info!("usage file written again");
            }
            Ok(_) => {}
        }
    }

    /// Starts the background writer (at most every `flush_every`, only when something
    /// changed). Calling it twice starts one writer.
    pub fn start(self: &Arc<Self>) {
        let mut flusher = lock(&self.flusher);
        if flusher.is_some() || self.path.is_none() {
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        // A weak reference: a ledger dropped without `stop` ends its writer too.
        let ledger = Arc::downgrade(self);
        let every = self.flush_every;
        let spawned = thread::Builder::new()
            .name("usage-writer".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    match ledger.upgrade() {
                        Some(l) => l.flush_logged(),
                        None => return,
                    }
                }
            });
        match spawned {
            Ok(handle) => *flusher = Some((tx, handle)),
            Err(e) => {
                log::error!("cannot start the usage writer ({e}); usage is saved at shutdown only")
            }
        }
    }

    /// Stops the background writer and writes what is left (shutdown).
    pub fn stop(&self) {
        let flusher = lock(&self.flusher).take();
        if let Some((tx, handle)) = flusher {
            drop(tx);
            let _ = handle.join();
        }
        self.flush_logged();
    }
}

/// The `status` label: the three-digit code (`"200"`, `"404"`, `"499"`…).
fn status_label(status: u16) -> &'static str {
    static LABELS: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| (100..=599u16).map(|s| s.to_string()).collect());
    match LABELS.get(usize::from(status).wrapping_sub(100)) {
        Some(label) => label,
        None => "other",
    }
}

/// Dollars for these tokens at the model's prices ($ per million tokens).
pub fn cost_usd(model: &Model, prompt: u64, completion: u64) -> f64 {
    let price = prompt as f64 * model.input_price + completion as f64 * model.output_price;
    if price.is_finite() && price > 0.0 {
        price / 1e6
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests;
