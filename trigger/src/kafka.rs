//! Kafka event source mappings: one consumer (in the mapping's group) per
//! mapping and instance; records buffered per partition into batches by
//! size or window; each batch one async event in Lambda's self-managed
//! Kafka shape; offsets committed only after the controllers accepted
//! the batch (the [`crate::run`] contract). Several instances share a
//! mapping through Kafka's own group rebalancing; a partition taken away
//! drops its unsubmitted buffer (its new owner reads it again from the
//! committed offset).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::{Batch, Event, Source, SourceError};

/// What a Kafka mapping asks for (from the controllers' mapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMapping {
    pub id: String,
    pub revision: String,
    pub function: String,
    pub qualifier: String,
    pub brokers: Vec<String>,
    pub topics: Vec<String>,
    pub group: String,
    /// latest, earliest or timestamp:MS.
    pub starting_position: String,
    /// Batches of one partition run one at a time, in order.
    pub ordered: bool,
    pub batch_size: usize,
    pub batch_window: Duration,
}

/// One record as Lambda's event carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub timestamp_type: &'static str,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    fn to_json(&self) -> serde_json::Value {
        let b64 = |b: &Option<Vec<u8>>| {
            b.as_ref()
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
        };
        let mut v = serde_json::json!({
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "timestampType": self.timestamp_type,
            "headers": self.headers.iter().map(|(k, v)| {
                serde_json::json!({ k: v })
            }).collect::<Vec<_>>(),
        });
        if let Some(k) = b64(&self.key) {
            v["key"] = k.into();
        }
        if let Some(val) = b64(&self.value) {
            v["value"] = val.into();
        }
        v
    }
}

/// Lambda's self-managed Kafka event for records of one partition, split
/// into as many events as it takes to keep each under `max_bytes`: a
/// batch is split, never dropped. A single record over the limit is an
/// error (it can never be delivered as an asynchronous event).
pub fn events_for(
    bootstrap: &str,
    records: &[Record],
    max_bytes: usize,
) -> Result<Vec<(Vec<u8>, i64, i64)>, String> {
    let mut out = Vec::new();
    let mut current: Vec<serde_json::Value> = Vec::new();
    let mut first = 0i64;
    let mut size = 0usize;
    // The envelope around the records.
    let envelope = 128 + bootstrap.len();
    let finish = |recs: Vec<serde_json::Value>, first: i64, last: i64, topic: &str, part: i32| {
        let key = format!("{topic}-{part}");
        let doc = serde_json::json!({
            "eventSource": "SelfManagedKafka",
            "bootstrapServers": bootstrap,
            "records": { key: recs },
        });
        (serde_json::to_vec(&doc).unwrap_or_default(), first, last)
    };
    let Some(head) = records.first() else {
        return Ok(out);
    };
    let (topic, part) = (head.topic.clone(), head.partition);
    let mut last = head.offset;
    for r in records {
        let j = r.to_json();
        let n = serde_json::to_vec(&j).map(|v| v.len()).unwrap_or(0) + 1;
        if envelope + topic.len() + n > max_bytes {
            return Err(format!(
                "record {}-{}@{} is {n} bytes as JSON, over the {max_bytes}-byte limit of an asynchronous invocation",
                r.topic, r.partition, r.offset
            ));
        }
        if !current.is_empty() && envelope + topic.len() + size + n > max_bytes {
            out.push(finish(
                std::mem::take(&mut current),
                first,
                last,
                &topic,
                part,
            ));
            size = 0;
        }
        if current.is_empty() {
            first = r.offset;
        }
        size += n;
        last = r.offset;
        current.push(j);
    }
    out.push(finish(current, first, last, &topic, part));
    Ok(out)
}

/// The idempotency key of a batch: mapping, partition, offset range. A
/// batch read again with the same boundaries is enqueued once.
pub fn batch_key(mapping: &str, topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!("kafka:{mapping}:{topic}:{partition}:{first}-{last}")
}

/// Shared between the consumer's callbacks and the source.
#[derive(Default)]
pub struct Shared {
    /// Partitions taken away since the source last looked.
    revoked: Mutex<Vec<(String, i32)>>,
    /// The last client error (brokers unreachable, ...), cleared when a
    /// record arrives.
    pub error: Mutex<Option<String>>,
    /// Offsets committed by this instance: (topic, partition) -> next.
    pub committed: Mutex<BTreeMap<(String, i32), i64>>,
    /// Partitions this instance holds now.
    pub assigned: Mutex<BTreeSet<(String, i32)>>,
}

pub struct Ctx {
    pub shared: Arc<Shared>,
    pub bootstrap: String,
}

/// What a Kafka error means to a user reading `nubo trigger get`.
pub fn describe(error: &rdkafka::error::KafkaError, bootstrap: &str) -> String {
    use rdkafka::types::RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::AllBrokersDown | C::BrokerTransportFailure | C::BrokerNotAvailable) => {
            format!("brokers unreachable ({bootstrap}): {error}")
        }
        Some(C::UnknownTopicOrPartition | C::UnknownTopic) => {
            format!("topic does not exist: {error}")
        }
        _ => error.to_string(),
    }
}

impl ClientContext for Ctx {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!("kafka: {error}: {reason}");
        let text = format!("{}: {reason}", describe(&error, &self.bootstrap));
        *self.shared.error.lock().expect("lock") = Some(text);
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut r = self.shared.revoked.lock().expect("lock");
            let mut a = self.shared.assigned.lock().expect("lock");
            for e in tpl.elements() {
                r.push((e.topic().to_string(), e.partition()));
                a.remove(&(e.topic().to_string(), e.partition()));
            }
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut a = self.shared.assigned.lock().expect("lock");
            for e in tpl.elements() {
                a.insert((e.topic().to_string(), e.partition()));
            }
        }
    }
}

struct PartBuf {
    records: Vec<Record>,
    since: Instant,
}

/// What to commit once a batch is accepted: (topic, partition) -> next
/// offset.
pub type Commit = Vec<(String, i32, i64)>;

pub struct KafkaSource {
    name: String,
    m: KafkaMapping,
    bootstrap: String,
    pub consumer: Arc<StreamConsumer<Ctx>>,
    pub shared: Arc<Shared>,
    buffers: BTreeMap<(String, i32), PartBuf>,
    max_bytes: usize,
    start_ms: Option<i64>,
}

impl KafkaSource {
    /// A consumer in the mapping's group, subscribed to its topics.
    pub fn new(m: KafkaMapping, max_bytes: usize) -> Result<KafkaSource, String> {
        let shared = Arc::new(Shared::default());
        let bootstrap = m.brokers.join(",");
        let (reset, start_ms) = match m.starting_position.as_str() {
            "earliest" => ("earliest", None),
            s => match s
                .strip_prefix("timestamp:")
                .and_then(|t| t.parse::<i64>().ok())
            {
                // Records before the time are skipped (their offsets are
                // committed with the next batch).
                Some(ms) => ("earliest", Some(ms)),
                None => ("latest", None),
            },
        };
        let consumer: StreamConsumer<Ctx> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &m.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", reset)
            // A dead instance's partitions move on within this (tansu
            // also holds a join for about half of it).
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            // What librdkafka prefetches is bounded: a paused submit does
            // not grow the instance's memory without limit.
            .set("queued.max.messages.kbytes", "16384")
            // A broker may hold a fetch this long when it has nothing new
            // (librdkafka's default is 500 ms, all of it latency here).
            .set("fetch.wait.max.ms", "10")
            .set("client.id", format!("nubo-trigger-{}", m.id))
            .create_with_context(Ctx {
                shared: shared.clone(),
                bootstrap: bootstrap.clone(),
            })
            .map_err(|e| format!("creating the Kafka consumer: {e}"))?;
        let topics: Vec<&str> = m.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| format!("subscribing to {}: {e}", m.topics.join(", ")))?;
        Ok(KafkaSource {
            name: format!("kafka:{}", m.id),
            bootstrap,
            m,
            consumer: Arc::new(consumer),
            shared,
            buffers: BTreeMap::new(),
            max_bytes,
            start_ms,
        })
    }

    fn push(&mut self, msg: &rdkafka::message::BorrowedMessage<'_>) {
        *self.shared.error.lock().expect("lock") = None;
        let (ts, ts_type) = match msg.timestamp() {
            rdkafka::Timestamp::CreateTime(t) => (t, "CREATE_TIME"),
            rdkafka::Timestamp::LogAppendTime(t) => (t, "LOG_APPEND_TIME"),
            rdkafka::Timestamp::NotAvailable => (-1, "NO_TIMESTAMP_TYPE"),
        };
        if let Some(start) = self.start_ms {
            if ts >= 0 && ts < start {
                return;
            }
        }
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        (
                            x.key.to_string(),
                            x.value.map(|v| v.to_vec()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let r = Record {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp: ts,
            timestamp_type: ts_type,
            key: msg.key().map(|k| k.to_vec()),
            value: msg.payload().map(|v| v.to_vec()),
            headers,
        };
        self.buffers
            .entry((r.topic.clone(), r.partition))
            .or_insert_with(|| PartBuf {
                records: Vec::new(),
                since: Instant::now(),
            })
            .records
            .push(r);
    }

    /// Drops the buffers of partitions taken away by a rebalance.
    fn drop_revoked(&mut self) {
        let revoked: Vec<(String, i32)> =
            std::mem::take(&mut *self.shared.revoked.lock().expect("lock"));
        for tp in revoked {
            if let Some(b) = self.buffers.remove(&tp) {
                tracing::info!(
                    mapping = %self.m.id,
                    topic = %tp.0,
                    partition = tp.1,
                    records = b.records.len(),
                    "partition revoked: its unsubmitted records are left to its next owner"
                );
            }
        }
    }

    /// The batches ready now (full, or past the window).
    fn take_ready(&mut self) -> Result<Option<Batch<Commit>>, SourceError> {
        let now = Instant::now();
        let mut events = Vec::new();
        let mut commit = Vec::new();
        let keys: Vec<(String, i32)> = self.buffers.keys().cloned().collect();
        for tp in keys {
            let b = self.buffers.get_mut(&tp).expect("listed");
            let full = b.records.len() >= self.m.batch_size;
            if !full && now.duration_since(b.since) < self.m.batch_window {
                continue;
            }
            let n = b.records.len().min(self.m.batch_size);
            let recs: Vec<Record> = b.records.drain(..n).collect();
            b.since = now;
            if b.records.is_empty() {
                self.buffers.remove(&tp);
            }
            let parts = events_for(&self.bootstrap, &recs, self.max_bytes).map_err(|e| {
                SourceError::Receive {
                    source_name: self.name.clone(),
                    message: e,
                }
            })?;
            let last = recs.last().map(|r| r.offset).unwrap_or(0);
            for (payload, first, lst) in parts {
                events.push(Event {
                    id: batch_key(&self.m.id, &tp.0, tp.1, first, lst),
                    function: self.m.function.clone(),
                    qualifier: self.m.qualifier.clone(),
                    payload,
                    ordering_key: if self.m.ordered {
                        format!("{}/{}/{}", self.m.id, tp.0, tp.1)
                    } else {
                        String::new()
                    },
                });
            }
            commit.push((tp.0.clone(), tp.1, last + 1));
        }
        if events.is_empty() {
            return Ok(None);
        }
        Ok(Some(Batch {
            events,
            ack: commit,
        }))
    }

    /// How long until the oldest buffer's window ends.
    fn next_deadline(&self) -> Duration {
        let now = Instant::now();
        self.buffers
            .values()
            .map(|b| (b.since + self.m.batch_window).saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_millis(500))
    }
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    type Ack = Commit;

    fn name(&self) -> &str {
        &self.name
    }

    async fn next_batch(&mut self) -> Result<Option<Batch<Commit>>, SourceError> {
        loop {
            self.drop_revoked();
            if let Some(b) = self.take_ready()? {
                return Ok(Some(b));
            }
            let wait = self.next_deadline();
            let consumer = self.consumer.clone();
            tokio::select! {
                msg = consumer.recv() => match msg {
                    Ok(m) => {
                        self.push(&m);
                        drop(m);
                        // Take what is already there, up to a batch per
                        // partition's worth, before looking at windows.
                        for _ in 0..self.m.batch_size.saturating_mul(4) {
                            use futures::FutureExt;
                            match consumer.recv().now_or_never() {
                                Some(Ok(m)) => self.push(&m),
                                _ => break,
                            }
                        }
                    }
                    Err(e) => {
                        let text = describe(&e, &self.bootstrap);
                        tracing::warn!(mapping = %self.m.id, "kafka: {text}");
                        *self.shared.error.lock().expect("lock") = Some(text);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn ack(&mut self, commit: Commit) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::new();
        for (t, p, next) in &commit {
            tpl.add_partition_offset(t, *p, Offset::Offset(*next))
                .map_err(|e| SourceError::Ack {
                    source_name: self.name.clone(),
                    message: e.to_string(),
                })?;
        }
        // Between the controllers' acceptance and this commit: a crash
        // here re-reads the batch, and its key enqueues it once.
        crate::failpoint("kafka-before-commit").await;
        let consumer = self.consumer.clone();
        let res = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| SourceError::Ack {
                source_name: self.name.clone(),
                message: e.to_string(),
            })?;
        match res {
            Ok(()) => {
                let mut c = self.shared.committed.lock().expect("lock");
                for (t, p, next) in commit {
                    c.insert((t, p), next);
                }
                Ok(())
            }
            // Not ours any more (rebalanced): the new owner reads the
            // batch again; its key keeps it from being enqueued twice.
            Err(e) => {
                tracing::warn!(mapping = %self.m.id, "commit after acceptance failed (the batch will be read again): {e}");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64, value: &[u8]) -> Record {
        Record {
            topic: "orders".into(),
            partition: 2,
            offset,
            timestamp: 1_700_000_000_000,
            timestamp_type: "CREATE_TIME",
            key: Some(b"k".to_vec()),
            value: Some(value.to_vec()),
            headers: vec![("h".into(), b"v".to_vec())],
        }
    }

    /// Lambda's shape: records keyed by topic-partition, key and value in
    /// base64, headers as {name: [bytes]}.
    #[test]
    fn lambda_event_shape() {
        let ev = events_for("b:9092", &[rec(7, b"hello")], 1 << 20).unwrap();
        assert_eq!(ev.len(), 1);
        let (payload, first, last) = &ev[0];
        assert_eq!((*first, *last), (7, 7));
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(v["eventSource"], "SelfManagedKafka");
        assert_eq!(v["bootstrapServers"], "b:9092");
        let r = &v["records"]["orders-2"][0];
        assert_eq!(r["offset"], 7);
        assert_eq!(r["value"], "aGVsbG8=");
        assert_eq!(r["key"], "aw==");
        assert_eq!(r["timestampType"], "CREATE_TIME");
        assert_eq!(r["headers"][0]["h"], serde_json::json!([118]));
    }

    /// Over the payload limit a batch is split in offset order; nothing
    /// is dropped; one record over the limit is an error naming it.
    #[test]
    fn batches_split_under_the_limit() {
        let recs: Vec<Record> = (0..100).map(|i| rec(i, &[b'x'; 1000])).collect();
        let ev = events_for("b:9092", &recs, 20_000).unwrap();
        assert!(ev.len() > 5, "{}", ev.len());
        let mut next = 0;
        for (p, first, last) in &ev {
            assert!(p.len() <= 20_000);
            assert_eq!(*first, next);
            next = last + 1;
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            assert_eq!(
                v["records"]["orders-2"].as_array().unwrap().len() as i64,
                last - first + 1
            );
        }
        assert_eq!(next, 100);
        let e = events_for("b:9092", &[rec(5, &[b'x'; 30_000])], 20_000).unwrap_err();
        assert!(e.contains("orders-2@5"), "{e}");
    }

    #[test]
    fn keys_name_the_range() {
        assert_eq!(batch_key("m", "t", 1, 10, 19), "kafka:m:t:1:10-19");
    }
}
