//! What the e2e tests share: the `nubo` binary under test and the
//! credentials its clusters start with, a scratch directory with a CLI
//! pointed at it (`Env`), `nubo up` as one `Platform`, and starters for
//! controllers and workers. The generic parts (process guard, ports,
//! waiting) live in `nubo-test-support`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

pub use nubo_test_support::{free_port, http_get, wait_for, Nubo, Proc};

pub const NUBO: &str = env!("CARGO_BIN_EXE_nubo");
pub const TOKEN: &str = "nubo_e2e_admin_token_0123456789";
pub const SECRET: &str = "e2e-cluster-secret-0123456789";

/// The binary under test with the e2e credentials.
pub fn nubo() -> Nubo {
    Nubo {
        bin: NUBO.into(),
        cluster_secret: SECRET.into(),
        worker_secret: nubo_proto::worker_secret(SECRET),
        admin_token: TOKEN.into(),
    }
}

pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

pub fn functions_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("functions")
        .join(name)
}

/// A scratch directory (data dirs, the CLI's configuration), removed on drop.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Runs a CLI command against `endpoint` and returns its output.
    pub fn cli(&self, endpoint: &str, token: Option<&str>, args: &[&str]) -> Output {
        nubo().cli(endpoint, &self.config_dir(), token, args)
    }

    pub fn cli_ok(&self, endpoint: &str, token: Option<&str>, args: &[&str]) -> String {
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

/// The CLI arguments that create Python function `name` from `code` (a
/// directory or zip) with the examples' handler, `app.lambda_handler`.
pub fn create_args<'a>(name: &'a str, code: &'a str) -> Vec<&'a str> {
    vec![
        "function",
        "create",
        name,
        "--runtime",
        "python3.11",
        "--handler",
        "app.lambda_handler",
        "--code",
        code,
    ]
}

/// Starts `nubo up` and waits for its `ready` line.
pub fn start_up(env: &Env, port: u16, metrics: u16) -> Proc {
    start_up_with(env, port, metrics, &[])
}

pub fn start_up_with(env: &Env, port: u16, metrics: u16, vars: &[(&str, &str)]) -> Proc {
    nubo().up(
        &env.dir.path().join("data"),
        &env.config_dir(),
        port,
        metrics,
        vars,
    )
}

/// `nubo controller` `id` of the cluster on `ports`, data under `dir`.
pub fn start_controller(dir: &Path, id: u64, ports: &[u16]) -> Proc {
    nubo().controller(dir, id, ports)
}

/// Three `nubo controller` processes forming one cluster (ids 1..=3, in
/// order), data under `dir`: their ports and the processes.
pub fn start_controllers(dir: &Path) -> (Vec<u16>, Vec<Proc>) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let procs = (1..=3)
        .map(|id| start_controller(dir, id, &ports))
        .collect();
    (ports, procs)
}

/// `http://127.0.0.1:<port>` for each of `ports`.
pub fn endpoints(ports: &[u16]) -> Vec<String> {
    ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect()
}

pub fn start_worker(dir: &Path, zone: &str, controller: &str) -> Proc {
    start_worker_with_metrics(dir, zone, controller, free_port())
}

pub fn start_worker_with_metrics(dir: &Path, zone: &str, controller: &str, metrics: u16) -> Proc {
    start_worker_sized(dir, zone, controller, metrics, 2048)
}

/// A `nubo worker` in `zone`, registering with `controllers` (comma-separated).
pub fn start_worker_sized(
    dir: &Path,
    zone: &str,
    controllers: &str,
    metrics: u16,
    memory_mb: u32,
) -> Proc {
    nubo().worker(dir, zone, controllers, metrics, memory_mb)
}

/// Live workers as the controller sees them; empty while the controller
/// is still starting (its first admin token is created asynchronously).
pub fn live_workers(env: &Env, endpoint: &str) -> Vec<Value> {
    let out = env.cli(endpoint, Some(TOKEN), &["cluster", "status", "-o", "json"]);
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

/// `nubo up` with its embedded worker, and a CLI pointed at it.
pub struct Platform {
    pub env: Env,
    pub endpoint: String,
    /// HOST:PORT of the controller's /metrics.
    pub metrics: String,
    port: u16,
    metrics_port: u16,
    vars: Vec<(String, String)>,
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
            port,
            metrics_port,
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _up: up,
        }
    }

    /// What `nubo up` printed so far (the last lines).
    pub fn logs(&self) -> String {
        self._up.logs()
    }

    /// SIGKILLs `nubo up` (no cleanup of any kind runs) and starts it
    /// again on the same data, ports and settings.
    pub fn crash_and_restart(&mut self) {
        self._up.signal(libc::SIGKILL);
        self._up.wait(Duration::from_secs(10));
        let vars: Vec<(&str, &str)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self._up = start_up_with(&self.env, self.port, self.metrics_port, &vars);
    }

    /// The pid of `nubo up` (controller and embedded worker in one).
    pub fn pid(&self) -> i32 {
        self._up.pid()
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

/// A field of /proc/PID/status in kB (VmRSS, VmHWM, ...).
pub fn proc_status_kb(pid: i32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Creates function `name` from `tests/functions/probe` with handler
/// `probe.<handler>`.
pub fn probe(p: &Platform, name: &str, handler: &str, extra: &[&str]) {
    p.deploy(
        name,
        &functions_dir("probe"),
        &format!("probe.{handler}"),
        extra,
    );
}
