//! A small metrics registry of our own: counter, gauge and histogram families with a fixed
//! number of labels, rendered in the Prometheus text exposition format (0.0.4). Pure: no
//! clock, no I/O, no global state; the caller owns the families and locks them.
//!
//! Label sets are bounded twice. The callers pass values from closed sets (the model short
//! codes the gateway resolved, provider names, status codes, key names from the keys file,
//! constants), and every family holds at most [`MAX_SERIES`] label sets: a new set beyond
//! that is counted under one overflow set whose values are all [`OVERFLOW`], so no input can
//! grow the registry without limit.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::labels;

/// Most label sets one family keeps.
pub const MAX_SERIES: usize = 2000;
/// Every label value of the set that takes the samples beyond [`MAX_SERIES`].
pub const OVERFLOW: &str = "_overflow";

/// A family's name, help and label names.
#[derive(Debug, Clone)]
struct Meta<const N: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    max_series: usize,
}

/// The series of `values`, made with `new` if there is none — under the overflow set's
/// key when the family is full.
fn series_for<'s, const N: usize, V>(
    series: &'s mut BTreeMap<[String; N], V>,
    values: [&str; N],
    max: usize,
    new: impl FnOnce() -> V,
) -> &'s mut V {
    if series.len() < max || labels::contains(series, values) {
        labels::entry(series, values, new)
    } else {
        labels::entry(series, [OVERFLOW; N], new)
    }
}

/// A family of counters: values that only go up.
#[derive(Debug, Clone)]
pub struct CounterVec<const N: usize> {
    meta: Meta<N>,
    series: BTreeMap<[String; N], f64>,
}

impl<const N: usize> CounterVec<N> {
    /// `name` should end in `_total`.
    pub fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> CounterVec<N> {
        CounterVec {
            meta: Meta {
                name,
                help,
                labels,
                max_series: MAX_SERIES,
            },
            series: BTreeMap::new(),
        }
    }

    /// As [`CounterVec::new`], holding at most `max` label sets (tests).
    #[cfg(test)]
    pub fn with_max_series(mut self, max: usize) -> CounterVec<N> {
        self.meta.max_series = max.max(1);
        self
    }

    /// Adds `by` (a negative, infinite or NaN amount is ignored: counters only go up).
    pub fn add(&mut self, values: [&str; N], by: f64) {
        if !(by.is_finite() && by >= 0.0) {
            return;
        }
        *series_for(&mut self.series, values, self.meta.max_series, || 0.0) += by;
    }

    pub fn inc(&mut self, values: [&str; N]) {
        self.add(values, 1.0);
    }

    /// The value of one label set (0 when never counted).
    #[cfg(test)]
    pub fn get(&self, values: [&str; N]) -> f64 {
        labels::get(&self.series, values).copied().unwrap_or(0.0)
    }

    /// Every label set and its value, in label order.
    pub fn iter(&self) -> impl Iterator<Item = (&[String; N], f64)> {
        self.series.iter().map(|(k, v)| (k, *v))
    }

    /// How many label sets it holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.series.len()
    }
}

/// A family of gauges: values that go up and down, usually set at render time.
#[derive(Debug, Clone)]
pub struct GaugeVec<const N: usize> {
    meta: Meta<N>,
    series: BTreeMap<[String; N], f64>,
}

impl<const N: usize> GaugeVec<N> {
    pub fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> GaugeVec<N> {
        GaugeVec {
            meta: Meta {
                name,
                help,
                labels,
                max_series: MAX_SERIES,
            },
            series: BTreeMap::new(),
        }
    }

    pub fn set(&mut self, values: [&str; N], value: f64) {
        *series_for(&mut self.series, values, self.meta.max_series, || 0.0) = value;
    }
}

/// One histogram: counts per bucket (not cumulative), sum and count.
#[derive(Debug, Clone)]
struct Hist {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A family of histograms sharing one set of buckets.
#[derive(Debug, Clone)]
pub struct HistogramVec<const N: usize> {
    meta: Meta<N>,
    /// Upper bounds, ascending; `+Inf` is implicit.
    bounds: &'static [f64],
    series: BTreeMap<[String; N], Hist>,
}

impl<const N: usize> HistogramVec<N> {
    /// `bounds` ascending, finite; `name` should end in the unit (`_seconds`).
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
        bounds: &'static [f64],
    ) -> HistogramVec<N> {
        HistogramVec {
            meta: Meta {
                name,
                help,
                labels,
                max_series: MAX_SERIES,
            },
            bounds,
            series: BTreeMap::new(),
        }
    }

    /// Records one observation (NaN is ignored; a negative value counts as 0).
    pub fn observe(&mut self, values: [&str; N], v: f64) {
        if v.is_nan() {
            return;
        }
        let v = v.max(0.0);
        let n = self.bounds.len();
        let h = series_for(&mut self.series, values, self.meta.max_series, || Hist {
            buckets: vec![0; n],
            sum: 0.0,
            count: 0,
        });
        if let Some(i) = self.bounds.iter().position(|le| v <= *le) {
            h.buckets[i] += 1;
        }
        h.sum += v;
        h.count += 1;
    }

    /// How many observations one label set has.
    #[cfg(test)]
    pub fn count(&self, values: [&str; N]) -> u64 {
        labels::get(&self.series, values).map_or(0, |h| h.count)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.series.len()
    }
}

/// The text of one scrape, family after family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    pub fn counter<const N: usize>(&mut self, c: &CounterVec<N>) {
        self.family(&c.meta, "counter");
        for (values, v) in &c.series {
            self.sample(c.meta.name, &c.meta.labels, values, None, *v);
        }
    }

    pub fn gauge<const N: usize>(&mut self, g: &GaugeVec<N>) {
        self.family(&g.meta, "gauge");
        for (values, v) in &g.series {
            self.sample(g.meta.name, &g.meta.labels, values, None, *v);
        }
    }

    pub fn histogram<const N: usize>(&mut self, h: &HistogramVec<N>) {
        self.family(&h.meta, "histogram");
        let name = h.meta.name;
        let (bucket, sum, count) = (
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        );
        for (values, hist) in &h.series {
            let mut cumulative = 0;
            for (le, n) in h.bounds.iter().zip(&hist.buckets) {
                cumulative += n;
                let le = number(*le);
                self.sample(
                    &bucket,
                    &h.meta.labels,
                    values,
                    Some(&le),
                    cumulative as f64,
                );
            }
            self.sample(
                &bucket,
                &h.meta.labels,
                values,
                Some("+Inf"),
                hist.count as f64,
            );
            self.sample(&sum, &h.meta.labels, values, None, hist.sum);
            self.sample(&count, &h.meta.labels, values, None, hist.count as f64);
        }
    }

    /// The text, ending with a line break.
    pub fn finish(self) -> String {
        self.out
    }

    fn family<const N: usize>(&mut self, meta: &Meta<N>, kind: &str) {
        let _ = writeln!(self.out, "# HELP {} {}", meta.name, escape_help(meta.help));
        let _ = writeln!(self.out, "# TYPE {} {kind}", meta.name);
    }

    fn sample<const N: usize>(
        &mut self,
        name: &str,
        labels: &[&str; N],
        values: &[String; N],
        le: Option<&str>,
        v: f64,
    ) {
        self.out.push_str(name);
        if N > 0 || le.is_some() {
            self.out.push('{');
            let mut first = true;
            let pairs = labels
                .iter()
                .zip(values.iter().map(String::as_str))
                .map(|(l, v)| (*l, v))
                .chain(le.map(|le| ("le", le)));
            for (label, value) in pairs {
                if !first {
                    self.out.push(',');
                }
                first = false;
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(v));
    }
}

/// A sample value or bucket bound as Prometheus reads it: whole numbers without a point,
/// others in Rust's shortest round-trip decimal form, `+Inf`, `-Inf`, `NaN`.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A label value inside its double quotes: `\`, `"` and line feeds escaped.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A HELP text: `\` and line feeds escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[f64] = &[0.5, 1.0, 10.0];

    #[test]
    fn counters_render_with_labels_in_order() {
        let mut c = CounterVec::new("x_total", "Things.", ["model", "status"]);
        c.inc(["b", "200"]);
        c.add(["a", "404"], 2.0);
        c.inc(["b", "200"]);
        let mut e = Exposition::new();
        e.counter(&c);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{model=\"a\",status=\"404\"} 2\n\
             x_total{model=\"b\",status=\"200\"} 2\n"
        );
        assert_eq!(c.get(["b", "200"]), 2.0);
        assert_eq!(c.get(["c", "200"]), 0.0);
    }

    #[test]
    fn counters_only_go_up() {
        let mut c = CounterVec::new("x_total", "h", []);
        c.add([], 1.5);
        c.add([], -1.0);
        c.add([], f64::NAN);
        c.add([], f64::INFINITY);
        assert_eq!(c.get([]), 1.5);
        let mut e = Exposition::new();
        e.counter(&c);
        assert!(e.finish().ends_with("\nx_total 1.5\n"));
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let mut h = HistogramVec::new("d_seconds", "Durations.", ["m"], BOUNDS);
        for v in [0.1, 0.5, 0.7, 3.0, 99.0] {
            h.observe(["a"], v);
        }
        h.observe(["a"], f64::NAN);
        let mut e = Exposition::new();
        e.histogram(&h);
        assert_eq!(
            e.finish(),
            "# HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{m=\"a\",le=\"0.5\"} 2\n\
             d_seconds_bucket{m=\"a\",le=\"1\"} 3\n\
             d_seconds_bucket{m=\"a\",le=\"10\"} 4\n\
             d_seconds_bucket{m=\"a\",le=\"+Inf\"} 5\n\
             d_seconds_sum{m=\"a\"} 103.3\n\
             d_seconds_count{m=\"a\"} 5\n"
        );
        assert_eq!(h.count(["a"]), 5);
    }

    #[test]
    fn a_histogram_without_labels_has_only_le() {
        let mut h = HistogramVec::new("o_seconds", "h", [], BOUNDS);
        h.observe([], -1.0);
        let mut e = Exposition::new();
        e.histogram(&h);
        let text = e.finish();
        assert!(text.contains("o_seconds_bucket{le=\"0.5\"} 1\n"), "{text}");
        assert!(text.contains("o_seconds_sum 0\n"), "{text}");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut g = GaugeVec::new("g", "a \\ b\nc", ["v"]);
        g.set(["q\"uo\\te\nnl"], 1.0);
        let mut e = Exposition::new();
        e.gauge(&g);
        assert_eq!(
            e.finish(),
            "# HELP g a \\\\ b\\nc\n# TYPE g gauge\ng{v=\"q\\\"uo\\\\te\\nnl\"} 1\n"
        );
    }

    #[test]
    fn families_stay_bounded_whatever_the_values() {
        let mut c = CounterVec::new("x_total", "h", ["a", "b"]).with_max_series(10);
        for i in 0..1000 {
            c.inc([&format!("v{i}"), "x"]);
        }
        assert_eq!(c.len(), 11, "ten sets and the overflow set");
        assert_eq!(c.get([OVERFLOW, OVERFLOW]), 990.0);
        // A set already present keeps counting under its own labels.
        c.inc(["v3", "x"]);
        assert_eq!(c.get(["v3", "x"]), 2.0);
        let mut h = HistogramVec::new("h_seconds", "h", ["a"], BOUNDS);
        for i in 0..(MAX_SERIES + 500) {
            h.observe([&i.to_string()], 1.0);
        }
        assert_eq!(h.len(), MAX_SERIES + 1);
    }

    #[test]
    fn numbers_read_as_prometheus_expects() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(0.000004), "0.000004");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(1e20), "100000000000000000000");
    }
}
