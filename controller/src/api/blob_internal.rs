//! `nubo.v1.BlobInternal`: code packages between controllers (cluster
//! secret).

use sha2::{Digest, Sha256};

use nubo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::Internal;

#[tonic::async_trait]
impl pb::blob_internal_server::BlobInternal for Internal {
    async fn push_blob(
        &self,
        request: Request<pb::BlobPayload>,
    ) -> Result<Response<pb::BlobAck>, Status> {
        self.authorize(request.metadata(), "/nubo.v1.BlobInternal/PushBlob")?;
        let b = request.into_inner();
        // Content addressing is the integrity check.
        if hash_bytes(&b.data) != b.sha256 {
            return Err(Status::invalid_argument(
                "blob bytes do not match their sha256",
            ));
        }
        self.node
            .put_blob_checked(&b.sha256, &b.data)
            .map_err(crate::api::to_status)?;
        Ok(Response::new(pb::BlobAck {}))
    }

    async fn fetch_blob(
        &self,
        request: Request<pb::BlobRequest>,
    ) -> Result<Response<pb::BlobPayload>, Status> {
        self.authorize(request.metadata(), "/nubo.v1.BlobInternal/FetchBlob")?;
        let sha = request.into_inner().sha256;
        match self.node.sm.blob(&sha) {
            Ok(Some(data)) => Ok(Response::new(pb::BlobPayload { sha256: sha, data })),
            Ok(None) => Err(Status::not_found(format!("no blob {sha} here"))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}

fn hash_bytes(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
