//! serde `Deserializer` over a [`Node`] tree: typed structs come out, and every
//! error carries the dotted path (`routes[0].upstream`) and line where it arose.

use std::fmt;

use serde::de::{self, DeserializeSeed, Error as _, IntoDeserializer, Visitor};

use super::yaml::{Node, NodeKind};

/// A deserialization error located in the document.
#[derive(Debug, Clone)]
pub struct DeError {
    pub path: Option<String>,
    pub line: Option<u32>,
    pub message: String,
    /// Set by `missing_field`: the key is appended to the path when located.
    missing: Option<&'static str>,
}

impl DeError {
    /// An error already placed at `path` on `line`.
    pub fn at(path: &str, line: u32, message: impl Into<String>) -> Self {
        DeError {
            path: Some(path.to_string()),
            line: Some(line),
            message: message.into(),
            missing: None,
        }
    }

    fn located(mut self, path: &str, line: u32) -> Self {
        if self.path.is_none() {
            let mut p = path.to_string();
            if let Some(key) = self.missing {
                if !p.is_empty() {
                    p.push('.');
                }
                p.push_str(key);
            }
            self.path = Some(p);
            self.line = Some(line);
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            path: None,
            line: None,
            message: msg.to_string(),
            missing: None,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let message = match did_you_mean(field, expected.iter().copied()) {
            Some(s) => format!("unknown key `{field}` (did you mean `{s}`?)"),
            None => format!("unknown key `{field}`; expected one of: {}", expected.join(", ")),
        };
        Self::custom(message)
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let message = match did_you_mean(variant, expected.iter().copied()) {
            Some(s) => format!("unknown value `{variant}` (did you mean `{s}`?)"),
            None => format!(
                "unknown value `{variant}`; expected one of: {}",
                expected.join(", ")
            ),
        };
        Self::custom(message)
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            missing: Some(field),
            ..Self::custom("is required")
        }
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a
/// typo, or else one that `word` only dresses up with another gateway's
/// prefix or suffix (`allow_origins` for `origins`, `max_age_seconds` for
/// `max_age`).
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let max = (word.len() / 3).max(2);
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
        .or_else(|| {
            candidates
                .iter()
                .filter(|c| c.len() >= 4)
                .filter(|c| {
                    word.strip_suffix(**c).is_some_and(|rest| rest.ends_with('_'))
                        || word.strip_prefix(**c).is_some_and(|rest| rest.starts_with('_'))
                })
                .max_by_key(|c| c.len())
                .copied()
        })
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Deserializes `T` from `node`, locating errors under `path`.
pub fn from_node<T: de::DeserializeOwned>(node: &Node, path: &str) -> Result<T, DeError> {
    T::deserialize(NodeDe {
        node,
        path: path.to_string(),
    })
    .map_err(|e| e.located(path, node.line))
}

struct NodeDe<'a> {
    node: &'a Node,
    path: String,
}

impl<'a> NodeDe<'a> {
    fn scalar(&self) -> Result<&'a str, DeError> {
        match &self.node.kind {
            NodeKind::Scalar { value, .. } => Ok(value),
            _ => Err(self.invalid("a scalar")),
        }
    }

    fn invalid(&self, expected: &str) -> DeError {
        DeError::custom(format!("expected {expected}, found {}", self.node.describe()))
            .located(&self.path, self.node.line)
    }

    fn parse<T: std::str::FromStr>(&self, what: &str) -> Result<T, DeError> {
        let s = self.scalar()?;
        s.trim().parse().map_err(|_| {
            DeError::custom(format!("expected {what}, found {s:?}")).located(&self.path, self.node.line)
        })
    }

    fn loc<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|e| e.located(&self.path, self.node.line))
    }
}

macro_rules! parse_number {
    ($($method:ident => $visit:ident : $ty:ty, $what:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let v: $ty = self.parse($what)?;
            self.loc(visitor.$visit(v))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            NodeKind::Scalar { value, plain: true } => {
                if self.node.is_null() {
                    visitor.visit_unit()
                } else if let Ok(b) = value.parse::<bool>() {
                    visitor.visit_bool(b)
                } else if let Ok(i) = value.parse::<i64>() {
                    visitor.visit_i64(i)
                } else if let Ok(u) = value.parse::<u64>() {
                    visitor.visit_u64(u)
                } else if let Some(f) = value.parse::<f64>().ok().filter(|_| looks_like_float(value)) {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(value)
                }
            }
            NodeKind::Scalar { value, plain: false } => visitor.visit_str(value),
            NodeKind::Seq(_) => return self.deserialize_seq(visitor),
            NodeKind::Map(_) => return self.deserialize_map(visitor),
        };
        self.loc(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let v: bool = self.parse("true or false")?;
        self.loc(visitor.visit_bool(v))
    }

    parse_number! {
        deserialize_i8 => visit_i8: i8, "a small integer";
        deserialize_i16 => visit_i16: i16, "an integer";
        deserialize_i32 => visit_i32: i32, "an integer";
        deserialize_i64 => visit_i64: i64, "an integer";
        deserialize_u8 => visit_u8: u8, "a small non-negative integer";
        deserialize_u16 => visit_u16: u16, "a non-negative integer up to 65535";
        deserialize_u32 => visit_u32: u32, "a non-negative integer";
        deserialize_u64 => visit_u64: u64, "a non-negative integer";
        deserialize_f32 => visit_f32: f32, "a number";
        deserialize_f64 => visit_f64: f64, "a number";
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let s = self.scalar()?;
        self.loc(visitor.visit_str(s))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let s = self.scalar()?;
        self.loc(visitor.visit_bytes(s.as_bytes()))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            self.loc(visitor.visit_none())
        } else {
            let (path, line) = (self.path.clone(), self.node.line);
            visitor.visit_some(self).map_err(|e| e.located(&path, line))
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            self.loc(visitor.visit_unit())
        } else {
            Err(self.invalid("null"))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let (path, line) = (self.path.clone(), self.node.line);
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| e.located(&path, line))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Seq(items) => {
                let access = SeqAccess {
                    items: items.iter().enumerate(),
                    path: &self.path,
                };
                self.loc(visitor.visit_seq(access))
            }
            _ => Err(self.invalid("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Map(entries) => {
                // A repeated key would otherwise silently keep one of its values.
                let mut seen = std::collections::HashSet::new();
                for (k, _) in entries {
                    if !seen.insert(key_text(k)) {
                        let path = child_path(&self.path, key_text(k));
                        return Err(DeError::at(
                            &path,
                            k.line,
                            format!("duplicate key `{}`", key_text(k)),
                        ));
                    }
                }
                let access = MapAccess {
                    entries: entries.iter(),
                    value: None,
                    path: &self.path,
                };
                self.loc(visitor.visit_map(access))
            }
            _ => Err(self.invalid("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Scalar { value, .. } => {
                let r = visitor.visit_enum(value.as_str().into_deserializer());
                self.loc(r)
            }
            NodeKind::Map(entries) if entries.len() == 1 => {
                let (k, v) = &entries[0];
                let access = EnumAccess {
                    key: k,
                    value: v,
                    path: &self.path,
                };
                self.loc(visitor.visit_enum(access))
            }
            _ => Err(self.invalid("a name or a mapping with one key")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

fn looks_like_float(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
}

fn key_text(node: &Node) -> &str {
    match &node.kind {
        NodeKind::Scalar { value, .. } => value,
        _ => "?",
    }
}

pub fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

struct SeqAccess<'a, I> {
    items: I,
    path: &'a str,
}

impl<'de, 'a, I: Iterator<Item = (usize, &'a Node)>> de::SeqAccess<'de> for SeqAccess<'a, I> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            None => Ok(None),
            Some((i, node)) => {
                let path = format!("{}[{i}]", self.path);
                let r = seed.deserialize(NodeDe {
                    node,
                    path: path.clone(),
                });
                r.map(Some).map_err(|e| e.located(&path, node.line))
            }
        }
    }
}

struct MapAccess<'a, I> {
    entries: I,
    value: Option<(&'a Node, String)>,
    path: &'a str,
}

impl<'de, 'a, I: Iterator<Item = &'a (Node, Node)>> de::MapAccess<'de> for MapAccess<'a, I> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            None => Ok(None),
            Some((k, v)) => {
                let path = child_path(self.path, key_text(k));
                let r = seed.deserialize(NodeDe {
                    node: k,
                    path: path.clone(),
                });
                let key = r.map_err(|e| e.located(&path, k.line))?;
                self.value = Some((v, path));
                Ok(Some(key))
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, DeError> {
        let (node, path) = self.value.take().expect("value after key");
        seed.deserialize(NodeDe {
            node,
            path: path.clone(),
        })
        .map_err(|e| e.located(&path, node.line))
    }
}

struct EnumAccess<'a> {
    key: &'a Node,
    value: &'a Node,
    path: &'a str,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = DeError;
    type Variant = NodeDe<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, NodeDe<'a>), DeError> {
        let path = child_path(self.path, key_text(self.key));
        let v = seed.deserialize(NodeDe {
            node: self.key,
            path: path.clone(),
        })?;
        Ok((
            v,
            NodeDe {
                node: self.value,
                path,
            },
        ))
    }
}

impl<'de> de::VariantAccess<'de> for NodeDe<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, DeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

/// Every node's path mapped to its line, for errors found after deserialization.
pub fn line_index(node: &Node) -> std::collections::HashMap<String, u32> {
    fn walk(node: &Node, path: String, out: &mut std::collections::HashMap<String, u32>) {
        crate::yielding::point();
        match &node.kind {
            NodeKind::Scalar { .. } => {}
            NodeKind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{path}[{i}]"), out);
                }
            }
            NodeKind::Map(entries) => {
                for (k, v) in entries {
                    walk(v, child_path(&path, key_text(k)), out);
                }
            }
        }
        out.insert(path, node.line);
    }
    fn count(node: &Node) -> usize {
        crate::yielding::point();
        1 + match &node.kind {
            NodeKind::Scalar { .. } => 0,
            NodeKind::Seq(items) => items.iter().map(count).sum(),
            NodeKind::Map(entries) => entries.iter().map(|(_, v)| count(v)).sum(),
        }
    }
    // Sized up front: rehashing a map of 100,000 paths as it grows takes
    // milliseconds in one go, between two yield points of a reload.
    let mut out = std::collections::HashMap::with_capacity(count(node));
    walk(node, String::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::parse;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only deserialized
    struct Inner {
        port: u16,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only deserialized
    struct Outer {
        items: Vec<Inner>,
    }

    #[test]
    fn unknown_key_names_path_line_and_suggestion() {
        let n = parse("items:\n  - port: 1\n  - prot: 2\n").unwrap();
        let e = from_node::<Outer>(&n, "").unwrap_err();
        assert_eq!(e.path.as_deref(), Some("items[1].prot"));
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("did you mean `port`"), "{}", e.message);
    }

    #[test]
    fn bad_value_and_missing_key_are_located() {
        let n = parse("items:\n  - port: 99999\n").unwrap();
        let e = from_node::<Outer>(&n, "").unwrap_err();
        assert_eq!(e.path.as_deref(), Some("items[0].port"));
        assert_eq!(e.line, Some(2));
        let n = parse("items:\n  - tags: [a]\n").unwrap();
        let e = from_node::<Outer>(&n, "").unwrap_err();
        assert_eq!(e.path.as_deref(), Some("items[0].port"));
        assert_eq!(e.message, "is required");
    }

    #[test]
    fn duplicate_map_keys_are_refused() {
        let n = parse("a: {y: 1}\nb:\n  x: 1\n  x: 2\n").unwrap();
        let e =
            from_node::<std::collections::BTreeMap<String, std::collections::BTreeMap<String, u32>>>(&n, "")
                .unwrap_err();
        assert_eq!(e.path.as_deref(), Some("b.x"));
        assert_eq!(e.line, Some(4));
        assert_eq!(e.message, "duplicate key `x`");
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("upstrem", ["upstream", "routes"]), Some("upstream"));
        assert_eq!(did_you_mean("zzzzzz", ["upstream", "routes"]), None);
        let cors = ["origins", "methods", "headers", "expose_headers", "max_age"];
        assert_eq!(did_you_mean("allow_origins", cors), Some("origins"));
        assert_eq!(
            did_you_mean("access_control_expose_headers", cors),
            Some("expose_headers")
        );
        assert_eq!(did_you_mean("max_age_seconds", cors), Some("max_age"));
        assert_eq!(did_you_mean("origin_list_x", cors), None);
    }
}
