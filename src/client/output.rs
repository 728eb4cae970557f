//! Rendering admin API answers for people: aligned tables for lists, `key: value` lines
//! for single objects. Everything shown passes through [`sanitize`], so a name with
//! control characters cannot mess with the terminal.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// `--json`: the API's answer, pretty-printed, with a final newline.
pub fn json(out: &mut String, value: &Value) {
    out.push_str(&serde_json::to_string_pretty(value).expect("a JSON value serializes"));
    out.push('\n');
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            if i + 1 < widths.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// `name: value` lines, values aligned after the longest name.
pub fn fields(out: &mut String, pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (name, value) in pairs {
        let label = format!("{name}:");
        if value.is_empty() {
            out.push_str(&label);
        } else {
            let _ = write!(out, "{label:<width$} {value}");
        }
        out.push('\n');
    }
}

/// A string field, sanitized; `""` when absent or not a string.
pub fn text(v: &Value, name: &str) -> String {
    v.get(name)
        .and_then(Value::as_str)
        .map(sanitize)
        .unwrap_or_default()
}

/// A list of strings joined with `,`; `empty` when the list is empty, absent or null.
pub fn list(v: &Value, name: &str, empty: &str) -> String {
    let items: Vec<String> = v
        .get(name)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(sanitize).collect())
        .unwrap_or_default();
    if items.is_empty() {
        empty.to_owned()
    } else {
        items.join(",")
    }
}

pub fn boolean(v: &Value, name: &str) -> String {
    v.get(name)
        .and_then(Value::as_bool)
        .map(|b| b.to_string())
        .unwrap_or_default()
}

/// A timestamp to the second (`2030-01-01T00:00:00Z`); `none` when null or absent.
pub fn time(v: &Value, name: &str, none: &str) -> String {
    match parse_time(v, name) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => match v.get(name).and_then(Value::as_str) {
            Some(raw) => sanitize(raw),
            None => none.to_owned(),
        },
    }
}

/// Like [`time`], followed by how far away it is: `… (in 29d)`, `… (3h ago)`.
pub fn time_relative(v: &Value, name: &str, none: &str, now: DateTime<Utc>) -> String {
    let shown = time(v, name, none);
    match parse_time(v, name) {
        Some(t) if t >= now => format!("{shown} (in {})", span(t - now)),
        Some(t) => format!("{shown} ({} ago)", span(now - t)),
        None => shown,
    }
}

fn parse_time(v: &Value, name: &str) -> Option<DateTime<Utc>> {
    let raw = v.get(name)?.as_str()?;
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The largest whole unit of a time span: `45s`, `12m`, `5h`, `29d`.
fn span(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Replaces control characters (newlines, escapes) with their `\u{…}` form.
pub fn sanitize(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Keys: `ID NAME START OWNER STATUS CREATED EXPIRES LAST USED`.
pub fn keys_table(out: &mut String, items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|k| {
            vec![
                text(k, "id"),
                text(k, "name"),
                text(k, "start"),
                text(k, "owner"),
                text(k, "status"),
                time(k, "created_at", "-"),
                time(k, "expires_at", "never"),
                time(k, "last_used_at", "never"),
            ]
        })
        .collect();
    table(
        out,
        &[
            "ID",
            "NAME",
            "START",
            "OWNER",
            "STATUS",
            "CREATED",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    );
}

/// One key as `name: value` lines.
pub fn key_fields(out: &mut String, k: &Value, now: DateTime<Utc>) {
    let meta = match k.get("meta") {
        None | Some(Value::Null) => "-".to_owned(),
        Some(m) => sanitize(&m.to_string()),
    };
    let permissions = match k.get("permissions") {
        None | Some(Value::Null) => "(all of the owner's)".to_owned(),
        Some(_) => list(k, "permissions", "(none)"),
    };
    fields(
        out,
        &[
            ("id", text(k, "id")),
            ("name", text(k, "name")),
            ("description", text(k, "description")),
            ("start", text(k, "start")),
            ("owner", text(k, "owner")),
            ("tenant", text(k, "tenant")),
            ("status", text(k, "status")),
            ("permissions", permissions),
            ("created_at", time(k, "created_at", "-")),
            ("created_by", text(k, "created_by")),
            ("updated_at", time(k, "updated_at", "-")),
            ("expires_at", time_relative(k, "expires_at", "never", now)),
            (
                "last_used_at",
                time_relative(k, "last_used_at", "never", now),
            ),
            ("meta", meta),
        ],
    );
}

/// Users: `ID TENANT ACTIVE GROUPS PERMISSIONS`.
pub fn users_table(out: &mut String, items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|u| {
            vec![
                text(u, "id"),
                text(u, "tenant"),
                boolean(u, "active"),
                list(u, "groups", "-"),
                list(u, "permissions", "-"),
            ]
        })
        .collect();
    table(
        out,
        &["ID", "TENANT", "ACTIVE", "GROUPS", "PERMISSIONS"],
        &rows,
    );
}

pub fn user_fields(out: &mut String, u: &Value) {
    fields(
        out,
        &[
            ("id", text(u, "id")),
            ("tenant", text(u, "tenant")),
            ("name", text(u, "name")),
            ("active", boolean(u, "active")),
            ("groups", list(u, "groups", "-")),
            ("permissions", list(u, "permissions", "-")),
            ("created_at", time(u, "created_at", "-")),
            ("updated_at", time(u, "updated_at", "-")),
        ],
    );
}

/// Groups: `ID TENANT PERMISSIONS`.
pub fn groups_table(out: &mut String, items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|g| {
            vec![
                text(g, "id"),
                text(g, "tenant"),
                list(g, "permissions", "-"),
            ]
        })
        .collect();
    table(out, &["ID", "TENANT", "PERMISSIONS"], &rows);
}

pub fn group_fields(out: &mut String, g: &Value) {
    fields(
        out,
        &[
            ("id", text(g, "id")),
            ("tenant", text(g, "tenant")),
            ("permissions", list(g, "permissions", "-")),
            ("created_at", time(g, "created_at", "-")),
            ("updated_at", time(g, "updated_at", "-")),
        ],
    );
}

/// `POST /v1/verify`'s answer.
pub fn verify_fields(out: &mut String, v: &Value, now: DateTime<Utc>) {
    let mut pairs = vec![("valid", boolean(v, "valid")), ("code", text(v, "code"))];
    if v.get("key_id").is_some_and(|id| !id.is_null()) {
        pairs.extend([
            ("key_id", text(v, "key_id")),
            ("tenant", text(v, "tenant")),
            ("user", text(v, "user")),
            ("groups", list(v, "groups", "-")),
            ("permissions", list(v, "permissions", "-")),
            ("expires_at", time_relative(v, "expires_at", "never", now)),
        ]);
    }
    fields(out, &pairs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_trim_the_last() {
        let mut out = String::new();
        table(
            &mut out,
            &["ID", "NAME", "X"],
            &[
                vec!["k1".into(), "a long name".into(), "".into()],
                vec!["key-two".into(), "b".into(), "z".into()],
            ],
        );
        assert_eq!(
            out,
            "ID       NAME         X\n\
             k1       a long name\n\
             key-two  b            z\n"
        );
    }

    #[test]
    fn fields_align_values_without_trailing_spaces() {
        let mut out = String::new();
        fields(
            &mut out,
            &[("id", "k1".into()), ("description", String::new())],
        );
        assert_eq!(out, "id:          k1\ndescription:\n");
    }

    #[test]
    fn times_are_shortened_and_nulls_named() {
        let v = json!({"a": "2030-01-02T03:04:05.123456789Z", "b": null});
        assert_eq!(time(&v, "a", "-"), "2030-01-02T03:04:05Z");
        assert_eq!(time(&v, "b", "never"), "never");
        assert_eq!(time(&v, "missing", "-"), "-");
        let now = DateTime::parse_from_rfc3339("2030-01-01T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            time_relative(&v, "a", "never", now),
            "2030-01-02T03:04:05Z (in 1d)"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(sanitize("plain"), "plain");
        assert_eq!(sanitize("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
    }

    #[test]
    fn key_rows_never_show_more_than_start() {
        let mut out = String::new();
        keys_table(
            &mut out,
            &[
                json!({"id": "k1", "name": "ci", "start": "kg_abcde", "owner": "alice",
                "status": "active", "created_at": "2030-01-01T00:00:00Z",
                "expires_at": null, "last_used_at": null, "key": "kg_secret"}),
            ],
        );
        assert!(out.starts_with("ID  NAME  START     OWNER  STATUS  CREATED"));
        assert!(
            out.contains("k1  ci    kg_abcde  alice  active  2030-01-01T00:00:00Z  never    never")
        );
        assert!(!out.contains("kg_secret"));
    }
}
