//! The endpoints, one module per family, and the router that picks one for a request.
//!
//! | path | module |
//! |---|---|
//! | `POST /v1/chat/completions` | [`chat`] (OpenAI) |
//! | `POST /v1/messages`, `POST /v1/messages/count_tokens` | [`messages`] (Anthropic) |
//! | `POST /v1/responses` | [`responses`] (OpenAI Responses, stateless) |
//! | `GET /v1/models`, `GET /api/models` | [`models`] |
//! | `GET /api/health`, `GET`/`PUT /api/memory` | [`admin`] |
//!
//! The `/v1` routes also answer without the prefix (clients set with a bare base URL). Every
//! handler takes the shared [`Gateway`] and the request and returns a response; the router
//! renders the errors it returns, in the shape of the route's API family.

use std::sync::Arc;

use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{Handler, Request, Response};

mod admin;
mod call;
mod chat;
mod messages;
mod models;
mod responses;

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
            "/messages" => ("POST", messages::create),
            "/messages/count_tokens" => ("POST", messages::count_tokens),
            "/responses" => ("POST", responses::create),
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
        match self.route(req) {
            Ok(resp) => resp,
            Err(e) => Shape::of(&req.path).render(&e),
        }
    }
}
