//! Function logs kept on the worker: per function, bounded in lines and
//! bytes (oldest lines go first), read by the controllers for `nubo logs`.
//! With a directory they also go to disk (one JSON-lines file per
//! function, rotated at the same byte bound line by line, so a file never
//! passes it, written by a background thread off the invoke path) and the
//! newest part of them is loaded back when the worker restarts.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

impl Line {
    /// What the line costs in memory, roughly: what a function controls.
    fn cost(&self) -> usize {
        self.message.len() + self.request_id.len() + self.version.len()
    }
}

/// Bytes kept of one message (the sandbox's log pipe cuts lines there
/// already; this holds for any sandbox).
pub const MAX_LINE_BYTES: usize = 256 * 1024;

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
    /// Bytes of lines waiting for the writer.
    disk_queued: std::sync::Arc<AtomicUsize>,
    /// Invocations whose lines did not go to disk (the writer was behind by
    /// `DISK_QUEUE` of them or `DISK_QUEUE_BYTES`); they are still kept in
    /// memory.
    disk_dropped: AtomicU64,
}

/// Invocations' lines waiting for the writer thread, at most, and their
/// bytes: what functions print must not grow the worker's memory without
/// bound when the disk is slower than they are.
pub const DISK_QUEUE: usize = 4096;
pub const DISK_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// Work for the writer thread.
enum DiskBatch {
    /// One invocation's lines, and their cost.
    Lines(String, Vec<Line>, usize),
    /// A function was deleted: remove its files.
    Remove(String),
    /// Answer once everything sent before is written.
    Flush(std::sync::mpsc::SyncSender<()>),
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The last `max` bytes of `path` (from a line start), read without
/// holding more than that: files of an older worker may be huge.
fn read_tail(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let from = len.saturating_sub(max as u64);
    f.seek(std::io::SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity((len - from) as usize);
    f.take(max as u64).read_to_end(&mut buf)?;
    if from > 0 {
        // The first line is (most likely) cut: start after it.
        let skip = buf
            .iter()
            .position(|b| *b == b'\n')
            .map_or(buf.len(), |i| i + 1);
        buf.drain(..skip);
    }
    Ok(buf)
}

impl LogStore {
    pub fn new(max_lines: usize, max_bytes: usize) -> LogStore {
        LogStore {
            max_lines,
            max_bytes,
            inner: Mutex::new((0, HashMap::new())),
            disk: None,
            disk_queued: Default::default(),
            disk_dropped: Default::default(),
        }
    }

    /// A store persisted under `dir`: loads what a previous run wrote (its
    /// newest lines, within the bounds, reading only the tail of each
    /// file), then writes every new line there.
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
                let Ok(text) = read_tail(&file, max_bytes) else {
                    continue;
                };
                // A torn last line (a crash mid-write) is skipped.
                let lines: Vec<Line> = text
                    .split(|b| *b == b'\n')
                    .filter_map(|l| serde_json::from_slice(l).ok())
                    .collect();
                top = lines.iter().map(|l| l.seq).max().unwrap_or(0).max(top);
                store.insert(function, lines);
            }
        }
        store.inner.lock().expect("lock poisoned").0 = top;
        let (tx, rx) = std::sync::mpsc::sync_channel::<DiskBatch>(DISK_QUEUE);
        let dir = dir.to_path_buf();
        let queued = store.disk_queued.clone();
        // A named thread, not a task: file writes block. It ends when the
        // store (the only sender) goes; shutdown waits for it with `flush`.
        std::thread::Builder::new()
            .name("nubo-log-writer".into())
            .spawn(move || write_loop(&dir, max_bytes, rx, &queued))?;
        store.disk = Some(tx);
        Ok(store)
    }

    /// Appends the lines of one invocation (its newest lines within the
    /// store's byte bound, each message within `MAX_LINE_BYTES`).
    pub fn append(&self, function: &str, version: &str, request_id: &str, lines: &[String]) {
        let ts = now_ms();
        let mut room = self.max_bytes;
        let first = lines
            .iter()
            .rposition(|l| {
                let c = l.len().min(MAX_LINE_BYTES);
                if c > room {
                    return true;
                }
                room -= c;
                false
            })
            .map_or(0, |i| i + 1);
        let new: Vec<Line> = {
            let mut g = self.inner.lock().expect("lock poisoned");
            let seq = &mut g.0;
            lines[first..]
                .iter()
                .map(|l| {
                    *seq += 1;
                    Line {
                        timestamp_ms: ts,
                        seq: *seq,
                        request_id: request_id.to_string(),
                        version: version.to_string(),
                        message: cut(l, MAX_LINE_BYTES).to_string(),
                    }
                })
                .collect()
        };
        if let Some(disk) = &self.disk {
            // Never blocks the invoke path: a full queue drops this
            // invocation's lines from the disk copy only.
            let cost: usize = new.iter().map(Line::cost).sum();
            let full = self.disk_queued.load(Ordering::Relaxed) + cost > DISK_QUEUE_BYTES;
            let sent = !full && {
                self.disk_queued.fetch_add(cost, Ordering::Relaxed);
                let batch = DiskBatch::Lines(function.to_string(), new.clone(), cost);
                match disk.try_send(batch) {
                    Ok(()) => true,
                    Err(_) => {
                        self.disk_queued.fetch_sub(cost, Ordering::Relaxed);
                        false
                    }
                }
            };
            if !sent {
                let n = self.disk_dropped.fetch_add(1, Ordering::Relaxed);
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
            log.bytes += l.cost();
            log.lines.push_back(l);
        }
        while log.lines.len() > self.max_lines || log.bytes > self.max_bytes {
            match log.lines.pop_front() {
                Some(l) => log.bytes -= l.cost(),
                None => break,
            }
        }
    }

    /// Forgets every line of `function`, in memory and (after the lines
    /// queued before) on disk: the function was deleted.
    pub fn remove(&self, function: &str) {
        self.inner.lock().expect("lock poisoned").1.remove(function);
        if let Some(disk) = &self.disk {
            // Blocks while the queue is full: a removal must not be lost.
            let _ = disk.send(DiskBatch::Remove(function.to_string()));
        }
    }

    /// Bytes held for `function`'s lines (as the bound counts them).
    pub fn held_bytes(&self, function: &str) -> usize {
        let g = self.inner.lock().expect("lock poisoned");
        g.1.get(function).map_or(0, |l| l.bytes)
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

/// Appends lines to `<dir>/<function>.jsonl`, moving the file to
/// `.jsonl.1` (replacing the older one) before a line would take it past
/// `max_bytes`, so each file stays within the bound and a function keeps
/// at most twice the bound on disk. Not fsynced: logs are best effort
/// across a power loss, kept across a process restart.
fn write_loop(
    dir: &Path,
    max_bytes: usize,
    rx: std::sync::mpsc::Receiver<DiskBatch>,
    queued: &AtomicUsize,
) {
    let mut warned = false;
    // Size of each open file, as written (one metadata call per function).
    let mut sizes: HashMap<String, usize> = HashMap::new();
    while let Ok(work) = rx.recv() {
        let (function, lines, cost) = match work {
            DiskBatch::Lines(f, l, c) => (f, l, c),
            DiskBatch::Remove(function) => {
                sizes.remove(&function);
                for name in [format!("{function}.jsonl"), format!("{function}.jsonl.1")] {
                    match std::fs::remove_file(dir.join(&name)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            tracing::warn!("removing function log {name}: {e}")
                        }
                        _ => {}
                    }
                }
                continue;
            }
            DiskBatch::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let path = dir.join(format!("{function}.jsonl"));
        let r = (|| {
            let size = match sizes.get(&function) {
                Some(s) => *s,
                None => std::fs::metadata(&path).map_or(0, |m| m.len() as usize),
            };
            let mut size = size;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            let mut buf = Vec::new();
            let mut line = Vec::new();
            for l in &lines {
                line.clear();
                if serde_json::to_writer(&mut line, l).is_err() {
                    continue;
                }
                line.push(b'\n');
                if line.len() > max_bytes {
                    // Cannot fit any file (escaping grew it): not kept.
                    continue;
                }
                if size + buf.len() + line.len() > max_bytes {
                    file.write_all(&buf)?;
                    buf.clear();
                    std::fs::rename(&path, dir.join(format!("{function}.jsonl.1")))?;
                    file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)?;
                    size = 0;
                }
                buf.extend_from_slice(&line);
            }
            file.write_all(&buf)?;
            size += buf.len();
            sizes.insert(function.clone(), size);
            Ok::<_, std::io::Error>(())
        })();
        queued.fetch_sub(cost, Ordering::Relaxed);
        match r {
            Err(e) => {
                // The size on record may be wrong now: ask the file again.
                sizes.remove(&function);
                if !warned {
                    tracing::warn!("writing function logs to {}: {e}", path.display());
                    warned = true;
                }
            }
            Ok(()) => warned = false,
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
        let b = LogStore::new(1000, 15);
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

    /// 200 lines of 1 MB in one invocation (and 20 such invocations): the
    /// memory kept stays within the byte bound, every file within its
    /// bound, and a restart loads only the tail.
    #[test]
    fn huge_output_stays_within_the_bounds_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let bound = 4 << 20;
        let big: Vec<String> = (0..200)
            .map(|i| format!("{i:04}{}", "x".repeat(1 << 20)))
            .collect();
        {
            let s = LogStore::open(dir.path(), 10_000, bound).unwrap();
            for r in 0..20 {
                s.append("f", "1", &format!("r{r}"), &big);
                assert!(s.held_bytes("f") <= bound, "{}", s.held_bytes("f"));
                assert!(s.disk_queued.load(Ordering::Relaxed) <= DISK_QUEUE_BYTES);
            }
            assert!(s.flush(std::time::Duration::from_secs(30)));
            for n in ["f.jsonl", "f.jsonl.1"] {
                let len = std::fs::metadata(dir.path().join(n)).unwrap().len();
                assert!(len as usize <= bound, "{n}: {len} bytes");
            }
            let got = s.read("f", 0, 10_000);
            assert!(!got.is_empty());
            assert!(got.iter().all(|l| l.message.len() <= MAX_LINE_BYTES));
            assert!(got.last().unwrap().message.starts_with("0199"));
        }
        let s = LogStore::open(dir.path(), 10_000, bound).unwrap();
        assert!(s.held_bytes("f") <= bound);
        assert!(s
            .read("f", 0, 10)
            .last()
            .unwrap()
            .message
            .starts_with("0199"));
    }

    /// A file left by an older worker, far past the bound, is read back
    /// by its tail only: the newest lines, within the bound.
    #[test]
    fn a_huge_old_file_is_read_back_by_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let bound = 1 << 20;
        {
            let mut f =
                std::io::BufWriter::new(std::fs::File::create(dir.path().join("f.jsonl")).unwrap());
            for i in 0..200_000u64 {
                let l = Line {
                    timestamp_ms: 1,
                    seq: i + 1,
                    request_id: "r".into(),
                    version: "1".into(),
                    message: format!("line {i} {}", "z".repeat(200)),
                };
                serde_json::to_writer(&mut f, &l).unwrap();
                f.write_all(b"\n").unwrap();
            }
        }
        assert!(std::fs::metadata(dir.path().join("f.jsonl")).unwrap().len() > 40 << 20);
        assert!(read_tail(&dir.path().join("f.jsonl"), bound).unwrap().len() <= bound);
        let s = LogStore::open(dir.path(), 10_000, bound).unwrap();
        assert!(s.held_bytes("f") <= bound);
        let got = s.read("f", 0, 100_000);
        assert!(got.last().unwrap().message.starts_with("line 199999 "));
        assert!(got.len() > 1000, "{}", got.len());
        // New lines number after the old ones.
        s.append("f", "1", "r", &["new".into()]);
        assert_eq!(s.read("f", 0, 1)[0].seq, 200_001);
    }

    /// A removed function's lines are gone from memory and its files from
    /// disk; other functions keep theirs; a new function of the same name
    /// starts empty.
    #[test]
    fn remove_forgets_memory_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = LogStore::open(dir.path(), 100, 300).unwrap();
        for i in 0..20 {
            s.append("f", "1", "r", &[format!("secret {i:02}")]);
        }
        s.append("g", "1", "r", &["kept".into()]);
        assert!(s.flush(std::time::Duration::from_secs(5)));
        assert!(dir.path().join("f.jsonl.1").exists());
        s.remove("f");
        assert!(s.flush(std::time::Duration::from_secs(5)));
        assert!(s.read("f", 0, 100).is_empty());
        assert!(!dir.path().join("f.jsonl").exists());
        assert!(!dir.path().join("f.jsonl.1").exists());
        assert_eq!(s.read("g", 0, 100).len(), 1);
        s.append("f", "1", "r", &["new".into()]);
        assert!(s.flush(std::time::Duration::from_secs(5)));
        drop(s);
        let s = LogStore::open(dir.path(), 100, 300).unwrap();
        let got: Vec<String> = s.read("f", 0, 100).into_iter().map(|l| l.message).collect();
        assert_eq!(got, vec!["new".to_string()]);
    }
}
