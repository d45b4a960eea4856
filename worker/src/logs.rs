//! Function logs kept on the worker: per function, bounded (oldest lines go
//! first), read by the controllers for `nubo logs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq)]
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
        }
    }

    /// Appends the lines of one invocation.
    pub fn append(&self, function: &str, version: &str, request_id: &str, lines: &[String]) {
        let ts = now_ms();
        let mut g = self.inner.lock().expect("lock poisoned");
        let (seq, map) = &mut *g;
        let log = map.entry(function.to_string()).or_insert(FunctionLog {
            lines: VecDeque::new(),
            bytes: 0,
        });
        for l in lines {
            *seq += 1;
            log.bytes += l.len();
            log.lines.push_back(Line {
                timestamp_ms: ts,
                seq: *seq,
                request_id: request_id.to_string(),
                version: version.to_string(),
                message: l.clone(),
            });
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
}
