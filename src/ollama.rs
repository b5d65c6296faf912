//! Local Ollama models, found automatically.
//!
//! `GET $OLLAMA_HOST/api/tags` is read in the background at start (never delaying start-up),
//! every 60 s, and at once — at most once per 5 s — when an unknown `ollama-…` model is asked
//! for. Each model gets a short code: `ollama-` + its name with `:` and `/` turned into `-`
//! and a trailing `-latest` dropped. Its context length comes from `POST /api/show`, fetched
//! once per model.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::catalog::Model;
use crate::clock::Clock;

/// How often the model list is read again.
pub const REDISCOVER_EVERY: Duration = Duration::from_secs(60);
/// The shortest time between two discoveries triggered by requests for unknown models.
pub const ON_DEMAND_MIN_GAP: Duration = Duration::from_secs(5);
/// How long one discovery may take.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// As a catalog entry: provider Ollama, zero prices, temperature 0..2, no output clamp.
    pub fn to_model(&self) -> Model {
        todo!()
    }
}

/// The short code for an Ollama model name.
pub fn short_code(name: &str) -> String {
    let _ = name;
    todo!()
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
    pub last_error: Option<String>,
}

/// The registry of discovered models.
pub struct Ollama {
    base: String,
    clock: Arc<dyn Clock>,
}

impl Ollama {
    /// A registry for this `OLLAMA_HOST` value (see `catalog::ollama_base`). Does no I/O.
    pub fn new(host: Option<&str>, clock: Arc<dyn Clock>) -> Ollama {
        Ollama {
            base: crate::catalog::ollama_base(host),
            clock,
        }
    }

    /// The base URL (`http://localhost:11434`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The models found by the last successful discovery, sorted by short code.
    pub fn models(&self) -> Vec<OllamaModel> {
        // Placeholder until discovery lands (issue 5): nothing found.
        let _ = &self.clock;
        Vec::new()
    }

    /// Finds a model by short code or Ollama name (case-insensitive). An unknown name that
    /// starts with `ollama-` triggers a discovery first (at most once per
    /// [`ON_DEMAND_MIN_GAP`]).
    pub fn lookup(&self, name: &str) -> Lookup {
        let _ = name;
        Lookup::Unknown
    }

    /// One discovery round now: the number of models found, or why it failed (the last
    /// good list is kept).
    pub fn discover(&self) -> Result<usize, String> {
        Err("discovery not implemented yet".to_string())
    }

    /// Starts the background thread: a discovery at once, then every [`REDISCOVER_EVERY`],
    /// until `stop` is called.
    pub fn start(self: &Arc<Self>) {}

    /// Ends the background thread (without waiting for a discovery in flight).
    pub fn stop(&self) {}

    pub fn status(&self) -> Status {
        Status {
            endpoint: self.base.clone(),
            models_found: 0,
            last_discovery: None,
            last_error: None,
        }
    }
}
