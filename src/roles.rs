//! Server roles carried by the `nubo` binary: `nubo up` (everything in one
//! process) and `nubo controller` (one member of the Raft group).

use std::path::PathBuf;

use anyhow::Context;
use nubo_controller::config::{ControllerConfig, Overrides};
use nubo_controller::network::Faults;
use nubo_controller::server;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the embedded controller keeps its data (kept across restarts).
    /// Default: $HOME/.local/share/nubo.
    #[arg(long, env = "NUBO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// API listen address.
    #[arg(long, env = "NUBO_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// Prometheus /metrics address; empty disables it.
    #[arg(long, env = "NUBO_METRICS_LISTEN", default_value = "127.0.0.1:7780")]
    pub metrics_listen: String,
}

#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// TOML configuration file; flags and NUBO_* variables override it.
    #[arg(long, env = "NUBO_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (>= 1).
    #[arg(long, env = "NUBO_ID")]
    pub id: Option<u64>,
    /// Address to bind for the API and Raft RPCs, HOST:PORT.
    #[arg(long, env = "NUBO_LISTEN")]
    pub listen: Option<String>,
    /// Address other nodes use to reach this one (default: --listen).
    #[arg(long, env = "NUBO_ADVERTISE")]
    pub advertise: Option<String>,
    /// Initial members of a new cluster: 1=HOST:PORT,2=HOST:PORT,...
    #[arg(long, env = "NUBO_PEERS")]
    pub peers: Option<String>,
    /// Start empty and wait to be added with `nubo cluster add`.
    #[arg(long, env = "NUBO_JOIN")]
    pub join: bool,
    #[arg(long, env = "NUBO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Shared secret of the cluster's controllers (16+ characters).
    #[arg(long, env = "NUBO_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Admin token to create on the cluster's first start (default: random,
    /// written to DATA_DIR/admin.token).
    #[arg(long, env = "NUBO_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub bootstrap_token: Option<String>,
    /// Prometheus /metrics address, HOST:PORT.
    #[arg(long, env = "NUBO_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Do not fsync the Raft log (unsafe: a power loss can lose acknowledged writes).
    #[arg(long, env = "NUBO_NO_FSYNC")]
    pub no_fsync: bool,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Where client settings live (`nubo up` stores the admin token here).
pub fn config_dir() -> PathBuf {
    std::env::var_os("NUBO_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".config").join("nubo"))
}

/// Waits for SIGTERM or Ctrl-C.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
    }
}

pub async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let config = ControllerConfig::load(
        args.config.as_deref(),
        Overrides {
            id: args.id,
            listen: args.listen,
            advertise: args.advertise,
            peers: args.peers,
            join: args.join.then_some(true),
            data_dir: args.data_dir,
            cluster_secret: args.cluster_secret,
            bootstrap_token: args.bootstrap_token,
            metrics_listen: args.metrics_listen,
            fsync: args.no_fsync.then_some(false),
        },
    )?;
    let running = server::start(config, Faults::new())
        .await
        .context("starting the controller")?;
    eprintln!(
        "nubo controller {} listening on http://{}",
        running.node.id, running.addr
    );
    if let Some(m) = running.metrics_addr {
        eprintln!("metrics at http://{m}/metrics");
    }
    let node = running.node.clone();
    let token_task = tokio::spawn(async move {
        // Needs a quorum; the others may still be starting.
        for _ in 0..60 {
            let r = server::ensure_admin_token(&node).await;
            match r {
                Ok(info) => {
                    if let Some(f) = info.token_file {
                        eprintln!("admin token stored in {}", f.display());
                    }
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "admin token: waiting for a quorum"),
            }
        }
        tracing::warn!("could not create the bootstrap admin token: no quorum within the wait");
    });
    wait_for_signal().await;
    token_task.abort();
    running.shutdown().await;
    eprintln!("controller stopped");
    Ok(())
}

pub async fn run_up(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| home().join(".local").join("share").join("nubo"));
    let config = ControllerConfig::load(
        None,
        Overrides {
            id: Some(1),
            listen: Some(args.listen),
            data_dir: Some(data_dir.clone()),
            metrics_listen: Some(args.metrics_listen),
            ..Default::default()
        },
    )?;
    eprintln!("nubo up: starting (data in {})", data_dir.display());
    let running = server::start(config, Faults::new())
        .await
        .context("starting the embedded controller")?;
    let info = server::ensure_admin_token(&running.node)
        .await
        .context("creating the admin token")?;
    if let Some(token) = info.token {
        let file = config_dir().join("token");
        server::write_secret_file(&file, &token)?;
        eprintln!(
            "admin token stored in {} (the CLI reads it from there)",
            file.display()
        );
    }
    let endpoint = format!("http://{}", running.addr);
    if let Some(m) = running.metrics_addr {
        eprintln!("metrics at http://{m}/metrics");
    }
    eprintln!("nubo is up: endpoint {endpoint} — try `nubo function list`. Ctrl-C stops it.");
    // Scripts wait for this line on stdout.
    println!("ready {endpoint}");
    wait_for_signal().await;
    running.shutdown().await;
    eprintln!("nubo stopped cleanly");
    Ok(())
}
