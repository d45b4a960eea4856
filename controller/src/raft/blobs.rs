//! Code packages (blobs): they travel beside the Raft log, not in it. A
//! package is pushed to a majority of voters before a command referencing
//! it may commit; a node that missed one fetches it from a peer; blobs no
//! one references are collected after a grace period.

use nubo_proto::Reason;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::raft::node::ControllerNode;
use crate::raft::types::NodeId;

impl ControllerNode {
    /// Stores a blob on this node unless its disk cannot take it with the
    /// reserve kept (a blob write RocksDB fails for lack of space stops
    /// the Raft log too).
    pub fn put_blob_checked(&self, sha256: &str, data: &[u8]) -> Result<(), ApiError> {
        self.ensure_code_room(data.len() as u64)?;
        self.sm
            .put_blob(sha256, data)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Every other member (voters and learners) with its address, and the
    /// ids of the voters.
    fn blob_targets(&self) -> (Vec<(NodeId, String)>, BTreeSet<NodeId>) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let others = membership
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        (others, membership.voter_ids().collect())
    }

    /// Stores a code package on this node and pushes it to every peer,
    /// returning once a majority of voters hold it durably. Only then may
    /// a command referencing it be committed: any majority that commits it
    /// overlaps one that has the bytes. Slower peers finish in the
    /// background; a node that missed it fetches it later.
    pub async fn store_code(&self, sha256: &str, data: Vec<u8>) -> Result<(), ApiError> {
        self.put_blob_checked(sha256, &data)?;
        // Right after a restart the membership is still being loaded from
        // the log; a majority cannot be counted before it is known.
        let start = Instant::now();
        let (others, voters) = loop {
            let (others, voters) = self.blob_targets();
            if !voters.is_empty() {
                break (others, voters);
            }
            if start.elapsed() > self.deadline() {
                return Err(ApiError::unavailable(
                    "this controller does not know the cluster membership yet: it is starting or has not joined; retry, or use another controller",
                    self.leader_addr(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let needed = voters.len() / 2 + 1;
        let mut acks = usize::from(voters.contains(&self.id));
        let timeout = Duration::from_millis(self.config.request_timeout_ms.max(30_000));
        // The pushes run on their own; dropping `rx` early (a majority is
        // reached) leaves the rest to finish in the background.
        let mut rx = self.spawn_pushes(others, sha256, data, timeout);
        let mut errors = Vec::new();
        while acks < needed {
            match rx.recv().await {
                Some((id, Ok(()))) if voters.contains(&id) => acks += 1,
                Some((_, Ok(()))) => {}
                Some((_, Err(e))) => errors.push(e),
                None => {
                    return Err(ApiError::unavailable(
                        format!(
                            "the code package reached {acks} of the {needed} controllers a majority needs ({})",
                            errors.join("; ")
                        ),
                        self.leader_addr(),
                    )
                    .with_reason(Reason::CodeNotReplicated))
                }
            }
        }
        Ok(())
    }

    /// Pushes a blob to each of `targets` concurrently; each outcome is
    /// reported on the returned channel as it arrives.
    fn spawn_pushes(
        &self,
        targets: Vec<(NodeId, String)>,
        sha256: &str,
        data: Vec<u8>,
        timeout: Duration,
    ) -> tokio::sync::mpsc::Receiver<(NodeId, Result<(), String>)> {
        let (tx, rx) = tokio::sync::mpsc::channel(targets.len().max(1));
        let data = Arc::new(data);
        for (id, addr) in targets {
            let (peers, sha, data, tx) = (
                self.peers.clone(),
                sha256.to_string(),
                data.clone(),
                tx.clone(),
            );
            tokio::spawn(async move {
                let r = peers
                    .push_blob(id, &addr, &sha, (*data).clone(), timeout)
                    .await;
                let _ = tx.send((id, r)).await;
            });
        }
        rx
    }

    /// Fetches a referenced blob this node lacks from any peer that has it,
    /// verifies its sha256 and stores it.
    pub async fn fetch_code(&self, sha256: &str) -> Result<Vec<u8>, ApiError> {
        use sha2::Digest;
        let (others, _) = self.blob_targets();
        let mut errors = Vec::new();
        for (id, addr) in others {
            match self
                .peers
                .fetch_blob(id, &addr, sha256, Duration::from_secs(60))
                .await
            {
                Ok(data) if hex::encode(sha2::Sha256::digest(&data)) == sha256 => {
                    self.put_blob_checked(sha256, &data)?;
                    return Ok(data);
                }
                Ok(_) => errors.push(format!("node {id} sent bytes with a different sha256")),
                Err(e) => errors.push(e),
            }
        }
        Err(ApiError::unavailable(
            format!(
                "code package {sha256} is not on this controller and no peer could send it ({})",
                errors.join("; ")
            ),
            self.leader_addr(),
        ))
    }

    /// One pass of blob upkeep: fetch referenced blobs this node lacks
    /// (missed pushes, snapshot installs), and delete blobs no one has
    /// referenced for `grace` (failed uploads, deleted functions).
    /// `unreferenced` remembers since when each blob has been unreferenced.
    pub async fn blob_maintenance(
        &self,
        unreferenced: &mut std::collections::HashMap<String, Instant>,
        grace: Duration,
    ) {
        let referenced: BTreeSet<String> =
            self.with_registry(|r| r.blobs.keys().cloned().collect());
        let local: BTreeSet<String> = match self.sm.local_blobs() {
            Ok(l) => l.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing blobs");
                return;
            }
        };
        for sha in referenced.difference(&local) {
            if let Err(e) = self.fetch_code(sha).await {
                tracing::warn!(%sha, error = %e, "fetching a missing code package");
            }
        }
        unreferenced.retain(|sha, _| local.contains(sha) && !referenced.contains(sha));
        for sha in local.difference(&referenced) {
            let since = *unreferenced.entry(sha.clone()).or_insert_with(Instant::now);
            if since.elapsed() >= grace {
                if let Err(e) = self.sm.delete_blob(sha) {
                    tracing::warn!(%sha, error = %e, "deleting an unreferenced blob");
                }
                unreferenced.remove(sha);
            }
        }
    }
}
