//! One invocation on a worker: take a sandbox from the pool, run the event,
//! write Lambda's START / END / REPORT lines, count it, give it back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::logs::LogStore;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolCounts, PoolError};
use crate::sandbox::{Completion, CreateError, FunctionSpec, Invocation, Sandbox, SandboxFactory};

/// The log tail returned with `--log-tail` (Lambda: the last 4 KB).
pub const TAIL_BYTES: usize = 4096;
/// Log lines kept per function (in memory, and on disk twice over).
pub const LOG_LINES: usize = 10_000;
pub const LOG_BYTES: usize = 4 * 1024 * 1024;

pub struct Worker<F: SandboxFactory> {
    pub pool: Arc<Pool<F>>,
    pub logs: Arc<LogStore>,
    pub metrics: Arc<Metrics>,
    /// Async attempts: term fence and one run per attempt.
    pub attempts: Arc<crate::attempts::Attempts<nubo_proto::v1::WorkerInvokeResponse>>,
}

#[derive(Debug)]
pub struct Output {
    pub completion: Completion,
    pub log_tail: String,
    pub cold_start: bool,
    pub pool: PoolCounts,
}

fn report(
    request_id: &str,
    duration: Duration,
    memory_mb: u32,
    max_used: Option<u64>,
    init: Option<Duration>,
) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    let mut s = format!(
        "REPORT RequestId: {request_id}\tDuration: {ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {memory_mb} MB\tMax Memory Used: {} MB\t",
        ms.ceil().max(1.0) as u64,
        max_used.unwrap_or(0)
    );
    if let Some(i) = init {
        s.push_str(&format!(
            "Init Duration: {:.2} ms\t",
            i.as_secs_f64() * 1000.0
        ));
    }
    s
}

/// The last `max` bytes of the lines, cut at a character boundary.
pub fn tail(lines: &[String], max: usize) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

impl<F: SandboxFactory> Worker<F> {
    pub fn new(pool: Arc<Pool<F>>) -> Worker<F> {
        Worker {
            pool,
            logs: Arc::new(LogStore::new(LOG_LINES, LOG_BYTES)),
            metrics: Arc::new(Metrics::default()),
            attempts: Arc::default(),
        }
    }

    pub async fn invoke(
        &self,
        spec: &FunctionSpec,
        request_id: &str,
        payload: Bytes,
        want_tail: bool,
    ) -> Result<Output, PoolError> {
        let start = Instant::now();
        let timeout = Duration::from_secs(spec.timeout_seconds.max(1) as u64);
        let mut lines = Vec::new();
        let lease = match self.pool.acquire(spec).await {
            Ok(l) => l,
            Err(PoolError::Create(CreateError::Init {
                error_type: _,
                body,
                lines: init_lines,
                init_duration,
            })) => {
                // Lambda reports a failed init as the invocation's error.
                lines.extend(init_lines);
                lines.push(format!(
                    "START RequestId: {request_id} Version: {}",
                    spec.version
                ));
                lines.push(format!("END RequestId: {request_id}"));
                lines.push(report(
                    request_id,
                    start.elapsed(),
                    spec.memory_mb,
                    None,
                    Some(init_duration),
                ));
                self.logs
                    .append(&spec.function_name, &spec.version, request_id, &lines);
                self.metrics.invocation(
                    &spec.function_name,
                    start.elapsed().as_secs_f64(),
                    true,
                    true,
                );
                return Ok(Output {
                    completion: Completion::FunctionError {
                        kind: "Unhandled".into(),
                        body,
                    },
                    log_tail: if want_tail {
                        tail(&lines, TAIL_BYTES)
                    } else {
                        String::new()
                    },
                    cold_start: true,
                    pool: self.pool.counts(&spec.function_name, &spec.version),
                });
            }
            Err(e) => {
                if matches!(e, PoolError::Full { .. }) {
                    self.metrics.throttle(&spec.function_name);
                }
                return Err(e);
            }
        };
        let init = lease.cold.as_ref().map(|(d, _)| *d);
        if let Some((_, init_lines)) = &lease.cold {
            lines.extend(init_lines.iter().cloned());
        }
        lines.push(format!(
            "START RequestId: {request_id} Version: {}",
            spec.version
        ));
        let run_start = Instant::now();
        let r = lease
            .sandbox
            .invoke(Invocation {
                request_id: request_id.to_string(),
                payload,
                timeout,
            })
            .await;
        // A timed-out call reports its timeout, not the time spent killing it.
        let duration = run_start.elapsed().min(timeout);
        lines.extend(r.lines);
        if let Some(p) = r.platform_line {
            lines.push(p);
        }
        lines.push(format!("END RequestId: {request_id}"));
        lines.push(report(
            request_id,
            duration,
            spec.memory_mb,
            r.max_memory_mb,
            init,
        ));
        let cold = init.is_some();
        self.pool.release(lease, r.reusable);
        self.logs
            .append(&spec.function_name, &spec.version, request_id, &lines);
        let is_err = matches!(r.completion, Completion::FunctionError { .. });
        self.metrics.invocation(
            &spec.function_name,
            start.elapsed().as_secs_f64(),
            is_err,
            cold,
        );
        Ok(Output {
            completion: r.completion,
            log_tail: if want_tail {
                tail(&lines, TAIL_BYTES)
            } else {
                String::new()
            },
            cold_start: cold,
            pool: self.pool.counts(&spec.function_name, &spec.version),
        })
    }
}
