//! `sigoe`, the command-line client: raw flags → [`Options`], the prompt from the arguments
//! and/or stdin, one completion — straight to the provider, or through a running sigorest
//! (`-server URL`) — and the answer on stdout. Logs and the one-line reason of a failure go
//! to stderr.
//!
//! In direct mode sigoe keeps the server's rules because it runs the server's code: the
//! embedded catalog, `memory.json` and the session files through [`Memory`] and
//! [`SessionStore`], the body through [`ChatRequest::upstream_body`] (memory, history,
//! clamps), the call through [`Upstream`] (retries, deadlines), the stream through
//! [`crate::upstream::read_open_stream`]. Through a gateway, the session, timeout and retries go as the
//! gateway's extensions, and memory and sessions are the gateway's business.

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::chat::answer::{assistant_message, content_text};
use crate::chat::prepared::Prepared;
use crate::chat::request::{
    ChatRequest, DEFAULT_RETRIES, DEFAULT_TIMEOUT, MAX_RETRIES, MAX_TIMEOUT,
};
use crate::chat::stream::{Gathered, StreamEnd};
use crate::config::{bad, go_style, level, looks_like_flag, number, path_value, quote, text_value};
use crate::env::Env;
use crate::error::Error;
use crate::http::Hangup;
use crate::state::catalog::{self, Catalog, Model, Provider};
use crate::state::memory::Memory;
use crate::state::session::{self, SessionStore};
use crate::upstream::retry::Failure;
use crate::upstream::{OpenStream, Target, Upstream};

mod models;

pub use models::{KeyState, detail, table};

/// The model asked when `-m` is not given.
pub const DEFAULT_MODEL: &str = "gpt41";
/// The variable naming a gateway when `-server` is not given.
pub const SERVER_ENV: &str = "SIGOREST_URL";
/// How much longer than the request's `timeout` sigoe waits for a gateway, which answers
/// 504 itself when the timeout passes.
const GATEWAY_GRACE: Duration = Duration::from_secs(5);
/// How long `-l` and `-i` wait for a gateway's model list.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// sigoe's validated command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub model: String,
    pub session: Option<String>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub timeout: Duration,
    pub retries: u32,
    /// `-l`: list the models.
    pub list: bool,
    /// `-i MODEL`: one model in detail.
    pub info: Option<String>,
    pub log_level: log::LevelFilter,
    /// `-j`: print the whole response JSON.
    pub json: bool,
    /// `-stream`: stream even when stdout is not a terminal.
    pub stream: bool,
    /// `-server URL` as given; `Some("")` forces direct mode over `SIGOREST_URL`.
    pub server: Option<String>,
    pub cacert: Option<PathBuf>,
    pub memory: PathBuf,
    pub sessions: PathBuf,
    /// Whether `-memory` or `-sessions` was given (they do nothing through a gateway).
    pub local_files_given: bool,
    /// The prompt arguments, as given.
    pub prompt: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            model: DEFAULT_MODEL.to_string(),
            session: None,
            max_tokens: None,
            temperature: None,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            list: false,
            info: None,
            log_level: log::LevelFilter::Warn,
            json: false,
            stream: false,
            server: None,
            cacert: None,
            memory: PathBuf::from("./memory.json"),
            sessions: PathBuf::from("./.sessions"),
            local_files_given: false,
            prompt: Vec::new(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Options>),
    Help,
    Version,
}

/// Flags that take a value, without their dashes: the prompt starts after them.
const VALUE_FLAGS: &[&str] = &[
    "m", "s", "n", "T", "t", "r", "i", "v", "server", "cacert", "memory", "sessions",
];

/// Splits the arguments as Go's `flag` package does: flags (with their values) up to the
/// first argument that is not a flag, or up to `--` (dropped); the rest is the prompt. So
/// `sigoe explain ls -l` asks about `ls -l` instead of listing the models.
pub fn split_prompt(args: Vec<OsString>) -> (Vec<OsString>, Vec<OsString>) {
    let mut flags = Vec::new();
    let mut rest = args.into_iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            return (flags, rest.collect());
        }
        if !looks_like_flag(&arg) {
            let mut prompt = vec![arg];
            prompt.extend(rest);
            return (flags, prompt);
        }
        let takes_value = arg.to_str().is_some_and(|s| {
            let name = s
                .strip_prefix("--")
                .or_else(|| s.strip_prefix('-'))
                .unwrap_or(s);
            VALUE_FLAGS.contains(&name)
        });
        flags.push(arg);
        if takes_value {
            flags.extend(rest.next());
        }
    }
    (flags, Vec::new())
}

/// Parses the arguments after the program name. As for the server: value options first,
/// a value that looks like a flag refused, the last of a repeated option wins, switches
/// last, anything left over an unknown flag.
pub fn parse_args(args: Vec<OsString>) -> Result<Command, Error> {
    let (flags, prompt) = split_prompt(args);
    let flags = go_style(flags);
    for arg in &flags {
        match arg.to_str() {
            Some("-h" | "--help") => return Ok(Command::Help),
            Some("--version") => return Ok(Command::Version),
            _ => {}
        }
    }
    let mut p = pico_args::Arguments::from_vec(flags);
    let mut o = Options::default();

    if let Some(v) = text_value(&mut p, "-m")? {
        o.model = not_empty("-m", v)?;
    }
    if let Some(v) = text_value(&mut p, "-s")? {
        session::validate_id(&v).map_err(|e| bad(format!("-s: {e}")))?;
        o.session = Some(v);
    }
    if let Some(v) = text_value(&mut p, "-n")? {
        o.max_tokens = Some(number("-n", &v, 1, u64::from(u32::MAX))? as u64);
    }
    if let Some(v) = text_value(&mut p, "-T")? {
        match v.trim().parse::<f64>() {
            Ok(t) if t.is_finite() => o.temperature = Some(t),
            _ => return Err(bad(format!("-T: {} is not a number (e.g. 0.7)", quote(&v)))),
        }
    }
    if let Some(v) = text_value(&mut p, "-t")? {
        let max = MAX_TIMEOUT.as_secs();
        match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s <= max as f64 => o.timeout = Duration::from_secs_f64(s),
            _ => {
                return Err(bad(format!(
                    "-t: {} is not a number of seconds above 0 and at most {max}",
                    quote(&v)
                )));
            }
        }
    }
    if let Some(v) = text_value(&mut p, "-r")? {
        o.retries = number("-r", &v, 1, u64::from(MAX_RETRIES))? as u32;
    }
    if let Some(v) = text_value(&mut p, "-i")? {
        o.info = Some(not_empty("-i", v)?);
    }
    if let Some(v) = text_value(&mut p, "-v")? {
        o.log_level = level("-v", &v)?;
    }
    if let Some(v) = text_value(&mut p, "--server")? {
        o.server = Some(v.trim().to_string());
    }
    o.cacert = path_value(&mut p, "--cacert")?;
    if let Some(v) = path_value(&mut p, "--memory")? {
        o.memory = v;
        o.local_files_given = true;
    }
    if let Some(v) = path_value(&mut p, "--sessions")? {
        o.sessions = v;
        o.local_files_given = true;
    }

    let mut quiet = false;
    while p.contains("-q") {
        quiet = true;
    }
    while p.contains("-l") {
        o.list = true;
    }
    while p.contains("-j") {
        o.json = true;
    }
    while p.contains("--stream") {
        o.stream = true;
    }
    if quiet {
        o.log_level = log::LevelFilter::Error;
    }
    if let Some(first) = p.finish().first() {
        let shown = first.to_string_lossy();
        return Err(bad(format!(
            "unknown flag {} (see -h)",
            crate::config::flag_name(&shown)
        )));
    }

    o.prompt = prompt
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if o.list && o.info.is_some() {
        return Err(bad("-l and -i do not go together".into()));
    }
    if (o.list || o.info.is_some()) && !o.prompt.is_empty() {
        let flag = if o.list { "-l" } else { "-i" };
        return Err(bad(format!("{flag} takes no prompt")));
    }
    if o.json && o.stream {
        return Err(bad(
            "-j prints one whole response, so it does not go with -stream".into(),
        ));
    }
    Ok(Command::Run(Box::new(o)))
}

fn not_empty(flag: &str, v: String) -> Result<String, Error> {
    let v = v.trim().to_string();
    if v.is_empty() {
        return Err(bad(format!("{flag} needs a value")));
    }
    Ok(v)
}

/// The `-h` text.
pub fn usage() -> String {
    let d = Options::default();
    format!(
        "\
sigoe {version}: ask a model from the command line, directly or through a sigorest gateway.

Usage: sigoe [flags] [prompt...]
       git diff | sigoe -m claude-h \"review this\"

The prompt is the arguments, joined by spaces. Without arguments it is read from stdin;
with arguments and a piped stdin, stdin's text follows them after a blank line. Flags come
before the prompt; put -- before a prompt that starts with '-'.

Flags (one dash or two; the value after a space or '='):
  -m MODEL         short code or upstream id (default {model}; -l lists them)
  -s SESSION       keep the conversation in this session
                   (1-128 of A-Z a-z 0-9 . _ -, not starting with '.')
  -n MAX_TOKENS    longest answer, clamped to the model's output limit
  -T TEMPERATURE   clamped into the model's range
  -t TIMEOUT       seconds for the whole answer; when streaming, for the first
                   event and each gap (default {timeout}, at most {max_timeout})
  -r RETRIES       attempts in all, 1-{max_retries} (default {retries})
  -stream          stream the answer even when stdout is not a terminal
                   (on a terminal it always streams)
  -j               print the whole response JSON (never streamed)
  -l               list every catalog model (with -server: the gateway's models)
  -i MODEL         one model in detail
  -server URL      ask the sigorest gateway at URL (http://host:9080 or
                   https://host:9443) instead of the provider; default
                   ${server_env}; -server '' forces direct mode
  -cacert PATH     trust this PEM certificate (the gateway's self-signed
                   certs/server.crt) for an https:// -server
  -memory PATH     memory block put first into every request, direct mode
                   (default {memory})
  -sessions DIR    session files, direct mode (default {sessions})
  -v LEVEL         log level on stderr: debug, info, warn, error (default warn)
  -q               quiet: errors only
  -version         print the version and exit
  -h, -help        print this help and exit

Environment (direct mode): MAMMOUTH_API_KEY, MOONSHOT_API_KEY, ZAI_API_KEY and
MAMMOUTH_BASE_URL, MOONSHOT_BASE_URL, ZAI_BASE_URL, as for the server.

Exit status: 0 answered, 1 the model or the network failed (the reason on
stderr), 2 bad usage (a bad flag, no prompt, an unknown model, a file to fix).
",
        version = crate::VERSION,
        model = d.model,
        timeout = d.timeout.as_secs(),
        max_timeout = MAX_TIMEOUT.as_secs(),
        retries = d.retries,
        max_retries = MAX_RETRIES,
        server_env = SERVER_ENV,
        memory = d.memory.display(),
        sessions = d.sessions.display(),
    )
}

/// Why sigoe ends without an answer. The variant decides the exit status.
#[derive(Debug)]
pub enum Stop {
    /// A bad flag, no prompt, an unknown model, a file to fix: exit status 2.
    Usage(Error),
    /// The model, the network or the machine failed: exit status 1.
    Failed(Error),
}

impl Stop {
    pub fn exit_status(&self) -> u8 {
        match self {
            Stop::Usage(_) => 2,
            Stop::Failed(_) => 1,
        }
    }

    /// The one line printed on stderr.
    pub fn reason(&self) -> String {
        let text = match self {
            Stop::Failed(Error::ProviderNotConfigured { env }) => {
                format!("provider not configured: set {env}, or use -server URL")
            }
            Stop::Usage(e) | Stop::Failed(e) => e.to_string(),
        };
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }
}

/// The gateway to ask, from `-server` or `SIGOREST_URL`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    /// The base URL, without a trailing `/` or `/v1`: `https://box:9443`.
    pub base: String,
}

impl Gateway {
    /// Accepts `http(s)://host[:port]`, with or without a trailing `/` or `/v1`.
    pub fn parse(url: &str) -> Result<Gateway, String> {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(format!(
                "{} is not an http:// or https:// URL (e.g. https://192.168.1.10:9443)",
                quote(url)
            ));
        }
        let mut base = url.trim_end_matches('/');
        if let Some(stripped) = base.strip_suffix("/v1") {
            base = stripped.trim_end_matches('/');
        }
        let host = base.split_once("://").map_or("", |(_, rest)| rest);
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("{} has no host", quote(url)));
        }
        Ok(Gateway {
            base: base.to_string(),
        })
    }

    pub fn is_https(&self) -> bool {
        self.base.to_ascii_lowercase().starts_with("https://")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn target(&self, path: &str) -> Target {
        Target::new(self.url(path), None)
    }
}

/// Whether stdin is read: always without prompt arguments; with them only when stdin is not
/// a terminal (a pipe, a file), so `sigoe hi` typed at a shell prompt never waits.
pub fn wants_stdin(has_args: bool, stdin_is_terminal: bool) -> bool {
    !has_args || !stdin_is_terminal
}

/// The prompt: the arguments joined by spaces, then stdin's text after a blank line. Stdin
/// that is only white space counts as none. `None` when there is no prompt at all.
pub fn assemble_prompt(args: &[String], stdin: Option<&str>) -> Option<String> {
    let args = args.join(" ");
    let stdin = stdin.filter(|s| !s.trim().is_empty());
    let prompt = match (args.trim().is_empty(), stdin) {
        (false, Some(s)) => format!("{args}\n\n{s}"),
        (false, None) => args,
        (true, Some(s)) => s.to_string(),
        (true, None) => return None,
    };
    Some(prompt)
}

/// The chat-completions body sigoe sends: one user message, the options that were given,
/// and the gateway's extensions (`session_id`, `timeout`, `retries`). In direct mode it
/// goes through [`ChatRequest::parse`] like any client's body, which takes the extensions
/// out again.
pub fn request_body(opts: &Options, prompt: &str, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(opts.model));
    body.insert(
        "messages".into(),
        json!([{"role": "user", "content": prompt}]),
    );
    if let Some(n) = opts.max_tokens {
        body.insert("max_tokens".into(), json!(n));
    }
    if let Some(t) = opts.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(s) = &opts.session {
        body.insert("session_id".into(), json!(s));
    }
    body.insert("timeout".into(), json!(opts.timeout.as_secs_f64()));
    body.insert("retries".into(), json!(opts.retries));
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Value::Object(body)
}

/// Runs the command line: lists, details, or one question and its answer.
pub fn run(opts: &Options, env: &Env) -> Result<(), Stop> {
    let (given, source) = match opts.server.as_deref() {
        Some(url) => (Some(url), "-server"),
        None => (env.get(SERVER_ENV), SERVER_ENV),
    };
    let gateway = match given {
        None | Some("") => None,
        Some(url) => Some(Gateway::parse(url).map_err(|m| usage_error(format!("{source}: {m}")))?),
    };
    let upstream = match &opts.cacert {
        None => Upstream::new(),
        Some(path) => {
            if !gateway.as_ref().is_some_and(Gateway::is_https) {
                return Err(usage_error(
                    "-cacert is for an https:// -server URL (the gateway's certificate)".into(),
                ));
            }
            let pem = std::fs::read(path)
                .map_err(|e| usage_error(format!("-cacert {}: {e}", path.display())))?;
            Upstream::trusting(&pem)
                .map_err(|m| usage_error(format!("-cacert {}: {m}", path.display())))?
        }
    };
    if gateway.is_some() && opts.local_files_given {
        log::warn!("-memory and -sessions are not used with -server: the gateway keeps its own");
    }
    if opts.list || opts.info.is_some() {
        let (models, source) = match &gateway {
            Some(g) => (gateway_models(g, &upstream)?, g.url("")),
            None => (catalog_models(env), String::new()),
        };
        let text = match &opts.info {
            None => table(&models),
            Some(name) => {
                let (model, key) = find_model(&models, name, gateway.is_some())?;
                let endpoint = match &gateway {
                    Some(_) => format!("{source}/v1/chat/completions (the gateway)"),
                    None => model.provider.chat_url(env),
                };
                detail(model, *key, &endpoint)
            }
        };
        return print_out(text.as_bytes());
    }
    match &gateway {
        Some(g) => ask_gateway(opts, g, &upstream),
        None => ask_provider(opts, env, &upstream),
    }
}

fn usage_error(message: String) -> Stop {
    Stop::Usage(Error::Usage { message })
}

/// Every catalog model, with whether its key is set here.
fn catalog_models(env: &Env) -> Vec<(Model, KeyState)> {
    Catalog::embedded()
        .all()
        .iter()
        .map(|m| (m.clone(), KeyState::of(m.provider, env)))
        .collect()
}

/// The gateway's models, from its `GET /api/models`.
fn gateway_models(g: &Gateway, upstream: &Upstream) -> Result<Vec<(Model, KeyState)>, Stop> {
    let body = upstream
        .get(&g.target("/api/models"), LIST_TIMEOUT)
        .map_err(|f| gateway_failure(f, g))?;
    models::from_gateway(&body).map_err(|m| {
        Stop::Failed(Error::Upstream {
            message: format!("bad model list from the gateway at {}: {m}", g.base),
        })
    })
}

fn find_model<'a>(
    models: &'a [(Model, KeyState)],
    name: &str,
    through_gateway: bool,
) -> Result<&'a (Model, KeyState), Stop> {
    catalog::find(models, name, |(m, _)| m)
        .ok_or_else(|| Stop::Usage(unknown_model(name.trim(), through_gateway)))
}

fn unknown_model(name: &str, through_gateway: bool) -> Error {
    let reason = if through_gateway {
        "the gateway does not offer it (sigoe -l lists its models)"
    } else if name.to_ascii_lowercase().starts_with("ollama-") {
        "Ollama models are not supported in direct mode; use -server URL"
    } else {
        "not in the catalog (sigoe -l lists the models)"
    };
    Error::ModelNotFound {
        model: name.to_string(),
        reason: reason.to_string(),
    }
}

/// Whether the answer streams: on a terminal, or when asked; never with `-j`.
fn streams(opts: &Options) -> bool {
    !opts.json && (opts.stream || std::io::stdout().is_terminal())
}

/// Direct mode: the provider, with the server's rules.
fn ask_provider(opts: &Options, env: &Env, upstream: &Upstream) -> Result<(), Stop> {
    let catalog = Catalog::embedded();
    let model = catalog
        .get(&opts.model)
        .ok_or_else(|| Stop::Usage(unknown_model(&opts.model, false)))?;
    let key = match model.provider.key_env() {
        Some(var) => Some(
            model
                .provider
                .key(env)
                .ok_or(Stop::Failed(Error::ProviderNotConfigured { env: var }))?
                .to_string(),
        ),
        None => None,
    };
    let prompt = read_prompt(opts)?;
    let stream = streams(opts);
    let body = request_body(opts, &prompt, stream).to_string();
    let req = ChatRequest::parse(body.as_bytes(), MAX_TIMEOUT).map_err(Stop::Usage)?;
    let memory = Memory::load(&opts.memory)
        .map_err(Stop::Usage)?
        .unwrap_or_default();
    let sessions = SessionStore::new(&opts.sessions);
    let prepared = Prepared::new(&req, model, &memory, &sessions).map_err(Stop::Usage)?;
    let target = Target::new(model.provider.chat_url(env), key);
    let fail = |f: Failure| Stop::Failed(f.into_error(&model.short));
    let hangup = Hangup::default();
    if stream {
        let opened = upstream.open_stream(
            &target,
            &prepared.body,
            req.timeout,
            req.timeout,
            req.retries,
            &hangup,
        );
        let Some(gathered) = print_stream(opened.result.map_err(fail)?, &model.short)? else {
            return Ok(());
        };
        prepared.save_turn(&sessions, gathered.assistant());
        return Ok(());
    }
    let deadline = Instant::now() + req.timeout;
    let done = upstream
        .complete(&target, &prepared.body, deadline, req.retries, &hangup)
        .result
        .map_err(fail)?;
    let (answer, parsed) = (done.body, done.answer);
    let text = content_text(&parsed.content);
    prepared.save_turn(&sessions, assistant_message(parsed.content));
    print_answer(opts, &answer, &text)
}

/// Server mode: the gateway does memory, sessions, clamps and retries; sigoe makes one
/// attempt, waiting a little longer than the timeout so the gateway can say what happened.
fn ask_gateway(opts: &Options, g: &Gateway, upstream: &Upstream) -> Result<(), Stop> {
    let prompt = read_prompt(opts)?;
    let stream = streams(opts);
    let body = request_body(opts, &prompt, stream).to_string();
    let target = g.target("/v1/chat/completions");
    let wait = opts.timeout + GATEWAY_GRACE;
    let hangup = Hangup::default();
    if stream {
        let opened = upstream.open_stream(&target, body.as_bytes(), wait, wait, 1, &hangup);
        let stream = opened.result.map_err(|f| gateway_failure(f, g))?;
        print_stream(stream, &opts.model)?;
        return Ok(());
    }
    let done = upstream
        .complete(&target, body.as_bytes(), Instant::now() + wait, 1, &hangup)
        .result
        .map_err(|f| gateway_failure(f, g))?;
    let (answer, parsed) = (done.body, done.answer);
    print_answer(opts, &answer, &content_text(&parsed.content))
}

/// A failed call to the gateway, in words about the gateway. Its errors keep their status
/// and message; its `model_not_found` is bad usage, as in direct mode.
fn gateway_failure(failure: Failure, g: &Gateway) -> Stop {
    let at = &g.base;
    let error = match failure {
        Failure::Connect(m) => {
            let hint = if g.is_https() && m.contains("certificate") {
                " (-cacert PATH trusts the gateway's certs/server.crt)"
            } else {
                ""
            };
            Error::Upstream {
                message: format!("cannot reach the gateway at {at}: {m}{hint}"),
            }
        }
        Failure::Timeout(m) => Error::UpstreamTimeout {
            message: format!("the gateway at {at}: {m}"),
        },
        Failure::BadAnswer(m) | Failure::BadCompletion(m) => Error::Upstream {
            message: format!("bad answer from the gateway at {at}: {m}"),
        },
        // sigoe does not hang up on itself.
        Failure::Cancelled => Error::ClientGone,
        Failure::Status { status, body, .. } => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let err = &v["error"];
            let code = err["code"].as_str().map(str::to_string);
            let message = err["message"].as_str().map_or_else(
                || String::from_utf8_lossy(&body).chars().take(200).collect(),
                str::to_string,
            );
            let not_found = code.as_deref() == Some("model_not_found");
            let error = Error::UpstreamClient {
                status,
                message: format!("the gateway answered {status}: {message}"),
                kind: err["type"].as_str().map(str::to_string),
                code,
                param: None,
            };
            if not_found {
                return Stop::Usage(error);
            }
            error
        }
    };
    Stop::Failed(error)
}

/// Reads the prompt from the arguments and/or stdin (see [`wants_stdin`]).
fn read_prompt(opts: &Options) -> Result<String, Stop> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let text = if wants_stdin(!opts.prompt.is_empty(), terminal) {
        if terminal && opts.log_level >= log::LevelFilter::Warn {
            eprintln!("sigoe: reading the prompt from the terminal; end it with Ctrl-D");
        }
        let mut bytes = Vec::new();
        stdin
            .lock()
            .read_to_end(&mut bytes)
            .map_err(|e| usage_error(format!("cannot read the prompt from stdin: {e}")))?;
        // Piped text is taken as it comes: a byte that is not UTF-8 becomes U+FFFD.
        Some(String::from_utf8_lossy(&bytes).into_owned())
    } else {
        None
    };
    assemble_prompt(&opts.prompt, text.as_deref())
        .ok_or_else(|| usage_error("no prompt: give it as arguments or on stdin (see -h)".into()))
}

/// Prints a stream's text as it arrives, flushing each piece. `None` when stdout went away
/// (a reader like `head` that stopped early): sigoe ends quietly then, without keeping the
/// turn.
fn print_stream(stream: OpenStream, short: &str) -> Result<Option<Gathered>, Stop> {
    let mut gathered = Gathered::default();
    let mut out = std::io::stdout().lock();
    let end = crate::upstream::read_open_stream(stream, &mut gathered, |_, fed| {
        if fed.text.is_empty() {
            return Ok(());
        }
        out.write_all(fed.text.as_bytes())?;
        out.flush()
    });
    // Whatever was printed ends with a line break, so the shell prompt (or the reason of a
    // failure on stderr) starts on a line of its own.
    let text = gathered.text();
    if !text.is_empty() && !text.ends_with('\n') && !matches!(end, StreamEnd::Stopped(_)) {
        let _ = out.write_all(b"\n").and_then(|()| out.flush());
    }
    match end {
        StreamEnd::Done => Ok(Some(gathered)),
        StreamEnd::Failed(message) => Err(Stop::Failed(Error::Upstream {
            message: format!("{short}: {message}"),
        })),
        StreamEnd::Stopped(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(None),
        StreamEnd::Stopped(e) => Err(Stop::Failed(Error::io(Path::new("stdout"), &e))),
    }
}

/// Prints a whole answer: the response JSON with `-j`, else the assistant's text.
fn print_answer(opts: &Options, answer: &[u8], text: &str) -> Result<(), Stop> {
    let mut out = if opts.json {
        answer.to_vec()
    } else {
        text.as_bytes().to_vec()
    };
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    print_out(&out)
}

/// Writes to stdout. A reader that went away is not an error: sigoe just ends.
fn print_out(bytes: &[u8]) -> Result<(), Stop> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Stop::Failed(Error::io(Path::new("stdout"), &e))),
    }
}

impl KeyState {
    /// Whether the provider's key is set in this environment.
    pub fn of(provider: Provider, env: &Env) -> KeyState {
        match provider.key_env() {
            None => KeyState::NotNeeded,
            Some(_) if provider.key(env).is_some() => KeyState::Set,
            Some(_) => KeyState::Missing,
        }
    }
}

#[cfg(test)]
mod tests;
