//! Errors in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}` with the
//! statuses its SDKs and Claude Code expect — an open breaker or a full queue is 529
//! `overloaded_error` — and a `request-id` header. The message is the same as in the
//! OpenAI shape, the provider's own wording kept (Claude Code's recovery matches on it).

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
    json!({"type": "error", "error": {"type": kind(status(e)), "message": e.to_string()}})
}

/// The whole response, with the headers of the OpenAI rendering (`Retry-After`,
/// `x-should-retry`, `Allow`), which Anthropic's SDKs honour too.
pub fn response(e: &Error) -> Response {
    let mut resp = Response::json(status(e), &body(e)).with_header(REQUEST_ID, request_id());
    resp.headers.extend(e.headers());
    resp.log.push(("error", e.code().to_string()));
    resp
}
