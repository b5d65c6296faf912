//! The gateway's own endpoints: `GET /api/health` (the state of everything) and
//! `GET`/`PUT /api/memory` (the memory block; replacing it only from `-admin-allow`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use super::caller::Caller;
use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{Request, Response};
use crate::state::catalog::Provider;
use crate::state::memory::Memory;
use crate::upstream::breaker::{State, Status as BreakerStatus};

/// `GET /api/health`: `degraded` while any breaker is not closed or the local llama-server
/// is not ready.
pub(super) fn health(gw: &Gateway, _req: &Request, _caller: &Caller) -> Result<Response, Error> {
    let listed = gw.listed();
    let ollama_models = gw.ollama_models();
    let closed = BreakerStatus {
        state: State::Closed,
        consecutive_failures: 0,
        retry_in_s: 0,
    };
    let mut breakers: BTreeMap<String, BreakerStatus> = listed
        .models
        .iter()
        .map(|m| (m.short.clone(), closed.clone()))
        .chain(
            gw.llama()
                .map(|l| (l.model().short.clone(), closed.clone())),
        )
        .collect();
    breakers.extend(gw.breakers.snapshot());
    let blocked = |short: &str| {
        breakers
            .get(short)
            .is_some_and(|b| b.state != State::Closed)
    };
    let llama_ready = gw
        .llama()
        .map(|l| l.is_ready() && !blocked(&l.model().short));
    let available = listed
        .models
        .iter()
        .filter(|m| m.provider.key(&gw.env).is_some() && !blocked(&m.short))
        .count()
        + ollama_models.iter().filter(|m| !blocked(&m.short)).count()
        + usize::from(llama_ready == Some(true));
    let degraded =
        breakers.values().any(|b| b.state != State::Closed) || llama_ready == Some(false);
    let providers: serde_json::Map<String, Value> = Provider::CLOUD
        .iter()
        .map(|p| {
            (
                p.name().to_string(),
                json!({"key_set": p.key(&gw.env).is_some(), "key_env": p.key_env()}),
            )
        })
        .collect();
    let stats = &gw.stats;
    let body = json!({
        "status": if degraded { "degraded" } else { "ok" },
        "version": crate::VERSION,
        "uptime_s": gw.started.elapsed().as_secs(),
        "available_models": available,
        "memory_set": !gw.memory().content.is_empty(),
        "workers": {"total": stats.workers_total.load(Relaxed), "started": stats.workers_started.load(Relaxed), "busy": stats.workers_busy.load(Relaxed), "event_loops": stats.loops.load(Relaxed)},
        "queue": {"depth": stats.queue_depth.load(Relaxed), "capacity": stats.queue_capacity.load(Relaxed)},
        "connections": stats.connections_open.load(Relaxed),
        "circuit_breakers": breakers,
        "providers": providers,
        "ollama": gw.ollama.status(),
        "llama": gw.llama().map(|l| l.status()),
    });
    let mut body = body;
    if !gw.settings.routing.auto.is_empty() {
        body["auto"] = auto_status(gw);
    }
    Ok(Response::json(200, &body))
}

/// The `-auto` models as `auto` would try them (open breakers last, marked), with their
/// recent records.
fn auto_status(gw: &Gateway) -> Value {
    let (ranked, blocked) = gw.auto_order();
    let entry = |m: &String, open: bool| {
        let s = gw.scores.snapshot(m);
        json!({"model": m, "open": open,
            "success_rate": s.map(|s| s.success_rate), "latency_ms": s.and_then(|s| s.latency_ms)})
    };
    let mut order: Vec<Value> = ranked.iter().map(|m| entry(m, false)).collect();
    order.extend(blocked.iter().map(|m| entry(m, true)));
    json!({"order": order})
}

/// `GET /api/memory` answers the block; `PUT` (from `-admin-allow` only) replaces it,
/// persists it, and answers what is now on disk.
pub(super) fn memory(gw: &Gateway, req: &Request, caller: &Caller) -> Result<Response, Error> {
    let memory = if req.method == "PUT" {
        if !gw.settings.admin_allow.allows(req.peer) {
            return Err(Error::AdminOnly { ip: req.peer });
        }
        let memory = Memory::parse(&req.body, Path::new("request body")).map_err(|e| match e {
            Error::File { line, column, message, .. } => Error::invalid(format!(
                "memory must be {{\"content\": \"...\", \"cache\": true}}: {message} at line {line}, column {column}"
            )),
            other => other,
        })?;
        let memory = gw.replace_memory(memory)?;
        log::info!(chars = memory.content.chars().count(), ip = req.peer.to_string(), key = caller.key_name().unwrap_or("-"); "memory replaced");
        memory
    } else {
        gw.memory()
    };
    Ok(Response::json(
        200,
        &serde_json::to_value(&*memory).unwrap_or_default(),
    ))
}
