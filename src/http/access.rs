//! IP allow lists: who may use a port, and who may change the gateway's state.
//!
//! A list is a comma-separated set of CIDR blocks (`192.168.0.0/16,::1/128`) or bare
//! addresses. IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) are judged as their IPv4
//! address; other IPv6 addresses only match IPv6 blocks, so IPv6 is refused unless a list
//! names it. [`ipv4_fault`] explains text that looks like an IPv4 address and is not one,
//! for every place that reads addresses or host names from the command line.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// One CIDR block, with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let addr: IpAddr = addr.parse().map_err(|_| match ipv4_fault(addr) {
            Some(why) if addr == s => format!("'{s}' {why}"),
            Some(why) => format!("'{s}': '{addr}' {why}"),
            None => format!("'{s}' is not an IP address or CIDR block"),
        })?;
        let written = addr;
        let addr = addr.to_canonical();
        // `::ffff:10.0.0.0/104` is the IPv4 block 10.0.0.0/8 written in IPv6.
        let mapped = written.is_ipv6() && addr.is_ipv4();
        let max = if written.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("'{s}': the prefix length must be 0 to {max}")),
            },
        };
        let prefix = match prefix.checked_sub(96) {
            Some(n) if mapped => n,
            None if mapped => {
                return Err(format!(
                    "'{s}': an IPv4-mapped block needs a prefix length of 96 to 128"
                ));
            }
            _ => prefix,
        };
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` (already canonical) lies in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// What is wrong with `s` when it is made only of digits and dots (with at least one
/// digit) and yet is not an IPv4 address as Rust reads one (four decimal numbers 0-255
/// without leading zeros): the reason and what to write instead, to follow the quoted
/// text in a message. `None` for an address, and for anything with another character,
/// which is a name or some other mistake.
///
/// Such text is never meant as a name, so it must not be taken for one (a certificate for
/// the DNS name `192.168.001.005` is useless), and it is not turned into an address here
/// either: `010` is 10 to some tools and octal 8 to others (`inet_aton`).
pub fn ipv4_fault(s: &str) -> Option<String> {
    let digits_and_dots = s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let a_digit = s.bytes().any(|b| b.is_ascii_digit());
    if !digits_and_dots || !a_digit || s.parse::<Ipv4Addr>().is_ok() {
        return None;
    }
    let octets: Vec<u8> = s.split('.').filter_map(|p| p.parse().ok()).collect();
    match <[u8; 4]>::try_from(octets) {
        // Four numbers 0-255 that do not parse: the only fault left is leading zeros.
        Ok(octets) if s.split('.').count() == 4 => Some(format!(
            "has leading zeros, which some tools read as octal; write {}",
            Ipv4Addr::from(octets)
        )),
        _ => Some(
            "is not an IPv4 address: write four numbers from 0 to 255 with dots between \
             and no leading zeros, e.g. 192.168.1.5"
                .to_string(),
        ),
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::from((bits & m).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::from((bits & m).to_be_bytes())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A set of CIDR blocks. An empty list allows nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    blocks: Vec<Cidr>,
}

impl AllowList {
    /// Parses a comma-separated list; blanks between commas are ignored.
    pub fn parse(s: &str) -> Result<AllowList, String> {
        let blocks = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Cidr::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList { blocks })
    }

    /// Whether the client address is allowed. IPv4-mapped IPv6 counts as IPv4.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.blocks.iter().any(|b| b.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.blocks.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{b}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_of_the_design() {
        let http = AllowList::parse("127.0.0.0/8,::1/128").unwrap();
        assert!(http.allows(ip("127.0.0.1")));
        assert!(http.allows(ip("127.8.9.10")));
        assert!(http.allows(ip("::1")));
        assert!(!http.allows(ip("192.168.1.5")));
        assert!(!http.allows(ip("::2")));

        let https = AllowList::parse("192.168.0.0/16,10.0.0.0/8").unwrap();
        assert!(https.allows(ip("192.168.44.3")));
        assert!(https.allows(ip("10.255.0.1")));
        assert!(!https.allows(ip("172.16.0.1")));
        assert!(!https.allows(ip("127.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        let list = AllowList::parse("10.0.0.0/8").unwrap();
        assert!(list.allows(ip("::ffff:10.1.2.3")));
        assert!(!list.allows(ip("::ffff:11.1.2.3")));
        // A list written with a mapped address means the IPv4 address.
        // A mapped block is the IPv4 block: /120 of the IPv6 form is a /24.
        let mapped = AllowList::parse("::ffff:192.168.1.0/120").unwrap();
        assert!(mapped.allows(ip("192.168.1.200")) && !mapped.allows(ip("192.168.2.1")));
        let short = AllowList::parse("::ffff:192.168.1.0/64").unwrap_err();
        assert!(short.contains("96 to 128"), "{short}");
        let long = AllowList::parse("10.0.0.0/33").unwrap_err();
        assert!(long.contains("0 to 32"), "{long}");
        let mapped = AllowList::parse("::ffff:192.168.1.7").unwrap();
        assert!(mapped.allows(ip("192.168.1.7")));
    }

    #[test]
    fn ipv6_refused_unless_named() {
        let v4_only = AllowList::parse("0.0.0.0/0").unwrap();
        assert!(v4_only.allows(ip("8.8.8.8")));
        assert!(!v4_only.allows(ip("fe80::1")));
        assert!(!v4_only.allows(ip("::1")));
        let v6 = AllowList::parse("fd00::/8").unwrap();
        assert!(v6.allows(ip("fd12:3456::1")));
        assert!(!v6.allows(ip("fe80::1")));
        assert!(!v6.allows(ip("10.0.0.1")));
    }

    #[test]
    fn host_bits_are_cleared_and_bare_addresses_are_hosts() {
        let list = AllowList::parse(" 192.168.1.77/24 , 10.0.0.5 ,").unwrap();
        assert_eq!(list.to_string(), "192.168.1.0/24,10.0.0.5/32");
        assert!(list.allows(ip("192.168.1.1")));
        assert!(list.allows(ip("10.0.0.5")));
        assert!(!list.allows(ip("10.0.0.6")));
    }

    #[test]
    fn zero_prefix_and_edges() {
        assert!(AllowList::parse("::/0").unwrap().allows(ip("2001:db8::1")));
        assert!(
            AllowList::parse("1.2.3.4/32")
                .unwrap()
                .allows(ip("1.2.3.4"))
        );
        assert!(AllowList::parse("[::1]").unwrap().allows(ip("::1")));
    }

    #[test]
    fn bad_lists_are_refused_with_a_reason() {
        for bad in [
            "10.0.0.0/33",
            "::1/129",
            "banana",
            "10.0.0/8",
            "10.0.0.0/-1",
            "10.0.0.0/x",
        ] {
            let err = AllowList::parse(bad).unwrap_err();
            assert!(err.contains(bad.split('/').next().unwrap()), "{bad}: {err}");
        }
        assert!(AllowList::parse("").unwrap().is_empty());
        assert!(!AllowList::parse("").unwrap().allows(ip("127.0.0.1")));
    }

    #[test]
    fn ipv4_lookalikes_say_what_to_write() {
        assert_eq!(
            ipv4_fault("192.168.001.005").as_deref(),
            Some("has leading zeros, which some tools read as octal; write 192.168.1.5")
        );
        assert!(ipv4_fault("010.0.0.0").unwrap().ends_with("write 10.0.0.0"));
        for bad in [
            "192.168.1.256",
            "1.2.3",
            "1.2.3.4.5",
            "10",
            "1..2.3",
            "1.2.3.4.",
        ] {
            let why = ipv4_fault(bad).unwrap();
            assert!(why.starts_with("is not an IPv4 address"), "{bad}: {why}");
        }
        for not_one in [
            "192.168.1.5",
            "0.0.0.0",
            "gw.lan",
            "10.lan",
            "...",
            "",
            "::1",
        ] {
            assert_eq!(ipv4_fault(not_one), None, "{not_one}");
        }
        let err = AllowList::parse("10.0.0.0/8,192.168.001.0/24").unwrap_err();
        assert_eq!(
            err,
            "'192.168.001.0/24': '192.168.001.0' has leading zeros, which some tools read \
             as octal; write 192.168.1.0"
        );
        let err = AllowList::parse("192.168.01.5").unwrap_err();
        assert!(err.starts_with("'192.168.01.5' has leading zeros"), "{err}");
    }
}
