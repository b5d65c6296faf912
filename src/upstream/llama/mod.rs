//! A local llama.cpp `llama-server`, supervised: started at start-up (which never waits for
//! it), watched through its `/health`, started again with back-off when it exits or stops
//! answering, stopped when sigorest stops — and never left behind, even when sigorest is
//! killed (see [`process`]). Its one model is offered under `-llama-name` as an
//! OpenAI-compatible provider with no key, reached directly on 127.0.0.1.
//!
//! Until its `/health` answers 200 the model answers 503 `model_loading` with `Retry-After`.
//! Requests to it take one of its slots (`-llama-parallel`), waiting in a short queue for at
//! most `-llama-queue-wait`; beyond that they get 429 `model_busy`. The wait is a task on
//! the event loop: a queue of slow local requests holds no thread.
//!
//! One supervisor thread does the process handling and the health checks; the decisions are
//! the pure [`machine`]. Its lock is held for bookkeeping only, never across a check or a
//! process call.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::{Value, json};

use super::retry::Failure;
use super::{Target, Upstream};
use crate::config::LlamaConfig;
use crate::error::Error;
use crate::state::catalog::{self, Model, Provider};
use crate::util::clock::Clock;
use crate::util::{Hangup, lock};

pub mod machine;
pub mod process;
pub mod slots;

use machine::{Machine, Probe, Verdict};
use process::Proc;
use slots::{Refused, SlotGuard, Slots};

/// How often the supervisor looks whether the process has ended.
const TICK: Duration = Duration::from_millis(100);
/// `Retry-After` while the model loads.
const LOADING_RETRY_S: u64 = 5;

/// The supervised llama-server, as the gateway sees it.
pub struct Llama {
    shared: Arc<Shared>,
    stop: Mutex<Option<Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the supervisor thread and the request path share.
struct Shared {
    config: LlamaConfig,
    /// The program, found at start-up.
    program: PathBuf,
    model: Model,
    clock: Arc<dyn Clock>,
    machine: Mutex<Machine>,
    /// The port it listens on (0 before the first start).
    port: AtomicU16,
    slots: Slots,
    health: Upstream,
    /// Called once each time it becomes ready (the gateway clears the model's breaker).
    on_ready: Box<dyn Fn() + Send + Sync>,
}

impl Llama {
    /// Checks that the program and the model file exist (an [`Error::Usage`] otherwise); starts
    /// nothing yet (see [`Llama::start`]).
    pub fn new(
        config: LlamaConfig,
        clock: Arc<dyn Clock>,
        on_ready: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Llama, Error> {
        let program = process::find_program(&config.server, std::env::var_os("PATH"))
            .map_err(|why| usage(format!("-llama-server: {}: {why}", config.server.display())))?;
        if !std::fs::metadata(&config.model).is_ok_and(|m| m.is_file()) {
            return Err(usage(format!(
                "-llama-model: {}: no such file",
                config.model.display()
            )));
        }
        let model = Model::local(
            &config.name,
            &config.model_id(),
            Provider::Llama,
            config.context(),
        );
        let machine = Machine::new(config.timing.clone(), clock.now());
        let slots = Slots::new(config.parallel, config.queue);
        Ok(Llama {
            shared: Arc::new(Shared {
                port: AtomicU16::new(config.port.unwrap_or(0)),
                config,
                program,
                model,
                clock,
                machine: Mutex::new(machine),
                slots,
                health: Upstream::new(),
                on_ready,
            }),
            stop: Mutex::new(None),
            thread: Mutex::new(None),
        })
    }

    /// Starts the supervisor thread (once), which starts llama-server.
    pub fn start(&self) {
        let mut thread = lock(&self.thread);
        if thread.is_some() {
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let shared = self.shared.clone();
        match thread::Builder::new()
            .name("llama-supervisor".into())
            .spawn(move || supervise(&shared, &rx))
        {
            Ok(handle) => {
                *thread = Some(handle);
                *lock(&self.stop) = Some(tx);
            }
            Err(e) => {
                log::error!(error = e.to_string(); "cannot start the llama-server supervisor")
            }
        }
    }

    /// sigorest is shutting down: what runs goes on serving requests in flight, but nothing
    /// is started again.
    pub fn no_more_restarts(&self) {
        lock(&self.shared.machine).stopping(self.shared.clock.now());
    }

    /// Stops llama-server and its supervisor, and waits for both (at most the stop grace
    /// and a few seconds). Idempotent.
    pub fn stop(&self) {
        self.no_more_restarts();
        drop(lock(&self.stop).take());
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// The model it serves, under its `-llama-name`.
    pub fn model(&self) -> &Model {
        &self.shared.model
    }

    /// Whether `name` means this model: its name or its file name, in any case.
    pub fn matches(&self, name: &str) -> bool {
        catalog::find(std::slice::from_ref(&self.shared.model), name, |m| m).is_some()
    }

    pub fn is_ready(&self) -> bool {
        lock(&self.shared.machine).is_ready()
    }

    /// The base of its OpenAI-compatible API (`{base}/chat/completions`, `{base}/embeddings`),
    /// once it has a port.
    pub fn api_base(&self) -> Option<String> {
        match self.shared.port.load(Ordering::Acquire) {
            0 => None,
            port => Some(format!("http://127.0.0.1:{port}/v1")),
        }
    }

    /// Where a chat request goes: direct, with its key if it has one.
    /// 503 `model_loading` until it is ready.
    pub fn chat_target(&self) -> Result<Target, Error> {
        match self.api_base() {
            Some(base) if self.is_ready() => Ok(Target::with(
                format!("{base}/chat/completions"),
                // llama-server takes a list (`k1,k2`); any one of them opens it.
                self.shared
                    .config
                    .api_key
                    .as_deref()
                    .and_then(|list| list.split(',').map(str::trim).find(|k| !k.is_empty()))
                    .map(str::to_string),
                true,
            )),
            _ => Err(self.loading()),
        }
    }

    /// One of its slots for one request, waiting in line (a task on the event loop) for at
    /// most `-llama-queue-wait`.
    pub async fn slot(&self, hangup: &Hangup) -> Result<SlotGuard, Error> {
        let config = &self.shared.config;
        let slots = &self.shared.slots;
        let busy = |reason: String| Error::ModelBusy {
            model: self.shared.model.short.clone(),
            reason,
            retry_after_s: slots.retry_after_s(),
        };
        match slots.acquire(config.queue_wait, hangup).await {
            // It may have gone down while this request waited.
            Ok(guard) if self.is_ready() => Ok(guard),
            Ok(_) => Err(self.loading()),
            Err(Refused::Gone) if hangup.stopped_by_server() => Err(Error::ShuttingDown),
            Err(Refused::Gone) => Err(Error::ClientGone),
            Err(Refused::QueueFull { limit, .. }) if config.queue_wait.is_zero() => Err(busy(
                format!("all {limit} of its slots are taken (-llama-queue-wait is 0)"),
            )),
            Err(Refused::QueueFull { limit, queue }) => Err(busy(format!(
                "all {limit} of its slots are taken and {queue} requests wait already"
            ))),
            Err(Refused::Waited { limit, .. }) => Err(busy(format!(
                "none of its {limit} slots came free within {} s (-llama-queue-wait)",
                config.queue_wait.as_secs()
            ))),
        }
    }

    fn loading(&self) -> Error {
        let now = self.shared.clock.now();
        let machine = lock(&self.shared.machine);
        let restart_in = machine.status(now).restart_in_s.unwrap_or(0);
        Error::ModelLoading {
            model: self.shared.model.short.clone(),
            state: machine.describe(now),
            retry_after_s: LOADING_RETRY_S.max(restart_in),
        }
    }

    /// What `/api/health` shows.
    pub fn status(&self) -> Value {
        let s = lock(&self.shared.machine).status(self.shared.clock.now());
        let port = self.shared.port.load(Ordering::Acquire);
        json!({
            "name": self.shared.model.short,
            "model": self.shared.model.id,
            "state": s.state,
            "restarts": s.restarts,
            "last_exit": s.last_exit,
            "state_for_s": s.state_for_s,
            "restart_in_s": s.restart_in_s,
            "pid": s.pid,
            "port": (port != 0).then_some(port),
            "slots": self.shared.slots.status(),
        })
    }
}

impl Drop for Llama {
    fn drop(&mut self) {
        self.stop();
    }
}

fn usage(message: String) -> Error {
    Error::Usage { message }
}

/// The supervisor thread: start, watch, start again; stop when the channel closes.
fn supervise(shared: &Shared, stop: &Receiver<()>) {
    let mut proc: Option<Proc> = None;
    loop {
        if let Some(p) = &mut proc
            && let Some(how) = p.try_wait()
        {
            proc = None;
            shared.ended(&how);
            continue;
        }
        let now = shared.clock.now();
        let (until_start, until_check) = {
            let m = lock(&shared.machine);
            (m.until_start(now), m.until_check(now))
        };
        let wait = match (&mut proc, until_start, until_check) {
            (None, Some(Duration::ZERO), _) => {
                proc = shared.start();
                continue;
            }
            (None, Some(wait), _) => wait,
            (Some(_), _, Some(Duration::ZERO)) => {
                if let Some(why) = shared.check() {
                    log::warn!(reason = why.as_str(); "llama-server stopped answering; restarting it");
                    if let Some(p) = proc.take() {
                        let how = p.stop(shared.config.timing.stop_grace);
                        shared.ended(&how);
                    }
                }
                continue;
            }
            (Some(_), _, Some(wait)) => wait,
            // Nothing runs and nothing will start: sigorest is stopping.
            _ => Duration::from_secs(3600),
        };
        match stop.recv_timeout(wait.min(TICK)) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    lock(&shared.machine).stopping(shared.clock.now());
    if let Some(p) = proc {
        let how = p.stop(shared.config.timing.stop_grace);
        lock(&shared.machine).exited(shared.clock.now(), &how);
        log::info!(status = how.as_str(); "llama-server stopped");
    }
}

impl Shared {
    /// Starts llama-server, on the same port as before unless the last one never answered
    /// there (something else may have taken it).
    fn start(&self) -> Option<Proc> {
        let port = match self.config.port {
            Some(p) => Ok(p),
            None => match self.port.load(Ordering::Acquire) {
                p if p != 0 && lock(&self.machine).answered() => Ok(p),
                _ => process::free_port(),
            },
        };
        let started = port.and_then(|port| {
            self.port.store(port, Ordering::Release);
            let args = process::server_args(&self.config, port);
            process::spawn(
                &self.program,
                &args,
                self.config.api_key.as_deref(),
                self.config.timing.stop_grace,
            )
        });
        let now = self.clock.now();
        match started {
            Ok(p) => {
                lock(&self.machine).started(now, p.pid);
                log::info!(
                    pid = p.pid,
                    port = self.port.load(Ordering::Acquire),
                    model = self.config.model.display().to_string(),
                    name = self.model.short.as_str();
                    "llama-server started"
                );
                Some(p)
            }
            Err(e) => {
                let wait = lock(&self.machine).start_failed(now, &e.to_string());
                log::warn!(
                    error = e.to_string(),
                    restart_in_s = wait.map_or(0, |w| w.as_secs());
                    "llama-server could not be started"
                );
                None
            }
        }
    }

    /// One health check; `Some(why)` when it counts as hung.
    fn check(&self) -> Option<String> {
        let port = self.port.load(Ordering::Acquire);
        let target = Target::direct(format!("http://127.0.0.1:{port}/health"));
        let started = Instant::now();
        let probe = match self
            .health
            .get_blocking(&target, self.config.timing.check_timeout)
        {
            Ok(_) => Probe::Ready,
            Err(Failure::Status { .. }) => Probe::Loading,
            Err(
                Failure::Connect(m)
                | Failure::Timeout(m)
                | Failure::BadAnswer(m)
                | Failure::BadCompletion(m),
            ) => Probe::NoAnswer(m),
            // Nobody hangs up on a health check; were it so, it says nothing.
            Err(Failure::Cancelled) => Probe::NoAnswer("cancelled".into()),
        };
        let verdict = lock(&self.machine).checked(self.clock.now(), probe);
        match verdict {
            Verdict::Fine => None,
            Verdict::BecameReady => {
                log::info!(
                    name = self.model.short.as_str(),
                    check_ms = started.elapsed().as_millis() as u64;
                    "llama-server ready"
                );
                (self.on_ready)();
                None
            }
            Verdict::Hung(why) => Some(why),
        }
    }

    /// The process has ended (by itself, or stopped as hung).
    fn ended(&self, how: &str) {
        let wait = lock(&self.machine).exited(self.clock.now(), how);
        match wait {
            Some(wait) => log::warn!(
                status = how,
                restart_in_ms = wait.as_millis() as u64;
                "llama-server ended; starting it again (set -v debug to see its output)"
            ),
            None => log::info!(status = how; "llama-server stopped"),
        }
    }
}
