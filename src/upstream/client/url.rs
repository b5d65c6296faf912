//! The URLs the client calls: `http` or `https`, a host (name, IPv4, or IPv6 in brackets),
//! an optional port and a path with its query. Proxy URLs may carry `user:password@`.

/// A parsed URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Url {
    pub(crate) https: bool,
    /// The host without brackets, in lower case (a name's case means nothing). Shared, so
    /// that every pooled connection to it names it without a copy.
    pub(crate) host: std::sync::Arc<str>,
    pub(crate) port: u16,
    /// Path and query, as written (`/` when the URL has none).
    pub(crate) target: String,
}

/// The `user:password` of a URL, if it has one (proxy URLs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserInfo {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl Url {
    /// Parses `text`; the error says what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<Url, String> {
        Url::parse_with_user(text).map(|(url, _)| url)
    }

    /// Parses `text`, keeping its `user:password@` (only proxy URLs have one).
    pub(crate) fn parse_with_user(text: &str) -> Result<(Url, Option<UserInfo>), String> {
        let text = text.trim();
        if text.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err("a URL may not contain spaces or control characters".into());
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("'{text}' is not a URL (no http:// or https://)"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            other => return Err(format!("unsupported URL scheme '{other}'")),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let target = match tail.split('#').next().unwrap_or("") {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((info, hp)) => {
                let (u, p) = info.split_once(':').unwrap_or((info, ""));
                (
                    Some(UserInfo {
                        user: u.to_string(),
                        password: p.to_string(),
                    }),
                    hp,
                )
            }
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)?;
        let host: std::sync::Arc<str> = host.to_ascii_lowercase().into();
        let port = match port {
            Some(p) => p,
            None if https => 443,
            None => 80,
        };
        Ok((
            Url {
                https,
                host,
                port,
                target,
            },
            user,
        ))
    }

    /// `host:port` as the `Host` header and a CONNECT line say it (IPv6 in brackets; the
    /// port left out when it is the scheme's default).
    pub(crate) fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.to_string()
        };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// `host:port` with the port always there (a CONNECT request's target).
    pub(crate) fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn split_host_port(hostport: &str) -> Result<(String, Option<u16>), String> {
    let port_of = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("invalid port '{p}' in URL"))
            .map(Some)
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in URL host".to_string())?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("'{host}' is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => port_of(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected '{p}' after the URL host"))?,
            )?,
        };
        (host.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), port_of(p)?),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn the_parts_of_usual_urls() {
        let u = url("https://api.mammouth.ai/v1/chat/completions");
        assert_eq!(
            (u.https, &*u.host, u.port, u.target.as_str()),
            (true, "api.mammouth.ai", 443, "/v1/chat/completions")
        );
        assert_eq!(u.authority(), "api.mammouth.ai");
        assert_eq!(u.host_port(), "api.mammouth.ai:443");
        let u = url("http://127.0.0.1:11434/api/tags?x=1");
        assert_eq!(
            (u.https, u.port, u.target.as_str()),
            (false, 11434, "/api/tags?x=1")
        );
        assert_eq!(u.authority(), "127.0.0.1:11434");
        let u = url("HTTP://[::1]:9/x#frag");
        assert_eq!((&*u.host, u.port, u.target.as_str()), ("::1", 9, "/x"));
        assert_eq!(u.authority(), "[::1]:9");
        assert_eq!(url("http://h").target, "/");
        assert_eq!(url("http://h?q").target, "/?q");
        assert_eq!(url("https://[::1]/").authority(), "[::1]");
    }

    #[test]
    fn proxy_urls_carry_their_user() {
        let (u, user) = Url::parse_with_user("http://me:secret@proxy.lan:3128").unwrap();
        assert_eq!((&*u.host, u.port), ("proxy.lan", 3128));
        assert_eq!(
            user,
            Some(UserInfo {
                user: "me".into(),
                password: "secret".into()
            })
        );
    }

    #[test]
    fn what_is_refused() {
        for bad in [
            "api.example.com/v1",
            "ftp://h/x",
            "http://",
            "http://h:99999/",
            "http://h:x/",
            "http://[::1/",
            "http://[zz]/",
            "http://h /x",
            "http://[::1]x/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
