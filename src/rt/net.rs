//! TCP sockets on an event loop: reads and writes that wait for readiness instead of
//! blocking the thread.
//!
//! A read that fills less than its buffer, or a write that takes less than it was given,
//! marks the socket not ready in that direction, so the next call waits for the kernel's
//! next event instead of making a system call that would only say "would block".

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::task::{Context, Poll};

use super::core::{Core, Ready};

/// A connected TCP socket, registered with the event loop of the thread that made it. It
/// may be moved between threads as a value (inside a response, say), but only used on its
/// loop: anywhere else its calls fail.
pub(crate) struct TcpStream {
    io: mio::net::TcpStream,
    /// Its loop ([`Core::id`]).
    home: u64,
    token: usize,
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("token", &self.token)
            .finish()
    }
}

fn no_loop() -> io::Error {
    io::Error::other("no event loop on this thread")
}

fn off_loop() -> io::Error {
    io::Error::other("a socket was used off its event loop")
}

impl TcpStream {
    /// Takes over a connected std socket (made non-blocking here).
    pub(crate) fn from_std(std: std::net::TcpStream) -> io::Result<TcpStream> {
        std.set_nonblocking(true)?;
        TcpStream::register(mio::net::TcpStream::from_std(std))
    }

    fn register(mut io: mio::net::TcpStream) -> io::Result<TcpStream> {
        let core = Core::current().ok_or_else(no_loop)?;
        let token = core.register(&mut io)?;
        Ok(TcpStream {
            io,
            home: core.id,
            token,
        })
    }

    /// Runs `f` with the socket's loop; an error off it.
    fn on_loop<R>(&self, f: impl FnOnce(&Core) -> R) -> io::Result<R> {
        Core::with(self.home, f).ok_or_else(off_loop)
    }

    fn clear(&self, dir: Ready) {
        let _ = self.on_loop(|core| core.clear_ready(self.token, dir));
    }

    /// Whether the socket is ready in `dir` (else the task is woken when it is); off its
    /// loop, ready, so that the call that follows fails.
    fn poll_ready(&self, dir: Ready, cx: &mut Context<'_>) -> Poll<()> {
        self.on_loop(|core| core.poll_ready(self.token, dir, cx))
            .unwrap_or(Poll::Ready(()))
    }

    /// Connects to `addr`, waiting for the handshake without blocking the loop. (Bound the
    /// wait with [`super::time::timeout_at`].)
    pub(crate) async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::register(mio::net::TcpStream::connect(addr)?)?;
        // Writable once the handshake is over, either way.
        stream.clear(Ready::Write);
        poll_fn(|cx| stream.poll_ready(Ready::Write, cx)).await;
        if let Some(e) = stream.io.take_error()? {
            return Err(e);
        }
        match stream.io.peer_addr() {
            Ok(_) => Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                // Woken before the handshake ended (a spurious event): wait for the next.
                stream.clear(Ready::Write);
                poll_fn(|cx| stream.poll_ready(Ready::Write, cx)).await;
                if let Some(e) = stream.io.take_error()? {
                    return Err(e);
                }
                stream.io.peer_addr()?;
                Ok(stream)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads what is there, waiting until something is (0: the peer's end of data).
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.poll_ready(Ready::Read, cx).is_pending() {
                return Poll::Pending;
            }
            match self.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// One read without waiting: `WouldBlock` when there is nothing (the socket is then
    /// marked not readable).
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.on_loop(|_| ())?;
        loop {
            match (&self.io).read(buf) {
                Ok(n) => {
                    if n > 0 && n < buf.len() {
                        self.clear(Ready::Read);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        self.clear(Ready::Read);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Writes what the socket takes, waiting until it takes something.
    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            if self.poll_ready(Ready::Write, cx).is_pending() {
                return Poll::Pending;
            }
            match self.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// One write without waiting (`WouldBlock`: the send buffer is full).
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.on_loop(|_| ())?;
        loop {
            match (&self.io).write(buf) {
                Ok(n) => {
                    if n < buf.len() {
                        self.clear(Ready::Write);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        self.clear(Ready::Write);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Waits until the socket has something to read (data, its end, or an error), without
    /// reading it.
    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_ready(Ready::Read, cx)
    }

    /// Whether an event said the socket has something to read since it was last found
    /// empty (without a system call and without waiting).
    pub(crate) fn maybe_readable(&self) -> bool {
        self.on_loop(|core| core.is_ready(self.token, Ready::Read))
            .unwrap_or(true)
    }

    /// Waits until the socket takes more bytes (or has failed).
    pub(crate) fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_ready(Ready::Write, cx)
    }

    /// Forgets that the socket was readable: the task waits for the next event. For a
    /// watcher that has looked (with [`TcpStream::peek`]) and leaves the bytes where they are.
    pub(crate) fn wait_next_read_event(&self) {
        self.clear(Ready::Read);
    }

    #[cfg(test)]
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx, buf)).await
    }

    #[cfg(test)]
    pub(crate) async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = poll_fn(|cx| self.poll_write(cx, buf)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Looks at what is waiting to be read without taking it (never waits).
    pub(crate) fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.peek(buf)
    }

    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.take_error()
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.io.shutdown(how)
    }

    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.io.set_nodelay(on)
    }

    /// Whether this socket belongs to the loop running now (a pooled connection must not
    /// move to another thread's loop).
    pub(crate) fn is_on_this_loop(&self) -> bool {
        Core::current_id() == Some(self.home)
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let (io, token) = (&mut self.io, self.token);
        if Core::with(self.home, |core| core.deregister(io, token)).is_none()
            && Core::current_id().is_some()
        {
            // Dropped on another loop (a bug): closing the socket takes it out of its own
            // loop's poll; its slot there stays taken. (With no loop on this thread, its
            // loop has ended: the pool of a stopped loop is dropped this way.)
            log::error!("a socket was dropped off its event loop");
        }
    }
}

/// A socket as [`std::io::Read`] and [`std::io::Write`] that never blocks: rustls reads and
/// writes its records through it (`WouldBlock` when the socket is not ready).
pub(crate) struct NonBlocking<'a>(pub(crate) &'a TcpStream);

impl Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
