//! Starting and running the server: configuration → files → TLS → listeners → signals.
//!
//! [`start`] brings everything up and returns at once (tests use it in-process on port 0);
//! [`run`] is what the binary does: start, then wait for signals — SIGTERM/SIGINT stop
//! accepting and let requests in flight finish for up to `-shutdown-grace`; SIGHUP reloads
//! `models.csv`, `memory.json` and `keys.csv`, rediscovers Ollama and checks the TLS
//! certificate (which is also checked once a day).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::env::Env;
use crate::error::Error;
use crate::gateway::{Gateway, Settings};
use crate::http::tls::ServedCert;
use crate::http::{self, ListenerConfig, ServerConfig, Stats};
use crate::state::catalog::Provider;

/// A started server.
pub struct Running {
    server: http::Server,
    app: Arc<Gateway>,
    /// The HTTPS listener's certificate, when that listener is on.
    cert: Option<Arc<ServedCert>>,
    /// The plain HTTP address, when that listener is on.
    pub http: Option<SocketAddr>,
    /// The HTTPS address, when that listener is on.
    pub https: Option<SocketAddr>,
}

impl Running {
    pub fn app(&self) -> &Arc<Gateway> {
        &self.app
    }

    /// Set, it ends a running [`Running::stop`]'s grace at once.
    pub fn grace_cutter(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.server.grace_cutter()
    }

    /// Stops accepting, lets requests in flight finish for up to `grace`, stops discovery,
    /// then stops llama-server (which serves the requests in flight until then) and writes
    /// the usage totals (after the last request has been counted). Returns whether every
    /// request finished in time.
    pub fn stop(self, grace: Duration) -> bool {
        self.app.begin_stop();
        if let Some(cert) = &self.cert {
            cert.stop_checks();
        }
        let clean = self.server.shutdown(grace);
        self.app.stop_background();
        self.app.ledger.stop();
        clean
    }

    /// What SIGHUP does: [`reload`] the files, and check the TLS certificate (a renewal
    /// or changed files reach new connections; a broken file keeps the one in use).
    pub fn reload(&self) {
        reload(&self.app);
        if let Some(cert) = &self.cert {
            cert.check_logged();
        }
    }
}

/// Starts the gateway with this configuration and environment, and returns at once.
pub fn start(config: &Config, env: Env) -> Result<Running, Error> {
    let on = |port: u16| (port != 0).then(|| SocketAddr::new(config.bind, port));
    start_on(config, env, on(config.http_port), on(config.https_port))
}

/// As [`start`], on these listen addresses (port 0: the kernel picks one; `None`: off)
/// instead of the configured ports.
pub fn start_on(
    config: &Config,
    env: Env,
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
) -> Result<Running, Error> {
    let stats = Arc::new(Stats::default());
    let settings = Settings {
        models_path: config.models.clone(),
        memory_path: config.memory.clone(),
        sessions_dir: config.sessions.clone(),
        keys_path: config.keys.clone(),
        ip_rate: config.ip_rate,
        ip_burst: config.ip_burst,
        admin_allow: config.admin_allow.clone(),
        metrics_allow: config.metrics_allow(),
        usage_path: config.usage_path(),
        usage_flush: config.usage_flush,
        env,
        routing: config.routing.clone(),
        llama: config.llama.clone(),
        max_timeout: config.max_timeout,
        stream_keepalive: config.stream_keepalive,
    };
    let app = Arc::new(Gateway::new(settings, stats.clone())?);

    let (listeners, cert) = listeners(config, http_addr, https_addr)?;
    let server_config = ServerConfig {
        listeners: listeners.clone(),
        workers: config.workers,
        queue: config.queue,
        limits: http::Limits {
            per_ip: config.max_conns_per_ip,
            body_total: config.max_body_total,
            ..http::Limits::default()
        },
        timeouts: http::Timeouts::default(),
        stats,
    };
    let handler: Arc<dyn http::Handler> = Arc::new(crate::api::Router::new(app.clone()));
    let server = http::start(server_config, handler).map_err(|e| Error::Listen {
        addr: listeners
            .first()
            .map_or_else(|| SocketAddr::new(config.bind, 0), |l| l.addr),
        message: e.to_string(),
    })?;
    let addrs = server.local_addrs().to_vec();
    let mut addrs = addrs.into_iter();
    let http = http_addr.and_then(|_| addrs.next());
    let https = https_addr.and_then(|_| addrs.next());
    app.warn_unknown_routes();
    app.start_background();
    app.ledger.start();
    if let Some(cert) = &cert {
        cert.start_checks();
    }

    log_started(config, &app, http, https);
    Ok(Running {
        server,
        app,
        cert,
        http,
        https,
    })
}

/// The one INFO line that says the server is up: listeners, allow lists, what it offers,
/// which provider keys are set (names only), client keys and the per-IP limit.
fn log_started(
    config: &Config,
    app: &Gateway,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
) {
    let keys: Vec<&str> = Provider::CLOUD
        .into_iter()
        .filter(|p| p.key(&app.env).is_some())
        .filter_map(Provider::key_env)
        .collect();
    log::info!(
        version = crate::VERSION,
        http = http.map_or("off".to_string(), |a| a.to_string()),
        http_allow = config.http_allow.to_string(),
        https = https.map_or("off".to_string(), |a| a.to_string()),
        https_allow = config.https_allow.to_string(),
        models = app.listed().models.len(),
        memory = if app.memory().content.is_empty() { "empty" } else { "set" },
        keys = if keys.is_empty() { "none".to_string() } else { keys.join(",") },
        llama = config.llama.as_ref().map_or("off", |l| l.name.as_str()),
        client_keys = client_keys(app),
        ip_rate = app.ip_limit.as_ref().map_or("off".to_string(), |l| {
            let rate = l.rate();
            format!("{}/min,burst={}", rate.per_minute, rate.burst)
        }),
        usage = config.usage_path().display().to_string(),
        workers = config.workers;
        "sigorest started"
    );
    for var in Provider::unusable_keys(&app.env) {
        log::warn!(variable = var; "this provider key holds a control character (a line end inside?); it is not used and its models answer 503 provider_not_configured");
    }
    if let Some(name) = config.llama.as_ref().map(|l| l.name.as_str())
        && let Some(m) = app.catalog.get(name)
    {
        let why = if m.short.eq_ignore_ascii_case(name.trim()) {
            "-llama-name is also a cloud model's short code; the local model wins and that cloud model is not offered"
        } else {
            "-llama-name is also a cloud model's upstream id; the local model wins for that name, the cloud model keeps its short code"
        };
        log::warn!(name = name, shadowed = m.short.as_str(); "{why}");
    }
}

/// The listeners asked for: plain HTTP, and HTTPS with its certificate (generated when
/// missing), which is returned too.
fn listeners(
    config: &Config,
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
) -> Result<(Vec<ListenerConfig>, Option<Arc<ServedCert>>), Error> {
    let mut listeners = Vec::new();
    let mut served = None;
    if let Some(addr) = http_addr {
        listeners.push(ListenerConfig {
            addr,
            allow: config.http_allow.clone(),
            tls: None,
        });
    }
    if let Some(addr) = https_addr {
        crate::http::tls::check_dirs(&config.cert, &config.key)?;
        let cert = ServedCert::load_or_generate(&config.cert, &config.key, &config.cert_hosts)?;
        listeners.push(ListenerConfig {
            addr,
            allow: config.https_allow.clone(),
            tls: Some(cert.server_config()?),
        });
        served = Some(cert);
    }
    Ok((listeners, served))
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(config: &Config, env: Env) -> Result<(), Error> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Registered before the listeners open, so an early signal is not lost.
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| {
            Error::Internal {
                message: format!("cannot install signal handlers: {e}"),
            }
        })?;
    let running = start(config, env)?;
    for signal in signals.forever() {
        if signal != SIGHUP {
            break;
        }
        running.reload();
    }
    log::info!(grace_s = config.shutdown_grace.as_secs(); "shutting down: finishing requests in flight (a second SIGTERM or Ctrl-C stops at once)");
    // A second SIGTERM or SIGINT during the grace ends it: what still runs is closed, as
    // when the grace runs out (two Ctrl-C stop at once).
    let cutter = running.grace_cutter();
    let handle = signals.handle();
    let second = std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal != SIGHUP {
                log::warn!("a second signal: stopping now");
                cutter.store(true, std::sync::atomic::Ordering::Release);
                break;
            }
        }
    });
    let clean = running.stop(config.shutdown_grace);
    handle.close();
    let _ = second.join();
    if clean {
        log::info!("stopped");
    } else {
        log::warn!(
            "stopped before every request had finished: those still running were ended (503 shutting_down)"
        );
    }
    Ok(())
}

/// SIGHUP (with [`Running::reload`]): reload the files (keeping the old configuration when
/// one does not parse) and rediscover Ollama.
pub fn reload(app: &Arc<Gateway>) {
    match app.reload() {
        Ok(done) => log::info!(
            added = done.added.join(","),
            removed = done.removed.join(","),
            models = app.listed().models.len(),
            client_keys = done.keys.map_or("off".to_string(), |n| n.to_string()),
            memory = if app.memory().content.is_empty() { "empty" } else { "set" };
            "configuration reloaded"
        ),
        Err(e) => {
            log::error!(error = e.to_string(); "reload failed; keeping the old configuration")
        }
    }
    // One discovery at a time: a burst of SIGHUPs while Ollama is slow would otherwise start
    // a thread and a call to it for each. One that comes during a discovery asks for one
    // more after it (the user may have changed Ollama since it began).
    static STATE: std::sync::Mutex<Rediscovery> = std::sync::Mutex::new(Rediscovery {
        running: false,
        again: false,
    });
    {
        let mut state = crate::util::lock(&STATE);
        if state.running {
            state.again = true;
            return;
        }
        state.running = true;
    }
    let ollama = app.ollama().clone();
    let started = std::thread::Builder::new()
        .name("sigorest-rediscover".into())
        .spawn(move || {
            // Cleared when a discovery panics too (the loop below clears it otherwise).
            struct Done;
            impl Drop for Done {
                fn drop(&mut self) {
                    if std::thread::panicking() {
                        crate::util::lock(&STATE).running = false;
                    }
                }
            }
            let _done = Done;
            loop {
                // `discover` logs a failure itself (WARN once per run of failures).
                let _ = ollama.discover();
                let mut state = crate::util::lock(&STATE);
                if !std::mem::take(&mut state.again) {
                    state.running = false;
                    return;
                }
            }
        });
    if started.is_err() {
        crate::util::lock(&STATE).running = false;
    }
}

/// Whether a SIGHUP's Ollama discovery runs, and whether another was asked for meanwhile.
struct Rediscovery {
    running: bool,
    again: bool,
}

/// How many client keys `keys.csv` holds, or `off` without the file.
fn client_keys(app: &Gateway) -> String {
    app.keys()
        .map_or("off".to_string(), |k| k.len().to_string())
}
