//! "The outside world" for egress tests: a network namespace made by the
//! test, joined to the host by a veth pair, holding addresses of ranges
//! the test names (public documentation ranges, a private range, a
//! link-local one) and servers on them. Nothing leaves the machine: every
//! address used is on one end of that veth. Dropped, it removes the
//! namespace (and with it the veth) and stops its servers.

use std::process::{Command, Stdio};

use crate::process::Proc;

/// The remote side's servers, one process (python3) in the namespace:
/// - TCP 8080: writes "remote\n" and closes;
/// - TCP 8081: streams zeros until the client goes;
/// - TCP 8082: accepts and holds every connection open;
/// - UDP 53: echoes each datagram (a stand-in resolver).
const SERVERS: &str = r#"
import socket, sys, threading
addrs = sys.argv[1:]
def tcp(port, handle):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(512)
    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=handle, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
def hello(c):
    try: c.sendall(b"remote\n")
    finally: c.close()
def stream(c):
    buf = bytes(1 << 16)
    try:
        while True: c.sendall(buf)
    except OSError: pass
    finally: c.close()
held = []
def hold(c): held.append(c)
tcp(8080, hello); tcp(8081, stream); tcp(8082, hold)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 53))
def echo():
    while True:
        d, a = u.recvfrom(512); u.sendto(d, a)
threading.Thread(target=echo, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

pub struct RemoteNet {
    name: String,
    /// The host's end of the veth.
    pub host_if: String,
    servers: Option<Proc>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl RemoteNet {
    /// A namespace `tag` (a few letters, unique among concurrent tests)
    /// whose end of the veth holds the second address of every range in
    /// `nets` ("198.51.100.0/24", "10.99.1.0/24"), the host's end the
    /// first; the servers of [`SERVERS`] listen on all of them. Pick
    /// ranges the machine's own network does not use (check `ip route`:
    /// some sandboxes of this workplace live on 192.0.2.0/24).
    pub fn new(tag: &str, nets: &[&str]) -> RemoteNet {
        let name = format!("nubo-remote-{tag}-{}", std::process::id());
        let host_if = format!("rh{tag}{}", std::process::id() % 10000);
        let peer = format!("rp{tag}{}", std::process::id() % 10000);
        // Leftovers of an earlier run of this process id, if any.
        for args in [["netns", "del", &name], ["link", "del", &host_if]] {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        }
        ip(&["netns", "add", &name]);
        // From here on a failure still removes what was made (drop).
        let mut net = RemoteNet {
            name: name.clone(),
            host_if: host_if.clone(),
            servers: None,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &name]);
        for n in nets {
            let (addr, prefix) = n.split_once('/').expect("a range like 10.99.1.0/24");
            let base = u32::from(addr.parse::<std::net::Ipv4Addr>().expect("an IPv4 range"));
            let at = |i: u32| format!("{}/{prefix}", std::net::Ipv4Addr::from(base + i));
            ip(&["addr", "add", &at(1), "dev", &host_if]);
            ip(&["-n", &name, "addr", "add", &at(2), "dev", &peer]);
        }
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "link", "set", &peer, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &name, "python3", "-c", SERVERS]);
        net.servers = Some(Proc::spawn_ready(
            cmd,
            "remote-servers",
            std::time::Duration::from_secs(10),
        ));
        net
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for RemoteNet {
    fn drop(&mut self) {
        drop(self.servers.take());
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}
