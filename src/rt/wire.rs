//! Bytes to and from a peer, for whatever reads and writes a connection (the server's
//! connections, the upstream client): any non-blocking byte stream (a socket, clear or
//! TLS, or the tests' bytes in memory).

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};

use super::tls::Stream;

/// A connection as its reader and writer see it.
pub(crate) trait Wire {
    /// Reads what has come, waiting until something has; 0 at the end.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    /// Writes some of `buf`, waiting until something is taken.
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
    /// Sends what is buffered (TLS records).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Wire for Stream {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Stream::poll_read(self, cx, buf)
    }
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Stream::poll_write(self, cx, buf)
    }
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Stream::poll_flush(self, cx)
    }
}

pub(crate) async fn read<W: Wire + ?Sized>(w: &mut W, buf: &mut [u8]) -> io::Result<usize> {
    poll_fn(|cx| w.poll_read(cx, buf)).await
}

/// Writes all of `bytes`, then flushes.
pub(crate) async fn write_all<W: Wire + ?Sized>(w: &mut W, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| w.poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    poll_fn(|cx| w.poll_flush(cx)).await
}
