//! nubo-client: the one client of the nubo controllers.
//!
//! The CLI uses it today; the triggers, the gateway and the console are
//! meant to use it too, so that every way into the platform fails over,
//! follows leader hints and retries writes the same way:
//!
//! - **Endpoint failover.** A [`Client`] knows several controllers. A call
//!   that meets a connection error or `UNAVAILABLE` moves on to the next
//!   one, cycling with backoff until the retry budget is spent; any other
//!   status is the answer (every controller would give the same one).
//! - **Leader hint.** A follower that cannot serve a call names the leader
//!   in the [`LEADER`](nubo_proto::headers::LEADER) metadata; the next
//!   attempt goes there first.
//! - **Request-id retries.** Every logical call gets one random
//!   [`REQUEST_ID`](nubo_proto::headers::REQUEST_ID), sent unchanged on
//!   every attempt, so the controllers apply a retried write once.
//! - **Auth.** A bearer token, sent on every call.
//!
//! It has no opinion about command lines: callers build a [`Config`] from
//! their own flags or configuration files. [`load_token`] and
//! [`default_config_dir`] find the token `nubo up` stores.
//!
//! ```text
//! let client = Client::from_config(Config {
//!     token: Some(token),
//!     ..Config::new(parse_endpoints("10.0.0.1:7700,10.0.0.2:7700")?)
//! })?;
//! let status = client
//!     .call(|c| async move { c.cluster().status(ClusterStatusRequest {}).await })
//!     .await?;
//! ```

mod client;
mod config;

use std::path::PathBuf;

pub use client::{
    is_broken_call, is_connect_error, Auth, Client, ClusterApi, Conn, FunctionsApi, InvocationsApi,
    TokensApi, BROKEN_CALL_PREFIX, CONNECT_ERROR_PREFIX, MAX_MESSAGE_SIZE, NO_ANSWER_PREFIX,
};
pub use config::{
    default_config_dir, load_token, parse_endpoints, Config, DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_ENDPOINT, DEFAULT_RETRY_BUDGET, TOKEN_FILE,
};

/// What can go wrong before a call is made. Failed calls themselves are
/// `tonic::Status`es: their code, message and metadata are the answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint list is empty (or only separators).
    #[error("no endpoint given")]
    NoEndpoint,
    /// An endpoint that is not a URI.
    #[error("invalid endpoint {endpoint:?}")]
    InvalidEndpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The token cannot be sent in an `authorization` header.
    #[error("the token contains characters not allowed in a header")]
    InvalidToken(#[source] tonic::metadata::errors::InvalidMetadataValue),
    /// The token file exists but cannot be read.
    #[error("reading token file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
