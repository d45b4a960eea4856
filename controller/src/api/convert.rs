//! prost messages <-> domain types, at the edge: prost types do not leak
//! into the registry.

use nubo_proto::v1 as pb;

use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::registry::model::{Alias, ConfigPatch, ConfigView, Outcome};

pub(crate) fn config_to_pb(v: &ConfigView) -> pb::FunctionConfiguration {
    let c = &v.config;
    pb::FunctionConfiguration {
        function_name: v.function_name.clone(),
        version: v.version.clone(),
        runtime: c.runtime.clone(),
        handler: c.handler.clone(),
        memory_mb: c.memory_mb,
        timeout_seconds: c.timeout_seconds,
        environment: c.environment.clone().into_iter().collect(),
        description: c.description.clone(),
        ephemeral_storage_mb: c.ephemeral_storage_mb,
        reserved_concurrency: c.reserved_concurrency,
        maximum_retry_attempts: c.async_config.maximum_retry_attempts,
        maximum_event_age_seconds: c.async_config.maximum_event_age_seconds,
        dead_letter_target: c.async_config.dead_letter_target.clone(),
        on_success_target: c.async_config.on_success_target.clone(),
        code_sha256: c.code_sha256.clone(),
        code_size: c.code_size,
        revision_id: v.revision_id.clone(),
        last_modified: rfc3339(v.last_modified_ms),
        egress: c.egress,
        min_warm: c.min_warm,
    }
}

pub(crate) fn alias_to_pb(function: &str, a: &Alias) -> pb::Alias {
    pb::Alias {
        function_name: function.to_string(),
        name: a.name.clone(),
        function_version: a.function_version.clone(),
        additional_version_weights: a.routing.clone().into_iter().collect(),
        description: a.description.clone(),
        revision_id: a.revision_id.clone(),
    }
}

pub(crate) fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The fields a request sets, as a patch.
pub(crate) fn patch_from(c: &pb::FunctionConfig) -> ConfigPatch {
    let a = c.async_config.clone().unwrap_or_default();
    ConfigPatch {
        runtime: non_empty(&c.runtime),
        handler: non_empty(&c.handler),
        memory_mb: c.memory_mb,
        timeout_seconds: c.timeout_seconds,
        environment: (!c.environment.is_empty() || c.replace_environment)
            .then(|| c.environment.clone().into_iter().collect()),
        description: c.description.clone(),
        ephemeral_storage_mb: c.ephemeral_storage_mb,
        reserved_concurrency: if c.clear_reserved_concurrency {
            Some(None)
        } else {
            c.reserved_concurrency.map(Some)
        },
        maximum_retry_attempts: a.maximum_retry_attempts,
        maximum_event_age_seconds: a.maximum_event_age_seconds,
        dead_letter_target: non_empty(&a.dead_letter_target),
        on_success_target: non_empty(&a.on_success_target),
        egress: c.set_egress.or(c.egress.then_some(true)),
        min_warm: c.min_warm,
    }
}

pub(crate) fn outcome_config(o: Outcome) -> Result<pb::FunctionConfiguration, ApiError> {
    match o {
        Outcome::Config(v) => Ok(config_to_pb(&v)),
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

pub(crate) fn outcome_alias(function: &str, o: Outcome) -> Result<pb::Alias, ApiError> {
    match o {
        Outcome::Alias(a) => Ok(alias_to_pb(function, &a)),
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}
