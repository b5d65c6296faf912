//! Local Ollama models, found automatically.
//!
//! `GET $OLLAMA_HOST/api/tags` is read in the background at start (never delaying start-up),
//! every 60 s, and at once — at most once per 5 s — when a model the gateway does not know
//! is asked for by a name Ollama could have (an `ollama-…` code, or a name just pulled:
//! `phi4:14b`). Each model gets a short code: `ollama-` + its name with `:` and `/` turned into `-`
//! and a trailing `-latest` dropped. Its context length comes from `POST /api/show`, fetched
//! once per model (again only when its digest changes).
//!
//! The list is shown as soon as `/api/tags` is read; the context lengths are read after it,
//! by the background thread, in batches of at most [`CONTEXT_BUDGET`] (models never asked
//! first, then those whose read failed longest ago): a slow `/api/show` never holds up a
//! list read asked for by a request or a SIGHUP. A batch stops early for such a read; the
//! models it did not reach follow in the next batch, those whose read failed are tried
//! again at the next round, and a model that has left the list is not asked.
//!
//! Short codes keep the case of the Ollama name and are matched case-insensitively, like
//! every model name in the gateway. Two names that map to the same code (case-insensitively)
//! are told apart by order of name: the first keeps the code, the next get `-2`, `-3`, …; every
//! model is also reachable by its real Ollama name.
//!
//! What a failed discovery does to the list depends on what failed. Nothing listening
//! (connection refused, host unreachable, unknown host) means Ollama has stopped: its models
//! drop out, as they do when it answers with an empty list. A slow answer (over 2 s), an
//! error status or an answer that is not a tag list keeps the last good list. Either way the
//! first failure is logged at WARN and later ones at DEBUG until discovery works again (INFO).
//!
//! No lock is held across an HTTP call; a newer discovery's result is never overwritten by an
//! older one that finishes later.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;

use crate::state::catalog::{Model, Provider};
use crate::util::clock::Clock;
use crate::util::lock;

/// How much longer than a discovery a request waits for the background thread's.
const ON_DEMAND_SLACK: Duration = Duration::from_millis(500);
/// How often the model list is read again.
pub const REDISCOVER_EVERY: Duration = Duration::from_secs(60);
/// The shortest time between two discoveries triggered by requests for unknown models.
pub const ON_DEMAND_MIN_GAP: Duration = Duration::from_secs(5);
/// How long one batch of `/api/show` calls may go on starting new ones (the last one
/// started may take [`DISCOVERY_TIMEOUT`] more).
pub const CONTEXT_BUDGET: Duration = Duration::from_secs(5);

/// One model Ollama reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OllamaModel {
    /// The gateway's short code (`ollama-gemma3-4b`).
    pub short: String,
    /// Ollama's own name (`gemma3:4b`).
    pub name: String,
    /// Context length from `/api/show` (0: not known yet).
    pub context: u64,
}

impl OllamaModel {
    /// As a catalog entry: the real Ollama name as the upstream id (what goes upstream as
    /// `model`), provider Ollama, zero prices, temperature 0..2, no output clamp.
    pub fn to_model(&self) -> Model {
        Model::local(&self.short, &self.name, Provider::Ollama, self.context)
    }
}

/// The short code for an Ollama model name: `ollama-` + the name with `:` and `/` turned into
/// `-`, a trailing `-latest` (any case) dropped. Case is kept.
pub fn short_code(name: &str) -> String {
    let mut code: String = name
        .chars()
        .map(|c| if c == ':' || c == '/' { '-' } else { c })
        .collect();
    const LATEST: &str = "-latest";
    let cut = code.len().saturating_sub(LATEST.len());
    if cut > 0
        && code
            .get(cut..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(LATEST))
    {
        code.truncate(cut);
    }
    format!("ollama-{code}")
}

/// Short codes for these names, in the same order. The names are taken in sorted (byte)
/// order: the first of a group whose codes are equal case-insensitively keeps the code, the
/// others get `-2`, `-3`, … (skipping any code another name has of its own).
pub fn assign_short_codes(names: &[String]) -> Vec<String> {
    let natural: Vec<String> = names.iter().map(|n| short_code(n)).collect();
    let mut taken: HashSet<String> = natural.iter().map(|c| c.to_lowercase()).collect();
    let mut given: HashSet<String> = HashSet::new();
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| names[a].cmp(&names[b]));
    let mut codes = vec![String::new(); names.len()];
    for i in order {
        if given.insert(natural[i].to_lowercase()) {
            codes[i] = natural[i].clone();
            continue;
        }
        let mut n = 2;
        let code = loop {
            let candidate = format!("{}-{n}", natural[i]);
            if taken.insert(candidate.to_lowercase()) {
                break candidate;
            }
            n += 1;
        };
        codes[i] = code;
    }
    codes
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Found(OllamaModel),
    /// Ollama reported it before and no longer does.
    Gone,
    Unknown,
}

/// The discovery state, for `/api/health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub endpoint: String,
    pub models_found: usize,
    /// Unix seconds of the last completed discovery (successful or not).
    pub last_discovery: Option<u64>,
    /// Why the last discovery failed (`None`: it worked).
    pub last_error: Option<String>,
}

/// One list of models, with an index by lower-case short code, name, and name without
/// `:latest` (in that order of precedence).
#[derive(Debug, Default)]
struct Snapshot {
    models: Vec<OllamaModel>,
    digests: Vec<String>,
    index: HashMap<String, usize>,
}

impl Snapshot {
    fn new(models: Vec<OllamaModel>, digests: Vec<String>) -> Snapshot {
        let mut index = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            if let Some(bare) = m.name.to_lowercase().strip_suffix(":latest") {
                index.entry(bare.to_string()).or_insert(i);
            }
        }
        // Models are sorted by short code, so among names equal but for case the first wins;
        // the exact spelling is looked for before the index.
        let mut by_name = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            by_name.entry(m.name.to_lowercase()).or_insert(i);
        }
        index.extend(by_name);
        for (i, m) in models.iter().enumerate() {
            index.insert(m.short.to_lowercase(), i);
        }
        Snapshot {
            models,
            digests,
            index,
        }
    }

    /// The digest of the model of exactly this name, if listed.
    fn digest_of(&self, name: &str) -> Option<&str> {
        let exact = |i: usize| (self.models[i].name == name).then(|| self.digests[i].as_str());
        self.index
            .get(&name.to_lowercase())
            .and_then(|&i| exact(i))
            .or_else(|| (0..self.models.len()).find_map(exact))
    }

    fn find(&self, name: &str) -> Option<&OllamaModel> {
        self.models
            .iter()
            .find(|m| m.short == name || m.name == name)
            .or_else(|| {
                self.index
                    .get(&name.to_lowercase())
                    .map(|&i| &self.models[i])
            })
    }
}

/// A context length read for one version of a model.
#[derive(Debug, Clone)]
struct Known {
    digest: String,
    context: u64,
}

#[derive(Debug, Default)]
struct State {
    snapshot: Arc<Snapshot>,
    /// The ticket of the discovery whose result is shown.
    applied: u64,
    /// Lower-case short codes and names of models reported before and no longer.
    gone: HashSet<String>,
    contexts: HashMap<String, Known>,
    /// Names whose `/api/show` is under way.
    fetching: HashSet<String>,
    /// Names whose last `/api/show` failed: for that digest, and when (in `show_failures`).
    failed_contexts: HashMap<String, (String, u64)>,
    /// Failed `/api/show` calls so far (orders the retries: the oldest failure first).
    show_failures: u64,
    last_discovery: Option<u64>,
    last_error: Option<String>,
    /// Discovery has been failing since the last WARN.
    failing: bool,
    last_on_demand: Option<Instant>,
    /// Discoveries of the list begun and finished (applied or not), for a request that
    /// waits for one begun after it asked.
    begun: u64,
    finished: u64,
}

impl State {
    /// Replaces the list; returns the names added and removed.
    fn apply(&mut self, mut tags: Vec<Tag>) -> (Vec<String>, Vec<String>) {
        tags.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<String> = tags.iter().map(|t| t.name.clone()).collect();
        let codes = assign_short_codes(&names);
        let mut rows: Vec<(OllamaModel, String)> = tags
            .into_iter()
            .zip(codes)
            .map(|(tag, short)| {
                let context = self.context_of(&tag.name, &tag.digest);
                let model = OllamaModel {
                    short,
                    name: tag.name,
                    context,
                };
                (model, tag.digest)
            })
            .collect();
        rows.sort_by(|(a, _), (b, _)| {
            (a.short.to_lowercase(), &a.short).cmp(&(b.short.to_lowercase(), &b.short))
        });
        let (models, digests): (Vec<_>, Vec<_>) = rows.into_iter().unzip();

        let old = self.snapshot.clone();
        let now: HashSet<&str> = models.iter().map(|m| m.name.as_str()).collect();
        let was: HashSet<&str> = old.models.iter().map(|m| m.name.as_str()).collect();
        let removed: Vec<String> = old
            .models
            .iter()
            .filter(|m| !now.contains(m.name.as_str()))
            .map(|m| m.name.clone())
            .collect();
        let added: Vec<String> = models
            .iter()
            .filter(|m| !was.contains(m.name.as_str()))
            .map(|m| m.name.clone())
            .collect();
        for m in old.models.iter().filter(|m| !now.contains(m.name.as_str())) {
            self.gone.insert(m.short.to_lowercase());
            self.gone.insert(m.name.to_lowercase());
            self.contexts.remove(&m.name);
            self.failed_contexts.remove(&m.name);
        }
        for m in &models {
            self.gone.remove(&m.short.to_lowercase());
            self.gone.remove(&m.name.to_lowercase());
        }
        self.snapshot = Arc::new(Snapshot::new(models, digests));
        (added, removed)
    }

    fn context_of(&self, name: &str, digest: &str) -> u64 {
        self.contexts
            .get(name)
            .filter(|k| k.digest == digest)
            .map_or(0, |k| k.context)
    }

    /// The models whose context length is still to be read (marked as being read): those
    /// never asked first (in list order), then those whose read failed, the oldest failure
    /// first.
    fn take_unknown_contexts(&mut self) -> Vec<(String, String)> {
        let snapshot = self.snapshot.clone();
        let mut wanted: Vec<(Option<u64>, String, String)> = snapshot
            .models
            .iter()
            .zip(&snapshot.digests)
            .filter(|(m, d)| {
                !self.fetching.contains(&m.name)
                    && self.contexts.get(&m.name).is_none_or(|k| &k.digest != *d)
            })
            .map(|(m, d)| (self.failed_at(&m.name, d), m.name.clone(), d.clone()))
            .collect();
        // Stable: `None` (never asked) sorts first.
        wanted.sort_by_key(|(failed, _, _)| *failed);
        self.fetching
            .extend(wanted.iter().map(|(_, n, _)| n.clone()));
        wanted.into_iter().map(|(_, n, d)| (n, d)).collect()
    }

    /// When the read of this version of a model last failed (`None`: never asked).
    fn failed_at(&self, name: &str, digest: &str) -> Option<u64> {
        self.failed_contexts
            .get(name)
            .filter(|(d, _)| d == digest)
            .map(|(_, at)| *at)
    }

    /// Whether this version of a model is still listed and its context length still wanted.
    fn context_still_wanted(&self, name: &str, digest: &str) -> bool {
        self.snapshot.digest_of(name) == Some(digest)
            && self.contexts.get(name).is_none_or(|k| k.digest != digest)
    }

    fn note_context_failed(&mut self, name: &str, digest: String) {
        self.show_failures += 1;
        self.failed_contexts
            .insert(name.to_string(), (digest, self.show_failures));
    }

    /// Records a context length and shows it in the list (unless the model has left it
    /// while its length was read).
    fn learn_context(&mut self, name: &str, digest: String, context: u64) {
        self.failed_contexts.remove(name);
        if self.snapshot.digest_of(name).is_none() {
            return;
        }
        self.contexts
            .insert(name.to_string(), Known { digest, context });
        let old = &self.snapshot;
        let models = old
            .models
            .iter()
            .zip(&old.digests)
            .map(|(m, d)| OllamaModel {
                context: self.context_of(&m.name, d),
                ..m.clone()
            })
            .collect();
        self.snapshot = Arc::new(Snapshot::new(models, old.digests.clone()));
    }

    /// Notes a failed discovery; true when it is the first of a run (worth a WARN).
    fn note_failure(&mut self, message: &str) -> bool {
        self.last_error = Some(message.to_string());
        !std::mem::replace(&mut self.failing, true)
    }

    /// Notes a working discovery; true when it ends a run of failures (worth an INFO).
    fn note_success(&mut self) -> bool {
        self.last_error = None;
        std::mem::replace(&mut self.failing, false)
    }
}

/// Whether an unknown `name` may be a model Ollama has and the list does not show yet: an
/// `ollama-…` code or a real name (`phi4:14b`, `qwen3`), that is, any name Ollama could
/// report. The gateway asks only for names that match no cloud or llama-server model; the
/// rate limit ([`ON_DEMAND_MIN_GAP`]) keeps a stream of typos from costing more than one
/// discovery per 5 s.
fn may_be_ollama_name(name: &str) -> bool {
    source::is_usable_name(name)
}

/// Whether an on-demand discovery may run at `now` (one per [`ON_DEMAND_MIN_GAP`]).
fn on_demand_due_at(state: &State, now: std::time::Instant) -> bool {
    state
        .last_on_demand
        .is_none_or(|t| now.saturating_duration_since(t) >= ON_DEMAND_MIN_GAP)
}

/// The registry of discovered models.
pub struct Ollama {
    base: String,
    clock: Arc<dyn Clock>,
    source: Box<dyn Source>,
    state: Mutex<State>,
    tickets: AtomicU64,
    /// Wakes the background thread to read missing context lengths; dropping it ends the
    /// thread at once.
    worker: Mutex<Option<Sender<()>>>,
    /// The background thread (never joined by `stop`; kept so tests can see it end).
    handle: Mutex<Option<thread::JoinHandle<()>>>,
    stopping: AtomicBool,
    /// A request asked the background thread for a discovery now.
    asked: AtomicBool,
    /// The background thread is reading context lengths (a request then reads the list
    /// itself rather than wait for the `/api/show` under way).
    reading_contexts: AtomicBool,
    /// Notified when a discovery of the list has finished.
    discovered: Condvar,
}

impl Ollama {
    /// A registry for this `OLLAMA_HOST` value (see `catalog::ollama_base`). Does no I/O.
    pub fn new(host: Option<&str>, clock: Arc<dyn Clock>) -> Ollama {
        let base = crate::state::catalog::ollama_base(host);
        let source = Box::new(Http::new(base.clone()));
        Ollama::with_source(base, clock, source)
    }

    /// A registry that asks `source` instead of Ollama over HTTP (tests); `base` is what it
    /// reports as its endpoint.
    pub fn with_source(base: String, clock: Arc<dyn Clock>, source: Box<dyn Source>) -> Ollama {
        Ollama {
            base,
            clock,
            source,
            state: Mutex::new(State::default()),
            tickets: AtomicU64::new(0),
            worker: Mutex::new(None),
            handle: Mutex::new(None),
            stopping: AtomicBool::new(false),
            asked: AtomicBool::new(false),
            reading_contexts: AtomicBool::new(false),
            discovered: Condvar::new(),
        }
    }

    /// The base URL (`http://localhost:11434`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The models found by the last successful discovery, sorted by short code.
    pub fn models(&self) -> Vec<OllamaModel> {
        lock(&self.state).snapshot.models.clone()
    }

    /// Finds a model by short code or Ollama name (case-insensitive; a name without a tag
    /// also finds `name:latest`). An unknown name Ollama could have (an `ollama-…` code or a
    /// real name; see [`may_be_ollama_name`]) triggers a discovery first (at most once per
    /// [`ON_DEMAND_MIN_GAP`], at most [`DISCOVERY_TIMEOUT`] long): on the background thread
    /// when it runs and is not reading context lengths (the caller only waits for its
    /// result, doing no I/O), else here. It blocks: never on an event loop (see
    /// [`Ollama::lookup_now`]).
    pub fn lookup(&self, name: &str) -> Lookup {
        let name = name.trim();
        if let Some(m) = self.find(name) {
            return Lookup::Found(m);
        }
        if may_be_ollama_name(name) && self.on_demand_due() {
            if self.background_runs() && !self.reading_contexts.load(Ordering::SeqCst) {
                // Should it start a batch of `/api/show` meanwhile, it stops before the
                // first one (`asked`).
                let begun = lock(&self.state).begun;
                self.asked.store(true, Ordering::SeqCst);
                self.wake_worker();
                self.wait_for_discovery(begun, DISCOVERY_TIMEOUT + ON_DEMAND_SLACK);
            } else {
                // Whether it worked or not is logged and shown by `status`.
                let _ = self.refresh_list();
                // Context lengths of new models are read by the background thread, not here.
                self.wake_worker();
            }
            if let Some(m) = self.find(name) {
                return Lookup::Found(m);
            }
        }
        self.not_found(name)
    }

    /// [`Ollama::lookup`] from what is known now, never waiting: `None` when it would run
    /// a discovery (an unknown name Ollama could have while one is due), which then only
    /// [`Ollama::lookup`] may do, off the event loops.
    pub fn lookup_now(&self, name: &str) -> Option<Lookup> {
        let name = name.trim();
        if let Some(m) = self.find(name) {
            return Some(Lookup::Found(m));
        }
        if may_be_ollama_name(name) && self.on_demand_would_run() {
            return None;
        }
        Some(self.not_found(name))
    }

    /// A name no discovery found: gone (reported before) or unknown.
    fn not_found(&self, name: &str) -> Lookup {
        let lower = name.to_lowercase();
        let state = lock(&self.state);
        let gone = state.gone.contains(&lower)
            || (!lower.contains(':') && state.gone.contains(&format!("{lower}:latest")));
        if gone { Lookup::Gone } else { Lookup::Unknown }
    }

    /// The short code of a model already known by this name (no discovery).
    pub fn lookup_known(&self, name: &str) -> Option<String> {
        self.find(name.trim()).map(|m| m.short)
    }

    fn find(&self, name: &str) -> Option<OllamaModel> {
        let snapshot = lock(&self.state).snapshot.clone();
        snapshot.find(name).cloned()
    }

    fn background_runs(&self) -> bool {
        lock(&self.worker).is_some()
            && lock(&self.handle)
                .as_ref()
                .is_some_and(|h| !h.is_finished())
    }

    /// Waits (at most `max`) until a discovery begun after `begun` has finished.
    fn wait_for_discovery(&self, begun: u64, max: Duration) {
        let deadline = Instant::now() + max;
        let mut state = lock(&self.state);
        while state.finished <= begun {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = self
                .discovered
                .wait_timeout(state, left)
                .map_or_else(|e| e.into_inner().0, |r| r.0);
        }
    }

    /// Whether an on-demand discovery may run now (and if so, it is counted as run).
    fn on_demand_due(&self) -> bool {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let due = on_demand_due_at(&state, now);
        if due {
            state.last_on_demand = Some(now);
        }
        due
    }

    /// Whether [`Ollama::on_demand_due`] would say so now (without taking the turn).
    fn on_demand_would_run(&self) -> bool {
        on_demand_due_at(&lock(&self.state), self.clock.now())
    }

    /// One discovery now (a SIGHUP's, tests'): the list, shown as soon as it is read; then
    /// the context lengths not known yet, read by the background thread when it runs, else
    /// here (one batch). Returns the number of models found, or why it failed.
    pub fn discover(&self) -> Result<usize, String> {
        let found = self.refresh_list()?;
        if self.background_runs() {
            self.wake_worker();
        } else {
            self.fill_contexts();
        }
        Ok(found)
    }

    /// Reads the list and applies it (unless a newer discovery has been applied meanwhile).
    fn refresh_list(&self) -> Result<usize, String> {
        lock(&self.state).begun += 1;
        let result = self.read_list();
        lock(&self.state).finished += 1;
        self.discovered.notify_all();
        result
    }

    fn read_list(&self) -> Result<usize, String> {
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let result = self.source.tags();
        let mut state = lock(&self.state);
        if ticket < state.applied {
            return result.map(|t| t.len()).map_err(|f| f.message().to_string());
        }
        state.applied = ticket;
        state.last_discovery = Some(crate::util::unix_now());
        match result {
            Ok(tags) => {
                let (added, removed) = state.apply(tags);
                let recovered = state.note_success();
                let found = state.snapshot.models.len();
                drop(state);
                if recovered {
                    log::info!(endpoint = self.base.as_str(), models = found; "Ollama discovery works again");
                }
                if !added.is_empty() || !removed.is_empty() {
                    log::info!(
                        endpoint = self.base.as_str(), models = found,
                        added = added.join(","), removed = removed.join(",");
                        "Ollama models changed"
                    );
                }
                Ok(found)
            }
            Err(failure) => {
                let removed = match failure {
                    Failure::Down(_) => state.apply(Vec::new()).1,
                    Failure::Bad(_) => Vec::new(),
                };
                let first = state.note_failure(failure.message());
                let kept = state.snapshot.models.len();
                drop(state);
                let message = failure.message();
                if first {
                    log::warn!(endpoint = self.base.as_str(), error = message, models = kept; "Ollama discovery failed");
                } else {
                    log::debug!(endpoint = self.base.as_str(), error = message, models = kept; "Ollama discovery still failing");
                }
                if !removed.is_empty() {
                    log::info!(endpoint = self.base.as_str(), removed = removed.join(","); "Ollama models dropped: Ollama does not answer");
                }
                Err(message.to_string())
            }
        }
    }

    /// One batch of context length reads: one `/api/show` at a time, no lock held across a
    /// call, none started after [`CONTEXT_BUDGET`] (at least one is) or once a request
    /// waits for a list read or the registry stops; a model no longer listed is skipped.
    /// Returns whether models never asked are left (the background thread goes on with
    /// them after whatever else is due); those whose read failed wait for the next round.
    fn fill_contexts(&self) -> bool {
        let began = self.clock.now();
        let wanted = lock(&self.state).take_unknown_contexts();
        let mut wanted = wanted.into_iter();
        let mut asked_any = false;
        for (name, digest) in wanted.by_ref() {
            let over =
                asked_any && self.clock.now().saturating_duration_since(began) >= CONTEXT_BUDGET;
            if over || self.stopping.load(Ordering::SeqCst) || self.asked.load(Ordering::SeqCst) {
                lock(&self.state).fetching.remove(&name);
                break;
            }
            if !lock(&self.state).context_still_wanted(&name, &digest) {
                lock(&self.state).fetching.remove(&name);
                continue;
            }
            asked_any = true;
            let result = self.source.context_length(&name);
            let mut state = lock(&self.state);
            state.fetching.remove(&name);
            match result {
                Ok(context) => state.learn_context(&name, digest, context),
                Err(f) => {
                    state.note_context_failed(&name, digest);
                    drop(state);
                    log::debug!(model = name.as_str(), error = f.message(); "Ollama context length not read");
                }
            }
        }
        let rest: Vec<(String, String)> = wanted.collect();
        let mut state = lock(&self.state);
        let mut never_asked = false;
        for (name, digest) in rest {
            state.fetching.remove(&name);
            never_asked |= state.failed_at(&name, &digest).is_none();
        }
        never_asked
    }

    fn wake_worker(&self) {
        if let Some(tx) = lock(&self.worker).as_ref() {
            // Full: a wake-up is already pending.
            let _ = tx.try_send(());
        }
    }

    /// Starts the background thread: a discovery at once, then every [`REDISCOVER_EVERY`],
    /// until `stop` is called. The thread holds no strong reference between rounds and
    /// never keeps the process alive.
    pub fn start(self: &Arc<Self>) {
        let mut worker = lock(&self.worker);
        if worker.is_some() || self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let weak = Arc::downgrade(self);
        let spawned = thread::Builder::new()
            .name("ollama".to_string())
            .spawn(move || background(weak, rx));
        match spawned {
            Ok(handle) => {
                *worker = Some(tx);
                *lock(&self.handle) = Some(handle);
            }
            Err(e) => {
                log::error!(error = e.to_string(); "cannot start Ollama discovery thread")
            }
        }
    }

    /// Ends the background thread (without waiting for a discovery in flight, which stops
    /// before its next `/api/show`).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        lock(&self.worker).take();
    }

    /// Whether the background thread has ended (false when it was never started).
    #[cfg(test)]
    fn worker_finished(&self) -> bool {
        lock(&self.handle)
            .as_ref()
            .is_some_and(thread::JoinHandle::is_finished)
    }

    pub fn status(&self) -> Status {
        let state = lock(&self.state);
        Status {
            endpoint: self.base.clone(),
            models_found: state.snapshot.models.len(),
            last_discovery: state.last_discovery,
            last_error: state.last_error.clone(),
        }
    }
}

/// The background thread: read the list, then a batch of missing context lengths, then wait
/// for the next round (or a wake-up to read the list for a request, or missing context
/// lengths, or the end).
fn background(weak: Weak<Ollama>, wake: Receiver<()>) {
    let mut next = Instant::now();
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        let woken = !wait.is_zero()
            && match wake.recv_timeout(wait) {
                Ok(()) => true,
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => return,
            };
        let Some(ollama) = weak.upgrade() else { return };
        if ollama.stopping.load(Ordering::SeqCst) {
            return;
        }
        if !woken || ollama.asked.swap(false, Ordering::SeqCst) {
            let listed = ollama.refresh_list();
            next = Instant::now() + REDISCOVER_EVERY;
            if listed.is_err() {
                // Logged and shown by `status`; an Ollama that answers its list badly is
                // not asked for more this round.
                continue;
            }
        }
        ollama.reading_contexts.store(true, Ordering::SeqCst);
        let more = ollama.fill_contexts();
        ollama.reading_contexts.store(false, Ordering::SeqCst);
        if more {
            // The rest after whatever else is due (a list read asked for, the next round).
            ollama.wake_worker();
        }
    }
}

mod source;

use source::Http;
pub use source::{DISCOVERY_TIMEOUT, Failure, Source, Tag};
#[cfg(test)]
use source::{parse_context_length, parse_tags};

#[cfg(test)]
mod tests;
