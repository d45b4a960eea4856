//! The trigger role: follows the event source mappings the controllers
//! hold (polled every second), runs one source per enabled mapping
//! (restarted when its revision changes, stopped when it is disabled or
//! deleted), and reports each mapping's state and partitions.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nubo_client::{Client, Config};
use nubo_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::kafka::{KafkaMapping, KafkaSource, Shared};
use crate::sink::ControllerSink;
use crate::{Backoff, Counters};

/// Settings of one trigger instance.
#[derive(Debug, Clone)]
pub struct TriggerConfig {
    /// Controller API URIs.
    pub endpoints: Vec<String>,
    /// The trigger credential (`nubo cluster trigger-secret`).
    pub secret: String,
    /// Names this instance in reports (`hostname:pid` by default).
    pub instance: String,
    /// How often the mappings are read.
    pub poll: Duration,
    /// How often status is reported.
    pub report: Duration,
    /// The async payload limit of the controllers (batches are split
    /// under it).
    pub max_payload_bytes: usize,
    /// Wait after a source failed before it starts again.
    pub restart_wait: Duration,
}

impl TriggerConfig {
    pub fn new(endpoints: Vec<String>, secret: String) -> TriggerConfig {
        TriggerConfig {
            endpoints,
            secret,
            instance: format!(
                "{}:{}",
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim(),
                std::process::id()
            ),
            poll: Duration::from_secs(1),
            report: Duration::from_secs(2),
            max_payload_bytes: 256 * 1024,
            restart_wait: Duration::from_secs(5),
        }
    }
}

/// What one running mapping shows.
#[derive(Default)]
struct Runtime {
    shared: Mutex<Option<Arc<Shared>>>,
    consumer: Mutex<Option<Arc<rdkafka::consumer::StreamConsumer<crate::kafka::Ctx>>>>,
    failed: Mutex<Option<String>>,
    counters: Counters,
}

struct Running {
    revision: String,
    token: CancellationToken,
    rt: Arc<Runtime>,
    topics: Vec<String>,
}

/// The instance: its metrics, and the loop that runs it.
pub struct TriggerService {
    cfg: TriggerConfig,
    client: Arc<Client>,
    sink: Arc<ControllerSink>,
    running: Mutex<HashMap<String, Running>>,
}

fn kafka_mapping(t: &pb::Trigger) -> Option<KafkaMapping> {
    let spec = t.spec.as_ref()?;
    let k = spec.kafka.as_ref()?;
    Some(KafkaMapping {
        id: t.id.clone(),
        revision: t.revision.clone(),
        function: spec.function_name.clone(),
        qualifier: spec.qualifier.clone(),
        brokers: k.brokers.clone(),
        topics: k.topics.clone(),
        group: t.group.clone(),
        starting_position: k.starting_position.clone(),
        ordered: k.ordering != "none",
        batch_size: spec.batch_size.unwrap_or(100).max(1) as usize,
        batch_window: Duration::from_millis(spec.batch_window_ms.unwrap_or(500) as u64),
    })
}

impl TriggerService {
    pub fn new(cfg: TriggerConfig) -> Result<Arc<TriggerService>, String> {
        let client = Client::from_config(Config {
            secret: Some(cfg.secret.clone()),
            ..Config::new(cfg.endpoints.clone())
        })
        .map_err(|e| format!("trigger client: {e}"))?;
        let client = Arc::new(client);
        Ok(Arc::new(TriggerService {
            sink: Arc::new(ControllerSink::new(client.clone())),
            client,
            cfg,
            running: Mutex::new(HashMap::new()),
        }))
    }

    /// Follows the mappings until `stop`; then stops every source.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut poll = tokio::time::interval(self.cfg.poll);
        let mut report = tokio::time::interval(self.cfg.report);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = poll.tick() => self.reconcile().await,
                _ = report.tick() => self.report().await,
            }
        }
        for (_, r) in self.running.lock().expect("lock").drain() {
            r.token.cancel();
        }
    }

    async fn reconcile(self: &Arc<Self>) {
        let res = self
            .client
            .call(|c| async move {
                c.trigger_control()
                    .mappings(pb::ListTriggersRequest::default())
                    .await
            })
            .await;
        let list = match res {
            Ok(r) => r.into_inner().triggers,
            Err(e) => {
                // Keep running what runs: the sink backs off on its own.
                tracing::warn!("reading the trigger mappings: {}", e.message());
                return;
            }
        };
        let wanted: HashMap<String, KafkaMapping> = list
            .iter()
            .filter(|t| t.spec.as_ref().is_some_and(|s| s.enabled))
            .filter_map(|t| kafka_mapping(t).map(|m| (t.id.clone(), m)))
            .collect();
        let mut running = self.running.lock().expect("lock");
        running.retain(|id, r| {
            let keep = wanted.get(id).is_some_and(|m| m.revision == r.revision);
            if !keep {
                tracing::info!(mapping = %id, "stopping the consumer (mapping disabled, changed or deleted)");
                r.token.cancel();
            }
            keep
        });
        for (id, m) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            tracing::info!(mapping = %id, function = %m.function, topics = ?m.topics, "starting a consumer");
            let token = CancellationToken::new();
            let rt = Arc::new(Runtime::default());
            running.insert(
                id,
                Running {
                    revision: m.revision.clone(),
                    token: token.clone(),
                    rt: rt.clone(),
                    topics: m.topics.clone(),
                },
            );
            let this = self.clone();
            tokio::spawn(async move { this.supervise(m, rt, token).await });
        }
    }

    /// Runs one mapping's source, starting it again after a failure.
    async fn supervise(
        self: Arc<Self>,
        m: KafkaMapping,
        rt: Arc<Runtime>,
        token: CancellationToken,
    ) {
        while !token.is_cancelled() {
            match KafkaSource::new(m.clone(), self.cfg.max_payload_bytes) {
                Err(e) => {
                    *rt.failed.lock().expect("lock") = Some(e);
                }
                Ok(mut src) => {
                    *rt.shared.lock().expect("lock") = Some(src.shared.clone());
                    *rt.consumer.lock().expect("lock") = Some(src.consumer.clone());
                    *rt.failed.lock().expect("lock") = None;
                    let r = crate::run(
                        &mut src,
                        &*self.sink,
                        &rt.counters,
                        Backoff::default(),
                        &token,
                    )
                    .await;
                    match r {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(mapping = %m.id, "the source stopped: {e}");
                            *rt.failed.lock().expect("lock") = Some(e.to_string());
                        }
                    }
                }
            }
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(self.cfg.restart_wait) => {}
            }
        }
    }

    /// What every running mapping shows, to the controllers.
    async fn report(&self) {
        let snapshot: Vec<(String, String, Arc<Runtime>, Vec<String>)> = self
            .running
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, r)| {
                (
                    id.clone(),
                    r.revision.clone(),
                    r.rt.clone(),
                    r.topics.clone(),
                )
            })
            .collect();
        if snapshot.is_empty() {
            return;
        }
        let mut reports = Vec::new();
        for (id, revision, rt, _topics) in snapshot {
            let shared = rt.shared.lock().expect("lock").clone();
            let consumer = rt.consumer.lock().expect("lock").clone();
            let mut failed = rt.failed.lock().expect("lock").clone();
            if failed.is_none() {
                failed = shared
                    .as_ref()
                    .and_then(|s| s.error.lock().expect("lock").clone());
            }
            let mut partitions = Vec::new();
            if let (Some(s), Some(c)) = (shared, consumer) {
                let assigned: Vec<(String, i32)> =
                    s.assigned.lock().expect("lock").iter().cloned().collect();
                let committed = s.committed.lock().expect("lock").clone();
                let marks = tokio::task::spawn_blocking(move || {
                    use rdkafka::consumer::Consumer;
                    assigned
                        .into_iter()
                        .map(|(t, p)| {
                            let hw = c
                                .fetch_watermarks(&t, p, Duration::from_millis(500))
                                .map(|(_, h)| h)
                                .unwrap_or(-1);
                            (t, p, hw)
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                for (t, p, hw) in marks {
                    let c = committed.get(&(t.clone(), p)).copied().unwrap_or(-1);
                    partitions.push(pb::PartitionStatus {
                        topic: t,
                        partition: p,
                        committed: c,
                        high_watermark: hw,
                        lag: 0,
                    });
                }
            }
            let acked = rt.counters.acked.load(Ordering::Relaxed);
            reports.push(pb::MappingReport {
                id,
                revision,
                failed: failed.is_some(),
                reason: failed.clone().unwrap_or_default(),
                last_result: match &failed {
                    Some(_) => "PROBLEM".into(),
                    None => format!("OK ({acked} batches accepted by this instance)"),
                },
                partitions,
            });
        }
        let req = pb::ReportRequest {
            instance: self.cfg.instance.clone(),
            mappings: reports,
        };
        if let Err(e) = self
            .client
            .call(|c| {
                let req = req.clone();
                async move { c.trigger_control().report(req).await }
            })
            .await
        {
            tracing::warn!("reporting trigger status: {}", e.message());
        }
    }

    /// Prometheus text: the source counters, lag per partition, duplicates.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let running = self.running.lock().expect("lock");
        for (id, r) in running.iter() {
            r.rt.counters.render(&format!("kafka:{id}"), &mut out);
            if let Some(s) = r.rt.shared.lock().expect("lock").as_ref() {
                let _ = writeln!(
                    out,
                    "nubo_trigger_partitions_assigned{{source=\"kafka:{id}\"}} {}",
                    s.assigned.lock().expect("lock").len()
                );
            }
        }
        let _ = writeln!(
            out,
            "nubo_trigger_duplicates_total {}",
            self.sink.duplicates.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "nubo_trigger_mappings_running {}", running.len());
        out
    }
}
