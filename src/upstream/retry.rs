//! How upstream failures are sorted and retried. Pure: the caller does the waiting.
//!
//! Retried: connect errors, timeouts before an answer, 5xx, 429 and bad answers. Not
//! retried: other 4xx (the request itself is wrong), a 2xx that is not a usable answer
//! (the provider has answered, and may have billed it), and a call the client left. Waits grow exponentially from
//! [`BASE`] with "equal jitter" (half fixed, half random), capped at [`CAP`], and never less
//! than what the upstream asked for with `Retry-After` / `retry-after-ms`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::breaker::Outcome;
use crate::chat::provider_error::ProviderError;
use crate::error::Error;

/// First backoff step.
pub const BASE: Duration = Duration::from_millis(250);
/// Longest computed backoff (an upstream's `Retry-After` may ask for more).
pub const CAP: Duration = Duration::from_secs(8);

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// No connection (refused, DNS, TLS handshake, reset before an answer).
    Connect(String),
    /// No answer in time.
    Timeout(String),
    /// The upstream answered with an error status.
    Status {
        status: u16,
        /// What `Retry-After` / `retry-after-ms` asked for.
        retry_after: Option<Duration>,
        /// The upstream's error body (up to a limit).
        body: Vec<u8>,
    },
    /// Not an answer at all (not HTTP, a stream that broke before its first event).
    BadAnswer(String),
    /// A 2xx whose body is not a usable answer (not a completion, an error object, cut
    /// short): the provider did answer and may bill each try, so it is not retried.
    BadCompletion(String),
    /// The client went away and the call was given up: says nothing about the model.
    Cancelled,
}

impl Failure {
    /// A connection that found nobody there: refused, unreachable, or a name that resolves
    /// to nothing (as `call::io_failure` words a failed connect: the error's kind).
    pub fn nobody_there(&self) -> bool {
        use std::io::ErrorKind::*;
        let Failure::Connect(m) = self else {
            return false;
        };
        m == super::client::HOST_NOT_FOUND
            || [
                ConnectionRefused,
                HostUnreachable,
                NetworkUnreachable,
                AddrNotAvailable,
            ]
            .iter()
            .any(|kind| kind.to_string() == *m)
    }

    /// Whether another attempt may help.
    pub fn retryable(&self) -> bool {
        match self {
            Failure::Connect(_) | Failure::Timeout(_) | Failure::BadAnswer(_) => true,
            Failure::BadCompletion(_) | Failure::Cancelled => false,
            Failure::Status { status, .. } => *status == 429 || *status >= 500,
        }
    }

    /// What the failure means for the model's circuit breaker: transport errors, timeouts,
    /// 5xx and garbage count; 4xx and 429 say nothing about the model's health, and
    /// neither does a client that went away.
    pub fn breaker_outcome(&self) -> Outcome {
        match self {
            Failure::Status { status, .. } if *status < 500 => Outcome::Neutral,
            Failure::Cancelled => Outcome::Neutral,
            _ => Outcome::Failure,
        }
    }

    /// The error the client sees once no attempt is left.
    pub fn into_error(self, model: &str) -> Error {
        match self {
            Failure::Connect(m) => Error::Upstream {
                message: format!("{model}: cannot reach the provider: {m}"),
            },
            Failure::Timeout(m) => Error::UpstreamTimeout {
                message: format!("{model}: {m}"),
            },
            Failure::BadAnswer(m) | Failure::BadCompletion(m) => Error::Upstream {
                message: format!("{model}: bad answer from the provider: {m}"),
            },
            Failure::Cancelled => Error::ClientGone,
            Failure::Status {
                status: 429,
                retry_after,
                body,
            } => Error::RateLimited {
                message: ProviderError::from_body(&body)
                    .message
                    .unwrap_or_else(|| "too many requests".to_string()),
                retry_after_s: retry_after.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64),
            },
            // A redirect (our client follows none: a POST must not be resent blindly) is the
            // base URL's fault, not an answer to relay: 3xx without its Location would
            // leave the client with nothing.
            Failure::Status { status, .. } if status < 400 => Error::Upstream {
                message: format!(
                    "{model}: provider answered {status}, a redirect: its base URL must name the API itself"
                ),
            },
            Failure::Status { status, body, .. } if status >= 500 => {
                let detail = ProviderError::from_body(&body)
                    .message
                    .unwrap_or_else(|| snippet(&body));
                Error::Upstream {
                    message: format!("{model}: provider answered {status}: {detail}"),
                }
            }
            Failure::Status { status, body, .. } => {
                let ProviderError {
                    message,
                    kind,
                    code,
                    param,
                } = ProviderError::from_body(&body);
                Error::UpstreamClient {
                    status,
                    message: message.unwrap_or_else(|| {
                        format!("provider answered {status}: {}", snippet(&body))
                    }),
                    kind,
                    code,
                    param,
                }
            }
        }
    }
}

/// The start of a body, for error messages: at most 200 characters, one line.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if one_line.trim().is_empty() {
        "(empty body)".to_string()
    } else {
        one_line.trim().to_string()
    }
}

/// How long to wait after the `attempt`-th failure (1-based). `jitter` is a random number in
/// `[0, 1)`; `asked` is what the upstream asked for.
pub fn backoff(attempt: u32, asked: Option<Duration>, jitter: f64) -> Duration {
    let exp = BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(CAP);
    let half = exp / 2;
    let computed = half + half.mul_f64(jitter.clamp(0.0, 1.0));
    asked.map_or(computed, |a| a.max(computed))
}

/// A random number in `[0, 1)` for jitter, from std's per-process random hash keys.
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Reads `retry-after-ms` (milliseconds) or `Retry-After` (seconds or an HTTP date).
pub fn retry_after(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(ms) = retry_after_ms.and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(
            (ms / 1000.0).min(MAX_RETRY_AFTER.as_secs_f64()),
        ));
    }
    let v = retry_after?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())));
    }
    let when = http_date(v)?;
    let wait = when.duration_since(now).unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The longest `Retry-After` taken from a provider, in any form (and passed on): a day.
/// (Capped before the conversion to a `Duration`, which a huge number would overflow.)
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// Parses an IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    // The year is bounded so that the day arithmetic cannot overflow (a provider could
    // send any number); a date outside it is not a date we act on.
    if !(1..=31).contains(&day)
        || !(1970..=9999).contains(&year)
        || !(0..24).contains(h)
        || !(0..60).contains(m)
        || !(0..61).contains(sec)
    {
        return None;
    }
    let secs = crate::logging::days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16, body: &str) -> Failure {
        Failure::Status {
            status: s,
            retry_after: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn what_is_retried() {
        assert!(Failure::Connect("refused".into()).retryable());
        assert!(Failure::Timeout("t".into()).retryable());
        assert!(Failure::BadAnswer("junk".into()).retryable());
        for s in [429, 500, 502, 503, 504] {
            assert!(status(s, "").retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 413, 422] {
            assert!(!status(s, "").retryable(), "{s}");
        }
        assert!(!Failure::BadCompletion("a 200 error".into()).retryable());
        assert!(!Failure::Cancelled.retryable());
    }

    #[test]
    fn what_counts_for_the_breaker() {
        assert_eq!(
            Failure::Connect("x".into()).breaker_outcome(),
            Outcome::Failure
        );
        assert_eq!(
            Failure::Timeout("x".into()).breaker_outcome(),
            Outcome::Failure
        );
        assert_eq!(
            Failure::BadAnswer("x".into()).breaker_outcome(),
            Outcome::Failure
        );
        assert_eq!(status(500, "").breaker_outcome(), Outcome::Failure);
        assert_eq!(status(429, "").breaker_outcome(), Outcome::Neutral);
        assert_eq!(status(401, "").breaker_outcome(), Outcome::Neutral);
        assert_eq!(Failure::Cancelled.breaker_outcome(), Outcome::Neutral);
        assert_eq!(
            Failure::BadCompletion("x".into()).breaker_outcome(),
            Outcome::Failure
        );
    }

    #[test]
    fn errors_the_client_sees() {
        let e = status(401, r#"{"error":{"message":"Invalid API key","type":"auth_error","code":"invalid_api_key","param":null}}"#)
            .into_error("gpt41");
        assert_eq!(e.status(), 401);
        assert_eq!(e.to_string(), "Invalid API key");
        assert_eq!(e.code(), "invalid_api_key");
        assert_eq!(e.kind(), "auth_error");

        let e = status(400, r#"{"error":"context too long"}"#).into_error("m");
        assert_eq!(
            (e.status(), e.to_string().as_str()),
            (400, "context too long")
        );
        let e = status(404, "<html>nope</html>").into_error("m");
        assert!(
            e.to_string().contains("404") && e.to_string().contains("nope"),
            "{e}"
        );

        let e = Failure::Status {
            status: 429,
            retry_after: Some(Duration::from_millis(1500)),
            body: vec![],
        }
        .into_error("m");
        assert_eq!(
            e,
            Error::RateLimited {
                message: "too many requests".into(),
                retry_after_s: 2
            }
        );

        let e = status(503, r#"{"error":{"message":"overloaded"}}"#).into_error("gpt41");
        assert_eq!(e.status(), 502);
        assert!(
            e.to_string().contains("503") && e.to_string().contains("overloaded"),
            "{e}"
        );
        assert_eq!(
            Failure::Timeout("no answer in 2 s".into())
                .into_error("m")
                .status(),
            504
        );
        assert_eq!(
            Failure::Connect("refused".into()).into_error("m").status(),
            502
        );
        assert_eq!(
            Failure::BadAnswer("junk".into()).into_error("m").code(),
            "upstream_error"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        assert_eq!(backoff(1, None, 0.0), Duration::from_millis(125));
        assert_eq!(backoff(1, None, 0.999_999).as_millis(), 249);
        assert_eq!(backoff(2, None, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(3, None, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(30, None, 0.0), CAP / 2);
        assert!(backoff(30, None, 1.0) <= CAP);
        assert_eq!(
            backoff(1, Some(Duration::from_secs(3)), 0.5),
            Duration::from_secs(3)
        );
        assert_eq!(backoff(0, None, 0.0), Duration::from_millis(125));
    }

    #[test]
    fn jitter_is_in_range_and_varies() {
        let samples: Vec<f64> = (0..64).map(|_| jitter()).collect();
        assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
        assert!(samples.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            retry_after(None, Some("2"), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(None, Some(" 0.5 "), now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            retry_after(Some("1500"), Some("9"), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(None, Some("Sun, 06 Nov 1994 08:49:47 GMT"), now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after(None, Some("Sun, 06 Nov 1994 08:49:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(None, Some("soon"), now), None);
        assert_eq!(retry_after(None, Some("-3"), now), None);
        assert_eq!(retry_after(None, Some("NaN"), now), None);
        assert_eq!(retry_after(None, None, now), None);
        assert_eq!(
            retry_after(None, Some("1e300"), now),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            retry_after(None, Some("Sun, 99 Nov 1994 08:49:00 GMT"), now),
            None
        );
    }

    #[test]
    fn retry_after_dates_with_absurd_years_are_ignored_without_overflow() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        for year in [
            "9223372036854775807",
            "-9223372036854775808",
            "99999999999",
            "1969",
        ] {
            let v = format!("Sun, 06 Nov {year} 08:49:37 GMT");
            assert_eq!(retry_after(None, Some(&v), now), None, "{v}");
        }
        // The far end of the range still reads, as a day at most, as the other forms are
        // (a client was told to wait 8,000 years).
        assert_eq!(
            retry_after(None, Some("Fri, 31 Dec 9999 23:59:59 GMT"), now),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            retry_after(Some("1e300"), None, now),
            Some(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn civil_days() {
        assert_eq!(crate::logging::days_from_civil(1970, 1, 1), 0);
        assert_eq!(crate::logging::days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(crate::logging::days_from_civil(2024, 2, 29), 19_782);
    }
}
