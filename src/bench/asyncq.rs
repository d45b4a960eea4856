//! `nubo bench async`: the async-invocation benchmark of issue 4. Three
//! `nubo controller` processes with fsync on and one `nubo worker` (as
//! root, crun sandboxes) on loopback; measures the accept latency of Event
//! invokes (durable on a quorum before the reply), durable accepts per
//! second with 64 clients, and the end-to-end drain of 10,000 events into a
//! no-op function, beside the same-run fsync floor.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nubo_proto::v1 as pb;
use pb::invocations_client::InvocationsClient;
use tonic::transport::Channel;

use super::{
    authed, channel, echo_rate, free_port, fsync_floor, ms, pct, spawn_controller, wait_ready,
    write_section, BenchArgs, Graceful, SECRET,
};

fn event(n: u64) -> tonic::Request<pb::InvokeRequest> {
    authed(pb::InvokeRequest {
        function_name: "noop".into(),
        qualifier: String::new(),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
        invocation_type: pb::InvocationType::Event as i32,
        log_type: pb::LogType::LogNone as i32,
        idempotency_key: String::new(),
        ordering_key: String::new(),
    })
}

async fn queued(ch: &Channel) -> anyhow::Result<u64> {
    let mut c = InvocationsClient::new(ch.clone());
    Ok(c.async_status(authed(pb::DeadLettersRequest {
        function_name: "noop".into(),
        stale_ok: true,
    }))
    .await?
    .into_inner()
    .queued)
}

async fn wait_drained(ch: &Channel, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while queued(ch).await? > 0 {
        if start.elapsed() > limit {
            bail!("the queue did not drain within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Sets (or clears) the no-op function's reserved concurrency.
async fn set_reserved(ch: &Channel, limit: Option<u32>) -> anyhow::Result<()> {
    let mut f = pb::functions_client::FunctionsClient::new(ch.clone());
    f.update_function_configuration(authed(pb::UpdateFunctionConfigurationRequest {
        function_name: "noop".into(),
        config: Some(pb::FunctionConfig {
            reserved_concurrency: limit,
            clear_reserved_concurrency: limit.is_none(),
            ..Default::default()
        }),
        revision_id: String::new(),
    }))
    .await
    .context("setting the function's reserved concurrency")?;
    Ok(())
}

/// `clients` tasks submit `total` events (or until `until`); returns the
/// number accepted and the time taken.
async fn submit(
    port: u16,
    clients: u64,
    total: Option<u64>,
    until: Option<Duration>,
) -> anyhow::Result<(u64, Duration)> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let ch = channel(port).await?;
        let (next, done) = (next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = InvocationsClient::new(ch);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if total.is_some_and(|t| n >= t) || until.is_some_and(|u| start.elapsed() >= u) {
                    return Ok::<_, anyhow::Error>(());
                }
                c.invoke(event(n)).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((done.load(Ordering::Relaxed), start.elapsed()))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("nubo-bench-async")
        .tempdir()?;
    eprintln!("bench: fsync floor, tonic echo rate with 64 clients...");
    let fsync = fsync_floor(dir.path(), 300)?;
    let echo_per_s = echo_rate(64, Duration::from_secs(3)).await?;

    eprintln!("bench: starting 3 controllers (fsync on) and a worker...");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut controllers = Vec::new();
    for id in 1..=3 {
        controllers.push(spawn_controller(dir.path(), id, &ports)?);
    }
    let leader = wait_ready(&ports).await?;
    let lport = ports[leader as usize - 1];
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut w = Command::new(std::env::current_exe()?);
    w.args([
        "worker",
        "--zone",
        "a",
        "--controllers",
        &addrs.join(","),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        dir.path().join("worker").to_str().context("utf8 path")?,
        "--memory-mb",
        "16384",
    ])
    .env("NUBO_WORKER_SECRET", nubo_proto::worker_secret(SECRET))
    .stdout(Stdio::null())
    .stderr(Stdio::from(std::fs::File::create(
        dir.path().join("worker.log"),
    )?));
    let _worker = Graceful(w.spawn()?);
    let ch = channel(lport).await?;
    {
        // The no-op function, created through the leader.
        let mut f = pb::functions_client::FunctionsClient::new(ch.clone());
        let code = {
            use std::io::Write;
            let mut buf = std::io::Cursor::new(Vec::new());
            let mut z = zip::ZipWriter::new(&mut buf);
            z.start_file("app.py", zip::write::SimpleFileOptions::default())?;
            z.write_all(b"def handler(event, context):\n    return event\n")?;
            z.finish()?;
            buf.into_inner()
        };
        let header = pb::CreateFunctionHeader {
            function_name: "noop".into(),
            config: Some(pb::FunctionConfig {
                runtime: "python3.11".into(),
                handler: "app.handler".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let msgs = nubo_proto::create_function_messages(header, &code, usize::MAX);
        f.create_function(authed(tokio_stream::iter(msgs))).await?;
    }
    // The worker registers within a few heartbeats.
    tokio::time::sleep(Duration::from_secs(2)).await;

    eprintln!("bench: accept latency, 1 client x{}...", args.samples);
    let mut inv = InvocationsClient::new(ch.clone());
    let mut accept = Vec::with_capacity(args.samples);
    for n in 0..args.samples as u64 {
        let t = Instant::now();
        inv.invoke(event(n)).await?;
        accept.push(t.elapsed());
    }
    accept.sort();
    wait_drained(&ch, Duration::from_secs(120)).await?;

    eprintln!("bench: durable accepts, 64 clients for 5 s, events running meanwhile...");
    let (accepted, took) = submit(lport, 64, None, Some(Duration::from_secs(5))).await?;
    let mixed_per_s = accepted as f64 / took.as_secs_f64();
    wait_drained(&ch, Duration::from_secs(300)).await?;

    // Lambda's "throttle" (reserved concurrency 0): accepted events wait in
    // the queue, so the accept path is measured without the executions
    // competing for this machine's two cores.
    set_reserved(&ch, Some(0)).await?;
    eprintln!("bench: durable accepts, 64 clients for 5 s, function throttled (events wait)...");
    let (held, took) = submit(lport, 64, None, Some(Duration::from_secs(5))).await?;
    let accepts_per_s = held as f64 / took.as_secs_f64();
    eprintln!("bench: releasing the {held} held events...");
    let t0 = Instant::now();
    set_reserved(&ch, None).await?;
    wait_drained(&ch, Duration::from_secs(300)).await?;
    let backlog = t0.elapsed();

    let total = 10_000;
    eprintln!("bench: {total} events end to end...");
    let t0 = Instant::now();
    let (_, submit_took) = submit(lport, 64, Some(total), None).await?;
    wait_drained(&ch, Duration::from_secs(600)).await?;
    let drain = t0.elapsed();
    drop(controllers);

    let mut md = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(md, "## Async invocations (issue 4)\n");
    let _ = writeln!(
        md,
        "Command: `cargo build --release --bin nubo && target/release/nubo bench async --samples {}` (as root). Three `nubo controller` processes on loopback with fsync on, one `nubo worker` (crun sandboxes); clients call the leader. An Event invoke is answered after its `EnqueueEvent` entry is committed (fsynced on a majority).\n",
        args.samples
    );
    let _ = writeln!(md, "| figure | result | floor, same run | goal |");
    let _ = writeln!(md, "| --- | --- | --- | --- |");
    let _ = writeln!(
        md,
        "| async accept latency, 1 client | p50 {} · p99 {} | 4 KiB write + fdatasync p50 {} | p50 ≤ 5 ms |",
        ms(pct(&accept, 0.5)),
        ms(pct(&accept, 0.99)),
        ms(pct(&fsync, 0.5))
    );
    let _ = writeln!(
        md,
        "| durable accepts, 64 clients, 5 s, function throttled to 0 (events wait in the queue) | {accepts_per_s:.0}/s | raw tonic unary echo, 64 clients: {echo_per_s:.0}/s | ≥ 5,000/s |"
    );
    let _ = writeln!(
        md,
        "| durable accepts, 64 clients, 5 s, events executing on the same 2 cores meanwhile | {mixed_per_s:.0}/s | | — |"
    );
    let _ = writeln!(
        md,
        "| backlog of {held} held events released (reserved concurrency cleared) | all run after {:.1} s ({:.0} events/s) | | — |",
        backlog.as_secs_f64(),
        held as f64 / backlog.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| {total} events into a no-op function: submitted in {:.1} s, all run (queue empty) after {:.1} s | {:.0} events/s end to end | | — |",
        submit_took.as_secs_f64(),
        drain.as_secs_f64(),
        total as f64 / drain.as_secs_f64()
    );
    md.push('\n');
    println!("{md}");
    write_section(&args.out, "## Async invocations (issue 4)", &md)?;
    eprintln!("bench: wrote {}", args.out.display());
    Ok(())
}
