//! The container's output: stdout and stderr share one pipe (so lines keep
//! their order), read as it comes and attributed to the invocation in
//! progress. What is kept is bounded in bytes, whatever the function
//! prints: at most `max_bytes` per invocation (the newest lines, as Lambda
//! keeps the tail) and `MAX_LINE` per line (a longer line is cut, the rest
//! of it read and thrown away), so a single 1 GB line costs 256 KB.

use std::collections::VecDeque;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::net::unix::pipe;

/// Lines kept per invocation; older ones are dropped and counted.
const MAX_LINES: usize = 10_000;
/// Bytes kept of one line; the rest of it is dropped and counted.
pub(crate) const MAX_LINE: usize = crate::logs::MAX_LINE_BYTES;

pub(super) fn make_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The container's output: read as it comes, attributed to the invocation
/// in progress, and drained synchronously when an invocation ends (the
/// runtime writes its output before it posts the response).
pub(super) struct LogPipe {
    rx: pipe::Receiver,
    buf: Mutex<LineBuf>,
}

/// One invocation's output so far, within its bounds.
pub(crate) struct LineBuf {
    max_bytes: usize,
    /// The line being read, at most `MAX_LINE` bytes.
    partial: Vec<u8>,
    /// The current line was cut: drop what comes until its newline.
    cutting: bool,
    lines: VecDeque<String>,
    /// Bytes in `lines`.
    bytes: usize,
    dropped_bytes: u64,
}

impl LineBuf {
    pub(crate) fn new(max_bytes: usize) -> LineBuf {
        LineBuf {
            max_bytes,
            partial: Vec::new(),
            cutting: false,
            lines: VecDeque::new(),
            bytes: 0,
            dropped_bytes: 0,
        }
    }

    pub(crate) fn push_bytes(&mut self, data: &[u8]) {
        for chunk in data.split_inclusive(|b| *b == b'\n') {
            let ends = chunk.ends_with(b"\n");
            let body = if ends {
                &chunk[..chunk.len() - 1]
            } else {
                chunk
            };
            if self.cutting {
                self.dropped_bytes += body.len() as u64;
                self.cutting = !ends;
                continue;
            }
            let room = MAX_LINE - self.partial.len();
            let keep = body.len().min(room);
            if self.partial.capacity() == 0 && !ends {
                // One allocation for a line that spans reads, never grown
                // past the bound.
                self.partial.reserve_exact(MAX_LINE);
            }
            self.partial.extend_from_slice(&body[..keep]);
            let cut = body.len() > keep || (!ends && self.partial.len() >= MAX_LINE);
            self.dropped_bytes += (body.len() - keep) as u64;
            if ends || cut {
                self.finish_line();
                self.cutting = cut && !ends;
            }
        }
    }

    fn finish_line(&mut self) {
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        if self.partial.capacity() > 4096 {
            self.partial = Vec::new();
        }
        self.push_line(line);
    }

    fn push_line(&mut self, line: String) {
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.bytes > self.max_bytes || self.lines.len() > MAX_LINES {
            match self.lines.pop_front() {
                Some(l) => {
                    self.bytes -= l.len();
                    self.dropped_bytes += l.len() as u64 + 1;
                }
                None => break,
            }
        }
    }

    /// Memory held for lines right now, in bytes.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.bytes + self.partial.capacity()
    }

    /// The kept lines, after a platform line saying how much was dropped
    /// (where the dropped output was: before the kept tail).
    pub(crate) fn take(&mut self) -> Vec<String> {
        if !self.partial.is_empty() {
            self.finish_line();
        }
        self.cutting = false;
        let mut out = Vec::with_capacity(self.lines.len() + 1);
        if self.dropped_bytes > 0 {
            out.push(format!(
                "[nubo] ... {} bytes of output dropped (kept: the last {} bytes of an invocation, {} bytes of a line)",
                self.dropped_bytes, self.max_bytes, MAX_LINE
            ));
            self.dropped_bytes = 0;
        }
        out.extend(self.lines.drain(..));
        self.bytes = 0;
        out
    }
}

impl LogPipe {
    pub(super) fn new(fd: OwnedFd, max_bytes: usize) -> std::io::Result<LogPipe> {
        Ok(LogPipe {
            rx: pipe::Receiver::from_owned_fd(fd)?,
            buf: Mutex::new(LineBuf::new(max_bytes)),
        })
    }

    /// Reads what is available now; false at end of file.
    fn drain(&self) -> bool {
        let mut b = self.buf.lock().expect("lock poisoned");
        let mut chunk = [0u8; 16384];
        loop {
            match self.rx.try_read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => b.push_bytes(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }

    pub(super) async fn run(self: Arc<Self>) {
        loop {
            if self.rx.readable().await.is_err() {
                return;
            }
            if !self.drain() {
                return;
            }
        }
    }

    /// Everything printed since the last take, including a last partial
    /// line, within the bounds.
    pub(super) fn take(&self) -> Vec<String> {
        self.drain();
        self.buf.lock().expect("lock poisoned").take()
    }

    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.buf.lock().expect("lock poisoned").held_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64 MB line and 100k short lines keep at most the bounds in
    /// memory, the tail survives, and the drop is said.
    #[test]
    fn huge_and_many_lines_stay_within_the_bounds() {
        let cap = 1 << 20;
        let mut b = LineBuf::new(cap);
        let chunk = vec![b'x'; 16384];
        for _ in 0..(64 << 20) / chunk.len() {
            b.push_bytes(&chunk);
            assert!(b.held_bytes() <= cap + MAX_LINE, "{}", b.held_bytes());
        }
        b.push_bytes(b"\nshort\n");
        let lines = b.take();
        assert!(lines[0].contains("bytes of output dropped"), "{}", lines[0]);
        assert_eq!(lines[1].len(), MAX_LINE, "the long line is cut");
        assert_eq!(lines[2], "short");
        let dropped: u64 = lines[0].split(' ').nth(2).unwrap().parse().unwrap();
        assert_eq!(dropped, (64 << 20) - MAX_LINE as u64);

        for i in 0..100_000 {
            b.push_bytes(format!("line {i:06} {}\n", "y".repeat(100)).as_bytes());
            assert!(b.held_bytes() <= cap + MAX_LINE);
        }
        let lines = b.take();
        let kept: usize = lines[1..].iter().map(|l| l.len()).sum();
        assert!(kept <= cap, "{kept}");
        assert!(lines.last().unwrap().starts_with("line 099999"));
        assert!(lines[0].contains("dropped"));
        // A line of exactly MAX_LINE bytes is whole, and nothing dropped.
        b.push_bytes(&vec![b'z'; MAX_LINE]);
        b.push_bytes(b"\nnext\n");
        let lines = b.take();
        assert_eq!(
            lines.len(),
            2,
            "{:?}",
            lines.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert_eq!(lines[1], "next");
    }

    /// Through a real pipe: 40 MB written in 1 MB lines by another thread
    /// never holds more than the bounds.
    #[tokio::test]
    async fn a_real_pipe_is_read_within_the_bounds() {
        let (rd, wr) = make_pipe().unwrap();
        let cap = 2 << 20;
        let p = Arc::new(LogPipe::new(rd, cap).unwrap());
        let reader = tokio::spawn(p.clone().run());
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::from(wr);
            let mut line = vec![b'a'; 1 << 20];
            line.push(b'\n');
            for _ in 0..40 {
                f.write_all(&line).unwrap();
            }
            f.write_all(b"the end\n").unwrap();
        });
        let mut peak = 0;
        while !writer.is_finished() {
            peak = peak.max(p.held_bytes());
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        writer.join().unwrap();
        let lines = p.take();
        peak = peak.max(p.held_bytes());
        assert!(peak <= cap + MAX_LINE, "peak {peak}");
        assert_eq!(lines.last().unwrap(), "the end");
        assert!(lines[0].contains("dropped"));
        let kept: usize = lines[1..].iter().map(|l| l.len()).sum();
        assert!(kept <= cap);
        reader.abort();
    }
}
