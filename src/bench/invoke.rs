//! `nubo bench invoke`: the invocation benchmark of issue 3. Starts `nubo up`
//! (controller + worker with crun sandboxes), measures warm and cold
//! invokes through the gRPC API, throughput with concurrent clients and the
//! memory of idle sandboxes, beside baselines measured in the same run (a
//! tonic unary echo, a bare `crun run` of /bin/true, a bare
//! `/usr/bin/python3 -c pass`), and writes them to BENCHMARKS.md.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nubo_proto::v1 as pb;
use pb::invocations_client::InvocationsClient;
use tonic::transport::Channel;

use super::{
    authed, echo_floor, free_port, ms, pct, rss_kb, write_section, BenchArgs, Graceful, TOKEN,
};

/// The benchmark function: returns its event; sleeps when asked (to hold
/// sandboxes busy while the memory figure builds 200 of them).
const NOOP: &str = "import time\n\ndef handler(event, context):\n    s = event.get('sleep') if isinstance(event, dict) else None\n    if s:\n        time.sleep(s)\n    return event\n";

fn noop_zip() -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("app.py", o).expect("zip");
        z.write_all(NOOP.as_bytes()).expect("zip");
        z.finish().expect("zip");
    }
    buf.into_inner()
}

async fn create(
    c: &mut pb::functions_client::FunctionsClient<Channel>,
    name: &str,
) -> anyhow::Result<()> {
    create_mb(c, name, 128, false).await
}

async fn create_mb(
    c: &mut pb::functions_client::FunctionsClient<Channel>,
    name: &str,
    memory_mb: u32,
    egress: bool,
) -> anyhow::Result<()> {
    let code = noop_zip();
    let header = pb::CreateFunctionHeader {
        function_name: name.into(),
        config: Some(pb::FunctionConfig {
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            timeout_seconds: Some(60),
            memory_mb: Some(memory_mb),
            egress,
            ..Default::default()
        }),
        ..Default::default()
    };
    let msgs = nubo_proto::create_function_messages(header, &code, usize::MAX);
    c.create_function(authed(tokio_stream::iter(msgs))).await?;
    Ok(())
}

fn invoke_req(name: &str, payload: &[u8]) -> tonic::Request<pb::InvokeRequest> {
    authed(pb::InvokeRequest {
        function_name: name.into(),
        qualifier: String::new(),
        payload: payload.to_vec(),
        invocation_type: pb::InvocationType::RequestResponse as i32,
        log_type: pb::LogType::LogNone as i32,
        idempotency_key: String::new(),
        ordering_key: String::new(),
    })
}

async fn invoke(
    c: &mut InvocationsClient<Channel>,
    name: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let r = c.invoke(invoke_req(name, payload)).await?.into_inner();
    if !r.function_error.is_empty() {
        bail!(
            "{name}: function error {}",
            String::from_utf8_lossy(&r.payload)
        );
    }
    Ok(())
}

/// A bundle for `crun run` of `cmd`: read-only root with /usr bound, the
/// same shape as a sandbox without our Runtime API.
fn bare_bundle(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let rootfs = dir.join("rootfs");
    nubo_worker::sandbox::container::spec::prepare_rootfs(&rootfs)?;
    let etc = dir.join("etc");
    nubo_worker::sandbox::container::spec::write_etc(&etc, 65534, 65534, false)?;
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty)?;
    // A sandbox always joins a network namespace of its own, so the floor
    // does too (made once here, outside the timing).
    let netns = dir.join("netns");
    nubo_worker::sandbox::container::netns::create(&netns, 9001, None)?;
    let spec = nubo_worker::sandbox::container::spec::build(
        &nubo_worker::sandbox::container::spec::SandboxSpec {
            id: "bench",
            rootfs: &rootfs,
            code_dir: &empty,
            runtime_dir: &empty,
            etc_dir: &etc,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/usr/bin:/bin".into()],
            cwd: "/",
            memory_mb: 128,
            tmp_mb: 64,
            netns: &netns,
            cgroups_path: "/nubo/bench-bare".into(),
            uid: 65534,
            gid: 65534,
            hostname: "bench",
        },
    )?;
    nubo_worker::sandbox::container::spec::write_bundle(dir, &spec)?;
    Ok(())
}

fn time_cmd(n: usize, mut make: impl FnMut(usize) -> Command) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = make(i);
        let t = Instant::now();
        let st = c.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        out.push(t.elapsed());
        if !st.success() {
            bail!("baseline command failed: {c:?}");
        }
    }
    out.sort();
    Ok(out)
}

fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Children of every thread of `pid` (a child is listed under the thread
/// that forked it).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(s.split_whitespace().filter_map(|s| s.parse::<u32>().ok()));
        }
    }
    out
}

/// All descendants of `pid`, with their command names.
fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut stack = children(pid);
    while let Some(p) = stack.pop() {
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        out.push((p, comm));
        stack.extend(children(p));
    }
    out
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("nubo-bench-invoke")
        .tempdir()?;
    let r = run_in(&dir, args).await;
    if r.is_err() {
        // nubo up's log says what went wrong on the server side.
        let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        for l in tail.iter().rev() {
            eprintln!("up.log: {l}");
        }
    }
    r
}

async fn run_in(dir: &tempfile::TempDir, args: BenchArgs) -> anyhow::Result<()> {
    let samples = args.samples;

    eprintln!("bench: baselines (tonic echo, bare crun run, bare python3)...");
    let echo = echo_floor(samples).await?;
    let crun = which("crun").context("crun not found: run scripts/setup.sh")?;
    let bundle = dir.path().join("bare");
    bare_bundle(&bundle, &["/bin/true"])?;
    let state = dir.path().join("crun-state");
    let bare_crun = time_cmd(30, |i| {
        let mut c = Command::new(&crun);
        c.arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("bench-bare-{i}"));
        c
    });
    nubo_worker::sandbox::container::netns::remove(&bundle.join("netns"))?;
    let bare_crun = bare_crun?;
    let bare_py = time_cmd(30, |_| {
        let mut c = Command::new("/usr/bin/python3");
        c.args(["-c", "pass"]);
        c
    })?;

    eprintln!("bench: starting nubo up (controller + worker)...");
    let port = free_port();
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "up",
            "--data-dir",
            dir.path().join("data").to_str().unwrap_or_default(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            "",
            "--worker-memory-mb",
            "65536",
        ])
        .env("NUBO_CONFIG_DIR", dir.path().join("config"))
        .env("NUBO_BOOTSTRAP_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(
            dir.path().join("up.log"),
        )?))
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let up = Graceful(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("ready") {
        bail!(
            "nubo up did not start: see {}",
            dir.path().join("up.log").display()
        );
    }
    let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut fns = pb::functions_client::FunctionsClient::new(ch.clone());
    let mut inv = InvocationsClient::new(ch.clone());

    // Let the worker finish booting its generic sandboxes: steady state,
    // not start-up, is what the warm figure is about.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Warm invoke, one client.
    create(&mut fns, "noop").await?;
    invoke(&mut inv, "noop", b"{}").await?;
    for _ in 0..200 {
        invoke(&mut inv, "noop", b"{}").await?;
    }
    eprintln!("bench: warm invoke x{samples}...");
    let mut warm = Vec::with_capacity(samples);
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..samples {
        let t = Instant::now();
        invoke(&mut inv, "noop", b"{}").await?;
        let d = t.elapsed();
        if d > Duration::from_millis(5) {
            slow.push((i, started.elapsed().as_millis(), d.as_millis()));
        }
        warm.push(d);
    }
    if !slow.is_empty() {
        // (sample, ms since the series started, latency ms): a pattern
        // here (every N calls, every T ms) names the culprit.
        eprintln!(
            "bench: {} warm calls over 5 ms: {:?}",
            slow.len(),
            &slow[..slow.len().min(40)]
        );
    }
    warm.sort();
    if std::env::var_os("NUBO_BENCH_WARM_ONLY").is_some() {
        eprintln!(
            "warm p50 {} p99 {}",
            ms(pct(&warm, 0.5)),
            ms(pct(&warm, 0.99))
        );
        return Ok(());
    }

    // Cold start: a version no sandbox anywhere has run. (a) The worker
    // has a prewarmed generic sandbox of the function's class (128 MB) to
    // specialise: the pool refills between calls. (b) Fully cold: a
    // 256 MB function, a class nothing is prewarmed for, so the container
    // and the interpreter start on the request path.
    let cold_n = 30;
    eprintln!("bench: cold start x{cold_n} (prewarmed generic sandbox)...");
    // The same two series for functions with egress (a veth on the
    // worker's bridge): the generic egress class is prewarmed with its
    // veth; fully cold, the veth is made on the request path.
    let mut series = Vec::new();
    for (egress, tag) in [(false, ""), (true, "eg-")] {
        eprintln!(
            "bench: cold start x{cold_n} (prewarmed generic sandbox{})...",
            if egress { ", egress" } else { "" }
        );
        let mut cold = Vec::with_capacity(cold_n);
        for i in 0..cold_n {
            let name = format!("{tag}cold-{i}");
            create_mb(&mut fns, &name, 128, egress).await?;
            tokio::time::sleep(Duration::from_millis(400)).await;
            let t = Instant::now();
            invoke(&mut inv, &name, b"{}").await?;
            cold.push(t.elapsed());
        }
        cold.sort();
        eprintln!(
            "bench: cold start x{cold_n} (fully cold{})...",
            if egress { ", egress" } else { "" }
        );
        let mut full = Vec::with_capacity(cold_n);
        for i in 0..cold_n {
            let name = format!("{tag}full-{i}");
            create_mb(&mut fns, &name, 256, egress).await?;
            let t = Instant::now();
            invoke(&mut inv, &name, b"{}").await?;
            full.push(t.elapsed());
        }
        full.sort();
        series.push((cold, full));
    }
    let (eg_cold, eg_full) = series.pop().context("egress series")?;
    let (cold, full) = series.pop().context("series")?;
    // Warm, egress: the call path is the same; measured to show it.
    create_mb(&mut fns, "eg-noop", 128, true).await?;
    for _ in 0..200 {
        invoke(&mut inv, "eg-noop", b"{}").await?;
    }
    let mut eg_warm = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        invoke(&mut inv, "eg-noop", b"{}").await?;
        eg_warm.push(t.elapsed());
    }
    eg_warm.sort();

    // Throughput: 32 clients, each on its own connection.
    let clients = 32;
    let secs = 10.0;
    eprintln!("bench: throughput, {clients} clients for {secs} s...");
    let run_for = |d: Duration, count: Arc<AtomicU64>| {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let stop = stop.clone();
            let count = count.clone();
            tasks.push(tokio::spawn(async move {
                let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))
                    .expect("url")
                    .tcp_nodelay(true)
                    .connect()
                    .await?;
                let mut c = InvocationsClient::new(ch);
                while !stop.load(Ordering::Relaxed) {
                    invoke(&mut c, "noop", b"{}").await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        async move {
            tokio::time::sleep(d).await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.await??;
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    run_for(Duration::from_secs(3), Arc::new(AtomicU64::new(0))).await?;
    let count = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    run_for(Duration::from_secs_f64(secs), count.clone()).await?;
    let tput = count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();

    // Memory: 200 idle warm sandboxes of one function.
    let n = 200;
    eprintln!("bench: memory with {n} idle sandboxes...");
    let up_pid = up.0.id();
    create(&mut fns, "mem").await?;
    let before_rss = rss_kb(up_pid).unwrap_or(0);
    let mut calls = Vec::new();
    for _ in 0..n {
        let mut c = inv.clone();
        calls.push(tokio::spawn(async move {
            invoke(&mut c, "mem", br#"{"sleep": 20}"#).await
        }));
    }
    for c in calls {
        c.await??;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let procs = descendants(up_pid);
    let pythons: Vec<u32> = procs
        .iter()
        .filter(|(_, c)| c.starts_with("python"))
        .map(|(p, _)| *p)
        .collect();
    let cruns: Vec<u32> = procs
        .iter()
        .filter(|(_, c)| c == "crun")
        .map(|(p, _)| *p)
        .collect();
    // The sandbox init (PID 1 inside, the runtime's parent).
    let inits: Vec<u32> = procs
        .iter()
        .filter(|(_, c)| c == "init")
        .map(|(p, _)| *p)
        .collect();
    let py_pss: u64 = pythons.iter().map(|p| pss_kb(*p)).sum();
    let crun_pss: u64 = cruns.iter().map(|p| pss_kb(*p)).sum();
    let init_pss: u64 = inits.iter().map(|p| pss_kb(*p)).sum();
    let after_rss = rss_kb(up_pid).unwrap_or(0);
    let sandboxes = pythons.len().max(1) as f64;
    let per_sandbox_kb = (py_pss + crun_pss + init_pss) as f64 / sandboxes
        + (after_rss.saturating_sub(before_rss)) as f64 / sandboxes;
    drop(up);

    let floor_sum = pct(&bare_crun, 0.5) + pct(&bare_py, 0.5);
    let mut md = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(md, "## Invocations (issue 3)\n");
    let _ = writeln!(
        md,
        "Command: `cargo build --release --bin nubo && target/release/nubo bench invoke --samples {samples}` (as root). `nubo up` on loopback: one controller, one worker with crun sandboxes, function `python3.11` 128 MB returning its event. Latencies are measured at a tonic gRPC client of the Invoke API (the CLI's path without process start).\n"
    );
    let _ = writeln!(md, "| figure | result | baseline, same run | goal |");
    let _ = writeln!(md, "| --- | --- | --- | --- |");
    let _ = writeln!(
        md,
        "| warm invoke, 1 client | p50 {} · p99 {} | tonic unary echo p50 {} · p99 {} | p50 ≤ 1 ms, p99 ≤ 5 ms |",
        ms(pct(&warm, 0.5)),
        ms(pct(&warm, 0.99)),
        ms(pct(&echo, 0.5)),
        ms(pct(&echo, 0.99))
    );
    let _ = writeln!(
        md,
        "| cold start, new function (no sandbox of it anywhere), a prewarmed generic sandbox specialised | p50 {} · p90 {} (n={cold_n}) | bare `crun run /bin/true` p50 {} + bare `python3 -c pass` p50 {} = {} | ≤ 1.3 × baseline = {} |",
        ms(pct(&cold, 0.5)),
        ms(pct(&cold, 0.9)),
        ms(pct(&bare_crun, 0.5)),
        ms(pct(&bare_py, 0.5)),
        ms(floor_sum),
        ms(floor_sum.mul_f64(1.3))
    );
    let _ = writeln!(
        md,
        "| cold start, fully cold (256 MB: no prewarmed class), container + interpreter on the request path | p50 {} · p90 {} (n={cold_n}) | same: {} | same: {} |",
        ms(pct(&full, 0.5)),
        ms(pct(&full, 0.9)),
        ms(floor_sum),
        ms(floor_sum.mul_f64(1.3))
    );
    let _ = writeln!(
        md,
        "| warm invoke, egress function | p50 {} · p99 {} | same echo | same goal |",
        ms(pct(&eg_warm, 0.5)),
        ms(pct(&eg_warm, 0.99)),
    );
    let _ = writeln!(
        md,
        "| cold start, egress function, a prewarmed generic egress sandbox (veth made ahead) | p50 {} · p90 {} (n={cold_n}) | same: {} | same: {} |",
        ms(pct(&eg_cold, 0.5)),
        ms(pct(&eg_cold, 0.9)),
        ms(floor_sum),
        ms(floor_sum.mul_f64(1.3))
    );
    let _ = writeln!(
        md,
        "| cold start, egress function, fully cold (256 MB): namespace, veth, address, route and container on the request path | p50 {} · p90 {} (n={cold_n}) | same: {} | same: {} |",
        ms(pct(&eg_full, 0.5)),
        ms(pct(&eg_full, 0.9)),
        ms(floor_sum),
        ms(floor_sum.mul_f64(1.3))
    );
    let _ = writeln!(
        md,
        "| throughput, {clients} concurrent clients, {secs} s | {tput:.0} invocations/s | | ≥ 3,000/s |"
    );
    let _ = writeln!(
        md,
        "| memory per idle warm sandbox ({n} sandboxes) | {:.1} MB (python PSS {:.1} MB + crun monitor PSS {:.1} MB + init PSS {:.2} MB + worker RSS growth {:.2} MB, per sandbox) | | — |",
        per_sandbox_kb / 1024.0,
        py_pss as f64 / sandboxes / 1024.0,
        crun_pss as f64 / sandboxes / 1024.0,
        init_pss as f64 / sandboxes / 1024.0,
        after_rss.saturating_sub(before_rss) as f64 / sandboxes / 1024.0,
    );
    let _ = writeln!(
        md,
        "\nSandboxes counted: {} python processes, {} crun processes; nubo up RSS {:.0} MB before, {:.0} MB after.",
        pythons.len(),
        cruns.len(),
        before_rss as f64 / 1024.0,
        after_rss as f64 / 1024.0
    );
    md.push('\n');
    println!("{md}");
    write_section(&args.out, "## Invocations (issue 3)", &md)?;
    eprintln!("bench: wrote {}", args.out.display());
    Ok(())
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}
