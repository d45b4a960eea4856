//! Cluster behaviour under crashes, partitions and restarts.

use std::collections::BTreeSet;
use std::time::Duration;

use nubo_controller::error::ApiError;
use nubo_controller::raft::node::ForwardRequest;
use nubo_controller::registry::model::Command;

use crate::harness::{create_cmd, create_with_code, TestCluster};

const WAIT: Duration = Duration::from_secs(15);

/// Creates `names` through the given nodes in turn; returns the acknowledged ones.
async fn create_many(c: &TestCluster, via: &[u64], names: &[String]) -> BTreeSet<String> {
    let mut acked = BTreeSet::new();
    for (i, n) in names.iter().enumerate() {
        let node = c.node(via[i % via.len()]);
        match create_with_code(&node, n, 128).await {
            Ok(_) => {
                acked.insert(n.clone());
            }
            Err(e) => eprintln!("create {n} via node {} not acknowledged: {e}", node.id),
        }
    }
    acked
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Waits until every running node's registry holds every name in `acked`.
async fn assert_all_present(c: &TestCluster, acked: &BTreeSet<String>) {
    let leader = c.wait_leader(WAIT).await;
    // A linearizable read on each node proves it caught up with the leader.
    for id in c.up_ids() {
        let node = c.node(id);
        node.linearizable_read()
            .await
            .unwrap_or_else(|e| panic!("read on node {id} (leader {leader}): {e}"));
        node.with_registry(|r| {
            for n in acked {
                assert!(
                    r.functions.contains_key(n),
                    "node {id} lost acknowledged function {n}"
                );
            }
        });
    }
}

/// No acknowledged write is lost when the leader crashes: the survivors
/// elect a new leader, keep accepting writes, and the old leader rejoins
/// with everything. No term ever has two leaders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_loses_no_acknowledged_write() {
    let mut c = TestCluster::start(3).await;
    let all = c.all_ids();
    let mut acked = create_many(&c, &all, &names("before", 30)).await;
    assert_eq!(acked.len(), 30, "healthy cluster must ack every write");

    let old = c.wait_leader(WAIT).await;
    c.kill(old).await;
    let survivors: Vec<u64> = c.up_ids();
    let new = c.wait_new_leader(old, &survivors, WAIT).await;
    assert_ne!(new, old);
    acked.extend(create_many(&c, &survivors, &names("after", 30)).await);
    assert_eq!(acked.len(), 60, "two of three nodes must keep acking");

    c.restart(old).await;
    assert_all_present(&c, &acked).await;
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

/// A leader cut off from the majority cannot acknowledge a write: the
/// write fails with UNAVAILABLE and is gone after the partition heals,
/// while the majority elects a leader and keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_cannot_commit_and_majority_continues() {
    let c = TestCluster::start(3).await;
    let all = c.all_ids();
    let old = c.wait_leader(WAIT).await;
    let majority: Vec<u64> = all.iter().copied().filter(|&i| i != old).collect();
    c.faults.partition(&[vec![old], majority.clone()]);

    let lost = c.node(old).write(create_cmd("minority", 128)).await;
    match &lost {
        Err(ApiError::Unavailable { message, .. }) => {
            assert!(
                message.contains("quorum"),
                "message should say why: {message}"
            )
        }
        other => panic!("isolated leader must not ack, got {other:?}"),
    }
    let new = c.wait_new_leader(old, &majority, WAIT).await;
    let acked = create_many(&c, &majority, &names("majority", 10)).await;
    assert_eq!(acked.len(), 10);
    assert_ne!(new, old);

    c.faults.heal();
    assert_all_present(&c, &acked).await;
    for id in c.up_ids() {
        c.node(id).with_registry(|r| {
            assert!(
                !r.functions.contains_key("minority"),
                "node {id} has the write the isolated leader could not commit"
            )
        });
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

/// A node restarted from its data directory comes back with the same
/// registry (fsync on), and catches up with what it missed while down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restarts_from_disk_with_the_same_data() {
    let mut c = TestCluster::start_fsync(3).await;
    let mut acked = create_many(&c, &c.all_ids(), &names("a", 10)).await;
    c.kill(3).await;
    acked.extend(create_many(&c, &[1, 2], &names("b", 10)).await);
    c.restart(3).await;
    assert_all_present(&c, &acked).await;
    let r1 = c.node(1).registry().registry.clone();
    let r3 = c.node(3).registry().registry.clone();
    assert_eq!(r1, r3, "restarted node's registry differs");

    // A whole-cluster restart keeps everything too.
    for id in c.all_ids() {
        c.kill(id).await;
    }
    for id in c.all_ids() {
        c.restart(id).await;
    }
    assert_all_present(&c, &acked).await;
    c.shutdown().await;
}

/// A node added after the log was compacted catches up by installing a
/// snapshot, including the code blobs, and can then be promoted to voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_node_catches_up_by_snapshot() {
    let mut c = TestCluster::start_with(3, 20).await;
    let acked = create_many(&c, &c.all_ids(), &names("s", 60)).await;
    assert_eq!(acked.len(), 60);
    let leader = c.wait_leader(WAIT).await;
    // Compaction happened: the leader has a snapshot and purged its log.
    let m = c.node(leader).raft.metrics().borrow().clone();
    assert!(
        m.snapshot.is_some(),
        "no snapshot after 60 writes with snapshot_logs=20"
    );

    let addr = c.add_joiner(4).await;
    c.node(1)
        .submit(ForwardRequest::AddLearner { id: 4, addr })
        .await
        .unwrap()
        .unwrap();
    let target = c
        .node(leader)
        .raft
        .metrics()
        .borrow()
        .last_applied
        .unwrap()
        .index;
    c.wait_applied(target, WAIT).await;
    let n4 = c.node(4);
    let got = n4.registry().registry.clone();
    let want = c.node(leader).registry().registry.clone();
    assert_eq!(got, want, "learner's registry differs from the leader's");
    // Code packages are not in the snapshot: the learner fetches them from
    // its peers in the background.
    let start = std::time::Instant::now();
    loop {
        let missing: Vec<_> = want
            .blobs
            .keys()
            .filter(|sha| n4.sm.blob(sha).unwrap().is_none())
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "learner still lacks {} code packages",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.node(2)
        .submit(ForwardRequest::Promote { id: 4 })
        .await
        .unwrap()
        .unwrap();
    let voters: Vec<u64> = c
        .node(leader)
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert!(voters.contains(&4), "node 4 not a voter: {voters:?}");
    c.shutdown().await;
}

/// Five nodes tolerate two failures; with three down there is no quorum
/// and writes fail with UNAVAILABLE (nothing acknowledged); one node back
/// restores service, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_tolerate_two_failures() {
    let mut c = TestCluster::start(5).await;
    let mut acked = create_many(&c, &c.all_ids(), &names("x", 10)).await;
    let leader = c.wait_leader(WAIT).await;
    let other = if leader == 1 { 2 } else { 1 };
    c.kill(leader).await;
    c.kill(other).await;
    let up = c.up_ids();
    acked.extend(create_many(&c, &up, &names("y", 10)).await);
    assert_eq!(acked.len(), 20, "three of five must keep acking");

    let third = up[0];
    c.kill(third).await;
    let up2 = c.up_ids();
    let r = c.node(up2[0]).write(Command::Noop).await;
    assert!(
        matches!(r, Err(ApiError::Unavailable { .. })),
        "two of five must not ack: {r:?}"
    );
    c.restart(third).await;
    // Service returns once the three elect a leader.
    c.wait_leader(WAIT).await;
    acked.extend(create_many(&c, &c.up_ids(), &names("z", 5)).await);
    assert_eq!(acked.len(), 25);
    c.restart(leader).await;
    c.restart(other).await;
    assert_all_present(&c, &acked).await;
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

/// Code packages travel outside the log: a create commits once a majority
/// stored the bytes; a node that was cut off fetches them after the heal;
/// once no function uses a package, every node deletes it after the grace
/// period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_reaches_every_node_and_is_collected() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader(WAIT).await;
    let cut = if leader == 3 { 2 } else { 3 };
    c.faults.isolate(cut, &c.all_ids());
    create_with_code(&c.node(leader), "pkg", 128).await.unwrap();
    let sha = c
        .node(leader)
        .with_registry(|r| r.functions["pkg"].latest.code_sha256.clone());
    assert!(c.node(cut).sm.blob(&sha).unwrap().is_none());
    c.faults.heal();
    let has = |id: u64| c.node(id).sm.blob(&sha).unwrap().is_some();
    let start = std::time::Instant::now();
    while !c.all_ids().into_iter().all(has) {
        assert!(start.elapsed() < WAIT, "node {cut} never fetched the code");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.node(leader)
        .write(Command::DeleteFunction { name: "pkg".into() })
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while c.all_ids().into_iter().any(has) {
        assert!(
            start.elapsed() < WAIT,
            "unreferenced code was not collected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.shutdown().await;
}

/// A leader that stops answering without failing (paused, as by SIGSTOP:
/// messages to and from it hang, no error comes back) holds no request
/// sent through a follower past the election: a write and a linearizable
/// read through the followers succeed within 2 s of the pause (plus a
/// margin for a loaded machine), following the new leader instead of
/// waiting out the request timeout on the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_does_not_hold_requests_through_followers() {
    let c = TestCluster::start(3).await;
    let old = c.wait_leader(WAIT).await;
    let followers: Vec<u64> = c.all_ids().into_iter().filter(|&i| i != old).collect();
    // Warm the followers' connections to the leader.
    for &f in &followers {
        c.node(f)
            .write(create_cmd(&format!("warm{f}"), 128))
            .await
            .unwrap();
    }
    c.faults.pause(old);
    let paused = std::time::Instant::now();
    let (a, b) = (c.node(followers[0]), c.node(followers[1]));
    let (write, read) = tokio::join!(
        async {
            let r = a.write(create_cmd("after-pause", 128)).await;
            (r, paused.elapsed())
        },
        async {
            let r = b.linearizable_read().await;
            (r, paused.elapsed())
        },
    );
    println!(
        "paused leader {old}: write through node {} took {:?}, read through node {} took {:?}",
        followers[0], write.1, followers[1], read.1
    );
    c.faults.heal();
    write
        .0
        .expect("the write through a follower after the pause");
    read.0.expect("the read through a follower after the pause");
    let limit = Duration::from_secs(3);
    assert!(
        write.1 <= limit && read.1 <= limit,
        "requests through followers waited on the paused leader: write {:?}, read {:?} (goal 2 s)",
        write.1,
        read.1
    );
    c.assert_one_leader_per_term();
    c.shutdown().await;
}
