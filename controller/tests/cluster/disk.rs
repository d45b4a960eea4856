//! A full disk, on a small filesystem the test mounts itself (a tmpfs:
//! needs root). Uploads are refused with the numbers while there is still
//! room, deletes keep going through, and when the store fails anyway the
//! node says so instead of looking healthy.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use nubo_controller::config::ControllerConfig;
use nubo_controller::registry::model::Command;
use nubo_controller::server::Running;
use nubo_proto::v1 as pb;
use nubo_proto::Reason;
use pb::cluster_client::ClusterClient;
use pb::functions_client::FunctionsClient;
use tonic::transport::Channel;
use tonic::{Code, Request};

use nubo_test_support::{incompressible, Tmpfs};

use crate::harness::serve_one;

const ADMIN: &str = "disk-test-admin-token";

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    r
}

/// A zip with the handler and `n` incompressible bytes.
fn package(n: usize, seed: u64) -> Vec<u8> {
    let noise = incompressible(n, 0x9e3779b97f4a7c15 ^ seed);
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("app.py", opts).unwrap();
        z.write_all(b"def lambda_handler(event, context):\n    return event\n")
            .unwrap();
        z.start_file("data.bin", opts).unwrap();
        z.write_all(&noise).unwrap();
        z.finish().unwrap();
    }
    buf.into_inner()
}

async fn start(data_dir: PathBuf) -> (Running, Channel) {
    serve_one(ControllerConfig {
        data_dir,
        bootstrap_token: Some(ADMIN.into()),
        fsync: false,
        min_free_disk_mb: 8,
        ..Default::default()
    })
    .await
}

async fn create(ch: &Channel, name: &str, code: Vec<u8>) -> Result<(), tonic::Status> {
    let header = pb::CreateFunctionHeader {
        function_name: name.into(),
        config: Some(pb::FunctionConfig {
            runtime: "python3.11".into(),
            handler: "app.lambda_handler".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let msgs = nubo_proto::create_function_messages(header, &code, 1 << 20);
    FunctionsClient::new(ch.clone())
        .max_encoding_message_size(64 << 20)
        .create_function(authed(tokio_stream::iter(msgs)))
        .await
        .map(|_| ())
}

async fn delete(ch: &Channel, name: &str) -> Result<(), tonic::Status> {
    FunctionsClient::new(ch.clone())
        .delete_function(authed(pb::DeleteFunctionRequest {
            function_name: name.into(),
            qualifier: String::new(),
        }))
        .await
        .map(|_| ())
}

/// On a 64 MB data filesystem, 6 MB packages are accepted until the next
/// one would eat into the reserve (`min_free_disk_mb`); that one is
/// refused with RESOURCE_EXHAUSTED, reason `DiskFull`, and the numbers
/// (what it needs, what is free). A delete still succeeds, so does a read,
/// and the Raft core never stops ("shutting down").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn uploads_are_refused_before_the_disk_is_full_and_deletes_go_on() {
    let fs = Tmpfs::mount(64, "nubo-disk-test");
    let (running, ch) = start(fs.path().join("data")).await;
    let mut accepted = Vec::new();
    let refused = loop {
        let name = format!("f{}", accepted.len());
        match create(&ch, &name, package(6 << 20, accepted.len() as u64)).await {
            Ok(()) => accepted.push(name),
            Err(s) => break s,
        }
        assert!(accepted.len() < 20, "64 MB cannot hold 20 packages of 6 MB");
    };
    println!(
        "disk full: {} packages of 6 MB accepted, then: {:?} {}",
        accepted.len(),
        refused.code(),
        refused.message()
    );
    assert!(!accepted.is_empty(), "the first upload fits: {refused:?}");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(Reason::of(&refused), Some(Reason::DiskFull), "{refused:?}");
    let m = refused.message();
    assert!(
        m.contains("need ") && m.contains(" MB free in "),
        "the message has the numbers: {m}"
    );
    assert!(running.node.stopped().is_none(), "the core still runs");

    // Deletes go through the reserve, and free space again.
    for name in &accepted {
        delete(&ch, name)
            .await
            .unwrap_or_else(|e| panic!("delete {name} with a full disk: {e:?}"));
    }
    let got = FunctionsClient::new(ch.clone())
        .list_functions(authed(pb::ListFunctionsRequest::default()))
        .await
        .expect("a read with a full disk")
        .into_inner();
    assert!(got.functions.is_empty());
    assert!(running.node.stopped().is_none(), "the core still runs");
    running.shutdown().await;
}

/// When the store fails anyway (the disk filled behind the controller's
/// back, then a write RocksDB cannot take), openraft's core quits for
/// good: the node reports it (`raft_failed` resolves, `/metrics` says
/// `nubo_raft_running 0` and `nubo_raft_is_leader 0`, cluster status names
/// no leader and says why) instead of looking like a healthy leader, and
/// writes are refused with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn a_fatal_storage_error_is_reported_not_hidden() {
    let fs = Tmpfs::mount(64, "nubo-disk-test");
    let (running, ch) = start(fs.path().join("data")).await;
    create(&ch, "before", package(1 << 20, 1)).await.unwrap();
    // Fill the filesystem behind the controller's back.
    {
        let mut f = std::fs::File::create(fs.path().join("filler")).unwrap();
        let block = vec![0u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // A blob written past every check (as a peer's push could once): the
    // store fails, and the next log append with it.
    let _ = running
        .node
        .sm
        .put_blob(&"0".repeat(64), &vec![7u8; 4 << 20]);
    let write = tokio::time::timeout(
        Duration::from_secs(20),
        running.node.write(Command::DeleteFunction {
            name: "before".into(),
        }),
    )
    .await
    .expect("the write returns");
    println!("write after the store failed: {write:?}");
    let why = tokio::time::timeout(Duration::from_secs(20), running.raft_failed())
        .await
        .expect("the Raft core stops on the storage error");
    println!("raft failed: {why}");
    assert!(write.is_err(), "{write:?}");
    let m = running.node.raft.metrics().borrow().clone();
    let text = running.node.metrics.render(&m);
    assert!(text.contains("\nnubo_raft_running 0\n"), "{text}");
    assert!(text.contains("\nnubo_raft_is_leader 0\n"), "{text}");
    assert!(!running.node.is_leader());
    let status = ClusterClient::new(ch.clone())
        .status(authed(pb::ClusterStatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.leader_id, 0, "{status:?}");
    assert!(status.state.starts_with("Stopped"), "{status:?}");
    assert!(
        status.state.contains("fatal"),
        "the state says why: {}",
        status.state
    );
    let e = delete(&ch, "before").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("fatal error"), "{e:?}");
    running.shutdown().await;
}
