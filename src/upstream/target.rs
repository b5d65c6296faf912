//! Where a call goes ([`Target`]) and what it came to ([`Attempted`]).

use super::retry::Failure;

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
