//! The sandbox pool of one worker: warm reuse per function version, new
//! sandboxes on demand under memory and count admission, LRU eviction of
//! idle sandboxes when room is needed, and an idle keep-alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sandbox::{CreateError, Created, FunctionSpec, Sandbox, SandboxFactory};

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Memory for sandboxes, MB (the sum of their limits).
    pub memory_mb: u32,
    pub max_sandboxes: u32,
    pub keep_alive: Duration,
}

/// A pool key: one function version with one exact configuration (a
/// `$LATEST` whose configuration changed gets fresh sandboxes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub function: String,
    pub version: String,
    spec: FunctionSpec,
}

impl Key {
    pub fn of(spec: &FunctionSpec) -> Key {
        Key {
            function: spec.function_name.clone(),
            version: spec.version.clone(),
            spec: spec.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("worker is full: {used} of {capacity} MB and {sandboxes} of {max} sandboxes in use, none idle to evict")]
    Full {
        used: u32,
        capacity: u32,
        sandboxes: u32,
        max: u32,
    },
    #[error("function needs {need} MB but this worker only has {capacity} MB for sandboxes")]
    TooBig { need: u32, capacity: u32 },
    #[error("worker is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Create(#[from] CreateError),
}

struct Idle<S> {
    sandbox: S,
    since: Instant,
}

struct KeyPool<S> {
    idle: Vec<Idle<S>>,
    busy: u32,
    /// Provisioned concurrency: this many sandboxes (idle + busy) are kept
    /// past the keep-alive while the controllers' lease lasts.
    provisioned: u32,
    provisioned_until: Option<Instant>,
}

impl<S> Default for KeyPool<S> {
    fn default() -> Self {
        KeyPool {
            idle: Vec::new(),
            busy: 0,
            provisioned: 0,
            provisioned_until: None,
        }
    }
}

/// How long a provisioning (a `prewarm` call) protects its sandboxes from
/// the keep-alive reaper; the leader renews it every 30 s.
pub const PROVISION_LEASE: Duration = Duration::from_secs(90);

struct State<S> {
    keys: HashMap<Key, KeyPool<S>>,
    /// The newest configuration seen per (function, version): sandboxes of
    /// an older one are not reused (a `$LATEST` whose configuration changed).
    current: HashMap<(String, String), Key>,
    used_mb: u32,
    sandboxes: u32,
    next_id: u64,
    /// Shutting down: nothing new starts, released sandboxes are destroyed.
    closed: bool,
}

/// Counts of one function version, for placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub idle: u32,
    pub busy: u32,
}

#[derive(Debug, Clone, Default)]
pub struct PoolSnapshot {
    pub used_mb: u32,
    pub sandboxes: u32,
    pub idle: u32,
    pub busy: u32,
    /// (function, version) -> counts.
    pub by_version: Vec<(String, String, PoolCounts)>,
}

pub struct Pool<F: SandboxFactory> {
    factory: F,
    cfg: PoolConfig,
    state: Mutex<State<F::Sandbox>>,
}

/// A sandbox taken from the pool for one invocation. Give it back with
/// [`Pool::release`].
pub struct Lease<S> {
    pub key: Key,
    pub sandbox: S,
    /// Set when this lease created the sandbox.
    pub cold: Option<(Duration, Vec<String>)>,
    memory_mb: u32,
}

impl<F: SandboxFactory> Pool<F> {
    pub fn new(factory: F, cfg: PoolConfig) -> Arc<Pool<F>> {
        Arc::new(Pool {
            factory,
            cfg,
            state: Mutex::new(State {
                keys: HashMap::new(),
                current: HashMap::new(),
                used_mb: 0,
                sandboxes: 0,
                next_id: 1,
                closed: false,
            }),
        })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// A warm sandbox of `spec`, or a new one if admission allows (evicting
    /// least recently used idle sandboxes to make room).
    pub async fn acquire(&self, spec: &FunctionSpec) -> Result<Lease<F::Sandbox>, PoolError> {
        self.acquire_inner(spec, false).await
    }

    async fn acquire_inner(
        &self,
        spec: &FunctionSpec,
        force_new: bool,
    ) -> Result<Lease<F::Sandbox>, PoolError> {
        let key = Key::of(spec);
        let mut evicted = Vec::new();
        let id = {
            let mut st = self.state.lock().expect("lock poisoned");
            if st.closed {
                return Err(PoolError::ShuttingDown);
            }
            st.current
                .insert((key.function.clone(), key.version.clone()), key.clone());
            let kp = st.keys.entry(key.clone()).or_default();
            // Most recently used first: it is the warmest.
            // (Prewarming wants a new sandbox: it leaves the idle ones be.)
            while let Some(idle) = if force_new { None } else { kp.idle.pop() } {
                if idle.sandbox.alive() {
                    kp.busy += 1;
                    return Ok(Lease {
                        key,
                        sandbox: idle.sandbox,
                        cold: None,
                        memory_mb: spec.memory_mb,
                    });
                }
                evicted.push((idle.sandbox, spec.memory_mb));
            }
            for (_, mb) in &evicted {
                st.used_mb -= mb;
                st.sandboxes -= 1;
            }
            // Stale configurations of the same version will not be used again.
            let stale: Vec<Key> = st
                .keys
                .keys()
                .filter(|k| k.function == key.function && k.version == key.version && **k != key)
                .cloned()
                .collect();
            for k in stale {
                if let Some(kp) = st.keys.get_mut(&k) {
                    let mb = k.spec.memory_mb;
                    let n = kp.idle.len() as u32;
                    evicted.extend(kp.idle.drain(..).map(|i| (i.sandbox, mb)));
                    st.used_mb -= mb * n;
                    st.sandboxes -= n;
                }
            }
            if spec.memory_mb > self.cfg.memory_mb {
                drop(st);
                self.destroy_all(evicted);
                return Err(PoolError::TooBig {
                    need: spec.memory_mb,
                    capacity: self.cfg.memory_mb,
                });
            }
            while st.used_mb + spec.memory_mb > self.cfg.memory_mb
                || st.sandboxes >= self.cfg.max_sandboxes
            {
                match Self::evict_lru(&mut st) {
                    Some(v) => evicted.push(v),
                    None => {
                        let e = PoolError::Full {
                            used: st.used_mb,
                            capacity: self.cfg.memory_mb,
                            sandboxes: st.sandboxes,
                            max: self.cfg.max_sandboxes,
                        };
                        drop(st);
                        self.destroy_all(evicted);
                        return Err(e);
                    }
                }
            }
            st.used_mb += spec.memory_mb;
            st.sandboxes += 1;
            st.keys.entry(key.clone()).or_default().busy += 1;
            let id = st.next_id;
            st.next_id += 1;
            id
        };
        self.destroy_all(evicted);
        match self.factory.create(spec, id).await {
            Ok(Created {
                sandbox,
                init_duration,
                init_lines,
            }) => Ok(Lease {
                key,
                sandbox,
                cold: Some((init_duration, init_lines)),
                memory_mb: spec.memory_mb,
            }),
            Err(e) => {
                let mut st = self.state.lock().expect("lock poisoned");
                st.used_mb -= spec.memory_mb;
                st.sandboxes -= 1;
                if let Some(kp) = st.keys.get_mut(&key) {
                    kp.busy -= 1;
                }
                Err(e.into())
            }
        }
    }

    /// Returns a sandbox after an invocation: back to idle when reusable,
    /// destroyed otherwise.
    pub fn release(&self, lease: Lease<F::Sandbox>, reusable: bool) {
        let mut st = self.state.lock().expect("lock poisoned");
        let superseded = st
            .current
            .get(&(lease.key.function.clone(), lease.key.version.clone()))
            .is_some_and(|k| *k != lease.key);
        let keep = reusable && !st.closed && !superseded;
        if let Some(kp) = st.keys.get_mut(&lease.key) {
            kp.busy = kp.busy.saturating_sub(1);
            if keep && lease.sandbox.alive() {
                kp.idle.push(Idle {
                    sandbox: lease.sandbox,
                    since: Instant::now(),
                });
                return;
            }
        }
        st.used_mb -= lease.memory_mb;
        st.sandboxes -= 1;
        drop(st);
        self.destroy_all(vec![(lease.sandbox, 0)]);
    }

    /// Creates idle sandboxes of `spec` until `count` exist (idle + busy),
    /// and keeps that many past the keep-alive for `PROVISION_LEASE`
    /// (provisioned concurrency; renewed by calling again). Returns how
    /// many were created.
    pub async fn prewarm(&self, spec: &FunctionSpec, count: u32) -> Result<u32, PoolError> {
        let mut created = 0;
        loop {
            {
                let mut st = self.state.lock().expect("lock poisoned");
                let kp = st.keys.entry(Key::of(spec)).or_default();
                kp.provisioned = count;
                kp.provisioned_until = Some(Instant::now() + PROVISION_LEASE);
                let have = kp.idle.len() as u32 + kp.busy;
                if have >= count {
                    return Ok(created);
                }
            }
            let lease = self.acquire_inner(spec, true).await?;
            self.release(lease, true);
            created += 1;
        }
    }

    fn evict_lru(st: &mut State<F::Sandbox>) -> Option<(F::Sandbox, u32)> {
        let mut oldest: Option<(Key, usize, Instant)> = None;
        for (k, kp) in &st.keys {
            for (i, idle) in kp.idle.iter().enumerate() {
                if oldest.as_ref().map(|o| idle.since < o.2).unwrap_or(true) {
                    oldest = Some((k.clone(), i, idle.since));
                }
            }
        }
        let (k, i, _) = oldest?;
        let idle = st.keys.get_mut(&k)?.idle.remove(i);
        let mb = k.spec.memory_mb;
        st.used_mb -= mb;
        st.sandboxes -= 1;
        Some((idle.sandbox, mb))
    }

    /// Destroys idle sandboxes unused for longer than the keep-alive.
    pub fn reap_idle(&self) -> usize {
        let now = Instant::now();
        let mut gone = Vec::new();
        {
            let mut st = self.state.lock().expect("lock poisoned");
            let keep = self.cfg.keep_alive;
            let mut freed = (0u32, 0u32);
            for (k, kp) in st.keys.iter_mut() {
                // Provisioned sandboxes outlive the keep-alive while their
                // lease lasts (the newest idle ones are kept).
                let mut protect = match kp.provisioned_until {
                    Some(t) if t > now => kp.provisioned.saturating_sub(kp.busy),
                    _ => 0,
                };
                let mut i = kp.idle.len();
                while i > 0 {
                    i -= 1;
                    let dead = !kp.idle[i].sandbox.alive();
                    let expired = now.duration_since(kp.idle[i].since) > keep;
                    if !dead && protect > 0 {
                        protect -= 1;
                        continue;
                    }
                    if dead || expired {
                        let idle = kp.idle.remove(i);
                        freed.0 += k.spec.memory_mb;
                        freed.1 += 1;
                        gone.push((idle.sandbox, k.spec.memory_mb));
                    }
                }
            }
            st.used_mb -= freed.0;
            st.sandboxes -= freed.1;
            st.keys.retain(|_, kp| {
                !kp.idle.is_empty() || kp.busy > 0 || kp.provisioned_until.is_some_and(|t| t > now)
            });
        }
        let n = gone.len();
        self.destroy_all(gone);
        n
    }

    /// Shutdown: nothing new starts; idle sandboxes are destroyed at once,
    /// busy ones when their call ends (waited for, up to `wait`).
    pub async fn drain(&self, wait: Duration) {
        self.state.lock().expect("lock poisoned").closed = true;
        self.destroy_idle().await;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let busy: u32 = {
                let st = self.state.lock().expect("lock poisoned");
                st.keys.values().map(|k| k.busy).sum()
            };
            if busy == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.destroy_idle().await;
    }

    async fn destroy_idle(&self) {
        let gone: Vec<F::Sandbox> = {
            let mut st = self.state.lock().expect("lock poisoned");
            let mut v = Vec::new();
            let mut freed = (0, 0);
            for (k, kp) in st.keys.iter_mut() {
                for i in kp.idle.drain(..) {
                    freed.0 += k.spec.memory_mb;
                    freed.1 += 1;
                    v.push(i.sandbox);
                }
            }
            st.used_mb -= freed.0;
            st.sandboxes -= freed.1;
            v
        };
        futures::future::join_all(gone.into_iter().map(|s| s.destroy())).await;
    }

    fn destroy_all(&self, v: Vec<(F::Sandbox, u32)>) {
        // Each destroy is short (bounded by the sandbox's kill timeout) and
        // must not hold up the call that evicted it: plain spawns.
        for (s, _) in v {
            tokio::spawn(s.destroy());
        }
    }

    pub fn counts(&self, function: &str, version: &str) -> PoolCounts {
        let st = self.state.lock().expect("lock poisoned");
        let mut c = PoolCounts::default();
        for (k, kp) in &st.keys {
            if k.function == function && k.version == version {
                c.idle += kp.idle.len() as u32;
                c.busy += kp.busy;
            }
        }
        c
    }

    pub fn snapshot(&self) -> PoolSnapshot {
        let st = self.state.lock().expect("lock poisoned");
        let mut by: HashMap<(String, String), PoolCounts> = HashMap::new();
        let (mut idle, mut busy) = (0, 0);
        for (k, kp) in &st.keys {
            let c = by
                .entry((k.function.clone(), k.version.clone()))
                .or_default();
            c.idle += kp.idle.len() as u32;
            c.busy += kp.busy;
            idle += kp.idle.len() as u32;
            busy += kp.busy;
        }
        PoolSnapshot {
            used_mb: st.used_mb,
            sandboxes: st.sandboxes,
            idle,
            busy,
            by_version: by.into_iter().map(|((f, v), c)| (f, v, c)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::fake::FakeFactory;
    use crate::sandbox::Completion;
    use std::sync::atomic::Ordering;

    fn spec(name: &str, mb: u32) -> FunctionSpec {
        FunctionSpec {
            function_name: name.into(),
            version: "1".into(),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            memory_mb: mb,
            timeout_seconds: 3,
            environment: Default::default(),
            ephemeral_storage_mb: 512,
            egress: false,
            code_sha256: "0".repeat(64),
            code_size: 1,
        }
    }

    fn pool(f: &FakeFactory, memory_mb: u32, max: u32, keep: Duration) -> Arc<Pool<FakeFactory>> {
        Pool::new(
            f.clone(),
            PoolConfig {
                memory_mb,
                max_sandboxes: max,
                keep_alive: keep,
            },
        )
    }

    /// A released sandbox is reused warm; concurrent calls get their own
    /// sandboxes (one event per sandbox).
    #[tokio::test]
    async fn warm_reuse_and_one_event_per_sandbox() {
        let f = FakeFactory::echo();
        let p = pool(&f, 1024, 10, Duration::from_secs(60));
        let s = spec("a", 128);
        let l1 = p.acquire(&s).await.unwrap();
        assert!(l1.cold.is_some());
        let l2 = p.acquire(&s).await.unwrap();
        assert!(l2.cold.is_some(), "the first one is busy: a second is made");
        assert_eq!(p.counts("a", "1"), PoolCounts { idle: 0, busy: 2 });
        p.release(l1, true);
        p.release(l2, true);
        let l3 = p.acquire(&s).await.unwrap();
        assert!(l3.cold.is_none(), "warm reuse");
        p.release(l3, false);
        assert_eq!(p.counts("a", "1"), PoolCounts { idle: 1, busy: 0 });
        tokio::task::yield_now().await;
        assert_eq!(
            f.destroyed.load(Ordering::SeqCst),
            1,
            "an unusable sandbox is destroyed"
        );
        assert_eq!(p.snapshot().used_mb, 128);
    }

    /// Memory admission evicts the least recently used idle sandbox, and
    /// refuses when everything is busy.
    #[tokio::test]
    async fn admission_evicts_lru_idle_then_refuses() {
        let f = FakeFactory::echo();
        let p = pool(&f, 256, 10, Duration::from_secs(60));
        let a = p.acquire(&spec("a", 128)).await.unwrap();
        let b = p.acquire(&spec("b", 128)).await.unwrap();
        p.release(a, true);
        tokio::time::sleep(Duration::from_millis(5)).await;
        p.release(b, true);
        // c needs room: a is the least recently used.
        let c = p.acquire(&spec("c", 128)).await.unwrap();
        assert_eq!(p.counts("a", "1").idle, 0);
        assert_eq!(p.counts("b", "1").idle, 1);
        let d = p.acquire(&spec("d", 128)).await.unwrap();
        assert!(matches!(
            p.acquire(&spec("e", 128)).await,
            Err(PoolError::Full { .. })
        ));
        assert!(matches!(
            p.acquire(&spec("big", 512)).await,
            Err(PoolError::TooBig { .. })
        ));
        p.release(c, true);
        p.release(d, true);
        assert_eq!(p.snapshot().used_mb, 256);
        // Count limit too.
        let q = pool(&f, 10_000, 1, Duration::from_secs(60));
        let x = q.acquire(&spec("x", 128)).await.unwrap();
        assert!(matches!(
            q.acquire(&spec("y", 128)).await,
            Err(PoolError::Full { .. })
        ));
        q.release(x, true);
        assert!(
            q.acquire(&spec("y", 128)).await.is_ok(),
            "idle x evicted for y"
        );
    }

    /// Idle sandboxes past the keep-alive go; a changed configuration of
    /// the same version does not reuse old sandboxes; prewarm fills up to N.
    #[tokio::test]
    async fn keep_alive_config_change_and_prewarm() {
        let f = FakeFactory::echo();
        let p = pool(&f, 4096, 100, Duration::from_millis(50));
        assert_eq!(p.prewarm(&spec("w", 128), 3).await.unwrap(), 3);
        assert_eq!(p.prewarm(&spec("w", 128), 3).await.unwrap(), 0);
        assert_eq!(p.counts("w", "1").idle, 3);
        let mut changed = spec("w", 128);
        changed.environment.insert("K".into(), "V".into());
        let l = p.acquire(&changed).await.unwrap();
        assert!(l.cold.is_some(), "new configuration, new sandbox");
        p.release(l, true);
        assert_eq!(
            p.counts("w", "1").idle,
            1,
            "old-configuration sandboxes evicted"
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(p.reap_idle(), 1);
        assert_eq!(p.snapshot().sandboxes, 0);
        assert_eq!(p.snapshot().used_mb, 0);
    }

    /// Provisioned (prewarmed) sandboxes outlive the keep-alive while the
    /// lease lasts; sandboxes beyond the provisioned count do not; when the
    /// lease lapses (the leader stopped renewing it) they go too.
    #[tokio::test]
    async fn provisioned_sandboxes_outlive_the_keep_alive_while_leased() {
        let f = FakeFactory::echo();
        let p = pool(&f, 4096, 100, Duration::from_millis(50));
        assert_eq!(p.prewarm(&spec("pc", 128), 2).await.unwrap(), 2);
        // A third, on-demand sandbox next to the two provisioned ones.
        let a = p.acquire(&spec("pc", 128)).await.unwrap();
        let b = p.acquire(&spec("pc", 128)).await.unwrap();
        let c = p.acquire(&spec("pc", 128)).await.unwrap();
        assert!(c.cold.is_some());
        for l in [a, b, c] {
            p.release(l, true);
        }
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(p.reap_idle(), 1, "only the one beyond the provisioned 2");
        assert_eq!(p.counts("pc", "1").idle, 2);
        // The lease lapses.
        for kp in p.state.lock().unwrap().keys.values_mut() {
            kp.provisioned_until = Some(Instant::now() - Duration::from_secs(1));
        }
        assert_eq!(p.reap_idle(), 2);
        assert_eq!(p.snapshot().sandboxes, 0);
    }

    /// A failed init releases its reservation and reaches the caller.
    #[tokio::test]
    async fn init_failure_releases_memory() {
        let mut f = FakeFactory::echo();
        f.handler = Arc::new(|_, _| Completion::Ok(bytes::Bytes::from_static(b"1")));
        let p = pool(&f, 256, 10, Duration::from_secs(60));
        let mut s = spec("bad", 128);
        s.handler = "init_error".into();
        assert!(matches!(
            p.acquire(&s).await,
            Err(PoolError::Create(CreateError::Init { .. }))
        ));
        assert_eq!(p.snapshot().used_mb, 0);
        assert_eq!(p.snapshot().sandboxes, 0);
        assert_eq!(p.counts("bad", "1"), PoolCounts::default());
    }

    /// A sandbox of a superseded configuration is destroyed when its call
    /// ends; shutdown waits for busy sandboxes and destroys them too, and
    /// refuses new work.
    #[tokio::test]
    async fn superseded_and_shutdown_sandboxes_are_destroyed() {
        let f = FakeFactory::echo();
        let p = pool(&f, 4096, 100, Duration::from_secs(60));
        let old = p.acquire(&spec("s", 128)).await.unwrap();
        let mut changed = spec("s", 128);
        changed.timeout_seconds = 9;
        let new = p.acquire(&changed).await.unwrap();
        p.release(old, true);
        p.release(new, true);
        assert_eq!(p.counts("s", "1"), PoolCounts { idle: 1, busy: 0 });
        assert_eq!(p.snapshot().sandboxes, 1);

        let busy = p.acquire(&changed).await.unwrap();
        let p2 = p.clone();
        let drain = tokio::spawn(async move { p2.drain(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(
            p.acquire(&spec("t", 128)).await,
            Err(PoolError::ShuttingDown)
        ));
        p.release(busy, true);
        drain.await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(p.snapshot().sandboxes, 0);
        assert_eq!(p.snapshot().used_mb, 0);
        assert_eq!(
            f.created.load(Ordering::SeqCst),
            f.destroyed.load(Ordering::SeqCst)
        );
    }
}
