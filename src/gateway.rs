//! The application: shared state, routing, and the small endpoints (models, health, memory).
//! Chat completions live in `relay`.
//!
//! Locks here guard bookkeeping only. The listed models and the memory block are
//! `Arc` snapshots behind a lock taken for a pointer copy, so a request works on one
//! consistent view while a reload (SIGHUP) or a `PUT /api/memory` swaps in a new one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::access::AllowList;
use crate::breaker::{Breakers, State, Status as BreakerStatus};
use crate::catalog::{self, Catalog, Model, Provider};
use crate::clock::{Clock, SystemClock};
use crate::env::Env;
use crate::error::Error;
use crate::http::{Handler, Request, Response, Stats, lock};
use crate::memory::Memory;
use crate::ollama::{Lookup, Ollama};
use crate::session::SessionStore;
use crate::upstream::{Target, Upstream};

/// What the application needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub models_path: PathBuf,
    pub memory_path: PathBuf,
    pub sessions_dir: PathBuf,
    pub admin_allow: AllowList,
    pub env: Env,
}

/// The cloud models on offer, with an index by lower-case short code and id.
#[derive(Debug, Default)]
pub struct Listed {
    pub models: Vec<Model>,
    index: HashMap<String, usize>,
}

impl Listed {
    fn new(models: Vec<Model>) -> Listed {
        let mut index = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            index.entry(m.id.to_lowercase()).or_insert(i);
        }
        // Short codes win over ids when they collide.
        for (i, m) in models.iter().enumerate() {
            index.insert(m.short.to_lowercase(), i);
        }
        Listed { models, index }
    }

    fn get(&self, name: &str) -> Option<&Model> {
        self.index
            .get(&name.to_lowercase())
            .map(|&i| &self.models[i])
    }
}

/// An endpoint's handler.
type Endpoint = fn(&App, &Request) -> Result<Response, Error>;

/// The gateway.
pub struct App {
    pub(crate) env: Env,
    catalog: Catalog,
    listed: Mutex<Arc<Listed>>,
    memory: Mutex<Arc<Memory>>,
    settings: Settings,
    pub(crate) sessions: Arc<SessionStore>,
    pub(crate) breakers: Breakers,
    pub(crate) upstream: Upstream,
    pub(crate) ollama: Arc<Ollama>,
    started: Instant,
    started_unix: u64,
    stats: Arc<Stats>,
}

/// A model resolved for one request.
pub(crate) struct Resolved {
    pub model: Model,
    pub target: Target,
}

impl App {
    /// Loads `models.csv` and `memory.json` (embedded defaults when missing). A file that
    /// exists but cannot be read or parsed is an error: the server does not start on a
    /// half-understood configuration.
    pub fn new(settings: Settings, stats: Arc<Stats>) -> Result<App, Error> {
        App::with_clock(settings, stats, Arc::new(SystemClock))
    }

    /// As [`App::new`], with the clock for breakers and discovery.
    pub fn with_clock(
        settings: Settings,
        stats: Arc<Stats>,
        clock: Arc<dyn Clock>,
    ) -> Result<App, Error> {
        let catalog = Catalog::embedded();
        let listed = load_listed(&catalog, &settings.models_path)?;
        let memory = Memory::load(&settings.memory_path)?.unwrap_or_default();
        let ollama = Arc::new(Ollama::new(settings.env.get("OLLAMA_HOST"), clock.clone()));
        Ok(App {
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

    pub fn ollama(&self) -> &Arc<Ollama> {
        &self.ollama
    }

    /// Reads `models.csv` and `memory.json` again. On any error the old configuration stays
    /// and the error (naming file, line and column) is returned. Returns the short codes
    /// added and removed.
    pub fn reload(&self) -> Result<(Vec<String>, Vec<String>), Error> {
        let listed = load_listed(&self.catalog, &self.settings.models_path)?;
        let memory = Memory::load(&self.settings.memory_path)?.unwrap_or_default();
        let old = self.listed();
        let added = listed
            .models
            .iter()
            .filter(|m| old.get(&m.short).is_none())
            .map(|m| m.short.clone())
            .collect();
        let removed = old
            .models
            .iter()
            .filter(|m| listed.get(&m.short).is_none())
            .map(|m| m.short.clone())
            .collect();
        *lock(&self.listed) = Arc::new(listed);
        *lock(&self.memory) = Arc::new(memory);
        Ok((added, removed))
    }

    /// Finds a model: a listed cloud model by short code or id, else a discovered Ollama model.
    pub(crate) fn resolve(&self, name: &str) -> Result<Resolved, Error> {
        if let Some(model) = self.listed().get(name) {
            let url = model.provider.chat_url(&self.env);
            let target = Target {
                // No proxy can reach a loopback upstream for us.
                direct: is_loopback_url(&url),
                url,
                key: model.provider.key(&self.env).map(str::to_string),
            };
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
            Lookup::Found(m) => {
                // The real Ollama name goes upstream (`to_model` makes it the id), with no
                // key and never through a proxy.
                let target = Target {
                    url: Provider::Ollama.chat_url(&self.env),
                    key: None,
                    direct: true,
                };
                Ok(Resolved {
                    model: m.to_model(),
                    target,
                })
            }
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
                Some(m) => format!(
                    "'{}' is in the catalog but not enabled in {}",
                    m.short,
                    self.settings.models_path.display()
                ),
                None => "unknown model; GET /v1/models lists the available ones".to_string(),
            })),
        }
    }

    fn route(&self, req: &Request) -> Result<Response, Error> {
        let path = req
            .path
            .strip_prefix("/v1")
            .filter(|p| p.starts_with('/'))
            .unwrap_or(&req.path);
        let (allow, handler): (&'static str, Endpoint) = match path {
            "/chat/completions" => ("POST", |app, req| Ok(app.chat(req))),
            "/models" if req.path.starts_with("/v1/") || req.path == "/models" => {
                ("GET, HEAD", App::openai_models)
            }
            "/api/models" if req.path == path => ("GET, HEAD", App::api_models),
            "/api/health" if req.path == path => ("GET, HEAD", App::health),
            "/api/memory" if req.path == path => ("GET, HEAD, PUT", App::memory_endpoint),
            _ => {
                return Err(Error::NotFound {
                    path: req.path.clone(),
                });
            }
        };
        if !allow.split(", ").any(|m| m == req.method) {
            return Err(Error::MethodNotAllowed {
                method: req.method.clone(),
                allow,
            });
        }
        handler(self, req)
    }

    fn openai_models(&self, _req: &Request) -> Result<Response, Error> {
        let mut data: Vec<Value> = self
            .listed()
            .models
            .iter()
            .map(|m| json!({"id": m.short, "object": "model", "created": self.started_unix, "owned_by": m.provider.name()}))
            .collect();
        data.extend(
            self.ollama
                .models()
                .iter()
                .map(|m| json!({"id": m.short, "object": "model", "created": self.started_unix, "owned_by": "ollama"})),
        );
        Ok(Response::json(
            200,
            &json!({"object": "list", "data": data}),
        ))
    }

    fn api_models(&self, _req: &Request) -> Result<Response, Error> {
        let info = |m: &Model, key_set: bool| {
            json!({
                "short": m.short, "id": m.id, "provider": m.provider.name(),
                "context_tokens": m.context, "max_output_tokens": m.max_output,
                "input_price_per_million": m.input_price, "output_price_per_million": m.output_price,
                "temperature": {"min": m.min_temp, "max": m.max_temp},
                "uses_max_completion_tokens": m.completion_tokens,
                "key_env": m.provider.key_env(), "key_set": key_set,
            })
        };
        let mut data: Vec<Value> = self
            .listed()
            .models
            .iter()
            .map(|m| info(m, m.provider.key(&self.env).is_some()))
            .collect();
        data.extend(
            self.ollama
                .models()
                .iter()
                .map(|m| info(&m.to_model(), true)),
        );
        Ok(Response::json(
            200,
            &json!({"object": "list", "data": data}),
        ))
    }

    fn health(&self, _req: &Request) -> Result<Response, Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let listed = self.listed();
        let ollama_models = self.ollama.models();
        let mut breakers: BTreeMap<String, BreakerStatus> = listed
            .models
            .iter()
            .map(|m| {
                (
                    m.short.clone(),
                    BreakerStatus {
                        state: State::Closed,
                        consecutive_failures: 0,
                        retry_in_s: 0,
                    },
                )
            })
            .collect();
        breakers.extend(self.breakers.snapshot());
        let blocked = |short: &str| {
            breakers
                .get(short)
                .is_some_and(|b| b.state != State::Closed)
        };
        let available = listed
            .models
            .iter()
            .filter(|m| m.provider.key(&self.env).is_some() && !blocked(&m.short))
            .count()
            + ollama_models.iter().filter(|m| !blocked(&m.short)).count();
        let degraded = breakers.values().any(|b| b.state != State::Closed);
        let providers: serde_json::Map<String, Value> =
            [Provider::Mammouth, Provider::Moonshot, Provider::Zai]
                .iter()
                .map(|p| {
                    (
                        p.name().to_string(),
                        json!({"key_set": p.key(&self.env).is_some(), "key_env": p.key_env()}),
                    )
                })
                .collect();
        let body = json!({
            "status": if degraded { "degraded" } else { "ok" },
            "version": crate::VERSION,
            "uptime_s": self.started.elapsed().as_secs(),
            "available_models": available,
            "memory_set": !self.memory().content.is_empty(),
            "workers": {"total": self.stats.workers_total.load(Relaxed), "busy": self.stats.workers_busy.load(Relaxed)},
            "queue": {"depth": self.stats.queue_depth.load(Relaxed), "capacity": self.stats.queue_capacity.load(Relaxed)},
            "connections": self.stats.connections_open.load(Relaxed),
            "circuit_breakers": breakers,
            "providers": providers,
            "ollama": self.ollama.status(),
        });
        Ok(Response::json(200, &body))
    }

    fn memory_endpoint(&self, req: &Request) -> Result<Response, Error> {
        if req.method == "PUT" {
            if !self.settings.admin_allow.allows(req.peer) {
                return Err(Error::AdminOnly { ip: req.peer });
            }
            let memory = Memory::parse(&req.body, Path::new("request body")).map_err(|e| match e {
                Error::File { line, column, message, .. } => Error::invalid(format!(
                    "memory must be {{\"content\": \"...\", \"cache\": true}}: {message} at line {line}, column {column}"
                )),
                other => other,
            })?;
            // Persist first: the answer says what is on disk.
            memory.save(&self.settings.memory_path)?;
            *lock(&self.memory) = Arc::new(memory);
            log::info!(chars = self.memory().content.chars().count(), ip = req.peer.to_string(); "memory replaced");
        }
        Ok(Response::json(
            200,
            &serde_json::to_value(&*self.memory()).unwrap_or_default(),
        ))
    }
}

impl Handler for App {
    fn handle(&self, req: &Request) -> Response {
        match self.route(req) {
            Ok(resp) => resp,
            Err(e) => e.to_response(),
        }
    }
}

/// The whitelist file (or the embedded default when it does not exist), applied to the
/// catalog. Unknown short codes are ignored with a WARN naming them.
fn load_listed(catalog: &Catalog, path: &Path) -> Result<Listed, Error> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|e| Error::File {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!(
                "not UTF-8 (bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            catalog::DEFAULT_WHITELIST.to_string()
        }
        Err(e) => return Err(Error::io(path, &e)),
    };
    let (models, unknown) = catalog.select(&catalog::parse_whitelist(&text));
    for code in unknown {
        log::warn!(file = path.display().to_string(), code = code.as_str(); "unknown model short code ignored");
    }
    Ok(Listed::new(models))
}

/// Whether a URL's host is a loopback address (no proxy can reach it for us).
pub(crate) fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("http://127.0.0.1:8080/v1/chat/completions"));
        assert!(is_loopback_url("http://localhost/v1"));
        assert!(is_loopback_url("http://[::1]:9/x"));
        assert!(!is_loopback_url(
            "https://api.mammouth.ai/v1/chat/completions"
        ));
        assert!(!is_loopback_url("http://192.168.1.2:11434"));
    }

    #[test]
    fn listed_index_prefers_short_codes() {
        let c = Catalog::embedded();
        let l = Listed::new(vec![
            c.get("gpt41").unwrap().clone(),
            c.get("kimi").unwrap().clone(),
        ]);
        assert_eq!(l.get("GPT-4.1").unwrap().short, "gpt41");
        assert_eq!(l.get("Kimi").unwrap().short, "kimi");
        assert!(l.get("claude-h").is_none());
    }
}
