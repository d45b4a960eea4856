//! Just enough rtnetlink to give a sandbox its network: a bridge, a veth
//! pair with one end in the sandbox's namespace, addresses, a default
//! route, bridge-port isolation, link removal. Messages are built by hand
//! (the kernel's ABI, `linux/rtnetlink.h` and `linux/if_link.h`), so the
//! sandbox's cold path pays a few system calls instead of spawning `ip`.
//!
//! A [`Socket`] talks to the network namespace of the thread that opened
//! it, for as long as it lives: a thread that opens one and then moves to
//! a new namespace holds a handle on both.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_PROTINFO: u16 = 12;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BRPORT_ISOLATED: u16 = 33;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_BRIDGE: u8 = 7;
const IFF_UP: u32 = 1;

/// A NETLINK_ROUTE socket in the namespace of the thread that opened it.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

/// One message being built: header, fixed part, attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16) -> Msg {
        let mut buf = vec![0u8; NLMSG_HDR];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        Msg { buf }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Msg {
        self.buf.extend_from_slice(b);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// `struct ifinfomsg`.
    fn ifinfo(&mut self, family: u8, index: u32, flags: u32, change: u32) -> &mut Msg {
        let mut b = [0u8; 16];
        b[0] = family;
        b[4..8].copy_from_slice(&index.to_ne_bytes());
        b[8..12].copy_from_slice(&flags.to_ne_bytes());
        b[12..16].copy_from_slice(&change.to_ne_bytes());
        self.bytes(&b)
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Msg {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.bytes(data)
    }

    fn attr_str(&mut self, kind: u16, s: &str) -> &mut Msg {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.attr(kind, &d)
    }

    fn attr_u32(&mut self, kind: u16, v: u32) -> &mut Msg {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// Opens a nested attribute; [`Msg::end`] closes it.
    fn nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) -> &mut Msg {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn finish(&mut self, seq: u32) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

impl Socket {
    pub fn open() -> io::Result<Socket> {
        // SAFETY: socket takes no pointers; the result is checked and then
        // owned by the OwnedFd below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Socket { fd, seq: 0 })
    }

    /// Sends one request and waits for the kernel's acknowledgement.
    fn call(&mut self, msg: &mut Msg) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let out = msg.finish(seq);
        // SAFETY: `out` is a live buffer of `out.len()` bytes; the kernel
        // address is implied for a netlink socket without sendto.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), out.as_ptr().cast(), out.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: `buf` is writable for its whole length during the call.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDR {
                let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap_or_default());
                let got = u32::from_ne_bytes(rest[8..12].try_into().unwrap_or_default());
                if len < NLMSG_HDR || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink reply",
                    ));
                }
                if got == seq && kind == NLMSG_ERROR && len >= NLMSG_HDR + 4 {
                    let code = i32::from_ne_bytes(
                        rest[NLMSG_HDR..NLMSG_HDR + 4]
                            .try_into()
                            .unwrap_or_default(),
                    );
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                if got == seq && kind == NLMSG_DONE {
                    return Ok(());
                }
                rest = &rest[(len + 3) & !3..];
            }
        }
    }

    /// Creates a bridge named `name`, up.
    pub fn add_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(AF_UNSPEC, 0, IFF_UP, IFF_UP)
            .attr_str(IFLA_IFNAME, name);
        let info = m.nest(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "bridge");
        m.end(info);
        self.call(&mut m)
    }

    /// Creates a veth pair: `name` here, up and enslaved to `master`;
    /// `peer` in the network namespace open at `peer_ns` (down).
    pub fn add_veth(
        &mut self,
        name: &str,
        master: u32,
        peer: &str,
        peer_ns: RawFd,
    ) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(AF_UNSPEC, 0, IFF_UP, IFF_UP)
            .attr_str(IFLA_IFNAME, name)
            .attr_u32(IFLA_MASTER, master);
        let info = m.nest(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "veth");
        let data = m.nest(IFLA_INFO_DATA);
        let p = m.nest(VETH_INFO_PEER);
        m.ifinfo(AF_UNSPEC, 0, 0, 0)
            .attr_str(IFLA_IFNAME, peer)
            .attr_u32(IFLA_NET_NS_FD, peer_ns as u32);
        m.end(p);
        m.end(data);
        m.end(info);
        self.call(&mut m)
    }

    /// Isolates a bridge port: it exchanges frames with the bridge itself
    /// (the gateway) and with non-isolated ports only, never with another
    /// isolated port, i.e. another sandbox.
    pub fn isolate_port(&mut self, index: u32) -> io::Result<()> {
        let mut m = Msg::new(RTM_SETLINK, 0);
        m.ifinfo(AF_BRIDGE, index, 0, 0);
        let p = m.nest(IFLA_PROTINFO);
        m.attr(IFLA_BRPORT_ISOLATED, &[1]);
        m.end(p);
        self.call(&mut m)
    }

    /// Sets a link up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(AF_UNSPEC, index, IFF_UP, IFF_UP);
        self.call(&mut m)
    }

    /// Adds `addr/prefix` to a link.
    pub fn add_addr(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        let mut b = [0u8; 8];
        b[0] = AF_INET;
        b[1] = prefix;
        b[3] = RT_SCOPE_UNIVERSE;
        b[4..8].copy_from_slice(&index.to_ne_bytes());
        m.bytes(&b)
            .attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets());
        self.call(&mut m)
    }

    /// Adds the default route through `gateway` on a link.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        let b = [
            AF_INET,
            0, // dst_len: the default route
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        m.bytes(&b)
            .attr(RTA_GATEWAY, &gateway.octets())
            .attr_u32(RTA_OIF, index);
        self.call(&mut m)
    }

    /// Deletes a link by name (a veth takes its peer with it). Succeeds
    /// when there is no such link.
    pub fn delete_link(&mut self, name: &str) -> io::Result<()> {
        let mut m = Msg::new(RTM_DELLINK, 0);
        m.ifinfo(AF_UNSPEC, 0, 0, 0).attr_str(IFLA_IFNAME, name);
        match self.call(&mut m) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT)) => Ok(()),
            r => r,
        }
    }
}

/// The index of the link `name` in the calling thread's namespace.
pub fn index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a link name"))?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}
