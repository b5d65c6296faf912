//! The TCP connections to the providers: ureq's `TcpConnector` and `TcpTransport` do the same
//! job with about twice the system calls per request, which on a small box is a good part of
//! what the gateway adds to each call. Measured at one client against an instant upstream
//! (strace): 12 calls on the upstream socket per request, now 4–5.
//!
//! - **One write per request.** ureq hands the head and the body over in two pieces; the
//!   transport holds a piece of up to [`HOLD`] bytes and writes it with the next one, or
//!   before it waits for the answer. The provider so gets the request in one segment.
//! - **Socket timeouts set when they no longer fit.** ureq gives each read and write the time
//!   left until the request's deadline, which is a different value every time, so it set
//!   `SO_RCVTIMEO`/`SO_SNDTIMEO` before nearly every read and write. The timeout in force is
//!   kept while it is no shorter than wanted and at most [`slack`] longer (under 0.4 %, which
//!   is under the kernel's own rounding to a scheduler tick for short ones).
//! - **One probe per reuse.** ureq checks that a pooled connection is still open when it
//!   puts it back and when it takes it out, each time by switching the socket to
//!   non-blocking, reading, and switching back. The check when it goes back follows the
//!   last read at once, so only the one before reuse is made, as a single
//!   `recv(MSG_PEEK | MSG_DONTWAIT)`.
//!
//! Everything else is as in ureq: connection timeouts split between a name's addresses
//! (half of what is left to each but the last), `TCP_NODELAY` as configured, the socket's
//! shutdown handle registered at once, and the chain's CONNECT proxy or TLS around it.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, ShutdownHandle,
    Transport,
};
use ureq::{ProxyProtocol, Timeout};

/// A piece of a request up to this size waits to be written with the next one.
const HOLD: usize = 16 * 1024;

/// The shortest time an address of several is given to connect.
const MIN_PER_ADDRESS: Duration = Duration::from_millis(10);

/// Opens the TCP connection when no earlier link of the chain (a CONNECT proxy) has.
#[derive(Debug, Default)]
pub struct TcpConnector;

impl<In: Transport> Connector<In> for TcpConnector {
    type Out = Either<In, Tcp>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        if let Some(chained) = chained {
            return Ok(Some(Either::A(chained)));
        }
        let config = details.config;
        // (Not an HTTP or HTTPS proxy, which the chain's CONNECT link handles.)
        let connect_proxy =
            |p: ProxyProtocol| matches!(p, ProxyProtocol::Http | ProxyProtocol::Https);
        if config.proxy().is_some_and(|p| !connect_proxy(p.protocol())) {
            warn_socks();
        }
        let stream = connect(&details.addrs, details.timeout)?;
        if config.no_delay() {
            stream.set_nodelay(true)?;
        }
        let buffers = LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size());
        let tcp = Tcp::new(stream, buffers);
        (details.register_shutdown)(Arc::downgrade(&tcp.stream) as Weak<dyn ShutdownHandle>)?;
        Ok(Some(Either::B(tcp)))
    }
}

/// ureq is built without SOCKS, and its default chain connects directly, with a warning,
/// when the environment names a SOCKS proxy (the only place the gateway takes a proxy
/// from); so does this one, warning once.
fn warn_socks() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        log::warn!(
            "a SOCKS proxy is set in the environment; SOCKS is not supported, connecting directly"
        );
    });
}

/// Tries the addresses in turn, each with half the time left (the last with all of it).
fn connect(addrs: &[SocketAddr], timeout: NextTimeout) -> Result<TcpStream, ureq::Error> {
    let deadline = until(timeout);
    let mut last = None;
    for (i, addr) in addrs.iter().enumerate() {
        let attempt = match deadline {
            None => TcpStream::connect(addr),
            Some((at, _)) => {
                let left = at.saturating_duration_since(Instant::now());
                let share = if i + 1 == addrs.len() { left } else { left / 2 };
                TcpStream::connect_timeout(addr, share.max(MIN_PER_ADDRESS))
            }
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
        if deadline.is_some_and(|(at, _)| Instant::now() >= at) {
            return Err(ureq::Error::Timeout(Timeout::Connect));
        }
    }
    Err(match last {
        Some(e) if timed_out(&e) => ureq::Error::Timeout(Timeout::Connect),
        Some(e) => e.into(),
        None => ureq::Error::Io(io::Error::new(
            io::ErrorKind::NotFound,
            "the name resolved to no address",
        )),
    })
}

/// One provider connection (see the module's notes).
#[derive(Debug)]
pub struct Tcp {
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    /// Request bytes not written yet, and the deadline of the write that handed them over.
    pending: Vec<u8>,
    pending_until: Option<(Instant, Timeout)>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// Read or written since the last `is_open`.
    used: bool,
}

impl Tcp {
    fn new(stream: TcpStream, buffers: LazyBuffers) -> Tcp {
        Tcp {
            stream: Arc::new(stream),
            buffers,
            pending: Vec::new(),
            pending_until: None,
            read_timeout: None,
            write_timeout: None,
            used: false,
        }
    }

    /// Writes what is held back.
    fn flush(&mut self) -> Result<(), ureq::Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let until = self.pending_until.take();
        let written = write_all(&self.stream, &mut self.write_timeout, until, &self.pending);
        self.pending.clear();
        written.map_err(|e| io_error(e, until.map_or(Timeout::Global, |(_, why)| why)))
    }
}

/// Writes `bytes` by `until`, setting the socket's write timeout only if the one in force
/// does not fit.
fn write_all(
    stream: &TcpStream,
    in_force: &mut Option<Duration>,
    until: Option<(Instant, Timeout)>,
    bytes: &[u8],
) -> io::Result<()> {
    let wanted = until.map(|(at, _)| at.saturating_duration_since(Instant::now()));
    if wanted.is_some_and(|d| d.is_zero()) {
        return Err(io::ErrorKind::TimedOut.into());
    }
    if !fits(*in_force, wanted) {
        stream.set_write_timeout(wanted)?;
        *in_force = wanted;
    }
    let mut stream = stream;
    stream.write_all(bytes)
}

impl Transport for Tcp {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.used = true;
        let timeout = timeout.for_write();
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        let until = until(timeout);
        if self.pending.len() + amount <= HOLD {
            let output = &self.buffers.output()[..amount];
            self.pending.extend_from_slice(output);
            self.pending_until = until;
            return Ok(());
        }
        self.flush()?;
        let output = &self.buffers.output()[..amount];
        write_all(&self.stream, &mut self.write_timeout, until, output)
            .map_err(|e| io_error(e, timeout.reason))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.used = true;
        self.flush()?;
        let timeout = timeout.for_read();
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        let until = until(timeout);
        loop {
            let wanted = until.map(|(at, _)| at.saturating_duration_since(Instant::now()));
            if wanted.is_some_and(|d| d.is_zero()) {
                return Err(ureq::Error::Timeout(timeout.reason));
            }
            if !fits(self.read_timeout, wanted) {
                self.stream.set_read_timeout(wanted)?;
                self.read_timeout = wanted;
            }
            let input = self.buffers.input_append_buf();
            match (&*self.stream).read(input) {
                Ok(n) => {
                    self.buffers.input_appended(n);
                    return Ok(n > 0);
                }
                // A signal: wait again for what is left.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(e, timeout.reason)),
            }
        }
    }

    /// ureq asks when it puts the connection back into its pool, right after the last read,
    /// and again when it takes it out: only the second is a real check.
    fn is_open(&mut self) -> bool {
        if std::mem::take(&mut self.used) {
            return self.pending.is_empty();
        }
        is_open(&self.stream)
    }
}

/// Open, and nothing to read (bytes nobody asked for mean the connection is out of step).
fn is_open(stream: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    let peeked = socket2::SockRef::from(stream)
        .recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT);
    matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Whether the socket timeout in force may stay: no shorter than wanted (an early timeout
/// would fail a request that had time left), and no more than the slack longer.
fn fits(current: Option<Duration>, wanted: Option<Duration>) -> bool {
    match (current, wanted) {
        (None, None) => true,
        (Some(current), Some(wanted)) => current >= wanted && current - wanted <= slack(wanted),
        _ => false,
    }
}

/// How much later than asked a socket timeout may fire: 1/256 of it, plus a millisecond.
fn slack(wanted: Duration) -> Duration {
    wanted / 256 + Duration::from_millis(1)
}

/// The instant a timeout ends, and the reason it reports (`None`: it never does).
fn until(timeout: NextTimeout) -> Option<(Instant, Timeout)> {
    if timeout.after.is_not_happening() {
        return None;
    }
    Some((Instant::now() + *timeout.after, timeout.reason))
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// An I/O error as ureq reports it: a socket timeout (`EAGAIN`) is a timeout.
fn io_error(e: io::Error, reason: Timeout) -> ureq::Error {
    if timed_out(&e) {
        ureq::Error::Timeout(reason)
    } else {
        ureq::Error::Io(e)
    }
}

#[cfg(test)]
#[path = "tcp_tests.rs"]
mod tests;
