//! The network namespace of a sandbox, made by the worker itself.
//!
//! A sandbox has no network but loopback, yet its runtime must reach the
//! Runtime API over TCP. So the worker makes the namespace: a short-lived
//! thread moves into a fresh network namespace, brings `lo` up, binds the
//! Runtime API listener there and pins the namespace to a file with a bind
//! mount. The listener keeps its namespace after the thread is gone, so the
//! worker's tokio runtime (in the host namespace) serves it, and the OCI
//! runtime joins the namespace by the file's path.
//!
//! With egress the same thread also gives the namespace its network (see
//! [`super::egress`]): a veth pair made through a netlink socket opened
//! before the move, so in the host's namespace, with `eth0` in the new
//! one; then `eth0`'s address, its link and the default route. The host
//! end is isolated on the bridge afterwards, from the host's side.

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::egress::Attach;
use super::netlink;

/// Setting up or tearing down a sandbox network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("creating the namespace thread: {0}")]
    Thread(#[source] io::Error),
    #[error("the namespace thread panicked")]
    ThreadPanicked,
    #[error("unshare(CLONE_NEWNET): {0} (the worker must run as root)")]
    Unshare(#[source] io::Error),
    #[error("bringing up the loopback interface: {0}")]
    Loopback(#[source] io::Error),
    #[error("binding the Runtime API listener on 127.0.0.1:{port} in the namespace: {source}")]
    Listen { port: u16, source: io::Error },
    #[error("creating the namespace file {path}: {source} (check that its directory exists and is writable)")]
    CreateFile { path: PathBuf, source: io::Error },
    #[error("bind-mounting the namespace onto {path}: {source}")]
    BindMount { path: PathBuf, source: io::Error },
    #[error("unmounting the namespace file {path}: {source}")]
    Unmount { path: PathBuf, source: io::Error },
    #[error("removing the namespace file {path}: {source}")]
    RemoveFile { path: PathBuf, source: io::Error },
    #[error("path {0} contains a NUL byte")]
    BadPath(PathBuf),
    #[error("egress network, {step}: {source}")]
    Egress {
        step: &'static str,
        source: io::Error,
    },
}

fn egress_err(step: &'static str) -> impl FnOnce(io::Error) -> NetnsError {
    move |source| NetnsError::Egress { step, source }
}

/// Creates a network namespace holding only an up loopback interface, pins
/// it at `path` (an empty file is created there) and returns a non-blocking
/// TCP listener bound to `127.0.0.1:port` inside it. With `egress`, the
/// namespace also gets `eth0` on the worker's bridge (the veth is the
/// caller's to delete, through its lease, also when this fails).
pub fn create(path: &Path, port: u16, egress: Option<&Attach>) -> Result<TcpListener, NetnsError> {
    // A leftover from a crashed worker would otherwise get a second mount
    // stacked on it.
    remove(path)?;
    let path = path.to_path_buf();
    let attach = egress.cloned();
    let listener = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || in_new_namespace(&path, port, attach.as_ref()))
        .map_err(NetnsError::Thread)?
        .join()
        .map_err(|_| NetnsError::ThreadPanicked)??;
    if let Some(a) = egress {
        // Back in the host's namespace: the host end joins the bridge as
        // an isolated port (no frame to or from another sandbox).
        let index = netlink::index(&a.host_name).map_err(egress_err("the host end of the veth"))?;
        netlink::Socket::open()
            .and_then(|mut nl| nl.isolate_port(index))
            .map_err(egress_err("isolating the bridge port"))?;
    }
    Ok(listener)
}

/// Runs on a thread of its own: after `unshare` this thread stays in the new
/// namespace, and it ends right after.
fn in_new_namespace(
    path: &Path,
    port: u16,
    egress: Option<&Attach>,
) -> Result<TcpListener, NetnsError> {
    // Opened before the move: it keeps talking to the host's namespace.
    let mut host_nl = match egress {
        Some(_) => Some(netlink::Socket::open().map_err(egress_err("rtnetlink"))?),
        None => None,
    };
    // SAFETY: unshare takes no pointers; CLONE_NEWNET affects only this
    // thread, which exits when this function returns.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Unshare(io::Error::last_os_error()));
    }
    loopback_up().map_err(NetnsError::Loopback)?;
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| NetnsError::Listen { port, source })?;
    if let (Some(a), Some(host_nl)) = (egress, host_nl.as_mut()) {
        attach(a, host_nl)?;
    }
    pin(path)?;
    Ok(listener)
}

/// On the namespace's thread: the veth pair, then `eth0`'s address, link
/// and default route.
fn attach(a: &Attach, host_nl: &mut netlink::Socket) -> Result<(), NetnsError> {
    let ns =
        std::fs::File::open("/proc/thread-self/ns/net").map_err(egress_err("the namespace"))?;
    host_nl
        .add_veth(
            &a.host_name,
            a.bridge_index,
            "eth0",
            std::os::fd::AsRawFd::as_raw_fd(&ns),
        )
        .map_err(egress_err("creating the veth pair"))?;
    let mut nl = netlink::Socket::open().map_err(egress_err("rtnetlink in the namespace"))?;
    let eth0 = netlink::index("eth0").map_err(egress_err("eth0"))?;
    // IPv4 only: no link-local IPv6 address on the bridge's segment.
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", "1");
    nl.add_addr(eth0, a.addr, a.prefix)
        .map_err(egress_err("eth0's address"))?;
    nl.set_up(eth0).map_err(egress_err("bringing up eth0"))?;
    nl.add_default_route(eth0, a.gateway)
        .map_err(egress_err("the default route"))?;
    Ok(())
}

/// `ip link set lo up`, through the interface-flags ioctls.
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes no pointers; the descriptor it returns is
    // checked and then owned by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);

    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `req`,
    // which lives for the call.
    if unsafe { libc::ioctl(raw, libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union, so the
    // field read is initialised, and any c_short bit pattern is valid.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(raw, libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bind-mounts this thread's network namespace onto a new file at `path`.
fn pin(path: &Path) -> Result<(), NetnsError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| NetnsError::CreateFile {
            path: path.to_path_buf(),
            source,
        })?;
    let target = c_path(path)?;
    let source = c"/proc/thread-self/ns/net";
    // SAFETY: both strings are NUL-terminated and outlive the call; a bind
    // mount ignores the type and data arguments, which may be null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let source = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(NetnsError::BindMount {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(())
}

/// Unpins and deletes a namespace made by [`create`]. The namespace itself
/// goes away once no process and no socket uses it any more. Succeeds when
/// there is nothing to remove.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    let target = c_path(path)?;
    // SAFETY: target is NUL-terminated and outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = io::Error::last_os_error();
        // EINVAL: not a mount point; ENOENT: no such file.
        if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
            return Err(NetnsError::Unmount {
                path: path.to_path_buf(),
                source: err,
            });
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(NetnsError::RemoveFile {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn c_path(path: &Path) -> Result<CString, NetnsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| NetnsError::BadPath(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// A port free in the host namespace right now.
    fn free_host_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn accept(listener: &TcpListener) -> Option<TcpStream> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((s, _)) => return Some(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        None
    }

    /// The listener is reachable from inside the namespace and only there,
    /// and remove leaves nothing behind.
    #[test]
    #[ignore = "needs root"]
    fn listener_lives_in_the_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        let port = free_host_port();
        let listener = create(&path, port, None).unwrap();
        assert!(path.exists());

        // From the host namespace the port is closed (or at least never
        // reaches our listener).
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"x");
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(matches!(listener.accept(), Err(e) if e.kind() == io::ErrorKind::WouldBlock));

        let ns_path = path.clone();
        let client = std::thread::spawn(move || {
            let ns = std::fs::File::open(&ns_path).unwrap();
            // SAFETY: ns is an open namespace descriptor; setns only moves
            // this (test) thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            buf
        });
        let mut conn = accept(&listener).expect("no connection from inside the namespace");
        conn.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").unwrap();
        assert_eq!(&client.join().unwrap(), b"pong");

        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }

    #[test]
    #[ignore = "needs root"]
    fn create_replaces_a_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        let _a = create(&path, 9001, None).unwrap();
        let _b = create(&path, 9001, None).unwrap();
        remove(&path).unwrap();
        // One mount only: the file is gone after a single remove.
        assert!(!path.exists());
    }
}
