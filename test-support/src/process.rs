//! A child process guard: stopped (SIGTERM, then SIGKILL) and reaped when
//! dropped, so a failing test leaves nothing running; its stdout and
//! stderr are collected, and the last lines are printed when it is
//! dropped during a panic, so a failure shows what the process said.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines of output kept per process for failure messages.
const LOG_LINES: usize = 300;

/// How long [`Proc`]'s drop waits for a clean exit after SIGTERM: a
/// worker removes its sandboxes and their network namespaces only when it
/// is allowed to finish.
const DROP_GRACE: Duration = Duration::from_secs(15);

/// The last [`LOG_LINES`] lines a process wrote (stdout and stderr,
/// interleaved as they arrived).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<VecDeque<String>>>);

impl Logs {
    fn push(&self, line: String) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == LOG_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }

    /// The kept lines, one per line.
    pub fn tail(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// A child process stopped when dropped (SIGTERM, then SIGKILL after a
/// grace period).
pub struct Proc {
    child: Option<Child>,
    name: String,
    logs: Logs,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr collected (stdin is left as the
    /// caller set it). `name` names it in messages ("controller 2").
    pub fn spawn(cmd: Command, name: &str) -> Proc {
        Self::spawn_watching(cmd, name, None)
    }

    /// Spawns `cmd` like [`Proc::spawn`] and waits up to `timeout` for a
    /// stdout line starting with `ready` (what every nubo server role
    /// prints once it serves).
    pub fn spawn_ready(cmd: Command, name: &str, timeout: Duration) -> Proc {
        let (tx, rx) = mpsc::channel();
        let p = Self::spawn_watching(cmd, name, Some(tx));
        // On a timeout `p` drops during the panic and prints its output.
        rx.recv_timeout(timeout)
            .unwrap_or_else(|_| panic!("{name} did not print ready within {timeout:?}"));
        p
    }

    fn spawn_watching(mut cmd: Command, name: &str, ready: Option<mpsc::Sender<()>>) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let logs = Logs::default();
        // The readers drain the pipes until the process (and whatever it
        // left holding them) is gone, so it never blocks on a full pipe.
        let stdout = child.stdout.take().unwrap();
        let out_logs = logs.clone();
        std::thread::spawn(move || {
            collect(stdout, &out_logs, |line| {
                if let Some(tx) = &ready {
                    if line.starts_with("ready") {
                        let _ = tx.send(());
                    }
                }
            })
        });
        let stderr = child.stderr.take().unwrap();
        let err_logs = logs.clone();
        std::thread::spawn(move || collect(stderr, &err_logs, |_| {}));
        Proc {
            child: Some(child),
            name: name.into(),
            logs,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the process wrote so far (the last lines).
    pub fn logs(&self) -> String {
        self.logs.tail()
    }

    /// The pid; panics once the process has been reaped.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("process already reaped").id() as i32
    }

    /// Sends `sig` (e.g. `libc::SIGKILL`).
    pub fn signal(&self, sig: i32) {
        let pid = self.pid();
        // SAFETY: kill(2) takes no pointers; `pid` is our own child, which
        // we have not reaped yet (`child` is still Some), so the pid cannot
        // have been reused by another process.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Waits for exit, up to `timeout`; returns the exit code (None when
    /// killed by a signal). Panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        let child = self.child.as_mut().expect("process already reaped");
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code();
            }
            if start.elapsed() > timeout {
                panic!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited, without waiting: `Some(code)` once
    /// it has (`code` is None when a signal killed it), `None` while it
    /// runs.
    pub fn try_wait(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        let st = child.try_wait().ok()??;
        self.child = None;
        Some(st.code())
    }

    /// SIGTERM, then up to `timeout` for a clean exit (a worker destroys
    /// its sandboxes on the way out). Never panics; a process still running
    /// after `timeout` is killed when the guard drops.
    pub fn terminate(&mut self, timeout: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        // SAFETY: kill(2) takes no pointers; the pid is our own child, not
        // yet reaped (`self.child` is Some), so it cannot have been reused.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A clean stop first, so the process cleans up after itself.
        self.terminate(DROP_GRACE);
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            // Printed from the test's thread: the test harness shows it
            // with the failure.
            eprintln!(
                "---- last output of {} ----\n{}---- end of {} ----",
                self.name,
                self.logs.tail(),
                self.name
            );
        }
    }
}

fn collect(from: impl Read, logs: &Logs, mut each: impl FnMut(&str)) {
    for line in BufReader::new(from).lines().map_while(Result::ok) {
        each(&line);
        logs.push(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn collects_output_and_reports_the_exit_code() {
        let mut p = Proc::spawn(sh("echo out; echo err >&2; exit 3"), "sh");
        assert_eq!(p.wait(Duration::from_secs(10)), Some(3));
        let logs = poll_logs(&p, |l| l.contains("out") && l.contains("err"));
        assert!(logs.contains("out\n") && logs.contains("err\n"), "{logs}");
    }

    #[test]
    fn waits_for_the_ready_line() {
        let p = Proc::spawn_ready(
            sh("echo starting; sleep 0.1; echo ready 127.0.0.1:1; sleep 30"),
            "server",
            Duration::from_secs(10),
        );
        assert!(p.logs().contains("starting"), "{}", p.logs());
    }

    #[test]
    fn drop_stops_and_reaps_the_child() {
        let p = Proc::spawn(sh("sleep 30"), "sleeper");
        let pid = p.pid();
        let start = Instant::now();
        drop(p);
        assert!(start.elapsed() < DROP_GRACE, "SIGTERM was enough");
        // SAFETY: kill(2) with signal 0 only checks for existence; the pid
        // was our child, and it has been reaped, so this must fail.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "the child was reaped");
    }

    #[test]
    fn a_signal_shows_in_wait() {
        let mut p = Proc::spawn(sh("sleep 30"), "sleeper");
        p.signal(libc::SIGKILL);
        assert_eq!(p.wait(Duration::from_secs(10)), None);
        // Already reaped: terminate and drop have nothing to do.
        p.terminate(Duration::from_secs(1));
    }

    #[test]
    fn keeps_only_the_last_lines() {
        let mut p = Proc::spawn(
            sh("i=0; while [ $i -lt 400 ]; do echo line$i; i=$((i+1)); done"),
            "talker",
        );
        p.wait(Duration::from_secs(10));
        let logs = poll_logs(&p, |l| l.contains("line399"));
        assert_eq!(logs.lines().count(), LOG_LINES);
        assert!(!logs.contains("line99\n"), "oldest lines dropped");
    }

    /// The readers may lag the exit a little.
    fn poll_logs(p: &Proc, done: impl Fn(&str) -> bool) -> String {
        crate::poll(
            "the output",
            Duration::from_secs(5),
            Duration::from_millis(10),
            || {
                let l = p.logs();
                done(&l).then_some(l)
            },
        )
    }
}
