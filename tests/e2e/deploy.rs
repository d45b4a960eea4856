//! The deploy path end to end: `nubo up` (the whole platform in one
//! process) driven through the CLI, with the data kept across restarts.

use std::time::Duration;

use crate::support::{example, free_port, http_get, start_up, Env};

/// `nubo up` runs the platform in one process: the CLI (with the admin
/// token `nubo up` stored for it) creates, publishes and aliases a
/// function; errors exit non-zero with the server's message; /metrics
/// answers; SIGTERM exits 0; a restart keeps the data.
#[test]
#[ignore = "needs root"]
fn nubo_up_deploys_and_keeps_data_across_restarts() {
    let env = Env::new();
    let (port, metrics) = (free_port(), free_port());
    let ep = format!("http://127.0.0.1:{port}");
    let mut up = start_up(&env, port, metrics);
    assert!(
        env.config_dir().join("token").exists(),
        "nubo up must store the admin token"
    );

    let code = example("hello");
    env.cli_ok(
        &ep,
        None,
        &[
            "function",
            "create",
            "hello",
            "--runtime",
            "python3.11",
            "--handler",
            "app.lambda_handler",
            "--code",
            code.to_str().unwrap(),
            "--memory",
            "256",
            "--env",
            "GREETING=Hi",
        ],
    );
    let v = env.cli_ok(&ep, None, &["version", "publish", "hello", "-o", "json"]);
    assert!(v.contains("\"1\""), "publish printed {v}");
    env.cli_ok(
        &ep,
        None,
        &["alias", "create", "hello", "prod", "--version", "1"],
    );
    let got = env.cli_ok(&ep, None, &["function", "get", "hello:prod", "-o", "json"]);
    assert!(got.contains("256") && got.contains("python3.11"), "{got}");
    let list = env.cli_ok(&ep, None, &["function", "list"]);
    assert!(list.contains("hello"), "{list}");

    // Errors: non-zero exit, the server's code and message.
    let out = env.cli(&ep, None, &["function", "get", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NOT_FOUND") && err.contains("nope"), "{err}");
    let out = env.cli(&ep, Some("nubo_wrong"), &["function", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"));

    // One invocation, whose log must outlive the restart below.
    let out = env.cli_ok(
        &ep,
        None,
        &["invoke", "hello:prod", "--payload", r#"{"name":"Ada"}"#],
    );
    assert!(out.contains("Ada"), "{out}");

    let m = http_get(&format!("127.0.0.1:{metrics}"), "/metrics");
    assert!(m.contains("nubo_raft_term"), "{m}");
    assert!(
        m.contains("nubo_api_requests_total{method=\"CreateFunction\",code=\"OK\"} 1"),
        "{m}"
    );

    // New code for $LATEST through the streamed upload; the published
    // version keeps its own package.
    let sha = |target: &str| {
        let got = env.cli_ok(&ep, None, &["function", "get", target, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&got).expect("function get is JSON");
        v["configuration"]["code_sha256"]
            .as_str()
            .expect("configuration.code_sha256")
            .to_string()
    };
    let before = sha("hello");
    let noop = example("noop");
    env.cli_ok(
        &ep,
        None,
        &[
            "function",
            "update-code",
            "hello",
            "--code",
            noop.to_str().unwrap(),
        ],
    );
    assert_ne!(sha("hello"), before, "update-code changed nothing");
    assert_eq!(sha("hello:prod"), before, "version 1 must keep its code");

    up.signal(libc::SIGTERM);
    assert_eq!(
        up.wait(Duration::from_secs(20)),
        Some(0),
        "SIGTERM must exit 0"
    );

    let _up = start_up(&env, port, metrics);
    let got = env.cli_ok(&ep, None, &["function", "get", "hello:prod", "-o", "json"]);
    assert!(got.contains("256"), "data lost across restart: {got}");
    // Function logs are kept on disk by the worker and come back.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let logs = env.cli_ok(&ep, None, &["logs", "hello"]);
        if logs.contains("START RequestId") && logs.contains("REPORT RequestId") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "logs lost across restart:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
