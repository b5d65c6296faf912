//! The per-IP limit: a token bucket per client address, in a bounded table.
//!
//! A bucket holds up to `burst` tokens and gains `per_minute / 60` a second; a request takes
//! one. A full bucket is the same as no bucket, so when the table is full the full (idle)
//! buckets are dropped first, then the one used longest ago: a scan from many addresses
//! costs at most [`TABLE_CAP`] entries. IPv6 clients count by their /64 (one machine picks
//! new addresses within it at will).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::window::ceil_secs;
use crate::util::clock::Clock;
use crate::util::lock;

/// Client addresses tracked at most (about 50 bytes each).
pub const TABLE_CAP: usize = 4096;

/// A token bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    /// `burst` 0 means the default: ten seconds' worth of `per_minute`, at least 1.
    pub fn new(per_minute: u32, burst: u32) -> Rate {
        let burst = if burst == 0 {
            default_burst(per_minute)
        } else {
            burst
        };
        Rate { per_minute, burst }
    }

    fn per_sec(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

/// Ten seconds' worth of `per_minute`, at least 1.
pub fn default_burst(per_minute: u32) -> u32 {
    per_minute.div_ceil(6).max(1)
}

/// One client's tokens.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date (the client's last request).
    at: Instant,
}

impl Bucket {
    fn full(rate: &Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    fn refill(&mut self, rate: &Rate, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * rate.per_sec();
        self.tokens = (self.tokens + gained).min(f64::from(rate.burst));
        self.at = now;
    }

    /// Takes a token, or says in how many seconds one will be there.
    fn take(&mut self, rate: &Rate, now: Instant) -> Result<(), u64> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / rate.per_sec();
        Err(ceil_secs(Duration::from_secs_f64(wait.min(86_400.0))))
    }

    fn is_full(&self, rate: &Rate, now: Instant) -> bool {
        let mut b = self.clone();
        b.refill(rate, now);
        b.tokens >= f64::from(rate.burst)
    }
}

/// The per-IP limit for every client (`-ip-rate`, `-ip-burst`).
pub struct IpLimit {
    rate: Rate,
    cap: usize,
    clock: Arc<dyn Clock>,
    table: Mutex<HashMap<IpAddr, Bucket>>,
}

impl IpLimit {
    pub fn new(rate: Rate, clock: Arc<dyn Clock>) -> IpLimit {
        IpLimit::with_cap(rate, clock, TABLE_CAP)
    }

    fn with_cap(rate: Rate, clock: Arc<dyn Clock>, cap: usize) -> IpLimit {
        IpLimit {
            rate,
            cap: cap.max(1),
            clock,
            table: Mutex::new(HashMap::new()),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Lets a request from `ip` through, or says in how many seconds it may come back.
    pub fn admit(&self, ip: IpAddr) -> Result<(), u64> {
        let now = self.clock.now();
        let client = client_of(ip);
        let mut table = lock(&self.table);
        if !table.contains_key(&client) && table.len() >= self.cap {
            self.make_room(&mut table, now);
        }
        table
            .entry(client)
            .or_insert_with(|| Bucket::full(&self.rate, now))
            .take(&self.rate, now)
    }

    /// Drops the full buckets (they say nothing), else the one used longest ago.
    fn make_room(&self, table: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        table.retain(|_, b| !b.is_full(&self.rate, now));
        if table.len() >= self.cap {
            let oldest = table.iter().min_by_key(|(_, b)| b.at).map(|(ip, _)| *ip);
            if let Some(ip) = oldest {
                table.remove(&ip);
            }
        }
    }

    /// Addresses tracked now.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        lock(&self.table).len()
    }
}

/// The address a client is counted by: IPv4 as it is, IPv6 by its /64.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::clock::ManualClock;

    fn limit(per_minute: u32, burst: u32, cap: usize) -> (IpLimit, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let l = IpLimit::with_cap(Rate::new(per_minute, burst), clock.clone(), cap);
        (l, clock)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_the_rate() {
        let (l, clock) = limit(60, 3, 16);
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert_eq!(l.admit(a), Ok(()));
        }
        assert_eq!(l.admit(a), Err(1), "one token a second");
        assert_eq!(
            l.admit(ip("10.0.0.2")),
            Ok(()),
            "others have their own bucket"
        );
        clock.advance(Duration::from_millis(1000));
        assert_eq!(l.admit(a), Ok(()));
        assert_eq!(l.admit(a), Err(1));
        clock.advance(Duration::from_secs(3600));
        for _ in 0..3 {
            assert_eq!(l.admit(a), Ok(()), "never more than the burst");
        }
        assert!(l.admit(a).is_err());
    }

    #[test]
    fn slow_rates_say_how_long_to_wait() {
        let (l, clock) = limit(2, 1, 16);
        let a = ip("10.0.0.1");
        assert_eq!(l.admit(a), Ok(()));
        assert_eq!(l.admit(a), Err(30));
        clock.advance(Duration::from_secs(20));
        assert_eq!(l.admit(a), Err(10));
        clock.advance(Duration::from_secs(10));
        assert_eq!(l.admit(a), Ok(()));
    }

    #[test]
    fn default_burst_is_ten_seconds_worth() {
        assert_eq!(Rate::new(60, 0).burst, 10);
        assert_eq!(Rate::new(600, 0).burst, 100);
        assert_eq!(Rate::new(1, 0).burst, 1);
        assert_eq!(Rate::new(7, 0).burst, 2);
        assert_eq!(Rate::new(60, 5).burst, 5);
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let (l, _) = limit(60, 2, 16);
        assert_eq!(l.admit(ip("fd00:1:2:3::1")), Ok(()));
        assert_eq!(l.admit(ip("fd00:1:2:3:ffff::9")), Ok(()));
        assert!(l.admit(ip("fd00:1:2:3:abcd::1")).is_err());
        assert_eq!(l.admit(ip("fd00:1:2:4::1")), Ok(()));
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn a_scan_of_many_addresses_stays_within_the_cap() {
        let (l, clock) = limit(60, 5, 100);
        for i in 0..10_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(l.admit(a), Ok(()));
            assert!(l.tracked() <= 100);
            if i % 1000 == 0 {
                clock.advance(Duration::from_millis(10));
            }
        }
        assert_eq!(l.tracked(), 100);
    }

    #[test]
    fn an_active_client_keeps_its_bucket_through_a_scan() {
        let (l, clock) = limit(60, 3, 10);
        let busy = ip("192.168.1.5");
        for _ in 0..3 {
            assert_eq!(l.admit(busy), Ok(()));
        }
        // Others come and go; the busy client is not the one used longest ago for long,
        // and an empty bucket is never dropped while there are full ones.
        for i in 0..50u32 {
            clock.advance(Duration::from_millis(1));
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.admit(a);
            if i % 5 == 0 {
                let _ = l.admit(busy);
            }
        }
        assert!(l.admit(busy).is_err(), "its empty bucket was kept");
    }

    #[test]
    fn full_buckets_go_first() {
        let (l, clock) = limit(60, 2, 2);
        let (a, b, c) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
        assert_eq!(l.admit(a), Ok(()));
        assert_eq!(l.admit(a), Ok(()));
        clock.advance(Duration::from_secs(1));
        assert_eq!(l.admit(b), Ok(()));
        clock.advance(Duration::from_secs(2));
        // b is full again by now (1 token back in a second), a is not (2 used, 3 s: full too);
        // both full: both dropped, c fits.
        assert_eq!(l.admit(c), Ok(()));
        assert_eq!(l.tracked(), 1);
    }
}
