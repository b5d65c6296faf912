//! The report as markdown: a line on the run, the completions and streams tables (a row per
//! level for direct, sigorest and the other gateway), the comparison, the processes, the
//! parallel slow calls, and the goals met or not.

use std::fmt::Write as _;

use super::report::{Latency, Process, ProcessRow, Report, StreamLatency};
use super::rounds::Spread;
use super::targets::Goal;

fn ms(v: f64) -> String {
    format!("{v:.3}")
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), ms)
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{:.0}%", v * 100.0))
}

/// `value`, and with several rounds the range of theirs: `22% (20–25%)`.
fn ranged(value: String, spread: Option<Spread>, cell: fn(f64) -> String) -> String {
    match spread {
        Some(s) if s.min < s.max => format!("{value} ({}–{})", cell(s.min), cell(s.max)),
        _ => value,
    }
}

fn share_cell(v: f64) -> String {
    percent(Some(v))
}

fn times_cell(v: f64) -> String {
    format!("{v:.2}×")
}

/// CPU microseconds per request, or a dash.
fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.1}"))
}

/// The peak RSS, threads and CPU columns of a row through a gateway.
fn process_cells(p: Option<Process>) -> (String, String, String) {
    (
        p.map_or("–".into(), |p| mb(p.peak_rss_kb)),
        p.map_or("–".into(), |p| p.threads_max.to_string()),
        us(p.and_then(|p| p.cpu_us)),
    )
}

/// The name sigorest's rows carry.
const SIGOREST: &str = "sigorest";

/// The markdown tables.
pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    header(&mut o, r);
    if !r.json.is_empty() {
        json_table(&mut o, r);
        rounds_table(&mut o, r);
        compare_table(&mut o, r);
    }
    if !r.stream.is_empty() {
        stream_table(&mut o, r);
    }
    processes(&mut o, r);
    parallel(&mut o, r);
    targets(&mut o, r);
    o
}

fn compare_name(r: &Report) -> &str {
    r.settings
        .compare
        .as_ref()
        .map_or("other", |c| c.name.as_str())
}

fn header(o: &mut String, r: &Report) {
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
    if s.rounds > 1 {
        let gateways = match &s.compare {
            Some(c) => format!(", sigorest and {} taking turns at going first", c.name),
            None => String::new(),
        };
        let _ = writeln!(
            o,
            "{} rounds per level{gateways}. Each row below is its target's median round (by requests/s); the shares of direct, the ratio and the added p50 are the medians of each round's own, their range in brackets.\n",
            s.rounds
        );
    }
    if let Some(c) = &s.compare {
        let how = match (&c.url, &c.command) {
            (Some(url), _) => format!("running at {url}"),
            (None, Some(cmd)) => format!("started as `{cmd}`"),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            o,
            "Compared with {} ({how}; model {} on {}, slow model {}), the same fake upstream on port {}.\n",
            c.name, c.model, c.path, c.slow_model, s.fake_port
        );
    }
}

fn json_table(o: &mut String, r: &Report) {
    let _ = writeln!(o, "Chat completions (JSON), keep-alive connections:\n");
    let _ = writeln!(
        o,
        "| conc. | target | req/s | p50 ms | p90 ms | p99 ms | max ms | added p50 ms | added p99 ms | errors | peak RSS MB | threads | gateway CPU µs/req | load + fake CPU µs/req |"
    );
    let _ = writeln!(
        o,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let line = |o: &mut String, n: usize, name: &str, l: &Latency, extra: Option<[String; 5]>| {
        let [a50, a99, rss, th, cpu] = extra.unwrap_or_default();
        let _ = writeln!(
            o,
            "| {n} | {name} | {:.0} | {} | {} | {} | {} | {a50} | {a99} | {} | {rss} | {th} | {cpu} | {} |",
            l.per_s,
            ms(l.p50_ms),
            ms(l.p90_ms),
            ms(l.p99_ms),
            ms(l.max_ms),
            l.errors,
            us(l.bench_cpu_us)
        );
    };
    for row in &r.json {
        let n = row.concurrency;
        line(o, n, "direct", &row.direct, None);
        if let Some(g) = &row.gateway {
            let (rss, th, cpu) = process_cells(row.process);
            let extra = [opt(row.added_p50_ms), opt(row.added_p99_ms), rss, th, cpu];
            line(o, n, SIGOREST, g, Some(extra));
        }
        if let Some(c) = &row.compare {
            let (rss, th, cpu) = process_cells(c.process);
            let extra = [ms(c.added_p50_ms), ms(c.added_p99_ms), rss, th, cpu];
            line(o, n, compare_name(r), &c.latency, Some(extra));
        }
    }
}

/// Per level: requests/s of both gateways, their ratio, their shares of direct, and the
/// latency each adds.
fn compare_table(o: &mut String, r: &Report) {
    if r.settings.compare.is_none() {
        return;
    }
    let other = compare_name(r);
    let _ = writeln!(o, "\nsigorest compared with {other} (chat completions):\n");
    let _ = writeln!(
        o,
        "| conc. | sigorest req/s | {other} req/s | sigorest / {other} | sigorest share of direct | {other} share of direct | sigorest added p50 ms | {other} added p50 ms | sigorest CPU µs/req | {other} CPU µs/req |"
    );
    let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.json {
        let rounds = row.rounds.as_ref();
        let per_s = |l: Option<&Latency>| l.map_or("–".into(), |l| format!("{:.0}", l.per_s));
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.concurrency,
            per_s(row.gateway.as_ref()),
            per_s(row.compare.as_ref().map(|c| &c.latency)),
            ranged(
                row.gateway_per_compare.map_or("–".into(), times_cell),
                rounds.and_then(|r| r.gateway_per_compare),
                times_cell
            ),
            ranged(
                percent(row.gateway_share_of_direct),
                rounds.and_then(|r| r.gateway_share_of_direct),
                share_cell
            ),
            ranged(
                percent(row.compare_share_of_direct),
                rounds.and_then(|r| r.compare_share_of_direct),
                share_cell
            ),
            ranged(
                opt(row.added_p50_ms),
                rounds.and_then(|r| r.gateway_added_p50_ms),
                ms
            ),
            ranged(
                opt(row.compare.as_ref().map(|c| c.added_p50_ms)),
                rounds.and_then(|r| r.compare_added_p50_ms),
                ms
            ),
            us(row.process.and_then(|p| p.cpu_us)),
            us(row.compare.as_ref().and_then(|c| c.process?.cpu_us)),
        );
    }
}

/// With several rounds: every round's requests/s per level and target, and the share of
/// direct (median and range).
fn rounds_table(o: &mut String, r: &Report) {
    if r.json.iter().all(|row| row.rounds.is_none()) {
        return;
    }
    let _ = writeln!(o, "\nRequests/s by round, in the order run:\n");
    let _ = writeln!(
        o,
        "| conc. | target | requests/s by round | share of direct |"
    );
    let _ = writeln!(o, "|---:|---|---|---:|");
    for row in &r.json {
        let Some(rounds) = &row.rounds else {
            continue;
        };
        let list = |v: &[f64]| {
            let v: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
            v.join(", ")
        };
        let n = row.concurrency;
        let _ = writeln!(o, "| {n} | direct | {} | |", list(&rounds.direct_per_s));
        let targets = [
            (
                SIGOREST,
                &rounds.gateway_per_s,
                rounds.gateway_share_of_direct,
            ),
            (
                compare_name(r),
                &rounds.compare_per_s,
                rounds.compare_share_of_direct,
            ),
        ];
        for (name, rates, share) in targets {
            let Some(rates) = rates else {
                continue;
            };
            let cell = ranged(percent(share.map(|s| s.median)), share, share_cell);
            let _ = writeln!(o, "| {n} | {name} | {} | {cell} |", list(rates));
        }
    }
}

fn stream_table(o: &mut String, r: &Report) {
    let s = &r.settings;
    let _ = writeln!(
        o,
        "\nStreams ({} events {} ms apart); event delay = sent by the upstream → read by the client:\n",
        s.stream_events, s.stream_gap_ms
    );
    let _ = writeln!(
        o,
        "| conc. | target | streams/s | first event p50 ms | first event p99 ms | event delay p50 ms | event delay p99 ms | event delay max ms | added per event p50 ms | added per event p99 ms | errors | peak RSS MB | threads | gateway CPU µs/stream | load + fake CPU µs/stream |"
    );
    let _ = writeln!(
        o,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let line = |o: &mut String,
                n: usize,
                name: &str,
                l: &StreamLatency,
                extra: Option<[String; 5]>| {
        let [a50, a99, rss, th, cpu] = extra.unwrap_or_default();
        let _ = writeln!(
            o,
            "| {n} | {name} | {:.0} | {} | {} | {} | {} | {} | {a50} | {a99} | {} | {rss} | {th} | {cpu} | {} |",
            l.per_s,
            ms(l.first_event_p50_ms),
            ms(l.first_event_p99_ms),
            ms(l.event_p50_ms),
            ms(l.event_p99_ms),
            ms(l.event_max_ms),
            l.errors,
            us(l.bench_cpu_us)
        );
    };
    for row in &r.stream {
        let n = row.concurrency;
        line(o, n, "direct", &row.direct, None);
        if let Some(g) = &row.gateway {
            let (rss, th, cpu) = process_cells(row.process);
            let extra = [
                opt(row.added_event_p50_ms),
                opt(row.added_event_p99_ms),
                rss,
                th,
                cpu,
            ];
            line(o, n, SIGOREST, g, Some(extra));
        }
        if let Some(c) = &row.compare {
            let (rss, th, cpu) = process_cells(c.process);
            let extra = [
                ms(c.added_event_p50_ms),
                ms(c.added_event_p99_ms),
                rss,
                th,
                cpu,
            ];
            line(o, n, compare_name(r), &c.latency, Some(extra));
        }
    }
}

fn processes(o: &mut String, r: &Report) {
    let line = |o: &mut String, name: &str, p: &ProcessRow| {
        let _ = writeln!(
            o,
            "\n{name} process: RSS idle {} MB, peak (VmHWM) {} MB, after the run {} MB; threads idle {}, at most {}.",
            mb(p.rss_idle_kb),
            mb(p.peak_rss_kb),
            mb(p.rss_after_kb),
            p.threads_idle,
            p.threads_max
        );
    };
    if let Some(p) = &r.gateway_process {
        line(o, SIGOREST, p);
    }
    if let Some(p) = &r.compare_process {
        line(o, compare_name(r), p);
    }
}

fn parallel(o: &mut String, r: &Report) {
    let Some(p) = &r.parallel else {
        return;
    };
    let mut through = String::new();
    if let (Some(s), Some(e)) = (p.gateway_s, p.gateway_errors) {
        let _ = write!(through, ", through sigorest {s:.3} s ({e} errors)");
    }
    match (p.compare_s, p.compare_errors, &p.compare_skipped) {
        (Some(s), Some(e), _) => {
            let _ = write!(
                through,
                ", through {} {s:.3} s ({e} errors)",
                compare_name(r)
            );
        }
        (_, _, Some(why)) => {
            let _ = write!(through, "; {} not measured: {why}", compare_name(r));
        }
        _ => {}
    }
    let _ = writeln!(
        o,
        "\n{} parallel calls to one model whose upstream takes {} ms: direct {:.3} s ({} errors){through}.",
        p.calls, p.upstream_ms, p.direct_s, p.direct_errors
    );
}

fn targets(o: &mut String, r: &Report) {
    if r.targets
        .iter()
        .all(|g| g.value.is_none() && g.compare_value.is_none())
    {
        return;
    }
    let other = r.settings.compare.as_ref().map(|c| c.name.as_str());
    let _ = writeln!(o, "\nGoals (issue 19):\n");
    let _ = write!(o, "| measure | goal | sigorest | met? |");
    if let Some(other) = other {
        let _ = write!(o, " {other} | met? |");
    }
    let _ = writeln!(
        o,
        "\n|---|---|---:|---|{}",
        if other.is_some() { "---:|---|" } else { "" }
    );
    for g in &r.targets {
        let _ = write!(
            o,
            "| {} | {} | {} |",
            g.measure,
            g.goal(),
            cells(g, g.value, g.met)
        );
        if other.is_some() {
            let _ = write!(o, " {} |", cells(g, g.compare_value, g.compare_met));
        }
        let _ = writeln!(o);
    }
}

/// A measured value and whether it meets the goal, as two cells.
fn cells(g: &Goal, value: Option<f64>, met: Option<bool>) -> String {
    let value = value.map_or("–".to_string(), |v| match g.unit {
        "ms" => format!("{v:.3} ms"),
        "%" => format!("{v:.0} %"),
        "s" => format!("{v:.3} s"),
        _ => format!("{v:.1} {}", g.unit),
    });
    let verdict = match met {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    };
    format!("{value} | {verdict}")
}
