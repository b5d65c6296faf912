//! One connection to a provider (or through a proxy's tunnel to it): the stream, clear or
//! TLS, and the bytes read from it and not used yet.

use std::io;

use crate::rt::tls::Stream;
use crate::rt::wire::read;

/// Bytes asked of the socket by one read.
const READ_SIZE: usize = 16 * 1024;
/// A connection back in the pool keeps at most this much buffer.
const KEPT_BUFFER: usize = 32 * 1024;

pub(crate) struct Conn {
    pub(crate) stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    pub(crate) fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// What has been read and not used.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once more from the connection; 0 at its end.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_SIZE / 4 {
            self.buf.resize(self.end + READ_SIZE, 0);
        }
        let n = read(&mut self.stream, &mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Before the connection is pooled: nothing left over, little memory kept.
    pub(crate) fn idle(&mut self) -> bool {
        if self.start != self.end {
            // Bytes beyond the answer: the connection is out of step.
            return false;
        }
        self.start = 0;
        self.end = 0;
        if self.buf.len() > KEPT_BUFFER {
            self.buf = Vec::new();
        }
        true
    }
}
