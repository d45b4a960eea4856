//! Lambda's destinations: the on-failure and on-success records of an
//! event, enqueued as async events for the destination function in the
//! same Raft entry as the event's step.
//!
//! Two bounds keep a chain of destinations from feeding itself: each record
//! carries the depth of the event it reports plus one (in the replicated
//! event, not the payload; the dispatcher stops it at
//! `asyncq::MAX_DESTINATION_DEPTH`), and each record fits the async payload
//! limit: when the embedded `requestPayload` / `responsePayload` would not,
//! they are cut (see [`fit`]) and the record says `"truncated": true`.

use serde_json::{json, Value};

use crate::clock::{now_ms, rfc3339};
use crate::invoke::new_request_id;
use crate::registry::asyncq::{AsyncEvent, DeadLetter};
use crate::registry::model::{ConfigView, LATEST};

/// Lambda's destination record for an event that failed for good, as an
/// async event for the destination function, at most `limit` bytes.
pub(crate) fn failure_record(
    d: &DeadLetter,
    view: &ConfigView,
    target: &str,
    limit: u64,
) -> AsyncEvent {
    let now = now_ms();
    let arn = format!(
        "arn:aws:lambda:local:000000000000:function:{}:{}",
        d.function, d.qualifier
    );
    let record = json!({
        "version": "1.0",
        "timestamp": rfc3339(now),
        "requestContext": {
            "requestId": d.request_id,
            "functionArn": arn,
            "condition": d.condition.as_str(),
            "approximateInvokeCount": d.attempts,
        },
        "responseContext": {
            "statusCode": 200,
            "executedVersion": view.version,
            "functionError": "Unhandled",
        },
    });
    let response = json!({
        "errorType": d.error_type,
        "errorMessage": d.error_message,
    })
    .to_string();
    let record = fit(record, &d.payload, &response, limit);
    destination_event(target, record, now, d.depth + 1)
}

/// Lambda's destination record of a successful event, at most `limit`
/// bytes.
pub(crate) fn success_record(
    ev: &AsyncEvent,
    view: &ConfigView,
    target: &str,
    result: &[u8],
    limit: u64,
) -> AsyncEvent {
    let now = now_ms();
    let record = json!({
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
        "responseContext": {
            "statusCode": 200,
            "executedVersion": view.version,
        },
    });
    let response = String::from_utf8_lossy(result);
    let record = fit(record, &ev.payload, &response, limit);
    destination_event(target, record, now, ev.depth + 1)
}

/// A JSON text as a value: itself when it parses, else as a string.
fn as_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The longest prefix of `text` whose JSON string form (quotes included)
/// takes at most `budget` bytes.
fn prefix_within(text: &str, budget: usize) -> &str {
    let mut used = 2;
    for (i, c) in text.char_indices() {
        used += escaped_len(c);
        if used > budget {
            return &text[..i];
        }
    }
    text
}

/// `record` with `requestPayload` (the event, a JSON text) and
/// `responsePayload` (the result or error document) added, in at most
/// `limit` bytes. What fits goes in whole, as JSON; a payload that does
/// not fit becomes a string holding the start of its JSON text, the record
/// gets `"truncated": true` and `"truncatedFields"` naming the cut fields.
/// A smaller payload is kept whole when it fits in half of the room.
fn fit(mut record: Value, request: &str, response: &str, limit: u64) -> Value {
    let (req, resp) = (as_value(request), as_value(response));
    let whole_len = |v: &Value| v.to_string().len();
    let (req_len, resp_len) = (whole_len(&req), whole_len(&resp));
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    // The record without payloads, with room for the truncation marks.
    let skeleton = {
        let mut r = record.clone();
        r["requestPayload"] = Value::String(String::new());
        r["responsePayload"] = Value::String(String::new());
        r["truncated"] = Value::Bool(true);
        r["truncatedFields"] = json!(["requestPayload", "responsePayload"]);
        whole_len(&r)
    };
    let room = limit.saturating_sub(skeleton);
    {
        let mut whole = record.clone();
        whole["requestPayload"] = req.clone();
        whole["responsePayload"] = resp.clone();
        if whole_len(&whole) <= limit {
            return whole;
        }
    }
    let (req_room, resp_room) = if req_len <= room / 2 {
        (req_len, room - req_len)
    } else if resp_len <= room / 2 {
        (room - resp_len, resp_len)
    } else {
        (room / 2, room - room / 2)
    };
    let mut cut = Vec::new();
    for (field, value, len, share, text) in [
        ("requestPayload", req, req_len, req_room, request),
        ("responsePayload", resp, resp_len, resp_room, response),
    ] {
        record[field] = if len <= share {
            value
        } else {
            cut.push(field);
            Value::String(prefix_within(text, share).to_string())
        };
    }
    record["truncated"] = Value::Bool(true);
    record["truncatedFields"] = json!(cut);
    record
}

/// A destination record as an async event for the destination function.
fn destination_event(target: &str, record: Value, now: u64, depth: u32) -> AsyncEvent {
    let mut ev = AsyncEvent::new(
        new_request_id(),
        target.to_string(),
        LATEST.into(),
        record.to_string(),
        now,
    );
    ev.depth = depth;
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::asyncq::Condition;
    use crate::registry::model::FunctionConfig;

    fn view() -> ConfigView {
        ConfigView {
            function_name: "f".into(),
            version: LATEST.into(),
            config: FunctionConfig::defaults("s".into(), 1),
            revision_id: String::new(),
            last_modified_ms: 0,
        }
    }

    fn dead_letter(payload: String, depth: u32) -> DeadLetter {
        DeadLetter {
            request_id: "r".into(),
            function: "f".into(),
            qualifier: LATEST.into(),
            payload,
            condition: Condition::RetriesExhausted,
            attempts: 1,
            error_type: "E".into(),
            error_message: "boom".into(),
            first_attempt_ms: 0,
            last_attempt_ms: 0,
            enqueued_ms: 0,
            dead_lettered_ms: 0,
            depth,
            ordering_key: String::new(),
        }
    }

    const LIMIT: u64 = 256 * 1024;

    /// A small event's record embeds it whole, as JSON, with no truncation
    /// mark, one hop deeper than the event.
    #[test]
    fn small_records_are_whole_and_one_hop_deeper() {
        let r = failure_record(
            &dead_letter(r#"{"k":[1,2]}"#.into(), 3),
            &view(),
            "g",
            LIMIT,
        );
        assert_eq!((r.function.as_str(), r.depth), ("g", 4));
        let v: Value = serde_json::from_str(&r.payload).unwrap();
        assert_eq!(v["requestPayload"]["k"][1], 2);
        assert_eq!(v["responsePayload"]["errorType"], "E");
        assert!(v.get("truncated").is_none(), "{v}");
    }

    /// A record of a payload at the async limit, or of a 6 MB result
    /// full of characters that escape long, stays within the limit and
    /// says what was cut; the kept text is the start of the original.
    #[test]
    fn large_records_are_cut_to_the_limit_and_say_so() {
        let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(LIMIT as usize - 11));
        assert_eq!(big.len() as u64, LIMIT);
        let r = failure_record(&dead_letter(big.clone(), 0), &view(), "g", LIMIT);
        assert!(r.payload.len() as u64 <= LIMIT, "{} bytes", r.payload.len());
        let v: Value = serde_json::from_str(&r.payload).unwrap();
        assert_eq!(v["truncated"], true);
        assert_eq!(v["truncatedFields"], json!(["requestPayload"]));
        let kept = v["requestPayload"].as_str().unwrap();
        assert!(
            big.starts_with(kept) && kept.len() > 200_000,
            "{}",
            kept.len()
        );
        assert_eq!(v["responsePayload"]["errorMessage"], "boom", "small: whole");

        let ev = AsyncEvent::new("r".into(), "f".into(), LATEST.into(), big.clone(), 0);
        let result = format!("\"{}\"", "\\u0001\"\n".repeat(700_000));
        let r = success_record(&ev, &view(), "g", result.as_bytes(), LIMIT);
        assert!(r.payload.len() as u64 <= LIMIT, "{} bytes", r.payload.len());
        let v: Value = serde_json::from_str(&r.payload).unwrap();
        assert_eq!(
            v["truncatedFields"],
            json!(["requestPayload", "responsePayload"])
        );
        assert!(result.starts_with(v["responsePayload"].as_str().unwrap()));
        assert_eq!(r.depth, 1);
    }
}
