//! Streams from a provider: opening one (retried until its first event, never after), and
//! reading it to its end, on the agents' pooled connections.
//!
//! The request's [`Abort`] makes a client's departure interrupt a blocked send or read at
//! once, and carries the deadline of each wait: the first event is due within the
//! request's `timeout` (connecting and sending included), and each later event within
//! `timeout` of the one before — keep-alive comments in between do not count. After
//! `[DONE]` the rest of the body is read (briefly), so that the connection goes back to the
//! pool for the next request.

use std::io::{BufReader, Read};
use std::time::{Duration, Instant};

use ureq::Agent;

use super::abort::Abort;
use super::call::{CONNECT_TIMEOUT, MAX_ERROR_BODY, io_failure, send, with_retries};
use super::resolver::Names;
use super::retry::Failure;
use super::shards::Slot;
use super::target::{Attempted, Target};
use crate::chat::provider_error::{error_in, reported};
use crate::chat::sse::{Event, EventReader};
use crate::chat::stream::{Chunk, Gathered, StreamEnd, read_stream};
use crate::util::Hangup;

/// Read buffer of a stream, over ureq's own 16 KiB input buffer: events are usually a few
/// hundred bytes, and longer ones are simply read in several pieces. (16 KiB here cost
/// 1.2 MB of peak memory at 100 concurrent streams.)
const STREAM_BUFFER: usize = 4 * 1024;
/// After `[DONE]`: how long, and how many bytes, the end of the body may take before the
/// connection is dropped instead of pooled.
const DRAIN_TIME: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 64 * 1024;

/// A stream whose first event has arrived.
pub struct OpenStream {
    /// The first event.
    pub first: Event,
    /// The rest of the events.
    pub events: EventReader<BufReader<ureq::BodyReader<'static>>>,
    /// The request's claim on its connection (see [`Abort`]).
    abort: Abort,
    /// The call's slot, which chose its agent (see `shards`): held while the stream runs.
    slot: Option<Slot>,
}

/// Reads an opened stream to its end (see [`read_stream`]). A complete stream's connection
/// goes back to the pool; any other is closed.
pub fn read_open_stream(
    stream: OpenStream,
    gathered: &mut Gathered,
    each: impl FnMut(&str, &Chunk) -> std::io::Result<()>,
) -> StreamEnd {
    let OpenStream {
        first,
        mut events,
        abort,
        slot,
    } = stream;
    let end = abort.scope(|| {
        let end = read_stream(first, &mut events, gathered, each);
        if matches!(end, StreamEnd::Done) {
            // Whether the rest came or not, the answer is complete.
            events.drain(DRAIN_TIME, DRAIN_BYTES);
        }
        end
    });
    // Dropping the reader gives a fully read connection back to ureq's pool, and closes
    // one cut short; only then is the request's claim on it over.
    drop(events);
    abort.finish();
    drop(slot);
    end
}

/// What one attempt needs.
pub(super) struct Call<'a> {
    pub agent: &'a Agent,
    pub names: &'a Names,
    pub target: &'a Target,
    pub body: &'a [u8],
}

/// Starts a stream: retried until the first event has arrived (never after).
/// `first_wait` bounds the wait for the first event (all attempts together) and `gap` each
/// later one.
pub(super) fn open(
    call: &Call<'_>,
    slot: Slot,
    first_wait: Duration,
    gap: Duration,
    retries: u32,
    hangup: &Hangup,
) -> Attempted<OpenStream> {
    let abort = Abort::new();
    let interrupt = abort.clone();
    hangup.on_hangup(move || interrupt.fire());
    let deadline = Instant::now() + first_wait;
    let mut opened = with_retries(deadline, retries, hangup, |remaining| {
        abort.set_deadline(Some(Instant::now() + remaining));
        abort.scope(|| attempt(call, &abort, remaining, gap))
    });
    match &mut opened.result {
        Ok(open) => open.slot = Some(slot),
        Err(_) => abort.finish(),
    }
    opened
}

/// One attempt: send, check the head, wait for the first event.
fn attempt(
    call: &Call<'_>,
    abort: &Abort,
    remaining: Duration,
    gap: Duration,
) -> Result<OpenStream, Failure> {
    let request = call
        .agent
        .post(&call.target.url)
        .config()
        // Sending is bounded too: a proxy that stops reading must not hold a worker.
        .timeout_send_request(Some(remaining))
        .timeout_send_body(Some(remaining))
        .timeout_recv_response(Some(remaining))
        .timeout_connect(Some(remaining.min(CONNECT_TIMEOUT)))
        .build();
    let resp = send(request, call.target, call.body, remaining, call.names)?;
    let is_json = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    let reader = resp.into_body().into_reader();
    if is_json {
        // A 200 carrying JSON instead of a stream: an error (or a provider that ignores
        // `stream`); either way not something to relay as events, nor to ask again for.
        let mut text = Vec::new();
        let _ = reader.take(MAX_ERROR_BODY).read_to_end(&mut text);
        return Err(Failure::BadCompletion(json_instead_of_stream(&text)));
    }
    let arm = abort.clone();
    let mut events = EventReader::new(BufReader::with_capacity(STREAM_BUFFER, reader))
        .with_waits(gap, Box::new(move |at| arm.set_deadline(at)));
    events.wait_until(Instant::now() + remaining);
    let first = match events.next_event() {
        Ok(Some(Event::Data(d))) => {
            if let Some(msg) = error_in(&d) {
                return Err(Failure::BadAnswer(reported(&msg)));
            }
            Event::Data(d)
        }
        Ok(Some(Event::Done)) => Event::Done,
        Ok(None) => {
            return Err(Failure::BadAnswer(
                "stream ended before its first event".into(),
            ));
        }
        Err(e) => return Err(io_failure(&e, remaining, "waiting for the first event")),
    };
    Ok(OpenStream {
        first,
        events,
        abort: abort.clone(),
        slot: None,
    })
}

fn json_instead_of_stream(body: &[u8]) -> String {
    match error_in(&String::from_utf8_lossy(body)) {
        Some(msg) => reported(&msg),
        None => "provider answered JSON instead of an event stream".to_string(),
    }
}
