//! One upstream call's plumbing, shared by completions and streams: the retry loop, sending
//! a request with its key, and sorting the client's errors into [`Failure`]s.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use super::client::{self, BodyError, Client, Response};
use super::retry::{self, Failure};
use super::target::{Attempted, Target, request_head};
use crate::rt::time::{sleep, timeout_at};
use crate::util::Hangup;

/// Largest upstream error body kept for the error message.
pub(super) const MAX_ERROR_BODY: u64 = 64 * 1024;

/// Runs `fut` unless the client hangs up first ([`Failure::Cancelled`] then). Pinned by
/// the caller, for the reason `timeout_at` gives.
pub(super) async fn unless_gone<T, F: Future<Output = Result<T, Failure>> + ?Sized>(
    hangup: &Hangup,
    mut fut: std::pin::Pin<&mut F>,
) -> Result<T, Failure> {
    let mut gone = pin!(hangup.fired());
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        gone.as_mut().poll(cx).map(|()| Err(Failure::Cancelled))
    })
    .await
}

/// Runs `attempt` up to `retries` times within `deadline`, backing off between attempts;
/// the client's hang-up ends it all at once. Nothing is sent once the deadline has passed:
/// with no time left before the first attempt the result is a timeout with no attempt (the
/// provider was not called, and nothing of it is to be counted), before a later one the
/// failure of the attempt before.
pub(super) async fn with_retries<T, F, Fut>(
    deadline: Instant,
    retries: u32,
    hangup: &Hangup,
    mut attempt: F,
) -> Attempted<T>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut attempts = 0;
    let mut last = None;
    loop {
        if hangup.is_fired() {
            return Attempted {
                result: Err(Failure::Cancelled),
                attempts: attempts.max(1),
            };
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            let failure = last.unwrap_or_else(|| {
                Failure::Timeout("no time left within the request's timeout".into())
            });
            return Attempted {
                result: Err(failure),
                attempts,
            };
        }
        attempts += 1;
        let result = unless_gone(hangup, std::pin::pin!(attempt(remaining))).await;
        let failure = match result {
            Ok(v) => {
                return Attempted {
                    result: Ok(v),
                    attempts,
                };
            }
            // The client left (and its call was given up): not the model's doing.
            Err(_) if hangup.is_fired() => Failure::Cancelled,
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
        let waited = unless_gone(
            hangup,
            std::pin::pin!(async {
                sleep(wait).await;
                Ok(())
            }),
        )
        .await;
        if waited.is_err() {
            return Attempted {
                result: Err(Failure::Cancelled),
                attempts,
            };
        }
        last = Some(failure);
    }
}

/// Sends `body` to the target (POST, JSON, with its key). A 2xx comes back as the
/// response; anything else as a [`Failure`] (an error status with its body, read within
/// `deadline`).
pub(super) async fn send(
    client: &Client,
    target: &Target,
    body: &[u8],
    deadline: Instant,
) -> Result<Response, Failure> {
    send_as(client, "POST", target, body, deadline).await
}

/// The same with any method (`GET` for documents).
pub(super) async fn send_as(
    client: &Client,
    method: &str,
    target: &Target,
    body: &[u8],
    deadline: Instant,
) -> Result<Response, Failure> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let url = target
        .parsed()
        .map_err(|e| Failure::Connect(e.to_string()))?;
    // A POST's head is the target's own, made once; any other is made here.
    let other;
    let head = if method == "POST" {
        target.post_head()
    } else {
        other = request_head(method, url, target.key(), false);
        &other
    };
    let req = client::Request {
        head,
        url,
        body,
        length: method == "POST",
        head_request: method == "HEAD",
        direct: target.is_direct(),
    };
    let sent = timeout_at(deadline, std::pin::pin!(client.send(&req))).await;
    let mut resp = match sent {
        Err(_) => {
            // After retries, what was left is less than the client's `timeout`: said so.
            return Err(Failure::Timeout(format!(
                "no answer in the {} left of the request's timeout",
                secs(remaining)
            )));
        }
        Ok(Err(e)) => return Err(call_failure(e, remaining)),
        Ok(Ok(resp)) => resp,
    };
    let status = resp.head.status;
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let retry_after = retry::retry_after(
        resp.head.retry_after_ms.as_deref(),
        resp.head.retry_after.as_deref(),
        SystemTime::now(),
    );
    let body = error_body(&mut resp.body, deadline).await;
    Err(Failure::Status {
        status,
        retry_after,
        body,
    })
}

/// Up to [`MAX_ERROR_BODY`] bytes of an answer that is not the one asked for (an error),
/// by `deadline`; empty when it does not come.
pub(super) async fn error_body(body: &mut client::Body, deadline: Instant) -> Vec<u8> {
    match timeout_at(deadline, std::pin::pin!(body.read_all(MAX_ERROR_BODY))).await {
        Ok(Ok(b)) => b,
        _ => Vec::new(),
    }
}

/// Sorts a client error from connecting, sending the request or waiting for its head.
pub(super) fn call_failure(e: client::Error, remaining: Duration) -> Failure {
    match e {
        // (A name not found is the client's own `HOST_NOT_FOUND`, which says itself.)
        client::Error::Connect(io) | client::Error::Send(io) | client::Error::Receive(io) => {
            io_failure(&io, remaining, "connecting")
        }
        client::Error::Proxy(status) => {
            Failure::Connect(format!("the proxy refused the tunnel ({status})"))
        }
        client::Error::Protocol(m) => Failure::BadAnswer(m),
    }
}

/// Sorts an error from reading a 2xx body. The provider has answered (and may bill it), so
/// only running out of time is worth another try — and the deadline is gone then.
pub(super) fn read_failure(e: BodyError, remaining: Duration) -> Failure {
    match e {
        BodyError::Io(io) => match io_failure(&io, remaining, "reading the answer") {
            Failure::BadAnswer(m) => Failure::BadCompletion(m),
            other => other,
        },
        BodyError::Protocol(m) => Failure::BadCompletion(m),
        BodyError::TooLarge(n) => Failure::BadCompletion(format!("answer larger than {n} bytes")),
    }
}

/// A body that did not come in time.
pub(super) fn read_timeout(remaining: Duration) -> Failure {
    Failure::Timeout(format!("answer not complete within {}", secs(remaining)))
}

pub(super) fn io_failure(e: &io::Error, remaining: Duration, doing: &str) -> Failure {
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

pub(super) fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::block_on;

    #[test]
    fn a_failed_connect_says_whether_anybody_was_there() {
        let t = Duration::from_secs(2);
        let os = |errno| {
            call_failure(
                client::Error::Connect(io::Error::from_raw_os_error(errno)),
                t,
            )
        };
        // ECONNREFUSED, EHOSTUNREACH, ENETUNREACH: nobody there.
        for errno in [111, 113, 101] {
            let f = os(errno);
            assert!(f.nobody_there(), "{f:?}");
        }
        let unknown = io::Error::new(io::ErrorKind::NotFound, client::HOST_NOT_FOUND);
        assert!(call_failure(client::Error::Connect(unknown), t).nobody_there());
        // ECONNRESET before the answer, a timeout, a status: somebody, answering badly.
        let reset = call_failure(client::Error::Receive(io::Error::from_raw_os_error(104)), t);
        assert!(
            matches!(reset, Failure::Connect(_)) && !reset.nobody_there(),
            "{reset:?}"
        );
        assert!(!os(110).nobody_there());
        assert!(!Failure::BadAnswer("connection refused".into()).nobody_there());
    }

    fn run<T>(
        deadline: Instant,
        retries: u32,
        hangup: &Hangup,
        attempt: impl FnMut(Duration) -> Result<T, Failure>,
    ) -> Attempted<T> {
        let attempt = std::cell::RefCell::new(attempt);
        block_on(with_retries(deadline, retries, hangup, |left| {
            let r = (attempt.borrow_mut())(left);
            async move { r }
        }))
        .unwrap()
    }

    #[test]
    fn retries_stop_at_the_count_and_on_fatal_errors() {
        let hangup = Hangup::default();
        let far = Instant::now() + Duration::from_secs(60);
        let mut calls = 0;
        let r: Attempted<()> = run(far, 1, &hangup, |_| {
            calls += 1;
            Err(Failure::Connect("x".into()))
        });
        assert_eq!((r.attempts, calls), (1, 1));

        let mut calls = 0;
        let r: Attempted<()> = run(far, 3, &hangup, |_| {
            calls += 1;
            Err(Failure::Status {
                status: 400,
                retry_after: None,
                body: vec![],
            })
        });
        assert_eq!((r.attempts, calls), (1, 1), "4xx is not retried");

        let mut calls = 0;
        let r = run(far, 3, &hangup, |_| {
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
        let r: Attempted<()> = run(soon, 10, &hangup, |_| {
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
    fn nothing_is_sent_once_the_deadline_has_passed() {
        let hangup = Hangup::default();
        let past = Instant::now();
        let mut calls = 0;
        let r: Attempted<()> = run(past, 3, &hangup, |_| {
            calls += 1;
            Ok(())
        });
        assert_eq!((r.attempts, calls), (0, 0), "no attempt is counted or made");
        assert!(matches!(r.result, Err(Failure::Timeout(_))), "{r:?}");
    }

    #[test]
    fn a_departed_client_stops_the_retries() {
        let hangup = Hangup::default();
        hangup.fire();
        let far = Instant::now() + Duration::from_secs(60);
        let r: Attempted<()> = run(far, 5, &hangup, |_| Err(Failure::Connect("x".into())));
        assert_eq!(r.attempts, 1);
    }

    #[test]
    fn a_call_the_client_left_is_cancelled_not_failed() {
        let hangup = Hangup::default();
        let far = Instant::now() + Duration::from_secs(60);
        let r: Attempted<()> = run(far, 5, &hangup, |_| {
            hangup.fire();
            Err(Failure::Connect("interrupted".into()))
        });
        assert_eq!(r.attempts, 1);
        assert_eq!(r.result.unwrap_err(), Failure::Cancelled);
    }

    #[test]
    fn a_hang_up_ends_a_call_that_waits() {
        let hangup = Hangup::default();
        let far = Instant::now() + Duration::from_secs(60);
        let fire = hangup.clone();
        let started = Instant::now();
        let r: Attempted<()> = block_on(async {
            crate::rt::spawn(async move {
                sleep(Duration::from_millis(20)).await;
                fire.fire();
            });
            with_retries(far, 3, &hangup, |_| async {
                sleep(Duration::from_secs(30)).await;
                Ok(())
            })
            .await
        })
        .unwrap();
        assert_eq!(r.result.unwrap_err(), Failure::Cancelled);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
