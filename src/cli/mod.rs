//! `sigoe`, the command-line client: raw flags → [`Options`] ([`args`]), the prompt from the arguments
//! and/or stdin, one completion — straight to the provider, or through a running sigorest
//! (`-server URL`) — and the answer on stdout. Logs and the one-line reason of a failure go
//! to stderr.
//!
//! In direct mode sigoe keeps the server's rules because it runs the server's code: the
//! embedded catalog, `memory.json` and the session files through [`Memory`] and
//! [`SessionStore`], the body through [`ChatRequest::upstream_body`] (memory, history,
//! clamps), the call through [`Upstream`] (retries, deadlines), the stream through
//! [`crate::upstream::read_open_stream`]. Through a gateway, the session, timeout and retries go as the
//! gateway's extensions, and memory and sessions are the gateway's business; the client
//! key, if the gateway wants one, comes from `SIGOREST_API_KEY`. `-newkey NAME` makes such
//! a key.

use std::borrow::Cow;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::chat::answer::{Answer, assistant_message};
use crate::chat::halves::Halves;
use crate::chat::prepared::Prepared;
use crate::chat::provider_error::ProviderError;
use crate::chat::request::{ChatRequest, DEFAULT_TIMEOUT, MAX_TIMEOUT};
use crate::chat::stream::{Gathered, NO_EVENT, StreamEnd};
use crate::config::quote;
use crate::env::Env;
use crate::error::Error;
use crate::http::Hangup;
use crate::state::catalog::{self, Catalog, Model, Provider};
use crate::state::keys;
use crate::state::memory::Memory;
use crate::state::session::SessionStore;
use crate::upstream::retry::Failure;
use crate::upstream::{OpenStream, Target, Upstream};
use answer::{Outcome, Streamed, whole_outcome};

mod answer;
mod args;
mod models;
mod terminal;
mod usage;

pub use args::{
    Command, DEFAULT_MODEL, KEY_ENV, Options, SERVER_ENV, parse_args, split_prompt, usage,
};
pub use models::{KeyState, detail, table};
pub use terminal::{Shown, json_escaped};

/// How much longer than the request's `timeout` sigoe waits for a gateway, which answers
/// 504 itself when the timeout passes.
const GATEWAY_GRACE: Duration = Duration::from_secs(5);
/// How long `-l` and `-i` wait for a gateway's model list.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of prompt read from stdin: a gateway's largest request body (its
/// `http::Limits::body_bytes`), so more could not be asked anyway — and an endless stdin
/// would otherwise grow sigoe until the machine runs out of memory.
pub const MAX_STDIN_BYTES: u64 = 32 * 1024 * 1024;

/// Why sigoe ends without an answer. The variant decides the exit status.
#[derive(Debug)]
pub enum Stop {
    /// A bad flag, no prompt, an unknown model, a file to fix: exit status 2.
    Usage(Error),
    /// The model, the network or the machine failed: exit status 1.
    Failed(Error),
    /// The model's answer held no text (filtered, empty): why, after the model's short name.
    /// Exit status 1.
    NoAnswer { short: String, why: String },
}

impl Stop {
    pub fn exit_status(&self) -> u8 {
        match self {
            Stop::Usage(_) => 2,
            Stop::Failed(_) | Stop::NoAnswer { .. } => 1,
        }
    }

    /// The one line printed on stderr.
    pub fn reason(&self) -> String {
        let text = match self {
            Stop::Failed(Error::ProviderNotConfigured { env }) => {
                format!("provider not configured: set {env}, or use -server URL")
            }
            Stop::Usage(e) | Stop::Failed(e) => e.to_string(),
            Stop::NoAnswer { short, why } => format!("{short}: {why}"),
        };
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }
}

/// The gateway to ask, from `-server` or `SIGOREST_URL`.
#[derive(Clone, PartialEq)]
pub struct Gateway {
    /// The base URL, without a trailing `/` or `/v1`: `https://box:9443`.
    pub base: String,
    /// The client key sent as `Authorization: Bearer` (from `SIGOREST_API_KEY`).
    key: Option<String>,
}

/// Never shows the key.
impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("base", &self.base)
            .field("key", &self.key.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl Gateway {
    /// Accepts `http(s)://host[:port]`, with or without a trailing `/`, `/v1` or `/v1/`. A query, a
    /// fragment or a `user:password@` is refused: sigoe would send neither, and the query
    /// would be glued into every path. Messages never show the password.
    pub fn parse(url: &str) -> Result<Gateway, String> {
        let url = url.trim();
        if url.contains('@') {
            return Err(format!(
                "{} has a user name or password: sigoe does not send them \
                 (a gateway's client key goes in {KEY_ENV})",
                quote(&masked(url))
            ));
        }
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(format!(
                "{} is not an http:// or https:// URL (e.g. https://192.168.1.10:9443)",
                quote(url)
            ));
        }
        if let Some(at) = url.find(['?', '#']) {
            let what = if url[at..].starts_with('?') {
                "a query (?...)"
            } else {
                "a fragment (#...)"
            };
            return Err(format!(
                "{} has {what}: give the gateway's address only (e.g. http://host:9080)",
                quote(url)
            ));
        }
        let (scheme, rest) = url.split_once("://").unwrap_or((url, ""));
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        // sigoe adds the paths itself. Any other path would be glued before them: `/claude-h`
        // would silently pick the gateway's model route over -m, `/api` or a pasted
        // `/v1/chat/completions` would end in a puzzling 404.
        if !matches!(path, "" | "/" | "/v1" | "/v1/") {
            return Err(format!(
                "{} has a path: give the gateway's address, with nothing after it \
                 but / or /v1 (e.g. http://host:9080)",
                quote(url)
            ));
        }
        let base = &url[..scheme.len() + 3 + host.len()];
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("{} has no host", quote(url)));
        }
        // A port out of range, a bad IPv6 host...: said now, as a usage error.
        crate::upstream::client::url::Url::parse(base)
            .map_err(|m| format!("{}: {m}", quote(url)))?;
        Ok(Gateway {
            base: base.to_string(),
            key: None,
        })
    }

    pub fn is_https(&self) -> bool {
        self.base.to_ascii_lowercase().starts_with("https://")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The same gateway, sending this client key (an empty one counts as none). White space
    /// around it goes (`export K=$(cat key)` keeps a CRLF file's `\r`); a control character
    /// inside is refused, since it would end up raw in the request's head.
    pub fn with_key(mut self, key: Option<&str>) -> Result<Gateway, String> {
        self.key = match key.map(crate::env::header_key) {
            Some(None) => {
                return Err("holds a control character (a line break?): give the key alone".into());
            }
            Some(Some(key)) if !key.is_empty() => Some(key.to_string()),
            _ => None,
        };
        Ok(self)
    }

    fn target(&self, path: &str) -> Target {
        Target::new(self.url(path), self.key.clone())
    }
}

/// A URL as it may be shown: whatever precedes its last `@` after the scheme (a user name,
/// a password — which may hold `/`, `?` or `#` when written carelessly) becomes `***`.
fn masked(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    let start = match url.find("://") {
        Some(i) if i + 3 <= at => i + 3,
        _ => 0,
    };
    format!("{}***{}", &url[..start], &url[at..])
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
/// and the gateway's extensions (`session_id`, `timeout` when `-t` was given, `retries`). In direct mode it
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
    // Without `-t`, no timeout: the server's parser applies its default (direct mode), a
    // gateway its own.
    if let Some(t) = opts.timeout {
        body.insert("timeout".into(), json!(t.as_secs_f64()));
    }
    body.insert("retries".into(), json!(opts.retries));
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Value::Object(body)
}

/// Runs the command line: lists, details, or one question and its answer.
pub fn run(opts: &Options, env: &Env) -> Result<(), Stop> {
    if let Some(name) = &opts.newkey {
        return print_new_key(name);
    }
    let (given, source) = match opts.server.as_deref() {
        Some(url) => (Some(url), "-server"),
        None => (env.get(SERVER_ENV), SERVER_ENV),
    };
    let gateway = match given {
        None | Some("") => None,
        Some(url) => Some(
            Gateway::parse(url)
                .map_err(|m| usage_error(format!("{source}: {m}")))?
                .with_key(env.get(KEY_ENV))
                .map_err(|m| usage_error(format!("{KEY_ENV}: {m}")))?,
        ),
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
    if opts.usage {
        let report = match &gateway {
            Some(g) => {
                let body = upstream.get_blocking(&g.target("/api/usage"), LIST_TIMEOUT);
                let body = body.map_err(|f| gateway_failure(f, g))?;
                usage::from_gateway(&body, &g.base)
                    .map_err(|message| Stop::Failed(Error::Upstream { message }))?
            }
            None => usage::from_file(&opts.sessions.join("usage.json"), crate::util::unix_now())
                .map_err(usage_error)?,
        };
        return print_out(usage::text(&report, opts.json).as_bytes(), opts.json);
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
        return print_out(text.as_bytes(), false);
    }
    match &gateway {
        Some(g) => ask_gateway(opts, g, &upstream),
        None => ask_provider(opts, env, &upstream),
    }
}

fn usage_error(message: String) -> Stop {
    Stop::Usage(Error::Usage { message })
}

/// `-newkey NAME`: a fresh key on stderr, shown this once, and its `keys.csv` line on
/// stdout — so `sigoe -newkey ana >> keys.csv` puts the hash in the file and the key on the
/// terminal, never the key in the file. The line is written and flushed first: a key is
/// shown only once its line is safe, since a key without its line is of no use (and a full
/// disk or a closed pipe, even a reader that went away, is then a failure: exit 1).
fn print_new_key(name: &str) -> Result<(), Stop> {
    let key = keys::generate().map_err(Stop::Failed)?;
    let line = format!("{}\n", keys::line_for(name, &key));
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Stop::Failed(Error::io(Path::new("stdout"), &e)))?;
    let notice = format!(
        "sigoe: a new client key for {name}, shown this once (the gateway keeps only its hash):\n\n    {key}\n\n\
         Clients send it as 'Authorization: Bearer <key>' (OpenAI SDKs: api_key) or 'x-api-key';\n\
         sigoe sends it from {KEY_ENV}.\n\
         The line for keys.csv is on stdout: add it, set models, rpm and concurrency, then\n\
         reload sigorest (SIGHUP, or systemctl reload sigorest).\n"
    );
    std::io::stderr()
        .lock()
        .write_all(notice.as_bytes())
        .map_err(|e| Stop::Failed(Error::io(Path::new("stderr"), &e)))
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
        .get_blocking(&g.target("/api/models"), LIST_TIMEOUT)
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
        let opened = wait(upstream.open_stream(
            &target,
            &prepared.body,
            req.timeout,
            req.timeout,
            req.retries,
            &hangup,
        ))?;
        let Some(streamed) = print_stream(opened.result.map_err(fail)?, &model.short, None)? else {
            return Ok(());
        };
        // A turn without an answer is not kept, its question neither: an empty assistant
        // message would be sent again with the session's next request.
        let assistant = match streamed.outcome() {
            Outcome::Text => streamed.gathered.assistant(),
            Outcome::Refusal(words) => assistant_message(json!(words)),
            Outcome::Nothing(why) => return Err(no_answer(&model.short, why)),
        };
        prepared.save_turn(&sessions, assistant);
        return Ok(());
    }
    let deadline = Instant::now() + req.timeout;
    let done = wait(upstream.complete(
        &target,
        &prepared.body,
        deadline,
        req.retries,
        &hangup,
        true,
    ))?
    .result
    .map_err(fail)?;
    let (answer, parsed) = (done.body, done.answer);
    let text = parsed.text();
    // A refusal is kept as the assistant's text; an answer with nothing in it keeps no turn
    // (`Prepared::turn` leaves it out, as for the gateway).
    let assistant = match whole_outcome(&parsed, &text) {
        Outcome::Refusal(words) => assistant_message(json!(words)),
        Outcome::Text | Outcome::Nothing(_) => assistant_message(parsed.turn_content()),
    };
    prepared.save_turn(&sessions, assistant);
    print_answer(opts, &model.short, &answer, &parsed, &text)
}

/// Server mode: the gateway does memory, sessions, clamps and retries; sigoe makes one
/// attempt, waiting a little longer than the timeout so the gateway can say what happened.
fn ask_gateway(opts: &Options, g: &Gateway, upstream: &Upstream) -> Result<(), Stop> {
    let prompt = read_prompt(opts)?;
    let stream = streams(opts);
    let body = request_body(opts, &prompt, stream).to_string();
    let target = g.target("/v1/chat/completions");
    let wait = opts.timeout.unwrap_or(DEFAULT_TIMEOUT) + GATEWAY_GRACE;
    let hangup = Hangup::default();
    if stream {
        let opened =
            self::wait(upstream.open_stream(&target, body.as_bytes(), wait, wait, 1, &hangup))?;
        let stream = opened.result.map_err(|f| gateway_failure(f, g))?;
        if let Some(streamed) = print_stream(stream, &opts.model, Some(&g.base))?
            && let Outcome::Nothing(why) = streamed.outcome()
        {
            return Err(no_answer(&opts.model, why));
        }
        return Ok(());
    }
    let done = self::wait(upstream.complete(
        &target,
        body.as_bytes(),
        Instant::now() + wait,
        1,
        &hangup,
        true,
    ))?
    .result
    .map_err(|f| gateway_failure(f, g))?;
    let (answer, parsed) = (done.body, done.answer);
    let text = parsed.text();
    print_answer(opts, &opts.model, &answer, &parsed, &text)
}

fn no_answer(short: &str, why: String) -> Stop {
    Stop::NoAnswer {
        short: short.to_string(),
        why,
    }
}

/// A stream's failure that the gateway reported in its last event — whose message already
/// says "upstream error: MODEL: …" — said once, with where it came from, instead of
/// "MODEL: provider reported an error: upstream error: MODEL: …".
fn through_gateway(short: &str, message: &str, at: &str) -> String {
    let said = message
        .strip_prefix(crate::chat::provider_error::REPORTED)
        .unwrap_or(message);
    let said = said.strip_prefix("upstream error: ").unwrap_or(said);
    let said = said
        .strip_prefix(short)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(said);
    format!("{short}: {said} (said the gateway at {at})")
}

/// What to do about a TLS failure with the gateway, by what rustls said: a certificate
/// nobody vouches for (none given with `-cacert`, or an old copy of one the gateway made
/// anew), one that does not name the host in the URL, another certificate problem.
fn tls_hint(message: &str) -> &'static str {
    if message.contains("UnknownIssuer") {
        " (-cacert PATH trusts the gateway's certs/server.crt; copy it again after the gateway made a new one)"
    } else if message.contains("not valid for name") || message.contains("NotValidForName") {
        " (the gateway's certificate does not name this host: add it to the gateway's -cert-hosts, restart it, and copy its new certs/server.crt)"
    } else if message.contains("certificate") {
        " (copy the gateway's current certs/server.crt for -cacert)"
    } else {
        ""
    }
}

/// A failed call to the gateway, in words about the gateway. Its errors keep their status
/// and message; its `model_not_found` is bad usage, as in direct mode.
fn gateway_failure(failure: Failure, g: &Gateway) -> Stop {
    let at = &g.base;
    let error = match failure {
        Failure::Connect(m) => {
            let hint = if g.is_https() { tls_hint(&m) } else { "" };
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
            let said = ProviderError::from_body(&body);
            let message = said
                .message
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            let not_found = said.code.as_deref() == Some("model_not_found");
            // The gateway's words are for any client; sigoe's only way to send a key is this.
            let hint = match (status, &g.key) {
                (401, None) => format!(" (sigoe sends the client key set in {KEY_ENV})"),
                (401, Some(_)) => format!(" (the key in {KEY_ENV} was refused)"),
                _ => String::new(),
            };
            let error = Error::UpstreamClient {
                status,
                message: format!("the gateway answered {status}: {message}{hint}"),
                kind: said.kind,
                code: said.code,
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
        let bytes = read_limited(stdin.lock(), MAX_STDIN_BYTES)?;
        // Piped text is taken as it comes: a byte that is not UTF-8 becomes U+FFFD.
        Some(String::from_utf8_lossy(&bytes).into_owned())
    } else {
        None
    };
    assemble_prompt(&opts.prompt, text.as_deref())
        .ok_or_else(|| usage_error("no prompt: give it as arguments or on stdin (see -h)".into()))
}

/// Reads `input` to its end, or refuses it as soon as it holds more than `limit` bytes,
/// without reading the rest (`yes | sigoe …` never ends).
pub fn read_limited(input: impl Read, limit: u64) -> Result<Vec<u8>, Stop> {
    let mut bytes = Vec::new();
    input
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| usage_error(format!("cannot read the prompt from stdin: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(usage_error(format!(
            "the prompt on stdin is over {} MiB, more than a gateway takes in a request",
            limit / (1024 * 1024)
        )));
    }
    Ok(bytes)
}

/// Runs an upstream call to its end on this thread (sigoe has nothing else to do meanwhile).
fn wait<F: std::future::Future>(call: F) -> Result<F::Output, Stop> {
    crate::rt::block_on(call).map_err(|e| {
        Stop::Failed(Error::Internal {
            message: format!("cannot wait for the network: {e}"),
        })
    })
}

/// Prints a stream's text as it arrives, flushing each piece; a refusal is printed as text
/// (it is what the model said). `None` when stdout went away (a reader like `head` that
/// stopped early): sigoe ends quietly then, without keeping the turn.
fn print_stream(
    stream: OpenStream,
    short: &str,
    gateway: Option<&str>,
) -> Result<Option<Streamed>, Stop> {
    let mut gathered = Gathered::default();
    let (mut any_text, mut refusal, mut finish_reason) = (false, String::new(), None);
    let mut out = std::io::stdout().lock();
    let mut shown = Shown::new(out.is_terminal());
    let mut last = None;
    let hangup = Hangup::default();
    // An emoji's surrogate pair split across two deltas is printed whole.
    let mut halves = Halves::default();
    let end = wait(crate::upstream::read_open_stream(
        stream,
        &mut gathered,
        &hangup,
        |_, chunk| {
            let choice = chunk.choice();
            if let Some(reason) = choice.and_then(|c| c.finish_reason.as_deref()) {
                finish_reason = Some(reason.to_string());
            }
            let refused = choice
                .and_then(|c| c.delta.as_ref())
                .and_then(|d| d.refusal());
            let mut text = halves.text(chunk.content());
            any_text |= !text.trim().is_empty();
            if let Some(words) = refused {
                refusal.push_str(words);
                text.to_mut().push_str(words);
            }
            if text.is_empty() {
                return Ok(());
            }
            last = text.chars().last();
            out.write_all(shown.piece(&text).as_bytes())?;
            out.flush()
        },
        async || Ok(()),
        None,
    ))?;
    if let Some(lone) = halves.end().filter(|_| matches!(end, StreamEnd::Done)) {
        last = Some('\u{fffd}');
        let lone = shown.piece(lone).into_owned();
        let _ = out.write_all(lone.as_bytes()).and_then(|()| out.flush());
    }
    if !matches!(end, StreamEnd::Stopped(_)) {
        let _ = out
            .write_all(shown.end().as_bytes())
            .and_then(|()| out.flush());
    }
    // Whatever was printed ends with a line break, so the shell prompt (or the reason of a
    // failure on stderr) starts on a line of its own.
    if last.is_some_and(|c| c != '\n') && !matches!(end, StreamEnd::Stopped(_)) {
        let _ = out.write_all(b"\n").and_then(|()| out.flush());
    }
    let failed = |message: &str| {
        Err(Stop::Failed(Error::Upstream {
            message: match gateway {
                None => format!("{short}: {message}"),
                Some(at) => through_gateway(short, message, at),
            },
        }))
    };
    match end {
        StreamEnd::Done => Ok(Some(Streamed {
            gathered,
            text: any_text,
            refusal,
            finish_reason,
        })),
        StreamEnd::Failed(message) => failed(&message),
        StreamEnd::TimedOut => failed(NO_EVENT),
        StreamEnd::Stopped(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(None),
        StreamEnd::Stopped(e) => Err(Stop::Failed(Error::io(Path::new("stdout"), &e))),
    }
}

/// Prints a whole answer: the response JSON with `-j`, else the assistant's text, or its
/// refusal. An answer without either fails after that (the JSON, with `-j`, is printed all
/// the same: it says what happened).
fn print_answer(
    opts: &Options,
    short: &str,
    answer: &[u8],
    parsed: &Answer,
    text: &str,
) -> Result<(), Stop> {
    let outcome = whole_outcome(parsed, text);
    let mut out = match (&outcome, opts.json) {
        (_, true) => answer.to_vec(),
        (Outcome::Refusal(words), false) => words.as_bytes().to_vec(),
        (Outcome::Text, false) => text.as_bytes().to_vec(),
        (Outcome::Nothing(_), false) => Vec::new(),
    };
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    print_out(&out, opts.json)?;
    match outcome {
        Outcome::Nothing(why) => Err(no_answer(short, why)),
        Outcome::Text | Outcome::Refusal(_) => Ok(()),
    }
}

/// Writes text, or JSON with `json`, to stdout: see [`for_stdout`]. A reader that went away
/// is not an error: sigoe just ends.
fn print_out(bytes: &[u8], json: bool) -> Result<(), Stop> {
    let mut out = std::io::stdout().lock();
    let written = match for_stdout(bytes, out.is_terminal(), json) {
        Cow::Borrowed(raw) => out.write_all(raw),
        Cow::Owned(text) => out.write_all(&text),
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Stop::Failed(Error::io(Path::new("stdout"), &e))),
    }
}

/// What [`print_out`] writes: the bytes as they are to a pipe or a file; to a terminal,
/// text (a byte that is not UTF-8 becomes U+FFFD, as a terminal would show it) with its
/// control characters shown ([`Shown`]), or JSON with them escaped ([`json_escaped`]).
pub fn for_stdout(bytes: &[u8], terminal: bool, json: bool) -> Cow<'_, [u8]> {
    if !terminal {
        return Cow::Borrowed(bytes);
    }
    let text = String::from_utf8_lossy(bytes);
    let out = if json {
        json_escaped(&text).into_owned()
    } else {
        let mut shown = Shown::new(true);
        let mut out = shown.piece(&text).into_owned();
        out.push_str(shown.end());
        out
    };
    if out.as_bytes() == bytes {
        Cow::Borrowed(bytes)
    } else {
        Cow::Owned(out.into_bytes())
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
