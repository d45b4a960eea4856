//! Generic prewarmed Python sandboxes: booted ahead of demand per
//! class (memory MB, /tmp MB, egress or not) with an empty staging directory at
//! /var/task, their runtime blocked on `/nubo/v1/specialize`; a cold call
//! of a matching function takes one instead of booting on the request path.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::boot::{Boot, API_PORT, INIT_TIMEOUT};
use super::{set_mode, setup, LinuxFactory, LinuxSandbox};
use crate::sandbox::runtime_api::Phase;
use crate::sandbox::{CreateError, Created, FunctionSpec, Sandbox};

/// A prewarmed generic Python sandbox, waiting for a function.
pub(super) struct Generic {
    sb: LinuxSandbox,
    specialize: tokio::sync::oneshot::Sender<Bytes>,
}

/// Generic sandboxes are kept per class; an egress one already has its
/// veth and address.
pub(super) type ClassKey = crate::config::GenericClass;

impl LinuxFactory {
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
            memory_mb: class.memory_mb,
            timeout_seconds: 1,
            environment: Default::default(),
            ephemeral_storage_mb: class.tmp_mb,
            egress: class.egress,
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
            if class.egress && self.egress.is_none() {
                continue;
            }
            loop {
                let have = self
                    .generic
                    .lock()
                    .expect("lock poisoned")
                    .get(&class)
                    .map(|v| v.len())
                    .unwrap_or(0);
                if have >= self.cfg.generic_per_class || self.closing() {
                    break;
                }
                match self.boot_generic(class).await {
                    // Shut down meanwhile: this one must not outlive the worker.
                    Ok(g) if self.closing() => {
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

    /// Shutting down: no generic sandbox is started or kept any more
    /// (from the worker's token on, or `drain_generic`).
    fn closing(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Relaxed) || self.tasks.token().is_cancelled()
    }

    pub(super) fn take_generic(&self, s: &FunctionSpec) -> Option<Generic> {
        if !s.is_python() {
            return None;
        }
        let mut g = self.generic.lock().expect("lock poisoned");
        let v = g.get_mut(&ClassKey {
            memory_mb: s.memory_mb,
            tmp_mb: s.ephemeral_storage_mb,
            egress: s.egress,
        })?;
        while let Some(gen) = v.pop() {
            if gen.sb.alive() {
                return Some(gen);
            }
            // Short, bounded by the kill timeout: not a named task.
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

    /// Turns a generic sandbox into one of `s`: its code is hard-linked
    /// into the staging directory the sandbox sees at /var/task, and the
    /// runtime is handed the function's environment; it then imports the
    /// handler and asks for the event.
    pub(super) async fn specialize(
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
        LinuxFactory::wait_init(sb, started, &format!("127.0.0.1:{API_PORT}")).await
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
