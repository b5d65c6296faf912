//! The endpoints, one module per family, and the router that picks one for a request.
//!
//! | path | module |
//! |---|---|
//! | `POST /v1/chat/completions` | [`chat`] |
//! | `GET /v1/models`, `GET /api/models` | [`models`] |
//! | `GET /api/health`, `GET`/`PUT /api/memory` | [`admin`] |
//!
//! `/chat/completions` and `/models` also answer without the `/v1` prefix (clients set
//! with a bare base URL). Every handler takes the shared [`Gateway`] and the request and
//! returns a response; errors are rendered here, once.

use std::sync::Arc;

use crate::error::Error;
use crate::gateway::Gateway;
use crate::http::{Handler, Request, Response};

mod admin;
mod chat;
mod models;

/// An endpoint's handler.
type Endpoint = fn(&Gateway, &Request) -> Result<Response, Error>;

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
            Err(e) => Response::error(&e),
        }
    }

    /// Reading the lists, the health and the memory block (snapshots in memory, no I/O),
    /// and every 404 and 405, are answered on the connection thread. Chat completions
    /// (upstream calls) and `PUT /api/memory` (a file write) go to the workers.
    fn is_quick(&self, req: &Request) -> bool {
        match Router::endpoint(req) {
            Err(_) => true,
            Ok((allow, _)) if !allow.split(", ").any(|m| m == req.method) => true,
            Ok((allow, _)) => {
                allow.starts_with("GET") && matches!(req.method.as_str(), "GET" | "HEAD")
            }
        }
    }
}
