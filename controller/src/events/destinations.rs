//! Lambda's destinations: the on-failure and on-success records of an
//! event, enqueued as async events for the destination function in the
//! same Raft entry as the event's step.

use crate::clock::{now_ms, rfc3339};
use crate::invoke::new_request_id;
use crate::registry::asyncq::{AsyncEvent, DeadLetter};
use crate::registry::model::{ConfigView, LATEST};

/// Lambda's destination record for an event that failed for good, as an
/// async event for the destination function.
pub(crate) fn failure_record(d: &DeadLetter, view: &ConfigView, target: &str) -> AsyncEvent {
    let now = now_ms();
    let payload: serde_json::Value =
        serde_json::from_str(&d.payload).unwrap_or(serde_json::Value::String(d.payload.clone()));
    let arn = format!(
        "arn:aws:lambda:local:000000000000:function:{}:{}",
        d.function, d.qualifier
    );
    let record = serde_json::json!({
        "version": "1.0",
        "timestamp": rfc3339(now),
        "requestContext": {
            "requestId": d.request_id,
            "functionArn": arn,
            "condition": d.condition.as_str(),
            "approximateInvokeCount": d.attempts,
        },
        "requestPayload": payload,
        "responseContext": {
            "statusCode": 200,
            "executedVersion": view.version,
            "functionError": "Unhandled",
        },
        "responsePayload": {
            "errorType": d.error_type,
            "errorMessage": d.error_message,
        },
    });
    destination_event(target, record, now)
}

/// Lambda's destination record of a successful event.
pub(crate) fn success_record(
    ev: &AsyncEvent,
    view: &ConfigView,
    target: &str,
    result: &[u8],
) -> AsyncEvent {
    let now = now_ms();
    let payload: serde_json::Value =
        serde_json::from_str(&ev.payload).unwrap_or(serde_json::Value::String(ev.payload.clone()));
    let response: serde_json::Value = serde_json::from_slice(result).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(result).into_owned())
    });
    let record = serde_json::json!({
        "version": "1.0",
        "timestamp": rfc3339(now),
        "requestContext": {
            "requestId": ev.request_id,
            "functionArn": format!(
                "arn:aws:lambda:local:000000000000:function:{}:{}",
                ev.function, ev.qualifier
            ),
            "condition": "Success",
            "approximateInvokeCount": ev.attempts + 1,
        },
        "requestPayload": payload,
        "responseContext": {
            "statusCode": 200,
            "executedVersion": view.version,
        },
        "responsePayload": response,
    });
    destination_event(target, record, now)
}

/// A destination record as an async event for the destination function.
fn destination_event(target: &str, record: serde_json::Value, now: u64) -> AsyncEvent {
    AsyncEvent::new(
        new_request_id(),
        target.to_string(),
        LATEST.into(),
        record.to_string(),
        now,
    )
}
