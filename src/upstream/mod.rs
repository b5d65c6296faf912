//! Calls to providers, through ureq: shared agents with pooled connections for completions
//! and streams alike, statuses read as data, retries with backoff inside the request's
//! deadline.
//!
//! Two kinds of agent: one honours the proxy settings of the environment (for cloud
//! providers), one goes direct (for Ollama and any upstream on a loopback address, which a
//! proxy could not reach); each kind is a few agents that calls in parallel spread over
//! (see `shards`). Every call runs under its request's [`abort::Abort`], so that a client who goes
//! away interrupts its own call at once — a blocked send or read on a pooled connection
//! included — without touching the others.

use std::time::{Duration, Instant};

use ureq::Agent;
use ureq::config::Config;

use crate::chat::provider_error::{error_in, reported};
use crate::util::Hangup;
use abort::Abort;
use call::{CONNECT_TIMEOUT, call_failure, read_failure, send, with_retries};
use retry::Failure;

pub mod breaker;
pub mod llama;
pub mod ollama;
pub mod retry;
pub mod scores;

mod abort;
mod call;
// Until the gateway's calls move onto the event loops.
#[allow(dead_code)]
pub(crate) mod client;
mod resolver;
mod shards;
mod stream;
mod target;
mod tcp;

use resolver::Names;
use shards::Shards;
pub use stream::{OpenStream, read_open_stream};
pub use target::{Attempted, Target};

/// Largest upstream answer read (a completion with base64 images can be large).
pub const MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// Largest document [`Upstream::get`] reads.
pub const MAX_DOCUMENT: u64 = 1024 * 1024;

/// A non-streamed answer: the upstream's body as received, and what the gateway reads of it.
#[derive(Debug)]
pub struct Completion {
    pub body: Vec<u8>,
    pub answer: crate::chat::answer::Answer,
}

/// The ureq side of the gateway.
pub struct Upstream {
    proxied: Shards,
    direct: Shards,
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
        let names = Names::default();
        Upstream {
            proxied: Shards::new(
                &base_config(ureq::Proxy::try_from_env(), tls.clone()),
                &names,
            ),
            direct: Shards::new(&base_config(None, tls), &names),
            names,
        }
    }

    fn shards(&self, target: &Target) -> &Shards {
        if target.direct {
            &self.direct
        } else {
            &self.proxied
        }
    }

    /// A non-streamed completion: the upstream's 2xx body (checked, and read once for the
    /// session and the log), or the last failure. The client's hang-up interrupts it at
    /// once ([`Failure::Cancelled`]); `deadline` bounds it all, sending included.
    pub fn complete(
        &self,
        target: &Target,
        body: &[u8],
        deadline: Instant,
        retries: u32,
        hangup: &Hangup,
    ) -> Attempted<Completion> {
        self.post(target, body, deadline, retries, hangup, |answer| {
            check_answer(&answer).map(|parsed| Completion {
                body: answer,
                answer: parsed,
            })
        })
    }

    /// A POST of a JSON body whose 2xx answer `read` checks (a bad answer is a
    /// [`Failure::BadAnswer`], not retried: the provider may have billed it), with retries
    /// within `deadline`, interrupted at once by the client's hang-up.
    pub fn post<T>(
        &self,
        target: &Target,
        body: &[u8],
        deadline: Instant,
        retries: u32,
        hangup: &Hangup,
        read: impl Fn(Vec<u8>) -> Result<T, Failure>,
    ) -> Attempted<T> {
        let (agent, _slot) = self.shards(target).take();
        let abort = Abort::new();
        let interrupt = abort.clone();
        hangup.on_hangup(move || interrupt.fire());
        let done = with_retries(deadline, retries, hangup, |remaining| {
            abort.scope(|| {
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
                read(answer)
            })
        });
        abort.finish();
        done
    }

    /// A GET of a small JSON document (at most [`MAX_DOCUMENT`] bytes), one attempt within
    /// `timeout`: the 2xx body, or why not (`sigoe -server URL -l` reads the gateway's
    /// `/api/models` this way).
    pub fn get(&self, target: &Target, timeout: Duration) -> Result<Vec<u8>, Failure> {
        let mut request = self
            .shards(target)
            .first()
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

    /// Starts a stream on a pooled connection: retried until the first event has arrived
    /// (never after). `first_wait` bounds the wait for the first event and `gap` each later
    /// gap; keep-alive comments extend neither.
    pub fn open_stream(
        &self,
        target: &Target,
        body: &[u8],
        first_wait: Duration,
        gap: Duration,
        retries: u32,
        hangup: &Hangup,
    ) -> Attempted<OpenStream> {
        let (agent, slot) = self.shards(target).take();
        let call = stream::Call {
            agent,
            names: &self.names,
            target,
            body,
        };
        stream::open(&call, slot, first_wait, gap, retries, hangup)
    }
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

/// A 2xx body must be a chat completion; a JSON error in a 200 is reported as such. Either
/// way it is not asked for again: the provider answered, and may bill each try.
fn check_answer(body: &[u8]) -> Result<crate::chat::answer::Answer, Failure> {
    match crate::chat::answer::parse_answer(body) {
        Ok(answer) => Ok(answer),
        Err(why) => Err(Failure::BadCompletion(
            match error_in(&String::from_utf8_lossy(body)) {
                Some(msg) => reported(&msg),
                None => why,
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers() {
        assert!(matches!(check_answer(br#"{"error":{"message":"quota"}}"#),
            Err(Failure::BadCompletion(m)) if m.contains("quota")));
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

    /// An HTTPS server on 127.0.0.1 that answers each connection once and closes it,
    /// reporting whether each handshake resumed a session.
    fn tls_server_once_per_connection(
        cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
        connections: usize,
    ) -> (String, std::thread::JoinHandle<Vec<bool>>) {
        use std::io::{Read, Write};
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let config = crate::http::tls::server_config(vec![cert.cert.der().clone()], key).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "https://localhost:{}/doc",
            listener.local_addr().unwrap().port()
        );
        let server = std::thread::spawn(move || {
            let mut resumed = Vec::new();
            for _ in 0..connections {
                let (tcp, _) = listener.accept().unwrap();
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).unwrap() == 1 {
                    head.push(byte[0]);
                }
                resumed.push(tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
                tls.write_all(answer.as_bytes()).unwrap();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
            resumed
        });
        (url, server)
    }

    #[test]
    fn a_new_tls_connection_resumes_the_session_of_the_one_before() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (url, server) = tls_server_once_per_connection(&cert, 3);
        let upstream = Upstream::trusting(cert.cert.pem().as_bytes()).unwrap();
        // `localhost` resolves through the shared resolver; the agent is the direct one.
        let target = Target::direct(url);
        for _ in 0..3 {
            let body = upstream.get(&target, Duration::from_secs(5)).unwrap();
            assert_eq!(body, b"{}");
        }
        // One rustls config for the agent (ureq builds one per connection for a call
        // configured per request): the second and third handshakes are resumptions.
        assert_eq!(server.join().unwrap(), [false, true, true]);
    }

    #[test]
    fn the_agents_of_a_kind_share_one_tls_session_cache() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (url, server) = tls_server_once_per_connection(&cert, 2);
        let upstream = Upstream::trusting(cert.cert.pem().as_bytes()).unwrap();
        let shards = upstream.shards(&Target::direct(url.clone()));
        // The first call's agent, then (its 16 slots held) the next one's.
        let (first, _) = shards.take();
        assert!(first.get(&url).call().is_ok());
        let held: Vec<_> = (0..shards::PER_SHARD).map(|_| shards.take()).collect();
        let (second, _) = shards.take();
        assert!(!std::ptr::eq(first, second));
        assert!(second.get(&url).call().is_ok());
        drop(held);
        assert_eq!(server.join().unwrap(), [false, true]);
    }

    #[test]
    fn a_stream_holds_its_slot_until_it_is_read_to_the_end() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/v1/chat/completions",
            listener.local_addr().unwrap()
        );
        let (go_on, wait) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(2).any(|w| w == b"{}") {
                let n = tcp.read(&mut buf).unwrap();
                assert!(n > 0, "the request came whole");
                got.extend_from_slice(&buf[..n]);
            }
            let event = |data: &str| format!("{:x}\r\ndata: {data}\n\n\r\n", data.len() + 8);
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
            let first = event(r#"{"choices":[{"delta":{"content":"a"}}]}"#);
            tcp.write_all(format!("{head}{first}").as_bytes()).unwrap();
            wait.recv().unwrap();
            let rest = format!("{}0\r\n\r\n", event("[DONE]"));
            tcp.write_all(rest.as_bytes()).unwrap();
        });
        let upstream = Upstream::new();
        let target = Target::direct(url);
        let open = upstream.open_stream(
            &target,
            b"{}",
            Duration::from_secs(5),
            Duration::from_secs(5),
            0,
            &Hangup::default(),
        );
        let open = open.result.expect("the stream opens");
        assert_eq!(upstream.direct.taken(), 1, "held while the stream runs");
        go_on.send(()).unwrap();
        let mut gathered = crate::chat::stream::Gathered::default();
        read_open_stream(open, &mut gathered, |_, _| Ok(()));
        assert_eq!(upstream.direct.taken(), 0, "given back at its end");
        server.join().unwrap();
    }
}
