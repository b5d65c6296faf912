//! How each model has been doing lately — its success rate and latency, as moving averages
//! over its recent calls — so that `auto` can pick the healthiest model of a list. Pure
//! bookkeeping behind one mutex, taken for a few arithmetic operations.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::util::lock;

/// Weight of the newest call in the averages (about the last ten calls count).
const WEIGHT: f64 = 0.2;

#[derive(Debug, Clone, Copy)]
struct Score {
    /// 1.0: every recent call succeeded.
    success: f64,
    /// Milliseconds, over successful calls.
    latency_ms: Option<f64>,
}

impl Score {
    /// One more call: moving averages, recent calls weighing [`WEIGHT`].
    fn add(&mut self, ok: bool, took: Duration) {
        self.success = self.success * (1.0 - WEIGHT) + if ok { WEIGHT } else { 0.0 };
        if ok {
            let ms = took.as_secs_f64() * 1000.0;
            self.latency_ms = Some(
                self.latency_ms
                    .map_or(ms, |l| l * (1.0 - WEIGHT) + ms * WEIGHT),
            );
        }
    }
}

/// A model's recent record, as `/api/health` and `auto` see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub success_rate: f64,
    pub latency_ms: Option<f64>,
}

/// Every model's recent record.
#[derive(Debug, Default)]
pub struct Scores {
    by_model: Mutex<HashMap<String, Score>>,
}

impl Scores {
    /// Records one call to `model`: whether it succeeded and how long it took.
    pub fn record(&self, model: &str, ok: bool, took: Duration) {
        let mut all = lock(&self.by_model);
        match all.get_mut(model) {
            Some(s) => s.add(ok, took),
            None => {
                let mut s = Score {
                    success: 1.0,
                    latency_ms: None,
                };
                s.add(ok, took);
                all.insert(model.to_string(), s);
            }
        }
    }

    pub fn snapshot(&self, model: &str) -> Option<Snapshot> {
        lock(&self.by_model).get(model).map(|s| Snapshot {
            success_rate: s.success,
            latency_ms: s.latency_ms,
        })
    }

    /// `models` ordered healthiest first, without those `blocked` says to skip (an open
    /// breaker): by success rate (in steps of 5 %, so noise does not reorder them), then by
    /// latency. A model with no record yet counts as healthy and fast, so it gets tried.
    pub fn rank(&self, models: &[String], blocked: impl Fn(&str) -> bool) -> Vec<String> {
        let all = lock(&self.by_model);
        let mut ranked: Vec<(i64, f64, usize, &String)> = models
            .iter()
            .enumerate()
            .filter(|(_, m)| !blocked(m))
            .map(|(i, m)| {
                let s = all.get(m.as_str());
                let success = s.map_or(1.0, |s| s.success);
                let latency = s.and_then(|s| s.latency_ms).unwrap_or(0.0);
                (-((success * 20.0).round() as i64), latency, i, m)
            })
            .collect();
        ranked.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
        ranked.into_iter().map(|(_, _, _, m)| m.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn healthiest_first_blocked_skipped_untried_tried() {
        let s = Scores::default();
        let ms = Duration::from_millis;
        for _ in 0..5 {
            s.record("slow", true, ms(900));
            s.record("fast", true, ms(100));
            s.record("flaky", false, ms(50));
        }
        s.record("flaky", true, ms(10));
        let list = names(&["flaky", "slow", "fast", "new", "open"]);
        let ranked = s.rank(&list, |m| m == "open");
        assert_eq!(ranked, names(&["new", "fast", "slow", "flaky"]));
        let snap = s.snapshot("flaky").unwrap();
        assert!(snap.success_rate < 0.5 && snap.latency_ms == Some(10.0));
        assert!(s.snapshot("nothing").is_none());
        // Ties keep the configured order.
        let t = Scores::default();
        assert_eq!(t.rank(&names(&["b", "a"]), |_| false), names(&["b", "a"]));
    }
}
