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

use http::header::{COOKIE, HOST};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, HeaderValue, Response, Version, request};
use http_body::Body;

use super::forwarded;
use super::server::ConnHold;
use super::websocket::Upgrade;
use crate::body::{ClientBody, RequestBody, ResponseBody};
use crate::config::Protocol;
use crate::error::GatewayError;
use crate::outline::outlined;
use crate::plugins::cache::Plan;
use crate::plugins::{Flow, RequestCtx};
use crate::router::path;
use crate::router::{Lookup, RouteRequest};
use crate::snapshot::{Action, Runtime};
use crate::telemetry::access_log::Line;
use crate::telemetry::metrics::{Name, PluginLabels, RouteLabel, RouteResultLabels, RuleLabels};
use crate::telemetry::trace::RequestTrace;
use crate::telemetry::{self, Exchange};

/// What the handler knows of the connection a request came on.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer`'s address as a header value, formatted once per connection.
    pub peer_value: HeaderValue,
    pub tls: bool,
    /// The client certificate the TLS handshake verified (mTLS).
    pub client_cert: Option<crate::tls::ClientIdentity>,
    /// The connection's place against `max_connections`, which a
    /// WebSocket tunnel keeps after the connection ends.
    pub hold: ConnHold,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        tls: bool,
        client_cert: Option<crate::tls::ClientIdentity>,
        hold: ConnHold,
    ) -> Self {
        ConnInfo {
            peer,
            peer_value: forwarded::ip_header_value(peer.ip()),
            tls,
            client_cert,
            hold,
        }
    }
}

static VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 portcullis");
static RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: http::HeaderName = http::HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("ratelimit-reset");

/// Answers one request; `ex` records what happened for metrics and logs.
///
/// The head comes boxed: it moves down several calls to the upstream's,
/// and a pointer moves where each would copy ~220 bytes into memory the
/// connection has not touched since its last request.
pub async fn handle(
    rt: &Runtime,
    conn: &ConnInfo,
    parts: Box<request::Parts>,
    body: ClientBody,
    ex: &mut Exchange,
) -> Response<ResponseBody> {
    let settings = &rt.settings;
    let incoming = settings
        .trust_request_id
        .then(|| parts.headers.get(&settings.request_id_header))
        .flatten();
    let request_id = match incoming {
        Some(v) if forwarded::valid_request_id(v) => v.clone(),
        _ => forwarded::new_request_id(),
    };
    if let Some(log) = &mut ex.log {
        // The host as sent (checked later): the URI's authority, or Host.
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()));
        log.line = Some(Line::begin(
            request_id.to_str().unwrap_or(""),
            &parts.method,
            host,
            parts.uri.path(),
        ));
    }
    let mut resp = match process(rt, conn, parts, body, &request_id, ex).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(&request_id),
    };
    ex.status = resp.status().as_u16();
    let headers = resp.headers_mut();
    if let Some(cors) = &ex.cors {
        cors.apply(headers);
    }
    if let Some(q) = ex.quota {
        headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(q.limit));
        headers.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(q.remaining));
        headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(q.reset));
    }
    headers.insert(settings.request_id_header.clone(), request_id);
    if settings.via {
        headers.append(forwarded::VIA.clone(), VIA_VALUE.clone());
    }
    resp
}

async fn process(
    rt: &Runtime,
    conn: &ConnInfo,
    mut parts: Box<request::Parts>,
    body: ClientBody,
    request_id: &HeaderValue,
    ex: &mut Exchange,
) -> Result<Response<ResponseBody>, GatewayError> {
    let settings = &rt.settings;
    check_framing(&parts)?;
    let limit = settings.limits.max_request_header_bytes.0;
    if header_bytes(&parts) > limit {
        return Err(GatewayError::HeadersTooLarge { limit });
    }
    // HTTP/1.1 heads are parsed with room for this many; HTTP/2 ones get the same bound.
    if parts.headers.len() > crate::http1::MAX_HEADERS {
        return Err(GatewayError::TooManyHeaders);
    }
    let host = request_host(&mut parts)?;
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    if let Some(metrics_path) = &settings.metrics_path
        && parts.uri.path() == metrics_path
        && parts.method == http::Method::GET
    {
        return Ok(metrics_response());
    }
    // A WebSocket over HTTP/2 is an extended CONNECT: routed and checked
    // as the GET it stands for.
    let websocket = super::websocket::upgrade_kind(&parts);
    if websocket == Upgrade::Http2 {
        parts.method = http::Method::GET;
    }
    let raw_path = parts.uri.path();
    // `None` when normalization changed nothing (the common case: no copy).
    let normalized = match path::normalize(raw_path).map_err(GatewayError::InvalidPath)? {
        Cow::Owned(p) if p != raw_path => Some(p),
        _ => None,
    };
    let lookup = rt.table.lookup(&RouteRequest {
        host: host
            .as_ref()
            .filter(|_| rt.table.uses_hosts())
            .map(|h| route_host(h.as_str()))
            .as_deref(),
        method: &parts.method,
        path: normalized.as_deref().unwrap_or(raw_path),
        headers: &parts.headers,
    });
    let m = match lookup {
        Lookup::Found(m) => m,
        Lookup::MethodNotAllowed(allow) => return Err(GatewayError::MethodNotAllowed { allow }),
        Lookup::NotFound => return Err(GatewayError::RouteNotFound),
    };
    let route = &rt.routes[m.route];
    ex.route = Some(m.route);
    if body.size_hint().lower() > route.max_body {
        return Err(GatewayError::PayloadTooLarge {
            limit: route.max_body,
        });
    }

    // Request hygiene, before any plugin sees the headers: hop-by-hop
    // headers go, and the headers the gateway sets replace the client's.
    let peer_trusted = forwarded::is_trusted(conn.peer.ip(), &settings.trusted_proxies);
    let client_ip = if peer_trusted {
        forwarded::client_ip(conn.peer.ip(), &parts.headers, &settings.trusted_proxies)
    } else {
        conn.peer.ip()
    };
    let te_trailers = forwarded::strip_hop_by_hop(&mut parts.headers);
    let names = forwarded::scan_names(&parts.headers);
    if names.underscore {
        forwarded::drop_underscore_aliases(&mut parts.headers, |name| {
            forwarded::set_by_the_gateway(name, &settings.request_id_header)
        });
    }
    if websocket != Upgrade::No {
        super::websocket::set_upgrade_headers(&mut parts.headers);
    }
    // Room for the headers set below, in one growth instead of several.
    parts.headers.reserve(6);
    let proto = if conn.tls { "https" } else { "http" };
    forwarded::set_forwarded(
        &mut parts.headers,
        &conn.peer_value,
        peer_trusted,
        proto,
        host.as_ref(),
        names,
    );
    parts
        .headers
        .insert(settings.request_id_header.clone(), request_id.clone());
    let incoming_trace = names
        .traceparent
        .then(|| parts.headers.get(&forwarded::TRACEPARENT))
        .flatten()
        .filter(|v| forwarded::valid_traceparent(v.as_bytes()));
    let continued = incoming_trace.is_some();
    let new_sampled = settings.tracer.as_ref().is_none_or(|t| t.sample());
    let traceparent = forwarded::next_traceparent(incoming_trace, new_sampled);
    if let Some(tracer) = &settings.tracer {
        let sampled = forwarded::is_sampled(traceparent.as_bytes());
        if sampled || tracer.always_sample_errors() {
            ex.trace = Some(Box::new(RequestTrace {
                start: std::time::SystemTime::now(),
                sent: traceparent.as_bytes().try_into().unwrap_or([b'0'; 55]),
                parent: incoming_trace.and_then(|v| v.as_bytes().get(36..52)?.try_into().ok()),
                sampled,
                upstream_start: None,
                path: parts.uri.path().to_string(),
                request_id: request_id.clone(),
                client_ip,
            }));
        }
    }
    if let Some(line) = ex.log.as_mut().and_then(|l| l.line.as_mut()) {
        let trace_id = traceparent.as_bytes().get(3..35);
        if client_ip == conn.peer.ip() {
            line.client(&conn.peer_value, trace_id);
        } else {
            line.client(&forwarded::ip_header_value(client_ip), trace_id);
        }
    }
    parts.headers.insert(forwarded::TRACEPARENT.clone(), traceparent);
    if !continued && names.tracestate {
        // A new trace: the client's `tracestate` belonged to one that is
        // not continued (W3C Trace Context: without a valid traceparent it
        // is discarded).
        parts.headers.remove(&forwarded::TRACESTATE);
    }
    if settings.via {
        parts.headers.append(forwarded::VIA.clone(), VIA_VALUE.clone());
    }

    // A verified client certificate names the consumer, unless an auth
    // plugin of the route names another.
    let cert_consumer = conn
        .client_cert
        .as_ref()
        .and_then(|c| c.name())
        .and_then(|name| rt.shared.cert_subjects.get(name))
        .cloned();
    let mut ctx = RequestCtx {
        request_id: request_id.clone(),
        client_ip,
        consumer: cert_consumer,
        route: &route.name,
        quota: None,
        cors: None,
        // The route's deadline counts from the request's arrival.
        deadline: ex.started() + route.timeout,
        claims: None,
    };
    let bytes_in = ex
        .log
        .as_mut()
        .and_then(|l| l.bytes_in.counter(&body.size_hint()));
    let mut body = RequestBody::new(body, route.max_body, bytes_in);
    // What the client accepts, before a request transform edits it for the upstream.
    let accept_encoding = rt
        .compresses
        .then(|| crate::plugins::compression::accept_encoding(&parts.headers))
        .flatten();
    // Most routes run no request plugin: the chain's code (every plugin's)
    // is then not even polled, and out of line when it runs.
    let flow = if route.pipeline.runs_on_request(&ctx) {
        outlined(route.pipeline.on_request(&mut ctx, &mut parts, &mut body)).await
    } else {
        Ok(Flow::Continue)
    };
    ex.quota = ctx.quota;
    ex.cors = ctx.cors.take();
    if let Err(GatewayError::RateLimited { .. }) = &flow {
        telemetry::metrics()
            .rate_limited
            .get_or_create(&RouteLabel {
                route: Name(route.name.clone()),
            })
            .inc();
    }
    if let Err(GatewayError::WafBlocked { rule }) = &flow {
        telemetry::metrics()
            .waf_blocked
            .get_or_create(&RuleLabels {
                route: Name(route.name.clone()),
                rule: Name((*rule).into()),
            })
            .inc();
    }
    if let Err(GatewayError::Unauthorized { plugin, .. }) = &flow {
        telemetry::metrics()
            .auth_failures
            .get_or_create(&PluginLabels {
                route: Name(route.name.clone()),
                plugin,
            })
            .inc();
    }
    if let (Some(log), Some(consumer)) = (&mut ex.log, &ctx.consumer) {
        log.consumer = Some(consumer.name.as_str().into());
    }
    if let Flow::Respond(resp) = flow? {
        return Ok(*resp);
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
        Action::Transcode { upstream, transcoder } if !crate::proxy::transcode::is_grpc(&parts.headers) => {
            let path = normalized.as_deref().unwrap_or(parts.uri.path()).to_string();
            // Out of line: rare branches keep the common request future
            // small (it is moved whole) and its code dense (`outline.rs`).
            outlined(transcoder.run(route, upstream, &ctx, host, parts, &path, body, ex)).await?
        }
        Action::Aggregate(agg) => {
            let path = normalized.as_deref().unwrap_or(parts.uri.path());
            let captures = rt.table.captures(&m, path);
            let values = crate::proxy::aggregate::Values {
                captures: &captures,
                req: &parts,
                ctx: &ctx,
            };
            outlined(agg.run(route, &values, ex)).await?
        }
        // Proxied as is (a native gRPC request on a transcoding route too).
        Action::Proxy { .. } | Action::Transcode { .. } => {
            let Some((upstream, strip_prefix, rewrite)) = route.action.proxied() else {
                return Err(GatewayError::RouteNotFound);
            };
            let deadline = ctx.deadline;
            // The upstream path: normalized, then strip_prefix, then rewrite.
            let path = normalized.as_deref().unwrap_or(parts.uri.path());
            let pq = upstream_path_and_query(&parts.uri, path, strip_prefix, rewrite, || {
                rt.table.captures(&m, path)
            })?;
            if te_trailers && upstream.protocol != Protocol::Http1 {
                // The one TE value HTTP/2 allows; gRPC servers require it.
                parts
                    .headers
                    .insert(http::header::TE, HeaderValue::from_static("trailers"));
            }
            if websocket != Upgrade::No {
                let hold = conn.hold.clone();
                return outlined(upgrade(
                    rt, route, upstream, &ctx, host, parts, pq, body, hold, ex,
                ))
                .await;
            }
            // gRPC-Web from a browser goes up as gRPC (`grpc_web.rs`).
            let grpc_web = match upstream.protocol {
                Protocol::Http1 => None,
                Protocol::Http2 | Protocol::Grpc => super::grpc_web::variant(&parts.headers),
            };
            let body = match grpc_web {
                Some(v) => outlined(super::grpc_web::request(v, &mut parts, body)).await?,
                None => body,
            };
            let plan = match route.pipeline.cache(&ctx) {
                Some(cache) => {
                    // As routes see it: lower case, no port.
                    let cache_host = host.as_ref().map(|h| route_host(h.as_str()));
                    let client_path = normalized.as_deref().unwrap_or(parts.uri.path());
                    let plan =
                        outlined(cache.plan(&ctx, &parts, cache_host.as_deref().unwrap_or(""), client_path))
                            .await;
                    telemetry::metrics()
                        .cache_requests
                        .get_or_create(&RouteResultLabels {
                            route: Name(route.name.clone()),
                            result: plan.outcome().label(),
                        })
                        .inc();
                    Some(plan)
                }
                None => None,
            };
            match plan {
                Some(Plan::Hit(resp)) => resp,
                plan => {
                    let call = super::forward::Call {
                        route,
                        upstream,
                        ctx: &ctx,
                        host,
                        deadline,
                    };
                    let resp = super::forward::forward(call, parts, pq, body, ex).await?;
                    let resp = match grpc_web {
                        Some(v) => super::grpc_web::response(v, resp),
                        None => resp,
                    };
                    match plan {
                        Some(plan) => outlined(plan.finish(resp)).await,
                        None => resp,
                    }
                }
            }
        }
    };
    let resp = match route.pipeline.response_json(&ctx) {
        Some(t) => t.apply_body(resp).await?,
        None => resp,
    };
    let (mut resp_parts, resp_body) = resp.into_parts();
    route.pipeline.on_response(&ctx, &mut resp_parts);
    let resp = Response::from_parts(resp_parts, resp_body);
    Ok(match route.pipeline.compression(&ctx) {
        Some(c) => c.apply(accept_encoding.as_ref(), resp),
        None => resp,
    })
}

/// A WebSocket upgrade: sent upstream on a connection of its own; a 101
/// joins the two connections into a tunnel (`websocket.rs`).
#[allow(clippy::too_many_arguments)]
async fn upgrade(
    rt: &Runtime,
    route: &crate::snapshot::Route,
    upstream: &crate::upstream::Upstream,
    ctx: &RequestCtx<'_>,
    host: Option<HeaderValue>,
    mut parts: Box<request::Parts>,
    pq: PathAndQuery,
    body: RequestBody,
    hold: ConnHold,
    ex: &mut Exchange,
) -> Result<Response<ResponseBody>, GatewayError> {
    if upstream.protocol != Protocol::Http1 {
        return Err(GatewayError::BadRequest {
            detail: "this route does not accept WebSocket upgrades",
            close: false,
        });
    }
    parts.extensions.insert(crate::upstream::pool::UpgradeRequest);
    let over_h2 = parts.version == Version::HTTP_2;
    if over_h2 {
        super::websocket::as_http1_upgrade(&mut parts);
    }
    let Some(client) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(GatewayError::BadRequest {
            detail: "this connection cannot be upgraded",
            close: false,
        });
    };
    let call = super::forward::Call {
        route,
        upstream,
        ctx,
        host,
        deadline: ctx.deadline,
    };
    // An upgrade request has no body; over HTTP/2 the stream's data is the
    // tunnel's, never a body to send up.
    drop(body);
    let mut resp =
        super::forward::forward(call, parts, pq, RequestBody::full(bytes::Bytes::new()), ex).await?;
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let Some(theirs) = resp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(GatewayError::UpstreamProtocol(
                "a 101 without an upgradable connection".into(),
            ));
        };
        if over_h2 {
            // RFC 8441: a 200 opens the stream; HTTP/2 has no upgrade headers.
            *resp.status_mut() = http::StatusCode::OK;
            resp.headers_mut().remove("sec-websocket-accept");
        } else {
            super::websocket::set_upgrade_headers(resp.headers_mut());
        }
        super::websocket::spawn_tunnel(
            client,
            theirs,
            super::websocket::TunnelLimits {
                max_frame: route.max_body,
                idle_timeout: rt.settings.limits.idle_timeout.0,
            },
            hold,
        );
    }
    Ok(resp)
}

/// The path and query sent upstream. Reuses the client's (no copy) unless
/// normalization, `strip_prefix` or `rewrite` changed it.
pub(crate) fn upstream_path_and_query<'a>(
    uri: &Uri,
    path: &'a str,
    strip_prefix: Option<&str>,
    rewrite: Option<&crate::snapshot::Rewrite>,
    captures: impl FnOnce() -> Vec<(&'a str, &'a str)>,
) -> Result<PathAndQuery, GatewayError> {
    let mut query = uri.query().map(Cow::Borrowed);
    let mut upstream_path: Cow<'_, str> = Cow::Borrowed(path);
    if let Some(prefix) = strip_prefix {
        upstream_path = crate::snapshot::strip_prefix(path, prefix);
    }
    if let Some(rw) = rewrite {
        let rendered = rw.render(&captures());
        match rendered.split_once('?') {
            Some((p, q)) => {
                query = Some(Cow::Owned(q.to_string()));
                upstream_path = Cow::Owned(p.to_string());
            }
            None => upstream_path = Cow::Owned(rendered),
        }
    }
    if let Some(orig) = uri.path_and_query()
        && upstream_path == orig.path()
        && query.as_deref() == orig.query()
    {
        return Ok(orig.clone());
    }
    let s = match &query {
        Some(q) => format!("{upstream_path}?{q}"),
        None => upstream_path.into_owned(),
    };
    PathAndQuery::from_maybe_shared(bytes::Bytes::from(s)).map_err(|_| GatewayError::BadRequest {
        detail: "the rewritten path is invalid",
        close: false,
    })
}

/// `server.metrics_path` on a data listener.
fn metrics_response() -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(bytes::Bytes::from(
        telemetry::metrics::encode(),
    )));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(telemetry::metrics::CONTENT_TYPE),
    );
    resp
}

/// Refuses the request-smuggling shapes hyper lets through (SPEC section 8).
fn check_framing(parts: &request::Parts) -> Result<(), GatewayError> {
    // hyper itself refuses a Content-Length that is not all digits, or
    // several that differ, and a Transfer-Encoding that does not end in
    // chunked. It takes CL + TE by TE instead of refusing it: the connection
    // layer marks those requests (it sees the raw head; hyper drops the CL).
    if parts
        .extensions
        .get::<super::server::ConflictingFraming>()
        .is_some()
    {
        return Err(GatewayError::BadRequest {
            detail: "a request must not carry both Content-Length and Transfer-Encoding",
            close: true,
        });
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

/// The host the request names: its target's authority (HTTP/1.1 absolute
/// form, HTTP/2 `:authority`), else its Host header. What routes match,
/// `X-Forwarded-Host` carries and the upstream receives as Host are that
/// one host, so a Host naming another cannot reach the upstream.
fn request_host(parts: &mut request::Parts) -> Result<Option<HeaderValue>, GatewayError> {
    let bad = |detail| GatewayError::BadRequest { detail, close: true };
    // An absolute form or `:scheme` naming another protocol (`ftp://`) is
    // not a request this gateway can serve as asked.
    if parts
        .uri
        .scheme()
        .is_some_and(|s| *s != http::uri::Scheme::HTTP && *s != http::uri::Scheme::HTTPS)
    {
        return Err(bad("the request target's scheme is not http or https"));
    }
    // HTTP/1.1 requires one Host, and only one.
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("more than one Host header"));
    }
    let host = match (parts.uri.authority(), header) {
        (Some(a), header) => {
            let value = HeaderValue::from_str(a.as_str()).map_err(|_| bad("invalid Host header"))?;
            if header.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(value.as_bytes())) {
                if parts.version == Version::HTTP_2 {
                    // RFC 9113 §8.3.1: malformed.
                    return Err(bad("the Host header names another host than :authority"));
                }
                // RFC 9112 §3.2.2: the absolute form's authority replaces Host.
                parts.headers.insert(HOST, value.clone());
            }
            Some(value)
        }
        // A clone shares the header's bytes: no copy.
        (None, Some(h)) => Some(h.clone()),
        (None, None) if parts.version == Version::HTTP_11 => {
            return Err(bad("HTTP/1.1 requests need a Host header"));
        }
        (None, None) => None,
    };
    if let Some(h) = &host {
        let b = h.as_bytes();
        let valid = !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':' | b'[' | b']'));
        if !valid {
            return Err(bad("invalid Host header"));
        }
    }
    Ok(host)
}

/// HTTP/2 clients may send `Cookie` as several fields (browsers split it
/// so HPACK can index each pair); HTTP/1.1 allows one, and servers read
/// only the first. RFC 9113 §8.2.3: they are joined with "; " before the
/// request leaves HTTP/2, here so that plugins see every pair too.
fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Valid values joined by "; " are a valid value.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        headers.insert(COOKIE, value);
    }
}

trait AsStr {
    fn as_str(&self) -> &str;
}

impl AsStr for HeaderValue {
    /// Only called on values checked to be ASCII host characters.
    fn as_str(&self) -> &str {
        self.to_str().unwrap_or("")
    }
}

/// The host as routes match it: lower case, without the port or a
/// trailing dot.
pub(crate) fn route_host(h: &str) -> Cow<'_, str> {
    let bare = if h.starts_with('[') {
        h.split_once(']').map_or(h, |(v6, _)| &h[..v6.len() + 1])
    } else {
        h.rsplit_once(':').map_or(h, |(name, _)| name)
    };
    // `api.example.com.` (fully qualified) is the same host.
    let bare = bare.strip_suffix('.').unwrap_or(bare);
    if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(bare.to_ascii_lowercase())
    } else {
        Cow::Borrowed(bare)
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
        assert_eq!(route_host("API.example.com.:443"), "api.example.com");
    }
}
