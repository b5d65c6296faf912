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
    let mut data = entries(gw, anthropic, caller);
    if !anthropic {
        return Ok(Response::json(
            200,
            &json!({"object": "list", "data": data}),
        ));
    }
    let page = Page::read(req.query.as_deref())?;
    let has_more = page.cut(&mut data)?;
    let id = |e: Option<&Value>| e.map_or(Value::Null, |e| e["id"].clone());
    let (first_id, last_id) = (id(data.first()), id(data.last()));
    Ok(Response::json(
        200,
        &json!({"object": "list", "data": data, "has_more": has_more,
                "first_id": first_id, "last_id": last_id}),
    ))
}

/// Anthropic's paging of the model list: `limit` (1–1000), `after_id`, `before_id`. Without
/// `limit` the whole list is one page (Anthropic's default is 20, but a gateway's list is
/// short, and a client that does not page — a script, a picker — would miss models).
#[derive(Debug, Default, PartialEq)]
struct Page {
    limit: Option<usize>,
    after_id: Option<String>,
    before_id: Option<String>,
}

impl Page {
    /// Reads the query string; unknown parameters are ignored, as the API does.
    fn read(query: Option<&str>) -> Result<Page, Error> {
        let mut page = Page::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = super::percent_decode(&value.replace('+', " ")).ok_or_else(|| {
                Error::invalid_param(name, format!("{name}: bad percent-encoding"))
            })?;
            match name {
                "limit" => {
                    let n = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| {
                            Error::invalid_param("limit", "limit: a whole number from 1 to 1000")
                        })?;
                    page.limit = Some(n);
                }
                "after_id" => page.after_id = Some(value),
                "before_id" => page.before_id = Some(value),
                _ => {}
            }
        }
        if page.after_id.is_some() && page.before_id.is_some() {
            return Err(Error::invalid(
                "after_id and before_id cannot be given together",
            ));
        }
        Ok(page)
    }

    /// Cuts `data` down to this page; whether more entries lie beyond it (after it with
    /// `after_id` or none, before it with `before_id`). An id not in the list is a 400: the
    /// model went away between two pages (an Ollama model removed), and silently ending
    /// the list there would hide the rest.
    fn cut(&self, data: &mut Vec<Value>) -> Result<bool, Error> {
        let at = |param: &str, id: &str, data: &[Value]| {
            data.iter()
                .position(|e| e["id"].as_str() == Some(id))
                .ok_or_else(|| {
                    // (Echoed as far as a model name goes: the cursor is the client's text.)
                    let id: String = id
                        .chars()
                        .take(crate::chat::request::MAX_MODEL_NAME)
                        .collect();
                    Error::invalid_param(param, format!("{param}: no model {id:?} in this list"))
                })
        };
        if let Some(id) = &self.before_id {
            let end = at("before_id", id, data)?;
            data.truncate(end);
            let start = self.limit.map_or(0, |n| end.saturating_sub(n));
            data.drain(..start);
            return Ok(start > 0);
        }
        if let Some(id) = &self.after_id {
            let start = at("after_id", id, data)? + 1;
            data.drain(..start);
        }
        let more = self.limit.is_some_and(|n| data.len() > n);
        if let Some(n) = self.limit {
            data.truncate(n);
        }
        Ok(more)
    }
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
    let entry = |m: &Model| {
        let owner = m.provider.name();
        let mut e = json!({"id": m.short, "object": "model", "created": gw.started_unix, "owned_by": owner});
        if anthropic {
            e["type"] = json!("model");
            e["display_name"] = json!(m.short);
            e["created_at"] = json!(created_at);
            // Claude Code and the SDKs read the limits from here; unknown ones are left out.
            let known = |n: u64| (n > 0).then_some(n);
            e["max_input_tokens"] = json!(known(m.context));
            e["max_tokens"] = json!(known(m.max_output));
        }
        e
    };
    let mut data: Vec<Value> = gw
        .listed()
        .models
        .iter()
        .filter(|m| caller.allows(&m.short))
        .map(|m| entry(m))
        .collect();
    data.extend(
        gw.ollama_models()
            .iter()
            .filter(|m| caller.allows(&m.short))
            .map(|m| entry(&m.to_model())),
    );
    if let Some(l) = gw.llama().filter(|l| caller.allows(&l.model().short)) {
        data.push(entry(l.model()));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The page of a list of five (`a`..`e`) for this query: its ids joined, and `has_more`.
    fn page(query: &str) -> Result<(String, bool), Error> {
        let mut data: Vec<Value> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|id| json!({"id": id}))
            .collect();
        let more = Page::read(Some(query))?.cut(&mut data)?;
        let ids: Vec<&str> = data.iter().filter_map(|e| e["id"].as_str()).collect();
        Ok((ids.concat(), more))
    }

    #[test]
    fn pages_forward_and_back() {
        for (query, ids, more) in [
            ("", "abcde", false),
            ("limit=2", "ab", true),
            ("limit=2&after_id=b", "cd", true),
            ("limit=2&after_id=c", "de", false),
            ("after_id=e", "", false),
            ("limit=2&before_id=e", "cd", true),
            ("limit=5&before_id=c", "ab", false),
            ("limit=1000&beta=true", "abcde", false),
        ] {
            assert_eq!(page(query).unwrap(), (ids.to_string(), more), "{query}");
        }
    }

    #[test]
    fn bad_paging_is_a_400_that_names_the_parameter() {
        for q in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "limit=-1",
            "after_id=zz",
            "before_id=zz",
            "after_id=a&before_id=b",
            "after_id=%zz",
        ] {
            let e = page(q).expect_err(q);
            assert_eq!(e.status(), 400, "{q}");
        }
        let e = page("after_id=zz").unwrap_err();
        assert!(e.to_string().contains("after_id"), "{e}");
        let long = page(&format!("after_id={}", "a".repeat(20_000))).unwrap_err();
        assert!(
            long.to_string().len() < 400,
            "the cursor is not echoed whole"
        );
    }
}
