//! Timers on an event loop: a future that completes at a deadline, and a deadline on any
//! future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::core::Core;

/// Completes at its deadline. Dropped before, it leaves no timer behind. Like a socket, it
/// belongs to the loop that first polled it.
pub(crate) struct Sleep {
    at: Instant,
    /// The loop and the key of its timer.
    timer: Option<(u64, (Instant, u64))>,
}

/// A future that completes at `at`.
pub(crate) fn sleep_until(at: Instant) -> Sleep {
    Sleep { at, timer: None }
}

/// A future that completes after `d`.
pub(crate) fn sleep(d: Duration) -> Sleep {
    sleep_until(Instant::now() + d)
}

impl Sleep {
    fn cancel(&mut self) {
        if let Some((home, key)) = self.timer.take() {
            Core::with(home, |core| core.remove_timer(key));
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.at {
            this.cancel();
            return Poll::Ready(());
        }
        if let Some((home, key)) = this.timer
            && Core::with(home, |core| core.renew_timer(key, cx.waker())) == Some(true)
        {
            return Poll::Pending;
        }
        this.cancel();
        // No loop on this thread: the future can only say it is not due yet.
        let Some(core) = Core::current() else {
            return Poll::Pending;
        };
        let key = core.add_timer(this.at, cx.waker().clone());
        this.timer = Some((core.id, key));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// Runs `future` until `at`; past it, [`Elapsed`] is returned (the caller drops the
/// future). The future is pinned by the caller (`pin!`): taken by value, an async fn would
/// hold it twice (its argument and its pinned copy), which doubles the size of every
/// future that waits with a deadline.
pub(crate) async fn timeout_at<F: Future + ?Sized>(
    at: Instant,
    mut future: Pin<&mut F>,
) -> Result<F::Output, Elapsed> {
    let mut sleep = sleep_until(at);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Runs `future` for at most `d`.
#[cfg(test)]
pub(crate) async fn timeout<F: Future>(d: Duration, future: F) -> Result<F::Output, Elapsed> {
    timeout_at(Instant::now() + d, std::pin::pin!(future)).await
}
