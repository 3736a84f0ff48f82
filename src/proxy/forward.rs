//! The upstream phase of a proxied request:
//!
//! ```text
//! breaker permit → pick a target → send → classify the outcome once
//!   → target health, breaker, metrics → retry (upstream::retry) or answer
//! ```
//!
//! Each attempt is a real call and is counted as one; the client sees the
//! last attempt's answer.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, Version, request};
use tokio::time::Instant;

use super::forwarded;
use crate::body::{BodyTooLarge, ClientBodyError, RequestBody, ResponseBody, caused_by, find_cause};
use crate::config::Protocol;
use crate::error::GatewayError;
use crate::plugins::RequestCtx;
use crate::snapshot::Route;
use crate::telemetry::metrics::{Name, UpstreamLabel, UpstreamRequestLabels};
use crate::telemetry::{self, Exchange};
use crate::upstream::breaker::Permit;
use crate::upstream::health::Outcome;
use crate::upstream::pool::UpgradeRequest;
use crate::upstream::retry::{self, REPLAY_LIMIT};
use crate::upstream::{Body, CallError, InFlight, PickContext, SendError, Target, Upstream};

/// What the upstream phase needs of the request around it.
pub struct Call<'a> {
    pub route: &'a Route,
    pub upstream: &'a Upstream,
    pub ctx: &'a RequestCtx<'a>,
    /// The client's host, for an HTTP/1.1 upstream when the client sent no Host.
    pub host: Option<HeaderValue>,
    /// The route's deadline: it bounds every attempt and the waits between them.
    pub deadline: Instant,
}

/// How one attempt went.
enum Attempt {
    Answered(Response<Body>),
    Failed {
        error: GatewayError,
        /// The request, when it never left the gateway.
        unsent: Option<Box<Request<RequestBody>>>,
    },
}

/// Sends the request upstream, retrying as the upstream's policy allows.
pub async fn forward(
    call: Call<'_>,
    mut parts: Box<request::Parts>,
    pq: PathAndQuery,
    mut body: RequestBody,
    ex: &mut Exchange,
) -> Result<Response<ResponseBody>, GatewayError> {
    let Call {
        route,
        upstream,
        ctx,
        deadline,
        ..
    } = call;
    let policy = &upstream.retry;
    if policy.attempts > 0 {
        policy.budget.request();
    }
    // The upstream's path (normalized, stripped, rewritten), in origin form.
    parts.uri = Uri::from(pq);
    // A copy to send again after an attempt that may have reached the
    // upstream: only for idempotent methods, small bodies, and a policy
    // that retries such failures.
    let replay = if policy.attempts > 0 && policy.on.after_send() && retry::is_idempotent(&parts.method) {
        body.replayable(REPLAY_LIMIT)
            .await?
            .map(|data| Replay::new(&parts, data))
    } else {
        None
    };
    // An HTTP/1.1 client always sent Host (request_host checked); an
    // HTTP/2 or HTTP/1.0 one may not have, and HTTP/1.1 upstreams need it.
    let needs_host = !(parts.version == Version::HTTP_11 || parts.headers.contains_key(HOST));
    let host = needs_host.then_some(call.host).flatten();

    // An open circuit: fail fast, the upstream receives nothing.
    let mut permit = acquire(upstream).ok_or(GatewayError::CircuitOpen)?;
    let (mut target, mut in_flight) = upstream
        .pick(&pick_context(ctx, &parts.headers), &[])
        .ok_or(GatewayError::NoHealthyTarget)?;
    // Boxed: it moves down four calls to the connection (and back, when it
    // was not sent), each a copy of ~280 bytes into memory not touched
    // since this connection's last request; the box moves a pointer.
    let mut req = Box::new(Request::from_parts(*parts, body));
    let mut tried: Vec<Arc<Target>> = Vec::new();
    let first_sent = crate::clock::now();
    let mut sent = first_sent;
    if let Some(t) = &mut ex.trace {
        t.upstream_start = Some(std::time::SystemTime::now());
    }
    let mut attempt = 0;
    loop {
        aim(&mut req, upstream, &target, needs_host, host.as_ref())?;
        ex.target = Some(target.clone());
        let (mut outcome, answered) = send(route, upstream, &target, req, permit, sent, deadline, ex).await;
        ex.upstream_time = Some(answered - first_sent);

        // Another attempt, if the policy allows it and the request can be
        // sent again; otherwise this attempt's answer is the client's.
        let again = (attempt < policy.attempts)
            .then(|| retry_request(&mut outcome, policy, replay.as_ref()))
            .flatten();
        let Some(next) = again else {
            return answer(outcome, in_flight, upstream, deadline);
        };
        attempt += 1;
        let wait = policy.backoff(attempt);
        if answered + wait >= deadline || !policy.budget.try_retry() {
            return answer(outcome, in_flight, upstream, deadline);
        }
        tokio::time::sleep(wait).await;
        sent = crate::clock::now();
        tried.push(target.clone());
        let Some(next_permit) = acquire(upstream) else {
            return answer(outcome, in_flight, upstream, deadline);
        };
        let headers = match (&next, &replay) {
            (Next::Unsent(req), _) => req.headers(),
            (Next::Replay, Some(r)) => &r.headers,
            (Next::Replay, None) => unreachable!("a replay is only chosen when there is a copy"),
        };
        let Some(picked) = upstream.pick(&pick_context(ctx, headers), &tried) else {
            return answer(outcome, in_flight, upstream, deadline);
        };
        tracing::debug!(upstream = %upstream.name, from = %target.authority, to = %picked.0.authority, attempt, "retrying");
        telemetry::metrics()
            .upstream_retries
            .get_or_create(&UpstreamLabel {
                upstream: Name(upstream.name.clone()),
            })
            .inc();
        // The failed attempt's answer and connection go.
        drop(outcome);
        (target, in_flight) = picked;
        permit = next_permit;
        req = match next {
            Next::Unsent(req) => req,
            Next::Replay => Box::new(
                replay
                    .as_ref()
                    .expect("a replay is only chosen when there is a copy")
                    .request(),
            ),
        };
    }
}

/// A breaker permit (`Some(None)` for an upstream without a breaker);
/// `None` while the circuit is open.
fn acquire(upstream: &Upstream) -> Option<Option<Permit>> {
    match &upstream.breaker {
        Some(b) => b.acquire().map(Some),
        None => Some(None),
    }
}

fn pick_context<'a>(ctx: &'a RequestCtx<'_>, headers: &'a http::HeaderMap) -> PickContext<'a> {
    PickContext {
        client_ip: ctx.client_ip,
        headers,
        consumer: ctx.consumer.as_ref().map(|c| c.name.as_str()),
    }
}

/// Points the request at `target`: HTTP/2 names it in `:authority`; an
/// HTTP/1.1 request the client sent without Host gets one.
fn aim(
    req: &mut Request<RequestBody>,
    upstream: &Upstream,
    target: &Target,
    needs_host: bool,
    host: Option<&HeaderValue>,
) -> Result<(), GatewayError> {
    match upstream.protocol {
        Protocol::Http1 => {
            // Origin form (`/path?query`): the upstream never sees the client's absolute form.
            *req.version_mut() = Version::HTTP_11;
            if needs_host {
                let value = host.cloned().unwrap_or_else(|| {
                    HeaderValue::from_str(target.authority.as_str())
                        .expect("an authority is a valid header value")
                });
                req.headers_mut().insert(HOST, value);
            }
        }
        Protocol::Http2 | Protocol::Grpc => {
            // :scheme and :authority name the target; the client's host travels as Host.
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::builder()
                .scheme(upstream.scheme())
                .authority(target.authority.clone())
                .path_and_query(pq)
                .build()
                .map_err(|_| GatewayError::BadRequest {
                    detail: "the request target is invalid",
                    close: false,
                })?;
            *req.version_mut() = Version::HTTP_2;
        }
    }
    Ok(())
}

/// One call to `target` sent at `sent`, and its bookkeeping: the failure
/// classified once, and that one reading fed to the target's health, the
/// breaker and `upstream_requests_total`. Also returns when it ended.
#[allow(clippy::too_many_arguments)]
async fn send(
    route: &Route,
    upstream: &Upstream,
    target: &Target,
    req: Box<Request<RequestBody>>,
    permit: Option<Permit>,
    sent: Instant,
    deadline: Instant,
    ex: &mut Exchange,
) -> (Attempt, Instant) {
    // The response head must come within the read timeout, and within
    // what is left of the route's deadline.
    let head_deadline = deadline.min(sent + upstream.read_timeout);
    let result = target.pool.send(req, head_deadline).await;
    let answered = crate::clock::now();
    let elapsed = answered - sent;
    upstream.duration.observe(elapsed.as_secs_f64());
    let outcome = match result {
        Ok(resp) => Attempt::Answered(resp),
        Err(SendError { error, unsent }) => Attempt::Failed {
            error: call_error(error, route, target),
            unsent,
        },
    };
    let (status, health) = match &outcome {
        Attempt::Answered(resp) => {
            let status = resp.status().as_u16();
            ex.upstream_status = Some(status);
            let health = if matches!(status, 502..=504) {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            (status, Some(health))
        }
        Attempt::Failed { error, .. } => match error {
            GatewayError::GatewayTimeout => (504, Some(Outcome::Timeout)),
            // The client's body broke: not the upstream's fault.
            GatewayError::PayloadTooLarge { .. } | GatewayError::BadRequest { .. } => (502, None),
            _ => (502, Some(Outcome::Failure)),
        },
    };
    if let Some(health) = health {
        upstream.record(target, health);
    }
    if let (Some(permit), Some(breaker)) = (permit, &upstream.breaker) {
        let answered = match &outcome {
            Attempt::Answered(resp) => Some(resp.status().as_u16()),
            Attempt::Failed { .. } => None,
        };
        permit.record(breaker.is_failure(answered, elapsed));
    }
    target.requests.inc(u32::from(status), || {
        telemetry::metrics()
            .upstream_requests
            .get_or_create(&UpstreamRequestLabels {
                upstream: Name(upstream.name.clone()),
                target: Name(target.label.clone()),
                status,
            })
            .clone()
    });
    (outcome, answered)
}

/// How the next attempt gets its request.
enum Next {
    /// The failed attempt's own request, which never left the gateway.
    Unsent(Box<Request<RequestBody>>),
    /// A fresh copy of the request held for replay.
    Replay,
}

/// Whether the policy sends the request again after `outcome`, and with
/// what: a request that never left is taken back out of `outcome`.
fn retry_request(outcome: &mut Attempt, policy: &retry::Policy, replay: Option<&Replay>) -> Option<Next> {
    let on = &policy.on;
    match outcome {
        Attempt::Answered(resp) => {
            (on.status(resp.status().as_u16()) && replay.is_some()).then_some(Next::Replay)
        }
        Attempt::Failed {
            unsent: unsent @ Some(_),
            ..
        } if on.connect_failure => unsent.take().map(Next::Unsent),
        Attempt::Failed { error, unsent: None } => {
            let listed = match error {
                GatewayError::GatewayTimeout => on.status(504),
                GatewayError::UpstreamConnect(_) | GatewayError::UpstreamProtocol(_) => on.reset,
                _ => false,
            };
            (listed && replay.is_some()).then_some(Next::Replay)
        }
        Attempt::Failed { .. } => None,
    }
}

/// The client's answer from the last attempt.
fn answer(
    outcome: Attempt,
    in_flight: InFlight,
    upstream: &Upstream,
    deadline: Instant,
) -> Result<Response<ResponseBody>, GatewayError> {
    match outcome {
        Attempt::Answered(resp) => {
            let (mut parts, body) = resp.into_parts();
            // Only WebSocket upgrades are sent up, so a 101 must switch to
            // it: the client is told `Upgrade: websocket` and would tunnel
            // frames into whatever protocol the upstream chose instead.
            if parts.status == http::StatusCode::SWITCHING_PROTOCOLS
                && !super::websocket::switches_to_websocket(&parts.headers)
            {
                return Err(GatewayError::UpstreamProtocol(
                    "the upstream switched to a protocol other than websocket".into(),
                ));
            }
            let _ = forwarded::strip_hop_by_hop(&mut parts.headers);
            // RFC 9110 §8.6: never on a 204. An HTTP/1.1 client's writer
            // leaves it out anyway; over HTTP/2 it would be relayed.
            if parts.status == http::StatusCode::NO_CONTENT {
                parts.headers.remove(http::header::CONTENT_LENGTH);
            }
            let body = ResponseBody::upstream(body, deadline, upstream.read_timeout, in_flight);
            Ok(Response::from_parts(parts, body))
        }
        Attempt::Failed { error, .. } => Err(error),
    }
}

/// The request as it was before the first attempt, to send again.
struct Replay {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
    body: Bytes,
    /// A WebSocket upgrade goes again on a connection of its own.
    upgrade: bool,
}

impl Replay {
    fn new(parts: &request::Parts, body: Bytes) -> Replay {
        Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            body,
            upgrade: parts.extensions.get::<UpgradeRequest>().is_some(),
        }
    }

    fn request(&self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::full(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if self.upgrade {
            req.extensions_mut().insert(UpgradeRequest);
        }
        req
    }
}

/// What a failed upstream call means for the client.
fn call_error(e: CallError, route: &Route, target: &Target) -> GatewayError {
    match e {
        CallError::ConnectTimeout | CallError::HeadTimeout => GatewayError::GatewayTimeout,
        CallError::Connect(e) => GatewayError::UpstreamConnect(format!("{}: {e}", target.authority)),
        CallError::Exchange(e) if caused_by::<BodyTooLarge>(&*e) => GatewayError::PayloadTooLarge {
            limit: route.max_body,
        },
        CallError::Exchange(e) if caused_by::<ClientBodyError>(&*e) => GatewayError::BadRequest {
            detail: "the request body is malformed or was cut off",
            close: true,
        },
        // The upstream's head or write timer.
        CallError::Exchange(e)
            if find_cause::<std::io::Error>(&*e)
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) =>
        {
            GatewayError::GatewayTimeout
        }
        CallError::Exchange(e) => {
            GatewayError::UpstreamProtocol(format!("{}: {}", target.authority, crate::body::chain(&*e)))
        }
    }
}
