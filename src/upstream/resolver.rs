//! Name resolution for upstream calls, without a thread and a DNS query per request.
//!
//! ureq 3 resolves the host of every request *before* it looks in its connection pool, and
//! its default resolver runs each lookup on a new thread whenever the request has a timeout
//! — every completion has one, its deadline. Measured with `sigorest-bench`: a thread spawned
//! (and a name looked up) per request even when a pooled connection is reused, ~0.1 ms of
//! added latency and hundreds of short-lived threads at 100 concurrent requests.
//!
//! This resolver answers IP-literal hosts (`127.0.0.1`, `[::1]`: Ollama, local providers) at
//! once, and remembers the addresses of a name for [`TTL`]: a lookup (through ureq's own
//! resolver, with its timeout) happens at most once per name and interval. The addresses
//! only matter when a new connection is opened; a connect failure forgets them
//! ([`Names::forget`]) so that the next attempt looks the name up again.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

use crate::util::lock;

/// How long the addresses of a name are reused.
pub const TTL: Duration = Duration::from_secs(30);

/// The resolver shared by every agent of an [`super::Upstream`].
#[derive(Clone, Debug, Default)]
pub struct Names {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    lookup: DefaultResolver,
    cache: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl Names {
    /// Drops every remembered name (after a connect failure: the addresses may be stale).
    pub fn forget(&self) {
        lock(&self.inner.cache).clear();
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        lock(&self.inner.cache).len()
    }
}

impl Resolver for Names {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            // Not a full URL: let ureq say what is wrong with it.
            return self.inner.lookup.resolve(uri, config, timeout);
        };
        let host = authority.host();
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>();
        let port = authority.port_u16().or(match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        });
        if let (Ok(ip), Some(port)) = (literal, port) {
            let mut addrs = self.empty();
            addrs.push(SocketAddr::new(ip, port));
            return Ok(addrs);
        }
        let Some(key) = DefaultResolver::host_and_port(scheme, authority) else {
            return self.inner.lookup.resolve(uri, config, timeout);
        };
        if let Some((at, addrs)) = lock(&self.inner.cache).get(&key)
            && at.elapsed() < TTL
        {
            return Ok(addrs.clone());
        }
        let addrs = self.inner.lookup.resolve(uri, config, timeout)?;
        lock(&self.inner.cache).insert(key, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(names: &Names, url: &str) -> Result<Vec<SocketAddr>, ureq::Error> {
        let uri: Uri = url.parse().unwrap();
        let config = ureq::Agent::config_builder().build();
        names
            .resolve(&uri, &config, NextTimeout::default())
            .map(|a| a.to_vec())
    }

    #[test]
    fn ip_literals_need_no_lookup() {
        let names = Names::default();
        assert_eq!(
            resolve(&names, "http://127.0.0.1:9/v1/chat/completions").unwrap(),
            ["127.0.0.1:9".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            resolve(&names, "https://[::1]/x").unwrap(),
            ["[::1]:443".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(resolve(&names, "http://10.1.2.3/").unwrap()[0].port(), 80);
        assert_eq!(names.remembered(), 0);
    }

    #[test]
    fn names_are_remembered_until_forgotten() {
        let names = Names::default();
        let first = resolve(&names, "http://localhost:11434/api/tags").unwrap();
        assert!(
            first
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 11434)
        );
        assert_eq!(names.remembered(), 1);
        assert_eq!(
            resolve(&names, "http://localhost:11434/other").unwrap(),
            first
        );
        assert_eq!(names.remembered(), 1);
        names.forget();
        assert_eq!(names.remembered(), 0);
    }
}
