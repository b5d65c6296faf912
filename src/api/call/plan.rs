//! Which models a call tries, in which order, and whether the next one may answer after one
//! failed.

use super::super::caller::Caller;
use crate::chat::request::ChatRequest;
use crate::error::Error;
use crate::gateway::Gateway;
use crate::state::catalog::Model;

/// The models to try, in order: the one asked for (or, for `auto`, the `-auto` list
/// healthiest first, open breakers left out), then the request's `fallbacks` or, without
/// them, the server's (`-fallback`). Each model once.
pub(super) fn candidates(
    gw: &Gateway,
    caller: &Caller,
    chat: &ChatRequest,
    short: &str,
) -> Result<Vec<String>, Error> {
    let routing = &gw.settings.routing;
    let mut list: Vec<String> = if chat.model.eq_ignore_ascii_case("auto") {
        if routing.auto.is_empty() {
            return Err(no_auto_list(&chat.model));
        }
        let (mut ranked, mut blocked) = gw.auto_order();
        // Only the models the caller's key may use.
        ranked.retain(|m| caller.allows(m));
        blocked.retain(|m| caller.allows(m));
        // Every breaker open: try them all the same, to answer with their errors.
        if ranked.is_empty() { blocked } else { ranked }
    } else {
        let server = match routing.fallbacks_of(&chat.model) {
            [] => routing.fallbacks_of(short),
            list => list,
        };
        // `"fallbacks": []` asks for none, the server's included.
        let next = chat.fallbacks.as_deref().unwrap_or(server);
        if next.is_empty() {
            // The usual call: one model, nothing to weed out.
            return Ok(vec![chat.model.clone()]);
        }
        std::iter::once(chat.model.clone())
            .chain(next.iter().cloned())
            .collect()
    };
    let mut kept = 0;
    for i in 0..list.len() {
        let repeated = list[..kept]
            .iter()
            .any(|m| m.eq_ignore_ascii_case(&list[i]));
        if !repeated {
            list.swap(kept, i);
            kept += 1;
        }
    }
    list.truncate(kept);
    Ok(list)
}

/// `auto` asked of a gateway without an `-auto` list: 404.
fn no_auto_list(name: &str) -> Error {
    Error::ModelNotFound {
        model: name.to_string(),
        reason: "no -auto list is configured on this gateway".into(),
    }
}

/// Whether a call could ask for the model `name` at all, checked as a call checks it
/// before any provider is asked: 404 for a model that does not exist (or `auto` without an
/// `-auto` list), 403 for one the caller's key may not use, 400 for an embedding model. A
/// model that exists but cannot answer just now (its breaker open, its provider's key
/// missing, a local model loading) passes. For the token counts, which call no model; it
/// may wait for an Ollama discovery, so it runs on a worker thread.
pub(in crate::api) fn check_model(gw: &Gateway, caller: &Caller, name: &str) -> Result<(), Error> {
    if name.eq_ignore_ascii_case("auto") {
        if gw.settings.routing.auto.is_empty() {
            return Err(no_auto_list(name));
        }
        return Ok(());
    }
    match gw.resolve(name) {
        Ok(resolved) => usable(caller, &resolved.model),
        // The local model exists; it is only not ready.
        Err(Error::ModelLoading { model, .. }) => caller.may_use_code(&model),
        Err(e) => Err(e),
    }
}

/// The caller's right to a resolved model, and a chat model it must be: 403, 400.
pub(super) fn usable(caller: &Caller, model: &Model) -> Result<(), Error> {
    caller.may_use(model)?;
    if model.embedding {
        return Err(Error::invalid_param(
            "model",
            format!(
                "'{}' is an embedding model: use POST /v1/embeddings",
                model.short
            ),
        ));
    }
    Ok(())
}

/// Whether the next model may answer instead, after the `index`-th failed with `e`: not
/// for an error of the request itself (a 4xx), and not for a model asked for that does
/// not exist (a typo must not be answered by another model).
pub(super) fn falls_back(e: &Error, index: usize) -> bool {
    match e {
        Error::CircuitOpen { .. }
        | Error::ProviderNotConfigured { .. }
        | Error::Upstream { .. }
        | Error::UpstreamTimeout { .. }
        | Error::RateLimited { .. }
        | Error::ModelLoading { .. }
        | Error::ModelBusy { .. }
        | Error::ContextTooLong { .. } => true,
        Error::ModelNotFound { .. } | Error::ModelNotAllowed { .. } => index > 0,
        _ => false,
    }
}

/// A fallback that is not offered, or not to this key: passed over.
pub(super) fn skipped(e: &Error) -> bool {
    matches!(
        e,
        Error::ModelNotFound { .. } | Error::ModelNotAllowed { .. }
    )
}
