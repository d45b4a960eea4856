//! A real Kafka-compatible broker for tests: [tansu](https://tansu.io)
//! 0.6, started per test on a free loopback port with in-memory storage,
//! plus blocking helpers (the rdkafka crate, librdkafka inside) to create
//! topics, produce, and read watermarks and a group's committed offsets.
//!
//! The binary comes from `scripts/kafka.sh` (run by `scripts/setup.sh`),
//! which installs it at `~/.cache/nubo/tansu/bin/tansu` (under
//! `$NUBO_CACHE_DIR` when set); `$NUBO_TANSU` points elsewhere.
//!
//! What tansu 0.6 does here (measured on the 2-core test machine, with
//! the rdkafka crate's bundled librdkafka 2.12):
//!
//! - It starts in ~10 ms (port accepting), ~11 MB resident; a restart on
//!   the same port takes as long. It exits promptly on SIGTERM.
//! - Admin CreateTopics works (a second create: `TopicAlreadyExists`);
//!   so does auto-creation: a producer's first record to an unknown topic
//!   creates it, with 4 partitions. A consumer's metadata request does not
//!   create one (`UnknownTopicOrPartition`).
//! - Produce (idempotent too: `enable.idempotence=true`), Fetch, group
//!   consume with the range assignor, OffsetCommit / OffsetFetch and
//!   rebalancing between two members work. 1,000 small records over 3
//!   partitions are produced (all delivery reports in) in ~100 ms.
//! - **Every JoinGroup is held for about half the session timeout**
//!   (rounded up to a whole second, at least 1 s) before the group forms,
//!   for the first member of a fresh group as much as for one joining
//!   after the previous member left: ~23 s with librdkafka's default
//!   `session.timeout.ms` of 45 s, ~3 s with 6 s ([`group_config`]), 1 s
//!   with 2 s or less. A second member joining a live group is assigned
//!   its share ~1 s after that (4 s with a 6 s session timeout, 26 s with
//!   the default). Consumers in tests should set a short session timeout.
//! - **ListOffsets (latest) is wrong after a multi-record batch**: it
//!   answers the last batch's *base* offset + 1, not its last offset + 1
//!   (10 records in one batch, offsets 0..=9: "high watermark 1"). The
//!   records themselves are stored and fetched correctly, and the end of
//!   a partition is seen at the right place (`enable.partition.eof`).
//!   [`high_watermarks`] corrects for it; anything else reading
//!   watermarks from tansu (consumer lag) sees the low value.
//! - ListOffsets by timestamp (`offsets_for_times`) answers the earliest
//!   offset whatever the timestamp.
//! - The storage is in memory: [`Broker::restart`] comes back empty (no
//!   topics, records or committed offsets).
//!
//! The helpers panic on failure, naming what failed: they are for tests.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::process::Proc;

/// How long [`Broker::start`] waits for the port to accept connections
/// (tansu takes ~10 ms).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The timeout of each helper's broker requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A tansu broker on `127.0.0.1:<port>` with in-memory storage, stopped
/// (SIGTERM, then SIGKILL) when dropped.
pub struct Broker {
    proc: Option<Proc>,
    port: u16,
    bin: PathBuf,
}

impl Broker {
    /// Starts a broker on a free port and waits until it accepts TCP
    /// connections. Panics, with the broker's output, when it does not
    /// within 10 s; panics saying to run `scripts/kafka.sh` when the
    /// binary is missing.
    pub fn start() -> Broker {
        let mut b = Broker {
            proc: None,
            port: crate::free_port(),
            bin: binary(),
        };
        b.spawn();
        b
    }

    /// `127.0.0.1:<port>`: the `bootstrap.servers` to give clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the broker printed so far (empty once stopped).
    pub fn logs(&self) -> String {
        self.proc.as_ref().map(Proc::logs).unwrap_or_default()
    }

    /// Stops the broker (SIGTERM, SIGKILL after 5 s) and waits for it to
    /// exit: clients see the broker go away. Does nothing when stopped.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(5));
            // Drop kills and reaps it if SIGTERM was not enough.
        }
    }

    /// Stops the broker (if running) and starts a new one on the same
    /// port ("the broker went away and came back"). The storage is in
    /// memory: the new broker has no topics, records or committed offsets.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        assert!(self.proc.is_none(), "tansu is already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            // tansu reads these from the environment: no telemetry
            // export and no schema registry from the caller's shell.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("SCHEMA_REGISTRY");
        let name = format!("tansu {}", self.bootstrap());
        let mut p = Proc::spawn(cmd, &name);
        let addr: SocketAddr = self.bootstrap().parse().unwrap();
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Some(code) = p.try_wait() {
                panic!(
                    "{name} exited ({code:?}) before accepting connections; it said:\n{}",
                    p.logs()
                );
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "{name} did not accept connections within {START_TIMEOUT:?}; it said:\n{}",
                    p.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.proc = Some(p);
    }
}

/// The tansu binary: `$NUBO_TANSU`, else `tansu/bin/tansu` in
/// `$NUBO_CACHE_DIR` (default `~/.cache/nubo`), where `scripts/kafka.sh`
/// puts it.
fn binary() -> PathBuf {
    let bin = match std::env::var_os("NUBO_TANSU") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = match std::env::var_os("NUBO_CACHE_DIR") {
                Some(d) => PathBuf::from(d),
                None => {
                    let home = std::env::var_os("HOME").expect("HOME is not set");
                    PathBuf::from(home).join(".cache/nubo")
                }
            };
            cache.join("tansu/bin/tansu")
        }
    };
    assert!(
        bin.is_file(),
        "no tansu broker binary at {}: run scripts/kafka.sh (scripts/setup.sh does), \
         or set NUBO_TANSU",
        bin.display()
    );
    bin
}

/// A client configuration for `bootstrap`, with the settings every helper
/// uses; callers add their own (`group.id`, ...).
pub fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        // A broker that went away is noticed quickly.
        .set("reconnect.backoff.max.ms", "1000");
    c
}

/// Runs `f` to completion on a current-thread runtime: the admin and
/// producer futures are resolved by librdkafka's own threads, so nothing
/// else needs to run.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("building a tokio runtime")
        .block_on(f)
}

/// Creates `topic` with `partitions` partitions (replication 1) through
/// the Admin API, and waits until the broker's metadata shows every
/// partition with a leader.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = config(bootstrap)
        .create()
        .expect("creating a Kafka admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let res = block_on(admin.create_topics([&new], &opts))
        .unwrap_or_else(|e| panic!("creating topic {topic} on {bootstrap}: {e}"));
    for r in res {
        if let Err((t, code)) = r {
            panic!("creating topic {t} on {bootstrap}: {code}");
        }
    }
    let c = consumer(bootstrap, None);
    crate::wait_for(
        &format!("topic {topic} with {partitions} partitions on {bootstrap}"),
        REQUEST_TIMEOUT.as_secs(),
        || {
            let n = partition_count(&c, topic).ok()?;
            (n == partitions as usize).then_some(())
        },
    );
}

/// A record for [`produce`]: (partition, key, value).
pub type Record<'a> = (i32, Option<&'a [u8]>, &'a [u8]);

/// Produces `records` (partition, key, value) to `topic` and waits for
/// every delivery report; panics on the first failed delivery.
pub fn produce(bootstrap: &str, topic: &str, records: &[Record]) {
    let producer: FutureProducer = config(bootstrap)
        .set("message.timeout.ms", "30000")
        .create()
        .expect("creating a Kafka producer");
    let mut pending = Vec::with_capacity(records.len());
    for (i, &(partition, key, value)) in records.iter().enumerate() {
        let mut rec = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .payload(value);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        // The local queue holds 100,000 messages by default; when it is
        // full, wait for deliveries to make room.
        let start = Instant::now();
        loop {
            match producer.send_result(rec) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if start.elapsed() < REQUEST_TIMEOUT =>
                {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("producing record {i} to {topic} on {bootstrap}: {e}"),
            }
        }
    }
    block_on(async {
        for (i, f) in pending.into_iter().enumerate() {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => panic!("delivering record {i} to {topic} on {bootstrap}: {e}"),
                Err(_) => panic!("record {i} to {topic} on {bootstrap}: producer dropped it"),
            }
        }
    });
}

/// The high watermark (the offset after the last record) of each
/// partition of `topic`, by partition id.
///
/// Corrects tansu's ListOffsets answer, which is one past the *first*
/// record of the last batch (see the module doc): from that offset minus
/// one, the rest of the last batch is read to the end of the partition.
pub fn high_watermarks(bootstrap: &str, topic: &str) -> Vec<i64> {
    let c = consumer(bootstrap, Some("nubo-test-support-watermarks"));
    let n = partition_count(&c, topic)
        .unwrap_or_else(|e| panic!("metadata of {topic} on {bootstrap}: {e}"));
    let mut high: Vec<i64> = (0..n as i32)
        .map(|p| {
            c.fetch_watermarks(topic, p, REQUEST_TIMEOUT)
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p} on {bootstrap}: {e}"))
                .1
        })
        .collect();
    let mut tpl = TopicPartitionList::new();
    for (p, &h) in high.iter().enumerate() {
        if h > 0 {
            tpl.add_partition_offset(topic, p as i32, Offset::Offset(h - 1))
                .unwrap();
        }
    }
    let mut open = tpl.count();
    if open == 0 {
        return high;
    }
    // Assigned, not subscribed: the group is never joined or committed to.
    c.assign(&tpl)
        .unwrap_or_else(|e| panic!("reading the end of {topic} on {bootstrap}: {e}"));
    let start = Instant::now();
    while open > 0 {
        assert!(
            start.elapsed() < REQUEST_TIMEOUT,
            "reading the end of {topic} on {bootstrap}: no end of partition within {REQUEST_TIMEOUT:?}"
        );
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let h = &mut high[m.partition() as usize];
                *h = (*h).max(m.offset() + 1);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(e)) => panic!("reading the end of {topic} on {bootstrap}: {e}"),
        }
    }
    high
}

/// The offsets `group` has committed on each partition of `topic`, by
/// partition id; -1 where it has committed none.
pub fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<i64> {
    // A consumer with a group.id that never subscribes does not join the
    // group: it only asks the coordinator (OffsetFetch).
    let c = consumer(bootstrap, Some(group));
    let n = partition_count(&c, topic)
        .unwrap_or_else(|e| panic!("metadata of {topic} on {bootstrap}: {e}"));
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, REQUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("committed offsets of {group} on {topic} ({bootstrap}): {e}"));
    (0..n as i32)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// A consumer configuration for `group` as tests want it: manual
/// commits, a new group starts at the earliest offset, and a 6 s session
/// timeout, so a join takes ~3 s instead of ~23 s (tansu holds every
/// JoinGroup for half the session timeout; see the module doc).
pub fn group_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut c = config(bootstrap);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    c
}

/// A consumer for metadata and offset queries (never subscribes).
fn consumer(bootstrap: &str, group: Option<&str>) -> BaseConsumer {
    let mut c = config(bootstrap);
    if let Some(g) = group {
        c.set("group.id", g)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            // The end of a partition is known when a fetch comes back
            // empty: do not let the broker hold it for the default 500 ms.
            .set("fetch.wait.max.ms", "10");
    }
    c.create().expect("creating a Kafka consumer")
}

/// The number of partitions of `topic` whose leader is known.
fn partition_count(c: &BaseConsumer, topic: &str) -> Result<usize, String> {
    let md = c
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or("topic not in the metadata")?;
    if let Some(e) = t.error() {
        return Err(format!("{:?}", RDKafkaErrorCode::from(e)));
    }
    if t.partitions().iter().any(|p| p.leader() < 0) {
        return Err("a partition has no leader".into());
    }
    Ok(t.partitions().len())
}
