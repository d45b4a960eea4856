//! `nubo bench`: benchmarks that start real `nubo` processes and write
//! their figures, each beside a floor measured in the same run, to
//! BENCHMARKS.md. One file per benchmark (`control-plane`, `invoke`,
//! `async`, `soak`); this one holds the arguments, the dispatch and what they share
//! (process spawning, the fsync and echo floors, percentiles).

mod asyncq;
mod control_plane;
mod invoke;
mod kafka;
mod soak;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nubo_proto::v1 as pb;
use tonic::transport::Channel;

pub(crate) const TOKEN: &str = "nubo_bench_admin_token_0123456789";
pub(crate) const SECRET: &str = "bench-cluster-secret-0123456789";

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: `control-plane`, `invoke`, `async` or `soak`.
    pub which: String,
    /// File to write the results section into.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// Samples for latency figures.
    #[arg(long, default_value_t = 2000)]
    pub samples: usize,
    /// Functions for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    pub functions: usize,
    /// Controllers to start (figures in BENCHMARKS.md use 3).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Only measure write throughput, print it, write nothing (for
    /// investigating; e.g. `--nodes 1 --throughput-only`).
    #[arg(long)]
    pub throughput_only: bool,
    /// soak: concurrent clients per run.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// soak: seconds each run (no-noise, then noisy) lasts.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// soak: `up` (one `nubo up` process) or `split` (`--nodes`
    /// controllers and one worker, separate processes).
    #[arg(long, value_enum, default_value = "up")]
    pub layout: soak::Layout,
    /// soak: names the run; its BENCHMARKS.md section is
    /// "Soak ... (issue 10): <label>", so runs with other labels stay.
    #[arg(long, default_value = "latest run")]
    pub label: String,
    /// soak: 1 MB lines the big-log function prints per call.
    #[arg(long, default_value_t = 100)]
    pub log_lines: u32,
    /// soak: events per second each failing-async client sends.
    #[arg(long, default_value_t = 5.0)]
    pub async_rate: f64,
    /// soak: the worker's memory for sandboxes: room for a 128 MB sandbox
    /// per client, so the noise runs rather than being throttled away.
    #[arg(long, default_value_t = 32768)]
    pub worker_memory_mb: u32,
    /// soak: memory bound = no-noise peak RSS + this.
    #[arg(long, default_value_t = 256)]
    pub mem_slack_mb: u64,
    /// soak: raft dir / code cache bound = no-noise growth + this.
    #[arg(long, default_value_t = 256)]
    pub disk_slack_mb: u64,
    /// soak: stop a run when its data dir has grown by this much.
    #[arg(long, default_value_t = 5)]
    pub max_data_gb: u64,
    /// soak: stop a run when a server process's RSS passes this.
    #[arg(long, default_value_t = 8)]
    pub max_rss_gb: u64,
}

pub(crate) struct Controller {
    child: Child,
    id: u64,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server process stopped with SIGTERM when dropped (a worker destroys
/// its sandboxes on the way out), killed if it takes over 30 s.
pub(crate) struct Graceful(pub Child);

impl Drop for Graceful {
    fn drop(&mut self) {
        // SAFETY: kill(2) only takes two integers and touches no memory of
        // ours. The pid is our own child's, not reaped yet (that happens
        // below, through `self.0`), so it cannot name another process.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub(crate) fn spawn_controller(dir: &Path, id: u64, ports: &[u16]) -> anyhow::Result<Controller> {
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let child = Command::new(std::env::current_exe()?)
        .args([
            "controller",
            "--id",
            &id.to_string(),
            "--listen",
            &format!("127.0.0.1:{}", ports[id as usize - 1]),
            "--peers",
            &peers.join(","),
            "--data-dir",
            dir.join(format!("c{id}")).to_str().context("utf8 path")?,
        ])
        .env("NUBO_CLUSTER_SECRET", SECRET)
        .env("NUBO_BOOTSTRAP_TOKEN", TOKEN)
        .env("NUBO_LOG", "info,openraft=info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("c{id}.log")))?,
        ))
        .spawn()?;
    Ok(Controller { child, id })
}

pub(crate) fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("ascii"),
    );
    r
}

pub(crate) async fn channel(port: u16) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect()
        .await?)
}

pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// One 4 KiB write + fdatasync, the floor under any durable write.
pub(crate) fn fsync_floor(dir: &Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("fsync.probe"))?;
    let block = vec![7u8; 4096];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f.write_all_at(&block, (i as u64 % 256) * 4096)?;
        f.sync_data()?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

/// A raw tonic unary echo server on loopback, on its own threads.
pub(crate) fn echo_server() -> anyhow::Result<EchoServer> {
    #[derive(Clone)]
    struct Echo;
    #[tonic::async_trait]
    impl pb::raft_internal_server::RaftInternal for Echo {
        async fn append_entries(
            &self,
            r: tonic::Request<pb::RaftPayload>,
        ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
            Ok(tonic::Response::new(r.into_inner()))
        }
        async fn vote(
            &self,
            r: tonic::Request<pb::RaftPayload>,
        ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
            Ok(tonic::Response::new(r.into_inner()))
        }
        async fn install_snapshot(
            &self,
            r: tonic::Request<pb::RaftPayload>,
        ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
            Ok(tonic::Response::new(r.into_inner()))
        }
        async fn forward(
            &self,
            r: tonic::Request<pb::RaftPayload>,
        ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
            Ok(tonic::Response::new(r.into_inner()))
        }
        async fn read_index(
            &self,
            r: tonic::Request<pb::RaftPayload>,
        ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
            Ok(tonic::Response::new(r.into_inner()))
        }
    }
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let port = std_listener.local_addr()?.port();
    let stop = tokio_util::sync::CancellationToken::new();
    let s2 = stop.clone();
    // Its own runtime on its own threads, as a separate server process
    // would have: the clients' runtime does not serve it.
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("echo runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).expect("echo listener");
            let _ = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(pb::raft_internal_server::RaftInternalServer::new(Echo))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(l),
                    s2.cancelled(),
                )
                .await;
        });
    });
    Ok(EchoServer {
        port,
        stop,
        thread: Some(thread),
    })
}

/// The echo server of [`echo_server`]; stopped when dropped.
pub(crate) struct EchoServer {
    pub port: u16,
    stop: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ping() -> pb::RaftPayload {
    pb::RaftPayload {
        data: b"{\"ping\":1}".to_vec(),
    }
}

/// A raw tonic unary echo on loopback: the floor under any API call.
pub(crate) async fn echo_floor(n: usize) -> anyhow::Result<Vec<Duration>> {
    let server = echo_server()?;
    let mut c = pb::raft_internal_client::RaftInternalClient::new(channel(server.port).await?);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.vote(ping()).await?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

/// Calls per second a raw tonic unary echo serves to `clients`
/// connections, each waiting for its reply: the ceiling of any API's
/// request rate on this machine.
pub(crate) async fn echo_rate(clients: usize, run: Duration) -> anyhow::Result<f64> {
    let server = echo_server()?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = pb::raft_internal_client::RaftInternalClient::new(channel(server.port).await?);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < run {
                c.vote(ping()).await?;
                n += 1;
            }
            Ok::<_, anyhow::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

pub(crate) async fn leader_of(port: u16) -> anyhow::Result<u64> {
    let mut c = pb::cluster_client::ClusterClient::new(channel(port).await?);
    let s = c
        .status(authed(pb::ClusterStatusRequest {}))
        .await?
        .into_inner();
    Ok(s.leader_id)
}

pub(crate) async fn wait_ready(ports: &[u16]) -> anyhow::Result<u64> {
    let start = Instant::now();
    loop {
        for &p in ports {
            if let Ok(l) = leader_of(p).await {
                if l != 0 {
                    return Ok(l);
                }
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("cluster did not elect a leader (and create the admin token) within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            return Ok(v.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("no VmRSS in /proc/{pid}/status")
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.which == "invoke" {
        return invoke::run(args).await;
    }
    if args.which == "async" {
        return asyncq::run(args).await;
    }
    if args.which == "soak" {
        return soak::run(args).await;
    }
    if args.which == "kafka" {
        return kafka::run(args).await;
    }
    if args.which != "control-plane" {
        bail!(
            "unknown benchmark {:?}: try `control-plane`, `invoke`, `async`, `soak` or `kafka`",
            args.which
        );
    }
    control_plane::run(args).await
}

/// Replaces (or appends) the section starting with `heading` in `path`.
pub(crate) fn write_section(path: &Path, heading: &str, body: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| {
        "# nubo benchmarks\n\nFigures written by the benchmark commands; each beside a floor measured in the same run, since these machines are shared and absolute times drift.\n\n".to_string()
    });
    let new = match old.find(heading) {
        Some(start) => {
            let rest = &old[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map(|i| start + heading.len() + i + 1)
                .unwrap_or(old.len());
            format!("{}{}{}", &old[..start], body, &old[end..])
        }
        None => format!("{old}{body}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}
