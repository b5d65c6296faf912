//! An in-memory [`Wire`] for the framing tests: hands its input out in small reads, records
//! every write and flush, and at the end of its input either reports end of stream or stalls
//! like a silent socket (sleeps for the read timeout, then `WouldBlock`).

use std::io::{self, Read, Write};
use std::time::Duration;

use super::wire::Wire;

pub(crate) struct MemWire {
    input: Vec<u8>,
    pos: usize,
    /// Most bytes one read hands out.
    step: usize,
    /// At the end of the input: end of stream (`true`) or a stall (`false`).
    eof: bool,
    read_timeout: Duration,
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
            read_timeout: Duration::from_millis(10),
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

impl Read for MemWire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.input.len() {
            if self.eof {
                return Ok(0);
            }
            std::thread::sleep(self.read_timeout);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.step).min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for MemWire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.fail_after.is_some_and(|n| self.writes.len() >= n) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = match self.take_at_most {
            Some(max) => max.saturating_sub(self.writes.iter().map(Vec::len).sum()),
            None => buf.len(),
        };
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = room.min(buf.len());
        self.writes.push(buf[..n].to_vec());
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }
}

impl Wire for MemWire {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.read_timeout = timeout;
        Ok(())
    }
    fn set_write_timeout(&mut self, _: Duration) -> io::Result<()> {
        Ok(())
    }
}
