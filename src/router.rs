//! Route lookup: `(host, method, path, headers) → route`, pure and without I/O.
//!
//! Paths live in a segment trie (exact paths in a hash map, regexes in one
//! `RegexSet`), so a lookup visits only the nodes along the request's path:
//! its cost follows the path's depth, not the number of routes. Every
//! candidate found on the way is checked against its host, header and method
//! conditions, and the most specific passing one wins (SPEC "Path rules").

pub mod path;

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::{Regex, RegexSet};

/// How one path of a route matches, parsed from its config string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// `= /health`
    Exact(String),
    /// `/api/v1/users`: the path itself and anything below it.
    Prefix(Vec<String>),
    /// `/users/{id}/orders`, `/files/{rest*}`
    Template(Vec<Segment>),
    /// `~ ^/v[0-9]+/items$`
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

/// As written in the config (`= /health`, `/users/{id}`, `~ ^/v1$`).
impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathPattern::Exact(p) => write!(f, "= {p}"),
            PathPattern::Regex(r) => write!(f, "~ {r}"),
            PathPattern::Prefix(lits) if lits.is_empty() => f.write_str("/"),
            PathPattern::Prefix(lits) => lits.iter().try_for_each(|l| write!(f, "/{l}")),
            PathPattern::Template(segs) => segs.iter().try_for_each(|s| match s {
                Segment::Literal(l) => write!(f, "/{l}"),
                Segment::Param(n) => write!(f, "/{{{n}}}"),
                Segment::Rest(n) => write!(f, "/{{{n}*}}"),
            }),
        }
    }
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if let Some(p) = s.strip_prefix('=') {
            let p = p.trim();
            check_literal_path(p)?;
            return Ok(PathPattern::Exact(p.to_string()));
        }
        if let Some(r) = s.strip_prefix('~') {
            let r = r.trim();
            Regex::new(r).map_err(|e| format!("invalid regex: {}", regex_error(&e)))?;
            return Ok(PathPattern::Regex(r.to_string()));
        }
        if !s.starts_with('/') {
            return Err(format!(
                "`{s}` must start with `/` (or `= ` for exact, `~ ` for a regex)"
            ));
        }
        let body = s.trim_end_matches('/');
        let mut segments = Vec::new();
        let mut template = false;
        let raw: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body[1..].split('/').collect()
        };
        for (i, seg) in raw.iter().enumerate() {
            if let Some(name) = seg.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                template = true;
                if let Some(rest) = name.strip_suffix('*') {
                    if i + 1 != raw.len() {
                        return Err(format!("`{{{name}}}` must be the last segment"));
                    }
                    check_name(rest)?;
                    segments.push(Segment::Rest(rest.to_string()));
                } else {
                    check_name(name)?;
                    segments.push(Segment::Param(name.to_string()));
                }
            } else if seg.contains(['{', '}']) {
                return Err(format!(
                    "segment `{seg}`: a capture must be a whole segment, like `{{id}}`"
                ));
            } else {
                if seg.is_empty() || *seg == "." || *seg == ".." || seg.contains('%') {
                    return Err(format!("`{s}` is not a normalized path"));
                }
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        if template {
            let mut seen = Vec::new();
            for seg in &segments {
                if let Segment::Param(n) | Segment::Rest(n) = seg {
                    if seen.contains(&n) {
                        return Err(format!("capture `{n}` appears twice"));
                    }
                    seen.push(n);
                }
            }
            Ok(PathPattern::Template(segments))
        } else {
            let lits = segments
                .into_iter()
                .map(|s| match s {
                    Segment::Literal(l) => l,
                    _ => unreachable!("no captures in a prefix"),
                })
                .collect();
            Ok(PathPattern::Prefix(lits))
        }
    }

    /// Names this pattern can capture, for checking `rewrite`.
    pub fn captures(&self) -> Vec<String> {
        match self {
            PathPattern::Template(segs) => segs
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(n) | Segment::Rest(n) => Some(n.clone()),
                    Segment::Literal(_) => None,
                })
                .collect(),
            PathPattern::Regex(r) => Regex::new(r)
                .map(|re| re.capture_names().flatten().map(str::to_string).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("capture name `{name}` must be letters, digits or `_`"));
    }
    Ok(())
}

fn check_literal_path(p: &str) -> Result<(), String> {
    match path::normalize(p) {
        Ok(n) if n == p => Ok(()),
        Ok(n) => Err(format!("`{p}` is not normalized; write `{n}`")),
        Err(e) => Err(format!("`{p}`: {}", e.describe())),
    }
}

/// Bit of a standard method in a route's method set; `None` for others.
pub fn method_bit(m: &str) -> Option<u16> {
    Some(match m {
        "GET" => 1,
        "HEAD" => 2,
        "POST" => 4,
        "PUT" => 8,
        "DELETE" => 16,
        "PATCH" => 32,
        "OPTIONS" => 64,
        "TRACE" => 128,
        "CONNECT" => 256,
        _ => return None,
    })
}

const METHOD_NAMES: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

/// The `Allow` header value for a method set.
pub fn allow_header(bits: u16) -> String {
    METHOD_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, m)| *m)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Conditions besides the path, as written in a route's `match`.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub hosts: Vec<String>,
    pub methods: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub priority: i32,
}

enum HeaderMatch {
    Exact(HeaderValue),
    Regex(Regex),
}

struct HostMatch {
    exact: Vec<Box<str>>,
    /// `*.example.com` stored as `.example.com`.
    suffixes: Vec<Box<str>>,
}

impl HostMatch {
    /// How specifically `host` is matched, `None` when it is not: an exact
    /// name beats any wildcard, and a longer wildcard suffix a shorter one
    /// (`*.api.example.com` before `*.example.com`), as nginx and Envoy
    /// choose.
    fn specificity(&self, host: &str) -> Option<u8> {
        if self.exact.iter().any(|h| **h == *host) {
            return Some(HOST_EXACT);
        }
        self.suffixes
            .iter()
            .filter(|s| host.len() > s.len() && host.ends_with(&***s))
            .map(|s| s.len().min(usize::from(HOST_EXACT) - 1) as u8)
            .max()
    }

    fn matches(&self, host: &str) -> bool {
        self.specificity(host).is_some()
    }
}

/// The host specificity of an exact name.
const HOST_EXACT: u8 = u8::MAX;
/// Where the matched host's specificity sits in a rank: below the count of
/// conditions, above `priority`.
const HOST_SHIFT: u32 = 64;

/// One path of one route, with the route's conditions.
struct Entry {
    route: usize,
    rank: u128,
    pattern: PathPattern,
    hosts: Option<HostMatch>,
    /// 0 = any method.
    methods: u16,
    headers: Vec<(HeaderName, HeaderMatch)>,
}

#[derive(Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Prefix routes ending here (they match this node and below).
    prefix: Vec<u32>,
    /// Templates ending in `{rest*}` here.
    rest: Vec<u32>,
    /// Templates ending exactly here.
    end: Vec<u32>,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(Match),
    /// The path matched, but not with this method; the set is for `Allow`.
    MethodNotAllowed(u16),
    NotFound,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Match {
    /// Index of the route in the config.
    pub route: usize,
    /// Index of the matched path within the table (for captures and explain).
    entry: u32,
}

/// Why a route whose path matches did or did not take a request
/// (`portcullis explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Chosen,
    /// Its `match.hosts` do not include the request's host.
    Host,
    /// This `match.headers` entry is missing or differs.
    Header(String),
    /// Its `match.methods` (a method set) exclude the request's method.
    Method(u16),
    /// It matches too, but a more specific route was chosen.
    LessSpecific,
}

/// One route path that matches the request's path, most specific first.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub route: usize,
    pub pattern: String,
    pub verdict: Verdict,
}

/// The request facts a lookup needs.
pub struct RouteRequest<'a> {
    /// Lower-case, without port.
    pub host: Option<&'a str>,
    pub method: &'a Method,
    /// Normalized.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// Immutable route table built once per config.
pub struct RouteTable {
    entries: Vec<Entry>,
    exact: HashMap<Box<str>, Vec<u32>>,
    root: Node,
    regex_set: RegexSet,
    regex_entries: Vec<u32>,
    regexes: Vec<Regex>,
    /// Some route matches on hosts: only then is the request's host needed.
    uses_hosts: bool,
}

/// Freed piece by piece (yielding, on a reload's background thread: see
/// `crate::yielding`): a table of thousands of routes takes milliseconds.
impl Drop for RouteTable {
    fn drop(&mut self) {
        for entry in self.entries.drain(..) {
            drop(entry);
            crate::yielding::point();
        }
        for pair in self.exact.drain() {
            drop(pair);
            crate::yielding::point();
        }
    }
}

/// Rank classes, most specific first (SPEC "Path rules").
const CLASS_EXACT: u128 = 3;
const CLASS_LITERAL: u128 = 2;
const CLASS_REGEX: u128 = 1;
const CLASS_CATCH_ALL: u128 = 0;

fn class_of(rank: u128) -> u128 {
    rank >> 120
}

impl RouteTable {
    /// Builds the table from `(route index, patterns, conditions)` in file order.
    /// Returns, per failing input, the index of the route and the path and message.
    pub fn build(
        routes: &[(usize, Vec<PathPattern>, Conditions)],
    ) -> Result<RouteTable, Vec<(usize, String)>> {
        let mut errors = Vec::new();
        // Sized up front so that no growth copies or rehashes thousands of
        // entries at once between two yield points of a reload.
        let patterns: usize = routes.iter().map(|(_, p, _)| p.len()).sum();
        let mut table = RouteTable {
            entries: Vec::with_capacity(patterns),
            exact: HashMap::with_capacity(patterns),
            root: Node::default(),
            regex_set: RegexSet::empty(),
            regex_entries: Vec::new(),
            regexes: Vec::new(),
            uses_hosts: routes.iter().any(|(_, _, cond)| !cond.hosts.is_empty()),
        };
        let mut regex_sources = Vec::new();
        for (route, patterns, cond) in routes {
            crate::yielding::point();
            let hosts = (!cond.hosts.is_empty()).then(|| HostMatch {
                exact: cond
                    .hosts
                    .iter()
                    .filter(|h| !h.starts_with("*."))
                    .map(|h| h.to_ascii_lowercase().into())
                    .collect(),
                suffixes: cond
                    .hosts
                    .iter()
                    .filter_map(|h| h.strip_prefix('*'))
                    .map(|h| h.to_ascii_lowercase().into())
                    .collect(),
            });
            let methods = cond
                .methods
                .iter()
                .filter_map(|m| method_bit(m))
                .fold(0, |a, b| a | b);
            let mut headers = Vec::new();
            for (name, value) in &cond.headers {
                let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                    continue;
                };
                let m = match value.strip_prefix('~') {
                    Some(re) => match Regex::new(re) {
                        Ok(re) => HeaderMatch::Regex(re),
                        Err(e) => {
                            errors.push((
                                *route,
                                format!("match.headers.{name}: invalid regex: {}", regex_error(&e)),
                            ));
                            continue;
                        }
                    },
                    None => match HeaderValue::from_str(value) {
                        Ok(v) => HeaderMatch::Exact(v),
                        Err(_) => {
                            errors.push((*route, format!("match.headers.{name}: not a valid header value")));
                            continue;
                        }
                    },
                };
                headers.push((name, m));
            }
            let conditions = u128::from(hosts.is_some()) + u128::from(methods != 0) + headers.len() as u128;
            for pattern in patterns {
                let id = table.entries.len() as u32;
                let (class, literals, segments, whole) = match pattern {
                    PathPattern::Exact(_) => (CLASS_EXACT, 0, 0, 1),
                    PathPattern::Regex(_) => (CLASS_REGEX, 0, 0, 1),
                    PathPattern::Prefix(lits) => {
                        let c = if lits.is_empty() {
                            CLASS_CATCH_ALL
                        } else {
                            CLASS_LITERAL
                        };
                        (c, lits.len(), lits.len(), 0)
                    }
                    PathPattern::Template(segs) => {
                        let lits = segs.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
                        let c = if lits == 0 { CLASS_CATCH_ALL } else { CLASS_LITERAL };
                        let whole = u128::from(!matches!(segs.last(), Some(Segment::Rest(_))));
                        (c, lits, segs.len(), whole)
                    }
                };
                let priority = (i64::from(cond.priority) + (1 << 31)) as u128;
                let rank = class << 120
                    | (literals.min(0xffff) as u128) << 104
                    | (segments.min(0xffff) as u128) << 88
                    | whole << 80
                    | conditions.min(0xff) << 72
                    | priority << 32
                    | u128::from(u32::MAX - id);
                match pattern {
                    PathPattern::Exact(p) => table.exact.entry(p.as_str().into()).or_default().push(id),
                    PathPattern::Regex(r) => {
                        regex_sources.push(r.clone());
                        table
                            .regexes
                            .push(Regex::new(r).expect("checked by PathPattern::parse"));
                        table.regex_entries.push(id);
                    }
                    PathPattern::Prefix(lits) => {
                        let mut node = &mut table.root;
                        for l in lits {
                            node = node.literal.entry(l.as_str().into()).or_default();
                        }
                        node.prefix.push(id);
                    }
                    PathPattern::Template(segs) => {
                        let mut node = &mut table.root;
                        let mut rest = false;
                        for s in segs {
                            match s {
                                Segment::Literal(l) => {
                                    node = node.literal.entry(l.as_str().into()).or_default()
                                }
                                Segment::Param(_) => node = node.param.get_or_insert_with(Default::default),
                                Segment::Rest(_) => rest = true,
                            }
                        }
                        if rest {
                            node.rest.push(id)
                        } else {
                            node.end.push(id)
                        }
                    }
                }
                table.entries.push(Entry {
                    route: *route,
                    rank,
                    pattern: pattern.clone(),
                    hosts: hosts.as_ref().map(|h| HostMatch {
                        exact: h.exact.clone(),
                        suffixes: h.suffixes.clone(),
                    }),
                    methods,
                    headers: headers
                        .iter()
                        .map(|(n, m)| {
                            (
                                n.clone(),
                                match m {
                                    HeaderMatch::Exact(v) => HeaderMatch::Exact(v.clone()),
                                    HeaderMatch::Regex(r) => HeaderMatch::Regex(r.clone()),
                                },
                            )
                        })
                        .collect(),
                });
            }
        }
        match RegexSet::new(&regex_sources) {
            Ok(set) => table.regex_set = set,
            Err(e) => errors.push((0, format!("regex paths: {e}"))),
        }
        if errors.is_empty() { Ok(table) } else { Err(errors) }
    }

    /// Whether some route matches on hosts (else [`RouteRequest::host`]
    /// is never looked at).
    pub fn uses_hosts(&self) -> bool {
        self.uses_hosts
    }

    pub fn lookup(&self, req: &RouteRequest<'_>) -> Lookup {
        let method = method_bit(req.method.as_str()).unwrap_or(0);
        let mut best = Best {
            entry: None,
            rank: 0,
            allow: 0,
        };
        if let Some(ids) = self.exact.get(req.path) {
            for &id in ids {
                self.consider(id, req, method, &mut best);
            }
        }
        if best.entry.is_none() {
            self.visit(&self.root, req.path.strip_prefix('/'), req, method, &mut best);
            if best.entry.is_none_or(|_| class_of(best.rank) < CLASS_REGEX) && !self.regex_entries.is_empty()
            {
                for i in self.regex_set.matches(req.path).iter() {
                    self.consider(self.regex_entries[i], req, method, &mut best);
                }
            }
        }
        match best.entry {
            Some(id) => Lookup::Found(Match {
                route: self.entries[id as usize].route,
                entry: id,
            }),
            None if best.allow != 0 => Lookup::MethodNotAllowed(best.allow),
            None => Lookup::NotFound,
        }
    }

    /// Every route path matching the request's path, most specific first,
    /// each with why it was or was not chosen; the chosen one agrees with
    /// [`RouteTable::lookup`]. For `portcullis explain`, not the hot path.
    pub fn explain(&self, req: &RouteRequest<'_>) -> Vec<Candidate> {
        let mut ids: Vec<u32> = self.exact.get(req.path).cloned().unwrap_or_default();
        self.collect(&self.root, req.path.strip_prefix('/'), &mut ids);
        ids.extend(
            self.regex_set
                .matches(req.path)
                .iter()
                .map(|i| self.regex_entries[i]),
        );
        ids.sort_by_key(|id| {
            let e = &self.entries[*id as usize];
            (
                std::cmp::Reverse(self.rank_for(e, req.host).unwrap_or(e.rank)),
                *id,
            )
        });
        ids.dedup();
        let chosen = match self.lookup(req) {
            Lookup::Found(m) => Some(m.entry),
            _ => None,
        };
        let method = method_bit(req.method.as_str()).unwrap_or(0);
        ids.into_iter()
            .map(|id| {
                let e = &self.entries[id as usize];
                let verdict = if Some(id) == chosen {
                    Verdict::Chosen
                } else if e
                    .hosts
                    .as_ref()
                    .is_some_and(|h| !req.host.is_some_and(|host| h.matches(host)))
                {
                    Verdict::Host
                } else if let Some((name, _)) = e.headers.iter().find(|(name, m)| {
                    !req.headers.get_all(name).iter().any(|v| match m {
                        HeaderMatch::Exact(want) => v == want,
                        HeaderMatch::Regex(re) => v.to_str().is_ok_and(|s| re.is_match(s)),
                    })
                }) {
                    Verdict::Header(name.to_string())
                } else if e.methods != 0 && e.methods & method == 0 {
                    Verdict::Method(e.methods)
                } else {
                    Verdict::LessSpecific
                };
                Candidate {
                    route: e.route,
                    pattern: e.pattern.to_string(),
                    verdict,
                }
            })
            .collect()
    }

    /// The trie's entries whose path matches, whatever their conditions.
    fn collect(&self, node: &Node, rest: Option<&str>, out: &mut Vec<u32>) {
        out.extend(node.prefix.iter().chain(&node.rest));
        match rest {
            None => out.extend(&node.end),
            Some(r) => {
                // A byte loop: segments are short, and `str::find`'s
                // searcher costs ~100 instructions to set up.
                let (seg, next) = match r.bytes().position(|b| b == b'/') {
                    Some(i) => (&r[..i], Some(&r[i + 1..])),
                    None => (r, None),
                };
                if let Some(child) = node.literal.get(seg) {
                    self.collect(child, next, out);
                }
                if !seg.is_empty()
                    && let Some(param) = &node.param
                {
                    self.collect(param, next, out);
                }
            }
        }
    }

    /// Up to `n` route paths nearest to `path` (most leading segments in
    /// common), for an explanation of a request no route takes.
    pub fn nearest(&self, path: &str, n: usize) -> Vec<(usize, String)> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut scored: Vec<(usize, usize, String)> = self
            .entries
            .iter()
            .map(|e| {
                let text = e.pattern.to_string();
                let literal = text.trim_start_matches(['=', '~', ' ', '^']);
                let common = literal
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .zip(&segs)
                    .take_while(|(a, b)| a == *b || a.starts_with('{'))
                    .count();
                (common, e.route, text)
            })
            .collect();
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        scored
            .into_iter()
            .take(n)
            .map(|(_, route, p)| (route, p))
            .collect()
    }

    /// `rest`: what follows the `/` after this node; `None` when the path ends here.
    fn visit(&self, node: &Node, rest: Option<&str>, req: &RouteRequest<'_>, method: u16, best: &mut Best) {
        for &id in node.prefix.iter().chain(&node.rest) {
            self.consider(id, req, method, best);
        }
        match rest {
            None => {
                for &id in &node.end {
                    self.consider(id, req, method, best);
                }
            }
            Some(r) => {
                // A byte loop: segments are short, and `str::find`'s
                // searcher costs ~100 instructions to set up.
                let (seg, next) = match r.bytes().position(|b| b == b'/') {
                    Some(i) => (&r[..i], Some(&r[i + 1..])),
                    None => (r, None),
                };
                if let Some(child) = node.literal.get(seg) {
                    self.visit(child, next, req, method, best);
                }
                if !seg.is_empty()
                    && let Some(param) = &node.param
                {
                    self.visit(param, next, req, method, best);
                }
            }
        }
    }

    fn consider(&self, id: u32, req: &RouteRequest<'_>, method: u16, best: &mut Best) {
        let e = &self.entries[id as usize];
        // The rank it could reach with the most specific host.
        if best.entry.is_some() && e.rank | u128::from(HOST_EXACT) << HOST_SHIFT <= best.rank {
            return;
        }
        let Some(rank) = self.rank_for(e, req.host) else {
            return;
        };
        if best.entry.is_some() && rank <= best.rank {
            return;
        }
        for (name, m) in &e.headers {
            let ok = req.headers.get_all(name).iter().any(|v| match m {
                HeaderMatch::Exact(want) => v == want,
                HeaderMatch::Regex(re) => v.to_str().is_ok_and(|s| re.is_match(s)),
            });
            if !ok {
                return;
            }
        }
        if e.methods != 0 && e.methods & method == 0 {
            best.allow |= e.methods;
            return;
        }
        best.entry = Some(id);
        best.rank = rank;
    }

    /// An entry's rank for a request to `host`, with how specifically its
    /// hosts match it; `None` when they do not.
    fn rank_for(&self, e: &Entry, host: Option<&str>) -> Option<u128> {
        match &e.hosts {
            None => Some(e.rank),
            Some(hosts) => {
                let specificity = hosts.specificity(host?)?;
                Some(e.rank | u128::from(specificity) << HOST_SHIFT)
            }
        }
    }

    /// The captures of a match (`{id}` → value), for `rewrite`. Values are
    /// slices of the normalized path (still percent-encoded where needed).
    pub fn captures<'p>(&self, m: &Match, path: &'p str) -> Vec<(&str, &'p str)> {
        let e = &self.entries[m.entry as usize];
        match &e.pattern {
            PathPattern::Template(segs) => {
                let mut out = Vec::new();
                let mut rest = &path[1..];
                for s in segs {
                    let (seg, next) = match rest.find('/') {
                        Some(i) => (&rest[..i], &rest[i + 1..]),
                        None => (rest, ""),
                    };
                    match s {
                        Segment::Literal(_) => {}
                        Segment::Param(n) => out.push((n.as_str(), seg)),
                        Segment::Rest(n) => {
                            out.push((n.as_str(), rest));
                            break;
                        }
                    }
                    rest = next;
                }
                out
            }
            PathPattern::Regex(_) => {
                let i = self
                    .regex_entries
                    .iter()
                    .position(|&x| x == m.entry)
                    .expect("regex entry");
                let re = &self.regexes[i];
                match re.captures(path) {
                    Some(c) => re
                        .capture_names()
                        .flatten()
                        .filter_map(|n| c.name(n).map(|v| (n, v.as_str())))
                        .collect(),
                    None => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }
}

struct Best {
    entry: Option<u32>,
    rank: u128,
    allow: u16,
}

/// A regex error in one line: the regex crate's syntax errors span three
/// (the pattern, a caret, the reason); the reason is what is kept.
fn regex_error(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => text
            .lines()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or(text)
            .to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&[&str], Conditions)]) -> RouteTable {
        let input: Vec<_> = routes
            .iter()
            .enumerate()
            .map(|(i, (paths, c))| {
                (
                    i,
                    paths.iter().map(|p| PathPattern::parse(p).unwrap()).collect(),
                    c.clone(),
                )
            })
            .collect();
        RouteTable::build(&input).map_err(|e| format!("{e:?}")).unwrap()
    }

    fn find(
        t: &RouteTable,
        method: &str,
        host: Option<&str>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Lookup {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        t.lookup(&RouteRequest {
            host,
            method: &m,
            path,
            headers: &h,
        })
    }

    fn route_of(l: Lookup) -> Option<usize> {
        match l {
            Lookup::Found(m) => Some(m.route),
            _ => None,
        }
    }

    fn any() -> Conditions {
        Conditions::default()
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let t = table(&[(&["/api/v1/users"], any())]);
        assert_eq!(route_of(find(&t, "GET", None, "/api/v1/users", &[])), Some(0));
        assert_eq!(route_of(find(&t, "GET", None, "/api/v1/users/7", &[])), Some(0));
        assert_eq!(route_of(find(&t, "GET", None, "/api/v1/users/", &[])), Some(0));
        assert_eq!(find(&t, "GET", None, "/api/v1/usersX", &[]), Lookup::NotFound);
        assert_eq!(find(&t, "GET", None, "/api/v1", &[]), Lookup::NotFound);
    }

    #[test]
    fn most_specific_wins() {
        let t = table(&[
            (&["/"], any()),                  // 0: root
            (&["~ ^/api/.*$"], any()),        // 1: regex
            (&["/api"], any()),               // 2: 1 literal
            (&["/api/v1"], any()),            // 3: 2 literals
            (&["/api/v1/users/{id}"], any()), // 4: template, 3 literals
            (&["= /api/v1/users/me"], any()), // 5: exact
            (&["/api/v1/users"], any()),      // 6: prefix, 3 literals
        ]);
        assert_eq!(route_of(find(&t, "GET", None, "/api/v1/users/me", &[])), Some(5));
        assert_eq!(route_of(find(&t, "GET", None, "/api/v1/users/7", &[])), Some(4));
        assert_eq!(route_of(find(&t, "GET", None, "/api/v1/users/7/x", &[])), Some(6));
        assert_eq!(route_of(find(&t, "GET", None, "/api/v1/other", &[])), Some(3));
        assert_eq!(route_of(find(&t, "GET", None, "/api/zzz", &[])), Some(2));
        assert_eq!(route_of(find(&t, "GET", None, "/apix", &[])), Some(0));
        let t = table(&[(&["/"], any()), (&["~ ^/v[0-9]+/items$"], any())]);
        assert_eq!(route_of(find(&t, "GET", None, "/v2/items", &[])), Some(1));
        assert_eq!(route_of(find(&t, "GET", None, "/v2/items/x", &[])), Some(0));
    }

    #[test]
    fn more_conditions_then_priority_then_file_order() {
        let host = Conditions {
            hosts: vec!["api.example.com".into()],
            ..any()
        };
        let t = table(&[(&["/a"], any()), (&["/a"], host.clone())]);
        assert_eq!(
            route_of(find(&t, "GET", Some("api.example.com"), "/a", &[])),
            Some(1)
        );
        assert_eq!(route_of(find(&t, "GET", Some("other.com"), "/a", &[])), Some(0));
        let hi = Conditions { priority: 5, ..any() };
        let t = table(&[(&["/a"], any()), (&["/a"], hi)]);
        assert_eq!(route_of(find(&t, "GET", None, "/a", &[])), Some(1));
        let t = table(&[(&["/a"], any()), (&["/a"], any())]);
        assert_eq!(route_of(find(&t, "GET", None, "/a", &[])), Some(0));
    }

    #[test]
    fn hosts_with_wildcards() {
        let c = Conditions {
            hosts: vec!["*.example.com".into(), "example.org".into()],
            ..any()
        };
        let t = table(&[(&["/"], c)]);
        assert_eq!(
            route_of(find(&t, "GET", Some("a.example.com"), "/", &[])),
            Some(0)
        );
        assert_eq!(
            route_of(find(&t, "GET", Some("a.b.example.com"), "/", &[])),
            Some(0)
        );
        assert_eq!(route_of(find(&t, "GET", Some("example.org"), "/", &[])), Some(0));
        assert_eq!(find(&t, "GET", Some("example.com"), "/", &[]), Lookup::NotFound);
        assert_eq!(
            find(&t, "GET", Some("badexample.com"), "/", &[]),
            Lookup::NotFound
        );
        assert_eq!(find(&t, "GET", None, "/", &[]), Lookup::NotFound);
    }

    #[test]
    fn an_exact_host_beats_a_wildcard_and_a_longer_wildcard_a_shorter() {
        let hosts = |h: &[&str]| Conditions {
            hosts: h.iter().map(|s| s.to_string()).collect(),
            ..any()
        };
        // File order favours the wildcards; specificity decides.
        let t = table(&[
            (&["/"], hosts(&["*.example.com"])),
            (&["/"], hosts(&["*.api.example.com"])),
            (&["/"], hosts(&["api.example.com", "*.other.org"])),
        ]);
        let at = |host| route_of(find(&t, "GET", Some(host), "/x", &[]));
        assert_eq!(at("api.example.com"), Some(2));
        assert_eq!(at("v1.api.example.com"), Some(1));
        assert_eq!(at("www.example.com"), Some(0));
        assert_eq!(at("a.other.org"), Some(2));
        // More conditions still come first: a wildcard with a method beats
        // an exact host alone.
        let get = Conditions {
            methods: vec!["GET".into()],
            ..hosts(&["*.example.com"])
        };
        let t = table(&[(&["/"], hosts(&["api.example.com"])), (&["/"], get)]);
        assert_eq!(
            route_of(find(&t, "GET", Some("api.example.com"), "/", &[])),
            Some(1)
        );
        // And explain lists them in the order lookup chose.
        let t = table(&[
            (&["/"], hosts(&["*.example.com"])),
            (&["/"], hosts(&["api.example.com"])),
        ]);
        let req = RouteRequest {
            host: Some("api.example.com"),
            method: &Method::GET,
            path: "/",
            headers: &HeaderMap::new(),
        };
        let listed: Vec<_> = t
            .explain(&req)
            .into_iter()
            .map(|c| (c.route, c.verdict))
            .collect();
        assert_eq!(listed, [(1, Verdict::Chosen), (0, Verdict::LessSpecific)]);
    }

    #[test]
    fn methods_give_405_with_allow_unless_another_route_matches() {
        let get = Conditions {
            methods: vec!["GET".into(), "POST".into()],
            ..any()
        };
        let t = table(&[(&["/users"], get.clone())]);
        assert_eq!(
            find(&t, "DELETE", None, "/users", &[]),
            Lookup::MethodNotAllowed(1 | 4)
        );
        assert_eq!(allow_header(1 | 4), "GET, POST");
        let t = table(&[(&["/users"], get), (&["/"], any())]);
        assert_eq!(route_of(find(&t, "DELETE", None, "/users", &[])), Some(1));
    }

    #[test]
    fn headers_exact_and_regex() {
        let v2 = Conditions {
            headers: vec![("x-api-version".into(), "2".into())],
            ..any()
        };
        let re = Conditions {
            headers: vec![("x-tenant".into(), "~^acme-[0-9]+$".into())],
            ..any()
        };
        let t = table(&[(&["/a"], any()), (&["/a"], v2), (&["/b"], re)]);
        assert_eq!(
            route_of(find(&t, "GET", None, "/a", &[("x-api-version", "2")])),
            Some(1)
        );
        assert_eq!(
            route_of(find(&t, "GET", None, "/a", &[("x-api-version", "3")])),
            Some(0)
        );
        assert_eq!(
            route_of(find(&t, "GET", None, "/b", &[("x-tenant", "acme-42")])),
            Some(2)
        );
        assert_eq!(
            find(&t, "GET", None, "/b", &[("x-tenant", "evil")]),
            Lookup::NotFound
        );
    }

    #[test]
    fn template_captures() {
        let t = table(&[
            (&["/users/{id}/orders/{oid}"], any()),
            (&["/files/{rest*}"], any()),
            (&["~ ^/v(?P<ver>[0-9]+)/x$"], any()),
        ]);
        let Lookup::Found(m) = find(&t, "GET", None, "/users/7/orders/9", &[]) else {
            panic!()
        };
        assert_eq!(
            t.captures(&m, "/users/7/orders/9"),
            vec![("id", "7"), ("oid", "9")]
        );
        assert_eq!(find(&t, "GET", None, "/users/7/orders", &[]), Lookup::NotFound);
        assert_eq!(find(&t, "GET", None, "/users//orders/9", &[]), Lookup::NotFound);
        let Lookup::Found(m) = find(&t, "GET", None, "/files/a/b/c.txt", &[]) else {
            panic!()
        };
        assert_eq!(t.captures(&m, "/files/a/b/c.txt"), vec![("rest", "a/b/c.txt")]);
        let Lookup::Found(m) = find(&t, "GET", None, "/v3/x", &[]) else {
            panic!()
        };
        assert_eq!(t.captures(&m, "/v3/x"), vec![("ver", "3")]);
    }

    #[test]
    fn case_sensitive_and_semicolons_are_plain() {
        let t = table(&[(&["/Admin"], any()), (&["= /a;b"], any())]);
        assert_eq!(find(&t, "GET", None, "/admin", &[]), Lookup::NotFound);
        assert_eq!(route_of(find(&t, "GET", None, "/a;b", &[])), Some(1));
        assert_eq!(find(&t, "GET", None, "/a", &[]), Lookup::NotFound);
    }

    #[test]
    fn pattern_errors() {
        assert!(PathPattern::parse("api").is_err());
        assert!(PathPattern::parse("/a/{rest*}/b").is_err());
        assert!(PathPattern::parse("/a/x{id}").is_err());
        assert!(PathPattern::parse("/a/{id}/{id}").is_err());
        assert!(PathPattern::parse("~ ([").is_err());
        assert!(PathPattern::parse("= /a/../b").is_err());
        assert_eq!(
            PathPattern::parse("/api/").unwrap(),
            PathPattern::Prefix(vec!["api".into()])
        );
    }
}
