//! The workers as one controller sees them: registered and refreshed by
//! heartbeats, never written to Raft. Placement reads this view on every
//! invoke, so a sync invoke costs no Raft round trip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nubo_proto::v1 as pb;
use tonic::transport::{Channel, Endpoint};

pub type WorkerClient = pb::worker_api_client::WorkerApiClient<Channel>;

/// A worker in this process (`nubo up`): called directly, without a
/// gRPC hop or message encoding.
pub type LocalWorker = Arc<dyn pb::worker_api_server::WorkerApi>;

/// How to reach a worker.
#[derive(Clone)]
pub enum WorkerConn {
    Remote(WorkerClient),
    Local(LocalWorker),
}

impl WorkerConn {
    pub async fn invoke(
        &self,
        req: tonic::Request<pb::WorkerInvokeRequest>,
    ) -> Result<pb::WorkerInvokeResponse, tonic::Status> {
        match self {
            WorkerConn::Remote(c) => c.clone().invoke(req).await.map(|r| r.into_inner()),
            WorkerConn::Local(w) => w.invoke(req).await.map(|r| r.into_inner()),
        }
    }

    pub async fn prewarm(
        &self,
        req: tonic::Request<pb::PrewarmRequest>,
    ) -> Result<pb::PrewarmResponse, tonic::Status> {
        match self {
            WorkerConn::Remote(c) => c.clone().prewarm(req).await.map(|r| r.into_inner()),
            WorkerConn::Local(w) => w.prewarm(req).await.map(|r| r.into_inner()),
        }
    }

    pub async fn find_attempts(
        &self,
        req: tonic::Request<pb::FindAttemptsRequest>,
    ) -> Result<pb::FindAttemptsResponse, tonic::Status> {
        match self {
            WorkerConn::Remote(c) => c.clone().find_attempts(req).await.map(|r| r.into_inner()),
            WorkerConn::Local(w) => w.find_attempts(req).await.map(|r| r.into_inner()),
        }
    }

    pub async fn logs(
        &self,
        req: tonic::Request<pb::GetLogsRequest>,
    ) -> Result<pb::GetLogsResponse, tonic::Status> {
        match self {
            WorkerConn::Remote(c) => c.clone().logs(req).await.map(|r| r.into_inner()),
            WorkerConn::Local(w) => w.logs(req).await.map(|r| r.into_inner()),
        }
    }
}

/// Largest worker API message (6 MB payload + framing).
pub const MAX_WORKER_MESSAGE: usize = 8 * 1024 * 1024;

#[derive(Debug, Default, Clone, Copy)]
struct PoolView {
    idle: u32,
    busy: u32,
    /// Calls this controller sent since the last report of this pool.
    since_report: u32,
}

struct Entry {
    hb: pb::WorkerHeartbeat,
    last_seen: Instant,
    client: WorkerConn,
    pools: HashMap<(String, String), PoolView>,
    /// Calls this controller has in flight on the worker.
    inflight: u32,
    /// Set when a call failed at the transport level; cleared by the next
    /// heartbeat that arrives after it.
    failed_at: Option<Instant>,
}

pub struct WorkerRegistry {
    inner: Mutex<HashMap<String, Entry>>,
    locals: Mutex<HashMap<String, LocalWorker>>,
    pub dead_after: Duration,
    pub heartbeat: Duration,
}

/// A worker chosen for a call. Report the outcome with
/// [`WorkerRegistry::finish`].
#[derive(Clone)]
pub struct Pick {
    pub id: String,
    pub zone: String,
    pub address: String,
    pub client: WorkerConn,
    pub warm: bool,
}

#[derive(Debug, Clone)]
pub struct WorkerView {
    pub status: pb::WorkerStatus,
}

fn connect(address: &str) -> Option<WorkerClient> {
    let ep = Endpoint::from_shared(format!("http://{address}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    Some(
        pb::worker_api_client::WorkerApiClient::new(ep.connect_lazy())
            .max_decoding_message_size(MAX_WORKER_MESSAGE)
            .max_encoding_message_size(MAX_WORKER_MESSAGE),
    )
}

impl WorkerRegistry {
    pub fn new(heartbeat: Duration, dead_after: Duration) -> WorkerRegistry {
        WorkerRegistry {
            inner: Mutex::new(HashMap::new()),
            locals: Mutex::new(HashMap::new()),
            dead_after,
            heartbeat,
        }
    }

    /// Declares that worker `id` runs in this process: calls to it skip
    /// the network. It still registers (and stays alive) by heartbeats.
    pub fn register_local(&self, id: &str, worker: LocalWorker) {
        self.locals
            .lock()
            .expect("lock poisoned")
            .insert(id.to_string(), worker.clone());
        if let Some(e) = self.inner.lock().expect("lock poisoned").get_mut(id) {
            e.client = WorkerConn::Local(worker);
        }
    }

    /// Registers or refreshes a worker. Errors name what is wrong.
    pub fn heartbeat(&self, hb: pb::WorkerHeartbeat) -> Result<(), String> {
        if hb.id.is_empty() || hb.id.len() > 128 {
            return Err("worker id must be 1-128 characters".into());
        }
        if hb.zone.is_empty() {
            return Err("worker zone must not be empty".into());
        }
        let now = Instant::now();
        let mut g = self.inner.lock().expect("lock poisoned");
        let fresh = match g.get(&hb.id) {
            Some(e) => e.hb.address != hb.address || e.hb.incarnation != hb.incarnation,
            None => true,
        };
        let pools: HashMap<(String, String), PoolView> = hb
            .pools
            .iter()
            .map(|p| {
                (
                    (p.function_name.clone(), p.version.clone()),
                    PoolView {
                        idle: p.idle,
                        busy: p.busy,
                        since_report: 0,
                    },
                )
            })
            .collect();
        if fresh {
            let local = self
                .locals
                .lock()
                .expect("lock poisoned")
                .get(&hb.id)
                .cloned();
            let client =
                match local {
                    Some(w) => WorkerConn::Local(w),
                    None => WorkerConn::Remote(connect(&hb.address).ok_or_else(|| {
                        format!("worker address {:?} is not HOST:PORT", hb.address)
                    })?),
                };
            if !g.contains_key(&hb.id) {
                tracing::info!(worker = %hb.id, zone = %hb.zone, address = %hb.address, "worker registered");
            }
            g.insert(
                hb.id.clone(),
                Entry {
                    hb,
                    last_seen: now,
                    client,
                    pools,
                    inflight: 0,
                    failed_at: None,
                },
            );
        } else if let Some(e) = g.get_mut(&hb.id) {
            e.hb = hb;
            e.last_seen = now;
            e.failed_at = None;
            e.pools = pools;
        }
        Ok(())
    }

    fn live(&self, e: &Entry, now: Instant) -> bool {
        now.duration_since(e.last_seen) < self.dead_after && e.failed_at.is_none()
    }

    /// Chooses a worker for one call of (function, version):
    /// - a live worker with an idle warm sandbox of it, if any;
    /// - else a live worker with room, in the zone that has the fewest
    ///   sandboxes of it, least loaded first.
    ///
    /// Never a dead, failed, excluded or full one.
    pub fn pick(
        &self,
        function: &str,
        version: &str,
        memory_mb: u32,
        exclude: &[String],
    ) -> Option<Pick> {
        let now = Instant::now();
        let key = (function.to_string(), version.to_string());
        let mut g = self.inner.lock().expect("lock poisoned");
        let any_live = g.values().any(|e| self.live(e, now));
        let mut candidates: Vec<&String> = g
            .iter()
            .filter(|(id, e)| self.live(e, now) && !exclude.contains(id))
            .map(|(id, _)| id)
            .collect();
        if !any_live {
            // No worker heard from lately. An overloaded worker's heartbeats
            // come late; one that was live moments ago and never failed a
            // call is a better bet than refusing the call.
            candidates = g
                .iter()
                .filter(|(id, e)| {
                    e.failed_at.is_none()
                        && now.duration_since(e.last_seen) < self.dead_after * 5
                        && !exclude.contains(id)
                })
                .map(|(id, _)| id)
                .collect();
        }
        // Warm first: most estimated idle sandboxes.
        let mut best_warm: Option<(&String, u32)> = None;
        for id in &candidates {
            let e = &g[*id];
            if let Some(p) = e.pools.get(&key) {
                let est = p.idle.saturating_sub(p.since_report);
                if est > 0 && best_warm.map(|(_, n)| est > n).unwrap_or(true) {
                    best_warm = Some((id, est));
                }
            }
        }
        let chosen = if let Some((id, _)) = best_warm {
            Some((id.clone(), true))
        } else {
            // Sandboxes of this function per zone.
            let mut per_zone: HashMap<&str, u32> = HashMap::new();
            for e in g.values().filter(|e| self.live(e, now)) {
                let n = e
                    .pools
                    .get(&key)
                    .map(|p| p.idle + p.busy + p.since_report)
                    .unwrap_or(0);
                *per_zone.entry(e.hb.zone.as_str()).or_default() += n;
            }
            candidates
                .iter()
                .filter(|id| {
                    let e = &g[**id];
                    let idle_total: u32 = e.pools.values().map(|p| p.idle).sum();
                    let room = e.hb.used_memory_mb + memory_mb <= e.hb.memory_mb
                        && e.hb.sandboxes < e.hb.max_sandboxes;
                    memory_mb <= e.hb.memory_mb && (room || idle_total > 0)
                })
                .min_by(|a, b| {
                    let (ea, eb) = (&g[**a], &g[**b]);
                    let za = per_zone.get(ea.hb.zone.as_str()).copied().unwrap_or(0);
                    let zb = per_zone.get(eb.hb.zone.as_str()).copied().unwrap_or(0);
                    let load = |e: &Entry| {
                        (e.hb.used_memory_mb as f64 + (e.inflight * memory_mb) as f64)
                            / e.hb.memory_mb.max(1) as f64
                    };
                    za.cmp(&zb)
                        .then(load(ea).total_cmp(&load(eb)))
                        .then(a.cmp(b))
                })
                .map(|id| ((*id).clone(), false))
        };
        let (id, warm) = chosen?;
        let e = g.get_mut(&id)?;
        e.inflight += 1;
        e.pools.entry(key).or_default().since_report += 1;
        Some(Pick {
            id,
            zone: e.hb.zone.clone(),
            address: e.hb.address.clone(),
            client: e.client.clone(),
            warm,
        })
    }

    /// Why [`pick`](Self::pick) found no worker, when the reason is that
    /// every live worker able to hold `memory_mb` is full (sandboxes or
    /// memory, as last reported): the numbers summed over them, for a
    /// throttle's message. `None` when no live worker could take the
    /// function at all (none live, or all too small, or excluded).
    pub fn full_summary(&self, memory_mb: u32, exclude: &[String]) -> Option<String> {
        let now = Instant::now();
        let g = self.inner.lock().expect("lock poisoned");
        let fitting: Vec<&Entry> = g
            .iter()
            .filter(|(id, e)| self.live(e, now) && !exclude.contains(id))
            .map(|(_, e)| e)
            .filter(|e| memory_mb <= e.hb.memory_mb)
            .collect();
        if fitting.is_empty() {
            return None;
        }
        let sum = |f: fn(&Entry) -> u32| fitting.iter().map(|e| f(e) as u64).sum::<u64>();
        Some(format!(
            "{} live worker{} in use: {} of {} sandboxes, {} of {} MB",
            fitting.len(),
            if fitting.len() == 1 {
                " is full, all capacity"
            } else {
                "s are full, all capacity"
            },
            sum(|e| e.hb.sandboxes),
            sum(|e| e.hb.max_sandboxes),
            sum(|e| e.hb.used_memory_mb),
            sum(|e| e.hb.memory_mb),
        ))
    }

    /// Places a call on worker `id` itself when it is live (an async
    /// attempt it is already running or has the result of).
    pub fn pick_pinned(&self, id: &str, function: &str, version: &str) -> Option<Pick> {
        let now = Instant::now();
        let mut g = self.inner.lock().expect("lock poisoned");
        let e = g.get_mut(id)?;
        if !self.live(e, now) {
            return None;
        }
        e.inflight += 1;
        e.pools
            .entry((function.to_string(), version.to_string()))
            .or_default()
            .since_report += 1;
        Some(Pick {
            id: id.to_string(),
            zone: e.hb.zone.clone(),
            address: e.hb.address.clone(),
            client: e.client.clone(),
            warm: true,
        })
    }

    /// Records the end of a call: the pool state the worker reported, or a
    /// transport failure (the worker is avoided until it heartbeats again).
    pub fn finish(&self, pick: &Pick, report: Option<&pb::PoolEntry>, failed: bool) {
        let mut g = self.inner.lock().expect("lock poisoned");
        if let Some(e) = g.get_mut(&pick.id) {
            e.inflight = e.inflight.saturating_sub(1);
            if failed {
                e.failed_at = Some(Instant::now());
            } else if report.is_some() {
                // A reply is as good as a heartbeat.
                e.last_seen = Instant::now();
            }
            if let Some(p) = report {
                let v = e
                    .pools
                    .entry((p.function_name.clone(), p.version.clone()))
                    .or_default();
                v.idle = p.idle;
                v.busy = p.busy;
                v.since_report = 0;
            }
        }
    }

    /// Records a worker's report of one pool outside a call.
    pub fn report(&self, worker: &str, report: Option<&pb::PoolEntry>) {
        let mut g = self.inner.lock().expect("lock poisoned");
        if let (Some(e), Some(p)) = (g.get_mut(worker), report) {
            let v = e
                .pools
                .entry((p.function_name.clone(), p.version.clone()))
                .or_default();
            v.idle = p.idle;
            v.busy = p.busy;
            v.since_report = 0;
        }
    }

    /// Sandboxes (idle + busy) of a version on the live workers, and on
    /// the given worker, as last reported.
    pub fn sandboxes_of(&self, function: &str, version: &str, worker: Option<&str>) -> u32 {
        let now = Instant::now();
        let key = (function.to_string(), version.to_string());
        let g = self.inner.lock().expect("lock poisoned");
        g.iter()
            .filter(|(id, e)| self.live(e, now) && worker.is_none_or(|w| w == id.as_str()))
            .filter_map(|(_, e)| e.pools.get(&key))
            .map(|p| p.idle + p.busy)
            .sum()
    }

    /// Busy sandboxes of a function (any version) on the live workers.
    pub fn busy_of(&self, function: &str) -> u32 {
        let now = Instant::now();
        let g = self.inner.lock().expect("lock poisoned");
        g.values()
            .filter(|e| self.live(e, now))
            .flat_map(|e| e.pools.iter())
            .filter(|((f, _), _)| f == function)
            .map(|(_, p)| p.busy)
            .sum()
    }

    /// Clients of the live workers, for fan-out reads (logs).
    pub fn live_clients(&self) -> Vec<(String, WorkerConn)> {
        let now = Instant::now();
        let g = self.inner.lock().expect("lock poisoned");
        g.iter()
            .filter(|(_, e)| self.live(e, now))
            .map(|(id, e)| (id.clone(), e.client.clone()))
            .collect()
    }

    pub fn status(&self) -> Vec<pb::WorkerStatus> {
        let now = Instant::now();
        let g = self.inner.lock().expect("lock poisoned");
        let mut v: Vec<pb::WorkerStatus> = g
            .iter()
            .map(|(id, e)| pb::WorkerStatus {
                id: id.clone(),
                zone: e.hb.zone.clone(),
                address: e.hb.address.clone(),
                memory_mb: e.hb.memory_mb,
                max_sandboxes: e.hb.max_sandboxes,
                used_memory_mb: e.hb.used_memory_mb,
                sandboxes: e.hb.sandboxes,
                warm_idle: e.pools.values().map(|p| p.idle).sum(),
                busy: e.pools.values().map(|p| p.busy).sum(),
                health: if self.live(e, now) {
                    "live".into()
                } else if e.failed_at.is_some() && now.duration_since(e.last_seen) < self.dead_after
                {
                    "failing".into()
                } else {
                    "dead".into()
                },
                last_heartbeat_ms_ago: now.duration_since(e.last_seen).as_millis() as u64,
            })
            .collect();
        v.sort_by(|a, b| a.zone.cmp(&b.zone).then(a.id.cmp(&b.id)));
        v
    }

    /// Forgets workers dead for a long time (they re-register if they return).
    pub fn forget_dead(&self, after: Duration) {
        let now = Instant::now();
        self.inner
            .lock()
            .expect("lock poisoned")
            .retain(|_, e| now.duration_since(e.last_seen) < after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: &str, zone: &str, port: u16, pools: Vec<pb::PoolEntry>) -> pb::WorkerHeartbeat {
        pb::WorkerHeartbeat {
            id: id.into(),
            zone: zone.into(),
            address: format!("127.0.0.1:{port}"),
            memory_mb: 1024,
            max_sandboxes: 8,
            used_memory_mb: 0,
            sandboxes: 0,
            pools,
            incarnation: 1,
        }
    }

    fn pool(f: &str, v: &str, idle: u32) -> pb::PoolEntry {
        pb::PoolEntry {
            function_name: f.into(),
            version: v.into(),
            idle,
            busy: 0,
        }
    }

    #[tokio::test]
    async fn warm_first_then_spread_over_zones_and_never_dead() {
        let r = WorkerRegistry::new(Duration::from_millis(50), Duration::from_millis(200));
        r.heartbeat(hb("a1", "a", 1, vec![])).unwrap();
        r.heartbeat(hb("b1", "b", 2, vec![pool("f", "1", 1)]))
            .unwrap();
        r.heartbeat(hb("c1", "c", 3, vec![])).unwrap();
        // The idle warm sandbox wins.
        let p = r.pick("f", "1", 128, &[]).unwrap();
        assert_eq!((p.id.as_str(), p.warm), ("b1", true));
        // Its only idle sandbox is now estimated busy: a cold placement
        // goes to a zone without sandboxes of f.
        let p2 = r.pick("f", "1", 128, &[]).unwrap();
        assert!(!p2.warm);
        assert_ne!(p2.zone, "b", "spread: zone b already runs f");
        let p3 = r.pick("f", "1", 128, &[]).unwrap();
        let mut zones = vec![p.zone.clone(), p2.zone.clone(), p3.zone.clone()];
        zones.sort();
        assert_eq!(zones, vec!["a", "b", "c"], "three sandboxes, three zones");
        // The worker reports its pool after the call: warm again.
        r.finish(&p, Some(&pool("f", "1", 1)), false);
        assert!(r.pick("f", "1", 128, &[]).unwrap().warm);
        // Exclusion and failure.
        let p4 = r.pick("g", "1", 128, &["a1".into(), "b1".into()]).unwrap();
        assert_eq!(p4.id, "c1");
        r.finish(&p4, None, true);
        for _ in 0..5 {
            assert_ne!(
                r.pick("g", "1", 128, &[]).unwrap().id,
                "c1",
                "failed worker avoided"
            );
        }
        // Silence means dead.
        std::thread::sleep(Duration::from_millis(250));
        r.heartbeat(hb("a1", "a", 1, vec![])).unwrap();
        for _ in 0..5 {
            assert_eq!(r.pick("h", "1", 128, &[]).unwrap().id, "a1");
        }
        let st = r.status();
        assert_eq!(st.iter().filter(|w| w.health == "dead").count(), 2);
        // Too big for any worker.
        assert!(r.pick("big", "1", 4096, &[]).is_none());
        // Everyone late (an overloaded host): recently seen workers that
        // never failed a call are still tried; long-silent ones are not.
        std::thread::sleep(Duration::from_millis(250));
        let late = r.pick("h", "1", 128, &[]).expect("late worker still tried");
        assert_ne!(late.id, "c1", "a worker that failed a call is not");
        std::thread::sleep(Duration::from_millis(1000));
        assert!(
            r.pick("h", "1", 128, &[]).is_none(),
            "silent for 5x dead_after"
        );
    }

    #[tokio::test]
    async fn full_worker_is_skipped_unless_it_has_idle_sandboxes_to_evict() {
        let r = WorkerRegistry::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut full = hb("full", "a", 1, vec![]);
        full.used_memory_mb = 1024;
        full.sandboxes = 8;
        r.heartbeat(full.clone()).unwrap();
        assert!(r.pick("f", "1", 128, &[]).is_none());
        assert_eq!(
            r.full_summary(128, &[]).as_deref(),
            Some("1 live worker is full, all capacity in use: 8 of 8 sandboxes, 1024 of 1024 MB")
        );
        assert_eq!(r.full_summary(2048, &[]), None, "too big is not full");
        full.pools = vec![pool("other", "1", 2)];
        r.heartbeat(full).unwrap();
        assert_eq!(r.pick("f", "1", 128, &[]).unwrap().id, "full");
        assert!(r.heartbeat(hb("", "a", 1, vec![])).is_err());
        assert!(r.heartbeat(hb("x", "", 1, vec![])).is_err());
    }
}
