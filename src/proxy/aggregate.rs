//! `aggregate` routes (SPEC section 4): one request, several upstream calls
//! made at once, one JSON answer keyed by call name.
//!
//! ```text
//! render each call's path from the request (values percent-encoded)
//!   → all calls concurrently through the upstream phase (breaker, retries,
//!     health), each within its own timeout and the aggregate's
//!   → 2xx JSON answers in place; a failed optional call takes its fallback
//!     (or null) and is listed in `_errors`; a failed required call fails
//!     the request (504 on timeout, else 502)
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Response, request};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::forward::{Call, forward};
use crate::body::{RequestBody, ResponseBody};
use crate::config::AggregateConfig;
use crate::error::GatewayError;
use crate::plugins::RequestCtx;
use crate::snapshot::Route;
use crate::telemetry::Exchange;
use crate::upstream::Upstream;

/// The largest answer a call may give (it is read whole to be parsed).
const MAX_CALL_BODY: usize = 8 << 20;

pub struct Aggregate {
    timeout: Duration,
    calls: Vec<AggregateCall>,
}

struct AggregateCall {
    name: String,
    upstream: Arc<Upstream>,
    path: Template,
    required: bool,
    fallback: Value,
    timeout: Duration,
}

/// A call's path: literal text and `{source.name}` variables.
struct Template(Vec<Part>);

enum Part {
    Literal(String),
    Var(Var),
}

enum Var {
    Path(String),
    Query(String),
    Header(HeaderName),
    Jwt(String),
    Consumer,
}

impl Var {
    fn parse(s: &str) -> Result<Var, String> {
        let (source, name) = s
            .split_once('.')
            .ok_or_else(|| format!("`{{{s}}}` is not a variable (e.g. `{{path.id}}`, `{{jwt.sub}}`)"))?;
        if name.is_empty() {
            return Err(format!("`{{{s}}}` names nothing"));
        }
        Ok(match source {
            "path" => Var::Path(name.into()),
            "query" => Var::Query(name.into()),
            "header" => Var::Header(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`{name}` is not a header name"))?,
            ),
            "jwt" => Var::Jwt(name.into()),
            "consumer" if name == "name" => Var::Consumer,
            _ => {
                return Err(format!(
                    "unknown variable `{{{s}}}` (expected path.NAME, query.NAME, header.NAME, jwt.CLAIM or consumer.name)"
                ));
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            Var::Path(n) => format!("path.{n}"),
            Var::Query(n) => format!("query.{n}"),
            Var::Header(n) => format!("header.{n}"),
            Var::Jwt(n) => format!("jwt.{n}"),
            Var::Consumer => "consumer.name".into(),
        }
    }
}

impl Template {
    fn parse(s: &str) -> Result<Template, String> {
        if !s.starts_with('/') {
            return Err("must start with `/`".into());
        }
        let mut parts = Vec::new();
        for piece in crate::snapshot::braces(s)? {
            parts.push(match piece {
                crate::snapshot::Brace::Text(t) => Part::Literal(t.to_string()),
                crate::snapshot::Brace::Name(name) => Part::Var(Var::parse(name)?),
            });
        }
        let literal: String = parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.as_str(),
                Part::Var(_) => "x",
            })
            .collect();
        PathAndQuery::try_from(literal.as_str()).map_err(|_| "not a valid path and query".to_string())?;
        Ok(Template(parts))
    }

    /// The path and query for this request. Every value is percent-encoded
    /// (all but letters, digits, `-`, `_` and `~`), so client input can
    /// neither add segments, climb with `..`, nor start a new query
    /// parameter. A variable without a value is an error naming it.
    fn render(&self, req: &Values<'_>) -> Result<PathAndQuery, String> {
        let mut out = String::with_capacity(64);
        for p in &self.0 {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Var(v) => {
                    let value = req
                        .get(v)
                        .ok_or_else(|| format!("`{{{}}}` has no value", v.describe()))?;
                    encode_into(&mut out, &value);
                }
            }
        }
        PathAndQuery::from_maybe_shared(Bytes::from(out)).map_err(|e| e.to_string())
    }
}

/// `.` is escaped too, so a value is never a `.` or `..` segment.
fn encode_into(out: &mut String, value: &str) {
    crate::plugins::percent_encode_into(out, value, b"-_~");
}

/// Where template variables take their values from.
pub struct Values<'a> {
    pub captures: &'a [(&'a str, &'a str)],
    pub req: &'a request::Parts,
    pub ctx: &'a RequestCtx<'a>,
}

impl Values<'_> {
    fn get(&self, var: &Var) -> Option<String> {
        match var {
            Var::Path(n) => self
                .captures
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_string()),
            Var::Query(n) => self
                .req
                .uri
                .query()
                .and_then(|q| crate::plugins::query_value(q, n)),
            Var::Header(n) => self.req.headers.get(n)?.to_str().ok().map(str::to_string),
            Var::Jwt(claim) => match self.ctx.claims.as_ref()?.get(claim)? {
                Value::String(s) => Some(s.clone()),
                Value::Null | Value::Array(_) | Value::Object(_) => None,
                other => Some(other.to_string()),
            },
            Var::Consumer => self.ctx.consumer.as_ref().map(|c| c.name.clone()),
        }
    }
}

impl Aggregate {
    /// Errors name the field under `scope` (`routes[2].aggregate`).
    pub fn new(
        cfg: &AggregateConfig,
        upstreams: &std::collections::HashMap<String, Arc<Upstream>>,
        captures: &[String],
        scope: &str,
        errors: &mut Vec<crate::config::FieldError>,
    ) -> Option<Aggregate> {
        use crate::config::FieldError;
        let before = errors.len();
        if cfg.timeout.0.is_zero() {
            errors.push(FieldError::new(format!("{scope}.timeout"), "must be above zero"));
        }
        if cfg.calls.is_empty() {
            errors.push(FieldError::new(
                format!("{scope}.calls"),
                "needs at least one call",
            ));
        }
        let mut calls = Vec::new();
        for (name, c) in &cfg.calls {
            let p = format!("{scope}.calls.{name}");
            if name.starts_with('_') {
                errors.push(FieldError::new(
                    p.clone(),
                    "call names starting with `_` are reserved",
                ));
            }
            let path = match Template::parse(&c.path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(FieldError::new(format!("{p}.path"), e));
                    continue;
                }
            };
            for part in &path.0 {
                if let Part::Var(Var::Path(n)) = part
                    && !captures.contains(n)
                {
                    errors.push(FieldError::new(
                        format!("{p}.path"),
                        format!("`{{path.{n}}}` is not captured by the route's paths"),
                    ));
                }
            }
            if c.timeout.is_some_and(|t| t.0.is_zero()) {
                errors.push(FieldError::new(format!("{p}.timeout"), "must be above zero"));
            }
            // An unknown upstream is reported by validation.
            let Some(upstream) = upstreams.get(&c.upstream) else {
                continue;
            };
            calls.push(AggregateCall {
                name: name.clone(),
                upstream: upstream.clone(),
                path,
                required: c.required,
                fallback: c.fallback.clone().unwrap_or(Value::Null),
                timeout: c.timeout.map_or(cfg.timeout.0, |t| t.0.min(cfg.timeout.0)),
            });
        }
        (errors.len() == before).then_some(Aggregate {
            timeout: cfg.timeout.0,
            calls,
        })
    }

    /// The upstreams it calls (admin API: an upstream in use).
    pub fn upstreams(&self) -> impl Iterator<Item = &Upstream> {
        self.calls.iter().map(|c| &*c.upstream)
    }

    /// Makes every call at once and assembles the answer.
    pub async fn run(
        &self,
        route: &Route,
        values: &Values<'_>,
        ex: &Exchange,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let ctx = values.ctx;
        let start = Instant::now();
        let overall = (start + self.timeout).min(ctx.deadline);
        let calls = self.calls.iter().map(|call| async move {
            let deadline = (start + call.timeout).min(overall);
            let outcome = match call.path.render(values) {
                Ok(pq) => {
                    let parts = sub_request(values.req);
                    let mut sub_ex = ex.sub_request();
                    let call_future = async {
                        let c = Call {
                            route,
                            upstream: &call.upstream,
                            ctx,
                            host: None,
                            deadline,
                        };
                        let resp = forward(
                            c,
                            Box::new(parts),
                            pq,
                            RequestBody::full(Bytes::new()),
                            &mut sub_ex,
                        )
                        .await?;
                        read_json(resp).await
                    };
                    match tokio::time::timeout_at(deadline, call_future).await {
                        Ok(r) => r,
                        Err(_) => Err(Failure::Timeout),
                    }
                }
                Err(missing) => Err(Failure::Missing(missing)),
            };
            (call, outcome)
        });
        let outcomes = futures_util::future::join_all(calls).await;

        let mut body = Map::new();
        let mut errors = Map::new();
        for (call, outcome) in outcomes {
            match outcome {
                Ok(v) => {
                    body.insert(call.name.clone(), v);
                }
                Err(f) if call.required => return Err(f.into_error(&call.name)),
                Err(f) => {
                    tracing::debug!(call = %call.name, error = %f.label(), "optional aggregate call failed");
                    errors.insert(call.name.clone(), Value::String(f.label()));
                    body.insert(call.name.clone(), call.fallback.clone());
                }
            }
        }
        if !errors.is_empty() {
            body.insert("_errors".into(), Value::Object(errors));
        }
        let data = Bytes::from(serde_json::to_vec(&Value::Object(body)).unwrap_or_default());
        let mut resp = Response::new(ResponseBody::full(data.clone()));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
        Ok(resp)
    }
}

/// A call's request: GET, with the client's headers after the request
/// phases (its credentials, the headers auth plugins set, the request id,
/// `X-Forwarded-*`, `traceparent`, `Host` as when proxying; an HTTP/2
/// client's authority becomes Host in the upstream phase), minus those
/// about the client's body.
fn sub_request(client: &request::Parts) -> request::Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = Method::GET;
    parts.version = client.version;
    parts.headers = client.headers.clone();
    for name in [CONTENT_LENGTH, TRANSFER_ENCODING, CONTENT_TYPE, ACCEPT_ENCODING] {
        parts.headers.remove(name);
    }
    parts.headers.remove("content-encoding");
    parts.headers.remove("expect");
    parts
        .headers
        .insert(ACCEPT, HeaderValue::from_static("application/json"));
    parts
}

/// Why a call gave no value; `label` is what `_errors` says.
enum Failure {
    Timeout,
    Status(u16),
    Connect,
    CircuitOpen,
    BadAnswer,
    Missing(String),
}

impl Failure {
    fn label(&self) -> String {
        match self {
            Failure::Timeout => "timeout".into(),
            Failure::Status(s) => format!("status {s}"),
            Failure::Connect => "connect".into(),
            Failure::CircuitOpen => "circuit_open".into(),
            Failure::BadAnswer => "bad_answer".into(),
            Failure::Missing(m) => m.clone(),
        }
    }

    /// What a failed required call makes of the whole request.
    fn into_error(self, call: &str) -> GatewayError {
        match self {
            Failure::Timeout => GatewayError::GatewayTimeout,
            Failure::Missing(m) => {
                tracing::debug!(call, missing = %m, "aggregate call not made");
                GatewayError::BadRequest {
                    detail: "this request lacks a value the aggregate's calls need",
                    close: false,
                }
            }
            other => GatewayError::AggregateFailed {
                call: call.to_string(),
                why: other.label(),
            },
        }
    }
}

impl From<GatewayError> for Failure {
    fn from(e: GatewayError) -> Failure {
        match e {
            GatewayError::GatewayTimeout => Failure::Timeout,
            GatewayError::CircuitOpen => Failure::CircuitOpen,
            GatewayError::UpstreamConnect(_) | GatewayError::NoHealthyTarget => Failure::Connect,
            _ => Failure::BadAnswer,
        }
    }
}

/// A 2xx JSON answer's value (an empty body is `null`).
async fn read_json(resp: Response<ResponseBody>) -> Result<Value, Failure> {
    let status = resp.status();
    if !status.is_success() {
        return Err(Failure::Status(status.as_u16()));
    }
    let data = crate::body::collect_answer(resp.into_body(), MAX_CALL_BODY)
        .await?
        .to_bytes();
    if data.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&data).map_err(|_| Failure::BadAnswer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_refuse() {
        assert!(Template::parse("/users/{jwt.sub}?limit=5").is_ok());
        assert!(Template::parse("users").is_err());
        assert!(Template::parse("/u/{jwt.sub").is_err());
        assert!(Template::parse("/u/{cookie.x}").is_err());
        assert!(Template::parse("/u/{sub}").is_err());
        assert!(Template::parse("/u/}").is_err());
    }

    #[test]
    fn values_cannot_escape_their_place() {
        let mut out = String::new();
        encode_into(&mut out, "../admin?x=1&y=2#z");
        assert_eq!(out, "%2E%2E%2Fadmin%3Fx%3D1%26y%3D2%23z");
        let mut out = String::new();
        encode_into(&mut out, "ann-7_b~");
        assert_eq!(out, "ann-7_b~");
    }
}
