//! `sigoe -usage`: the gateway's usage totals as tables — today, this month, all time, one
//! line per client key and model and a total. Pure: the report comes from a gateway's
//! `GET /api/usage` or from the usage file the gateway writes.

use std::path::Path;

use super::models::aligned;
use crate::ledger::usage::{Period, Report, Usage};

/// The report in the usage file at `path`, as of `now` (Unix seconds); the error is one
/// line saying what is wrong.
pub fn from_file(path: &Path, now: u64) -> Result<Report, String> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "no usage file at {} (the gateway writes usage.json in its sessions directory: \
             run sigoe in the gateway's directory, point -sessions there, or use -server URL)",
            path.display()
        ),
        _ => format!("{}: {e}", path.display()),
    })?;
    let mut usage =
        Usage::from_bytes(&bytes, now).map_err(|m| format!("{}: {m}", path.display()))?;
    Ok(usage.report(now))
}

/// The report from the `GET /api/usage` body of the gateway at `base`.
pub fn from_gateway(body: &[u8], base: &str) -> Result<Report, String> {
    serde_json::from_slice(body)
        .map_err(|e| format!("bad usage report from the gateway at {base}: {e}"))
}

/// What `sigoe -usage` prints: the tables, or with `-j` the report's JSON.
pub fn text(r: &Report, json: bool) -> String {
    if json {
        format!("{}\n", serde_json::to_string_pretty(r).unwrap_or_default())
    } else {
        tables(r)
    }
}

/// The three periods as aligned tables, each under its title.
pub fn tables(r: &Report) -> String {
    let mut out = String::new();
    let from = |p: &Period| p.from.clone().unwrap_or_else(|| "-".to_string());
    for (i, (title, p)) in [
        (format!("Today, {} (UTC)", r.date), &r.today),
        (format!("This month, from {}", from(&r.month)), &r.month),
        (format!("All time, from {}", from(&r.all_time)), &r.all_time),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&title);
        out.push('\n');
        out.push_str(&period(p));
    }
    out
}

fn period(p: &Period) -> String {
    const HEADER: [&str; 7] = [
        "KEY",
        "MODEL",
        "REQUESTS",
        "ERRORS",
        "PROMPT",
        "COMPLETION",
        "COST $",
    ];
    const RIGHT: [bool; 7] = [false, false, true, true, true, true, true];
    if p.rows.is_empty() {
        return "  (no requests)\n".to_string();
    }
    let line = |key: &str, model: &str, t: &crate::ledger::usage::Totals| {
        [
            key.to_string(),
            model.to_string(),
            t.requests.to_string(),
            t.errors.to_string(),
            t.prompt_tokens.to_string(),
            t.completion_tokens.to_string(),
            format!("{:.6}", t.cost_usd),
        ]
    };
    let mut rows = vec![HEADER.map(str::to_string)];
    for r in &p.rows {
        rows.push(line(r.key.as_deref().unwrap_or("-"), &r.model, &r.totals()));
    }
    rows.push(line("total", "", &p.total));
    aligned(&rows, RIGHT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::usage::Totals;

    /// 2026-11-21T12:00:00Z
    const NOV21: u64 = 1_795_262_400;

    fn report() -> Report {
        let mut u = Usage::new(NOV21);
        let t = |requests, prompt, completion, cost| Totals {
            requests,
            errors: 0,
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost_usd: cost,
        };
        u.add("", "gpt41", &t(2, 120, 80, 0.00088), NOV21);
        u.add("alice", "ollama-qwen3", &t(1, 10, 5, 0.0), NOV21);
        u.report(NOV21)
    }

    #[test]
    fn tables_show_each_period_with_a_total() {
        let text = tables(&report());
        let expected_today = "\
Today, 2026-11-21 (UTC)
KEY    MODEL         REQUESTS  ERRORS  PROMPT  COMPLETION    COST $
-      gpt41                2       0     120          80  0.000880
alice  ollama-qwen3         1       0      10           5  0.000000
total                       3       0     130          85  0.000880
";
        assert!(text.starts_with(expected_today), "{text}");
        assert!(text.contains("\nThis month, from 2026-11-01\n"), "{text}");
        assert!(text.contains("\nAll time, from 2026-11-21\n"), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()));
    }

    #[test]
    fn an_empty_period_says_so() {
        let mut u = Usage::new(NOV21);
        let text = tables(&u.report(NOV21));
        assert!(
            text.contains("All time, from -\n  (no requests)\n"),
            "{text}"
        );
    }

    #[test]
    fn the_gateway_json_and_the_file_give_the_same_report() {
        let r = report();
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(from_gateway(&json, "http://gw").unwrap(), r);
        let bad = from_gateway(b"{}", "http://gw").unwrap_err();
        assert!(bad.contains("gateway at http://gw"), "{bad}");
        let printed: Report = serde_json::from_str(&text(&r, true)).unwrap();
        assert_eq!(printed, r);
        let d = crate::util::fs::testdir::TestDir::new("cli-usage");
        let missing = from_file(&d.path().join("usage.json"), NOV21).unwrap_err();
        assert!(missing.contains("no usage file at"), "{missing}");
        std::fs::write(d.path().join("usage.json"), b"{").unwrap();
        assert!(from_file(&d.path().join("usage.json"), NOV21).is_err());
    }
}
