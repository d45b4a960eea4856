//! Egress for sandboxes without the host's network: each sandbox with
//! `--network egress` keeps its own network namespace and gets a veth
//! pair into a bridge owned by the worker, an address of the worker's
//! subnet, a default route through the bridge and the resolvers of
//! [`resolvers`]; the host masquerades what leaves and refuses the rest
//! ([`firewall`], deciding by [`policy`]).
//!
//! Lifecycle: the bridge and the rules are made at the worker's start,
//! after removing whatever a previous run with the same tag left (a
//! crash, a SIGKILL): its bridge, its `nv<tag>*` veths, its rules. A
//! sandbox's veth is made with its namespace (so prewarmed sandboxes pay
//! it ahead of the request) and deleted with it ([`Lease`]); the rules
//! know no sandbox, so none is touched on that path. Shutdown removes the
//! bridge and the rules.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::cidr::Cidr;
use crate::config::EgressConfig;

use super::netlink;

pub mod firewall;
pub mod policy;

pub use firewall::{Backend, Choice};

/// Where `auto` looks for a free subnet: /22s (1,021 sandboxes each) of
/// this range, one per worker on the host.
pub const AUTO_RANGE: &str = "10.213.0.0/16";
pub const AUTO_PREFIX: u8 = 22;
/// Serialises the choice of subnets between workers of one host.
const LOCK_FILE: &str = "/run/nubo/egress.lock";

/// The worker's egress: its bridge, subnet, rules and address slots.
pub struct Egress {
    tag: String,
    bridge: String,
    bridge_index: u32,
    gateway: Ipv4Addr,
    subnet: Cidr,
    backend: Backend,
    rules: firewall::Ruleset,
    slots: Mutex<Slots>,
}

struct Slots {
    used: Vec<bool>,
    /// Allocation goes round, so an address is reused as late as possible
    /// (conntrack entries of its last owner have long expired).
    next: usize,
}

/// What `netns::create` needs to give a new namespace its network.
#[derive(Debug, Clone)]
pub struct Attach {
    /// The host end of the veth (the sandbox's end is `eth0`).
    pub host_name: String,
    pub bridge_index: u32,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// A sandbox's address and veth: dropping it deletes the veth (its peer
/// in the sandbox goes with it) and frees the address.
pub struct Lease {
    egress: Arc<Egress>,
    slot: usize,
    pub attach: Attach,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Err(e) =
            netlink::Socket::open().and_then(|mut s| s.delete_link(&self.attach.host_name))
        {
            tracing::warn!(veth = %self.attach.host_name, "deleting a sandbox's veth: {e}");
        }
        let mut slots = self.egress.slots.lock().expect("lock poisoned");
        slots.used[self.slot] = false;
    }
}

fn bridge_name(tag: &str) -> String {
    format!("nb{tag}")
}

fn veth_prefix(tag: &str) -> String {
    format!("nv{tag}")
}

/// Holds an exclusive lock on a file while alive (closing it unlocks).
struct HostLock {
    _file: std::fs::File,
}

impl HostLock {
    fn take() -> Result<HostLock, String> {
        use std::os::fd::AsRawFd;
        if let Some(d) = Path::new(LOCK_FILE).parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .map_err(|e| format!("opening {LOCK_FILE}: {e}"))?;
        // SAFETY: flock takes a descriptor we own for the call's duration.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "locking {LOCK_FILE}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(HostLock { _file: f })
    }
}

/// The IPv4 routes of the host's main table: (interface, range).
fn host_routes() -> Vec<(String, Cidr)> {
    let Ok(text) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let dst = u32::from_str_radix(f[1], 16).ok()?.swap_bytes();
            let mask = u32::from_str_radix(f[7], 16).ok()?.swap_bytes();
            let prefix = mask.count_ones() as u8;
            Some((
                f[0].to_string(),
                Cidr::new(Ipv4Addr::from(dst), prefix).ok()?,
            ))
        })
        .collect()
}

/// A route (not the default one) that overlaps `c`, on another interface
/// than `ours`.
fn clash(c: &Cidr, ours: &str) -> Option<(String, Cidr)> {
    host_routes()
        .into_iter()
        .find(|(dev, r)| r.prefix > 0 && dev != ours && r.overlaps(c))
}

/// The resolvers sandboxes get: the configured ones, else the host's own
/// that a sandbox can reach (not loopback: a resolver on 127.0.0.53 is the
/// host's, which sandboxes never see).
pub fn resolvers(configured: &[Ipv4Addr]) -> (Vec<Ipv4Addr>, Option<String>) {
    if !configured.is_empty() {
        return (configured.to_vec(), None);
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for l in text.lines() {
        let mut f = l.split_whitespace();
        if f.next() != Some("nameserver") {
            continue;
        }
        match f.next().and_then(|a| a.parse::<Ipv4Addr>().ok()) {
            Some(a) if !a.is_loopback() => out.push(a),
            Some(a) => skipped.push(a.to_string()),
            None => {}
        }
    }
    let warning = out.is_empty().then(|| {
        format!(
            "sandboxes with egress have no DNS resolver: the host's /etc/resolv.conf names {} (unreachable from a sandbox); give --egress-dns IP",
            if skipped.is_empty() { "none".to_string() } else { skipped.join(", ") }
        )
    });
    (out, warning)
}

/// The sandboxes' /etc/resolv.conf for `servers`, keeping the host's
/// `search` and `options` lines.
pub fn resolv_conf(servers: &[Ipv4Addr]) -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut s = String::from("# written by the nubo worker for sandboxes with egress\n");
    for l in host.lines() {
        if l.starts_with("search ") || l.starts_with("options ") {
            s.push_str(l);
            s.push('\n');
        }
    }
    for a in servers {
        s.push_str(&format!("nameserver {a}\n"));
    }
    s
}

fn write_sysctl(path: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

impl Egress {
    /// Sets up the worker's bridge and rules (see the module doc);
    /// `protected` are the controllers' API endpoints.
    pub fn start(
        tag: &str,
        cfg: &EgressConfig,
        dns: &[Ipv4Addr],
        protected: &[SocketAddrV4],
    ) -> Result<Arc<Egress>, String> {
        let backend = firewall::detect(cfg.firewall)?;
        let bridge = bridge_name(tag);
        let _lock = HostLock::take()?;
        let mut nl = netlink::Socket::open().map_err(|e| format!("opening rtnetlink: {e}"))?;
        // What a previous run left, before looking for a free subnet (its
        // bridge's route would look taken).
        Self::remove_leftovers(tag);
        let subnet = match cfg.subnet {
            Some(s) => {
                if let Some((dev, r)) = clash(&s, &bridge) {
                    return Err(format!(
                        "egress subnet {s} overlaps the host's route {r} on {dev}: pick a free range with --egress-subnet"
                    ));
                }
                s
            }
            None => auto_subnet(&bridge)?,
        };
        if !(16..=29).contains(&subnet.prefix) {
            return Err(format!(
                "egress subnet {subnet}: the prefix must be /16 to /29"
            ));
        }
        let policy = policy::Policy::new(subnet, &cfg.allow, &cfg.deny, dns, protected)?;
        let rules = firewall::Ruleset {
            tag: tag.to_string(),
            bridge: bridge.clone(),
            subnet,
            policy,
            max_connections: cfg.max_connections,
            rate_bytes: u64::from(cfg.rate_mbit) * 1_000_000 / 8,
        };
        let gateway = subnet.nth(1);
        let made = (|| -> Result<u32, String> {
            nl.add_bridge(&bridge)
                .map_err(|e| format!("creating the bridge {bridge}: {e}"))?;
            // No IPv6 on the bridge: sandboxes have none either.
            let _ = write_sysctl(
                &format!("/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6"),
                "1",
            );
            let index = netlink::index(&bridge).map_err(|e| format!("the bridge {bridge}: {e}"))?;
            nl.add_addr(index, gateway, subnet.prefix).map_err(|e| {
                format!(
                    "addressing the bridge {bridge} {gateway}/{}: {e}",
                    subnet.prefix
                )
            })?;
            nl.set_up(index)
                .map_err(|e| format!("bringing up the bridge {bridge}: {e}"))?;
            write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(|e| format!("enabling IPv4 forwarding (net.ipv4.ip_forward): {e}"))?;
            rules.apply(backend)?;
            Ok(index)
        })();
        let bridge_index = match made {
            Ok(i) => i,
            Err(e) => {
                rules.remove(backend);
                let _ = nl.delete_link(&bridge);
                return Err(e);
            }
        };
        // Addresses 0 (network), 1 (gateway) and the last (broadcast) are
        // never handed out.
        let n = subnet.size() as usize;
        let mut used = vec![false; n];
        used[0] = true;
        used[1] = true;
        used[n - 1] = true;
        Ok(Arc::new(Egress {
            tag: tag.to_string(),
            bridge,
            bridge_index,
            gateway,
            subnet,
            backend,
            rules,
            slots: Mutex::new(Slots { used, next: 2 }),
        }))
    }

    pub fn describe(&self) -> String {
        format!(
            "bridge {} {}/{} ({}), {} addresses",
            self.bridge,
            self.gateway,
            self.subnet.prefix,
            self.backend.name(),
            self.subnet.size() - 3
        )
    }

    pub fn subnet(&self) -> Cidr {
        self.subnet
    }

    /// A free address and a veth name for a new sandbox.
    pub fn lease(self: &Arc<Self>) -> Result<Lease, String> {
        let mut s = self.slots.lock().expect("lock poisoned");
        let n = s.used.len();
        let start = s.next;
        let slot = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| !s.used[i])
            .ok_or_else(|| {
                format!(
                    "no free egress address in {} ({} sandboxes with egress run on this worker): give the worker a larger --egress-subnet",
                    self.subnet,
                    n - 3
                )
            })?;
        s.used[slot] = true;
        s.next = (slot + 1) % n;
        drop(s);
        let host_name = format!("{}{slot:04x}", veth_prefix(&self.tag));
        // A veth of that name left behind (it should not be) would make
        // the creation fail.
        if let Ok(mut nl) = netlink::Socket::open() {
            let _ = nl.delete_link(&host_name);
        }
        Ok(Lease {
            egress: self.clone(),
            slot,
            attach: Attach {
                host_name,
                bridge_index: self.bridge_index,
                addr: self.subnet.nth(slot as u32),
                prefix: self.subnet.prefix,
                gateway: self.gateway,
            },
        })
    }

    /// Removes the rules, the bridge and any veth left (shutdown).
    pub fn stop(&self) {
        self.rules.remove(self.backend);
        if let Ok(mut nl) = netlink::Socket::open() {
            remove_links(&mut nl, &self.tag);
        }
    }

    /// The interface names this worker's egress uses (for tests and
    /// leftover checks): the bridge and the veth name prefix.
    pub fn names(tag: &str) -> (String, String) {
        (bridge_name(tag), veth_prefix(tag))
    }

    /// Removes what a worker with this tag left, links and rules, whatever
    /// the backend (a previous run may have used the other one).
    pub fn remove_leftovers(tag: &str) {
        if let Ok(mut nl) = netlink::Socket::open() {
            remove_links(&mut nl, tag);
        }
        firewall::remove_all(tag, &bridge_name(tag));
    }
}

/// Deletes the worker's bridge and every `nv<tag>*` link of the host.
fn remove_links(nl: &mut netlink::Socket, tag: &str) {
    let prefix = veth_prefix(tag);
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&prefix) {
                let _ = nl.delete_link(&name);
            }
        }
    }
    let _ = nl.delete_link(&bridge_name(tag));
}

/// The first /22 of [`AUTO_RANGE`] no route of the host overlaps.
fn auto_subnet(ours: &str) -> Result<Cidr, String> {
    let range: Cidr = AUTO_RANGE.parse().expect("a valid range");
    let step = 1u32 << (32 - AUTO_PREFIX);
    let count = range.size() / step;
    for i in 0..count {
        let c = Cidr::new(range.nth(i * step), AUTO_PREFIX).expect("aligned");
        if clash(&c, ours).is_none() {
            return Ok(c);
        }
    }
    Err(format!(
        "no free /{AUTO_PREFIX} left in {AUTO_RANGE} for the egress bridge ({count} workers' bridges or other routes use it): give --egress-subnet"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn tag() -> String {
        format!("{:08x}", rand::random::<u32>())
    }

    fn links(prefix: &str) -> Vec<String> {
        std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    fn in_ns(ns: &Path, cmd: &str) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["sh", "-c", cmd])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A lease gives a namespace `eth0` with its address and a default
    /// route, the host end an isolated port of the bridge; dropping it
    /// deletes the veth; stop removes the bridge and the rules; a start
    /// after a crash (no stop) removes what the crashed run left.
    #[test]
    #[ignore = "needs root"]
    fn bridge_veth_and_cleanup() {
        let tag = tag();
        let (bridge, veths) = Egress::names(&tag);
        let cfg = EgressConfig {
            subnet: Some("10.213.252.0/24".parse().unwrap()),
            ..Default::default()
        };
        let e = Egress::start(&tag, &cfg, &[], &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("ns");
        let lease = e.lease().unwrap();
        assert_eq!(lease.attach.addr.to_string(), "10.213.252.2");
        let _l = super::super::netns::create(&ns, 9001, Some(&lease.attach)).unwrap();
        let addr = in_ns(&ns, "ip -4 -o addr show dev eth0");
        assert!(addr.contains("10.213.252.2/24"), "{addr}");
        let route = in_ns(&ns, "ip route show default");
        assert!(route.contains("via 10.213.252.1 dev eth0"), "{route}");
        let port = Command::new("bridge")
            .args(["-d", "link", "show", "dev", &lease.attach.host_name])
            .output()
            .unwrap();
        let port = String::from_utf8_lossy(&port.stdout).into_owned();
        assert!(port.contains(&format!("master {bridge}")), "{port}");
        assert!(port.contains("isolated on"), "{port}");
        let table = Command::new("nft")
            .args(["list", "table", "inet", &format!("nubo_{tag}")])
            .output()
            .unwrap();
        assert!(table.status.success());
        // A second lease takes the next address.
        let second = e.lease().unwrap();
        assert_eq!(second.attach.addr.to_string(), "10.213.252.3");
        drop(second);
        drop(lease);
        assert!(links(&veths).is_empty(), "{:?}", links(&veths));
        super::super::netns::remove(&ns).unwrap();

        // A crash: the bridge, a veth and the rules stay behind.
        let lease = e.lease().unwrap();
        let _l = super::super::netns::create(&ns, 9001, Some(&lease.attach)).unwrap();
        std::mem::forget(lease);
        std::mem::forget(e);
        assert_eq!(links(&veths).len(), 1);
        let e = Egress::start(&tag, &cfg, &[], &[]).unwrap();
        assert!(links(&veths).is_empty(), "{:?}", links(&veths));
        e.stop();
        super::super::netns::remove(&ns).unwrap();
        assert!(links(&bridge).is_empty());
        let table = Command::new("nft")
            .args(["list", "table", "inet", &format!("nubo_{tag}")])
            .output()
            .unwrap();
        assert!(!table.status.success(), "the rules are gone");
    }
}
