//! The endpoints, one module per family, and the router that picks one for a request.
//!
//! | path | module |
//! |---|---|
//! | `POST /v1/chat/completions` | [`chat`] (OpenAI) |
//! | `POST /v1/messages`, `POST /v1/messages/count_tokens` | [`messages`] (Anthropic) |
//! | `POST /v1/embeddings` | [`embeddings`] |
//! | `GET /v1/models`, `GET /api/models` | [`models`] |
//! | `GET /api/health`, `GET`/`PUT /api/memory` | [`admin`] |
//!
//! The `/v1` routes also answer without the prefix (clients set with a bare base URL), and
//! under `/{model}/v1/...` with the model taken from the path (tools that cannot set a model
//! name: their base URL names it). Every
//! handler takes the shared [`Gateway`] and the request and returns a response; the router
//! renders the errors it returns, in the shape of the route's API family.

use std::sync::Arc;

use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{Handler, Request, Response};

mod admin;
mod call;
mod chat;
mod embeddings;
mod messages;
mod models;

/// An endpoint's handler.
type Endpoint = fn(&Gateway, &Request) -> Result<Response, Error>;

/// Whose error shape a route's clients parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    OpenAi,
    Anthropic,
}

impl Shape {
    /// The shape for a path (also for a path that has no route, or a wrong method).
    fn of(path: &str) -> Shape {
        let path = path.strip_prefix("/v1").unwrap_or(path);
        if path == "/messages" || path.starts_with("/messages/") {
            Shape::Anthropic
        } else {
            Shape::OpenAi
        }
    }

    fn render(self, e: &Error) -> Response {
        match self {
            Shape::OpenAi => Response::error(e),
            Shape::Anthropic => crate::anthropic::error::response(e),
        }
    }
}

/// The HTTP face of the gateway: routes each request to its endpoint.
pub struct Router {
    gateway: Arc<Gateway>,
}

impl Router {
    pub fn new(gateway: Arc<Gateway>) -> Router {
        Router { gateway }
    }

    /// The endpoint for this request and the methods it allows, or 404.
    fn endpoint(req: &Request) -> Result<(&'static str, Endpoint), Error> {
        let path = req
            .path
            .strip_prefix("/v1")
            .filter(|p| p.starts_with('/'))
            .unwrap_or(&req.path);
        let bare = req.path == path;
        Ok(match path {
            "/chat/completions" => ("POST", chat::completions),
            "/embeddings" => ("POST", embeddings::create),
            "/messages" => ("POST", messages::create),
            "/messages/count_tokens" => ("POST", messages::count_tokens),
            "/models" => ("GET, HEAD", models::openai),
            "/api/models" if bare => ("GET, HEAD", models::detailed),
            "/api/health" if bare => ("GET, HEAD", admin::health),
            "/api/memory" if bare => ("GET, HEAD, PUT", admin::memory),
            _ => {
                return Err(Error::NotFound {
                    path: req.path.clone(),
                });
            }
        })
    }

    fn route(&self, req: &Request) -> Result<Response, Error> {
        let (allow, endpoint) = Router::endpoint(req)?;
        if !allow.split(", ").any(|m| m == req.method) {
            return Err(Error::MethodNotAllowed {
                method: req.method.clone(),
                allow,
            });
        }
        endpoint(&self.gateway, req)
    }
}

impl Handler for Router {
    fn handle(&self, req: &Request) -> Response {
        if let Some((model, path)) = model_in_path(&req.path) {
            let req = with_model(req, &model, path);
            return match self.route(&req) {
                Ok(resp) if req.path.ends_with("/models") => only_model(resp, &model),
                Ok(resp) => resp,
                Err(e) => Shape::of(&req.path).render(&e),
            };
        }
        match self.route(req) {
            Ok(resp) => resp,
            Err(e) => Shape::of(&req.path).render(&e),
        }
    }
}

/// `/{model}/v1/...`: the model named in the path (percent-decoded), for tools that cannot
/// set a model name, and the path without it. Only for the API routes.
fn model_in_path(path: &str) -> Option<(String, &str)> {
    let rest = path.strip_prefix('/')?;
    let (segment, tail) = rest.split_once('/')?;
    let api = tail.strip_prefix("v1/")?;
    let routed = matches!(
        api,
        "chat/completions"
            | "messages"
            | "messages/count_tokens"
            | "embeddings"
            | "responses"
            | "models"
    );
    if !routed || segment.is_empty() || segment == "v1" || segment == "api" {
        return None;
    }
    let model = percent_decode(segment)?;
    Some((model, &path[segment.len() + 1..]))
}

/// `%XX` escapes decoded; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The request with `model` in its body (a body that is not a JSON object is left as it is,
/// for the endpoint to refuse) and the model taken out of its path.
fn with_model(req: &Request, model: &str, path: &str) -> Request {
    let body = match serde_json::from_slice::<serde_json::Value>(&req.body) {
        Ok(serde_json::Value::Object(mut o)) => {
            o.insert("model".into(), serde_json::Value::String(model.to_string()));
            serde_json::to_vec(&o).unwrap_or_else(|_| req.body.clone())
        }
        _ => req.body.clone(),
    };
    Request {
        method: req.method.clone(),
        path: path.to_string(),
        query: req.query.clone(),
        version: req.version,
        headers: req.headers.clone(),
        body,
        peer: req.peer,
        tls: req.tls,
        received: req.received,
        hangup: req.hangup.clone(),
    }
}

/// A model list reduced to the model of the path (a tool set to `/{model}/v1` sees the one
/// it is meant to use).
fn only_model(resp: Response, model: &str) -> Response {
    let crate::http::Body::Full(body) = &resp.body else {
        return resp;
    };
    let Ok(mut list) = serde_json::from_slice::<serde_json::Value>(body) else {
        return resp;
    };
    if let Some(data) = list["data"].as_array_mut() {
        data.retain(|m| {
            m["id"]
                .as_str()
                .is_some_and(|id| id.eq_ignore_ascii_case(model))
        });
    }
    let mut out = Response::json(resp.status, &list);
    out.log = resp.log;
    out
}
