//! `POST /v1/embeddings`: passed through to the provider of the named model
//! (`{base}/embeddings`; Ollama's OpenAI-compatible `/v1/embeddings`), the body unchanged
//! but for the model id, with the access rules, breakers and retries of chat. No memory
//! block, no sessions: an embedding is of the input alone. sigorest's `timeout` and
//! `retries` extensions are taken, as for chat.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::chat::request::{json_object, model_name, retries, timeout};
use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{LogFields, Request, Response};
use crate::state::catalog::Provider;
use crate::upstream::breaker::Outcome;
use crate::upstream::retry::Failure;

use super::call::{Failed, MODEL_HEADER, Tried, fail};
use super::caller::Caller;
use crate::ledger::CallRecord;

/// `POST /v1/embeddings`.
pub(super) async fn create(
    gw: &Arc<Gateway>,
    req: &Request,
    caller: &Caller,
) -> Result<Response, Error> {
    Ok(super::call::recorded(
        gw,
        req,
        caller,
        crate::ledger::route::EMBEDDINGS,
        Response::error,
        async |rec, log| answer(gw, req, caller, log, rec).await,
    )
    .await)
}

async fn answer(
    gw: &Arc<Gateway>,
    req: &Request,
    caller: &Caller,
    log: &mut LogFields,
    rec: &mut CallRecord,
) -> Result<Response, Error> {
    let mut body = json_object(&req.body, "embeddings")?;
    let name = model_name(body.get("model"))?;
    check_input(body.get("input"))?;
    // sigorest's chat extensions that have no meaning here are refused, not sent on (a
    // provider would refuse the unknown field, or ignore it without a word).
    if body.contains_key("session_id") {
        return Err(Error::invalid_param(
            "session_id",
            "embeddings take no 'session_id': an embedding is of its input alone",
        ));
    }
    if body.contains_key("fallbacks") {
        return Err(Error::invalid_param(
            "fallbacks",
            "embeddings take no 'fallbacks': another model's vectors would not compare with this one's",
        ));
    }
    let timeout = timeout(body.shift_remove("timeout"), gw.settings.max_timeout)?;
    let retries = retries(body.shift_remove("retries"))?;
    let resolved = super::call::resolve(gw, &name).await?;
    let model = resolved.model;
    log.push(("model", model.short.clone()));
    rec.model = Some(model.clone());
    caller.may_use(&model)?;
    // Ollama and llama-server say themselves whether their model can embed.
    if !model.embedding && !matches!(model.provider, Provider::Ollama | Provider::Llama) {
        return Err(Error::invalid_param(
            "model",
            format!("'{}' is a chat model, not an embedding model", model.short),
        ));
    }
    if let Some(env) = model.provider.key_env()
        && resolved.target.key().is_none()
    {
        return Err(Error::ProviderNotConfigured { env });
    }
    body.insert("model".into(), Value::String(model.id.clone()));
    let sent = serde_json::to_vec(&body).map_err(|e| Error::Internal {
        message: e.to_string(),
    })?;
    let target = resolved.target.at(format!("{}/embeddings", resolved.base));
    let permit = gw.admit(&model.short)?;
    let _slot = gw.local_slot(&model, &req.hangup).await?;
    let started = Instant::now();
    let deadline = started + timeout;
    let done = gw
        .upstream
        .post(&target, &sent, deadline, retries, &req.hangup, check)
        .await;
    log.push(("attempts", done.attempts.to_string()));
    rec.attempts = done.attempts;
    rec.upstream_time = Some(started.elapsed());
    match done.result {
        Ok((answer, tokens)) => {
            permit.finish(Outcome::Success);
            gw.scores.record(&model.short, true, started.elapsed());
            if let Some(n) = tokens {
                log.push(("prompt_tokens", n.to_string()));
            }
            rec.prompt_tokens = tokens;
            Ok(Response::full(200, "application/json", answer)
                .with_header(MODEL_HEADER, model.short.clone()))
        }
        Err(f) => {
            let mut tried = Tried::default();
            let call = Failed {
                short: &model.short,
                hangup: &req.hangup,
                started,
                timeout,
            };
            let e = fail(gw, permit, f, call, &mut tried);
            rec.upstream_error = tried.error;
            Err(e)
        }
    }
}

/// `input`: a string, or a non-empty array (of strings, of token ids, of arrays of ids).
fn check_input(input: Option<&Value>) -> Result<(), Error> {
    match input {
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(items)) if !items.is_empty() => Ok(()),
        Some(Value::Array(_)) => Err(Error::invalid_param("input", "'input' must not be empty")),
        Some(_) => Err(Error::invalid_param(
            "input",
            "'input' must be a string or an array of strings or token ids",
        )),
        None => Err(Error::invalid_param("input", "'input' is required")),
    }
}

/// A 2xx must be an embeddings list (`data` an array); its prompt tokens, when reported.
fn check(answer: Vec<u8>) -> Result<(Vec<u8>, Option<u64>), Failure> {
    // Relayed as it came, but valid UTF-8 (U+FFFD where it was not), as a chat answer is.
    let answer = crate::upstream::as_utf8(answer);
    #[derive(serde::Deserialize)]
    struct List {
        #[serde(rename = "data")]
        _data: Vec<serde::de::IgnoredAny>,
        // Read as a chat answer's usage is, leniently and within the plausible bound.
        #[serde(default)]
        usage: Option<crate::chat::answer::Usage>,
    }
    match serde_json::from_slice::<List>(&answer) {
        Ok(list) => Ok((answer, list.usage.and_then(|u| u.prompt_tokens))),
        Err(e) => Err(Failure::BadAnswer(
            match crate::chat::provider_error::error_in(&String::from_utf8_lossy(&answer)) {
                Some(m) => crate::chat::provider_error::reported(&m),
                None => format!("answer is not an embeddings list: {e}"),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_tokens_are_read_as_a_chat_answers_are() {
        let tokens = |usage: &str| {
            let body = format!(r#"{{"data":[{{"embedding":[0.5]}}],"usage":{usage}}}"#);
            check(body.into_bytes()).map(|(_, n)| n).ok()
        };
        assert_eq!(
            tokens(r#"{"prompt_tokens":4,"total_tokens":4}"#),
            Some(Some(4))
        );
        assert_eq!(tokens(r#"{"prompt_tokens":"7"}"#), Some(Some(7)));
        assert_eq!(tokens(r#"{"prompt_tokens":-1}"#), Some(None));
        // No call reaches these: not booked.
        assert_eq!(
            tokens(r#"{"prompt_tokens":18446744073709551615}"#),
            Some(None)
        );
        assert_eq!(tokens(r#"{"prompt_tokens":1e30}"#), Some(None));
        assert_eq!(tokens("null"), Some(None));
        assert!(tokens("[").is_none(), "not JSON: a bad answer");
    }

    #[test]
    fn an_answer_that_is_not_utf8_is_relayed_as_valid_utf8() {
        let body = b"{\"data\":[{\"embedding\":[0.5],\"object\":\"caf\xe9\"}]}".to_vec();
        let (relayed, _) = check(body).unwrap();
        let text = String::from_utf8(relayed).expect("valid UTF-8");
        assert!(text.contains("caf\u{fffd}"), "{text}");
    }
}
