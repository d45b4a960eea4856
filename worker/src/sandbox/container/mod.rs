//! Sandboxes as OCI containers run by crun (or runc) from a bundle the
//! worker writes. The worker creates each sandbox's network namespace
//! itself and serves the Runtime API on a listener inside it; the
//! container's stdout and stderr are one pipe read by the worker.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::code::CodeCache;
use crate::sandbox::runtime_api::{self, Channel, Event, Phase, Reply};
use crate::sandbox::{
    Completion, CreateError, Created, FunctionSpec, Invocation, InvokeResult, Sandbox,
    SandboxFactory,
};
use host::CgroupLayout;

pub mod host;
pub mod netns;
pub mod seccomp;
pub mod spec;

/// Our Python runtime loop, shipped inside the binary.
pub const PYTHON_BOOTSTRAP: &str = include_str!("../../../runtime/python/bootstrap.py");
/// The sandbox init (runtime/init/init.c, compiled by build.rs): PID 1,
/// reaps orphans, forwards signals, exits with the runtime's status.
pub const SANDBOX_INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nubo-init"));

/// Lambda gives init 10 s.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines kept per invocation; the rest is counted, not stored.
const MAX_LINES: usize = 10_000;
const MAX_LINE: usize = 256 * 1024;
/// Port of the Runtime API on the sandbox's own loopback.
const API_PORT: u16 = 9001;

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
    /// (memory MB, /tmp MB) classes kept prewarmed as generic Python
    /// sandboxes, and how many of each.
    pub generic_classes: Vec<(u32, u32)>,
    pub generic_per_class: usize,
}

pub struct LinuxFactory {
    cfg: LinuxConfig,
    code: Arc<CodeCache>,
    rootfs: PathBuf,
    etc: PathBuf,
    etc_egress: PathBuf,
    runtime_dir: PathBuf,
    state_root: PathBuf,
    generic: Mutex<std::collections::HashMap<ClassKey, Vec<Generic>>>,
    generic_seq: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    fill_lock: tokio::sync::Mutex<()>,
}

impl LinuxFactory {
    /// Prepares the shared pieces: the read-only root, the two /etc
    /// variants and the runtime directory.
    pub fn new(cfg: LinuxConfig, code: Arc<CodeCache>) -> Result<LinuxFactory, String> {
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
            cfg,
            code,
            rootfs,
            etc,
            etc_egress,
            runtime_dir,
            state_root,
            generic: Mutex::new(Default::default()),
            generic_seq: Default::default(),
            closed: Default::default(),
            fill_lock: Default::default(),
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
                    self.remove_container(&name).await;
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

    fn oci(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.cfg.oci_runtime);
        c.arg("--root").arg(&self.state_root);
        c
    }

    async fn remove_container(&self, name: &str) {
        let _ = self
            .oci()
            .args(["delete", "--force", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }

    /// Variables every sandbox of a runtime has, whatever its function.
    fn base_env(&self, api: &str, python: bool) -> Vec<String> {
        let mut env = vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
            "LANG=C.UTF-8".into(),
            "TZ=:UTC".into(),
            "HOME=/tmp".into(),
            "LAMBDA_TASK_ROOT=/var/task".into(),
            "LAMBDA_RUNTIME_DIR=/var/runtime".into(),
            format!("AWS_LAMBDA_RUNTIME_API={api}"),
            format!("AWS_REGION={}", self.cfg.region),
            format!("AWS_DEFAULT_REGION={}", self.cfg.region),
        ];
        if python {
            env.push("PYTHONUNBUFFERED=1".into());
            env.push("PYTHONDONTWRITEBYTECODE=1".into());
        }
        env
    }

    /// The function's own variables: Lambda's and the user's.
    fn function_env(s: &FunctionSpec, name: &str) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "AWS_LAMBDA_FUNCTION_NAME".to_string(),
                s.function_name.clone(),
            ),
            ("AWS_LAMBDA_FUNCTION_VERSION".into(), s.version.clone()),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
                s.memory_mb.to_string(),
            ),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME".into(),
                format!("/aws/lambda/{}", s.function_name),
            ),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME".into(),
                format!("[{}]{name}", s.version),
            ),
            ("AWS_LAMBDA_INITIALIZATION_TYPE".into(), "on-demand".into()),
            (
                "AWS_EXECUTION_ENV".into(),
                format!("AWS_Lambda_{}", s.runtime),
            ),
            ("_HANDLER".into(), s.handler.clone()),
        ];
        for (k, v) in &s.environment {
            env.push((k.clone(), v.clone()));
        }
        env
    }

    fn environment(&self, s: &FunctionSpec, api: &str, name: &str) -> Vec<String> {
        let mut env = self.base_env(api, s.is_python());
        env.extend(
            Self::function_env(s, name)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}")),
        );
        env
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

fn setup(step: &str, e: impl std::fmt::Display) -> CreateError {
    CreateError::Setup(format!("sandbox setup, {step}: {e}"))
}

/// What a booted container runs for.
enum Boot<'a> {
    /// One function: its code at /var/task, its environment.
    Function { code_dir: &'a Path },
    /// A generic Python runtime for later specialisation: an empty staging
    /// directory at /var/task, filled (hard links) when a function takes it.
    Generic { stage: &'a Path },
}

/// A prewarmed generic Python sandbox, waiting for a function.
pub struct Generic {
    sb: LinuxSandbox,
    specialize: tokio::sync::oneshot::Sender<Bytes>,
}

/// Generic sandboxes are kept per (memory MB, /tmp MB) class.
type ClassKey = (u32, u32);

impl LinuxFactory {
    /// Starts a container; returns once the runtime process is spawned.
    async fn boot(
        self: &Arc<Self>,
        name: String,
        s: &FunctionSpec,
        what: Boot<'_>,
    ) -> Result<(LinuxSandbox, String), CreateError> {
        let t0 = Instant::now();
        // Network: the sandbox's own namespace with only loopback, where
        // the Runtime API listens; with egress, the host's network.
        let (listener, netns_path, api) = if s.egress {
            let l = std::net::TcpListener::bind("127.0.0.1:0")
                .map_err(|e| setup("binding the Runtime API", e))?;
            let addr = l
                .local_addr()
                .map_err(|e| setup("Runtime API address", e))?;
            (l, None, addr.to_string())
        } else {
            let path = self.cfg.run_dir.join("netns").join(&name);
            let p2 = path.clone();
            let l = tokio::task::spawn_blocking(move || netns::create(&p2, API_PORT))
                .await
                .map_err(|e| setup("network namespace", e))?
                .map_err(|e| setup("network namespace", e))?;
            (l, Some(path), format!("127.0.0.1:{API_PORT}"))
        };
        let (code_dir, stage, env, specialize_rx) = match what {
            Boot::Function { code_dir } => (
                code_dir.to_path_buf(),
                None,
                self.environment(s, &api, &name),
                None,
            ),
            Boot::Generic { stage } => {
                let mut env = self.base_env(&api, true);
                env.push("NUBO_GENERIC=1".into());
                let (tx, rx) = tokio::sync::oneshot::channel();
                (
                    stage.to_path_buf(),
                    Some((stage.to_path_buf(), tx)),
                    env,
                    Some(rx),
                )
            }
        };
        let t_netns = t0.elapsed();
        let mut guard = Cleanup {
            factory: self.clone(),
            name: name.clone(),
            netns: netns_path.clone(),
            bundle: None,
            stage: stage.as_ref().map(|(p, _)| p.clone()),
            channel: None,
            armed: true,
        };
        let ch = Channel::new(specialize_rx);
        let cgroups_path = format!("/nubo/{name}");
        // On the host's loopback (egress), only this sandbox may connect.
        let owner = s
            .egress
            .then(|| host::procs_file(self.cfg.cgroup, &cgroups_path));
        let server =
            runtime_api::serve(listener, ch.clone(), owner).map_err(|e| setup("Runtime API", e))?;
        guard.channel = Some(ch.clone());

        // Our init is PID 1; the runtime is its child.
        let args: Vec<String> = if s.is_python() {
            vec![
                "/var/runtime/init".into(),
                "/usr/bin/python3".into(),
                "-u".into(),
                // No `site`: the sandbox has no site-packages of its own, and
                // skipping it saves ~5 ms of every cold start.
                "-S".into(),
                "/var/runtime/bootstrap.py".into(),
            ]
        } else {
            vec!["/var/runtime/init".into(), "/var/task/bootstrap".into()]
        };
        let oci_spec = spec::build(&spec::SandboxSpec {
            id: &name,
            rootfs: &self.rootfs,
            code_dir: &code_dir,
            runtime_dir: &self.runtime_dir,
            etc_dir: if s.egress {
                &self.etc_egress
            } else {
                &self.etc
            },
            args,
            env,
            cwd: "/var/task",
            memory_mb: s.memory_mb,
            tmp_mb: s.ephemeral_storage_mb,
            netns: netns_path.as_deref(),
            cgroups_path: cgroups_path.clone(),
            uid: self.cfg.uid,
            gid: self.cfg.gid,
            hostname: "sandbox",
        })
        .map_err(|e| setup("OCI spec", e))?;
        let bundle = self.cfg.run_dir.join("bundles").join(&name);
        guard.bundle = Some(bundle.clone());
        std::fs::create_dir_all(&bundle).map_err(|e| setup("bundle directory", e))?;
        spec::write_bundle(&bundle, &oci_spec).map_err(|e| setup("bundle", e))?;

        let t_bundle = t0.elapsed();
        // stdout and stderr share one pipe, so lines keep their order.
        let (rd, wr) = make_pipe().map_err(|e| setup("log pipe", e))?;
        let wr2 = wr.try_clone().map_err(|e| setup("log pipe", e))?;
        let mut cmd = self.oci();
        cmd.arg("run")
            .arg("--bundle")
            .arg(&bundle)
            .arg(&name)
            .stdin(Stdio::null())
            .stdout(Stdio::from(wr))
            .stderr(Stdio::from(wr2))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| setup(&format!("starting {}", self.cfg.oci_runtime.display()), e))?;
        drop(cmd); // closes our copies of the write end
        let logs = Arc::new(LogPipe::new(rd).map_err(|e| setup("log pipe", e))?);
        let reader = tokio::spawn(logs.clone().run());
        let (exit_tx, exit_rx) = watch::channel(None::<ExitStatus>);
        let waiter = tokio::spawn(async move {
            let st = child.wait().await.ok();
            let _ = exit_tx.send(
                st.or_else(|| Some(std::os::unix::process::ExitStatusExt::from_raw(255 << 8))),
            );
        });
        guard.armed = false;
        tracing::debug!(
            sandbox = %name,
            netns_ms = t_netns.as_secs_f64() * 1e3,
            bundle_ms = t_bundle.as_secs_f64() * 1e3,
            spawned_ms = t0.elapsed().as_secs_f64() * 1e3,
            "sandbox booting"
        );
        let (stage, specialize) = match stage {
            Some((p, tx)) => (Some(p), Some(tx)),
            None => (None, None),
        };
        let sb = LinuxSandbox {
            factory: self.clone(),
            name,
            cgroups_path,
            ch,
            exit: exit_rx,
            logs,
            netns: netns_path,
            bundle,
            stage,
            tasks: vec![server, reader, waiter],
            spec: s.clone(),
            pending_specialize: Mutex::new(None),
            destroyed: Default::default(),
        };
        if let Some(tx) = specialize {
            // Stash the sender in the channel's slot for `take_generic`.
            *sb.pending_specialize.lock().expect("lock poisoned") = Some(tx);
        }
        Ok((sb, api))
    }

    /// Waits for the runtime's first `/next` (init done), an init error,
    /// its exit, or the init timeout.
    async fn wait_init(
        sb: LinuxSandbox,
        started: Instant,
        api: &str,
    ) -> Result<Created<LinuxSandbox>, CreateError> {
        let mut phase = sb.ch.phase();
        let mut exit = sb.exit.clone();
        let outcome = tokio::select! {
            r = phase.wait_for(|p| matches!(p, Phase::Ready(_) | Phase::InitError { .. })) => r.map(|p| p.clone()).ok(),
            _ = exit.wait_for(|e| e.is_some()) => None,
            _ = tokio::time::sleep(INIT_TIMEOUT) => Some(Phase::Starting),
        };
        let init_duration = started.elapsed();
        tracing::debug!(sandbox = %sb.name, init_ms = init_duration.as_secs_f64() * 1e3, "sandbox init done");
        let memory_mb = sb.spec.memory_mb;
        match outcome {
            Some(Phase::Ready(_)) => {
                let init_lines = sb.logs.take();
                Ok(Created {
                    sandbox: sb,
                    init_duration,
                    init_lines,
                })
            }
            Some(Phase::InitError { error_type, body }) => {
                // The runtime exits after reporting; give its last words a moment.
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    sb.exit.clone().wait_for(|e| e.is_some()),
                )
                .await;
                let lines = sb.logs.take();
                sb.destroy().await;
                Err(CreateError::Init {
                    error_type,
                    body,
                    lines,
                    init_duration,
                })
            }
            Some(_) => {
                let lines = sb.logs.take();
                sb.destroy().await;
                Err(CreateError::Init {
                    error_type: "Sandbox.Timedout".into(),
                    body: err_body(
                        "Sandbox.Timedout",
                        &format!(
                            "Init timed out after {:.2} seconds: the runtime never asked for an event (a `provided` bootstrap must poll {api}/2018-06-01/runtime/invocation/next)",
                            INIT_TIMEOUT.as_secs_f64()
                        ),
                    ),
                    lines,
                    init_duration,
                })
            }
            None => {
                let st = *sb.exit.borrow();
                let lines = sb.logs.take();
                let oom = sb.was_oom(st);
                sb.destroy().await;
                let (t, m) = exit_error(st, oom, memory_mb);
                Err(CreateError::Init {
                    error_type: t.into(),
                    body: err_body(t, &format!("Init failed. {m}")),
                    lines,
                    init_duration,
                })
            }
        }
    }

    /// Starts one generic sandbox of `class` and waits until its runtime is
    /// loaded and asks to be specialised.
    async fn boot_generic(self: &Arc<Self>, class: ClassKey) -> Result<Generic, CreateError> {
        let n = self
            .generic_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("nubo-{}-g{n}", self.cfg.tag);
        let stage = self.cfg.stage_dir.join(&name);
        std::fs::create_dir_all(&stage).map_err(|e| setup("staging directory", e))?;
        set_mode(&stage, 0o755);
        let spec = FunctionSpec {
            function_name: String::new(),
            version: String::new(),
            runtime: "python3".into(),
            handler: String::new(),
            memory_mb: class.0,
            timeout_seconds: 1,
            environment: Default::default(),
            ephemeral_storage_mb: class.1,
            egress: false,
            code_sha256: String::new(),
            code_size: 0,
        };
        let (sb, _) = self
            .boot(name, &spec, Boot::Generic { stage: &stage })
            .await?;
        let mut phase = sb.ch.phase();
        let mut exit = sb.exit.clone();
        let ok = tokio::select! {
            r = phase.wait_for(|p| *p == Phase::Generic) => r.is_ok(),
            _ = exit.wait_for(|e| e.is_some()) => false,
            _ = tokio::time::sleep(INIT_TIMEOUT) => false,
        };
        if !ok {
            let lines = sb.logs.take();
            sb.destroy().await;
            return Err(CreateError::Setup(format!(
                "a generic Python sandbox did not start: {}",
                lines.join(" | ")
            )));
        }
        let tx = sb
            .pending_specialize
            .lock()
            .expect("lock poisoned")
            .take()
            .ok_or_else(|| CreateError::Setup("generic sandbox without a channel".into()))?;
        Ok(Generic { sb, specialize: tx })
    }

    /// Keeps `generic_per_class` generic sandboxes ready per class.
    pub async fn fill_generic(self: Arc<Self>) {
        // One filler at a time; shutdown waits for it (a sandbox booting
        // when the process exits would be left behind).
        let _filling = self.fill_lock.lock().await;
        for class in self.cfg.generic_classes.clone() {
            loop {
                let have = self
                    .generic
                    .lock()
                    .expect("lock poisoned")
                    .get(&class)
                    .map(|v| v.len())
                    .unwrap_or(0);
                if have >= self.cfg.generic_per_class
                    || self.closed.load(std::sync::atomic::Ordering::Relaxed)
                {
                    break;
                }
                match self.boot_generic(class).await {
                    // Shut down meanwhile: this one must not outlive the worker.
                    Ok(g) if self.closed.load(std::sync::atomic::Ordering::Relaxed) => {
                        g.sb.destroy().await;
                        return;
                    }
                    Ok(g) => self
                        .generic
                        .lock()
                        .expect("lock poisoned")
                        .entry(class)
                        .or_default()
                        .push(g),
                    Err(e) => {
                        tracing::warn!("prewarming a generic sandbox: {e}");
                        break;
                    }
                }
            }
        }
    }

    fn take_generic(&self, s: &FunctionSpec) -> Option<Generic> {
        if !s.is_python() || s.egress {
            return None;
        }
        let mut g = self.generic.lock().expect("lock poisoned");
        let v = g.get_mut(&(s.memory_mb, s.ephemeral_storage_mb))?;
        while let Some(gen) = v.pop() {
            if gen.sb.alive() {
                return Some(gen);
            }
            tokio::spawn(gen.sb.destroy());
        }
        None
    }

    /// Destroys the generic sandboxes (shutdown).
    pub async fn drain_generic(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _no_filler = self.fill_lock.lock().await;
        let all: Vec<Generic> = self
            .generic
            .lock()
            .expect("lock poisoned")
            .drain()
            .flat_map(|(_, v)| v)
            .collect();
        futures::future::join_all(all.into_iter().map(|g| g.sb.destroy())).await;
    }

    /// Removes this worker's scratch directory once every sandbox is gone
    /// (shutdown): namespaces still mounted there are unmounted first.
    pub fn remove_run_dir(&self) {
        if let Ok(rd) = std::fs::read_dir(self.cfg.run_dir.join("netns")) {
            for e in rd.flatten() {
                let _ = netns::remove(&e.path());
            }
        }
        let _ = std::fs::remove_dir_all(&self.cfg.run_dir);
    }

    /// Turns a generic sandbox into one of `s`: its code is hard-linked
    /// into the staging directory the sandbox sees at /var/task, and the
    /// runtime is handed the function's environment; it then imports the
    /// handler and asks for the event.
    async fn specialize(
        self: &Arc<Self>,
        g: Generic,
        s: &FunctionSpec,
        code_dir: &Path,
        started: Instant,
    ) -> Result<Created<LinuxSandbox>, CreateError> {
        let Generic { mut sb, specialize } = g;
        let stage = sb
            .stage
            .clone()
            .ok_or_else(|| CreateError::Setup("generic sandbox without staging".into()))?;
        let (src, dst) = (code_dir.to_path_buf(), stage.clone());
        let linked = tokio::task::spawn_blocking(move || link_tree(&src, &dst))
            .await
            .map_err(|e| setup("staging the code", e))?;
        if let Err(e) = linked {
            sb.destroy().await;
            return Err(setup("staging the code", e));
        }
        let env: serde_json::Map<String, serde_json::Value> =
            LinuxFactory::function_env(s, &sb.name)
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
        let body = serde_json::json!({ "env": env }).to_string();
        sb.spec = s.clone();
        if specialize.send(Bytes::from(body)).is_err() {
            sb.destroy().await;
            return Err(CreateError::Setup("the generic sandbox went away".into()));
        }
        LinuxFactory::wait_init(sb, started, "127.0.0.1:9001").await
    }
}

/// Recreates the tree `src` under `dst` with hard links (same filesystem:
/// the code cache and the staging directories share the data directory),
/// copying when linking is not possible.
fn link_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_dir() {
            std::fs::create_dir_all(&to)?;
            set_mode(&to, 0o755);
            link_tree(&from, &to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
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
            .map_err(|e| CreateError::Setup(e.to_string()))?;
        if let Some(g) = self.take_generic(s) {
            // Replace what was taken while this one specialises.
            tokio::spawn(self.clone().fill_generic());
            return self.specialize(g, s, &code_dir, started).await;
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
        LinuxFactory::wait_init(sb, started, &api).await
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

fn make_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Removes a half-built sandbox when creation fails before it is whole.
struct Cleanup {
    factory: Arc<LinuxFactory>,
    name: String,
    netns: Option<PathBuf>,
    bundle: Option<PathBuf>,
    stage: Option<PathBuf>,
    channel: Option<Arc<Channel>>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(p) = &self.netns {
            let _ = netns::remove(p);
        }
        if let Some(b) = &self.bundle {
            let _ = std::fs::remove_dir_all(b);
        }
        if let Some(s) = &self.stage {
            let _ = std::fs::remove_dir_all(s);
        }
        if let Some(c) = &self.channel {
            c.stop.cancel();
        }
        let f = self.factory.clone();
        let name = self.name.clone();
        tokio::spawn(async move { f.remove_container(&name).await });
    }
}

/// The container's output: read as it comes, attributed to the invocation
/// in progress, and drained synchronously when an invocation ends (the
/// runtime writes its output before it posts the response).
struct LogPipe {
    rx: pipe::Receiver,
    buf: Mutex<LineBuf>,
}

#[derive(Default)]
struct LineBuf {
    partial: Vec<u8>,
    lines: Vec<String>,
    dropped: usize,
}

impl LineBuf {
    fn push_bytes(&mut self, data: &[u8]) {
        for chunk in data.split_inclusive(|b| *b == b'\n') {
            if chunk.ends_with(b"\n") {
                self.partial.extend_from_slice(&chunk[..chunk.len() - 1]);
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                self.push_line(line);
            } else {
                self.partial.extend_from_slice(chunk);
                if self.partial.len() >= MAX_LINE {
                    let line = String::from_utf8_lossy(&self.partial).into_owned();
                    self.partial.clear();
                    self.push_line(line);
                }
            }
        }
    }
    fn push_line(&mut self, line: String) {
        if self.lines.len() >= MAX_LINES {
            self.dropped += 1;
        } else {
            self.lines.push(line);
        }
    }
}

impl LogPipe {
    fn new(fd: OwnedFd) -> std::io::Result<LogPipe> {
        Ok(LogPipe {
            rx: pipe::Receiver::from_owned_fd(fd)?,
            buf: Mutex::new(LineBuf::default()),
        })
    }

    /// Reads what is available now; false at end of file.
    fn drain(&self) -> bool {
        let mut b = self.buf.lock().expect("lock poisoned");
        let mut chunk = [0u8; 16384];
        loop {
            match self.rx.try_read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => b.push_bytes(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            if self.rx.readable().await.is_err() {
                return;
            }
            if !self.drain() {
                return;
            }
        }
    }

    /// Everything printed since the last take, including a last partial line.
    fn take(&self) -> Vec<String> {
        self.drain();
        let mut b = self.buf.lock().expect("lock poisoned");
        if !b.partial.is_empty() {
            let line = String::from_utf8_lossy(&b.partial).into_owned();
            b.partial.clear();
            b.push_line(line);
        }
        let mut lines = std::mem::take(&mut b.lines);
        if b.dropped > 0 {
            lines.push(format!(
                "[nubo] {} more lines were not kept (limit {MAX_LINES} per invocation)",
                b.dropped
            ));
            b.dropped = 0;
        }
        lines
    }
}

pub struct LinuxSandbox {
    factory: Arc<LinuxFactory>,
    name: String,
    cgroups_path: String,
    ch: Arc<Channel>,
    exit: watch::Receiver<Option<ExitStatus>>,
    logs: Arc<LogPipe>,
    netns: Option<PathBuf>,
    bundle: PathBuf,
    /// The staging directory of a sandbox that started generic.
    stage: Option<PathBuf>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    spec: FunctionSpec,
    pending_specialize: Mutex<Option<tokio::sync::oneshot::Sender<Bytes>>>,
    destroyed: std::sync::atomic::AtomicBool,
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
        let _ = self
            .factory
            .oci()
            .args(["kill", &self.name, "KILL"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
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
        self.ch.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
        if let Some(p) = &self.netns {
            let _ = netns::remove(p);
        }
        let _ = std::fs::remove_dir_all(&self.bundle);
        if let Some(s) = &self.stage {
            let _ = std::fs::remove_dir_all(s);
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let f = self.factory.clone();
            let name = self.name.clone();
            rt.spawn(async move {
                let _ = f
                    .oci()
                    .args(["kill", &name, "KILL"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
                f.remove_container(&name).await;
            });
        }
    }
}

impl Sandbox for LinuxSandbox {
    async fn invoke(&self, inv: Invocation) -> InvokeResult {
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

    fn alive(&self) -> bool {
        self.exit.borrow().is_none()
    }

    async fn destroy(self) {
        self.ch.stop.cancel();
        if self.exit.borrow().is_none() {
            self.kill().await;
        }
        self.factory.remove_container(&self.name).await;
        for t in &self.tasks {
            t.abort();
        }
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
