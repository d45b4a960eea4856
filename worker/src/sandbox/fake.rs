//! An in-process sandbox: runs a Rust closure instead of a container, so
//! the pool, the worker and placement test without root or crun.
//!
//! [`FakeFactory::programmable`] also obeys the payload (`{"sleep_ms": N,
//! "error": "message"}`) and every fake records what ran ([`FakeFactory::ran`]),
//! so the controllers' dispatcher, placement and fencing test against
//! in-process workers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::sandbox::{
    Completion, CreateError, Created, FunctionSpec, Invocation, InvokeResult, Sandbox,
    SandboxFactory,
};

type Handler = dyn Fn(&FunctionSpec, &Bytes) -> Completion + Send + Sync;

#[derive(Clone)]
pub struct FakeFactory {
    pub handler: Arc<Handler>,
    pub created: Arc<AtomicU64>,
    pub destroyed: Arc<AtomicU64>,
    pub create_delay: Duration,
    /// Handlers named `init_error` fail their init.
    pub fail_init_handler: String,
    /// Obey the payload: `sleep_ms` (an async sleep before answering) and
    /// `error` (an `Unhandled` function error with that message instead of
    /// the handler's result). Off in `echo()`.
    pub obey_payload: bool,
    /// Every invocation that started on this factory's sandboxes, in order.
    pub ran: Arc<Mutex<Vec<Ran>>>,
}

/// One invocation as a fake sandbox saw it.
#[derive(Debug, Clone)]
pub struct Ran {
    pub request_id: String,
    pub function: String,
    pub payload: Bytes,
    pub at: Instant,
}

/// What a programmable fake reads from a JSON payload.
#[derive(Debug, Default, serde::Deserialize)]
struct Program {
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    error: Option<String>,
    /// A line to print (beside the usual one).
    #[serde(default)]
    print: Option<String>,
}

impl FakeFactory {
    /// Echoes the payload back.
    pub fn echo() -> FakeFactory {
        FakeFactory {
            handler: Arc::new(|_, p| Completion::Ok(p.clone())),
            created: Arc::default(),
            destroyed: Arc::default(),
            create_delay: Duration::ZERO,
            fail_init_handler: "init_error".into(),
            obey_payload: false,
            ran: Arc::default(),
        }
    }

    /// Like `echo()`, obeying `{"sleep_ms": N, "error": "message"}` in the
    /// payload (see [`FakeFactory::obey_payload`]).
    pub fn programmable() -> FakeFactory {
        FakeFactory {
            obey_payload: true,
            ..FakeFactory::echo()
        }
    }

    /// How many times an invocation with `request_id` started here.
    pub fn runs_of(&self, request_id: &str) -> usize {
        self.ran
            .lock()
            .expect("lock poisoned")
            .iter()
            .filter(|r| r.request_id == request_id)
            .count()
    }

    /// Invocations of `function` that started here, in order.
    pub fn runs_of_function(&self, function: &str) -> Vec<Ran> {
        self.ran
            .lock()
            .expect("lock poisoned")
            .iter()
            .filter(|r| r.function == function)
            .cloned()
            .collect()
    }
}

pub struct FakeSandbox {
    spec: FunctionSpec,
    handler: Arc<Handler>,
    alive: AtomicBool,
    destroyed: Arc<AtomicU64>,
    obey_payload: bool,
    ran: Arc<Mutex<Vec<Ran>>>,
}

impl SandboxFactory for FakeFactory {
    type Sandbox = FakeSandbox;

    async fn create(
        &self,
        spec: &FunctionSpec,
        _id: u64,
    ) -> Result<Created<FakeSandbox>, CreateError> {
        tokio::time::sleep(self.create_delay).await;
        if spec.handler == self.fail_init_handler {
            return Err(CreateError::Init {
                error_type: "Runtime.ImportModuleError".into(),
                body: Bytes::from_static(
                    b"{\"errorType\":\"Runtime.ImportModuleError\",\"errorMessage\":\"fake\"}",
                ),
                lines: vec!["init failed".into()],
                init_duration: self.create_delay,
            });
        }
        self.created.fetch_add(1, Ordering::SeqCst);
        Ok(Created {
            sandbox: FakeSandbox {
                spec: spec.clone(),
                handler: self.handler.clone(),
                alive: AtomicBool::new(true),
                destroyed: self.destroyed.clone(),
                obey_payload: self.obey_payload,
                ran: self.ran.clone(),
            },
            init_duration: self.create_delay,
            init_lines: vec![],
        })
    }
}

impl Sandbox for FakeSandbox {
    async fn invoke(&self, inv: Invocation) -> InvokeResult {
        self.ran.lock().expect("lock poisoned").push(Ran {
            request_id: inv.request_id.clone(),
            function: self.spec.function_name.clone(),
            payload: inv.payload.clone(),
            at: Instant::now(),
        });
        let program = if self.obey_payload {
            serde_json::from_slice::<Program>(&inv.payload).unwrap_or_default()
        } else {
            Program::default()
        };
        if program.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(program.sleep_ms)).await;
        }
        let c = match program.error {
            Some(message) => Completion::unhandled("FakeError", &message),
            None => (self.handler)(&self.spec, &inv.payload),
        };
        let mut lines = vec![format!("fake {}", inv.request_id)];
        lines.extend(program.print);
        InvokeResult {
            completion: c,
            reusable: true,
            max_memory_mb: Some(1),
            lines,
            platform_line: None,
        }
    }

    fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    async fn destroy(self) {
        self.alive.store(false, Ordering::SeqCst);
        self.destroyed.fetch_add(1, Ordering::SeqCst);
    }
}
