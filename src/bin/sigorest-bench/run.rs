//! One run of the bench: the fake upstream and the gateways started, every level measured
//! straight to the fake and through each gateway, the parallel slow calls, the processes
//! read, everything stopped, and the report written (JSON file, markdown on `out`).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::args::Options;
use super::fake::{self, Fake};
use super::gateway::{self, ProcStatus};
use super::load::{self, Plan, Progress, Samples};
use super::report::{self, JsonRow, ParallelRow, Process, ProcessRow, Report, StreamRow, Through};
use super::rounds::{self, Leveled, Rate, Round};
use super::subject::{CHAT_PATH, Calls, Source, Spec, Subject, Upstream};
use super::{BenchError, body, epoch, markdown, targets};

/// How the bench calls the fake directly (its model name does not matter to the fake).
const DIRECT_MODEL: &str = "gpt-4.1";

/// How long the other gateway may take to answer its first chat completion with 200.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the bench: tables on `out`, a progress line on stderr, JSON at `opts.json`.
pub fn run(opts: &Options, out: &mut dyn Write) -> Result<Report, BenchError> {
    epoch();
    let load_before = loadavg();
    let fake = start_fake(opts)?;
    let up = Upstream {
        addr: fake.addr(),
        slow_ms: opts.slow.as_millis() as u64,
    };
    let bench = Bench::start(opts, up)?;
    let idle = bench.idle();
    bench.probe()?;
    let json = bench.json_levels();
    let stream = bench.stream_levels();
    let parallel = (opts.parallel > 0).then(|| bench.parallel());
    let [gateway_process, compare_process] = [false, true].map(|compare| {
        let s = if compare {
            &bench.other
        } else {
            &bench.sigorest
        };
        let idle = idle[usize::from(compare)];
        s.as_ref()
            .and_then(|s| process_row(s, idle, compare, &json, &stream))
    });
    bench.finish();
    fake.stop();

    let mut report = Report {
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
        settings: settings(opts, up),
        json,
        stream,
        gateway_process,
        compare_process,
        parallel,
        targets: Vec::new(),
    };
    report.targets = targets::evaluate(&report);
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    std::fs::write(&opts.json, text + "\n")
        .map_err(|e| BenchError::io(&format!("writing {}", opts.json.display()), e))?;
    out.write_all(markdown::markdown(&report).as_bytes())
        .map_err(|e| BenchError::io("writing the tables", e))?;
    Ok(report)
}

/// The settings part of the report.
fn settings(opts: &Options, up: Upstream) -> report::Settings {
    let describe = |source: &Source| match source {
        Source::Sigorest(path) => (None, None, path.display().to_string()),
        Source::Command(t) => (None, Some(t.line.clone()), t.line.clone()),
        Source::Url { url, .. } => (Some(url.clone()), None, url.clone()),
    };
    report::Settings {
        duration_s: opts.duration.as_secs_f64(),
        warmup_s: warmup(opts).as_secs_f64(),
        levels: opts.levels.clone(),
        rounds: opts.rounds,
        stream_events: opts.stream_events,
        stream_gap_ms: opts.stream_gap.as_millis() as u64,
        upstream_delay_ms: opts.upstream_delay.as_millis() as u64,
        workers: opts.workers,
        queue: opts.queue,
        gateway: (!opts.direct_only).then(|| describe(&opts.gateway).2),
        fake_port: up.addr.port(),
        compare: opts.compare.as_ref().map(|c| {
            let (url, command, _) = describe(&c.source);
            report::CompareSettings {
                name: c.name.clone(),
                url,
                command,
                env: match &c.source {
                    Source::Command(t) => t.env.iter().map(|(k, _)| k.clone()).collect(),
                    _ => Vec::new(),
                },
                path: c.calls.path.clone(),
                model: c.calls.model.clone(),
                slow_model: c.calls.slow_model.clone(),
            }
        }),
    }
}

/// Warm-up before each measuring window: a fifth of it, at most 1 s.
fn warmup(opts: &Options) -> Duration {
    (opts.duration / 5).min(Duration::from_secs(1))
}

/// The fake and the gateways, for the length of a run.
struct Bench<'a> {
    opts: &'a Options,
    fake: Upstream,
    warmup: Duration,
    sigorest: Option<Subject>,
    other: Option<Subject>,
}

impl<'a> Bench<'a> {
    /// Starts sigorest and the other gateway (each stopped again if the other fails).
    fn start(opts: &'a Options, up: Upstream) -> Result<Bench<'a>, BenchError> {
        let start = |spec: &Spec| Subject::start(spec, up, opts.workers, opts.queue);
        let sigorest = match opts.direct_only {
            true => None,
            false => Some(start(&Spec {
                name: "sigorest".into(),
                source: opts.gateway.clone(),
                calls: Calls::sigorest(),
            })?),
        };
        if let Some(c) = &opts.compare {
            eprintln!(
                "sigorest-bench: the fake upstream is at {} (OpenAI-compatible base URL, any model name; answers after {} ms at {}); {} is called with model {} on {}",
                up.base(),
                up.slow_ms,
                up.slow_base(),
                c.name,
                c.calls.model,
                c.calls.path
            );
        }
        let other = match &opts.compare {
            None => None,
            Some(spec) => match start(spec) {
                Ok(s) => Some(s),
                Err(e) => {
                    sigorest.into_iter().for_each(Subject::stop);
                    return Err(e);
                }
            },
        };
        Ok(Bench {
            opts,
            fake: up,
            warmup: warmup(opts),
            sigorest,
            other,
        })
    }

    /// Memory and threads once start-up (Ollama discovery...) has settled.
    fn idle(&self) -> [Option<ProcStatus>; 2] {
        if self.sigorest.is_some() || self.other.is_some() {
            thread::sleep(Duration::from_millis(500));
        }
        [&self.sigorest, &self.other].map(|s| s.as_ref().and_then(Subject::status))
    }

    /// Checks that the other gateway answers a chat completion for its model, before
    /// measuring anything (it is set up by the user: its model name or base URL may be
    /// wrong).
    fn probe(&self) -> Result<(), BenchError> {
        let Some(s) = &self.other else {
            return Ok(());
        };
        let deadline = Instant::now() + PROBE_TIMEOUT;
        loop {
            let answer = s.ask(&s.calls.model, Duration::from_secs(10));
            if matches!(answer, Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let what = match answer {
                    Ok((status, body)) => format!("answered {status} ({body})"),
                    Err(e) => e,
                };
                let log = s.log();
                let log = match log.trim() {
                    "" => String::new(),
                    l => format!("\nIt logged:\n{}", tail(l, 20)),
                };
                return Err(BenchError::Gateway(format!(
                    "{}: POST {} with model {:?} {what}. Its OpenAI-compatible base URL must be {} and -compare-model its name for a model there.{log}",
                    s.name,
                    s.calls.path,
                    s.calls.model,
                    self.fake.base()
                )));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A plan for `conns` connections sending `model`'s request to `addr` at `path`.
    fn plan(&self, target: (std::net::SocketAddr, &str, &str), conns: usize, stream: bool) -> Plan {
        let (addr, path, model) = target;
        Plan {
            addr,
            request: Arc::new(load::post(addr, path, &body(model, stream))),
            stream,
            conns,
            warmup: self.warmup,
            // Streams of equal length started together would start and end together
            // forever: spread them over one stream's length, as real clients are.
            stagger: match stream {
                true => self.opts.stream_gap * self.opts.stream_events as u32,
                false => Duration::ZERO,
            },
            measure: self.opts.duration,
        }
    }

    /// One level for one kind of request, each round direct and then through each
    /// gateway (in turns, which goes first); each target's median round and, with more
    /// than one, the rounds' figures.
    fn level<L: Rate + Clone>(
        &self,
        n: usize,
        stream: bool,
        read: fn(Samples) -> L,
    ) -> Option<Leveled<L>> {
        let kind = if stream { "stream" } else { "json" };
        let total = self.opts.rounds.max(1);
        let gateways = [&self.sigorest, &self.other];
        let rounds = (0..total).map(|i| {
            let tag = match total {
                1 => String::new(),
                _ => format!(", round {}/{total}", i + 1),
            };
            let direct = self.plan((self.fake.addr, CHAT_PATH, DIRECT_MODEL), n, stream);
            let direct = read(phase(&format!("c={n} direct {kind}{tag}"), &direct, None).0);
            let mut through = [None, None];
            for g in rounds::order(i) {
                through[g] = gateways[g].as_ref().map(|s| {
                    let plan = self.plan((s.addr, &s.calls.path, &s.calls.model), n, stream);
                    measure(s, &format!("c={n} {} {kind}{tag}", s.name), &plan, read)
                });
            }
            Round { direct, through }
        });
        rounds::combine(rounds.collect())
    }

    fn json_levels(&self) -> Vec<JsonRow> {
        if self.opts.no_completions {
            return Vec::new();
        }
        let rows = self.opts.levels.iter().filter_map(|&n| {
            let (direct, [gateway, compare], rounds) = self.level(n, false, report::latency)?;
            Some(JsonRow::new(n, direct, gateway, compare).with_rounds(rounds))
        });
        rows.collect()
    }

    fn stream_levels(&self) -> Vec<StreamRow> {
        if self.opts.no_stream {
            return Vec::new();
        }
        let rows = self.opts.levels.iter().filter_map(|&n| {
            let (direct, [gateway, compare], rounds) =
                self.level(n, true, report::stream_latency)?;
            Some(StreamRow::new(n, direct, gateway, compare).with_rounds(rounds))
        });
        rows.collect()
    }

    /// Many parallel calls to the slow model: direct, then through each gateway (the other
    /// only if its slow model answers one call first).
    fn parallel(&self) -> ParallelRow {
        let n = self.opts.parallel;
        let slow_ms = self.fake.slow_ms;
        let burst = |addr, path: &str, model: &str| {
            let req = Arc::new(load::post(addr, path, &body(model, false)));
            load::burst(addr, &req, n)
        };
        note(&format!("{n} parallel slow calls, direct"));
        let direct_path = format!("/delay-{slow_ms}{CHAT_PATH}");
        let (direct, direct_errors) = burst(self.fake.addr, &direct_path, DIRECT_MODEL);
        let through = |s: &Subject| {
            note(&format!("{n} parallel slow calls, {}", s.name));
            burst(s.addr, &s.calls.path, &s.calls.slow_model)
        };
        let gateway = self.sigorest.as_ref().map(through);
        let timeout = self.opts.slow + Duration::from_secs(10);
        let (compare, compare_skipped) = match &self.other {
            None => (None, None),
            Some(s) => match s.ask(&s.calls.slow_model, timeout) {
                Ok((200, _)) => (Some(through(s)), None),
                Ok((status, body)) => (
                    None,
                    Some(format!(
                        "its slow model {} answered {status} ({body})",
                        s.calls.slow_model
                    )),
                ),
                Err(e) => (
                    None,
                    Some(format!("its slow model {}: {e}", s.calls.slow_model)),
                ),
            },
        };
        if let Some(why) = &compare_skipped {
            eprintln!(
                "sigorest-bench: skipping the parallel calls through the other gateway: {why}; pass -compare-slow-model, pointed at {}",
                self.fake.slow_base()
            );
        }
        ParallelRow {
            calls: n,
            upstream_ms: slow_ms,
            direct_s: direct.as_secs_f64(),
            direct_errors,
            gateway_s: gateway.map(|(d, _)| d.as_secs_f64()),
            gateway_errors: gateway.map(|(_, e)| e),
            compare_s: compare.map(|(d, _)| d.as_secs_f64()),
            compare_errors: compare.map(|(_, e)| e),
            compare_skipped,
        }
    }

    /// Stops the gateways the bench started and shows the end of what they logged.
    fn finish(mut self) {
        let mut logs = Vec::new();
        for s in [self.sigorest.take(), self.other.take()]
            .into_iter()
            .flatten()
        {
            logs.push((s.name.clone(), s.log()));
            s.stop();
        }
        clear_progress();
        for (name, log) in logs {
            if !log.trim().is_empty() {
                eprintln!("{name} logged:\n{}", tail(log.trim_end(), 20));
            }
        }
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Bench<'_> {
    fn drop(&mut self) {
        for s in [self.sigorest.take(), self.other.take()]
            .into_iter()
            .flatten()
        {
            s.stop();
        }
    }
}

/// One phase through a gateway, with its peak memory reset before and read after.
fn measure<L>(s: &Subject, name: &str, plan: &Plan, read: fn(Samples) -> L) -> Through<L> {
    if let Some(pid) = s.pid() {
        gateway::reset_peak(pid);
    }
    let (samples, threads, cpu_us) = phase(name, plan, s.pid());
    let process = s.status().map(|st| Process {
        peak_rss_kb: st.hwm_kb,
        threads_max: threads.max(st.threads),
        cpu_us,
    });
    (read(samples), process)
}

/// A gateway's process over the run: idle, the highest peak and thread count of any level
/// (and of the rest of the run), now. `compare`: the other gateway's, else sigorest's.
fn process_row(
    s: &Subject,
    idle: Option<ProcStatus>,
    compare: bool,
    json: &[JsonRow],
    stream: &[StreamRow],
) -> Option<ProcessRow> {
    let (pid, now, idle) = (s.pid()?, s.status()?, idle?);
    let levels = json
        .iter()
        .map(|r| r.process_of(compare))
        .chain(stream.iter().map(|r| r.process_of(compare)))
        .flatten();
    let (peak, threads) = levels.fold((now.hwm_kb, now.threads), |(p, t), l| {
        (p.max(l.peak_rss_kb), t.max(l.threads_max))
    });
    Some(ProcessRow {
        pid,
        rss_idle_kb: idle.rss_kb,
        threads_idle: idle.threads,
        peak_rss_kb: peak,
        threads_max: threads,
        rss_after_kb: now.rss_kb,
    })
}

/// Runs one load phase with a progress line, and reads the bench's own CPU time per answer
/// into the samples; with a gateway pid, also samples its threads and returns the most
/// seen, and its CPU time per answer.
fn phase(name: &str, plan: &Plan, pid: Option<u32>) -> (Samples, u64, Option<f64>) {
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
    let me = std::process::id();
    let cpu = || {
        (
            gateway::cpu_us(me, false),
            pid.and_then(|p| gateway::cpu_us(p, true)),
        )
    };
    let before = cpu();
    let mut samples = load::run(plan, &progress);
    let after = cpu();
    done.store(true, Ordering::Release);
    let _ = ticker.join();
    let answers = progress.done.load(Ordering::Relaxed) as f64;
    let per_answer = |a: Option<f64>, b: Option<f64>| {
        a.zip(b)
            .filter(|_| answers > 0.0)
            .map(|(a, b)| (b - a) / answers)
    };
    samples.bench_cpu_us = per_answer(before.0, after.0);
    let gateway_cpu = per_answer(before.1, after.1);
    (samples, threads.load(Ordering::Relaxed), gateway_cpu)
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

/// The fake upstream, with the profile and on the port `opts` ask for.
fn start_fake(opts: &Options) -> Result<Fake, BenchError> {
    Fake::start(
        fake::Profile {
            delay: opts.upstream_delay,
            events: opts.stream_events,
            gap: opts.stream_gap,
        },
        opts.fake_port,
    )
    .map_err(|e| {
        let on = match opts.fake_port {
            0 => String::new(),
            p => format!(" on port {p}"),
        };
        BenchError::io(&format!("starting the fake upstream{on}"), e)
    })
}

/// `-serve-fake`: the fake upstream alone, its address on `out`, until `stop` is set (the
/// command line never sets it: the process serves until it is killed).
pub fn serve_fake(
    opts: &Options,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<(), BenchError> {
    let fake = start_fake(opts)?;
    writeln!(
        out,
        "fake upstream at http://{addr}/v1 (POST /v1/chat/completions; under \
         http://{addr}/delay-<ms>/v1 it answers <ms> later); serving until killed",
        addr = fake.addr()
    )
    .and_then(|()| out.flush())
    .map_err(|e| BenchError::io("writing the fake's address", e))?;
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(Duration::from_millis(100));
    }
    fake.stop();
    Ok(())
}
