//! The `json` part of `request_transform` and `response_transform`: edits
//! of a JSON body by JSON pointer (RFC 6901), in the order
//!
//! `allow` (keep only these) → `remove` → `rename` → `add` (creates missing
//! parent objects; `/-` appends to an array)
//!
//! so what the other side sent is filtered first and the gateway's own
//! additions always stay. Only bodies labelled JSON (`application/json`,
//! `…+json`) are touched, read whole up to a bound; everything else streams.

use serde_json::{Map, Value};

/// One pointer, split into its unescaped reference tokens.
#[derive(Debug, Clone)]
struct Pointer(Vec<String>);

impl Pointer {
    fn parse(p: &str) -> Result<Pointer, String> {
        let Some(rest) = p.strip_prefix('/') else {
            return Err(format!("`{p}` is not a JSON pointer (it starts with `/`)"));
        };
        Ok(Pointer(
            rest.split('/')
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect(),
        ))
    }
}

pub struct JsonOps {
    allow: Vec<Pointer>,
    remove: Vec<Pointer>,
    rename: Vec<(Pointer, Pointer)>,
    add: Vec<(Pointer, Value)>,
}

impl JsonOps {
    /// Errors name the field under `json`.
    pub fn new(cfg: &crate::config::JsonTransformConfig) -> Result<JsonOps, (String, String)> {
        let one = |field: String, p: &str| Pointer::parse(p).map_err(|e| (field, e));
        let list = |name: &str, items: &[String]| {
            items
                .iter()
                .enumerate()
                .map(|(i, p)| one(format!("{name}[{i}]"), p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(JsonOps {
            allow: list("allow", &cfg.allow)?,
            remove: list("remove", &cfg.remove)?,
            rename: cfg
                .rename
                .iter()
                .map(|(from, to)| {
                    Ok::<_, (String, String)>((
                        one(format!("rename.{from}"), from)?,
                        one(format!("rename.{from}"), to)?,
                    ))
                })
                .collect::<Result<_, _>>()?,
            add: cfg
                .add
                .iter()
                .map(|(p, v)| Ok::<_, (String, String)>((one(format!("add.{p}"), p)?, v.clone())))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn apply(&self, doc: &mut Value) {
        if !self.allow.is_empty() {
            let mut kept = Value::Object(Map::new());
            for p in &self.allow {
                if let Some(v) = get(doc, &p.0) {
                    put(&mut kept, &p.0, v.clone());
                }
            }
            *doc = kept;
        }
        for p in &self.remove {
            take(doc, &p.0);
        }
        for (from, to) in &self.rename {
            if let Some(v) = take(doc, &from.0) {
                put(doc, &to.0, v);
            }
        }
        for (p, v) in &self.add {
            put(doc, &p.0, v.clone());
        }
    }
}

fn get<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    tokens.iter().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get(t),
        Value::Array(a) => a.get(t.parse::<usize>().ok()?),
        _ => None,
    })
}

fn take(doc: &mut Value, tokens: &[String]) -> Option<Value> {
    let (last, parents) = tokens.split_last()?;
    let parent = parents.iter().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get_mut(t),
        Value::Array(a) => a.get_mut(t.parse::<usize>().ok()?),
        _ => None,
    })?;
    match parent {
        Value::Object(m) => m.remove(last),
        Value::Array(a) => {
            let i = last.parse::<usize>().ok()?;
            (i < a.len()).then(|| a.remove(i))
        }
        _ => None,
    }
}

/// Sets `value` at the pointer, creating missing parents as objects (a
/// parent that is neither object nor array is replaced by an object).
fn put(doc: &mut Value, tokens: &[String], value: Value) {
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return;
    };
    let mut v = doc;
    for t in parents {
        let index = match &*v {
            Value::Array(a) => t.parse::<usize>().ok().filter(|&i| i < a.len()),
            _ => None,
        };
        v = match (index, v) {
            (Some(i), Value::Array(a)) => &mut a[i],
            (_, v) => {
                if !v.is_object() {
                    *v = Value::Object(Map::new());
                }
                match v {
                    Value::Object(m) => m.entry(t.clone()).or_insert_with(|| Value::Object(Map::new())),
                    _ => unreachable!("made an object above"),
                }
            }
        };
    }
    match v {
        Value::Array(a) if last == "-" => a.push(value),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => a[i] = value,
            Ok(i) if i == a.len() => a.push(value),
            _ => {}
        },
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        other => {
            let mut m = Map::new();
            m.insert(last.clone(), value);
            *other = Value::Object(m);
        }
    }
}

/// Whether a `Content-Type` names JSON.
pub fn is_json(content_type: Option<&http::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .is_some_and(|t| {
            t == "application/json" || t.split_once('/').is_some_and(|(_, s)| s.ends_with("+json"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JsonTransformConfig;
    use serde_json::json;

    #[test]
    fn allow_remove_rename_add() {
        let cfg = JsonTransformConfig {
            allow: vec![
                "/user/name".into(),
                "/user/email".into(),
                "/items".into(),
                "/missing".into(),
            ],
            remove: vec!["/user/email".into(), "/items/0".into()],
            rename: [("/user/name".to_string(), "/profile/display_name".to_string())].into(),
            add: [
                ("/meta/source".to_string(), json!("gateway")),
                ("/items/-".to_string(), json!({"sku": "extra"})),
            ]
            .into(),
        };
        let ops = JsonOps::new(&cfg).unwrap();
        let mut doc = json!({
            "user": {"name": "Ann", "email": "a@x", "password_hash": "secret"},
            "items": [{"sku": "a"}, {"sku": "b"}],
            "internal": true
        });
        ops.apply(&mut doc);
        assert_eq!(
            doc,
            json!({
                "user": {},
                "profile": {"display_name": "Ann"},
                "items": [{"sku": "b"}, {"sku": "extra"}],
                "meta": {"source": "gateway"}
            })
        );
        let bad = JsonTransformConfig {
            remove: vec!["user".into()],
            ..Default::default()
        };
        assert_eq!(JsonOps::new(&bad).err().unwrap().0, "remove[0]");
    }

    #[test]
    fn escaped_tokens() {
        let mut doc = json!({"a/b": {"c~d": 1}});
        assert_eq!(
            take(&mut doc, &Pointer::parse("/a~1b/c~0d").unwrap().0),
            Some(json!(1))
        );
    }
}
