//! Sandboxes as OCI containers run by crun (or runc) from a bundle the
//! worker writes. The worker creates each sandbox's network namespace
//! itself and serves the Runtime API on a listener inside it; the
//! container's stdout and stderr are one pipe read by the worker.
//!
//! Here: the factory (shared pieces, `create`) and the sandbox (invoke,
//! timeout, out of memory, destroy). [`boot`] starts one container,
//! [`generic`] keeps prewarmed Python ones, [`logpipe`] reads their
//! output, [`oci`] is every command given to crun / runc; [`spec`],
//! [`seccomp`], [`netns`] and [`host`] are the container itself and the
//! host it needs.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::code::CodeCache;
use crate::sandbox::runtime_api::{Channel, Event, Reply};
use crate::sandbox::{
    Completion, CreateError, Created, FunctionSpec, Invocation, InvokeResult, Sandbox,
    SandboxFactory,
};
use crate::tasks::Tasks;
use boot::Boot;
use generic::{ClassKey, Generic};
use host::CgroupLayout;
use logpipe::LogPipe;
use oci::Oci;

mod boot;
pub mod egress;
mod freezer;
mod generic;
pub mod host;
mod logpipe;
mod netlink;
pub mod netns;
pub mod oci;
pub mod seccomp;
pub mod spec;

/// Our Python runtime loop, shipped inside the binary.
pub const PYTHON_BOOTSTRAP: &str = include_str!("../../../runtime/python/bootstrap.py");
/// The sandbox init (runtime/init/init.c, compiled by build.rs): PID 1,
/// reaps orphans, forwards signals, exits with the runtime's status.
pub const SANDBOX_INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nubo-init"));

#[derive(Debug, Clone)]
pub struct LinuxConfig {
    /// `crun` or `runc` (a name on PATH or a path).
    pub oci_runtime: PathBuf,
    /// Scratch space: bundles, network namespaces, the runtime's state.
    pub run_dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub cgroup: CgroupLayout,
    /// Distinguishes this worker's containers (several workers per host).
    pub tag: String,
    pub region: String,
    /// Staging directories of generic sandboxes; must be on the same
    /// filesystem as the code cache (hard links).
    pub stage_dir: PathBuf,
    /// Classes kept prewarmed as generic Python sandboxes, and how many
    /// of each.
    pub generic_classes: Vec<crate::config::GenericClass>,
    pub generic_per_class: usize,
    /// Function output kept per invocation, bytes.
    pub log_bytes: usize,
    /// Freeze a sandbox's cgroup while it waits for an event.
    pub freeze_idle: bool,
    pub egress: crate::config::EgressConfig,
    /// The controllers' API endpoints (HOST:PORT), which egress sandboxes
    /// must not reach even where their range is allowed.
    pub controllers: Vec<String>,
}

pub struct LinuxFactory {
    cfg: LinuxConfig,
    code: Arc<CodeCache>,
    rootfs: PathBuf,
    etc: PathBuf,
    etc_egress: PathBuf,
    runtime_dir: PathBuf,
    oci: Oci,
    generic: Mutex<std::collections::HashMap<ClassKey, Vec<Generic>>>,
    generic_seq: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    fill_lock: tokio::sync::Mutex<()>,
    /// The worker's long-lived tasks: the generic pool's refills go there.
    tasks: Arc<Tasks>,
    /// The egress bridge and rules; None with `--no-egress`.
    egress: Option<Arc<egress::Egress>>,
}

impl LinuxFactory {
    /// Prepares the shared pieces: the read-only root, the two /etc
    /// variants and the runtime directory.
    pub fn new(
        cfg: LinuxConfig,
        code: Arc<CodeCache>,
        tasks: Arc<Tasks>,
    ) -> Result<LinuxFactory, String> {
        let d = &cfg.run_dir;
        let rootfs = d.join("rootfs");
        let etc = d.join("etc");
        let etc_egress = d.join("etc-egress");
        let runtime_dir = d.join("runtime");
        let state_root = d.join("oci");
        for p in [
            &d.join("bundles"),
            &d.join("netns"),
            &runtime_dir,
            &state_root,
            &cfg.stage_dir,
        ] {
            std::fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
        }
        spec::prepare_rootfs(&rootfs).map_err(|e| e.to_string())?;
        spec::write_etc(&etc, cfg.uid, cfg.gid, false).map_err(|e| e.to_string())?;
        spec::write_etc(&etc_egress, cfg.uid, cfg.gid, true).map_err(|e| e.to_string())?;
        let egress = if cfg.egress.enabled {
            let (dns, warning) = egress::resolvers(&cfg.egress.dns);
            if let Some(w) = warning {
                tracing::warn!("{w}");
            }
            spec::write_atomic(
                &etc_egress.join("resolv.conf"),
                egress::resolv_conf(&dns).as_bytes(),
            )
            .map_err(|e| format!("writing the sandboxes' resolv.conf: {e}"))?;
            let protected = protected_endpoints(&cfg.controllers);
            let e = egress::Egress::start(&cfg.tag, &cfg.egress, &dns, &protected)?;
            tracing::info!("egress: {}", e.describe());
            Some(e)
        } else {
            egress::Egress::remove_leftovers(&cfg.tag);
            None
        };
        let boot = runtime_dir.join("bootstrap.py");
        std::fs::write(&boot, PYTHON_BOOTSTRAP)
            .map_err(|e| format!("writing {}: {e}", boot.display()))?;
        let init = runtime_dir.join("init");
        // Replaced, not rewritten in place: a running sandbox may be
        // executing the old file.
        let tmp = runtime_dir.join(".init.new");
        std::fs::write(&tmp, SANDBOX_INIT)
            .and_then(|_| std::fs::rename(&tmp, &init))
            .map_err(|e| format!("writing {}: {e}", init.display()))?;
        set_mode(&runtime_dir, 0o755);
        set_mode(&boot, 0o644);
        set_mode(&init, 0o755);
        Ok(LinuxFactory {
            code,
            rootfs,
            etc,
            etc_egress,
            runtime_dir,
            oci: Oci::new(cfg.oci_runtime.clone(), state_root),
            cfg,
            generic: Mutex::new(Default::default()),
            generic_seq: Default::default(),
            closed: Default::default(),
            fill_lock: Default::default(),
            tasks,
            egress,
        })
    }

    /// Removes what a previous run of this worker left (crash, SIGKILL):
    /// containers, namespaces, bundles.
    pub async fn cleanup_leftovers(&self) {
        let prefix = format!("nubo-{}-", self.cfg.tag);
        if let Ok(rd) = std::fs::read_dir(self.cfg.run_dir.join("bundles")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(&prefix) {
                    // A predecessor killed while the sandbox was idle left
                    // it frozen: frozen processes do not die (v1) until
                    // thawed.
                    let _ = host::set_frozen(self.cfg.cgroup, &format!("/nubo/{name}"), false);
                    self.oci.delete(&name).await;
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(&self.cfg.stage_dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.cfg.run_dir.join("netns")) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = netns::remove(&e.path());
                }
            }
        }
    }
}

/// The IPv4 addresses and ports of the controllers (`HOST:PORT`, with or
/// without `http://`), resolved once at start.
fn protected_endpoints(controllers: &[String]) -> Vec<std::net::SocketAddrV4> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for c in controllers {
        let hp = c
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        match hp.to_socket_addrs() {
            Ok(addrs) => out.extend(addrs.filter_map(|a| match a {
                std::net::SocketAddr::V4(v4) => Some(v4),
                std::net::SocketAddr::V6(_) => None,
            })),
            Err(e) => {
                tracing::warn!(controller = %c, "resolving a controller for the egress rules: {e}")
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

fn setup(step: &str, e: impl std::fmt::Display) -> CreateError {
    CreateError::Setup(format!("sandbox setup, {step}: {e}"))
}

impl LinuxFactory {
    /// Removes this worker's scratch directory once every sandbox is gone
    /// (shutdown): namespaces still mounted there are unmounted first; the
    /// egress bridge and rules go too.
    pub fn remove_run_dir(&self) {
        if let Some(e) = &self.egress {
            e.stop();
        }
        if let Ok(rd) = std::fs::read_dir(self.cfg.run_dir.join("netns")) {
            for e in rd.flatten() {
                let _ = netns::remove(&e.path());
            }
        }
        let _ = std::fs::remove_dir_all(&self.cfg.run_dir);
    }
}

impl SandboxFactory for Arc<LinuxFactory> {
    type Sandbox = LinuxSandbox;

    async fn create(
        &self,
        s: &FunctionSpec,
        id: u64,
    ) -> Result<Created<LinuxSandbox>, CreateError> {
        let started = Instant::now();
        let code_dir = self
            .code
            .ensure(&s.code_sha256)
            .await
            .map_err(|e| code_error(e, started))?;
        if let Some(g) = self.take_generic(s) {
            // Replace what was taken while this one specialises.
            self.tasks
                .spawn("generic-refill", self.clone().fill_generic());
            return self.specialize(g, s, &code_dir, started).await.map(frozen);
        }
        let name = format!("nubo-{}-{id}", self.cfg.tag);
        let (sb, api) = self
            .boot(
                name,
                s,
                Boot::Function {
                    code_dir: &code_dir,
                },
            )
            .await?;
        LinuxFactory::wait_init(sb, started, &api).await.map(frozen)
    }
}

/// A sandbox that finished its init waits frozen for its first event
/// (what the init started in the background included).
fn frozen(c: Created<LinuxSandbox>) -> Created<LinuxSandbox> {
    c.sandbox.freezer.idle();
    c
}

/// A package that can never be unpacked fails like a broken init: a
/// function error the caller sees (async: retried twice, then the DLQ),
/// not a "could not start a sandbox" the controller would try on every
/// worker; other code errors (fetch, disk) are the platform's, retried.
fn code_error(e: crate::code::CodeError, started: Instant) -> CreateError {
    if !e.is_permanent() {
        return CreateError::Setup(e.to_string());
    }
    let msg = e.to_string();
    CreateError::Init {
        error_type: "Runtime.InvalidPackage".into(),
        body: err_body("Runtime.InvalidPackage", &msg),
        lines: vec![format!("[nubo] {msg}")],
        init_duration: started.elapsed(),
    }
}

fn err_body(error_type: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({"errorMessage": message, "errorType": error_type}).to_string())
}

/// Lambda-style wording for a runtime that exited.
fn exit_error(st: Option<ExitStatus>, oom: bool, memory_mb: u32) -> (&'static str, String) {
    use std::os::unix::process::ExitStatusExt;
    if oom {
        return (
            "Runtime.OutOfMemory",
            format!("Runtime exited with error: signal: killed. Out of memory: the function used all of its {memory_mb} MB; give it more with `nubo function update-config --memory`"),
        );
    }
    let what = match st {
        Some(s) if s.signal().is_some() => format!("signal {}", s.signal().unwrap_or(0)),
        Some(s) => match s.code() {
            Some(c) if c > 128 => format!("signal {}", c - 128),
            Some(c) => format!("exit status {c}"),
            None => "unknown status".into(),
        },
        None => "unknown status".into(),
    };
    (
        "Runtime.ExitError",
        format!("Runtime exited with error: {what}"),
    )
}

pub struct LinuxSandbox {
    factory: Arc<LinuxFactory>,
    name: String,
    cgroups_path: String,
    ch: Arc<Channel>,
    exit: watch::Receiver<Option<ExitStatus>>,
    logs: Arc<LogPipe>,
    netns: Option<PathBuf>,
    /// Its address and veth on the egress bridge; dropped (deleted) with
    /// the sandbox, after its namespace (held for that drop).
    _egress: Option<egress::Lease>,
    bundle: PathBuf,
    /// The staging directory of a sandbox that started generic.
    stage: Option<PathBuf>,
    /// Its Runtime API server, log reader and exit waiter: they live as
    /// long as the sandbox and are stopped by its destroy (which the
    /// worker's shutdown reaches through the pool's drain), not by the
    /// worker's token, so calls running at shutdown still finish.
    tasks: Tasks,
    spec: FunctionSpec,
    pending_specialize: Mutex<Option<tokio::sync::oneshot::Sender<Bytes>>>,
    destroyed: std::sync::atomic::AtomicBool,
    /// Freezes its cgroup while it is idle.
    freezer: Arc<freezer::Freezer>,
}

impl LinuxSandbox {
    fn was_oom(&self, st: Option<ExitStatus>) -> bool {
        use std::os::unix::process::ExitStatusExt;
        if host::oom_kills(self.factory.cfg.cgroup, &self.cgroups_path).unwrap_or(0) > 0 {
            return true;
        }
        // crun removes the cgroup as soon as the container exits; a SIGKILL
        // we did not send comes from the kernel's OOM killer.
        matches!(st, Some(s) if s.signal() == Some(9) || s.code() == Some(137))
    }

    async fn kill(&self) {
        self.freezer.busy();
        self.factory.oci.kill(&self.name).await;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.exit.clone().wait_for(|e| e.is_some()),
        )
        .await;
    }
}

/// A safety net: a sandbox dropped without `destroy` (a bug, or a task
/// cancelled mid-way) still has its container and namespace removed.
impl Drop for LinuxSandbox {
    fn drop(&mut self) {
        if self.destroyed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        tracing::warn!(sandbox = %self.name, "sandbox dropped without destroy: cleaning up");
        self.freezer.busy();
        self.ch.stop.cancel();
        self.tasks.abort();
        if let Some(p) = &self.netns {
            let _ = netns::remove(p);
        }
        let _ = std::fs::remove_dir_all(&self.bundle);
        if let Some(s) = &self.stage {
            let _ = std::fs::remove_dir_all(s);
        }
        // Short (two runtime commands), and a drop cannot wait for them.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let f = self.factory.clone();
            let name = self.name.clone();
            rt.spawn(async move {
                f.oci.kill(&name).await;
                f.oci.delete(&name).await;
            });
        }
    }
}

impl LinuxSandbox {
    /// One event, the sandbox thawed.
    async fn run(&self, inv: Invocation) -> InvokeResult {
        // Max Memory Used is the sandbox's peak since it started, as on
        // Lambda: no reset between invocations.
        let layout = self.factory.cfg.cgroup;
        let deadline_ms = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + inv.timeout)
            .as_millis() as u64;
        let rx = self.ch.dispatch(Event {
            request_id: inv.request_id.clone(),
            payload: inv.payload,
            deadline_ms,
            function_arn: self.spec.arn(),
        });
        let mut exit = self.exit.clone();
        enum End {
            Reply(Reply),
            Timeout,
            Exited,
        }
        let end = tokio::select! {
            r = rx => match r { Ok(r) => End::Reply(r), Err(_) => End::Exited },
            _ = tokio::time::sleep(inv.timeout) => End::Timeout,
            _ = exit.wait_for(|e| e.is_some()) => End::Exited,
        };
        let max_memory_mb =
            host::max_memory_bytes(layout, &self.cgroups_path).map(|b| b.div_ceil(1024 * 1024));
        match end {
            End::Reply(Reply::Response(b)) => InvokeResult {
                completion: Completion::Ok(b),
                reusable: true,
                max_memory_mb,
                lines: self.logs.take(),
                platform_line: None,
            },
            End::Reply(Reply::Error { error_type, body }) => {
                // Lambda: the runtime's error type header is the error's
                // type; the function error is Unhandled either way.
                let _ = error_type;
                InvokeResult {
                    completion: Completion::FunctionError {
                        kind: "Unhandled".into(),
                        body,
                    },
                    reusable: true,
                    max_memory_mb,
                    lines: self.logs.take(),
                    platform_line: None,
                }
            }
            End::Timeout => {
                self.kill().await;
                let msg = format!(
                    "RequestId: {} Error: Task timed out after {:.2} seconds",
                    inv.request_id,
                    inv.timeout.as_secs_f64()
                );
                InvokeResult {
                    completion: Completion::unhandled("Sandbox.Timedout", &msg),
                    reusable: false,
                    max_memory_mb,
                    lines: self.logs.take(),
                    platform_line: Some(msg),
                }
            }
            End::Exited => {
                // Let the exit status land.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    self.exit.clone().wait_for(|e| e.is_some()),
                )
                .await;
                let st = *self.exit.borrow();
                let oom = self.was_oom(st);
                let (t, m) = exit_error(st, oom, self.spec.memory_mb);
                let msg = format!("RequestId: {} Error: {m}", inv.request_id);
                InvokeResult {
                    completion: Completion::unhandled(t, &msg),
                    reusable: false,
                    max_memory_mb: if oom {
                        Some(self.spec.memory_mb as u64)
                    } else {
                        max_memory_mb
                    },
                    lines: self.logs.take(),
                    platform_line: Some(format!("{msg}\n{t}")),
                }
            }
        }
    }
}

impl Sandbox for LinuxSandbox {
    async fn invoke(&self, inv: Invocation) -> InvokeResult {
        self.freezer.busy();
        let r = self.run(inv).await;
        if r.reusable {
            self.freezer.idle();
        }
        r
    }

    fn alive(&self) -> bool {
        self.exit.borrow().is_none()
    }

    async fn destroy(self) {
        self.freezer.busy();
        self.ch.stop.cancel();
        if self.exit.borrow().is_none() {
            self.kill().await;
        }
        self.factory.oci.delete(&self.name).await;
        self.tasks.abort();
        if let Some(p) = &self.netns {
            let _ = netns::remove(p);
        }
        let _ = std::fs::remove_dir_all(&self.bundle);
        if let Some(s) = &self.stage {
            let _ = std::fs::remove_dir_all(s);
        }
        // Last: a destroy cut short leaves the Drop safety net armed.
        self.destroyed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
