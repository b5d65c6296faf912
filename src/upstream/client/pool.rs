//! Idle connections, kept per event loop (a socket belongs to the loop that made it) and
//! per destination, newest first. A connection that has been idle too long, or whose
//! server closed it meanwhile (seen without a system call, from the loop's last events),
//! is dropped instead of reused. A task on each loop closes connections that outstay the
//! idle time while no request comes.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Conn;

/// How long an idle connection is kept.
pub(crate) const IDLE_TIME: Duration = Duration::from_secs(30);
/// Idle connections per destination and loop.
const PER_KEY: usize = 128;
/// Idle connections per loop, all destinations.
const PER_LOOP: usize = 256;

/// Where a connection leads: the client that made it, the destination, and the way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) client: u64,
    pub(crate) https: bool,
    /// In lower case (the URL's own, shared).
    pub(crate) host: Arc<str>,
    pub(crate) port: u16,
    pub(crate) proxied: bool,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    /// Per destination (a loop talks to a handful: a list beats hashing the key). A
    /// destination's entry stays while it is in use; the sweep drops empty ones.
    idle: Vec<(Key, Vec<Idle>)>,
    count: usize,
    sweeping: bool,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An idle connection to `key`'s destination, if one is fit for reuse.
pub(crate) fn take(key: &Key) -> Option<Conn> {
    let mut dropped = Vec::new();
    let found = POOL.try_with(|p| {
        let mut pool = p.borrow_mut();
        let pool = &mut *pool;
        let (_, list) = pool.idle.iter_mut().find(|(k, _)| k == key)?;
        let mut found = None;
        while let Some(idle) = list.pop() {
            pool.count -= 1;
            let mut idle = idle;
            if idle.since.elapsed() < IDLE_TIME && usable(&mut idle.conn) {
                found = Some(idle.conn);
                break;
            }
            dropped.push(idle.conn);
        }
        found
    });
    let found = found.ok().flatten();
    // Closed outside the pool's borrow (a socket's drop touches the loop).
    drop(dropped);
    found
}

/// Whether a pooled connection can carry another request: on the same loop, and nothing
/// arrived on it while it was idle (a server's close, or garbage).
fn usable(conn: &mut Conn) -> bool {
    conn.stream.tcp().is_on_this_loop() && conn.stream.check_idle()
}

/// Keeps a connection whose answer was read to its end, for the next request to `key`.
pub(crate) fn put(key: Key, mut conn: Conn) {
    if !conn.idle() {
        return;
    }
    let start_sweep = POOL.try_with(|p| {
        let mut pool = p.borrow_mut();
        if pool.count >= PER_LOOP {
            return None;
        }
        let at = match pool.idle.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                pool.idle.push((key, Vec::new()));
                pool.idle.len() - 1
            }
        };
        let list = &mut pool.idle[at].1;
        if list.len() >= PER_KEY {
            return None;
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
        pool.count += 1;
        let start = !pool.sweeping;
        pool.sweeping = true;
        Some(start)
    });
    // (At the thread's end the connection is simply closed.)
    if start_sweep == Ok(Some(true)) {
        crate::rt::spawn(sweep());
    }
}

/// Closes connections idle past [`IDLE_TIME`], every half of it, while there are any.
async fn sweep() {
    loop {
        crate::rt::time::sleep(IDLE_TIME / 2).await;
        let swept = POOL.try_with(|p| {
            let mut pool = p.borrow_mut();
            let mut expired = Vec::new();
            for (_, list) in pool.idle.iter_mut() {
                let (old, young): (Vec<Idle>, Vec<Idle>) =
                    list.drain(..).partition(|i| i.since.elapsed() >= IDLE_TIME);
                *list = young;
                expired.extend(old);
            }
            pool.idle.retain(|(_, l)| !l.is_empty());
            pool.count -= expired.len();
            let empty = pool.count == 0;
            if empty {
                pool.sweeping = false;
            }
            (expired, empty)
        });
        let Ok((expired, empty)) = swept else {
            return;
        };
        drop(expired);
        if empty {
            return;
        }
    }
}

/// Idle connections on this loop (tests).
#[cfg(test)]
pub(crate) fn idle_here() -> usize {
    POOL.with(|p| p.borrow().count)
}
