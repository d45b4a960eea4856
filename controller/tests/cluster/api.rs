//! The deploy API over real gRPC: semantics, access control, and bad input.
//! Every rejected request must name the problem and leave the store as it was.

use std::io::Write;

use nubo_controller::config::ControllerConfig;
use nubo_controller::server::Running;
use nubo_proto::v1 as pb;
use pb::cluster_client::ClusterClient;
use pb::functions_client::FunctionsClient;
use pb::tokens_client::TokensClient;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::harness::serve_one;

const ADMIN: &str = "nubo_test_admin_token";

struct Api {
    _dir: tempfile::TempDir,
    running: Option<Running>,
    channel: Channel,
}

impl Api {
    async fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let (running, channel) = serve_one(ControllerConfig {
            data_dir: dir.path().to_path_buf(),
            bootstrap_token: Some(ADMIN.into()),
            fsync: false,
            max_zipped_bytes: 2 * 1024 * 1024,
            max_unzipped_bytes: 8 * 1024 * 1024,
            ..Default::default()
        })
        .await;
        Api {
            _dir: dir,
            running: Some(running),
            channel,
        }
    }

    fn functions(&self) -> FunctionsClient<Channel> {
        FunctionsClient::new(self.channel.clone())
    }

    /// A snapshot of the whole registry, to prove a rejected call changed nothing.
    fn registry(&self) -> nubo_controller::registry::state::Registry {
        self.running
            .as_ref()
            .unwrap()
            .node
            .registry()
            .registry
            .clone()
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        for (name, data) in files {
            z.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

/// Incompressible bytes, so a zip of them is as large as they are.
fn noise(n: usize) -> Vec<u8> {
    nubo_test_support::incompressible(n, 0x9e3779b97f4a7c15)
}

fn app_zip() -> Vec<u8> {
    zip_of(&[(
        "app.py",
        b"def lambda_handler(event, context):\n    return event\n",
    )])
}

fn config(runtime: &str, handler: &str) -> pb::FunctionConfig {
    pb::FunctionConfig {
        runtime: runtime.into(),
        handler: handler.into(),
        ..Default::default()
    }
}

async fn create(
    api: &Api,
    token: &str,
    name: &str,
    cfg: pb::FunctionConfig,
    code: Vec<u8>,
) -> Result<pb::FunctionConfiguration, tonic::Status> {
    let header = pb::CreateFunctionHeader {
        function_name: name.into(),
        config: Some(cfg),
        ..Default::default()
    };
    let msgs = nubo_proto::create_function_messages(header, &code, 256 * 1024);
    api.functions()
        .create_function(authed(tokio_stream::iter(msgs), token))
        .await
        .map(|r| r.into_inner())
}

async fn update_code(
    api: &Api,
    name: &str,
    code: Vec<u8>,
) -> Result<pb::FunctionConfiguration, tonic::Status> {
    let msgs = vec![
        pb::UpdateFunctionCodeChunk {
            part: Some(pb::update_function_code_chunk::Part::Header(
                pb::UpdateFunctionCodeHeader {
                    function_name: name.into(),
                    code_size: code.len() as u64,
                    ..Default::default()
                },
            )),
        },
        pb::UpdateFunctionCodeChunk {
            part: Some(pb::update_function_code_chunk::Part::Code(code)),
        },
    ];
    api.functions()
        .update_function_code(authed(tokio_stream::iter(msgs), ADMIN))
        .await
        .map(|r| r.into_inner())
}

/// Asserts a call failed with `code` and a message containing `needle`.
fn expect_err<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    match r {
        Ok(v) => panic!("expected {code:?} mentioning {needle:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "wrong code for {needle:?}: {}", s.message());
            assert!(
                s.message().to_lowercase().contains(&needle.to_lowercase()),
                "message {:?} does not name {needle:?}",
                s.message()
            );
        }
    }
}

/// The full deploy flow: create, publish (numbers 1, 2; an unchanged
/// $LATEST returns the existing version), aliases with weights and
/// compare-and-set, qualifiers, deletes guarded by aliases, pagination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_flow_matches_lambda_semantics() {
    let api = Api::start().await;
    let f = create(
        &api,
        ADMIN,
        "hello",
        config("python3.11", "app.lambda_handler"),
        app_zip(),
    )
    .await
    .unwrap();
    assert_eq!(f.version, "$LATEST");
    assert_eq!(f.memory_mb, 128);
    assert_eq!(f.timeout_seconds, 3);
    assert_eq!(f.code_size, app_zip().len() as u64);
    assert_eq!(f.code_sha256.len(), 64);

    let mut fc = api.functions();
    let publish = |d: &str| {
        authed(
            pb::PublishVersionRequest {
                function_name: "hello".into(),
                description: d.into(),
                ..Default::default()
            },
            ADMIN,
        )
    };
    let v1 = fc
        .publish_version(publish("one"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v1.version, "1");
    let again = fc
        .publish_version(publish("same"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.version, "1",
        "unchanged $LATEST must return the existing version"
    );
    fc.update_function_configuration(authed(
        pb::UpdateFunctionConfigurationRequest {
            function_name: "hello".into(),
            config: Some(pb::FunctionConfig {
                memory_mb: Some(256),
                ..Default::default()
            }),
            revision_id: String::new(),
        },
        ADMIN,
    ))
    .await
    .unwrap();
    let v2 = fc
        .publish_version(publish("two"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v2.version, "2");
    assert_eq!(v2.memory_mb, 256);

    let alias = fc
        .create_alias(authed(
            pb::CreateAliasRequest {
                function_name: "hello".into(),
                name: "prod".into(),
                function_version: "1".into(),
                additional_version_weights: [("2".to_string(), 0.1)].into_iter().collect(),
                description: String::new(),
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alias.function_version, "1");

    // Compare-and-set: a stale revision is refused, the current one wins.
    let upd = |rev: &str, v: &str| {
        authed(
            pb::UpdateAliasRequest {
                function_name: "hello".into(),
                name: "prod".into(),
                function_version: v.into(),
                update_routing: true,
                revision_id: rev.into(),
                ..Default::default()
            },
            ADMIN,
        )
    };
    let moved = fc
        .update_alias(upd(&alias.revision_id, "2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.function_version, "2");
    assert!(moved.additional_version_weights.is_empty());
    expect_err(
        fc.update_alias(upd(&alias.revision_id, "1")).await,
        Code::FailedPrecondition,
        "changed since you read it",
    );

    // Qualifiers resolve.
    let got = fc
        .get_function(authed(
            pb::GetFunctionRequest {
                function_name: "hello".into(),
                qualifier: "prod".into(),
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.configuration.unwrap().version, "2");
    assert_eq!(got.alias.unwrap().name, "prod");

    // A version an alias points at cannot be deleted.
    let before = api.registry();
    expect_err(
        fc.delete_function(authed(
            pb::DeleteFunctionRequest {
                function_name: "hello".into(),
                qualifier: "2".into(),
            },
            ADMIN,
        ))
        .await,
        Code::FailedPrecondition,
        "used by alias prod",
    );
    assert_eq!(before, api.registry());
    fc.delete_function(authed(
        pb::DeleteFunctionRequest {
            function_name: "hello".into(),
            qualifier: "1".into(),
        },
        ADMIN,
    ))
    .await
    .unwrap();
    // Numbers are never reused.
    fc.update_function_configuration(authed(
        pb::UpdateFunctionConfigurationRequest {
            function_name: "hello".into(),
            config: Some(pb::FunctionConfig {
                memory_mb: Some(512),
                ..Default::default()
            }),
            revision_id: String::new(),
        },
        ADMIN,
    ))
    .await
    .unwrap();
    let v3 = fc
        .publish_version(publish("three"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v3.version, "3");

    // Pagination.
    for i in 0..5 {
        create(
            &api,
            ADMIN,
            &format!("p{i}"),
            config("python3.11", "app.lambda_handler"),
            app_zip(),
        )
        .await
        .unwrap();
    }
    let mut marker = String::new();
    let mut seen = Vec::new();
    loop {
        let page = fc
            .list_functions(authed(
                pb::ListFunctionsRequest {
                    max_items: 2,
                    marker: marker.clone(),
                    stale_ok: false,
                },
                ADMIN,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.functions.len() <= 2);
        seen.extend(page.functions.into_iter().map(|f| f.function_name));
        if page.next_marker.is_empty() {
            break;
        }
        marker = page.next_marker;
    }
    assert_eq!(seen, vec!["hello", "p0", "p1", "p2", "p3", "p4"]);

    // Deleting the function collects blobs no one references.
    fc.delete_function(authed(
        pb::DeleteFunctionRequest {
            function_name: "hello".into(),
            qualifier: String::new(),
        },
        ADMIN,
    ))
    .await
    .unwrap();
    for i in 0..5 {
        fc.delete_function(authed(
            pb::DeleteFunctionRequest {
                function_name: format!("p{i}"),
                qualifier: String::new(),
            },
            ADMIN,
        ))
        .await
        .unwrap();
    }
    let r = api.registry();
    assert!(r.blobs.is_empty(), "orphaned blobs left: {:?}", r.blobs);
    api.stop().await;
}

/// Missing or wrong tokens get UNAUTHENTICATED; a token of too small a
/// scope gets PERMISSION_DENIED; tokens are stored hashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes_are_enforced() {
    let api = Api::start().await;
    let mut fc = api.functions();
    let list = pb::ListFunctionsRequest::default();
    expect_err(
        fc.list_functions(Request::new(list.clone())).await,
        Code::Unauthenticated,
        "missing bearer token",
    );
    expect_err(
        fc.list_functions(authed(list.clone(), "nubo_wrong")).await,
        Code::Unauthenticated,
        "unknown or revoked token",
    );
    let mut tc = TokensClient::new(api.channel.clone());
    let mk = |scope: &str| {
        authed(
            pb::CreateTokenRequest {
                scope: scope.into(),
                name: format!("{scope} token"),
            },
            ADMIN,
        )
    };
    let invoke = tc.create_token(mk("invoke")).await.unwrap().into_inner();
    let deploy = tc.create_token(mk("deploy")).await.unwrap().into_inner();
    expect_err(
        tc.create_token(mk("root")).await,
        Code::InvalidArgument,
        "scope",
    );
    // invoke can invoke only: it cannot deploy, nor read a configuration
    // (whose environment may hold secrets) or list functions, versions or
    // aliases (Lambda's invoke permission grants no GetFunction).
    let mut secret_cfg = config("python3.11", "app.lambda_handler");
    secret_cfg
        .environment
        .insert("DB_PASSWORD".into(), "hunter2-secret".into());
    create(&api, ADMIN, "secretive", secret_cfg, app_zip())
        .await
        .unwrap();
    let name = || "secretive".to_string();
    let reads: Vec<(&str, Result<String, tonic::Status>)> = vec![
        (
            "GetFunction",
            fc.get_function(authed(
                pb::GetFunctionRequest {
                    function_name: name(),
                    ..Default::default()
                },
                &invoke.token,
            ))
            .await
            .map(|r| format!("{:?}", r.into_inner())),
        ),
        (
            "ListFunctions",
            fc.list_functions(authed(list.clone(), &invoke.token))
                .await
                .map(|r| format!("{:?}", r.into_inner())),
        ),
        (
            "ListVersionsByFunction",
            fc.list_versions_by_function(authed(
                pb::ListVersionsRequest {
                    function_name: name(),
                    ..Default::default()
                },
                &invoke.token,
            ))
            .await
            .map(|r| format!("{:?}", r.into_inner())),
        ),
        (
            "ListAliases",
            fc.list_aliases(authed(
                pb::ListAliasesRequest {
                    function_name: name(),
                    ..Default::default()
                },
                &invoke.token,
            ))
            .await
            .map(|r| format!("{:?}", r.into_inner())),
        ),
    ];
    for (method, r) in reads {
        match r {
            Ok(body) => panic!(
                "an invoke token read {method}{}",
                if body.contains("hunter2-secret") {
                    ", environment included"
                } else {
                    ""
                }
            ),
            Err(s) => {
                assert_eq!(s.code(), Code::PermissionDenied, "{method}: {s:?}");
                assert!(s.message().contains("needs `deploy`"), "{method}: {s:?}");
                assert!(!s.message().contains("hunter2"), "{method}: {s:?}");
            }
        }
    }
    // deploy reads it, environment included.
    let got = fc
        .get_function(authed(
            pb::GetFunctionRequest {
                function_name: name(),
                ..Default::default()
            },
            &deploy.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.configuration.unwrap().environment["DB_PASSWORD"],
        "hunter2-secret"
    );
    expect_err(
        create(
            &api,
            &invoke.token,
            "f",
            config("python3.11", "app.lambda_handler"),
            app_zip(),
        )
        .await,
        Code::PermissionDenied,
        "needs `deploy`",
    );
    // deploy can deploy, cannot manage tokens or membership.
    create(
        &api,
        &deploy.token,
        "f",
        config("python3.11", "app.lambda_handler"),
        app_zip(),
    )
    .await
    .unwrap();
    expect_err(
        tc.create_token(authed(
            pb::CreateTokenRequest {
                scope: "admin".into(),
                name: String::new(),
            },
            &deploy.token,
        ))
        .await,
        Code::PermissionDenied,
        "needs `admin`",
    );
    let mut cc = ClusterClient::new(api.channel.clone());
    expect_err(
        cc.remove_node(authed(pb::RemoveNodeRequest { node_id: 1 }, &deploy.token))
            .await,
        Code::PermissionDenied,
        "needs `admin`",
    );
    let status = cc
        .status(authed(pb::ClusterStatusRequest {}, &deploy.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.leader_id, 1);
    assert_eq!(status.nodes.len(), 1);
    // Stored hashed: the secret itself is nowhere in the state.
    let r = api.registry();
    let dump = serde_json::to_string(&r).unwrap();
    assert!(!dump.contains(&invoke.token) && !dump.contains(ADMIN));
    // Revoked tokens stop working.
    tc.revoke_token(authed(pb::RevokeTokenRequest { id: invoke.id }, ADMIN))
        .await
        .unwrap();
    expect_err(
        fc.list_functions(authed(list, &invoke.token)).await,
        Code::Unauthenticated,
        "revoked",
    );
    api.stop().await;
}

/// Each validation rule: the right status code, a message naming the
/// problem, and an unchanged store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_a_clear_message_and_changes_nothing() {
    let api = Api::start().await;
    create(
        &api,
        ADMIN,
        "exists",
        config("python3.11", "app.lambda_handler"),
        app_zip(),
    )
    .await
    .unwrap();
    let before = api.registry();
    let py = || config("python3.11", "app.lambda_handler");
    let with = |f: &dyn Fn(&mut pb::FunctionConfig)| {
        let mut c = py();
        f(&mut c);
        c
    };

    // Names and configuration ranges.
    let long = "x".repeat(65);
    let cases: Vec<(&str, pb::FunctionConfig, Vec<u8>, Code, &str)> = vec![
        ("bad name!", py(), app_zip(), Code::InvalidArgument, "name"),
        (
            long.as_str(),
            py(),
            app_zip(),
            Code::InvalidArgument,
            "name",
        ),
        (
            "f1",
            config("cobol", "app.h"),
            app_zip(),
            Code::InvalidArgument,
            "runtime",
        ),
        (
            "f1",
            config("python3.11", ""),
            app_zip(),
            Code::InvalidArgument,
            "handler",
        ),
        (
            "f1",
            with(&|c| c.memory_mb = Some(64)),
            app_zip(),
            Code::InvalidArgument,
            "memory",
        ),
        (
            "f1",
            with(&|c| c.memory_mb = Some(20_000)),
            app_zip(),
            Code::InvalidArgument,
            "memory",
        ),
        (
            "f1",
            with(&|c| c.timeout_seconds = Some(0)),
            app_zip(),
            Code::InvalidArgument,
            "timeout",
        ),
        (
            "f1",
            with(&|c| c.timeout_seconds = Some(901)),
            app_zip(),
            Code::InvalidArgument,
            "timeout",
        ),
        (
            "f1",
            with(&|c| c.ephemeral_storage_mb = Some(100)),
            app_zip(),
            Code::InvalidArgument,
            "ephemeral",
        ),
        (
            "f1",
            with(&|c| {
                c.environment = [("BIG".to_string(), "v".repeat(5000))]
                    .into_iter()
                    .collect()
            }),
            app_zip(),
            Code::InvalidArgument,
            "environment",
        ),
        (
            "f1",
            with(&|c| c.environment = [("1BAD".to_string(), "v".into())].into_iter().collect()),
            app_zip(),
            Code::InvalidArgument,
            "1BAD",
        ),
        (
            "f1",
            with(&|c| {
                c.environment = [("AWS_REGION".to_string(), "x".into())]
                    .into_iter()
                    .collect()
            }),
            app_zip(),
            Code::InvalidArgument,
            "AWS_REGION",
        ),
        (
            "f1",
            with(&|c| {
                c.async_config = Some(pb::AsyncConfig {
                    maximum_retry_attempts: Some(3),
                    ..Default::default()
                })
            }),
            app_zip(),
            Code::InvalidArgument,
            "retry",
        ),
        (
            "f1",
            with(&|c| {
                c.async_config = Some(pb::AsyncConfig {
                    maximum_event_age_seconds: Some(30),
                    ..Default::default()
                })
            }),
            app_zip(),
            Code::InvalidArgument,
            "event_age",
        ),
        (
            "exists",
            py(),
            app_zip(),
            Code::AlreadyExists,
            "already exists",
        ),
        // Code packages.
        (
            "f1",
            py(),
            b"this is not a zip".to_vec(),
            Code::InvalidArgument,
            "not a valid zip",
        ),
        (
            "f1",
            py(),
            zip_of(&[("../evil.py", b"x"), ("app.py", b"x")]),
            Code::InvalidArgument,
            "../evil.py",
        ),
        (
            "f1",
            py(),
            zip_of(&[("/etc/evil", b"x"), ("app.py", b"x")]),
            Code::InvalidArgument,
            "/etc/evil",
        ),
        (
            "f1",
            py(),
            zip_of(&[("other.py", b"x")]),
            Code::InvalidArgument,
            "app.py",
        ),
        (
            "f1",
            config("provided", "whatever"),
            zip_of(&[("main", b"x")]),
            Code::InvalidArgument,
            "bootstrap",
        ),
        (
            "f1",
            py(),
            zip_of(&[("app.py", b"x"), ("big.bin", &noise(3 * 1024 * 1024))]),
            Code::InvalidArgument,
            "limit",
        ),
    ];
    for (name, cfg, code, want, needle) in cases {
        let r = create(&api, ADMIN, name, cfg, code).await;
        expect_err(r, want, needle);
        assert_eq!(
            before,
            api.registry(),
            "rejected create of {name:?} changed the store"
        );
    }

    // Unzipped size and zip bombs (deflated, small on the wire).
    let mut bomb = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut bomb);
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("app.py", o).unwrap();
        z.write_all(b"x").unwrap();
        z.start_file("zeros", o).unwrap();
        z.write_all(&vec![0u8; 9 * 1024 * 1024]).unwrap();
        z.finish().unwrap();
    }
    let bomb = bomb.into_inner();
    assert!(bomb.len() < 2 * 1024 * 1024);
    let r = create(&api, ADMIN, "bomb", py(), bomb).await;
    let s = r.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("unzipped") || s.message().contains("bomb"),
        "{}",
        s.message()
    );

    // Symlinks escaping the root.
    let mut link = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut link);
        z.start_file("app.py", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"x").unwrap();
        z.add_symlink(
            "passwd",
            "../../etc/passwd",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        z.finish().unwrap();
    }
    expect_err(
        create(&api, ADMIN, "link", py(), link.into_inner()).await,
        Code::InvalidArgument,
        "passwd",
    );

    // Unknown function / qualifier.
    let mut fc = api.functions();
    let get = |n: &str, q: &str| {
        authed(
            pb::GetFunctionRequest {
                function_name: n.into(),
                qualifier: q.into(),
            },
            ADMIN,
        )
    };
    expect_err(
        fc.get_function(get("nope", "")).await,
        Code::NotFound,
        "nope",
    );
    expect_err(
        fc.get_function(get("exists", "7")).await,
        Code::NotFound,
        "version 7",
    );
    expect_err(
        fc.get_function(get("exists", "live")).await,
        Code::NotFound,
        "alias live",
    );
    expect_err(
        update_code(&api, "nope", app_zip()).await,
        Code::NotFound,
        "nope",
    );
    expect_err(
        update_code(&api, "exists", zip_of(&[("x.py", b"")])).await,
        Code::InvalidArgument,
        "app.py",
    );

    // Aliases.
    let alias = |v: &str, name: &str, w: Vec<(&str, f64)>| {
        authed(
            pb::CreateAliasRequest {
                function_name: "exists".into(),
                name: name.into(),
                function_version: v.into(),
                additional_version_weights: w
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                description: String::new(),
            },
            ADMIN,
        )
    };
    expect_err(
        fc.create_alias(alias("$LATEST", "a", vec![])).await,
        Code::InvalidArgument,
        "$LATEST",
    );
    expect_err(
        fc.create_alias(alias("1", "123", vec![])).await,
        Code::InvalidArgument,
        "digits",
    );
    expect_err(
        fc.create_alias(alias("1", "a", vec![])).await,
        Code::NotFound,
        "version 1",
    );
    expect_err(
        fc.create_alias(alias("1", "a", vec![("2", 1.5)])).await,
        Code::InvalidArgument,
        "weight",
    );
    expect_err(
        fc.update_alias(authed(
            pb::UpdateAliasRequest {
                function_name: "exists".into(),
                name: "ghost".into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await,
        Code::NotFound,
        "ghost",
    );
    expect_err(
        fc.delete_function(authed(
            pb::DeleteFunctionRequest {
                function_name: "exists".into(),
                qualifier: "$LATEST".into(),
            },
            ADMIN,
        ))
        .await,
        Code::InvalidArgument,
        "$LATEST",
    );
    assert_eq!(before, api.registry(), "a rejected call changed the store");
    api.stop().await;
}

/// A CreateToken retried with the client's request id (its first
/// attempt's answer lost, as after the client's attempt deadline) answers
/// a token that works: the first attempt's token, whose secret only that
/// lost answer held, is revoked, and one token of that name remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_token_answers_a_working_token() {
    let api = Api::start().await;
    let mut tc = TokensClient::new(api.channel.clone());
    let attempt = || {
        let mut r = authed(
            pb::CreateTokenRequest {
                scope: "deploy".into(),
                name: "retried".into(),
            },
            ADMIN,
        );
        r.metadata_mut().insert(
            nubo_proto::headers::REQUEST_ID,
            "create-token-1".parse().unwrap(),
        );
        r
    };
    let lost = tc.create_token(attempt()).await.unwrap().into_inner();
    let retried = tc.create_token(attempt()).await.unwrap().into_inner();
    let list = pb::ListFunctionsRequest::default();
    api.functions()
        .list_functions(authed(list.clone(), &retried.token))
        .await
        .expect("the retry's token authenticates");
    expect_err(
        api.functions()
            .list_functions(authed(list, &lost.token))
            .await,
        Code::Unauthenticated,
        "unknown or revoked token",
    );
    let tokens = tc
        .list_tokens(authed(pb::ListTokensRequest {}, ADMIN))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let named: Vec<_> = tokens.iter().filter(|t| t.name == "retried").collect();
    assert_eq!(named.len(), 1, "{tokens:?}");
    assert_eq!(named[0].id, retried.id);
}
