//! Values with many spellings: IP networks and ARNs.
//!
//! A policy that compares such values as text is fooled by another
//! spelling of the same thing (`::/0`, `::0/0` and `0:0::0/0` are one
//! network; so are `0.0.0.0/0` and `10.0.0.0/0`). These helpers parse them
//! the way AWS reads them and answer the questions policies ask. The Python
//! and JavaScript SDKs have the same functions with the same answers.

use std::net::Ipv6Addr;

/// An IPv4 or IPv6 network (an address is a network of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    /// The address, IPv4 in the low 32 bits.
    bits: u128,
    v4: bool,
    prefix: u8,
}

impl Network {
    /// Parse `a.b.c.d/n`, an IPv6 network `x::y/n`, or a bare address;
    /// surrounding ASCII whitespace is ignored. `None` for anything else.
    pub fn parse(text: &str) -> Option<Network> {
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let (bits, v4) = match parse_v4(addr) {
            Some(v) => (u128::from(v), true),
            None if addr.contains(':') => (u128::from(addr.parse::<Ipv6Addr>().ok()?), false),
            None => return None,
        };
        let max = if v4 { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            Some(_) => return None,
        };
        Some(Network { bits, v4, prefix })
    }

    fn width(&self) -> u32 {
        if self.v4 { 32 } else { 128 }
    }

    /// The network's mask over its width.
    fn mask(&self) -> u128 {
        let width = self.width();
        let ones = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
        if self.prefix == 0 { 0 } else { ones & !((1u128 << (width - u32::from(self.prefix))) - 1) }
    }

    /// Whether `other` (an address or network) lies wholly inside this one.
    pub fn contains(&self, other: &Network) -> bool {
        self.v4 == other.v4 && other.prefix >= self.prefix && (other.bits & self.mask()) == (self.bits & self.mask())
    }

    /// Whether the network reaches the whole internet: every IPv4 address,
    /// every global unicast IPv6 address (`2000::/3`), or every IPv4 address
    /// mapped into IPv6 (`::ffff:0:0/96`).
    pub fn is_world_open(&self) -> bool {
        if self.prefix == 0 {
            return true;
        }
        if self.v4 {
            return false;
        }
        let global = Network { bits: 0x2000 << 112, v4: false, prefix: 3 };
        let mapped = Network { bits: 0xffff << 32, v4: false, prefix: 96 };
        self.contains(&global) || self.contains(&mapped)
    }
}

fn parse_v4(text: &str) -> Option<u32> {
    let mut out = 0u32;
    let mut parts = 0;
    for part in text.split('.') {
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        out = (out << 8) | part.parse::<u8>().ok()? as u32;
        parts += 1;
    }
    (parts == 4).then_some(out)
}

/// Whether `text` is a network (any spelling) open to the whole internet.
pub fn is_world_open(text: &str) -> bool {
    Network::parse(text).is_some_and(|n| n.is_world_open())
}

/// An ARN's parts: `arn:partition:service:region:account:resource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arn {
    /// `aws`, `aws-cn` …
    pub partition: String,
    /// `iam`, `s3` …
    pub service: String,
    /// Empty for global resources.
    pub region: String,
    /// Empty for S3 buckets.
    pub account: String,
    /// `role/admin`, `my-bucket/key` … (may contain `:` and `/`).
    pub resource: String,
}

impl Arn {
    /// Parse an ARN; `None` unless it has the six parts, with a partition,
    /// service and resource.
    pub fn parse(text: &str) -> Option<Arn> {
        let mut parts = text.splitn(6, ':');
        if parts.next()? != "arn" {
            return None;
        }
        let mut next = || parts.next().map(str::to_string);
        let arn = Arn { partition: next()?, service: next()?, region: next()?, account: next()?, resource: next()? };
        (!arn.partition.is_empty() && !arn.service.is_empty() && !arn.resource.is_empty()).then_some(arn)
    }

    /// The resource's type and name: `role/path/admin` → (`role`, `path/admin`).
    pub fn resource_type(&self) -> Option<(&str, &str)> {
        self.resource.split_once(['/', ':'])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_whole_internet_is_open() {
        for open in [
            "0.0.0.0/0", "10.0.0.0/0", "000.0.0.0/00", " 0.0.0.0/0 ", "::/0", "::0/0", "0:0:0:0:0:0:0:0/0", "::ffff:0.0.0.0/96",
            "::ffff:0:0/95", "2000::/3", "2000::/2", "::/1", "0::/0",
        ] {
            assert!(is_world_open(open), "{open}");
        }
        for closed in [
            "10.0.0.0/8", "0.0.0.0/1", "0.0.0.0", "2001:db8::/32", "::ffff:10.0.0.0/104", "2000::/4", "nonsense", "0.0.0.0/33", "::/129", "1.2.3/0", "::/0/0",
            "fe80::/0%eth0", "\u{ff11}.2.3.4/0", ":::/0", "1::2::3/0", "1:2:3:4:5:6:7:8:9/0",
        ] {
            assert!(!is_world_open(closed), "{closed}");
        }
    }

    #[test]
    fn networks_contain_addresses_of_their_family() {
        let n = Network::parse("10.1.0.0/16").unwrap();
        assert!(n.contains(&Network::parse("10.1.2.3").unwrap()));
        assert!(!n.contains(&Network::parse("10.2.0.1").unwrap()));
        assert!(!n.contains(&Network::parse("::ffff:10.1.2.3").unwrap()), "families are not mixed");
        assert!(Network::parse("2001:db8::/32").unwrap().contains(&Network::parse("2001:db8:1::/48").unwrap()));
    }

    #[test]
    fn arns_split_into_their_parts() {
        let a = Arn::parse("arn:aws:iam::123456789012:role/path/admin").unwrap();
        assert_eq!((a.partition.as_str(), a.service.as_str(), a.region.as_str(), a.account.as_str()), ("aws", "iam", "", "123456789012"));
        assert_eq!(a.resource_type(), Some(("role", "path/admin")));
        assert_eq!(Arn::parse("arn:aws:logs:us-east-1:1:log-group:a:b").unwrap().resource, "log-group:a:b");
        for bad in ["", "arn:aws:iam::1", "arn::iam::1:role/x", "ARN:aws:iam::1:role/x", "arn:aws:iam::1:"] {
            assert!(Arn::parse(bad).is_none(), "{bad}");
        }
    }
}
