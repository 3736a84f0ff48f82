//! Gateway-made errors and the one place that maps each to an HTTP answer:
//! an RFC 9457 problem+json body with a `urn:portcullis:error:<slug>` type
//! (SPEC section 8). A new variant does not compile until it has a status.

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;
use crate::router::path::PathError;

/// Which side of the gateway a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Gateway,
}

#[derive(Debug)]
pub enum GatewayError {
    /// 400: malformed request; `close` ends the connection (request smuggling).
    BadRequest { detail: &'static str, close: bool },
    /// 400: the path is unsafe or malformed.
    InvalidPath(PathError),
    /// 401: no valid credential, with the `WWW-Authenticate` challenge.
    /// `plugin` names the auth plugin (the `auth_failures_total` label).
    Unauthorized {
        plugin: &'static str,
        challenge: &'static str,
        detail: &'static str,
    },
    /// 403: refused by a plugin (ip_restriction, acl).
    Forbidden(&'static str),
    /// 404
    RouteNotFound,
    /// 405, with the `Allow` set of the matching routes.
    MethodNotAllowed { allow: u16 },
    /// 413: the body is larger than the route allows.
    PayloadTooLarge { limit: u64 },
    /// 431
    HeadersTooLarge { limit: u64 },
    /// 431: more header fields than [`crate::http1::MAX_HEADERS`].
    TooManyHeaders,
    /// 502: no connection to the upstream: refused, or its TLS handshake
    /// failed (never sent: safe to retry).
    UpstreamConnect(String),
    /// 502: the upstream answered garbage or reset (may have been processed).
    UpstreamProtocol(String),
    /// 504: the upstream or the route deadline timed out.
    GatewayTimeout,
    /// A gRPC upstream's status other than OK, on a transcoded route: the
    /// HTTP status gRPC-gateway maps it to, with the upstream's message.
    GrpcStatus { code: u16, message: String },
    /// 502: a required call of an `aggregate` route failed (`why` as in `_errors`).
    AggregateFailed { call: String, why: String },
    /// 503: the upstream's circuit is open; nothing was sent.
    CircuitOpen,
    /// 503: every target of the upstream is ejected; nothing was sent.
    NoHealthyTarget,
    /// 429: over a `rate_limit` policy; `retry_after` in seconds.
    RateLimited { retry_after: u64 },
    /// 403: a `waf` rule matched (its id, never the payload, is told).
    WafBlocked { rule: &'static str },
    /// 400: the body does not pass `request_validation`; `pointer` is the
    /// JSON pointer of the failing place (empty: the whole body).
    ValidationFailed { pointer: String, detail: String },
    /// 503: a service the gateway itself depends on (Redis, a token
    /// introspection endpoint) failed; requests it guards fail closed.
    /// `plugin` names the plugin; the cause goes to the log, not the client.
    Unavailable { plugin: &'static str, cause: String },
}

/// For the log: what the client is told and, for a failure behind the
/// gateway, the cause it is not told.
impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GatewayError::UpstreamConnect(cause) | GatewayError::UpstreamProtocol(cause) => {
                write!(f, "{} ({cause})", self.detail())
            }
            GatewayError::Unavailable { plugin, cause } => write!(f, "{plugin}: {cause}"),
            _ => f.write_str(&self.detail()),
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest { .. }
            | GatewayError::InvalidPath(_)
            | GatewayError::ValidationFailed { .. } => StatusCode::BAD_REQUEST,
            GatewayError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) | GatewayError::WafBlocked { .. } => StatusCode::FORBIDDEN,
            GatewayError::RouteNotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::HeadersTooLarge { .. } | GatewayError::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamProtocol(_)
            | GatewayError::AggregateFailed { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::GrpcStatus { code, .. } => crate::proxy::transcode::http_status(*code),
            GatewayError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::CircuitOpen | GatewayError::NoHealthyTarget => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            GatewayError::BadRequest { .. } => "bad-request",
            GatewayError::InvalidPath(_) => "invalid-path",
            GatewayError::ValidationFailed { .. } => "validation-failed",
            GatewayError::Unauthorized { .. } => "unauthorized",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::WafBlocked { .. } => "waf-blocked",
            GatewayError::RouteNotFound => "route-not-found",
            GatewayError::MethodNotAllowed { .. } => "method-not-allowed",
            GatewayError::PayloadTooLarge { .. } => "payload-too-large",
            GatewayError::HeadersTooLarge { .. } | GatewayError::TooManyHeaders => "headers-too-large",
            GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamProtocol(_)
            | GatewayError::AggregateFailed { .. } => "bad-gateway",
            GatewayError::GatewayTimeout => "gateway-timeout",
            GatewayError::GrpcStatus { code, .. } => crate::proxy::transcode::status_slug(*code),
            GatewayError::Unavailable { .. } => "service-unavailable",
            GatewayError::RateLimited { .. } => "rate-limited",
            GatewayError::CircuitOpen => "circuit-open",
            GatewayError::NoHealthyTarget => "no-healthy-target",
        }
    }

    fn detail(&self) -> String {
        match self {
            GatewayError::BadRequest { detail, .. } => (*detail).to_string(),
            GatewayError::InvalidPath(e) => e.describe().to_string(),
            GatewayError::ValidationFailed { detail, .. } => detail.clone(),
            GatewayError::Unauthorized { detail, .. } => (*detail).to_string(),
            GatewayError::Forbidden(why) => (*why).to_string(),
            GatewayError::WafBlocked { rule } => {
                format!("the request was blocked by the web application firewall (rule {rule})")
            }
            GatewayError::RouteNotFound => "no route matches this request".into(),
            GatewayError::MethodNotAllowed { allow } => {
                format!("this path accepts: {}", crate::router::allow_header(*allow))
            }
            GatewayError::PayloadTooLarge { limit } => {
                format!("the request body exceeds {limit} bytes")
            }
            GatewayError::HeadersTooLarge { limit } => {
                format!("the request headers exceed {limit} bytes")
            }
            GatewayError::TooManyHeaders => format!(
                "the request has more than {} header fields",
                crate::http1::MAX_HEADERS
            ),
            // Upstream details go to the log, not to clients.
            GatewayError::UpstreamConnect(_) => {
                "the gateway could not connect to the upstream service".into()
            }
            GatewayError::UpstreamProtocol(_) => "the upstream service sent an invalid response".into(),
            GatewayError::GatewayTimeout => "the upstream service did not answer in time".into(),
            GatewayError::GrpcStatus { code, message } if message.is_empty() => {
                format!("the upstream service answered gRPC status {code}")
            }
            GatewayError::GrpcStatus { message, .. } => message.clone(),
            GatewayError::AggregateFailed { call, why } => {
                format!("the required call `{call}` failed ({why})")
            }
            GatewayError::Unavailable { .. } => {
                "the gateway cannot check this request's credentials right now; try again later".into()
            }
            GatewayError::RateLimited { retry_after } => {
                format!("too many requests; retry after {retry_after} s")
            }
            GatewayError::CircuitOpen => {
                "the upstream service is failing; the gateway is not sending it requests for now".into()
            }
            GatewayError::NoHealthyTarget => {
                "no instance of the upstream service is healthy right now".into()
            }
        }
    }

    pub fn side(&self) -> Side {
        match self {
            GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamProtocol(_)
            | GatewayError::AggregateFailed { .. }
            | GatewayError::GatewayTimeout => Side::Upstream,
            GatewayError::GrpcStatus { code, .. }
                if crate::proxy::transcode::http_status(*code).is_server_error() =>
            {
                Side::Upstream
            }
            GatewayError::Unavailable { .. } => Side::Gateway,
            _ => Side::Downstream,
        }
    }

    /// Safe to send again: the upstream cannot have seen the request.
    pub fn is_retryable(&self) -> bool {
        matches!(self, GatewayError::UpstreamConnect(_))
    }

    /// Whether the client connection must close after this answer (we stop
    /// reading: the rest of its bytes cannot be trusted or are unwanted).
    fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::BadRequest { close: true, .. } | GatewayError::PayloadTooLarge { .. }
        )
    }

    pub fn into_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let status = self.status();
        match self.side() {
            Side::Upstream => {
                tracing::warn!(request_id = crate::telemetry::id_text(request_id), error = %self, "upstream call failed")
            }
            Side::Gateway => {
                tracing::error!(request_id = crate::telemetry::id_text(request_id), error = %self, "a service the gateway depends on failed")
            }
            Side::Downstream => {}
        }
        let mut extensions = serde_json::Map::new();
        if let GatewayError::ValidationFailed { pointer, .. } = &self {
            extensions.insert("pointer".into(), pointer.as_str().into());
        }
        if let GatewayError::WafBlocked { rule } = &self {
            extensions.insert("rule".into(), (*rule).into());
        }
        if let GatewayError::GrpcStatus { code, .. } = &self {
            extensions.insert("grpc_status".into(), (*code).into());
        }
        let mut resp = problem_with(status, self.slug(), &self.detail(), request_id, extensions);
        if let GatewayError::Unauthorized { challenge, .. } = &self {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let GatewayError::RateLimited { retry_after } = self {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        if let GatewayError::MethodNotAllowed { allow } = self
            && let Ok(v) = HeaderValue::from_str(&crate::router::allow_header(allow))
        {
            resp.headers_mut().insert(http::header::ALLOW, v);
        }
        if self.closes_connection() {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// An RFC 9457 problem+json response.
pub fn problem(
    status: StatusCode,
    slug: &str,
    detail: &str,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    problem_with(status, slug, detail, request_id, serde_json::Map::new())
}

/// A problem+json response with extension members (RFC 9457 section 3.2).
pub fn problem_with(
    status: StatusCode,
    slug: &str,
    detail: &str,
    request_id: &HeaderValue,
    extensions: serde_json::Map<String, serde_json::Value>,
) -> Response<ResponseBody> {
    let mut body = serde_json::json!({
        "type": format!("urn:portcullis:error:{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "request_id": request_id.to_str().unwrap_or_default(),
    });
    if let Some(obj) = body.as_object_mut() {
        obj.extend(extensions);
    }
    let mut resp = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn only_unsent_upstream_failures_are_retryable() {
        assert!(GatewayError::UpstreamConnect("refused".into()).is_retryable());
        assert!(!GatewayError::UpstreamProtocol("reset".into()).is_retryable());
        assert!(!GatewayError::GatewayTimeout.is_retryable());
        assert_eq!(GatewayError::GatewayTimeout.side(), Side::Upstream);
        assert_eq!(GatewayError::RouteNotFound.side(), Side::Downstream);
    }

    #[tokio::test]
    async fn problem_json_shape() {
        let id = HeaderValue::from_static("abc");
        let resp = GatewayError::MethodNotAllowed { allow: 1 | 4 }.into_response(&id);
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()["allow"], "GET, POST");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "urn:portcullis:error:method-not-allowed");
        assert_eq!(v["title"], "Method Not Allowed");
        assert_eq!(v["status"], 405);
        assert_eq!(v["request_id"], "abc");
    }
}
