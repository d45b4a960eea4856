//! Booting one container: its network namespace (with egress, also a
//! veth on the worker's bridge), the Runtime API listener inside it, the
//! bundle, `run` by the OCI runtime, the log pipe; then waiting for the
//! runtime's init.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::logpipe::{make_pipe, LogPipe};
use super::{err_body, exit_error, netns, setup, spec, LinuxFactory, LinuxSandbox};
use crate::sandbox::runtime_api::{self, Channel, Phase};
use crate::sandbox::{CreateError, Created, FunctionSpec, Sandbox};
use crate::tasks::Tasks;

/// Lambda gives init 10 s.
pub(super) const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Port of the Runtime API on the sandbox's own loopback.
pub(super) const API_PORT: u16 = 9001;

/// What a booted container runs for.
pub(super) enum Boot<'a> {
    /// One function: its code at /var/task, its environment.
    Function { code_dir: &'a Path },
    /// A generic Python runtime for later specialisation: an empty staging
    /// directory at /var/task, filled (hard links) when a function takes it.
    Generic { stage: &'a Path },
}

impl LinuxFactory {
    /// Variables every sandbox of a runtime has, whatever its function.
    pub(super) fn base_env(&self, api: &str, python: bool) -> Vec<String> {
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
    pub(super) fn function_env(s: &FunctionSpec, name: &str) -> Vec<(String, String)> {
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

    pub(super) fn environment(&self, s: &FunctionSpec, api: &str, name: &str) -> Vec<String> {
        let mut env = self.base_env(api, s.is_python());
        env.extend(
            Self::function_env(s, name)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}")),
        );
        env
    }

    /// Starts a container; returns once the runtime process is spawned.
    pub(super) async fn boot(
        self: &Arc<Self>,
        name: String,
        s: &FunctionSpec,
        what: Boot<'_>,
    ) -> Result<(LinuxSandbox, String), CreateError> {
        let t0 = Instant::now();
        // Network: the sandbox's own namespace, where the Runtime API
        // listens on loopback; with egress also a veth on the bridge.
        let lease = if s.egress {
            let e = self.egress.as_ref().ok_or_else(|| {
                setup(
                    "egress",
                    "this worker runs without egress (--no-egress); the function's network is egress",
                )
            })?;
            Some(e.lease().map_err(|e| setup("egress", e))?)
        } else {
            None
        };
        let netns_path = self.cfg.run_dir.join("netns").join(&name);
        let p2 = netns_path.clone();
        let attach = lease.as_ref().map(|l| l.attach.clone());
        let listener =
            tokio::task::spawn_blocking(move || netns::create(&p2, API_PORT, attach.as_ref()))
                .await
                .map_err(|e| setup("network namespace", e))?
                .map_err(|e| setup("network namespace", e))?;
        let api = format!("127.0.0.1:{API_PORT}");
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
            netns: Some(netns_path.clone()),
            bundle: None,
            stage: stage.as_ref().map(|(p, _)| p.clone()),
            channel: None,
            armed: true,
        };
        let ch = Channel::new(specialize_rx);
        let cgroups_path = format!("/nubo/{name}");
        let server =
            runtime_api::serve(listener, ch.clone()).map_err(|e| setup("Runtime API", e))?;
        // The sandbox's own tasks stop with its channel.
        let tasks = Tasks::new(ch.stop.clone());
        tasks.spawn(format!("{name}/runtime-api"), server);
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
            netns: &netns_path,
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
        let mut child = self
            .oci
            .run(&bundle, &name, wr, wr2)
            .map_err(|e| setup(&format!("starting {}", self.oci.runtime().display()), e))?;
        let logs =
            Arc::new(LogPipe::new(rd, self.cfg.log_bytes).map_err(|e| setup("log pipe", e))?);
        tasks.spawn(format!("{name}/log-pipe"), logs.clone().run());
        let (exit_tx, exit_rx) = watch::channel(None::<ExitStatus>);
        tasks.spawn(format!("{name}/exit"), async move {
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
        let freezer = Arc::new(super::freezer::Freezer::new(
            self.cfg.cgroup,
            cgroups_path.clone(),
            self.cfg.freeze_idle,
        ));
        tasks.spawn(
            format!("{name}/freezer"),
            freezer.clone().run(ch.stop.clone()),
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
            netns: Some(netns_path),
            _egress: lease,
            bundle,
            stage,
            tasks,
            spec: s.clone(),
            pending_specialize: Mutex::new(None),
            destroyed: Default::default(),
            freezer,
        };
        if let Some(tx) = specialize {
            // Stash the sender in the channel's slot for `take_generic`.
            *sb.pending_specialize.lock().expect("lock poisoned") = Some(tx);
        }
        Ok((sb, api))
    }

    /// Waits for the runtime's first `/next` (init done), an init error,
    /// its exit, or the init timeout.
    pub(super) async fn wait_init(
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
}

/// Removes a half-built sandbox when creation fails before it is whole.
pub(super) struct Cleanup {
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
        // Short (one runtime command), and a drop cannot wait for it.
        tokio::spawn(async move { f.oci.delete(&name).await });
    }
}
