//! The way a streamed body's pieces reach the connection: a queue between whoever makes
//! them — a task on the event loop (an upstream stream relayed), or a closure on a worker
//! thread (a handler written for threads) — and the connection task that writes them.
//!
//! The queue holds at most about [`HIGH`] bytes: a producer on the loop waits for room
//! ([`Pipe::room`]), one on a thread blocks ([`Pipe::send_blocking`]), so a client that
//! does not read slows its stream down instead of growing the gateway's memory. When the
//! connection gives up (the client left, or stalled too long), the pipe is failed and
//! every later send errors, which ends the producer.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::{LogFields, Sink};
use crate::util::lock;

/// Bytes queued beyond which a producer waits.
pub(crate) const HIGH: usize = 64 * 1024;
/// How long a blocked producer sleeps between looks at a failed pipe (it is woken at once
/// in the usual case; this only bounds a missed wake-up).
const RECHECK: Duration = Duration::from_millis(500);

/// A streamed body's queue; clones share it.
#[derive(Clone)]
pub struct Pipe {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    room: Condvar,
}

#[derive(Default)]
struct State {
    pieces: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The producer is done: with this result, and these access-log fields.
    finished: Option<(io::Result<()>, LogFields)>,
    /// The connection gave up: why.
    failed: Option<io::ErrorKind>,
    consumer: Option<Waker>,
    producer: Option<Waker>,
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.inner.state);
        f.debug_struct("Pipe")
            .field("bytes", &s.bytes)
            .field("finished", &s.finished.is_some())
            .field("failed", &s.failed)
            .finish()
    }
}

/// What the connection gets from the pipe.
pub(crate) enum Next {
    Piece(Vec<u8>),
    /// The producer is done.
    End(io::Result<()>, LogFields),
}

impl Pipe {
    pub(crate) fn new() -> Pipe {
        Pipe {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                room: Condvar::new(),
            }),
        }
    }

    // The producer's side.

    /// Queues one piece without waiting; an error when the connection has given up.
    pub fn send(&self, piece: &[u8]) -> io::Result<()> {
        if piece.is_empty() {
            return self.check();
        }
        let waker = {
            let mut s = lock(&self.inner.state);
            if let Some(kind) = s.failed {
                return Err(kind.into());
            }
            s.bytes += piece.len();
            s.pieces.push_back(piece.to_vec());
            s.consumer.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Whether the connection still takes pieces.
    pub fn check(&self) -> io::Result<()> {
        match lock(&self.inner.state).failed {
            Some(kind) => Err(kind.into()),
            None => Ok(()),
        }
    }

    /// Waits until the queue has room (or the connection has given up: then an error).
    pub async fn room(&self) -> io::Result<()> {
        poll_fn(|cx| {
            let mut s = lock(&self.inner.state);
            if let Some(kind) = s.failed {
                return Poll::Ready(Err(kind.into()));
            }
            if s.bytes < HIGH {
                return Poll::Ready(Ok(()));
            }
            s.producer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Queues one piece, blocking this thread while the queue is full.
    pub(crate) fn send_blocking(&self, piece: &[u8]) -> io::Result<()> {
        let mut s = lock(&self.inner.state);
        loop {
            if let Some(kind) = s.failed {
                return Err(kind.into());
            }
            if s.bytes < HIGH || piece.is_empty() {
                break;
            }
            s = match self.inner.room.wait_timeout(s, RECHECK) {
                Ok((s, _)) => s,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        drop(s);
        self.send(piece)
    }

    /// The producer is done.
    pub(crate) fn finish(&self, result: io::Result<()>, log: LogFields) {
        let waker = {
            let mut s = lock(&self.inner.state);
            s.finished = Some((result, log));
            s.consumer.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    // The connection's side.

    /// The next piece, or the end; `Pending` (with the task's waker kept) while the
    /// producer works.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let (next, waker) = {
            let mut s = lock(&self.inner.state);
            if let Some(piece) = s.pieces.pop_front() {
                s.bytes -= piece.len();
                let waker = (s.bytes < HIGH).then(|| s.producer.take()).flatten();
                (Poll::Ready(Next::Piece(piece)), waker)
            } else if let Some((result, log)) = s.finished.take() {
                (Poll::Ready(Next::End(result, log)), None)
            } else {
                s.consumer = Some(cx.waker().clone());
                (Poll::Pending, None)
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        self.inner.room.notify_all();
        next
    }

    /// The connection gives up: every later send fails with `kind`.
    pub(crate) fn fail(&self, kind: io::ErrorKind) {
        let waker = {
            let mut s = lock(&self.inner.state);
            s.failed.get_or_insert(kind);
            s.pieces.clear();
            s.bytes = 0;
            s.producer.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        self.inner.room.notify_all();
    }
}

/// A pipe as a handler on a worker thread writes to it: each send waits for room.
pub(crate) struct BlockingSink(pub(crate) Pipe);

impl Sink for BlockingSink {
    fn send(&mut self, piece: &[u8]) -> io::Result<()> {
        self.0.send_blocking(piece)
    }
}

/// A pipe as a task on the loop writes to it: sends never wait (the task waits for
/// [`Pipe::room`] between pieces).
impl Sink for Pipe {
    fn send(&mut self, piece: &[u8]) -> io::Result<()> {
        Pipe::send(self, piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::block_on;

    fn next(p: &Pipe) -> Option<Next> {
        let waker = Waker::noop();
        match p.poll_next(&mut Context::from_waker(waker)) {
            Poll::Ready(n) => Some(n),
            Poll::Pending => None,
        }
    }

    #[test]
    fn pieces_then_the_end_in_order() {
        let p = Pipe::new();
        p.send(b"a").unwrap();
        p.send(b"").unwrap();
        p.send(b"bc").unwrap();
        assert!(matches!(next(&p), Some(Next::Piece(v)) if v == b"a"));
        assert!(matches!(next(&p), Some(Next::Piece(v)) if v == b"bc"));
        assert!(next(&p).is_none(), "nothing yet");
        p.finish(Ok(()), vec![("k", "v".into())]);
        assert!(matches!(next(&p), Some(Next::End(Ok(()), log)) if log.len() == 1));
    }

    #[test]
    fn a_full_queue_holds_the_producer_back_until_taken() {
        let p = Pipe::new();
        p.send(&vec![0u8; HIGH]).unwrap();
        let producer = p.clone();
        let t = std::thread::spawn(move || producer.send_blocking(b"more"));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "blocked while full");
        assert!(matches!(next(&p), Some(Next::Piece(v)) if v.len() == HIGH));
        t.join().unwrap().unwrap();
        assert!(matches!(next(&p), Some(Next::Piece(v)) if v == b"more"));
        // On the loop: room is awaited.
        p.send(&vec![0u8; HIGH]).unwrap();
        let waiting = p.clone();
        let taker = p.clone();
        let got = block_on(async move {
            crate::rt::spawn(async move {
                crate::rt::time::sleep(Duration::from_millis(10)).await;
                let _ = next(&taker);
            });
            waiting.room().await
        })
        .unwrap();
        assert!(got.is_ok());
    }

    #[test]
    fn a_failed_pipe_ends_every_producer() {
        let p = Pipe::new();
        p.send(&vec![0u8; HIGH]).unwrap();
        let producer = p.clone();
        let t = std::thread::spawn(move || producer.send_blocking(b"more"));
        std::thread::sleep(Duration::from_millis(20));
        p.fail(io::ErrorKind::BrokenPipe);
        assert_eq!(
            t.join().unwrap().unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert!(p.send(b"x").is_err());
        assert!(p.check().is_err());
        assert!(block_on(p.room()).unwrap().is_err());
    }
}
