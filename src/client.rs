//! Connection side of the CLI: global flags, token lookup, and a gRPC client
//! that fails over between controllers.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nubo_proto::v1::cluster_client::ClusterClient;
use nubo_proto::v1::functions_client::FunctionsClient;
use nubo_proto::v1::invocations_client::InvocationsClient;
use nubo_proto::v1::tokens_client::TokensClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7700";
/// Code packages go up in 1 MiB chunks, but configurations with large
/// environments and long listings still need room above tonic's 4 MiB default.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_RETRY_SECS: f64 = 10.0;
/// Metadata key a follower sets on UNAVAILABLE to point at the leader's API.
pub const LEADER_HINT_KEY: &str = "x-nubo-leader";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// JSON on stdout, for scripts.
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Controller API endpoint; a comma-separated list names several
    /// controllers, tried in turn when one is down.
    #[arg(long, global = true, env = "NUBO_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Bearer token. Without it, <config-dir>/token (written by `nubo up`) is used.
    #[arg(long, global = true, env = "NUBO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Directory holding the CLI's token file [default: $HOME/.config/nubo].
    #[arg(long, global = true, env = "NUBO_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
}

impl GlobalArgs {
    pub fn config_dir(&self) -> PathBuf {
        self.config_dir.clone().unwrap_or_else(default_config_dir)
    }

    /// The endpoints named by --endpoint, normalised to URIs.
    pub fn endpoints(&self) -> anyhow::Result<Vec<String>> {
        parse_endpoints(&self.endpoint)
    }

    /// Token from the flag or environment, else from `<config-dir>/token`.
    /// `None` is not an error: the server answers UNAUTHENTICATED and the
    /// error report explains how to get a token.
    pub fn resolve_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = self.token.as_deref().map(str::trim) {
            if !t.is_empty() {
                return Ok(Some(t.to_string()));
            }
        }
        let path = self.config_dir().join("token");
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let t = s.trim();
                Ok((!t.is_empty()).then(|| t.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading token file {}", path.display())),
        }
    }
}

/// `$HOME/.config/nubo`; the same fallback as `nubo up` uses, so the CLI
/// finds the token it stored.
pub fn default_config_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".config")
        .join("nubo")
}

/// Splits a comma-separated endpoint list; a bare `host:port` gets `http://`.
pub fn parse_endpoints(s: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let uri = normalize_endpoint(item);
        Endpoint::from_shared(uri.clone()).with_context(|| format!("invalid endpoint {item:?}"))?;
        if !out.contains(&uri) {
            out.push(uri);
        }
    }
    if out.is_empty() {
        bail!("no endpoint given: pass --endpoint or set NUBO_ENDPOINT");
    }
    Ok(out)
}

fn normalize_endpoint(s: &str) -> String {
    if s.contains("://") {
        s.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", s.trim_end_matches('/'))
    }
}

/// Adds `authorization: Bearer <token>` to every call, and the request id
/// of the logical call, the same on every retry, so the controllers apply a
/// retried write once.
#[derive(Clone, Debug)]
pub struct Auth {
    header: Option<MetadataValue<Ascii>>,
    request_id: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        if let Some(id) = &self.request_id {
            req.metadata_mut().insert("x-nubo-request-id", id.clone());
        }
        Ok(req)
    }
}

fn new_request_id() -> Option<MetadataValue<Ascii>> {
    let id: u128 = rand::random();
    MetadataValue::try_from(format!("{id:032x}")).ok()
}

pub type FunctionsApi = FunctionsClient<InterceptedService<Channel, Auth>>;
pub type ClusterApi = ClusterClient<InterceptedService<Channel, Auth>>;
pub type TokensApi = TokensClient<InterceptedService<Channel, Auth>>;
pub type InvocationsApi = InvocationsClient<InterceptedService<Channel, Auth>>;

/// One connected controller, handed to each attempt of [`Client::call`].
#[derive(Clone, Debug)]
pub struct Conn {
    pub channel: Channel,
    pub endpoint: String,
    auth: Auth,
}

impl Conn {
    pub fn functions(&self) -> FunctionsApi {
        FunctionsClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn cluster(&self) -> ClusterApi {
        ClusterClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn invocations(&self) -> InvocationsApi {
        InvocationsClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn tokens(&self) -> TokensApi {
        TokensClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }
}

#[derive(Debug)]
pub struct Client {
    endpoints: Vec<String>,
    token: Option<String>,
    auth: Auth,
    retry_budget: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    /// Index of the endpoint that answered last, tried first next time.
    preferred: Mutex<usize>,
}

impl Client {
    pub fn new(endpoints: Vec<String>, token: Option<String>) -> anyhow::Result<Client> {
        if endpoints.is_empty() {
            bail!("no endpoint given: pass --endpoint or set NUBO_ENDPOINT");
        }
        let header = match &token {
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {t}"))
                    .context("the token contains characters not allowed in a header")?,
            ),
            None => None,
        };
        Ok(Client {
            endpoints,
            token,
            auth: Auth {
                header,
                request_id: None,
            },
            retry_budget: retry_budget_from_env(),
            channels: Mutex::new(HashMap::new()),
            preferred: Mutex::new(0),
        })
    }

    pub fn from_args(args: &GlobalArgs) -> anyhow::Result<Client> {
        Client::new(args.endpoints()?, args.resolve_token()?)
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub fn with_retry_budget(mut self, budget: Duration) -> Client {
        self.retry_budget = budget;
        self
    }

    /// Runs `f` against a controller, failing over to the next endpoint on
    /// connection errors and UNAVAILABLE (cycling with backoff until the retry
    /// budget is spent). Other statuses are returned at once: any controller
    /// gives the same answer, so retrying elsewhere cannot help.
    pub async fn call<F, Fut, T>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.retry_budget;
        let mut backoff = Duration::from_millis(100);
        let auth = Auth {
            header: self.auth.header.clone(),
            request_id: new_request_id(),
        };
        let mut leader: Option<String> = None;
        let mut warned = false;
        loop {
            let mut last_err: Option<Status> = None;
            let mut redirected = false;
            for endpoint in self.attempt_order(leader.take()) {
                let result = match self.channel(&endpoint).await {
                    Ok(channel) => {
                        let conn = Conn {
                            channel,
                            endpoint: endpoint.clone(),
                            auth: auth.clone(),
                        };
                        f(conn).await
                    }
                    Err(status) => Err(status),
                };
                match result {
                    Ok(v) => {
                        self.remember(&endpoint);
                        return Ok(v);
                    }
                    Err(status) if is_retryable(&status) => {
                        self.forget(&endpoint);
                        tracing::debug!(%endpoint, error = %status.message(), "controller unavailable");
                        let hint = leader_hint(&status).filter(|l| *l != endpoint);
                        last_err = Some(status);
                        if let Some(l) = hint {
                            leader = Some(l);
                            redirected = true;
                            break;
                        }
                    }
                    Err(status) => return Err(status),
                }
            }
            let now = Instant::now();
            let err = last_err.unwrap_or_else(|| Status::unavailable("no endpoint answered"));
            if now >= deadline {
                return Err(err);
            }
            if !warned && !redirected && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                warned = true;
                eprintln!(
                    "warning: {}; retrying for up to {}s",
                    err.message(),
                    self.retry_budget.as_secs_f64().round()
                );
            }
            // A leader hint is worth following at once; otherwise wait for
            // an election or a restart to finish.
            let pause = if redirected {
                Duration::from_millis(20)
            } else {
                let p = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                p
            };
            tokio::time::sleep(pause.min(deadline - now)).await;
        }
    }

    fn attempt_order(&self, leader: Option<String>) -> Vec<String> {
        let start = *self.preferred.lock().expect("lock poisoned") % self.endpoints.len();
        let mut order: Vec<String> = Vec::with_capacity(self.endpoints.len() + 1);
        if let Some(l) = leader {
            order.push(l);
        }
        for i in 0..self.endpoints.len() {
            let e = &self.endpoints[(start + i) % self.endpoints.len()];
            if !order.contains(e) {
                order.push(e.clone());
            }
        }
        order
    }

    fn remember(&self, endpoint: &str) {
        if let Some(i) = self.endpoints.iter().position(|e| e == endpoint) {
            *self.preferred.lock().expect("lock poisoned") = i;
        }
    }

    fn forget(&self, endpoint: &str) {
        self.channels
            .lock()
            .expect("lock poisoned")
            .remove(endpoint);
    }

    async fn channel(&self, endpoint: &str) -> Result<Channel, Status> {
        if let Some(ch) = self.channels.lock().expect("lock poisoned").get(endpoint) {
            return Ok(ch.clone());
        }
        let ep = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| Status::invalid_argument(format!("invalid endpoint {endpoint}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT);
        let ch = ep
            .connect()
            .await
            .map_err(|e| connect_error(endpoint, &e))?;
        self.channels
            .lock()
            .expect("lock poisoned")
            .insert(endpoint.to_string(), ch.clone());
        Ok(ch)
    }
}

/// Marker put in the message of statuses the client makes up for failed
/// connections, so the error report can tell them from server answers.
pub const CONNECT_ERROR_PREFIX: &str = "cannot connect to ";

fn connect_error(endpoint: &str, e: &tonic::transport::Error) -> Status {
    // The transport error's Display is just "transport error"; the cause
    // (connection refused, timed out, DNS) is further down the chain.
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    let mut status = Status::unavailable(format!("{CONNECT_ERROR_PREFIX}{endpoint}: {detail}"));
    status.set_source(Arc::new(std::io::Error::other(detail)));
    status
}

fn is_retryable(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable => true,
        // A connection that breaks mid-call surfaces as UNKNOWN with the
        // transport error as its source.
        Code::Unknown => {
            let mut src = std::error::Error::source(s);
            while let Some(e) = src {
                if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
                    return true;
                }
                src = e.source();
            }
            false
        }
        _ => false,
    }
}

fn leader_hint(s: &Status) -> Option<String> {
    let v = s.metadata().get(LEADER_HINT_KEY)?.to_str().ok()?.trim();
    if v.is_empty() {
        return None;
    }
    let uri = normalize_endpoint(v);
    Endpoint::from_shared(uri.clone()).ok()?;
    Some(uri)
}

fn retry_budget_from_env() -> Duration {
    std::env::var("NUBO_RETRY_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs_f64(DEFAULT_RETRY_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_split_and_normalised() {
        let e = parse_endpoints("http://a:1, b:2,,http://a:1/").unwrap();
        assert_eq!(e, vec!["http://a:1".to_string(), "http://b:2".to_string()]);
        assert!(parse_endpoints(" , ").is_err());
    }

    #[test]
    fn only_unavailable_is_retried() {
        assert!(is_retryable(&Status::unavailable("x")));
        assert!(!is_retryable(&Status::invalid_argument("x")));
        assert!(!is_retryable(&Status::unknown("x")));
    }

    #[test]
    fn leader_hint_is_read_from_metadata() {
        let mut s = Status::unavailable("not leader");
        s.metadata_mut()
            .insert(LEADER_HINT_KEY, "10.0.0.2:7700".parse().unwrap());
        assert_eq!(leader_hint(&s).as_deref(), Some("http://10.0.0.2:7700"));
    }

    #[tokio::test]
    async fn refused_connection_is_reported_after_failover() {
        // Port 1 on loopback refuses connections.
        let c = Client::new(
            vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            None,
        )
        .unwrap()
        .with_retry_budget(Duration::from_millis(300));
        let err = c
            .call(|conn| async move {
                conn.cluster()
                    .status(nubo_proto::v1::ClusterStatusRequest {})
                    .await
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().starts_with(CONNECT_ERROR_PREFIX), "{err:?}");
    }
}
