//! The controllers' invocation logic against real workers whose sandboxes
//! are in-process fakes (`FakeFactory::programmable`): placement, reserved
//! concurrency, the async dispatcher and the workers' term fence, without
//! root, crun or Python. Calls go through the controllers' gRPC API as a
//! user's do; the fakes record every run, so "ran N times" is counted, not
//! read from logs. tests/e2e checks the same with real containers.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use nubo_proto::v1 as pb;
use pb::InvocationType::{Event, RequestResponse};
use serde_json::Value;
use tonic::Code;

use crate::harness::{bearer, Fleet, FLEET_ADMIN};

/// Runs a test body within `secs` seconds (a hang fails instead of
/// blocking the suite; dropping the body stops its nodes and workers).
async fn bounded<T>(secs: u64, body: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs} s"))
}

/// Polls `f` every 20 ms until it gives a value, for at most `secs`.
async fn wait_for<T, F: Future<Output = Option<T>>>(
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expect_throttled(r: Result<pb::InvokeResponse, tonic::Status>, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected RESOURCE_EXHAUSTED, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), Code::ResourceExhausted, "{what}: {s:?}");
            assert!(s.message().contains("throttled"), "{what}: {s:?}");
        }
    }
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {:?}",
            String::from_utf8_lossy(b).into_owned()
        )
    })
}

/// Short retry waits (w = 200 ms, so w then 2w) instead of Lambda's minutes.
const WAIT_MS: u64 = 200;

fn short_waits(c: &mut nubo_controller::config::ControllerConfig) {
    c.async_base_wait_ms = WAIT_MS;
}

/// Placement with workers in zones a, b and c: three concurrent cold calls
/// get one sandbox in each zone; a call of a function with one idle warm
/// sandbox goes to that worker, though zone spreading alone would pick
/// another; once that worker stops, every call still succeeds, once, on
/// the others, and the controller reports it dead (the others live).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_spreads_zones_prefers_warm_and_skips_a_stopped_worker() {
    bounded(60, async {
        let mut fleet = Fleet::start(1, &["a", "b", "c"], &|_| {}).await;
        fleet
            .create_function(1, "spread", pb::FunctionConfig::default())
            .await;
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let mut c = fleet.invocations(1);
                async move {
                    let payload = format!(r#"{{"sleep_ms":1500,"i":{i}}}"#);
                    c.invoke(bearer(
                        pb::InvokeRequest {
                            function_name: "spread".into(),
                            payload: payload.clone().into_bytes(),
                            invocation_type: RequestResponse as i32,
                            ..Default::default()
                        },
                        FLEET_ADMIN,
                    ))
                    .await
                    .map(|r| (payload, r.into_inner()))
                }
            })
            .collect();
        for r in futures::future::join_all(calls).await {
            let (payload, resp) = r.expect("a concurrent call");
            assert!(resp.function_error.is_empty(), "{resp:?}");
            assert_eq!(resp.payload, payload.as_bytes(), "the fake echoes");
        }
        let created: Vec<(&str, u64)> = fleet
            .workers
            .iter()
            .map(|w| {
                let n = w.fake.created.load(std::sync::atomic::Ordering::SeqCst);
                (w.zone.as_str(), n)
            })
            .collect();
        assert_eq!(
            created,
            [("a", 1), ("b", 1), ("c", 1)],
            "one sandbox per zone"
        );

        // Warm first: one cold call leaves one idle sandbox on worker x...
        fleet
            .create_function(1, "warm", pb::FunctionConfig::default())
            .await;
        let first = fleet
            .invoke(1, "warm", "{}", RequestResponse)
            .await
            .unwrap();
        let on: Vec<usize> = fleet.runs_of(&first.request_id);
        let x = on.iter().position(|n| *n == 1).expect("ran somewhere");
        // ...and the next call goes there, not to a zone without "warm".
        for _ in 0..3 {
            let again = fleet
                .invoke(1, "warm", "{}", RequestResponse)
                .await
                .unwrap();
            assert_eq!(
                fleet.runs_of(&again.request_id)[x],
                1,
                "the warm worker {} took the call",
                fleet.workers[x].id
            );
        }
        let total: usize = fleet
            .workers
            .iter()
            .map(|w| w.fake.runs_of_function("warm").len())
            .sum();
        assert_eq!(total, fleet.workers[x].fake.runs_of_function("warm").len());

        // The warm worker stops: calls keep succeeding on the others.
        let dead_id = fleet.workers[x].id.clone();
        fleet.workers[x].stop().await;
        for i in 0..20 {
            let r = fleet.invoke(1, "warm", "{}", RequestResponse).await;
            let r = r.unwrap_or_else(|s| panic!("call {i} after {dead_id} stopped: {s:?}"));
            let on = fleet.runs_of(&r.request_id);
            assert_eq!(on[x], 0);
            assert_eq!(on.iter().sum::<usize>(), 1, "ran once: {on:?}");
        }
        let status = wait_for("the stopped worker reported dead", 10, || async {
            let st = fleet.worker_status(1).await;
            st.iter()
                .any(|w| w.id == dead_id && w.health == "dead")
                .then_some(st)
        })
        .await;
        for w in &status {
            if w.id != dead_id {
                assert_eq!(w.health, "live", "{w:?}");
            }
        }
        fleet.shutdown().await;
    })
    .await
}

/// Reserved concurrency of sync calls, counted on the leader: with
/// reservation 1, a call while a slow one runs is throttled
/// (RESOURCE_EXHAUSTED), on the leader and on a follower alike, and a call
/// after it runs; a slow call made on a follower holds the slot on the
/// leader too. Reservation 0 throttles every call, and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_concurrency_throttles_sync_calls_counted_on_the_leader() {
    bounded(60, async {
        let fleet = Fleet::start(3, &["a"], &|_| {}).await;
        let leader = fleet.cluster.wait_leader(Duration::from_secs(10)).await;
        let follower = *fleet
            .cluster
            .up_ids()
            .iter()
            .find(|id| **id != leader)
            .unwrap();
        fleet
            .create_function(
                leader,
                "single",
                pb::FunctionConfig {
                    reserved_concurrency: Some(1),
                    timeout_seconds: Some(10),
                    ..Default::default()
                },
            )
            .await;
        let worker = fleet.workers[0].worker.clone();
        for (slow_on, other) in [(leader, follower), (follower, leader)] {
            let mut c = fleet.invocations(slow_on);
            let slow = tokio::spawn(async move {
                c.invoke(bearer(
                    pb::InvokeRequest {
                        function_name: "single".into(),
                        payload: br#"{"sleep_ms":1500}"#.to_vec(),
                        ..Default::default()
                    },
                    FLEET_ADMIN,
                ))
                .await
            });
            wait_for("the slow call to run", 10, || async {
                (worker.pool.snapshot().busy == 1).then_some(())
            })
            .await;
            for node in [other, slow_on] {
                expect_throttled(
                    fleet.invoke(node, "single", "{}", RequestResponse).await,
                    &format!("second call on node {node} while node {slow_on}'s runs"),
                );
            }
            let r = slow.await.unwrap().expect("the slow call");
            assert!(r.get_ref().function_error.is_empty());
            // The slot is back.
            fleet
                .invoke(other, "single", "{}", RequestResponse)
                .await
                .expect("a call after the slow one ended");
        }

        fleet
            .create_function(
                leader,
                "zero",
                pb::FunctionConfig {
                    reserved_concurrency: Some(0),
                    ..Default::default()
                },
            )
            .await;
        for node in fleet.cluster.up_ids() {
            expect_throttled(
                fleet.invoke(node, "zero", "{}", RequestResponse).await,
                &format!("reserved 0 on node {node}"),
            );
        }
        assert!(fleet.workers[0].fake.runs_of_function("zero").is_empty());
        fleet.shutdown().await;
    })
    .await
}

/// The async dispatcher, with w = 200 ms: an Event whose function always
/// fails runs exactly 3 times (maximum retry attempts 2) under its one
/// request id, spaced at least w then 2w, then leaves one dead letter
/// (RetriesExhausted, 3 attempts, the error, the original payload) and
/// Lambda's failure record at the on-failure destination; a redrive runs
/// it 3 times more and dead-letters it again. An Event that succeeds runs
/// once, leaves no dead letter, and its result reaches the on-success
/// destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_failures_retry_twice_then_dead_letter_and_successes_run_once() {
    bounded(60, async {
        let fleet = Fleet::start(1, &["a"], &short_waits).await;
        let fake = fleet.workers[0].fake.clone();
        fleet
            .create_function(1, "sink", pb::FunctionConfig::default())
            .await;
        fleet
            .create_function(
                1,
                "failing",
                pb::FunctionConfig {
                    async_config: Some(pb::AsyncConfig {
                        maximum_retry_attempts: Some(2),
                        dead_letter_target: "sink".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await;
        let payload = r#"{"error":"nope","order":7}"#;
        let accepted = fleet.invoke(1, "failing", payload, Event).await.unwrap();
        assert_eq!(accepted.status_code, 202);
        let id = accepted.request_id.clone();
        assert_eq!(id.len(), 36, "a request id: {id}");

        let dl = wait_for("the dead letter", 15, || async {
            fleet.dead_letters(1, "failing").await.into_iter().next()
        })
        .await;
        assert_eq!(dl.request_id, id);
        assert_eq!(dl.condition, "RetriesExhausted");
        assert_eq!(dl.attempts, 3);
        assert_eq!(dl.error_type, "FakeError");
        assert_eq!(dl.error_message, "nope");
        assert_eq!(json_of(&dl.payload), json_of(payload.as_bytes()));
        let runs: Vec<Instant> = fake
            .runs_of_function("failing")
            .into_iter()
            .filter(|r| r.request_id == id)
            .map(|r| r.at)
            .collect();
        assert_eq!(runs.len(), 3, "exactly three attempts");
        let w = Duration::from_millis(WAIT_MS);
        let gaps = [runs[1] - runs[0], runs[2] - runs[1]];
        assert!(
            gaps[0] >= w && gaps[1] >= 2 * w,
            "retries after w then 2w (w = {w:?}): gaps {gaps:?}"
        );

        let record = wait_for("the on-failure record", 10, || async {
            fake.runs_of_function("sink")
                .first()
                .map(|r| json_of(&r.payload))
        })
        .await;
        let ctx = &record["requestContext"];
        assert_eq!(ctx["requestId"], id.as_str(), "{record}");
        assert_eq!(ctx["condition"], "RetriesExhausted");
        assert_eq!(ctx["approximateInvokeCount"], 3);
        assert_eq!(record["requestPayload"]["order"], 7);
        assert_eq!(record["responseContext"]["functionError"], "Unhandled");
        assert_eq!(record["responsePayload"]["errorType"], "FakeError");
        let st = fleet.async_status(1, "failing").await;
        assert_eq!((st.dead_letters, st.queued), (1, 0), "{st:?}");

        let n = fleet
            .invocations(1)
            .redrive_dead_letters(bearer(
                pb::RedriveDeadLettersRequest {
                    function_name: "failing".into(),
                    request_ids: vec![id.clone()],
                    all: false,
                },
                FLEET_ADMIN,
            ))
            .await
            .unwrap()
            .into_inner()
            .count;
        assert_eq!(n, 1);
        wait_for("the redriven event to fail 3 times again", 15, || async {
            let dls = fleet.dead_letters(1, "failing").await;
            (fake.runs_of(&id) == 6 && dls.len() == 1 && dls[0].attempts == 3).then_some(())
        })
        .await;

        // A success runs once and reaches the on-success destination.
        fleet
            .create_function(1, "okays", pb::FunctionConfig::default())
            .await;
        fleet
            .create_function(
                1,
                "echoing",
                pb::FunctionConfig {
                    async_config: Some(pb::AsyncConfig {
                        on_success_target: "okays".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await;
        let ok = fleet
            .invoke(1, "echoing", r#"{"k":1}"#, Event)
            .await
            .unwrap();
        let record = wait_for("the on-success record", 10, || async {
            fake.runs_of_function("okays")
                .first()
                .map(|r| json_of(&r.payload))
        })
        .await;
        assert_eq!(
            record["requestContext"]["requestId"],
            ok.request_id.as_str()
        );
        assert_eq!(record["requestContext"]["condition"], "Success");
        assert_eq!(record["requestPayload"]["k"], 1);
        assert_eq!(record["responsePayload"]["k"], 1, "the function's result");
        // Long enough for a retry, had there been one.
        tokio::time::sleep(3 * w).await;
        assert_eq!(fake.runs_of(&ok.request_id), 1, "a success runs once");
        assert!(fleet.dead_letters(1, "echoing").await.is_empty());
        assert_eq!(fleet.async_status(1, "echoing").await.queued, 0);
        fleet.shutdown().await;
    })
    .await
}

/// Reserved concurrency 0 holds async events: they stay queued without an
/// attempt (queued 3, in flight 0, nothing ran); once the reservation is
/// cleared every one runs, once, and none is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_events_of_a_throttled_function_wait_then_run_once_released() {
    bounded(60, async {
        let fleet = Fleet::start(1, &["a"], &short_waits).await;
        let fake = fleet.workers[0].fake.clone();
        fleet
            .create_function(
                1,
                "held",
                pb::FunctionConfig {
                    reserved_concurrency: Some(0),
                    ..Default::default()
                },
            )
            .await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let r = fleet
                .invoke(1, "held", &format!(r#"{{"i":{i}}}"#), Event)
                .await
                .unwrap();
            ids.push(r.request_id);
        }
        // Several dispatcher passes (every 100 ms) and retry waits.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let st = fleet.async_status(1, "held").await;
        assert_eq!(st.queued, 3, "{st:?}");
        assert_eq!(st.in_flight, Some(0), "{st:?}");
        assert_eq!(st.running, 0, "{st:?}");
        assert!(
            fake.runs_of_function("held").is_empty(),
            "nothing runs while throttled to 0"
        );

        fleet
            .update_config(
                1,
                "held",
                pb::FunctionConfig {
                    clear_reserved_concurrency: true,
                    ..Default::default()
                },
            )
            .await;
        wait_for("the held events to run once released", 10, || async {
            ids.iter().all(|id| fake.runs_of(id) == 1).then_some(())
        })
        .await;
        wait_for("the queue to empty", 10, || async {
            (fleet.async_status(1, "held").await.queued == 0).then_some(())
        })
        .await;
        for id in &ids {
            assert_eq!(fake.runs_of(id), 1, "{id} ran once");
        }
        assert!(fleet.dead_letters(1, "held").await.is_empty());
        fleet.shutdown().await;
    })
    .await
}

/// Invokes `function` through node 1 with an ordering key.
async fn invoke_ordered(
    fleet: &Fleet,
    function: &str,
    payload: &str,
    key: &str,
    kind: pb::InvocationType,
) -> Result<pb::InvokeResponse, tonic::Status> {
    fleet
        .invocations(1)
        .invoke(bearer(
            pb::InvokeRequest {
                function_name: function.into(),
                payload: payload.as_bytes().to_vec(),
                invocation_type: kind as i32,
                ordering_key: key.into(),
                ..Default::default()
            },
            FLEET_ADMIN,
        ))
        .await
        .map(|r| r.into_inner())
}

/// Ordering keys through the dispatcher, with w = 200 ms: 20 Events with
/// one key (each sleeping 50 ms; the 6th fails, with maximum retry
/// attempts 1 so it runs twice) run one at a time in submission order:
/// each starts after the previous one ended, the failing one's retry
/// comes w after its first try and before any later event, then it is
/// dead-lettered and the rest run. An Event of another key and an
/// unkeyed one, sent after all 20, run before the key's backlog is
/// through. An ordering key on a synchronous call, or over 256 bytes, is
/// INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_events_with_one_ordering_key_run_one_at_a_time_in_order() {
    bounded(60, async {
        let fleet = Fleet::start(1, &["a"], &short_waits).await;
        let fake = fleet.workers[0].fake.clone();
        fleet
            .create_function(
                1,
                "serial",
                pb::FunctionConfig {
                    async_config: Some(pb::AsyncConfig {
                        maximum_retry_attempts: Some(1),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await;
        const SLEEP_MS: u64 = 50;
        const FAILING: usize = 5;
        let mut ids = Vec::new();
        for i in 0..20 {
            let error = if i == FAILING {
                r#","error":"five""#
            } else {
                ""
            };
            let payload = format!(r#"{{"sleep_ms":{SLEEP_MS},"n":{i}{error}}}"#);
            let r = invoke_ordered(&fleet, "serial", &payload, "orders/p0", Event)
                .await
                .unwrap();
            assert_eq!(r.status_code, 202);
            ids.push(r.request_id);
        }
        let other = invoke_ordered(&fleet, "serial", r#"{"n":100}"#, "orders/p1", Event)
            .await
            .unwrap()
            .request_id;
        let unkeyed = fleet
            .invoke(1, "serial", r#"{"n":200}"#, Event)
            .await
            .unwrap()
            .request_id;

        let dl = wait_for("the failing event's dead letter", 30, || async {
            fleet.dead_letters(1, "serial").await.into_iter().next()
        })
        .await;
        assert_eq!(
            (dl.request_id.as_str(), dl.attempts),
            (ids[FAILING].as_str(), 2)
        );
        wait_for("every event to run", 30, || async {
            ids.iter().all(|id| fake.runs_of(id) >= 1).then_some(())
        })
        .await;
        wait_for("the queue to empty", 10, || async {
            (fleet.async_status(1, "serial").await.queued == 0).then_some(())
        })
        .await;

        let runs = fake.runs_of_function("serial");
        let keyed: Vec<_> = runs
            .iter()
            .filter(|r| ids.contains(&r.request_id))
            .collect();
        let order: Vec<usize> = keyed
            .iter()
            .map(|r| ids.iter().position(|id| *id == r.request_id).unwrap())
            .collect();
        let mut want: Vec<usize> = (0..20).collect();
        want.insert(FAILING, FAILING);
        assert_eq!(order, want, "submission order, the retry in its place");
        let sleep = Duration::from_millis(SLEEP_MS);
        for (k, pair) in keyed.windows(2).enumerate() {
            let gap = pair[1].at - pair[0].at;
            assert!(
                gap >= sleep,
                "run {} started {gap:?} after run {k} started: before it ended",
                k + 1
            );
        }
        let retry_gap = keyed[FAILING + 1].at - keyed[FAILING].at;
        assert!(
            retry_gap >= Duration::from_millis(WAIT_MS),
            "the retry waits w: {retry_gap:?}"
        );
        let last = keyed.last().unwrap().at;
        for id in [&other, &unkeyed] {
            let r = runs.iter().find(|r| r.request_id == *id).unwrap();
            assert!(r.at < last, "{id} was not held by the key's backlog");
            assert_eq!(fake.runs_of(id), 1);
        }
        for (i, id) in ids.iter().enumerate() {
            let want = if i == FAILING { 2 } else { 1 };
            assert_eq!(fake.runs_of(id), want, "event {i}");
        }

        let sync = invoke_ordered(&fleet, "serial", "{}", "k", RequestResponse)
            .await
            .unwrap_err();
        assert_eq!(sync.code(), Code::InvalidArgument, "{sync:?}");
        assert!(
            sync.message()
                .contains("ordering_key is for asynchronous invocations (--async)"),
            "{sync:?}"
        );
        let long = invoke_ordered(&fleet, "serial", "{}", &"k".repeat(257), Event)
            .await
            .unwrap_err();
        assert_eq!(long.code(), Code::InvalidArgument, "{long:?}");
        assert!(
            long.message().contains("ordering_key is 257 bytes"),
            "{long:?}"
        );
        assert_eq!(
            fake.runs_of_function("serial").len(),
            runs.len(),
            "neither ran"
        );
        fleet.shutdown().await;
    })
    .await
}

/// Lambda's sync error semantics, through a controller to a worker: a
/// function error comes back as the response (function_error "Unhandled",
/// the error document with errorType and errorMessage), not as a failed
/// call; the log tail carries the invocation's START and REPORT lines;
/// an unknown function, version or alias is NOT_FOUND; a payload that is
/// not JSON or is over 6 MB is INVALID_ARGUMENT, and none of those runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_calls_relay_function_errors_and_refuse_bad_requests() {
    bounded(60, async {
        let fleet = Fleet::start(1, &["a"], &|_| {}).await;
        fleet
            .create_function(1, "failing", pb::FunctionConfig::default())
            .await;
        let r = fleet
            .invoke(
                1,
                "failing",
                r#"{"error":"no such order"}"#,
                RequestResponse,
            )
            .await
            .expect("a function error is a response");
        assert_eq!(r.function_error, "Unhandled", "{r:?}");
        let e = json_of(&r.payload);
        assert_eq!(e["errorType"], "FakeError", "{e}");
        assert_eq!(e["errorMessage"], "no such order", "{e}");

        let r = fleet
            .invocations(1)
            .invoke(bearer(
                pb::InvokeRequest {
                    function_name: "failing".into(),
                    payload: b"{}".to_vec(),
                    log_type: pb::LogType::LogTail as i32,
                    ..Default::default()
                },
                FLEET_ADMIN,
            ))
            .await
            .unwrap()
            .into_inner();
        for want in [
            format!("START RequestId: {}", r.request_id),
            format!("REPORT RequestId: {}", r.request_id),
        ] {
            assert!(r.log_result.contains(&want), "{want}: {}", r.log_result);
        }

        let runs_before = fleet.workers[0].fake.ran.lock().unwrap().len();
        let qualified = |q: &str| {
            let mut c = fleet.invocations(1);
            let q = q.to_string();
            async move {
                c.invoke(bearer(
                    pb::InvokeRequest {
                        function_name: "failing".into(),
                        qualifier: q,
                        ..Default::default()
                    },
                    FLEET_ADMIN,
                ))
                .await
            }
        };
        for q in ["9", "live"] {
            let s = qualified(q).await.expect_err("an unknown qualifier");
            assert_eq!(s.code(), Code::NotFound, "failing:{q}: {s:?}");
        }
        let s = fleet
            .invoke(1, "nope", "{}", RequestResponse)
            .await
            .expect_err("an unknown function");
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
        let s = fleet
            .invoke(1, "failing", "{not json", RequestResponse)
            .await
            .expect_err("a payload that is not JSON");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("not valid JSON"), "{s:?}");
        let big = format!("\"{}\"", "a".repeat(7 * 1024 * 1024));
        let s = fleet
            .invoke(1, "failing", &big, RequestResponse)
            .await
            .expect_err("a 7 MB payload");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("6 MB"), "{s:?}");
        assert_eq!(
            fleet.workers[0].fake.ran.lock().unwrap().len(),
            runs_before,
            "refused calls do not run"
        );
        fleet.shutdown().await;
    })
    .await
}

fn fake_spec(name: &str) -> pb::FunctionSpec {
    pb::FunctionSpec {
        function_name: name.into(),
        version: "$LATEST".into(),
        runtime: "python3.11".into(),
        handler: "app.handler".into(),
        memory_mb: 128,
        timeout_seconds: 3,
        ephemeral_storage_mb: 512,
        code_sha256: "0".repeat(64),
        code_size: 1,
        ..Default::default()
    }
}

/// The worker's term fence: after the leader of term t is killed and the
/// worker has heard from the new leader (a higher term), a dispatch sent
/// with term t, as the deposed leader would, is refused as "not run"
/// (FAILED_PRECONDITION with the not-run mark) and the function does not
/// run, nor is the attempt held; the same attempt from the current term
/// runs, and sent again runs no second time (one run per attempt key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_from_a_deposed_leaders_term_is_refused_and_not_run() {
    bounded(60, async {
        let mut fleet = Fleet::start(3, &["a"], &|_| {}).await;
        let old = fleet.cluster.wait_leader(Duration::from_secs(10)).await;
        let old_term = fleet.cluster.node(old).raft.metrics().borrow().current_term;
        let attempts = fleet.workers[0].worker.attempts.clone();
        wait_for("the worker to see the first leader's term", 10, || async {
            (attempts.fence() >= old_term).then_some(())
        })
        .await;
        fleet.cluster.kill(old).await;
        let others: Vec<u64> = fleet.cluster.up_ids();
        let new = fleet
            .cluster
            .wait_new_leader(old, &others, Duration::from_secs(10))
            .await;
        let new_term = fleet.cluster.node(new).raft.metrics().borrow().current_term;
        assert!(new_term > old_term);
        wait_for("the worker to see the new leader's term", 10, || async {
            (attempts.fence() >= new_term).then_some(())
        })
        .await;

        let secret = nubo_proto::worker_secret(crate::harness::SECRET);
        let key = "stale-event/1/0/0".to_string();
        let call = |term: u64| pb::WorkerInvokeRequest {
            function: Some(fake_spec("fenced")),
            request_id: "stale-event".into(),
            payload: b"{}".to_vec(),
            log_tail: false,
            attempt_key: key.clone(),
            dispatch_term: term,
        };
        let mut client = fleet.workers[0].client();
        let refused = client
            .invoke(nubo_proto::with_secret(call(old_term), &secret))
            .await
            .expect_err("a dispatch from the deposed leader's term");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("not run"),
            "{}",
            refused.message()
        );
        assert!(
            refused
                .metadata()
                .get(nubo_proto::headers::NOT_RUN)
                .is_some(),
            "marked not run: {refused:?}"
        );
        let fake = fleet.workers[0].fake.clone();
        assert_eq!(fake.runs_of("stale-event"), 0, "the function did not run");
        let held = client
            .find_attempts(nubo_proto::with_secret(
                pb::FindAttemptsRequest {
                    keys: vec![key.clone()],
                },
                &secret,
            ))
            .await
            .unwrap()
            .into_inner()
            .held;
        assert!(held.is_empty(), "a refused attempt is not held: {held:?}");

        for _ in 0..2 {
            let r = client
                .invoke(nubo_proto::with_secret(call(new_term), &secret))
                .await
                .expect("a dispatch from the current term");
            assert_eq!(r.get_ref().payload, b"{}");
        }
        assert_eq!(fake.runs_of("stale-event"), 1, "one run per attempt key");
        fleet.shutdown().await;
    })
    .await
}

/// Async events outlive their leader: 3 controllers and workers in zones a
/// and b; 200 events are accepted, then the leader is killed while they are
/// being dispatched. Every accepted event runs (counted by request id in
/// the fakes), none is dead-lettered, and none runs twice, on the same
/// worker or on another: the new leader finds the dead leader's attempts on
/// the workers and sends them back there under the same attempt key. A
/// follower then reports the new leader's in-flight count (0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_events_survive_the_leader_being_killed_and_run_once() {
    bounded(90, async {
        let mut fleet = Fleet::start(3, &["a", "b"], &|c| {
            short_waits(c);
            // A small dispatcher, so the queue is still deep at the kill.
            c.dispatch_concurrency = 16;
        })
        .await;
        fleet
            .create_function(1, "ev", pb::FunctionConfig::default())
            .await;
        let n = 200;
        let nodes = fleet.cluster.up_ids();
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let clients: Vec<_> = nodes.iter().map(|id| fleet.invocations(*id)).collect();
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for i in (t..n).step_by(8) {
                        let mut c = clients[i % clients.len()].clone();
                        let r = c
                            .invoke(bearer(
                                pb::InvokeRequest {
                                    function_name: "ev".into(),
                                    payload: format!(r#"{{"sleep_ms":200,"n":{i}}}"#).into_bytes(),
                                    invocation_type: Event as i32,
                                    ..Default::default()
                                },
                                FLEET_ADMIN,
                            ))
                            .await
                            .unwrap_or_else(|s| panic!("event {i} not accepted: {s:?}"));
                        ids.push(r.into_inner().request_id);
                    }
                    ids
                })
            })
            .collect();
        let mut accepted = Vec::new();
        for t in tasks {
            accepted.extend(t.await.unwrap());
        }
        assert_eq!(accepted.len(), n);

        let leader = fleet.cluster.wait_leader(Duration::from_secs(10)).await;
        let queued = fleet.async_status(leader, "ev").await.queued;
        fleet.cluster.kill(leader).await;
        eprintln!("killed leader {leader} with {queued} events queued");
        assert!(
            queued >= 50,
            "the kill must come while events are in flight: {queued} queued"
        );
        let others = fleet.cluster.up_ids();
        let new_leader = fleet
            .cluster
            .wait_new_leader(leader, &others, Duration::from_secs(10))
            .await;
        wait_for("the queue to drain under the new leader", 40, || async {
            (fleet.async_status(new_leader, "ev").await.queued == 0).then_some(())
        })
        .await;
        let follower = *others.iter().find(|id| **id != new_leader).unwrap();
        let st = fleet.async_status(follower, "ev").await;
        assert_eq!(
            st.in_flight,
            Some(0),
            "asked from follower {follower}: {st:?}"
        );

        let mut total: HashMap<&str, usize> = HashMap::new();
        for id in &accepted {
            let per_worker = fleet.runs_of(id);
            for (w, k) in fleet.workers.iter().zip(&per_worker) {
                assert!(*k <= 1, "{id} ran {k} times on worker {}", w.id);
            }
            total.insert(id, per_worker.iter().sum());
        }
        let missing: Vec<&&str> = total
            .iter()
            .filter(|(_, k)| **k == 0)
            .map(|(id, _)| id)
            .collect();
        let duplicates: usize = total.values().map(|k| k.saturating_sub(1)).sum();
        eprintln!(
            "async events: {n} accepted, {} ran, {} missing, {duplicates} duplicate runs",
            n - missing.len(),
            missing.len()
        );
        assert!(
            missing.is_empty(),
            "lost events: {:?}",
            &missing[..missing.len().min(10)]
        );
        assert_eq!(
            duplicates, 0,
            "re-dispatched attempts must go back to the worker running them"
        );
        assert!(fleet.dead_letters(new_leader, "ev").await.is_empty());
        fleet.shutdown().await;
    })
    .await
}

async fn delete_function(fleet: &Fleet, name: &str) {
    fleet
        .functions(1)
        .delete_function(bearer(
            pb::DeleteFunctionRequest {
                function_name: name.into(),
                ..Default::default()
            },
            FLEET_ADMIN,
        ))
        .await
        .unwrap_or_else(|s| panic!("deleting {name}: {s:?}"));
}

/// Every log line of `function` through node 1's API.
async fn log_text(fleet: &Fleet, function: &str) -> String {
    fleet
        .invocations(1)
        .get_logs(bearer(
            pb::GetLogsRequest {
                function_name: function.into(),
                start_time_ms: 0,
                limit: 10_000,
            },
            FLEET_ADMIN,
        ))
        .await
        .unwrap()
        .into_inner()
        .lines
        .into_iter()
        .map(|l| l.message)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A deleted function's logs go with it: the live worker forgets them
/// (memory and files) when the delete commits, and a new function of the
/// same name never shows them. Also when the worker was down at the
/// delete (it reloads the old lines from disk when it comes back): reads
/// keep only lines from the current function's creation on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_deleted_function_never_show_under_a_new_one() {
    bounded(90, async {
        let mut fleet = Fleet::start(1, &["a"], &|_| {}).await;
        let secret = r#"{"print":"secret-7f3a of the old function"}"#;

        // The worker is live at the delete: told to drop the logs.
        fleet
            .create_function(1, "f", pb::FunctionConfig::default())
            .await;
        fleet.invoke(1, "f", secret, RequestResponse).await.unwrap();
        assert!(log_text(&fleet, "f").await.contains("secret-7f3a"));
        let w = &fleet.workers[0];
        assert!(w.worker.logs.flush(Duration::from_secs(5)));
        assert!(w.logs_dir.path().join("f.jsonl").exists());
        delete_function(&fleet, "f").await;
        assert!(
            w.worker.logs.read("f", 0, 100).is_empty(),
            "dropped from memory"
        );
        assert!(w.worker.logs.flush(Duration::from_secs(5)));
        assert!(!w.logs_dir.path().join("f.jsonl").exists(), "file removed");
        fleet
            .create_function(1, "f", pb::FunctionConfig::default())
            .await;
        fleet.invoke(1, "f", "{}", RequestResponse).await.unwrap();
        let text = log_text(&fleet, "f").await;
        assert!(text.contains("START RequestId"), "{text}");
        assert!(!text.contains("secret-7f3a"), "{text}");

        // The worker is down at the delete and comes back with the old
        // lines on disk.
        fleet
            .create_function(1, "g", pb::FunctionConfig::default())
            .await;
        fleet.invoke(1, "g", secret, RequestResponse).await.unwrap();
        let dir = fleet.workers[0].logs_dir.clone();
        fleet.workers[0].stop().await;
        delete_function(&fleet, "g").await;
        let addrs: Vec<String> = fleet.cluster.members.values().cloned().collect();
        fleet.workers[0] = crate::harness::FakeWorker::start_in("w-a", "a", addrs, dir).await;
        fleet.wait_workers_live(Duration::from_secs(10)).await;
        assert!(
            fleet.workers[0]
                .worker
                .logs
                .read("g", 0, 100)
                .iter()
                .any(|l| l.message.contains("secret-7f3a")),
            "the restarted worker still holds the old lines"
        );
        fleet
            .create_function(1, "g", pb::FunctionConfig::default())
            .await;
        fleet.invoke(1, "g", "{}", RequestResponse).await.unwrap();
        let text = log_text(&fleet, "g").await;
        assert!(text.contains("START RequestId"), "{text}");
        assert!(!text.contains("secret-7f3a"), "{text}");
        fleet.shutdown().await;
    })
    .await
}

/// `WorkerControl.ForwardInvoke` is for controllers only: the worker
/// credential (which every worker host holds) is refused with
/// UNAUTHENTICATED and nothing runs; the cluster secret, as a follower
/// forwarding a reserved-concurrency call presents it, is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_invoke_takes_the_cluster_secret_not_the_worker_credential() {
    bounded(60, async {
        let fleet = Fleet::start(1, &["a"], &|_| {}).await;
        fleet
            .create_function(1, "fwd", pb::FunctionConfig::default())
            .await;
        let ch =
            tonic::transport::Channel::from_shared(format!("http://{}", fleet.cluster.members[&1]))
                .unwrap()
                .connect_lazy();
        let mut wc = pb::worker_control_client::WorkerControlClient::new(ch);
        let req = || pb::InvokeRequest {
            function_name: "fwd".into(),
            payload: br#"{"from":"a worker host"}"#.to_vec(),
            ..Default::default()
        };
        let ws = nubo_proto::worker_secret(crate::harness::SECRET);
        let e = wc
            .forward_invoke(nubo_proto::with_secret(req(), &ws))
            .await
            .expect_err("the worker credential on ForwardInvoke");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains("worker credential"), "{e:?}");
        assert!(fleet.workers[0].fake.runs_of_function("fwd").is_empty());
        let r = wc
            .forward_invoke(nubo_proto::with_secret(req(), crate::harness::SECRET))
            .await
            .expect("the cluster secret on ForwardInvoke")
            .into_inner();
        assert!(r.function_error.is_empty(), "{r:?}");
        assert_eq!(fleet.workers[0].fake.runs_of_function("fwd").len(), 1);
        fleet.shutdown().await;
    })
    .await
}

/// Payloads that are JSON to a lax parser but break runtimes are refused
/// at the API with INVALID_ARGUMENT naming the problem, for sync and async
/// invokes alike, and never run: 3 M nested `[]` (refused fast, by the
/// depth scan), and invalid UTF-8 inside a string; a 100-deep document
/// runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_or_non_utf8_payloads_are_refused_for_sync_and_async() {
    bounded(60, async {
        let fleet = Fleet::start(1, &["a"], &|_| {}).await;
        fleet
            .create_function(1, "parse", pb::FunctionConfig::default())
            .await;
        let call = |payload: Vec<u8>, kind: pb::InvocationType| {
            let mut c = fleet.invocations(1);
            async move {
                c.invoke(bearer(
                    pb::InvokeRequest {
                        function_name: "parse".into(),
                        payload,
                        invocation_type: kind as i32,
                        ..Default::default()
                    },
                    FLEET_ADMIN,
                ))
                .await
            }
        };
        // Balanced, so a parser that walks any depth calls it JSON.
        let nested = |n: usize| {
            let mut v = vec![b'['; n];
            v.extend(std::iter::repeat_n(b']', n));
            v
        };
        let deep = nested(3_000_000);
        let t = Instant::now();
        let s = call(deep, RequestResponse).await.expect_err("3 M nested [");
        let took = t.elapsed();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("more than 128 levels deep"), "{s:?}");
        assert!(took < Duration::from_secs(5), "refused in {took:?}");
        eprintln!("3 M nested '[' refused in {took:?} (sent over loopback)");
        // Async: the same depth check (under the 256 KB async limit).
        let s = call(nested(100_000), Event)
            .await
            .expect_err("100 k nested [ as an Event");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("levels deep"), "{s:?}");
        for kind in [RequestResponse, Event] {
            let s = call(b"{\"name\":\"\xff\xfe\"}".to_vec(), kind)
                .await
                .expect_err("invalid UTF-8");
            assert_eq!(s.code(), Code::InvalidArgument, "{kind:?}: {s:?}");
            assert!(s.message().contains("not valid UTF-8"), "{kind:?}: {s:?}");
        }
        assert!(
            fleet.workers[0].fake.runs_of_function("parse").is_empty(),
            "refused payloads do not run"
        );
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let r = call(ok.clone().into_bytes(), RequestResponse)
            .await
            .expect("a 100-deep document")
            .into_inner();
        assert_eq!(r.payload, ok.as_bytes());
        fleet.shutdown().await;
    })
    .await
}

/// A full worker is a throttle, not a missing one: with one worker of one
/// sandbox busy on a slow call, further calls get RESOURCE_EXHAUSTED with
/// the reason `capacity-exhausted` and the numbers (1 of 1 sandboxes), both
/// when the worker itself refuses (before its next heartbeat says it is
/// full) and when placement skips it on its heartbeat; never UNAVAILABLE
/// "no live worker". After the slow call the next one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_worker_throttles_with_capacity_exhausted() {
    bounded(60, async {
        let mut fleet = Fleet::start(1, &[], &|_| {}).await;
        let addrs: Vec<String> = fleet.cluster.members.values().cloned().collect();
        fleet.workers.push(
            crate::harness::FakeWorker::start_with(
                "w-tiny",
                "a",
                addrs,
                nubo_worker::pool::PoolConfig {
                    memory_mb: 1024,
                    max_sandboxes: 1,
                    keep_alive: Duration::from_secs(600),
                },
            )
            .await,
        );
        fleet.wait_workers_live(Duration::from_secs(10)).await;
        fleet
            .create_function(
                1,
                "busy",
                pb::FunctionConfig {
                    timeout_seconds: Some(10),
                    ..Default::default()
                },
            )
            .await;
        let mut c = fleet.invocations(1);
        let slow = tokio::spawn(async move {
            c.invoke(bearer(
                pb::InvokeRequest {
                    function_name: "busy".into(),
                    payload: br#"{"sleep_ms":2500}"#.to_vec(),
                    ..Default::default()
                },
                FLEET_ADMIN,
            ))
            .await
        });
        let worker = fleet.workers[0].worker.clone();
        wait_for("the slow call to run", 10, || async {
            (worker.pool.snapshot().busy == 1).then_some(())
        })
        .await;
        let expect_full = |r: Result<pb::InvokeResponse, tonic::Status>, what: &str| match r {
            Ok(v) => panic!("{what}: expected RESOURCE_EXHAUSTED, got {v:?}"),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{what}: {s:?}");
                assert_eq!(
                    nubo_proto::Reason::of(&s),
                    Some(nubo_proto::Reason::CapacityExhausted),
                    "{what}: {s:?}"
                );
                assert!(s.message().contains("capacity exhausted"), "{what}: {s:?}");
                assert!(s.message().contains("1 of 1 sandboxes"), "{what}: {s:?}");
            }
        };
        // At once: the worker may not have reported itself full yet.
        expect_full(
            fleet.invoke(1, "busy", "{}", RequestResponse).await,
            "right after the slow call started",
        );
        // After heartbeats saying it is full: placement skips it.
        tokio::time::sleep(Duration::from_millis(400)).await;
        for _ in 0..3 {
            expect_full(
                fleet.invoke(1, "busy", "{}", RequestResponse).await,
                "with the worker reported full",
            );
        }
        let r = slow.await.unwrap().expect("the slow call");
        assert!(r.get_ref().function_error.is_empty());
        // The controller learns that the sandbox is free from the slow
        // call's reply or the next heartbeat, whichever it sees first: a
        // call right after may still meet the old view, so allow one
        // heartbeat round for the throttle to lift.
        wait_for("a call to succeed once the sandbox is free", 5, || async {
            match fleet.invoke(1, "busy", "{}", RequestResponse).await {
                Ok(_) => Some(()),
                Err(s) if s.code() == tonic::Code::ResourceExhausted => None,
                Err(s) => panic!("a call once the sandbox is free: {s:?}"),
            }
        })
        .await;
        fleet.shutdown().await;
    })
    .await
}

/// Destinations cannot loop: a function that names itself as its
/// on-failure or on-success destination is refused (INVALID_ARGUMENT
/// naming the field), and so is one naming no function (NOT_FOUND,
/// `destination-not-found`), at create and at update-config.
/// Two functions that are each other's on-success destination (ping ->
/// pong -> ping ...) run exactly 16 times from one event, then the record
/// is stopped: it lands unattempted in the next target's dead-letter queue
/// (RecursiveLoop), `recursion_stopped` is counted, the queue empties and
/// nothing more runs. Every record stays within the async payload limit
/// (each embeds the last twice, so it grows until cut) and says
/// `truncated`; so does the failure record of a 256 KB failing event.
/// Deleting a function that is a destination is allowed; the records meant
/// for it are dropped and counted (`destination_failed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_loops_are_refused_or_stopped_and_records_stay_bounded() {
    bounded(90, async {
        let fleet = Fleet::start(1, &["a"], &short_waits).await;
        let fake = fleet.workers[0].fake.clone();
        let targets = |on_failure: &str, on_success: &str| pb::FunctionConfig {
            async_config: Some(pb::AsyncConfig {
                maximum_retry_attempts: Some(0),
                dead_letter_target: on_failure.into(),
                on_success_target: on_success.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (_, code) = crate::harness::code("loopfn");
        let create = |name: &str, config: pb::FunctionConfig| {
            let mut c = fleet.functions(1);
            let msgs = crate::harness::create_messages(name, config, &code);
            async move {
                c.create_function(bearer(tokio_stream::iter(msgs), FLEET_ADMIN))
                    .await
            }
        };
        for (config, field) in [
            (targets("loopfn", ""), "dead_letter_target"),
            (targets("", "loopfn"), "on_success_target"),
        ] {
            let s = create("loopfn", config).await.expect_err("a self-target");
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(s.message().contains(field), "{s:?}");
            assert!(s.message().contains("loopfn itself"), "{s:?}");
        }
        let s = create("loopfn", targets("nowhere", ""))
            .await
            .expect_err("a missing target");
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
        assert_eq!(
            nubo_proto::Reason::of(&s),
            Some(nubo_proto::Reason::DestinationNotFound),
            "{s:?}"
        );
        assert!(s.message().contains("nowhere"), "{s:?}");

        fleet.create_function(1, "ping", targets("", "")).await;
        fleet.create_function(1, "pong", targets("", "ping")).await;
        for (config, code) in [
            (targets("ping", ""), Code::InvalidArgument),
            (targets("", "ping"), Code::InvalidArgument),
            (targets("", "nowhere"), Code::NotFound),
        ] {
            let s = fleet
                .functions(1)
                .update_function_configuration(bearer(
                    pb::UpdateFunctionConfigurationRequest {
                        function_name: "ping".into(),
                        config: Some(config),
                        revision_id: String::new(),
                    },
                    FLEET_ADMIN,
                ))
                .await
                .expect_err("a bad target on update");
            assert_eq!(s.code(), code, "{s:?}");
        }
        // A longer cycle cannot be refused at deploy (ping -> pong is fine
        // until pong -> ping exists): it is stopped at run time.
        fleet.update_config(1, "ping", targets("", "pong")).await;
        let limit = 256 * 1024;
        let blob = "z".repeat(60_000);
        let first = fleet
            .invoke(1, "ping", &format!(r#"{{"blob":"{blob}"}}"#), Event)
            .await
            .unwrap();
        let stopped = wait_for("the loop's stopped record", 30, || async {
            fleet.dead_letters(1, "ping").await.into_iter().next()
        })
        .await;
        assert_eq!(stopped.condition, "RecursiveLoop", "{stopped:?}");
        assert_eq!(stopped.error_type, "RecursiveInvocationException");
        assert_eq!(stopped.attempts, 0);
        assert!(
            stopped.error_message.contains("pong -> ping"),
            "{stopped:?}"
        );
        // Nothing more runs, and the queue empties.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let runs: Vec<_> = ["ping", "pong"]
            .iter()
            .flat_map(|f| fake.runs_of_function(f))
            .collect();
        assert_eq!(runs.len(), 16, "16 invocations in one chain, then stopped");
        assert_eq!(fake.runs_of(&first.request_id), 1);
        for f in ["ping", "pong"] {
            assert_eq!(fleet.async_status(1, f).await.queued, 0, "{f}");
        }
        assert!(fleet.dead_letters(1, "pong").await.is_empty());
        let node = fleet.cluster.node(1);
        let (events, bytes) = node.with_registry(|r| (r.queues.events.len(), r.queues.bytes));
        assert_eq!(
            (events, bytes),
            (0, 0),
            "nothing left in the replicated queue"
        );
        use nubo_controller::metrics::AsyncStage;
        assert_eq!(node.metrics.async_count(AsyncStage::RecursionStopped), 1);
        assert_eq!(node.metrics.async_count(AsyncStage::SentToDestination), 15);
        let mut truncated = 0;
        for r in &runs {
            assert!(
                r.payload.len() <= limit,
                "a record of {} bytes",
                r.payload.len()
            );
            let v = json_of(&r.payload);
            if v["truncated"] == true {
                truncated += 1;
            }
        }
        eprintln!(
            "destination loop: {} runs, largest record {} bytes, {truncated} truncated",
            runs.len(),
            runs.iter().map(|r| r.payload.len()).max().unwrap_or(0)
        );
        assert!(
            truncated >= 10,
            "records grow until cut: {truncated} truncated"
        );
        assert!(stopped.payload.len() <= limit);

        // A failing event at the async limit: its failure record is cut.
        fleet.create_function(1, "sink", targets("", "")).await;
        fleet.create_function(1, "heavy", targets("sink", "")).await;
        let pad = "p".repeat(limit - 100);
        let payload = format!(r#"{{"error":"boom","pad":"{pad}"}}"#);
        assert!(payload.len() <= limit);
        fleet.invoke(1, "heavy", &payload, Event).await.unwrap();
        let record = wait_for("the heavy failure record", 15, || async {
            fake.runs_of_function("sink")
                .first()
                .map(|r| r.payload.clone())
        })
        .await;
        assert!(record.len() <= limit, "{} bytes", record.len());
        let v = json_of(&record);
        assert_eq!(v["truncated"], true, "{}", &v.to_string()[..300]);
        assert_eq!(v["truncatedFields"], serde_json::json!(["requestPayload"]));
        assert!(payload.starts_with(v["requestPayload"].as_str().unwrap()));
        assert_eq!(v["responsePayload"]["errorMessage"], "boom");
        assert_eq!(v["requestContext"]["condition"], "RetriesExhausted");

        // Deleting a destination is allowed (as on Lambda): the next
        // record has nowhere to go and is dropped, counted; the failed
        // event is still dead-lettered.
        fleet
            .functions(1)
            .delete_function(bearer(
                pb::DeleteFunctionRequest {
                    function_name: "sink".into(),
                    qualifier: String::new(),
                },
                FLEET_ADMIN,
            ))
            .await
            .expect("deleting a function that is a destination");
        fleet
            .invoke(1, "heavy", r#"{"error":"again"}"#, Event)
            .await
            .unwrap();
        wait_for("the undeliverable record counted", 15, || async {
            (node.metrics.async_count(AsyncStage::DestinationFailed) == 1).then_some(())
        })
        .await;
        assert_eq!(fleet.dead_letters(1, "heavy").await.len(), 2);
        fleet.shutdown().await;
    })
    .await
}

/// Deleting a function answers soon after the commit even when a live
/// worker does not answer the log drop (a paused worker host): the drop
/// is best effort and must not hold the reply past the client's 1 s
/// attempt deadline (which would retry a committed delete until the
/// retry budget runs out, and report it as failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_does_not_hold_a_delete() {
    bounded(60, async {
        let fleet = Fleet::start(1, &["a"], &|_| {}).await;
        // A "worker" that heartbeats and then never answers a call.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                conns.push(s);
            }
        });
        let ch =
            tonic::transport::Channel::from_shared(format!("http://{}", fleet.cluster.members[&1]))
                .unwrap()
                .connect_lazy();
        let ws = nubo_proto::worker_secret(crate::harness::SECRET);
        let beats = tokio::spawn(async move {
            let mut wc = pb::worker_control_client::WorkerControlClient::new(ch);
            loop {
                let hb = pb::WorkerHeartbeat {
                    id: "w-silent".into(),
                    zone: "a".into(),
                    address: addr.to_string(),
                    memory_mb: 1024,
                    max_sandboxes: 8,
                    incarnation: 1,
                    ..Default::default()
                };
                let _ = wc.heartbeat(nubo_proto::with_secret(hb, &ws)).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        wait_for("the silent worker to be live", 10, || async {
            fleet
                .cluster
                .invoker(1)
                .workers
                .live_clients()
                .iter()
                .any(|(id, _)| id == "w-silent")
                .then_some(())
        })
        .await;
        fleet
            .create_function(1, "f", pb::FunctionConfig::default())
            .await;
        let start = Instant::now();
        delete_function(&fleet, "f").await;
        let took = start.elapsed();
        beats.abort();
        held.abort();
        // nubo_client::DEFAULT_ATTEMPT_TIMEOUT.
        assert!(took < Duration::from_secs(1), "the delete took {took:?}");
        fleet.shutdown().await;
    })
    .await
}

/// A redrive retried with the client's request id (its first attempt
/// went unanswered, as after the client's attempt deadline) moves the
/// dead letters once and answers the first count: the event, failed and
/// dead-lettered again meanwhile, is not run a third time. Likewise a
/// retried purge answers its first count and leaves newer dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_redrive_or_purge_applies_once() {
    bounded(60, async {
        let fleet = Fleet::start(1, &["a"], &short_waits).await;
        let fake = fleet.workers[0].fake.clone();
        fleet
            .create_function(
                1,
                "failing",
                pb::FunctionConfig {
                    async_config: Some(pb::AsyncConfig {
                        maximum_retry_attempts: Some(0),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await;
        let id = fleet
            .invoke(1, "failing", r#"{"error":"nope"}"#, Event)
            .await
            .unwrap()
            .request_id;
        wait_for("the dead letter", 15, || async {
            (fleet.dead_letters(1, "failing").await.len() == 1).then_some(())
        })
        .await;
        fn with_rid<T>(req: T, rid: &str) -> tonic::Request<T> {
            let mut r = bearer(req, FLEET_ADMIN);
            r.metadata_mut()
                .insert(nubo_proto::headers::REQUEST_ID, rid.parse().unwrap());
            r
        }
        let redrive = || pb::RedriveDeadLettersRequest {
            function_name: "failing".into(),
            request_ids: vec![],
            all: true,
        };
        for attempt in 0..2 {
            let n = fleet
                .invocations(1)
                .redrive_dead_letters(with_rid(redrive(), "redrive-1"))
                .await
                .unwrap()
                .into_inner()
                .count;
            assert_eq!(n, 1, "attempt {attempt}");
            wait_for("the redriven event to fail again", 15, || async {
                let dls = fleet.dead_letters(1, "failing").await;
                (fake.runs_of(&id) >= 2 && dls.len() == 1).then_some(())
            })
            .await;
        }
        // Long enough for a second redrive's run, had there been one.
        tokio::time::sleep(Duration::from_millis(3 * WAIT_MS)).await;
        assert_eq!(fake.runs_of(&id), 2, "the retried redrive ran it again");

        let purge = || pb::DeadLettersRequest {
            function_name: "failing".into(),
            stale_ok: false,
        };
        let purged = |rid: &'static str| {
            let inv = fleet.invocations(1);
            async move {
                let mut inv = inv;
                inv.purge_dead_letters(with_rid(purge(), rid))
                    .await
                    .unwrap()
                    .into_inner()
                    .count
            }
        };
        assert_eq!(purged("purge-1").await, 1);
        fleet
            .invoke(1, "failing", r#"{"error":"again"}"#, Event)
            .await
            .unwrap();
        wait_for("the new dead letter", 15, || async {
            (fleet.dead_letters(1, "failing").await.len() == 1).then_some(())
        })
        .await;
        assert_eq!(purged("purge-1").await, 1, "the first attempt's count");
        assert_eq!(
            fleet.dead_letters(1, "failing").await.len(),
            1,
            "the retried purge removed a newer dead letter"
        );
        fleet.shutdown().await;
    })
    .await
}
