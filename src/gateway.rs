//! The running gateway's shared state: the configuration snapshots (listed models, client
//! keys, memory), the client limits, sessions, breakers, the upstream client, Ollama
//! discovery, the supervised llama-server and the ledger (metrics and usage), and how a
//! model name is resolved to a model and where its requests go. The endpoints in
//! [`crate::api`] work on it.
//!
//! Locks here guard bookkeeping only. The listed models, the keys and the memory block are
//! `Arc` snapshots behind a lock taken for a pointer copy, so a request works on one
//! consistent view while a reload (SIGHUP) or a `PUT /api/memory` swaps in a new one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::LlamaConfig;
use crate::config::Routing;
use crate::env::Env;
use crate::error::Error;
use crate::http::{AllowList, Stats};
use crate::ledger::Ledger;
use crate::limits::{IpLimit, KeyLimits, Rate};
use crate::state::catalog::{Catalog, Model, Provider};
use crate::state::keys::{Keys, Models};
use crate::state::listed::Listed;
use crate::state::memory::Memory;
use crate::state::session::SessionStore;
use crate::upstream::breaker::{Breakers, Permit, State};
use crate::upstream::llama::Llama;
use crate::upstream::llama::process::KEY_ENV;
use crate::upstream::llama::slots::SlotGuard;
use crate::upstream::ollama::{Lookup, Ollama, OllamaModel};
use crate::upstream::scores::Scores;
use crate::upstream::{Target, Upstream};
use crate::util::clock::{Clock, SystemClock};
use crate::util::{Hangup, lock, unix_now};

/// What the gateway needs to start.
#[derive(Clone)]
pub struct Settings {
    pub models_path: PathBuf,
    pub memory_path: PathBuf,
    pub sessions_dir: PathBuf,
    /// `keys.csv`; when it does not exist, keys are not required.
    pub keys_path: PathBuf,
    /// Requests a minute per client address (`-ip-rate`); 0: no limit.
    pub ip_rate: u32,
    /// The per-IP bucket's size (`-ip-burst`); 0: the default for `ip_rate`.
    pub ip_burst: u32,
    pub admin_allow: AllowList,
    /// Who may read `/metrics` and `/api/usage`.
    pub metrics_allow: AllowList,
    /// The usage totals' file.
    pub usage_path: PathBuf,
    /// How often, at most, the usage file is written.
    pub usage_flush: Duration,
    pub env: Env,
    /// `-fallback` and `-auto`.
    pub routing: Routing,
    /// A local llama-server to supervise.
    pub llama: Option<LlamaConfig>,
    /// The highest `timeout` a request may ask for (`-max-timeout`).
    pub max_timeout: std::time::Duration,
    /// Silence after which a relayed stream gets a keep-alive (`-stream-keepalive`; zero:
    /// never).
    pub stream_keepalive: std::time::Duration,
}

/// The gateway's state, shared by every request.
pub struct Gateway {
    pub(crate) env: Env,
    pub(crate) catalog: Catalog,
    listed: Mutex<Arc<Listed>>,
    memory: Mutex<Arc<Memory>>,
    /// `None`: no `keys.csv`, keys not required.
    keys: Mutex<Option<Arc<Keys>>>,
    pub(crate) key_limits: KeyLimits,
    /// `None`: no per-IP limit.
    pub(crate) ip_limit: Option<IpLimit>,
    pub(crate) settings: Settings,
    pub(crate) sessions: Arc<SessionStore>,
    pub(crate) breakers: Breakers,
    /// How each model has been doing (for `auto`).
    pub(crate) scores: Scores,
    pub(crate) upstream: Upstream,
    pub(crate) ollama: Arc<Ollama>,
    pub(crate) llama: Option<Llama>,
    pub(crate) started: Instant,
    pub(crate) started_unix: u64,
    pub(crate) stats: Arc<Stats>,
    /// Metrics and usage: every model call is recorded there once.
    pub(crate) ledger: Arc<Ledger>,
    /// Each cloud provider's and Ollama's API base and chat target, made once (the
    /// environment does not change while the server runs).
    endpoints: Vec<(Provider, Endpoint)>,
}

/// Where a provider's requests go.
#[derive(Clone)]
struct Endpoint {
    base: Arc<str>,
    chat: Target,
}

impl Endpoint {
    /// A provider's, from the environment: the base URL, and chat completions with its key
    /// (Ollama: the real model name goes upstream, with no key and never through a proxy).
    fn of(provider: Provider, env: &Env) -> Endpoint {
        let base = provider.api_base(env);
        let url = format!("{base}/chat/completions");
        let chat = match provider {
            Provider::Ollama => Target::direct(url),
            _ => Target::new(url, provider.key(env).map(str::to_string)),
        };
        Endpoint {
            base: Arc::from(base),
            chat,
        }
    }
}

/// What a reload changed.
#[derive(Debug)]
pub struct Reloaded {
    /// Short codes now listed that were not.
    pub added: Vec<String>,
    /// Short codes no longer listed.
    pub removed: Vec<String>,
    /// Keys in `keys.csv` now; `None`: no file, keys not required.
    pub keys: Option<usize>,
}

/// A model resolved for one request, and where its requests go.
pub(crate) struct Resolved {
    pub model: Arc<Model>,
    /// Its chat-completions endpoint.
    pub target: Target,
    /// The base of its OpenAI-compatible API (`{base}/embeddings`, ...).
    pub base: Arc<str>,
}

impl Gateway {
    /// Loads `models.csv`, `memory.json` (embedded defaults when missing) and `keys.csv`. A
    /// file that exists but cannot be read or parsed is an error: the server does not start
    /// on a half-understood configuration.
    pub fn new(settings: Settings, stats: Arc<Stats>) -> Result<Gateway, Error> {
        Gateway::with_clock(settings, stats, Arc::new(SystemClock))
    }

    /// As [`Gateway::new`], with the clock for breakers and discovery.
    pub fn with_clock(
        settings: Settings,
        stats: Arc<Stats>,
        clock: Arc<dyn Clock>,
    ) -> Result<Gateway, Error> {
        let catalog = Catalog::embedded();
        let breakers = Breakers::new(clock.clone());
        let llama = match &settings.llama {
            Some(config) => {
                // Started again and ready: its breaker forgets the crashed predecessor.
                let (b, name) = (breakers.clone(), config.name.clone());
                let on_ready = Box::new(move || b.reset(&name));
                let mut config = config.clone();
                if config.api_key.is_none()
                    && let Some(raw) = settings.env.get(KEY_ENV)
                {
                    match crate::env::header_key(raw) {
                        Some(key) => config.api_key = Some(key.to_string()),
                        // Started without a key, llama-server is open to every local user:
                        // say so.
                        None => {
                            log::warn!(variable = KEY_ENV; "this key holds a control character (a line end inside?); it is not used, and llama-server starts without a key")
                        }
                    }
                }
                Some(Llama::new(config, clock.clone(), on_ready)?)
            }
            None => None,
        };
        let Files {
            listed,
            memory,
            keys,
        } = Files::load(&catalog, &settings, llama.as_ref())?;
        let ollama = Arc::new(Ollama::new(settings.env.get("OLLAMA_HOST"), clock.clone()));
        let ip_limit = (settings.ip_rate > 0).then(|| {
            IpLimit::new(
                Rate::new(settings.ip_rate, settings.ip_burst),
                clock.clone(),
            )
        });
        let endpoints = Provider::CLOUD
            .into_iter()
            .chain([Provider::Ollama])
            .map(|p| (p, Endpoint::of(p, &settings.env)))
            .collect();
        Ok(Gateway {
            env: settings.env.clone(),
            catalog,
            listed: Mutex::new(Arc::new(listed)),
            memory: Mutex::new(Arc::new(memory)),
            keys: Mutex::new(keys.map(Arc::new)),
            key_limits: KeyLimits::new(clock.clone()),
            ip_limit,
            sessions: Arc::new(SessionStore::new(settings.sessions_dir.clone())),
            breakers,
            scores: Scores::default(),
            upstream: Upstream::new(),
            ollama,
            llama,
            started: Instant::now(),
            started_unix: unix_now(),
            stats,
            ledger: Arc::new(Ledger::open(
                settings.usage_path.clone(),
                settings.usage_flush,
            )),
            settings,
            endpoints,
        })
    }

    /// The cloud models on offer now (not those the local model's name shadows).
    pub fn listed(&self) -> Arc<Listed> {
        lock(&self.listed).clone()
    }

    /// The discovered Ollama models on offer now: not one whose short code is the local
    /// model's name (a request for it goes to llama-server).
    pub(crate) fn ollama_models(&self) -> Vec<OllamaModel> {
        let mut models = self.ollama.models();
        if let Some(l) = &self.llama {
            models.retain(|m| !l.matches(&m.short));
        }
        models
    }

    /// The client keys now; `None` when keys are not required.
    pub(crate) fn keys(&self) -> Option<Arc<Keys>> {
        lock(&self.keys).clone()
    }

    /// The memory block now.
    pub fn memory(&self) -> Arc<Memory> {
        lock(&self.memory).clone()
    }

    /// Persists a new memory block, then puts it in place: what requests see is what is on
    /// disk. Saving and swapping happen under the memory lock, so two concurrent replacements
    /// cannot leave the file and the block in use disagreeing.
    pub fn replace_memory(&self, memory: Memory) -> Result<Arc<Memory>, Error> {
        let mut current = lock(&self.memory);
        memory.save(&self.settings.memory_path)?;
        *current = Arc::new(memory);
        Ok(current.clone())
    }

    pub fn ollama(&self) -> &Arc<Ollama> {
        &self.ollama
    }

    /// The supervised llama-server, when there is one.
    pub(crate) fn llama(&self) -> Option<&Llama> {
        self.llama.as_ref()
    }

    /// A WARN for each model named by `-fallback` or `-auto` that names no model this
    /// gateway offers now — a typo would otherwise switch a fallback off without a word.
    /// Names that may be Ollama's, found later, are said to be so.
    pub fn warn_unknown_routes(&self) {
        let routing = &self.settings.routing;
        let named = routing
            .fallbacks
            .iter()
            .flat_map(|(from, to)| std::iter::once(from).chain(to))
            .map(|n| ("-fallback", n))
            .chain(routing.auto.iter().map(|n| ("-auto", n)));
        let listed = self.listed();
        let mut warned: Vec<&str> = Vec::new();
        for (flag, name) in named {
            let known =
                listed.get(name).is_some() || self.llama.as_ref().is_some_and(|l| l.matches(name));
            if known || warned.iter().any(|w| w.eq_ignore_ascii_case(name)) {
                continue;
            }
            warned.push(name);
            let why = if self.catalog.get(name).is_some() {
                "a cloud model not in models.csv: skipped until it is listed"
            } else {
                "no such model here (skipped, unless Ollama reports a model of that name)"
            };
            log::warn!(flag = flag, model = name.as_str(); "{why}");
        }
    }

    /// Starts what runs in the background: Ollama discovery, the llama-server supervisor.
    pub fn start_background(&self) {
        self.ollama.start();
        if let Some(l) = &self.llama {
            l.start();
        }
    }

    /// sigorest is stopping: nothing in the background is started again (what runs goes on
    /// serving requests in flight).
    pub fn begin_stop(&self) {
        self.ollama.stop();
        if let Some(l) = &self.llama {
            l.no_more_restarts();
        }
    }

    /// Stops what runs in the background and waits for it (llama-server included).
    pub fn stop_background(&self) {
        self.ollama.stop();
        if let Some(l) = &self.llama {
            l.stop();
        }
    }

    /// A slot of the local model for one request, taken before its upstream call and held
    /// until the answer has been sent (a stream: until it ends). `None` for every other
    /// model. 429 `model_busy` when none comes free in time.
    pub(crate) async fn local_slot(
        &self,
        model: &Model,
        hangup: &Hangup,
    ) -> Result<Option<SlotGuard>, Error> {
        match &self.llama {
            Some(l) if model.provider == Provider::Llama => l.slot(hangup).await.map(Some),
            _ => Ok(None),
        }
    }

    /// Reads `models.csv`, `memory.json` and `keys.csv` again. On any error the old
    /// configuration stays, all of it, and the error (naming file, line and column) is
    /// returned. The counters of keys still in the file are kept (their limits may change).
    pub fn reload(&self) -> Result<Reloaded, Error> {
        let Files {
            listed,
            memory,
            keys,
        } = Files::load(&self.catalog, &self.settings, self.llama.as_ref())?;
        let old = self.listed();
        let added = listed.missing_from(&old);
        let removed = old.missing_from(&listed);
        *lock(&self.listed) = Arc::new(listed);
        *lock(&self.memory) = Arc::new(memory);
        let count = keys.as_ref().map(Keys::len);
        if keys.is_none() && self.keys().is_some() {
            log::warn!(
                file:% = self.settings.keys_path.display();
                "keys.csv is gone: client keys are off, every client the allow lists let in may use every model"
            );
        }
        match &keys {
            Some(keys) => self.key_limits.retain(|name| keys.has_name(name)),
            None => self.key_limits.retain(|_| false),
        }
        *lock(&self.keys) = keys.map(Arc::new);
        Ok(Reloaded {
            added,
            removed,
            keys: count,
        })
    }

    /// A model name as its short code, when it names the local, a listed or a discovered
    /// model, looked up in the order [`Gateway::resolve`] follows (else as written). Never
    /// waits for a discovery.
    pub(crate) fn short_code(&self, name: &str) -> String {
        if let Some(l) = self.llama.as_ref().filter(|l| l.matches(name)) {
            return l.model().short.clone();
        }
        if let Some(m) = self.listed().get(name) {
            return m.short.clone();
        }
        match self.ollama.lookup_known(name) {
            Some(short) => short,
            None => name.to_string(),
        }
    }

    /// The `-auto` models as `auto` tries them: healthiest first (see [`Scores::rank`]),
    /// those with an open breaker left out and returned apart, as short codes.
    pub(crate) fn auto_order(&self) -> (Vec<String>, Vec<String>) {
        let names: Vec<String> = self
            .settings
            .routing
            .auto
            .iter()
            .map(|m| self.short_code(m))
            .collect();
        let open: Vec<String> = self
            .breakers
            .snapshot()
            .into_iter()
            .filter(|(_, s)| s.state == State::Open)
            .map(|(m, _)| m)
            .collect();
        let ranked = self.scores.rank(&names, |m| open.iter().any(|o| o == m));
        let blocked = names.into_iter().filter(|m| open.contains(m)).collect();
        (ranked, blocked)
    }

    /// Where a provider's requests go (made once at start-up; made now for a provider that
    /// has none there, the local llama-server's being resolved apart).
    fn endpoint(&self, provider: Provider) -> Endpoint {
        match self.endpoints.iter().find(|(p, _)| *p == provider) {
            Some((_, e)) => e.clone(),
            None => Endpoint::of(provider, &self.env),
        }
    }

    /// A call's place with the model's breaker: 503 `circuit_open` while it is open.
    pub(crate) fn admit(&self, short: &str) -> Result<Permit, Error> {
        self.breakers
            .admit(short)
            .map_err(|retry_after_s| Error::CircuitOpen {
                model: short.to_string(),
                retry_after_s,
            })
    }

    /// Finds a model: the local llama-server's (503 `model_loading` until it is ready), a
    /// listed cloud model by short code or id, else a discovered Ollama model.
    /// It may wait for an Ollama discovery: never on an event loop (see
    /// [`Gateway::resolve_now`]).
    pub(crate) fn resolve(&self, name: &str) -> Result<Resolved, Error> {
        // (`lookup` always answers: the `None` arm cannot be taken.)
        self.resolve_with(name, |n| Some(self.ollama.lookup(n)))
            .unwrap_or_else(|| {
                Err(Error::Internal {
                    message: "internal error: no model lookup".to_string(),
                })
            })
    }

    /// [`Gateway::resolve`] without waiting: `None` when the name needs an Ollama
    /// discovery first (then only `resolve`, on a blocking thread, may answer).
    pub(crate) fn resolve_now(&self, name: &str) -> Option<Result<Resolved, Error>> {
        self.resolve_with(name, |n| self.ollama.lookup_now(n))
    }

    fn resolve_with(
        &self,
        name: &str,
        lookup: impl FnOnce(&str) -> Option<Lookup>,
    ) -> Option<Result<Resolved, Error>> {
        if let Some(l) = self.llama.as_ref().filter(|l| l.matches(name)) {
            return Some(l.chat_target().map(|target| Resolved {
                model: Arc::new(l.model().clone()),
                base: Arc::from(l.api_base().unwrap_or_default()),
                target,
            }));
        }
        if let Some(model) = self.listed().get(name) {
            let e = self.endpoint(model.provider);
            return Some(Ok(Resolved {
                model: model.clone(),
                target: e.chat,
                base: e.base,
            }));
        }
        let not_found = |reason: String| Error::ModelNotFound {
            model: name.to_string(),
            reason,
        };
        Some(match lookup(name)? {
            // The real Ollama name goes upstream (`to_model` makes it the id), with no key
            // and never through a proxy.
            Lookup::Found(m) => {
                let e = self.endpoint(Provider::Ollama);
                Ok(Resolved {
                    model: Arc::new(m.to_model()),
                    target: e.chat,
                    base: e.base,
                })
            }
            Lookup::Gone => Err(not_found(format!(
                "Ollama at {} no longer reports this model",
                self.ollama.base_url()
            ))),
            Lookup::Unknown => Err(not_found(match self.catalog.get(name) {
                Some(m) if self.llama.as_ref().is_some_and(|l| l.matches(&m.short)) => format!(
                    "'{}' is the local llama-server's model here; the cloud model of that name is not offered",
                    m.short
                ),
                // The whitelist's path is the server's business, not the client's.
                Some(m) => format!(
                    "'{}' is in the catalog but not enabled in the gateway's models.csv",
                    m.short
                ),
                // An `ollama-…` code or a tagged name (`phi4:14b`) was meant for Ollama,
                // which has just been asked (or was less than 5 s ago).
                None if name.to_lowercase().starts_with("ollama-") || name.contains(':') => {
                    format!(
                        "Ollama at {} does not report this model (see GET /v1/models; \
                         Ollama is asked again at most every 5 s)",
                        self.ollama.base_url()
                    )
                }
                None => "unknown model; GET /v1/models lists the available ones".to_string(),
            })),
        })
    }
}

/// The listed cloud models without those whose short code names the local model: that
/// name goes to llama-server, so the cloud model is not offered at all — not listed, and
/// not by its upstream id either, which would otherwise reach it under the local model's
/// short code (one breaker, one session, one line in the metrics and one entry in a key's
/// models for two models).
fn without_shadowed(mut listed: Listed, llama: Option<&Llama>) -> Listed {
    if let Some(l) = llama {
        listed.models.retain(|m| !l.matches(&m.short));
    }
    listed
}

/// What the gateway reads from its files, at start-up and at each reload.
struct Files {
    listed: Listed,
    memory: Memory,
    keys: Option<Keys>,
}

impl Files {
    /// Reads `models.csv` (without the cloud models the local model's name shadows),
    /// `memory.json` and `keys.csv`; the first that does not parse is the error.
    fn load(catalog: &Catalog, settings: &Settings, llama: Option<&Llama>) -> Result<Files, Error> {
        Ok(Files {
            listed: without_shadowed(Listed::load(catalog, &settings.models_path)?, llama),
            memory: Memory::load(&settings.memory_path)?.unwrap_or_default(),
            keys: load_keys(catalog, &settings.keys_path)?,
        })
    }
}

/// Reads `keys.csv`, with a WARN for an empty set (nobody gets in) and for each model code
/// that is neither in the catalog nor an Ollama code (a typo lets nobody use that model).
fn load_keys(catalog: &Catalog, path: &std::path::Path) -> Result<Option<Keys>, Error> {
    let Some(keys) = Keys::load(path)? else {
        return Ok(None);
    };
    let file = path.display().to_string();
    if keys.is_empty() {
        log::warn!(file = file.as_str(); "keys.csv lists no key: every API request will be refused with 401");
    }
    for (name, code, hint) in unmatched_codes(catalog, &keys) {
        log::warn!(file = file.as_str(), key = name.as_str(), code = code.as_str(), hint = hint.as_str(); "unknown model short code in keys.csv: no model matches it");
    }
    Ok(Some(keys))
}

/// The model codes of `keys.csv` that match no catalog model and are not Ollama codes
/// (those come and go with discovery): key name, code, and a hint when the code is a
/// catalog model's upstream id.
fn unmatched_codes(catalog: &Catalog, keys: &Keys) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for key in keys.iter() {
        let Models::Only(codes) = &key.models else {
            continue;
        };
        for code in codes {
            let known = code.text.starts_with("ollama-")
                || (code.prefix && "ollama-".starts_with(&code.text))
                || catalog.all().iter().any(|m| code.matches(&m.short));
            if known {
                continue;
            }
            let hint = catalog
                .all()
                .iter()
                .find(|m| m.id.eq_ignore_ascii_case(&code.text))
                .map(|m| format!("use its short code {}", m.short))
                .unwrap_or_default();
            out.push((key.name.clone(), code.text.clone(), hint));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_that_match_no_model_are_found() {
        let hash = format!("sha256:{}", "0".repeat(64));
        let text = format!(
            "a, {hash}, gpt41|GPT*|ollama-*|ollama-qwen3|oll*|nonesuch|gpt-4.1\nb, sha256:{}, *\n",
            "1".repeat(64)
        );
        let keys = Keys::parse(&text, std::path::Path::new("keys.csv")).unwrap();
        let found = unmatched_codes(&Catalog::embedded(), &keys);
        assert_eq!(
            found,
            [
                ("a".to_string(), "nonesuch".to_string(), String::new()),
                (
                    "a".to_string(),
                    "gpt-4.1".to_string(),
                    "use its short code gpt41".to_string()
                ),
            ]
        );
    }
}
