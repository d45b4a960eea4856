//! `nubo bench kafka`: Kafka triggers against a tansu broker
//! (scripts/kafka.sh installs it), beside a raw rdkafka producer ->
//! consumer measured in the same run:
//! - produce -> function start latency with a batch window of 0 (the
//!   function computes now - the record's CreateTime, both in ms);
//! - sustained records/s through a trigger (batch 100) into a no-op
//!   function: from the first commit to every record committed and every
//!   event run; the raw consumer's rate of the same topic beside it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nubo_proto::v1 as pb;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tonic::transport::Channel;

use super::{authed, free_port, ms, pct, write_section, BenchArgs, Graceful, TOKEN};

const LATENCY_FN: &str = "import time\n\ndef handler(event, context):\n    now = int(time.time() * 1000)\n    for recs in event['records'].values():\n        for r in recs:\n            print('LAT %d' % (now - r['timestamp']))\n    return {}\n";
const NOOP_FN: &str = "def handler(event, context):\n    return {}\n";

fn zip_of(src: &str) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("app.py", o).expect("zip");
        z.write_all(src.as_bytes()).expect("zip");
        z.finish().expect("zip");
    }
    buf.into_inner()
}

fn tansu_bin() -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("NUBO_TANSU") {
        return Ok(p.into());
    }
    let home = std::env::var_os("HOME").context("HOME")?;
    let p = std::path::Path::new(&home).join(".cache/nubo/tansu/bin/tansu");
    if !p.exists() {
        bail!("no tansu broker at {}: run scripts/kafka.sh", p.display());
    }
    Ok(p)
}

async fn create_topic(bs: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bs).create()?;
    admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

fn producer(bs: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("linger.ms", "0")
        .create()?)
}

async fn produce_many(p: &FutureProducer, topic: &str, n: usize) -> anyhow::Result<()> {
    let value = [b'x'; 100];
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let rec = FutureRecord::<(), _>::to(topic)
            .payload(&value[..])
            .partition((i % 3) as i32);
        pending.push(p.send(rec, Duration::from_secs(30)));
    }
    for f in pending {
        f.await.map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    Ok(())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("nubo-bench-kafka")
        .tempdir()?;
    let kport = free_port();
    let url = format!("tcp://127.0.0.1:{kport}");
    let _broker = Graceful(
        Command::new(tansu_bin()?)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu")?,
    );
    let bs = format!("127.0.0.1:{kport}");
    let t = Instant::now();
    while std::net::TcpStream::connect(&bs).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("tansu did not listen on {bs}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let samples = args.samples.clamp(20, 1000);
    let total = 50_000usize;

    // Floors: a raw producer -> consumer.
    eprintln!("bench: raw rdkafka producer -> consumer ({samples} latencies, {total} records)...");
    create_topic(&bs, "raw-lat", 1).await?;
    create_topic(&bs, "raw-rate", 3).await?;
    let prod = producer(&bs)?;
    let consumer = |group: &str| -> anyhow::Result<StreamConsumer> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", &bs)
            .set("group.id", group)
            .set("session.timeout.ms", "6000")
            // As the trigger's consumer sets it.
            .set("fetch.wait.max.ms", "10")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?)
    };
    let c = consumer("raw-lat")?;
    c.subscribe(&["raw-lat"])?;
    // Wait for the assignment with one record.
    prod.send(
        FutureRecord::<(), _>::to("raw-lat").payload("w"),
        Duration::from_secs(5),
    )
    .await
    .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    tokio::time::timeout(Duration::from_secs(60), c.recv())
        .await
        .context("the raw consumer's first record")??;
    let mut raw_lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        prod.send(
            FutureRecord::<(), _>::to("raw-lat").payload("x"),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        tokio::time::timeout(Duration::from_secs(10), c.recv())
            .await
            .context("a raw latency sample")??;
        raw_lat.push(t.elapsed());
    }
    raw_lat.sort();
    drop(c);
    // Bulk records are produced as producers do (lingering into batches).
    let bulk: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("linger.ms", "20")
        .create()?;
    produce_many(&bulk, "raw-rate", total).await?;
    let c = consumer("raw-rate")?;
    c.subscribe(&["raw-rate"])?;
    tokio::time::timeout(Duration::from_secs(60), c.recv()).await??;
    let t = Instant::now();
    for i in 1..total {
        tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .with_context(|| format!("raw consumer record {i}"))??;
    }
    let raw_rate = (total - 1) as f64 / t.elapsed().as_secs_f64();
    drop(c);

    eprintln!("bench: starting nubo up...");
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
            "16384",
        ])
        .env("NUBO_CONFIG_DIR", dir.path().join("config"))
        .env("NUBO_BOOTSTRAP_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(
            dir.path().join("up.log"),
        )?))
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let _up = Graceful(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("ready") {
        bail!(
            "nubo up did not start: see {}",
            dir.path().join("up.log").display()
        );
    }
    let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await?;
    let mut fns = pb::functions_client::FunctionsClient::new(ch.clone());
    let mut trg = pb::triggers_client::TriggersClient::new(ch.clone());
    let mut inv = pb::invocations_client::InvocationsClient::new(ch.clone());
    for (name, src) in [("klat", LATENCY_FN), ("knoop", NOOP_FN)] {
        let header = pb::CreateFunctionHeader {
            function_name: name.into(),
            config: Some(pb::FunctionConfig {
                runtime: "python3.11".into(),
                handler: "app.handler".into(),
                timeout_seconds: Some(30),
                ..Default::default()
            }),
            ..Default::default()
        };
        let msgs = nubo_proto::create_function_messages(header, &zip_of(src), usize::MAX);
        fns.create_function(authed(tokio_stream::iter(msgs)))
            .await?;
    }
    let spec = |f: &str, topic: &str, batch: u32, window: u32, start: &str| pb::TriggerSpec {
        function_name: f.into(),
        kafka: Some(pb::KafkaSource {
            brokers: vec![bs.clone()],
            topics: vec![topic.into()],
            starting_position: start.into(),
            ..Default::default()
        }),
        batch_size: Some(batch),
        batch_window_ms: Some(window),
        enabled: true,
        ..Default::default()
    };

    // Latency: window 0, one record at a time, 50 ms apart.
    eprintln!("bench: produce -> function start, window 0, x{samples}...");
    create_topic(&bs, "lat", 1).await?;
    let t = trg
        .create_trigger(authed(pb::CreateTriggerRequest {
            spec: Some(spec("klat", "lat", 100, 0, "latest")),
        }))
        .await?
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let g = trg
            .get_trigger(authed(pb::GetTriggerRequest { id: t.id.clone() }))
            .await?
            .into_inner();
        if !g.partitions.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the latency trigger never got its partition: {g:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Warm the function's sandbox first.
    prod.send(
        FutureRecord::<(), _>::to("lat").payload("w"),
        Duration::from_secs(5),
    )
    .await
    .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..samples {
        prod.send(
            FutureRecord::<(), _>::to("lat").payload("x"),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lat: Vec<Duration> = loop {
        let logs = inv
            .get_logs(authed(pb::GetLogsRequest {
                function_name: "klat".into(),
                start_time_ms: 0,
                limit: 100_000,
            }))
            .await?
            .into_inner();
        let v: Vec<Duration> = logs
            .lines
            .iter()
            .filter_map(|l| {
                l.message
                    .trim()
                    .strip_prefix("LAT ")
                    .and_then(|n| n.trim().parse::<i64>().ok())
            })
            .map(|ms| Duration::from_millis(ms.max(0) as u64))
            .collect();
        if v.len() > samples || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // The first is the warm-up record.
    if !lat.is_empty() {
        lat.remove(0);
    }
    lat.sort();

    // Throughput: 50,000 records already in 3 partitions, batch 100.
    eprintln!("bench: sustained rate, {total} records, batch 100...");
    create_topic(&bs, "tput", 3).await?;
    produce_many(&bulk, "tput", total).await?;
    let committed = |group: &str| -> anyhow::Result<i64> {
        let c: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bs)
            .set("group.id", group)
            .create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition("tput", p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(5))?;
        Ok(got
            .elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => 0,
            })
            .sum())
    };
    let t = trg
        .create_trigger(authed(pb::CreateTriggerRequest {
            spec: Some(spec("knoop", "tput", 100, 100, "earliest")),
        }))
        .await?
        .into_inner();
    let group = t.group.clone();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    let done = loop {
        let c = committed(&group)?;
        if c > 0 && first.is_none() {
            first = Some((Instant::now(), c));
        }
        let q = inv
            .async_status(authed(pb::DeadLettersRequest {
                function_name: "knoop".into(),
                stale_ok: true,
            }))
            .await?
            .into_inner();
        if c >= total as i64 && q.queued == 0 {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!(
                "the trigger did not drain {total} records in 600 s (committed {c}, queued {})",
                q.queued
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (t0, c0) = first.context("nothing was committed")?;
    let rate = (total as i64 - c0) as f64 / done.duration_since(t0).as_secs_f64().max(1e-3);

    let mut md = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(md, "## Kafka triggers (issue 12)\n");
    let _ = writeln!(
        md,
        "Command: `cargo build --release --bin nubo && target/release/nubo bench kafka --samples {samples}` (as root). A tansu 0.6 broker (memory storage) and `nubo up` (its embedded trigger instance) on loopback; python3.11 functions of 128 MB. Latency: the function's start (`time.time()` in the handler) minus the record's CreateTime, both in ms. Rate: from the first commit until all {total} records are committed and the async queue is empty (every batch ran).\n"
    );
    let _ = writeln!(md, "| figure | result | floor, same run | goal |");
    let _ = writeln!(md, "| --- | --- | --- | --- |");
    let _ = writeln!(
        md,
        "| produce -> function start, batch window 0 (n={}) | p50 {} · p99 {} | raw rdkafka produce -> consume p50 {} · p99 {} | p50 ≤ 20 ms |",
        lat.len(),
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(pct(&raw_lat, 0.5)),
        ms(pct(&raw_lat, 0.99))
    );
    let _ = writeln!(
        md,
        "| sustained records/s into a no-op function, batch 100, 3 partitions | {rate:.0} records/s | raw consumer {raw_rate:.0} records/s | ≥ 10,000 records/s |"
    );
    md.push('\n');
    println!("{md}");
    write_section(&args.out, "## Kafka triggers (issue 12)", &md)?;
    eprintln!("bench: wrote {}", args.out.display());
    Ok(())
}
