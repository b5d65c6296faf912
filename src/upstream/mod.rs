//! Calls to providers, through our HTTP client on the event loops (`client`): pooled
//! connections for completions and streams alike, statuses read as data, retries with
//! backoff inside the request's deadline. A call is a task that waits for its sockets; the
//! client's hang-up ends it at once, whatever it waits for, without touching the others.
//!
//! Calls to cloud providers honour the proxy settings of the environment; calls to Ollama
//! and to any upstream on a loopback address never do. Threads that are not event loops
//! (sigoe, the background threads) run a call to its end with [`crate::rt::block_on`].

use std::time::{Duration, Instant};

use crate::chat::provider_error::{error_in, reported};
use crate::rt::time::timeout_at;
use crate::util::Hangup;
use call::{read_failure, read_timeout, send_as, with_retries};
use client::Client;
use retry::Failure;

pub mod breaker;
pub mod llama;
pub mod ollama;
pub mod retry;
pub mod scores;

mod call;
pub(crate) mod client;
mod stream;
mod target;

pub use stream::{Keepalive, OpenStream, read_open_stream};
pub use target::{Attempted, Target};

/// Largest upstream answer read (a completion with base64 images can be large).
pub const MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// Largest document [`Upstream::get_blocking`] reads.
pub const MAX_DOCUMENT: u64 = 1024 * 1024;

/// A non-streamed answer: the upstream's body as received, and what the gateway reads of it.
#[derive(Debug)]
pub struct Completion {
    pub body: Vec<u8>,
    pub answer: crate::chat::answer::Answer,
}

/// The gateway's side of its providers.
pub struct Upstream {
    client: Client,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::new()
    }
}

impl Upstream {
    pub fn new() -> Upstream {
        Upstream {
            client: Client::new(),
        }
    }

    /// An upstream whose HTTPS connections trust only the certificates in `pem` (PEM text
    /// holding one or more certificates; other items are skipped) instead of the built-in
    /// web roots: `sigoe -cacert`, for a gateway with a self-signed certificate. The error
    /// says what is wrong with the text.
    pub fn trusting(pem: &[u8]) -> Result<Upstream, String> {
        use rustls::pki_types::pem::{PemObject, SectionKind};
        let mut certs = Vec::new();
        for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem) {
            match item {
                Ok((SectionKind::Certificate, der)) => certs.push(der.into()),
                Ok(_) => {}
                Err(e) => return Err(format!("not valid PEM: {e}")),
            }
        }
        if certs.is_empty() {
            return Err("no certificate in it (expected -----BEGIN CERTIFICATE-----)".into());
        }
        Ok(Upstream {
            client: Client::with_roots(Some(certs), &crate::env::Env::from_process()),
        })
    }

    /// A non-streamed completion: the upstream's 2xx body (checked, and read once for the
    /// session and the log: all of it when `whole`, else its usage), or the last failure.
    /// The client's hang-up ends it at once ([`Failure::Cancelled`]); `deadline` bounds it
    /// all, sending included.
    pub async fn complete(
        &self,
        target: &Target,
        body: &[u8],
        deadline: Instant,
        retries: u32,
        hangup: &Hangup,
        whole: bool,
    ) -> Attempted<Completion> {
        self.post(target, body, deadline, retries, hangup, |answer| {
            let answer = as_utf8(answer);
            check_answer(&answer, whole).map(|parsed| Completion {
                body: answer,
                answer: parsed,
            })
        })
        .await
    }

    /// A POST of a JSON body whose 2xx answer `read` checks (a bad answer is a
    /// [`Failure::BadCompletion`], not retried: the provider may have billed it), with
    /// retries within `deadline`, ended at once by the client's hang-up.
    pub async fn post<T>(
        &self,
        target: &Target,
        body: &[u8],
        deadline: Instant,
        retries: u32,
        hangup: &Hangup,
        read: impl Fn(Vec<u8>) -> Result<T, Failure>,
    ) -> Attempted<T> {
        let read = &read;
        with_retries(deadline, retries, hangup, move |remaining| async move {
            self.fetch("POST", target, body, MAX_ANSWER, remaining)
                .await
                .and_then(read)
        })
        .await
    }

    /// A GET of a small JSON document (at most [`MAX_DOCUMENT`] bytes), one attempt within
    /// `timeout`, on a thread that is not an event loop: the 2xx body, or why not
    /// (`sigoe -server URL -l` reads the gateway's `/api/models` this way).
    pub fn get_blocking(&self, target: &Target, timeout: Duration) -> Result<Vec<u8>, Failure> {
        self.fetch_blocking("GET", target, &[], MAX_DOCUMENT, timeout)
    }

    /// One request (a POST sends `body` as JSON), one attempt within `timeout`: the 2xx
    /// body up to `limit` bytes, or why not (an error status is [`Failure::Status`]).
    pub async fn fetch(
        &self,
        method: &str,
        target: &Target,
        body: &[u8],
        limit: u64,
        timeout: Duration,
    ) -> Result<Vec<u8>, Failure> {
        let until = Instant::now() + timeout;
        let mut resp = send_as(&self.client, method, target, body, until).await?;
        match timeout_at(until, std::pin::pin!(resp.body.read_all(limit))).await {
            Err(_) => Err(read_timeout(timeout)),
            Ok(Err(e)) => Err(read_failure(e, timeout)),
            Ok(Ok(body)) => Ok(body),
        }
    }

    /// [`Upstream::fetch`] on a thread that is not an event loop.
    pub fn fetch_blocking(
        &self,
        method: &str,
        target: &Target,
        body: &[u8],
        limit: u64,
        timeout: Duration,
    ) -> Result<Vec<u8>, Failure> {
        crate::rt::block_on(self.fetch(method, target, body, limit, timeout))
            .unwrap_or_else(|e| Err(Failure::Connect(e.to_string())))
    }

    /// Starts a stream on a pooled connection: retried until the first event has arrived
    /// (never after). `first_wait` bounds the wait for the first event and `gap` each later
    /// gap; keep-alive comments extend neither.
    pub async fn open_stream(
        &self,
        target: &Target,
        body: &[u8],
        first_wait: Duration,
        gap: Duration,
        retries: u32,
        hangup: &Hangup,
    ) -> Attempted<OpenStream> {
        stream::open(
            &self.client,
            target,
            body,
            (first_wait, gap),
            retries,
            hangup,
        )
        .await
    }
}

/// `body` itself when it is UTF-8 (no copy), else with each byte that is not read as U+FFFD
/// (a local server that cut a character between two tokens): the answer is parsed and
/// relayed as valid JSON instead of lost or passed on broken. Checked here, before the
/// parse, because the cheap read of an answer relayed as it came skips its strings.
pub(crate) fn as_utf8(body: Vec<u8>) -> Vec<u8> {
    match String::from_utf8(body) {
        Ok(text) => text.into_bytes(),
        Err(e) => String::from_utf8_lossy(e.as_bytes())
            .into_owned()
            .into_bytes(),
    }
}

/// A 2xx body must be a chat completion; a JSON error in a 200 is reported as such. Either
/// way it is not asked for again: the provider answered, and may bill each try. Read whole
/// when `whole`, else only its usage.
fn check_answer(body: &[u8], whole: bool) -> Result<crate::chat::answer::Answer, Failure> {
    let read = if whole {
        crate::chat::answer::parse_answer(body)
    } else {
        crate::chat::answer::parse_usage(body)
    };
    match read {
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
        for whole in [true, false] {
            assert!(
                matches!(check_answer(br#"{"error":{"message":"quota"}}"#, whole),
                Err(Failure::BadCompletion(m)) if m.contains("quota"))
            );
            assert!(check_answer(br#"{"choices":[{"message":{"content":"x"}}]}"#, whole).is_ok());
            assert!(matches!(check_answer(br#"{"choices":[]}"#, whole),
                Err(Failure::BadCompletion(m)) if m.contains("no choices")));
            assert!(matches!(check_answer(b"<html>", whole),
                Err(Failure::BadCompletion(m)) if m.contains("not JSON")));
        }
        let usage = check_answer(
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            false,
        )
        .unwrap()
        .usage;
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens),
            (Some(3), Some(4))
        );
    }

    #[test]
    fn an_answer_that_is_not_utf8_is_read_with_replacement_characters() {
        let valid = r#"{"choices":[{"message":{"content":"café"}}]}"#.as_bytes().to_vec();
        let at = valid.as_ptr();
        let same = as_utf8(valid);
        assert_eq!(same.as_ptr(), at, "a valid body is not copied");
        let body = b"{\"choices\":[{\"message\":{\"content\":\"caf\xe9 \xff\xfe ok\"}}]}".to_vec();
        let fixed = as_utf8(body);
        assert_eq!(
            fixed,
            "{\"choices\":[{\"message\":{\"content\":\"caf\u{fffd} \u{fffd}\u{fffd} ok\"}}]}"
                .as_bytes()
        );
        for whole in [true, false] {
            assert!(check_answer(&fixed, whole).is_ok());
        }
        assert_eq!(
            check_answer(&fixed, true).unwrap().content,
            "caf\u{fffd} \u{fffd}\u{fffd} ok"
        );
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
    fn a_new_tls_connection_resumes_the_session_of_the_one_before() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (url, server) = client::tests::tls_server_with(&cert, 3);
        let upstream = Upstream::trusting(cert.cert.pem().as_bytes()).unwrap();
        let target = Target::direct(url);
        for _ in 0..3 {
            let body = upstream
                .get_blocking(&target, Duration::from_secs(5))
                .unwrap();
            assert_eq!(body, b"{}");
        }
        // One rustls config for the client: the second and third handshakes are resumptions.
        assert_eq!(server.join().unwrap(), [false, true, true]);
    }

    /// A provider answering one chat stream in chunked SSE: the events `before` at once,
    /// then — when the test sends on the channel — the events `after` and the body's end,
    /// the connection then kept open a moment. Returns its URL, the channel and its thread.
    fn scripted_stream(
        before: &'static [&'static str],
        after: &'static [&'static str],
    ) -> (
        String,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
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
            let events = |list: &[&str]| -> String {
                list.iter()
                    .map(|data| format!("{:x}\r\ndata: {data}\n\n\r\n", data.len() + 8))
                    .collect()
            };
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
            tcp.write_all(format!("{head}{}", events(before)).as_bytes())
                .unwrap();
            wait.recv().unwrap();
            tcp.write_all(format!("{}0\r\n\r\n", events(after)).as_bytes())
                .unwrap();
            // Kept open a moment: the connection may be pooled, or asked again, meanwhile.
            tcp.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let _ = tcp.read(&mut buf);
        });
        (url, go_on, server)
    }

    /// Opens a stream at `url` and reads it to its end; `opened` runs once it is open.
    async fn read_whole_stream(
        upstream: &Upstream,
        url: String,
        opened: impl FnOnce(),
    ) -> (crate::chat::stream::StreamEnd, String) {
        let target = Target::direct(url);
        let hangup = Hangup::default();
        let open = upstream
            .open_stream(
                &target,
                b"{}",
                Duration::from_secs(5),
                Duration::from_secs(5),
                0,
                &hangup,
            )
            .await;
        let open = open.result.expect("the stream opens");
        opened();
        let mut gathered = crate::chat::stream::Gathered::keeping(true);
        let end = read_open_stream(
            open,
            &mut gathered,
            &hangup,
            |_, _| Ok(()),
            async || Ok(()),
            None,
        )
        .await;
        (end, gathered.text().to_string())
    }

    const FIRST: &str = r#"{"choices":[{"delta":{"content":"a"}}]}"#;

    #[test]
    fn a_stream_read_to_its_end_gives_its_connection_back() {
        let (url, go_on, server) = scripted_stream(&[FIRST], &["[DONE]"]);
        let upstream = Upstream::new();
        let (end, text, idle) = crate::rt::block_on(async {
            let (end, text) = read_whole_stream(&upstream, url, || go_on.send(()).unwrap()).await;
            (end, text, client::idle_here())
        })
        .unwrap();
        assert!(
            matches!(end, crate::chat::stream::StreamEnd::Done),
            "{end:?}"
        );
        assert_eq!(text, "a");
        assert_eq!(idle, 1, "the connection went back to the pool");
        drop(upstream);
        server.join().unwrap();
    }

    #[test]
    fn the_end_of_a_stream_is_not_waited_for_and_is_read_after() {
        // The provider sends `[DONE]` and ends its chunked body only when told: after the
        // reader has returned. A reader that waited for the end would wait in vain (up to
        // its drain time, then drop the connection).
        let (url, end_body, server) = scripted_stream(&[FIRST, "[DONE]"], &[]);
        let upstream = Upstream::new();
        let (end, idle_at_end, pooled) = crate::rt::block_on(async {
            let (end, _) = read_whole_stream(&upstream, url, || ()).await;
            let idle_at_end = client::idle_here();
            end_body.send(()).unwrap();
            // The rest of the body is read by a task of its own, which pools the connection.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while client::idle_here() == 0 && std::time::Instant::now() < deadline {
                crate::rt::time::sleep(Duration::from_millis(5)).await;
            }
            (end, idle_at_end, client::idle_here())
        })
        .unwrap();
        assert!(
            matches!(end, crate::chat::stream::StreamEnd::Done),
            "{end:?}"
        );
        assert_eq!(idle_at_end, 0, "the body had not ended yet");
        assert_eq!(
            pooled, 1,
            "the connection went back to the pool once it ended"
        );
        drop(upstream);
        server.join().unwrap();
    }
    #[test]
    fn a_whole_answer_ends_without_done_and_its_connection_is_closed() {
        // The finish reason, then the usage chunk, then neither `[DONE]` nor the end of the
        // body (until the test says so, after the reader has returned): the answer is whole,
        // so the reader ends it after its short grace rather than the 5-s gap. The body is
        // still open: the connection cannot serve another request and is not pooled.
        const FINISH: &str = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        const USAGE: &str = r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let (url, end_body, server) = scripted_stream(&[FIRST, FINISH, USAGE], &[]);
        let upstream = Upstream::new();
        let (end, text, idle) = crate::rt::block_on(async {
            let (end, text) = read_whole_stream(&upstream, url, || ()).await;
            (end, text, client::idle_here())
        })
        .unwrap();
        end_body.send(()).unwrap();
        assert!(
            matches!(end, crate::chat::stream::StreamEnd::Done),
            "{end:?}"
        );
        assert_eq!(text, "a");
        assert_eq!(idle, 0, "the connection was not pooled");
        drop(upstream);
        server.join().unwrap();
    }
}
