//! One upstream call's plumbing, shared by completions and streams: the retry loop, sending
//! a request with its key, and sorting ureq's errors into [`Failure`]s.

use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ureq::http::Response;

use super::resolver::Names;
use super::retry::{self, Failure};
use super::target::{Attempted, Target};
use crate::util::Hangup;

/// Connect timeout (within the request's own deadline).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest upstream error body kept for the error message.
pub(super) const MAX_ERROR_BODY: u64 = 64 * 1024;

/// Runs `attempt` up to `retries` times within `deadline`, backing off between attempts.
pub(super) fn with_retries<T>(
    deadline: Instant,
    retries: u32,
    hangup: &Hangup,
    mut attempt: impl FnMut(Duration) -> Result<T, Failure>,
) -> Attempted<T> {
    let mut attempts = 0;
    loop {
        if hangup.is_fired() {
            return Attempted {
                result: Err(Failure::Cancelled),
                attempts: attempts.max(1),
            };
        }
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
            // The client left (and its call was interrupted): not the model's doing.
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
        thread::sleep(wait);
    }
}

/// Sends the request. A 2xx comes back as the response; anything else as a [`Failure`].
pub(super) fn send(
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
pub(super) fn call_failure(e: ureq::Error, remaining: Duration) -> Failure {
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

/// Sorts a ureq error from reading a 2xx body. The provider has answered (and may bill
/// it), so only running out of time is worth another try — and the deadline is gone then.
pub(super) fn read_failure(e: ureq::Error, remaining: Duration) -> Failure {
    match e {
        ureq::Error::Timeout(_) => {
            Failure::Timeout(format!("answer not complete within {}", secs(remaining)))
        }
        ureq::Error::Io(io) => match io_failure(&io, remaining, "reading the answer") {
            Failure::BadAnswer(m) => Failure::BadCompletion(m),
            other => other,
        },
        ureq::Error::BodyExceedsLimit(n) => {
            Failure::BadCompletion(format!("answer larger than {n} bytes"))
        }
        other => Failure::BadCompletion(other.to_string()),
    }
}

pub(super) fn io_failure(e: &std::io::Error, remaining: Duration, doing: &str) -> Failure {
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
    fn a_call_the_client_left_is_cancelled_not_failed() {
        let hangup = Hangup::default();
        let far = Instant::now() + Duration::from_secs(60);
        let r: Attempted<()> = with_retries(far, 5, &hangup, |_| {
            hangup.fire();
            Err(Failure::Connect("interrupted".into()))
        });
        assert_eq!(r.attempts, 1);
        assert_eq!(r.result.unwrap_err(), Failure::Cancelled);
    }
}
