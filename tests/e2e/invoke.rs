//! The sync invoke path end to end: `nubo up` (controller + worker with
//! real crun sandboxes), functions deployed and invoked through the CLI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::{self, functions_dir, probe, Platform, NUBO};

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

/// The console-tutorial handler (`lambda_handler(event, context)` reading
/// `event['name']`) is created, invoked, published and aliased through the
/// CLI; the result goes to stdout (valid JSON), the log tail to stderr;
/// an alias with a weight routes that share of calls to the other version
/// (within 4.5 standard deviations over 300 calls); `nubo logs` shows
/// START / END / REPORT lines with Init Duration on the cold start.
#[test]
#[ignore = "needs root"]
fn python_function_through_the_cli_with_versions_aliases_and_weights() {
    let p = Platform::start();
    p.deploy(
        "hello",
        &support::example("hello"),
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

/// Lambda's error and limit semantics: unhandled exceptions carry
/// errorMessage / errorType / stackTrace; a crashed runtime is reported
/// and replaced; an import failure is an init error in the response and
/// the log; unknown function or qualifier is NOT_FOUND; a payload over
/// 6 MB or not JSON is INVALID_ARGUMENT; calls over the reserved
/// concurrency are throttled (RESOURCE_EXHAUSTED).
#[test]
#[ignore = "needs root"]
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

/// Provisioned concurrency: with `--min-warm 2` the leader has two
/// sandboxes created before any call, so the first invoke is warm (no Init
/// Duration in its REPORT line); they outlive the idle keep-alive (1 s
/// here): the same sandbox answers after it; `function get` shows the
/// setting.
#[test]
#[ignore = "needs root"]
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

/// Official runtime clients run unmodified: a `provided` function whose
/// `bootstrap` starts AWS's `awslambdaric` (from PyPI) as the entry point,
/// and one whose `bootstrap` is built with the `lambda_runtime` crate
/// (`examples/rust-hello`). Both answer, cold and warm, with the request
/// id the platform assigned.
#[test]
#[ignore = "needs root"]
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
