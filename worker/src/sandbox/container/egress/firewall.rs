//! The host firewall of egress sandboxes, in nftables or iptables: one
//! table (nftables) or one set of chains (iptables) per worker, named by
//! its tag, holding every rule; nothing per sandbox, so a sandbox's start
//! and end touch no rule and a crash leaves only the worker's own table,
//! which its next start replaces.
//!
//! Rules (see [`super::policy`] for the destination decision):
//! - from the bridge: per-sandbox rate limit; never to the bridge again
//!   (sandbox to sandbox); replies of established connections; no IPv6;
//!   always-refused ranges and the controllers' ports; the per-sandbox
//!   connection limit; the resolvers on 53; the ranges, most specific
//!   first; the rest accepted;
//! - to the bridge: rate limit, replies only (no inbound connection);
//! - input from the bridge (the host's own addresses): refused;
//! - output to the bridge: replies only (the host opens nothing into a
//!   sandbox);
//! - outbound from the subnet: masqueraded behind the host's address.
//!
//! Refusals answer (TCP reset, ICMP administratively prohibited), so a
//! function sees "connection refused" at once rather than a timeout.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use super::policy::{Policy, Verdict};
use crate::cidr::Cidr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        }
    }
}

/// Which backend the worker was told to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    /// nftables when `nft` works, else iptables.
    #[default]
    Auto,
    Nftables,
    Iptables,
}

impl std::str::FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Choice, String> {
        match s {
            "auto" => Ok(Choice::Auto),
            "nftables" | "nft" => Ok(Choice::Nftables),
            "iptables" => Ok(Choice::Iptables),
            other => Err(format!(
                "unknown firewall {other:?}: use auto, nftables or iptables"
            )),
        }
    }
}

/// Everything the rules need.
#[derive(Debug, Clone)]
pub struct Ruleset {
    /// The worker's tag: names the table or chains.
    pub tag: String,
    pub bridge: String,
    pub subnet: Cidr,
    pub policy: Policy,
    /// New connections a sandbox may have open at once.
    pub max_connections: u32,
    /// Bytes per second per sandbox and direction; 0: unlimited.
    pub rate_bytes: u64,
}

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut c = Command::new(cmd);
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("running {cmd}: {e}"))?;
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(input.as_bytes())
            .map_err(|e| format!("writing to {cmd}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Picks the backend: the chosen one if it works, else (auto) the first
/// that does; an error naming both failures when none works.
pub fn detect(choice: Choice) -> Result<Backend, String> {
    detect_with(choice, "nft", "iptables")
}

fn detect_with(choice: Choice, nft_cmd: &str, ipt_cmd: &str) -> Result<Backend, String> {
    let nft = || run(nft_cmd, &["list", "tables"], None);
    let ipt = || run(ipt_cmd, &["-w", "-S", "FORWARD"], None);
    let hint = "install nftables (apt-get install nftables) or iptables, or start the worker with --no-egress (functions with --network egress then cannot run on it)";
    match choice {
        Choice::Nftables => nft()
            .map(|()| Backend::Nftables)
            .map_err(|e| format!("egress firewall: {e}; {hint}")),
        Choice::Iptables => ipt()
            .map(|()| Backend::Iptables)
            .map_err(|e| format!("egress firewall: {e}; {hint}")),
        Choice::Auto => match nft() {
            Ok(()) => Ok(Backend::Nftables),
            Err(a) => match ipt() {
                Ok(()) => Ok(Backend::Iptables),
                Err(b) => Err(format!(
                    "egress needs nftables or iptables and neither works here: {a}; {b}; {hint}"
                )),
            },
        },
    }
}

impl Ruleset {
    pub fn table(&self) -> String {
        format!("nubo_{}", self.tag)
    }

    fn chain(&self, what: &str) -> String {
        format!("NUBO-{}-{what}", self.tag)
    }

    /// The nftables script: replaces the worker's table in one transaction.
    pub fn nft(&self) -> String {
        let t = self.table();
        let br = &self.bridge;
        let mut s = String::new();
        // Declaring then deleting makes the replacement idempotent.
        let _ = writeln!(
            s,
            "table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{"
        );
        let _ = writeln!(
            s,
            "  set conns {{ type ipv4_addr; flags dynamic; size 65535; }}"
        );
        for set in ["rate_up", "rate_down"] {
            let _ = writeln!(
                s,
                "  set {set} {{ type ipv4_addr; flags dynamic,timeout; timeout 1m; size 65535; }}"
            );
        }
        let _ = writeln!(
            s,
            "  chain forward {{ type filter hook forward priority filter - 5; policy accept;\n    iifname \"{br}\" jump from_sandbox\n    oifname \"{br}\" jump to_sandbox\n  }}"
        );
        let _ = writeln!(s, "  chain from_sandbox {{");
        if self.rate_bytes > 0 {
            let _ = writeln!(
                s,
                "    update @rate_up {{ ip saddr limit rate over {} bytes/second burst {} bytes }} drop",
                self.rate_bytes,
                self.burst()
            );
        }
        let _ = writeln!(s, "    oifname \"{br}\" drop");
        let _ = writeln!(s, "    ct state established,related accept");
        let _ = writeln!(s, "    meta nfproto ipv6 drop");
        let refused: Vec<String> = self.policy.refused.iter().map(|c| c.to_string()).collect();
        let _ = writeln!(s, "    ip daddr {{ {} }} jump refuse", refused.join(", "));
        for p in &self.policy.protected {
            let _ = writeln!(
                s,
                "    ip daddr {} tcp dport {} jump refuse",
                p.ip(),
                p.port()
            );
        }
        let _ = writeln!(
            s,
            "    ct state new add @conns {{ ip saddr ct count over {} }} jump refuse",
            self.max_connections
        );
        if !self.policy.dns.is_empty() {
            let dns: Vec<String> = self.policy.dns.iter().map(|d| d.to_string()).collect();
            let _ = writeln!(
                s,
                "    ip daddr {{ {} }} meta l4proto {{ tcp, udp }} th dport 53 accept",
                dns.join(", ")
            );
        }
        for (c, v) in &self.policy.ranges {
            let act = match v {
                Verdict::Accept => "accept",
                Verdict::Refuse => "jump refuse",
            };
            let _ = writeln!(s, "    ip daddr {c} {act}");
        }
        let _ = writeln!(s, "    accept\n  }}");
        let _ = writeln!(s, "  chain to_sandbox {{");
        if self.rate_bytes > 0 {
            let _ = writeln!(
                s,
                "    update @rate_down {{ ip daddr limit rate over {} bytes/second burst {} bytes }} drop",
                self.rate_bytes,
                self.burst()
            );
        }
        let _ = writeln!(s, "    ct state established,related accept\n    drop\n  }}");
        let _ = writeln!(
            s,
            "  chain refuse {{\n    meta l4proto tcp reject with tcp reset\n    reject with icmpx type admin-prohibited\n  }}"
        );
        let _ = writeln!(
            s,
            "  chain input {{ type filter hook input priority filter - 5; policy accept;\n    iifname \"{br}\" jump refuse\n  }}"
        );
        let _ = writeln!(
            s,
            "  chain output {{ type filter hook output priority filter - 5; policy accept;\n    oifname \"{br}\" ct state established,related accept\n    oifname \"{br}\" drop\n  }}"
        );
        let _ = writeln!(
            s,
            "  chain postrouting {{ type nat hook postrouting priority srcnat - 5; policy accept;\n    ip saddr {} oifname != \"{br}\" masquerade\n  }}\n}}",
            self.subnet
        );
        s
    }

    fn burst(&self) -> u64 {
        // Two seconds of traffic (iptables refuses a burst of one second or
        // a little more), at least 64 KiB.
        (2 * self.rate_bytes).max(64 * 1024)
    }

    /// The iptables-restore input (with --noflush: our chains are
    /// declared, hence emptied, and jumps to them put first).
    pub fn iptables(&self) -> String {
        let br = &self.bridge;
        let (from, to, refuse) = (self.chain("FROM"), self.chain("TO"), self.chain("REFUSE"));
        let nat = self.chain("NAT");
        let mut s = String::from("*filter\n");
        for c in [&from, &to, &refuse] {
            let _ = writeln!(s, ":{c} - [0:0]");
        }
        let _ = writeln!(s, "-A {refuse} -p tcp -j REJECT --reject-with tcp-reset");
        let _ = writeln!(
            s,
            "-A {refuse} -j REJECT --reject-with icmp-admin-prohibited"
        );
        let kb = self.rate_bytes / 1024;
        if self.rate_bytes > 0 {
            let _ = writeln!(
                s,
                "-A {from} -m hashlimit --hashlimit-above {kb}kb/s --hashlimit-burst {}kb --hashlimit-mode srcip --hashlimit-name nb{}u -j DROP",
                self.burst() / 1024,
                self.tag
            );
        }
        let _ = writeln!(s, "-A {from} -o {br} -j DROP");
        let _ = writeln!(
            s,
            "-A {from} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
        );
        for c in &self.policy.refused {
            let _ = writeln!(s, "-A {from} -d {c} -j {refuse}");
        }
        for p in &self.policy.protected {
            let _ = writeln!(
                s,
                "-A {from} -d {}/32 -p tcp --dport {} -j {refuse}",
                p.ip(),
                p.port()
            );
        }
        let _ = writeln!(
            s,
            "-A {from} -m conntrack --ctstate NEW -m connlimit --connlimit-above {} --connlimit-mask 32 --connlimit-saddr -j {refuse}",
            self.max_connections
        );
        for d in &self.policy.dns {
            for proto in ["udp", "tcp"] {
                let _ = writeln!(s, "-A {from} -d {d}/32 -p {proto} --dport 53 -j ACCEPT");
            }
        }
        for (c, v) in &self.policy.ranges {
            let act = match v {
                Verdict::Accept => "ACCEPT",
                Verdict::Refuse => refuse.as_str(),
            };
            let _ = writeln!(s, "-A {from} -d {c} -j {act}");
        }
        let _ = writeln!(s, "-A {from} -j ACCEPT");
        if self.rate_bytes > 0 {
            let _ = writeln!(
                s,
                "-A {to} -m hashlimit --hashlimit-above {kb}kb/s --hashlimit-burst {}kb --hashlimit-mode dstip --hashlimit-name nb{}d -j DROP",
                self.burst() / 1024,
                self.tag
            );
        }
        let _ = writeln!(
            s,
            "-A {to} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
        );
        let _ = writeln!(s, "-A {to} -j DROP");
        let _ = writeln!(s, "-I FORWARD 1 -i {br} -j {from}");
        let _ = writeln!(s, "-I FORWARD 2 -o {br} -j {to}");
        let _ = writeln!(s, "-I INPUT 1 -i {br} -j {refuse}");
        let _ = writeln!(
            s,
            "-I OUTPUT 1 -o {br} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
        );
        let _ = writeln!(s, "-I OUTPUT 2 -o {br} -j DROP");
        let _ = writeln!(s, "COMMIT\n*nat\n:{nat} - [0:0]");
        let _ = writeln!(s, "-A {nat} -s {} ! -o {br} -j MASQUERADE", self.subnet);
        let _ = writeln!(s, "-I POSTROUTING 1 -j {nat}");
        s.push_str("COMMIT\n");
        s
    }

    /// Installs the rules, replacing what an earlier run of this worker
    /// left.
    pub fn apply(&self, backend: Backend) -> Result<(), String> {
        match backend {
            Backend::Nftables => run("nft", &["-f", "-"], Some(&self.nft())),
            Backend::Iptables => {
                self.remove(backend);
                run(
                    "iptables-restore",
                    &["-w", "--noflush"],
                    Some(&self.iptables()),
                )
            }
        }
    }

    /// Removes the rules; nothing to remove is fine.
    pub fn remove(&self, backend: Backend) {
        match backend {
            Backend::Nftables => remove_nft(&self.tag),
            Backend::Iptables => remove_iptables(&self.tag, &self.bridge),
        }
    }
}

/// Removes a worker's rules of both backends (a previous run may have
/// used the other one); a backend that is not installed is skipped.
pub fn remove_all(tag: &str, bridge: &str) {
    remove_nft(tag);
    remove_iptables(tag, bridge);
}

fn remove_nft(tag: &str) {
    let _ = run(
        "nft",
        &["delete", "table", "inet", &format!("nubo_{tag}")],
        None,
    );
}

fn remove_iptables(tag: &str, bridge: &str) {
    let chain = |what: &str| format!("NUBO-{tag}-{what}");
    let (from, to, refuse, nat) = (chain("FROM"), chain("TO"), chain("REFUSE"), chain("NAT"));
    // One command tells whether there is anything to remove (and whether
    // iptables is there at all).
    let present = run("iptables", &["-w", "-S", &from], None).is_ok()
        || run("iptables", &["-w", "-t", "nat", "-S", &nat], None).is_ok();
    if !present {
        return;
    }
    let br = bridge;
    let rules: Vec<(&str, &str, Vec<&str>)> = vec![
        ("filter", "FORWARD", vec!["-i", br, "-j", &from]),
        ("filter", "FORWARD", vec!["-o", br, "-j", &to]),
        ("filter", "INPUT", vec!["-i", br, "-j", &refuse]),
        (
            "filter",
            "OUTPUT",
            vec![
                "-o",
                br,
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        ),
        ("filter", "OUTPUT", vec!["-o", br, "-j", "DROP"]),
        ("nat", "POSTROUTING", vec!["-j", &nat]),
    ];
    for (table, chain, rule) in rules {
        // Every copy (a crashed run may have left more than one).
        for _ in 0..16 {
            let mut args = vec!["-w", "-t", table, "-D", chain];
            args.extend(rule.iter().copied());
            if run("iptables", &args, None).is_err() {
                break;
            }
        }
    }
    for (table, c) in [
        ("filter", &from),
        ("filter", &to),
        ("filter", &refuse),
        ("nat", &nat),
    ] {
        let _ = run("iptables", &["-w", "-t", table, "-F", c], None);
    }
    for (table, c) in [
        ("filter", &from),
        ("filter", &to),
        ("filter", &refuse),
        ("nat", &nat),
    ] {
        let _ = run("iptables", &["-w", "-t", table, "-X", c], None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ruleset() -> Ruleset {
        let subnet: Cidr = "10.213.4.0/22".parse().unwrap();
        let policy = Policy::new(
            subnet,
            &["192.168.7.0/24".parse().unwrap()],
            &["198.51.100.0/24".parse().unwrap()],
            &["10.255.255.53".parse().unwrap()],
            &["10.0.0.2:7700".parse().unwrap()],
        )
        .unwrap();
        Ruleset {
            tag: "0a1b2c3d".into(),
            bridge: "nb0a1b2c3d".into(),
            subnet,
            policy,
            max_connections: 4321,
            rate_bytes: 1_000_000,
        }
    }

    /// The scripts carry each part of the policy, in the order that makes
    /// it right: the refusals and the limit before the ranges, the most
    /// specific range first, the default accept last.
    #[test]
    fn scripts_follow_the_policy() {
        let r = ruleset();
        for script in [r.nft(), r.iptables()] {
            let at = |needle: &str| {
                script
                    .find(needle)
                    .unwrap_or_else(|| panic!("{needle:?} missing from\n{script}"))
            };
            let link_local = at("169.254.0.0/16");
            let protected = at("10.0.0.2");
            let limit = at("4321");
            let dns = at("10.255.255.53");
            let lan_allow = at("192.168.7.0/24");
            let deny = at("198.51.100.0/24");
            let private = at("192.168.0.0/16");
            assert!(link_local < protected && protected < limit && limit < dns);
            assert!(dns < lan_allow && lan_allow < private && deny < private);
            at("10.213.4.0/22");
            at("nb0a1b2c3d");
            assert!(script.contains("masquerade") || script.contains("MASQUERADE"));
        }
        let nft = r.nft();
        assert!(nft.starts_with("table inet nubo_0a1b2c3d {}\ndelete table inet nubo_0a1b2c3d\n"));
        assert!(
            nft.contains("limit rate over 1000000 bytes/second"),
            "{nft}"
        );
        assert!(nft.contains("iifname \"nb0a1b2c3d\" jump refuse"), "{nft}");
        let ipt = r.iptables();
        assert!(ipt.contains("--connlimit-above 4321"), "{ipt}");
        assert!(
            ipt.contains("-I INPUT 1 -i nb0a1b2c3d -j NUBO-0a1b2c3d-REFUSE"),
            "{ipt}"
        );
        // No limit configured: no limit rule.
        let r = Ruleset { rate_bytes: 0, ..r };
        assert!(!r.nft().contains("limit rate"));
        assert!(!r.iptables().contains("hashlimit"));
    }

    /// Neither tool: one error naming both failures and what to do.
    #[test]
    fn no_firewall_is_a_clear_error() {
        let e = detect_with(Choice::Auto, "/nonexistent/nft", "/nonexistent/iptables").unwrap_err();
        assert!(e.contains("neither works"), "{e}");
        assert!(
            e.contains("/nonexistent/nft") && e.contains("/nonexistent/iptables"),
            "{e}"
        );
        assert!(
            e.contains("apt-get install nftables") && e.contains("--no-egress"),
            "{e}"
        );
        let e = detect_with(Choice::Iptables, "nft", "/nonexistent/iptables").unwrap_err();
        assert!(e.contains("/nonexistent/iptables"), "{e}");
    }

    #[test]
    fn choice_names() {
        assert_eq!("auto".parse::<Choice>().unwrap(), Choice::Auto);
        assert_eq!("nft".parse::<Choice>().unwrap(), Choice::Nftables);
        assert_eq!("iptables".parse::<Choice>().unwrap(), Choice::Iptables);
        let e = "ufw".parse::<Choice>().unwrap_err();
        assert!(e.contains("auto, nftables or iptables"), "{e}");
    }

    fn listing(backend: Backend, tag: &str) -> String {
        let out = match backend {
            Backend::Nftables => Command::new("nft")
                .args(["list", "table", "inet", &format!("nubo_{tag}")])
                .output(),
            Backend::Iptables => Command::new("sh")
                .args(["-c", "iptables -w -S; iptables -w -t nat -S"])
                .output(),
        }
        .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Both backends take the rules the kernel way (so the scripts are
    /// valid), applying twice leaves one copy, and removal leaves nothing.
    #[test]
    #[ignore = "needs root"]
    fn both_backends_apply_and_remove() {
        for backend in [Backend::Nftables, Backend::Iptables] {
            let tag = format!("{:08x}", rand::random::<u32>());
            let r = Ruleset {
                tag: tag.clone(),
                bridge: format!("nb{tag}"),
                ..ruleset()
            };
            r.apply(backend).unwrap();
            r.apply(backend).unwrap();
            let l = listing(backend, &tag);
            assert_eq!(
                l.matches("192.168.7.0/24").count(),
                1,
                "{} once:\n{l}",
                backend.name()
            );
            assert!(l.contains(&format!("nb{tag}")), "{l}");
            remove_all(&tag, &r.bridge);
            let l = listing(backend, &tag);
            assert!(!l.contains(&tag), "{} left rules:\n{l}", backend.name());
        }
    }
}
