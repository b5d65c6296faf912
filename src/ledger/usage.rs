//! Usage totals per client key and model — requests, errors, prompt and completion tokens,
//! cost — for today, this month and all time, and the small JSON file that keeps them over
//! a restart. Pure but for [`load`]: the caller passes the time and writes the bytes.
//!
//! Days and months are UTC. Time only moves forward here: a clock that jumps back (a
//! Raspberry Pi without a real-time clock before NTP syncs) keeps counting into the current
//! day instead of clearing it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file format's version.
const VERSION: u32 = 1;
const DAY: u64 = 86_400;

/// What one period holds for one (key, model), or in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    /// Requests that did not end with a complete answer (status other than 2xx).
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// From the catalog's prices at the time of the request.
    pub cost_usd: f64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        // (Saturating: the token counts come from providers, which may send any number.)
        self.requests = self.requests.saturating_add(o.requests);
        self.errors = self.errors.saturating_add(o.errors);
        self.prompt_tokens = self.prompt_tokens.saturating_add(o.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(o.completion_tokens);
        self.cost_usd += o.cost_usd;
    }
}

/// One (key, model) line of a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The client key's name; `null` for requests without one.
    pub key: Option<String>,
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

impl Row {
    fn new([key, model]: &[String; 2], t: &Totals) -> Row {
        Row {
            key: (!key.is_empty()).then(|| key.clone()),
            model: model.clone(),
            requests: t.requests,
            errors: t.errors,
            prompt_tokens: t.prompt_tokens,
            completion_tokens: t.completion_tokens,
            cost_usd: t.cost_usd,
        }
    }

    pub fn totals(&self) -> Totals {
        Totals {
            requests: self.requests,
            errors: self.errors,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cost_usd: self.cost_usd,
        }
    }
}

/// One period as `GET /api/usage` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Period {
    /// Its first day (`YYYY-MM-DD`, UTC); for all time the day of the first request counted,
    /// `null` before any.
    pub from: Option<String>,
    pub total: Totals,
    pub rows: Vec<Row>,
}

/// `GET /api/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Today's date, UTC.
    pub date: String,
    pub today: Period,
    pub month: Period,
    pub all_time: Period,
}

/// (key name or "", model short code) → totals.
/// Keyed by [key name, model]; looked up without allocating (`labels`).
type Table = BTreeMap<[String; 2], Totals>;

/// The totals of the three periods.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// When the first request was counted (Unix seconds).
    since: Option<u64>,
    /// The day (since 1970-01-01) that `today` is for.
    day: u64,
    today: Table,
    month: Table,
    all_time: Table,
}

/// The file on disk.
#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    /// The day `today` is for, `YYYY-MM-DD`.
    date: String,
    since: Option<u64>,
    today: Vec<Row>,
    month: Vec<Row>,
    all_time: Vec<Row>,
}

impl Usage {
    /// Empty, starting today.
    pub fn new(now: u64) -> Usage {
        Usage {
            day: now / DAY,
            ..Usage::default()
        }
    }

    /// Counts one request of `key` ("" for none) on `model` at `now` (Unix seconds).
    pub fn add(&mut self, key: &str, model: &str, t: &Totals, now: u64) {
        self.roll(now);
        self.since.get_or_insert(now);
        for table in [&mut self.today, &mut self.month, &mut self.all_time] {
            super::labels::entry(table, [key, model], Totals::default).add(t);
        }
    }

    /// Starts a new day (and month) when `now` is past the current one.
    fn roll(&mut self, now: u64) {
        let day = now / DAY;
        if day <= self.day {
            return;
        }
        if month_of(day) != month_of(self.day) {
            self.month.clear();
        }
        self.today.clear();
        self.day = day;
    }

    /// The report at `now`.
    pub fn report(&mut self, now: u64) -> Report {
        self.roll(now);
        let period = |from: Option<String>, table: &Table| {
            let mut total = Totals::default();
            let rows = table
                .iter()
                .map(|(k, t)| {
                    total.add(t);
                    Row::new(k, t)
                })
                .collect();
            Period { from, total, rows }
        };
        let (y, m, _) = civil(self.day);
        Report {
            date: date(self.day),
            today: period(Some(date(self.day)), &self.today),
            month: period(Some(format!("{y:04}-{m:02}-01")), &self.month),
            all_time: period(self.since.map(|s| date(s / DAY)), &self.all_time),
        }
    }

    /// Today's totals per model, over all keys.
    pub fn today_by_model(&mut self, now: u64) -> BTreeMap<String, Totals> {
        self.roll(now);
        let mut out: BTreeMap<String, Totals> = BTreeMap::new();
        for ([_, model], t) in &self.today {
            out.entry(model.clone()).or_default().add(t);
        }
        out
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let rows = |t: &Table| t.iter().map(|(k, v)| Row::new(k, v)).collect();
        let file = File {
            version: VERSION,
            date: date(self.day),
            since: self.since,
            today: rows(&self.today),
            month: rows(&self.month),
            all_time: rows(&self.all_time),
        };
        // Rows of strings and numbers always serialise.
        let mut bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Reads the file's bytes, then moves on to `now`; the error says what is wrong.
    pub fn from_bytes(bytes: &[u8], now: u64) -> Result<Usage, String> {
        let file: File = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if file.version != VERSION {
            return Err(format!(
                "version {} (this sigorest reads {VERSION})",
                file.version
            ));
        }
        let day = parse_date(&file.date).ok_or_else(|| format!("bad date {:?}", file.date))?;
        let table = |rows: Vec<Row>| -> Table {
            let mut t = Table::new();
            for r in rows {
                let k = [r.key.clone().unwrap_or_default(), r.model.clone()];
                t.entry(k).or_default().add(&r.totals());
            }
            t
        };
        let mut usage = Usage {
            since: file.since,
            day,
            today: table(file.today),
            month: table(file.month),
            all_time: table(file.all_time),
        };
        usage.roll(now);
        Ok(usage)
    }
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// The file's totals (or empty when there was no file).
    Read(Usage),
    /// The file did not parse: it was moved to the path given, and the totals start empty.
    MovedAside(Usage, PathBuf, String),
    /// The file could not be read (permissions, I/O): it is left alone.
    Unreadable(io::Error),
}

/// Reads the usage file at `path`. A missing file is an empty start; a torn or corrupt one
/// is moved aside (`<name>.corrupt-<unix seconds>`) so that nothing is lost and the server
/// starts anyway.
pub fn load(path: &Path, now: u64) -> Loaded {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Read(Usage::new(now)),
        Err(e) => return Loaded::Unreadable(e),
    };
    match Usage::from_bytes(&bytes, now) {
        Ok(u) => Loaded::Read(u),
        Err(why) => match crate::util::fs::move_aside(path) {
            Ok(aside) => Loaded::MovedAside(Usage::new(now), aside, why),
            Err(e) => Loaded::Unreadable(e),
        },
    }
}

/// The month (year * 12 + month) of a day.
fn month_of(day: u64) -> i64 {
    let (y, m, _) = civil(day);
    y * 12 + i64::from(m)
}

/// `YYYY-MM-DD` of a day since 1970-01-01.
pub fn date(day: u64) -> String {
    let (y, m, d) = civil(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// (year, month, day) of a day since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(day: u64) -> (i64, u32, u32) {
    let z = day as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day since 1970-01-01 of `YYYY-MM-DD` (`days_from_civil`); `None` if it is not a date.
fn parse_date(s: &str) -> Option<u64> {
    let mut parts = s.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let day = era * 146_097 + doe - 719_468;
    let day = u64::try_from(day).ok()?;
    // 2026-02-31 is not a date: it must come back as itself.
    (date(day) == s).then_some(day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::fs::testdir::TestDir;

    /// 2026-11-21T12:00:00Z
    const NOV21: u64 = 1_795_262_400;

    fn one(prompt: u64, completion: u64, cost: f64) -> Totals {
        Totals {
            requests: 1,
            errors: 0,
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost_usd: cost,
        }
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(NOV21 / DAY), "2026-11-21");
        assert_eq!(date(11_016), "2000-02-29");
        for day in [0, 59, 60, 11_016, 20_000, 30_000, NOV21 / DAY] {
            assert_eq!(parse_date(&date(day)), Some(day));
        }
        for bad in [
            "2026-02-31",
            "2026-13-01",
            "1969-12-31",
            "x",
            "2026-1-1",
            "",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn periods_add_up_per_key_and_model() {
        let mut u = Usage::new(NOV21);
        u.add("", "gpt41", &one(10, 5, 0.5), NOV21);
        u.add("", "gpt41", &one(1, 1, 0.25), NOV21 + 60);
        u.add("alice", "gpt41", &one(2, 3, 0.0), NOV21 + 120);
        let r = u.report(NOV21 + 180);
        assert_eq!(r.date, "2026-11-21");
        assert_eq!(r.today.from.as_deref(), Some("2026-11-21"));
        assert_eq!(r.month.from.as_deref(), Some("2026-11-01"));
        assert_eq!(r.all_time.from.as_deref(), Some("2026-11-21"));
        assert_eq!(r.today.rows.len(), 2);
        assert_eq!(r.today.rows[0].key, None);
        assert_eq!(r.today.rows[0].requests, 2);
        assert_eq!(r.today.rows[0].prompt_tokens, 11);
        assert_eq!(r.today.rows[0].cost_usd, 0.75);
        assert_eq!(r.today.rows[1].key.as_deref(), Some("alice"));
        assert_eq!(r.today.total.requests, 3);
        assert_eq!(r.today.total.completion_tokens, 9);
        assert_eq!(
            r.today,
            Period {
                from: r.today.from.clone(),
                ..r.all_time.clone()
            }
        );
    }

    #[test]
    fn a_new_day_clears_today_and_a_new_month_clears_the_month() {
        let mut u = Usage::new(NOV21);
        u.add("", "kimi", &one(1, 1, 0.0), NOV21);
        // Ten days later: still November.
        let r = u.report(NOV21 + 8 * DAY);
        assert_eq!(r.date, "2026-11-29");
        assert!(r.today.rows.is_empty());
        assert_eq!(r.month.total.requests, 1);
        // December.
        u.add("", "kimi", &one(1, 1, 0.0), NOV21 + 10 * DAY);
        let r = u.report(NOV21 + 10 * DAY);
        assert_eq!(r.month.from.as_deref(), Some("2026-12-01"));
        assert_eq!(r.month.total.requests, 1);
        assert_eq!(r.all_time.total.requests, 2);
        assert_eq!(r.all_time.from.as_deref(), Some("2026-11-21"));
    }

    #[test]
    fn a_clock_that_jumps_back_clears_nothing() {
        let mut u = Usage::new(NOV21);
        u.add("", "kimi", &one(1, 1, 0.0), NOV21);
        u.add("", "kimi", &one(1, 1, 0.0), NOV21 - 40 * DAY);
        let r = u.report(NOV21 - 40 * DAY);
        assert_eq!(r.date, "2026-11-21");
        assert_eq!(r.today.total.requests, 2);
    }

    #[test]
    fn the_file_round_trips_and_rolls_over_on_load() {
        let mut u = Usage::new(NOV21);
        u.add("", "gpt41", &one(10, 5, 0.001), NOV21);
        u.add("bob", "ollama-qwen3", &one(7, 8, 0.0), NOV21);
        let bytes = u.to_bytes();
        assert_eq!(Usage::from_bytes(&bytes, NOV21).unwrap(), u);
        let mut later = Usage::from_bytes(&bytes, NOV21 + DAY).unwrap();
        let r = later.report(NOV21 + DAY);
        assert!(r.today.rows.is_empty());
        assert_eq!(r.month.total.requests, 2);
        assert_eq!(r.all_time.total.prompt_tokens, 17);
    }

    #[test]
    fn torn_or_foreign_files_are_refused_with_a_reason() {
        let bytes = Usage::new(NOV21).to_bytes();
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 3] {
            assert!(
                Usage::from_bytes(&bytes[..cut], NOV21).is_err(),
                "cut at {cut}"
            );
        }
        let v2 = String::from_utf8(bytes)
            .unwrap()
            .replace("\"version\": 1", "\"version\": 2");
        let why = Usage::from_bytes(v2.as_bytes(), NOV21).unwrap_err();
        assert!(why.contains("version 2"), "{why}");
    }

    #[test]
    fn load_moves_a_corrupt_file_aside_and_starts_empty() {
        let d = TestDir::new("usage-load");
        let p = d.path().join("usage.json");
        assert!(matches!(load(&p, NOV21), Loaded::Read(u) if u == Usage::new(NOV21)));
        std::fs::write(&p, b"{\"version\": 1, \"date\": \"2026-").unwrap();
        let Loaded::MovedAside(u, aside, why) = load(&p, NOV21) else {
            panic!("expected MovedAside");
        };
        assert_eq!(u, Usage::new(NOV21));
        assert!(!why.is_empty());
        assert!(!p.exists());
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            b"{\"version\": 1, \"date\": \"2026-"
        );
        let mut good = Usage::new(NOV21);
        good.add("", "kimi", &one(1, 2, 0.0), NOV21);
        std::fs::write(&p, good.to_bytes()).unwrap();
        assert!(matches!(load(&p, NOV21), Loaded::Read(u) if u == good));
    }
}
