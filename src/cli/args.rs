//! sigoe's command line: the arguments → [`Options`] (flags, then the prompt), and the
//! `-h` text.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::chat::request::{DEFAULT_RETRIES, DEFAULT_TIMEOUT, MAX_RETRIES, MAX_TIMEOUT};
use crate::config::{
    bad, go_style, level, looks_like_flag, number, path_value, quote, switch_values, text_value,
};
use crate::error::Error;
use crate::state::{keys, session};

/// The model asked when `-m` is not given.
pub const DEFAULT_MODEL: &str = "gpt41";
/// The variable naming a gateway when `-server` is not given.
pub const SERVER_ENV: &str = "SIGOREST_URL";
/// The variable holding the client key sigoe sends to a gateway that uses `keys.csv`.
pub const KEY_ENV: &str = "SIGOREST_API_KEY";

/// sigoe's validated command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub model: String,
    pub session: Option<String>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    /// `-t` as given. Without it, direct mode waits [`DEFAULT_TIMEOUT`] and a gateway applies
    /// its own default: sending ours could exceed the gateway's `-max-timeout` (a 400).
    pub timeout: Option<Duration>,
    pub retries: u32,
    /// `-l`: list the models.
    pub list: bool,
    /// `-i MODEL`: one model in detail.
    pub info: Option<String>,
    /// `-usage`: the gateway's usage totals.
    pub usage: bool,
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
    /// `-newkey NAME`: print a fresh client key and its `keys.csv` line.
    pub newkey: Option<String>,
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
            timeout: None,
            retries: DEFAULT_RETRIES,
            list: false,
            info: None,
            usage: false,
            log_level: log::LevelFilter::Warn,
            json: false,
            stream: false,
            server: None,
            cacert: None,
            memory: PathBuf::from("./memory.json"),
            sessions: PathBuf::from("./.sessions"),
            local_files_given: false,
            newkey: None,
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
    "m", "s", "n", "T", "t", "r", "i", "v", "server", "cacert", "memory", "sessions", "newkey",
];

/// Flags that take no value (but may be given `=true` or `=false`, as in Go).
const SWITCHES: &[&str] = &["q", "l", "usage", "j", "stream", "version"];

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
    let flags = go_style(switch_values(flags, SWITCHES)?);
    for arg in &flags {
        match arg.to_str() {
            Some("-h" | "--help") => return Ok(Command::Help),
            Some("--version") => return Ok(Command::Version),
            _ => {}
        }
    }
    let mut p = pico_args::Arguments::from_vec(flags);
    let mut o = Options::default();
    question_flags(&mut p, &mut o)?;
    where_flags(&mut p, &mut o)?;
    let mut quiet = false;
    while p.contains("-q") {
        quiet = true;
    }
    while p.contains("-l") {
        o.list = true;
    }
    while p.contains("--usage") {
        o.usage = true;
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
    check_together(&o)?;
    Ok(Command::Run(Box::new(o)))
}

/// What to ask and how: model, session, limits, timeout, retries, the model to show.
fn question_flags(p: &mut pico_args::Arguments, o: &mut Options) -> Result<(), Error> {
    if let Some(v) = text_value(p, "-m")? {
        o.model = not_empty("-m", v)?;
    }
    if let Some(v) = text_value(p, "-s")? {
        session::validate_id(&v).map_err(|e| bad(format!("-s: {e}")))?;
        o.session = Some(v);
    }
    if let Some(v) = text_value(p, "-n")? {
        o.max_tokens = Some(number("-n", &v, 1, u64::from(u32::MAX))? as u64);
    }
    if let Some(v) = text_value(p, "-T")? {
        match v.trim().parse::<f64>() {
            Ok(t) if t.is_finite() => o.temperature = Some(t),
            _ => return Err(bad(format!("-T: {} is not a number (e.g. 0.7)", quote(&v)))),
        }
    }
    if let Some(v) = text_value(p, "-t")? {
        let max = MAX_TIMEOUT.as_secs();
        match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s <= max as f64 => o.timeout = Some(Duration::from_secs_f64(s)),
            _ => {
                return Err(bad(format!(
                    "-t: {} is not a number of seconds above 0 and at most {max}",
                    quote(&v)
                )));
            }
        }
    }
    if let Some(v) = text_value(p, "-r")? {
        o.retries = number("-r", &v, 1, u64::from(MAX_RETRIES))? as u32;
    }
    if let Some(v) = text_value(p, "-i")? {
        o.info = Some(not_empty("-i", v)?);
    }
    Ok(())
}

/// Where sigoe works and what it reads: log level, gateway, certificate, files, `-newkey`.
fn where_flags(p: &mut pico_args::Arguments, o: &mut Options) -> Result<(), Error> {
    if let Some(v) = text_value(p, "-v")? {
        o.log_level = level("-v", &v)?;
    }
    if let Some(v) = text_value(p, "--server")? {
        o.server = Some(v.trim().to_string());
    }
    o.cacert = path_value(p, "--cacert")?;
    if let Some(v) = path_value(p, "--memory")? {
        o.memory = v;
        o.local_files_given = true;
    }
    if let Some(v) = path_value(p, "--sessions")? {
        o.sessions = v;
        o.local_files_given = true;
    }
    if let Some(v) = text_value(p, "--newkey")? {
        let name = v.trim().to_string();
        keys::check_name(&name).map_err(|m| bad(format!("-newkey: {m}")))?;
        o.newkey = Some(name);
    }
    Ok(())
}

/// Flags that do not go together.
fn check_together(o: &Options) -> Result<(), Error> {
    let shows: Vec<&str> = [
        (o.list, "-l"),
        (o.info.is_some(), "-i"),
        (o.usage, "-usage"),
    ]
    .into_iter()
    .filter_map(|(on, flag)| on.then_some(flag))
    .collect();
    if let [a, b, ..] = shows[..] {
        return Err(bad(format!("{a} and {b} do not go together")));
    }
    let only = if o.newkey.is_some() {
        Some("-newkey")
    } else {
        shows.first().copied()
    };
    if let Some(flag) = only
        && !o.prompt.is_empty()
    {
        return Err(bad(format!("{flag} takes no prompt")));
    }
    if o.newkey.is_some() && !shows.is_empty() {
        return Err(bad("-newkey does not go with -l, -i or -usage".into()));
    }
    if o.json && o.stream {
        return Err(bad(
            "-j prints one whole response, so it does not go with -stream".into(),
        ));
    }
    Ok(())
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
                   event and each gap (default {timeout}, at most {max_timeout}; with
                   -server, default and maximum are the gateway's)
  -r RETRIES       attempts in all, 1-{max_retries} (default {retries})
  -stream          stream the answer even when stdout is not a terminal
                   (on a terminal it always streams)
  -j               print the whole response JSON (never streamed)
  -l               list every catalog model (with -server: the gateway's models)
  -i MODEL         one model in detail
  -usage           the gateway's usage today, this month and all time, per key
                   and model (with -server: its GET /api/usage; else the file
                   usage.json in -sessions); -j prints the JSON
  -server URL      ask the sigorest gateway at URL (http://host:9080 or
                   https://host:9443, no path but /v1) instead of the provider; default
                   ${server_env}; -server '' forces direct mode
  -cacert PATH     trust this PEM certificate (the gateway's self-signed
                   certs/server.crt) for an https:// -server
  -memory PATH     memory block put first into every request, direct mode
                   (default {memory})
  -sessions DIR    session files, direct mode (default {sessions})
  -newkey NAME     print a fresh client key for a gateway's keys.csv: the key
                   on stderr (shown once), its keys.csv line on stdout
  -v LEVEL         log level on stderr: debug, info, warn, error (default warn)
  -q               quiet: errors only
  -version         print the version and exit
  -h, -help        print this help and exit

Environment (direct mode): MAMMOUTH_API_KEY, MOONSHOT_API_KEY, ZAI_API_KEY and
MAMMOUTH_BASE_URL, MOONSHOT_BASE_URL, ZAI_BASE_URL, as for the server.
Through a gateway: ${key_env}, the client key for a gateway that uses keys.

Exit status: 0 answered, 1 the model or the network failed (the reason on
stderr), 2 bad usage (a bad flag, no prompt, an unknown model, a file to fix).
",
        version = crate::VERSION,
        model = d.model,
        timeout = DEFAULT_TIMEOUT.as_secs(),
        max_timeout = MAX_TIMEOUT.as_secs(),
        retries = d.retries,
        max_retries = MAX_RETRIES,
        server_env = SERVER_ENV,
        key_env = KEY_ENV,
        memory = d.memory.display(),
        sessions = d.sessions.display(),
    )
}
