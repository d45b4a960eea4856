//! The seccomp filter of a sandbox: an allowlist of the system calls that
//! ordinary programs need (an interpreter, glibc, a tokio binary, a shell
//! with coreutils, compiled extension modules); everything else fails with
//! `EPERM`.
//!
//! Left out on purpose: anything that reconfigures the machine or the
//! process's isolation (mount, pivot_root, setns, unshare, namespace flags
//! of clone, module loading, kexec, reboot, swap, clocks, quotas, accounting),
//! inspects other processes (ptrace, process_vm_*, kcmp, pidfd_getfd,
//! process_madvise), reaches kernel attack surface that has no use in a
//! function (bpf, perf_event_open, userfaultfd, io_uring, keyrings,
//! fanotify, handle-based opens, the new mount API), and legacy x86 ones
//! (iopl, ioperm, vm86, uselib, nfsservctl, syslog).
//!
//! Every name must be known to the libseccomp that crun links against
//! (Debian bookworm ships 2.5.4): crun refuses the whole spec on a name it
//! cannot resolve. Names of 32-bit-only calls resolve there too, and apply
//! to the x86/x32 (or arm) filters.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// Returned for everything not allowed, as the kernel does for calls a
/// process lacks the privilege for.
const EPERM: u32 = libc::EPERM as u32;
/// Returned for `clone3`: its flags live in a struct seccomp cannot read, so
/// the namespace check is impossible; `ENOSYS` makes glibc fall back to
/// `clone`, whose flags we can check.
const ENOSYS: u32 = libc::ENOSYS as u32;

/// Every flag of `clone` that creates a namespace.
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// `personality(2)` values a program may set: the Linux default, the 32-bit
/// variant, address-space randomisation off (used by some debuggers and
/// build tools) and the query value.
const SAFE_PERSONALITIES: [u64; 5] = [
    0x0000_0000,
    0x0000_0008,
    0x0004_0000,
    0x0004_0008,
    0xffff_ffff,
];

/// Address families a function may open sockets of: local, IPv4, IPv6.
/// Everything else (vsock, which a network namespace does not cut off;
/// netlink; packet; bluetooth; ...) fails with `EPERM`, without any
/// connection attempt reaching the kernel's code for that family.
pub const SOCKET_FAMILIES: [i32; 3] = [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6];

/// System calls allowed without conditions.
#[rustfmt::skip]
pub const ALLOWED: &[&str] = &[
    // files and descriptors
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "open", "openat", "openat2", "close", "close_range", "creat",
    "lseek", "_llseek", "stat", "fstat", "lstat", "newfstatat", "fstatat64", "stat64",
    "fstat64", "lstat64", "statx", "statfs", "fstatfs", "statfs64", "fstatfs64", "access",
    "faccessat", "faccessat2", "readlink", "readlinkat", "getdents", "getdents64", "mkdir",
    "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2", "link",
    "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "chown", "fchown",
    "lchown", "fchownat", "chown32", "fchown32", "lchown32", "truncate", "ftruncate",
    "truncate64", "ftruncate64", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range",
    "sync_file_range2", "fallocate", "fadvise64", "fadvise64_64", "arm_fadvise64_64",
    "readahead", "sendfile", "sendfile64", "splice", "tee", "vmsplice", "copy_file_range",
    "dup", "dup2", "dup3", "fcntl", "fcntl64", "flock", "ioctl", "pipe", "pipe2", "umask",
    "utime", "utimes", "utimensat", "utimensat_time64", "futimesat", "mknod", "mknodat",
    "getcwd", "chdir", "fchdir",
    // extended attributes
    "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr",
    "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    // file watching
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    // memory
    "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "brk", "mlock", "mlock2",
    "munlock", "mlockall", "munlockall", "mincore", "msync", "membarrier", "memfd_create",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "get_mempolicy", "set_mempolicy", "mbind",
    "remap_file_pages",
    // processes and threads (clone is conditional, below)
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
    "waitpid", "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal",
    "restart_syscall", "set_tid_address", "set_robust_list", "get_robust_list", "futex",
    "futex_time64", "futex_waitv", "rseq", "arch_prctl", "prctl", "set_thread_area",
    "get_thread_area", "set_tls", "cacheflush", "breakpoint",
    // signals
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "rt_sigsuspend",
    "sigaction", "sigprocmask", "sigreturn", "sigpending", "sigsuspend", "signal",
    "sigaltstack", "signalfd", "signalfd4", "pause",
    // identity (changing it still needs capabilities the sandbox lacks)
    "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid", "setsid",
    "getuid", "geteuid", "getgid", "getegid", "getuid32", "geteuid32", "getgid32",
    "getegid32", "getresuid", "getresgid", "getresuid32", "getresgid32", "getgroups",
    "getgroups32", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
    "setgroups", "setfsuid", "setfsgid", "setuid32", "setgid32", "setreuid32", "setregid32",
    "setresuid32", "setresgid32", "setgroups32", "setfsuid32", "setfsgid32", "capget",
    "capset",
    // scheduling and limits
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
    "sched_setparam", "sched_getscheduler", "sched_setscheduler", "sched_get_priority_max",
    "sched_get_priority_min", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_getattr", "sched_setattr", "getpriority", "setpriority", "nice", "getrlimit",
    "setrlimit", "prlimit64", "ugetrlimit", "getrusage", "times", "uname", "sysinfo",
    "getcpu", "ioprio_get", "ioprio_set", "getrandom", "seccomp",
    // time
    "clock_gettime", "clock_gettime64", "clock_getres", "clock_getres_time64",
    "clock_nanosleep", "clock_nanosleep_time64", "nanosleep", "gettimeofday", "time",
    "alarm", "getitimer", "setitimer", "timer_create", "timer_delete", "timer_settime",
    "timer_settime64", "timer_gettime", "timer_gettime64", "timer_getoverrun",
    "timerfd_create", "timerfd_settime", "timerfd_settime64", "timerfd_gettime",
    "timerfd_gettime64",
    // waiting for events
    "select", "_newselect", "pselect6", "pselect6_time64", "poll", "ppoll", "ppoll_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "eventfd", "eventfd2",
    // asynchronous I/O (the old interface; io_uring stays out)
    "io_setup", "io_destroy", "io_submit", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "io_cancel",
    // sockets (socket and socketpair are conditional, below; socketcall,
    // the 32-bit multiplexer, is left out: its arguments are in memory,
    // where the filter cannot check the address family)
    "bind", "connect", "listen", "accept", "accept4", "getsockname",
    "getpeername", "sendto", "recvfrom", "send", "recv", "sendmsg", "recvmsg", "sendmmsg",
    "recvmmsg", "recvmmsg_time64", "shutdown", "setsockopt", "getsockopt",
    // System V and POSIX IPC (private to the sandbox's IPC namespace)
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "semctl", "msgget", "msgsnd", "msgrcv", "msgctl", "ipc", "mq_open",
    "mq_unlink", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_notify", "mq_getsetattr",
    // unprivileged self-sandboxing
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
];

/// Calls that must never be in [`ALLOWED`]; kept as a list so a test holds
/// the allowlist to it.
pub const DENIED: &[&str] = &[
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "reboot",
    "swapon",
    "swapoff",
    "setns",
    "unshare",
    "keyctl",
    "add_key",
    "request_key",
    "acct",
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_settime64",
    "clock_adjtime",
    "clock_adjtime64",
    "adjtimex",
    "open_by_handle_at",
    "name_to_handle_at",
    "userfaultfd",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "iopl",
    "ioperm",
    "syslog",
    "uselib",
    "vm86",
    "vm86old",
    "nfsservctl",
    "fanotify_init",
    "fanotify_mark",
    "kcmp",
    "move_pages",
    "migrate_pages",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "sethostname",
    "setdomainname",
    "vhangup",
    "_sysctl",
    "sysfs",
    "ustat",
    "create_module",
    "get_kernel_syms",
    "query_module",
];

/// The seccomp section of a sandbox's OCI spec.
pub fn profile() -> LinuxSeccomp {
    let mut syscalls = vec![LinuxSyscall::default()];
    syscalls[0].set_names(ALLOWED.iter().map(|s| s.to_string()).collect());
    syscalls[0].set_action(LinuxSeccompAction::ScmpActAllow);

    // clone without any namespace flag: (flags & mask) == 0.
    let mut clone = LinuxSyscall::default();
    clone.set_names(vec!["clone".into()]);
    clone.set_action(LinuxSeccompAction::ScmpActAllow);
    clone.set_args(Some(vec![arg(
        0,
        CLONE_NAMESPACE_FLAGS,
        Some(0),
        LinuxSeccompOperator::ScmpCmpMaskedEq,
    )]));
    syscalls.push(clone);

    let mut clone3 = LinuxSyscall::default();
    clone3.set_names(vec!["clone3".into()]);
    clone3.set_action(LinuxSeccompAction::ScmpActErrno);
    clone3.set_errno_ret(Some(ENOSYS));
    syscalls.push(clone3);

    // One rule per value: rules on the same syscall are alternatives,
    // conditions within one rule must all hold.
    for family in SOCKET_FAMILIES {
        let mut r = LinuxSyscall::default();
        r.set_names(vec!["socket".into()]);
        r.set_action(LinuxSeccompAction::ScmpActAllow);
        r.set_args(Some(vec![arg(
            0,
            family as u64,
            None,
            LinuxSeccompOperator::ScmpCmpEq,
        )]));
        syscalls.push(r);
    }
    let mut pair = LinuxSyscall::default();
    pair.set_names(vec!["socketpair".into()]);
    pair.set_action(LinuxSeccompAction::ScmpActAllow);
    pair.set_args(Some(vec![arg(
        0,
        libc::AF_UNIX as u64,
        None,
        LinuxSeccompOperator::ScmpCmpEq,
    )]));
    syscalls.push(pair);

    for value in SAFE_PERSONALITIES {
        let mut p = LinuxSyscall::default();
        p.set_names(vec!["personality".into()]);
        p.set_action(LinuxSeccompAction::ScmpActAllow);
        p.set_args(Some(vec![arg(
            0,
            value,
            None,
            LinuxSeccompOperator::ScmpCmpEq,
        )]));
        syscalls.push(p);
    }

    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(LinuxSeccompAction::ScmpActErrno);
    seccomp.set_default_errno_ret(Some(EPERM));
    seccomp.set_architectures(Some(architectures()));
    seccomp.set_syscalls(Some(syscalls));
    seccomp
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    match value_two {
        Some(v) => b.value_two(v),
        None => b,
    }
    .build()
    .expect("every field of a seccomp argument is set")
}

/// The native architecture plus the 32-bit ABIs the same kernel can run, so
/// a 32-bit binary cannot slip past the filter through another ABI.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn allowlist_has_no_duplicates_and_no_denied_call() {
        let mut seen = HashSet::new();
        for name in ALLOWED {
            assert!(seen.insert(*name), "{name} listed twice");
        }
        for name in DENIED {
            assert!(!seen.contains(name), "{name} must not be allowed");
        }
        for name in ["clone", "clone3", "personality", "socket", "socketpair"] {
            assert!(!seen.contains(name), "{name} is only allowed conditionally");
        }
    }

    #[test]
    fn profile_shape() {
        let p = profile();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        let json = serde_json::to_value(&p).unwrap();
        let rules = json["syscalls"].as_array().unwrap();
        let clone = rules.iter().find(|r| r["names"][0] == "clone").unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], 0x7e02_0000u64);
        assert_eq!(clone["args"][0]["valueTwo"], 0);
        let clone3 = rules.iter().find(|r| r["names"][0] == "clone3").unwrap();
        assert_eq!(clone3["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3["errnoRet"], 38);
        // socket only for AF_UNIX (1), AF_INET (2), AF_INET6 (10);
        // socketpair only for AF_UNIX.
        let families = |name: &str| -> Vec<u64> {
            rules
                .iter()
                .filter(|r| r["names"][0] == name)
                .map(|r| {
                    assert_eq!(r["args"][0]["index"], 0);
                    assert_eq!(r["args"][0]["op"], "SCMP_CMP_EQ");
                    r["args"][0]["value"].as_u64().unwrap()
                })
                .collect()
        };
        assert_eq!(families("socket"), vec![1, 2, 10]);
        assert_eq!(families("socketpair"), vec![1]);
        assert!(
            !rules.iter().any(|r| r["args"].is_null()
                && r["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n == "socket" || n == "socketcall")),
            "socket is never allowed without its family check"
        );
    }

    /// Resolves every name with the host's libseccomp, because crun rejects
    /// a spec holding a name its libseccomp lacks. libseccomp comes with
    /// crun (scripts/setup.sh installs it), so its absence is a failure, not
    /// a skip.
    #[test]
    fn names_known_to_libseccomp() {
        type Resolve = unsafe extern "C" fn(*const libc::c_char) -> libc::c_int;
        let lib = c"libseccomp.so.2";
        // SAFETY: dlopen with a valid NUL-terminated name; a null result is
        // handled below.
        let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW) };
        assert!(
            !handle.is_null(),
            "libseccomp.so.2 not found: install libseccomp2 (crun needs it; scripts/setup.sh installs crun)"
        );
        // SAFETY: handle is a live library handle, the symbol name is
        // NUL-terminated.
        let sym = unsafe { libc::dlsym(handle, c"seccomp_syscall_resolve_name".as_ptr()) };
        assert!(!sym.is_null());
        // SAFETY: libseccomp declares `int seccomp_syscall_resolve_name(const
        // char *name)`, which is exactly `Resolve`.
        let resolve: Resolve = unsafe { std::mem::transmute::<*mut libc::c_void, Resolve>(sym) };
        let mut unknown = Vec::new();
        for name in ALLOWED
            .iter()
            .chain(["clone", "clone3", "personality", "socket", "socketpair"].iter())
        {
            let c = std::ffi::CString::new(*name).unwrap();
            // SAFETY: c is a valid C string for the duration of the call.
            if unsafe { resolve(c.as_ptr()) } == -1 {
                unknown.push(*name);
            }
        }
        assert!(unknown.is_empty(), "libseccomp does not know {unknown:?}");
    }
}
