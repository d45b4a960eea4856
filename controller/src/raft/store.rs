//! RocksDB-backed Raft storage: the log store and the state machine store
//! behind openraft's v2 storage traits.
//!
//! Column families:
//! - `logs`: log entries, key = index (big-endian u64), value = JSON entry;
//! - `meta`: vote, committed log id, last purged log id;
//! - `sm`: the last snapshot (meta + data), so a restart begins from it;
//! - `blobs`: code packages by sha256. They travel outside the log (see
//!   `raft::blobs`) and are not part of snapshots: a
//!   node missing one fetches it from a peer.
//!
//! The registry itself lives in memory (it is small: 10,000 functions are a
//! few MB) and is rebuilt on restart from the last snapshot plus a replay of
//! the committed log, which openraft drives because `save_committed` is
//! implemented.

// openraft's `StorageError` is large, and the trait signatures that return
// it are openraft's; boxing it in our helpers would only move the problem.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::raft::types::{NodeId, TypeConfig};
use crate::registry::model::{ApplyResult, Outcome};
use crate::registry::state::Registry;

type SErr = StorageError<NodeId>;

const CF_LOGS: &str = "logs";
const CF_META: &str = "meta";
const CF_SM: &str = "sm";
const CF_BLOBS: &str = "blobs";

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> SErr {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn read_logs_err(e: impl std::error::Error + 'static) -> SErr {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_logs_err(e: impl std::error::Error + 'static) -> SErr {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn idx_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index a `logs` key encodes. The key comes from disk: a key of the
/// wrong length is corruption, reported as an error rather than a panic.
fn log_index(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::CorruptKey {
        cf: CF_LOGS,
        len: key.len(),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Opens (or creates) the controller's RocksDB.
pub fn open_db(path: &Path) -> Result<Arc<DB>, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Small memtables: the log is purged after each snapshot and the other
    // families are small or write-once, so RocksDB's 64 MB defaults would
    // only inflate resident memory.
    let cfs = [CF_LOGS, CF_META, CF_SM, CF_BLOBS].into_iter().map(|n| {
        let mut o = Options::default();
        o.set_write_buffer_size(if n == CF_META { 1 << 20 } else { 8 << 20 });
        o.set_max_write_buffer_number(2);
        ColumnFamilyDescriptor::new(n, o)
    });
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Arc::new(db))
}

/// Durability knob: `sync = true` fsyncs every log append and vote (the
/// default; Raft's guarantees assume it). Tests may turn it off for speed.
#[derive(Debug, Clone, Copy)]
pub struct Durability {
    pub sync: bool,
}

fn write_opts(d: Durability) -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(d.sync);
    wo
}

// ---------------------------------------------------------------- log store

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    durability: Durability,
    /// Appends waiting for the WAL fsync (group commit, see `append`).
    flusher: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
    /// The newest entries, decoded: replication to each follower reads
    /// these instead of reading and decoding them back from RocksDB.
    tail: Arc<std::sync::Mutex<TailCache>>,
}

/// The log's newest entries (contiguous up to the last one), bounded by
/// count and encoded size.
#[derive(Default)]
struct TailCache {
    entries: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    bytes: usize,
}

const TAIL_CACHE_ENTRIES: usize = 4096;
const TAIL_CACHE_BYTES: usize = 64 << 20;

impl TailCache {
    fn insert(&mut self, e: Entry<TypeConfig>, size: usize) {
        if let Some((_, old)) = self.entries.insert(e.log_id.index, (e, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.entries.len() > TAIL_CACHE_ENTRIES || self.bytes > TAIL_CACHE_BYTES {
            match self.entries.pop_first() {
                Some((_, (_, n))) => self.bytes -= n,
                None => break,
            }
        }
    }

    /// Drops entries at `from` and after (a truncated log).
    fn truncate(&mut self, from: u64) {
        for (_, (_, n)) in self.entries.split_off(&from) {
            self.bytes -= n;
        }
    }

    /// Drops entries up to and including `upto` (a purged log).
    fn purge(&mut self, upto: u64) {
        let keep = self.entries.split_off(&(upto + 1));
        for (_, (_, n)) in std::mem::replace(&mut self.entries, keep) {
            self.bytes -= n;
        }
    }

    /// The entries in `range` when the cache holds them all: it holds the
    /// log's tail, so any range starting at or after its first entry.
    fn get(&self, start: u64, range: &impl RangeBounds<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let (&first, _) = self.entries.first_key_value()?;
        if start < first {
            return None;
        }
        Some(
            self.entries
                .range(start..)
                .take_while(|(i, _)| range.contains(*i))
                .map(|(_, (e, _))| e.clone())
                .collect(),
        )
    }
}

impl LogStore {
    pub fn new(db: Arc<DB>, durability: Durability) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
        // A weak handle: the DB must close where its last owner drops it
        // (the node's shutdown), never late in this thread; a RocksDB
        // closing while the process exits aborts it.
        let wal = Arc::downgrade(&db);
        // Group commit: openraft's core must not wait for an fsync per
        // append, or it serializes every write behind the disk. Appends go
        // to RocksDB unsynced (visible at once), then this thread fsyncs
        // the WAL once for everything queued meanwhile and only then
        // reports them flushed; openraft counts an entry toward the commit
        // quorum only after that report.
        std::thread::Builder::new()
            .name("nubo-wal-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    let res = match wal.upgrade() {
                        Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
                        None => Err("the store is closed".to_string()),
                    };
                    for cb in batch {
                        cb.log_io_completed(res.clone().map_err(std::io::Error::other));
                    }
                }
            })
            .expect("spawning the WAL sync thread");
        LogStore {
            db,
            durability,
            flusher: tx,
            tail: Arc::default(),
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, SErr> {
        let v = self
            .db
            .get_cf(self.cf(CF_META), key)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        match v {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e)),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T, sync: bool) -> Result<(), SErr> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let mut wo = WriteOptions::default();
        wo.set_sync(sync && self.durability.sync);
        self.db
            .put_cf_opt(self.cf(CF_META), key, bytes, &wo)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, SErr> {
        let mut it = self.db.iterator_cf(self.cf(CF_LOGS), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(read_logs_err)?;
                let e: Entry<TypeConfig> = serde_json::from_slice(&v).map_err(read_logs_err)?;
                Ok(Some(e.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        if let Some(hit) = self.tail.lock().expect("lock").get(start, &range) {
            return Ok(hit);
        }
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_LOGS),
            IteratorMode::From(&idx_key(start), Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(read_logs_err)?;
            let idx = log_index(&k).map_err(read_logs_err)?;
            if !range.contains(&idx) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(read_logs_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta("last_purged")?;
        let last = self.last_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        self.put_meta("vote", vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        // Not fsynced: losing it only means replaying a little more on restart.
        self.put_meta("committed", &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>("committed")?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_LOGS);
        let mut cached = Vec::new();
        for e in entries {
            let v = serde_json::to_vec(&e).map_err(write_logs_err)?;
            batch.put_cf(cf, idx_key(e.log_id.index), &v);
            cached.push((e, v.len()));
        }
        {
            let mut tail = self.tail.lock().expect("lock");
            for (e, n) in cached {
                tail.insert(e, n);
            }
        }
        // Written without fsync so the core can go on; durability comes
        // from the WAL sync thread before the callback fires.
        if let Err(e) = self.db.write_opt(batch, &WriteOptions::default()) {
            let msg = e.to_string();
            callback.log_io_completed(Err(std::io::Error::other(msg)));
            return Err(write_logs_err(e));
        }
        if self.durability.sync {
            if let Err(std::sync::mpsc::SendError(cb)) = self.flusher.send(callback) {
                cb.log_io_completed(Err(std::io::Error::other("WAL sync thread stopped")));
            }
        } else {
            callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.tail.lock().expect("lock").truncate(log_id.index);
        let cf = self.cf(CF_LOGS);
        self.db
            .delete_range_cf_opt(
                cf,
                idx_key(log_id.index),
                idx_key(u64::MAX),
                &write_opts(self.durability),
            )
            .map_err(write_logs_err)?;
        // delete_range excludes the end key itself.
        self.db
            .delete_cf(cf, idx_key(u64::MAX))
            .map_err(write_logs_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        // Record the purge point first: a crash between the two leaves extra
        // entries, never a gap.
        self.put_meta("last_purged", &Some(log_id), true)?;
        self.tail.lock().expect("lock").purge(log_id.index);
        self.db
            .delete_range_cf(self.cf(CF_LOGS), idx_key(0), idx_key(log_id.index + 1))
            .map_err(write_logs_err)
    }
}

// ------------------------------------------------------------ state machine

/// What the API reads: the registry and how far it has applied.
#[derive(Debug, Default)]
pub struct SmState {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, openraft::BasicNode>,
    pub registry: Registry,
}

#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, openraft::BasicNode>,
    registry: Registry,
}

struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    pub state: Arc<RwLock<SmState>>,
    durability: Durability,
}

impl StateMachineStore {
    /// Opens the state machine, loading the last snapshot if there is one.
    pub fn new(db: Arc<DB>, durability: Durability) -> Result<Self, StoreError> {
        let sm = StateMachineStore {
            db,
            state: Arc::new(RwLock::new(SmState::default())),
            durability,
        };
        if let Some(snap) = sm.read_stored_snapshot()? {
            let payload: SnapshotPayload =
                serde_json::from_slice(&snap.data).map_err(|source| StoreError::Decode {
                    what: "snapshot",
                    source,
                })?;
            let mut st = sm.state.write().expect("lock");
            st.last_applied = payload.last_applied;
            st.last_membership = payload.last_membership;
            st.registry = payload.registry;
        }
        Ok(sm)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn read_stored_snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        let get = |key: &str| {
            self.db
                .get_cf(self.cf(CF_SM), key)
                .map_err(|source| StoreError::Rocks {
                    op: "read snapshot",
                    source,
                })
        };
        let (Some(meta), Some(data)) = (get("snapshot_meta")?, get("snapshot_data")?) else {
            return Ok(None);
        };
        let meta = serde_json::from_slice(&meta).map_err(|source| StoreError::Decode {
            what: "snapshot meta",
            source,
        })?;
        Ok(Some(StoredSnapshot { meta, data }))
    }

    /// Reads a code blob.
    pub fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(CF_BLOBS), sha256)
            .map_err(|source| StoreError::Rocks {
                op: "read blob",
                source,
            })
    }

    /// Stores a code blob durably (idempotent: content-addressed).
    pub fn put_blob(&self, sha256: &str, data: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(
                self.cf(CF_BLOBS),
                sha256,
                data,
                &write_opts(self.durability),
            )
            .map_err(|source| StoreError::Rocks {
                op: "write blob",
                source,
            })
    }

    pub fn has_local_blob(&self, sha256: &str) -> Result<bool, StoreError> {
        self.db
            .get_pinned_cf(self.cf(CF_BLOBS), sha256)
            .map(|v| v.is_some())
            .map_err(|source| StoreError::Rocks {
                op: "read blob",
                source,
            })
    }

    pub fn delete_blob(&self, sha256: &str) -> Result<(), StoreError> {
        self.db
            .delete_cf(self.cf(CF_BLOBS), sha256)
            .map_err(|source| StoreError::Rocks {
                op: "delete blob",
                source,
            })
    }

    /// The sha256 of every blob stored on this node.
    pub fn local_blobs(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_BLOBS), IteratorMode::Start) {
            let (k, _) = item.map_err(|source| StoreError::Rocks {
                op: "list blobs",
                source,
            })?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }

    fn encode_snapshot(
        &self,
    ) -> Result<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>), SErr> {
        // Clone under the lock, encode outside it: applies wait only for
        // the copy, not for the JSON encoding.
        let payload = {
            let st = self.state.read().expect("lock");
            SnapshotPayload {
                last_applied: st.last_applied,
                last_membership: st.last_membership.clone(),
                registry: st.registry.clone(),
            }
        };
        let data = serde_json::to_vec(&payload)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let st = &payload;
        let snapshot_id = match st.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, data.len()),
            None => format!("none-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: st.last_applied,
            last_membership: st.last_membership.clone(),
            snapshot_id,
        };
        Ok((meta, data))
    }

    fn persist_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: &[u8],
    ) -> Result<(), SErr> {
        // Meta as JSON, data as raw bytes (JSON would spell each byte out
        // as a number), in one atomic batch.
        let meta_bytes = serde_json::to_vec(meta)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_SM), "snapshot_meta", meta_bytes);
        batch.put_cf(self.cf(CF_SM), "snapshot_data", data);
        self.db
            .write_opt(batch, &write_opts(self.durability))
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let (meta, data) = self.encode_snapshot()?;
        self.persist_snapshot(&meta, &data)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        SErr,
    > {
        let st = self.state.read().expect("lock");
        Ok((st.last_applied, st.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        {
            let mut st = self.state.write().expect("lock");
            for entry in entries {
                st.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => results.push(Ok(Outcome::Done)),
                    EntryPayload::Normal(cmd) => {
                        results.push(st.registry.apply(entry.log_id.index, cmd));
                    }
                    EntryPayload::Membership(m) => {
                        st.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        results.push(Ok(Outcome::Done));
                    }
                }
            }
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let payload: SnapshotPayload = serde_json::from_slice(&data).map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        {
            let mut st = self.state.write().expect("lock");
            st.last_applied = meta.last_log_id;
            st.last_membership = meta.last_membership.clone();
            st.registry = payload.registry;
        }
        self.persist_snapshot(meta, &data)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let stored = self
            .read_stored_snapshot()
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail cache serves only ranges it holds, and truncation and
    /// purging keep it the log's contiguous tail.
    #[test]
    fn tail_cache_holds_the_contiguous_tail() {
        let ent = |i: u64| Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Blank,
        };
        let mut c = TailCache::default();
        for i in 5..10 {
            c.insert(ent(i), 10);
        }
        assert!(c.get(4, &(4..8)).is_none(), "before the cache: from disk");
        let idx = |v: Vec<Entry<TypeConfig>>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
        assert_eq!(idx(c.get(6, &(6..8)).expect("hit")), vec![6, 7]);
        assert_eq!(idx(c.get(8, &(8..)).expect("hit")), vec![8, 9]);
        c.truncate(8);
        assert_eq!(idx(c.get(6, &(6..)).expect("hit")), vec![6, 7]);
        c.purge(6);
        assert!(c.get(6, &(6..)).is_none());
        assert_eq!((c.entries.len(), c.bytes), (1, 10));
        for i in 8..(8 + TAIL_CACHE_ENTRIES as u64 + 5) {
            c.insert(ent(i), 1);
        }
        assert_eq!(c.entries.len(), TAIL_CACHE_ENTRIES);
        assert_eq!(c.bytes, TAIL_CACHE_ENTRIES);
    }
}
