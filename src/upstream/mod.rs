//! Calls to providers, through ureq: one shared agent for completions, statuses read as data,
//! retries with backoff inside the request's deadline.
//!
//! Two agents: one honours the proxy settings of the environment (for cloud providers), one
//! goes direct (for Ollama and any upstream on a loopback address, which a proxy could not
//! reach). A stream gets an agent of its own, so that it can be shut down — interrupting a
//! blocked read at once — when its client goes away, without touching other requests.

use std::io::{BufReader, Read};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ureq::Agent;
use ureq::config::Config;
use ureq::http::Response;
use ureq::unversioned::transport::DefaultConnector;

use crate::chat::provider_error::{error_in, reported};
use crate::chat::sse::{Event, EventReader};
use crate::chat::stream::{Fed, Gathered, StreamEnd, read_stream};
use crate::util::Hangup;
use retry::Failure;

pub mod breaker;
pub mod ollama;
pub mod retry;

mod resolver;

use resolver::Names;

/// Largest upstream answer read (a completion with base64 images can be large).
pub const MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// Largest document [`Upstream::get`] reads.
pub const MAX_DOCUMENT: u64 = 1024 * 1024;
/// Largest upstream error body kept for the error message.
const MAX_ERROR_BODY: u64 = 64 * 1024;
/// Read buffer of a stream, over ureq's own 16 KiB input buffer: events are usually a few
/// hundred bytes, and longer ones are simply read in several pieces. (16 KiB here cost
/// 1.2 MB of peak memory at 100 concurrent streams.)
const STREAM_BUFFER: usize = 4 * 1024;
/// Connect timeout (within the request's own deadline).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where one request goes.
#[derive(Clone)]
pub struct Target {
    /// The full chat-completions URL.
    pub url: String,
    /// `Authorization: Bearer` key, if the provider needs one. Never logged.
    pub key: Option<String>,
    /// Bypass any proxy from the environment (Ollama, loopback upstreams).
    pub direct: bool,
}

impl Target {
    /// A target reached through any proxy from the environment, unless its host is a
    /// loopback address (no proxy can reach that for us).
    pub fn new(url: String, key: Option<String>) -> Target {
        Target {
            direct: is_loopback_url(&url),
            url,
            key,
        }
    }

    /// A target reached directly, with no key (Ollama, whose address may be on the LAN).
    pub fn direct(url: String) -> Target {
        Target {
            url,
            key: None,
            direct: true,
        }
    }
}

/// Whether a URL's host is a loopback address.
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of every debug print.
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("direct", &self.direct)
            .finish()
    }
}

/// A result and how many attempts it took.
#[derive(Debug)]
pub struct Attempted<T> {
    pub result: Result<T, Failure>,
    pub attempts: u32,
}

/// A non-streamed answer: the upstream's body as received, and what the gateway reads of it.
#[derive(Debug)]
pub struct Completion {
    pub body: Vec<u8>,
    pub answer: crate::chat::answer::Answer,
}

/// A stream whose first event has arrived.
pub struct OpenStream {
    /// The first event.
    pub first: Event,
    /// The rest of the events.
    pub events: EventReader<BufReader<ureq::BodyReader<'static>>>,
    /// The stream's own agent: shutting it down interrupts a blocked read.
    pub agent: Agent,
}

/// Reads an opened stream to its end (see [`read_stream`]) and closes its connection,
/// however the stream ended.
pub fn read_open_stream(
    stream: OpenStream,
    gathered: &mut Gathered,
    each: impl FnMut(&str, Fed<'_>) -> std::io::Result<()>,
) -> StreamEnd {
    let OpenStream {
        first,
        mut events,
        agent,
    } = stream;
    let end = read_stream(first, &mut events, gathered, each);
    drop(events);
    agent.shutdown();
    end
}

/// The ureq side of the gateway.
pub struct Upstream {
    proxied: Agent,
    direct: Agent,
    proxied_config: Config,
    direct_config: Config,
    /// One resolver for every agent, so a name is looked up once for all of them.
    names: Names,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::new()
    }
}

impl Upstream {
    pub fn new() -> Upstream {
        Upstream::with_tls(None)
    }

    /// An upstream whose HTTPS connections trust only the certificates in `pem` (PEM text
    /// holding one or more certificates; other items are skipped) instead of the built-in
    /// web roots: `sigoe -cacert`, for a gateway with a self-signed certificate. The error
    /// says what is wrong with the text.
    pub fn trusting(pem: &[u8]) -> Result<Upstream, String> {
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert),
                Ok(_) => {}
                Err(e) => return Err(format!("not valid PEM: {e}")),
            }
        }
        if certs.is_empty() {
            return Err("no certificate in it (expected -----BEGIN CERTIFICATE-----)".into());
        }
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .build();
        Ok(Upstream::with_tls(Some(tls)))
    }

    fn with_tls(tls: Option<ureq::tls::TlsConfig>) -> Upstream {
        let proxied_config = base_config(ureq::Proxy::try_from_env(), tls.clone());
        let direct_config = base_config(None, tls);
        let names = Names::default();
        Upstream {
            proxied: agent(proxied_config.clone(), &names),
            direct: agent(direct_config.clone(), &names),
            proxied_config,
            direct_config,
            names,
        }
    }

    fn agent(&self, target: &Target) -> &Agent {
        if target.direct {
            &self.direct
        } else {
            &self.proxied
        }
    }

    /// A non-streamed completion: the upstream's 2xx body (checked, and read once for the
    /// session and the log), or the last failure.
    pub fn complete(
        &self,
        target: &Target,
        body: &[u8],
        deadline: Instant,
        retries: u32,
        hangup: &Hangup,
    ) -> Attempted<Completion> {
        let agent = self.agent(target);
        with_retries(deadline, retries, hangup, |remaining| {
            let request = agent
                .post(&target.url)
                .config()
                .timeout_global(Some(remaining))
                .timeout_connect(Some(remaining.min(CONNECT_TIMEOUT)))
                .build();
            let mut resp = send(request, target, body, remaining, &self.names)?;
            let answer = resp
                .body_mut()
                .with_config()
                .limit(MAX_ANSWER)
                .read_to_vec()
                .map_err(|e| read_failure(e, remaining))?;
            let parsed = check_answer(&answer)?;
            Ok(Completion {
                body: answer,
                answer: parsed,
            })
        })
    }

    /// A GET of a small JSON document (at most [`MAX_DOCUMENT`] bytes), one attempt within
    /// `timeout`: the 2xx body, or why not (`sigoe -server URL -l` reads the gateway's
    /// `/api/models` this way).
    pub fn get(&self, target: &Target, timeout: Duration) -> Result<Vec<u8>, Failure> {
        let mut request = self
            .agent(target)
            .get(&target.url)
            .config()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(CONNECT_TIMEOUT)))
            .build();
        if let Some(key) = &target.key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut resp = request.call().map_err(|e| call_failure(e, timeout))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_DOCUMENT)
            .read_to_vec()
            .map_err(|e| read_failure(e, timeout))?;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(Failure::Status {
                status,
                retry_after: None,
                body,
            })
        }
    }

    /// Starts a stream: retried until the first event has arrived (never after).
    /// `first_wait` bounds the wait for the first event and `gap` each later gap.
    pub fn open_stream(
        &self,
        target: &Target,
        body: &[u8],
        first_wait: Duration,
        gap: Duration,
        retries: u32,
        hangup: &Hangup,
    ) -> Attempted<OpenStream> {
        let config = if target.direct {
            &self.direct_config
        } else {
            &self.proxied_config
        };
        let deadline = Instant::now() + first_wait;
        with_retries(deadline, retries, hangup, |remaining| {
            let agent = agent(config.clone(), &self.names);
            // A client that leaves while we wait interrupts the wait.
            let interrupt = agent.clone();
            hangup.on_hangup(move || interrupt.shutdown());
            let request = agent
                .post(&target.url)
                .config()
                .timeout_recv_response(Some(remaining))
                .timeout_connect(Some(remaining.min(CONNECT_TIMEOUT)))
                .timeout_per_read(Some(gap))
                .build();
            let resp = send(request, target, body, remaining, &self.names)?;
            let is_json = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.contains("json"));
            let reader = resp.into_body().into_reader();
            if is_json {
                // A 200 carrying JSON instead of a stream: an error (or a provider that
                // ignores `stream`); either way not something to relay as events.
                let mut text = Vec::new();
                let _ = reader.take(MAX_ERROR_BODY).read_to_end(&mut text);
                return Err(Failure::BadAnswer(json_instead_of_stream(&text)));
            }
            let mut events = EventReader::new(BufReader::with_capacity(STREAM_BUFFER, reader));
            let first = match events.next_event() {
                Ok(Some(Event::Data(d))) => {
                    if let Some(msg) = error_in(&d) {
                        return Err(Failure::BadAnswer(reported(&msg)));
                    }
                    Event::Data(d)
                }
                Ok(Some(Event::Done)) => Event::Done,
                Ok(None) => {
                    return Err(Failure::BadAnswer(
                        "stream ended before its first event".into(),
                    ));
                }
                Err(e) => return Err(io_failure(&e, remaining, "waiting for the first event")),
            };
            Ok(OpenStream {
                first,
                events,
                agent,
            })
        })
    }
}

/// An agent with the shared resolver (see `resolver`: no thread per request).
fn agent(config: Config, names: &Names) -> Agent {
    Agent::with_parts(config, DefaultConnector::new(), names.clone())
}

fn base_config(proxy: Option<ureq::Proxy>, tls: Option<ureq::tls::TlsConfig>) -> Config {
    let builder = Agent::config_builder();
    let builder = match tls {
        Some(tls) => builder.tls_config(tls),
        None => builder,
    };
    builder
        .http_status_as_error(false)
        .proxy(proxy)
        .user_agent(format!("sigorest/{}", crate::VERSION))
        .max_redirects(0)
        .max_idle_connections(256)
        .max_idle_connections_per_host(128)
        // Crate notes: 16 KiB instead of 128 KiB halves the peak RSS of 100 streams.
        .input_buffer_size(16 * 1024)
        .output_buffer_size(16 * 1024)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .build()
}

/// Runs `attempt` up to `retries` times within `deadline`, backing off between attempts.
fn with_retries<T>(
    deadline: Instant,
    retries: u32,
    hangup: &Hangup,
    mut attempt: impl FnMut(Duration) -> Result<T, Failure>,
) -> Attempted<T> {
    let mut attempts = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        attempts += 1;
        let result = if remaining.is_zero() {
            Err(Failure::Timeout(
                "no answer within the request's timeout".into(),
            ))
        } else {
            attempt(remaining)
        };
        let failure = match result {
            Ok(v) => {
                return Attempted {
                    result: Ok(v),
                    attempts,
                };
            }
            Err(f) => f,
        };
        let asked = match &failure {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        };
        let wait = retry::backoff(attempts, asked, retry::jitter());
        let left = deadline.saturating_duration_since(Instant::now());
        if attempts >= retries || !failure.retryable() || hangup.is_fired() || wait >= left {
            return Attempted {
                result: Err(failure),
                attempts,
            };
        }
        log::debug!(attempt = attempts, wait_ms = wait.as_millis() as u64; "retrying upstream call");
        thread::sleep(wait);
    }
}

/// Sends the request. A 2xx comes back as the response; anything else as a [`Failure`].
fn send(
    request: ureq::RequestBuilder<ureq::typestate::WithBody>,
    target: &Target,
    body: &[u8],
    remaining: Duration,
    names: &Names,
) -> Result<Response<ureq::Body>, Failure> {
    let mut request = request.header("Content-Type", "application/json");
    if let Some(key) = &target.key {
        request = request.header("Authorization", format!("Bearer {key}"));
    }
    let mut resp = request.send(body).map_err(|e| {
        let failure = call_failure(e, remaining);
        if matches!(failure, Failure::Connect(_)) {
            // The remembered addresses may be stale: look the name up again next time.
            names.forget();
        }
        failure
    })?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let retry_after = retry::retry_after(
        header("retry-after-ms").as_deref(),
        header("retry-after").as_deref(),
        SystemTime::now(),
    );
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ERROR_BODY)
        .read_to_vec()
        .unwrap_or_default();
    Err(Failure::Status {
        status,
        retry_after,
        body,
    })
}

/// Sorts a ureq error from sending the request or waiting for its head.
fn call_failure(e: ureq::Error, remaining: Duration) -> Failure {
    match e {
        ureq::Error::Timeout(t) => {
            Failure::Timeout(format!("no answer within {} ({t})", secs(remaining)))
        }
        ureq::Error::Io(io) => io_failure(&io, remaining, "connecting"),
        ureq::Error::Protocol(p) => Failure::BadAnswer(format!("not HTTP: {p}")),
        ureq::Error::HostNotFound => Failure::Connect("host not found".into()),
        ureq::Error::ConnectionFailed => Failure::Connect("connection failed".into()),
        other => Failure::Connect(other.to_string()),
    }
}

/// Sorts a ureq error from reading a 2xx body.
fn read_failure(e: ureq::Error, remaining: Duration) -> Failure {
    match e {
        ureq::Error::Timeout(_) => {
            Failure::Timeout(format!("answer not complete within {}", secs(remaining)))
        }
        ureq::Error::Io(io) => io_failure(&io, remaining, "reading the answer"),
        ureq::Error::BodyExceedsLimit(n) => {
            Failure::BadAnswer(format!("answer larger than {n} bytes"))
        }
        other => Failure::BadAnswer(other.to_string()),
    }
}

fn io_failure(e: &std::io::Error, remaining: Duration, doing: &str) -> Failure {
    use std::io::ErrorKind::*;
    // For an operating-system error the client sees its kind ("connection refused"), not
    // the OS's text and number (those go to the debug log); errors made by a library (a
    // TLS certificate refused) keep their own words.
    log::debug!(error:% = e, doing = doing; "upstream I/O error");
    let what = match e.raw_os_error() {
        Some(_) => e.kind().to_string(),
        None => e.to_string(),
    };
    match e.kind() {
        TimedOut | WouldBlock => {
            Failure::Timeout(format!("no data within {} while {doing}", secs(remaining)))
        }
        _ if doing == "connecting" => Failure::Connect(what),
        _ => Failure::BadAnswer(format!("{doing}: {what}")),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// A 2xx body must be a chat completion; a JSON error in a 200 is reported as such.
fn check_answer(body: &[u8]) -> Result<crate::chat::answer::Answer, Failure> {
    match crate::chat::answer::parse_answer(body) {
        Ok(answer) => Ok(answer),
        Err(why) => Err(Failure::BadAnswer(
            match error_in(&String::from_utf8_lossy(body)) {
                Some(msg) => reported(&msg),
                None => why,
            },
        )),
    }
}

fn json_instead_of_stream(body: &[u8]) -> String {
    match error_in(&String::from_utf8_lossy(body)) {
        Some(msg) => reported(&msg),
        None => "provider answered JSON instead of an event stream".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stop_at_the_count_and_on_fatal_errors() {
        let hangup = Hangup::default();
        let far = Instant::now() + Duration::from_secs(60);
        let mut calls = 0;
        let r: Attempted<()> = with_retries(far, 1, &hangup, |_| {
            calls += 1;
            Err(Failure::Connect("x".into()))
        });
        assert_eq!((r.attempts, calls), (1, 1));

        let mut calls = 0;
        let r: Attempted<()> = with_retries(far, 3, &hangup, |_| {
            calls += 1;
            Err(Failure::Status {
                status: 400,
                retry_after: None,
                body: vec![],
            })
        });
        assert_eq!((r.attempts, calls), (1, 1), "4xx is not retried");

        let mut calls = 0;
        let r = with_retries(far, 3, &hangup, |_| {
            calls += 1;
            if calls < 3 {
                Err(Failure::Status {
                    status: 503,
                    retry_after: None,
                    body: vec![],
                })
            } else {
                Ok(7)
            }
        });
        assert_eq!((r.attempts, r.result.unwrap()), (3, 7));
    }

    #[test]
    fn retries_never_pass_the_deadline() {
        let hangup = Hangup::default();
        let soon = Instant::now() + Duration::from_millis(50);
        let started = Instant::now();
        let r: Attempted<()> = with_retries(soon, 10, &hangup, |_| {
            Err(Failure::Status {
                status: 429,
                retry_after: Some(Duration::from_secs(30)),
                body: vec![],
            })
        });
        assert_eq!(
            r.attempts, 1,
            "Retry-After beyond the deadline: give up at once"
        );
        assert!(started.elapsed() < Duration::from_millis(40));
    }

    #[test]
    fn a_departed_client_stops_the_retries() {
        let hangup = Hangup::default();
        hangup.fire();
        let far = Instant::now() + Duration::from_secs(60);
        let r: Attempted<()> = with_retries(far, 5, &hangup, |_| Err(Failure::Connect("x".into())));
        assert_eq!(r.attempts, 1);
    }

    #[test]
    fn error_answers() {
        assert!(matches!(check_answer(br#"{"error":{"message":"quota"}}"#),
            Err(Failure::BadAnswer(m)) if m.contains("quota")));
        assert!(check_answer(br#"{"choices":[{"message":{"content":"x"}}]}"#).is_ok());
    }

    #[test]
    fn trusted_certificates_come_from_pem_text() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = format!("{}{}", key.serialize_pem(), cert.pem());
        assert!(Upstream::trusting(pem.as_bytes()).is_ok());
        let none = Upstream::trusting(key.serialize_pem().as_bytes())
            .err()
            .unwrap();
        assert!(none.contains("no certificate"), "{none}");
        assert!(
            Upstream::trusting(b"")
                .err()
                .unwrap()
                .contains("no certificate")
        );
        let cut = &cert.pem()[..60];
        assert!(Upstream::trusting(cut.as_bytes()).is_err());
    }

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("http://127.0.0.1:8080/v1/chat/completions"));
        assert!(is_loopback_url("http://localhost/v1"));
        assert!(is_loopback_url("http://[::1]:9/x"));
        assert!(!is_loopback_url(
            "https://api.mammouth.ai/v1/chat/completions"
        ));
        assert!(!is_loopback_url("http://192.168.1.2:11434"));
        assert!(Target::new("http://127.0.0.1:1/v1".into(), None).direct);
        assert!(!Target::new("https://api.z.ai/v1".into(), None).direct);
    }

    #[test]
    fn targets_do_not_print_their_key() {
        let t = Target {
            url: "http://x".into(),
            key: Some("sk-secret".into()),
            direct: false,
        };
        assert!(!format!("{t:?}").contains("sk-secret"));
    }
}
