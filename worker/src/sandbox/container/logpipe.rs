//! The container's output: stdout and stderr share one pipe (so lines keep
//! their order), read as it comes and attributed to the invocation in
//! progress.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::net::unix::pipe;

/// Lines kept per invocation; the rest is counted, not stored.
const MAX_LINES: usize = 10_000;
const MAX_LINE: usize = 256 * 1024;

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

#[derive(Default)]
struct LineBuf {
    partial: Vec<u8>,
    lines: Vec<String>,
    dropped: usize,
}

impl LineBuf {
    fn push_bytes(&mut self, data: &[u8]) {
        for chunk in data.split_inclusive(|b| *b == b'\n') {
            if chunk.ends_with(b"\n") {
                self.partial.extend_from_slice(&chunk[..chunk.len() - 1]);
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                self.push_line(line);
            } else {
                self.partial.extend_from_slice(chunk);
                if self.partial.len() >= MAX_LINE {
                    let line = String::from_utf8_lossy(&self.partial).into_owned();
                    self.partial.clear();
                    self.push_line(line);
                }
            }
        }
    }
    fn push_line(&mut self, line: String) {
        if self.lines.len() >= MAX_LINES {
            self.dropped += 1;
        } else {
            self.lines.push(line);
        }
    }
}

impl LogPipe {
    pub(super) fn new(fd: OwnedFd) -> std::io::Result<LogPipe> {
        Ok(LogPipe {
            rx: pipe::Receiver::from_owned_fd(fd)?,
            buf: Mutex::new(LineBuf::default()),
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

    /// Everything printed since the last take, including a last partial line.
    pub(super) fn take(&self) -> Vec<String> {
        self.drain();
        let mut b = self.buf.lock().expect("lock poisoned");
        if !b.partial.is_empty() {
            let line = String::from_utf8_lossy(&b.partial).into_owned();
            b.partial.clear();
            b.push_line(line);
        }
        let mut lines = std::mem::take(&mut b.lines);
        if b.dropped > 0 {
            lines.push(format!(
                "[nubo] {} more lines were not kept (limit {MAX_LINES} per invocation)",
                b.dropped
            ));
            b.dropped = 0;
        }
        lines
    }
}
