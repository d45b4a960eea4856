//! The failover loop: one logical call, tried against the controllers in
//! turn until one answers or the retry budget is spent.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nubo_proto::headers;
use nubo_proto::v1::cluster_client::ClusterClient;
use nubo_proto::v1::functions_client::FunctionsClient;
use nubo_proto::v1::invocations_client::InvocationsClient;
use nubo_proto::v1::tokens_client::TokensClient;
use nubo_proto::v1::trigger_control_client::TriggerControlClient;
use nubo_proto::v1::triggers_client::TriggersClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::config::{normalize_endpoint, Config};
use crate::Error;

/// Largest message sent or accepted. Code packages go up in 1 MiB chunks,
/// but configurations with large environments and long listings still need
/// room above tonic's 4 MiB default.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Start of the message of the statuses the client makes up for failed
/// connections, so callers can tell them from server answers
/// ([`is_connect_error`]).
pub const CONNECT_ERROR_PREFIX: &str = "cannot connect to ";

/// Whether `s` is the client's own "could not connect" status rather than
/// an answer from a controller.
pub fn is_connect_error(s: &Status) -> bool {
    s.code() == Code::Unavailable && s.message().starts_with(CONNECT_ERROR_PREFIX)
}

/// Start of the message of the status the client makes up for an attempt
/// that got no answer within its deadline.
pub const NO_ANSWER_PREFIX: &str = "no answer from ";

/// Start of the message of a call whose connection broke while it was
/// under way (the controller died or the network failed mid-call).
pub const BROKEN_CALL_PREFIX: &str = "the connection to ";

fn is_no_answer(s: &Status) -> bool {
    s.code() == Code::Unavailable && s.message().starts_with(NO_ANSWER_PREFIX)
}

/// Whether `s` says the connection broke while the call was under way
/// (rather than a server's answer, or a failure to connect).
pub fn is_broken_call(s: &Status) -> bool {
    s.message().starts_with(BROKEN_CALL_PREFIX)
}

fn no_answer(endpoint: &str, limit: Duration) -> Status {
    Status::unavailable(format!(
        "{NO_ANSWER_PREFIX}{endpoint} within {} ms (paused, overloaded or cut off)",
        limit.as_millis()
    ))
}

/// A retryable failure that came from a call under way, not from
/// connecting and not from a controller's own UNAVAILABLE answer.
fn broke_mid_call(s: &Status) -> bool {
    !is_connect_error(s) && !is_no_answer(s) && !is_reconnect_failure(s) && is_transport_failure(s)
}

/// A channel whose connection went away reconnects on its own; when that
/// fails the call gets the transport's connect error: nothing was under way.
fn is_reconnect_failure(s: &Status) -> bool {
    let m = s.message();
    m.contains("tcp connect error") || m.contains("error trying to connect")
}

/// A status the transport made (it has the transport's error as its
/// source); a controller's answer has none.
fn is_transport_failure(s: &Status) -> bool {
    std::error::Error::source(s).is_some()
}

fn broken_call(endpoint: &str, s: &Status) -> Status {
    let mut out = Status::with_metadata(
        s.code(),
        format!(
            "{BROKEN_CALL_PREFIX}{endpoint} broke during the call: {}",
            s.message()
        ),
        s.metadata().clone(),
    );
    out.set_source(Arc::new(std::io::Error::other(s.message().to_string())));
    out
}

/// The first failure, told first, and that retrying did not help.
fn retries_failed_too(first: Status, last: &Status, budget: Duration) -> Status {
    let mut out = Status::with_metadata(
        first.code(),
        format!(
            "{}; retried for {}s, the retries failed too (last: {})",
            first.message(),
            budget.as_secs_f64().round(),
            last.message()
        ),
        first.metadata().clone(),
    );
    out.set_source(Arc::new(std::io::Error::other(first.message().to_string())));
    out
}

/// Adds `authorization: Bearer <token>` to every call, and the request id
/// of the logical call, the same on every retry, so the controllers apply a
/// retried write once.
#[derive(Clone, Debug)]
pub struct Auth {
    header: Option<MetadataValue<Ascii>>,
    secret: Option<MetadataValue<Ascii>>,
    request_id: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        if let Some(s) = &self.secret {
            req.metadata_mut()
                .insert(nubo_proto::SECRET_HEADER, s.clone());
        }
        if let Some(id) = &self.request_id {
            req.metadata_mut().insert(headers::REQUEST_ID, id.clone());
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
pub type TriggersApi = TriggersClient<InterceptedService<Channel, Auth>>;
pub type TriggerControlApi = TriggerControlClient<InterceptedService<Channel, Auth>>;

/// One connected controller, handed to each attempt of [`Client::call`].
/// Its service clients carry the token and the call's request id.
#[derive(Clone, Debug)]
pub struct Conn {
    pub channel: Channel,
    /// The URI of the controller this attempt talks to.
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

    pub fn triggers(&self) -> TriggersApi {
        TriggersClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The trigger instances' service (needs the trigger secret).
    pub fn trigger_control(&self) -> TriggerControlApi {
        TriggerControlClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }
}

/// A client of a group of controllers. Cheap to share (`Arc<Client>`):
/// calls may run concurrently; connections are made on first use and kept.
#[derive(Debug)]
pub struct Client {
    endpoints: Vec<String>,
    has_token: bool,
    auth: Auth,
    retry_budget: Duration,
    attempt_timeout: Duration,
    warn_on_retry: bool,
    channels: Mutex<HashMap<String, Channel>>,
    /// Index of the endpoint that answered last, tried first next time.
    preferred: Mutex<usize>,
}

impl Client {
    /// A client of these endpoints (URIs, see
    /// [`parse_endpoints`](crate::parse_endpoints)) with the default retry
    /// budget.
    pub fn new(endpoints: Vec<String>, token: Option<String>) -> Result<Client, Error> {
        Client::from_config(Config {
            token,
            ..Config::new(endpoints)
        })
    }

    pub fn from_config(config: Config) -> Result<Client, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::NoEndpoint);
        }
        let header = match &config.token {
            Some(t) => {
                Some(MetadataValue::try_from(format!("Bearer {t}")).map_err(Error::InvalidToken)?)
            }
            None => None,
        };
        Ok(Client {
            endpoints: config.endpoints,
            has_token: config.token.is_some(),
            auth: Auth {
                header,
                secret: match &config.secret {
                    Some(s) => {
                        Some(MetadataValue::try_from(s.as_str()).map_err(Error::InvalidToken)?)
                    }
                    None => None,
                },
                request_id: None,
            },
            retry_budget: config.retry_budget,
            attempt_timeout: config.attempt_timeout.max(Duration::from_millis(50)),
            warn_on_retry: config.warn_on_retry,
            channels: Mutex::new(HashMap::new()),
            preferred: Mutex::new(0),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Whether calls carry a bearer token.
    pub fn has_token(&self) -> bool {
        self.has_token
    }

    pub fn with_retry_budget(mut self, budget: Duration) -> Client {
        self.retry_budget = budget;
        self
    }

    /// Runs a short call `f` against a controller, failing over to the next
    /// endpoint on connection errors, UNAVAILABLE and attempts that get no
    /// answer within the attempt deadline (cycling with backoff until the
    /// retry budget is spent). Other statuses are returned at once: any
    /// controller gives the same answer, so retrying elsewhere cannot help.
    ///
    /// Every attempt of one call carries the same request id, so a write
    /// whose first attempt went unanswered (and may have applied) applies
    /// once. The attempt deadline starts at `attempt_timeout` and doubles
    /// after each round over the endpoints.
    pub async fn call<F, Fut, T>(&self, f: F) -> Result<T, Status>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_with(f, true).await
    }

    /// Like [`call`](Client::call), for calls that may legitimately take
    /// long: code uploads and synchronous invokes (up to the function's
    /// timeout). An attempt has no deadline; a controller that goes silent
    /// under it is noticed by the HTTP/2 keep-alive (no ping answer within
    /// about `attempt_timeout`) and the call fails over.
    pub async fn call_long<F, Fut, T>(&self, f: F) -> Result<T, Status>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_with(f, false).await
    }

    async fn call_with<F, Fut, T>(&self, mut f: F, bounded: bool) -> Result<T, Status>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.retry_budget;
        let mut backoff = Duration::from_millis(100);
        let auth = Auth {
            header: self.auth.header.clone(),
            secret: self.auth.secret.clone(),
            request_id: new_request_id(),
        };
        let mut leader: Option<String> = None;
        let mut warned = false;
        let mut attempt_limit = self.attempt_timeout;
        // The first failure of a call that was under way (the connection
        // broke): what the user needs to hear about, even when the retries
        // then only fail to connect.
        let mut broke: Option<Status> = None;
        loop {
            let mut last_err: Option<Status> = None;
            let mut redirected = false;
            for endpoint in self.attempt_order(leader.take()) {
                let left = deadline.saturating_duration_since(Instant::now());
                let attempt = async {
                    let channel = self.channel(&endpoint).await?;
                    f(Conn {
                        channel,
                        endpoint: endpoint.clone(),
                        auth: auth.clone(),
                    })
                    .await
                };
                let result = if bounded {
                    let limit = attempt_limit.min(left.max(Duration::from_millis(50)));
                    match tokio::time::timeout(limit, attempt).await {
                        Ok(r) => r,
                        Err(_) => Err(no_answer(&endpoint, limit)),
                    }
                } else {
                    attempt.await
                };
                match result {
                    Ok(v) => {
                        self.remember(&endpoint);
                        return Ok(v);
                    }
                    Err(status) if is_retryable(&status) => {
                        self.forget(&endpoint);
                        tracing::debug!(%endpoint, error = %status.message(), "controller unavailable");
                        if broke.is_none() && broke_mid_call(&status) {
                            broke = Some(broken_call(&endpoint, &status));
                        }
                        let hint = leader_hint(&status).filter(|l| *l != endpoint);
                        last_err = Some(status);
                        if let Some(l) = hint {
                            leader = Some(l);
                            redirected = true;
                            break;
                        }
                    }
                    // A transport failure is told as one, so callers
                    // can say what broke.
                    Err(status) if broke_mid_call(&status) => {
                        return Err(broken_call(&endpoint, &status))
                    }
                    Err(status) => return Err(status),
                }
            }
            let now = Instant::now();
            let err = last_err.unwrap_or_else(|| Status::unavailable("no endpoint answered"));
            if now >= deadline {
                return Err(match broke {
                    Some(first) if is_connect_error(&err) || is_no_answer(&err) => {
                        retries_failed_too(first, &err, self.retry_budget)
                    }
                    _ => err,
                });
            }
            if self.warn_on_retry
                && !warned
                && !redirected
                && std::io::IsTerminal::is_terminal(&std::io::stderr())
            {
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
                // A whole round without an answer: the next one gives each
                // controller longer.
                attempt_limit = (attempt_limit * 2).min(self.retry_budget);
                let p = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                p
            };
            tokio::time::sleep(pause.min(deadline - now)).await;
        }
    }

    /// The hinted leader first, then every endpoint once, starting with the
    /// one that answered last.
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
            .connect_timeout(CONNECT_TIMEOUT)
            // A controller that stops answering (SIGSTOP, a frozen VM) under
            // a long call: no ping answer within 5 attempt timeouts breaks
            // the connection, and the call fails over. Pings are answered by
            // the server's HTTP/2 layer, not its handlers, yet a loaded host
            // can be slow to: one attempt timeout would break healthy long
            // calls (a broken sync invoke is retried and may run twice).
            .http2_keep_alive_interval(self.attempt_timeout)
            .keep_alive_timeout(self.attempt_timeout * 5)
            .keep_alive_while_idle(false);
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

/// The leader's URI a follower put in the status, if it is a usable one.
fn leader_hint(s: &Status) -> Option<String> {
    let v = s.metadata().get(headers::LEADER)?.to_str().ok()?.trim();
    if v.is_empty() {
        return None;
    }
    let uri = normalize_endpoint(v);
    Endpoint::from_shared(uri.clone()).ok()?;
    Some(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(endpoints: &[&str]) -> Client {
        Client::new(endpoints.iter().map(|e| e.to_string()).collect(), None).unwrap()
    }

    /// Channels that never connect until used, so `call` reaches `f`
    /// without a server; `f` decides what each controller "answers".
    fn with_lazy_channels(c: &Client) {
        let mut chans = c.channels.lock().unwrap();
        for e in &c.endpoints {
            let ch = Endpoint::from_shared(e.clone()).unwrap().connect_lazy();
            chans.insert(e.clone(), ch);
        }
    }

    fn unavailable_with_leader(leader: &str) -> Status {
        let mut s = Status::unavailable("not leader");
        s.metadata_mut()
            .insert(headers::LEADER, leader.parse().unwrap());
        s
    }

    #[test]
    fn only_unavailable_is_retried() {
        assert!(is_retryable(&Status::unavailable("x")));
        assert!(!is_retryable(&Status::invalid_argument("x")));
        assert!(!is_retryable(&Status::unknown("x")));
        let mut broken = Status::unknown("connection reset");
        broken.set_source(Arc::new(std::io::Error::other("reset")));
        assert!(is_retryable(&broken));
    }

    #[test]
    fn leader_hint_is_read_from_metadata() {
        let s = unavailable_with_leader("10.0.0.2:7700");
        assert_eq!(leader_hint(&s).as_deref(), Some("http://10.0.0.2:7700"));
        let s = unavailable_with_leader("http://10.0.0.3:7700/");
        assert_eq!(leader_hint(&s).as_deref(), Some("http://10.0.0.3:7700"));
    }

    #[test]
    fn blank_or_bad_leader_hint_is_ignored() {
        assert_eq!(leader_hint(&Status::unavailable("no leader")), None);
        assert_eq!(leader_hint(&unavailable_with_leader("  ")), None);
        assert_eq!(leader_hint(&unavailable_with_leader("a b:1")), None);
    }

    #[test]
    fn token_must_fit_a_header() {
        let e = Client::new(vec!["http://a:1".into()], Some("bad\ntoken".into())).unwrap_err();
        assert!(matches!(e, Error::InvalidToken(_)), "{e:?}");
        assert!(matches!(Client::new(vec![], None), Err(Error::NoEndpoint)));
        assert!(client(&["http://a:1"]).auth.header.is_none());
        let c = Client::new(vec!["http://a:1".into()], Some("t0k".into())).unwrap();
        assert!(c.has_token());
        assert_eq!(c.auth.header.as_ref().unwrap(), "Bearer t0k");
    }

    #[test]
    fn failover_order_starts_at_the_last_answer() {
        let c = client(&["http://a:1", "http://b:1", "http://c:1"]);
        assert_eq!(
            c.attempt_order(None),
            ["http://a:1", "http://b:1", "http://c:1"]
        );
        c.remember("http://b:1");
        assert_eq!(
            c.attempt_order(None),
            ["http://b:1", "http://c:1", "http://a:1"]
        );
        // A hinted leader goes first, and is not tried twice.
        assert_eq!(
            c.attempt_order(Some("http://a:1".into())),
            ["http://a:1", "http://b:1", "http://c:1"]
        );
        // A leader outside the list is tried too.
        assert_eq!(
            c.attempt_order(Some("http://d:1".into())),
            ["http://d:1", "http://b:1", "http://c:1", "http://a:1"]
        );
    }

    /// Attempts of one call go down the list and keep one request id; the
    /// controller that answered is tried first by the next call, which has
    /// a new id.
    #[tokio::test]
    async fn failover_keeps_the_request_id() {
        let c = client(&["http://a:1", "http://b:1", "http://c:1"]);
        with_lazy_channels(&c);
        let seen = Mutex::new(Vec::new());
        let got = c
            .call(|conn| {
                let id = conn.auth.request_id.clone().unwrap();
                seen.lock().unwrap().push((conn.endpoint.clone(), id));
                async move {
                    if conn.endpoint == "http://b:1" {
                        Ok("answer")
                    } else {
                        Err(Status::unavailable("down"))
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(got, "answer");
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        let endpoints: Vec<&str> = seen.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(endpoints, ["http://a:1", "http://b:1"]);
        assert_eq!(seen[0].1, seen[1].1, "the id changed between attempts");

        let mut second = None;
        c.call(|conn| {
            second = Some((conn.endpoint.clone(), conn.auth.request_id.clone().unwrap()));
            async { Ok(()) }
        })
        .await
        .unwrap();
        let (endpoint, id) = second.unwrap();
        assert_eq!(endpoint, "http://b:1");
        assert_ne!(id, seen[0].1, "two calls shared a request id");
    }

    /// A follower's leader hint is followed at once, before the rest of
    /// the list.
    #[tokio::test]
    async fn leader_hint_is_followed() {
        let c = client(&["http://a:1", "http://b:1", "http://c:1"]);
        with_lazy_channels(&c);
        let mut tried = Vec::new();
        c.call(|conn| {
            tried.push(conn.endpoint.clone());
            async move {
                match conn.endpoint.as_str() {
                    "http://a:1" => Err(unavailable_with_leader("c:1")),
                    "http://c:1" => Ok(()),
                    _ => Err(Status::unavailable("follower")),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(tried, ["http://a:1", "http://c:1"]);
    }

    /// A controller that takes the call and stays silent (paused) is left
    /// after the attempt deadline for the next one, with the same request
    /// id; a long call has no such deadline.
    #[tokio::test]
    async fn a_silent_controller_is_left_after_the_attempt_deadline() {
        let c = Client::from_config(Config {
            attempt_timeout: Duration::from_millis(200),
            ..Config::new(vec!["http://a:1".into(), "http://b:1".into()])
        })
        .unwrap();
        with_lazy_channels(&c);
        let seen = Mutex::new(Vec::new());
        let start = Instant::now();
        c.call(|conn| {
            seen.lock()
                .unwrap()
                .push((conn.endpoint.clone(), conn.auth.request_id.clone().unwrap()));
            async move {
                if conn.endpoint == "http://a:1" {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        })
        .await
        .unwrap();
        let took = start.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}");
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, "http://a:1");
        assert_eq!(seen[1].0, "http://b:1");
        assert_eq!(seen[0].1, seen[1].1, "the id changed between attempts");

        // A long call waits for its answer.
        let slow = c
            .call_long(|_| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok("late")
            })
            .await
            .unwrap();
        assert_eq!(slow, "late");
    }

    /// A listener on 127.0.0.1 that accepts connections, holds them and
    /// never says a word (a SIGSTOPped controller: the kernel still
    /// completes the TCP handshake). Abort the task to close them.
    async fn silent_listener() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                conns.push(s);
            }
        });
        (addr, held)
    }

    /// A real listener that accepts connections and never says a word
    /// (a SIGSTOPped controller, as the kernel still completes the TCP
    /// handshake): the call gives up on it and says so.
    #[tokio::test]
    async fn all_silent_is_reported_as_no_answer() {
        let (addr, held) = silent_listener().await;
        let c = Client::from_config(Config {
            attempt_timeout: Duration::from_millis(100),
            retry_budget: Duration::from_millis(600),
            ..Config::new(vec![format!("http://{addr}")])
        })
        .unwrap();
        let start = Instant::now();
        let err = c
            .call(|conn| async move {
                conn.cluster()
                    .status(nubo_proto::v1::ClusterStatusRequest {})
                    .await
            })
            .await
            .unwrap_err();
        held.abort();
        assert!(start.elapsed() < Duration::from_secs(3));
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().starts_with(NO_ANSWER_PREFIX), "{err:?}");
    }

    /// A long call has no attempt deadline, yet a controller that takes
    /// the connection and never answers does not hold it forever: the
    /// HTTP/2 keep-alive (pings every `attempt_timeout`) gives up on it.
    #[tokio::test]
    async fn a_long_call_leaves_a_silent_controller() {
        let (addr, held) = silent_listener().await;
        let c = Client::from_config(Config {
            attempt_timeout: Duration::from_millis(200),
            retry_budget: Duration::from_millis(500),
            ..Config::new(vec![format!("http://{addr}")])
        })
        .unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            c.call_long(|conn| async move {
                conn.cluster()
                    .status(nubo_proto::v1::ClusterStatusRequest {})
                    .await
            }),
        )
        .await;
        held.abort();
        let err = r
            .expect("the long call gave up on the silent controller")
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }

    /// A call whose connection breaks under way (the controller was
    /// killed mid-upload) and whose retries then cannot connect reports
    /// the break first, and that the retries failed too.
    #[tokio::test]
    async fn a_broken_call_is_reported_before_the_failed_retries() {
        // Port 1 on loopback refuses connections: the retries fail.
        let c = Client::new(vec!["http://127.0.0.1:1".into()], None)
            .unwrap()
            .with_retry_budget(Duration::from_millis(300));
        with_lazy_channels(&c);
        let mut first = true;
        let err = c
            .call_long(|_| {
                let broke = std::mem::take(&mut first);
                async move {
                    assert!(broke, "later attempts fail to connect, before the call");
                    let mut s = Status::unknown("h2 protocol error: stream reset");
                    s.set_source(Arc::new(std::io::Error::other("connection reset")));
                    Err::<(), _>(s)
                }
            })
            .await
            .unwrap_err();
        let m = err.message();
        assert!(is_broken_call(&err), "{err:?}");
        assert!(m.contains("stream reset"), "{m}");
        assert!(m.contains("the retries failed too"), "{m}");
        assert!(m.contains(CONNECT_ERROR_PREFIX), "{m}");
    }

    /// A status other than UNAVAILABLE is the answer: no other controller
    /// is asked.
    #[tokio::test]
    async fn other_statuses_are_not_retried() {
        let c = client(&["http://a:1", "http://b:1"]);
        with_lazy_channels(&c);
        let mut attempts = 0;
        let err = c
            .call(|_| {
                attempts += 1;
                async { Err::<(), _>(Status::not_found("no such function")) }
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(attempts, 1);
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
        assert!(is_connect_error(&err));
    }
}
