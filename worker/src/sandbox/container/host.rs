//! What the worker checks about its host before running sandboxes, and the
//! cgroup readings it takes from a sandbox after an invocation (peak memory
//! for the REPORT line, OOM kills to tell an out-of-memory error apart).

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup2 mount of a hybrid host.
const UNIFIED: &str = "/sys/fs/cgroup/unified";
/// v1 controllers the sandboxes' limits need.
const V1_CONTROLLERS: &[&str] = &["memory", "pids", "cpu"];

/// How the host's cgroups are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// One hierarchy per controller under `/sys/fs/cgroup/<controller>`
    /// (including hybrid hosts whose cgroup2 mount holds no controller).
    V1,
    /// The unified hierarchy at `/sys/fs/cgroup`.
    V2,
}

/// What [`preflight`] found.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub cgroup: CgroupLayout,
    pub runtime_path: PathBuf,
    /// First line of `<runtime> --version`, e.g. `crun version 1.8.1`.
    pub runtime_version: String,
}

/// The host cannot run sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("the worker must run as root (it creates namespaces, mounts and cgroups): start it with sudo or as the root user")]
    NotRoot,
    #[error("{runtime} not found on PATH: install it with `apt-get install {runtime}` (scripts/setup.sh does) or pass --oci-runtime {other}")]
    RuntimeNotFound {
        runtime: String,
        other: &'static str,
    },
    #[error("running `{path} --version`: {source}")]
    RuntimeVersion { path: PathBuf, source: io::Error },
    #[error("`{path} --version` failed ({status}): {stderr}; reinstall the OCI runtime")]
    RuntimeBroken {
        path: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] io::Error),
    #[error("cgroup v1 controller `{controller}` is not mounted: run `mkdir -p /sys/fs/cgroup/{controller} && mount -t cgroup -o {controller} cgroup /sys/fs/cgroup/{controller}` or boot with cgroup v2")]
    MissingController { controller: String },
    #[error("crun does not support this hybrid cgroup layout ({UNIFIED} holds controllers: {controllers}) and moving `{controller}` to a v1 hierarchy failed: {source}; run `mkdir -p /sys/fs/cgroup/{controller} && mount -t cgroup -o {controller} cgroup /sys/fs/cgroup/{controller}` as root, or pass --oci-runtime runc")]
    HybridFix {
        controllers: String,
        controller: String,
        source: io::Error,
    },
    #[error("crun does not support this hybrid cgroup layout: {UNIFIED} still holds controllers ({controllers}); mount each on a v1 hierarchy (`mkdir -p /sys/fs/cgroup/NAME && mount -t cgroup -o NAME cgroup /sys/fs/cgroup/NAME`) or pass --oci-runtime runc")]
    StillHybrid { controllers: String },
}

/// Checks that this host can run sandboxes with `runtime` ("crun" or
/// "runc"), and fixes the one thing that is safe to fix: on hybrid cgroup
/// hosts, crun refuses to run while the cgroup2 mount holds any controller,
/// so those controllers are moved to v1 hierarchies of their own.
pub fn preflight(runtime: &str) -> Result<HostInfo, PreflightError> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PreflightError::NotRoot);
    }
    let runtime_path = find_on_path(runtime).ok_or_else(|| PreflightError::RuntimeNotFound {
        runtime: runtime.to_string(),
        other: if runtime == "runc" { "crun" } else { "runc" },
    })?;
    let runtime_version = version(&runtime_path)?;
    let cgroup = cgroup_layout(runtime == "crun")?;
    Ok(HostInfo {
        cgroup,
        runtime_path,
        runtime_version,
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn version(path: &Path) -> Result<String, PreflightError> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .output()
        .map_err(|source| PreflightError::RuntimeVersion {
            path: path.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(PreflightError::RuntimeBroken {
            path: path.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string())
}

/// One cgroup mount from mountinfo.
struct CgroupMount {
    mount_point: String,
    v2: bool,
    /// The controllers of a v1 hierarchy (from its super options).
    options: Vec<String>,
}

fn cgroup_mounts() -> Result<Vec<CgroupMount>, PreflightError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(PreflightError::Mountinfo)?;
    Ok(parse_mountinfo(&text))
}

/// Picks the cgroup mounts out of `/proc/self/mountinfo`: fields up to a
/// lone `-`, then filesystem type, source and super options.
fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?.to_string();
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _source = r.next()?;
            let superopts = r.next().unwrap_or_default();
            match fstype {
                "cgroup2" => Some(CgroupMount {
                    mount_point,
                    v2: true,
                    options: Vec::new(),
                }),
                "cgroup" => Some(CgroupMount {
                    mount_point,
                    v2: false,
                    options: superopts.split(',').map(str::to_string).collect(),
                }),
                _ => None,
            }
        })
        .collect()
}

fn has_v1(mounts: &[CgroupMount], controller: &str) -> bool {
    mounts
        .iter()
        .any(|m| !m.v2 && m.options.iter().any(|o| o == controller))
}

fn unified_controllers() -> Vec<String> {
    std::fs::read_to_string(Path::new(UNIFIED).join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Serialises the hybrid fix between concurrent preflights (tests).
static FIX: Mutex<()> = Mutex::new(());

fn cgroup_layout(crun: bool) -> Result<CgroupLayout, PreflightError> {
    if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        return Ok(CgroupLayout::V2);
    }
    let mounts = cgroup_mounts()?;
    for c in V1_CONTROLLERS {
        if !has_v1(&mounts, c) {
            return Err(PreflightError::MissingController {
                controller: c.to_string(),
            });
        }
    }
    let unified_mounted = mounts.iter().any(|m| m.v2 && m.mount_point == UNIFIED);
    if !crun || !unified_mounted {
        return Ok(CgroupLayout::V1);
    }

    let _guard = FIX.lock().unwrap_or_else(|e| e.into_inner());
    let controllers = unified_controllers();
    if controllers.is_empty() {
        return Ok(CgroupLayout::V1);
    }
    let listed = controllers.join(" ");
    for c in &controllers {
        tracing::info!(
            controller = %c,
            "moving cgroup controller from the v2 mount to a v1 hierarchy, as crun requires on hybrid hosts"
        );
        mount_v1(c).map_err(|source| PreflightError::HybridFix {
            controllers: listed.clone(),
            controller: c.clone(),
            source,
        })?;
    }
    let left = unified_controllers();
    if !left.is_empty() {
        return Err(PreflightError::StillHybrid {
            controllers: left.join(" "),
        });
    }
    Ok(CgroupLayout::V1)
}

/// `mkdir -p /sys/fs/cgroup/<c> && mount -t cgroup -o <c> cgroup /sys/fs/cgroup/<c>`,
/// unless a v1 hierarchy with that controller is already mounted.
fn mount_v1(controller: &str) -> io::Result<()> {
    let mounts = cgroup_mounts().map_err(|e| match e {
        PreflightError::Mountinfo(e) => e,
        other => io::Error::other(other.to_string()),
    })?;
    if has_v1(&mounts, controller) {
        return Ok(());
    }
    let dir = Path::new(CGROUP_ROOT).join(controller);
    std::fs::create_dir_all(&dir)?;
    let target = CString::new(dir.to_string_lossy().as_bytes()).map_err(io::Error::other)?;
    let data = CString::new(controller).map_err(io::Error::other)?;
    // SAFETY: all strings are NUL-terminated and live across the call; the
    // data argument of a cgroup mount is its option string.
    let rc = unsafe {
        libc::mount(
            c"cgroup".as_ptr(),
            target.as_ptr(),
            c"cgroup".as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A file of a sandbox's cgroup for `controller` (v1) or of its unified
/// cgroup (v2).
fn cgroup_file(layout: CgroupLayout, controller: &str, cgroups_path: &str, file: &str) -> PathBuf {
    let rel = cgroups_path.trim_start_matches('/');
    match layout {
        CgroupLayout::V1 => Path::new(CGROUP_ROOT).join(controller).join(rel).join(file),
        CgroupLayout::V2 => Path::new(CGROUP_ROOT).join(rel).join(file),
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Peak memory use of a sandbox's cgroup, in bytes (since creation or the
/// last [`reset_max_memory`]); `None` when the cgroup or the file is
/// missing (v2 before Linux 5.19 has no `memory.peak`).
pub fn max_memory_bytes(layout: CgroupLayout, cgroups_path: &str) -> Option<u64> {
    let file = match layout {
        CgroupLayout::V1 => "memory.max_usage_in_bytes",
        CgroupLayout::V2 => "memory.peak",
    };
    read_u64(&cgroup_file(layout, "memory", cgroups_path, file))
}

/// Restarts peak tracking, so a warm sandbox reports each invocation's own
/// peak. Only v1 can: v2's `memory.peak` is not globally resettable, there
/// this does nothing. A failure only makes the next reading too high, so it
/// is logged, not returned.
pub fn reset_max_memory(layout: CgroupLayout, cgroups_path: &str) {
    if layout == CgroupLayout::V1 {
        let file = cgroup_file(layout, "memory", cgroups_path, "memory.max_usage_in_bytes");
        if let Err(e) = std::fs::write(&file, "0") {
            tracing::debug!(file = %file.display(), error = %e, "resetting peak memory");
        }
    }
}

/// How many processes of a sandbox's cgroup the OOM killer has killed.
pub fn oom_kills(layout: CgroupLayout, cgroups_path: &str) -> Option<u64> {
    let file = match layout {
        CgroupLayout::V1 => "memory.oom_control",
        CgroupLayout::V2 => "memory.events",
    };
    let text = std::fs::read_to_string(cgroup_file(layout, "memory", cgroups_path, file)).ok()?;
    parse_keyed(&text, "oom_kill")
}

/// Freezes (`true`) or thaws a sandbox's cgroup: v2 `cgroup.freeze`, v1
/// the freezer's `freezer.state`. A frozen sandbox's processes (a
/// function's background work included) get no CPU until thawed; a
/// runtime blocked in `GET /next` does not notice.
pub fn set_frozen(layout: CgroupLayout, cgroups_path: &str, frozen: bool) -> io::Result<()> {
    let (file, value) = match layout {
        CgroupLayout::V1 => (
            cgroup_file(layout, "freezer", cgroups_path, "freezer.state"),
            if frozen { "FROZEN" } else { "THAWED" },
        ),
        CgroupLayout::V2 => (
            cgroup_file(layout, "", cgroups_path, "cgroup.freeze"),
            if frozen { "1" } else { "0" },
        ),
    };
    std::fs::write(file, value)
}

/// CPU time used by a sandbox's cgroup so far, in microseconds (v2
/// `cpu.stat` usage_usec, v1 `cpuacct.usage`).
pub fn cpu_usage_usec(layout: CgroupLayout, cgroups_path: &str) -> Option<u64> {
    match layout {
        CgroupLayout::V1 => read_u64(&cgroup_file(
            layout,
            "cpuacct",
            cgroups_path,
            "cpuacct.usage",
        ))
        .map(|ns| ns / 1000),
        CgroupLayout::V2 => {
            let text =
                std::fs::read_to_string(cgroup_file(layout, "", cgroups_path, "cpu.stat")).ok()?;
            parse_keyed(&text, "usage_usec")
        }
    }
}

/// The value of a `key value` line.
fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sandbox::container::{netns, spec};
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn parses_mountinfo() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:5 - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert!(has_v1(&m, "cpu"));
        assert!(has_v1(&m, "memory"));
        assert!(!has_v1(&m, "pids"));
        assert!(m.iter().any(|m| m.v2 && m.mount_point == UNIFIED));
    }

    #[test]
    fn parses_oom_lines() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_keyed(v1, "oom_kill"), Some(3));
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_keyed(v2, "oom_kill"), Some(1));
        assert_eq!(parse_keyed("oom 1\n", "oom_kill"), None);
        assert_eq!(
            cgroup_file(CgroupLayout::V1, "memory", "/nubo/a", "memory.peak"),
            Path::new("/sys/fs/cgroup/memory/nubo/a/memory.peak")
        );
        assert_eq!(
            cgroup_file(CgroupLayout::V2, "memory", "/nubo/a", "memory.peak"),
            Path::new("/sys/fs/cgroup/nubo/a/memory.peak")
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn missing_runtime_is_explained() {
        let err = preflight("no-such-oci-runtime").unwrap_err();
        assert!(matches!(err, PreflightError::RuntimeNotFound { .. }));
        assert!(err.to_string().contains("--oci-runtime"));
    }

    static NEXT: AtomicU32 = AtomicU32::new(0);

    /// One container run by crun; everything it made is undone on drop,
    /// also when an assertion fails halfway.
    struct Sandbox {
        dir: tempfile::TempDir,
        id: String,
        netns: PathBuf,
        layout: CgroupLayout,
        cgroups_path: String,
    }

    struct Output {
        code: Option<i32>,
        stdout: String,
        stderr: String,
        max_memory: Option<u64>,
        oom_kills: Option<u64>,
    }

    impl Sandbox {
        fn new() -> Self {
            let info = preflight("crun").expect("preflight");
            let dir = tempfile::tempdir().unwrap();
            // The sandbox user must be able to reach the bound directories.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let id = format!(
                "nubo-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            Sandbox {
                netns: dir.path().join("netns"),
                cgroups_path: format!("/nubo-test/{id}"),
                dir,
                id,
                layout: info.cgroup,
            }
        }

        fn crun_root(&self) -> PathBuf {
            self.dir.path().join("crun-root")
        }

        fn run(&self, args: &[&str]) -> Output {
            self.run_with(args, false, false)
        }

        fn run_with(&self, args: &[&str], detach: bool, egress: bool) -> Output {
            let d = self.dir.path();
            let rootfs = d.join("rootfs");
            let etc = d.join("etc");
            let code = d.join("code");
            let runtime = d.join("runtime");
            spec::prepare_rootfs(&rootfs).unwrap();
            spec::write_etc(&etc, 65534, 65534, egress).unwrap();
            for dir in [&code, &runtime] {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let _listener = netns::create(&self.netns, 9001, None).unwrap();
            let s = spec::SandboxSpec {
                id: &self.id,
                rootfs: &rootfs,
                code_dir: &code,
                runtime_dir: &runtime,
                etc_dir: &etc,
                args: args.iter().map(|s| s.to_string()).collect(),
                env: vec!["PATH=/usr/bin:/bin".into(), "HOME=/tmp".into()],
                cwd: "/var/task",
                memory_mb: 128,
                tmp_mb: 16,
                netns: &self.netns,
                cgroups_path: self.cgroups_path.clone(),
                uid: 65534,
                gid: 65534,
                hostname: "sandbox",
            };
            let bundle = d.join("bundle");
            spec::write_bundle(&bundle, &spec::build(&s).unwrap()).unwrap();
            // Detached, the stopped container (and its cgroup) stays until
            // `delete`, so the cgroup can be read after the process exits;
            // the output pipes close when it does.
            let mut cmd = Command::new("crun");
            cmd.arg("--root").arg(self.crun_root()).arg("run");
            if detach {
                cmd.arg("--detach");
            }
            let out = cmd
                .arg("--bundle")
                .arg(&bundle)
                .arg(&self.id)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .expect("running crun");
            Output {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                max_memory: max_memory_bytes(self.layout, &self.cgroups_path),
                oom_kills: oom_kills(self.layout, &self.cgroups_path),
            }
        }
    }

    impl Drop for Sandbox {
        fn drop(&mut self) {
            let _ = Command::new("crun")
                .arg("--root")
                .arg(self.crun_root())
                .args(["delete", "-f", &self.id])
                .stderr(Stdio::null())
                .status();
            let _ = netns::remove(&self.netns);
            // The runtime leaves the parent cgroup; the last test out
            // removes it (the others get EBUSY).
            let root = Path::new(CGROUP_ROOT);
            let _ = std::fs::remove_dir(root.join("nubo-test"));
            for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(entry.path().join("nubo-test"));
            }
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn preflight_crun() {
        let info = preflight("crun").unwrap();
        assert!(info.runtime_version.starts_with("crun version"));
        if info.cgroup == CgroupLayout::V1 && Path::new(UNIFIED).exists() {
            assert!(unified_controllers().is_empty());
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn runs_python() {
        let sbx = Sandbox::new();
        let out = sbx.run(&["/usr/bin/python3", "-c", "print('hi')"]);
        assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
        assert_eq!(out.stdout.trim(), "hi");
    }

    /// An egress sandbox's /etc has the DNS configuration and CA bundle;
    /// its network is still a namespace of its own (here without the
    /// veth: only loopback).
    #[test]
    #[ignore = "needs root"]
    fn egress_etc() {
        let sbx = Sandbox::new();
        let script = "import ssl, os; \
            print(ssl.create_default_context().cert_store_stats()['x509_ca'] > 0); \
            print(os.path.exists('/etc/resolv.conf')); \
            print(len(open('/proc/net/dev').read().splitlines()) == 3)";
        let out = sbx.run_with(&["/usr/bin/python3", "-c", script], false, true);
        assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
        assert_eq!(out.stdout, "True\nTrue\nTrue\n");
    }

    /// The memory limit holds, and the readings see both the peak and the
    /// OOM kill.
    #[test]
    #[ignore = "needs root"]
    fn memory_readings() {
        let sbx = Sandbox::new();
        let out = sbx.run_with(
            &[
                "/usr/bin/python3",
                "-c",
                "x = bytearray(40 << 20); print('ok', flush=True); y = bytearray(200 << 20); print('survived')",
            ],
            true,
            false,
        );
        assert_eq!(out.stdout.trim(), "ok", "stderr: {}", out.stderr);
        let peak = out.max_memory.expect("peak memory");
        assert!(peak > 40 << 20 && peak <= 128 << 20, "peak {peak}");
        assert!(out.oom_kills.expect("oom count") >= 1);
        reset_max_memory(sbx.layout, &sbx.cgroups_path);
        assert!(max_memory_bytes(sbx.layout, &sbx.cgroups_path).unwrap() < peak);
    }

    #[test]
    #[ignore = "needs root"]
    fn process_is_confined() {
        let sbx = Sandbox::new();
        let out = sbx.run(&[
            "/usr/bin/python3",
            "-c",
            "import os; print(open('/proc/self/status').read()); print('uid', os.getuid(), os.getgid())",
        ]);
        assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
        for want in [
            "NoNewPrivs:\t1",
            "CapEff:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "Seccomp:\t2",
            "uid 65534 65534",
        ] {
            assert!(out.stdout.contains(want), "{want} not in {}", out.stdout);
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn root_is_read_only_and_tmp_writable() {
        let sbx = Sandbox::new();
        // EROFS is checked before permissions, so the messages prove the
        // mounts are read-only, not just owned by root.
        let out = sbx.run(&[
            "/bin/sh",
            "-c",
            "for f in /x /usr/x /etc/x /var/task/x /var/runtime/x; do echo x > $f; done; \
             echo y > /tmp/y && cat /tmp/y && echo z > /dev/null && echo z > /dev/shm/z && \
             ls /dev && cat /proc/self/cgroup && grep -E ' /proc/(keys|acpi|sys) ' /proc/self/mountinfo | cut -d' ' -f5,6",
        ]);
        assert_eq!(
            out.stderr.matches("Read-only file system").count(),
            5,
            "{}",
            out.stderr
        );
        assert!(out.stdout.starts_with("y\n"), "{}", out.stdout);
        for dev in ["null", "zero", "urandom", "pts", "shm"] {
            assert!(
                out.stdout.lines().any(|l| l == dev),
                "/dev/{dev} missing: {}",
                out.stdout
            );
        }
        assert!(
            !out.stdout.contains("nubo-test"),
            "host cgroup path visible: {}",
            out.stdout
        );
        // Masked and read-only /proc paths are mounted over.
        for m in ["/proc/keys ", "/proc/acpi ro,", "/proc/sys ro,"] {
            assert!(
                out.stdout.contains(m),
                "{m}: {}\n{}",
                out.stdout,
                out.stderr
            );
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn subprocess_and_namespaces_blocked() {
        let sbx = Sandbox::new();
        // clone3 answers ENOSYS, so this only works if glibc falls back to
        // clone; unshare and a namespace-creating clone answer EPERM.
        let script = r#"
import subprocess, os, ctypes, socket
print("rc", subprocess.run(["/bin/true"]).returncode)
libc = ctypes.CDLL(None, use_errno=True)
print("unshare", libc.unshare(0x40000000), ctypes.get_errno())
print("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None), ctypes.get_errno())
# raw clone(CLONE_NEWUSER | SIGCHLD): fork-like if it got through
pid = libc.syscall(CLONE_NR, 0x10000000 | 17, 0, 0, 0, 0)
if pid == 0: os._exit(0)
print("clone-newuser", pid, ctypes.get_errno())
s = socket.socket(); s.connect(("127.0.0.1", 9001)); print("api reachable")
"#;
        let clone_nr = if cfg!(target_arch = "aarch64") {
            220
        } else {
            56
        };
        let script = script.replace("CLONE_NR", &clone_nr.to_string());
        let out = sbx.run(&["/usr/bin/python3", "-c", &script]);
        assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
        assert!(out.stdout.contains("rc 0"), "{}", out.stdout);
        assert!(out.stdout.contains("unshare -1 1"), "{}", out.stdout);
        assert!(out.stdout.contains("mount -1 1"), "{}", out.stdout);
        assert!(out.stdout.contains("clone-newuser -1 1"), "{}", out.stdout);
        assert!(out.stdout.contains("api reachable"), "{}", out.stdout);
    }
}
