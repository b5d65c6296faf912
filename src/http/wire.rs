//! Bytes to and from a client: the socket shared between the threads that use it, clear or
//! through TLS, with bounds on how long each blocking call may take.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ServerConnection, StreamOwned};

/// After a refusal, at most this many bytes are read and dropped while lingering.
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// A connection as the reader and writer see it: bytes in and out, and a bound on how long
/// the next blocking call may take (a socket timeout on a real connection).
pub(crate) trait Wire: Read + Write {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()>;
    fn set_write_timeout(&mut self, timeout: Duration) -> io::Result<()>;
}

/// Whether a socket error only means "nothing yet": a read timeout (which the callers turn
/// into their own deadlines) or an interruption.
pub(crate) fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Writes all of `bytes` and flushes, within `timeout` in all (not per system call, so a
/// client reading one byte at a time cannot stretch it).
pub(crate) fn write_all_within<W: Wire + ?Sized>(
    w: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut left = bytes;
    let arm = |w: &mut W| -> io::Result<()> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        w.set_write_timeout(remaining.max(Duration::from_millis(1)))
    };
    while !left.is_empty() {
        arm(w)?;
        match w.write(left) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => left = left.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::TimedOut.into());
            }
            Err(e) => return Err(e),
        }
    }
    arm(w)?;
    w.flush()
}

/// The socket, shared between the connection thread, the worker answering on it, and the
/// server's list of open connections.
#[derive(Clone)]
pub(crate) struct Sock(pub(crate) Arc<TcpStream>);

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

pub(crate) enum Transport {
    Plain(Sock),
    Tls(Box<StreamOwned<ServerConnection, Sock>>),
}

/// How far the socket's timeouts may be from the ones asked for before they are set again.
/// `write_all_within` arms the timeout before every write and flush with what is left of its
/// deadline, which moves by microseconds between calls: setting it each time cost two
/// `setsockopt` calls per response and per stream event (sigorest-bench, strace); the read
/// timeout, one per request.
const TIMEOUT_SLACK: Duration = Duration::from_millis(1);

/// Bytes to and from the client, in clear or through TLS.
pub(crate) struct Io {
    pub(crate) transport: Transport,
    pub(crate) sock: Sock,
    /// The write timeout last set on the socket through this `Io` (`None`: unknown).
    pub(crate) write_timeout: Option<Duration>,
    /// The same for the read timeout. Whoever sets one on the socket directly forgets this.
    pub(crate) read_timeout: Option<Duration>,
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.transport {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.transport {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.transport {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

impl Wire for Io {
    /// Kept while within the slack of the one asked for: a read that times out early is
    /// only tried again (`read_timed`), and the one between requests (what is left of the
    /// idle timeout) moves by the length of a request each time.
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        let sock = &self.sock.0;
        set_cached(&mut self.read_timeout, timeout, |t| {
            sock.set_read_timeout(t)
        })
    }
    fn set_write_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        let sock = &self.sock.0;
        set_cached(&mut self.write_timeout, timeout, |t| {
            sock.set_write_timeout(t)
        })
    }
}

/// Sets a socket timeout through `set` unless `cached` (the one last set) is within
/// [`TIMEOUT_SLACK`] of it; `cached` is unknown (`None`) when setting fails.
fn set_cached(
    cached: &mut Option<Duration>,
    timeout: Duration,
    set: impl FnOnce(Option<Duration>) -> io::Result<()>,
) -> io::Result<()> {
    if cached.is_some_and(|t| t.abs_diff(timeout) <= TIMEOUT_SLACK) {
        return Ok(());
    }
    *cached = None;
    set(Some(timeout))?;
    *cached = Some(timeout);
    Ok(())
}

impl Io {
    /// Ends the connection gracefully: `close_notify` on TLS, then FIN. The descriptor itself
    /// closes when the last holder drops it.
    pub(crate) fn close(&mut self, write_timeout: Duration) {
        if let Transport::Tls(s) = &mut self.transport {
            s.conn.send_close_notify();
            self.write_timeout = None;
            let _ = self
                .sock
                .0
                .set_write_timeout(Some(write_timeout.min(Duration::from_secs(1))));
            let _ = s.flush();
        }
        let _ = self.sock.0.shutdown(Shutdown::Write);
    }

    /// After [`Io::close`]: reads and drops what the client still sends, for at most `time`
    /// and [`LINGER_BYTES`], so that it reads our answer instead of a reset. Never a full drain.
    pub(crate) fn linger(&mut self, time: Duration) {
        let deadline = Instant::now() + time;
        let mut scratch = [0u8; 8192];
        let mut total = 0;
        while total < LINGER_BYTES {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            self.read_timeout = None;
            if left.is_zero() || self.sock.0.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match self.sock.read(&mut scratch) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// An `Io` on a connected loopback socket (the listener keeps the other end's backlog).
    fn plain_io() -> (TcpListener, Sock, Io) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let sock = Sock(Arc::new(tcp));
        let io = Io {
            transport: Transport::Plain(sock.clone()),
            sock: sock.clone(),
            write_timeout: None,
            read_timeout: None,
        };
        (listener, sock, io)
    }

    #[test]
    fn the_write_timeout_is_set_again_only_when_it_moves_past_the_slack() {
        let (_listener, sock, mut io) = plain_io();
        let in_force = || sock.0.write_timeout().unwrap();
        let secs = Duration::from_secs;
        io.set_write_timeout(secs(30)).unwrap();
        assert_eq!(in_force(), Some(secs(30)));
        // What is left of a deadline a few microseconds later: the socket keeps its value.
        io.set_write_timeout(secs(30) - Duration::from_micros(300))
            .unwrap();
        assert_eq!(in_force(), Some(secs(30)));
        io.set_write_timeout(secs(30) + TIMEOUT_SLACK).unwrap();
        assert_eq!(in_force(), Some(secs(30)));
        // Beyond the slack, either way, it is set.
        io.set_write_timeout(secs(29)).unwrap();
        assert_eq!(in_force(), Some(secs(29)));
        io.set_write_timeout(secs(30)).unwrap();
        assert_eq!(in_force(), Some(secs(30)));
        // Set behind its back (closing a TLS connection does): forgotten, set again.
        io.write_timeout = None;
        sock.0.set_write_timeout(Some(secs(1))).unwrap();
        io.set_write_timeout(secs(30)).unwrap();
        assert_eq!(in_force(), Some(secs(30)));
    }

    #[test]
    fn the_read_timeout_is_kept_within_the_slack_and_set_again_once_forgotten() {
        let (_listener, sock, mut io) = plain_io();
        let in_force = || sock.0.read_timeout().unwrap();
        let secs = Duration::from_secs;
        io.set_read_timeout(secs(60)).unwrap();
        assert_eq!(in_force(), Some(secs(60)));
        // The next idle wait, a request later: kept.
        io.set_read_timeout(secs(60) - Duration::from_micros(200))
            .unwrap();
        assert_eq!(in_force(), Some(secs(60)));
        io.set_read_timeout(secs(10)).unwrap();
        assert_eq!(in_force(), Some(secs(10)));
        // The connection thread's look at the client sets 1 ms behind the cache's back, and
        // forgets it: the next wait sets its own again (else every read would end in 1 ms).
        sock.0
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        io.read_timeout = None;
        io.set_read_timeout(secs(10)).unwrap();
        assert_eq!(in_force(), Some(secs(10)));
    }
}
