//! The one place errors become `tonic::Status`.

use tonic::Status;

use crate::error::{ApiError, RegistryError};

/// Converts an error to a gRPC status. UNAVAILABLE carries the leader's
/// address (when known) in the `x-nubo-leader` metadata and the message;
/// an error with a `Reason` carries it in `x-nubo-reason`.
pub fn to_status(e: ApiError) -> Status {
    let reason = e.reason();
    let mut status = match e {
        ApiError::Registry(r) => match r {
            RegistryError::NotFound(m) => Status::not_found(m.message),
            RegistryError::AlreadyExists(m) => Status::already_exists(m.message),
            RegistryError::InvalidArgument(m) => Status::invalid_argument(m.message),
            RegistryError::FailedPrecondition(m) => Status::failed_precondition(m.message),
        },
        ApiError::Unavailable {
            message, leader, ..
        } => match leader {
            Some(addr) => {
                let mut s = Status::unavailable(format!("{message} (leader: http://{addr})"));
                if let Ok(v) = format!("http://{addr}").parse() {
                    s.metadata_mut().insert(nubo_proto::headers::LEADER, v);
                }
                s
            }
            None => Status::unavailable(message),
        },
        ApiError::Unauthenticated(m) => Status::unauthenticated(m.message),
        ApiError::PermissionDenied(m) => Status::permission_denied(m.message),
        ApiError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
        ApiError::Throttled(m) => Status::resource_exhausted(m.message),
        ApiError::WorkerFailed(m) => Status::aborted(m),
        ApiError::Internal(m) => Status::internal(m),
    };
    if let Some(r) = reason {
        r.attach(&mut status);
    }
    status
}
