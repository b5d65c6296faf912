//! Streams from a provider: opening one (retried until its first event, never after), and
//! reading it to its end, on pooled connections.
//!
//! The first event is due within the request's `timeout` (connecting and sending included),
//! and each later event within `timeout` of the one before — keep-alive comments in between
//! do not count; once the answer is whole (its finish reason, then its usage chunk),
//! `[DONE]` is waited for only briefly ([`COMPLETE_GRACE`]). After `[DONE]` the stream's
//! reading ends at once, so that the client gets the end of its answer without waiting for
//! the provider's; the rest of the body is read (briefly) in a task of its own, so that the
//! connection goes back to the pool for the next request. A client that leaves ends the
//! reading at once (its hang-up is raced against every wait).

use std::io;
use std::time::{Duration, Instant};

use super::call::{error_body, io_failure, send, unless_gone, with_retries};
use super::client::{self, Client};
use super::retry::Failure;
use super::target::{Attempted, Target};
use crate::chat::provider_error::{error_in, reported};
use crate::chat::sse::{Event, EventParser};
use crate::chat::stream::{Chunk, Gathered, StreamEnd, take_event, timed_out};
use crate::rt::time::timeout_at;
use crate::util::Hangup;

/// After `[DONE]`: how long, and how many bytes, the end of the body may take before the
/// connection is dropped instead of pooled. The client does not wait for it.
const DRAIN_TIME: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 64 * 1024;

/// Once the answer is whole (its finish reason, then its usage chunk): how long `[DONE]`
/// or the end of the body may take before the stream is ended without them. The provider
/// wrote both at once with the usage chunk, if at all; a second is the time already given
/// to the end of a body after `[DONE]` ([`DRAIN_TIME`]), and it is all a client waits for
/// a provider that sends neither (it waited the whole `timeout` before, then got an error).
const COMPLETE_GRACE: Duration = DRAIN_TIME;

/// A stream whose first event has arrived.
pub struct OpenStream {
    /// The first event.
    pub first: Event,
    body: client::Body,
    parser: EventParser,
    /// Bytes read and not parsed yet.
    buf: Vec<u8>,
    /// Each event within this of the one before.
    gap: Duration,
    /// The deadline of the next wait, when not `gap` from its start.
    next: Option<Instant>,
}

impl OpenStream {
    /// The next event; `Ok(None)` at the end of the stream. Comments and other lines do not
    /// extend the wait for it.
    pub async fn next_event(&mut self) -> io::Result<Option<Event>> {
        let deadline = self
            .next
            .take()
            .unwrap_or_else(|| Instant::now() + self.gap);
        loop {
            if let Some(event) = self.parser.next_event()? {
                return Ok(Some(event));
            }
            self.buf.clear();
            let read = timeout_at(deadline, std::pin::pin!(self.body.next(&mut self.buf))).await;
            match read {
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no event within the timeout",
                    ));
                }
                // An I/O error as it is, so that the client sees its kind and not the
                // OS's text (see `call::io_failure`).
                Ok(Err(client::BodyError::Io(e))) => return Err(e),
                Ok(Err(e)) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
                Ok(Ok(false)) => return self.parser.finish(),
                Ok(Ok(true)) => self.parser.feed(&self.buf),
            }
        }
    }

    /// After `[DONE]`: lets the stream go without holding its reader up. A body already read
    /// to its end gives its connection back to the pool now; one that ends only with the
    /// connection (no length, not chunked) or whose server said `Connection: close` cannot
    /// serve another request, so it is closed now instead of read on; the rest of any other
    /// is read by a task of its own ([`OpenStream::drain`]).
    fn finish(mut self) {
        // `next` decodes all it has read, so a last chunk that came with `[DONE]` has ended
        // the body already: the connection is pooled before the client can ask again.
        if self.body.is_done() || !self.body.reusable() {
            return;
        }
        crate::rt::spawn(async move { self.drain().await });
    }

    /// Reads the rest of the body (within [`DRAIN_TIME`] and [`DRAIN_BYTES`]) so that the
    /// connection can serve another request; dropped with the stream otherwise.
    async fn drain(&mut self) {
        let until = Instant::now() + DRAIN_TIME;
        let mut read = 0;
        while read <= DRAIN_BYTES && !self.body.is_done() {
            self.buf.clear();
            let more = timeout_at(until, std::pin::pin!(self.body.next(&mut self.buf))).await;
            match more {
                Ok(Ok(true)) => read += self.buf.len(),
                _ => return,
            }
        }
    }
}

/// What a stream's reader sends its client while the provider is silent: `send` runs
/// after each `every` without an event (never when `every` is zero).
pub struct Keepalive<'a> {
    pub every: Duration,
    pub send: &'a mut dyn FnMut() -> io::Result<()>,
}

/// Reads an opened stream to its end (see [`take_event`]): each data event goes to `each`,
/// and before the next is read `room` may hold the reading back (a client that reads
/// slowly); while the provider is silent, `keepalive` tells the client that the stream
/// lives. A stream that ended with `[DONE]` or its body gives its connection back to the
/// pool; any other is closed, a whole answer whose `[DONE]` did not come in time included.
/// The client's hang-up ends the reading at once ([`StreamEnd::Stopped`]).
pub async fn read_open_stream(
    mut stream: OpenStream,
    gathered: &mut Gathered,
    hangup: &Hangup,
    mut each: impl FnMut(&str, &Chunk) -> io::Result<()>,
    mut room: impl AsyncFnMut() -> io::Result<()>,
    mut keepalive: Option<Keepalive<'_>>,
) -> StreamEnd {
    let mut event = Ok(Some(std::mem::replace(&mut stream.first, Event::Done)));
    loop {
        if let Err(e) = &event
            && gathered.complete()
        {
            // The answer is whole, and the provider sends neither `[DONE]` nor the end of
            // its body in time, or breaks the connection instead: the answer ends all the
            // same. The connection is closed with the stream, not pooled.
            let after = if timed_out(e) {
                "silence"
            } else {
                "a broken body"
            };
            log::debug!(after = after; "a whole answer ended without [DONE]; the provider's connection is closed");
            return StreamEnd::Done;
        }
        if let Some(end) = take_event(event, gathered, &mut each) {
            if matches!(end, StreamEnd::Done) {
                // Whatever the rest of the body does, the answer is complete.
                stream.finish();
            }
            return end;
        }
        if let Err(e) = room().await {
            return StreamEnd::Stopped(e);
        }
        if gathered.complete() {
            stream.next = Some(Instant::now() + COMPLETE_GRACE.min(stream.gap));
        }
        let next = std::pin::pin!(stream_next(&mut stream, hangup));
        event = match keeping_alive(next, keepalive.as_mut()).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                return StreamEnd::Stopped(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "client gone",
                ));
            }
            Err(e) => return StreamEnd::Stopped(e),
        };
    }
}

/// Waits for `next`, sending a keep-alive after each `every` of silence; `Err` when one
/// could not be sent (the client is gone). The wait for the event goes on across them: its
/// own deadline does not move.
async fn keeping_alive<F: Future>(
    mut next: std::pin::Pin<&mut F>,
    keepalive: Option<&mut Keepalive<'_>>,
) -> io::Result<F::Output> {
    let Some(k) = keepalive.filter(|k| !k.every.is_zero()) else {
        return Ok(next.await);
    };
    loop {
        match timeout_at(Instant::now() + k.every, next.as_mut()).await {
            Ok(event) => return Ok(event),
            Err(_) => (k.send)()?,
        }
    }
}

/// The stream's next event, or `None` when the client hangs up first.
async fn stream_next(
    stream: &mut OpenStream,
    hangup: &Hangup,
) -> Option<io::Result<Option<Event>>> {
    unless_gone(
        hangup,
        std::pin::pin!(async { Ok(stream.next_event().await) }),
    )
    .await
    .ok()
}

/// Starts a stream: retried until the first event has arrived (never after).
/// `first_wait` bounds the wait for the first event (all attempts together) and `gap` each
/// later one.
pub(super) async fn open(
    client: &Client,
    target: &Target,
    body: &[u8],
    (first_wait, gap): (Duration, Duration),
    retries: u32,
    hangup: &Hangup,
) -> Attempted<OpenStream> {
    let deadline = Instant::now() + first_wait;
    with_retries(deadline, retries, hangup, move |remaining| {
        attempt(client, target, body, remaining, gap)
    })
    .await
}

/// One attempt: send, check the head, wait for the first event.
async fn attempt(
    client: &Client,
    target: &Target,
    body: &[u8],
    remaining: Duration,
    gap: Duration,
) -> Result<OpenStream, Failure> {
    let deadline = Instant::now() + remaining;
    let mut resp = send(client, target, body, deadline).await?;
    if resp.head.json {
        // A 200 carrying JSON instead of a stream: an error (or a provider that ignores
        // `stream`); either way not something to relay as events, nor to ask again for.
        let text = error_body(&mut resp.body, deadline).await;
        return Err(Failure::BadCompletion(json_instead_of_stream(&text)));
    }
    let mut stream = OpenStream {
        first: Event::Done,
        body: resp.body,
        parser: EventParser::new(),
        buf: Vec::new(),
        gap,
        next: Some(deadline),
    };
    stream.first = match stream.next_event().await {
        Ok(Some(Event::Data(d))) => {
            if let Some(msg) = error_in(&d) {
                return Err(Failure::BadAnswer(reported(&msg)));
            }
            Event::Data(d)
        }
        // `[DONE]` before any chunk: no answer at all (as a completion without choices).
        Ok(Some(Event::Done)) => {
            return Err(Failure::BadAnswer(
                "stream ended ([DONE]) before its first chunk".into(),
            ));
        }
        Ok(None) => {
            return Err(Failure::BadAnswer(
                "stream ended before its first event".into(),
            ));
        }
        Err(e) => return Err(io_failure(&e, remaining, "waiting for the first event")),
    };
    Ok(stream)
}

fn json_instead_of_stream(body: &[u8]) -> String {
    match error_in(&String::from_utf8_lossy(body)) {
        Some(msg) => reported(&msg),
        None => "provider answered JSON instead of an event stream".to_string(),
    }
}
