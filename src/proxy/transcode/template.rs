//! `google.api.http` path templates:
//!
//! ```text
//! Template = "/" Segments [ ":" Verb ]
//! Segment  = "*" | "**" | LITERAL | "{" FieldPath [ "=" Segments ] "}"
//! ```
//!
//! `{id}` is `{id=*}`: one segment. `**` takes the rest of the path (it
//! must come last). A variable's value is its segments, percent-decoded.

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    /// One segment.
    Star,
    /// Every remaining segment (last only).
    DoubleStar,
}

#[derive(Debug, Clone)]
pub struct PathTemplate {
    pieces: Vec<Piece>,
    /// Field paths (`shelf.id`), each with the pieces `[start, end)` it covers.
    vars: Vec<(Vec<String>, usize, usize)>,
    verb: Option<String>,
}

impl PathTemplate {
    pub fn parse(s: &str) -> Result<PathTemplate, String> {
        let rest = s.strip_prefix('/').ok_or("a path template starts with `/`")?;
        // The verb follows the last `:` outside braces.
        let (body, verb) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('}') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        let mut pieces = Vec::new();
        let mut vars = Vec::new();
        let mut chars = body;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner.find('}').ok_or("unclosed `{`")?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (&inner[..close], "*"),
                };
                let path: Vec<String> = field.split('.').map(str::to_string).collect();
                if path
                    .iter()
                    .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                {
                    return Err(format!("`{field}` is not a field path"));
                }
                let start = pieces.len();
                for seg in pattern.split('/') {
                    pieces.push(segment(seg)?);
                }
                vars.push((path, start, pieces.len()));
                chars = &inner[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                let seg = &chars[..end];
                if seg.contains(['{', '}']) {
                    return Err(format!("`{seg}`: a variable must be a whole segment"));
                }
                pieces.push(segment(seg)?);
                chars = &chars[end..];
            }
            if let Some(next) = chars.strip_prefix('/') {
                chars = next;
                if chars.is_empty() {
                    return Err("a path template does not end with `/`".into());
                }
            } else if !chars.is_empty() {
                return Err("a variable must be a whole segment".into());
            }
        }
        if let Some(i) = pieces.iter().position(|p| *p == Piece::DoubleStar)
            && i + 1 != pieces.len()
        {
            return Err("`**` must come last".into());
        }
        Ok(PathTemplate { pieces, vars, verb })
    }

    /// The variables' values when `path` matches, in template order.
    pub fn matches<'t>(&'t self, path: &str) -> Option<Vec<(&'t [String], String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(v) => rest.strip_suffix(v.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let segs: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        // Which request segments each piece took: [from, to).
        let mut spans = Vec::with_capacity(self.pieces.len());
        let mut i = 0;
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => {
                    if segs.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                    spans.push((i, i + 1));
                    i += 1;
                }
                Piece::Star => {
                    if segs.get(i).is_none_or(|s| s.is_empty()) {
                        return None;
                    }
                    spans.push((i, i + 1));
                    i += 1;
                }
                Piece::DoubleStar => {
                    spans.push((i, segs.len()));
                    i = segs.len();
                }
            }
        }
        if i != segs.len() {
            return None;
        }
        Some(
            self.vars
                .iter()
                .map(|(field, start, end)| {
                    let from = spans[*start].0;
                    let to = if end > start { spans[end - 1].1 } else { from };
                    (
                        &field[..],
                        crate::plugins::percent_decode_path(&segs[from..to].join("/")),
                    )
                })
                .collect(),
        )
    }

    /// The top-level fields the path sets (they are not taken from the query).
    pub fn fields(&self) -> impl Iterator<Item = &[String]> {
        self.vars.iter().map(|(f, _, _)| &f[..])
    }
}

fn segment(s: &str) -> Result<Piece, String> {
    match s {
        "" => Err("empty segment".into()),
        "*" => Ok(Piece::Star),
        "**" => Ok(Piece::DoubleStar),
        lit if lit.contains(['*', '{', '}', '=']) => Err(format!("`{lit}` is not a literal segment")),
        lit => Ok(Piece::Literal(lit.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(t: &str, path: &str) -> Option<Vec<(String, String)>> {
        let t = PathTemplate::parse(t).unwrap();
        t.matches(path)
            .map(|v| v.into_iter().map(|(f, val)| (f.join("."), val)).collect())
    }

    #[test]
    fn templates_match_and_capture() {
        assert_eq!(
            vars("/v1/items/{sku}", "/v1/items/ab-1"),
            Some(vec![("sku".into(), "ab-1".into())])
        );
        assert_eq!(vars("/v1/items/{sku}", "/v1/items"), None);
        assert_eq!(vars("/v1/items/{sku}", "/v1/items/a/b"), None);
        assert_eq!(
            vars("/v1/{name=shelves/*/books/*}", "/v1/shelves/3/books/9"),
            Some(vec![("name".into(), "shelves/3/books/9".into())])
        );
        assert_eq!(
            vars(
                "/v1/stores/{store.id}/items/{item.sku}",
                "/v1/stores/s1/items/x%20y"
            ),
            Some(vec![
                ("store.id".into(), "s1".into()),
                ("item.sku".into(), "x y".into())
            ])
        );
        assert_eq!(
            vars("/files/{path=**}", "/files/a/b/c.txt"),
            Some(vec![("path".into(), "a/b/c.txt".into())])
        );
        assert_eq!(
            vars("/v1/items/{sku}:reserve", "/v1/items/k7:reserve"),
            Some(vec![("sku".into(), "k7".into())])
        );
        assert_eq!(vars("/v1/items/{sku}:reserve", "/v1/items/k7"), None);
    }

    #[test]
    fn bad_templates_are_refused() {
        for t in ["v1/x", "/v1/{sku", "/v1/**/x", "/v1/a{b}", "/v1/{a-b}", "/v1/"] {
            assert!(PathTemplate::parse(t).is_err(), "{t}");
        }
    }
}
