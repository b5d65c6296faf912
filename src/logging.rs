//! Log lines on stderr, as text or JSON.
//!
//! Text: `2026-11-21T12:00:00Z INFO  message key=value ...`. JSON (`-j`): one object a line
//! with `time`, `level`, `msg` and the record's key-values as fields. Key-values come from
//! `log`'s `kv` feature: `info!(status = 200, model = "gpt41"; "request")`. Values with
//! spaces, `=` or quotes are quoted in text. rustls below WARN is filtered out.
//! Each line is written with one `write` call, so lines from threads never interleave.
//!
//! This is our own small [`log::Log`], not simplelog: simplelog's line format has brackets
//! around the level and no JSON output, and neither can be changed from outside. Formatting
//! is the pure [`format_record`], so both formats are tested without touching stderr.

use std::fmt::Write as _;
use std::io::Write as _;

use log::kv::{self, VisitSource, VisitValue};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// Installs the logger (once; later calls are ignored).
pub fn init(level: LevelFilter, json: bool) {
    if log::set_boxed_logger(Box::new(StderrLogger { json })).is_ok() {
        log::set_max_level(level);
    }
}

/// RFC 3339 UTC time with seconds, `2026-11-21T12:00:00Z`, from Unix seconds.
pub fn rfc3339(unix_secs: u64) -> String {
    // u64::MAX / 86_400 fits an i64 comfortably.
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date `(year, month 1-12, day 1-31)` of a day counted from
/// 1970-01-01 (Howard Hinnant's `civil_from_days`). Also used for certificate validity.
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of
/// [`civil_from_days`]). Used for `Retry-After` dates and certificate validity.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One log line, newline included, exactly as it is written to stderr.
pub fn format_record(record: &Record<'_>, json: bool, unix_secs: u64) -> Vec<u8> {
    let time = rfc3339(unix_secs);
    let msg = record.args().to_string();
    let mut line = String::with_capacity(64 + msg.len());
    if json {
        line.push_str("{\"time\":");
        push_json_str(&mut line, &time);
        line.push_str(",\"level\":");
        push_json_str(&mut line, record.level().as_str());
        line.push_str(",\"msg\":");
        push_json_str(&mut line, &msg);
        let _ = record.key_values().visit(&mut JsonFields(&mut line));
        line.push('}');
    } else {
        let _ = write!(line, "{time} {:<5} ", record.level().as_str());
        push_escaped(&mut line, &msg, false);
        let _ = record.key_values().visit(&mut TextFields(&mut line));
    }
    line.push('\n');
    line.into_bytes()
}

/// Whether a record from `target` at `level` is kept: TLS chatter is not.
fn target_wanted(target: &str, level: Level) -> bool {
    level <= Level::Warn || !target.starts_with("rustls")
}

struct StderrLogger {
    json: bool,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level() && target_wanted(metadata.target(), metadata.level())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let line = format_record(record, self.json, now);
        // One write_all on the locked handle: lines never interleave. A closed or full
        // stderr must not take the server down, so errors are dropped.
        let _ = std::io::stderr().lock().write_all(&line);
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// A key-value value reduced to what the two formats distinguish.
enum Field {
    Null,
    Bool(bool),
    /// An integer or a finite float, already formatted as a JSON number.
    Number(String),
    Text(String),
}

impl Field {
    fn of(value: &kv::Value<'_>) -> Field {
        let mut field = Field::Null;
        if value.visit(FieldVisitor(&mut field)).is_err() {
            field = Field::Text(value.to_string());
        }
        field
    }
}

struct FieldVisitor<'a>(&'a mut Field);

impl<'v> VisitValue<'v> for FieldVisitor<'_> {
    fn visit_any(&mut self, value: kv::Value<'_>) -> Result<(), kv::Error> {
        // Display and Debug captures (`key:% = x`, `key:? = x`).
        *self.0 = Field::Text(value.to_string());
        Ok(())
    }
    fn visit_null(&mut self) -> Result<(), kv::Error> {
        *self.0 = Field::Null;
        Ok(())
    }
    fn visit_u64(&mut self, value: u64) -> Result<(), kv::Error> {
        *self.0 = Field::Number(value.to_string());
        Ok(())
    }
    fn visit_i64(&mut self, value: i64) -> Result<(), kv::Error> {
        *self.0 = Field::Number(value.to_string());
        Ok(())
    }
    fn visit_u128(&mut self, value: u128) -> Result<(), kv::Error> {
        // Beyond 64 bits most JSON readers lose precision: keep the digits as text.
        *self.0 = match u64::try_from(value) {
            Ok(v) => Field::Number(v.to_string()),
            Err(_) => Field::Text(value.to_string()),
        };
        Ok(())
    }
    fn visit_i128(&mut self, value: i128) -> Result<(), kv::Error> {
        *self.0 = match i64::try_from(value) {
            Ok(v) => Field::Number(v.to_string()),
            Err(_) => Field::Text(value.to_string()),
        };
        Ok(())
    }
    fn visit_f64(&mut self, value: f64) -> Result<(), kv::Error> {
        *self.0 = match serde_json::Number::from_f64(value) {
            Some(n) => Field::Number(n.to_string()),
            None => Field::Text(value.to_string()), // NaN, inf: not JSON numbers
        };
        Ok(())
    }
    fn visit_bool(&mut self, value: bool) -> Result<(), kv::Error> {
        *self.0 = Field::Bool(value);
        Ok(())
    }
    fn visit_str(&mut self, value: &str) -> Result<(), kv::Error> {
        *self.0 = Field::Text(value.to_string());
        Ok(())
    }
    fn visit_char(&mut self, value: char) -> Result<(), kv::Error> {
        *self.0 = Field::Text(value.to_string());
        Ok(())
    }
}

struct TextFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let out = &mut *self.0;
        out.push(' ');
        // Keys are identifiers in practice; anything that would break `key=value` goes.
        out.extend(key.as_str().chars().map(|c| {
            if c.is_whitespace() || c.is_control() || c == '=' || c == '"' {
                '_'
            } else {
                c
            }
        }));
        out.push('=');
        match Field::of(&value) {
            Field::Null => out.push_str("null"),
            Field::Bool(b) => out.push_str(if b { "true" } else { "false" }),
            Field::Number(n) => out.push_str(&n),
            Field::Text(t) => {
                let quote = t.is_empty()
                    || t.chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '=' || c == '"');
                if quote {
                    out.push('"');
                    push_escaped(out, &t, true);
                    out.push('"');
                } else {
                    out.push_str(&t);
                }
            }
        }
        Ok(())
    }
}

struct JsonFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let out = &mut *self.0;
        out.push(',');
        let key = key.as_str();
        // A field must not shadow the three fixed ones.
        if matches!(key, "time" | "level" | "msg") {
            push_json_str(out, &format!("{key}_"));
        } else {
            push_json_str(out, key);
        }
        out.push(':');
        match Field::of(&value) {
            Field::Null => out.push_str("null"),
            Field::Bool(b) => out.push_str(if b { "true" } else { "false" }),
            Field::Number(n) => out.push_str(&n),
            Field::Text(t) => push_json_str(out, &t),
        }
        Ok(())
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // Serializing a &str into a String cannot fail.
    if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

/// Escapes control characters so that one record stays one line; inside a quoted value,
/// also `"` and `\`.
fn push_escaped(out: &mut String, s: &str, quoted: bool) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' if quoted => out.push_str("\\\""),
            '\\' if quoted => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_795_262_400; // 2026-11-21T12:00:00Z (checked with Python's calendar.timegm)

    fn text(record: &Record<'_>) -> String {
        String::from_utf8(format_record(record, false, T)).unwrap()
    }

    fn json(record: &Record<'_>) -> serde_json::Value {
        let bytes = format_record(record, true, T);
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(bytes.ends_with(b"\n"));
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(T), "2026-11-21T12:00:00Z");
        assert_eq!(rfc3339(1_709_164_800), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_164_800 - 1), "2024-02-28T23:59:59Z");
        assert_eq!(rfc3339(951_868_799), "2000-02-29T23:59:59Z"); // 2000 is a leap year
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z"); // 2100 is not
        assert_eq!(rfc3339(4_107_542_400 - 1), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(1 << 32), "2106-02-07T06:28:16Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        // No panic at the far end.
        assert!(rfc3339(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn civil_from_days_round_trips_every_day_for_centuries() {
        // Walk day by day from 1970 to 2400 and check the calendar never skips or repeats.
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        for day in 1..(430 * 366) {
            let cur = civil_from_days(day);
            let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match prev.1 {
                2 if leap(prev.0) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let expected = if prev.2 < len {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            assert_eq!(cur, expected, "day {day}");
            prev = cur;
        }
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn text_line_with_key_values() {
        let kvs: &[(&str, &dyn kv::ToValue)] = &[
            ("status", &200),
            ("model", &"gpt41"),
            ("path", &"/v1/chat completions"),
            ("ok", &true),
            ("ms", &1.5),
            ("empty", &""),
            ("quote", &"say \"hi\""),
            ("eq", &"a=b"),
        ];
        let r = Record::builder()
            .level(Level::Info)
            .args(format_args!("request done"))
            .key_values(&kvs)
            .build();
        assert_eq!(
            text(&r),
            "2026-11-21T12:00:00Z INFO  request done status=200 model=gpt41 \
             path=\"/v1/chat completions\" ok=true ms=1.5 empty=\"\" quote=\"say \\\"hi\\\"\" \
             eq=\"a=b\"\n"
        );
    }

    #[test]
    fn level_is_padded_to_five() {
        for (level, prefix) in [
            (Level::Error, "ERROR "),
            (Level::Warn, "WARN  "),
            (Level::Info, "INFO  "),
            (Level::Debug, "DEBUG "),
            (Level::Trace, "TRACE "),
        ] {
            let r = Record::builder()
                .level(level)
                .args(format_args!("m"))
                .build();
            assert_eq!(text(&r), format!("2026-11-21T12:00:00Z {prefix}m\n"));
        }
    }

    #[test]
    fn text_stays_on_one_line() {
        let kvs = [("v", "two\nlines\r\tand \\ a \u{7}bell")];
        let r = Record::builder()
            .level(Level::Warn)
            .args(format_args!("first\nsecond"))
            .key_values(&kvs)
            .build();
        let line = text(&r);
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(
            line,
            "2026-11-21T12:00:00Z WARN  first\\nsecond v=\"two\\nlines\\r\\tand \\\\ a \\u{7}bell\"\n"
        );
    }

    #[test]
    fn json_line_with_typed_fields() {
        let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let kvs: &[(&str, &dyn kv::ToValue)] = &[
            ("status", &200u16),
            ("delta", &-3i64),
            ("ms", &12.25f64),
            ("stream", &false),
            ("model", &"gpt41"),
            ("client", &ip),
            ("none", &Option::<u8>::None),
            ("nan", &f64::NAN),
            ("big", &u128::MAX),
            ("msg", &"shadow"),
        ];
        let r = Record::builder()
            .level(Level::Error)
            .target("sigorest::http")
            .args(format_args!("upstream said \"no\"\nat once"))
            .key_values(&kvs)
            .build();
        let v = json(&r);
        assert_eq!(v["time"], "2026-11-21T12:00:00Z");
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["msg"], "upstream said \"no\"\nat once");
        assert_eq!(v["status"], 200);
        assert_eq!(v["delta"], -3);
        assert_eq!(v["ms"], 12.25);
        assert_eq!(v["stream"], false);
        assert_eq!(v["model"], "gpt41");
        assert_eq!(v["client"], "10.1.2.3");
        assert!(v["none"].is_null());
        assert_eq!(v["nan"], "NaN");
        assert_eq!(v["big"], u128::MAX.to_string());
        assert_eq!(v["msg_"], "shadow");
        // Fixed fields come first.
        let raw = String::from_utf8(format_record(&r, true, T)).unwrap();
        assert!(raw.starts_with("{\"time\":\"2026-11-21T12:00:00Z\",\"level\":\"ERROR\",\"msg\":"));
    }

    #[test]
    fn json_without_key_values() {
        let r = Record::builder()
            .level(Level::Debug)
            .args(format_args!("plain"))
            .build();
        let v = json(&r);
        assert_eq!(v.as_object().unwrap().len(), 3);
        assert_eq!(v["level"], "DEBUG");
    }

    #[test]
    fn macro_key_values_reach_the_record() {
        // What call sites write: `info!(status = 200, model = "gpt41"; "request")`.
        struct Capture(std::sync::Mutex<Vec<String>>);
        impl Log for Capture {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn log(&self, record: &Record<'_>) {
                let line = String::from_utf8(format_record(record, false, T)).unwrap();
                self.0.lock().unwrap().push(line);
            }
            fn flush(&self) {}
        }
        let cap = Capture(std::sync::Mutex::new(Vec::new()));
        let path = std::path::Path::new("/tmp/a b");
        log::info!(logger: cap, status = 200, model = "gpt41", path:% = path.display(); "request");
        let lines = cap.0.lock().unwrap();
        assert_eq!(
            lines[0],
            "2026-11-21T12:00:00Z INFO  request status=200 model=gpt41 path=\"/tmp/a b\"\n"
        );
    }

    #[test]
    fn tls_chatter_is_filtered() {
        assert!(!target_wanted("rustls::server::hs", Level::Debug));
        assert!(!target_wanted("rustls", Level::Info));
        assert!(target_wanted("rustls::conn", Level::Warn));
        assert!(target_wanted("rustls", Level::Error));
        assert!(target_wanted("sigorest::http", Level::Debug));
    }

    #[test]
    fn init_twice_is_harmless() {
        init(LevelFilter::Info, false);
        // The second call neither panics nor replaces the first logger.
        init(LevelFilter::Debug, true);
    }
}
