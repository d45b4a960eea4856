//! The OCI runtime (crun or runc): every command the worker gives it, in
//! one place. All of them use this worker's own state root, so several
//! workers on one host do not see each other's containers.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

#[derive(Debug, Clone)]
pub struct Oci {
    /// `crun` or `runc` (a name on PATH or a path).
    runtime: PathBuf,
    /// The runtime's state directory (`--root`).
    root: PathBuf,
}

impl Oci {
    pub fn new(runtime: PathBuf, root: PathBuf) -> Oci {
        Oci { runtime, root }
    }

    pub fn runtime(&self) -> &Path {
        &self.runtime
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.runtime);
        c.arg("--root").arg(&self.root);
        c
    }

    /// `run --bundle BUNDLE NAME` in the foreground: the child lives as
    /// long as the container, whose stdout and stderr are `stdout` and
    /// `stderr`. Dropping the child kills the runtime.
    pub fn run(
        &self,
        bundle: &Path,
        name: &str,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> io::Result<Child> {
        let mut cmd = self.command();
        cmd.arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(name)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        cmd.spawn()
        // `cmd` drops here, closing our copies of the descriptors: the
        // container holds the only write ends of its log pipe.
    }

    /// SIGKILL to the container's processes. Failures (already gone) are
    /// not errors: the caller waits for the exit either way.
    pub async fn kill(&self, name: &str) {
        self.quiet(&["kill", name, "KILL"]).await;
    }

    /// Removes the container, running or not; nothing to remove is fine.
    pub async fn delete(&self, name: &str) {
        self.quiet(&["delete", "--force", name]).await;
    }

    async fn quiet(&self, args: &[&str]) {
        let _ = self
            .command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}
