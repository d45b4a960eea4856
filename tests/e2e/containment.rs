//! What a sandbox contains: limits, filesystem, network, privileges, under
//! crun and under runc.

use crate::support::{self, probe, Platform};

/// The sandbox contains what runs in it: a fork bomb stops at the pids
/// limit; a memory hog gets an out-of-memory error and the worker lives
/// on; a handler past its timeout gets "Task timed out"; nothing outside
/// /tmp is writable; host files outside the runtime bind mounts are
/// invisible; there is no network (not even the host's loopback), and
/// egress does not reach the host's loopback either; the process has no capabilities,
/// no_new_privs and seccomp, and runs as a non-root uid.
#[test]
#[ignore = "needs root"]
fn sandbox_containment() {
    let p = Platform::start();

    probe(
        &p,
        "forks",
        "fork_bomb",
        &["--memory", "1024", "--timeout", "60"],
    );
    let r = p.result("forks", "{}");
    let created = r["created"].as_u64().unwrap();
    assert!(r["error"].is_string(), "fork stopped by an error: {r}");
    assert!(
        (900..1024).contains(&created),
        "the pids limit (1024) stopped the fork bomb: {r}"
    );
    // The sandbox survived and serves the next event.
    assert_eq!(p.result("forks", r#"{"max": 3}"#)["created"], 3);

    // Our init is PID 1 and reaps orphans: a warm sandbox collects no
    // zombies from a handler's background processes.
    probe(&p, "orphans", "orphans", &[]);
    for _ in 0..2 {
        let r = p.result("orphans", "{}");
        assert_eq!(r["pid1"], "/var/runtime/init", "{r}");
        assert_ne!(r["me"], 1, "the runtime is not PID 1: {r}");
        assert_eq!(r["zombies"], serde_json::json!([]), "orphans reaped: {r}");
    }

    probe(
        &p,
        "hog",
        "mem_hog",
        &["--memory", "128", "--timeout", "30"],
    );
    let e = p.function_error("hog", r#"{"mb": 512}"#);
    assert_eq!(e["errorType"], "Runtime.OutOfMemory", "{e}");
    assert!(
        e["errorMessage"].as_str().unwrap().contains("128 MB"),
        "{e}"
    );
    // The worker lives: the same function's small call and others work.
    assert_eq!(p.result("hog", r#"{"mb": 16}"#)["allocated_mb"], 16);

    probe(&p, "sleepy", "sleep", &["--timeout", "1"]);
    let e = p.function_error("sleepy", r#"{"seconds": 5}"#);
    assert!(
        e["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Task timed out after 1.00 seconds"),
        "{e}"
    );
    assert_eq!(p.result("sleepy", r#"{"seconds": 0.01}"#)["slept"], 0.01);

    probe(&p, "writer", "write_outside_tmp", &[]);
    let r = p.result("writer", "{}");
    assert_eq!(r["succeeded"], serde_json::json!(["/tmp/x"]), "{r}");

    // A host file outside the runtime's bind mounts.
    let secret = p.env.dir.path().join("host-secret.txt");
    std::fs::write(&secret, "do not show").unwrap();
    probe(&p, "reader", "read_path", &[]);
    let r = p.result("reader", &serde_json::json!({"path": secret}).to_string());
    assert_eq!(r["exists"], false, "{r}");
    let r = p.result("reader", r#"{"path": "/root"}"#);
    assert_eq!(r["exists"], false, "{r}");
    let r = p.result("reader", r#"{"path": "/etc/shadow"}"#);
    assert_eq!(r["exists"], false, "{r}");
    let root: Vec<String> = serde_json::from_value(r["root"].clone()).unwrap();
    for d in ["home", "root", "work", "srv", "mnt", "boot"] {
        assert!(!root.contains(&d.to_string()), "/{d} visible: {root:?}");
    }

    // A listener on the host's loopback: unreachable without egress, and
    // with it (egress reaches the outside, never the host: tests/e2e/egress.rs).
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let ev = serde_json::json!({"host": "127.0.0.1", "port": port, "dns": true}).to_string();
    probe(&p, "net", "network", &[]);
    let r = p.result("net", &ev);
    assert_eq!(r["connect"]["ok"], false, "{r}");
    assert_eq!(r["dns"]["ok"], false, "{r}");
    let ev = serde_json::json!({"host": "127.0.0.1", "port": port}).to_string();
    probe(&p, "net-egress", "network", &["--network", "egress"]);
    let r = p.result("net-egress", &ev);
    assert_eq!(
        r["connect"]["ok"], false,
        "egress must not reach the host's loopback: {r}"
    );

    probe(&p, "status", "proc_status", &[]);
    let r = p.result("status", "{}");
    assert_eq!(r["status"]["NoNewPrivs"], "1", "{r}");
    assert_eq!(r["status"]["CapEff"], "0000000000000000", "{r}");
    assert_eq!(r["status"]["CapBnd"], "0000000000000000", "{r}");
    assert_eq!(r["status"]["Seccomp"], "2", "{r}");
    assert_ne!(r["uid"], 0, "{r}");

    // Sockets only of the families a function needs: vsock (which a
    // network namespace does not cut off), netlink and packet sockets do
    // not even open; nothing is connected to find out.
    probe(&p, "families", "socket_families", &[]);
    let r = p.result("families", "{}");
    for f in ["AF_VSOCK", "AF_NETLINK", "AF_PACKET"] {
        assert!(
            r[f] == "EPERM" || r[f] == "EAFNOSUPPORT",
            "{f} must fail: {r}"
        );
    }
    for f in ["AF_INET", "AF_INET6", "AF_UNIX", "socketpair"] {
        assert_eq!(r[f], "ok", "{f} must work: {r}");
    }
}

/// runc is selectable instead of crun: the same function runs, cold
/// (prewarmed generic and fully cold) and warm, with the same containment.
#[test]
#[ignore = "needs root"]
fn runc_is_selectable() {
    let p = Platform::start_with(&[("NUBO_OCI_RUNTIME", "runc")]);
    p.deploy(
        "hello",
        &support::example("hello"),
        "app.lambda_handler",
        &[],
    );
    for _ in 0..2 {
        let r = p.result("hello", r#"{"name":"runc"}"#);
        assert_eq!(r["message"], "Hello, runc!");
    }
    probe(&p, "status", "proc_status", &["--memory", "256"]);
    let r = p.result("status", "{}");
    assert_eq!(r["status"]["NoNewPrivs"], "1", "{r}");
    assert_eq!(r["status"]["CapEff"], "0000000000000000", "{r}");
    assert_eq!(r["status"]["Seccomp"], "2", "{r}");
}

/// What a function prints costs the worker a bounded amount: three
/// invocations printing 200 lines of 1 MB each raise the peak RSS of
/// `nubo up` (VmHWM) by far less than what was printed, the function's
/// log files stay within their 4 MB bound, and the log keeps the tail
/// of the output with a line saying how much was dropped.
#[test]
#[ignore = "needs root"]
fn noisy_output_is_bounded_in_memory_and_on_disk() {
    let p = Platform::start();
    probe(
        &p,
        "noisy",
        "big_log",
        &["--memory", "256", "--timeout", "120"],
    );
    p.result("noisy", r#"{"lines": 1, "kb": 1}"#);
    let before = support::proc_status_kb(p.pid(), "VmHWM");
    for _ in 0..3 {
        assert_eq!(p.result("noisy", r#"{"lines": 200}"#)["printed"], 200);
    }
    let after = support::proc_status_kb(p.pid(), "VmHWM");
    let rss = support::proc_status_kb(p.pid(), "VmRSS");
    eprintln!("nubo up VmHWM {before} kB -> {after} kB, VmRSS {rss} kB, after 600 MB of output");
    assert!(
        after < before + 150 * 1024,
        "peak RSS grew from {before} kB to {after} kB"
    );
    let logs = p.env.dir.path().join("data/worker/logs");
    for n in ["noisy.jsonl", "noisy.jsonl.1"] {
        if let Ok(m) = std::fs::metadata(logs.join(n)) {
            assert!(m.len() <= 4 << 20, "{n}: {} bytes", m.len());
        }
    }
    let out = p.ok(&["logs", "noisy", "--limit", "10000"]);
    assert!(out.contains("big_log done"), "the tail is kept");
    assert!(out.contains("bytes of output dropped"), "the drop is said");
}

/// CPU time (µs) of the cgroup of the process whose command line holds
/// `marker`.
fn sandbox_cpu_usec(marker: &str) -> Option<u64> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !cmd.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            continue;
        }
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        for line in cg.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            if ctrl.split(',').any(|c| c == "cpuacct") {
                let ns: u64 =
                    std::fs::read_to_string(format!("/sys/fs/cgroup/cpuacct{path}/cpuacct.usage"))
                        .ok()?
                        .trim()
                        .parse()
                        .ok()?;
                return Some(ns / 1000);
            }
            if ctrl.is_empty() && std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
            {
                let stat =
                    std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.stat")).ok()?;
                return stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse().ok());
            }
        }
    }
    None
}

/// An idle sandbox is frozen: a handler that leaves a process spinning
/// on the CPU gets no CPU time between invocations (its cgroup's CPU
/// usage does not grow over a second), and the next invocation, which
/// thaws it, still works.
#[test]
#[ignore = "needs root"]
fn idle_sandboxes_are_frozen() {
    let p = Platform::start();
    let name = format!("bgbusy{}", std::process::id());
    probe(&p, &name, "background_busy", &["--timeout", "10"]);
    let marker = format!("spin-{name}");
    let start = serde_json::json!({ "start": marker }).to_string();
    assert_eq!(p.result(&name, &start)["ok"], true);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let before = loop {
        if let Some(u) = sandbox_cpu_usec(&marker) {
            break u;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox cgroup not found"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let after = sandbox_cpu_usec(&marker).expect("the sandbox is still there");
    eprintln!("idle sandbox CPU: {before} us -> {after} us over 1.5 s");
    assert!(
        after - before < 100_000,
        "the idle sandbox used {} ms of CPU in 1.5 s",
        (after - before) / 1000
    );
    // Thawed for the next event: it runs (the spinning child with it).
    assert_eq!(p.result(&name, "{}")["ok"], true);
    assert_eq!(p.result(&name, "{}")["ok"], true);
}
