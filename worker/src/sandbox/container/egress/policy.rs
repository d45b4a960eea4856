//! Where a sandbox with egress may connect: the decision the firewall
//! rules encode, kept as data so it can be tested without a kernel.
//!
//! In order:
//! 1. Always refused, whatever the configuration: loopback, link-local
//!    (169.254.0.0/16, where cloud metadata services answer), "this
//!    network", multicast and reserved ranges, the sandboxes' own subnet,
//!    every address of the worker's host (by the input hook, not listed
//!    here) and the controllers' API ports.
//! 2. Past its connection limit, a sandbox's new connections are refused.
//! 3. The resolvers sandboxes are given, on port 53.
//! 4. The worker's `egress_allow` / `egress_deny` lists: the most specific
//!    listed range holding the destination decides (deny wins a tie).
//!    `egress_deny 0.0.0.0/0` with a few allowed ranges is an allowlist;
//!    `egress_allow 10.0.0.0/8` opens that private range. Not listed, the
//!    private ranges are refused.
//! 5. Anything else (the internet) is allowed.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::cidr::Cidr;

/// Refused whatever `egress_allow` says.
pub const ALWAYS_REFUSED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    (
        "169.254.0.0/16",
        "link-local, where cloud metadata services answer",
    ),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and broadcast"),
];

/// Refused unless `egress_allow` lists them: networks that are not the
/// internet (a LAN, a cloud VPC, carrier NAT, benchmarking nets).
pub const PRIVATE_BY_DEFAULT: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "198.18.0.0/15",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Refuse,
}

/// The whole decision, as the firewall backends render it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Ranges always refused (step 1), the sandbox subnet included.
    pub refused: Vec<Cidr>,
    /// Controller API endpoints, refused (step 1).
    pub protected: Vec<SocketAddrV4>,
    /// Resolvers reachable on port 53 (step 3).
    pub dns: Vec<Ipv4Addr>,
    /// Step 4, most specific first: the first range holding an address
    /// decides.
    pub ranges: Vec<(Cidr, Verdict)>,
}

impl Policy {
    /// Builds the policy; an `allow` entry that only ever names
    /// always-refused addresses is an error (it could never work, and
    /// saying so beats a silent no).
    pub fn new(
        subnet: Cidr,
        allow: &[Cidr],
        deny: &[Cidr],
        dns: &[Ipv4Addr],
        protected: &[SocketAddrV4],
    ) -> Result<Policy, String> {
        let mut refused: Vec<Cidr> = ALWAYS_REFUSED
            .iter()
            .map(|(c, _)| c.parse().expect("a valid built-in range"))
            .collect();
        for a in allow {
            if let Some((c, why)) = ALWAYS_REFUSED
                .iter()
                .find(|(c, _)| c.parse::<Cidr>().expect("a valid built-in range").covers(a))
            {
                return Err(format!(
                    "egress_allow {a}: {c} ({why}) is always refused to sandboxes; remove it"
                ));
            }
            if subnet.covers(a) {
                return Err(format!(
                    "egress_allow {a}: that is the sandboxes' own subnet ({subnet}); sandboxes never reach each other"
                ));
            }
        }
        refused.push(subnet);
        // (range, verdict, rank): rank orders equal sizes.
        let mut ranges: Vec<(Cidr, Verdict, u8)> = Vec::new();
        ranges.extend(deny.iter().map(|c| (*c, Verdict::Refuse, 0)));
        ranges.extend(allow.iter().map(|c| (*c, Verdict::Accept, 1)));
        ranges.extend(PRIVATE_BY_DEFAULT.iter().map(|c| {
            (
                c.parse().expect("a valid built-in range"),
                Verdict::Refuse,
                2,
            )
        }));
        // Listed ranges first (most specific first, deny before allow),
        // then the defaults.
        ranges.sort_by_key(|(c, _, rank)| (*rank == 2, std::cmp::Reverse(c.prefix), *rank));
        let mut seen = std::collections::HashSet::new();
        ranges.retain(|(c, _, _)| seen.insert(*c));
        Ok(Policy {
            refused,
            protected: protected.to_vec(),
            dns: dns.to_vec(),
            ranges: ranges.into_iter().map(|(c, v, _)| (c, v)).collect(),
        })
    }

    /// What the rules decide for a new TCP connection to `ip:port` from
    /// a sandbox under its connection limit (the host's own addresses
    /// aside, which the input hook refuses).
    pub fn decide(&self, ip: Ipv4Addr, port: u16) -> Verdict {
        if self.refused.iter().any(|c| c.contains(ip))
            || self
                .protected
                .iter()
                .any(|p| *p.ip() == ip && p.port() == port)
        {
            return Verdict::Refuse;
        }
        if port == 53 && self.dns.contains(&ip) {
            return Verdict::Accept;
        }
        self.ranges
            .iter()
            .find(|(c, _)| c.contains(ip))
            .map(|(_, v)| *v)
            .unwrap_or(Verdict::Accept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        let allow: Vec<Cidr> = allow.iter().map(|s| c(s)).collect();
        let deny: Vec<Cidr> = deny.iter().map(|s| c(s)).collect();
        Policy::new(
            c("10.213.0.0/22"),
            &allow,
            &deny,
            &[ip("10.255.255.53")],
            &["192.168.1.10:7700".parse().unwrap()],
        )
        .unwrap()
    }

    #[test]
    fn defaults_allow_the_internet_only() {
        let p = policy(&[], &[]);
        use Verdict::*;
        assert_eq!(p.decide(ip("198.51.100.7"), 443), Accept);
        assert_eq!(p.decide(ip("8.8.8.8"), 53), Accept);
        for a in [
            "127.0.0.1",
            "169.254.169.254",
            "10.213.0.5",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "224.0.0.251",
            "255.255.255.255",
            "0.0.0.0",
        ] {
            assert_eq!(p.decide(ip(a), 80), Refuse, "{a}");
        }
        // The resolver, though private, answers on 53 only.
        assert_eq!(p.decide(ip("10.255.255.53"), 53), Accept);
        assert_eq!(p.decide(ip("10.255.255.53"), 80), Refuse);
    }

    #[test]
    fn the_most_specific_range_decides() {
        let p = policy(&["192.168.1.0/24", "10.0.0.0/8"], &["192.168.1.128/25"]);
        use Verdict::*;
        // A LAN database allowed, its upper half denied again.
        assert_eq!(p.decide(ip("192.168.1.20"), 5432), Accept);
        assert_eq!(p.decide(ip("192.168.1.200"), 5432), Refuse);
        assert_eq!(p.decide(ip("192.168.2.1"), 5432), Refuse);
        // An allow of a default range's exact size beats the default.
        assert_eq!(p.decide(ip("10.9.9.9"), 80), Accept);
        // ... but never the controllers' port, the subnet or loopback.
        assert_eq!(p.decide(ip("192.168.1.10"), 7700), Refuse);
        assert_eq!(p.decide(ip("192.168.1.10"), 7701), Accept);
        assert_eq!(p.decide(ip("10.213.0.9"), 80), Refuse);
        // A deny of a public range.
        let p = policy(&[], &["198.51.100.0/24"]);
        assert_eq!(p.decide(ip("198.51.100.7"), 443), Refuse);
        assert_eq!(p.decide(ip("198.51.101.7"), 443), Accept);
        // Between the lists, deny wins a tie.
        let p = policy(&["203.0.113.0/24"], &["203.0.113.0/24"]);
        assert_eq!(p.decide(ip("203.0.113.1"), 443), Refuse);
    }

    #[test]
    fn allowing_what_is_always_refused_is_an_error() {
        let subnet = c("10.213.0.0/22");
        for (a, word) in [
            ("169.254.169.254/32", "link-local"),
            ("127.0.0.0/8", "loopback"),
            ("10.213.0.0/24", "own subnet"),
        ] {
            let e = Policy::new(subnet, &[c(a)], &[], &[], &[]).unwrap_err();
            assert!(e.contains(a) && e.contains(word), "{e}");
        }
        // A wide allow is fine: it opens the private ranges, and the
        // always-refused part stays refused.
        let p = Policy::new(subnet, &[c("0.0.0.0/0")], &[], &[], &[]).unwrap();
        assert_eq!(p.decide(ip("10.1.1.1"), 80), Verdict::Accept);
        assert_eq!(p.decide(ip("169.254.169.254"), 80), Verdict::Refuse);
        assert_eq!(p.decide(ip("127.0.0.1"), 80), Verdict::Refuse);
        // An allowlist: everything denied but one range.
        let p = Policy::new(subnet, &[c("198.51.100.0/24")], &[c("0.0.0.0/0")], &[], &[]).unwrap();
        assert_eq!(p.decide(ip("198.51.100.9"), 443), Verdict::Accept);
        assert_eq!(p.decide(ip("203.0.113.9"), 443), Verdict::Refuse);
    }
}
