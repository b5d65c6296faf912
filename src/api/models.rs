//! `GET /v1/models` (the OpenAI list) and `GET /api/models` (everything sigorest knows of
//! each listed model): the whitelisted cloud models, then the discovered Ollama models —
//! only those the caller's key may use.

use serde_json::{Value, json};

use super::caller::Caller;
use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{Request, Response};
use crate::state::catalog::Model;

/// `GET /v1/models`: `{"object": "list", "data": [{"id", "object", "created", "owned_by"}]}`.
pub(super) fn openai(gw: &Gateway, _req: &Request, caller: &Caller) -> Result<Response, Error> {
    let entry = |short: &str, owner: &str| json!({"id": short, "object": "model", "created": gw.started_unix, "owned_by": owner});
    let mut data: Vec<Value> = gw
        .listed()
        .models
        .iter()
        .filter(|m| caller.allows(&m.short))
        .map(|m| entry(&m.short, m.provider.name()))
        .collect();
    data.extend(
        gw.ollama
            .models()
            .iter()
            .filter(|m| caller.allows(&m.short))
            .map(|m| entry(&m.short, "ollama")),
    );
    Ok(Response::json(
        200,
        &json!({"object": "list", "data": data}),
    ))
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
        gw.ollama
            .models()
            .iter()
            .filter(|m| caller.allows(&m.short))
            .map(|m| info(&m.to_model(), true)),
    );
    Ok(Response::json(
        200,
        &json!({"object": "list", "data": data}),
    ))
}
