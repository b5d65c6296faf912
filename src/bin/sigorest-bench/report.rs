//! The bench's results: percentiles from the samples and the JSON record (rendered as
//! markdown by [`super::markdown`]).

use serde::Serialize;

use super::load::Samples;
use super::rounds::Rounds;
use super::targets::Goal;

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
    /// The other gateway's process, when the bench started it or was given its pid.
    pub compare_process: Option<ProcessRow>,
    pub parallel: Option<ParallelRow>,
    /// The goals of issue 19, met or not.
    pub targets: Vec<Goal>,
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
    pub rounds: usize,
    pub stream_events: usize,
    pub stream_gap_ms: u64,
    pub upstream_delay_ms: u64,
    pub workers: Option<usize>,
    pub queue: Option<usize>,
    pub gateway: Option<String>,
    /// The fake upstream's port.
    pub fake_port: u16,
    pub compare: Option<CompareSettings>,
}

/// The other gateway and how it was called.
#[derive(Debug, Serialize)]
pub struct CompareSettings {
    pub name: String,
    pub url: Option<String>,
    pub command: Option<String>,
    /// The names of the variables added to its environment (values left out: they may be
    /// keys).
    pub env: Vec<String>,
    pub path: String,
    pub model: String,
    pub slow_model: String,
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
    /// CPU time per request of the load generator and the fake upstream (the bench's own
    /// process), µs.
    pub bench_cpu_us: Option<f64>,
}

/// The gateway process during one level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Process {
    /// `VmHWM` after the level: its peak (reset before it where the kernel allows, else the
    /// peak so far).
    pub peak_rss_kb: u64,
    /// Most threads seen while the level ran.
    pub threads_max: u64,
    /// CPU time (user + system, its child processes included) per answer, warm-up
    /// included, in µs.
    pub cpu_us: Option<f64>,
}

/// One level of chat completions: direct, through sigorest ("gateway"), through the other.
#[derive(Debug, Serialize)]
pub struct JsonRow {
    pub concurrency: usize,
    pub direct: Latency,
    pub gateway: Option<Latency>,
    /// Gateway minus direct.
    pub added_p50_ms: Option<f64>,
    pub added_p99_ms: Option<f64>,
    pub process: Option<Process>,
    pub compare: Option<CompareJson>,
    /// Requests/s through sigorest as a share of direct (1.0 = as fast).
    pub gateway_share_of_direct: Option<f64>,
    pub compare_share_of_direct: Option<f64>,
    /// Requests/s through sigorest divided by those through the other gateway.
    pub gateway_per_compare: Option<f64>,
    /// With `-rounds N` above 1: every round's rates and ratios. The latencies above are
    /// then each target's median round; the shares, the ratio and the added p50 are the
    /// medians of the rounds' own.
    pub rounds: Option<Rounds>,
}

/// The other gateway at one level of chat completions.
#[derive(Debug, Serialize)]
pub struct CompareJson {
    #[serde(flatten)]
    pub latency: Latency,
    /// It minus direct.
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    pub process: Option<Process>,
}

/// What one gateway did at one level, and its process meanwhile.
pub type Through<L> = (L, Option<Process>);

impl JsonRow {
    pub fn new(
        n: usize,
        direct: Latency,
        gateway: Option<Through<Latency>>,
        compare: Option<Through<Latency>>,
    ) -> JsonRow {
        let share = |l: &Latency| ratio(l.per_s, direct.per_s);
        let (gateway, process) = gateway.unzip();
        JsonRow {
            concurrency: n,
            added_p50_ms: gateway.as_ref().map(|g| g.p50_ms - direct.p50_ms),
            added_p99_ms: gateway.as_ref().map(|g| g.p99_ms - direct.p99_ms),
            gateway_share_of_direct: gateway.as_ref().and_then(share),
            compare_share_of_direct: compare.as_ref().and_then(|(c, _)| share(c)),
            gateway_per_compare: gateway
                .as_ref()
                .zip(compare.as_ref())
                .and_then(|(g, (c, _))| ratio(g.per_s, c.per_s)),
            compare: compare.map(|(c, process)| CompareJson {
                added_p50_ms: c.p50_ms - direct.p50_ms,
                added_p99_ms: c.p99_ms - direct.p99_ms,
                latency: c,
                process,
            }),
            process: process.flatten(),
            gateway,
            direct,
            rounds: None,
        }
    }

    /// The figures of several rounds: their medians in place of the median rounds' own.
    pub fn with_rounds(mut self, rounds: Option<Rounds>) -> JsonRow {
        if let Some(r) = &rounds {
            self.gateway_share_of_direct = r.gateway_share_of_direct.map(|s| s.median);
            self.compare_share_of_direct = r.compare_share_of_direct.map(|s| s.median);
            self.gateway_per_compare = r.gateway_per_compare.map(|s| s.median);
            self.added_p50_ms = r.gateway_added_p50_ms.map(|s| s.median);
            if let (Some(c), Some(added)) = (&mut self.compare, r.compare_added_p50_ms) {
                c.added_p50_ms = added.median;
            }
        }
        self.rounds = rounds;
        self
    }
}

impl JsonRow {
    /// The process of sigorest, or of the other gateway, during this level.
    pub fn process_of(&self, compare: bool) -> Option<Process> {
        match compare {
            false => self.process,
            true => self.compare.as_ref().and_then(|c| c.process),
        }
    }
}

/// `a / b`, when `b` is above zero.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
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
    /// CPU time per stream of the load generator and the fake upstream, µs.
    pub bench_cpu_us: Option<f64>,
}

/// One level of streams.
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
    pub compare: Option<CompareStream>,
    /// With `-rounds N` above 1, as for completions (streams/s; the added latency is the
    /// first event's).
    pub rounds: Option<Rounds>,
}

/// The other gateway at one level of streams.
#[derive(Debug, Serialize)]
pub struct CompareStream {
    #[serde(flatten)]
    pub latency: StreamLatency,
    pub added_first_event_p50_ms: f64,
    pub added_event_p50_ms: f64,
    pub added_event_p99_ms: f64,
    pub process: Option<Process>,
}

impl StreamRow {
    /// The process of sigorest, or of the other gateway, during this level.
    pub fn process_of(&self, compare: bool) -> Option<Process> {
        match compare {
            false => self.process,
            true => self.compare.as_ref().and_then(|c| c.process),
        }
    }
}

/// What a stream target adds over direct: first event p50, event delay p50 and p99.
fn stream_added(l: &StreamLatency, direct: &StreamLatency) -> [f64; 3] {
    [
        l.first_event_p50_ms - direct.first_event_p50_ms,
        l.event_p50_ms - direct.event_p50_ms,
        l.event_p99_ms - direct.event_p99_ms,
    ]
}

impl StreamRow {
    pub fn new(
        n: usize,
        direct: StreamLatency,
        gateway: Option<Through<StreamLatency>>,
        compare: Option<Through<StreamLatency>>,
    ) -> StreamRow {
        let (gateway, process) = gateway.unzip();
        let added = gateway.as_ref().map(|g| stream_added(g, &direct));
        StreamRow {
            concurrency: n,
            added_first_event_p50_ms: added.map(|a| a[0]),
            added_event_p50_ms: added.map(|a| a[1]),
            added_event_p99_ms: added.map(|a| a[2]),
            compare: compare.map(|(c, process)| {
                let [first, p50, p99] = stream_added(&c, &direct);
                CompareStream {
                    latency: c,
                    added_first_event_p50_ms: first,
                    added_event_p50_ms: p50,
                    added_event_p99_ms: p99,
                    process,
                }
            }),
            process: process.flatten(),
            gateway,
            direct,
            rounds: None,
        }
    }

    /// The figures of several rounds: the first event's added p50 their median.
    pub fn with_rounds(mut self, rounds: Option<Rounds>) -> StreamRow {
        if let Some(r) = &rounds {
            self.added_first_event_p50_ms = r.gateway_added_p50_ms.map(|s| s.median);
            if let (Some(c), Some(added)) = (&mut self.compare, r.compare_added_p50_ms) {
                c.added_first_event_p50_ms = added.median;
            }
        }
        self.rounds = rounds;
        self
    }
}

/// One gateway process over the whole run.
#[derive(Debug, Serialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub rss_idle_kb: u64,
    pub threads_idle: u64,
    /// The highest `VmHWM` read in the run.
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
    pub compare_s: Option<f64>,
    pub compare_errors: Option<u64>,
    /// Why the other gateway's burst was not run (its slow model did not answer).
    pub compare_skipped: Option<String>,
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
        bench_cpu_us: s.bench_cpu_us,
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
        bench_cpu_us: s.bench_cpu_us,
    }
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
