//! Name resolution for upstream connections, without a thread and a DNS query per request:
//! IP literals need no lookup, and the addresses of a name are remembered for [`TTL`]. A
//! lookup runs on a blocking thread (the system resolver blocks) and is awaited by the
//! task; a connect failure forgets the name, so that the next attempt looks it up again.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::lock;

/// How long the addresses of a name are reused.
pub(crate) const TTL: Duration = Duration::from_secs(30);

/// A name's addresses and when they were looked up, by name and port.
type Cache = HashMap<(String, u16), (Instant, Arc<[SocketAddr]>)>;

/// Remembered addresses; clones share them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Names {
    cache: Arc<Mutex<Cache>>,
}

impl Names {
    /// The addresses of `host` (a name or an IP literal) at `port`.
    pub(crate) async fn resolve(&self, host: &str, port: u16) -> io::Result<Arc<[SocketAddr]>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Arc::from([SocketAddr::new(ip, port)]));
        }
        let key = (host.to_ascii_lowercase(), port);
        if let Some((at, addrs)) = lock(&self.cache).get(&key)
            && at.elapsed() < TTL
        {
            return Ok(Arc::clone(addrs));
        }
        let name = key.0.clone();
        let found = crate::rt::blocking::io()
            .run(move || (name.as_str(), port).to_socket_addrs().map(Vec::from_iter))
            .await
            .ok_or_else(|| io::Error::other("the name lookup failed"))??;
        if found.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                super::HOST_NOT_FOUND,
            ));
        }
        let addrs: Arc<[SocketAddr]> = Arc::from(found);
        lock(&self.cache).insert(key, (Instant::now(), Arc::clone(&addrs)));
        Ok(addrs)
    }

    /// Drops every remembered name (after a connect failure: the addresses may be stale).
    pub(crate) fn forget(&self) {
        lock(&self.cache).clear();
    }

    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        lock(&self.cache).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::block_on;

    #[test]
    fn ip_literals_need_no_lookup() {
        let names = Names::default();
        let addrs = block_on(names.resolve("127.0.0.1", 9)).unwrap().unwrap();
        assert_eq!(&addrs[..], ["127.0.0.1:9".parse::<SocketAddr>().unwrap()]);
        let addrs = block_on(names.resolve("::1", 443)).unwrap().unwrap();
        assert_eq!(&addrs[..], ["[::1]:443".parse::<SocketAddr>().unwrap()]);
        assert_eq!(names.remembered(), 0);
    }

    #[test]
    fn names_are_remembered_until_forgotten() {
        let names = Names::default();
        let first = block_on(names.resolve("localhost", 11434))
            .unwrap()
            .unwrap();
        assert!(
            first
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 11434)
        );
        assert_eq!(names.remembered(), 1);
        let again = block_on(names.resolve("LOCALHOST", 11434))
            .unwrap()
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(names.remembered(), 1);
        names.forget();
        assert_eq!(names.remembered(), 0);
    }
}
