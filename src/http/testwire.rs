//! An in-memory [`Wire`] for the framing tests: hands its input out in small reads, records
//! every write and flush, and at the end of its input either reports end of stream or stalls
//! like a silent socket (pending until the reader's deadline passes).

use std::io;
use std::task::{Context, Poll};

use crate::rt::wire::Wire;

pub(crate) struct MemWire {
    input: Vec<u8>,
    pos: usize,
    /// Most bytes one read hands out.
    step: usize,
    /// At the end of the input: end of stream (`true`) or a stall (`false`).
    eof: bool,
    /// Every write call's bytes, in order.
    pub writes: Vec<Vec<u8>>,
    pub flushes: usize,
    /// Writes fail with a broken pipe after this many succeeded.
    pub fail_after: Option<usize>,
    /// A client that stops reading: writes take bytes only up to this many in all, then
    /// time out.
    pub take_at_most: Option<usize>,
}

impl MemWire {
    pub(crate) fn new(input: &[u8]) -> MemWire {
        MemWire {
            input: input.to_vec(),
            pos: 0,
            step: 4096,
            eof: true,
            writes: Vec::new(),
            flushes: 0,
            fail_after: None,
            take_at_most: None,
        }
    }

    /// Hands out at most `step` bytes per read.
    pub(crate) fn step(mut self, step: usize) -> MemWire {
        self.step = step.max(1);
        self
    }

    /// Stalls instead of ending at the end of the input.
    pub(crate) fn stalling(mut self) -> MemWire {
        self.eof = false;
        self
    }

    /// How many input bytes were read.
    pub(crate) fn consumed(&self) -> usize {
        self.pos
    }

    /// Everything written, concatenated.
    pub(crate) fn output(&self) -> Vec<u8> {
        self.writes.concat()
    }
}

impl Wire for MemWire {
    fn poll_read(&mut self, _cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.pos == self.input.len() {
            if self.eof {
                return Poll::Ready(Ok(0));
            }
            // A silent peer: only the reader's own timer ends the wait.
            return Poll::Pending;
        }
        let n = buf.len().min(self.step).min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }

    fn poll_write(&mut self, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.fail_after.is_some_and(|n| self.writes.len() >= n) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = match self.take_at_most {
            Some(max) => max.saturating_sub(self.writes.iter().map(Vec::len).sum()),
            None => buf.len(),
        };
        if room == 0 {
            // A client that stopped reading: only the writer's own timer ends the wait.
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        self.writes.push(buf[..n].to_vec());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flushes += 1;
        Poll::Ready(Ok(()))
    }
}
