//! YAML (and JSON) text → a tree of [`Node`]s that remember their line.
//!
//! serde's YAML crates lose positions once a value is deserialized, but every
//! config error must name its line. So we build our own small tree from the
//! parser's marked events, substitute `${ENV}` in it, and deserialize typed
//! structs from it with [`super::de`].

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Aliases are expanded by copying; this bounds the copies so a
/// "billion laughs" document cannot exhaust memory.
const MAX_NODES: usize = 2_000_000;

#[derive(Debug)]
pub struct Node {
    /// 1-based line of the node in the source.
    pub line: u32,
    pub kind: NodeKind,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    /// `plain` is false for quoted or block scalars: those are always strings.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// Cloned node by node so that a reload copying a large document yields
/// the CPU as it goes (see `crate::yielding`).
impl Clone for Node {
    fn clone(&self) -> Self {
        crate::yielding::point();
        Node {
            line: self.line,
            kind: self.kind.clone(),
        }
    }
}

/// Freed node by node, yielding like [`Clone`] (a replaced document of
/// thousands of routes is dropped on the reload's background thread).
impl Drop for Node {
    fn drop(&mut self) {
        crate::yielding::point();
    }
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, plain: true } if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The value of `key` in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.kind, NodeKind::Scalar { value, .. } if value == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Removes the mapping entry at `path` below this node (`.a.b`,
    /// `[0].c`: an error's path with its item's prefix taken off). Only
    /// mapping keys go, never list items (that would shift the indexes
    /// later errors are reported at). Whether one was removed.
    pub fn remove_path(&mut self, path: &str) -> bool {
        let mut node = self;
        let mut rest = path;
        loop {
            if let Some(after) = rest.strip_prefix('[') {
                let Some((index, tail)) = after.split_once(']') else {
                    return false;
                };
                let (Ok(i), NodeKind::Seq(items)) = (index.parse::<usize>(), &mut node.kind) else {
                    return false;
                };
                let Some(item) = items.get_mut(i) else {
                    return false;
                };
                if tail.is_empty() {
                    return false;
                }
                node = item;
                rest = tail;
            } else if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let (key, tail) = after.split_at(end);
                let NodeKind::Map(entries) = &mut node.kind else {
                    return false;
                };
                let Some(at) = entries
                    .iter()
                    .position(|(k, _)| matches!(&k.kind, NodeKind::Scalar { value, .. } if value == key))
                else {
                    return false;
                };
                if tail.is_empty() {
                    entries.remove(at);
                    return true;
                }
                node = &mut entries[at].1;
                rest = tail;
            } else {
                return false;
            }
        }
    }

    pub fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { .. } if self.is_null() => "null",
            NodeKind::Scalar { .. } => "a scalar",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }
}

/// A syntax error in the document, with its line.
#[derive(Debug)]
pub struct SyntaxError {
    pub line: u32,
    pub message: String,
}

/// Parses one YAML (or JSON) document. An empty document is an empty mapping.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        line: error_line(text, e.marker().line()),
        message: e.info().to_string(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root.unwrap_or(Node {
        line: 1,
        kind: NodeKind::Map(Vec::new()),
    }))
}

/// An error found at the end of the text (an unclosed `[` or `{`) is
/// marked on the line after the last; the line to look at is the last one
/// with something on it.
fn error_line(text: &str, line: usize) -> u32 {
    if line > 0 && line <= text.lines().count() {
        return line as u32;
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .last()
        .map_or(1, |(i, _)| i as u32 + 1)
}

enum Open {
    Seq(Node, usize),
    /// The mapping, a pending key, and the anchor id.
    Map(Node, Option<Node>, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: Vec<(usize, Node)>,
    root: Option<Node>,
    nodes: usize,
    error: Option<SyntaxError>,
}

impl Builder {
    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq(seq, _)) => {
                if let NodeKind::Seq(items) = &mut seq.kind {
                    items.push(node);
                }
            }
            Some(Open::Map(map, key, _)) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    if let NodeKind::Map(entries) = &mut map.kind {
                        entries.push((k, node));
                    }
                }
            },
        }
    }

    fn count(&mut self, node: &Node, line: u32) -> bool {
        fn size(n: &Node) -> usize {
            match &n.kind {
                NodeKind::Scalar { .. } => 1,
                NodeKind::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
                NodeKind::Map(e) => 1 + e.iter().map(|(k, v)| size(k) + size(v)).sum::<usize>(),
            }
        }
        self.nodes += size(node);
        if self.nodes > MAX_NODES && self.error.is_none() {
            self.error = Some(SyntaxError {
                line,
                message: format!("document expands to more than {MAX_NODES} nodes (alias bomb?)"),
            });
        }
        self.error.is_none()
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        crate::yielding::point();
        if self.error.is_some() {
            return;
        }
        let line = mark.line() as u32;
        match ev {
            Event::Scalar(value, style, anchor, tag) => {
                // An explicit `!!str` tag, like quoting, keeps the value a string.
                let plain = style == TScalarStyle::Plain && tag.is_none();
                let node = Node {
                    line,
                    kind: NodeKind::Scalar { value, plain },
                };
                if self.count(&node, line) {
                    self.push_value(node, anchor);
                }
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq(
                Node {
                    line,
                    kind: NodeKind::Seq(Vec::new()),
                },
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push(Open::Map(
                Node {
                    line,
                    kind: NodeKind::Map(Vec::new()),
                },
                None,
                anchor,
            )),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Open::Seq(node, anchor)) | Some(Open::Map(node, _, anchor)) => {
                    self.push_value(node, anchor)
                }
                None => {}
            },
            Event::Alias(id) => {
                let found = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| n.clone());
                match found {
                    Some(mut node) => {
                        if self.count(&node, line) {
                            node.line = line;
                            self.push_value(node, 0);
                        }
                    }
                    None => {
                        self.error = Some(SyntaxError {
                            line,
                            message: "unknown alias".into(),
                        })
                    }
                }
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// Replaces `${NAME}` and `${NAME:-default}` in every string value from `lookup`.
/// `$${` escapes a literal `${`. Keys are left alone. Returns `(path, line,
/// message)` for each variable that is missing and has no default.
pub fn substitute_env(
    node: &mut Node,
    path: &mut String,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<(String, u32, String)>,
) {
    crate::yielding::point();
    match &mut node.kind {
        NodeKind::Scalar { value, .. } => {
            if value.contains("${") {
                match expand(value, lookup) {
                    Ok(v) => *value = v,
                    Err(msg) => errors.push((path.clone(), node.line, msg)),
                }
            }
        }
        NodeKind::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute_env(item, path, lookup, errors);
                path.truncate(len);
            }
        }
        NodeKind::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                let len = path.len();
                if let NodeKind::Scalar { value, .. } = &k.kind {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(value);
                }
                substitute_env(v, path, lookup, errors);
                path.truncate(len);
            }
        }
    }
}

fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find("${") {
        if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in {input:?}"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set and has no default"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_at_the_end_names_the_last_line_with_text() {
        for (text, line) in [
            ("{\"version\": 1, \"routes\": [", 1),
            ("{\"version\": 1, \"routes\": [\n", 1),
            ("a: 1\nb: [\n\n  \n", 2),
        ] {
            assert_eq!(super::parse(text).unwrap_err().line, line, "{text:?}");
        }
        // An error inside the text keeps its own line.
        assert_eq!(super::parse("a: 1\nb: [}\nc: 2\n").unwrap_err().line, 2);
    }

    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "PORT").then(|| "8080".to_string())
    }

    #[test]
    fn expands_variables_defaults_and_escapes() {
        assert_eq!(expand("a${PORT}b", &env).unwrap(), "a8080b");
        assert_eq!(expand("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(expand("$${PORT}", &env).unwrap(), "${PORT}");
        assert!(expand("${NOPE}", &env).unwrap_err().contains("NOPE"));
        assert!(expand("${PORT", &env).is_err());
    }

    #[test]
    fn keeps_lines_and_expands_aliases() {
        let n = parse("a: 1\nb: &x\n  c: 2\nd: *x\n").unwrap();
        assert_eq!(n.get("b").unwrap().line, 3);
        assert_eq!(n.get("d").unwrap().get("c").unwrap().line, 3);
        assert_eq!(n.get("d").unwrap().line, 4);
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut doc = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            doc.push_str(&format!("b{i}: &b{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        assert!(parse(&doc).unwrap_err().message.contains("alias"));
    }
}
