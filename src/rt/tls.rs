//! A connection in clear or through TLS (rustls, either side), read and written by tasks
//! without blocking: rustls holds the records, the socket moves them when it is ready.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::task::{Context, Poll, ready};

use super::net::{NonBlocking, TcpStream};

/// A connection: the socket, with a TLS session on it or not.
pub(crate) struct Stream {
    tcp: TcpStream,
    tls: Option<Box<rustls::Connection>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A TLS error as an I/O error (the peer sent something TLS refuses).
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Stream {
    pub(crate) fn plain(tcp: TcpStream) -> Stream {
        Stream { tcp, tls: None }
    }

    /// A TLS session on `tcp`; [`Stream::handshake`] runs its handshake.
    pub(crate) fn tls(tcp: TcpStream, conn: impl Into<rustls::Connection>) -> Stream {
        Stream {
            tcp,
            tls: Some(Box::new(conn.into())),
        }
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The socket, without any TLS session (a proxy's tunnel before its handshake).
    pub(crate) fn into_tcp(self) -> TcpStream {
        self.tcp
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Runs the TLS handshake to its end (at once in clear). Bound it with a deadline.
    pub(crate) async fn handshake(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_handshake(cx)).await
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_flush(cx))?;
            let Some(tls) = &self.tls else {
                return Poll::Ready(Ok(()));
            };
            if !tls.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_read_tls(cx))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Reads TLS records from the socket and processes them; 0 at the socket's end.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(tls) = self.tls.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        loop {
            match tls.read_tls(&mut NonBlocking(&self.tcp)) {
                Ok(0) => return Poll::Ready(Ok(0)),
                Ok(n) => {
                    if let Err(e) = tls.process_new_packets() {
                        // rustls queued an alert for the peer: send it if the socket takes it.
                        let _ = tls.write_tls(&mut NonBlocking(&self.tcp));
                        return Poll::Ready(Err(tls_error(e)));
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.tcp.poll_readable(cx));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reads what has arrived (plaintext), waiting until something has; 0 at the end.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.tls.is_none() {
            return self.tcp.poll_read(cx, buf);
        }
        loop {
            if let Some(tls) = self.tls.as_mut() {
                match tls.reader().read(buf) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    // The socket ended without close_notify: an end all the same (HTTP
                    // framing tells a cut body from a complete one).
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Poll::Ready(Ok(0));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            // Records to send first (a key update, an alert): best effort, not waited for.
            if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            if ready!(self.poll_read_tls(cx))? == 0 {
                // Let the reader say how it ended (close_notify or not).
                continue;
            }
        }
    }

    /// Writes some of `buf` (in TLS: into the session, flushing it to the socket when it is
    /// full), waiting until something is taken.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.tls.is_none() {
            return self.tcp.poll_write(cx, buf);
        }
        loop {
            let n = match self.tls.as_mut() {
                Some(tls) => tls.writer().write(buf)?,
                None => 0,
            };
            if n > 0 || buf.is_empty() {
                // Start sending at once; what the socket does not take now goes on the
                // next flush.
                if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(n));
            }
            // The session's buffer is full: wait until it has gone out.
            ready!(self.poll_flush(cx))?;
        }
    }

    /// Sends everything the TLS session holds (nothing to do in clear: writes go straight
    /// to the socket).
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(tls) = self.tls.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while tls.wants_write() {
            match tls.write_tls(&mut NonBlocking(&self.tcp)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.tcp.poll_writable(cx));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// For a connection that sat idle: whether it can carry another request — nothing
    /// arrived on it meanwhile but TLS housekeeping (session tickets), no end, no error.
    /// Never waits.
    pub(crate) fn check_idle(&mut self) -> bool {
        if !self.tcp.maybe_readable() {
            return true;
        }
        let Some(tls) = self.tls.as_mut() else {
            let mut byte = [0u8; 1];
            return match self.tcp.peek(&mut byte) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tcp.wait_next_read_event();
                    true
                }
                _ => false,
            };
        };
        loop {
            match tls.read_tls(&mut NonBlocking(&self.tcp)) {
                Ok(0) => return false,
                Ok(_) => {
                    if tls.process_new_packets().is_err() {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        let mut byte = [0u8; 1];
        matches!(tls.reader().read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Ends the connection gracefully: `close_notify` in TLS (sent if the socket takes it at
    /// once), then the write side's FIN. The socket itself closes when the stream is dropped.
    pub(crate) fn close(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            while tls.wants_write() {
                match tls.write_tls(&mut NonBlocking(&self.tcp)) {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
        let _ = self.tcp.shutdown(Shutdown::Write);
    }
}
