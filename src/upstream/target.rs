//! Where a call goes ([`Target`]) and what it came to ([`Attempted`]).

use std::sync::Arc;

use super::client::Url;
use super::retry::Failure;

/// Where one request goes: a URL, its key and whether it bypasses the proxy, with what
/// every request to it repeats (the URL parsed, the head of a POST) made once. Clones
/// share it.
#[derive(Clone)]
pub struct Target {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    key: Option<String>,
    direct: bool,
    /// The URL parsed, or why it does not parse.
    parsed: Result<Url, String>,
    /// A POST's head up to its `Content-Length` (request line, `Host`, `User-Agent`,
    /// `Accept`, `Content-Type` and the key).
    post_head: Vec<u8>,
}

impl Target {
    /// A target reached through any proxy from the environment, unless its host is a
    /// loopback address (no proxy can reach that for us).
    pub fn new(url: String, key: Option<String>) -> Target {
        let direct = is_loopback_url(&url);
        Target::with(url, key, direct)
    }

    /// A target reached directly, with no key (Ollama, whose address may be on the LAN).
    pub fn direct(url: String) -> Target {
        Target::with(url, None, true)
    }

    /// A target with everything given.
    pub fn with(url: String, key: Option<String>, direct: bool) -> Target {
        let parsed = Url::parse(&url);
        let mut post_head = Vec::new();
        if let Ok(u) = &parsed {
            post_head = request_head("POST", u, key.as_deref(), true);
        }
        Target {
            inner: Arc::new(Inner {
                url,
                key,
                direct,
                parsed,
                post_head,
            }),
        }
    }

    /// The same key and way, at another URL (a provider's embeddings beside its chat).
    pub fn at(&self, url: String) -> Target {
        Target::with(url, self.inner.key.clone(), self.inner.direct)
    }

    /// `Authorization: Bearer` key, if the provider needs one. Never logged.
    pub fn key(&self) -> Option<&str> {
        self.inner.key.as_deref()
    }

    /// Bypasses any proxy from the environment (Ollama, loopback upstreams).
    pub fn is_direct(&self) -> bool {
        self.inner.direct
    }

    /// The URL parsed, or why it does not parse.
    pub(crate) fn parsed(&self) -> Result<&Url, &str> {
        self.inner.parsed.as_ref().map_err(String::as_str)
    }

    /// The head of a POST of JSON to it, up to its `Content-Length`.
    pub(crate) fn post_head(&self) -> &[u8] {
        &self.inner.post_head
    }
}

/// A request's head up to its `Content-Length`: request line, `Host`, `User-Agent`,
/// `Accept`, then `Content-Type` (for JSON) and `Authorization` (for a key).
pub(crate) fn request_head(method: &str, url: &Url, key: Option<&str>, json: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    for part in [
        method,
        " ",
        &url.target,
        " HTTP/1.1\r\nHost: ",
        &url.authority(),
        "\r\nUser-Agent: sigorest/",
        crate::VERSION,
        "\r\nAccept: */*\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    if json {
        out.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    if let Some(k) = key {
        out.extend_from_slice(b"Authorization: Bearer ");
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
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
            .field("url", &self.inner.url)
            .field("direct", &self.inner.direct)
            .finish()
    }
}

/// A result and how many attempts it took.
#[derive(Debug)]
pub struct Attempted<T> {
    pub result: Result<T, Failure>,
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("http://127.0.0.1:8080/v1/chat/completions"));
        assert!(is_loopback_url("http://localhost/v1"));
        assert!(is_loopback_url("http://[::1]:9/x"));
        assert!(!is_loopback_url(
            "https://api.mammouth.ai/v1/chat/completions"
        ));
        assert!(!is_loopback_url("http://192.168.1.2:11434"));
        assert!(Target::new("http://127.0.0.1:1/v1".into(), None).is_direct());
        assert!(!Target::new("https://api.z.ai/v1".into(), None).is_direct());
    }

    #[test]
    fn targets_do_not_print_their_key() {
        let t = Target::with("http://x".into(), Some("sk-secret".into()), false);
        assert!(!format!("{t:?}").contains("sk-secret"));
    }
}
