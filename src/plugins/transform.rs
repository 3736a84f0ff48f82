//! `request_transform` and `response_transform`: header add/set/remove/rename
//! and query add/remove. Applied in the order remove → rename → set → add,
//! on the headers in place: no body is touched.

use http::{HeaderMap, HeaderName, HeaderValue, request, response};

use crate::config::{HeaderTransformConfig, RequestTransformConfig, ResponseTransformConfig};

struct HeaderOps {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

fn pairs(map: &std::collections::BTreeMap<String, String>) -> Vec<(HeaderName, HeaderValue)> {
    map.iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

impl HeaderOps {
    fn new(cfg: &HeaderTransformConfig) -> Self {
        HeaderOps {
            remove: cfg
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            rename: cfg
                .rename
                .iter()
                .filter_map(|(a, b)| {
                    Some((
                        HeaderName::from_bytes(a.as_bytes()).ok()?,
                        HeaderName::from_bytes(b.as_bytes()).ok()?,
                    ))
                })
                .collect(),
            set: pairs(&cfg.set),
            add: pairs(&cfg.add),
        }
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (from, to) in &self.rename {
            let values: Vec<HeaderValue> = headers.get_all(from).iter().cloned().collect();
            if !values.is_empty() {
                headers.remove(from);
                for v in values {
                    headers.append(to.clone(), v);
                }
            }
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

pub struct RequestTransform {
    headers: HeaderOps,
    query_add: Vec<(String, String)>,
    query_remove: Vec<String>,
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RequestTransform {
    pub fn new(cfg: &RequestTransformConfig) -> Self {
        RequestTransform {
            headers: HeaderOps::new(&cfg.headers),
            query_add: cfg
                .query
                .add
                .iter()
                .map(|(k, v)| (encode(k), encode(v)))
                .collect(),
            query_remove: cfg.query.remove.iter().map(|k| encode(k)).collect(),
        }
    }

    pub fn apply(&self, req: &mut request::Parts) {
        self.headers.apply(&mut req.headers);
        if self.query_add.is_empty() && self.query_remove.is_empty() {
            return;
        }
        let mut query: Vec<String> = req
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let key = p.split('=').next().unwrap_or("");
                !self.query_remove.iter().any(|r| r == key)
            })
            .map(str::to_string)
            .collect();
        query.extend(self.query_add.iter().map(|(k, v)| format!("{k}={v}")));
        super::set_query(req, &query);
    }
}

pub struct ResponseTransform {
    headers: HeaderOps,
}

impl ResponseTransform {
    pub fn new(cfg: &ResponseTransformConfig) -> Self {
        ResponseTransform {
            headers: HeaderOps::new(&cfg.headers),
        }
    }

    pub fn apply(&self, resp: &mut response::Parts) {
        self.headers.apply(&mut resp.headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{QueryTransformConfig, RequestTransformConfig};

    #[test]
    fn headers_and_query() {
        let mut cfg = RequestTransformConfig::default();
        cfg.headers.remove = vec!["x-secret".into()];
        cfg.headers.rename = [("x-old".to_string(), "x-new".to_string())].into();
        cfg.headers.set = [("x-env".to_string(), "prod".to_string())].into();
        cfg.headers.add = [("x-tag".to_string(), "b".to_string())].into();
        cfg.query = QueryTransformConfig {
            add: [("v".to_string(), "a b".to_string())].into(),
            remove: vec!["debug".into()],
        };
        let t = RequestTransform::new(&cfg);
        let (mut parts, ()) = http::Request::builder()
            .uri("/x?debug=1&keep=2")
            .header("x-secret", "s")
            .header("x-old", "o")
            .header("x-env", "dev")
            .header("x-tag", "a")
            .body(())
            .unwrap()
            .into_parts();
        t.apply(&mut parts);
        assert!(parts.headers.get("x-secret").is_none());
        assert_eq!(parts.headers["x-new"], "o");
        assert_eq!(parts.headers["x-env"], "prod");
        let tags: Vec<_> = parts.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
        assert_eq!(parts.uri.to_string(), "/x?keep=2&v=a%20b");
    }
}
