//! IPv4 address ranges in CIDR notation (`10.0.0.0/8`), as the egress
//! settings take them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (host bits are zero).
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// `addr/prefix`, refusing host bits set (`10.0.0.1/8` is almost
    /// always a typo for an address or for `10.0.0.0/8`).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Cidr, String> {
        if prefix > 32 {
            return Err(format!("prefix /{prefix} is longer than 32"));
        }
        let c = Cidr { addr, prefix };
        if c.network() != addr {
            return Err(format!(
                "{addr}/{prefix} has host bits set: the range is {}/{prefix}",
                c.network()
            ));
        }
        Ok(c)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether `other` lies entirely inside this range.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The `n`-th address of the range (0 is the network address).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(n))
    }

    /// How many addresses the range holds (saturating at u32::MAX).
    pub fn size(&self) -> u32 {
        if self.prefix == 0 {
            u32::MAX
        } else {
            1u32 << (32 - self.prefix)
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `A.B.C.D/N`, or a bare address meaning `/32`.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                p.parse::<u8>()
                    .map_err(|_| format!("{s:?}: the prefix after / must be 0-32"))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 range like 10.0.0.0/8"))?;
        Cidr::new(addr, p).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.255.1.2".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let host: Cidr = "192.168.1.7".parse().unwrap();
        assert_eq!(host.prefix, 32);
        assert!(host.contains("192.168.1.7".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!(all.covers(&c) && !c.covers(&all) && c.overlaps(&all));
        let a: Cidr = "10.1.0.0/16".parse().unwrap();
        let b: Cidr = "10.2.0.0/16".parse().unwrap();
        assert!(!a.overlaps(&b));
        assert_eq!(a.size(), 65536);
        assert_eq!(a.nth(1), "10.1.0.1".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn bad_ranges_say_what_is_wrong() {
        let e = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert!(e.contains("host bits") && e.contains("10.0.0.0/8"), "{e}");
        let e = "10.0.0.0/33".parse::<Cidr>().unwrap_err();
        assert!(e.contains("longer than 32"), "{e}");
        let e = "example.com/8".parse::<Cidr>().unwrap_err();
        assert!(e.contains("IPv4 range"), "{e}");
    }
}
