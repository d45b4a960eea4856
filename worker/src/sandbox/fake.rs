//! An in-process sandbox: runs a Rust closure instead of a container, so
//! the pool, the worker and placement test without root or crun.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
        }
    }
}

pub struct FakeSandbox {
    spec: FunctionSpec,
    handler: Arc<Handler>,
    alive: AtomicBool,
    destroyed: Arc<AtomicU64>,
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
            },
            init_duration: self.create_delay,
            init_lines: vec![],
        })
    }
}

impl Sandbox for FakeSandbox {
    async fn invoke(&self, inv: Invocation) -> InvokeResult {
        let c = (self.handler)(&self.spec, &inv.payload);
        InvokeResult {
            completion: c,
            reusable: true,
            max_memory_mb: Some(1),
            lines: vec![format!("fake {}", inv.request_id)],
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
