//! The goals issue 19 sets for sigorest, read off a finished report: each one met, not
//! met, or not measured by this run (a level or test it skipped); the other gateway's value
//! beside it when there is one.

use serde::Serialize;

use super::report::Report;

/// One goal and how this run did.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What is measured.
    pub measure: &'static str,
    pub unit: &'static str,
    pub limit: f64,
    /// The value must be at most `limit` (else at least).
    pub at_most: bool,
    /// sigorest's value; None when this run did not measure it.
    pub value: Option<f64>,
    pub met: Option<bool>,
    /// The other gateway's value, for comparison.
    pub compare_value: Option<f64>,
    pub compare_met: Option<bool>,
}

impl Goal {
    /// `≤ 0.1 ms`, `≥ 50 %`.
    pub fn goal(&self) -> String {
        let sign = if self.at_most { '≤' } else { '≥' };
        format!("{sign} {} {}", self.limit, self.unit)
    }

    fn new(
        measure: &'static str,
        unit: &'static str,
        limit: f64,
        at_most: bool,
        [value, compare_value]: [Option<f64>; 2],
    ) -> Goal {
        let met = |v: Option<f64>| v.map(|v| if at_most { v <= limit } else { v >= limit });
        Goal {
            measure,
            unit,
            limit,
            at_most,
            met: met(value),
            value,
            compare_met: met(compare_value),
            compare_value,
        }
    }
}

/// The goals, for sigorest and (where measured) the other gateway.
pub fn evaluate(r: &Report) -> Vec<Goal> {
    let json_at = |n: usize| r.json.iter().find(|row| row.concurrency == n);
    let added_at_1 = json_at(1).map_or([None, None], |row| {
        [
            row.added_p50_ms,
            row.compare.as_ref().map(|c| c.added_p50_ms),
        ]
    });
    let share_at_100 = json_at(100).map_or([None, None], |row| {
        [row.gateway_share_of_direct, row.compare_share_of_direct].map(|s| s.map(|s| s * 100.0))
    });
    // The goal names 100 calls of 1 s: a run with other numbers did not measure it.
    let parallel = r
        .parallel
        .as_ref()
        .filter(|p| p.calls == 100 && p.upstream_ms == 1000)
        .map_or([None, None], |p| [p.gateway_s, p.compare_s]);
    let mb = |kb: u64| kb as f64 / 1024.0;
    let idle =
        [&r.gateway_process, &r.compare_process].map(|p| p.as_ref().map(|p| mb(p.rss_idle_kb)));
    // Each level's peak (`VmHWM` reset before it): the most of both tables at 100.
    let peak = [false, true].map(|compare| {
        let json = r.json.iter().filter(|row| row.concurrency == 100);
        let stream = r.stream.iter().filter(|row| row.concurrency == 100);
        json.map(|row| row.process_of(compare))
            .chain(stream.map(|row| row.process_of(compare)))
            .flatten()
            .map(|p| p.peak_rss_kb)
            .max()
            .map(mb)
    });
    vec![
        Goal::new(
            "added latency p50 at concurrency 1",
            "ms",
            0.1,
            true,
            added_at_1,
        ),
        Goal::new(
            "requests/s at concurrency 100, share of direct",
            "%",
            50.0,
            false,
            share_at_100,
        ),
        Goal::new(
            "100 parallel calls of a 1-s upstream, wall time",
            "s",
            1.1,
            true,
            parallel,
        ),
        Goal::new("RSS when idle", "MB", 6.0, true, idle),
        Goal::new("peak RSS at concurrency 100", "MB", 24.0, true, peak),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_are_met_or_not() {
        let g = Goal::new("x", "ms", 0.1, true, [Some(0.08), Some(0.4)]);
        assert_eq!((g.met, g.compare_met), (Some(true), Some(false)));
        assert_eq!(g.goal(), "≤ 0.1 ms");
        let g = Goal::new("y", "%", 50.0, false, [Some(50.0), None]);
        assert_eq!((g.met, g.compare_met), (Some(true), None));
        assert_eq!(g.goal(), "≥ 50 %");
        let g = Goal::new("z", "s", 1.1, true, [None, Some(1.0)]);
        assert_eq!((g.met, g.compare_met), (None, Some(true)));
    }
}
