//! Whether the client is still there while its request is handled: its socket is looked at
//! when the loop says something arrived on it (no system call otherwise), and the
//! request's [`Hangup`] fires when it has gone.
//!
//! A client that half-closed its side after sending (`printf … | nc`) is still there and
//! gets its answer; one that closed both sides has gone. Both look the same — the end of
//! its data — until something is sent: so on plain HTTP/1.1 the connection then sends an
//! interim `100 Continue` (which every HTTP/1.1 client must take before the answer). A
//! client that has gone answers it with a reset, seen [`PROBE_ECHO`] later; one that
//! half-closed reads it and waits. Over TLS a client that leaves sends `close_notify` first
//! (seen at once); HTTP/1.0 allows no interim answer, and its half-closed clients are
//! answered. Once nothing more can be learnt from events (data waiting, or the end seen),
//! the socket is looked at every [`POLL`] for a reset.
//!
//! Only an end of data that comes after the answer began means the client left. One that
//! came before is a half-close, and it stays one while the answer is written: the watch
//! remembers it, and the later looks (which still find the end there) only take a reset or
//! an error as a departure.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use super::Hangup;
use crate::rt::net::TcpStream;
use crate::rt::time::{Sleep, sleep};

/// The interim answer that tells a half-closed client from one that has gone.
pub(crate) const PROBE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// How long a departed client's reset may take to come back after the probe (loopback and
/// a LAN: well under this).
const PROBE_ECHO: Duration = Duration::from_millis(20);
/// How often the socket is looked at once events tell nothing more.
const POLL: Duration = Duration::from_millis(250);
/// A TLS record header's first byte for an alert (a `close_notify`, usually).
const TLS_ALERT: u8 = 0x15;
/// TLS 1.3 hides the record type: every record says "application data" (0x17). An encrypted
/// alert is the 2 alert bytes, the inner type byte and a 16-byte AEAD tag: 19 bytes.
const TLS13_RECORD: u8 = 0x17;
const TLS13_ALERT_LEN: u16 = 2 + 1 + 16;

/// What a look at the client's side of the connection shows.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Data (a pipelined request) waiting to be read.
    Data,
    /// Nothing to read now.
    Quiet,
    /// The end of its data: it closed, or only half-closed.
    Ended,
    /// A reset, an error, or a TLS alert: it has gone.
    Gone,
}

/// Looks at the client's side: peeks only, so nothing is taken from the next request.
pub(crate) fn look(tcp: &TcpStream, tls: bool) -> Peer {
    let mut first = [0u8; 5];
    match tcp.peek(&mut first) {
        Ok(0) => Peer::Ended,
        Ok(n) if tls && tls_alert(&first[..n]) => Peer::Gone,
        Ok(_) => Peer::Data,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Peer::Quiet,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Peer::Quiet,
        Err(_) => Peer::Gone,
    }
}

/// Whether peeked bytes start with a TLS alert record: in clear (TLS 1.2), or an encrypted
/// record of exactly an alert's size (TLS 1.3). A 2-byte application write would look the
/// same; an HTTP client does not send one between requests.
pub(crate) fn tls_alert(peeked: &[u8]) -> bool {
    match peeked {
        [TLS_ALERT, ..] => true,
        [TLS13_RECORD, _, _, hi, lo, ..] => u16::from_be_bytes([*hi, *lo]) == TLS13_ALERT_LEN,
        _ => false,
    }
}

enum State {
    /// Waiting for the loop to say something arrived.
    Events,
    /// The probe was sent: a reset is due before this.
    Probing(Sleep),
    /// Looking every [`POLL`].
    Polling(Sleep),
    /// The hang-up fired: nothing more to watch.
    Done,
}

/// The watch over one request's client.
pub(crate) struct Watch {
    state: State,
    tls: bool,
    http11: bool,
    /// The answer has begun: an end of data means the client left (no probe any more).
    answering: bool,
    /// The client's data ended before the answer began: it half-closed, and the end of its
    /// data, still seen on every later look, does not mean that it left.
    ended_before: bool,
}

impl Watch {
    pub(crate) fn new(tls: bool, http11: bool) -> Watch {
        Watch {
            state: State::Events,
            tls,
            http11,
            answering: false,
            ended_before: false,
        }
    }

    /// From now on the answer is being written. An end of the client's data that is already
    /// there (and was not looked at yet: the handler answered before the watch ran) came
    /// before the answer, so it is a half-close. A client that has gone as well is found
    /// out by the answer itself: its reset fails a write or shows on the next look.
    pub(crate) fn answering(&mut self, tcp: &TcpStream) {
        if matches!(self.state, State::Events)
            && !self.tls
            && tcp.maybe_readable()
            && look(tcp, self.tls) == Peer::Ended
        {
            self.ended_before = true;
            self.state = State::Polling(sleep(POLL));
        }
        self.answering = true;
    }

    /// Whether an end of the client's data, seen now, means that it left: always over TLS
    /// (as before: no probe tells a half-close from a departure there), and on plain
    /// connections once the answer has begun, unless the end was there before it.
    fn end_means_gone(&self) -> bool {
        self.tls || (self.answering && !self.ended_before)
    }

    /// Watches; fires `hangup` when the client has gone. Never ready: poll it beside the
    /// work it guards. (It may write the probe on `tcp` while no answer is being written.)
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, tcp: &TcpStream, hangup: &Hangup) {
        loop {
            match &mut self.state {
                State::Done => return,
                State::Events => {
                    if tcp.poll_readable(cx).is_pending() {
                        return;
                    }
                    match look(tcp, self.tls) {
                        Peer::Quiet => tcp.wait_next_read_event(),
                        // Kept for the next request; events say nothing more until it is read.
                        Peer::Data => self.state = State::Polling(sleep(POLL)),
                        Peer::Gone => self.gone(hangup),
                        Peer::Ended if self.end_means_gone() => self.gone(hangup),
                        Peer::Ended if !self.http11 => {
                            self.ended_before = true;
                            self.state = State::Polling(sleep(POLL));
                        }
                        Peer::Ended => {
                            self.ended_before = true;
                            // 25 bytes into an empty send buffer (nothing of the answer
                            // went out): taken at once, or the client has gone.
                            if !matches!(tcp.try_write(PROBE), Ok(n) if n == PROBE.len()) {
                                self.gone(hangup);
                            } else {
                                self.state = State::Probing(sleep(PROBE_ECHO));
                            }
                        }
                    }
                }
                State::Probing(alarm) => {
                    if Pin::new(alarm).poll(cx).is_pending() {
                        return;
                    }
                    // A reset after the client's FIN does not show in a read (that still
                    // says end of data); it is the socket's pending error.
                    match tcp.take_error() {
                        Ok(None) => self.state = State::Polling(sleep(POLL)),
                        _ => self.gone(hangup),
                    }
                }
                State::Polling(alarm) => {
                    if Pin::new(alarm).poll(cx).is_pending() {
                        return;
                    }
                    match look(tcp, self.tls) {
                        Peer::Gone => self.gone(hangup),
                        Peer::Ended if self.end_means_gone() => self.gone(hangup),
                        _ if !matches!(tcp.take_error(), Ok(None)) => self.gone(hangup),
                        _ => self.state = State::Polling(sleep(POLL)),
                    }
                }
            }
        }
    }

    fn gone(&mut self, hangup: &Hangup) {
        hangup.fire();
        self.state = State::Done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_alerts_are_told_from_data() {
        assert!(tls_alert(&[0x15, 3, 3, 0, 2]));
        assert!(tls_alert(&[0x17, 3, 3, 0, 19]));
        assert!(!tls_alert(&[0x17, 3, 3, 0, 40]));
        assert!(!tls_alert(b"GET /"));
        assert!(!tls_alert(&[]));
    }
}
