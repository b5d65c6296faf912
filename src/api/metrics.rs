//! `GET /metrics` (Prometheus text exposition) and `GET /api/usage` (usage totals per key and
//! model), both only for `-metrics-allow`: they name client keys and what they spent.
//!
//! The counters and histograms come from the ledger; the gauges are read at scrape time from
//! the breakers and the server's live counters.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use super::caller::Caller;
use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{Request, Response};
use crate::ledger::registry::{CounterVec, Exposition, GaugeVec};
use crate::upstream::breaker::State;

/// The exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn allowed(gw: &Gateway, req: &Request) -> Result<(), Error> {
    if gw.settings.metrics_allow.allows(req.peer) {
        Ok(())
    } else {
        Err(Error::MetricsOnly { ip: req.peer })
    }
}

/// `GET /metrics`.
pub(super) fn exposition(gw: &Gateway, req: &Request, _caller: &Caller) -> Result<Response, Error> {
    allowed(gw, req)?;
    let mut e = Exposition::new();
    gw.ledger.render(&mut e);
    gauges(gw, &mut e);
    Ok(Response::full(200, CONTENT_TYPE, e.finish().into_bytes()))
}

/// `GET /api/usage`.
pub(super) fn usage(gw: &Gateway, req: &Request, _caller: &Caller) -> Result<Response, Error> {
    allowed(gw, req)?;
    let report = serde_json::to_value(gw.ledger.report()).unwrap_or_default();
    Ok(Response::json(200, &report))
}

/// The families read at scrape time.
fn gauges(gw: &Gateway, e: &mut Exposition) {
    let mut breakers = GaugeVec::new(
        "sigorest_breaker_open",
        "1 while the model's circuit breaker is open or half-open (requests refused or on trial), else 0.",
        ["model"],
    );
    let mut states: BTreeMap<String, bool> = gw
        .listed()
        .models
        .iter()
        .map(|m| (m.short.clone(), false))
        .collect();
    for (model, status) in gw.breakers.snapshot() {
        states.insert(model, status.state != State::Closed);
    }
    for (model, open) in &states {
        breakers.set([model.as_str()], f64::from(u8::from(*open)));
    }
    e.gauge(&breakers);

    let s = &gw.stats;
    let single = |e: &mut Exposition, name, help, v: usize| {
        let mut g = GaugeVec::new(name, help, []);
        g.set([], v as f64);
        e.gauge(&g);
    };
    single(
        e,
        "sigorest_queue_depth",
        "Requests waiting for a place (-workers).",
        s.queue_depth.load(Relaxed),
    );
    single(
        e,
        "sigorest_queue_capacity",
        "Requests that may wait for a place (-queue).",
        s.queue_capacity.load(Relaxed),
    );
    single(
        e,
        "sigorest_workers_busy",
        "Places held: requests being answered.",
        s.workers_busy.load(Relaxed),
    );
    single(
        e,
        "sigorest_workers_total",
        "Requests answered at once, at most (-workers).",
        s.workers_total.load(Relaxed),
    );
    single(
        e,
        "sigorest_connections_open",
        "Open client connections.",
        s.connections_open.load(Relaxed),
    );
    let mut overloaded = CounterVec::new(
        "sigorest_overloaded_total",
        "Requests refused with 503 overloaded (queue full, waited too long for a worker, or the request bodies in flight at -max-body-total).",
        [],
    );
    overloaded.add([], s.overloaded_total.load(Relaxed) as f64);
    e.counter(&overloaded);

    let mut build = GaugeVec::new(
        "sigorest_build_info",
        "Always 1; the version in its label.",
        ["version"],
    );
    build.set([crate::VERSION], 1.0);
    e.gauge(&build);
    let mut start = GaugeVec::new(
        "sigorest_start_time_seconds",
        "When the gateway started, in Unix seconds.",
        [],
    );
    start.set([], gw.started_unix as f64);
    e.gauge(&start);
}
