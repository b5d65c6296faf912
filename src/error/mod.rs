//! The one error type of the gateway and how each error looks on the wire.
//!
//! Every error a client can see is a variant here; its HTTP status, OpenAI error `type` and
//! `code`, and extra headers (`Retry-After`, `x-should-retry`, `Allow`) come from one
//! exhaustive `match` each, so the table in `design.md` ("Errors") lives in one place.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::json;

/// `Retry-After` of [`Error::ShuttingDown`]: a restart (systemd's) takes a few seconds.
const SHUTDOWN_RETRY_S: u64 = 5;

/// Everything that can go wrong for a client.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Body not JSON, not UTF-8, a missing or ill-typed field, a bad `session_id`, bad framing.
    InvalidRequest {
        message: String,
        /// The offending field, when there is one (OpenAI's `param`).
        param: Option<String>,
    },
    /// The model is neither listed nor discovered.
    ModelNotFound { model: String, reason: String },
    /// No route for this path.
    NotFound { path: String },
    /// The path exists, the method does not.
    MethodNotAllowed { method: String, allow: &'static str },
    /// The body is larger than the limit.
    BodyTooLarge { limit: usize },
    /// A memory block (`PUT /api/memory`) whose content is larger than the limit, in bytes
    /// of UTF-8: it would go with every request.
    MemoryTooLarge { bytes: usize, limit: usize },
    /// The request head is larger than the limit.
    HeadTooLarge { limit: usize },
    /// The request head has more header lines than the limit.
    TooManyHeaders { limit: usize },
    /// The client's address is not in the listener's allow list.
    IpNotAllowed { ip: IpAddr },
    /// A state-changing call from an address outside `-admin-allow`.
    AdminOnly { ip: IpAddr },
    /// Keys are in use (`keys.csv`) and the request has none, or one that is not there.
    InvalidApiKey { missing: bool },
    /// The client's key may not use this model.
    ModelNotAllowed { model: String, key: String },
    /// A client limit: a key's requests a minute or in flight, or the per-IP rate.
    LimitExceeded { limit: Limit, retry_after_s: u64 },
    /// `/metrics` or `/api/usage` from an address outside `-metrics-allow`.
    MetricsOnly { ip: IpAddr },
    /// The provider's API key variable is not set.
    ProviderNotConfigured { env: &'static str },
    /// The request is estimated to be longer than the model's context window (checked
    /// when another model could answer instead).
    ContextTooLong {
        model: String,
        tokens: u64,
        limit: u64,
    },
    /// The model's circuit breaker is open.
    CircuitOpen { model: String, retry_after_s: u64 },
    /// The queue is full, the request waited too long for a worker, or the request bodies
    /// in flight fill the body budget.
    Overloaded { retry_after_s: u64 },
    /// sigorest is stopping and the request's shutdown grace ran out before it finished.
    ShuttingDown,
    /// The supervised local model is not ready yet (loading, or restarting); `state` says
    /// what it is doing.
    ModelLoading {
        model: String,
        state: String,
        retry_after_s: u64,
    },
    /// Every slot of the local model is taken and its queue is full, or the request waited
    /// too long for a slot; `reason` says which.
    ModelBusy {
        model: String,
        reason: String,
        retry_after_s: u64,
    },
    /// The client went away while the request waited; nobody reads this answer.
    ClientGone,
    /// The upstream answered 4xx (not 429): its status and message are passed on.
    UpstreamClient {
        status: u16,
        message: String,
        kind: Option<String>,
        code: Option<String>,
        param: Option<String>,
    },
    /// The upstream still answered 429 after the retries.
    RateLimited { message: String, retry_after_s: u64 },
    /// The upstream failed (5xx, connect error, garbage) after the retries.
    Upstream { message: String },
    /// The upstream did not answer in time.
    UpstreamTimeout { message: String },
    /// A bug of ours (a handler panicked).
    Internal { message: String },
    /// A file could not be read, written or parsed. `line` and `column` are 1-based, 0 when
    /// they do not apply (an I/O error).
    File {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A bad command-line flag or value (exit status 2).
    Usage { message: String },
    /// A listening socket could not be opened.
    Listen {
        addr: std::net::SocketAddr,
        message: String,
    },
}

/// Which client limit a request ran into.
#[derive(Debug, Clone, PartialEq)]
pub enum Limit {
    /// The key's `rpm` in `keys.csv`.
    KeyRequests { key: String, per_minute: u32 },
    /// The key's `concurrency` in `keys.csv`.
    KeyConcurrency { key: String, max: u32 },
    /// `-ip-rate` / `-ip-burst`.
    IpRequests { ip: IpAddr, per_minute: u32 },
}

impl Error {
    /// An I/O error on a file.
    pub fn io(path: &std::path::Path, err: &std::io::Error) -> Error {
        Error::File {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
            message: err.to_string(),
        }
    }

    /// Shorthand for [`Error::InvalidRequest`] without a `param`.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    /// Shorthand for [`Error::InvalidRequest`] about one field.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Error {
        Error::InvalidRequest {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidRequest { .. } | Error::ContextTooLong { .. } => 400,
            Error::InvalidApiKey { .. } => 401,
            Error::ModelNotFound { .. } | Error::NotFound { .. } => 404,
            Error::MethodNotAllowed { .. } => 405,
            Error::BodyTooLarge { .. } | Error::MemoryTooLarge { .. } => 413,
            Error::HeadTooLarge { .. } | Error::TooManyHeaders { .. } => 431,
            Error::IpNotAllowed { .. }
            | Error::AdminOnly { .. }
            | Error::MetricsOnly { .. }
            | Error::ModelNotAllowed { .. } => 403,
            Error::ProviderNotConfigured { .. }
            | Error::CircuitOpen { .. }
            | Error::Overloaded { .. }
            | Error::ShuttingDown
            | Error::ModelLoading { .. } => 503,
            Error::UpstreamClient { status, .. } => *status,
            Error::RateLimited { .. } | Error::ModelBusy { .. } | Error::LimitExceeded { .. } => {
                429
            }
            // nginx's "client closed request": only ever seen in the access log.
            Error::ClientGone => 499,
            Error::Upstream { .. } => 502,
            Error::UpstreamTimeout { .. } => 504,
            // nginx's "client closed request".
            Error::Internal { .. }
            | Error::File { .. }
            | Error::Usage { .. }
            | Error::Listen { .. } => 500,
        }
    }

    /// OpenAI's error `code`.
    pub fn code(&self) -> &str {
        match self {
            Error::InvalidRequest { .. } => "invalid_request",
            Error::ContextTooLong { .. } => "context_length_exceeded",
            Error::ModelNotFound { .. } => "model_not_found",
            Error::NotFound { .. } => "not_found",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::MemoryTooLarge { .. } => "memory_too_large",
            Error::HeadTooLarge { .. } | Error::TooManyHeaders { .. } => "header_too_large",
            Error::IpNotAllowed { .. } => "ip_not_allowed",
            Error::AdminOnly { .. } => "admin_only",
            Error::InvalidApiKey { .. } => "invalid_api_key",
            Error::ModelNotAllowed { .. } => "model_not_allowed",
            Error::LimitExceeded { .. } => "rate_limit_exceeded",
            Error::MetricsOnly { .. } => "metrics_not_allowed",
            Error::ProviderNotConfigured { .. } => "provider_not_configured",
            Error::CircuitOpen { .. } => "circuit_open",
            Error::Overloaded { .. } => "overloaded",
            Error::ShuttingDown => "shutting_down",
            Error::ModelLoading { .. } => "model_loading",
            Error::ModelBusy { .. } => "model_busy",
            Error::ClientGone => "client_gone",
            Error::UpstreamClient { code, .. } => {
                code.as_deref().unwrap_or("upstream_client_error")
            }
            Error::RateLimited { .. } => "rate_limited",
            Error::Upstream { .. } => "upstream_error",
            Error::UpstreamTimeout { .. } => "upstream_timeout",
            Error::Internal { .. } => "internal_error",
            Error::File { .. } => "storage_error",
            Error::Usage { .. } => "usage",
            Error::Listen { .. } => "listen_failed",
        }
    }

    /// OpenAI's error `type`.
    pub fn kind(&self) -> &str {
        match self {
            Error::InvalidRequest { .. }
            | Error::ContextTooLong { .. }
            | Error::ModelNotFound { .. }
            | Error::NotFound { .. }
            | Error::MethodNotAllowed { .. }
            | Error::BodyTooLarge { .. }
            | Error::MemoryTooLarge { .. }
            | Error::HeadTooLarge { .. }
            | Error::TooManyHeaders { .. }
            | Error::ClientGone
            | Error::InvalidApiKey { .. } => "invalid_request_error",
            Error::IpNotAllowed { .. }
            | Error::AdminOnly { .. }
            | Error::MetricsOnly { .. }
            | Error::ModelNotAllowed { .. } => "permission_error",
            Error::UpstreamClient { kind, .. } => {
                kind.as_deref().unwrap_or("invalid_request_error")
            }
            Error::RateLimited { .. } | Error::ModelBusy { .. } | Error::LimitExceeded { .. } => {
                "rate_limit_error"
            }
            Error::ProviderNotConfigured { .. }
            | Error::ModelLoading { .. }
            | Error::CircuitOpen { .. }
            | Error::Overloaded { .. }
            | Error::ShuttingDown
            | Error::Upstream { .. }
            | Error::UpstreamTimeout { .. }
            | Error::Internal { .. }
            | Error::File { .. }
            | Error::Usage { .. }
            | Error::Listen { .. } => "server_error",
        }
    }

    /// OpenAI's error `param`.
    pub fn param(&self) -> Option<&str> {
        match self {
            Error::InvalidRequest { param, .. } | Error::UpstreamClient { param, .. } => {
                param.as_deref()
            }
            Error::MemoryTooLarge { .. } => Some("content"),
            _ => None,
        }
    }

    /// Headers that go with the error: `Retry-After`, `x-should-retry: false` where the
    /// gateway has already retried (so the SDKs do not retry again) or where a retry within
    /// the SDKs' patience cannot help, `Allow` on a 405.
    pub fn headers(&self) -> Vec<(String, String)> {
        let h = |n: &str, v: String| (n.to_string(), v);
        match self {
            Error::MethodNotAllowed { allow, .. } => vec![h("Allow", allow.to_string())],
            // An open breaker stays open for minutes: `Retry-After` says when, for a
            // client that schedules its own retry, and `x-should-retry: false` keeps the
            // SDKs from sleeping that long inside one call (the anthropic SDK honours any
            // `Retry-After`, and would block a plain `create()` for five minutes).
            Error::CircuitOpen { retry_after_s, .. } => vec![
                h("Retry-After", retry_after_s.to_string()),
                h("x-should-retry", "false".to_string()),
            ],
            Error::ShuttingDown => vec![h("Retry-After", SHUTDOWN_RETRY_S.to_string())],
            Error::Overloaded { retry_after_s }
            | Error::ModelLoading { retry_after_s, .. }
            | Error::ModelBusy { retry_after_s, .. }
            | Error::LimitExceeded { retry_after_s, .. } => {
                vec![h("Retry-After", retry_after_s.to_string())]
            }
            Error::InvalidApiKey { .. } => {
                vec![h(
                    "WWW-Authenticate",
                    "Bearer realm=\"sigorest\"".to_string(),
                )]
            }
            Error::RateLimited { retry_after_s, .. } => vec![
                h("Retry-After", retry_after_s.to_string()),
                h("x-should-retry", "false".to_string()),
            ],
            Error::ProviderNotConfigured { .. }
            | Error::Upstream { .. }
            | Error::UpstreamTimeout { .. } => vec![h("x-should-retry", "false".to_string())],
            _ => Vec::new(),
        }
    }

    /// The message a client sees. The same as [`Display`](fmt::Display), except for errors
    /// that would show the server's own paths or the operating system's errors (a storage
    /// failure): those answer a generic message, and [`Error::needs_log`] says that the
    /// details belong in the log.
    pub fn client_message(&self) -> String {
        match self {
            Error::File { .. } => {
                "the gateway could not read or write its own files; the details are in its log"
                    .to_string()
            }
            Error::Listen { .. } => "the gateway could not open a port".to_string(),
            _ => self.to_string(),
        }
    }

    /// Whether the client sees less than the whole story ([`Error::client_message`]), so
    /// that the server logs the error where it answers it.
    pub fn needs_log(&self) -> bool {
        matches!(self, Error::File { .. } | Error::Listen { .. })
    }

    /// The body OpenAI's SDKs expect: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.client_message(),
            "type": self.kind(),
            "param": self.param(),
            "code": self.code(),
        }})
    }
}

impl Error {
    /// The words for a model that cannot answer now (not configured, too small, failing,
    /// busy): each says when or how it can.
    fn fmt_unavailable(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ProviderNotConfigured { env } => {
                write!(
                    f,
                    "provider not configured: set {env} in the gateway's environment"
                )
            }
            Error::ContextTooLong {
                model,
                tokens,
                limit,
            } => write!(
                f,
                "the request (about {tokens} tokens) is longer than the context of '{model}' ({limit} tokens)"
            ),
            Error::CircuitOpen {
                model,
                retry_after_s,
            } => write!(
                f,
                "model '{model}' is failing and temporarily disabled (circuit open); retry in {retry_after_s} s"
            ),
            Error::Overloaded { retry_after_s } => {
                write!(
                    f,
                    "gateway overloaded: too many requests at once; retry in {retry_after_s} s"
                )
            }
            Error::ModelLoading {
                model,
                state,
                retry_after_s,
            } => write!(
                f,
                "local model '{model}' is not ready yet ({state}); retry in {retry_after_s} s"
            ),
            Error::ModelBusy {
                model,
                reason,
                retry_after_s,
            } => write!(
                f,
                "local model '{model}' is busy: {reason}; retry in {retry_after_s} s"
            ),
            // Only the variants above come here.
            other => f.write_str(other.code()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidRequest { message, .. } => f.write_str(message),
            Error::ModelNotFound { model, reason } => {
                write!(f, "model '{model}' not found: {reason}")
            }
            Error::NotFound { path } => write!(f, "no such endpoint: {path}"),
            Error::MethodNotAllowed { method, allow } => {
                write!(f, "method {method} not allowed here; allowed: {allow}")
            }
            Error::BodyTooLarge { limit } => {
                write!(
                    f,
                    "request body too large: the limit is {} MiB",
                    limit / (1024 * 1024)
                )
            }
            Error::MemoryTooLarge { bytes, limit } => write!(
                f,
                "memory content too large: {bytes} bytes of UTF-8, and the limit is {} (the \
                 block goes with every request)",
                crate::util::fs::human_size(*limit as u64)
            ),
            Error::TooManyHeaders { limit } => {
                write!(f, "too many header lines: the limit is {limit}")
            }
            Error::HeadTooLarge { limit } => {
                write!(
                    f,
                    "request head too large: the limit is {} KiB",
                    limit / 1024
                )
            }
            Error::IpNotAllowed { ip } => {
                write!(f, "client address {ip} is not allowed on this port")
            }
            Error::AdminOnly { ip } => write!(
                f,
                "client address {ip} may not change the gateway's state (see -admin-allow)"
            ),
            Error::InvalidApiKey { .. }
            | Error::ModelNotAllowed { .. }
            | Error::LimitExceeded { .. } => self.fmt_client_rule(f),
            Error::MetricsOnly { ip } => write!(
                f,
                "client address {ip} may not read the gateway's metrics or usage (see -metrics-allow)"
            ),
            Error::ProviderNotConfigured { .. }
            | Error::ContextTooLong { .. }
            | Error::CircuitOpen { .. }
            | Error::Overloaded { .. }
            | Error::ModelLoading { .. }
            | Error::ModelBusy { .. } => self.fmt_unavailable(f),
            Error::ClientGone => f.write_str("the client went away"),
            Error::ShuttingDown => write!(
                f,
                "the gateway is shutting down and could not finish this request; retry in \
                 {SHUTDOWN_RETRY_S} s"
            ),
            Error::UpstreamClient { message, .. } => f.write_str(message),
            Error::RateLimited { message, .. } => {
                write!(f, "rate limited by the provider: {message}")
            }
            Error::Upstream { message } => write!(f, "upstream error: {message}"),
            Error::UpstreamTimeout { message } => write!(f, "upstream timeout: {message}"),
            Error::Internal { message } => write!(f, "internal error: {message}"),
            Error::File {
                path,
                line: 0,
                message,
                ..
            } => write!(f, "{}: {message}", path.display()),
            Error::File {
                path,
                line,
                column,
                message,
            } => {
                write!(f, "{}:{line}:{column}: {message}", path.display())
            }
            Error::Usage { message } => f.write_str(message),
            Error::Listen { addr, message } => write!(f, "cannot listen on {addr}: {message}"),
        }
    }
}

impl Error {
    /// The messages of the client rules (`keys.csv`, `-ip-rate`). Never the key itself.
    fn fmt_client_rule(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidApiKey { missing: true } => f.write_str(
                "no API key: this gateway needs one, sent as 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
            ),
            Error::InvalidApiKey { missing: false } => f.write_str(
                "invalid API key: it is not one of this gateway's keys (ask its owner for one)",
            ),
            Error::ModelNotAllowed { model, key } => write!(
                f,
                "key '{key}' may not use model '{model}' (GET /v1/models lists the models it may use)"
            ),
            Error::LimitExceeded {
                limit: Limit::KeyConcurrency { key, max },
                ..
            } => {
                let requests = if *max == 1 { "request" } else { "requests" };
                write!(
                    f,
                    "key '{key}' may have {max} {requests} in flight; retry when one has ended"
                )
            }
            Error::LimitExceeded {
                limit: Limit::KeyRequests { key, per_minute },
                retry_after_s,
            } => write!(
                f,
                "key '{key}' may make {per_minute} requests a minute; retry in {retry_after_s} s"
            ),
            Error::LimitExceeded {
                limit: Limit::IpRequests { ip, per_minute },
                retry_after_s,
            } => write!(
                f,
                "client address {ip} may make {per_minute} requests a minute (-ip-rate); retry in {retry_after_s} s"
            ),
            // Only called for the variants above (see `Display`).
            _ => Ok(()),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests;
