//! The bench's results: percentiles from the samples, the JSON record, and the markdown
//! tables printed at the end.

use std::fmt::Write as _;

use serde::Serialize;

use super::load::Samples;

/// Everything one run measured; written as JSON so runs can be compared across commits.
#[derive(Debug, Serialize)]
pub struct Report {
    pub sigorest: String,
    /// `git describe`-like commit of the working directory, when it is a git checkout.
    pub commit: Option<String>,
    /// RFC 3339, UTC.
    pub date: String,
    pub machine: Machine,
    pub settings: Settings,
    pub json: Vec<JsonRow>,
    pub stream: Vec<StreamRow>,
    pub gateway_process: Option<ProcessRow>,
    pub parallel: Option<ParallelRow>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    /// `/proc/loadavg` (1, 5, 15 minutes) before and after the run.
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    pub kernel: String,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub duration_s: f64,
    pub warmup_s: f64,
    pub levels: Vec<usize>,
    pub stream_events: usize,
    pub stream_gap_ms: u64,
    pub upstream_delay_ms: u64,
    pub workers: Option<usize>,
    pub queue: Option<usize>,
    pub gateway: Option<String>,
}

/// Latencies of one target at one level, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub requests: usize,
    pub errors: u64,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The gateway process during one level.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Process {
    /// `VmHWM` after the level (the peak so far).
    pub peak_rss_kb: u64,
    /// Most threads seen while the level ran.
    pub threads_max: u64,
}

#[derive(Debug, Serialize)]
pub struct JsonRow {
    pub concurrency: usize,
    pub direct: Latency,
    pub gateway: Option<Latency>,
    /// Gateway minus direct.
    pub added_p50_ms: Option<f64>,
    pub added_p99_ms: Option<f64>,
    pub process: Option<Process>,
}

/// Streams of one target at one level.
#[derive(Debug, Clone, Serialize)]
pub struct StreamLatency {
    pub streams: usize,
    pub errors: u64,
    pub per_s: f64,
    /// Request written → first event.
    pub first_event_p50_ms: f64,
    pub first_event_p99_ms: f64,
    /// Event sent by the fake upstream → event arrived at the client, over every event.
    pub event_p50_ms: f64,
    pub event_p99_ms: f64,
    pub event_max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct StreamRow {
    pub concurrency: usize,
    pub direct: StreamLatency,
    pub gateway: Option<StreamLatency>,
    pub added_first_event_p50_ms: Option<f64>,
    /// Per event, gateway minus direct.
    pub added_event_p50_ms: Option<f64>,
    pub added_event_p99_ms: Option<f64>,
    pub process: Option<Process>,
}

#[derive(Debug, Serialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub rss_idle_kb: u64,
    pub threads_idle: u64,
    /// `VmHWM` at the end of the run.
    pub peak_rss_kb: u64,
    pub threads_max: u64,
    pub rss_after_kb: u64,
}

#[derive(Debug, Serialize)]
pub struct ParallelRow {
    pub calls: usize,
    pub upstream_ms: u64,
    pub direct_s: f64,
    pub direct_errors: u64,
    pub gateway_s: Option<f64>,
    pub gateway_errors: Option<u64>,
}

/// The value at quantile `q` (nearest rank) of sorted nanoseconds, in milliseconds.
pub fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

pub fn latency(mut s: Samples) -> Latency {
    s.latency.sort_unstable();
    let l = &s.latency;
    Latency {
        requests: l.len(),
        errors: s.errors,
        per_s: l.len() as f64 / s.window.as_secs_f64().max(1e-9),
        p50_ms: quantile_ms(l, 0.50),
        p90_ms: quantile_ms(l, 0.90),
        p99_ms: quantile_ms(l, 0.99),
        max_ms: quantile_ms(l, 1.0),
    }
}

pub fn stream_latency(mut s: Samples) -> StreamLatency {
    s.first_event.sort_unstable();
    s.event_delay.sort_unstable();
    StreamLatency {
        streams: s.latency.len(),
        errors: s.errors,
        per_s: s.latency.len() as f64 / s.window.as_secs_f64().max(1e-9),
        first_event_p50_ms: quantile_ms(&s.first_event, 0.50),
        first_event_p99_ms: quantile_ms(&s.first_event, 0.99),
        event_p50_ms: quantile_ms(&s.event_delay, 0.50),
        event_p99_ms: quantile_ms(&s.event_delay, 0.99),
        event_max_ms: quantile_ms(&s.event_delay, 1.0),
    }
}

fn ms(v: f64) -> String {
    format!("{v:.3}")
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), ms)
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// The markdown tables.
pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let s = &r.settings;
    let _ = writeln!(
        o,
        "sigorest {} ({}), {} cores, load {:.2} before / {:.2} after, {} s per level after {} s warm-up\n",
        r.sigorest,
        r.commit.as_deref().unwrap_or("no commit"),
        r.machine.cpus,
        r.machine.load_before[0],
        r.machine.load_after[0],
        s.duration_s,
        s.warmup_s
    );
    let _ = writeln!(o, "Chat completions (JSON), keep-alive connections:\n");
    let _ = writeln!(
        o,
        "| conc. | target | req/s | p50 ms | p90 ms | p99 ms | max ms | added p50 ms | added p99 ms | errors | gateway peak RSS MB | gateway threads |"
    );
    let _ = writeln!(
        o,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in &r.json {
        let line = |o: &mut String, name: &str, l: &Latency, added: bool| {
            let (a50, a99, rss, th) = match (added, row.process) {
                (true, p) => (
                    opt(row.added_p50_ms),
                    opt(row.added_p99_ms),
                    p.map_or("–".into(), |p| mb(p.peak_rss_kb)),
                    p.map_or("–".into(), |p| p.threads_max.to_string()),
                ),
                (false, _) => ("".into(), "".into(), "".into(), "".into()),
            };
            let _ = writeln!(
                o,
                "| {} | {name} | {:.0} | {} | {} | {} | {} | {a50} | {a99} | {} | {rss} | {th} |",
                row.concurrency,
                l.per_s,
                ms(l.p50_ms),
                ms(l.p90_ms),
                ms(l.p99_ms),
                ms(l.max_ms),
                l.errors
            );
        };
        line(&mut o, "direct", &row.direct, false);
        if let Some(g) = &row.gateway {
            line(&mut o, "gateway", g, true);
        }
    }
    let _ = writeln!(
        o,
        "\nStreams ({} events {} ms apart); event delay = sent by the upstream → read by the client:\n",
        s.stream_events, s.stream_gap_ms
    );
    let _ = writeln!(
        o,
        "| conc. | target | streams/s | first event p50 ms | first event p99 ms | event delay p50 ms | event delay p99 ms | event delay max ms | added per event p50 ms | added per event p99 ms | errors | gateway peak RSS MB | gateway threads |"
    );
    let _ = writeln!(
        o,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in &r.stream {
        let line = |o: &mut String, name: &str, l: &StreamLatency, added: bool| {
            let (a50, a99, rss, th) = match (added, row.process) {
                (true, p) => (
                    opt(row.added_event_p50_ms),
                    opt(row.added_event_p99_ms),
                    p.map_or("–".into(), |p| mb(p.peak_rss_kb)),
                    p.map_or("–".into(), |p| p.threads_max.to_string()),
                ),
                (false, _) => ("".into(), "".into(), "".into(), "".into()),
            };
            let _ = writeln!(
                o,
                "| {} | {name} | {:.0} | {} | {} | {} | {} | {} | {a50} | {a99} | {} | {rss} | {th} |",
                row.concurrency,
                l.per_s,
                ms(l.first_event_p50_ms),
                ms(l.first_event_p99_ms),
                ms(l.event_p50_ms),
                ms(l.event_p99_ms),
                ms(l.event_max_ms),
                l.errors
            );
        };
        line(&mut o, "direct", &row.direct, false);
        if let Some(g) = &row.gateway {
            line(&mut o, "gateway", g, true);
        }
    }
    if let Some(p) = &r.gateway_process {
        let _ = writeln!(
            o,
            "\nGateway process: RSS idle {} MB, peak (VmHWM) {} MB, after the run {} MB; threads idle {}, at most {}.",
            mb(p.rss_idle_kb),
            mb(p.peak_rss_kb),
            mb(p.rss_after_kb),
            p.threads_idle,
            p.threads_max
        );
    }
    if let Some(p) = &r.parallel {
        let gw = match (p.gateway_s, p.gateway_errors) {
            (Some(s), Some(e)) => format!(", through the gateway {s:.3} s ({e} errors)"),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "\n{} parallel calls to one model whose upstream takes {} ms: direct {:.3} s ({} errors){gw}.",
            p.calls, p.upstream_ms, p.direct_s, p.direct_errors
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        assert_eq!(quantile_ms(&v, 0.5), 50.0);
        assert_eq!(quantile_ms(&v, 0.99), 99.0);
        assert_eq!(quantile_ms(&v, 1.0), 100.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
        assert_eq!(quantile_ms(&[7_000], 0.99), 0.007);
    }
}
