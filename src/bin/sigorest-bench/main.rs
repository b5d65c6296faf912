//! `sigorest-bench`: what the gateway adds on top of its upstream.
//!
//! The bench starts an instant fake upstream in-process ([`fake`]), the sigorest release
//! binary pointed at it ([`gateway`]), and drives load over keep-alive connections at
//! several concurrency levels, both straight to the fake (the ceiling: what the load
//! generator and the fake manage on this machine) and through the gateway ([`load`]). It
//! reports per level requests/s, latency percentiles and the latency the gateway adds; for
//! streams the time to the first event and the delay of every event; the gateway's memory
//! and threads; and the wall time of many parallel calls to a slow model ([`report`]).

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

mod fake;
mod gateway;
mod load;
mod report;
#[cfg(test)]
mod tests;

use gateway::{Gateway, Launch};
use load::{Plan, Progress};
use report::{JsonRow, Latency, Process, Report, StreamLatency, StreamRow};

/// Why the bench could not run.
#[derive(Debug)]
pub enum BenchError {
    /// A bad flag or value (exit status 2).
    Usage(String),
    /// The gateway could not be started or died.
    Gateway(String),
    Io {
        doing: String,
        error: std::io::Error,
    },
}

impl BenchError {
    fn io(doing: &str, error: std::io::Error) -> BenchError {
        BenchError::Io {
            doing: doing.to_string(),
            error,
        }
    }
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::Usage(m) | BenchError::Gateway(m) => f.write_str(m),
            BenchError::Io { doing, error } => write!(f, "{doing}: {error}"),
        }
    }
}

impl std::error::Error for BenchError {}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Measuring window per level and target.
    pub duration: Duration,
    pub levels: Vec<usize>,
    pub json: PathBuf,
    /// The gateway binary.
    pub gateway: PathBuf,
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
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Options),
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
  -h, -help             this text"
        .to_string()
}

/// Parses the command line (Go-style single-dash flags, as the server's).
pub fn parse_args(args: Vec<OsString>) -> Result<Command, BenchError> {
    let mut a = pico_args::Arguments::from_vec(sigorest::config::go_style(args));
    if a.contains(["-h", "--help"]) {
        return Ok(Command::Help);
    }
    let bad = |e: pico_args::Error| BenchError::Usage(e.to_string());
    let duration: Option<f64> = a.opt_value_from_str("--duration").map_err(bad)?;
    let levels: Option<String> = a.opt_value_from_str("--levels").map_err(bad)?;
    let json: Option<PathBuf> = a.opt_value_from_str("--json").map_err(bad)?;
    let gateway: Option<PathBuf> = a.opt_value_from_str("--gateway").map_err(bad)?;
    let events: Option<usize> = a.opt_value_from_str("--stream-events").map_err(bad)?;
    let gap: Option<u64> = a.opt_value_from_str("--stream-gap-ms").map_err(bad)?;
    let delay: Option<u64> = a.opt_value_from_str("--upstream-delay-ms").map_err(bad)?;
    let parallel: Option<usize> = a.opt_value_from_str("--parallel").map_err(bad)?;
    let slow: Option<u64> = a.opt_value_from_str("--slow-ms").map_err(bad)?;
    let workers: Option<usize> = a.opt_value_from_str("--workers").map_err(bad)?;
    let queue: Option<usize> = a.opt_value_from_str("--queue").map_err(bad)?;
    let quick = a.contains("--quick");
    let direct_only = a.contains("--direct-only");
    let no_stream = a.contains("--no-stream");
    let no_completions = a.contains("--no-completions");
    let rest = a.finish();
    if let Some(r) = rest.first() {
        return Err(BenchError::Usage(format!(
            "unknown argument {}",
            r.to_string_lossy()
        )));
    }
    let duration = match (quick, duration) {
        (true, _) => 1.0,
        (false, Some(d)) if d > 0.0 && d <= 3600.0 => d,
        (false, Some(_)) => {
            return Err(BenchError::Usage(
                "-duration must be above 0 and at most 3600 seconds".into(),
            ));
        }
        (false, None) => 5.0,
    };
    let levels = match levels {
        None => vec![1, 10, 100],
        Some(l) => l
            .split(',')
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
            })?,
    };
    let events = events.unwrap_or(20);
    if !(1..=10_000).contains(&events) {
        return Err(BenchError::Usage(
            "-stream-events must be from 1 to 10000".into(),
        ));
    }
    let ms = |name: &str, v: Option<u64>, default: u64| match v.unwrap_or(default) {
        v if v <= 60_000 => Ok(Duration::from_millis(v)),
        _ => Err(BenchError::Usage(format!(
            "{name} must be at most 60000 milliseconds"
        ))),
    };
    let parallel = parallel.unwrap_or(100);
    if parallel > 1000 {
        return Err(BenchError::Usage("-parallel must be at most 1000".into()));
    }
    Ok(Command::Run(Options {
        duration: Duration::from_secs_f64(duration),
        levels,
        json: json.unwrap_or_else(|| PathBuf::from("bench.json")),
        gateway: gateway.unwrap_or_else(gateway::default_binary),
        direct_only,
        no_stream,
        no_completions,
        stream_events: events,
        stream_gap: ms("-stream-gap-ms", gap, 10)?,
        upstream_delay: ms("-upstream-delay-ms", delay, 0)?,
        parallel,
        slow: ms("-slow-ms", slow, 1000)?,
        workers,
        queue,
    }))
}

/// The instant all stamps count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub(crate) fn since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The first position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

const DIRECT_PATH: &str = "/v1/chat/completions";
const MESSAGES: &str = r#""messages":[{"role":"user","content":"Hello! Say hello back."}]"#;

/// Runs the bench: tables on `out`, a progress line on stderr, JSON at `opts.json`.
pub fn run(opts: &Options, out: &mut dyn Write) -> Result<Report, BenchError> {
    epoch();
    let load_before = loadavg();
    let fake = fake::Fake::start(fake::Profile {
        delay: opts.upstream_delay,
        events: opts.stream_events,
        gap: opts.stream_gap,
    })
    .map_err(|e| BenchError::io("starting the fake upstream", e))?;
    let gw = if opts.direct_only {
        None
    } else {
        Some(Gateway::start(&Launch {
            binary: &opts.gateway,
            upstream: fake.addr(),
            slow_ms: opts.slow.as_millis() as u64,
            workers: opts.workers,
            queue: opts.queue,
        })?)
    };
    // Let the gateway's start-up (Ollama discovery...) settle before reading its idle size.
    if gw.is_some() {
        thread::sleep(Duration::from_millis(500));
    }
    let idle = gw.as_ref().map(Gateway::status);
    let warmup = (opts.duration / 5).min(Duration::from_secs(1));

    let direct_json = body("gpt-4.1", false);
    let gw_json = body("gpt41", false);
    let mut json_rows = Vec::new();
    let json_levels: &[usize] = if opts.no_completions {
        &[]
    } else {
        &opts.levels
    };
    for &n in json_levels {
        let plan = |addr, body: &str, stream| Plan {
            addr,
            request: Arc::new(load::post(addr, DIRECT_PATH, body)),
            stream,
            conns: n,
            warmup,
            stagger: Duration::ZERO,
            measure: opts.duration,
        };
        let direct = report::latency(phase_plain(
            &format!("c={n} direct json"),
            &plan(fake.addr(), &direct_json, false),
        ));
        let (gateway, process) = match &gw {
            Some(g) => {
                let (s, threads) = phase(
                    &format!("c={n} gateway json"),
                    &plan(g.addr, &gw_json, false),
                    Some(g.pid()),
                );
                let p = Process {
                    peak_rss_kb: g.status().hwm_kb,
                    threads_max: threads,
                };
                (Some(report::latency(s)), Some(p))
            }
            None => (None, None),
        };
        json_rows.push(json_row(n, direct, gateway, process));
    }

    let direct_stream = body("gpt-4.1", true);
    let gw_stream = body("gpt41", true);
    let mut stream_rows = Vec::new();
    let stream_levels: &[usize] = if opts.no_stream { &[] } else { &opts.levels };
    for &n in stream_levels {
        let plan = |addr, body: &str| Plan {
            addr,
            request: Arc::new(load::post(addr, DIRECT_PATH, body)),
            stream: true,
            conns: n,
            warmup,
            // Streams of equal length started together would start and end together
            // forever: spread them over one stream's length, as real clients are.
            stagger: opts.stream_gap * opts.stream_events as u32,
            measure: opts.duration,
        };
        let direct = report::stream_latency(phase_plain(
            &format!("c={n} direct stream"),
            &plan(fake.addr(), &direct_stream),
        ));
        let (gateway, process) = match &gw {
            Some(g) => {
                let (s, threads) = phase(
                    &format!("c={n} gateway stream"),
                    &plan(g.addr, &gw_stream),
                    Some(g.pid()),
                );
                let p = Process {
                    peak_rss_kb: g.status().hwm_kb,
                    threads_max: threads,
                };
                (Some(report::stream_latency(s)), Some(p))
            }
            None => (None, None),
        };
        stream_rows.push(stream_row(n, direct, gateway, process));
    }

    let parallel = (opts.parallel > 0).then(|| {
        let slow_ms = opts.slow.as_millis() as u64;
        let direct_path = format!("/delay-{slow_ms}{DIRECT_PATH}");
        let req = Arc::new(load::post(
            fake.addr(),
            &direct_path,
            &body("kimi-k2.5", false),
        ));
        note(&format!("{} parallel slow calls, direct", opts.parallel));
        let (direct, direct_errors) = load::burst(fake.addr(), &req, opts.parallel);
        let through = gw.as_ref().map(|g| {
            note(&format!("{} parallel slow calls, gateway", opts.parallel));
            let req = Arc::new(load::post(g.addr, DIRECT_PATH, &body("kimi", false)));
            load::burst(g.addr, &req, opts.parallel)
        });
        report::ParallelRow {
            calls: opts.parallel,
            upstream_ms: slow_ms,
            direct_s: direct.as_secs_f64(),
            direct_errors,
            gateway_s: through.map(|(d, _)| d.as_secs_f64()),
            gateway_errors: through.map(|(_, e)| e),
        }
    });

    let process = match (&gw, idle) {
        (Some(g), Some(idle)) => {
            let now = g.status();
            let threads_max = json_rows
                .iter()
                .filter_map(|r| r.process)
                .chain(stream_rows.iter().filter_map(|r| r.process))
                .map(|p| p.threads_max)
                .max()
                .unwrap_or(0)
                .max(now.threads);
            Some(report::ProcessRow {
                pid: g.pid(),
                rss_idle_kb: idle.rss_kb,
                threads_idle: idle.threads,
                peak_rss_kb: now.hwm_kb,
                threads_max,
                rss_after_kb: now.rss_kb,
            })
        }
        _ => None,
    };
    let gateway_log = gw.as_ref().map(Gateway::log).unwrap_or_default();
    if let Some(g) = gw {
        g.stop();
    }
    fake.stop();
    clear_progress();
    if !gateway_log.trim().is_empty() {
        eprintln!("the gateway logged:\n{}", gateway_log.trim_end());
    }

    let report = Report {
        sigorest: sigorest::VERSION.to_string(),
        commit: commit(),
        date: sigorest::logging::rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        ),
        machine: report::Machine {
            cpus: thread::available_parallelism().map_or(1, |n| n.get()),
            load_before,
            load_after: loadavg(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        },
        settings: report::Settings {
            duration_s: opts.duration.as_secs_f64(),
            warmup_s: warmup.as_secs_f64(),
            levels: opts.levels.clone(),
            stream_events: opts.stream_events,
            stream_gap_ms: opts.stream_gap.as_millis() as u64,
            upstream_delay_ms: opts.upstream_delay.as_millis() as u64,
            workers: opts.workers,
            queue: opts.queue,
            gateway: (!opts.direct_only).then(|| opts.gateway.display().to_string()),
        },
        json: json_rows,
        stream: stream_rows,
        gateway_process: process,
        parallel,
    };
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    std::fs::write(&opts.json, text + "\n")
        .map_err(|e| BenchError::io(&format!("writing {}", opts.json.display()), e))?;
    out.write_all(report::markdown(&report).as_bytes())
        .map_err(|e| BenchError::io("writing the tables", e))?;
    Ok(report)
}

/// A chat-completions body for `model`.
fn body(model: &str, stream: bool) -> String {
    let stream = if stream { r#","stream":true"# } else { "" };
    format!(r#"{{"model":"{model}",{MESSAGES}{stream}}}"#)
}

fn json_row(
    n: usize,
    direct: Latency,
    gateway: Option<Latency>,
    process: Option<Process>,
) -> JsonRow {
    JsonRow {
        concurrency: n,
        added_p50_ms: gateway.as_ref().map(|g| g.p50_ms - direct.p50_ms),
        added_p99_ms: gateway.as_ref().map(|g| g.p99_ms - direct.p99_ms),
        direct,
        gateway,
        process,
    }
}

fn stream_row(
    n: usize,
    direct: StreamLatency,
    gateway: Option<StreamLatency>,
    process: Option<Process>,
) -> StreamRow {
    StreamRow {
        concurrency: n,
        added_first_event_p50_ms: gateway
            .as_ref()
            .map(|g| g.first_event_p50_ms - direct.first_event_p50_ms),
        added_event_p50_ms: gateway
            .as_ref()
            .map(|g| g.event_p50_ms - direct.event_p50_ms),
        added_event_p99_ms: gateway
            .as_ref()
            .map(|g| g.event_p99_ms - direct.event_p99_ms),
        direct,
        gateway,
        process,
    }
}

/// Runs one load phase with a progress line; with a gateway pid, also samples its threads
/// and returns the most seen.
fn phase(name: &str, plan: &Plan, pid: Option<u32>) -> (load::Samples, u64) {
    let progress = Arc::new(Progress::default());
    let done = Arc::new(AtomicBool::new(false));
    let threads = Arc::new(AtomicU64::new(0));
    let total = plan.warmup + plan.measure;
    let ticker = {
        let (progress, done, threads) = (progress.clone(), done.clone(), threads.clone());
        let name = name.to_string();
        thread::spawn(move || {
            let began = Instant::now();
            let mut last = (began, 0u64);
            let tty = std::io::stderr().is_terminal();
            let mut tick = 0u32;
            while !done.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(100));
                if let Some(pid) = pid {
                    threads.fetch_max(gateway::proc_status(pid).threads, Ordering::Relaxed);
                }
                tick += 1;
                if tty && tick.is_multiple_of(5) {
                    let now = Instant::now();
                    let n = progress.done.load(Ordering::Relaxed);
                    let rate = (n - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-9);
                    last = (now, n);
                    let line = format!(
                        "{name}: {:.1}/{:.1} s, {n} answers, {rate:.0}/s, {} errors",
                        began.elapsed().as_secs_f64().min(total.as_secs_f64()),
                        total.as_secs_f64(),
                        progress.errors.load(Ordering::Relaxed)
                    );
                    eprint!("\r{line:<78}");
                }
            }
        })
    };
    if !std::io::stderr().is_terminal() {
        eprintln!("{name} ({:.1} s)", total.as_secs_f64());
    }
    let samples = load::run(plan, &progress);
    done.store(true, Ordering::Release);
    let _ = ticker.join();
    (samples, threads.load(Ordering::Relaxed))
}

/// Runs a phase without a gateway to watch.
fn phase_plain(name: &str, plan: &Plan) -> load::Samples {
    phase(name, plan, None).0
}

/// A progress note for a step without a counter.
fn note(what: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r{what:<78}");
    } else {
        eprintln!("{what}");
    }
}

fn clear_progress() {
    if std::io::stderr().is_terminal() {
        eprint!("\r{:<78}\r", "");
    }
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// The short commit of the current directory's git checkout, `-dirty` when it has changes.
fn commit() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args_os().skip(1).collect()) {
        Ok(Command::Run(opts)) => opts,
        Ok(Command::Help) => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sigorest-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&opts, &mut std::io::stdout().lock()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sigorest-bench: {e}");
            match e {
                BenchError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
