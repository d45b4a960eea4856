//! How results are shown: aligned tables and `key: value` lines for
//! people, JSON (`-o json`) for scripts.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use nubo_proto::v1 as pb;
use serde_json::{json, Value};

use super::OutputFormat;

pub(super) struct Out {
    pub(super) format: OutputFormat,
}

impl Out {
    pub(super) fn json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    pub(super) fn print(&self, s: &str) {
        // Ignore write errors: `nubo function list | head` must not panic.
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(s.as_bytes());
        let _ = o.flush();
    }

    pub(super) fn print_json(&self, v: &Value) {
        let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
        s.push('\n');
        self.print(&s);
    }

    pub(super) fn config(&self, c: &pb::FunctionConfiguration) {
        if self.json() {
            self.print_json(&config_json(c));
        } else {
            self.print(&render_kv(&config_pairs(c)));
        }
    }

    pub(super) fn alias(&self, a: &pb::Alias) {
        if self.json() {
            self.print_json(&alias_json(a));
        } else {
            self.print(&render_kv(&[
                ("function_name".into(), a.function_name.clone()),
                ("name".into(), a.name.clone()),
                ("function_version".into(), a.function_version.clone()),
                ("routing".into(), routing_text(a)),
                ("description".into(), a.description.clone()),
                ("revision_id".into(), a.revision_id.clone()),
            ]));
        }
    }

    /// Confirms a call whose response is empty.
    pub(super) fn done(&self, message: &str) {
        if self.json() {
            self.print_json(&json!({}));
        } else {
            self.print(&format!("{message}\n"));
        }
    }
}

fn sorted<V: Clone>(m: &HashMap<String, V>) -> BTreeMap<String, V> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub fn config_json(c: &pb::FunctionConfiguration) -> Value {
    json!({
        "function_name": c.function_name,
        "version": c.version,
        "runtime": c.runtime,
        "handler": c.handler,
        "memory_mb": c.memory_mb,
        "timeout_seconds": c.timeout_seconds,
        "environment": sorted(&c.environment),
        "description": c.description,
        "ephemeral_storage_mb": c.ephemeral_storage_mb,
        "reserved_concurrency": c.reserved_concurrency,
        "maximum_retry_attempts": c.maximum_retry_attempts,
        "maximum_event_age_seconds": c.maximum_event_age_seconds,
        "dead_letter_target": c.dead_letter_target,
        "on_success_target": c.on_success_target,
        "code_sha256": c.code_sha256,
        "code_size": c.code_size,
        "revision_id": c.revision_id,
        "last_modified": c.last_modified,
        "egress": c.egress,
        "min_warm": c.min_warm,
    })
}

pub fn alias_json(a: &pb::Alias) -> Value {
    json!({
        "function_name": a.function_name,
        "name": a.name,
        "function_version": a.function_version,
        "additional_version_weights": sorted(&a.additional_version_weights),
        "description": a.description,
        "revision_id": a.revision_id,
    })
}

pub(super) fn config_pairs(c: &pb::FunctionConfiguration) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = vec![
        ("function_name".into(), c.function_name.clone()),
        ("version".into(), c.version.clone()),
        ("runtime".into(), c.runtime.clone()),
        ("handler".into(), c.handler.clone()),
        ("memory".into(), format!("{} MB", c.memory_mb)),
        ("timeout".into(), format!("{} s", c.timeout_seconds)),
        (
            "ephemeral_storage".into(),
            // /tmp is a tmpfs: its pages are charged to the sandbox's
            // memory cgroup (ARCHITECTURE.md, "Ephemeral storage").
            format!(
                "{} MB /tmp, in memory: counts toward the {} MB memory limit",
                c.ephemeral_storage_mb, c.memory_mb
            ),
        ),
        (
            "reserved_concurrency".into(),
            c.reserved_concurrency
                .map_or_else(|| "unreserved".to_string(), |n| n.to_string()),
        ),
        (
            "network".into(),
            if c.egress { "egress" } else { "none" }.into(),
        ),
        ("min_warm".into(), c.min_warm.to_string()),
        ("description".into(), c.description.clone()),
    ];
    let env = sorted(&c.environment);
    if env.is_empty() {
        p.push(("environment".into(), String::new()));
    }
    for (i, (k, v)) in env.iter().enumerate() {
        let key = if i == 0 { "environment" } else { "" };
        p.push((key.into(), format!("{k}={v}")));
    }
    p.extend([
        (
            "max_retry_attempts".into(),
            c.maximum_retry_attempts.to_string(),
        ),
        (
            "max_event_age".into(),
            format!("{} s", c.maximum_event_age_seconds),
        ),
        ("dead_letter_target".into(), c.dead_letter_target.clone()),
        ("on_success_target".into(), c.on_success_target.clone()),
        ("code_sha256".into(), c.code_sha256.clone()),
        (
            "code_size".into(),
            format!("{} ({} bytes)", human_bytes(c.code_size), c.code_size),
        ),
        ("revision_id".into(), c.revision_id.clone()),
        ("last_modified".into(), c.last_modified.clone()),
    ]);
    p
}

pub(super) fn routing_text(a: &pb::Alias) -> String {
    sorted(&a.additional_version_weights)
        .iter()
        .map(|(v, w)| format!("{v}={w}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn short_sha(s: &str) -> String {
    s.chars().take(12).collect()
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// One line per cell value: control characters (a newline in a description)
/// would break the columns.
fn cell(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// Aligned columns separated by two spaces; empty cells show `-` so that
/// `awk '{print $2}'` keeps working.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            (0..headers.len())
                .map(|i| cell(r.get(i).map_or("", |s| s)))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(c);
            let pad = widths[i].saturating_sub(c.chars().count());
            l.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for r in &rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// `key: value` lines with the values aligned; an empty key continues the
/// previous one (one environment variable per line).
pub fn render_kv(pairs: &[(String, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let key = if k.is_empty() {
            String::new()
        } else {
            format!("{k}:")
        };
        let v: String = v
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let line = format!("{key:<width$} {v}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `2026-11-22T04:30:00.123Z`
pub(super) fn rfc3339_ms(ms: u64) -> String {
    nubo_controller::clock::rfc3339(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let t = render_table(
            &["NAME", "RUNTIME", "DESC"],
            &[
                vec!["a".into(), "python3.12".into(), "".into()],
                vec!["longer-name".into(), "node".into(), "x\ny".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME         RUNTIME     DESC\n\
             a            python3.12  -\n\
             longer-name  node        x y\n"
        );
    }

    #[test]
    fn key_values_are_aligned() {
        let t = render_kv(&[
            ("a".into(), "1".into()),
            ("longer".into(), "2".into()),
            ("".into(), "3".into()),
            ("e".into(), "".into()),
        ]);
        assert_eq!(t, "a:      1\nlonger: 2\n        3\ne:\n");
    }

    /// `function get` says that /tmp counts toward the memory limit.
    #[test]
    fn ephemeral_storage_says_it_counts_toward_memory() {
        let c = pb::FunctionConfiguration {
            memory_mb: 256,
            ephemeral_storage_mb: 512,
            ..Default::default()
        };
        let pairs = config_pairs(&c);
        let (_, v) = pairs
            .iter()
            .find(|(k, _)| k == "ephemeral_storage")
            .unwrap();
        assert_eq!(
            v,
            "512 MB /tmp, in memory: counts toward the 256 MB memory limit"
        );
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
    }
}
