//! The registry state machine: a pure apply over plain data.
//!
//! `Registry::apply` takes a command and the log index it was committed at
//! and returns the result. Nothing here touches disk, clocks or randomness, so every replica
//! that applies the same log ends in the same state.

use nubo_proto::Reason;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::RegistryError;
use crate::registry::model::{
    Alias, ApplyResult, Command, ConfigView, Function, FunctionConfig, Outcome, Token, Version,
    LATEST,
};
use crate::registry::validate::{parse_qualifier, Qualifier};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub functions: BTreeMap<String, Function>,
    /// Tokens by id.
    pub tokens: BTreeMap<String, Token>,
    /// Code packages referenced by some configuration: sha256 -> size.
    /// The bytes live in each controller's blob store, outside the log.
    pub blobs: BTreeMap<String, u64>,
    /// How many configurations ($LATEST or versions) reference each blob.
    pub blob_refs: BTreeMap<String, u64>,
    /// Results of the most recent idempotent requests, by request id.
    #[serde(default)]
    pub recent: BTreeMap<String, ApplyResult>,
    /// Their ids, oldest first, to bound `recent`.
    #[serde(default)]
    pub recent_order: std::collections::VecDeque<String>,
    /// Asynchronous invocations waiting, and dead letters.
    #[serde(default)]
    pub queues: crate::registry::asyncq::Queues,
    /// Event source mappings (triggers) and their reported status.
    #[serde(default)]
    pub mappings: crate::registry::mappings::Mappings,
}

/// How many request ids the registry remembers. A retry arrives within
/// seconds (the CLI gives up after 10 s); this many writes take longer than
/// that at the throughput measured in BENCHMARKS.md.
pub const RECENT_REQUESTS: usize = 20_000;

fn revision(index: u64) -> String {
    format!("{index:016x}")
}

fn missing_function(name: &str) -> RegistryError {
    RegistryError::not_found(format!("function {name} not found"))
        .with_reason(Reason::FunctionNotFound)
}

impl Registry {
    /// Applies one committed command. `index` is its Raft log index, used
    /// for revision ids so they are the same on every replica.
    pub fn apply(&mut self, index: u64, cmd: Command) -> ApplyResult {
        match cmd {
            Command::Noop => Ok(Outcome::Done),
            Command::PutMapping {
                mut mapping,
                create,
                expected_revision,
            } => {
                crate::registry::mappings::validate(&mapping)?;
                // The target must resolve now (a version or alias that
                // exists), and so must an on-failure function.
                self.get(&mapping.function, &mapping.qualifier)?;
                if let crate::registry::mappings::OnFailure::Function(f) = &mapping.on_failure {
                    self.function(f).map_err(|_| {
                        RegistryError::not_found(format!(
                            "on-failure destination function {f} not found"
                        ))
                        .with_reason(Reason::DestinationNotFound)
                    })?;
                }
                match (create, self.mappings.by_id.get(&mapping.id)) {
                    (true, Some(_)) => {
                        return Err(RegistryError::exists(format!(
                            "trigger {} already exists",
                            mapping.id
                        )))
                    }
                    (false, None) => return Err(crate::registry::mappings::not_found(&mapping.id)),
                    (false, Some(old)) => {
                        check_revision(&old.revision, expected_revision.as_deref(), "trigger")?;
                        mapping.created_ms = old.created_ms;
                    }
                    (true, None) => {}
                }
                mapping.revision = revision(index);
                self.mappings
                    .by_id
                    .insert(mapping.id.clone(), mapping.clone());
                Ok(Outcome::Mapping(Box::new(mapping)))
            }
            Command::DeleteMapping { id } => {
                self.mappings
                    .by_id
                    .remove(&id)
                    .ok_or_else(|| crate::registry::mappings::not_found(&id))?;
                self.mappings.status.remove(&id);
                Ok(Outcome::Done)
            }
            Command::ReportMappings { reports } => {
                self.mappings.report(reports);
                Ok(Outcome::Done)
            }
            Command::EnqueueEvent(ev) => {
                // Checked again here: the function may have gone between
                // the API's validation and the commit.
                self.function(&ev.function)?;
                Ok(Outcome::Count(self.queues.enqueue(ev) as u64))
            }
            Command::EnqueueKeyed {
                event,
                key,
                expires_ms,
            } => {
                self.function(&event.function)?;
                let (request_id, fresh) = self.queues.enqueue_keyed(event, &key, expires_ms);
                Ok(Outcome::Keyed {
                    request_id,
                    duplicate: !fresh,
                })
            }
            Command::EventStep { request_id, step } => Ok(Outcome::Count(
                self.queues.apply_step(&request_id, step) as u64,
            )),
            Command::DlqRedrive {
                function,
                ids,
                now_ms,
            } => self
                .queues
                .redrive(&function, ids.as_deref(), now_ms)
                .map(|n| Outcome::Count(n as u64))
                .map_err(|m| RegistryError::not_found(m).with_reason(Reason::DeadLetterNotFound)),
            Command::DlqPurge { function } => {
                Ok(Outcome::Count(self.queues.purge(&function) as u64))
            }
            Command::DeadLetter(d) => {
                self.function(&d.function)?;
                self.queues.dead_letter(d);
                Ok(Outcome::Done)
            }
            Command::Batch(cmds) => Ok(Outcome::Batch(
                cmds.into_iter().map(|c| self.apply(index, c)).collect(),
            )),
            Command::Idempotent { id, cmd } => {
                if let Some(first) = self.recent.get(&id) {
                    return first.clone();
                }
                // Only successes are remembered: a failed command changed
                // nothing, so running its retry afresh is indistinguishable
                // from the first attempt never having happened, and
                // rejected input leaves the state exactly as it was.
                let out = self.apply(index, *cmd)?;
                self.recent.insert(id.clone(), Ok(out.clone()));
                self.recent_order.push_back(id);
                while self.recent_order.len() > RECENT_REQUESTS {
                    if let Some(old) = self.recent_order.pop_front() {
                        self.recent.remove(&old);
                    }
                }
                Ok(out)
            }
            Command::CreateFunction {
                name,
                config,
                code_stored,
                publish,
                now_ms,
            } => {
                if self.functions.contains_key(&name) {
                    return Err(
                        RegistryError::exists(format!("function {name} already exists"))
                            .with_reason(Reason::FunctionExists),
                    );
                }
                let a = &config.async_config;
                self.check_destinations(
                    &name,
                    Some(a.dead_letter_target.as_str()),
                    Some(a.on_success_target.as_str()),
                )?;
                self.ensure_blob(&config.code_sha256, config.code_size, code_stored)?;
                self.add_ref(&config.code_sha256);
                let mut f = Function {
                    name: name.clone(),
                    latest: config,
                    latest_revision: revision(index),
                    last_modified_ms: now_ms,
                    created_ms: now_ms,
                    versions: BTreeMap::new(),
                    next_version: 1,
                    aliases: BTreeMap::new(),
                };
                let view = if publish {
                    let v = publish_new(&mut f, String::new(), now_ms);
                    self.add_ref(&f.latest.code_sha256);
                    v
                } else {
                    latest_view(&f)
                };
                self.functions.insert(name, f);
                Ok(Outcome::Config(view))
            }
            Command::UpdateFunctionCode {
                name,
                code_sha256,
                code_size,
                code_stored,
                expected_revision,
                publish,
                now_ms,
            } => {
                let f = self
                    .functions
                    .get(&name)
                    .ok_or_else(|| missing_function(&name))?;
                check_revision(&f.latest_revision, expected_revision.as_deref(), "$LATEST")?;
                self.ensure_blob(&code_sha256, code_size, code_stored)?;
                self.add_ref(&code_sha256);
                let f = self.functions.get_mut(&name).expect("checked above");
                let old = std::mem::replace(&mut f.latest.code_sha256, code_sha256);
                f.latest.code_size = code_size;
                f.latest_revision = revision(index);
                f.last_modified_ms = now_ms;
                let view = if publish {
                    self.publish(&name, String::new(), now_ms)?
                } else {
                    latest_view(self.functions.get(&name).expect("exists"))
                };
                self.drop_ref(&old);
                Ok(Outcome::Config(view))
            }
            Command::UpdateFunctionConfiguration {
                name,
                patch,
                expected_revision,
                now_ms,
            } => {
                let f = self
                    .functions
                    .get(&name)
                    .ok_or_else(|| missing_function(&name))?;
                check_revision(&f.latest_revision, expected_revision.as_deref(), "$LATEST")?;
                self.check_destinations(
                    &name,
                    patch.dead_letter_target.as_deref(),
                    patch.on_success_target.as_deref(),
                )?;
                let f = self.functions.get_mut(&name).expect("checked above");
                f.latest = patch.apply_to(&f.latest);
                f.latest_revision = revision(index);
                f.last_modified_ms = now_ms;
                Ok(Outcome::Config(latest_view(f)))
            }
            Command::DeleteFunction { name } => {
                let f = self
                    .functions
                    .remove(&name)
                    .ok_or_else(|| missing_function(&name))?;
                self.drop_ref(&f.latest.code_sha256);
                for v in f.versions.values() {
                    self.drop_ref(&v.config.code_sha256);
                }
                // Its triggers go with it (as on Lambda, no consumer keeps
                // reading for a function that is gone): how many is the
                // result.
                let gone = self.mappings.remove_function(&name);
                Ok(Outcome::Count(gone.len() as u64))
            }
            Command::DeleteVersion { name, version } => {
                let f = self
                    .functions
                    .get_mut(&name)
                    .ok_or_else(|| missing_function(&name))?;
                if !f.versions.contains_key(&version) {
                    return Err(RegistryError::not_found(format!(
                        "version {version} of function {name} not found"
                    ))
                    .with_reason(Reason::VersionNotFound));
                }
                let vs = version.to_string();
                if let Some(a) = f
                    .aliases
                    .values()
                    .find(|a| a.function_version == vs || a.routing.contains_key(&vs))
                {
                    return Err(RegistryError::precondition(format!(
                        "version {version} of function {name} is used by alias {}",
                        a.name
                    ))
                    .with_reason(Reason::VersionInUse));
                }
                let v = f.versions.remove(&version).expect("checked above");
                self.drop_ref(&v.config.code_sha256);
                Ok(Outcome::Done)
            }
            Command::PublishVersion {
                name,
                description,
                expected_code_sha256,
                expected_revision,
                now_ms,
            } => {
                let f = self
                    .functions
                    .get(&name)
                    .ok_or_else(|| missing_function(&name))?;
                check_revision(&f.latest_revision, expected_revision.as_deref(), "$LATEST")?;
                if let Some(sha) = expected_code_sha256 {
                    if sha != f.latest.code_sha256 {
                        return Err(RegistryError::precondition(format!(
                            "$LATEST code of {name} has sha256 {}, not the expected {sha}: it changed since you read it",
                            f.latest.code_sha256
                        )));
                    }
                }
                Ok(Outcome::Config(self.publish(&name, description, now_ms)?))
            }
            Command::CreateAlias {
                function,
                alias,
                function_version,
                routing,
                description,
            } => {
                let f = self
                    .functions
                    .get_mut(&function)
                    .ok_or_else(|| missing_function(&function))?;
                if f.aliases.contains_key(&alias) {
                    return Err(RegistryError::exists(format!(
                        "alias {alias} of function {function} already exists"
                    ))
                    .with_reason(Reason::AliasExists));
                }
                check_versions_exist(f, &function_version, &routing)?;
                let a = Alias {
                    name: alias.clone(),
                    function_version,
                    routing,
                    description,
                    revision_id: revision(index),
                };
                f.aliases.insert(alias, a.clone());
                Ok(Outcome::Alias(a))
            }
            Command::UpdateAlias {
                function,
                alias,
                function_version,
                routing,
                description,
                expected_revision,
            } => {
                let f = self
                    .functions
                    .get_mut(&function)
                    .ok_or_else(|| missing_function(&function))?;
                let current = f.aliases.get(&alias).ok_or_else(|| {
                    RegistryError::not_found(format!(
                        "alias {alias} of function {function} not found"
                    ))
                    .with_reason(Reason::AliasNotFound)
                })?;
                check_revision(
                    &current.revision_id,
                    expected_revision.as_deref(),
                    &format!("alias {alias}"),
                )?;
                let mut next = current.clone();
                if let Some(v) = function_version {
                    next.function_version = v;
                }
                if let Some(r) = routing {
                    next.routing = r;
                }
                if let Some(d) = description {
                    next.description = d;
                }
                if next.routing.contains_key(&next.function_version) {
                    return Err(RegistryError::invalid(format!(
                        "routing config of alias {alias} names its primary version {}: an additional version must differ from the primary",
                        next.function_version
                    )));
                }
                check_versions_exist(f, &next.function_version, &next.routing)?;
                next.revision_id = revision(index);
                f.aliases.insert(alias, next.clone());
                Ok(Outcome::Alias(next))
            }
            Command::DeleteAlias { function, alias } => {
                let f = self
                    .functions
                    .get_mut(&function)
                    .ok_or_else(|| missing_function(&function))?;
                f.aliases.remove(&alias).ok_or_else(|| {
                    RegistryError::not_found(format!(
                        "alias {alias} of function {function} not found"
                    ))
                    .with_reason(Reason::AliasNotFound)
                })?;
                Ok(Outcome::Done)
            }
            Command::CreateToken { token } => {
                if self.tokens.contains_key(&token.id)
                    || self.tokens.values().any(|t| t.hash == token.hash)
                {
                    return Err(RegistryError::exists(format!(
                        "token {} already exists",
                        token.id
                    )));
                }
                let id = token.id.clone();
                self.tokens.insert(token.id.clone(), token);
                Ok(Outcome::Token(id))
            }
            Command::RevokeToken { id } => {
                self.tokens.remove(&id).ok_or_else(|| {
                    RegistryError::not_found(format!("token {id} not found"))
                        .with_reason(Reason::TokenNotFound)
                })?;
                Ok(Outcome::Done)
            }
        }
    }

    /// Destinations being set on function `name` must name another
    /// function that exists. A function that is its own destination feeds
    /// every failure (or success) back to itself, each record embedding
    /// the last; longer cycles (A -> B -> A) are stopped at run time by
    /// the destination depth (`asyncq::MAX_DESTINATION_DEPTH`). A target
    /// deleted later is allowed, as on Lambda: its records are then
    /// dropped (logged and counted as `destination_failed`).
    fn check_destinations(
        &self,
        name: &str,
        on_failure: Option<&str>,
        on_success: Option<&str>,
    ) -> Result<(), RegistryError> {
        let fields = [
            ("dead_letter_target (on-failure destination)", on_failure),
            ("on_success_target (on-success destination)", on_success),
        ];
        for (field, target) in fields {
            let Some(target) = target.filter(|t| !t.is_empty()) else {
                continue;
            };
            if target == name {
                return Err(RegistryError::invalid(format!(
                    "{field} names function {name} itself: its records would invoke it again, each one embedding the last; name another function"
                )));
            }
            if !self.functions.contains_key(target) {
                return Err(RegistryError::not_found(format!(
                    "{field} names function {target}, which does not exist"
                ))
                .with_reason(Reason::DestinationNotFound));
            }
        }
        Ok(())
    }

    /// Makes sure the blob may be referenced: it already is, or the
    /// command says it was just stored on a majority.
    fn ensure_blob(&mut self, sha256: &str, size: u64, stored: bool) -> Result<(), RegistryError> {
        if self.blobs.contains_key(sha256) {
            return Ok(());
        }
        if stored {
            self.blobs.insert(sha256.to_string(), size);
            return Ok(());
        }
        // The API skipped the upload because the blob was referenced when
        // it looked, and the last reference went since. The API retries
        // with an upload.
        Err(
            RegistryError::precondition(format!("code package {sha256} is not stored"))
                .with_reason(Reason::CodeNotStored),
        )
    }

    fn add_ref(&mut self, sha256: &str) {
        *self.blob_refs.entry(sha256.to_string()).or_insert(0) += 1;
    }

    /// Drops one reference. An unreferenced blob leaves the registry; each
    /// controller's blob store deletes its bytes after a grace period
    /// (see `raft::blobs`, `blob_maintenance`), so a concurrent upload of the same
    /// package is never deleted under it.
    fn drop_ref(&mut self, sha256: &str) {
        let gone = match self.blob_refs.get_mut(sha256) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => true,
        };
        if gone {
            self.blob_refs.remove(sha256);
            self.blobs.remove(sha256);
        }
    }

    /// Publishes `$LATEST` unless it equals the newest version, in which case
    /// that version is returned (Lambda's rule).
    fn publish(
        &mut self,
        name: &str,
        description: String,
        now_ms: u64,
    ) -> Result<ConfigView, RegistryError> {
        let f = self
            .functions
            .get_mut(name)
            .ok_or_else(|| missing_function(name))?;
        if let Some((_, last)) = f.versions.iter().next_back() {
            if last.config.same_for_publish(&f.latest) {
                return Ok(version_view(name, last));
            }
        }
        let view = publish_new(f, description, now_ms);
        let sha = f.latest.code_sha256.clone();
        self.add_ref(&sha);
        Ok(view)
    }

    // ---- reads ----

    pub fn function(&self, name: &str) -> Result<&Function, RegistryError> {
        self.functions
            .get(name)
            .ok_or_else(|| missing_function(name))
    }

    /// Resolves `name` + qualifier to a configuration (and the alias, when
    /// the qualifier named one).
    pub fn get(
        &self,
        name: &str,
        qualifier: &str,
    ) -> Result<(ConfigView, Option<Alias>), RegistryError> {
        let f = self.function(name)?;
        match parse_qualifier(qualifier)? {
            Qualifier::Latest => Ok((latest_view(f), None)),
            Qualifier::Version(n) => {
                let v = f.versions.get(&n).ok_or_else(|| {
                    RegistryError::not_found(format!("version {n} of function {name} not found"))
                        .with_reason(Reason::VersionNotFound)
                })?;
                Ok((version_view(name, v), None))
            }
            Qualifier::Alias(a) => {
                let alias = f.aliases.get(&a).ok_or_else(|| {
                    RegistryError::not_found(format!("alias {a} of function {name} not found"))
                        .with_reason(Reason::AliasNotFound)
                })?;
                let n: u64 = alias.function_version.parse().map_err(|_| {
                    RegistryError::precondition(format!(
                        "alias {a} points at an invalid version {}",
                        alias.function_version
                    ))
                })?;
                let v = f.versions.get(&n).ok_or_else(|| {
                    RegistryError::precondition(format!(
                        "alias {a} points at version {n}, which no longer exists"
                    ))
                })?;
                Ok((version_view(name, v), Some(alias.clone())))
            }
        }
    }

    /// Functions in name order after `marker`, at most `max` of them, and
    /// the marker of the next page.
    pub fn list_functions(&self, marker: &str, max: usize) -> (Vec<ConfigView>, String) {
        use std::ops::Bound;
        let start = if marker.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(marker.to_string())
        };
        let mut out = Vec::new();
        let mut next = String::new();
        for (name, f) in self.functions.range((start, Bound::Unbounded)) {
            if out.len() == max {
                next = out
                    .last()
                    .map(|v: &ConfigView| v.function_name.clone())
                    .unwrap_or_default();
                break;
            }
            let _ = name;
            out.push(latest_view(f));
        }
        (out, next)
    }

    /// `$LATEST` then every version, in order.
    pub fn list_versions(&self, name: &str) -> Result<Vec<ConfigView>, RegistryError> {
        let f = self.function(name)?;
        let mut out = vec![latest_view(f)];
        out.extend(f.versions.values().map(|v| version_view(name, v)));
        Ok(out)
    }

    pub fn list_aliases(&self, name: &str, version: &str) -> Result<Vec<Alias>, RegistryError> {
        let f = self.function(name)?;
        Ok(f.aliases
            .values()
            .filter(|a| {
                version.is_empty()
                    || a.function_version == version
                    || a.routing.contains_key(version)
            })
            .cloned()
            .collect())
    }

    pub fn alias(&self, name: &str, alias: &str) -> Result<Alias, RegistryError> {
        let f = self.function(name)?;
        f.aliases.get(alias).cloned().ok_or_else(|| {
            RegistryError::not_found(format!("alias {alias} of function {name} not found"))
                .with_reason(Reason::AliasNotFound)
        })
    }

    /// Versions to keep warm: `$LATEST` and every version an alias routes
    /// to, when their configuration asks for `min_warm` sandboxes.
    pub fn min_warm_targets(&self) -> Vec<ConfigView> {
        let mut out = Vec::new();
        for f in self.functions.values() {
            if f.latest.min_warm > 0 && !f.latest.code_sha256.is_empty() {
                out.push(latest_view(f));
            }
            let mut seen = std::collections::BTreeSet::new();
            for a in f.aliases.values() {
                let versions = std::iter::once(&a.function_version).chain(a.routing.keys());
                for v in versions {
                    let Ok(n) = v.parse::<u64>() else { continue };
                    if !seen.insert(n) {
                        continue;
                    }
                    if let Some(ver) = f.versions.get(&n) {
                        if ver.config.min_warm > 0 {
                            out.push(version_view(&f.name, ver));
                        }
                    }
                }
            }
        }
        out
    }

    pub fn token_by_hash(&self, hash: &str) -> Option<&Token> {
        self.tokens.values().find(|t| t.hash == hash)
    }

    pub fn has_blob(&self, sha256: &str) -> bool {
        self.blobs.contains_key(sha256)
    }
}

fn publish_new(f: &mut Function, description: String, now_ms: u64) -> ConfigView {
    let number = f.next_version;
    f.next_version += 1;
    let v = Version {
        number,
        config: f.latest.clone(),
        revision_id: f.latest_revision.clone(),
        version_description: description,
        published_at_ms: now_ms,
    };
    let view = version_view(&f.name, &v);
    f.versions.insert(number, v);
    view
}

fn latest_view(f: &Function) -> ConfigView {
    ConfigView {
        function_name: f.name.clone(),
        version: LATEST.to_string(),
        config: f.latest.clone(),
        revision_id: f.latest_revision.clone(),
        last_modified_ms: f.last_modified_ms,
    }
}

fn version_view(name: &str, v: &Version) -> ConfigView {
    let mut config: FunctionConfig = v.config.clone();
    if !v.version_description.is_empty() {
        config.description = v.version_description.clone();
    }
    ConfigView {
        function_name: name.to_string(),
        version: v.number.to_string(),
        config,
        revision_id: v.revision_id.clone(),
        last_modified_ms: v.published_at_ms,
    }
}

fn check_revision(current: &str, expected: Option<&str>, what: &str) -> Result<(), RegistryError> {
    match expected {
        Some(e) if !e.is_empty() && e != current => Err(RegistryError::precondition(format!(
            "{what} changed since you read it: revision is {current}, you sent {e}; read it again and retry"
        ))),
        _ => Ok(()),
    }
}

fn check_versions_exist(
    f: &Function,
    primary: &str,
    routing: &BTreeMap<String, f64>,
) -> Result<(), RegistryError> {
    for v in std::iter::once(primary).chain(routing.keys().map(String::as_str)) {
        let exists = v
            .parse::<u64>()
            .ok()
            .is_some_and(|n| f.versions.contains_key(&n));
        if !exists {
            return Err(RegistryError::not_found(format!(
                "version {v} of function {} not found",
                f.name
            ))
            .with_reason(Reason::VersionNotFound));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::ConfigPatch;

    fn cfg(sha: &str) -> FunctionConfig {
        let mut c = FunctionConfig::defaults(sha.into(), 3);
        c.runtime = "python3.11".into();
        c.handler = "app.handler".into();
        c
    }

    fn create(r: &mut Registry, i: u64, name: &str, sha: &str) -> ApplyResult {
        r.apply(
            i,
            Command::CreateFunction {
                name: name.into(),
                config: cfg(sha),
                code_stored: true,
                publish: false,
                now_ms: i,
            },
        )
    }

    fn publish(r: &mut Registry, i: u64, name: &str) -> String {
        match r.apply(
            i,
            Command::PublishVersion {
                name: name.into(),
                description: String::new(),
                expected_code_sha256: None,
                expected_revision: None,
                now_ms: i,
            },
        ) {
            Ok(Outcome::Config(v)) => v.version,
            other => panic!("publish failed: {other:?}"),
        }
    }

    fn set_memory(r: &mut Registry, i: u64, name: &str, mb: u32) -> ApplyResult {
        r.apply(
            i,
            Command::UpdateFunctionConfiguration {
                name: name.into(),
                patch: ConfigPatch {
                    memory_mb: Some(mb),
                    ..Default::default()
                },
                expected_revision: None,
                now_ms: i,
            },
        )
    }

    #[test]
    fn create_references_the_blob_once_and_rejects_duplicates() {
        let mut r = Registry::default();
        assert!(create(&mut r, 1, "f", "aa").is_ok());
        let before = r.clone();
        let res = create(&mut r, 2, "f", "aa");
        assert!(matches!(res, Err(RegistryError::AlreadyExists(_))));
        assert_eq!(before, r, "a failed command changes nothing");
        // A second function with the same code shares the blob.
        assert!(create(&mut r, 3, "g", "aa").is_ok());
        assert_eq!(r.blob_refs["aa"], 2);
        assert_eq!(r.blobs.len(), 1);
    }

    #[test]
    fn missing_blob_without_inline_code_is_a_precondition_failure() {
        let mut r = Registry::default();
        let res = r.apply(
            1,
            Command::CreateFunction {
                name: "f".into(),
                config: cfg("zz"),
                code_stored: false,
                publish: false,
                now_ms: 1,
            },
        );
        match res {
            Err(e @ RegistryError::FailedPrecondition(_)) => {
                assert_eq!(e.reason(), Some(Reason::CodeNotStored), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(r.functions.is_empty());
    }

    #[test]
    fn versions_count_up_dedupe_unchanged_latest_and_are_never_reused() {
        let mut r = Registry::default();
        create(&mut r, 1, "f", "aa").unwrap();
        assert_eq!(publish(&mut r, 2, "f"), "1");
        assert_eq!(publish(&mut r, 3, "f"), "1", "unchanged $LATEST returns v1");
        set_memory(&mut r, 4, "f", 256).unwrap();
        assert_eq!(publish(&mut r, 5, "f"), "2");
        let res = r.apply(
            6,
            Command::DeleteVersion {
                name: "f".into(),
                version: 2,
            },
        );
        res.unwrap();
        set_memory(&mut r, 7, "f", 512).unwrap();
        assert_eq!(publish(&mut r, 8, "f"), "3", "number 2 is not reused");
        let (view, _) = r.get("f", "3").unwrap();
        assert_eq!(view.config.memory_mb, 512);
        assert_eq!(r.get("f", "1").unwrap().0.config.memory_mb, 128);
    }

    #[test]
    fn alias_compare_and_set_and_delete_guard() {
        let mut r = Registry::default();
        create(&mut r, 1, "f", "aa").unwrap();
        publish(&mut r, 2, "f");
        set_memory(&mut r, 3, "f", 256).unwrap();
        publish(&mut r, 4, "f");
        let res = r.apply(
            5,
            Command::CreateAlias {
                function: "f".into(),
                alias: "prod".into(),
                function_version: "1".into(),
                routing: [("2".to_string(), 0.25)].into_iter().collect(),
                description: String::new(),
            },
        );
        let Ok(Outcome::Alias(a)) = res else {
            panic!("{res:?}")
        };
        let upd = |rev: &str, v: &str| Command::UpdateAlias {
            function: "f".into(),
            alias: "prod".into(),
            function_version: Some(v.into()),
            routing: Some(BTreeMap::new()),
            description: None,
            expected_revision: Some(rev.into()),
        };
        let res = r.apply(6, upd(&a.revision_id, "2"));
        let Ok(Outcome::Alias(b)) = res else {
            panic!("{res:?}")
        };
        assert_eq!(b.function_version, "2");
        assert_ne!(a.revision_id, b.revision_id);
        let res = r.apply(7, upd(&a.revision_id, "1"));
        assert!(
            matches!(res, Err(RegistryError::FailedPrecondition(_))),
            "stale CAS must fail"
        );
        let res = r.apply(
            8,
            Command::DeleteVersion {
                name: "f".into(),
                version: 2,
            },
        );
        assert!(matches!(res, Err(RegistryError::FailedPrecondition(m)) if m.contains("prod")));
        // Routing to a version that does not exist.
        let res = r.apply(
            9,
            Command::UpdateAlias {
                function: "f".into(),
                alias: "prod".into(),
                function_version: None,
                routing: Some([("9".to_string(), 0.5)].into_iter().collect()),
                description: None,
                expected_revision: None,
            },
        );
        assert!(matches!(res, Err(RegistryError::NotFound(_))));
        let (alias_view, alias) = r.get("f", "prod").unwrap();
        assert_eq!(alias_view.version, "2");
        assert_eq!(alias.unwrap().name, "prod");
    }

    #[test]
    fn unreferenced_blobs_leave_the_registry() {
        let mut r = Registry::default();
        create(&mut r, 1, "f", "aa").unwrap();
        publish(&mut r, 2, "f");
        r.apply(
            3,
            Command::UpdateFunctionCode {
                name: "f".into(),
                code_sha256: "bb".into(),
                code_size: 2,
                code_stored: true,
                expected_revision: None,
                publish: false,
                now_ms: 3,
            },
        )
        .unwrap();
        // aa is still used by version 1.
        assert!(r.has_blob("aa") && r.has_blob("bb"));
        r.apply(4, Command::DeleteFunction { name: "f".into() })
            .unwrap();
        assert!(r.blobs.is_empty() && r.blob_refs.is_empty());
    }

    #[test]
    fn revision_checks_on_latest() {
        let mut r = Registry::default();
        create(&mut r, 1, "f", "aa").unwrap();
        let rev = r.functions["f"].latest_revision.clone();
        set_memory(&mut r, 2, "f", 256).unwrap();
        let res = r.apply(
            3,
            Command::PublishVersion {
                name: "f".into(),
                description: String::new(),
                expected_code_sha256: None,
                expected_revision: Some(rev),
                now_ms: 3,
            },
        );
        assert!(matches!(res, Err(RegistryError::FailedPrecondition(_))));
        let res = r.apply(
            4,
            Command::PublishVersion {
                name: "f".into(),
                description: String::new(),
                expected_code_sha256: Some("other".into()),
                expected_revision: None,
                now_ms: 4,
            },
        );
        assert!(matches!(res, Err(RegistryError::FailedPrecondition(m)) if m.contains("sha256")));
    }

    /// Async events go through the log: an event for an unknown function is
    /// NOT_FOUND; a committed step applies once; redrive of an unknown id
    /// is NOT_FOUND; the queues survive a snapshot (serde) round trip.
    #[test]
    fn async_queue_commands() {
        use crate::registry::asyncq::{next_step, AsyncEvent, Attempt, Policy, Step};
        let mut r = Registry::default();
        create(&mut r, 1, "f", "s1").unwrap();
        let ev = |id: &str, f: &str| {
            AsyncEvent::new(id.into(), f.into(), "$LATEST".into(), "{}".into(), 5)
        };
        assert!(matches!(
            r.apply(2, Command::EnqueueEvent(ev("x", "nope"))),
            Err(RegistryError::NotFound(_))
        ));
        assert_eq!(
            r.apply(3, Command::EnqueueEvent(ev("a", "f"))),
            Ok(Outcome::Count(1))
        );
        let p = Policy {
            maximum_retry_attempts: 0,
            maximum_event_age_ms: 60_000,
            base_wait_ms: 10,
        };
        let step = next_step(
            r.queues.events["a"].clone(),
            Attempt::FunctionError {
                error_type: "E".into(),
                message: "m".into(),
            },
            p,
            7,
        );
        assert!(matches!(step, Step::DeadLetter(_)));
        let cmd = Command::EventStep {
            request_id: "a".into(),
            step,
        };
        assert_eq!(r.apply(4, cmd.clone()), Ok(Outcome::Count(1)));
        assert_eq!(r.apply(5, cmd), Ok(Outcome::Count(0)), "applied once");
        assert_eq!(r.queues.dlq["f"].len(), 1);
        let again: Registry = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again, r);
        assert!(matches!(
            r.apply(
                6,
                Command::DlqRedrive {
                    function: "f".into(),
                    ids: Some(vec!["zzz".into()]),
                    now_ms: 9
                }
            ),
            Err(RegistryError::NotFound(_))
        ));
        assert_eq!(
            r.apply(
                7,
                Command::DlqRedrive {
                    function: "f".into(),
                    ids: None,
                    now_ms: 9
                }
            ),
            Ok(Outcome::Count(1))
        );
        assert_eq!(r.queues.events["a"].attempts, 0);
    }

    #[test]
    fn apply_is_deterministic() {
        let cmds: Vec<Command> = (0..50)
            .map(|i| match i % 3 {
                0 => Command::CreateFunction {
                    name: format!("f{}", i % 7),
                    config: cfg(&format!("s{}", i % 5)),
                    code_stored: true,
                    publish: i % 2 == 0,
                    now_ms: i,
                },
                1 => Command::PublishVersion {
                    name: format!("f{}", i % 7),
                    description: String::new(),
                    expected_code_sha256: None,
                    expected_revision: None,
                    now_ms: i,
                },
                _ => Command::DeleteFunction {
                    name: format!("f{}", i % 7),
                },
            })
            .collect();
        let mut a = Registry::default();
        let mut b = Registry::default();
        let ra: Vec<_> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| a.apply(i as u64, c.clone()))
            .collect();
        let rb: Vec<_> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| b.apply(i as u64, c.clone()))
            .collect();
        assert_eq!(ra, rb);
        assert_eq!(a, b);
        // And it survives a JSON round trip (snapshots).
        let c: Registry = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn an_idempotent_request_applies_once() {
        let mut r = Registry::default();
        create(&mut r, 1, "f", "aa").unwrap();
        let publish_once = |id: &str| Command::Idempotent {
            id: id.into(),
            cmd: Box::new(Command::PublishVersion {
                name: "f".into(),
                description: String::new(),
                expected_code_sha256: None,
                expected_revision: None,
                now_ms: 2,
            }),
        };
        let first = r.apply(2, publish_once("req-1")).unwrap();
        set_memory(&mut r, 3, "f", 256).unwrap();
        // The retry of req-1 returns version 1 again and publishes nothing.
        let again = r.apply(4, publish_once("req-1")).unwrap();
        assert_eq!(first, again);
        assert_eq!(r.functions["f"].versions.len(), 1);
        // A new id publishes.
        let Outcome::Config(v) = r.apply(5, publish_once("req-2")).unwrap() else {
            panic!()
        };
        assert_eq!(v.version, "2");
        // A failed request leaves no trace, so its retry runs afresh.
        let before = r.clone();
        let bad = Command::Idempotent {
            id: "req-3".into(),
            cmd: Box::new(Command::DeleteFunction {
                name: "nope".into(),
            }),
        };
        assert!(r.apply(6, bad.clone()).is_err());
        assert_eq!(before, r);
        create(&mut r, 7, "nope", "bb").unwrap();
        r.apply(8, bad).unwrap();
        assert!(!r.functions.contains_key("nope"));
    }

    #[test]
    fn a_batch_applies_each_command_on_its_own() {
        let mut r = Registry::default();
        create(&mut r, 1, "f", "aa").unwrap();
        let res = r.apply(
            2,
            Command::Batch(vec![
                Command::DeleteFunction {
                    name: "nope".into(),
                },
                Command::PublishVersion {
                    name: "f".into(),
                    description: String::new(),
                    expected_code_sha256: None,
                    expected_revision: None,
                    now_ms: 2,
                },
            ]),
        );
        let Ok(Outcome::Batch(results)) = res else {
            panic!("{res:?}")
        };
        assert!(matches!(results[0], Err(RegistryError::NotFound(_))));
        assert!(matches!(&results[1], Ok(Outcome::Config(v)) if v.version == "1"));
        assert_eq!(
            r.functions["f"].versions.len(),
            1,
            "one failure does not undo the rest"
        );
    }

    /// A destination equal to the function itself is INVALID_ARGUMENT
    /// naming the field, one naming no function is NOT_FOUND
    /// (DestinationNotFound), at create and at update-config, and neither
    /// changes anything; another existing function is fine, clearing is
    /// fine, and deleting a function that is a destination is allowed.
    #[test]
    fn destinations_must_name_another_existing_function() {
        let mut r = Registry::default();
        create(&mut r, 1, "sink", "aa").unwrap();
        let with = |dlq: &str, ok: &str| {
            let mut c = cfg("aa");
            c.async_config.dead_letter_target = dlq.into();
            c.async_config.on_success_target = ok.into();
            Command::CreateFunction {
                name: "loopfn".into(),
                config: c,
                code_stored: true,
                publish: false,
                now_ms: 2,
            }
        };
        let before = r.clone();
        for (cmd, field) in [
            (with("loopfn", ""), "dead_letter_target"),
            (with("", "loopfn"), "on_success_target"),
        ] {
            match r.apply(2, cmd) {
                Err(RegistryError::InvalidArgument(d)) => {
                    assert!(d.message.contains(field), "{d}");
                    assert!(d.message.contains("loopfn itself"), "{d}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        match r.apply(2, with("nope", "")) {
            Err(e @ RegistryError::NotFound(_)) => {
                assert_eq!(e.reason(), Some(Reason::DestinationNotFound));
                assert!(e.to_string().contains("dead_letter_target"), "{e}");
                assert!(e.to_string().contains("nope"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r, before, "refused creates change nothing");
        r.apply(3, with("sink", "sink")).unwrap();

        let update = |dlq: Option<&str>, ok: Option<&str>| Command::UpdateFunctionConfiguration {
            name: "loopfn".into(),
            patch: ConfigPatch {
                dead_letter_target: dlq.map(str::to_string),
                on_success_target: ok.map(str::to_string),
                ..Default::default()
            },
            expected_revision: None,
            now_ms: 4,
        };
        let before = r.clone();
        assert!(matches!(
            r.apply(4, update(Some("loopfn"), None)),
            Err(RegistryError::InvalidArgument(_))
        ));
        assert!(matches!(
            r.apply(4, update(None, Some("loopfn"))),
            Err(RegistryError::InvalidArgument(_))
        ));
        assert!(matches!(
            r.apply(4, update(None, Some("gone"))),
            Err(RegistryError::NotFound(_))
        ));
        assert_eq!(r, before, "refused updates change nothing");
        // Deleting the destination is allowed (Lambda allows it too); an
        // update that leaves the targets alone still works, clearing too.
        r.apply(
            5,
            Command::DeleteFunction {
                name: "sink".into(),
            },
        )
        .unwrap();
        set_memory(&mut r, 6, "loopfn", 256).unwrap();
        r.apply(7, update(Some(""), Some(""))).unwrap();
        assert_eq!(
            r.functions["loopfn"].latest.async_config.dead_letter_target,
            ""
        );
    }

    /// A dead letter written directly (a stopped destination record)
    /// lands in its function's queue; for a function that is gone it is
    /// NOT_FOUND.
    #[test]
    fn a_direct_dead_letter_lands_in_its_functions_queue() {
        use crate::registry::asyncq::{stop_recursion, AsyncEvent, Condition};
        let mut r = Registry::default();
        create(&mut r, 1, "b", "aa").unwrap();
        let mut rec = AsyncEvent::new("x".into(), "b".into(), LATEST.into(), "{}".into(), 1);
        rec.depth = 16;
        let d = stop_recursion(rec, "a", 2);
        assert_eq!(d.condition, Condition::RecursiveLoop);
        assert_eq!(d.error_type, "RecursiveInvocationException");
        assert!(d.error_message.contains("a -> b"), "{}", d.error_message);
        r.apply(2, Command::DeadLetter(d.clone())).unwrap();
        assert_eq!(r.queues.dlq["b"].len(), 1);
        // A redrive keeps the depth: its next record is stopped again.
        r.apply(
            3,
            Command::DlqRedrive {
                function: "b".into(),
                ids: None,
                now_ms: 3,
            },
        )
        .unwrap();
        assert_eq!(r.queues.events["x"].depth, 16);
        let mut gone = d;
        gone.function = "nope".into();
        assert!(matches!(
            r.apply(4, Command::DeadLetter(gone)),
            Err(RegistryError::NotFound(_))
        ));
    }

    #[test]
    fn tokens_are_unique_and_revocable() {
        let mut r = Registry::default();
        let t = Token {
            id: "t1".into(),
            name: "ci".into(),
            scope: crate::registry::model::Scope::Deploy,
            hash: "h1".into(),
            created_at_ms: 1,
        };
        r.apply(1, Command::CreateToken { token: t.clone() })
            .unwrap();
        assert!(matches!(
            r.apply(2, Command::CreateToken { token: t }),
            Err(RegistryError::AlreadyExists(_))
        ));
        assert_eq!(r.token_by_hash("h1").unwrap().id, "t1");
        r.apply(3, Command::RevokeToken { id: "t1".into() })
            .unwrap();
        assert!(r.token_by_hash("h1").is_none());
        assert!(matches!(
            r.apply(4, Command::RevokeToken { id: "t1".into() }),
            Err(RegistryError::NotFound(_))
        ));
    }
}
