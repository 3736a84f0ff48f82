//! What the gateway tells operators: Prometheus [`metrics`] and the JSON
//! [`access_log`]. A request carries an [`Exchange`] from its head to the
//! end of its response body; when the body is done (or the client goes
//! away) the exchange is recorded in the metrics and the access log.

pub mod access_log;
pub mod metrics;
pub mod trace;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use http::Method;

pub use metrics::metrics;

use crate::snapshot::Runtime;
use crate::upstream::Target;

/// One request's account, filled in as it goes through the gateway.
pub struct Exchange {
    start: Instant,
    method: Method,
    /// The connection's peer (the client IP when no proxy is trusted).
    peer: IpAddr,
    pub status: u16,
    /// Index into `rt.routes`.
    pub route: Option<usize>,
    pub target: Option<Arc<Target>>,
    pub upstream_time: Option<Duration>,
    /// The upstream's answer, when it gave one.
    pub upstream_status: Option<u16>,
    /// What `rate_limit` decided: the `RateLimit-*` headers of the answer.
    pub quota: Option<crate::plugins::rate_limit::Quota>,
    /// What `cors` decided: the CORS headers of the answer.
    pub cors: Option<crate::plugins::cors::CorsAnswer>,
    /// Only for requests whose spans may be exported.
    pub trace: Option<Box<trace::RequestTrace>>,
    /// Only when the access log is on (boxed: most exchanges carry none,
    /// and the exchange is moved with the response).
    pub log: Option<Box<LogFields>>,
}

/// What only the access log needs.
pub struct LogFields {
    /// Begun when the request id is known.
    pub line: Option<access_log::Line>,
    /// Request body bytes: known from the head, or counted as they stream upstream.
    pub bytes_in: BytesIn,
    pub consumer: Option<Arc<str>>,
}

/// The request body's size: from `Content-Length` (or none at all), or
/// counted as the body streams (chunked, HTTP/2 without a length).
pub enum BytesIn {
    Known(u64),
    Counted(Arc<AtomicU64>),
}

impl BytesIn {
    /// The counter to give the body, when its size is not known up front.
    pub fn counter(&mut self, hint: &http_body::SizeHint) -> Option<Arc<AtomicU64>> {
        match hint.exact() {
            Some(n) => {
                *self = BytesIn::Known(n);
                None
            }
            None => {
                let c = Arc::new(AtomicU64::new(0));
                *self = BytesIn::Counted(c.clone());
                Some(c)
            }
        }
    }
}

impl Exchange {
    pub fn start(rt: &Runtime, method: &Method, peer: IpAddr) -> Exchange {
        let log = rt.settings.access_log.is_some().then(|| {
            Box::new(LogFields {
                line: None,
                bytes_in: BytesIn::Known(0),
                consumer: None,
            })
        });
        // When its bytes were read (this poll of the connection).
        Exchange::new(crate::clock::recent(), method.clone(), peer, None, log)
    }

    /// The record of one of this request's own upstream calls (an
    /// aggregate's): counted in upstream metrics, not logged or traced apart.
    pub fn sub_request(&self) -> Exchange {
        Exchange::new(self.start, Method::GET, self.peer, self.route, None)
    }

    fn new(
        start: Instant,
        method: Method,
        peer: IpAddr,
        route: Option<usize>,
        log: Option<Box<LogFields>>,
    ) -> Exchange {
        Exchange {
            start,
            method,
            peer,
            status: 0,
            route,
            target: None,
            upstream_time: None,
            upstream_status: None,
            quota: None,
            cors: None,
            trace: None,
            log,
        }
    }

    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// The response is done (or abandoned) after `bytes_out` body bytes;
    /// `rt` is the runtime the request ran on.
    pub fn finish(mut self, rt: &Runtime, bytes_out: u64) {
        let elapsed = crate::clock::now().saturating_duration_since(self.start);
        let m = metrics();
        let route = self.route.map(|i| &rt.routes[i]);
        let method_index = metrics::method_index(&self.method);
        let method = metrics::METHOD_LABELS[method_index];
        let lookup = || {
            let route_name = route.map_or_else(|| Arc::clone(&NO_ROUTE), |r| r.name.clone());
            m.requests
                .get_or_create(&metrics::RequestLabels {
                    route: metrics::Name(route_name),
                    method,
                    status: self.status,
                })
                .clone()
        };
        let key = metrics::method_status_key(method_index, self.status);
        match route {
            Some(r) => r.requests.inc(key, lookup),
            None => rt.unrouted.inc(key, lookup),
        }
        if let Some(r) = route {
            r.duration.observe(elapsed.as_secs_f64());
        }
        let upstream = route.and_then(|r| r.upstream());
        if let (Some(t), Some(tracer)) = (&self.trace, &rt.settings.tracer) {
            record_span(tracer, t, &self, route, upstream);
        }
        if let (Some(mut log), Some(writer)) = (self.log.take(), &rt.settings.access_log) {
            write_log(writer, &mut log, &self, elapsed, bytes_out, route, upstream);
        }
    }
}

// The span and the log line are written out of line (`inline(never)`):
// inlined, their code would spread the request path's over more
// instruction-cache lines for requests that write neither (`outline.rs`).

#[inline(never)]
fn record_span(
    tracer: &trace::Tracer,
    t: &trace::RequestTrace,
    ex: &Exchange,
    route: Option<&crate::snapshot::Route>,
    upstream: Option<&crate::upstream::Upstream>,
) {
    tracer.record(
        t,
        &trace::SpanInfo {
            method: ex.method.as_str(),
            route: route.map(|r| &*r.name),
            status: ex.status,
            end: std::time::SystemTime::now(),
            upstream: upstream.map(|u| &*u.name),
            target: ex.target.as_ref().map(|t| &t.authority),
            upstream_status: ex.upstream_status,
            upstream_time: ex.upstream_time,
        },
    );
}

#[inline(never)]
fn write_log(
    writer: &access_log::AccessLog,
    log: &mut LogFields,
    ex: &Exchange,
    elapsed: Duration,
    bytes_out: u64,
    route: Option<&crate::snapshot::Route>,
    upstream: Option<&crate::upstream::Upstream>,
) {
    let Some(line) = &mut log.line else { return };
    let outcome = access_log::Outcome {
        peer: ex.peer,
        status: ex.status,
        bytes_in: match &log.bytes_in {
            BytesIn::Known(n) => *n,
            BytesIn::Counted(c) => c.load(Ordering::Relaxed),
        },
        bytes_out,
        duration: elapsed,
        upstream_time: ex.upstream_time,
        route: route.map(|r| &*r.name_json),
        upstream: upstream.map(|u| &*u.name_json),
        target: ex.target.as_ref().map(|t| &*t.label_json),
        consumer: log.consumer.as_deref(),
    };
    writer.log(line.end(&outcome));
}

/// A request id as log text. Ids are printable ASCII (generated hex, or
/// an incoming one `valid_request_id` accepted), so no quoting is needed.
pub fn id_text(id: &http::HeaderValue) -> &str {
    id.to_str().unwrap_or("")
}

/// Publishes the per-target gauges of a runtime that was just put in force.
pub fn on_runtime(rt: &Runtime) {
    // `circuit_breaker_state` exists only for upstreams with a breaker: the
    // series of those that lost theirs go (the others' gauges stay, held by
    // their breakers).
    static WITH_BREAKER: std::sync::Mutex<Vec<Arc<str>>> = std::sync::Mutex::new(Vec::new());
    let mut exported = WITH_BREAKER.lock().unwrap_or_else(|e| e.into_inner());
    for name in exported.iter() {
        if rt.upstreams.get(&**name).is_none_or(|u| u.breaker.is_none()) {
            metrics().circuit_breaker_state.remove(&metrics::UpstreamLabel {
                upstream: metrics::Name(name.clone()),
            });
        }
    }
    *exported = rt
        .upstreams
        .values()
        .filter(|u| u.breaker.is_some())
        .map(|u| u.name.clone())
        .collect();
    drop(exported);
    let healthy = &metrics().upstream_target_healthy;
    healthy.clear();
    for up in rt.upstreams.values() {
        for t in &up.targets {
            healthy
                .get_or_create(&metrics::TargetLabels {
                    upstream: metrics::Name(up.name.clone()),
                    target: metrics::Name(t.label.clone()),
                })
                .set(i64::from(!t.health.is_ejected()));
        }
    }
}

/// The `route` label of requests that matched no route.
static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
