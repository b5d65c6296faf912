//! Listeners, connection threads, the worker pool.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{Handler, ServerConfig, Stats};

/// A running server.
pub struct Server {
    addrs: Vec<SocketAddr>,
    stats: Arc<Stats>,
}

/// Binds every listener (dual-stack when the address is `[::]`), starts the accept threads
/// and the worker pool, and returns at once. A port that cannot be bound is an error here,
/// not later.
pub fn start(config: ServerConfig, handler: Arc<dyn Handler>) -> io::Result<Server> {
    let _ = (config, handler);
    todo!()
}

impl Server {
    /// The bound addresses, in the order of `config.listeners` (real ports when 0 was asked).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Stops accepting, closes idle connections, lets requests in flight (streams included)
    /// finish for up to `grace`, then closes the rest. Returns whether everything finished in
    /// time. Every thread the server started has ended or is ending when it returns.
    pub fn shutdown(self, grace: Duration) -> bool {
        let _ = grace;
        todo!()
    }
}
