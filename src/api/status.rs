//! `GET /` and `GET /status`: a small status page for a browser on the LAN — the models with
//! their breaker state and today's requests and tokens, upstream errors per provider,
//! workers and queue. Server-rendered HTML with no external assets (no script, no font, no
//! stylesheet to fetch), refreshed by the browser every few seconds.
//!
//! Anyone allowed on the port may read it, as `/api/health`: it shows no key names and no
//! secrets. Everything that comes from a file or the network (model names above all: an
//! Ollama model's name is whatever Ollama reports) is HTML-escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use super::caller::Caller;
use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{Request, Response};
use crate::ledger::usage::Totals;
use crate::upstream::breaker::State;

/// Seconds between refreshes.
const REFRESH_S: u32 = 5;

/// One model's line.
#[derive(Debug, Clone, PartialEq)]
struct ModelLine {
    short: String,
    provider: &'static str,
    /// Its provider key is set (Ollama needs none).
    ready: bool,
    breaker: State,
    retry_in_s: u64,
    today: Totals,
}

/// What the page shows.
#[derive(Debug, Clone, PartialEq)]
struct View {
    version: &'static str,
    uptime_s: u64,
    date: String,
    models: Vec<ModelLine>,
    /// (provider, kind, count) since the start.
    errors: Vec<(String, String, u64)>,
    workers: (usize, usize),
    queue: (usize, usize),
    connections: usize,
}

/// `GET /`, `GET /status`.
pub(super) fn page(gw: &Gateway, _req: &Request, _caller: &Caller) -> Result<Response, Error> {
    let html = render(&view(gw));
    Ok(
        Response::full(200, "text/html; charset=utf-8", html.into_bytes())
            .with_header("Cache-Control", "no-store"),
    )
}

fn view(gw: &Gateway) -> View {
    let mut today = gw.ledger.today_by_model();
    let breakers: BTreeMap<String, _> = gw.breakers.snapshot().into_iter().collect();
    let mut offered: Vec<(String, &'static str, bool)> = gw
        .listed()
        .models
        .iter()
        .map(|m| {
            let ready = m.provider.key(&gw.env).is_some();
            (m.short.clone(), m.provider.name(), ready)
        })
        .collect();
    offered.extend(
        gw.ollama_models()
            .into_iter()
            .map(|m| (m.short, "ollama", true)),
    );
    offered.extend(
        gw.llama()
            .map(|l| (l.model().short.clone(), l.model().provider.name(), true)),
    );
    // Then the models used today that are no longer on offer.
    let mut lines: Vec<(String, &'static str, bool, Totals)> = offered
        .into_iter()
        .map(|(short, provider, ready)| {
            let t = today.remove(&short).unwrap_or_default();
            (short, provider, ready, t)
        })
        .collect();
    lines.extend(today.into_iter().map(|(short, t)| (short, "", false, t)));
    let models = lines
        .into_iter()
        .map(|(short, provider, ready, today)| {
            let b = breakers.get(&short);
            ModelLine {
                breaker: b.map_or(State::Closed, |b| b.state),
                retry_in_s: b.map_or(0, |b| b.retry_in_s),
                short,
                provider,
                ready,
                today,
            }
        })
        .collect();
    let s = &gw.stats;
    View {
        version: crate::VERSION,
        uptime_s: gw.started.elapsed().as_secs(),
        date: gw.ledger.report().date,
        models,
        errors: gw.ledger.upstream_errors(),
        workers: (s.workers_busy.load(Relaxed), s.workers_total.load(Relaxed)),
        queue: (s.queue_depth.load(Relaxed), s.queue_capacity.load(Relaxed)),
        connections: s.connections_open.load(Relaxed),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{padding:.25em .75em;border-bottom:1px solid #ddd;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.open{color:#b00;font-weight:bold}.half_open{color:#b60}.closed{color:#070}\
.dim{color:#888}";

fn render(v: &View) -> String {
    let degraded = v.models.iter().any(|m| m.breaker != State::Closed);
    let mut h = String::with_capacity(4096);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>sigorest</title><style>{STYLE}</style></head><body>\n\
         <h1>sigorest <span class=\"dim\">{}</span></h1>\n\
         <p>Status <b class=\"{}\">{}</b> · up {} · workers {} busy of {} · queue {} of {} · \
         {} connections</p>\n",
        escape(v.version),
        if degraded { "open" } else { "closed" },
        if degraded { "degraded" } else { "ok" },
        uptime(v.uptime_s),
        v.workers.0,
        v.workers.1,
        v.queue.0,
        v.queue.1,
        v.connections,
    );
    let _ = write!(
        h,
        "<h2>Models</h2>\n<table><tr><th>model</th><th>provider</th><th>breaker</th>\
         <th>requests today</th><th>errors today</th><th>prompt tokens</th>\
         <th>completion tokens</th><th>cost today</th></tr>\n"
    );
    for m in &v.models {
        let state = match m.breaker {
            State::Closed => "closed".to_string(),
            State::Open => format!("open, retry in {} s", m.retry_in_s),
            State::HalfOpen => "half-open".to_string(),
        };
        let class = match m.breaker {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        };
        let provider = match (m.provider, m.ready) {
            ("", _) => "<span class=\"dim\">no longer listed</span>".to_string(),
            (p, true) => escape(p),
            (p, false) => format!("{} <span class=\"dim\">(no key)</span>", escape(p)),
        };
        let t = &m.today;
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{provider}</td><td class=\"{class}\">{state}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">${:.4}</td></tr>",
            escape(&m.short),
            t.requests,
            t.errors,
            t.prompt_tokens,
            t.completion_tokens,
            t.cost_usd,
        );
    }
    h.push_str("</table>\n<h2>Upstream errors since the start</h2>\n");
    if v.errors.is_empty() {
        h.push_str("<p class=\"dim\">None.</p>\n");
    } else {
        h.push_str("<table><tr><th>provider</th><th>kind</th><th>requests</th></tr>\n");
        for (provider, kind, n) in &v.errors {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{n}</td></tr>",
                escape(provider),
                escape(kind)
            );
        }
        h.push_str("</table>\n");
    }
    let _ = write!(
        h,
        "<p class=\"dim\">Today is {} (UTC). This page refreshes every {REFRESH_S} s. \
         JSON: <a href=\"/api/health\">/api/health</a>.</p>\n</body></html>\n",
        escape(&v.date)
    );
    h
}

/// `3 d 4 h`, `2 h 5 min`, `7 min`, `12 s`.
fn uptime(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Text made safe for HTML content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        View {
            version: "0.1.0",
            uptime_s: 3725,
            date: "2026-11-21".into(),
            models: vec![
                ModelLine {
                    short: "gpt41".into(),
                    provider: "mammouth",
                    ready: true,
                    breaker: State::Closed,
                    retry_in_s: 0,
                    today: Totals {
                        requests: 12,
                        errors: 1,
                        prompt_tokens: 3400,
                        completion_tokens: 560,
                        cost_usd: 0.0123,
                    },
                },
                ModelLine {
                    short: "ollama-<img src=x onerror=alert(1)>&\"'".into(),
                    provider: "ollama",
                    ready: true,
                    breaker: State::Open,
                    retry_in_s: 42,
                    today: Totals::default(),
                },
            ],
            errors: vec![("moonshot".into(), "server_error".into(), 3)],
            workers: (2, 100),
            queue: (0, 1024),
            connections: 5,
        }
    }

    #[test]
    fn the_page_shows_models_breakers_usage_errors_and_load() {
        let html = render(&view());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(html.contains("<b class=\"open\">degraded</b>"), "{html}");
        assert!(html.contains("up 1 h 2 min"));
        assert!(html.contains("workers 2 busy of 100 · queue 0 of 1024"));
        assert!(html.contains("<td>gpt41</td><td>mammouth</td><td class=\"closed\">closed</td>"));
        assert!(
            html.contains("<td class=\"n\">12</td><td class=\"n\">1</td><td class=\"n\">3400</td>")
        );
        assert!(html.contains("$0.0123"));
        assert!(html.contains("open, retry in 42 s"));
        assert!(html.contains("<td>moonshot</td><td>server_error</td><td class=\"n\">3</td>"));
    }

    #[test]
    fn names_from_the_network_are_escaped() {
        let html = render(&view());
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("ollama-&lt;img src=x onerror=alert(1)&gt;&amp;&quot;&#39;"));
    }

    #[test]
    fn no_external_assets() {
        let html = render(&view());
        for needle in [
            "<script", "<link", "src=\"", "http://", "https://", "@import", "url(",
        ] {
            assert!(!html.contains(needle), "{needle}");
        }
    }

    #[test]
    fn uptime_reads_naturally() {
        assert_eq!(uptime(12), "12 s");
        assert_eq!(uptime(420), "7 min");
        assert_eq!(uptime(7500), "2 h 5 min");
        assert_eq!(uptime(3 * 86_400 + 4 * 3600), "3 d 4 h");
    }
}
