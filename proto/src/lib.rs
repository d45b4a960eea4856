//! Generated protobuf and gRPC code for `nubo.v1`. Domain code converts at the edge.
pub mod v1 {
    tonic::include_proto!("nubo.v1");
}

/// Every `x-nubo-*` gRPC metadata key, defined once.
pub mod headers {
    /// The cluster secret (controller to controller) or the worker
    /// credential (controller <-> worker).
    pub const CLUSTER_SECRET: &str = "x-nubo-cluster-secret";
    /// On UNAVAILABLE: the leader's address (`http://host:port`), when known.
    pub const LEADER: &str = "x-nubo-leader";
    /// A client-chosen request id: a retried call with the same id is
    /// applied once.
    pub const REQUEST_ID: &str = "x-nubo-request-id";
    /// On a worker's error: the call did not run (safe to place elsewhere).
    pub const NOT_RUN: &str = "x-nubo-not-run";
    /// On an error: a [`Reason`](crate::Reason), machine-readable, so a
    /// client can say what to do next without parsing the message.
    pub const REASON: &str = "x-nubo-reason";
}

/// Metadata key carrying the cluster secret (see [`headers::CLUSTER_SECRET`]).
pub mod failpoint;

pub const SECRET_HEADER: &str = headers::CLUSTER_SECRET;

/// Why a call failed, beside the gRPC code and the human message. Servers
/// say *what* is wrong; each client (the CLI's hint layer, the console, the
/// gateway) decides what to tell its user to do about it. Sent as the
/// `x-nubo-reason` metadata value ([`Reason::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    FunctionNotFound,
    FunctionExists,
    VersionNotFound,
    /// A version an alias points to cannot be deleted.
    VersionInUse,
    AliasNotFound,
    AliasExists,
    TokenNotFound,
    /// An alias (or its routing) names `$LATEST` instead of a version.
    AliasNeedsVersion,
    /// The function has no code package yet.
    NoCode,
    /// At the function's reserved concurrency.
    ReservedConcurrency,
    /// No live worker can run the function.
    NoWorker,
    /// Every live worker that could run the function is full (sandboxes
    /// or memory): a throttle, retry later.
    CapacityExhausted,
    /// An on-failure / on-success destination names no function.
    DestinationNotFound,
    /// The write was not committed by a majority in time.
    NoQuorum,
    /// A code package did not reach a majority of controllers.
    CodeNotReplicated,
    /// The async queue is at its byte bound.
    AsyncQueueFull,
    /// A dead letter named in a redrive is not in the queue.
    DeadLetterNotFound,
    /// A code package the registry no longer references: upload it again.
    CodeNotStored,
    /// The upload is not a usable zip archive.
    BadCodePackage,
    /// An idempotency key on a synchronous invocation.
    IdempotencyKeyNotEvent,
    /// An invocation payload that is not JSON.
    PayloadNotJson,
    /// A configuration update that sets no field.
    NothingToUpdate,
    /// A redrive that names no dead letter and does not ask for all.
    RedriveNeedsIds,
    /// No bearer token was sent.
    TokenMissing,
    /// The bearer token is unknown or revoked.
    TokenUnknown,
    /// The token's scope does not allow the call.
    TokenScope,
    /// A current (linearizable) read could not be confirmed in time.
    ReadUnconfirmed,
    /// The controller's disk is too full to take the write (deletes are
    /// still accepted).
    DiskFull,
    /// No event source mapping (trigger) has that id.
    TriggerNotFound,
}

impl Reason {
    pub const ALL: &'static [Reason] = &[
        Reason::FunctionNotFound,
        Reason::FunctionExists,
        Reason::VersionNotFound,
        Reason::VersionInUse,
        Reason::AliasNotFound,
        Reason::AliasExists,
        Reason::TokenNotFound,
        Reason::AliasNeedsVersion,
        Reason::NoCode,
        Reason::ReservedConcurrency,
        Reason::NoWorker,
        Reason::CapacityExhausted,
        Reason::DestinationNotFound,
        Reason::NoQuorum,
        Reason::CodeNotReplicated,
        Reason::AsyncQueueFull,
        Reason::DeadLetterNotFound,
        Reason::CodeNotStored,
        Reason::BadCodePackage,
        Reason::IdempotencyKeyNotEvent,
        Reason::PayloadNotJson,
        Reason::NothingToUpdate,
        Reason::RedriveNeedsIds,
        Reason::TokenMissing,
        Reason::TokenUnknown,
        Reason::TokenScope,
        Reason::ReadUnconfirmed,
        Reason::DiskFull,
        Reason::TriggerNotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FunctionNotFound => "function-not-found",
            Reason::FunctionExists => "function-exists",
            Reason::VersionNotFound => "version-not-found",
            Reason::VersionInUse => "version-in-use",
            Reason::AliasNotFound => "alias-not-found",
            Reason::AliasExists => "alias-exists",
            Reason::TokenNotFound => "token-not-found",
            Reason::AliasNeedsVersion => "alias-needs-version",
            Reason::NoCode => "no-code",
            Reason::ReservedConcurrency => "reserved-concurrency",
            Reason::NoWorker => "no-worker",
            Reason::CapacityExhausted => "capacity-exhausted",
            Reason::DestinationNotFound => "destination-not-found",
            Reason::NoQuorum => "no-quorum",
            Reason::CodeNotReplicated => "code-not-replicated",
            Reason::AsyncQueueFull => "async-queue-full",
            Reason::DeadLetterNotFound => "dead-letter-not-found",
            Reason::CodeNotStored => "code-not-stored",
            Reason::BadCodePackage => "bad-code-package",
            Reason::IdempotencyKeyNotEvent => "idempotency-key-not-event",
            Reason::PayloadNotJson => "payload-not-json",
            Reason::NothingToUpdate => "nothing-to-update",
            Reason::RedriveNeedsIds => "redrive-needs-ids",
            Reason::TokenMissing => "token-missing",
            Reason::TokenUnknown => "token-unknown",
            Reason::TokenScope => "token-scope",
            Reason::ReadUnconfirmed => "read-unconfirmed",
            Reason::DiskFull => "disk-full",
            Reason::TriggerNotFound => "trigger-not-found",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }

    /// The reason a status carries, if any.
    pub fn of(status: &tonic::Status) -> Option<Reason> {
        status
            .metadata()
            .get(headers::REASON)
            .and_then(|v| v.to_str().ok())
            .and_then(Reason::parse)
    }

    /// Marks a status with this reason.
    pub fn attach(self, status: &mut tonic::Status) {
        status.metadata_mut().insert(
            headers::REASON,
            tonic::metadata::MetadataValue::from_static(self.as_str()),
        );
    }
}

/// A request carrying the cluster secret.
pub fn with_secret<T>(msg: T, secret: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(secret) {
        r.metadata_mut().insert(SECRET_HEADER, v);
    }
    r
}

/// The credential between controllers and workers, derived from the
/// cluster secret. A worker host holds this instead of the cluster secret,
/// which also admits Raft and blob-replication calls: a compromised worker
/// can heartbeat, fetch code and take invocations, not join the Raft group.
/// `nubo cluster worker-secret` prints it for a worker's configuration.
pub fn worker_secret(cluster_secret: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"nubo worker credential v1\0");
    h.update(cluster_secret.as_bytes());
    format!("nubo-worker-{}", hex::encode(h.finalize()))
}

/// The trigger credential for `cluster_secret`: lets a trigger instance
/// read the mappings, submit their events and report on them; not run
/// Raft, not register as a worker.
pub fn trigger_secret(cluster_secret: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"nubo trigger credential v1\0");
    h.update(cluster_secret.as_bytes());
    format!("nubo-trigger-{}", hex::encode(h.finalize()))
}

/// The secret a request presents ("" without one).
pub fn presented_secret(md: &tonic::metadata::MetadataMap) -> &str {
    md.get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Constant-time comparison of a presented secret with the expected one.
pub fn secret_matches(got: &str, want: &str) -> bool {
    got.len() == want.len()
        && got
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The messages of a `CreateFunction` call: the header (its `code_size`
/// set from `code`), then `code` in pieces of at most `chunk` bytes
/// (`usize::MAX`: one piece). For callers that hold the whole package in
/// memory -- tests, benchmarks; the CLI streams with progress in
/// src/cli/upload.rs.
pub fn create_function_messages(
    mut header: v1::CreateFunctionHeader,
    code: &[u8],
    chunk: usize,
) -> Vec<v1::CreateFunctionChunk> {
    use v1::create_function_chunk::Part;
    header.code_size = code.len() as u64;
    std::iter::once(Part::Header(header))
        .chain(code.chunks(chunk.max(1)).map(|c| Part::Code(c.to_vec())))
        .map(|part| v1::CreateFunctionChunk { part: Some(part) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header comes first with the package's size, then the code in
    /// order, no piece over the limit.
    #[test]
    fn create_function_messages_split_the_code() {
        use v1::create_function_chunk::Part;
        let code: Vec<u8> = (0..10u8).collect();
        let header = v1::CreateFunctionHeader {
            function_name: "f".into(),
            code_size: 999,
            ..Default::default()
        };
        let msgs = create_function_messages(header, &code, 4);
        let parts: Vec<_> = msgs.into_iter().map(|m| m.part.unwrap()).collect();
        match &parts[0] {
            Part::Header(h) => {
                assert_eq!(h.function_name, "f");
                assert_eq!(h.code_size, 10);
            }
            other => panic!("first message is not the header: {other:?}"),
        }
        let pieces: Vec<Vec<u8>> = parts[1..]
            .iter()
            .map(|p| match p {
                Part::Code(c) => c.clone(),
                other => panic!("a second header: {other:?}"),
            })
            .collect();
        assert_eq!(pieces, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        // usize::MAX: the whole package in one message.
        let one = create_function_messages(Default::default(), &code, usize::MAX);
        assert_eq!(one.len(), 2);
    }

    /// Every reason survives the trip through a status's metadata.
    #[test]
    fn reasons_round_trip() {
        for r in Reason::ALL {
            let mut s = tonic::Status::not_found("x");
            r.attach(&mut s);
            assert_eq!(Reason::of(&s), Some(*r));
        }
        assert_eq!(Reason::parse("no-such-reason"), None);
    }

    /// `Reason::ALL` lists every variant once: a variant missing from it
    /// would never parse back from the wire.
    #[test]
    fn all_lists_every_reason_once() {
        let names: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len(), "a name is used twice");
        // Exhaustive on purpose: a new variant fails to compile here, which
        // is the reminder to list it in ALL too (and to give it a CLI hint,
        // whose match in src/cli/hints.rs is exhaustive as well).
        for r in Reason::ALL {
            let listed = match r {
                Reason::FunctionNotFound
                | Reason::FunctionExists
                | Reason::VersionNotFound
                | Reason::VersionInUse
                | Reason::AliasNotFound
                | Reason::AliasExists
                | Reason::TokenNotFound
                | Reason::AliasNeedsVersion
                | Reason::NoCode
                | Reason::ReservedConcurrency
                | Reason::NoWorker
                | Reason::NoQuorum
                | Reason::CodeNotReplicated
                | Reason::AsyncQueueFull
                | Reason::DeadLetterNotFound
                | Reason::CodeNotStored
                | Reason::BadCodePackage
                | Reason::IdempotencyKeyNotEvent
                | Reason::PayloadNotJson
                | Reason::NothingToUpdate
                | Reason::RedriveNeedsIds
                | Reason::TokenMissing
                | Reason::TokenUnknown
                | Reason::TokenScope
                | Reason::ReadUnconfirmed
                | Reason::CapacityExhausted
                | Reason::DestinationNotFound
                | Reason::DiskFull
                | Reason::TriggerNotFound => true,
            };
            assert!(listed);
        }
    }
}
