//! The endpoints, one module per family, and the router that picks one for a request.
//!
//! | path | module |
//! |---|---|
//! | `POST /v1/chat/completions` | [`chat`] (OpenAI) |
//! | `POST /v1/messages`, `POST /v1/messages/count_tokens` | [`messages`] (Anthropic) |
//! | `POST /v1/embeddings` | [`embeddings`] |
//! | `POST /v1/responses`, `POST /v1/responses/input_tokens` | [`responses`] (OpenAI Responses, stateless) |
//! | `GET /v1/models`, `GET /api/models` | [`models`] |
//! | `GET /api/health`, `GET`/`PUT /api/memory` | [`admin`] |
//! | `GET /metrics`, `GET /api/usage` | [`metrics`] |
//! | `GET /`, `GET /status` | [`status`] |
//!
//! The `/v1` routes also answer without the prefix (clients set with a bare base URL), and
//! under `/{model}/v1/...` with the model taken from the path (tools that cannot set a model
//! name: their base URL names it). Every handler takes the shared [`Gateway`], the request
//! and the [`Caller`] and returns a response; errors are rendered here, once, in the shape
//! of the path's API family ([`render_for`]: Anthropic's for `/v1/messages`, also for its
//! unknown sub-paths, and for the model list asked by an Anthropic client). The routes that call a provider
//! (chat, messages, responses, embeddings) answer on the event loop, awaiting their upstream
//! ([`Handler::answers_on_loop`]); a write of a file (`PUT /api/memory`) goes to a worker
//! thread; reading a list or the health is answered at once.
//!
//! Before an endpoint runs, the router applies the client rules to every route but the open
//! ones (`/api/health`), so that no endpoint, present or future, can forget them: the per-IP
//! limit (unknown paths count too), then — when `keys.csv` is in use — the key (401), then
//! the key's requests a minute and in flight (429). Those refusals are counted in the
//! metrics here, no endpoint having seen them: under the route's label (`other` off the
//! APIs that call a provider). A keyed request's answer, whatever it is, carries the
//! `x-ratelimit-*` headers and the key's name in the access log, and holds its in-flight
//! slot until it has been written (a stream: until it ends or the client leaves).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Limit};
use crate::gateway::Gateway;
use crate::http::{Answering, Handler, Request, Response};
use crate::ledger::{CallRecord, route};
use crate::limits::{Budget, KeyRules, Refusal, Slot};

mod admin;
mod call;
mod caller;
mod chat;
mod embeddings;
mod messages;
mod metrics;
mod models;
mod responses;
mod status;

pub(crate) use caller::Caller;

/// An endpoint that answers without waiting for a provider.
type Now = fn(&Gateway, &Request, &Caller) -> Result<Response, Error>;

/// The answer of an endpoint that calls a provider.
type Later<'a> = Pin<Box<dyn Future<Output = Result<Response, Error>> + 'a>>;

/// An endpoint's handler.
#[derive(Clone, Copy)]
enum Endpoint {
    Now(Now),
    /// Awaits its upstream on the event loop.
    Later(for<'a> fn(&'a Arc<Gateway>, &'a Request, &'a Caller) -> Later<'a>),
}

fn chat_completions<'a>(gw: &'a Arc<Gateway>, req: &'a Request, c: &'a Caller) -> Later<'a> {
    Box::pin(chat::completions(gw, req, c))
}

fn embeddings_create<'a>(gw: &'a Arc<Gateway>, req: &'a Request, c: &'a Caller) -> Later<'a> {
    Box::pin(embeddings::create(gw, req, c))
}

fn messages_create<'a>(gw: &'a Arc<Gateway>, req: &'a Request, c: &'a Caller) -> Later<'a> {
    Box::pin(messages::create(gw, req, c))
}

fn responses_create<'a>(gw: &'a Arc<Gateway>, req: &'a Request, c: &'a Caller) -> Later<'a> {
    Box::pin(responses::create(gw, req, c))
}

/// How a route's errors look on the wire.
type Render = fn(&Error) -> Response;

/// One route: what it answers, how, and whether the client rules apply.
#[derive(Clone, Copy)]
struct Route {
    /// The methods it allows, as the `Allow` header says them.
    allow: &'static str,
    endpoint: Endpoint,
    /// Its `route` label in the metrics ([`route::OTHER`]: only its refusals are counted).
    label: &'static str,
    /// Open to every client on the listener's allow list: no key.
    open: bool,
    /// Not counted by the per-IP limit (`/api/health`, which monitors poll).
    unlimited: bool,
}

impl Route {
    /// Whether `method` is one of the route's (`allow` is `GET, HEAD`-style).
    fn allows(&self, method: &str) -> bool {
        self.allow.split(',').any(|m| m.trim_start() == method)
    }

    fn new(allow: &'static str, endpoint: Now) -> Route {
        Route {
            allow,
            endpoint: Endpoint::Now(endpoint),
            label: route::OTHER,
            open: false,
            unlimited: false,
        }
    }

    /// A route that calls a provider (answered on the event loop), counted under `label`.
    fn upstream(
        allow: &'static str,
        endpoint: for<'a> fn(&'a Arc<Gateway>, &'a Request, &'a Caller) -> Later<'a>,
        label: &'static str,
    ) -> Route {
        Route {
            allow,
            endpoint: Endpoint::Later(endpoint),
            label,
            open: false,
            unlimited: false,
        }
    }
}

/// Errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`).
fn openai_error(e: &Error) -> Response {
    Response::error(e)
}

/// Errors in Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`).
fn anthropic_error(e: &Error) -> Response {
    crate::anthropic::error::response(e)
}

/// The error shape for a path with no route: Anthropic's under `/v1/messages/`.
fn render_for(path: &str) -> Render {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    if path == "/messages" || path.starts_with("/messages/") {
        anthropic_error
    } else {
        openai_error
    }
}

/// The error shape for this request: [`render_for`] its path, but Anthropic's for the model
/// list asked by an Anthropic client (see [`anthropic_listing`]).
fn render_for_request(req: &Request) -> Render {
    if anthropic_listing(req) {
        anthropic_error
    } else {
        render_for(model_in_path(&req.path).map_or(req.path.as_str(), |(_, path)| path))
    }
}

/// The model list or one model asked by an Anthropic client (an `anthropic-version` header:
/// `client.models.list()`, Claude Code's model discovery), whose SDK reads its errors in
/// Anthropic's shape.
fn anthropic_listing(req: &Request) -> bool {
    let path = model_in_path(&req.path).map_or(req.path.as_str(), |(_, path)| path);
    let bare = path.strip_prefix("/v1").unwrap_or(path);
    (bare == "/models" || bare.starts_with("/models/")) && req.header("anthropic-version").is_some()
}

/// The HTTP face of the gateway: routes each request to its endpoint.
pub struct Router {
    gateway: Arc<Gateway>,
}

/// What the router learnt of a keyed request, applied to whatever answer it gets.
#[derive(Default)]
struct Keyed {
    name: Option<String>,
    budget: Option<Budget>,
    slot: Option<Slot>,
}

impl Router {
    pub fn new(gateway: Arc<Gateway>) -> Router {
        Router { gateway }
    }

    /// The route for this request's path, if there is one.
    fn find(full: &str) -> Option<Route> {
        let path = full
            .strip_prefix("/v1")
            .filter(|p| p.starts_with('/'))
            .unwrap_or(full);
        let bare = full == path;
        Some(match path {
            "/chat/completions" => Route::upstream("POST", chat_completions, route::CHAT),
            "/embeddings" => Route::upstream("POST", embeddings_create, route::EMBEDDINGS),
            "/messages" => Route::upstream("POST", messages_create, route::MESSAGES),
            "/messages/count_tokens" => Route::new("POST", messages::count_tokens),
            "/responses" => Route::upstream("POST", responses_create, route::RESPONSES),
            "/responses/input_tokens" => Route::new("POST", responses::input_tokens),
            "/models" => Route::new("GET, HEAD", models::openai),
            p if p.len() > "/models/".len()
                && p.starts_with("/models/")
                && !p[8..].contains('/') =>
            {
                Route::new("GET, HEAD", models::one)
            }
            "/api/models" if bare => Route::new("GET, HEAD", models::detailed),
            "/api/health" if bare => Route {
                open: true,
                unlimited: true,
                ..Route::new("GET, HEAD", admin::health)
            },
            "/api/memory" if bare => Route::new("GET, HEAD, PUT", admin::memory),
            // Guarded by -metrics-allow instead of a client key: a Prometheus scraper or
            // a browser on the admin's machine has no key to send.
            "/api/usage" if bare => Route {
                open: true,
                ..Route::new("GET, HEAD", metrics::usage)
            },
            "/metrics" if bare => Route {
                open: true,
                ..Route::new("GET, HEAD", metrics::exposition)
            },
            "/" | "/status" if bare => Route {
                open: true,
                ..Route::new("GET, HEAD", status::page)
            },
            _ => return None,
        })
    }

    async fn route(
        &self,
        req: &Request,
        route: Option<Route>,
        keyed: &mut Keyed,
    ) -> Result<Response, Error> {
        if !route.is_some_and(|r| r.unlimited) && !req.checked_early {
            self.check_ip(req)
                .inspect_err(|e| self.count_refusal(req, route, None, e))?;
        }
        let Some(route) = route else {
            return Err(Error::NotFound {
                path: req.path.clone(),
            });
        };
        if !route.allows(&req.method) {
            return Err(Error::MethodNotAllowed {
                method: req.method.clone(),
                allow: route.allow,
            });
        }
        let caller = if route.open {
            Caller::anonymous()
        } else {
            self.identify(req, keyed)
                .inspect_err(|e| self.count_refusal(req, Some(route), keyed.name.clone(), e))?
        };
        match route.endpoint {
            Endpoint::Now(f) => f(&self.gateway, req, &caller),
            Endpoint::Later(f) => f(&self.gateway, req, &caller).await,
        }
    }

    /// Counts a request the client rules refused before any endpoint ran (the per-IP
    /// limit's 429, the key's 401 and 429): under its route's label (unknown paths under
    /// `other`), `model=""`, and the key's name when the key is known (never an unknown
    /// key's text). Not usage: no model was asked for yet.
    fn count_refusal(&self, req: &Request, route: Option<Route>, key: Option<String>, e: &Error) {
        self.count_unanswered(
            req,
            route.map_or(route::OTHER, |r| r.label),
            key,
            e.status(),
        );
    }

    /// Counts, under `model=""`, a request answered without its endpoint.
    fn count_unanswered(
        &self,
        req: &Request,
        label: &'static str,
        key: Option<String>,
        status: u16,
    ) {
        let mut rec = CallRecord::new(label);
        rec.key = key;
        rec.finish(status, req.received, false);
        self.gateway.ledger.record(&rec);
    }

    /// The name of the key the request presents, when it is one of `keys.csv`'s (no limit
    /// is applied).
    fn known_key(&self, req: &Request) -> Option<String> {
        let keys = self.gateway.keys()?;
        let key = keys.find(caller::presented_key(req)?)?;
        Some(key.name.clone())
    }

    /// The per-IP limit (`-ip-rate`), when it is on.
    fn check_ip(&self, req: &Request) -> Result<(), Error> {
        let Some(limit) = &self.gateway.ip_limit else {
            return Ok(());
        };
        limit
            .admit(req.peer)
            .map_err(|retry_after_s| Error::LimitExceeded {
                limit: Limit::IpRequests {
                    ip: req.peer,
                    per_minute: limit.rate().per_minute,
                },
                retry_after_s,
            })
    }

    /// The caller: anonymous without `keys.csv`; else the request's key, checked, and
    /// admitted under its limits (the slot and budget go into `keyed`).
    fn identify(&self, req: &Request, keyed: &mut Keyed) -> Result<Caller, Error> {
        let Some(keys) = self.gateway.keys() else {
            return Ok(Caller::anonymous());
        };
        let presented = caller::presented_key(req);
        let key = presented
            .and_then(|k| keys.find(k))
            .ok_or(Error::InvalidApiKey {
                missing: presented.is_none(),
            })?;
        keyed.name = Some(key.name.clone());
        let rules = KeyRules {
            rpm: key.rpm,
            concurrency: key.concurrency,
        };
        let admission = self.gateway.key_limits.admit(&key.name, rules);
        keyed.budget = admission.budget;
        let name = key.name.clone();
        match admission.result {
            Ok(slot) => keyed.slot = Some(slot),
            Err(Refusal::Rpm {
                limit,
                retry_after_s,
            }) => {
                return Err(Error::LimitExceeded {
                    limit: Limit::KeyRequests {
                        key: name,
                        per_minute: limit,
                    },
                    retry_after_s,
                });
            }
            Err(Refusal::Concurrency { limit }) => {
                return Err(Error::LimitExceeded {
                    limit: Limit::KeyConcurrency {
                        key: name,
                        max: limit,
                    },
                    retry_after_s: 1,
                });
            }
        }
        Ok(Caller::keyed(key))
    }
}

impl Keyed {
    /// Puts the key's name in the access log (first, after the HTTP fields), the budget in
    /// the `x-ratelimit-*` headers, and the slot where it lives as long as the answer: in
    /// a stream's body, else dropped here, the answer being complete.
    fn apply(self, resp: &mut Response) {
        let Some(name) = self.name else {
            return;
        };
        resp.log.insert(0, ("key", name));
        if let Some(b) = self.budget {
            resp.headers
                .push(("x-ratelimit-limit-requests".into(), b.limit.to_string()));
            resp.headers.push((
                "x-ratelimit-remaining-requests".into(),
                b.remaining.to_string(),
            ));
        }
        if let Some(slot) = self.slot {
            let taken = std::mem::replace(resp, Response::full(0, "", Vec::new()));
            *resp = taken.keep_until_sent(slot);
        }
    }
}

impl Handler for Router {
    /// The routes that reach a worker thread (or are quick) answer without waiting for a
    /// provider: their answer is ready at its first poll. (A route that awaits one would be
    /// run to its end here, on a worker thread.)
    fn handle(&self, req: &Request) -> Response {
        let mut answer = pin!(self.respond(req));
        match answer
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(resp) => resp,
            Poll::Pending => crate::rt::block_on(answer).unwrap_or_else(|e| {
                Response::error(&Error::Internal {
                    message: format!("internal error: {e}"),
                })
            }),
        }
    }

    fn answers_on_loop(&self, req: &Request) -> bool {
        let path = model_in_path(&req.path).map_or(req.path.as_str(), |(_, path)| path);
        Router::find(path)
            .is_some_and(|r| matches!(r.endpoint, Endpoint::Later(_)) && r.allows(&req.method))
    }

    fn answer(self: Arc<Self>, req: Request) -> Answering {
        Box::pin(async move { self.respond(&req).await })
    }

    /// Anthropic's shape under `/v1/messages` (also with the model in the path), OpenAI's
    /// elsewhere.
    /// A call's (a body too large, a compressed body, a malformed head...) carries its
    /// request id as any answer of a call does.
    fn error_response(&self, path: &str, e: &Error) -> Response {
        let path = model_in_path(path).map_or(path, |(_, path)| path);
        let mut resp = render_for(path)(e);
        name_request(&mut resp, is_call(Router::find(path)));
        resp
    }

    /// The per-IP limit, and whether the request has a key of `keys.csv` at all, before it
    /// waits for a place: a client over its rate, or without a valid key, is refused at
    /// once, never after a wait in a long line, and never holds a place in it that a client
    /// who may use the gateway needs. (Limits of a valid key are applied with its place.)
    fn before_queue(&self, req: &Request) -> Option<Response> {
        let path = model_in_path(&req.path).map_or(req.path.as_str(), |(_, path)| path);
        let route = Router::find(path).filter(|r| r.allows(&req.method))?;
        let refused = if route.unlimited {
            Ok(())
        } else {
            self.check_ip(req)
        };
        let refused = refused.and_then(|()| match self.gateway.keys() {
            Some(keys) if !route.open => {
                let presented = caller::presented_key(req);
                match presented.and_then(|k| keys.find(k)) {
                    Some(_) => Ok(()),
                    None => Err(Error::InvalidApiKey {
                        missing: presented.is_none(),
                    }),
                }
            }
            _ => Ok(()),
        });
        let e = refused.err()?;
        self.count_refusal(req, Some(route), None, &e);
        let mut resp = render_for_request(req)(&e);
        name_request(&mut resp, is_call(Some(route)));
        Some(resp)
    }

    /// A call to a provider whose client left while it waited for a place (or that a
    /// shutdown took out of the line) is counted as the endpoint would have: under its
    /// route, `model=""` (its body was not looked at), its key when it presented a known one,
    /// and `attempts=0` in the access log (no provider was called). Not usage. The other
    /// routes' are not counted, as their answers are not.
    fn left_queue(&self, req: &Request, e: &Error) -> Response {
        let path = model_in_path(&req.path).map_or(req.path.as_str(), |(_, path)| path);
        let mut resp = render_for_request(req)(e);
        let Some(route) = Router::find(path).filter(|r| r.label != route::OTHER) else {
            return resp;
        };
        resp.log.insert(0, ("attempts", "0".to_string()));
        name_request(&mut resp, true);
        let key = self.known_key(req);
        if let Some(name) = &key {
            resp.log.insert(0, ("key", name.clone()));
        }
        self.count_unanswered(req, route.label, key, resp.status);
        resp
    }

    /// Reading the lists, the health and the memory block (snapshots in memory, no I/O),
    /// and every 404 and 405, are answered at once on the event loop. Calls to a provider
    /// take a place (`-workers`) and answer on the loop; `PUT /api/memory` (a file write) goes
    /// to a worker thread.
    fn is_quick(&self, req: &Request) -> bool {
        let path = model_in_path(&req.path).map_or(req.path.as_str(), |(_, path)| path);
        match Router::find(path) {
            None => true,
            Some(route) if !route.allows(&req.method) => true,
            Some(route) => {
                route.allow.starts_with("GET") && matches!(req.method.as_str(), "GET" | "HEAD")
            }
        }
    }
}

impl Router {
    /// The answer: the model taken from the path when it names one, then the route's.
    async fn respond(&self, req: &Request) -> Response {
        match model_in_path(&req.path) {
            Some((model, path)) => {
                let req = with_model(req, &model, path);
                let resp = self.answer_route(&req).await;
                let listing = req.path.ends_with("/models") || req.path.contains("/models/");
                if !listing || resp.status != 200 {
                    return resp;
                }
                // The list names models by short code; the path may name one by its
                // upstream id or its Ollama name, in any case. A model the gateway does
                // not offer (or another one's entry) is a 404, as on /v1/models/{id}.
                only_model(resp, &self.gateway.short_code(&model)).unwrap_or_else(|| {
                    // The model not offered there: the one retrieved, or the path's.
                    let (named, reason) = match req.path.rsplit_once("/models/") {
                        Some((_, id)) => (
                            percent_decode(id).unwrap_or_default(),
                            format!("not the model of this path ('{model}')"),
                        ),
                        None => (
                            model.clone(),
                            "not in this gateway's model list".to_string(),
                        ),
                    };
                    render_for_request(&req)(&Error::ModelNotFound {
                        model: named
                            .chars()
                            .take(crate::chat::request::MAX_MODEL_NAME)
                            .collect(),
                        reason,
                    })
                })
            }
            None => self.answer_route(req).await,
        }
    }

    async fn answer_route(&self, req: &Request) -> Response {
        let route = Router::find(&req.path);
        let render = render_for_request(req);
        let mut keyed = Keyed::default();
        let mut resp = match self.route(req, route, &mut keyed).await {
            Ok(resp) => resp,
            Err(e) => render(&e),
        };
        keyed.apply(&mut resp);
        name_request(&mut resp, is_call(route));
        resp
    }
}

/// Whether the route is a call to a provider (its answers, refusals included, are named).
fn is_call(route: Option<Route>) -> bool {
    route.is_some_and(|r| r.label != route::OTHER)
}

/// Every answer of a call to a provider, error or not, carries an id that its client can
/// quote and that the access line holds (`request_id=`): Anthropic's `request-id`, which
/// the Messages endpoints set (`count_tokens` too), or else, for a call (`fresh`), OpenAI's
/// `x-request-id` (the openai SDK reads it into `_request_id`, as the anthropic SDK reads
/// the other).
fn name_request(resp: &mut Response, fresh: bool) {
    let id = match resp.header(crate::anthropic::REQUEST_ID) {
        Some(id) => id.to_string(),
        None if fresh => {
            let id = crate::anthropic::request_id();
            resp.headers.push(("x-request-id".to_string(), id.clone()));
            id
        }
        None => return,
    };
    resp.log.push(("request_id", id));
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
            | "responses/input_tokens"
            | "models"
    ) || api
        .strip_prefix("models/")
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    if !routed || segment.is_empty() || segment == "v1" || segment == "api" {
        return None;
    }
    let model = percent_decode(segment)?;
    Some((model, &path[segment.len() + 1..]))
}

/// `%XX` escapes decoded; `None` for a bad escape or bytes that are not UTF-8.
pub(super) fn percent_decode(s: &str) -> Option<String> {
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
    // (Read as the endpoint reads it: half an emoji does not lose the path's model.)
    let parsed = std::str::from_utf8(&req.body).map(crate::chat::request::client_json);
    let body = match parsed {
        Ok(Ok(serde_json::Value::Object(mut o))) => {
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
        checked_early: req.checked_early,
    }
}

/// A model list reduced to the model of the path (a tool set to `/{model}/v1` sees the one
/// it is meant to use); `None` when that model is not in it (or one entry is another's).
fn only_model(mut resp: Response, model: &str) -> Option<Response> {
    let crate::http::Body::Full(body) = &resp.body else {
        return Some(resp);
    };
    let Ok(mut list) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Some(resp);
    };
    let named = |m: &serde_json::Value| {
        m["id"]
            .as_str()
            .is_some_and(|id| id.eq_ignore_ascii_case(model))
    };
    // (`get_mut`: indexing an object by a missing key would add it, as null.)
    if let Some(data) = list.get_mut("data").and_then(|d| d.as_array_mut()) {
        // The list: just that model's entry.
        data.retain(named);
        if data.is_empty() {
            return None;
        }
    } else if !named(&list) {
        // One entry (`/v1/models/{id}`): the path's model's only.
        return None;
    }
    resp.body = crate::http::Body::Full(serde_json::to_vec(&list).unwrap_or_default());
    Some(resp)
}
