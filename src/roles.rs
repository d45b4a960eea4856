//! Server roles carried by the `nubo` binary: `nubo up` (everything in one
//! process) and `nubo controller` (one member of the Raft group).

use std::path::PathBuf;

use anyhow::Context;
use nubo_controller::config::{ControllerConfig, Overrides};
use nubo_controller::raft::network::Faults;
use nubo_controller::server;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// TOML configuration of the embedded controller (the `nubo controller`
    /// keys: limits, async settings, ...); flags and NUBO_* variables
    /// override it; the id, peers and listen address are nubo up's own.
    #[arg(long, env = "NUBO_CONFIG")]
    pub config: Option<PathBuf>,
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
    /// Memory for the embedded worker's sandboxes, MB.
    #[arg(long, env = "NUBO_WORKER_MEMORY_MB", default_value_t = nubo_worker::config::UP_MEMORY_MB)]
    pub worker_memory_mb: u32,
    /// Admin token to create on the first start (default: random, stored
    /// for the CLI in ~/.config/nubo/token).
    #[arg(long, env = "NUBO_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub bootstrap_token: Option<String>,
    /// Wait before the first retry of a failed async event, ms (Lambda: one
    /// minute; the second retry waits twice as long).
    #[arg(long, env = "NUBO_ASYNC_BASE_WAIT_MS")]
    pub async_base_wait_ms: Option<u64>,
    /// How long an async idempotency key keeps deduplicating, ms (default
    /// one hour).
    #[arg(long, env = "NUBO_IDEMPOTENCY_WINDOW_MS")]
    pub idempotency_window_ms: Option<u64>,
    /// Do not start the embedded worker (deploy only, or external workers).
    #[arg(long)]
    pub no_worker: bool,
    /// The cluster secret (default: none, a single node needs none); set it
    /// to run `nubo trigger serve` or workers of your own against nubo up.
    #[arg(long, env = "NUBO_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Do not start the embedded trigger instance (Kafka mappings then
    /// need a `nubo trigger serve`).
    #[arg(long, env = "NUBO_NO_TRIGGER")]
    pub no_trigger: bool,
    /// OCI runtime of the embedded worker: crun or runc.
    #[arg(long, env = "NUBO_OCI_RUNTIME", default_value = nubo_worker::config::OCI_RUNTIME)]
    pub oci_runtime: String,
    /// Idle sandboxes of the embedded worker are destroyed after this many
    /// seconds (provisioned ones, `--min-warm`, are kept).
    #[arg(long, env = "NUBO_KEEP_ALIVE_SECS", default_value_t = nubo_worker::config::KEEP_ALIVE_SECS)]
    pub keep_alive_secs: u64,
    /// Function output kept per invocation, bytes (the newest; the log says
    /// how much was dropped).
    #[arg(long, env = "NUBO_LOG_BYTES_PER_INVOCATION", default_value_t = nubo_worker::config::LOG_BYTES_PER_INVOCATION)]
    pub log_bytes_per_invocation: usize,
    /// Freeze idle sandboxes (their cgroup), so background processes get
    /// no CPU between invocations.
    #[arg(long, env = "NUBO_FREEZE_IDLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub freeze_idle: bool,
    #[command(flatten)]
    pub egress: EgressArgs,
}

/// How egress sandboxes reach the outside (`nubo worker` and `nubo up`).
#[derive(Debug, clap::Args)]
pub struct EgressArgs {
    /// Run no function with `--network egress` here: no bridge, no
    /// firewall rules, no IPv4 forwarding.
    #[arg(long, env = "NUBO_NO_EGRESS")]
    pub no_egress: bool,
    /// Subnet of the egress sandboxes, /16 to /29 (default: a free /22 of
    /// 10.213.0.0/16, one per worker on the host).
    #[arg(long, env = "NUBO_EGRESS_SUBNET")]
    pub egress_subnet: Option<nubo_worker::cidr::Cidr>,
    /// Ranges egress sandboxes may reach although private (a database on
    /// the LAN), comma-separated CIDRs; the most specific range decides.
    #[arg(long, env = "NUBO_EGRESS_ALLOW", value_delimiter = ',')]
    pub egress_allow: Vec<nubo_worker::cidr::Cidr>,
    /// Ranges refused besides the default ones (private, link-local,
    /// loopback), comma-separated CIDRs.
    #[arg(long, env = "NUBO_EGRESS_DENY", value_delimiter = ',')]
    pub egress_deny: Vec<nubo_worker::cidr::Cidr>,
    /// Resolvers for egress sandboxes, comma-separated IPv4 addresses
    /// (default: the host's, unless they are on loopback).
    #[arg(long, env = "NUBO_EGRESS_DNS", value_delimiter = ',')]
    pub egress_dns: Vec<std::net::Ipv4Addr>,
    /// Connections one egress sandbox may hold open at once.
    #[arg(long, env = "NUBO_EGRESS_MAX_CONNECTIONS", default_value_t = nubo_worker::config::EGRESS_MAX_CONNECTIONS)]
    pub egress_max_connections: u32,
    /// Bandwidth of one egress sandbox, each direction, Mbit/s (0: no limit).
    #[arg(long, env = "NUBO_EGRESS_RATE_MBIT", default_value_t = nubo_worker::config::EGRESS_RATE_MBIT)]
    pub egress_rate_mbit: u32,
    /// Firewall for the egress rules: auto (nftables, else iptables),
    /// nftables or iptables.
    #[arg(long, env = "NUBO_EGRESS_FIREWALL", default_value = "auto")]
    pub egress_firewall: nubo_worker::sandbox::container::egress::Choice,
}

impl EgressArgs {
    fn config(&self) -> nubo_worker::config::EgressConfig {
        nubo_worker::config::EgressConfig {
            enabled: !self.no_egress,
            subnet: self.egress_subnet,
            allow: self.egress_allow.clone(),
            deny: self.egress_deny.clone(),
            dns: self.egress_dns.clone(),
            max_connections: self.egress_max_connections,
            rate_mbit: self.egress_rate_mbit,
            firewall: self.egress_firewall,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// Zone of this worker; placement spreads a function over zones.
    #[arg(long, env = "NUBO_ZONE")]
    pub zone: String,
    /// Controllers to register with, comma-separated HOST:PORT.
    #[arg(long, env = "NUBO_CONTROLLERS", value_delimiter = ',', required = true)]
    pub controllers: Vec<String>,
    /// The worker credential: `nubo cluster worker-secret` of the
    /// controllers' cluster secret. Lets the worker register and run
    /// functions, not take part in Raft.
    #[arg(long, env = "NUBO_WORKER_SECRET", hide_env_values = true)]
    pub worker_secret: Option<String>,
    /// The controllers' cluster secret itself (accepted, with a warning:
    /// a host holding it could join the Raft group; prefer --worker-secret).
    #[arg(long, env = "NUBO_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Address of the worker API, HOST:PORT.
    #[arg(long, env = "NUBO_WORKER_LISTEN", default_value = nubo_worker::config::LISTEN)]
    pub listen: String,
    /// Address controllers use to reach this worker (default: --listen).
    #[arg(long, env = "NUBO_WORKER_ADVERTISE")]
    pub advertise: Option<String>,
    /// Stable worker id (default: generated once, kept in DATA_DIR/worker.id).
    #[arg(long, env = "NUBO_WORKER_ID")]
    pub id: Option<String>,
    /// Memory for sandboxes (the sum of their limits), MB.
    #[arg(long, env = "NUBO_WORKER_MEMORY_MB", default_value_t = nubo_worker::config::MEMORY_MB)]
    pub memory_mb: u32,
    #[arg(long, env = "NUBO_WORKER_MAX_SANDBOXES", default_value_t = nubo_worker::config::MAX_SANDBOXES)]
    pub max_sandboxes: u32,
    /// Idle sandboxes are destroyed after this many seconds.
    #[arg(long, env = "NUBO_KEEP_ALIVE_SECS", default_value_t = nubo_worker::config::KEEP_ALIVE_SECS)]
    pub keep_alive_secs: u64,
    /// Function output kept per invocation, bytes (the newest; the log says
    /// how much was dropped).
    #[arg(long, env = "NUBO_LOG_BYTES_PER_INVOCATION", default_value_t = nubo_worker::config::LOG_BYTES_PER_INVOCATION)]
    pub log_bytes_per_invocation: usize,
    /// Freeze idle sandboxes (their cgroup), so background processes get
    /// no CPU between invocations.
    #[arg(long, env = "NUBO_FREEZE_IDLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub freeze_idle: bool,
    /// Code cache and worker id. Default: /var/lib/nubo/worker.
    #[arg(long, env = "NUBO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// crun (default) or runc.
    #[arg(long, env = "NUBO_OCI_RUNTIME", default_value = nubo_worker::config::OCI_RUNTIME)]
    pub oci_runtime: String,
    /// Prometheus /metrics address, HOST:PORT.
    #[arg(long, env = "NUBO_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub egress: EgressArgs,
}

/// `nubo trigger serve`: one trigger instance.
#[derive(Debug, clap::Args)]
pub struct TriggerArgs {
    /// Controllers, comma-separated HOST:PORT.
    #[arg(long, env = "NUBO_CONTROLLERS", value_delimiter = ',', required = true)]
    pub controllers: Vec<String>,
    /// The trigger credential: `nubo cluster trigger-secret` of the
    /// controllers' cluster secret.
    #[arg(long, env = "NUBO_TRIGGER_SECRET", hide_env_values = true)]
    pub trigger_secret: Option<String>,
    /// The cluster secret itself (the credential is derived from it).
    #[arg(long, env = "NUBO_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Names this instance in `nubo trigger get` (default hostname:pid).
    #[arg(long, env = "NUBO_TRIGGER_INSTANCE")]
    pub instance: Option<String>,
    /// Prometheus /metrics address, HOST:PORT.
    #[arg(long, env = "NUBO_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// Serves a trigger instance's /metrics.
async fn serve_trigger_metrics(
    addr: &str,
    svc: std::sync::Arc<nubo_trigger::service::TriggerService>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))?;
    let bound = l.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let svc = svc.clone();
            async move { svc.metrics() }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(l, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    Ok(bound)
}

pub async fn run_trigger(args: TriggerArgs) -> anyhow::Result<()> {
    let signals = StopSignals::install()?;
    let secret = match (args.trigger_secret, args.cluster_secret) {
        (Some(s), _) => s,
        (None, Some(c)) => nubo_proto::trigger_secret(&c),
        (None, None) => anyhow::bail!(
            "no credential: set NUBO_TRIGGER_SECRET to the output of `nubo cluster trigger-secret` (run where NUBO_CLUSTER_SECRET is set)"
        ),
    };
    let endpoints = nubo_client::parse_endpoints(&args.controllers.join(","))?;
    let mut cfg = nubo_trigger::service::TriggerConfig::new(endpoints, secret);
    if let Some(i) = args.instance {
        cfg.instance = i;
    }
    let instance = cfg.instance.clone();
    let svc = nubo_trigger::service::TriggerService::new(cfg).map_err(anyhow::Error::msg)?;
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(m) = args.metrics_listen.filter(|m| !m.is_empty()) {
        let a = serve_trigger_metrics(&m, svc.clone(), stop.clone()).await?;
        eprintln!("metrics at http://{a}/metrics");
    }
    let run = tokio::spawn(svc.run(stop.clone()));
    eprintln!(
        "nubo trigger {instance}: following the mappings of {}",
        args.controllers.join(",")
    );
    println!("ready {instance}");
    signals.wait().await;
    stop.cancel();
    let _ = run.await;
    eprintln!("trigger stopped");
    Ok(())
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
    /// Wait before the first retry of a failed async event, ms (default one
    /// minute, as on Lambda).
    #[arg(long, env = "NUBO_ASYNC_BASE_WAIT_MS")]
    pub async_base_wait_ms: Option<u64>,
    /// How long an async idempotency key keeps deduplicating, ms (default
    /// one hour).
    #[arg(long, env = "NUBO_IDEMPOTENCY_WINDOW_MS")]
    pub idempotency_window_ms: Option<u64>,
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
        .unwrap_or_else(nubo_client::default_config_dir)
}

/// SIGTERM and SIGINT, caught from the moment a role starts: a signal that
/// arrives right after the role printed `ready` must drain it, not kill the
/// process with the default action (seen in the e2e tests: a SIGTERM sent
/// on `ready` beat a handler installed only when waiting began).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Waits for SIGTERM or Ctrl-C.
    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: draining"),
            _ = self.int.recv() => tracing::info!("interrupt: draining"),
        }
    }
}

pub async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let signals = StopSignals::install()?;
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
            async_base_wait_ms: args.async_base_wait_ms,
            idempotency_window_ms: args.idempotency_window_ms,
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
    let failed = tokio::select! {
        _ = signals.wait() => None,
        why = running.raft_failed() => Some(why),
    };
    token_task.abort();
    running.shutdown().await;
    if let Some(why) = failed {
        // Non-zero, so that a supervisor (systemd, Kubernetes) restarts it:
        // this process can never serve again.
        anyhow::bail!("the controller's Raft core stopped ({why}); exiting to be restarted");
    }
    eprintln!("controller stopped");
    Ok(())
}

pub async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let signals = StopSignals::install()?;
    if args.zone.trim().is_empty() {
        anyhow::bail!("--zone must not be empty");
    }
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(nubo_worker::config::DATA_DIR));
    let secret = match (args.worker_secret, args.cluster_secret) {
        (Some(w), _) => w,
        (None, Some(c)) => {
            tracing::warn!(
                "this worker holds the cluster secret, which also admits Raft calls; give it NUBO_WORKER_SECRET=$(nubo cluster worker-secret) instead"
            );
            nubo_proto::worker_secret(&c)
        }
        (None, None) => anyhow::bail!(
            "no credential: set NUBO_WORKER_SECRET to the output of `nubo cluster worker-secret` (run where NUBO_CLUSTER_SECRET is set)"
        ),
    };
    let mut cfg = nubo_worker::WorkerConfig::new(data_dir, args.controllers, secret);
    cfg.id = args.id;
    cfg.zone = args.zone;
    cfg.listen = args.listen;
    cfg.advertise = args.advertise;
    cfg.memory_mb = args.memory_mb;
    cfg.max_sandboxes = args.max_sandboxes;
    cfg.keep_alive = std::time::Duration::from_secs(args.keep_alive_secs);
    cfg.log_bytes_per_invocation = args.log_bytes_per_invocation;
    cfg.freeze_idle = args.freeze_idle;
    cfg.oci_runtime = args.oci_runtime;
    cfg.metrics_listen = args.metrics_listen;
    cfg.egress = args.egress.config();
    let zone = cfg.zone.clone();
    let (running, _worker) = nubo_worker::start(cfg)
        .await
        .context("starting the worker")?;
    eprintln!("nubo worker (zone {zone}) listening on {}", running.addr);
    if let Some(m) = running.metrics_addr {
        eprintln!("metrics at http://{m}/metrics");
    }
    println!("ready {}", running.addr);
    signals.wait().await;
    running.shutdown().await;
    eprintln!("worker stopped; its sandboxes are gone");
    Ok(())
}

pub async fn run_up(args: UpArgs) -> anyhow::Result<()> {
    let signals = StopSignals::install()?;
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| home().join(".local").join("share").join("nubo"));
    let config = ControllerConfig::load(
        args.config.as_deref(),
        Overrides {
            id: Some(1),
            listen: Some(args.listen),
            data_dir: Some(data_dir.clone()),
            metrics_listen: Some(args.metrics_listen),
            bootstrap_token: args.bootstrap_token,
            async_base_wait_ms: args.async_base_wait_ms,
            idempotency_window_ms: args.idempotency_window_ms,
            cluster_secret: args.cluster_secret,
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
    let worker = if args.no_worker {
        None
    } else {
        let mut cfg = nubo_worker::WorkerConfig::new(
            data_dir.join("worker"),
            vec![running.addr.to_string()],
            running.invoker.worker_secret.clone(),
        );
        cfg.id = Some("local".into());
        cfg.zone = "local".into();
        cfg.listen = "127.0.0.1:0".into();
        cfg.memory_mb = args.worker_memory_mb;
        cfg.keep_alive = std::time::Duration::from_secs(args.keep_alive_secs);
        cfg.log_bytes_per_invocation = args.log_bytes_per_invocation;
        cfg.freeze_idle = args.freeze_idle;
        cfg.oci_runtime = args.oci_runtime;
        cfg.egress = args.egress.config();
        let secret = cfg.worker_secret.clone();
        let (w, worker) = nubo_worker::start(cfg).await.context(
            "starting the embedded worker (run as root with crun installed: scripts/setup.sh; or pass --no-worker)",
        )?;
        // Same process: the controller calls the worker directly.
        running.invoker.workers.register_local(
            "local",
            std::sync::Arc::new(nubo_worker::server::WorkerService {
                worker,
                secret,
                worker_id: "local".into(),
            }),
        );
        eprintln!("worker (zone local) on {}", w.addr);
        // Invokes work once the controller has heard from it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while running.invoker.workers.live_clients().is_empty()
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Some(w)
    };
    let trigger_stop = tokio_util::sync::CancellationToken::new();
    let trigger = if args.no_trigger {
        None
    } else {
        let cfg = nubo_trigger::service::TriggerConfig::new(
            vec![endpoint.clone()],
            nubo_proto::trigger_secret(&running.node.config.cluster_secret),
        );
        let svc = nubo_trigger::service::TriggerService::new(cfg).map_err(anyhow::Error::msg)?;
        eprintln!("trigger instance embedded (Kafka mappings run here)");
        Some(tokio::spawn(svc.run(trigger_stop.clone())))
    };
    eprintln!("nubo is up: endpoint {endpoint} — try `nubo function list`. Ctrl-C stops it.");
    // Scripts wait for this line on stdout.
    println!("ready {endpoint}");
    let failed = tokio::select! {
        _ = signals.wait() => None,
        why = running.raft_failed() => Some(why),
    };
    trigger_stop.cancel();
    if let Some(t) = trigger {
        let _ = t.await;
    }
    if let Some(w) = worker {
        w.shutdown().await;
    }
    running.shutdown().await;
    if let Some(why) = failed {
        anyhow::bail!(
            "the embedded controller's Raft core stopped ({why}); exiting to be restarted"
        );
    }
    eprintln!("nubo stopped cleanly");
    Ok(())
}
