//! One request through the gateway:
//!
//! ```text
//! checks (framing, header size, host, path) → route lookup → request phases
//!   → action (upstream call | fixed answer) → response phases → client
//! ```
//!
//! Every gateway-made answer goes through `GatewayError::into_response`, and
//! every answer carries the request id.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, Version, request};
use http_body::Body;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::forwarded;
use crate::body::{BodyTooLarge, ClientBodyError, RequestBody, ResponseBody, caused_by};
use crate::config::Protocol;
use crate::error::GatewayError;
use crate::plugins::{Flow, RequestCtx};
use crate::router::path;
use crate::router::{Lookup, Match, RouteRequest};
use crate::snapshot::{Action, Route, Runtime};
use crate::upstream::{PickContext, Upstream};

/// What the handler knows of the connection a request came on.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

static VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 portcullis");

pub async fn handle(rt: &Runtime, conn: &ConnInfo, req: Request<Incoming>) -> Response<ResponseBody> {
    let settings = &rt.settings;
    let request_id = match req.headers().get(&settings.request_id_header) {
        Some(v) if settings.trust_request_id && forwarded::valid_request_id(v) => v.clone(),
        _ => forwarded::new_request_id(),
    };
    let mut resp = match process(rt, conn, req, &request_id).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(&request_id),
    };
    let headers = resp.headers_mut();
    headers.insert(settings.request_id_header.clone(), request_id);
    if settings.via {
        headers.append(forwarded::VIA.clone(), VIA_VALUE.clone());
    }
    resp
}

async fn process(
    rt: &Runtime,
    conn: &ConnInfo,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Result<Response<ResponseBody>, GatewayError> {
    let settings = &rt.settings;
    let (mut parts, body) = req.into_parts();
    check_framing(&parts)?;
    let limit = settings.limits.max_request_header_bytes.0;
    if header_bytes(&parts) > limit {
        return Err(GatewayError::HeadersTooLarge { limit });
    }
    let host = request_host(&parts)?;
    let route_host = host.map(route_host);
    let raw_path = parts.uri.path();
    let path = path::normalize(raw_path)
        .map_err(GatewayError::InvalidPath)?
        .into_owned_if_changed(raw_path);

    let lookup = rt.table.lookup(&RouteRequest {
        host: route_host.as_deref(),
        method: &parts.method,
        path: path.as_deref().unwrap_or(raw_path),
        headers: &parts.headers,
    });
    let m = match lookup {
        Lookup::Found(m) => m,
        Lookup::MethodNotAllowed(allow) => return Err(GatewayError::MethodNotAllowed { allow }),
        Lookup::NotFound => return Err(GatewayError::RouteNotFound),
    };
    let route = &rt.routes[m.route];
    if body.size_hint().lower() > route.max_body {
        return Err(GatewayError::PayloadTooLarge {
            limit: route.max_body,
        });
    }

    // Request hygiene, before any plugin sees the headers.
    let peer_trusted = forwarded::is_trusted(conn.peer.ip(), &settings.trusted_proxies);
    let client_ip = forwarded::client_ip(conn.peer.ip(), &parts.headers, &settings.trusted_proxies);
    let host = host.map(str::to_owned);
    let incoming_trace = parts.headers.remove(&forwarded::TRACEPARENT);
    forwarded::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&settings.request_id_header);

    let mut ctx = RequestCtx {
        request_id: request_id.clone(),
        client_ip,
        consumer: None,
    };
    if let Flow::Respond(resp) = route.pipeline.on_request(&mut ctx, &mut parts).await? {
        return Ok(resp);
    }

    let resp = match &route.action {
        Action::Respond {
            status,
            headers,
            body,
        } => {
            let mut resp = Response::new(ResponseBody::full(body.clone()));
            *resp.status_mut() = *status;
            *resp.headers_mut() = headers.clone();
            resp
        }
        Action::Proxy { upstream, .. } => {
            let deadline = Instant::now() + route.timeout;
            let path = path.as_deref().unwrap_or(parts.uri.path()).to_owned();
            forwarded::set_forwarded(
                &mut parts.headers,
                conn.peer.ip(),
                peer_trusted,
                if conn.tls { "https" } else { "http" },
                host.as_deref(),
            );
            parts
                .headers
                .insert(settings.request_id_header.clone(), request_id.clone());
            parts.headers.insert(
                forwarded::TRACEPARENT.clone(),
                forwarded::next_traceparent(incoming_trace.as_ref()),
            );
            if settings.via {
                parts.headers.append(forwarded::VIA.clone(), VIA_VALUE.clone());
            }
            let call = forward(
                rt,
                route,
                upstream,
                &m,
                &path,
                &ctx,
                parts,
                body,
                host.as_deref(),
                deadline,
            );
            match tokio::time::timeout_at(deadline, call).await {
                Ok(r) => r?,
                Err(_) => return Err(GatewayError::GatewayTimeout),
            }
        }
    };
    let (mut resp_parts, resp_body) = resp.into_parts();
    route.pipeline.on_response(&ctx, &mut resp_parts);
    Ok(Response::from_parts(resp_parts, resp_body))
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    rt: &Runtime,
    route: &Route,
    upstream: &Upstream,
    m: &Match,
    path: &str,
    ctx: &RequestCtx,
    mut parts: request::Parts,
    body: Incoming,
    host: Option<&str>,
    deadline: Instant,
) -> Result<Response<ResponseBody>, GatewayError> {
    let Action::Proxy {
        strip_prefix,
        rewrite,
        ..
    } = &route.action
    else {
        unreachable!("proxy action")
    };
    let (target, in_flight) = upstream.pick(&PickContext {
        client_ip: ctx.client_ip,
        headers: &parts.headers,
        consumer: ctx.consumer.as_deref(),
    });

    // The upstream path: normalized, then strip_prefix, then rewrite.
    let mut query = parts.uri.query().map(Cow::Borrowed);
    let mut upstream_path: Cow<'_, str> = Cow::Borrowed(path);
    if let Some(prefix) = strip_prefix {
        upstream_path = crate::snapshot::strip_prefix(path, prefix);
    }
    if let Some(rw) = rewrite {
        let rendered = rw.render(&rt.table.captures(m, path));
        match rendered.split_once('?') {
            Some((p, q)) => {
                query = Some(Cow::Owned(q.to_string()));
                upstream_path = Cow::Owned(p.to_string());
            }
            None => upstream_path = Cow::Owned(rendered),
        }
    }
    let pq = match (&upstream_path, parts.uri.path_and_query()) {
        (Cow::Borrowed(p), Some(orig)) if *p == orig.path() && query.as_deref() == orig.query() => {
            orig.clone()
        }
        _ => {
            let s = match &query {
                Some(q) => format!("{upstream_path}?{q}"),
                None => upstream_path.into_owned(),
            };
            PathAndQuery::from_maybe_shared(bytes::Bytes::from(s)).map_err(|_| GatewayError::BadRequest {
                detail: "the rewritten path is invalid",
                close: false,
            })?
        }
    };
    parts.uri = Uri::builder()
        .scheme(upstream.scheme())
        .authority(target.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| GatewayError::BadRequest {
            detail: "the request target is invalid",
            close: false,
        })?;

    match upstream.protocol {
        Protocol::Http1 => {
            parts.version = Version::HTTP_11;
            if !parts.headers.contains_key(HOST) {
                let value = host.unwrap_or(target.authority.as_str());
                if let Ok(v) = HeaderValue::from_str(value) {
                    parts.headers.insert(HOST, v);
                }
            }
        }
        Protocol::Http2 | Protocol::Grpc => {
            parts.version = Version::HTTP_2;
            // HTTP/2 carries the host in :authority; keep the client's as Host.
        }
    }

    let req = Request::from_parts(parts, RequestBody::new(body, route.max_body));
    let read_deadline = deadline.min(Instant::now() + upstream.read_timeout);
    let resp = match tokio::time::timeout_at(read_deadline, upstream.client.request(req)).await {
        Err(_) => return Err(GatewayError::GatewayTimeout),
        Ok(Err(e)) => {
            return Err(if caused_by::<BodyTooLarge>(&e) {
                GatewayError::PayloadTooLarge {
                    limit: route.max_body,
                }
            } else if caused_by::<ClientBodyError>(&e) {
                GatewayError::BadRequest {
                    detail: "the request body is malformed or was cut off",
                    close: true,
                }
            } else if e.is_connect() {
                if io_timed_out(&e) {
                    GatewayError::GatewayTimeout
                } else {
                    GatewayError::UpstreamConnect(format!("{}: {e:?}", target.authority))
                }
            } else {
                GatewayError::UpstreamProtocol(format!("{}: {e:?}", target.authority))
            });
        }
        Ok(Ok(resp)) => resp,
    };
    let (mut resp_parts, resp_body) = resp.into_parts();
    forwarded::strip_hop_by_hop(&mut resp_parts.headers);
    let body = ResponseBody::upstream(resp_body, deadline, upstream.read_timeout, Some(in_flight));
    Ok(Response::from_parts(resp_parts, body))
}

/// Whether a connect error was the connect timeout (504) rather than a refusal (502).
fn io_timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Refuses the request-smuggling shapes hyper lets through (SPEC section 8).
fn check_framing(parts: &request::Parts) -> Result<(), GatewayError> {
    if parts.version <= Version::HTTP_11 {
        let conflict = parts
            .extensions
            .get::<super::server::ConflictingFraming>()
            .is_some();
        if conflict
            || (parts.headers.contains_key(TRANSFER_ENCODING) && parts.headers.contains_key(CONTENT_LENGTH))
        {
            return Err(GatewayError::BadRequest {
                detail: "a request must not carry both Content-Length and Transfer-Encoding",
                close: true,
            });
        }
        let mut lengths = parts.headers.get_all(CONTENT_LENGTH).iter();
        if let Some(first) = lengths.next() {
            let ok = |v: &HeaderValue| !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit);
            if !ok(first) || lengths.any(|v| v != first) {
                return Err(GatewayError::BadRequest {
                    detail: "invalid Content-Length",
                    close: true,
                });
            }
        }
    }
    Ok(())
}

/// Bytes of the request line and headers, as the client sent them (near enough).
fn header_bytes(parts: &request::Parts) -> u64 {
    let line = parts.method.as_str().len() + parts.uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    let headers: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    (line + headers) as u64
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute
/// form) or the `Host` header. HTTP/1.1 requires one, and only one.
fn request_host(parts: &request::Parts) -> Result<Option<&str>, GatewayError> {
    let bad = |detail| GatewayError::BadRequest { detail, close: true };
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("more than one Host header"));
    }
    let host = match (parts.uri.authority(), header) {
        (Some(a), _) => Some(a.as_str()),
        (None, Some(h)) => Some(h.to_str().map_err(|_| bad("invalid Host header"))?),
        (None, None) if parts.version == Version::HTTP_11 => {
            return Err(bad("HTTP/1.1 requests need a Host header"));
        }
        (None, None) => None,
    };
    if let Some(h) = host {
        let valid = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'));
        if !valid {
            return Err(bad("invalid Host header"));
        }
    }
    Ok(host)
}

/// The host as routes match it: lower case, without the port.
fn route_host(h: &str) -> Cow<'_, str> {
    let bare = if h.starts_with('[') {
        h.split_once(']').map_or(h, |(v6, _)| &h[..v6.len() + 1])
    } else {
        h.rsplit_once(':').map_or(h, |(name, _)| name)
    };
    if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(bare.to_ascii_lowercase())
    } else {
        Cow::Borrowed(bare)
    }
}

trait IntoOwnedIfChanged {
    fn into_owned_if_changed(self, original: &str) -> Option<String>;
}

impl IntoOwnedIfChanged for Cow<'_, str> {
    /// `None` when normalization changed nothing (the common case: no copy).
    fn into_owned_if_changed(self, original: &str) -> Option<String> {
        match self {
            Cow::Borrowed(_) => None,
            Cow::Owned(s) if s == original => None,
            Cow::Owned(s) => Some(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_hosts() {
        assert_eq!(route_host("API.example.com:8080"), "api.example.com");
        assert_eq!(route_host("[::1]:80"), "[::1]");
        assert_eq!(route_host("example.com"), "example.com");
    }
}
