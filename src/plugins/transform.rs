//! `request_transform` and `response_transform`: header add/set/remove/rename
//! and query add/remove, applied in the order remove → rename → set → add on
//! the headers in place; and `json` edits of JSON bodies (`json_ops.rs`),
//! the only case where a body is read whole (up to [`MAX_JSON_BODY`]).

use http::{HeaderMap, HeaderName, HeaderValue, Response, request, response};

use super::json_ops::{JsonOps, is_json};
use crate::body::{RequestBody, ResponseBody};
use crate::config::{HeaderTransformConfig, RequestTransformConfig, ResponseTransformConfig};
use crate::error::GatewayError;

/// The largest upstream JSON answer a `response_transform.json` reads; a
/// larger one is a 502 (an allow-list never lets a body through unfiltered).
pub const MAX_JSON_BODY: usize = 8 << 20;

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
        // A value `set` is the gateway's: a `_` spelling of its name, read
        // as the same by CGI-style servers, must not stand beside it.
        if !self.set.is_empty() {
            crate::proxy::forwarded::drop_underscore_aliases(headers, |n| {
                self.set.iter().any(|(name, _)| name.as_str() == n)
            });
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
    json: Option<JsonOps>,
}

/// A query name or value: RFC 3986 unreserved characters kept.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    super::percent_encode_into(&mut out, s, b"-._~");
    out
}

impl RequestTransform {
    /// Errors name the field under `request_transform`.
    pub fn new(cfg: &RequestTransformConfig) -> Result<Self, (String, String)> {
        let json = cfg
            .json
            .as_ref()
            .map(JsonOps::new)
            .transpose()
            .map_err(|(f, e)| (format!("json.{f}"), e))?;
        Ok(RequestTransform {
            json,
            headers: HeaderOps::new(&cfg.headers),
            query_add: cfg
                .query
                .add
                .iter()
                .map(|(k, v)| (encode(k), encode(v)))
                .collect(),
            query_remove: cfg.query.remove.iter().map(|k| encode(k)).collect(),
        })
    }

    /// The `json` edits of a JSON request body (read whole within the
    /// route's limit); other bodies are left to stream.
    pub async fn apply_body(
        &self,
        req: &mut request::Parts,
        body: &mut RequestBody,
    ) -> Result<(), GatewayError> {
        let Some(ops) = &self.json else { return Ok(()) };
        if !is_json(req.headers.get(http::header::CONTENT_TYPE)) {
            return Ok(());
        }
        let data = body.read_whole().await?;
        if data.is_empty() {
            return Ok(());
        }
        let mut doc: serde_json::Value =
            serde_json::from_slice(&data).map_err(|_| GatewayError::BadRequest {
                detail: "the body is labelled JSON but is not valid JSON",
                close: false,
            })?;
        ops.apply(&mut doc);
        let edited = bytes::Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
        req.headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(edited.len()));
        *body = RequestBody::full(edited);
        Ok(())
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
    json: Option<JsonOps>,
}

impl ResponseTransform {
    /// Errors name the field under `response_transform`.
    pub fn new(cfg: &ResponseTransformConfig) -> Result<Self, (String, String)> {
        Ok(ResponseTransform {
            headers: HeaderOps::new(&cfg.headers),
            json: cfg
                .json
                .as_ref()
                .map(JsonOps::new)
                .transpose()
                .map_err(|(f, e)| (format!("json.{f}"), e))?,
        })
    }

    /// Whether it edits JSON answers (their bodies must be read).
    pub fn edits_json(&self) -> bool {
        self.json.is_some()
    }

    /// The `json` edits of a JSON answer, read whole (at most
    /// [`MAX_JSON_BODY`]); other answers go on streaming.
    pub async fn apply_body(
        &self,
        resp: Response<ResponseBody>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let Some(ops) = &self.json else { return Ok(resp) };
        if !is_json(resp.headers().get(http::header::CONTENT_TYPE)) {
            return Ok(resp);
        }
        let (mut parts, body) = resp.into_parts();
        let data = crate::body::collect_answer(body, MAX_JSON_BODY).await?.to_bytes();
        let mut doc: serde_json::Value = serde_json::from_slice(&data).map_err(|e| {
            GatewayError::UpstreamProtocol(format!("an answer labelled JSON is not JSON: {e}"))
        })?;
        ops.apply(&mut doc);
        let edited = bytes::Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
        parts.headers.remove(http::header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(edited.len()));
        Ok(Response::from_parts(parts, ResponseBody::full(edited)))
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
        let t = RequestTransform::new(&cfg).unwrap();
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
