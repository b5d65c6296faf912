//! How an API front relays a stream: its events from each upstream chunk, its keep-alive,
//! its failure event.

use std::io;

use crate::chat::answer::Usage;
use crate::chat::stream::Chunk;
use crate::error::Error;
use crate::http::Sink;

/// How an API front turns an upstream stream into its own events.
pub(crate) trait StreamFront: Send {
    /// One upstream chunk: `raw` as received, `chunk` its parse.
    fn chunk(&mut self, raw: &str, chunk: &Chunk, sink: &mut dyn Sink) -> io::Result<()>;
    /// The stream is complete; `usage` is what the upstream reported.
    fn done(&mut self, usage: &Usage, sink: &mut dyn Sink) -> io::Result<()>;
    /// The upstream failed after the first event: the front's final error event.
    fn failed(&mut self, error: &Error, sink: &mut dyn Sink) -> io::Result<()>;
    /// The provider has been silent for a while: something that tells the client (and any
    /// proxy between) that the stream lives, and that it ignores. An SSE comment here.
    fn keepalive(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        sink.send(KEEPALIVE_COMMENT)
    }
}

/// The keep-alive of a stream in the OpenAI shapes: an SSE comment, which clients skip.
const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

/// An API front's translator of chat chunks into its own events, written into a buffer.
pub(crate) trait Translate: Send {
    /// One upstream chunk. `Err` with a reason: the answer cannot go on (it has grown past
    /// a limit); the front ends it with its failure event and the reading stops.
    fn chunk(&mut self, chunk: &Chunk, out: &mut Vec<u8>) -> Result<(), String>;
    /// The stream is complete; `usage` is what the upstream reported.
    fn done(&mut self, usage: &Usage, out: &mut Vec<u8>);
    /// The upstream failed after the first event.
    fn failed(&mut self, error: &Error, out: &mut Vec<u8>);
    /// See [`StreamFront::keepalive`].
    fn keepalive(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(KEEPALIVE_COMMENT);
    }
}

/// A [`Translate`] as a [`StreamFront`]: the frames of one upstream chunk go to the client
/// in one piece.
pub(crate) struct Framed<T> {
    translator: T,
    buf: Vec<u8>,
}

impl<T> Framed<T> {
    pub(crate) fn new(translator: T) -> Framed<T> {
        Framed {
            translator,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        let result = if self.buf.is_empty() {
            Ok(())
        } else {
            sink.send(&self.buf)
        };
        self.buf.clear();
        result
    }
}

/// Why a front stopped reading on its own: the answer grew past a limit (its failure event
/// is out), which is neither the client leaving nor the provider failing.
#[derive(Debug)]
pub(crate) struct CannotGoOn;

impl std::fmt::Display for CannotGoOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the answer cannot go on")
    }
}

impl std::error::Error for CannotGoOn {}

impl CannotGoOn {
    pub(super) fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<CannotGoOn>())
    }
}

impl<T: Translate> StreamFront for Framed<T> {
    fn chunk(&mut self, _raw: &str, chunk: &Chunk, sink: &mut dyn Sink) -> io::Result<()> {
        if let Err(message) = self.translator.chunk(chunk, &mut self.buf) {
            self.translator
                .failed(&Error::Upstream { message }, &mut self.buf);
            self.send(sink)?;
            return Err(io::Error::other(CannotGoOn));
        }
        self.send(sink)
    }

    fn done(&mut self, usage: &Usage, sink: &mut dyn Sink) -> io::Result<()> {
        self.translator.done(usage, &mut self.buf);
        self.send(sink)
    }

    fn failed(&mut self, error: &Error, sink: &mut dyn Sink) -> io::Result<()> {
        self.translator.failed(error, &mut self.buf);
        self.send(sink)
    }

    fn keepalive(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        self.translator.keepalive(&mut self.buf);
        self.send(sink)
    }
}
