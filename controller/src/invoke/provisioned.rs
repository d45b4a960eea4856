//! Provisioned concurrency (`min_warm`), run by the leader: keeps that many
//! sandboxes per version on workers, and renews their leases.

use std::collections::HashMap;
use std::time::Duration;

use nubo_proto::v1 as pb;

use crate::invoke::placement::{Pick, WorkerConn};
use crate::invoke::{spec_of, with_secret, Invoker};

/// How often the leader renews provisioned sandboxes' leases on workers
/// (which last `PROVISION_LEASE`, 90 s, there).
const PROVISION_RENEW: Duration = Duration::from_secs(30);

impl Invoker {
    /// One pass of provisioned concurrency (run by the leader): every
    /// version with `min_warm` gets sandboxes created, spread like cold
    /// placements, until the workers report that many.
    pub async fn ensure_min_warm(&self) {
        let targets = self.node.with_registry(|r| r.min_warm_targets());
        // (worker, client, request): renewals and new sandboxes alike; a
        // prewarm both creates up to `count` and (re)leases that many.
        let mut sends: Vec<(String, WorkerConn, pb::PrewarmRequest)> = Vec::new();
        for view in targets {
            let (f, v) = (view.function_name.clone(), view.version.clone());
            let have = self.workers.sandboxes_of(&f, &v, None);
            let want = view.config.min_warm;
            let request = |count| pb::PrewarmRequest {
                function: Some(spec_of(&view)),
                count,
            };
            let renew = {
                let mut g = self.renewed.lock().expect("lock poisoned");
                let due = g
                    .get(&(f.clone(), v.clone()))
                    .is_none_or(|t| t.elapsed() >= PROVISION_RENEW);
                if due {
                    g.insert((f.clone(), v.clone()), std::time::Instant::now());
                }
                due
            };
            // Plan the missing ones worker by worker.
            let mut plan: HashMap<String, (Pick, u32)> = HashMap::new();
            for _ in have..want {
                let Some(p) = self.workers.pick(&f, &v, view.config.memory_mb, &[]) else {
                    break;
                };
                // Not a call: only the placement counters are wanted.
                self.workers.finish(&p, None, false);
                let e = plan.entry(p.id.clone()).or_insert_with(|| {
                    let on = self.workers.sandboxes_of(&f, &v, Some(&p.id));
                    (p.clone(), on)
                });
                e.1 += 1;
            }
            if renew {
                // Workers holding sandboxes of this version keep up to
                // `min_warm` of them (in all) past their keep-alive for
                // another lease.
                let mut left = want;
                for (id, client) in self.workers.live_clients() {
                    let count = self.workers.sandboxes_of(&f, &v, Some(&id)).min(left);
                    left -= count;
                    // A planned worker's prewarm below leases its sandboxes.
                    if count > 0 && !plan.contains_key(&id) {
                        sends.push((id, client, request(count)));
                    }
                }
            }
            for (id, (pick, count)) in plan {
                sends.push((id, pick.client, request(count)));
            }
        }
        let calls = sends.into_iter().map(|(id, client, req)| {
            let secret = self.worker_secret.clone();
            let workers = self.workers.clone();
            async move {
                match client
                    .prewarm(with_secret(req, &secret, Duration::from_secs(60)))
                    .await
                {
                    Ok(resp) => workers.report(&id, resp.pool.as_ref()),
                    Err(s) => tracing::warn!(worker = %id, "prewarming: {}", s.message()),
                }
            }
        });
        futures::future::join_all(calls).await;
    }
}
