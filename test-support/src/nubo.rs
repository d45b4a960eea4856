//! Starting nubo's roles as real processes, on loopback, with the settings
//! the tests use, and running its CLI. The roles' logs are collected by
//! [`Proc`] (plain text: `NO_COLOR`) and shown when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::net::free_port;
use crate::process::Proc;

/// How long a server role has to print its `ready` line.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// The `nubo` binary and the credentials a test cluster is started with.
/// The caller supplies them (the binary path is only known to the crate
/// that builds it: `env!("CARGO_BIN_EXE_nubo")`).
#[derive(Clone, Debug)]
pub struct Nubo {
    pub bin: PathBuf,
    /// `NUBO_CLUSTER_SECRET` of `nubo controller`.
    pub cluster_secret: String,
    /// `NUBO_WORKER_SECRET` of `nubo worker` (derived from the cluster
    /// secret by `nubo_proto::worker_secret`).
    pub worker_secret: String,
    /// `NUBO_BOOTSTRAP_TOKEN` of `nubo controller`: the first admin token.
    pub admin_token: String,
}

impl Nubo {
    /// `nubo up` on 127.0.0.1:`port` (metrics on `metrics`), its data in
    /// `data_dir`, the CLI configuration (where it stores the admin token)
    /// in `config_dir`, with extra environment `vars`; waits for `ready`.
    /// Failpoints are off unless `vars` sets `NUBO_FAILPOINTS`.
    pub fn up(
        &self,
        data_dir: &Path,
        config_dir: &Path,
        port: u16,
        metrics: u16,
        vars: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "up",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ])
        .env("NUBO_CONFIG_DIR", config_dir)
        .env("NO_COLOR", "1")
        .env_remove("NUBO_FAILPOINTS")
        .envs(vars.iter().copied());
        Proc::spawn_ready(cmd, "nubo up", READY_WITHIN)
    }

    /// `nubo controller` number `id` of a cluster whose members listen on
    /// 127.0.0.1:`ports[i]` (ids 1..=n), its data in `dir/c<id>`. Does not
    /// wait: the test waits for the cluster as it needs.
    pub fn controller(&self, dir: &Path, id: u64, ports: &[u16]) -> Proc {
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "controller",
            "--id",
            &id.to_string(),
            "--listen",
            &format!("127.0.0.1:{}", ports[id as usize - 1]),
            "--peers",
            &peers.join(","),
            "--data-dir",
            dir.join(format!("c{id}")).to_str().unwrap(),
        ])
        .env("NO_COLOR", "1")
        .env("NUBO_CLUSTER_SECRET", &self.cluster_secret)
        .env("NUBO_BOOTSTRAP_TOKEN", &self.admin_token);
        Proc::spawn(cmd, &format!("controller {id}"))
    }

    /// `nubo worker` in `zone`, registering with `controllers`
    /// (comma-separated HOST:PORT), serving on a free port, metrics on
    /// `metrics`, offering `memory_mb`, its data in `dir/worker-<zone>`;
    /// waits for `ready`.
    pub fn worker(
        &self,
        dir: &Path,
        zone: &str,
        controllers: &str,
        metrics: u16,
        memory_mb: u32,
    ) -> Proc {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "worker",
            "--zone",
            zone,
            "--controllers",
            controllers,
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
            dir.join(format!("worker-{zone}")).to_str().unwrap(),
            "--memory-mb",
            &memory_mb.to_string(),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ])
        .env("NO_COLOR", "1")
        .env("NUBO_WORKER_SECRET", &self.worker_secret);
        Proc::spawn_ready(cmd, &format!("worker {zone}"), READY_WITHIN)
    }

    /// Runs a CLI command against `endpoint` with `config_dir` as its
    /// configuration and `token` (or none: then the CLI uses the stored
    /// one); echoes the command and its output to stderr (shown when the
    /// test fails).
    pub fn cli(
        &self,
        endpoint: &str,
        config_dir: &Path,
        token: Option<&str>,
        args: &[&str],
    ) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("NUBO_ENDPOINT", endpoint)
            .env("NUBO_CONFIG_DIR", config_dir)
            .env_remove("NUBO_TOKEN")
            .stdin(Stdio::null());
        if let Some(t) = token {
            cmd.env("NUBO_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        eprintln!(
            "$ nubo {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}
