//! Failpoints: named places where a crash would lose data if the code were
//! ordered wrongly. Off unless `NUBO_FAILPOINTS` names them, e.g.
//! `NUBO_FAILPOINTS=after-commit=exit`. Actions: `exit` (the process dies
//! at once, like a crash: no reply, no flush), `sleep(MS)`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

fn table() -> &'static BTreeMap<String, String> {
    static T: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    T.get_or_init(|| {
        std::env::var("NUBO_FAILPOINTS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    })
}

/// Triggers the failpoint `name` if it is configured.
pub async fn hit(name: &str) {
    let Some(action) = table().get(name) else {
        return;
    };
    if action == "exit" {
        eprintln!("failpoint {name}: exiting");
        // SAFETY: _exit(2) ends the process immediately, skipping
        // destructors and flushes on purpose: this is a simulated crash.
        unsafe { libc::_exit(86) };
    }
    if let Some(ms) = action
        .strip_prefix("sleep(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|n| n.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
