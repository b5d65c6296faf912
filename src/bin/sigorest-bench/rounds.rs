//! `-rounds N`: every level measured N times, direct and through each gateway, with the
//! order of the two gateways alternating from round to round (so that neither always runs
//! on the warmer or the busier machine), and summed up as each target's median round and
//! the spread of the rounds.
//!
//! One run on a shared 2-core VM moves by ±20 % from the next; a ratio of two gateways
//! from one round each says little. The ratios here are taken round by round (sigorest and
//! the other gateway against the direct rate of their own round, and against each other)
//! and then their median and range reported.

use serde::Serialize;

use super::report::{Latency, Process, StreamLatency, Through};

/// What a level's rounds are compared by: requests (or streams) per second, and the
/// latency whose added part is reported.
pub trait Rate {
    fn per_s(&self) -> f64;
    /// The p50 latency: of the answer (completions), of the first event (streams).
    fn p50_ms(&self) -> f64;
}

impl Rate for Latency {
    fn per_s(&self) -> f64 {
        self.per_s
    }

    fn p50_ms(&self) -> f64 {
        self.p50_ms
    }
}

impl Rate for StreamLatency {
    fn per_s(&self) -> f64 {
        self.per_s
    }

    fn p50_ms(&self) -> f64 {
        self.first_event_p50_ms
    }
}

/// One round of one level: direct, then through sigorest and the other gateway.
pub struct Round<L> {
    pub direct: L,
    pub through: [Option<Through<L>>; 2],
}

/// The order in which round `i` measures the two gateways (0 sigorest, 1 the other).
pub fn order(i: usize) -> [usize; 2] {
    if i.is_multiple_of(2) { [0, 1] } else { [1, 0] }
}

/// A level measured: each target's median round (direct, through sigorest and the other
/// gateway) and, with more than one round, all of them in figures.
pub type Leveled<L> = (L, [Option<Through<L>>; 2], Option<Rounds>);

/// The median of some values and their range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values. An even count takes the lower of the middle two, a value that
    /// was measured.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        Some(Spread {
            median: *v.get(median_round(&v)?)?,
            min: v.iter().copied().reduce(f64::min)?,
            max: v.iter().copied().reduce(f64::max)?,
        })
    }
}

/// A level's rounds in figures: each target's rate round by round (in the order run), and
/// the ratios taken within each round.
#[derive(Debug, Clone, Serialize)]
pub struct Rounds {
    pub direct_per_s: Vec<f64>,
    pub gateway_per_s: Option<Vec<f64>>,
    pub compare_per_s: Option<Vec<f64>>,
    pub gateway_share_of_direct: Option<Spread>,
    pub compare_share_of_direct: Option<Spread>,
    pub gateway_per_compare: Option<Spread>,
    /// Latency p50 added over the same round's direct p50, ms (completions; streams: the
    /// first event's).
    pub gateway_added_p50_ms: Option<Spread>,
    pub compare_added_p50_ms: Option<Spread>,
}

/// The index of the round whose value is the median (the lower one of an even count).
fn median_round(values: &[f64]) -> Option<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    idx.get(idx.len().checked_sub(1)? / 2).copied()
}

/// Each target's median round (a gateway's process from that round, with the highest
/// peak and thread count of all its rounds), and the figures of all of them when there was
/// more than one.
pub fn combine<L: Rate + Clone>(rounds: Vec<Round<L>>) -> Option<Leveled<L>> {
    let direct_rates: Vec<f64> = rounds.iter().map(|r| r.direct.per_s()).collect();
    let direct = rounds.get(median_round(&direct_rates)?)?.direct.clone();
    let through = [0, 1].map(|g| pick(&rounds, g));
    let summary = (rounds.len() > 1).then(|| summarise(&rounds));
    Some((direct, through, summary))
}

/// Gateway `g`'s median round, if it was measured in every round.
fn pick<L: Rate + Clone>(rounds: &[Round<L>], g: usize) -> Option<Through<L>> {
    let all: Vec<&Through<L>> = rounds
        .iter()
        .map(|r| r.through[g].as_ref())
        .collect::<Option<_>>()?;
    let rates: Vec<f64> = all.iter().map(|(l, _)| l.per_s()).collect();
    let (l, process) = all.get(median_round(&rates)?)?;
    let most = |f: fn(&Process) -> u64| all.iter().filter_map(|(_, p)| p.as_ref()).map(f).max();
    let process = process.map(|p| Process {
        peak_rss_kb: most(|p| p.peak_rss_kb).unwrap_or(p.peak_rss_kb),
        threads_max: most(|p| p.threads_max).unwrap_or(p.threads_max),
        ..p
    });
    Some((l.clone(), process))
}

fn summarise<L: Rate>(rounds: &[Round<L>]) -> Rounds {
    let rates = |g: usize| -> Option<Vec<f64>> {
        rounds
            .iter()
            .map(|r| r.through[g].as_ref().map(|(l, _)| l.per_s()))
            .collect()
    };
    // A figure of each round where both sides were measured and the divisor is not zero.
    let per_round = |f: &dyn Fn(&Round<L>) -> Option<f64>| {
        let v: Vec<f64> = rounds.iter().filter_map(f).collect();
        Spread::of(&v)
    };
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let share = |g: usize| {
        per_round(&|r: &Round<L>| {
            let (l, _) = r.through[g].as_ref()?;
            ratio(l.per_s(), r.direct.per_s())
        })
    };
    let added = |g: usize| {
        per_round(&|r: &Round<L>| {
            let (l, _) = r.through[g].as_ref()?;
            Some(l.p50_ms() - r.direct.p50_ms())
        })
    };
    Rounds {
        direct_per_s: rounds.iter().map(|r| r.direct.per_s()).collect(),
        gateway_per_s: rates(0),
        compare_per_s: rates(1),
        gateway_share_of_direct: share(0),
        compare_share_of_direct: share(1),
        gateway_per_compare: per_round(&|r: &Round<L>| {
            let (g, _) = r.through[0].as_ref()?;
            let (c, _) = r.through[1].as_ref()?;
            ratio(g.per_s(), c.per_s())
        }),
        gateway_added_p50_ms: added(0),
        compare_added_p50_ms: added(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lat(per_s: f64, p50_ms: f64) -> Latency {
        Latency {
            requests: per_s as usize,
            errors: 0,
            per_s,
            p50_ms,
            p90_ms: p50_ms,
            p99_ms: p50_ms,
            max_ms: p50_ms,
            bench_cpu_us: None,
        }
    }

    fn process(peak_rss_kb: u64, threads_max: u64, cpu_us: f64) -> Option<Process> {
        Some(Process {
            peak_rss_kb,
            threads_max,
            cpu_us: Some(cpu_us),
        })
    }

    #[test]
    fn the_gateways_take_turns_at_going_first() {
        assert_eq!([0, 1, 2, 3].map(order), [[0, 1], [1, 0], [0, 1], [1, 0]]);
    }

    #[test]
    fn a_spread_is_a_measured_median_and_the_range() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        // Even: the lower middle value, not an average no round had.
        assert_eq!(Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.0);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN]), None);
        assert_eq!(Spread::of(&[5.0]).unwrap().median, 5.0);
    }

    #[test]
    fn each_target_is_its_median_round_and_the_ratios_are_taken_within_rounds() {
        let rounds = vec![
            Round {
                direct: lat(100.0, 1.0),
                through: [
                    Some((lat(40.0, 3.0), process(10, 5, 50.0))),
                    Some((lat(50.0, 2.0), None)),
                ],
            },
            Round {
                direct: lat(200.0, 0.5),
                through: [
                    Some((lat(60.0, 2.5), process(30, 9, 40.0))),
                    Some((lat(80.0, 1.5), None)),
                ],
            },
            Round {
                direct: lat(120.0, 0.8),
                through: [
                    Some((lat(50.0, 2.8), process(20, 7, 45.0))),
                    Some((lat(100.0, 1.8), None)),
                ],
            },
        ];
        let (direct, [g, c], summary) = combine(rounds).unwrap();
        assert_eq!(direct.per_s, 120.0);
        let (g, gp) = g.unwrap();
        assert_eq!(g.per_s, 50.0);
        // The median round's CPU, the highest peak and thread count of all rounds.
        assert_eq!(gp, process(30, 9, 45.0));
        assert_eq!(c.unwrap().0.per_s, 80.0);
        let s = summary.expect("three rounds are summed up");
        assert_eq!(s.direct_per_s, [100.0, 200.0, 120.0]);
        assert_eq!(s.gateway_per_s.as_deref(), Some(&[40.0, 60.0, 50.0][..]));
        // Shares 0.4, 0.3, 0.417: the median is the first round's 0.4, not the ratio of the
        // medians (50 / 120).
        let share = s.gateway_share_of_direct.unwrap();
        assert_eq!((share.median, share.min), (0.4, 0.3));
        assert!((share.max - 50.0 / 120.0).abs() < 1e-12);
        // sigorest / other per round: 0.8, 0.75, 0.5.
        let per = s.gateway_per_compare.unwrap();
        assert_eq!((per.median, per.min, per.max), (0.75, 0.5, 0.8));
        // Added p50 per round: 2.0 each for sigorest; 1.0 each for the other.
        assert_eq!(s.gateway_added_p50_ms.unwrap().median, 2.0);
        assert_eq!(s.compare_added_p50_ms.unwrap().max, 1.0);
    }

    #[test]
    fn one_round_has_no_summary_and_a_missing_gateway_stays_missing() {
        let rounds = vec![Round {
            direct: lat(10.0, 1.0),
            through: [Some((lat(5.0, 2.0), None)), None],
        }];
        let (direct, [g, c], summary) = combine(rounds).unwrap();
        assert_eq!((direct.per_s, g.unwrap().0.per_s), (10.0, 5.0));
        assert!(c.is_none() && summary.is_none());
        assert!(combine::<Latency>(Vec::new()).is_none());
    }
}
