//! What one client may hold of the server's shared resources: connections per address
//! ([`PerIp`]) and bytes of request bodies in flight ([`BodyBudget`], [`Lease`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::util::lock;

/// Open connections per client address. An IPv6 client is counted by its /64 (one host
/// has as many addresses in its /64 as it likes).
#[derive(Debug, Default)]
pub(crate) struct PerIp {
    /// 0: no cap.
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// The address a connection is counted under.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !(u128::MAX >> 64);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

impl PerIp {
    pub(crate) fn new(cap: usize) -> PerIp {
        PerIp {
            cap,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more connection from `ip`, unless that address is at the cap.
    pub(crate) fn try_add(&self, ip: IpAddr) -> bool {
        let mut open = lock(&self.open);
        let n = open.entry(key(ip)).or_insert(0);
        if self.cap > 0 && *n >= self.cap {
            return false;
        }
        *n += 1;
        true
    }

    /// One connection from `ip` has ended.
    pub(crate) fn remove(&self, ip: IpAddr) {
        let mut open = lock(&self.open);
        let k = key(ip);
        if let Some(n) = open.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                open.remove(&k);
            }
        }
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        lock(&self.open).len()
    }
}

/// Bytes of request bodies being read or handled, all connections together.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    limit: usize,
    used: AtomicUsize,
}

impl BodyBudget {
    pub(crate) fn new(limit: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One request's share of the [`BodyBudget`]: grown before its body is read, given back
/// when it is dropped (when the body is freed).
#[derive(Debug)]
pub(crate) struct Lease {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Lease {
    pub(crate) fn new(budget: &Arc<BodyBudget>) -> Lease {
        Lease {
            budget: Arc::clone(budget),
            bytes: 0,
        }
    }

    /// Takes `n` more bytes of the budget; false (and nothing taken) when they are not left.
    pub(crate) fn grow(&mut self, n: usize) -> bool {
        let limit = self.budget.limit;
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= limit)
            });
        if taken.is_ok() {
            self.bytes += n;
        }
        taken.is_ok()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_capped_one_by_one_and_ipv6_by_its_64() {
        let per_ip = PerIp::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(per_ip.try_add(a) && per_ip.try_add(a));
        assert!(!per_ip.try_add(a), "the third from one address");
        assert!(per_ip.try_add(b), "another address is not affected");
        per_ip.remove(a);
        assert!(per_ip.try_add(a));
        // Mapped IPv4 is the IPv4 address; IPv6 counts by /64.
        assert!(!per_ip.try_add("::ffff:10.0.0.1".parse().unwrap()));
        assert!(per_ip.try_add("fd00::1".parse().unwrap()));
        assert!(per_ip.try_add("fd00::2".parse().unwrap()));
        assert!(!per_ip.try_add("fd00::3".parse().unwrap()));
        assert!(per_ip.try_add("fd00:0:0:1::1".parse().unwrap()));
        for ip in [
            "10.0.0.1",
            "10.0.0.1",
            "10.0.0.2",
            "fd00::1",
            "fd00::9",
            "fd00:0:0:1::5",
        ] {
            per_ip.remove(ip.parse().unwrap());
        }
        assert_eq!(per_ip.addresses(), 0, "no entry left behind");
        let free = PerIp::new(0);
        assert!((0..1000).all(|_| free.try_add(a)), "0: no cap");
    }

    #[test]
    fn leases_share_the_budget_and_give_it_back_when_dropped() {
        let budget = BodyBudget::new(100);
        let mut one = Lease::new(&budget);
        let mut two = Lease::new(&budget);
        assert!(one.grow(60));
        assert!(!two.grow(41), "over the budget");
        assert!(two.grow(40));
        assert_eq!(budget.used(), 100);
        drop(one);
        assert_eq!(budget.used(), 40);
        assert!(two.grow(60));
        assert!(!two.grow(usize::MAX), "no overflow");
        drop(two);
        assert_eq!(budget.used(), 0);
    }
}
