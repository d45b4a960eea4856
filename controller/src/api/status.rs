//! The one place errors become `tonic::Status`.

use tonic::Status;

use crate::error::{ApiError, RegistryError};

/// Converts an error to a gRPC status. UNAVAILABLE carries the leader's
/// address (when known) in the `x-nubo-leader` metadata and the message.
pub fn to_status(e: ApiError) -> Status {
    match e {
        ApiError::Registry(r) => match r {
            RegistryError::NotFound(m) => Status::not_found(m),
            RegistryError::AlreadyExists(m) => Status::already_exists(m),
            RegistryError::InvalidArgument(m) => Status::invalid_argument(m),
            RegistryError::FailedPrecondition(m) => Status::failed_precondition(m),
        },
        ApiError::Unavailable { message, leader } => match leader {
            Some(addr) => {
                let mut s = Status::unavailable(format!("{message} (leader: http://{addr})"));
                if let Ok(v) = format!("http://{addr}").parse() {
                    s.metadata_mut().insert(nubo_proto::headers::LEADER, v);
                }
                s
            }
            None => Status::unavailable(message),
        },
        ApiError::Unauthenticated(m) => Status::unauthenticated(m),
        ApiError::PermissionDenied(m) => Status::permission_denied(m),
        ApiError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
        ApiError::Throttled(m) => Status::resource_exhausted(m),
        ApiError::WorkerFailed(m) => Status::aborted(m),
        ApiError::Internal(m) => Status::internal(m),
    }
}
