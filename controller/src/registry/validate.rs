//! Validation of names and configuration, following AWS Lambda's rules so a
//! user coming from Lambda meets the same limits. Every check is pure and
//! returns `RegistryError::InvalidArgument` with a message that names the
//! field, gives the allowed range and says what to do.

use std::collections::BTreeMap;

use nubo_proto::Reason;

use crate::error::RegistryError;
use crate::registry::model::{ConfigPatch, FunctionConfig, LATEST};

/// Size limits for code packages and environments. Defaults are Lambda's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted zip, in bytes.
    pub max_zipped_bytes: u64,
    /// Largest total of uncompressed entry sizes, in bytes.
    pub max_unzipped_bytes: u64,
    /// Largest total of environment keys plus values, in bytes.
    pub max_env_bytes: usize,
    /// Largest uncompressed/compressed ratio of one big entry (zip-bomb guard).
    pub max_compression_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_zipped_bytes: 52_428_800,
            max_unzipped_bytes: 262_144_000,
            max_env_bytes: 4096,
            max_compression_ratio: 200,
        }
    }
}

/// Runtimes a function may use.
pub const RUNTIMES: &[&str] = &[
    "python3.9",
    "python3.10",
    "python3.11",
    "python3.12",
    "python3.13",
    "provided",
    "provided.al2",
    "provided.al2023",
];

/// Environment variables the platform sets itself; a function may not
/// override them (Lambda rejects the same keys).
pub const RESERVED_ENV_KEYS: &[&str] = &[
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_RUNTIME_API",
    "_HANDLER",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "AWS_EXECUTION_ENV",
    "_X_AMZN_TRACE_ID",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
];

/// Lambda's limits, in one place so messages and checks agree.
pub const MEMORY_MB: (u32, u32) = (128, 10_240);
pub const TIMEOUT_SECONDS: (u32, u32) = (1, 900);
pub const EPHEMERAL_STORAGE_MB: (u32, u32) = (512, 10_240);
pub const RESERVED_CONCURRENCY: (u32, u32) = (0, 1000);
pub const MAXIMUM_RETRY_ATTEMPTS: (u32, u32) = (0, 2);
pub const MAXIMUM_EVENT_AGE_SECONDS: (u32, u32) = (60, 21_600);
pub const MAX_FUNCTION_NAME: usize = 64;
pub const MAX_ALIAS_NAME: usize = 128;
pub const MAX_HANDLER: usize = 128;
pub const MAX_DESCRIPTION: usize = 256;

/// A parsed invocation qualifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qualifier {
    Latest,
    Version(u64),
    Alias(String),
}

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::invalid(msg)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Shows user input in a message without letting control characters or a
/// huge value garble it.
fn shown(s: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = s
        .chars()
        .take(MAX)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if s.chars().count() > MAX {
        out.push('…');
    }
    format!("\"{out}\"")
}

fn in_range(field: &str, v: u32, (lo, hi): (u32, u32), unit: &str) -> Result<(), RegistryError> {
    if v < lo || v > hi {
        return Err(invalid(format!(
            "{field} {v} is out of range: must be {lo}-{hi}{unit}"
        )));
    }
    Ok(())
}

/// Longest client idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// A client idempotency key: 1-256 bytes of printable ASCII.
pub fn idempotency_key(key: &str) -> Result<(), RegistryError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(invalid(format!(
            "idempotency key is {} bytes: use 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters (e.g. an order id)",
            key.len()
        )));
    }
    if let Some(c) = key.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "idempotency key {} contains {c:?}: use printable ASCII without spaces (e.g. an order id)",
            shown(key)
        )));
    }
    Ok(())
}

/// Longest ordering key of an async event.
pub const MAX_ORDERING_KEY: usize = 256;

/// An async event's ordering key (non-empty: empty means unordered): at
/// most 256 bytes, any text (a Kafka mapping/topic/partition, an order id).
pub fn ordering_key(key: &str) -> Result<(), RegistryError> {
    if key.len() > MAX_ORDERING_KEY {
        return Err(invalid(format!(
            "ordering_key is {} bytes: at most {MAX_ORDERING_KEY} (e.g. an order id)",
            key.len()
        )));
    }
    Ok(())
}

pub fn function_name(name: &str) -> Result<(), RegistryError> {
    if name.is_empty() {
        return Err(invalid(
            "function name is required: use 1-64 characters of letters, digits, '-' and '_'",
        ));
    }
    let len = name.chars().count();
    if len > MAX_FUNCTION_NAME {
        return Err(invalid(format!(
            "function name {} is {len} characters long: must be at most {MAX_FUNCTION_NAME}",
            shown(name)
        )));
    }
    if let Some(c) = name.chars().find(|c| !is_name_char(*c)) {
        return Err(invalid(format!(
            "function name {} contains {c:?}: use only letters, digits, '-' and '_' (1-64 characters)",
            shown(name)
        )));
    }
    Ok(())
}

/// Lambda's alias pattern: `(?!^[0-9]+$)([a-zA-Z0-9-_]+)`, 1-128 characters.
/// All-digit names are refused because they would read as version numbers.
pub fn alias_name(name: &str) -> Result<(), RegistryError> {
    if name.is_empty() {
        return Err(invalid(
            "alias name is required: use 1-128 characters of letters, digits, '-' and '_'",
        ));
    }
    if name == LATEST {
        return Err(invalid(
            "alias name $LATEST is reserved: choose another name, e.g. live or prod",
        ));
    }
    let len = name.chars().count();
    if len > MAX_ALIAS_NAME {
        return Err(invalid(format!(
            "alias name {} is {len} characters long: must be at most {MAX_ALIAS_NAME}",
            shown(name)
        )));
    }
    if let Some(c) = name.chars().find(|c| !is_name_char(*c)) {
        return Err(invalid(format!(
            "alias name {} contains {c:?}: use only letters, digits, '-' and '_' (1-128 characters)",
            shown(name)
        )));
    }
    if name.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid(format!(
            "alias name {name} is all digits, which reads as a version number: include at least one letter, '-' or '_'"
        )));
    }
    Ok(())
}

/// Parses the digits of a version number (no sign, no leading zero, >= 1).
fn parse_version_digits(field: &str, s: &str) -> Result<u64, RegistryError> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid(format!(
            "{field} {} is not a version number: use a published version such as 1, 2, 3",
            shown(s)
        )));
    }
    if s.starts_with('0') {
        return Err(invalid(format!(
            "{field} {s} is not a valid version number: versions start at 1 and have no leading zeros"
        )));
    }
    s.parse::<u64>().map_err(|_| {
        invalid(format!(
            "{field} {} is too large to be a version number: use a published version",
            shown(s)
        ))
    })
}

/// A version an alias (or its routing) may point to: a published number,
/// never `$LATEST` (Lambda's rule: aliases are for immutable versions).
pub fn version_number(s: &str) -> Result<u64, RegistryError> {
    if s.is_empty() {
        return Err(invalid(
            "version is required: give a published version number such as 1",
        ));
    }
    if s == LATEST {
        return Err(
            invalid("an alias must point to a published version, not $LATEST")
                .with_reason(Reason::AliasNeedsVersion),
        );
    }
    parse_version_digits("version", s)
}

/// `$LATEST` (or empty), a version number, or an alias name.
pub fn parse_qualifier(q: &str) -> Result<Qualifier, RegistryError> {
    if q.is_empty() || q == LATEST {
        return Ok(Qualifier::Latest);
    }
    if q.chars().all(|c| c.is_ascii_digit()) {
        return parse_version_digits("qualifier", q).map(Qualifier::Version);
    }
    alias_name(q).map_err(|e| {
        invalid(format!(
            "qualifier {} is neither $LATEST, a version number nor a valid alias name: {e}",
            shown(q)
        ))
    })?;
    Ok(Qualifier::Alias(q.to_string()))
}

pub fn qualifier(q: &str) -> Result<(), RegistryError> {
    parse_qualifier(q).map(|_| ())
}

pub fn is_python(runtime: &str) -> bool {
    runtime.starts_with("python3.")
}

pub fn is_provided(runtime: &str) -> bool {
    runtime == "provided" || runtime.starts_with("provided.")
}

pub fn runtime(r: &str) -> Result<(), RegistryError> {
    if RUNTIMES.contains(&r) {
        return Ok(());
    }
    Err(invalid(format!(
        "runtime {} is not supported: use one of {}",
        shown(r),
        RUNTIMES.join(", ")
    )))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c == '_' || c.is_alphabetic() => {}
        _ => return false,
    }
    chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// Splits a Python handler into its module path (with `/` separators) and
/// function name: `pkg.mod.handler` and `pkg/mod.handler` both give
/// (`pkg/mod`, `handler`). The caller has validated the handler.
pub fn python_module_path(handler: &str) -> Option<(String, String)> {
    let (module, func) = handler.rsplit_once('.')?;
    Some((module.replace('.', "/"), func.to_string()))
}

fn python_handler(handler: &str) -> Result<(), RegistryError> {
    let bad = |why: &str| {
        invalid(format!(
            "handler {} {why}: for Python use module.function, e.g. app.lambda_handler or pkg/mod.handler",
            shown(handler)
        ))
    };
    let Some((module, func)) = handler.rsplit_once('.') else {
        return Err(bad("has no '.' between module and function"));
    };
    if !is_identifier(func) {
        return Err(bad("does not end in a valid Python function name"));
    }
    if module.is_empty() {
        return Err(bad("has an empty module name"));
    }
    // Each part becomes a directory or file name and an import name, so it
    // must be an identifier (this also excludes `..` and absolute paths).
    if !module.split(['/', '.']).all(is_identifier) {
        return Err(bad(
            "has a module path that is not made of Python identifiers separated by '/' or '.'",
        ));
    }
    Ok(())
}

/// Checks a handler. For runtimes we do not know (already reported by
/// `runtime`), only the generic rules apply.
pub fn handler(runtime: &str, handler: &str) -> Result<(), RegistryError> {
    if handler.is_empty() {
        return Err(invalid("handler is required: e.g. app.lambda_handler"));
    }
    let len = handler.chars().count();
    if len > MAX_HANDLER {
        return Err(invalid(format!(
            "handler is {len} characters long: must be at most {MAX_HANDLER}"
        )));
    }
    if handler.chars().any(char::is_whitespace) {
        return Err(invalid(format!(
            "handler {} contains whitespace: remove it (e.g. app.lambda_handler)",
            shown(handler)
        )));
    }
    if is_python(runtime) {
        python_handler(handler)?;
    }
    // `provided*` runtimes run `bootstrap`, which may ignore the handler.
    Ok(())
}

pub fn memory_mb(v: u32) -> Result<(), RegistryError> {
    in_range("memory_mb", v, MEMORY_MB, " MB")
}

pub fn timeout_seconds(v: u32) -> Result<(), RegistryError> {
    in_range("timeout_seconds", v, TIMEOUT_SECONDS, " seconds")
}

pub fn ephemeral_storage_mb(v: u32) -> Result<(), RegistryError> {
    in_range("ephemeral_storage_mb", v, EPHEMERAL_STORAGE_MB, " MB")
}

pub fn reserved_concurrency(v: u32) -> Result<(), RegistryError> {
    in_range("reserved_concurrency", v, RESERVED_CONCURRENCY, "")
}

/// Sandboxes a function may keep warm.
pub const MIN_WARM: (u32, u32) = (0, 100);

pub fn min_warm(v: u32) -> Result<(), RegistryError> {
    in_range("min_warm", v, MIN_WARM, " sandboxes")
}

pub fn maximum_retry_attempts(v: u32) -> Result<(), RegistryError> {
    in_range("maximum_retry_attempts", v, MAXIMUM_RETRY_ATTEMPTS, "")
}

pub fn maximum_event_age_seconds(v: u32) -> Result<(), RegistryError> {
    in_range(
        "maximum_event_age_seconds",
        v,
        MAXIMUM_EVENT_AGE_SECONDS,
        " seconds",
    )
}

/// Empty (no dead-letter queue) or the name of a function to receive
/// failed async events.
pub fn dead_letter_target(s: &str) -> Result<(), RegistryError> {
    if s.is_empty() {
        return Ok(());
    }
    function_name(s).map_err(|e| {
        invalid(format!(
            "dead_letter_target must be empty or a function name: {e}"
        ))
    })
}

pub fn description(s: &str) -> Result<(), RegistryError> {
    let len = s.chars().count();
    if len > MAX_DESCRIPTION {
        return Err(invalid(format!(
            "description is {len} characters long: must be at most {MAX_DESCRIPTION}; shorten it"
        )));
    }
    Ok(())
}

/// Lambda's key pattern `[a-zA-Z]([a-zA-Z0-9_])+`: a letter, then at least
/// one letter, digit or underscore.
fn env_key(key: &str) -> Result<(), RegistryError> {
    // Reserved first: `_HANDLER` would otherwise get the less useful
    // pattern message.
    if RESERVED_ENV_KEYS.contains(&key) {
        return Err(invalid(format!(
            "environment key {key} is reserved: the platform sets it; choose another name"
        )));
    }
    let mut chars = key.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && key.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(invalid(format!(
            "environment key {} is not valid: it must start with a letter and have at least 2 characters of letters, digits and '_'",
            shown(key)
        )));
    }
    Ok(())
}

pub fn environment(env: &BTreeMap<String, String>, limits: &Limits) -> Result<(), RegistryError> {
    for key in env.keys() {
        env_key(key)?;
    }
    let size: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > limits.max_env_bytes {
        return Err(invalid(format!(
            "environment is {size} bytes (keys plus values): must be at most {} bytes; move large values into the code package or a config file",
            limits.max_env_bytes
        )));
    }
    Ok(())
}

/// Validates every field the patch sets. The handler is checked against the
/// runtime only when both are present; otherwise each alone (the state
/// machine re-checks the merged configuration).
pub fn config_patch(p: &ConfigPatch, limits: &Limits) -> Result<(), RegistryError> {
    if let Some(r) = &p.runtime {
        runtime(r)?;
    }
    if let Some(h) = &p.handler {
        handler(p.runtime.as_deref().unwrap_or(""), h)?;
    }
    if let Some(v) = p.memory_mb {
        memory_mb(v)?;
    }
    if let Some(v) = p.timeout_seconds {
        timeout_seconds(v)?;
    }
    if let Some(env) = &p.environment {
        environment(env, limits)?;
    }
    if let Some(d) = &p.description {
        description(d)?;
    }
    if let Some(v) = p.ephemeral_storage_mb {
        ephemeral_storage_mb(v)?;
    }
    if let Some(Some(v)) = p.reserved_concurrency {
        reserved_concurrency(v)?;
    }
    if let Some(v) = p.maximum_retry_attempts {
        maximum_retry_attempts(v)?;
    }
    if let Some(v) = p.min_warm {
        min_warm(v)?;
    }
    if let Some(v) = p.maximum_event_age_seconds {
        maximum_event_age_seconds(v)?;
    }
    if let Some(d) = &p.dead_letter_target {
        dead_letter_target(d)?;
    }
    if let Some(d) = &p.on_success_target {
        dead_letter_target(d).map_err(|e| {
            RegistryError::invalid(
                e.to_string()
                    .replace("dead_letter_target", "on_success_target"),
            )
        })?;
    }
    Ok(())
}

/// Validates a complete configuration, as on create.
pub fn full_config(c: &FunctionConfig, limits: &Limits) -> Result<(), RegistryError> {
    if c.runtime.is_empty() {
        return Err(invalid(format!(
            "runtime is required: one of {}",
            RUNTIMES.join(", ")
        )));
    }
    runtime(&c.runtime)?;
    handler(&c.runtime, &c.handler)?;
    memory_mb(c.memory_mb)?;
    timeout_seconds(c.timeout_seconds)?;
    environment(&c.environment, limits)?;
    description(&c.description)?;
    ephemeral_storage_mb(c.ephemeral_storage_mb)?;
    if let Some(v) = c.reserved_concurrency {
        reserved_concurrency(v)?;
    }
    maximum_retry_attempts(c.async_config.maximum_retry_attempts)?;
    min_warm(c.min_warm)?;
    maximum_event_age_seconds(c.async_config.maximum_event_age_seconds)?;
    dead_letter_target(&c.async_config.dead_letter_target)?;
    dead_letter_target(&c.async_config.on_success_target).map_err(|e| {
        RegistryError::invalid(
            e.to_string()
                .replace("dead_letter_target", "on_success_target"),
        )
    })?;
    Ok(())
}

/// Weighted alias routing: Lambda allows one additional version, with a
/// weight in [0, 1); the primary version gets the rest.
pub fn routing_weights(primary: &str, w: &BTreeMap<String, f64>) -> Result<(), RegistryError> {
    if w.len() > 1 {
        return Err(invalid(format!(
            "routing has {} additional versions: at most 1 is allowed; keep one version and its weight",
            w.len()
        )));
    }
    let primary_num = primary.parse::<u64>().ok();
    let mut sum = 0.0;
    for (version, &weight) in w {
        if version == LATEST {
            return Err(invalid(
                "routing version $LATEST is not allowed: route to a published version",
            )
            .with_reason(Reason::AliasNeedsVersion));
        }
        let n = parse_version_digits("routing version", version)?;
        if Some(n) == primary_num || version == primary {
            return Err(invalid(format!(
                "routing version {version} is the alias's primary version: route to a different published version, or remove the routing entry"
            )));
        }
        if !weight.is_finite() || !(0.0..1.0).contains(&weight) {
            return Err(invalid(format!(
                "routing weight {weight} for version {version} is out of range: must be at least 0.0 and below 1.0 (e.g. 0.1 for 10%)"
            )));
        }
        sum += weight;
    }
    if sum >= 1.0 {
        return Err(invalid(format!(
            "routing weights add up to {sum}: the total must be below 1.0 so the primary version keeps some traffic"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::AsyncConfig;

    fn msg(r: Result<impl std::fmt::Debug, RegistryError>) -> String {
        match r {
            Err(RegistryError::InvalidArgument(m)) => m.message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn assert_invalid(r: Result<impl std::fmt::Debug, RegistryError>, needles: &[&str]) {
        let m = msg(r);
        for n in needles {
            assert!(m.contains(n), "message {m:?} should contain {n:?}");
        }
    }

    fn valid_config() -> FunctionConfig {
        let mut c = FunctionConfig::defaults("ab".repeat(32), 10);
        c.runtime = "python3.12".into();
        c.handler = "app.lambda_handler".into();
        c
    }

    #[test]
    fn limits_defaults_are_lambdas() {
        let l = Limits::default();
        assert_eq!(l.max_zipped_bytes, 50 * 1024 * 1024);
        assert_eq!(l.max_unzipped_bytes, 250 * 1024 * 1024);
        assert_eq!(l.max_env_bytes, 4096);
        assert_eq!(l.max_compression_ratio, 200);
    }

    #[test]
    fn idempotency_keys() {
        for ok in ["order-42", "a", &"k".repeat(MAX_IDEMPOTENCY_KEY), "x/y:z"] {
            idempotency_key(ok).unwrap();
        }
        assert_invalid(idempotency_key(""), &["idempotency key is 0 bytes"]);
        assert_invalid(idempotency_key(&"k".repeat(257)), &["257 bytes", "1-256"]);
        assert_invalid(idempotency_key("a b"), &["contains ' '"]);
        ordering_key(&"k".repeat(256)).unwrap();
        ordering_key("orders/topic/3").unwrap();
        assert_invalid(
            ordering_key(&"k".repeat(257)),
            &["ordering_key", "257 bytes"],
        );
    }

    #[test]
    fn function_names() {
        for ok in ["a", "my-func_1", &"x".repeat(64), "UPPER", "0"] {
            function_name(ok).unwrap();
        }
        assert_invalid(function_name(""), &["function name is required"]);
        assert_invalid(
            function_name(&"x".repeat(65)),
            &["function name", "65 characters", "at most 64"],
        );
        assert_invalid(function_name("a.b"), &["function name", "'.'"]);
        assert_invalid(function_name("a b"), &["function name", "' '"]);
        assert_invalid(function_name("$LATEST"), &["function name", "'$'"]);
        assert_invalid(function_name("é"), &["function name"]);
    }

    #[test]
    fn alias_names() {
        for ok in ["live", "prod-1", "v_2", "1a", "-", &"a".repeat(128)] {
            alias_name(ok).unwrap();
        }
        assert_invalid(alias_name(""), &["alias name is required"]);
        assert_invalid(alias_name("123"), &["alias name 123", "all digits"]);
        assert_invalid(alias_name("$LATEST"), &["alias name $LATEST", "reserved"]);
        assert_invalid(alias_name(&"a".repeat(129)), &["alias name", "at most 128"]);
        assert_invalid(alias_name("a/b"), &["alias name", "'/'"]);
    }

    #[test]
    fn qualifiers() {
        assert_eq!(parse_qualifier("").unwrap(), Qualifier::Latest);
        assert_eq!(parse_qualifier("$LATEST").unwrap(), Qualifier::Latest);
        assert_eq!(parse_qualifier("1").unwrap(), Qualifier::Version(1));
        assert_eq!(parse_qualifier("42").unwrap(), Qualifier::Version(42));
        assert_eq!(
            parse_qualifier("live").unwrap(),
            Qualifier::Alias("live".into())
        );
        qualifier("prod").unwrap();
        assert_invalid(parse_qualifier("0"), &["qualifier 0", "start at 1"]);
        assert_invalid(parse_qualifier("01"), &["qualifier 01", "leading zeros"]);
        assert_invalid(
            parse_qualifier("99999999999999999999999"),
            &["qualifier", "too large"],
        );
        assert_invalid(parse_qualifier("$latest"), &["qualifier", "alias name"]);
        assert_invalid(qualifier("a b"), &["qualifier"]);
    }

    #[test]
    fn runtimes() {
        for r in RUNTIMES {
            runtime(r).unwrap();
        }
        assert_invalid(
            runtime("python2.7"),
            &[
                "runtime \"python2.7\" is not supported",
                "python3.13",
                "provided.al2023",
            ],
        );
        assert_invalid(runtime(""), &["runtime", "python3.9"]);
        assert!(is_python("python3.12") && !is_python("provided"));
        assert!(is_provided("provided.al2") && is_provided("provided"));
    }

    #[test]
    fn handlers() {
        for ok in [
            "app.lambda_handler",
            "pkg/mod.handler",
            "pkg.mod.handler",
            "a/b.c.h",
            "_m._f",
        ] {
            handler("python3.12", ok).unwrap();
        }
        let long_ok = format!("{}.h", "m".repeat(126));
        handler("python3.12", &long_ok).unwrap();
        assert_invalid(
            handler("python3.12", &format!("{}.h", "m".repeat(127))),
            &["handler", "129 characters", "at most 128"],
        );
        assert_invalid(handler("python3.12", ""), &["handler is required"]);
        assert_invalid(handler("python3.12", "app.h x"), &["handler", "whitespace"]);
        assert_invalid(handler("python3.12", "app"), &["handler \"app\"", "no '.'"]);
        assert_invalid(handler("python3.12", ".h"), &["empty module"]);
        assert_invalid(handler("python3.12", "app."), &["function name"]);
        assert_invalid(handler("python3.12", "app.1h"), &["function name"]);
        assert_invalid(handler("python3.12", "../x.h"), &["module path"]);
        assert_invalid(handler("python3.12", "/abs/x.h"), &["module path"]);
        assert_invalid(handler("python3.12", "a//b.h"), &["module path"]);
        assert_invalid(handler("python3.12", "my-app.h"), &["module path"]);
        // provided runtimes ignore the handler beyond the generic rules.
        handler("provided.al2023", "anything").unwrap();
        handler("provided", "bootstrap").unwrap();
        assert_invalid(handler("provided", ""), &["handler is required"]);
        assert_invalid(handler("provided", "a b"), &["whitespace"]);
    }

    #[test]
    fn module_paths() {
        assert_eq!(
            python_module_path("pkg.mod.handler"),
            Some(("pkg/mod".into(), "handler".into()))
        );
        assert_eq!(
            python_module_path("pkg/mod.handler"),
            Some(("pkg/mod".into(), "handler".into()))
        );
        assert_eq!(python_module_path("nodot"), None);
    }

    #[test]
    fn numeric_ranges() {
        type Check = fn(u32) -> Result<(), RegistryError>;
        let cases: &[(Check, &str, u32, u32)] = &[
            (memory_mb, "memory_mb", 128, 10_240),
            (timeout_seconds, "timeout_seconds", 1, 900),
            (ephemeral_storage_mb, "ephemeral_storage_mb", 512, 10_240),
            (reserved_concurrency, "reserved_concurrency", 0, 1000),
            (maximum_retry_attempts, "maximum_retry_attempts", 0, 2),
            (
                maximum_event_age_seconds,
                "maximum_event_age_seconds",
                60,
                21_600,
            ),
        ];
        for &(check, field, lo, hi) in cases {
            check(lo).unwrap();
            check(hi).unwrap();
            let range = format!("must be {lo}-{hi}");
            if lo > 0 {
                assert_invalid(
                    check(lo - 1),
                    &[&format!("{field} {} is out of range", lo - 1), &range],
                );
            }
            assert_invalid(
                check(hi + 1),
                &[&format!("{field} {} is out of range", hi + 1), &range],
            );
        }
        assert_eq!(
            msg(memory_mb(64)),
            "memory_mb 64 is out of range: must be 128-10240 MB"
        );
    }

    #[test]
    fn dead_letter_targets() {
        dead_letter_target("").unwrap();
        dead_letter_target("dlq-func").unwrap();
        assert_invalid(dead_letter_target("bad name"), &["dead_letter_target"]);
        assert_invalid(
            dead_letter_target(&"d".repeat(65)),
            &["dead_letter_target", "at most 64"],
        );
    }

    #[test]
    fn descriptions() {
        description("").unwrap();
        description(&"é".repeat(256)).unwrap();
        assert_invalid(
            description(&"d".repeat(257)),
            &["description is 257 characters", "at most 256"],
        );
    }

    #[test]
    fn environments() {
        let l = Limits::default();
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        environment(&env(&[]), &l).unwrap();
        environment(
            &env(&[("AB", "1"), ("a_b_9", ""), ("LOG_LEVEL", "debug")]),
            &l,
        )
        .unwrap();
        for bad in ["A", "1A", "_A", "A-B", "A B", ""] {
            assert_invalid(environment(&env(&[(bad, "v")]), &l), &["environment key"]);
        }
        for reserved in RESERVED_ENV_KEYS {
            assert_invalid(
                environment(&env(&[(reserved, "v")]), &l),
                &[&format!("environment key {reserved} is reserved")],
            );
        }

        // Exactly at the limit is fine; one byte more is not.
        let at = "v".repeat(4096 - 2);
        environment(&env(&[("AB", &at)]), &l).unwrap();
        let over = "v".repeat(4096 - 1);
        assert_invalid(
            environment(&env(&[("AB", &over)]), &l),
            &["environment is 4097 bytes", "at most 4096"],
        );
        let small = Limits {
            max_env_bytes: 10,
            ..Limits::default()
        };
        assert_invalid(
            environment(&env(&[("AB", "123456"), ("CD", "1")]), &small),
            &["11 bytes", "at most 10"],
        );
    }

    #[test]
    fn full_configs() {
        let l = Limits::default();
        full_config(&valid_config(), &l).unwrap();

        let mut c = valid_config();
        c.runtime.clear();
        assert_invalid(
            full_config(&c, &l),
            &["runtime is required: one of python3.9"],
        );
        let mut c = valid_config();
        c.handler.clear();
        assert_eq!(
            msg(full_config(&c, &l)),
            "handler is required: e.g. app.lambda_handler"
        );
        let mut c = valid_config();
        c.runtime = "provided.al2023".into();
        c.handler = "whatever".into();
        full_config(&c, &l).unwrap();
        let mut c = valid_config();
        c.handler = "nodot".into();
        assert_invalid(full_config(&c, &l), &["handler"]);
        let mut c = valid_config();
        c.memory_mb = 100;
        assert_invalid(full_config(&c, &l), &["memory_mb 100"]);
        let mut c = valid_config();
        c.timeout_seconds = 0;
        assert_invalid(full_config(&c, &l), &["timeout_seconds 0"]);
        let mut c = valid_config();
        c.ephemeral_storage_mb = 100;
        assert_invalid(full_config(&c, &l), &["ephemeral_storage_mb 100"]);
        let mut c = valid_config();
        c.reserved_concurrency = Some(1001);
        assert_invalid(full_config(&c, &l), &["reserved_concurrency 1001"]);
        let mut c = valid_config();
        c.description = "x".repeat(300);
        assert_invalid(full_config(&c, &l), &["description"]);
        let mut c = valid_config();
        c.environment.insert("AWS_REGION".into(), "x".into());
        assert_invalid(full_config(&c, &l), &["AWS_REGION"]);
        let mut c = valid_config();
        c.async_config = AsyncConfig {
            maximum_retry_attempts: 3,
            ..AsyncConfig::default()
        };
        assert_invalid(full_config(&c, &l), &["maximum_retry_attempts 3"]);
        let mut c = valid_config();
        c.async_config.maximum_event_age_seconds = 59;
        assert_invalid(full_config(&c, &l), &["maximum_event_age_seconds 59"]);
        let mut c = valid_config();
        c.async_config.dead_letter_target = "no/slash".into();
        assert_invalid(full_config(&c, &l), &["dead_letter_target"]);
    }

    #[test]
    fn config_patches() {
        let l = Limits::default();
        config_patch(&ConfigPatch::default(), &l).unwrap();

        // Handler alone: generic rules only (runtime unknown here).
        let p = ConfigPatch {
            handler: Some("nodot".into()),
            ..Default::default()
        };
        config_patch(&p, &l).unwrap();
        // Handler with a Python runtime: the Python form is required.
        let p = ConfigPatch {
            runtime: Some("python3.11".into()),
            handler: Some("nodot".into()),
            ..Default::default()
        };
        assert_invalid(config_patch(&p, &l), &["handler \"nodot\""]);
        let p = ConfigPatch {
            runtime: Some("provided.al2".into()),
            handler: Some("nodot".into()),
            ..Default::default()
        };
        config_patch(&p, &l).unwrap();
        let p = ConfigPatch {
            runtime: Some("ruby3.2".into()),
            ..Default::default()
        };
        assert_invalid(config_patch(&p, &l), &["runtime \"ruby3.2\""]);
        let p = ConfigPatch {
            handler: Some(String::new()),
            ..Default::default()
        };
        assert_invalid(config_patch(&p, &l), &["handler is required"]);

        // Clearing the reservation is always fine; setting it is checked.
        let p = ConfigPatch {
            reserved_concurrency: Some(None),
            ..Default::default()
        };
        config_patch(&p, &l).unwrap();
        let p = ConfigPatch {
            reserved_concurrency: Some(Some(5000)),
            ..Default::default()
        };
        assert_invalid(config_patch(&p, &l), &["reserved_concurrency 5000"]);

        let cases: Vec<(ConfigPatch, &str)> = vec![
            (
                ConfigPatch {
                    memory_mb: Some(10_241),
                    ..Default::default()
                },
                "memory_mb 10241",
            ),
            (
                ConfigPatch {
                    timeout_seconds: Some(901),
                    ..Default::default()
                },
                "timeout_seconds 901",
            ),
            (
                ConfigPatch {
                    ephemeral_storage_mb: Some(511),
                    ..Default::default()
                },
                "ephemeral_storage_mb 511",
            ),
            (
                ConfigPatch {
                    maximum_retry_attempts: Some(3),
                    ..Default::default()
                },
                "maximum_retry_attempts 3",
            ),
            (
                ConfigPatch {
                    maximum_event_age_seconds: Some(21_601),
                    ..Default::default()
                },
                "maximum_event_age_seconds 21601",
            ),
            (
                ConfigPatch {
                    dead_letter_target: Some("a b".into()),
                    ..Default::default()
                },
                "dead_letter_target",
            ),
            (
                ConfigPatch {
                    description: Some("x".repeat(257)),
                    ..Default::default()
                },
                "description",
            ),
            (
                ConfigPatch {
                    environment: Some([("1X".to_string(), String::new())].into()),
                    ..Default::default()
                },
                "environment key",
            ),
        ];
        for (p, needle) in cases {
            assert_invalid(config_patch(&p, &l), &[needle]);
        }
        let p = ConfigPatch {
            memory_mb: Some(10_240),
            timeout_seconds: Some(900),
            ephemeral_storage_mb: Some(512),
            maximum_retry_attempts: Some(0),
            maximum_event_age_seconds: Some(60),
            dead_letter_target: Some(String::new()),
            description: Some(String::new()),
            environment: Some(BTreeMap::new()),
            egress: Some(true),
            ..Default::default()
        };
        config_patch(&p, &l).unwrap();
    }

    #[test]
    fn version_numbers() {
        assert_eq!(version_number("1").unwrap(), 1);
        assert_eq!(version_number("18446744073709551615").unwrap(), u64::MAX);
        // What to type to publish one is the client's advice, by reason.
        assert_eq!(
            version_number("$LATEST").unwrap_err().reason(),
            Some(Reason::AliasNeedsVersion)
        );
        assert_eq!(
            msg(version_number("$LATEST")),
            "an alias must point to a published version, not $LATEST"
        );
        assert_invalid(version_number(""), &["version is required"]);
        assert_invalid(version_number("0"), &["version 0", "start at 1"]);
        assert_invalid(version_number("007"), &["version 007", "leading zeros"]);
        assert_invalid(
            version_number("-1"),
            &["version \"-1\"", "not a version number"],
        );
        assert_invalid(version_number("live"), &["not a version number"]);
        assert_invalid(version_number("18446744073709551616"), &["too large"]);
    }

    #[test]
    fn routing() {
        let w = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        routing_weights("1", &w(&[])).unwrap();
        routing_weights("1", &w(&[("2", 0.0)])).unwrap();
        routing_weights("1", &w(&[("2", 0.5)])).unwrap();
        routing_weights("1", &w(&[("2", 0.999_999)])).unwrap();
        assert_invalid(
            routing_weights("1", &w(&[("2", 0.1), ("3", 0.1)])),
            &["routing has 2 additional versions", "at most 1"],
        );
        assert_invalid(
            routing_weights("1", &w(&[("$LATEST", 0.1)])),
            &["routing version $LATEST", "published version"],
        );
        assert_invalid(
            routing_weights("1", &w(&[("1", 0.1)])),
            &["routing version 1 is the alias's primary version"],
        );
        assert_invalid(
            routing_weights("1", &w(&[("x", 0.1)])),
            &["routing version \"x\"", "not a version number"],
        );
        assert_invalid(
            routing_weights("1", &w(&[("0", 0.1)])),
            &["routing version 0"],
        );
        for bad in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
            assert_invalid(
                routing_weights("1", &w(&[("2", bad)])),
                &["routing weight", "for version 2", "below 1.0"],
            );
        }
    }
}
