//! The running gateway's shared state: the configuration snapshots (listed models, memory),
//! sessions, breakers, the upstream client and Ollama discovery, and how a model name is
//! resolved to a model and where its requests go. The endpoints in [`crate::api`] work on it.
//!
//! Locks here guard bookkeeping only. The listed models and the memory block are `Arc`
//! snapshots behind a lock taken for a pointer copy, so a request works on one consistent
//! view while a reload (SIGHUP) or a `PUT /api/memory` swaps in a new one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::env::Env;
use crate::error::Error;
use crate::http::{AllowList, Stats};
use crate::state::catalog::{Catalog, Model, Provider};
use crate::state::listed::Listed;
use crate::state::memory::Memory;
use crate::state::session::SessionStore;
use crate::upstream::breaker::Breakers;
use crate::upstream::ollama::{Lookup, Ollama};
use crate::upstream::{Target, Upstream};
use crate::util::clock::{Clock, SystemClock};
use crate::util::{lock, unix_now};

/// What the gateway needs to start.
#[derive(Clone)]
pub struct Settings {
    pub models_path: PathBuf,
    pub memory_path: PathBuf,
    pub sessions_dir: PathBuf,
    pub admin_allow: AllowList,
    pub env: Env,
    /// The highest `timeout` a request may ask for (`-max-timeout`).
    pub max_timeout: std::time::Duration,
}

/// The gateway's state, shared by every request.
pub struct Gateway {
    pub(crate) env: Env,
    pub(crate) catalog: Catalog,
    listed: Mutex<Arc<Listed>>,
    memory: Mutex<Arc<Memory>>,
    pub(crate) settings: Settings,
    pub(crate) sessions: Arc<SessionStore>,
    pub(crate) breakers: Breakers,
    pub(crate) upstream: Upstream,
    pub(crate) ollama: Arc<Ollama>,
    pub(crate) started: Instant,
    pub(crate) started_unix: u64,
    pub(crate) stats: Arc<Stats>,
}

/// A model resolved for one request, and where its requests go.
pub(crate) struct Resolved {
    pub model: Model,
    pub target: Target,
}

impl Gateway {
    /// Loads `models.csv` and `memory.json` (embedded defaults when missing). A file that
    /// exists but cannot be read or parsed is an error: the server does not start on a
    /// half-understood configuration.
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
        let listed = Listed::load(&catalog, &settings.models_path)?;
        let memory = Memory::load(&settings.memory_path)?.unwrap_or_default();
        let ollama = Arc::new(Ollama::new(settings.env.get("OLLAMA_HOST"), clock.clone()));
        Ok(Gateway {
            env: settings.env.clone(),
            catalog,
            listed: Mutex::new(Arc::new(listed)),
            memory: Mutex::new(Arc::new(memory)),
            sessions: Arc::new(SessionStore::new(settings.sessions_dir.clone())),
            breakers: Breakers::new(clock),
            upstream: Upstream::new(),
            ollama,
            started: Instant::now(),
            started_unix: unix_now(),
            stats,
            settings,
        })
    }

    /// The cloud models on offer now.
    pub fn listed(&self) -> Arc<Listed> {
        lock(&self.listed).clone()
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

    /// Reads `models.csv` and `memory.json` again. On any error the old configuration stays
    /// and the error (naming file, line and column) is returned. Returns the short codes
    /// added and removed.
    pub fn reload(&self) -> Result<(Vec<String>, Vec<String>), Error> {
        let listed = Listed::load(&self.catalog, &self.settings.models_path)?;
        let memory = Memory::load(&self.settings.memory_path)?.unwrap_or_default();
        let old = self.listed();
        let added = listed.missing_from(&old);
        let removed = old.missing_from(&listed);
        *lock(&self.listed) = Arc::new(listed);
        *lock(&self.memory) = Arc::new(memory);
        Ok((added, removed))
    }

    /// Finds a model: a listed cloud model by short code or id, else a discovered Ollama model.
    pub(crate) fn resolve(&self, name: &str) -> Result<Resolved, Error> {
        if let Some(model) = self.listed().get(name) {
            let target = Target::new(
                model.provider.chat_url(&self.env),
                model.provider.key(&self.env).map(str::to_string),
            );
            return Ok(Resolved {
                model: model.clone(),
                target,
            });
        }
        let not_found = |reason: String| Error::ModelNotFound {
            model: name.to_string(),
            reason,
        };
        match self.ollama.lookup(name) {
            // The real Ollama name goes upstream (`to_model` makes it the id), with no key
            // and never through a proxy.
            Lookup::Found(m) => Ok(Resolved {
                model: m.to_model(),
                target: Target::direct(Provider::Ollama.chat_url(&self.env)),
            }),
            Lookup::Gone => Err(not_found(format!(
                "Ollama at {} no longer reports this model",
                self.ollama.base_url()
            ))),
            Lookup::Unknown if name.to_lowercase().starts_with("ollama-") => {
                Err(not_found(format!(
                    "Ollama at {} does not report this model (see GET /v1/models)",
                    self.ollama.base_url()
                )))
            }
            Lookup::Unknown => Err(not_found(match self.catalog.get(name) {
                // The whitelist's path is the server's business, not the client's.
                Some(m) => format!(
                    "'{}' is in the catalog but not enabled in the gateway's models.csv",
                    m.short
                ),
                None => "unknown model; GET /v1/models lists the available ones".to_string(),
            })),
        }
    }
}
