//! `nubo bench soak`: the noisy-neighbour soak of issue 10. Two runs in one
//! invocation, each on a fresh data dir: a no-noise run (every client calls
//! an echo function) as the floor, then the noisy run with the same clients
//! and duration over a mix of big logs (1 MB lines), failing async invokes
//! whose dead-letter destination is another function, 100 ms CPU spins and
//! echo calls. Samples the RSS of the controller and worker processes every
//! 250 ms and the disk use of the data dir (raft, logs, code cache) every
//! second, counts calls and errors by code, and writes both runs side by
//! side with a bound and a verdict per figure to BENCHMARKS.md. A run stops
//! early (and says so) when the data dir or a process grows past a cap.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nubo_proto::v1 as pb;
use pb::invocations_client::InvocationsClient;
use tonic::transport::Channel;

use super::{
    authed, channel, free_port, rss_kb, spawn_controller, wait_ready, write_section, BenchArgs,
    Controller, Graceful, SECRET, TOKEN,
};

const ECHO: &str = include_str!("../../tests/functions/soak/echo.py");
const BUSY: &str = include_str!("../../tests/functions/soak/busy.py");
const BIGLOG: &str = include_str!("../../tests/functions/soak/biglog.py");
const FAILER: &str = include_str!("../../tests/functions/soak/failer.py");

/// The dead-letter destination of `soak-fail` (another function: a
/// function may not be its own destination).
const SINK: &str = "soak-sink";
const MB: u64 = 1024 * 1024;
/// A call that has not answered after this long counts as a client timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a run waits for the async queues to drain after the clients stop.
const SETTLE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Echo,
    Busy,
    BigLog,
    AsyncFail,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Echo, Kind::Busy, Kind::BigLog, Kind::AsyncFail];

    fn function(self) -> &'static str {
        match self {
            Kind::Echo => "soak-echo",
            Kind::Busy => "soak-busy",
            Kind::BigLog => "soak-biglog",
            Kind::AsyncFail => "soak-fail",
        }
    }

    fn label(self, log_lines: u32) -> String {
        match self {
            Kind::Echo => "echo (sync)".into(),
            Kind::Busy => "busy loop, 100 ms CPU (sync)".into(),
            Kind::BigLog => format!("big logs, {log_lines} x 1 MB lines per call (sync)"),
            Kind::AsyncFail => format!("failing async (Event, 0 retries, dead letters to {SINK})"),
        }
    }

    /// The noisy mix by client index: 50% echo, 20% busy, 20% failing
    /// async, 10% big logs.
    fn noisy(i: usize) -> Kind {
        match i % 10 {
            1 | 6 => Kind::Busy,
            2 | 7 => Kind::AsyncFail,
            4 => Kind::BigLog,
            _ => Kind::Echo,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Layout {
    /// `nubo up`: controller and worker in one process.
    Up,
    /// `--nodes` `nubo controller` processes and one `nubo worker` process.
    Split,
}

#[derive(Default)]
struct KindStats {
    clients: usize,
    done: u64,
    /// Error class (gRPC code, function error, client timeout) -> count.
    errors: BTreeMap<String, u64>,
    /// The first message seen per error class.
    examples: BTreeMap<String, String>,
}

type Stats = Arc<Mutex<BTreeMap<Kind, KindStats>>>;

/// What the sampler watches: processes by label, directories by label
/// (each the sum of its paths), and the data dir roots.
struct Probe {
    procs: Vec<(String, u32)>,
    dirs: Vec<(String, Vec<PathBuf>)>,
    roots: Vec<PathBuf>,
}

#[derive(Default, Clone)]
struct Sampled {
    rss_start: Vec<u64>,
    rss_peak: Vec<u64>,
    /// Per dir of the probe, then the total of the roots last.
    disk_start: Vec<u64>,
    disk_peak: Vec<u64>,
    disk_end: Vec<u64>,
    samples: u64,
}

/// Bytes on disk under `p` (du: allocated blocks), not crossing into other
/// filesystems nor following symlinks.
fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, dev: u64) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if m.dev() != dev {
            return 0;
        }
        let mut n = m.blocks() * 512;
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    n += walk(&e.path(), dev);
                }
            }
        }
        n
    }
    match std::fs::symlink_metadata(p) {
        Ok(m) => walk(p, m.dev()),
        Err(_) => 0,
    }
}

fn disk(probe: &Probe) -> Vec<u64> {
    let mut v: Vec<u64> = probe
        .dirs
        .iter()
        .map(|(_, ps)| ps.iter().map(|p| du(p)).sum())
        .collect();
    v.push(probe.roots.iter().map(|p| du(p)).sum());
    v
}

/// Samples RSS every 250 ms and disk every second until `stop`; sets
/// `abort` (and stops the clients) when a cap is passed.
fn sample(
    probe: Probe,
    caps: (u64, u64),
    stop: Arc<AtomicBool>,
    clients_stop: Arc<AtomicBool>,
    abort: Arc<Mutex<Option<String>>>,
) -> std::thread::JoinHandle<(Probe, Sampled)> {
    let (max_disk, max_rss) = caps;
    std::thread::spawn(move || {
        let rss = |probe: &Probe| -> Vec<u64> {
            probe
                .procs
                .iter()
                .map(|(_, pid)| rss_kb(*pid).unwrap_or(0) * 1024)
                .collect()
        };
        let mut s = Sampled {
            rss_start: rss(&probe),
            disk_start: disk(&probe),
            ..Default::default()
        };
        s.rss_peak = s.rss_start.clone();
        s.disk_peak = s.disk_start.clone();
        s.disk_end = s.disk_start.clone();
        let mut tick = 0u64;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            tick += 1;
            s.samples += 1;
            for (i, r) in rss(&probe).into_iter().enumerate() {
                s.rss_peak[i] = s.rss_peak[i].max(r);
                if r > max_rss {
                    let mut a = abort.lock().expect("lock");
                    if a.is_none() {
                        *a = Some(format!(
                            "{} RSS reached {} MB, over the {} MB cap",
                            probe.procs[i].0,
                            r / MB,
                            max_rss / MB
                        ));
                    }
                    clients_stop.store(true, Ordering::Relaxed);
                }
            }
            if tick.is_multiple_of(4) {
                let d = disk(&probe);
                for (i, v) in d.iter().enumerate() {
                    s.disk_peak[i] = s.disk_peak[i].max(*v);
                }
                let total = d[d.len() - 1];
                let grown = total.saturating_sub(s.disk_start[d.len() - 1]);
                if grown > max_disk {
                    let mut a = abort.lock().expect("lock");
                    if a.is_none() {
                        *a = Some(format!(
                            "the data dir grew by {} MB, over the {} MB cap",
                            grown / MB,
                            max_disk / MB
                        ));
                    }
                    clients_stop.store(true, Ordering::Relaxed);
                }
                s.disk_end = d;
            }
        }
        s.disk_end = disk(&probe);
        for (i, v) in s.disk_end.iter().enumerate() {
            s.disk_peak[i] = s.disk_peak[i].max(*v);
        }
        (probe, s)
    })
}

fn zip_of(file: &str, src: &str) -> anyhow::Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file(file, zip::write::SimpleFileOptions::default())?;
        z.write_all(src.as_bytes())?;
        z.finish()?;
    }
    Ok(buf.into_inner())
}

async fn create(
    ch: &Channel,
    name: &str,
    module: &str,
    src: &str,
    async_config: Option<pb::AsyncConfig>,
) -> anyhow::Result<()> {
    let mut f = pb::functions_client::FunctionsClient::new(ch.clone());
    let code = zip_of(&format!("{module}.py"), src)?;
    let header = pb::CreateFunctionHeader {
        function_name: name.into(),
        config: Some(pb::FunctionConfig {
            runtime: "python3.11".into(),
            handler: format!("{module}.handler"),
            // Loaded: a 100 ms spin can take seconds of wall time.
            timeout_seconds: Some(60),
            memory_mb: Some(128),
            async_config,
            ..Default::default()
        }),
        ..Default::default()
    };
    let msgs = nubo_proto::create_function_messages(header, &code, usize::MAX);
    f.create_function(authed(tokio_stream::iter(msgs)))
        .await
        .with_context(|| format!("creating {name}"))?;
    Ok(())
}

async fn create_all(ch: &Channel) -> anyhow::Result<()> {
    // The sink first: a destination must exist before it is named.
    create(ch, SINK, "echo", ECHO, None).await?;
    create(ch, Kind::Echo.function(), "echo", ECHO, None).await?;
    create(ch, Kind::Busy.function(), "busy", BUSY, None).await?;
    create(ch, Kind::BigLog.function(), "biglog", BIGLOG, None).await?;
    create(
        ch,
        Kind::AsyncFail.function(),
        "failer",
        FAILER,
        Some(pb::AsyncConfig {
            maximum_retry_attempts: Some(0),
            maximum_event_age_seconds: None,
            dead_letter_target: SINK.into(),
            on_success_target: String::new(),
        }),
    )
    .await
}

/// The functions created by [`create_all`].
const FUNCTIONS: u64 = 5;

async fn queued(ch: &Channel, function: &str) -> anyhow::Result<pb::AsyncStatusResponse> {
    let mut c = InvocationsClient::new(ch.clone());
    Ok(c.async_status(authed(pb::DeadLettersRequest {
        function_name: function.into(),
        stale_ok: true,
    }))
    .await?
    .into_inner())
}

/// The processes of one run, stopped (SIGTERM, then SIGKILL after 30 s)
/// when dropped; fields drop in order, so the worker goes before the
/// controllers.
struct Servers {
    _up: Option<Graceful>,
    _worker: Option<Graceful>,
    _controllers: Vec<Controller>,
}

struct Started {
    servers: Servers,
    port: u16,
    probe: Probe,
}

fn log_file(p: &Path) -> anyhow::Result<Stdio> {
    Ok(Stdio::from(std::fs::File::create(p)?))
}

async fn start(dir: &Path, args: &BenchArgs) -> anyhow::Result<Started> {
    let exe = std::env::current_exe()?;
    match args.layout {
        Layout::Up => {
            let port = free_port();
            let data = dir.join("data");
            let mut child = Command::new(exe)
                .args([
                    "up",
                    "--data-dir",
                    data.to_str().context("utf8 path")?,
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--metrics-listen",
                    "",
                    "--worker-memory-mb",
                    &args.worker_memory_mb.to_string(),
                ])
                .env("NUBO_CONFIG_DIR", dir.join("config"))
                .env("NUBO_BOOTSTRAP_TOKEN", TOKEN)
                .stdout(Stdio::piped())
                .stderr(log_file(&dir.join("up.log"))?)
                .spawn()?;
            let stdout = child.stdout.take().context("stdout")?;
            let pid = child.id();
            let up = Graceful(child);
            let line = tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                line
            });
            let line = tokio::time::timeout(Duration::from_secs(60), line)
                .await
                .context("nubo up did not print ready within 60 s")??;
            if !line.starts_with("ready") {
                bail!(
                    "nubo up did not start: see {}",
                    dir.join("up.log").display()
                );
            }
            let worker = data.join("worker");
            Ok(Started {
                servers: Servers {
                    _up: Some(up),
                    _worker: None,
                    _controllers: Vec::new(),
                },
                port,
                probe: Probe {
                    procs: vec![("nubo up (controller + worker, one process)".into(), pid)],
                    dirs: vec![
                        ("raft dir".into(), vec![data.join("raft")]),
                        ("function logs dir".into(), vec![worker.join("logs")]),
                        ("code cache".into(), vec![worker.join("code")]),
                    ],
                    roots: vec![data],
                },
            })
        }
        Layout::Split => {
            let n = args.nodes.max(1);
            let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
            let mut controllers = Vec::new();
            for id in 1..=n {
                controllers.push(spawn_controller(dir, id, &ports)?);
            }
            let leader = wait_ready(&ports).await?;
            let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let wdir = dir.join("worker");
            let child = Command::new(exe)
                .args([
                    "worker",
                    "--zone",
                    "a",
                    "--controllers",
                    &addrs.join(","),
                    "--listen",
                    &format!("127.0.0.1:{}", free_port()),
                    "--data-dir",
                    wdir.to_str().context("utf8 path")?,
                    "--memory-mb",
                    &args.worker_memory_mb.to_string(),
                ])
                .env("NUBO_WORKER_SECRET", nubo_proto::worker_secret(SECRET))
                .stdout(Stdio::null())
                .stderr(log_file(&dir.join("worker.log"))?)
                .spawn()?;
            let wpid = child.id();
            let worker = Graceful(child);
            let mut procs: Vec<(String, u32)> = controllers
                .iter()
                .map(|c| (format!("controller {}", c.id), c.child.id()))
                .collect();
            procs.push(("worker".into(), wpid));
            let cdirs: Vec<PathBuf> = (1..=n).map(|id| dir.join(format!("c{id}"))).collect();
            let mut roots = cdirs.clone();
            roots.push(wdir.clone());
            Ok(Started {
                servers: Servers {
                    _up: None,
                    _worker: Some(worker),
                    _controllers: controllers,
                },
                port: ports[leader as usize - 1],
                probe: Probe {
                    procs,
                    dirs: vec![
                        (
                            format!("raft dirs ({n} controllers)"),
                            cdirs.iter().map(|c| c.join("raft")).collect(),
                        ),
                        ("function logs dir".into(), vec![wdir.join("logs")]),
                        ("code cache".into(), vec![wdir.join("code")]),
                    ],
                    roots,
                },
            })
        }
    }
}

/// One client: calls its function until `stop`, recording each outcome.
async fn client(
    port: u16,
    kind: Kind,
    i: usize,
    log_lines: u32,
    async_rate: f64,
    stop: Arc<AtomicBool>,
    stats: Stats,
) -> anyhow::Result<()> {
    let ch = channel(port).await?;
    let mut c = InvocationsClient::new(ch);
    let payload = match kind {
        Kind::BigLog => format!("{{\"lines\":{log_lines}}}"),
        _ => format!("{{\"client\":{i}}}"),
    };
    let invocation_type = if kind == Kind::AsyncFail {
        pb::InvocationType::Event
    } else {
        pb::InvocationType::RequestResponse
    };
    while !stop.load(Ordering::Relaxed) {
        let req = authed(pb::InvokeRequest {
            function_name: kind.function().into(),
            qualifier: String::new(),
            payload: payload.clone().into_bytes(),
            invocation_type: invocation_type as i32,
            log_type: pb::LogType::LogNone as i32,
            idempotency_key: String::new(),
            ordering_key: String::new(),
        });
        let outcome = match tokio::time::timeout(CALL_TIMEOUT, c.invoke(req)).await {
            Err(_) => Err(("client timeout".to_string(), format!("{CALL_TIMEOUT:?}"))),
            Ok(Err(s)) => Err((format!("{:?}", s.code()), s.message().to_string())),
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if r.function_error.is_empty() {
                    Ok(())
                } else {
                    Err((
                        format!("function error {}", r.function_error),
                        String::from_utf8_lossy(&r.payload).into_owned(),
                    ))
                }
            }
        };
        let failed = outcome.is_err();
        {
            let mut g = stats.lock().expect("lock");
            let k = g.entry(kind).or_default();
            match outcome {
                Ok(()) => k.done += 1,
                Err((class, msg)) => {
                    *k.errors.entry(class.clone()).or_default() += 1;
                    k.examples
                        .entry(class)
                        .or_insert_with(|| msg.chars().take(160).collect());
                }
            }
        }
        if failed {
            // A throttled client backs off a little instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if kind == Kind::AsyncFail {
            tokio::time::sleep(Duration::from_secs_f64(1.0 / async_rate)).await;
        }
    }
    Ok(())
}

struct RunResult {
    noisy: bool,
    probe: Probe,
    sampled: Sampled,
    stats: BTreeMap<Kind, KindStats>,
    ran_for: Duration,
    abort: Option<String>,
    /// Async events left queued (soak-fail + sink) after the settle wait,
    /// and how long the wait took.
    left_queued: u64,
    settle: Duration,
    dead_letters: u64,
    client_errors: Vec<String>,
}

async fn one_run(dir: &Path, args: &BenchArgs, noisy: bool) -> anyhow::Result<RunResult> {
    std::fs::create_dir_all(dir)?;
    let started = start(dir, args).await?;
    let servers = started.servers;
    let port = started.port;
    let ch = channel(port).await?;
    // The worker registers and boots its generic sandboxes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    create_all(&ch).await?;
    // One call each of the sync functions, so the first sandboxes exist.
    let mut inv = InvocationsClient::new(ch.clone());
    for f in [Kind::Echo.function(), SINK] {
        inv.invoke(authed(pb::InvokeRequest {
            function_name: f.into(),
            payload: b"{}".to_vec(),
            invocation_type: pb::InvocationType::RequestResponse as i32,
            ..Default::default()
        }))
        .await
        .with_context(|| format!("first call of {f}"))?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let abort = Arc::new(Mutex::new(None));
    let caps = (args.max_data_gb * 1024 * MB, args.max_rss_gb * 1024 * MB);
    let sampler = sample(
        started.probe,
        caps,
        sampler_stop.clone(),
        stop.clone(),
        abort.clone(),
    );

    let stats: Stats = Default::default();
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let kind = if noisy { Kind::noisy(i) } else { Kind::Echo };
        stats.lock().expect("lock").entry(kind).or_default().clients += 1;
        tasks.push(tokio::spawn(client(
            port,
            kind,
            i,
            args.log_lines,
            args.async_rate,
            stop.clone(),
            stats.clone(),
        )));
    }
    let t0 = Instant::now();
    let run = Duration::from_secs(args.secs);
    while t0.elapsed() < run && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let ran_for = t0.elapsed();
    // In-flight calls finish (or time out at CALL_TIMEOUT).
    let mut client_errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => client_errors.push(format!("{e:#}")),
            Err(e) => client_errors.push(e.to_string()),
        }
    }

    // Settle: the async queues drain (or the wait ends); still sampled.
    let s0 = Instant::now();
    let mut left_queued = 0;
    let mut dead_letters = 0;
    while s0.elapsed() < SETTLE {
        left_queued = 0;
        dead_letters = 0;
        for f in [Kind::AsyncFail.function(), SINK] {
            if let Ok(s) = queued(&ch, f).await {
                left_queued += s.queued + s.in_flight.unwrap_or(0);
                dead_letters += s.dead_letters;
            }
        }
        if left_queued == 0 || abort.lock().expect("lock").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settle = s0.elapsed();
    sampler_stop.store(true, Ordering::Relaxed);
    let (probe, sampled) = tokio::task::spawn_blocking(move || sampler.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the sampler thread panicked"))?;
    drop(inv);
    drop(ch);
    // SIGTERM, wait (up to 30 s each), SIGKILL: the sandboxes go with them.
    tokio::task::spawn_blocking(move || drop(servers)).await?;
    let abort = abort.lock().expect("lock").take();
    let stats = std::mem::take(&mut *stats.lock().expect("lock"));
    Ok(RunResult {
        noisy,
        probe,
        sampled,
        stats,
        ran_for,
        abort,
        left_queued,
        settle,
        dead_letters,
        client_errors,
    })
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / MB as f64)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GB RAM", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    format!("{cpu}, {cores} cores, {mem}, Linux {kernel}; commit {commit}")
}

fn errors_cell(k: Option<&KindStats>) -> String {
    match k {
        None => "—".into(),
        Some(k) if k.errors.is_empty() => "0".into(),
        Some(k) => k
            .errors
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

fn report(args: &BenchArgs, floor: &RunResult, noisy: &RunResult, cmd: &str) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let heading = heading(&args.label);
    let _ = writeln!(md, "{heading}\n");
    let now = chrono_like_now();
    let _ = writeln!(
        md,
        "Run of {now}. Machine: {}. Command (as root): `{cmd}`. Layout: {}. {} clients for {} s per run, each on its own connection, closed loop (a failed call waits 10 ms; an async client sends {} events/s). Worker memory {} MB, functions python3.11 128 MB. The no-noise run (every client calls `soak-echo`) and the noisy run (50% echo, 20% busy, 20% failing async, 10% big logs) each start on a fresh data dir in the same invocation. Disk growth is measured from after setup (functions created) to the end of the run, including a settle wait of up to {} s for the async queues; peaks are sampled every 250 ms (RSS) and 1 s (disk).\n",
        machine(),
        match args.layout {
            Layout::Up => "`nubo up` (controller and worker are one process, so one RSS figure covers both)".to_string(),
            Layout::Split => format!("{} `nubo controller` processes + one `nubo worker` process", args.nodes),
        },
        args.clients,
        args.secs,
        args.async_rate,
        args.worker_memory_mb,
        SETTLE.as_secs(),
    );
    for r in [floor, noisy] {
        let which = if r.noisy { "noisy run" } else { "no-noise run" };
        if let Some(a) = &r.abort {
            let _ = writeln!(
                md,
                "**The {which} was stopped after {:.1} s: {a}.**\n",
                r.ran_for.as_secs_f64()
            );
        }
        if !r.client_errors.is_empty() {
            let _ = writeln!(
                md,
                "{which}: {} clients ended with an error, e.g. `{}`.\n",
                r.client_errors.len(),
                r.client_errors[0]
            );
        }
    }
    let _ = writeln!(
        md,
        "| figure | no-noise run (floor) | noisy run | bound | bounded? |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
    let slack = args.mem_slack_mb * MB;
    for (i, (name, _)) in noisy.probe.procs.iter().enumerate() {
        let f = &floor.sampled;
        let n = &noisy.sampled;
        let bound = f.rss_peak[i] + slack;
        let _ = writeln!(
            md,
            "| peak RSS, {name} | {} (start {}) | {} (start {}) | no-noise peak + {} MB = {} | {} |",
            mb(f.rss_peak[i]),
            mb(f.rss_start[i]),
            mb(n.rss_peak[i]),
            mb(n.rss_start[i]),
            args.mem_slack_mb,
            mb(bound),
            yes(n.rss_peak[i] <= bound)
        );
    }
    let log_bound = FUNCTIONS * 4 * nubo_worker::core::LOG_BYTES as u64;
    let disk_slack = args.disk_slack_mb * MB;
    let ndirs = noisy.probe.dirs.len();
    for i in 0..=ndirs {
        let name = if i < ndirs {
            noisy.probe.dirs[i].0.clone()
        } else {
            "whole data dir".to_string()
        };
        let grow = |s: &Sampled| s.disk_end[i].saturating_sub(s.disk_start[i]);
        let peak = |s: &Sampled| s.disk_peak[i].saturating_sub(s.disk_start[i]);
        let (fg, ng) = (grow(&floor.sampled), grow(&noisy.sampled));
        let (fp, np) = (peak(&floor.sampled), peak(&noisy.sampled));
        let (bound, why) = if name.contains("logs") {
            (
                log_bound,
                format!(
                    "{FUNCTIONS} functions x 2 files x 2 x {} MB (the worker's per-function log bound, one oversized batch allowed)",
                    nubo_worker::core::LOG_BYTES as u64 / MB
                ),
            )
        } else if i == ndirs {
            (
                fg + disk_slack * 2 + log_bound,
                format!("no-noise + 2 x {} MB + the log bound", args.disk_slack_mb),
            )
        } else {
            (
                fg + disk_slack,
                format!("no-noise + {} MB", args.disk_slack_mb),
            )
        };
        let _ = writeln!(
            md,
            "| disk growth, {name} (total at end) | {} (peak {}, end {}) | {} (peak {}, end {}) | {why} = {} | {} |",
            mb(fg),
            mb(fp),
            mb(floor.sampled.disk_end[i]),
            mb(ng),
            mb(np),
            mb(noisy.sampled.disk_end[i]),
            mb(bound),
            yes(np <= bound)
        );
    }
    for kind in Kind::ALL {
        let f = floor.stats.get(&kind);
        let n = noisy.stats.get(&kind);
        if f.is_none() && n.is_none() {
            continue;
        }
        let cell = |k: Option<&KindStats>, r: &RunResult| match k {
            None => "—".to_string(),
            Some(k) => format!(
                "{} done ({:.1}/s, {} clients); errors: {}",
                k.done,
                k.done as f64 / r.ran_for.as_secs_f64().max(0.001),
                k.clients,
                errors_cell(Some(k))
            ),
        };
        // A throttle is an acceptable answer under overload; anything else
        // (a wrong code, a timeout, an error of a function that works) is not.
        let accepted = |k: Option<&KindStats>| {
            k.map(|k| k.errors.keys().all(|c| c == "ResourceExhausted"))
                .unwrap_or(true)
        };
        let _ = writeln!(
            md,
            "| calls, {} | {} | {} | errors only RESOURCE_EXHAUSTED (a throttle) | {} |",
            kind.label(args.log_lines),
            cell(f, floor),
            cell(n, noisy),
            yes(accepted(f) && accepted(n))
        );
    }
    let _ = writeln!(
        md,
        "| async events left queued after the clients stopped (soak-fail + its sink), and the wait | {} after {:.1} s | {} after {:.1} s (DLQ holds {} records; each also went to the sink) | — | — |",
        floor.left_queued,
        floor.settle.as_secs_f64(),
        noisy.left_queued,
        noisy.settle.as_secs_f64(),
        noisy.dead_letters
    );
    let _ = writeln!(
        md,
        "| run stopped early by a cap (data dir +{} GB, RSS {} GB) | {} | {} | not stopped | {} |",
        args.max_data_gb,
        args.max_rss_gb,
        floor.abort.as_deref().unwrap_or("no"),
        noisy.abort.as_deref().unwrap_or("no"),
        yes(floor.abort.is_none() && noisy.abort.is_none())
    );
    let mut examples = Vec::new();
    for r in [floor, noisy] {
        for (kind, k) in &r.stats {
            for (c, m) in &k.examples {
                examples.push(format!(
                    "- {} run, {}: {c}: `{}`",
                    if r.noisy { "noisy" } else { "no-noise" },
                    kind.function(),
                    m.replace('`', "'").replace('\n', " ")
                ));
            }
        }
    }
    if !examples.is_empty() {
        let _ = writeln!(md, "\nFirst message per error class:\n");
        for e in examples {
            let _ = writeln!(md, "{e}");
        }
    }
    md.push('\n');
    md
}

fn heading(label: &str) -> String {
    format!("## Soak, noisy neighbours (issue 10): {label}")
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`, from `date` (no date
/// crate for one line).
fn chrono_like_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.clients < 10 {
        bail!(
            "--clients {} is under 10: the noisy mix needs 10 clients for every kind to run",
            args.clients
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("nubo-bench-soak")
        .tempdir()?;
    let layout = match args.layout {
        Layout::Up => "up".to_string(),
        Layout::Split => format!("split --nodes {}", args.nodes),
    };
    let cmd = format!(
        "cargo build --release --bin nubo && target/release/nubo bench soak --clients {} --secs {} --layout {layout} --log-lines {} --async-rate {} --worker-memory-mb {} --label {:?}",
        args.clients, args.secs, args.log_lines, args.async_rate, args.worker_memory_mb, args.label
    );
    let mut results = Vec::new();
    for (noisy, name) in [(false, "no-noise"), (true, "noisy")] {
        eprintln!(
            "bench: {name} run, {} clients for {} s...",
            args.clients, args.secs
        );
        let sub = dir.path().join(name);
        let r = one_run(&sub, &args, noisy).await;
        match r {
            Ok(r) => {
                eprintln!(
                    "bench: {name} run done: {:?}",
                    r.stats
                        .iter()
                        .map(|(k, s)| (k.function(), s.done, s.errors.clone()))
                        .collect::<Vec<_>>()
                );
                results.push(r);
            }
            Err(e) => {
                for log in ["up.log", "worker.log", "c1.log"] {
                    let text = std::fs::read_to_string(sub.join(log)).unwrap_or_default();
                    for l in text.lines().rev().take(20).collect::<Vec<_>>().iter().rev() {
                        eprintln!("{log}: {l}");
                    }
                }
                return Err(e.context(format!("the {name} run failed")));
            }
        }
        // The data dir goes before the next run starts.
        let _ = std::fs::remove_dir_all(&sub);
    }
    let md = report(&args, &results[0], &results[1], &cmd);
    println!("{md}");
    // With its newline, so label "x" does not match the heading of "x, y".
    write_section(&args.out, &format!("{}\n", heading(&args.label)), &md)?;
    eprintln!("bench: wrote {}", args.out.display());
    Ok(())
}
