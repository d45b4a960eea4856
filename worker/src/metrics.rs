//! Worker metrics in Prometheus text: invocations, errors, throttles (worker
//! full), cold starts and durations by function; warm and busy sandboxes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::pool::PoolSnapshot;

const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct PerFunction {
    invocations: u64,
    errors: u64,
    throttles: u64,
    cold_starts: u64,
    buckets: [u64; BUCKETS.len()],
    sum: f64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    by_function: Mutex<BTreeMap<String, PerFunction>>,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Metrics {
    pub fn invocation(&self, function: &str, secs: f64, error: bool, cold: bool) {
        let mut m = self.by_function.lock().expect("lock poisoned");
        let f = m.entry(function.to_string()).or_default();
        f.invocations += 1;
        f.errors += error as u64;
        f.cold_starts += cold as u64;
        f.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                f.buckets[i] += 1;
            }
        }
    }

    pub fn throttle(&self, function: &str) {
        let mut m = self.by_function.lock().expect("lock poisoned");
        m.entry(function.to_string()).or_default().throttles += 1;
    }

    pub fn render(&self, pool: &PoolSnapshot) -> String {
        let m = self.by_function.lock().expect("lock poisoned").clone();
        let mut out = String::new();
        let counter =
            |out: &mut String, name: &str, help: &str, get: &dyn Fn(&PerFunction) -> u64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (f, v) in &m {
                    let _ = writeln!(out, "{name}{{function=\"{}\"}} {}", esc(f), get(v));
                }
            };
        counter(
            &mut out,
            "nubo_worker_invocations_total",
            "Invocations run on this worker.",
            &|v| v.invocations,
        );
        counter(
            &mut out,
            "nubo_worker_errors_total",
            "Invocations that ended in a function error.",
            &|v| v.errors,
        );
        counter(
            &mut out,
            "nubo_worker_throttles_total",
            "Invocations refused because the worker was full.",
            &|v| v.throttles,
        );
        counter(
            &mut out,
            "nubo_worker_cold_starts_total",
            "Invocations that started a new sandbox.",
            &|v| v.cold_starts,
        );
        let _ = writeln!(out, "# HELP nubo_worker_duration_seconds Invocation duration.\n# TYPE nubo_worker_duration_seconds histogram");
        for (f, v) in &m {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "nubo_worker_duration_seconds_bucket{{function=\"{}\",le=\"{b}\"}} {}",
                    esc(f),
                    v.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "nubo_worker_duration_seconds_bucket{{function=\"{}\",le=\"+Inf\"}} {}",
                esc(f),
                v.invocations
            );
            let _ = writeln!(
                out,
                "nubo_worker_duration_seconds_sum{{function=\"{}\"}} {}",
                esc(f),
                v.sum
            );
            let _ = writeln!(
                out,
                "nubo_worker_duration_seconds_count{{function=\"{}\"}} {}",
                esc(f),
                v.invocations
            );
        }
        let _ = writeln!(out, "# HELP nubo_worker_sandboxes Sandboxes by function, version and state.\n# TYPE nubo_worker_sandboxes gauge");
        for (f, ver, c) in &pool.by_version {
            let _ = writeln!(
                out,
                "nubo_worker_sandboxes{{function=\"{}\",version=\"{}\",state=\"warm\"}} {}",
                esc(f),
                esc(ver),
                c.idle
            );
            let _ = writeln!(
                out,
                "nubo_worker_sandboxes{{function=\"{}\",version=\"{}\",state=\"busy\"}} {}",
                esc(f),
                esc(ver),
                c.busy
            );
        }
        let _ = writeln!(out, "# HELP nubo_worker_memory_used_mb Memory reserved by sandboxes.\n# TYPE nubo_worker_memory_used_mb gauge\nnubo_worker_memory_used_mb {}", pool.used_mb);
        let _ = writeln!(out, "# HELP nubo_worker_sandboxes_total Sandboxes on this worker.\n# TYPE nubo_worker_sandboxes_total gauge\nnubo_worker_sandboxes_total {}", pool.sandboxes);
        out
    }
}
