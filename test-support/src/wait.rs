//! Waiting for a condition with a deadline. A timeout panics with a
//! message naming what was awaited, so a failing test says what never
//! happened rather than just "timed out".

use std::time::{Duration, Instant};

/// How often [`wait_for`] polls.
pub const POLL_EVERY: Duration = Duration::from_millis(200);

/// Polls `f` every 200 ms until it returns `Some`, for up to `secs`
/// seconds; panics naming `what` after that.
pub fn wait_for<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    poll(what, Duration::from_secs(secs), POLL_EVERY, f)
}

/// Polls `f` every `every` until it returns `Some`; panics naming `what`
/// once `timeout` has passed. `f` runs at least once.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// [`poll`] for async tests: the condition is checked synchronously, the
/// waits between checks yield to the runtime (`tokio::time::sleep`), so
/// in-process nodes keep running while a test waits on them.
pub async fn poll_async<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_some() {
        let mut n = 0;
        let got = poll(
            "n to reach 3",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                (n == 3).then_some(n * 10)
            },
        );
        assert_eq!(got, 30);
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible")]
    fn a_timeout_names_what_was_awaited() {
        poll::<()>(
            "the impossible",
            Duration::from_millis(50),
            Duration::from_millis(10),
            || None,
        );
    }

    #[tokio::test]
    async fn async_poll_lets_other_tasks_run() {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flag.clone();
        tokio::spawn(async move { f.store(true, std::sync::atomic::Ordering::SeqCst) });
        poll_async(
            "the spawned task to run",
            Duration::from_secs(5),
            Duration::from_millis(5),
            || flag.load(std::sync::atomic::Ordering::SeqCst).then_some(()),
        )
        .await;
    }
}
