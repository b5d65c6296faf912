//! Who is calling: the context the router hands every endpoint.
//!
//! With `keys.csv` in use the router has checked the request's key before the endpoint runs;
//! a [`Caller`] then carries the key's name (for logs and usage, never the key) and its
//! model rights. Without keys, and on the open endpoints (`/api/health`), the caller is
//! anonymous and may use every model.

use std::sync::Arc;

use crate::error::Error;
use crate::http::Request;
use crate::state::catalog::Model;
use crate::state::keys::Key;

/// The client of one request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    /// `None`: keys are not in use, or the endpoint needs none.
    key: Option<Arc<Key>>,
}

impl Caller {
    /// A caller without a key: every model allowed.
    pub(crate) fn anonymous() -> Caller {
        Caller::default()
    }

    /// A caller identified by one of `keys.csv`'s keys.
    pub(crate) fn keyed(key: Arc<Key>) -> Caller {
        Caller { key: Some(key) }
    }

    /// The key's name from `keys.csv`; `None` without a key. For logs and usage.
    pub(crate) fn key_name(&self) -> Option<&str> {
        self.key.as_deref().map(|k| k.name.as_str())
    }

    /// Whether the caller may use the model with this short code.
    pub(crate) fn allows(&self, short: &str) -> bool {
        self.key.as_deref().is_none_or(|k| k.models.allows(short))
    }

    /// `Ok` when the caller may use this (resolved) model, else 403 `model_not_allowed`.
    pub(crate) fn may_use(&self, model: &Model) -> Result<(), Error> {
        self.may_use_code(&model.short)
    }

    /// [`Caller::may_use`] for the model with this short code.
    pub(crate) fn may_use_code(&self, short: &str) -> Result<(), Error> {
        match self.key.as_deref() {
            Some(key) if !key.models.allows(short) => Err(Error::ModelNotAllowed {
                model: short.to_string(),
                key: key.name.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// The key a request presents: `Authorization: Bearer <key>` (the OpenAI SDKs), else
/// `x-api-key: <key>` (the Anthropic SDKs). `None` when it sends neither, or an empty one.
pub(crate) fn presented_key(req: &Request) -> Option<&str> {
    let bearer = req.header("authorization").and_then(|v| {
        let v = v.trim();
        let (scheme, rest) = v.split_once(char::is_whitespace)?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer
        .or_else(|| req.header("x-api-key").map(str::trim))
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::catalog::Catalog;
    use crate::state::keys::{Keys, line_for};

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/v1/models".into(),
            query: None,
            version: crate::http::Version::Http11,
            headers: crate::http::Headers::from_pairs(headers.iter().copied()),
            body: Vec::new(),
            peer: "127.0.0.1".parse().unwrap(),
            tls: false,
            received: std::time::Instant::now(),
            hangup: Default::default(),
            checked_early: false,
        }
    }

    #[test]
    fn the_key_comes_from_bearer_or_x_api_key() {
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Headers, Option<&str>)] = &[
            (&[("Authorization", "Bearer sk-1")], Some("sk-1")),
            (&[("Authorization", "bearer   sk-1  ")], Some("sk-1")),
            (&[("x-api-key", " sk-2 ")], Some("sk-2")),
            (
                &[("Authorization", "Bearer sk-1"), ("x-api-key", "sk-2")],
                Some("sk-1"),
            ),
            (
                &[
                    ("Authorization", "Basic dXNlcjpwdw=="),
                    ("x-api-key", "sk-2"),
                ],
                Some("sk-2"),
            ),
            (&[("Authorization", "Basic dXNlcjpwdw==")], None),
            (&[("Authorization", "Bearer")], None),
            (&[("Authorization", "Bearer   ")], None),
            (&[("x-api-key", "")], None),
            (&[], None),
        ];
        for (headers, want) in cases {
            assert_eq!(presented_key(&request(headers)), *want, "{headers:?}");
        }
    }

    #[test]
    fn rights_follow_the_key() {
        let text = format!(
            "{}\n",
            line_for("ann", "k").replace(", *,", ", gpt41|ollama-*,")
        );
        let keys = Keys::parse(&text, std::path::Path::new("keys.csv")).unwrap();
        let ann = Caller::keyed(keys.find("k").unwrap());
        let catalog = Catalog::embedded();
        let gpt41 = catalog.get("gpt41").unwrap();
        let kimi = catalog.get("kimi").unwrap();
        assert_eq!(ann.key_name(), Some("ann"));
        assert!(ann.may_use(gpt41).is_ok());
        let e = ann.may_use(kimi).unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "model_not_allowed"));
        assert!(e.to_string().contains("'ann'") && e.to_string().contains("'kimi'"));
        assert!(ann.allows("ollama-qwen3") && !ann.allows("claude-h"));
        let anyone = Caller::anonymous();
        assert_eq!(anyone.key_name(), None);
        assert!(anyone.may_use(kimi).is_ok() && anyone.allows("x"));
    }
}
