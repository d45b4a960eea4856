//! Function logs kept on the worker: per function, bounded (oldest lines go
//! first), read by the controllers for `nubo logs`. With a directory they
//! also go to disk (one JSON-lines file per function, rotated at the same
//! byte bound, written by a background thread off the invoke path) and are
//! loaded back when the worker restarts.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub timestamp_ms: u64,
    pub seq: u64,
    pub request_id: String,
    pub version: String,
    pub message: String,
}

struct FunctionLog {
    lines: VecDeque<Line>,
    bytes: usize,
}

pub struct LogStore {
    max_lines: usize,
    max_bytes: usize,
    inner: Mutex<(u64, HashMap<String, FunctionLog>)>,
    /// Lines on their way to disk, when persisted.
    disk: Option<std::sync::mpsc::SyncSender<DiskBatch>>,
    /// Invocations whose lines did not go to disk (the writer was behind by
    /// `DISK_QUEUE` of them); they are still kept in memory.
    disk_dropped: std::sync::atomic::AtomicU64,
}

/// Invocations' lines waiting for the writer thread, at most: what
/// functions print must not grow the worker's memory without bound when
/// the disk is slower than they are.
pub const DISK_QUEUE: usize = 4096;

/// Work for the writer thread.
enum DiskBatch {
    /// One invocation's lines.
    Lines(String, Vec<Line>),
    /// Answer once everything sent before is written.
    Flush(std::sync::mpsc::SyncSender<()>),
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl LogStore {
    pub fn new(max_lines: usize, max_bytes: usize) -> LogStore {
        LogStore {
            max_lines,
            max_bytes,
            inner: Mutex::new((0, HashMap::new())),
            disk: None,
            disk_dropped: Default::default(),
        }
    }

    /// A store persisted under `dir`: loads what a previous run wrote (its
    /// newest lines, within the bounds), then writes every new line there.
    pub fn open(dir: &Path, max_lines: usize, max_bytes: usize) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let mut store = LogStore::new(max_lines, max_bytes);
        let mut top = 0;
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(function) = name.strip_suffix(".jsonl") else {
                continue;
            };
            // The rotated file holds the older lines.
            for file in [dir.join(format!("{name}.1")), entry.path()] {
                let Ok(text) = std::fs::read_to_string(&file) else {
                    continue;
                };
                // A torn last line (a crash mid-write) is skipped.
                let lines: Vec<Line> = text
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect();
                top = lines.iter().map(|l| l.seq).max().unwrap_or(0).max(top);
                store.insert(function, lines);
            }
        }
        store.inner.lock().expect("lock poisoned").0 = top;
        let (tx, rx) = std::sync::mpsc::sync_channel::<DiskBatch>(DISK_QUEUE);
        let dir = dir.to_path_buf();
        // A named thread, not a task: file writes block. It ends when the
        // store (the only sender) goes; shutdown waits for it with `flush`.
        std::thread::Builder::new()
            .name("nubo-log-writer".into())
            .spawn(move || write_loop(&dir, max_bytes, rx))?;
        store.disk = Some(tx);
        Ok(store)
    }

    /// Appends the lines of one invocation.
    pub fn append(&self, function: &str, version: &str, request_id: &str, lines: &[String]) {
        let ts = now_ms();
        let new: Vec<Line> = {
            let mut g = self.inner.lock().expect("lock poisoned");
            let seq = &mut g.0;
            lines
                .iter()
                .map(|l| {
                    *seq += 1;
                    Line {
                        timestamp_ms: ts,
                        seq: *seq,
                        request_id: request_id.to_string(),
                        version: version.to_string(),
                        message: l.clone(),
                    }
                })
                .collect()
        };
        if let Some(disk) = &self.disk {
            // Never blocks the invoke path: a full queue drops this
            // invocation's lines from the disk copy only.
            let batch = DiskBatch::Lines(function.to_string(), new.clone());
            if let Err(std::sync::mpsc::TrySendError::Full(_)) = disk.try_send(batch) {
                let n = self
                    .disk_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n.is_power_of_two() || n == 0 {
                    tracing::warn!(
                        invocations = n + 1,
                        "function log writer is behind: lines kept in memory only"
                    );
                }
            }
        }
        self.insert(function, new);
    }

    /// Waits (up to `wait`) until every line appended so far is on disk:
    /// a worker shutting down calls it last.
    pub fn flush(&self, wait: std::time::Duration) -> bool {
        let Some(disk) = &self.disk else {
            return true;
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        disk.send(DiskBatch::Flush(tx)).is_ok() && rx.recv_timeout(wait).is_ok()
    }

    fn insert(&self, function: &str, lines: Vec<Line>) {
        let mut g = self.inner.lock().expect("lock poisoned");
        let log = g.1.entry(function.to_string()).or_insert(FunctionLog {
            lines: VecDeque::new(),
            bytes: 0,
        });
        for l in lines {
            log.bytes += l.message.len();
            log.lines.push_back(l);
        }
        while log.lines.len() > self.max_lines || log.bytes > self.max_bytes {
            match log.lines.pop_front() {
                Some(l) => log.bytes -= l.message.len(),
                None => break,
            }
        }
    }

    /// Lines of `function` at or after `start_ms`, oldest first, at most
    /// `limit` (the newest ones when more match).
    pub fn read(&self, function: &str, start_ms: u64, limit: usize) -> Vec<Line> {
        let g = self.inner.lock().expect("lock poisoned");
        let Some(log) = g.1.get(function) else {
            return Vec::new();
        };
        let matching: Vec<&Line> = log
            .lines
            .iter()
            .filter(|l| l.timestamp_ms >= start_ms)
            .collect();
        let skip = matching.len().saturating_sub(limit);
        matching.into_iter().skip(skip).cloned().collect()
    }
}

/// Appends lines to `<dir>/<function>.jsonl`, moving a file past
/// `max_bytes` to `.jsonl.1` (replacing the older one), so each function
/// keeps at most twice the bound on disk. Not fsynced: logs are best
/// effort across a power loss, kept across a process restart.
fn write_loop(dir: &Path, max_bytes: usize, rx: std::sync::mpsc::Receiver<DiskBatch>) {
    let mut warned = false;
    while let Ok(work) = rx.recv() {
        let (function, lines) = match work {
            DiskBatch::Lines(f, l) => (f, l),
            DiskBatch::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let path = dir.join(format!("{function}.jsonl"));
        let mut buf = Vec::new();
        for l in &lines {
            if serde_json::to_writer(&mut buf, l).is_ok() {
                buf.push(b'\n');
            }
        }
        let r = (|| {
            if std::fs::metadata(&path)
                .map(|m| m.len() as usize + buf.len() > max_bytes)
                .unwrap_or(false)
            {
                std::fs::rename(&path, dir.join(format!("{function}.jsonl.1")))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?
                .write_all(&buf)
        })();
        match r {
            Err(e) if !warned => {
                tracing::warn!("writing function logs to {}: {e}", path.display());
                warned = true;
            }
            Ok(()) => warned = false,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_function_and_filtered_by_time() {
        let s = LogStore::new(5, 1 << 20);
        let lines: Vec<String> = (0..8).map(|i| format!("l{i}")).collect();
        s.append("f", "1", "r1", &lines);
        s.append("g", "1", "r2", &["other".to_string()]);
        let got = s.read("f", 0, 100);
        assert_eq!(got.len(), 5, "only the newest 5 lines are kept");
        assert_eq!(got[0].message, "l3");
        assert_eq!(got[4].message, "l7");
        assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(s.read("f", 0, 2).len(), 2);
        assert_eq!(s.read("f", 0, 2)[1].message, "l7");
        assert!(s.read("f", now_ms() + 10_000, 100).is_empty());
        assert_eq!(s.read("g", 0, 100)[0].request_id, "r2");
        let b = LogStore::new(1000, 10);
        b.append("f", "1", "r", &["0123456789".into(), "abcdef".into()]);
        assert_eq!(b.read("f", 0, 10).len(), 1, "byte bound drops the oldest");
    }

    fn wait_for_file(p: &Path, lines: usize) {
        for _ in 0..200 {
            if std::fs::read_to_string(p).is_ok_and(|t| t.lines().count() >= lines) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} never got {lines} lines", p.display());
    }

    /// Lines survive a restart of the store, rotation keeps the disk
    /// bounded, sequence numbers keep growing, and a torn line is skipped.
    #[test]
    fn persisted_lines_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = LogStore::open(dir.path(), 100, 200).unwrap();
            s.append("f", "1", "r1", &["START".into(), "hello".into()]);
            s.append("g", "2", "r2", &["other".into()]);
            assert!(s.flush(std::time::Duration::from_secs(5)));
            assert_eq!(
                std::fs::read_to_string(dir.path().join("f.jsonl"))
                    .unwrap()
                    .lines()
                    .count(),
                2,
                "flushed: on disk"
            );
            wait_for_file(&dir.path().join("g.jsonl"), 1);
        }
        let s = LogStore::open(dir.path(), 100, 200).unwrap();
        let f = s.read("f", 0, 100);
        assert_eq!(
            f.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
            vec!["START", "hello"]
        );
        assert_eq!(f[0].request_id, "r1");
        assert_eq!(s.read("g", 0, 100)[0].version, "2");
        s.append("f", "1", "r3", &["after".into()]);
        let seqs: Vec<u64> = s.read("f", 0, 100).iter().map(|l| l.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        // Rotation: many lines past 200 bytes leave a .1 file and the
        // newest lines in memory after another restart.
        for i in 0..20 {
            s.append("f", "1", "r", &[format!("line {i:02}")]);
        }
        wait_for_file(&dir.path().join("f.jsonl.1"), 1);
        drop(s);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("f.jsonl"))
            .unwrap();
        f.write_all(b"{\"timestamp_ms\":1,\"se").unwrap();
        let s = LogStore::open(dir.path(), 100, 200).unwrap();
        let f = s.read("f", 0, 100);
        assert_eq!(f.last().unwrap().message, "line 19");
        let on_disk: u64 = ["f.jsonl", "f.jsonl.1"]
            .iter()
            .map(|n| std::fs::metadata(dir.path().join(n)).unwrap().len())
            .sum();
        assert!(on_disk <= 2 * 200 + 100, "{on_disk} bytes on disk");
    }
}
