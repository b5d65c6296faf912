//! The command line: Go-style single-dash flags, as the server's, read in two steps (raw
//! values, then checked [`Options`]).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::BenchError;
use super::gateway;
use super::subject::{self, Calls, Source, Spec, Template};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Measuring window per level and target.
    pub duration: Duration,
    pub levels: Vec<usize>,
    /// How many times each level is measured (the gateways taking turns at going first).
    pub rounds: usize,
    pub json: PathBuf,
    /// sigorest: its binary (`-gateway`); the bench's tests put a stand-in at a URL here.
    pub gateway: Source,
    /// Measure the fake upstream only (no gateway).
    pub direct_only: bool,
    /// Skip the stream measurements.
    pub no_stream: bool,
    /// Skip the JSON (non-streamed) measurements.
    pub no_completions: bool,
    pub stream_events: usize,
    pub stream_gap: Duration,
    /// The fake's delay before every answer.
    pub upstream_delay: Duration,
    /// Parallel calls to the slow model (0: skip that test).
    pub parallel: usize,
    /// How long the slow model's upstream takes.
    pub slow: Duration,
    pub workers: Option<usize>,
    pub queue: Option<usize>,
    /// The fake upstream's port (0: one the kernel picks).
    pub fake_port: u16,
    /// The other gateway to compare with.
    pub compare: Option<Spec>,
    /// Only serve the fake upstream, until killed (for other load tools).
    pub serve_fake: bool,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Options>),
    Help,
}

pub fn usage() -> String {
    "Usage: sigorest-bench [flags]

Starts an instant fake upstream and the sigorest release binary (next to this one) on
127.0.0.1, drives load straight to the fake and through the gateway, prints markdown
tables and writes the numbers as JSON.

  -duration SECS        measuring time per level and target (default 5)
  -quick                1 s per level (a smoke run)
  -levels LIST          concurrency levels, comma-separated (default 1,10,100)
  -rounds N             measure each level N times, sigorest and the other gateway
                        taking turns at going first; report each target's median round
                        and the range of the rounds (default 1, at most 20)
  -json PATH            where to write the results (default bench.json)
  -gateway PATH         the sigorest binary (default: next to this one)
  -direct-only          measure the fake upstream only, without a gateway
  -no-stream            skip the stream measurements
  -no-completions       skip the non-streamed (JSON) completions
  -stream-events N      events per stream (default 20)
  -stream-gap-ms N      milliseconds between stream events (default 10)
  -upstream-delay-ms N  the fake's delay before each answer (default 0)
  -parallel N           parallel calls to the slow model (default 100; 0 skips)
  -slow-ms N            how long the slow model's upstream takes (default 1000)
  -workers N, -queue N  passed to the gateway (default: the gateway's own)
  -fake-port N          the fake upstream's port on 127.0.0.1 (default: any free one)
  -serve-fake           only start the fake upstream, print its address and serve until
                        killed (to drive it and gateways in front of it with wrk or
                        another load tool)

Comparing with another gateway (same fake upstream, load and bodies):
  -compare-url URL      one already running at http://HOST:PORT, whose OpenAI-compatible
                        base URL points at http://127.0.0.1:<fake-port>/v1 (needs -fake-port)
  -compare-cmd LINE     one the bench starts, stops and watches; it fills {port} (a free
                        port, required), {upstream} (the fake's base URL), {slow_upstream}
                        (the same, answering after -slow-ms) and {fake} (its host:port).
                        Run without a shell, in a work directory of its own, with a clean
                        environment: PATH, sigorest's provider variables pointed at the
                        fake, leading NAME=VALUE words and -compare-env
  -compare-env N=V      one more environment variable for -compare-cmd (repeatable)
  -compare-pid N        the -compare-url gateway's process, for its memory and threads
  -compare-model NAME   its name for the instant model (default gpt41)
  -compare-slow-model NAME  its name for the slow one (default kimi)
  -compare-path PATH    its chat completions path (default /v1/chat/completions)
  -compare-name NAME    its label in the tables (default other)
  -h, -help             this text"
        .to_string()
}

/// The flags as given, before they are checked.
#[derive(Default)]
struct Raw {
    duration: Option<f64>,
    levels: Option<String>,
    rounds: Option<usize>,
    json: Option<PathBuf>,
    gateway: Option<PathBuf>,
    events: Option<usize>,
    gap: Option<u64>,
    delay: Option<u64>,
    parallel: Option<usize>,
    slow: Option<u64>,
    workers: Option<usize>,
    queue: Option<usize>,
    fake_port: Option<u16>,
    quick: bool,
    direct_only: bool,
    no_stream: bool,
    no_completions: bool,
    serve_fake: bool,
    compare: RawCompare,
}

#[derive(Default)]
struct RawCompare {
    url: Option<String>,
    cmd: Option<String>,
    env: Vec<String>,
    pid: Option<u32>,
    model: Option<String>,
    slow_model: Option<String>,
    path: Option<String>,
    name: Option<String>,
}

impl RawCompare {
    fn any(&self) -> bool {
        !self.env.is_empty()
            || self.pid.is_some()
            || self.model.is_some()
            || self.slow_model.is_some()
            || self.path.is_some()
            || self.name.is_some()
    }
}

fn usage_error(e: pico_args::Error) -> BenchError {
    BenchError::Usage(e.to_string())
}

/// Parses the command line (Go-style single-dash flags, as the server's).
pub fn parse_args(args: Vec<OsString>) -> Result<Command, BenchError> {
    let mut a = pico_args::Arguments::from_vec(sigorest::config::go_style(args));
    if a.contains(["-h", "--help"]) {
        return Ok(Command::Help);
    }
    let raw = take(&mut a).map_err(usage_error)?;
    if let Some(r) = a.finish().first() {
        return Err(BenchError::Usage(format!(
            "unknown argument {}",
            r.to_string_lossy()
        )));
    }
    check(raw).map(|o| Command::Run(Box::new(o)))
}

/// Reads every flag.
fn take(a: &mut pico_args::Arguments) -> Result<Raw, pico_args::Error> {
    Ok(Raw {
        duration: a.opt_value_from_str("--duration")?,
        levels: a.opt_value_from_str("--levels")?,
        rounds: a.opt_value_from_str("--rounds")?,
        json: a.opt_value_from_str("--json")?,
        gateway: a.opt_value_from_str("--gateway")?,
        events: a.opt_value_from_str("--stream-events")?,
        gap: a.opt_value_from_str("--stream-gap-ms")?,
        delay: a.opt_value_from_str("--upstream-delay-ms")?,
        parallel: a.opt_value_from_str("--parallel")?,
        slow: a.opt_value_from_str("--slow-ms")?,
        workers: a.opt_value_from_str("--workers")?,
        queue: a.opt_value_from_str("--queue")?,
        fake_port: a.opt_value_from_str("--fake-port")?,
        quick: a.contains("--quick"),
        direct_only: a.contains("--direct-only"),
        no_stream: a.contains("--no-stream"),
        no_completions: a.contains("--no-completions"),
        serve_fake: a.contains("--serve-fake"),
        compare: RawCompare {
            url: a.opt_value_from_str("--compare-url")?,
            cmd: a.opt_value_from_str("--compare-cmd")?,
            env: a.values_from_str("--compare-env")?,
            pid: a.opt_value_from_str("--compare-pid")?,
            model: a.opt_value_from_str("--compare-model")?,
            slow_model: a.opt_value_from_str("--compare-slow-model")?,
            path: a.opt_value_from_str("--compare-path")?,
            name: a.opt_value_from_str("--compare-name")?,
        },
    })
}

/// Checks the values and fills in the defaults.
fn check(raw: Raw) -> Result<Options, BenchError> {
    let events = raw.events.unwrap_or(20);
    if !(1..=10_000).contains(&events) {
        return Err(BenchError::Usage(
            "-stream-events must be from 1 to 10000".into(),
        ));
    }
    let rounds = raw.rounds.unwrap_or(1);
    if !(1..=20).contains(&rounds) {
        return Err(BenchError::Usage("-rounds must be from 1 to 20".into()));
    }
    let parallel = raw.parallel.unwrap_or(100);
    if parallel > 1000 {
        return Err(BenchError::Usage("-parallel must be at most 1000".into()));
    }
    let fake_port = raw.fake_port.unwrap_or(0);
    let compare = compare(&raw.compare, fake_port)?;
    if compare.is_some() && raw.direct_only {
        return Err(BenchError::Usage(
            "-direct-only measures no gateway: it cannot compare one".into(),
        ));
    }
    if raw.serve_fake && (compare.is_some() || raw.direct_only) {
        return Err(BenchError::Usage(
            "-serve-fake only serves the fake upstream: it measures nothing".into(),
        ));
    }
    Ok(Options {
        serve_fake: raw.serve_fake,
        duration: duration(raw.quick, raw.duration)?,
        levels: levels(raw.levels.as_deref())?,
        rounds,
        json: raw.json.unwrap_or_else(|| PathBuf::from("bench.json")),
        gateway: Source::Sigorest(raw.gateway.unwrap_or_else(gateway::default_binary)),
        direct_only: raw.direct_only,
        no_stream: raw.no_stream,
        no_completions: raw.no_completions,
        stream_events: events,
        stream_gap: ms("-stream-gap-ms", raw.gap, 10)?,
        upstream_delay: ms("-upstream-delay-ms", raw.delay, 0)?,
        parallel,
        slow: ms("-slow-ms", raw.slow, 1000)?,
        workers: raw.workers,
        queue: raw.queue,
        fake_port,
        compare,
    })
}

fn duration(quick: bool, duration: Option<f64>) -> Result<Duration, BenchError> {
    match (quick, duration) {
        (true, _) => Ok(Duration::from_secs(1)),
        (false, Some(d)) if d > 0.0 && d <= 3600.0 => Ok(Duration::from_secs_f64(d)),
        (false, Some(_)) => Err(BenchError::Usage(
            "-duration must be above 0 and at most 3600 seconds".into(),
        )),
        (false, None) => Ok(Duration::from_secs(5)),
    }
}

fn levels(list: Option<&str>) -> Result<Vec<usize>, BenchError> {
    let Some(l) = list else {
        return Ok(vec![1, 10, 100]);
    };
    l.split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
        })
        .collect::<Option<Vec<_>>>()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            BenchError::Usage(format!(
                "-levels must be comma-separated numbers from 1 to 1000, not {l:?}"
            ))
        })
}

fn ms(name: &str, v: Option<u64>, default: u64) -> Result<Duration, BenchError> {
    match v.unwrap_or(default) {
        v if v <= 60_000 => Ok(Duration::from_millis(v)),
        _ => Err(BenchError::Usage(format!(
            "{name} must be at most 60000 milliseconds"
        ))),
    }
}

/// The other gateway, when one is asked for.
fn compare(c: &RawCompare, fake_port: u16) -> Result<Option<Spec>, BenchError> {
    let usage = BenchError::Usage;
    let source = match (&c.url, &c.cmd) {
        (Some(_), Some(_)) => {
            return Err(usage(
                "-compare-url and -compare-cmd exclude each other".into(),
            ));
        }
        (None, None) if c.any() => {
            return Err(usage(
                "the -compare-... flags need -compare-url or -compare-cmd".into(),
            ));
        }
        (None, None) => return Ok(None),
        (Some(url), None) => {
            if fake_port == 0 {
                return Err(usage(
                    "-compare-url needs -fake-port N: the port the other gateway's upstream base URL points at".into(),
                ));
            }
            if !c.env.is_empty() {
                return Err(usage("-compare-env is for -compare-cmd".into()));
            }
            let addr = subject::parse_url(url).map_err(usage)?;
            Source::Url {
                url: url.clone(),
                addr,
                pid: c.pid,
            }
        }
        (None, Some(line)) => {
            if c.pid.is_some() {
                return Err(usage(
                    "-compare-pid is for -compare-url (the bench knows the process it starts)"
                        .into(),
                ));
            }
            let t =
                Template::parse(line, &c.env).map_err(|e| usage(format!("-compare-cmd: {e}")))?;
            Source::Command(t)
        }
    };
    let text = |flag: &str, v: &Option<String>, default: &str| match v.as_deref() {
        None => Ok(default.to_string()),
        Some(s) if !s.trim().is_empty() && s.len() <= 200 && !s.contains(['\r', '\n', '|']) => {
            Ok(s.to_string())
        }
        Some(s) => Err(usage(format!(
            "{flag} {s:?}: empty, too long or not one line"
        ))),
    };
    let sigorest = Calls::sigorest();
    let path = text("-compare-path", &c.path, &sigorest.path)?;
    if !path.starts_with('/') || path.contains(' ') {
        return Err(usage(format!(
            "-compare-path must start with / and hold no space, not {path:?}"
        )));
    }
    Ok(Some(Spec {
        name: text("-compare-name", &c.name, "other")?,
        source,
        calls: Calls {
            path,
            model: text("-compare-model", &c.model, &sigorest.model)?,
            slow_model: text("-compare-slow-model", &c.slow_model, &sigorest.slow_model)?,
        },
    }))
}
