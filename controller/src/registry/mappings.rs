//! Event source mappings ("triggers"): what outside source feeds which
//! function, replicated in the registry like functions are, and the last
//! status trigger instances reported for each. Pure data and validation;
//! the trigger role (`trigger/`) runs them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::RegistryError;
use nubo_proto::Reason;

/// Lambda's defaults and ranges for Kafka event source mappings.
pub const DEFAULT_BATCH_SIZE: u32 = 100;
pub const MAX_BATCH_SIZE: u32 = 10_000;
pub const DEFAULT_BATCH_WINDOW_MS: u32 = 500;
pub const MAX_BATCH_WINDOW_MS: u32 = 300_000;
/// Most topics one mapping reads.
pub const MAX_TOPICS: usize = 16;
/// Most brokers one mapping lists.
pub const MAX_BROKERS: usize = 16;
/// Partitions whose status a report keeps per mapping.
pub const MAX_REPORTED_PARTITIONS: usize = 1024;
/// Longest reason / last result kept.
pub const MAX_STATUS_TEXT: usize = 1024;

/// Where a mapping starts reading when its group has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartingPosition {
    Latest,
    Earliest,
    /// The first record at or after this time (ms since the epoch).
    Timestamp(u64),
}

impl StartingPosition {
    pub fn parse(s: &str) -> Result<StartingPosition, RegistryError> {
        match s {
            "" | "latest" | "LATEST" => Ok(StartingPosition::Latest),
            "earliest" | "TRIM_HORIZON" | "EARLIEST" => Ok(StartingPosition::Earliest),
            other => match other.strip_prefix("timestamp:").map(|t| t.parse::<u64>()) {
                Some(Ok(ms)) => Ok(StartingPosition::Timestamp(ms)),
                _ => Err(invalid(format!(
                    "starting position {other:?}: use latest, earliest or timestamp:MS (milliseconds since the epoch)"
                ))),
            },
        }
    }

    pub fn render(&self) -> String {
        match self {
            StartingPosition::Latest => "latest".into(),
            StartingPosition::Earliest => "earliest".into(),
            StartingPosition::Timestamp(ms) => format!("timestamp:{ms}"),
        }
    }
}

/// How batches of one partition run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ordering {
    /// One at a time, in offset order (Lambda's behaviour): a failing
    /// batch blocks its partition's later ones through its retries.
    Partition,
    /// As fast as the function's concurrency allows, in any order.
    None,
}

impl Ordering {
    pub fn parse(s: &str) -> Result<Ordering, RegistryError> {
        match s {
            "" | "partition" => Ok(Ordering::Partition),
            "none" => Ok(Ordering::None),
            other => Err(invalid(format!(
                "ordering {other:?}: use partition (one batch of a partition at a time, in order) or none"
            ))),
        }
    }

    pub fn render(&self) -> &'static str {
        match self {
            Ordering::Partition => "partition",
            Ordering::None => "none",
        }
    }
}

/// A failed batch's destination after its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnFailure {
    /// The function's own dead-letter settings apply.
    Default,
    /// A function receives Lambda's destination record.
    Function(String),
    /// A Kafka topic receives it: `kafka://HOST:PORT/TOPIC`.
    Kafka { brokers: String, topic: String },
}

impl OnFailure {
    pub fn parse(s: &str) -> Result<OnFailure, RegistryError> {
        if s.is_empty() {
            return Ok(OnFailure::Default);
        }
        if let Some(rest) = s.strip_prefix("kafka://") {
            let (brokers, topic) = rest.split_once('/').ok_or_else(|| {
                invalid(format!(
                    "on-failure {s:?}: a Kafka destination is kafka://HOST:PORT/TOPIC"
                ))
            })?;
            broker_list(&[brokers.to_string()])?;
            topic_name(topic)?;
            return Ok(OnFailure::Kafka {
                brokers: brokers.into(),
                topic: topic.into(),
            });
        }
        crate::registry::validate::function_name(s).map_err(|e| {
            invalid(format!(
                "on-failure {s:?} is neither a function name nor kafka://HOST:PORT/TOPIC: {e}"
            ))
        })?;
        Ok(OnFailure::Function(s.into()))
    }

    pub fn render(&self) -> String {
        match self {
            OnFailure::Default => String::new(),
            OnFailure::Function(f) => f.clone(),
            OnFailure::Kafka { brokers, topic } => format!("kafka://{brokers}/{topic}"),
        }
    }
}

/// What a Kafka mapping reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaSpec {
    pub brokers: Vec<String>,
    pub topics: Vec<String>,
    /// The consumer group; the mapping's id when not given.
    pub group: String,
    pub starting_position: StartingPosition,
    pub ordering: Ordering,
}

/// One event source mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub id: String,
    pub function: String,
    /// `$LATEST` (empty), a version or an alias.
    pub qualifier: String,
    pub kafka: KafkaSpec,
    pub batch_size: u32,
    pub batch_window_ms: u32,
    pub on_failure: OnFailure,
    pub enabled: bool,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Changes with every update (the log index), for optimistic updates
    /// and so trigger instances see that they must restart a consumer.
    pub revision: String,
}

/// One partition as a trigger instance last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// The next offset the group will read (-1: none committed).
    pub committed: i64,
    pub high_watermark: i64,
}

/// A mapping's status, as the instance running it reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingStatus {
    pub id: String,
    /// The mapping revision the instance runs.
    pub revision: String,
    /// Running, or failing with `reason`.
    pub failed: bool,
    pub reason: String,
    pub last_result: String,
    pub partitions: Vec<PartitionStatus>,
    pub instance: String,
    pub reported_ms: u64,
}

/// What a status line says about a mapping: its state and why.
pub fn state(m: &Mapping, status: Option<&MappingStatus>) -> (&'static str, String) {
    if !m.enabled {
        return ("Disabled", String::new());
    }
    match status {
        Some(s) if s.failed => ("Failed", s.reason.clone()),
        Some(s) if s.revision == m.revision => ("Enabled", String::new()),
        _ => (
            "Creating",
            "no trigger instance has reported this revision yet (is `nubo trigger` running?)"
                .into(),
        ),
    }
}

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::invalid(msg)
}

/// `HOST:PORT[,HOST:PORT...]`, as given (entries may hold commas).
pub fn broker_list(entries: &[String]) -> Result<Vec<String>, RegistryError> {
    let all: Vec<String> = entries
        .iter()
        .flat_map(|e| e.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if all.is_empty() {
        return Err(invalid(
            "brokers: give at least one HOST:PORT (e.g. --brokers 10.0.0.5:9092)",
        ));
    }
    if all.len() > MAX_BROKERS {
        return Err(invalid(format!(
            "brokers: {} given, at most {MAX_BROKERS}",
            all.len()
        )));
    }
    for b in &all {
        let ok = b.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_[]:".contains(c))
                && p.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(invalid(format!(
                "broker {b:?} is not HOST:PORT (e.g. 10.0.0.5:9092)"
            )));
        }
    }
    Ok(all)
}

/// Kafka's topic names: 1-249 of `[A-Za-z0-9._-]`.
pub fn topic_name(t: &str) -> Result<(), RegistryError> {
    if t.is_empty() {
        return Err(invalid("topic: the name is empty (e.g. --topic orders)"));
    }
    if t.len() > 249 || t == "." || t == ".." {
        return Err(invalid(format!(
            "topic {t:?}: Kafka topic names are 1-249 characters, not . or .."
        )));
    }
    if let Some(c) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return Err(invalid(format!(
            "topic {t:?} contains {c:?}: Kafka allows letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// Checks what a create or update asks for, field by field; the
/// registry checks that the function, qualifier and on-failure function
/// exist when it applies the command.
pub fn validate(m: &Mapping) -> Result<(), RegistryError> {
    crate::registry::validate::function_name(&m.function)?;
    crate::registry::validate::qualifier(&m.qualifier)?;
    broker_list(&m.kafka.brokers)?;
    if m.kafka.topics.is_empty() {
        return Err(invalid("topic: give at least one (--topic T)"));
    }
    if m.kafka.topics.len() > MAX_TOPICS {
        return Err(invalid(format!(
            "topics: {} given, at most {MAX_TOPICS}",
            m.kafka.topics.len()
        )));
    }
    for t in &m.kafka.topics {
        topic_name(t)?;
    }
    if m.kafka.group.is_empty() || m.kafka.group.len() > 255 {
        return Err(invalid("group: 1-255 characters"));
    }
    if !(1..=MAX_BATCH_SIZE).contains(&m.batch_size) {
        return Err(invalid(format!(
            "batch size {}: must be 1-{MAX_BATCH_SIZE} records",
            m.batch_size
        )));
    }
    if m.batch_window_ms > MAX_BATCH_WINDOW_MS {
        return Err(invalid(format!(
            "batch window {} ms: must be 0-{MAX_BATCH_WINDOW_MS} ms (300 s)",
            m.batch_window_ms
        )));
    }
    Ok(())
}

/// A report older than this (by the reporting controller's clock, carried
/// in the command) no longer counts: its instance is gone or stuck.
pub const REPORT_STALE_MS: u64 = 15_000;

/// Mappings and their reported status, inside the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mappings {
    pub by_id: BTreeMap<String, Mapping>,
    /// Per mapping, per instance: several instances share a mapping's
    /// partitions, each reporting its own.
    pub status: BTreeMap<String, BTreeMap<String, MappingStatus>>,
}

/// The instances' reports of one mapping as one status: every fresh
/// report's partitions, failed if any instance is, the newest last result.
pub fn merged(reports: Option<&BTreeMap<String, MappingStatus>>) -> Option<MappingStatus> {
    let reports = reports?;
    let newest = reports.values().map(|r| r.reported_ms).max()?;
    let fresh: Vec<&MappingStatus> = reports
        .values()
        .filter(|r| r.reported_ms + REPORT_STALE_MS >= newest)
        .collect();
    let last = fresh.iter().max_by_key(|r| r.reported_ms)?;
    let failed = fresh.iter().find(|r| r.failed);
    let mut partitions: Vec<PartitionStatus> =
        fresh.iter().flat_map(|r| r.partitions.clone()).collect();
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    partitions.dedup_by(|a, b| a.topic == b.topic && a.partition == b.partition);
    Some(MappingStatus {
        id: last.id.clone(),
        // The oldest revision any fresh instance runs: "Enabled" only once
        // all of them run the current one.
        revision: fresh
            .iter()
            .map(|r| r.revision.clone())
            .min()
            .unwrap_or_default(),
        failed: failed.is_some(),
        reason: failed
            .map(|r| format!("{} (instance {})", r.reason, r.instance))
            .unwrap_or_default(),
        last_result: last.last_result.clone(),
        partitions,
        instance: fresh
            .iter()
            .map(|r| r.instance.as_str())
            .collect::<Vec<_>>()
            .join(","),
        reported_ms: newest,
    })
}

pub fn not_found(id: &str) -> RegistryError {
    RegistryError::not_found(format!("trigger {id} not found")).with_reason(Reason::TriggerNotFound)
}

fn clip(s: &mut String) {
    if s.len() > MAX_STATUS_TEXT {
        let mut end = MAX_STATUS_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

impl Mappings {
    /// Stores reports (bounded); reports of mappings that no longer exist
    /// are dropped.
    pub fn report(&mut self, reports: Vec<MappingStatus>) {
        for mut r in reports {
            if !self.by_id.contains_key(&r.id) {
                continue;
            }
            clip(&mut r.reason);
            clip(&mut r.last_result);
            clip(&mut r.instance);
            r.partitions.truncate(MAX_REPORTED_PARTITIONS);
            let per = self.status.entry(r.id.clone()).or_default();
            let now = r.reported_ms;
            // Instances that stopped reporting go (bounded per mapping).
            per.retain(|_, old| old.reported_ms + REPORT_STALE_MS >= now);
            per.insert(r.instance.clone(), r);
        }
    }

    /// Removes the mappings of `function`; returns their ids.
    pub fn remove_function(&mut self, function: &str) -> Vec<String> {
        let ids: Vec<String> = self
            .by_id
            .values()
            .filter(|m| m.function == function)
            .map(|m| m.id.clone())
            .collect();
        for id in &ids {
            self.by_id.remove(id);
            self.status.remove(id);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> Mapping {
        Mapping {
            id: "m1".into(),
            function: "f".into(),
            qualifier: String::new(),
            kafka: KafkaSpec {
                brokers: vec!["127.0.0.1:9092".into()],
                topics: vec!["orders".into()],
                group: "m1".into(),
                starting_position: StartingPosition::Latest,
                ordering: Ordering::Partition,
            },
            batch_size: DEFAULT_BATCH_SIZE,
            batch_window_ms: DEFAULT_BATCH_WINDOW_MS,
            on_failure: OnFailure::Default,
            enabled: true,
            created_ms: 1,
            updated_ms: 1,
            revision: "r1".into(),
        }
    }

    type Change = Box<dyn Fn(&mut Mapping)>;

    /// Each refusal names its field and says what is allowed.
    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|m| m.kafka.brokers = vec!["nohost".into()]),
                "HOST:PORT",
            ),
            (
                Box::new(|m| m.kafka.brokers = vec![]),
                "at least one HOST:PORT",
            ),
            (
                Box::new(|m| m.kafka.brokers = vec!["h:0".into()]),
                "not HOST:PORT",
            ),
            (Box::new(|m| m.kafka.topics = vec![]), "topic"),
            (Box::new(|m| m.kafka.topics = vec!["".into()]), "empty"),
            (
                Box::new(|m| m.kafka.topics = vec!["a b".into()]),
                "contains ' '",
            ),
            (Box::new(|m| m.batch_size = 0), "batch size 0"),
            (Box::new(|m| m.batch_size = 10_001), "1-10000"),
            (Box::new(|m| m.batch_window_ms = 300_001), "batch window"),
            (Box::new(|m| m.function = "a/b".into()), "function name"),
        ];
        for (f, want) in cases {
            let mut m = sample();
            f(&mut m);
            let e = validate(&m).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
        assert!(validate(&sample()).is_ok());
        // Several brokers in one comma-separated entry.
        assert_eq!(
            broker_list(&["a:1, b:2".into()]).unwrap(),
            vec!["a:1".to_string(), "b:2".into()]
        );
    }

    #[test]
    fn positions_orderings_destinations_parse() {
        assert_eq!(
            StartingPosition::parse("timestamp:1700000000000").unwrap(),
            StartingPosition::Timestamp(1_700_000_000_000)
        );
        assert!(StartingPosition::parse("yesterday")
            .unwrap_err()
            .to_string()
            .contains("latest, earliest or timestamp:MS"));
        assert_eq!(Ordering::parse("none").unwrap(), Ordering::None);
        assert!(Ordering::parse("random").is_err());
        assert_eq!(
            OnFailure::parse("kafka://127.0.0.1:9092/failed").unwrap(),
            OnFailure::Kafka {
                brokers: "127.0.0.1:9092".into(),
                topic: "failed".into()
            }
        );
        assert!(OnFailure::parse("kafka://127.0.0.1:9092")
            .unwrap_err()
            .to_string()
            .contains("kafka://HOST:PORT/TOPIC"));
        assert_eq!(
            OnFailure::parse("dlq-fn").unwrap(),
            OnFailure::Function("dlq-fn".into())
        );
    }

    #[test]
    fn state_follows_enabled_and_reports() {
        let mut m = sample();
        assert_eq!(state(&m, None).0, "Creating");
        let mut s = MappingStatus {
            id: "m1".into(),
            revision: "r1".into(),
            failed: false,
            reason: String::new(),
            last_result: "OK".into(),
            partitions: vec![],
            instance: "t1".into(),
            reported_ms: 5,
        };
        assert_eq!(state(&m, Some(&s)).0, "Enabled");
        s.failed = true;
        s.reason = "brokers unreachable: 127.0.0.1:9092".into();
        assert_eq!(state(&m, Some(&s)), ("Failed", s.reason.clone()));
        m.enabled = false;
        assert_eq!(state(&m, Some(&s)).0, "Disabled");
        // A report of an older revision is not the current state.
        m.enabled = true;
        s.failed = false;
        m.revision = "r2".into();
        assert_eq!(state(&m, Some(&s)).0, "Creating");
    }

    /// Two instances sharing a mapping: their partitions add up, one
    /// failing fails the mapping (naming it), a silent one drops out.
    #[test]
    fn reports_of_several_instances_merge() {
        let mut ms = Mappings::default();
        ms.by_id.insert("m1".into(), sample());
        let rep = |inst: &str, part: i32, at: u64, failed: bool| MappingStatus {
            id: "m1".into(),
            revision: "r1".into(),
            failed,
            reason: if failed { "boom".into() } else { String::new() },
            last_result: format!("from {inst}"),
            partitions: vec![PartitionStatus {
                topic: "orders".into(),
                partition: part,
                committed: 5,
                high_watermark: 9,
            }],
            instance: inst.into(),
            reported_ms: at,
        };
        ms.report(vec![rep("a", 0, 1_000, false), rep("b", 1, 1_500, false)]);
        let s = merged(ms.status.get("m1")).unwrap();
        assert_eq!(s.partitions.len(), 2);
        assert!(!s.failed);
        assert_eq!(s.last_result, "from b");
        ms.report(vec![rep("b", 1, 2_000, true)]);
        let s = merged(ms.status.get("m1")).unwrap();
        assert!(s.failed && s.reason.contains("instance b"), "{s:?}");
        // a stops reporting: after the stale time only b's partition stays.
        ms.report(vec![rep("b", 1, 1_000 + REPORT_STALE_MS + 1, false)]);
        let s = merged(ms.status.get("m1")).unwrap();
        assert_eq!(s.partitions.len(), 1);
        assert_eq!(ms.status["m1"].len(), 1);
        // Reports of a mapping that is gone are dropped.
        let mut gone = rep("a", 0, 9, false);
        gone.id = "nope".into();
        ms.report(vec![gone]);
        assert!(!ms.status.contains_key("nope"));
    }
}
