//! Writes a document tree back out: as YAML (the config file the admin API
//! persists) or as JSON (what `GET /config` shows), and redacts secrets.
//!
//! Scalar types survive the round trip: a plain scalar (`5`, `true`, `null`)
//! is written plain, and every other string is double-quoted, so a quoted
//! `"5"` stays a string.

use std::fmt::Write;

use super::yaml::{Node, NodeKind};

/// What replaces a secret in every output.
pub const REDACTED: &str = "<redacted>";

/// The document as block-style YAML, ending in a newline.
pub fn to_yaml(node: &Node) -> String {
    let mut out = String::new();
    match &node.kind {
        NodeKind::Map(e) if !e.is_empty() => yaml_map(e, 0, &mut out),
        NodeKind::Seq(items) if !items.is_empty() => yaml_seq(items, 0, &mut out),
        _ => {
            yaml_inline(node, &mut out);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Empty collections and scalars, which fit on the key's line.
fn yaml_inline(node: &Node, out: &mut String) {
    match &node.kind {
        NodeKind::Scalar { value, plain } => scalar(value, *plain, out),
        NodeKind::Seq(_) => out.push_str("[]"),
        NodeKind::Map(_) => out.push_str("{}"),
    }
}

/// A key as a field name reads: plain when it is a bare word, even if it
/// came quoted (from a JSON body sent to the admin API), so the file the
/// admin API rewrites reads `match:`, not `"match":`.
fn yaml_key(key: &Node, out: &mut String) {
    match &key.kind {
        NodeKind::Scalar { value, .. } if is_bare_word(value) => out.push_str(value),
        _ => yaml_inline(key, out),
    }
}

/// A letter, then letters, digits, `_`, `-` or `.`; and not a word YAML
/// would read as a boolean or null.
fn is_bare_word(v: &str) -> bool {
    v.starts_with(|c: char| c.is_ascii_alphabetic())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !["true", "false", "null", "yes", "no", "on", "off", "y", "n"]
            .iter()
            .any(|w| v.eq_ignore_ascii_case(w))
}

fn is_block(node: &Node) -> bool {
    match &node.kind {
        NodeKind::Seq(items) => !items.is_empty(),
        NodeKind::Map(e) => !e.is_empty(),
        NodeKind::Scalar { .. } => false,
    }
}

fn yaml_map(entries: &[(Node, Node)], depth: usize, out: &mut String) {
    for (k, v) in entries {
        crate::yielding::point();
        indent(out, depth);
        yaml_key(k, out);
        out.push(':');
        if is_block(v) {
            out.push('\n');
            match &v.kind {
                NodeKind::Map(e) => yaml_map(e, depth + 2, out),
                NodeKind::Seq(items) => yaml_seq(items, depth + 2, out),
                NodeKind::Scalar { .. } => {}
            }
        } else {
            out.push(' ');
            yaml_inline(v, out);
            out.push('\n');
        }
    }
}

fn yaml_seq(items: &[Node], depth: usize, out: &mut String) {
    for item in items {
        indent(out, depth);
        out.push('-');
        match &item.kind {
            NodeKind::Map(e) if !e.is_empty() => {
                // The first entry shares the dash's line; the rest align under it.
                let mut first = String::new();
                yaml_map(e, depth + 2, &mut first);
                out.push(' ');
                out.push_str(&first[depth + 2..]);
            }
            NodeKind::Seq(inner) if !inner.is_empty() => {
                out.push('\n');
                yaml_seq(inner, depth + 2, out);
            }
            _ => {
                out.push(' ');
                yaml_inline(item, out);
                out.push('\n');
            }
        }
    }
}

/// A scalar: plain when it was plain and needs no quoting, else double-quoted.
fn scalar(value: &str, plain: bool, out: &mut String) {
    if plain && safe_plain(value) {
        out.push_str(value);
    } else {
        // A JSON string is a valid YAML double-quoted scalar.
        out.push_str(&serde_json::to_string(value).unwrap_or_default());
    }
}

/// Conservative: only text that reads back as the same plain scalar in block context.
fn safe_plain(v: &str) -> bool {
    let Some(first) = v.chars().next() else {
        return true; // an empty plain scalar is null
    };
    let special_start = matches!(
        first,
        '-' | '?'
            | ':'
            | ','
            | '['
            | ']'
            | '{'
            | '}'
            | '#'
            | '&'
            | '*'
            | '!'
            | '|'
            | '>'
            | '\''
            | '"'
            | '%'
            | '@'
            | '`'
            | ' '
    );
    // `-5` and `-1.5` are numbers and must stay so.
    let negative_number =
        first == '-' && v[1..].chars().all(|c| c.is_ascii_digit() || c == '.') && v.len() > 1;
    (!special_start || negative_number)
        && !v.ends_with([' ', ':'])
        && !v.contains(": ")
        && !v.contains(" #")
        && v.chars()
            .all(|c| c.is_ascii_graphic() || c == ' ' || (!c.is_control() && !c.is_ascii()))
}

/// The document as JSON text (keys in document order), with secrets
/// replaced by [`REDACTED`] when `redact` is set.
pub fn to_json(node: &Node, redact: bool) -> String {
    let mut out = String::new();
    json(node, &mut Vec::new(), redact, &mut out);
    out
}

fn json<'a>(node: &'a Node, path: &mut Vec<&'a str>, redact: bool, out: &mut String) {
    crate::yielding::point();
    match &node.kind {
        NodeKind::Scalar { value, plain } => {
            if redact && is_secret(path, value) {
                out.push_str(&serde_json::to_string(&redacted_value(path, value)).unwrap_or_default());
            } else if *plain {
                plain_json(value, out);
            } else {
                out.push_str(&serde_json::to_string(value).unwrap_or_default());
            }
        }
        NodeKind::Seq(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                path.push("[]");
                json(item, path, redact, out);
                path.pop();
            }
            out.push(']');
        }
        NodeKind::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let key = match &k.kind {
                    NodeKind::Scalar { value, .. } => value.as_str(),
                    _ => "?",
                };
                let _ = write!(out, "{}:", serde_json::to_string(key).unwrap_or_default());
                path.push(key);
                json(v, path, redact, out);
                path.pop();
            }
            out.push('}');
        }
    }
}

/// A plain YAML scalar as JSON, by the YAML 1.2 core schema.
fn plain_json(v: &str, out: &mut String) {
    match v {
        "" | "~" | "null" | "Null" | "NULL" => out.push_str("null"),
        "true" | "True" | "TRUE" => out.push_str("true"),
        "false" | "False" | "FALSE" => out.push_str("false"),
        _ => {
            let numeric = v.parse::<i64>().is_ok()
                || v.parse::<f64>().is_ok_and(|f| f.is_finite())
                    && v.bytes()
                        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
            if numeric {
                out.push_str(v);
            } else {
                out.push_str(&serde_json::to_string(v).unwrap_or_default());
            }
        }
    }
}

/// Whether the value at `path` (map keys, `[]` for list items) is a secret:
/// tokens, passwords, HMAC and JWT secrets, OAuth client secrets, API keys,
/// private keys, and credentials inside URLs.
fn is_secret(path: &[&str], value: &str) -> bool {
    let Some(&key) = path.last() else {
        return false;
    };
    match key {
        "token" | "secret" | "client_secret" | "password" => true,
        // An API key; `tls.key` and `client_key` are file paths, not secrets.
        "key" => path.contains(&"api_keys"),
        "pem" => path.contains(&"signing_key") || value.contains("PRIVATE KEY"),
        "url" | "[]" => url_password(value).is_some(),
        _ => false,
    }
}

/// The replacement: a URL keeps everything but its password.
fn redacted_value(path: &[&str], value: &str) -> String {
    if matches!(path.last(), Some(&"url") | Some(&"[]"))
        && let Some((before, after)) = url_password(value)
    {
        return format!("{}{REDACTED}{}", &value[..before], &value[after..]);
    }
    REDACTED.to_string()
}

/// The byte range of the password in `scheme://user:password@host`.
fn url_password(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let auth_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let at = url[start..auth_end].rfind('@')? + start;
    let colon = url[start..at].find(':')? + start;
    (colon + 1 < at).then_some((colon + 1, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::parse;

    #[test]
    fn yaml_round_trip_keeps_structure_and_types() {
        let text = "version: 1\nserver:\n  listeners:\n    - name: a\n      address: 127.0.0.1:8080\n  trusted_proxies: []\nroutes:\n  - name: \"5\"\n    match: {paths: ['= /p', /x]}\n    respond: {status: 200, body: 'a: b # c', headers: {}}\n    priority: -3\nlists: [[1, 2], [], {}]\nempty:\n";
        let node = parse(text).unwrap();
        let out = to_yaml(&node);
        let back = parse(&out).unwrap();
        assert_eq!(to_json(&node, false), to_json(&back, false), "{out}");
        assert!(to_json(&back, false).contains(r#""name":"5""#));
        assert!(to_json(&back, false).contains(r#""priority":-3"#));
    }

    #[test]
    fn keys_from_json_are_written_as_bare_words() {
        // What the admin API persists after a JSON `PUT /routes/r2`.
        let node = parse(
            r#"{"name": "r2", "match": {"paths": ["/two"]}, "set": {"X-A": "1", "on": "2", "5": "3"}}"#,
        )
        .unwrap();
        let out = to_yaml(&node);
        assert_eq!(
            out,
            "name: \"r2\"\nmatch:\n  paths:\n    - \"/two\"\nset:\n  X-A: \"1\"\n  \"on\": \"2\"\n  \"5\": \"3\"\n"
        );
        assert_eq!(to_json(&parse(&out).unwrap(), false), to_json(&node, false));
    }

    #[test]
    fn json_maps_plain_scalars_by_type() {
        let node = parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: 10s\ng: 0x1F\n").unwrap();
        assert_eq!(
            to_json(&node, false),
            r#"{"a":1,"b":"1","c":true,"d":null,"e":1.5,"f":"10s","g":"0x1F"}"#
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let text = "admin: {token: t0k, address: 127.0.0.1:1}\nredis: {url: 'redis://:pw@127.0.0.1:6379/0'}\nconsumers:\n  - name: c\n    api_keys: [{key: k1}, {key_sha256: abc}]\n    hmac: [{key_id: i, secret: s3}]\nserver:\n  listeners:\n    - tls: {certificates: [{cert: c.pem, key: c.key}]}\n";
        let out = to_json(&parse(text).unwrap(), true);
        for secret in ["t0k", "pw", "k1", "s3"] {
            assert!(
                !out.contains(&format!("\"{secret}\"")) && !out.contains(&format!(":{secret}@")),
                "{secret} in {out}"
            );
        }
        assert!(
            out.contains(r#""url":"redis://:<redacted>@127.0.0.1:6379/0""#),
            "{out}"
        );
        assert!(
            out.contains(r#""key":"c.key""#),
            "a file path is not a secret: {out}"
        );
        assert!(out.contains(r#""key_id":"i""#));
    }
}
