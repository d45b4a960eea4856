//! What a [`Client`](crate::Client) needs to know, and where it usually
//! comes from: an endpoint list and the token file `nubo up` writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::Endpoint;

use crate::Error;

/// The API address of a controller started by `nubo up` with no flags.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7700";
/// How long a call keeps failing over before it gives up: long enough for
/// a Raft election or a controller restart.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(10);
/// How long one attempt of a short call (every call but uploads and
/// synchronous invokes) may take on one controller before the next one is
/// tried: a controller that accepts connections and then stays silent (a
/// paused process, a hung disk) must not hold the call for the whole
/// budget. Doubled after each round over all endpoints, so a cluster that
/// is merely slow still gets to answer.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Name of the token file inside a config directory.
pub const TOKEN_FILE: &str = "token";

/// How to reach the controllers. Plain data: callers fill it from their own
/// flags, environment or configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Controller API URIs (`http://host:port`), tried in this order at
    /// first. [`parse_endpoints`] turns user input into this form.
    pub endpoints: Vec<String>,
    /// Bearer token sent with every call; `None` sends none (the server
    /// then answers `UNAUTHENTICATED` to anything that needs one).
    pub token: Option<String>,
    /// A node credential (the trigger or worker secret) sent in the
    /// secret header, for the controllers' internal services.
    pub secret: Option<String>,
    /// How long one call keeps failing over between controllers.
    pub retry_budget: Duration,
    /// First per-attempt deadline of short calls ([`Client::call`]); also
    /// sets the HTTP/2 keep-alive that notices a silent controller under
    /// long calls ([`Client::call_long`]).
    ///
    /// [`Client::call`]: crate::Client::call
    /// [`Client::call_long`]: crate::Client::call_long
    pub attempt_timeout: Duration,
    /// Print one `warning: ...; retrying` line on stderr, if stderr is a
    /// terminal, when a call starts waiting for a controller. For
    /// interactive tools; services leave it off and read the tracing logs.
    pub warn_on_retry: bool,
}

impl Config {
    /// These endpoints, no token, the default retry budget, no warnings.
    pub fn new(endpoints: Vec<String>) -> Config {
        Config {
            endpoints,
            token: None,
            secret: None,
            retry_budget: DEFAULT_RETRY_BUDGET,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            warn_on_retry: false,
        }
    }
}

/// Splits a comma-separated endpoint list; a bare `host:port` gets
/// `http://`, a trailing `/` goes, duplicates are dropped.
pub fn parse_endpoints(s: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let uri = normalize_endpoint(item);
        Endpoint::from_shared(uri.clone()).map_err(|source| Error::InvalidEndpoint {
            endpoint: item.to_string(),
            source,
        })?;
        if !out.contains(&uri) {
            out.push(uri);
        }
    }
    if out.is_empty() {
        return Err(Error::NoEndpoint);
    }
    Ok(out)
}

pub(crate) fn normalize_endpoint(s: &str) -> String {
    if s.contains("://") {
        s.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", s.trim_end_matches('/'))
    }
}

/// `$HOME/.config/nubo`, where `nubo up` stores its admin token (`/root`
/// stands in for a missing `$HOME`).
pub fn default_config_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".config")
        .join("nubo")
}

/// The token to use: `explicit` (a flag or an environment variable) unless
/// it is blank, else the contents of `<config_dir>/token`. Surrounding
/// whitespace is trimmed. A missing file is not an error (`Ok(None)`): the
/// server's `UNAUTHENTICATED` answer is the better place to explain.
pub fn load_token(explicit: Option<&str>, config_dir: &Path) -> Result<Option<String>, Error> {
    if let Some(t) = explicit.map(str::trim) {
        if !t.is_empty() {
            return Ok(Some(t.to_string()));
        }
    }
    let path = config_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let t = s.trim();
            Ok((!t.is_empty()).then(|| t.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::TokenFile { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_split_and_normalised() {
        let e = parse_endpoints("http://a:1, b:2,,http://a:1/").unwrap();
        assert_eq!(e, vec!["http://a:1".to_string(), "http://b:2".to_string()]);
        assert!(matches!(parse_endpoints(" , "), Err(Error::NoEndpoint)));
    }

    #[test]
    fn invalid_endpoint_names_the_item() {
        let e = parse_endpoints("a:1, b c:2").unwrap_err();
        assert!(
            matches!(&e, Error::InvalidEndpoint { endpoint, .. } if endpoint == "b c:2"),
            "{e:?}"
        );
    }

    #[test]
    fn explicit_token_wins_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // No file, no flag: no token, and no error.
        assert_eq!(load_token(None, dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(TOKEN_FILE), "  from-file\n").unwrap();
        assert_eq!(
            load_token(Some(" flag "), dir.path()).unwrap().as_deref(),
            Some("flag")
        );
        // A blank flag (NUBO_TOKEN="") falls back to the file.
        assert_eq!(
            load_token(Some("  "), dir.path()).unwrap().as_deref(),
            Some("from-file")
        );
        std::fs::write(dir.path().join(TOKEN_FILE), "\n").unwrap();
        assert_eq!(load_token(None, dir.path()).unwrap(), None);
    }

    #[test]
    fn unreadable_token_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading it fails, not NotFound.
        std::fs::create_dir(dir.path().join(TOKEN_FILE)).unwrap();
        let e = load_token(None, dir.path()).unwrap_err();
        assert!(matches!(e, Error::TokenFile { .. }), "{e:?}");
        assert!(e.to_string().starts_with("reading token file "), "{e}");
    }
}
