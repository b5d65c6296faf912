//! The proxy from the environment, for cloud providers: `ALL_PROXY`, then `HTTPS_PROXY`,
//! then `HTTP_PROXY` (each also in lower case), and `NO_PROXY`. Only HTTP proxies are
//! spoken to (CONNECT, for every target, so the provider's TLS runs end to end); a SOCKS or
//! HTTPS proxy is warned about once and the gateway connects directly, as before.

use super::url::Url;
use crate::env::Env;

/// An HTTP proxy that tunnels with CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `Proxy-Authorization` value (`Basic …`), from the URL's user and password.
    pub(crate) authorization: Option<String>,
    /// Hosts reached directly (`NO_PROXY`): names (a leading `.` or none: the name and its
    /// subdomains), `*` for all.
    no_proxy: Vec<String>,
}

impl Proxy {
    /// The proxy the environment names, if any (and usable).
    pub(crate) fn from_env(env: &Env) -> Option<Proxy> {
        let pick = |name: &str| {
            env.get(name)
                .or_else(|| env.get(&name.to_ascii_lowercase()))
        };
        let text = pick("ALL_PROXY")
            .or_else(|| pick("HTTPS_PROXY"))
            .or_else(|| pick("HTTP_PROXY"))?;
        let with_scheme = if text.contains("://") {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        let parsed = if with_scheme.to_ascii_lowercase().starts_with("http://") {
            Url::parse_with_user(&with_scheme)
        } else {
            Err(String::new())
        };
        let Ok((url, user)) = parsed else {
            warn_unusable(text);
            return None;
        };
        let no_proxy = pick("NO_PROXY")
            .map(|v| {
                v.split(',')
                    .map(|h| h.trim().trim_start_matches('.').to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Some(Proxy {
            host: url.host.to_string(),
            port: url.port,
            authorization: user.map(|u| {
                format!(
                    "Basic {}",
                    base64(format!("{}:{}", u.user, u.password).as_bytes())
                )
            }),
            no_proxy,
        })
    }

    /// Whether a call to `host` goes through this proxy.
    pub(crate) fn applies_to(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        !self.no_proxy.iter().any(|n| {
            n == "*"
                || host == *n
                || host
                    .strip_suffix(n.as_str())
                    .is_some_and(|p| p.ends_with('.'))
        })
    }
}

/// The proxy cannot be used (SOCKS, HTTPS, garbled): said once.
fn warn_unusable(text: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let scheme = text.split("://").next().unwrap_or("").to_ascii_lowercase();
    WARNED.call_once(|| {
        log::warn!(scheme = scheme.as_str(); "the proxy in the environment is not an http:// proxy; connecting directly");
    });
}

/// Standard base64 with padding (for `Proxy-Authorization: Basic`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_known_values() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }

    #[test]
    fn the_proxy_from_the_environment() {
        assert_eq!(Proxy::from_env(&Env::default()), None);
        let env = Env::from_pairs([
            ("HTTP_PROXY", "http://other:1"),
            ("https_proxy", "u:p@proxy.lan:3128"),
            ("NO_PROXY", "internal.lan, .corp.example ,localhost"),
        ]);
        let p = Proxy::from_env(&env).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.lan", 3128));
        assert_eq!(p.authorization.as_deref(), Some("Basic dTpw"));
        assert!(p.applies_to("api.mammouth.ai"));
        assert!(!p.applies_to("internal.lan"));
        assert!(!p.applies_to("x.corp.example"));
        assert!(!p.applies_to("LOCALHOST"));
        assert!(p.applies_to("notinternal.lan"));
        let all = Proxy::from_env(&Env::from_pairs([
            ("ALL_PROXY", "http://a:8"),
            ("NO_PROXY", "*"),
        ]))
        .unwrap();
        assert!(!all.applies_to("anything"));
    }

    #[test]
    fn socks_and_https_proxies_are_not_used() {
        assert_eq!(
            Proxy::from_env(&Env::from_pairs([("ALL_PROXY", "socks5://h:1080")])),
            None
        );
        assert_eq!(
            Proxy::from_env(&Env::from_pairs([("HTTPS_PROXY", "https://h:443")])),
            None
        );
    }
}
