//! `GET /v1/models` (the OpenAI list) and `GET /api/models` (everything sigorest knows of
//! each listed model): the whitelisted cloud models, the discovered Ollama models, then the
//! supervised llama-server's model (listed while it loads too) — only those the caller's
//! key may use.

use serde_json::{Value, json};

use super::caller::Caller;
use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{Request, Response};
use crate::state::catalog::Model;

/// `GET /v1/models`: `{"object": "list", "data": [{"id", "object", "created", "owned_by"}]}`.
/// Asked by an Anthropic client (an `anthropic-version` header: Claude Code's model
/// discovery, `client.models.list()`), the entries and the list also carry Anthropic's
/// fields (`type`, `display_name`, `created_at`; `has_more`, `first_id`, `last_id`).
pub(super) fn openai(gw: &Gateway, req: &Request, caller: &Caller) -> Result<Response, Error> {
    let anthropic = req.header("anthropic-version").is_some();
    let data = entries(gw, anthropic, caller);
    let mut list = json!({"object": "list", "data": data});
    if anthropic {
        list["has_more"] = json!(false);
        list["first_id"] = list["data"][0]["id"].clone();
        list["last_id"] = list["data"]
            .as_array()
            .and_then(|d| d.last())
            .map_or(Value::Null, |e| e["id"].clone());
    }
    Ok(Response::json(200, &list))
}

/// `GET /v1/models/{id}`: one entry of the list (the SDKs' `models.retrieve`), found by
/// short code, upstream id or Ollama name in any case; 404 for a model this caller cannot
/// see.
pub(super) fn one(gw: &Gateway, req: &Request, caller: &Caller) -> Result<Response, Error> {
    let anthropic = req.header("anthropic-version").is_some();
    let asked = req
        .path
        .rsplit_once("/models/")
        .and_then(|(_, id)| super::percent_decode(id))
        .unwrap_or_default();
    let short = gw.short_code(&asked);
    entries(gw, anthropic, caller)
        .into_iter()
        .find(|e| {
            e["id"]
                .as_str()
                .is_some_and(|id| id.eq_ignore_ascii_case(&short))
        })
        .map(|e| Response::json(200, &e))
        .ok_or_else(|| Error::ModelNotFound {
            model: asked
                .chars()
                .take(crate::chat::request::MAX_MODEL_NAME)
                .collect(),
            reason: "not in this gateway's model list".to_string(),
        })
}

/// The list's entries this caller may see: the listed models, Ollama's, the local
/// llama-server's.
fn entries(gw: &Gateway, anthropic: bool, caller: &Caller) -> Vec<Value> {
    let created_at = crate::logging::rfc3339(gw.started_unix);
    let entry = |short: &str, owner: &str| {
        let mut e =
            json!({"id": short, "object": "model", "created": gw.started_unix, "owned_by": owner});
        if anthropic {
            e["type"] = json!("model");
            e["display_name"] = json!(short);
            e["created_at"] = json!(created_at);
        }
        e
    };
    let mut data: Vec<Value> = gw
        .listed()
        .models
        .iter()
        .filter(|m| caller.allows(&m.short))
        .map(|m| entry(&m.short, m.provider.name()))
        .collect();
    data.extend(
        gw.ollama_models()
            .iter()
            .filter(|m| caller.allows(&m.short))
            .map(|m| entry(&m.short, "ollama")),
    );
    if let Some(l) = gw.llama().filter(|l| caller.allows(&l.model().short)) {
        data.push(entry(&l.model().short, l.model().provider.name()));
    }
    data
}

/// `GET /api/models`: short code, upstream id, provider, limits, prices, temperature range,
/// and whether the provider's key is set.
pub(super) fn detailed(gw: &Gateway, _req: &Request, caller: &Caller) -> Result<Response, Error> {
    let info = |m: &Model, key_set: bool| {
        json!({
            "short": m.short, "id": m.id, "provider": m.provider.name(),
            "context_tokens": m.context, "max_output_tokens": m.max_output,
            "input_price_per_million": m.input_price, "output_price_per_million": m.output_price,
            "temperature": {"min": m.min_temp, "max": m.max_temp},
            "uses_max_completion_tokens": m.completion_tokens,
            "embedding": m.embedding,
            "key_env": m.provider.key_env(), "key_set": key_set,
        })
    };
    let mut data: Vec<Value> = gw
        .listed()
        .models
        .iter()
        .filter(|m| caller.allows(&m.short))
        .map(|m| info(m, m.provider.key(&gw.env).is_some()))
        .collect();
    data.extend(
        gw.ollama_models()
            .iter()
            .filter(|m| caller.allows(&m.short))
            .map(|m| info(&m.to_model(), true)),
    );
    if let Some(l) = gw.llama().filter(|l| caller.allows(&l.model().short)) {
        let mut entry = info(l.model(), true);
        entry["ready"] = Value::Bool(l.is_ready());
        data.push(entry);
    }
    Ok(Response::json(
        200,
        &json!({"object": "list", "data": data}),
    ))
}
