//! `nubo bench control-plane`: the control-plane benchmark. Starts three
//! real `nubo controller` processes on loopback with fsync on, measures the
//! figures of issue 2 beside floors measured in the same run (one 4 KiB
//! fsync; a tonic unary echo), and writes them to BENCHMARKS.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use nubo_proto::v1 as pb;
use pb::functions_client::FunctionsClient;
use tonic::transport::Channel;

use super::{
    authed, channel, echo_floor, free_port, fsync_floor, leader_of, ms, pct, rss_kb,
    spawn_controller, wait_ready, write_section, BenchArgs, Controller,
};

enum BenchDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl BenchDir {
    fn path(&self) -> &Path {
        match self {
            BenchDir::Temp(t) => t.path(),
            BenchDir::Kept(p) => p,
        }
    }
}

fn zip_with(size: usize, seed: u64) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("app.py", o).expect("zip");
        writeln!(z, "def lambda_handler(e, c):\n    return {seed}").expect("zip");
        if size > 0 {
            z.start_file("data.bin", o).expect("zip");
            // Incompressible-ish filler so the zip really is `size` bytes.
            let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let mut data = Vec::with_capacity(size);
            while data.len() < size {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.extend_from_slice(&x.to_le_bytes());
            }
            z.write_all(&data[..size]).expect("zip");
        }
        z.finish().expect("zip");
    }
    buf.into_inner()
}

async fn create_fn(
    c: &mut FunctionsClient<Channel>,
    name: &str,
    code: Vec<u8>,
    publish: bool,
) -> Result<pb::FunctionConfiguration, tonic::Status> {
    let header = pb::CreateFunctionHeader {
        function_name: name.into(),
        config: Some(pb::FunctionConfig {
            runtime: "python3.11".into(),
            handler: "app.lambda_handler".into(),
            ..Default::default()
        }),
        publish,
        ..Default::default()
    };
    let msgs = nubo_proto::create_function_messages(header, &code, 1024 * 1024);
    c.create_function(authed(tokio_stream::iter(msgs)))
        .await
        .map(|r| r.into_inner())
}

fn set_memory(name: &str, mb: u32) -> tonic::Request<pb::UpdateFunctionConfigurationRequest> {
    authed(pb::UpdateFunctionConfigurationRequest {
        function_name: name.into(),
        config: Some(pb::FunctionConfig {
            memory_mb: Some(mb),
            ..Default::default()
        }),
        revision_id: String::new(),
    })
}

pub(super) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("nubo-bench").tempdir()?;
    // NUBO_BENCH_KEEP=1 keeps the data and controller logs for a post-mortem.
    let dir = if std::env::var_os("NUBO_BENCH_KEEP").is_some() {
        let p = dir.keep();
        eprintln!("bench: keeping {}", p.display());
        BenchDir::Kept(p)
    } else {
        BenchDir::Temp(dir)
    };
    eprintln!("bench: floors (4 KiB fsync, tonic echo)...");
    let fsync = fsync_floor(dir.path(), 300)?;
    let echo = echo_floor(args.samples).await?;

    eprintln!("bench: starting 3 controllers (fsync on)...");
    let ports: Vec<u16> = (0..args.nodes).map(|_| free_port()).collect();
    let mut procs: Vec<Option<Controller>> = Vec::new();
    for id in 1..=args.nodes {
        procs.push(Some(spawn_controller(dir.path(), id, &ports)?));
    }
    let leader = wait_ready(&ports).await?;
    let lport = ports[leader as usize - 1];
    let mut fc = FunctionsClient::new(channel(lport).await?)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);

    // Alias update latency, one client.
    eprintln!("bench: alias update latency ({} samples)...", args.samples);
    create_fn(&mut fc, "bench", zip_with(0, 1), true).await?;
    fc.update_function_configuration(set_memory("bench", 256))
        .await?;
    fc.publish_version(authed(pb::PublishVersionRequest {
        function_name: "bench".into(),
        ..Default::default()
    }))
    .await?;
    fc.create_alias(authed(pb::CreateAliasRequest {
        function_name: "bench".into(),
        name: "live".into(),
        function_version: "1".into(),
        ..Default::default()
    }))
    .await?;
    let mut alias_lat = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let t = Instant::now();
        fc.update_alias(authed(pb::UpdateAliasRequest {
            function_name: "bench".into(),
            name: "live".into(),
            function_version: if i % 2 == 0 { "2" } else { "1" }.into(),
            ..Default::default()
        }))
        .await?;
        alias_lat.push(t.elapsed());
    }
    alias_lat.sort();

    // Throughput: 64 clients updating configuration of their own function.
    eprintln!("bench: 64-client write throughput...");
    for i in 0..64 {
        create_fn(&mut fc, &format!("w{i}"), zip_with(0, 1), false).await?;
    }
    let ch = channel(lport).await?;
    let per_client = 200usize;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut c = FunctionsClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            for j in 0..per_client {
                let mb = 128 + ((j % 8) as u32) * 128;
                c.update_function_configuration(set_memory(&format!("w{i}"), mb))
                    .await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let write_secs = t.elapsed().as_secs_f64();
    let writes_per_sec = (64 * per_client) as f64 / write_secs;
    if args.throughput_only {
        println!(
            "{} nodes: {writes_per_sec:.0} writes/s with 64 clients ({} in {write_secs:.2} s)",
            args.nodes,
            64 * per_client
        );
        return Ok(());
    }

    // CreateFunction with a 5 MB zip.
    eprintln!("bench: CreateFunction with 5 MB zips...");
    let mut create5 = Vec::new();
    for i in 0..15 {
        let z = zip_with(5 * 1024 * 1024, 100 + i);
        let t = Instant::now();
        create_fn(&mut fc, &format!("big{i}"), z, false).await?;
        create5.push(t.elapsed());
    }
    create5.sort();

    // Failover: SIGKILL the leader, time until a write succeeds elsewhere.
    eprintln!("bench: leader failover...");
    let mut failovers = Vec::new();
    let mut current = leader;
    for round in 0..3 {
        let p = procs[current as usize - 1].take().expect("leader process");
        // SAFETY: kill(2) only takes two integers and touches no memory of
        // ours. The pid is our child's and `p` still owns the unreaped
        // `Child` (it is waited for in its drop below), so the pid cannot
        // have been reused by another process.
        unsafe {
            libc::kill(p.child.id() as i32, libc::SIGKILL);
        }
        let killed_at = Instant::now();
        drop(p);
        let others: Vec<u16> = ports
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u64 + 1 != current)
            .map(|(_, p)| *p)
            .collect();
        let mut clients = Vec::new();
        for &p in &others {
            clients.push(FunctionsClient::new(channel(p).await?));
        }
        let mut done = None;
        'outer: while killed_at.elapsed() < Duration::from_secs(20) {
            for c in clients.iter_mut() {
                let mut req = set_memory("bench", 128 + 128 * (round % 4 + 1));
                req.set_timeout(Duration::from_millis(300));
                if c.update_function_configuration(req).await.is_ok() {
                    done = Some(killed_at.elapsed());
                    break 'outer;
                }
            }
        }
        let Some(d) = done else {
            let keep = std::env::temp_dir().join("nubo-bench-logs");
            let _ = std::fs::create_dir_all(&keep);
            for i in 1..=3 {
                let _ = std::fs::copy(
                    dir.path().join(format!("c{i}.log")),
                    keep.join(format!("c{i}.log")),
                );
            }
            bail!(
                "no write succeeded within 20 s of killing leader {current}; controller logs copied to {}",
                keep.display()
            );
        };
        failovers.push(d);
        // Bring the killed node back for the next round.
        procs[current as usize - 1] = Some(spawn_controller(dir.path(), current, &ports)?);
        tokio::time::sleep(Duration::from_secs(2)).await;
        current = leader_of(others[0]).await?;
    }
    failovers.sort();

    // Memory: a controller holding N functions x 3 versions x 2 aliases.
    eprintln!(
        "bench: loading {} functions (3 versions, 2 aliases each)...",
        args.functions
    );
    let lport = ports[wait_ready(&ports).await? as usize - 1];
    let ch = channel(lport).await?;
    let n = args.functions;
    let t = Instant::now();
    let workers = 32;
    let mut tasks = Vec::new();
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for w in 0..workers {
        let mut c = FunctionsClient::new(ch.clone());
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let name = format!("m{i}");
                create_fn(&mut c, &name, zip_with(0, i as u64), true).await?;
                for mb in [256, 512] {
                    c.update_function_configuration(set_memory(&name, mb))
                        .await?;
                    c.publish_version(authed(pb::PublishVersionRequest {
                        function_name: name.clone(),
                        ..Default::default()
                    }))
                    .await?;
                }
                for (a, v) in [("live", "3"), ("canary", "2")] {
                    c.create_alias(authed(pb::CreateAliasRequest {
                        function_name: name.clone(),
                        name: a.into(),
                        function_version: v.into(),
                        ..Default::default()
                    }))
                    .await?;
                }
                let done = progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if done.is_multiple_of(1000) {
                    eprintln!("bench:   {done}/{n} functions");
                }
                i += workers;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let load_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rss = Vec::new();
    for c in procs.iter().flatten() {
        rss.push((c.id, rss_kb(c.child.id())?));
    }

    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mut md = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(md, "## Control plane (issue 2)\n");
    let _ = writeln!(
        md,
        "Measured by `nubo bench control-plane` (debug={}) on {} ({} cores), 3 `nubo controller` processes on loopback, fsync on. Floors measured in the same run.\n",
        cfg!(debug_assertions),
        host,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let _ = writeln!(md, "| figure | result | floor (same run) | goal |");
    let _ = writeln!(md, "| --- | --- | --- | --- |");
    let _ = writeln!(
        md,
        "| alias update latency, 1 client | p50 {} / p99 {} | fsync 4 KiB p50 {} / p99 {}; tonic echo p50 {} / p99 {} | p50 <= 5 ms |",
        ms(pct(&alias_lat, 0.5)),
        ms(pct(&alias_lat, 0.99)),
        ms(pct(&fsync, 0.5)),
        ms(pct(&fsync, 0.99)),
        ms(pct(&echo, 0.5)),
        ms(pct(&echo, 0.99))
    );
    let _ = writeln!(
        md,
        "| writes/s, 64 clients (UpdateFunctionConfiguration) | {:.0}/s ({} writes in {:.2} s) | 1 / fsync p50 = {:.0}/s | >= 5,000/s |",
        writes_per_sec,
        64 * per_client,
        write_secs,
        1.0 / pct(&fsync, 0.5).as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| leader failover (SIGKILL -> next successful write), 3 rounds | min {} / median {} / max {} | election timeout 200-400 ms, heartbeat 60 ms | <= 1 s |",
        ms(failovers[0]),
        ms(pct(&failovers, 0.5)),
        ms(failovers[failovers.len() - 1])
    );
    let _ = writeln!(
        md,
        "| CreateFunction, 5 MB zip | p50 {} (15 samples) | | |",
        ms(pct(&create5, 0.5))
    );
    let rss_s: Vec<String> = rss
        .iter()
        .map(|(id, kb)| format!("node {id}: {:.1} MB", *kb as f64 / 1024.0))
        .collect();
    let _ = writeln!(
        md,
        "| RSS with {n} functions x 3 versions x 2 aliases | {} (loaded in {:.1} s) | | |",
        rss_s.join(", "),
        load_secs
    );
    println!("{md}");
    write_section(&args.out, "## Control plane (issue 2)", &md)?;
    eprintln!("bench: wrote {}", args.out.display());
    Ok(())
}
