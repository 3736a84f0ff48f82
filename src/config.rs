//! Loading the config file: text → [`yaml::Node`] tree (with lines) → `${ENV}`
//! substitution → typed [`Config`] → [`validate`]. Every error is collected
//! and reported at once as `FILE:LINE: path: message`.
//!
//! Compiling the validated config into a runtime lives in `crate::snapshot`,
//! which reports its own errors through the same [`FieldError`] type.

pub mod de;
pub mod emit;
pub mod model;
pub mod types;
pub mod validate;
pub mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

pub use model::*;
pub use types::{ByteSize, Cidr, Duration, Rate};

/// One problem with one field, before it is placed on a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Written `routes[0].upstream`; empty for the whole document.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A located config error.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub line: Option<u32>,
    pub path: String,
    pub message: String,
}

/// Every error found in one config source.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            match e.line {
                Some(line) => write!(f, "{}:{line}: ", self.source)?,
                None => write!(f, "{}: ", self.source)?,
            }
            // One error a line (SPEC section 8), whatever a message holds.
            let message = if e.message.contains('\n') {
                e.message.split_whitespace().collect::<Vec<_>>().join(" ")
            } else {
                e.message.clone()
            };
            if e.path.is_empty() {
                writeln!(f, "{message}")?;
            } else {
                writeln!(f, "{}: {message}", e.path)?;
            }
        }
        let n = self.errors.len();
        write!(f, "{n} error{}", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for ConfigErrors {}

/// A config that parsed, with the lines of its fields for later errors.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The document the config was read from, `${ENV}` substituted.
    pub document: yaml::Node,
    pub source: String,
    lines: HashMap<String, u32>,
}

impl Loaded {
    /// Places field errors found after loading (validation, compilation).
    pub fn locate(&self, errors: Vec<FieldError>) -> ConfigErrors {
        let mut errors: Vec<ConfigError> = errors
            .into_iter()
            .map(|e| ConfigError {
                line: self.line_of(&e.path),
                path: e.path,
                message: e.message,
            })
            .collect();
        errors.sort_by_key(|e| e.line.unwrap_or(0));
        ConfigErrors {
            source: self.source.clone(),
            errors,
        }
    }

    /// Frees a (large) loaded config piece by piece, yielding to request
    /// threads as it goes (see `crate::yielding`).
    pub fn release(mut self) {
        for entry in self.lines.drain() {
            drop(entry);
            crate::yielding::point();
        }
        for route in self.config.routes.drain(..) {
            drop(route);
            crate::yielding::point();
        }
    }

    /// The line of `path`, or of its nearest parent that has one.
    fn line_of(&self, path: &str) -> Option<u32> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// Reads and parses a config file (YAML or JSON), substituting the process environment.
/// The JSON Schema of the config file (draft 2020-12), derived from the
/// typed model: one source of truth for the parser, editors and docs.
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(model::Config);
    schema.insert("title".into(), "Portcullis config (portcullis.yaml)".into());
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// The configuration reference in Markdown, generated from the JSON Schema
/// (so from the typed model): every section, key, type and default.
pub fn reference_markdown() -> String {
    use serde_json::Value;
    let schema: Value = serde_json::from_str(&json_schema()).unwrap_or_default();
    let defs = schema["$defs"].as_object().cloned().unwrap_or_default();
    // Sections in the order a reader meets them (from the top, depth first),
    // each titled with the first place in the file it is found at.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                    out.push(r.trim_start_matches("#/$defs/").to_string());
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut order: Vec<(String, String)> = Vec::new();
    let mut queue = vec![("(top level)".to_string(), String::new())];
    while let Some((name, at)) = queue.pop() {
        if order.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let def = if name == "(top level)" {
            &schema
        } else {
            &defs[&name]
        };
        let mut next = Vec::new();
        if let Some(props) = def["properties"].as_object() {
            for (key, p) in props {
                let mut found = Vec::new();
                refs(p, &mut found);
                let list = if p["type"] == "array" || p["items"].is_object() {
                    "[]"
                } else {
                    ""
                };
                let path = if at.is_empty() {
                    format!("{key}{list}")
                } else {
                    format!("{at}.{key}{list}")
                };
                next.extend(found.into_iter().map(|f| (f, path.clone())));
            }
        }
        let mut found = Vec::new();
        refs(&def["anyOf"], &mut found);
        refs(&def["oneOf"], &mut found);
        next.extend(found.into_iter().map(|f| (f, at.clone())));
        order.push((name, at));
        queue.extend(next.into_iter().rev());
    }
    let mut out = String::from(
        "# Configuration reference (generated)\n\n\
         Generated from the typed config by `portcullis schema --markdown`; a\n\
         test keeps this file current. The guide with explanations and\n\
         examples is [configuration.md](configuration.md).\n",
    );
    for (name, at) in order {
        let def = if name == "(top level)" {
            &schema
        } else {
            &defs[&name]
        };
        if at.is_empty() {
            out.push_str(&format!("\n## {name}\n\n"));
        } else {
            out.push_str(&format!("\n## {name}\n\nAt `{at}`.\n\n"));
        }
        if let Some(d) = def["description"].as_str() {
            out.push_str(&format!("{}\n\n", d.replace('\n', " ")));
        }
        match def["properties"].as_object() {
            Some(props) => {
                out.push_str("| key | type | default | |\n|---|---|---|---|\n");
                let required: Vec<&str> = def["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for (key, p) in props {
                    let default = if required.contains(&key.as_str()) {
                        "required".to_string()
                    } else {
                        match p.get("default") {
                            None | Some(Value::Null) => "–".to_string(),
                            // As YAML writes it: `30s`, not `"30s"`.
                            Some(Value::String(d)) => format!("`{d}`"),
                            Some(d) => format!("`{d}`"),
                        }
                    };
                    let about = p["description"]
                        .as_str()
                        .unwrap_or("")
                        .replace('\n', " ")
                        .replace('|', "\\|");
                    out.push_str(&format!("| `{key}` | {} | {default} | {about} |\n", type_of(p)));
                }
            }
            None => out.push_str(&format!("{}\n", type_of(def))),
        }
    }
    out
}

/// A schema's type in words, with links to sections.
fn type_of(p: &serde_json::Value) -> String {
    use serde_json::Value;
    if let Some(r) = p["$ref"].as_str() {
        let name = r.trim_start_matches("#/$defs/");
        return format!("[{name}](#{})", name.to_lowercase());
    }
    if let Some(options) = p["anyOf"].as_array().or_else(|| p["oneOf"].as_array()) {
        let parts: Vec<String> = options
            .iter()
            .filter(|o| o["type"] != "null")
            .map(type_of)
            .collect();
        return parts.join(" or ");
    }
    if let Some(values) = p["enum"].as_array() {
        let names: Vec<String> = values
            .iter()
            .map(|v| format!("`{}`", v.as_str().map_or(v.to_string(), str::to_string)))
            .collect();
        return names.join(" \\| ");
    }
    let ty = match &p["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => String::new(),
    };
    match ty.as_str() {
        "array" => format!("list of {}", type_of(&p["items"])),
        "object" if p["additionalProperties"].is_object() => {
            format!("map of {}", type_of(&p["additionalProperties"]))
        }
        "string" if p["pattern"].is_string() => "string".to_string(),
        "" => "any".to_string(),
        t => t.to_string(),
    }
}

pub fn load_file(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = read_file(path)?;
    load_str(&text, &path.display().to_string(), &|name| {
        std::env::var(name).ok()
    })
}

/// The text of a config file, or the error that says why it cannot be read.
pub fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        source: path.display().to_string(),
        errors: vec![ConfigError {
            line: None,
            path: String::new(),
            message: format!("cannot read file: {e}"),
        }],
    })
}

/// Parses config text; `env` resolves `${NAME}`. Runs [`validate::validate`].
pub fn load_str(
    text: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let raw = parse_document(text, source)?;
    load_document(&raw, source, env)
}

/// Parses config text into its document tree, `${ENV}` references still
/// unexpanded (the form the admin API edits and writes back to the file).
pub fn parse_document(text: &str, source: &str) -> Result<yaml::Node, ConfigErrors> {
    yaml::parse(text).map_err(|e| ConfigErrors {
        source: source.to_string(),
        errors: vec![ConfigError {
            line: Some(e.line),
            path: String::new(),
            message: format!("syntax error: {}", e.message),
        }],
    })
}

/// Loads a document tree: `${ENV}` substitution from `env`, typed parsing,
/// validation. `raw` is left as it is.
pub fn load_document(
    raw: &yaml::Node,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        source: source.to_string(),
        errors,
    };
    let mut root = raw.clone();
    let mut env_errors = Vec::new();
    yaml::substitute_env(&mut root, &mut String::new(), env, &mut env_errors);
    let mut errors: Vec<ConfigError> = env_errors
        .into_iter()
        .map(|(path, line, message)| ConfigError {
            line: Some(line),
            path,
            message,
        })
        .collect();
    let unset = errors.len();
    let mut partial = Partial::default();
    partial.dropped.extend(errors.iter().map(|e| e.path.clone()));

    let config = parse_sections(&root, &mut errors, &mut partial);
    // A value left as `${NAME}` fails to read too: its field is reported once.
    if unset > 0 {
        let reading = errors.split_off(unset);
        let fields: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
        errors.extend(reading.into_iter().filter(|e| !fields.contains(&e.path)));
    }
    let Some(config) = config else {
        return Err(fail(errors));
    };
    let lines = de::line_index(&root);
    let loaded = Loaded {
        config,
        document: root,
        source: source.to_string(),
        lines,
    };
    // Fields that did not read are reported; the checks across fields and
    // the compiler's (patterns, plugin options, target URLs) also run on
    // the rest when nothing others refer to was lost, so one round of
    // fixes is enough. What a dropped field may have caused is not
    // reported, nor a second error for a field already named.
    if !partial.blocks_checks() {
        let mut problems: Vec<FieldError> = validate::validate(&loaded.config)
            .into_iter()
            .filter(|p| !partial.covers(&p.path))
            .collect();
        if errors.is_empty() && problems.is_empty() {
            return Ok(loaded);
        }
        let compiled = compile_errors(&loaded.config, &partial, &problems, &errors);
        problems.extend(compiled);
        errors.extend(loaded.locate(problems).errors);
    }
    errors.sort_by_key(|e| e.line.unwrap_or(0));
    Err(fail(errors))
}

/// What compiling the config (patterns, plugin options, target URLs)
/// finds besides the errors already named: the caller compiles a config
/// that passes, so these are only looked for when something else failed.
fn compile_errors(
    config: &Config,
    partial: &Partial,
    problems: &[FieldError],
    errors: &[ConfigError],
) -> Vec<FieldError> {
    let Err(compiled) = crate::snapshot::check(config) else {
        return Vec::new();
    };
    compiled
        .into_iter()
        .filter(|c| {
            !partial.covers(&c.path)
                && !problems.iter().any(|p| p.path == c.path)
                && !errors.iter().any(|e| e.path == c.path)
        })
        .collect()
}

/// At most this many errors are reported for one section or list item.
const MAX_ERRORS_PER_ITEM: usize = 50;

/// Deserializes `node` (found at `path`), recording its errors. serde stops
/// at an item's first bad field, so after each error the field it names is
/// dropped from a copy and the item is read again: every bad field is
/// reported, not only the first. A required field dropped that way ends
/// the search (its absence is a consequence, not another error), as does
/// an error that names no field (the item is wrong as a whole, or a list
/// item: dropping one would shift the indexes of the next).
///
/// What could be read without the bad fields is returned, their paths added
/// to `partial.dropped`, for the checks across fields to look at the rest;
/// `None` (the item lost) adds `path` to `partial.lost`.
fn every_error<T: serde::de::DeserializeOwned>(
    node: &yaml::Node,
    path: &str,
    record: &mut dyn FnMut(de::DeError),
    partial: &mut Partial,
) -> Option<T> {
    let mut error = match de::from_node(node, path) {
        Ok(v) => return Some(v),
        Err(e) => e,
    };
    let mut copy: Option<yaml::Node> = None;
    let mut dropped: Vec<String> = Vec::new();
    let read = 'search: {
        for _ in 0..MAX_ERRORS_PER_ITEM {
            let at = error.path.clone().unwrap_or_default();
            if dropped.contains(&at) {
                break 'search None;
            }
            record(error);
            let copy = copy.get_or_insert_with(|| node.clone());
            match at.strip_prefix(path) {
                Some(rel) if copy.remove_path(rel) => dropped.push(at),
                _ => break 'search None,
            }
            error = match de::from_node::<T>(copy, path) {
                Ok(v) => break 'search Some(v),
                Err(e) => e,
            };
        }
        None
    };
    if read.is_none() {
        partial.lost.push(path.to_string());
    }
    partial.dropped.extend(dropped);
    read
}

/// What reading left out of a config with errors.
#[derive(Default)]
struct Partial {
    /// Fields dropped for their errors (or, for a value left as `${NAME}`,
    /// read as that text).
    dropped: Vec<String>,
    /// Sections or list items that could not be read at all. Without an
    /// upstream, a route or a consumer the config would show consequences
    /// as errors (`unknown upstream`, shifted indexes), so the checks
    /// across fields wait for a config that reads; nothing refers to
    /// `server` or `admin`, so their loss only hides their own checks.
    lost: Vec<String>,
}

impl Partial {
    /// Whether an error at `path` may be a consequence of a dropped field:
    /// it is that field, inside it, or holds it (`a route needs
    /// `upstream`...` when `upstream` did not read).
    fn covers(&self, path: &str) -> bool {
        let within = |inner: &str, outer: &str| {
            outer.is_empty()
                || inner
                    .strip_prefix(outer)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        self.dropped.iter().any(|d| within(path, d) || within(d, path))
            || self.lost.iter().any(|l| within(path, l) || within(l, path))
    }

    /// Whether something other parts of the config may refer to was lost.
    fn blocks_checks(&self) -> bool {
        self.lost.iter().any(|l| {
            let section = l.split(['.', '[']).next().unwrap_or_default();
            !matches!(section, "server" | "admin")
        })
    }
}

/// Deserializes the top-level sections one by one (and list items one by
/// one) so one bad route does not hide the errors of the next.
fn parse_sections(root: &yaml::Node, errors: &mut Vec<ConfigError>, partial: &mut Partial) -> Option<Config> {
    use yaml::NodeKind;

    let NodeKind::Map(entries) = &root.kind else {
        errors.push(ConfigError {
            line: Some(root.line),
            path: String::new(),
            message: format!("the config must be a mapping, found {}", root.describe()),
        });
        partial.lost.push(String::new());
        return None;
    };
    const SECTIONS: &[&str] = &[
        "version",
        "server",
        "admin",
        "redis",
        "upstreams",
        "routes",
        "consumers",
        "plugins",
    ];
    let mut seen = std::collections::HashSet::new();
    for (k, _) in entries {
        let key = match &k.kind {
            NodeKind::Scalar { value, .. } => value.as_str(),
            _ => "?",
        };
        if !seen.insert(key) {
            errors.push(ConfigError {
                line: Some(k.line),
                path: key.to_string(),
                message: format!("duplicate key `{key}`: the section is given twice"),
            });
            continue;
        }
        if !SECTIONS.contains(&key) {
            let message = match de::did_you_mean(key, SECTIONS.iter().copied()) {
                Some(s) => format!("unknown key `{key}` (did you mean `{s}`?)"),
                None => format!("unknown key `{key}`; expected one of: {}", SECTIONS.join(", ")),
            };
            errors.push(ConfigError {
                line: Some(k.line),
                path: key.to_string(),
                message,
            });
        }
    }

    let mut record = |e: de::DeError| {
        errors.push(ConfigError {
            line: e.line,
            path: e.path.unwrap_or_default(),
            message: e.message,
        })
    };

    fn section<T: serde::de::DeserializeOwned + Default>(
        root: &yaml::Node,
        key: &str,
        record: &mut dyn FnMut(de::DeError),
        partial: &mut Partial,
    ) -> T {
        match root.get(key) {
            None => T::default(),
            Some(n) if n.is_null() => T::default(),
            Some(n) => every_error(n, key, record, partial).unwrap_or_default(),
        }
    }

    fn list<T: serde::de::DeserializeOwned>(
        root: &yaml::Node,
        key: &str,
        record: &mut dyn FnMut(de::DeError),
        partial: &mut Partial,
    ) -> Vec<T> {
        let Some(node) = root.get(key).filter(|n| !n.is_null()) else {
            return Vec::new();
        };
        let NodeKind::Seq(items) = &node.kind else {
            record(de::DeError::at(
                key,
                node.line,
                format!("expected a list, found {}", node.describe()),
            ));
            partial.lost.push(key.to_string());
            return Vec::new();
        };
        // Sized up front: a route's typed config is ~2 KiB, and growing a
        // vector of thousands of them copies megabytes in one go, between
        // two yield points of a reload.
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            crate::yielding::point();
            if let Some(v) = every_error(item, &format!("{key}[{i}]"), record, partial) {
                out.push(v);
            }
        }
        out
    }

    let version = match root.get("version") {
        None => {
            record(de::DeError::at(
                "version",
                root.line,
                "is required (write `version: 1`)",
            ));
            partial.dropped.push("version".into());
            0
        }
        Some(n) => de::from_node::<u32>(n, "version").unwrap_or_else(|e| {
            record(e);
            partial.dropped.push("version".into());
            0
        }),
    };
    let config = Config {
        version,
        server: section::<Option<ServerConfig>>(root, "server", &mut record, partial).unwrap_or_default(),
        admin: section(root, "admin", &mut record, partial),
        redis: section(root, "redis", &mut record, partial),
        upstreams: list(root, "upstreams", &mut record, partial),
        routes: list(root, "routes", &mut record, partial),
        consumers: list(root, "consumers", &mut record, partial),
        plugins: section(root, "plugins", &mut record, partial),
    };
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, ConfigErrors> {
        load_str(text, "test.yaml", &|n| (n == "UP").then(|| "users".to_string()))
    }

    #[test]
    fn every_section_of_the_spec_parses() {
        // Every section, every plugin and every capability: all built, so
        // the whole SPEC example parses and validates.
        let text = include_str!("../tests/fixtures/spec-full.yaml");
        if let Err(e) = load_str(text, "spec.yaml", &|_| Some("x".into())) {
            panic!("{e}");
        }
    }

    #[test]
    fn reports_every_error_with_line_and_path() {
        let text = "version: 1\nupstreams:\n  - name: users\n    targets: [{url: http://127.0.0.1:1}]\nroutes:\n  - name: a\n    match: {paths: [/a]}\n    upstrem: users\n  - name: b\n    match: {paths: [/b]}\n    upstream: user\n";
        let err = load(text).unwrap_err();
        let s = err.to_string();
        assert!(
            s.contains("test.yaml:8: routes[0].upstrem: unknown key `upstrem` (did you mean `upstream`?)"),
            "{s}"
        );
        // The second route's error is reported too (semantic errors run once parsing succeeds,
        // so fix the first and check the second).
        let text = text.replace("upstrem", "upstream");
        let s = load(&text).unwrap_err().to_string();
        assert!(
            s.contains("test.yaml:11: routes[1].upstream: unknown upstream `user` (did you mean `users`?)"),
            "{s}"
        );
    }

    #[test]
    fn several_bad_routes_are_all_reported() {
        let text = "version: 1\nroutes:\n  - name: a\n    prority: 1\n  - name: b\n    timeout: 5 seconds\n";
        let err = load(text).unwrap_err();
        assert_eq!(err.errors.len(), 2, "{err}");
        assert_eq!(err.errors[0].path, "routes[0].prority");
        assert_eq!(err.errors[1].path, "routes[1].timeout");
        assert_eq!(err.errors[1].line, Some(6));
        assert!(err.to_string().ends_with("2 errors"));
    }

    #[test]
    fn every_bad_field_of_one_item_is_reported() {
        let text = "version: 1\nserver:\n  limits:\n    max_request_body_bytes: 10XB\n    header_read_timeout: 10\n    idle_timout: 5s\nroutes:\n  - name: a\n    match: {paths: [/a], methds: [GET]}\n    timeout: soon\n    upstream: u\n";
        let err = load(text).unwrap_err();
        let paths: Vec<_> = err.errors.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert_eq!(
            paths,
            [
                ("server.limits.max_request_body_bytes", Some(4)),
                ("server.limits.header_read_timeout", Some(5)),
                ("server.limits.idle_timout", Some(6)),
                ("routes[0].match.methds", Some(9)),
                ("routes[0].timeout", Some(10)),
                // And, in the same report, what the checks across fields find.
                ("routes[0].upstream", Some(11)),
            ],
            "{err}"
        );
        // A required field that is wrong is one error, not also "missing".
        let err = load("version: 1\nroutes:\n  - name: a\n    match: 5\n    timeout: soon\n").unwrap_err();
        let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["routes[0].match", "routes[0].timeout"], "{err}");
        assert!(!err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn an_empty_circuit_breaker_takes_the_spec_example_values() {
        let loaded = load(
            "version: 1\nupstreams:\n  - name: u\n    targets: [{url: http://127.0.0.1:1}]\n    circuit_breaker: {open_for: 5s}\n",
        )
        .unwrap();
        let b = loaded.config.upstreams[0].circuit_breaker.clone().unwrap();
        assert_eq!(b.failure_rate, 0.5);
        assert_eq!(b.min_requests, 20);
        assert_eq!(b.window, types::Duration::secs(10));
        assert_eq!(b.open_for, types::Duration::secs(5));
        assert_eq!(b.half_open_requests, 3);
    }

    #[test]
    fn errors_inside_one_or_many_are_precise() {
        let err =
            load("version: 1\nplugins:\n  rate_limit: [{rate: 10/s, burst: 5}, {rate: 10/x, burst: 5}]\n")
                .unwrap_err();
        assert_eq!(err.errors[0].path, "plugins.rate_limit[1].rate", "{err}");
        assert!(err.errors[0].message.contains("invalid rate"), "{err}");
        let err = load("version: 1\nplugins:\n  rate_limit: {rate: 10/s, burts: 5}\n").unwrap_err();
        assert_eq!(err.errors[0].path, "plugins.rate_limit.burts", "{err}");
    }

    #[test]
    fn env_substitution_and_missing_variables() {
        let ok = load("version: 1\nupstreams:\n  - name: ${UP}\n    targets: [{url: http://127.0.0.1:1}]\n")
            .unwrap();
        assert_eq!(ok.config.upstreams[0].name, "users");
        let err = load("version: 1\nserver:\n  limits:\n    max_connections: ${NOPE}\n").unwrap_err();
        assert_eq!(err.errors[0].path, "server.limits.max_connections");
        assert_eq!(err.errors[0].line, Some(4));
        assert!(err.errors[0].message.contains("NOPE"));
    }

    #[test]
    fn unknown_top_level_key_and_syntax_error() {
        let err = load("version: 1\nrouts: []\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("test.yaml:2: routs: unknown key `routs` (did you mean `routes`?)")
        );
        let err = load("version: 1\nroutes: [\n").unwrap_err();
        assert!(err.to_string().contains("syntax error"));
        let err = load("server: {}\n").unwrap_err();
        assert!(err.to_string().contains("version: is required"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Whatever the text, loading answers with a config or located errors, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "[ -~\n]{0,200}") {
            let _ = load(&text);
        }

        /// Mutations of a valid config: same.
        #[test]
        fn mutated_configs_never_panic(cut in 0usize..8000, junk in "[ -~\n]{0,12}") {
            let base = include_str!("../tests/fixtures/spec-full.yaml");
            let cut = cut.min(base.len());
            let cut = (0..=cut).rev().find(|c| base.is_char_boundary(*c)).unwrap_or(0);
            let text = format!("{}{junk}{}", &base[..cut], &base[cut..]);
            if let Ok(loaded) = load_str(&text, "m.yaml", &|_| Some("x".into())) {
                let _ = crate::snapshot::check(&loaded.config);
            }
        }
    }

    #[test]
    fn duplicate_keys_are_errors_at_every_level() {
        let err = load("version: 1\nroutes: []\nroutes: []\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("test.yaml:3: routes: duplicate key `routes`"),
            "{err}"
        );
        let err = load("version: 1\nroutes:\n  - name: a\n    name: b\n    respond: {}\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("test.yaml:4: routes[0].name: duplicate key `name`"),
            "{err}"
        );
    }

    #[test]
    fn json_is_accepted() {
        let ok = load(r#"{"version": 1, "routes": [{"name": "p", "match": {"paths": ["= /p"]}, "respond": {"body": "x"}}]}"#).unwrap();
        assert_eq!(ok.config.routes[0].respond.as_ref().unwrap().body, "x");
    }
}
