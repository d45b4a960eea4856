//! Generated protobuf and gRPC code for `nubo.v1`. Domain code converts at the edge.
pub mod v1 {
    tonic::include_proto!("nubo.v1");
}

/// Metadata key carrying the cluster secret on controller-to-controller and
/// controller-to-worker calls.
pub const SECRET_HEADER: &str = "x-nubo-cluster-secret";

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
