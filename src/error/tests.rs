//! Every error in OpenAI's shape, with the statuses, codes and headers of the design's table.

use super::*;

fn all() -> Vec<Error> {
    let ip: IpAddr = "10.0.0.9".parse().unwrap();
    vec![
        Error::invalid("body is not JSON"),
        Error::ModelNotFound {
            model: "x".into(),
            reason: "not listed".into(),
        },
        Error::NotFound { path: "/x".into() },
        Error::MethodNotAllowed {
            method: "DELETE".into(),
            allow: "GET, PUT",
        },
        Error::BodyTooLarge { limit: 32 << 20 },
        Error::MemoryTooLarge {
            bytes: 2 << 20,
            limit: 1 << 20,
        },
        Error::HeadTooLarge { limit: 64 << 10 },
        Error::TooManyHeaders { limit: 100 },
        Error::IpNotAllowed { ip },
        Error::AdminOnly { ip },
        Error::InvalidApiKey { missing: true },
        Error::InvalidApiKey { missing: false },
        Error::ModelNotAllowed {
            model: "gpt41".into(),
            key: "alice".into(),
        },
        Error::LimitExceeded {
            limit: Limit::KeyRequests {
                key: "alice".into(),
                per_minute: 10,
            },
            retry_after_s: 5,
        },
        Error::LimitExceeded {
            limit: Limit::KeyConcurrency {
                key: "alice".into(),
                max: 2,
            },
            retry_after_s: 1,
        },
        Error::LimitExceeded {
            limit: Limit::IpRequests { ip, per_minute: 60 },
            retry_after_s: 2,
        },
        Error::MetricsOnly { ip },
        Error::ProviderNotConfigured {
            env: "MAMMOUTH_API_KEY",
        },
        Error::CircuitOpen {
            model: "gpt41".into(),
            retry_after_s: 300,
        },
        Error::Overloaded { retry_after_s: 1 },
        Error::ModelLoading {
            model: "local".into(),
            state: "loading".into(),
            retry_after_s: 5,
        },
        Error::ModelBusy {
            model: "local".into(),
            reason: "its queue is full".into(),
            retry_after_s: 5,
        },
        Error::ClientGone,
        Error::UpstreamClient {
            status: 401,
            message: "bad key".into(),
            kind: None,
            code: None,
            param: None,
        },
        Error::RateLimited {
            message: "slow down".into(),
            retry_after_s: 7,
        },
        Error::Upstream {
            message: "500".into(),
        },
        Error::UpstreamTimeout {
            message: "no answer in 180 s".into(),
        },
        Error::Internal {
            message: "panic".into(),
        },
        Error::File {
            path: "x.json".into(),
            line: 0,
            column: 0,
            message: "disk full".into(),
        },
        Error::Usage {
            message: "bad flag".into(),
        },
    ]
}

#[test]
fn every_error_has_the_openai_shape() {
    for e in all() {
        let body = e.body();
        let err = &body["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{e:?}"
        );
        assert!(err["type"].is_string(), "{e:?}");
        assert!(err["code"].is_string(), "{e:?}");
        assert!(err.as_object().unwrap().contains_key("param"), "{e:?}");
    }
}

#[test]
fn design_table_statuses_and_codes() {
    let ip: IpAddr = "10.0.0.9".parse().unwrap();
    let cases = [
        (Error::invalid("x"), 400, "invalid_request"),
        (
            Error::ModelNotFound {
                model: "m".into(),
                reason: "r".into(),
            },
            404,
            "model_not_found",
        ),
        (Error::BodyTooLarge { limit: 1 }, 413, "body_too_large"),
        (
            Error::MemoryTooLarge { bytes: 2, limit: 1 },
            413,
            "memory_too_large",
        ),
        (Error::IpNotAllowed { ip }, 403, "ip_not_allowed"),
        (Error::MetricsOnly { ip }, 403, "metrics_not_allowed"),
        (
            Error::InvalidApiKey { missing: true },
            401,
            "invalid_api_key",
        ),
        (
            Error::ModelNotAllowed {
                model: "m".into(),
                key: "k".into(),
            },
            403,
            "model_not_allowed",
        ),
        (
            Error::LimitExceeded {
                limit: Limit::IpRequests { ip, per_minute: 1 },
                retry_after_s: 3,
            },
            429,
            "rate_limit_exceeded",
        ),
        (
            Error::ProviderNotConfigured { env: "ZAI_API_KEY" },
            503,
            "provider_not_configured",
        ),
        (
            Error::CircuitOpen {
                model: "m".into(),
                retry_after_s: 3,
            },
            503,
            "circuit_open",
        ),
        (Error::Overloaded { retry_after_s: 1 }, 503, "overloaded"),
        (
            Error::ModelLoading {
                model: "m".into(),
                state: "s".into(),
                retry_after_s: 5,
            },
            503,
            "model_loading",
        ),
        (
            Error::ModelBusy {
                model: "m".into(),
                reason: "r".into(),
                retry_after_s: 5,
            },
            429,
            "model_busy",
        ),
        (Error::ClientGone, 499, "client_gone"),
        (
            Error::RateLimited {
                message: "m".into(),
                retry_after_s: 2,
            },
            429,
            "rate_limited",
        ),
        (
            Error::Upstream {
                message: "m".into(),
            },
            502,
            "upstream_error",
        ),
        (
            Error::UpstreamTimeout {
                message: "m".into(),
            },
            504,
            "upstream_timeout",
        ),
    ];
    for (e, status, code) in cases {
        assert_eq!((e.status(), e.code()), (status, code), "{e:?}");
    }
}

#[test]
fn retry_headers() {
    let has = |e: &Error, n: &str, v: &str| {
        e.headers()
            .iter()
            .any(|(hn, hv)| hn.eq_ignore_ascii_case(n) && hv == v)
    };
    let open = Error::CircuitOpen {
        model: "m".into(),
        retry_after_s: 12,
    };
    assert!(has(&open, "retry-after", "12"));
    // Minutes away: the SDKs must not sleep that long inside one call.
    assert!(has(&open, "x-should-retry", "false"));
    assert!(has(
        &Error::Overloaded { retry_after_s: 1 },
        "retry-after",
        "1"
    ));
    assert!(has(
        &Error::Upstream {
            message: "m".into()
        },
        "x-should-retry",
        "false"
    ));
    assert!(has(
        &Error::UpstreamTimeout {
            message: "m".into()
        },
        "x-should-retry",
        "false"
    ));
    assert!(has(
        &Error::ProviderNotConfigured { env: "X" },
        "x-should-retry",
        "false"
    ));
    assert!(has(
        &Error::MethodNotAllowed {
            method: "GET".into(),
            allow: "POST"
        },
        "allow",
        "POST"
    ));
    for e in [
        Error::ModelLoading {
            model: "m".into(),
            state: "s".into(),
            retry_after_s: 5,
        },
        Error::ModelBusy {
            model: "m".into(),
            reason: "r".into(),
            retry_after_s: 3,
        },
    ] {
        let secs = if e.status() == 503 { "5" } else { "3" };
        assert!(has(&e, "retry-after", secs), "{e:?}");
        // The SDKs' own retries, after Retry-After, are welcome here.
        assert!(!has(&e, "x-should-retry", "false"), "{e:?}");
    }
    let limited = Error::LimitExceeded {
        limit: Limit::KeyConcurrency {
            key: "k".into(),
            max: 1,
        },
        retry_after_s: 4,
    };
    assert!(has(&limited, "retry-after", "4"));
    assert!(!has(&limited, "x-should-retry", "false"));
    assert!(has(
        &Error::InvalidApiKey { missing: false },
        "www-authenticate",
        "Bearer realm=\"sigorest\""
    ));
    // Not retried by the gateway itself: the SDKs may retry these.
    assert!(!has(
        &Error::Overloaded { retry_after_s: 1 },
        "x-should-retry",
        "false"
    ));
}

#[test]
fn provider_not_configured_names_the_variable() {
    let e = Error::ProviderNotConfigured {
        env: "MOONSHOT_API_KEY",
    };
    assert!(e.to_string().contains("MOONSHOT_API_KEY"));
}

#[test]
fn upstream_client_error_keeps_status_and_message() {
    let e = Error::UpstreamClient {
        status: 422,
        message: "messages: too long".into(),
        kind: Some("invalid_request_error".into()),
        code: Some("context_length_exceeded".into()),
        param: Some("messages".into()),
    };
    assert_eq!(e.status(), 422);
    let b = e.body();
    assert_eq!(b["error"]["message"], "messages: too long");
    assert_eq!(b["error"]["code"], "context_length_exceeded");
    assert_eq!(b["error"]["param"], "messages");
}

#[test]
fn file_errors_name_file_line_and_column() {
    let e = Error::File {
        path: "memory.json".into(),
        line: 3,
        column: 14,
        message: "expected `,`".into(),
    };
    assert_eq!(e.to_string(), "memory.json:3:14: expected `,`");
    let e = Error::io(
        std::path::Path::new("/x/y"),
        &std::io::Error::other("denied"),
    );
    assert_eq!(e.to_string(), "/x/y: denied");
}

#[test]
fn storage_errors_answer_without_paths_or_os_errors() {
    let e = Error::io(
        std::path::Path::new("/srv/sigorest/.sessions/gpt41@x.json"),
        &std::io::Error::from_raw_os_error(28),
    );
    let message = e.body()["error"]["message"].as_str().unwrap().to_string();
    assert!(!message.contains("/srv"), "{message}");
    assert!(!message.contains("os error"), "{message}");
    assert!(e.needs_log());
    // The whole story stays available for the log and for start-up errors.
    assert!(e.to_string().contains("/srv/sigorest") && e.to_string().contains("os error"));
    assert!(!Error::invalid("x").needs_log());
}

#[test]
fn error_stays_small() {
    // Errors travel through Result on every request path.
    assert!(
        std::mem::size_of::<Error>() <= 128,
        "{}",
        std::mem::size_of::<Error>()
    );
}
