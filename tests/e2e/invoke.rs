//! Invocations end to end: `nubo up` (controller + worker with real crun
//! sandboxes), functions deployed and invoked through the CLI.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use super::{free_port, start_up, start_up_with, Env, Proc, NUBO};

pub fn functions_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("functions")
        .join(name)
}

/// `nubo up` with its embedded worker, and a CLI pointed at it.
pub struct Platform {
    pub env: Env,
    pub endpoint: String,
    /// HOST:PORT of the controller's /metrics.
    pub metrics: String,
    _up: Proc,
}

impl Platform {
    pub fn start() -> Platform {
        Platform::start_with(&[])
    }

    pub fn start_with(vars: &[(&str, &str)]) -> Platform {
        let env = Env::new();
        let port = free_port();
        let metrics_port = free_port();
        let up = if vars.is_empty() {
            start_up(&env, port, metrics_port)
        } else {
            start_up_with(&env, port, metrics_port, vars)
        };
        Platform {
            env,
            endpoint: format!("http://127.0.0.1:{port}"),
            metrics: format!("127.0.0.1:{metrics_port}"),
            _up: up,
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.env.cli(&self.endpoint, None, args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.env.cli_ok(&self.endpoint, None, args)
    }

    /// Creates a Python function from `dir` with `handler` and extra flags.
    pub fn deploy(&self, name: &str, dir: &Path, handler: &str, extra: &[&str]) {
        let mut args = vec![
            "function",
            "create",
            name,
            "--runtime",
            "python3.11",
            "--handler",
            handler,
            "--code",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// Invokes with `-o json`; returns (exit ok, the JSON answer or null, stderr).
    pub fn invoke(&self, target: &str, payload: &str) -> (bool, Value, String) {
        let out = self.cli(&["invoke", target, "--payload", payload, "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            out.status.success(),
            v,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Invokes and returns the function's result, asserting success.
    pub fn result(&self, target: &str, payload: &str) -> Value {
        let (ok, v, err) = self.invoke(target, payload);
        assert!(ok, "invoke {target} failed: {err} {v}");
        assert_eq!(v["function_error"], "", "function error: {v}");
        v["payload"].clone()
    }

    /// Invokes, expecting a function error; returns the error document.
    pub fn function_error(&self, target: &str, payload: &str) -> Value {
        let (ok, v, err) = self.invoke(target, payload);
        assert!(!ok, "invoke {target} should exit non-zero: {v}");
        assert_eq!(v["function_error"], "Unhandled", "{v} {err}");
        v["payload"].clone()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self._up.terminate(Duration::from_secs(20));
    }
}

fn probe(p: &Platform, name: &str, handler: &str, extra: &[&str]) {
    p.deploy(
        name,
        &functions_dir("probe"),
        &format!("probe.{handler}"),
        extra,
    );
}

/// The console-tutorial handler (`lambda_handler(event, context)` reading
/// `event['name']`) is created, invoked, published and aliased through the
/// CLI; the result goes to stdout (valid JSON), the log tail to stderr;
/// an alias with a weight routes that share of calls to the other version
/// (within 4.5 standard deviations over 300 calls); `nubo logs` shows
/// START / END / REPORT lines with Init Duration on the cold start.
#[test]
fn python_function_through_the_cli_with_versions_aliases_and_weights() {
    let p = Platform::start();
    p.deploy(
        "hello",
        &super::example("hello"),
        "app.lambda_handler",
        &["--env", "GREETING=Hello"],
    );
    // Plain invoke: stdout is exactly the function's JSON result.
    let out = p.cli(&[
        "invoke",
        "hello",
        "--payload",
        r#"{"name":"Ada"}"#,
        "--log-tail",
    ]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON result");
    assert_eq!(v["message"], "Hello, Ada!");
    let rid = v["request_id"].as_str().unwrap().to_string();
    let tail = String::from_utf8_lossy(&out.stderr);
    assert!(
        tail.contains(&format!("START RequestId: {rid} Version: $LATEST")),
        "{tail}"
    );
    assert!(tail.contains(&format!("END RequestId: {rid}")), "{tail}");
    assert!(
        tail.contains("Init Duration:"),
        "cold start reports init: {tail}"
    );
    assert!(tail.contains("Memory Size: 128 MB"), "{tail}");

    p.ok(&["version", "publish", "hello"]);
    p.ok(&["function", "update-config", "hello", "--env", "GREETING=Hi"]);
    p.ok(&["version", "publish", "hello"]);
    p.ok(&["alias", "create", "hello", "prod", "--version", "1"]);
    let r = p.result("hello:prod", r#"{"name":"Ada"}"#);
    assert_eq!(r["message"], "Hello, Ada!");
    assert_eq!(
        p.result("hello:2", r#"{"name":"Bo"}"#)["message"],
        "Hi, Bo!"
    );

    p.ok(&["alias", "update", "hello", "prod", "--routing", "2=0.3"]);
    let n = 300;
    let mut v2 = 0;
    for _ in 0..n {
        let (ok, v, err) = p.invoke("hello:prod", r#"{"name":"Ada"}"#);
        assert!(ok, "{err}");
        match v["executed_version"].as_str().unwrap() {
            "1" => assert_eq!(v["payload"]["message"], "Hello, Ada!"),
            "2" => {
                assert_eq!(v["payload"]["message"], "Hi, Ada!");
                v2 += 1
            }
            other => panic!("unexpected version {other}"),
        }
    }
    let mean = 0.3 * n as f64;
    let sd = (n as f64 * 0.3 * 0.7).sqrt();
    assert!(
        ((v2 as f64) - mean).abs() <= 4.5 * sd,
        "version 2 got {v2} of {n} calls, expected about {mean}"
    );

    // `logs --follow` prints lines of calls made after it started.
    let mut follow = std::process::Command::new(NUBO)
        .args(["logs", "hello", "--follow", "--since", "60"])
        .env("NUBO_ENDPOINT", &p.endpoint)
        .env("NUBO_CONFIG_DIR", p.env.config_dir())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    let fresh = p.result("hello", r#"{"name":"Follow"}"#);
    let fresh_id = fresh["request_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = false;
    while std::time::Instant::now() < deadline && !seen {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen = l.contains(&format!("END RequestId: {fresh_id}"));
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen, "logs --follow showed the new call");

    let logs = p.ok(&["logs", "hello", "--limit", "5000"]);
    assert!(logs.contains(&format!("START RequestId: {rid}")), "{logs}");
    assert!(logs.contains("REPORT RequestId:") && logs.contains("Billed Duration:"));
    assert!(logs.contains("Max Memory Used:"));
    let status = p.ok(&["cluster", "status", "-o", "json"]);
    let s: Value = serde_json::from_str(&status).unwrap();
    let w = &s["workers"][0];
    assert_eq!(w["health"], "live");
    assert!(
        w["warm_idle"].as_u64().unwrap() >= 2,
        "warm sandboxes kept: {w}"
    );
}

/// The sandbox contains what runs in it: a fork bomb stops at the pids
/// limit; a memory hog gets an out-of-memory error and the worker lives
/// on; a handler past its timeout gets "Task timed out"; nothing outside
/// /tmp is writable; host files outside the runtime bind mounts are
/// invisible; there is no network (not even the host's loopback) unless
/// the function has egress; the process has no capabilities,
/// no_new_privs and seccomp, and runs as a non-root uid.
#[test]
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

    // A listener on the host's loopback: unreachable without egress.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let ev = serde_json::json!({"host": "127.0.0.1", "port": port}).to_string();
    probe(&p, "net", "network", &[]);
    let r = p.result("net", &ev);
    assert_eq!(r["connect"]["ok"], false, "{r}");
    assert_eq!(r["dns"]["ok"], false, "{r}");
    probe(&p, "net-egress", "network", &["--network", "egress"]);
    let r = p.result("net-egress", &ev);
    assert_eq!(r["connect"]["ok"], true, "egress reaches the host: {r}");

    probe(&p, "status", "proc_status", &[]);
    let r = p.result("status", "{}");
    assert_eq!(r["status"]["NoNewPrivs"], "1", "{r}");
    assert_eq!(r["status"]["CapEff"], "0000000000000000", "{r}");
    assert_eq!(r["status"]["CapBnd"], "0000000000000000", "{r}");
    assert_eq!(r["status"]["Seccomp"], "2", "{r}");
    assert_ne!(r["uid"], 0, "{r}");
}

/// Lambda's error and limit semantics: unhandled exceptions carry
/// errorMessage / errorType / stackTrace; a crashed runtime is reported
/// and replaced; an import failure is an init error in the response and
/// the log; unknown function or qualifier is NOT_FOUND; a payload over
/// 6 MB or not JSON is INVALID_ARGUMENT; calls over the reserved
/// concurrency are throttled (RESOURCE_EXHAUSTED).
#[test]
fn errors_limits_and_throttling() {
    let p = Platform::start();
    probe(&p, "failing", "fail", &[]);
    let e = p.function_error("failing", r#"{"message": "no such order"}"#);
    assert_eq!(e["errorType"], "ValueError");
    assert_eq!(e["errorMessage"], "no such order");
    let trace = e["stackTrace"].as_array().expect("stackTrace");
    assert!(
        trace
            .iter()
            .any(|l| l.as_str().unwrap().contains("probe.py")),
        "{e}"
    );

    probe(&p, "crasher", "crash", &[]);
    let e = p.function_error("crasher", "{}");
    assert_eq!(e["errorType"], "Runtime.ExitError", "{e}");
    assert!(
        e["errorMessage"]
            .as_str()
            .unwrap()
            .contains("exit status 3"),
        "{e}"
    );
    // Replaced: the next call gets a fresh sandbox (and crashes again, cleanly).
    assert_eq!(
        p.function_error("crasher", "{}")["errorType"],
        "Runtime.ExitError"
    );

    p.deploy("broken", &functions_dir("broken"), "broken.handler", &[]);
    let out = p.cli(&["invoke", "broken", "--log-tail"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Runtime.ImportModuleError"), "{stdout}");
    assert!(
        stdout.contains("Unable to import module 'broken'"),
        "{stdout}"
    );
    let logs = p.ok(&["logs", "broken"]);
    assert!(logs.contains("Runtime.ImportModuleError"), "{logs}");
    probe(&p, "nohandler", "no_such_function", &[]);
    let e = p.function_error("nohandler", "{}");
    assert_eq!(e["errorType"], "Runtime.HandlerNotFound", "{e}");

    let out = p.cli(&["invoke", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"));
    let out = p.cli(&["invoke", "failing:9"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"));
    let out = p.cli(&["invoke", "failing:live"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"));
    let out = p.cli(&["invoke", "failing", "--payload", "{not json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("not valid JSON"),
        "{err}"
    );
    let big = p.env.dir.path().join("big.json");
    std::fs::write(&big, format!("\"{}\"", "a".repeat(7 * 1024 * 1024))).unwrap();
    let out = p.cli(&["invoke", "failing", "--payload-file", big.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("6 MB"),
        "{err}"
    );

    // Reserved concurrency 1: a second call while one runs is throttled.
    probe(
        &p,
        "single",
        "sleep",
        &["--reserved-concurrency", "1", "--timeout", "10"],
    );
    let endpoint = p.endpoint.clone();
    let cfg = p.env.config_dir();
    let long = std::thread::spawn(move || {
        std::process::Command::new(NUBO)
            .args(["invoke", "single", "--payload", r#"{"seconds": 3}"#])
            .env("NUBO_ENDPOINT", endpoint)
            .env("NUBO_CONFIG_DIR", cfg)
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let out = p.cli(&["invoke", "single", "--payload", r#"{"seconds": 0}"#]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RESOURCE_EXHAUSTED") && err.contains("throttled"),
        "{err}"
    );
    assert!(long.join().unwrap().status.success());
    assert_eq!(p.result("single", r#"{"seconds": 0}"#)["slept"], 0.0);
}

/// runc is selectable instead of crun: the same function runs, cold
/// (prewarmed generic and fully cold) and warm, with the same containment.
#[test]
fn runc_is_selectable() {
    let p = Platform::start_with(&[("NUBO_OCI_RUNTIME", "runc")]);
    p.deploy("hello", &super::example("hello"), "app.lambda_handler", &[]);
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

/// Provisioned concurrency: with `--min-warm 2` the leader has two
/// sandboxes created before any call, so the first invoke is warm (no Init
/// Duration in its REPORT line); they outlive the idle keep-alive (1 s
/// here): the same sandbox answers after it; `function get` shows the
/// setting.
#[test]
fn min_warm_keeps_sandboxes_ready() {
    // A 1 s idle keep-alive: provisioned sandboxes must outlive it.
    let p = Platform::start_with(&[("NUBO_KEEP_ALIVE_SECS", "1")]);
    probe(&p, "warm", "identity", &["--min-warm", "2"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s: Value = serde_json::from_str(&p.ok(&["cluster", "status", "-o", "json"])).unwrap();
        if s["workers"][0]["warm_idle"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never 2 warm: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = p.cli(&["invoke", "warm", "--payload", r#"{"k": 1}"#, "--log-tail"]);
    assert!(out.status.success());
    let tail = String::from_utf8_lossy(&out.stderr);
    assert!(tail.contains("REPORT RequestId"), "{tail}");
    assert!(
        !tail.contains("Init Duration"),
        "first call was warm: {tail}"
    );
    // Past the keep-alive, the same provisioned sandbox answers (it was
    // not reaped and re-created).
    let first = p.result("warm", "{}")["boot_id"].clone();
    std::thread::sleep(Duration::from_secs(3));
    let s: Value = serde_json::from_str(&p.ok(&["cluster", "status", "-o", "json"])).unwrap();
    assert_eq!(s["workers"][0]["warm_idle"], 2, "{s}");
    assert_eq!(
        p.result("warm", "{}")["boot_id"],
        first,
        "the provisioned sandbox outlived the 1 s keep-alive"
    );
    assert!(p.ok(&["function", "get", "warm"]).contains("min_warm"));
    let bad = p.cli(&["function", "update-config", "warm", "--min-warm", "1000"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("min_warm"));
}

/// Spawns a server role and waits for its `ready` line on stdout.
fn spawn_ready(mut cmd: std::process::Command, name: &str) -> Proc {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("ready") {
                let _ = tx.send(line);
            }
        }
    });
    let p = Proc {
        child: Some(child),
        name: name.into(),
    };
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{name} did not print ready within 30 s"));
    p
}

fn start_worker(dir: &Path, zone: &str, controller: &str) -> Proc {
    start_worker_with_metrics(dir, zone, controller, free_port())
}

fn start_worker_with_metrics(dir: &Path, zone: &str, controller: &str, metrics: u16) -> Proc {
    start_worker_sized(dir, zone, controller, metrics, 2048)
}

/// A `nubo worker` in `zone`, registering with `controllers` (comma-separated).
fn start_worker_sized(
    dir: &Path,
    zone: &str,
    controllers: &str,
    metrics: u16,
    memory_mb: u32,
) -> Proc {
    let mut cmd = std::process::Command::new(NUBO);
    cmd.args([
        "worker",
        "--zone",
        zone,
        "--controllers",
        controllers,
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        dir.join(format!("worker-{zone}")).to_str().unwrap(),
        "--memory-mb",
        &memory_mb.to_string(),
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
    ])
    .env(
        "NUBO_WORKER_SECRET",
        nubo_proto::worker_secret(super::SECRET),
    );
    spawn_ready(cmd, &format!("worker {zone}"))
}

/// Live workers as the controller sees them; empty while the controller
/// is still starting (its first admin token is created asynchronously).
fn live_workers(env: &Env, endpoint: &str) -> Vec<Value> {
    let out = env.cli(
        endpoint,
        Some(super::TOKEN),
        &["cluster", "status", "-o", "json"],
    );
    if !out.status.success() {
        return Vec::new();
    }
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["health"] == "live")
        .cloned()
        .collect()
}

/// Three `nubo worker` processes in three zones behind a controller: a
/// function's concurrent sandboxes land in three different zones; after
/// one zone's worker is SIGKILLed every later invoke succeeds on the
/// others, and the controller marks the dead worker dead; a restarted
/// worker removes the containers its killed predecessor left.
#[test]
fn three_zones_survive_the_loss_of_one() {
    let env = Env::new();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let controller_addr = format!("127.0.0.1:{port}");
    let mut controller = super::start_controller(env.dir.path(), 1, &[port]);
    let (metrics_b, metrics_c) = (free_port(), free_port());
    let mut workers: Vec<(String, Proc)> = ["a", "b", "c"]
        .iter()
        .map(|z| {
            let m = match *z {
                "b" => metrics_b,
                "c" => metrics_c,
                _ => free_port(),
            };
            (
                z.to_string(),
                start_worker_with_metrics(env.dir.path(), z, &controller_addr, m),
            )
        })
        .collect();
    let t = Some(super::TOKEN);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while live_workers(&env, &endpoint).len() < 3 {
        assert!(std::time::Instant::now() < deadline, "3 workers never live");
        std::thread::sleep(Duration::from_millis(200));
    }
    let probe_dir = functions_dir("probe");
    env.cli_ok(
        &endpoint,
        t,
        &[
            "function",
            "create",
            "spread",
            "--runtime",
            "python3.11",
            "--handler",
            "probe.sleep",
            "--code",
            probe_dir.to_str().unwrap(),
        ],
    );
    // Three concurrent calls need three sandboxes: one per zone.
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let endpoint = endpoint.clone();
            let cfg = env.config_dir();
            std::thread::spawn(move || {
                std::process::Command::new(NUBO)
                    .args(["invoke", "spread", "--payload", r#"{"seconds": 1.5}"#])
                    .env("NUBO_ENDPOINT", endpoint)
                    .env("NUBO_CONFIG_DIR", cfg)
                    .env("NUBO_TOKEN", super::TOKEN)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for c in calls {
        let out = c.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::thread::sleep(Duration::from_millis(600));
    let live = live_workers(&env, &endpoint);
    let zones_with_sandboxes: Vec<&str> = live
        .iter()
        .filter(|w| w["sandboxes"].as_u64().unwrap() >= 1)
        .map(|w| w["zone"].as_str().unwrap())
        .collect();
    assert_eq!(zones_with_sandboxes.len(), 3, "spread over zones: {live:?}");

    // Lose a zone in the middle of a call: the worker running it is
    // SIGKILLed; the caller gets a clear, retryable error.
    let slow = {
        let endpoint = endpoint.clone();
        let cfg = env.config_dir();
        std::thread::spawn(move || {
            std::process::Command::new(NUBO)
                .args(["invoke", "spread", "--payload", r#"{"seconds": 5}"#])
                .env("NUBO_ENDPOINT", endpoint)
                .env("NUBO_CONFIG_DIR", cfg)
                .env("NUBO_TOKEN", super::TOKEN)
                .output()
                .unwrap()
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let busy_zone = loop {
        let busy: Vec<String> = live_workers(&env, &endpoint)
            .iter()
            .filter(|w| w["busy"].as_u64().unwrap_or(0) > 0)
            .map(|w| w["zone"].as_str().unwrap().to_string())
            .collect();
        if let Some(z) = busy.first() {
            break z.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow call never showed as busy"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let i = workers.iter().position(|(z, _)| *z == busy_zone).unwrap();
    let (_, mut dead) = workers.remove(i);
    dead.signal(libc::SIGKILL);
    dead.wait(Duration::from_secs(5));
    let out = slow.join().unwrap();
    assert!(
        !out.status.success(),
        "the call on the killed worker cannot succeed"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ABORTED") && err.contains("failed during request") && err.contains("retry"),
        "clear retryable error: {err}"
    );
    for i in 0..20 {
        let out = env.cli(
            &endpoint,
            t,
            &["invoke", "spread", "--payload", r#"{"seconds": 0}"#],
        );
        assert!(
            out.status.success(),
            "invoke {i} after losing zone {busy_zone}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::thread::sleep(Duration::from_millis(1200));
    let s: Value =
        serde_json::from_str(&env.cli_ok(&endpoint, t, &["cluster", "status", "-o", "json"]))
            .unwrap();
    let a = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["zone"] == busy_zone.as_str())
        .unwrap()
        .clone();
    assert_eq!(a["health"], "dead", "{a}");
    // Every worker serves its metrics (b's, or c's when b was the one lost).
    let metrics_b = if busy_zone == "b" {
        metrics_c
    } else {
        metrics_b
    };
    let m = super::http_get(&format!("127.0.0.1:{metrics_b}"), "/metrics");
    for want in [
        "nubo_worker_invocations_total{function=\"spread\"}",
        "nubo_worker_cold_starts_total{function=\"spread\"}",
        "nubo_worker_duration_seconds_bucket{function=\"spread\"",
        "nubo_worker_sandboxes{function=\"spread\",version=\"$LATEST\",state=\"warm\"}",
    ] {
        assert!(m.contains(want), "{want} missing from worker metrics:\n{m}");
    }

    // A restart of the lost worker cleans up what the killed one left.
    let mut again = start_worker(env.dir.path(), &busy_zone, &controller_addr);
    again.terminate(Duration::from_secs(20));
    for (_, w) in workers.iter_mut() {
        w.terminate(Duration::from_secs(20));
    }
    controller.terminate(Duration::from_secs(10));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// Official runtime clients run unmodified: a `provided` function whose
/// `bootstrap` starts AWS's `awslambdaric` (from PyPI) as the entry point,
/// and one whose `bootstrap` is built with the `lambda_runtime` crate
/// (`examples/rust-hello`). Both answer, cold and warm, with the request
/// id the platform assigned.
#[test]
fn official_runtime_clients_run_unmodified() {
    let p = Platform::start();

    // awslambdaric, installed by the project's script (cached).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-awslambdaric.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fetching awslambdaric: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ric = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let pkg = p.env.dir.path().join("ric-function");
    copy_dir(&ric, &pkg);
    copy_dir(&functions_dir("awslambdaric"), &pkg);
    p.ok(&[
        "function",
        "create",
        "ric",
        "--runtime",
        "provided.al2023",
        "--handler",
        "app.handler",
        "--code",
        pkg.to_str().unwrap(),
        "--memory",
        "256",
    ]);
    for name in ["Ada", "Bo"] {
        let (ok, v, err) = p.invoke("ric", &format!(r#"{{"name":"{name}"}}"#));
        assert!(ok, "{err} {v}");
        assert_eq!(v["payload"]["ric"], true, "{v}");
        assert_eq!(v["payload"]["name"], name);
        assert_eq!(v["payload"]["request_id"], v["request_id"], "{v}");
    }

    // lambda_runtime: the workspace builds examples/rust-hello's `bootstrap`
    // next to the nubo binary.
    let bin = Path::new(NUBO).with_file_name("bootstrap");
    assert!(
        bin.is_file(),
        "{} missing: build it with `cargo build -p nubo-example-rust-hello` (scripts/test.sh does)",
        bin.display()
    );
    let pkg = p.env.dir.path().join("rust-function");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::copy(&bin, pkg.join("bootstrap")).unwrap();
    p.ok(&[
        "function",
        "create",
        "rusty",
        "--runtime",
        "provided.al2023",
        "--handler",
        "bootstrap",
        "--code",
        pkg.to_str().unwrap(),
    ]);
    for name in ["Ada", "Bo"] {
        let (ok, v, err) = p.invoke("rusty", &format!(r#"{{"name":"{name}"}}"#));
        assert!(ok, "{err} {v}");
        assert_eq!(v["payload"]["message"], format!("Hello, {name}!"), "{v}");
        assert_eq!(v["payload"]["request_id"], v["request_id"], "{v}");
    }
}

fn dead_letters(p: &Platform, function: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&p.ok(&["dlq", "list", function, "-o", "json"])).unwrap();
    v["records"].as_array().unwrap().clone()
}

/// Milliseconds since midnight of an RFC 3339 time as `nubo logs` prints
/// it (`2026-11-22T07:51:45.174Z`).
fn ms_of_day(ts: &str) -> u64 {
    let t = &ts[11..23];
    let h: u64 = t[0..2].parse().unwrap();
    let m: u64 = t[3..5].parse().unwrap();
    let s: u64 = t[6..8].parse().unwrap();
    let ms: u64 = t[9..12].parse().unwrap();
    ((h * 60 + m) * 60 + s) * 1000 + ms
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Async (Event) invocations end to end, with the retry wait shortened to
/// 300 ms: the CLI prints the request id once the event is durable; a
/// function that always fails runs exactly 3 times under that one request
/// id, spaced w then 2w, then leaves one dead letter (RetriesExhausted,
/// 3 attempts, the error, the original payload) and Lambda's failure
/// record at the on-failure destination function; a redrive runs it again
/// with a fresh count; a succeeding function runs once; unknown function,
/// oversized payload and unknown redrive ids are refused.
#[test]
fn async_events_retry_then_dead_letter_and_redrive() {
    let p = Platform::start_with(&[("NUBO_ASYNC_BASE_WAIT_MS", "300")]);
    probe(&p, "sink", "record", &[]);
    probe(&p, "failing", "fail", &["--dead-letter-target", "sink"]);
    let id = p
        .ok(&[
            "invoke",
            "failing",
            "--async",
            "--payload",
            r#"{"message":"nope"}"#,
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 36, "a request id: {id}");
    let dl = wait_for("the dead letter", 20, || {
        dead_letters(&p, "failing").first().cloned()
    });
    assert_eq!(dl["request_id"], id.as_str());
    assert_eq!(dl["condition"], "RetriesExhausted");
    assert_eq!(dl["attempts"], 3);
    assert_eq!(dl["error_type"], "ValueError");
    assert_eq!(dl["error_message"], "nope");
    assert_eq!(dl["payload"]["message"], "nope");
    let logs = p.ok(&["logs", "failing", "--limit", "5000"]);
    let starts = logs.matches(&format!("START RequestId: {id}")).count();
    assert_eq!(starts, 3, "exactly three attempts:\n{logs}");
    // Spaced w, then 2w (w = 300 ms here; 1 and 2 minutes by default).
    let at: Vec<u64> = logs
        .lines()
        .filter(|l| l.contains(&format!("START RequestId: {id}")))
        .map(|l| ms_of_day(l.split_whitespace().next().unwrap()))
        .collect();
    let gap = |a: u64, b: u64| (b + 86_400_000 - a) % 86_400_000;
    let gaps = [gap(at[0], at[1]), gap(at[1], at[2])];
    assert!(
        (300..3_300).contains(&gaps[0]) && (600..3_600).contains(&gaps[1]),
        "retries at +w then +2w (w = 300 ms): gaps {gaps:?} ms\n{logs}"
    );
    // The on-failure destination got Lambda's record of the failure.
    let record: Value = wait_for("the destination record", 20, || {
        let logs = p.ok(&["logs", "sink", "--limit", "5000"]);
        logs.lines()
            .find_map(|l| l.split("EVENT ").nth(1))
            .and_then(|j| serde_json::from_str(j).ok())
    });
    assert_eq!(
        record["requestContext"]["requestId"],
        id.as_str(),
        "{record}"
    );
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(record["requestPayload"]["message"], "nope");
    assert_eq!(record["responseContext"]["functionError"], "Unhandled");
    assert_eq!(record["responsePayload"]["errorType"], "ValueError");
    let status: Value =
        serde_json::from_str(&p.ok(&["async", "status", "failing", "-o", "json"])).unwrap();
    assert_eq!(status["dead_letters"], 1);
    assert_eq!(status["queued"], 0);

    p.ok(&["dlq", "redrive", "failing", &id]);
    wait_for("the redriven event to fail again", 20, || {
        let logs = p.ok(&["logs", "failing", "--limit", "5000"]);
        (logs.matches(&format!("START RequestId: {id}")).count() == 6
            && dead_letters(&p, "failing").len() == 1)
            .then_some(())
    });

    probe(&p, "okays", "record", &[]);
    probe(&p, "echoing", "echo", &["--on-success-target", "okays"]);
    let ok_id = p
        .ok(&["invoke", "echoing", "--async", "--payload", r#"{"k":1}"#])
        .trim()
        .to_string();
    wait_for("the async call to run", 20, || {
        p.ok(&["logs", "echoing"])
            .contains(&format!("END RequestId: {ok_id}"))
            .then_some(())
    });
    assert!(dead_letters(&p, "echoing").is_empty());
    let ok: Value = wait_for("the success record", 20, || {
        let logs = p.ok(&["logs", "okays", "--limit", "5000"]);
        logs.lines()
            .find_map(|l| l.split("EVENT ").nth(1))
            .and_then(|j| serde_json::from_str(j).ok())
    });
    assert_eq!(ok["requestContext"]["requestId"], ok_id.as_str(), "{ok}");
    assert_eq!(ok["requestContext"]["condition"], "Success");
    assert_eq!(ok["requestPayload"]["k"], 1);
    assert_eq!(
        ok["responsePayload"]["event"]["k"], 1,
        "the function's result"
    );

    let out = p.cli(&["invoke", "nope", "--async"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"));
    let big = p.env.dir.path().join("big-async.json");
    std::fs::write(&big, format!("\"{}\"", "a".repeat(300 * 1024))).unwrap();
    let out = p.cli(&[
        "invoke",
        "echoing",
        "--async",
        "--payload-file",
        big.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("256 KB"),
        "{err}"
    );
    let out = p.cli(&["dlq", "redrive", "failing", "no-such-id"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"));
    let out = p.cli(&[
        "function",
        "update-config",
        "failing",
        "--max-retry-attempts",
        "3",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("maximum_retry_attempts"),
        "{err}"
    );
    p.ok(&["dlq", "purge", "failing"]);
    assert!(dead_letters(&p, "failing").is_empty());
    let m = super::http_get(&p.metrics, "/metrics");
    for want in [
        "nubo_async_events_total{stage=\"enqueued\"}",
        "nubo_async_events_total{stage=\"retried\"}",
        "nubo_async_events_total{stage=\"dead_lettered\"}",
        "nubo_async_events_total{stage=\"succeeded\"}",
        "nubo_async_queue_depth 0",
    ] {
        assert!(m.contains(want), "{want} missing from /metrics:\n{m}");
    }
}

/// Reserved concurrency 0 (Lambda's "throttle"): async events wait in the
/// queue without running; clearing the reservation runs them all; one held
/// past its maximum age (60 s) becomes an `EventAgeExceeded` dead letter
/// with 0 attempts, and its on-failure destination gets the record. The
/// queue's byte bound (`max_async_queue_bytes`, from `nubo up --config`)
/// refuses an event that would pass it. An idempotency key enqueues once
/// within the window (4 s here) and anew after it; a bad key is refused.
#[test]
fn async_throttled_events_wait_expire_and_keys_deduplicate() {
    // A small queue bound, to see it refuse (nubo up --config).
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        conf.path(),
        "max_async_payload_bytes = 65536\nmax_async_queue_bytes = 100000\n",
    )
    .unwrap();
    let p = Platform::start_with(&[
        ("NUBO_ASYNC_BASE_WAIT_MS", "300"),
        ("NUBO_IDEMPOTENCY_WINDOW_MS", "4000"),
        ("NUBO_CONFIG", conf.path().to_str().unwrap()),
    ]);
    probe(&p, "sink", "record", &[]);
    probe(
        &p,
        "expiring",
        "record",
        &[
            "--reserved-concurrency",
            "0",
            "--max-event-age",
            "60",
            "--dead-letter-target",
            "sink",
        ],
    );
    let t0 = std::time::Instant::now();
    let expiring_id = p.ok(&["invoke", "expiring", "--async"]).trim().to_string();

    probe(&p, "held", "record", &["--reserved-concurrency", "0"]);
    let held: Vec<String> = (0..3)
        .map(|i| {
            p.ok(&[
                "invoke",
                "held",
                "--async",
                "--payload",
                &format!("{{\"i\":{i}}}"),
            ])
            .trim()
            .to_string()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let status: Value =
        serde_json::from_str(&p.ok(&["async", "status", "held", "-o", "json"])).unwrap();
    assert_eq!(status["queued"], 3, "{status}");
    assert_eq!(status["in_flight"], 0, "{status}");
    assert_eq!(status["running"], 0, "{status}");
    assert!(
        !p.ok(&["logs", "held"]).contains("START"),
        "nothing runs while throttled to 0"
    );
    // The queue's byte bound: 60 KB waits, a second 60 KB is refused.
    let big = p.env.dir.path().join("big.json");
    std::fs::write(&big, format!("\"{}\"", "b".repeat(60_000))).unwrap();
    let big_arg = [
        "invoke",
        "held",
        "--async",
        "--payload-file",
        big.to_str().unwrap(),
    ];
    p.ok(&big_arg);
    let out = p.cli(&big_arg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("RESOURCE_EXHAUSTED")
            && err.contains("queue is full"),
        "{err}"
    );
    p.ok(&[
        "function",
        "update-config",
        "held",
        "--clear-reserved-concurrency",
    ]);
    wait_for("the held events to run once released", 30, || {
        let logs = p.ok(&["logs", "held", "--limit", "5000"]);
        held.iter()
            .all(|id| logs.contains(&format!("END RequestId: {id}")))
            .then_some(())
    });

    // Idempotency keys.
    probe(&p, "keyed", "record", &[]);
    let keyed = |key: &str| {
        let out = p.cli(&[
            "invoke",
            "keyed",
            "--async",
            "--idempotency-key",
            key,
            "--payload",
            r#"{"order":42}"#,
        ]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let k0 = std::time::Instant::now();
    let (ok, first, err) = keyed("order-42");
    assert!(ok && err.contains("accepted"), "{err}");
    let (ok, again, err) = keyed("order-42");
    assert!(ok && err.contains("duplicate"), "{err}");
    assert_eq!(again, first, "a duplicate names the first event");
    let (ok, _, err) = keyed("order 42");
    assert!(
        !ok && err.contains("INVALID_ARGUMENT") && err.contains("' '"),
        "{err}"
    );
    let out = p.cli(&["invoke", "keyed", "--idempotency-key", "k"]);
    assert!(!out.status.success(), "a key needs --async");
    wait_for("the keyed event to run", 20, || {
        p.ok(&["logs", "keyed"])
            .contains(&format!("END RequestId: {first}"))
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(4_500).saturating_sub(k0.elapsed()));
    let (ok, later, err) = keyed("order-42");
    assert!(ok && err.contains("accepted"), "{err}");
    assert_ne!(
        later, first,
        "after the window the key enqueues a new event"
    );
    wait_for("the second keyed event to run", 20, || {
        p.ok(&["logs", "keyed"])
            .contains(&format!("END RequestId: {later}"))
            .then_some(())
    });
    let logs = p.ok(&["logs", "keyed", "--limit", "5000"]);
    assert_eq!(logs.matches("START RequestId").count(), 2, "{logs}");

    // The throttled event expires at its maximum age, never attempted.
    let dl = wait_for("the EventAgeExceeded dead letter", 90, || {
        dead_letters(&p, "expiring").first().cloned()
    });
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(59),
        "expired after {waited:?}"
    );
    assert_eq!(dl["request_id"], expiring_id.as_str());
    assert_eq!(dl["condition"], "EventAgeExceeded");
    assert_eq!(dl["attempts"], 0);
    assert_eq!(dl["error_type"], "Throttled");
    assert!(!p.ok(&["logs", "expiring"]).contains("START"));
    let record: Value = wait_for("the expiry's destination record", 20, || {
        let logs = p.ok(&["logs", "sink", "--limit", "5000"]);
        logs.lines()
            .find_map(|l| l.split("EVENT ").nth(1))
            .and_then(|j| serde_json::from_str(j).ok())
    });
    assert_eq!(record["requestContext"]["requestId"], expiring_id.as_str());
    assert_eq!(record["requestContext"]["condition"], "EventAgeExceeded");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 0);
    let m = super::http_get(&p.metrics, "/metrics");
    for want in [
        "nubo_async_events_total{stage=\"expired\"} 1",
        "nubo_async_events_total{stage=\"deduplicated\"} 1",
    ] {
        assert!(m.contains(want), "{want} missing from /metrics:\n{m}");
    }
}

/// Three `nubo controller` processes and two workers: 2,000 async events are
/// accepted (each only once durable), then the leader is SIGKILLed while
/// they are being dispatched. Every accepted event runs at least once
/// (seen in the function's log by request id) and none is lost. The
/// attempts the dead leader had in flight are found on the two workers by
/// the new leader and sent back there under the same attempt key, so the
/// worker joins the running attempt or returns its result: duplicates are
/// counted, printed, and there are none.
#[test]
fn async_events_survive_the_leader_being_killed() {
    let env = Env::new();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let endpoints: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let endpoint = endpoints.join(",");
    let mut controllers: Vec<Proc> = (1..=3)
        .map(|id| super::start_controller(env.dir.path(), id, &ports))
        .collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    // Two workers: the new leader must send the dead leader's attempts back
    // to the worker running them, not place them afresh.
    let mut workers: Vec<Proc> = ["a", "b"]
        .iter()
        .map(|zone| start_worker_sized(env.dir.path(), zone, &addrs.join(","), free_port(), 8192))
        .collect();
    wait_for("two live workers", 30, || {
        (live_workers(&env, &endpoint).len() == 2).then_some(())
    });
    let t = Some(super::TOKEN);
    let probe_dir = functions_dir("probe");
    env.cli_ok(
        &endpoint,
        t,
        &[
            "function",
            "create",
            "ev",
            "--runtime",
            "python3.11",
            "--handler",
            "probe.sleep",
            "--code",
            probe_dir.to_str().unwrap(),
        ],
    );

    let n = 2000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let accepted: Vec<String> = rt.block_on(async {
        let client = std::sync::Arc::new(
            nubo::client::Client::new(endpoints.clone(), Some(super::TOKEN.into())).unwrap(),
        );
        let mut tasks = Vec::new();
        for worker_no in 0..16 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (worker_no..n).step_by(16) {
                    let req = nubo_proto::v1::InvokeRequest {
                        function_name: "ev".into(),
                        qualifier: String::new(),
                        // 200 ms each: the queue is still deep when the leader dies.
                        payload: format!("{{\"seconds\":0.2,\"n\":{i}}}").into_bytes(),
                        invocation_type: nubo_proto::v1::InvocationType::Event as i32,
                        log_type: 0,
                        idempotency_key: String::new(),
                    };
                    let r = client
                        .call(|c| {
                            let req = req.clone();
                            async move { c.invocations().invoke(req).await }
                        })
                        .await
                        .expect("accepted");
                    ids.push(r.into_inner().request_id);
                }
                ids
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    assert_eq!(accepted.len(), n);

    // Kill the leader while the queue drains.
    let s: Value =
        serde_json::from_str(&env.cli_ok(&endpoint, t, &["cluster", "status", "-o", "json"]))
            .unwrap();
    let leader = s["leader_id"].as_u64().unwrap() as usize;
    let queued_at_kill: Value =
        serde_json::from_str(&env.cli_ok(&endpoint, t, &["async", "status", "ev", "-o", "json"]))
            .unwrap();
    controllers[leader - 1].signal(libc::SIGKILL);
    controllers[leader - 1].wait(Duration::from_secs(5));
    eprintln!(
        "killed leader {leader} with {} events queued",
        queued_at_kill["queued"]
    );
    assert!(
        queued_at_kill["queued"].as_u64().unwrap() >= 100,
        "the kill must come while events are in flight: {queued_at_kill}"
    );

    wait_for("the queue to drain under the new leader", 120, || {
        let out = env.cli(&endpoint, t, &["async", "status", "ev", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["queued"] == 0).then_some(())
    });
    // A follower answers `async status` with the new leader's in-flight
    // count (asked there).
    let s: Value =
        serde_json::from_str(&env.cli_ok(&endpoint, t, &["cluster", "status", "-o", "json"]))
            .unwrap();
    let new_leader = s["leader_id"].as_u64().unwrap() as usize;
    let follower = (1..=3).find(|i| *i != leader && *i != new_leader).unwrap();
    let v: Value = serde_json::from_str(&env.cli_ok(
        &endpoints[follower - 1],
        t,
        &["async", "status", "ev", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(v["in_flight"], 0, "asked from follower {follower}: {v}");
    let logs = env.cli_ok(&endpoint, t, &["logs", "ev", "--limit", "10000"]);
    let mut runs: std::collections::HashMap<&str, usize> = Default::default();
    for line in logs.lines() {
        if let Some(rest) = line.split("START RequestId: ").nth(1) {
            let id = rest.split_whitespace().next().unwrap();
            *runs.entry(id).or_default() += 1;
        }
    }
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|id| !runs.contains_key(id.as_str()))
        .collect();
    let duplicates: usize = runs.values().map(|c| c - 1).sum();
    eprintln!(
        "async events: {n} accepted, {} ran, {} missing, {duplicates} duplicate runs",
        runs.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "lost events: {:?}",
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        duplicates, 0,
        "re-dispatched attempts must go back to the worker running them"
    );
    let dl: Value =
        serde_json::from_str(&env.cli_ok(&endpoint, t, &["dlq", "list", "ev", "-o", "json"]))
            .unwrap();
    assert!(
        dl["records"].as_array().unwrap().is_empty(),
        "no event dead-lettered: {dl}"
    );
    for w in &mut workers {
        w.terminate(Duration::from_secs(20));
    }
}

/// An async event whose worker is SIGKILLed mid-run is not lost: the
/// dispatcher sees the worker fail, backs off without using an attempt,
/// and runs it again on the other worker, where it completes; no dead
/// letter.
#[test]
fn async_event_is_retried_elsewhere_when_its_worker_dies() {
    let env = Env::new();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let addr = format!("127.0.0.1:{port}");
    let mut controller = super::start_controller(env.dir.path(), 1, &[port]);
    let mut workers: Vec<(String, Proc)> = ["a", "b"]
        .iter()
        .map(|z| (z.to_string(), start_worker(env.dir.path(), z, &addr)))
        .collect();
    let t = Some(super::TOKEN);
    wait_for("two live workers", 30, || {
        (live_workers(&env, &endpoint).len() == 2).then_some(())
    });
    let probe_dir = functions_dir("probe");
    env.cli_ok(
        &endpoint,
        t,
        &[
            "function",
            "create",
            "slow",
            "--runtime",
            "python3.11",
            "--handler",
            "probe.sleep",
            "--code",
            probe_dir.to_str().unwrap(),
            "--timeout",
            "30",
        ],
    );
    let out = env.cli(
        &endpoint,
        t,
        &[
            "invoke",
            "slow",
            "--async",
            "--payload",
            r#"{"seconds": 3}"#,
        ],
    );
    assert!(out.status.success());
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let busy_zone = wait_for("the event to be running", 15, || {
        live_workers(&env, &endpoint)
            .iter()
            .find(|w| w["busy"].as_u64().unwrap_or(0) > 0)
            .map(|w| w["zone"].as_str().unwrap().to_string())
    });
    let i = workers.iter().position(|(z, _)| *z == busy_zone).unwrap();
    let (_, mut dead) = workers.remove(i);
    dead.signal(libc::SIGKILL);
    dead.wait(Duration::from_secs(5));
    wait_for("the event to complete on the other worker", 40, || {
        let out = env.cli(&endpoint, t, &["logs", "slow"]);
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("END RequestId: {id}"))
            .then_some(())
    });
    let dl: Value =
        serde_json::from_str(&env.cli_ok(&endpoint, t, &["dlq", "list", "slow", "-o", "json"]))
            .unwrap();
    assert!(dl["records"].as_array().unwrap().is_empty(), "{dl}");
    // The killed worker's leftovers go with a restart.
    let mut again = start_worker(env.dir.path(), &busy_zone, &addr);
    again.terminate(Duration::from_secs(20));
    for (_, w) in workers.iter_mut() {
        w.terminate(Duration::from_secs(20));
    }
    controller.terminate(Duration::from_secs(10));
}
