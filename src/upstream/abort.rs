//! Interrupting one request's upstream I/O on a shared, pooled connection, and giving that
//! I/O a deadline of the request's own.
//!
//! ureq's `Agent::shutdown` closes every connection of the agent, for good. So that one
//! shared agent can serve every request, pooled connections included, while a client that
//! goes away still interrupts its own blocked call at once, the agents use [`Connector`]:
//! it wraps the connector chain (CONNECT proxy, our TCP, TLS) and keeps, for each connection,
//! the socket's shutdown handle. Each request has an [`Abort`]; while code runs inside
//! [`Abort::scope`], every transport that does I/O on this thread marks itself as used by
//! that request. [`Abort::fire`] (a hang-up) shuts down the socket the request is using
//! — and only while the request is still using it: a connection that went back to the pool
//! is released by ureq's own check (`is_open`) before anyone else can take it, and
//! [`Abort::finish`] ends the request's claim on everything.
//!
//! The same scope carries a deadline ([`Abort::set_deadline`]): every read and write is
//! bounded by it, on top of ureq's own timeouts. ureq's per-read timeout starts again with
//! every byte, so a provider sending `: keep-alive` comments would hold a stream open for
//! ever; the event reader sets the deadline of the next data event here instead.
//!
//! The request is found through a thread-local: ureq calls its transport on the thread
//! that makes the request, and offers no way to hand a request's data to it.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use ureq::unversioned::transport::{
    Buffers, ChainedConnector, ConnectProxyConnector, ConnectionDetails,
    Connector as UreqConnector, NextTimeout, RustlsConnector, ShutdownHandle, Transport,
};

use crate::util::lock;

thread_local! {
    /// The request whose upstream I/O runs on this thread now.
    static CURRENT: RefCell<Option<Arc<Request>>> = const { RefCell::new(None) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One request's claim on its upstream connections: fire it to interrupt them.
#[derive(Clone)]
pub struct Abort {
    inner: Arc<Request>,
}

struct Request {
    /// Never 0 (0 marks a connection nobody uses).
    id: u64,
    fired: AtomicBool,
    state: Mutex<Claim>,
}

#[derive(Default)]
struct Claim {
    /// The connection the request used last.
    using: Option<Arc<Socket>>,
    /// Bound on every read and write made in the request's scope.
    deadline: Option<Instant>,
    /// [`Abort::finish`] was called: nothing is claimed any more.
    finished: bool,
}

/// One upstream connection's socket, and which request uses it.
struct Socket {
    handle: Mutex<Option<Weak<dyn ShutdownHandle>>>,
    /// The id of the request using it; 0 while it is idle in the pool.
    user: AtomicU64,
}

impl Socket {
    fn shutdown(&self) {
        if let Some(h) = lock(&self.handle).as_ref().and_then(Weak::upgrade) {
            h.shutdown();
        }
    }
}

impl Default for Abort {
    fn default() -> Self {
        Abort::new()
    }
}

impl std::fmt::Debug for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Abort(fired: {})", self.is_fired())
    }
}

impl Abort {
    pub fn new() -> Abort {
        Abort {
            inner: Arc::new(Request {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                fired: AtomicBool::new(false),
                state: Mutex::new(Claim::default()),
            }),
        }
    }

    /// Interrupts the request's I/O: the socket it is using is shut down (a blocked read or
    /// write returns at once), and any it touches later is shut down as it does.
    pub fn fire(&self) {
        if self.inner.fired.swap(true, Ordering::AcqRel) {
            return;
        }
        let using = {
            let claim = lock(&self.inner.state);
            if claim.finished {
                return;
            }
            claim.using.clone()
        };
        if let Some(socket) = using
            && socket.user.load(Ordering::Acquire) == self.inner.id
        {
            socket.shutdown();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.inner.fired.load(Ordering::Acquire)
    }

    /// Bounds every read and write in the request's scope by `at` (`None`: only ureq's own
    /// timeouts apply).
    pub fn set_deadline(&self, at: Option<Instant>) {
        lock(&self.inner.state).deadline = at;
    }

    /// The request is done with its connections: a later [`Abort::fire`] touches nothing.
    pub fn finish(&self) {
        let mut claim = lock(&self.inner.state);
        claim.finished = true;
        claim.using = None;
        claim.deadline = None;
    }

    /// Runs `f` with this request as the one whose upstream I/O runs on this thread.
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Arc<Request>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|c| *c.borrow_mut() = previous);
            }
        }
        let previous = CURRENT.with(|c| c.borrow_mut().replace(Arc::clone(&self.inner)));
        let _restore = Restore(previous);
        f()
    }
}

/// Marks `socket` as used by this thread's current request, if there is one; returns that
/// request's deadline.
fn claim(socket: &Arc<Socket>) -> Option<Instant> {
    CURRENT.with(|c| {
        let current = c.borrow();
        let request = current.as_ref()?;
        let mut claim = lock(&request.state);
        if claim.finished {
            return None;
        }
        socket.user.store(request.id, Ordering::Release);
        if !claim.using.as_ref().is_some_and(|s| Arc::ptr_eq(s, socket)) {
            claim.using = Some(Arc::clone(socket));
        }
        if request.fired.load(Ordering::Acquire) {
            socket.shutdown();
        }
        claim.deadline
    })
}

/// ureq's default chain without SOCKS (not built in): a CONNECT proxy if one is set, TCP
/// (ours, see `tcp`), TLS for `https`.
type Chain = ChainedConnector<
    (),
    ChainedConnector<(), ChainedConnector<(), (), ConnectProxyConnector>, super::tcp::TcpConnector>,
    RustlsConnector,
>;

/// The connector chain, with each connection's socket kept for [`Abort`]. Its clones share
/// the chain, and so its TLS configuration and session cache.
#[derive(Debug, Clone)]
pub struct Connector {
    inner: Arc<Chain>,
}

impl Default for Connector {
    fn default() -> Self {
        Connector {
            inner: Arc::new(
                ().chain(ConnectProxyConnector::default())
                    .chain(super::tcp::TcpConnector)
                    .chain(RustlsConnector::default()),
            ),
        }
    }
}

impl UreqConnector<()> for Connector {
    type Out = AbortTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<()>,
    ) -> Result<Option<AbortTransport>, ureq::Error> {
        let socket = Arc::new(Socket {
            handle: Mutex::new(None),
            user: AtomicU64::new(0),
        });
        // The socket connector registers its shutdown handle with the agent as soon as the
        // socket exists (before TLS): keep it too, and claim the socket at once, so that a
        // hang-up during a TLS handshake interrupts it.
        let agent_register = Arc::clone(&details.register_shutdown);
        let keep = Arc::clone(&socket);
        let register = Arc::new(move |handle: Weak<dyn ShutdownHandle>| {
            lock(&keep.handle).get_or_insert_with(|| handle.clone());
            claim(&keep);
            agent_register(handle)
        });
        let mine = ConnectionDetails {
            uri: details.uri,
            addrs: details.addrs.clone(),
            config: details.config,
            // Every call sets its timeouts per request, which makes its whole config
            // "request level", and ureq's TLS connector then builds a new rustls config for
            // each connection instead of keeping the agent's (ureq 3.5: it caches only at
            // agent level, so that a TLS config set per request is honoured): a root store
            // per connection, and no session resumption. No call sets a TLS config of its
            // own — the agent's is the one in force — so the connection is agent level here.
            request_level: false,
            resolver: details.resolver,
            now: details.now,
            timeout: details.timeout,
            current_time: Arc::clone(&details.current_time),
            run_connector: Arc::clone(&details.run_connector),
            register_shutdown: register,
        };
        let Some(inner) = self.inner.connect(&mine, chained)? else {
            return Ok(None);
        };
        Ok(Some(AbortTransport {
            inner: Box::new(inner),
            socket,
        }))
    }
}

/// A connection of ureq's default chain that claims its socket for the current request on
/// every read and write, and bounds them by the request's deadline.
pub struct AbortTransport {
    inner: Box<dyn Transport>,
    socket: Arc<Socket>,
}

impl std::fmt::Debug for AbortTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AbortTransport").field(&self.inner).finish()
    }
}

impl AbortTransport {
    /// Claims the socket and caps the per-read and per-write timeouts at the deadline.
    fn bounded(&self, mut timeout: NextTimeout) -> NextTimeout {
        if let Some(deadline) = claim(&self.socket) {
            let left = ureq::unversioned::transport::time::Duration::from(
                deadline.saturating_duration_since(Instant::now()),
            );
            timeout.per_read = Some(timeout.per_read.map_or(left, |d| d.min(left)));
            timeout.per_write = Some(timeout.per_write.map_or(left, |d| d.min(left)));
        }
        timeout
    }
}

impl Transport for AbortTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = self.bounded(timeout);
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let timeout = self.bounded(timeout);
        self.inner.await_input(timeout)
    }

    /// ureq asks this when it puts a connection back into its pool and when it takes one
    /// out: either way no request uses it at that moment, so none may shut it down.
    fn is_open(&mut self) -> bool {
        self.socket.user.store(0, Ordering::Release);
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> Arc<Socket> {
        Arc::new(Socket {
            handle: Mutex::new(None),
            user: AtomicU64::new(0),
        })
    }

    #[test]
    fn a_scope_claims_what_it_touches_and_gives_its_deadline() {
        let a = Abort::new();
        let s = socket();
        assert_eq!(claim(&s), None, "outside a scope nothing is claimed");
        assert_eq!(s.user.load(Ordering::Acquire), 0);
        let at = Instant::now();
        a.set_deadline(Some(at));
        assert_eq!(a.scope(|| claim(&s)), Some(at));
        assert_eq!(s.user.load(Ordering::Acquire), a.inner.id);
        assert_eq!(claim(&s), None, "the scope ended");
        a.finish();
        assert_eq!(
            a.scope(|| claim(&s)),
            None,
            "a finished request claims nothing"
        );
    }

    #[test]
    fn scopes_nest_and_restore() {
        let (outer, inner) = (Abort::new(), Abort::new());
        let s = socket();
        outer.scope(|| {
            inner.scope(|| claim(&s));
            assert_eq!(s.user.load(Ordering::Acquire), inner.inner.id);
            claim(&s);
        });
        assert_eq!(s.user.load(Ordering::Acquire), outer.inner.id);
    }

    /// A real socket pair; the returned listener side sees the shutdown as end of stream.
    fn tcp_pair() -> (Arc<std::net::TcpStream>, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (Arc::new(c), server)
    }

    fn shut_down(peer: &mut std::net::TcpStream) -> bool {
        use std::io::Read;
        peer.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        matches!(peer.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn firing_shuts_the_claimed_socket_but_not_one_given_back() {
        let (client, mut peer) = tcp_pair();
        let s = socket();
        *lock(&s.handle) = Some(Arc::downgrade(&client) as Weak<dyn ShutdownHandle>);
        let a = Abort::new();
        a.scope(|| claim(&s));
        // Back in the pool (ureq's is_open): no longer the request's to shut.
        s.user.store(0, Ordering::Release);
        a.fire();
        peer.set_nonblocking(true).unwrap();
        use std::io::Read;
        assert!(peer.read(&mut [0u8; 1]).is_err(), "still open");
        peer.set_nonblocking(false).unwrap();

        let b = Abort::new();
        b.scope(|| claim(&s));
        b.fire();
        assert!(shut_down(&mut peer));
    }

    #[test]
    fn a_socket_touched_after_the_hang_up_is_shut_at_once() {
        let (client, mut peer) = tcp_pair();
        let s = socket();
        *lock(&s.handle) = Some(Arc::downgrade(&client) as Weak<dyn ShutdownHandle>);
        let a = Abort::new();
        a.fire();
        a.scope(|| claim(&s));
        assert!(shut_down(&mut peer));
    }
}
