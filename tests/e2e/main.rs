//! End-to-end tests of the `nubo` binary: real processes on loopback ports,
//! driven through the CLI exactly as a user would.

mod invoke;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NUBO: &str = env!("CARGO_BIN_EXE_nubo");
const TOKEN: &str = "nubo_e2e_admin_token_0123456789";
const SECRET: &str = "e2e-cluster-secret-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// A child process stopped when dropped (SIGTERM, then SIGKILL after a
/// grace period), so a failing test leaves nothing running.
struct Proc {
    child: Option<Child>,
    name: String,
}

impl Proc {
    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for exit, up to `timeout`; returns the exit code.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
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
}

impl Proc {
    /// SIGTERM, then up to `timeout` for a clean exit (a worker destroys
    /// its sandboxes on the way out); SIGKILL after that. Never panics.
    fn terminate(&mut self, timeout: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
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
        // A clean stop first: a worker removes its sandboxes and their
        // network namespaces only when it is allowed to.
        self.terminate(Duration::from_secs(15));
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Runs a CLI command against `endpoint` and returns its output.
    fn cli(&self, endpoint: &str, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(NUBO);
        cmd.args(args)
            .env("NUBO_ENDPOINT", endpoint)
            .env("NUBO_CONFIG_DIR", self.config_dir())
            .env_remove("NUBO_TOKEN")
            .stdin(Stdio::null());
        if let Some(t) = token {
            cmd.env("NUBO_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        eprintln!(
            "$ nubo {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn cli_ok(&self, endpoint: &str, token: Option<&str>, args: &[&str]) -> String {
        let out = self.cli(endpoint, token, args);
        assert!(
            out.status.success(),
            "nubo {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Starts `nubo up` and waits for its `ready` line.
fn start_up(env: &Env, port: u16, metrics: u16) -> Proc {
    start_up_with(env, port, metrics, &[])
}

fn start_up_with(env: &Env, port: u16, metrics: u16, vars: &[(&str, &str)]) -> Proc {
    let mut child = Command::new(NUBO)
        .args([
            "up",
            "--data-dir",
            env.dir.path().join("data").to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ])
        .env("NUBO_CONFIG_DIR", env.config_dir())
        .env_remove("NUBO_FAILPOINTS")
        .envs(vars.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready") {
                let _ = tx.send(line);
            }
        }
    });
    let p = Proc {
        child: Some(child),
        name: "nubo up".into(),
    };
    rx.recv_timeout(Duration::from_secs(30))
        .expect("nubo up did not print ready within 30 s");
    p
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// `nubo up` runs the platform in one process: the CLI (with the admin
/// token `nubo up` stored for it) creates, publishes and aliases a
/// function; errors exit non-zero with the server's message; /metrics
/// answers; SIGTERM exits 0; a restart keeps the data.
#[test]
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

fn start_controller(dir: &Path, id: u64, ports: &[u16]) -> Proc {
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let child = Command::new(NUBO)
        .args([
            "controller",
            "--id",
            &id.to_string(),
            "--listen",
            &format!("127.0.0.1:{}", ports[id as usize - 1]),
            "--peers",
            &peers.join(","),
            "--data-dir",
            dir.join(format!("c{id}")).to_str().unwrap(),
        ])
        .env("NUBO_CLUSTER_SECRET", SECRET)
        .env("NUBO_BOOTSTRAP_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc {
        child: Some(child),
        name: format!("controller {id}"),
    }
}

/// Three real `nubo controller` processes: the CLI, given all three
/// endpoints, keeps working after the leader is SIGKILLed, and nothing it
/// was told succeeded is lost.
#[test]
fn cli_keeps_working_when_the_leader_is_killed() {
    let env = Env::new();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut procs: Vec<Proc> = (1..=3)
        .map(|id| start_controller(env.dir.path(), id, &ports))
        .collect();
    let eps: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let all = eps.join(",");
    let code = example("hello");
    let code = code.to_str().unwrap();

    // Wait for the cluster (and its bootstrap admin token) to be ready.
    let start = Instant::now();
    loop {
        let out = env.cli(&all, Some(TOKEN), &["cluster", "status", "-o", "json"]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("leader") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "cluster not ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..3 {
        env.cli_ok(
            &all,
            Some(TOKEN),
            &[
                "function",
                "create",
                &format!("f{i}"),
                "--runtime",
                "python3.11",
                "--handler",
                "app.lambda_handler",
                "--code",
                code,
            ],
        );
    }
    let status = env.cli_ok(&all, Some(TOKEN), &["cluster", "status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    let leader = v["leader_id"].as_u64().expect("leader_id in status JSON");
    assert!((1..=3).contains(&leader));
    procs[leader as usize - 1].signal(libc::SIGKILL);
    procs[leader as usize - 1].wait(Duration::from_secs(5));

    // The CLI fails over on its own.
    for i in 3..6 {
        env.cli_ok(
            &all,
            Some(TOKEN),
            &[
                "function",
                "create",
                &format!("f{i}"),
                "--runtime",
                "python3.11",
                "--handler",
                "app.lambda_handler",
                "--code",
                code,
            ],
        );
    }
    env.cli_ok(&all, Some(TOKEN), &["version", "publish", "f0"]);
    let list = env.cli_ok(&all, Some(TOKEN), &["function", "list", "-o", "json"]);
    for i in 0..6 {
        assert!(
            list.contains(&format!("\"f{i}\"")),
            "f{i} missing after failover: {list}"
        );
    }
    let status = env.cli_ok(&all, Some(TOKEN), &["cluster", "status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_ne!(
        v["leader_id"].as_u64(),
        Some(leader),
        "a new leader must be elected"
    );
}

/// Durability ends at the Raft commit, before the reply: a controller that
/// crashes right after committing (failpoint `after-commit`) never answers,
/// yet the write is there after the restart. The client saw an error, so
/// it may retry; with the same request id the retry is applied once.
#[test]
fn a_crash_between_commit_and_reply_keeps_the_write() {
    let env = Env::new();
    let (port, metrics) = (free_port(), free_port());
    let ep = format!("http://127.0.0.1:{port}");
    // First start creates the token; the failpoint is armed on the second.
    let mut up = start_up(&env, port, metrics);
    up.signal(libc::SIGTERM);
    assert_eq!(up.wait(Duration::from_secs(20)), Some(0));
    let mut up = start_up_with(
        &env,
        port,
        metrics,
        &[("NUBO_FAILPOINTS", "after-commit=exit")],
    );
    let code = example("hello");
    let mut cmd = Command::new(NUBO);
    cmd.args([
        "function",
        "create",
        "crashy",
        "--runtime",
        "python3.11",
        "--handler",
        "app.lambda_handler",
        "--code",
        code.to_str().unwrap(),
    ])
    .env("NUBO_ENDPOINT", &ep)
    .env("NUBO_CONFIG_DIR", env.config_dir())
    .env("NUBO_RETRY_SECS", "1");
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "the crashed controller cannot have replied"
    );
    assert_eq!(
        up.wait(Duration::from_secs(10)),
        Some(86),
        "failpoint exit code"
    );

    let _up = start_up(&env, port, metrics);
    let got = env.cli_ok(&ep, None, &["function", "get", "crashy", "-o", "json"]);
    assert!(got.contains("crashy"), "committed write lost: {got}");
}

/// The async accept path ends at the same place: a controller that crashes
/// right after committing an Event invocation never answers, yet after the
/// restart the event runs; the client, retrying with the same request id
/// (`x-nubo-request-id`), gets the same event back, and it runs once.
#[test]
fn an_async_event_committed_before_a_crash_runs_once() {
    use nubo_proto::v1 as pb;
    let env = Env::new();
    let (port, metrics) = (free_port(), free_port());
    let ep = format!("http://127.0.0.1:{port}");
    let mut up = start_up(&env, port, metrics);
    env.cli_ok(
        &ep,
        None,
        &[
            "function",
            "create",
            "ev",
            "--runtime",
            "python3.11",
            "--handler",
            "app.lambda_handler",
            "--code",
            example("hello").to_str().unwrap(),
        ],
    );
    up.signal(libc::SIGTERM);
    assert_eq!(up.wait(Duration::from_secs(20)), Some(0));
    let token = std::fs::read_to_string(env.config_dir().join("token"))
        .unwrap()
        .trim()
        .to_string();
    let event = || {
        let mut r = tonic::Request::new(pb::InvokeRequest {
            function_name: "ev".into(),
            payload: br#"{"name":"once"}"#.to_vec(),
            invocation_type: pb::InvocationType::Event as i32,
            ..Default::default()
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r.metadata_mut()
            .insert("x-nubo-request-id", "e2e-crash-retry-1".parse().unwrap());
        r
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let connect = || {
        let url = ep.clone();
        async move {
            for _ in 0..100 {
                if let Ok(ch) = tonic::transport::Endpoint::from_shared(url.clone())
                    .unwrap()
                    .connect()
                    .await
                {
                    return pb::invocations_client::InvocationsClient::new(ch);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("nubo up not reachable");
        }
    };

    let mut up = start_up_with(
        &env,
        port,
        metrics,
        &[("NUBO_FAILPOINTS", "after-commit=exit")],
    );
    let first = rt.block_on(async { connect().await.invoke(event()).await });
    assert!(first.is_err(), "the crashed controller cannot have replied");
    assert_eq!(up.wait(Duration::from_secs(10)), Some(86));

    let _up = start_up(&env, port, metrics);
    let starts = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains("START RequestId"))
            .map(|l| l.split("START RequestId: ").nth(1).unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ran = loop {
        let s = starts(&env.cli_ok(&ep, None, &["logs", "ev"]));
        if !s.is_empty() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the committed event never ran"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ran.len(), 1, "{ran:?}");
    let again = rt
        .block_on(async { connect().await.invoke(event()).await })
        .expect("the retry is answered")
        .into_inner();
    assert_eq!(again.status_code, 202);
    assert!(
        ran[0].starts_with(&again.request_id),
        "the retry names the same event: {} vs {ran:?}",
        again.request_id
    );
    std::thread::sleep(Duration::from_secs(2));
    let s = starts(&env.cli_ok(&ep, None, &["logs", "ev"]));
    assert_eq!(s.len(), 1, "the retry must not run it again: {s:?}");
}

/// Workers hold a credential derived from the cluster secret (printed by
/// `nubo cluster worker-secret`): it admits the calls workers make
/// (heartbeats) and not the controllers' own (Raft votes, blob fetches);
/// the cluster secret admits both; a wrong secret is refused with a
/// message naming the fix. A heartbeat answered by the leader carries its
/// Raft term (the workers' fence for async dispatch).
#[test]
fn the_worker_credential_cannot_speak_raft() {
    use nubo_proto::v1 as pb;
    use nubo_proto::with_secret;
    let env = Env::new();
    let port = free_port();
    let _controller = start_controller(env.dir.path(), 1, &[port]);
    let out = Command::new(NUBO)
        .args(["cluster", "worker-secret"])
        .env("NUBO_CLUSTER_SECRET", SECRET)
        .output()
        .unwrap();
    let ws = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(ws, nubo_proto::worker_secret(SECRET));
    assert_ne!(ws, SECRET);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let hb = pb::WorkerHeartbeat {
            id: "w-credential-test".into(),
            zone: "a".into(),
            address: "127.0.0.1:1".into(),
            memory_mb: 1024,
            max_sandboxes: 8,
            ..Default::default()
        };
        // Up, elected, and admitting the worker credential.
        let ch = loop {
            assert!(std::time::Instant::now() < deadline, "controller not up");
            if let Ok(ch) = tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
            {
                let mut wc = pb::worker_control_client::WorkerControlClient::new(ch.clone());
                if let Ok(r) = wc.heartbeat(with_secret(hb.clone(), &ws)).await {
                    if r.into_inner().leader_term > 0 {
                        break ch;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mut raft = pb::raft_internal_client::RaftInternalClient::new(ch.clone());
        let vote = |secret: &str| {
            with_secret(
                pb::RaftPayload {
                    data: b"{}".to_vec(),
                },
                secret,
            )
        };
        let e = raft.vote(vote(&ws)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        let mut blobs = pb::blob_internal_client::BlobInternalClient::new(ch.clone());
        let e = blobs
            .fetch_blob(with_secret(
                pb::BlobRequest {
                    sha256: "0".repeat(64),
                },
                &ws,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        // The cluster secret passes (the empty vote then fails to decode).
        let e = raft.vote(vote(SECRET)).await.unwrap_err();
        assert_ne!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        let mut wc = pb::worker_control_client::WorkerControlClient::new(ch);
        let e = wc
            .heartbeat(with_secret(hb, "not-the-secret"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            e.message().contains("nubo cluster worker-secret"),
            "{}",
            e.message()
        );
    });
}
