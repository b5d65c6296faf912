//! Errors in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}` with the
//! statuses its SDKs and Claude Code expect — an open breaker or a full queue is 529
//! `overloaded_error` — and a `request-id` header. The message is the same as in the
//! OpenAI shape, the provider's own wording kept (Claude Code's recovery matches on it),
//! except that a prompt longer than the model's context starts as Anthropic's does:
//! `prompt is too long: N tokens > M maximum`. Claude Code recognises that wording (it offers
//! to compact the conversation); behind a model of another provider it would otherwise get
//! `This model's maximum context length is…` and stop with an error it cannot act on.

use serde_json::{Value, json};

use super::{REQUEST_ID, request_id};
use crate::error::Error;
use crate::http::Response;

/// The status for Anthropic clients: as for OpenAI clients, except overload.
pub fn status(e: &Error) -> u16 {
    match e {
        Error::CircuitOpen { .. } | Error::Overloaded { .. } => 529,
        other => other.status(),
    }
}

/// Anthropic's error `type` for a status.
pub fn kind(status: u16) -> &'static str {
    match status {
        400 | 405 | 422 | 431 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        s if s < 500 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The error object, as a response body or an `error` event's data.
pub fn body(e: &Error) -> Value {
    json!({"type": "error", "error": {"type": kind(status(e)), "message": message(e)}})
}

/// Anthropic's opening of a prompt too long for the context.
const TOO_LONG: &str = "prompt is too long";

/// The message: as in the OpenAI shape, with Anthropic's opening before a prompt too long
/// for the model's context (the gateway's estimate, or the provider's 4xx saying so), and
/// the counts in Anthropic's form when they are known.
fn message(e: &Error) -> String {
    let text = e.to_string();
    let counts = match e {
        Error::ContextTooLong { tokens, limit, .. } => Some((*tokens, *limit)),
        Error::UpstreamClient {
            code,
            kind,
            message,
            ..
        } if says_too_long(code.as_deref(), kind.as_deref(), message) => {
            if message.to_ascii_lowercase().starts_with(TOO_LONG) {
                return text;
            }
            match provider_counts(message) {
                Counts::Known(tokens, limit) => Some((tokens, limit)),
                Counts::Unknown => None,
                Counts::PromptFits => return text,
            }
        }
        _ => return text,
    };
    match counts {
        Some((tokens, limit)) => format!("{TOO_LONG}: {tokens} tokens > {limit} maximum. {text}"),
        None => format!("{TOO_LONG}: {text}"),
    }
}

/// Whether a provider's 4xx says the prompt is longer than the model's context: OpenAI's
/// code, llama.cpp's error type, or the wordings of the OpenAI-compatible servers (vLLM,
/// llama.cpp, Ollama, Mistral, Moonshot...).
fn says_too_long(code: Option<&str>, kind: Option<&str>, message: &str) -> bool {
    if matches!(
        code,
        Some("context_length_exceeded" | "context_window_exceeded")
    ) || kind == Some("exceed_context_size_error")
    {
        return true;
    }
    let m = message.to_ascii_lowercase();
    [
        "maximum context length",
        "context length exceeded",
        "context_length_exceeded",
        "exceeds the context",
        "exceed context",
        "context window",
        // llama.cpp's llama-server.
        "exceeds the available context size",
        "exceeds context size",
        "than the max context size",
        TOO_LONG,
        "input is too long",
        "too many tokens",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// What a provider's message says of the counts.
#[derive(Debug, PartialEq)]
enum Counts {
    /// The prompt's tokens and the model's limit.
    Known(u64, u64),
    Unknown,
    /// The messages fit with room to spare: the tokens asked for the completion do not
    /// ("… 8000 in the messages, 132000 in the completion"). Compacting would not help; the message stays
    /// as the provider wrote it.
    PromptFits,
}

/// The counts in OpenAI's wording ("This model's maximum context length is 128000 tokens.
/// However, your messages resulted in 130532 tokens", or "… you requested 140000 tokens
/// (8000 in the messages, 132000 in the completion)") or llama.cpp's ("request (5000
/// tokens) exceeds the available context size (4096 tokens)").
fn provider_counts(message: &str) -> Counts {
    let m = message.to_ascii_lowercase();
    let limit = number_after(&m, "maximum context length is ")
        .or_else(|| number_after(&m, "context size ("));
    let prompt = number_before(&m, " in the messages");
    let tokens = prompt
        .or_else(|| number_after(&m, "resulted in "))
        .or_else(|| number_after(&m, "requested "))
        .or_else(|| number_after(&m, "request ("))
        .or_else(|| number_after(&m, "input ("));
    match (tokens, limit) {
        (Some(tokens), Some(limit)) if prompt.is_some() && tokens < limit => Counts::PromptFits,
        (Some(tokens), Some(limit)) => Counts::Known(tokens, limit),
        _ => Counts::Unknown,
    }
}

/// The whole number right before the first `phrase` in `text`.
fn number_before(text: &str, phrase: &str) -> Option<u64> {
    let head = &text[..text.find(phrase)?];
    // Digits are one byte each: the count is where they start.
    let digits = head.chars().rev().take_while(char::is_ascii_digit).count();
    head[head.len() - digits..].parse().ok()
}

/// The whole number right after the first `phrase` in `text`.
fn number_after(text: &str, phrase: &str) -> Option<u64> {
    let rest = &text[text.find(phrase)? + phrase.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The whole response, with the headers of the OpenAI rendering (`Retry-After`,
/// `x-should-retry`, `Allow`), which Anthropic's SDKs honour too.
pub fn response(e: &Error) -> Response {
    let mut resp = Response::json(status(e), &body(e)).with_header(REQUEST_ID, request_id());
    resp.headers.extend(e.headers());
    resp.log.push(("error", e.code().to_string()));
    resp
}
