//! What the gateway tells operators: Prometheus [`metrics`] and the JSON
//! [`access_log`]. A request carries an [`Exchange`] from its head to the
//! end of its response body; when the body is done (or the client goes
//! away) the exchange is recorded in the metrics and the access log.

pub mod access_log;
pub mod metrics;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri};

pub use metrics::metrics;

use crate::snapshot::Runtime;
use crate::upstream::Target;

/// One request's account, filled in as it goes through the gateway.
pub struct Exchange {
    start: Instant,
    method: Method,
    pub status: u16,
    /// Index into `rt.routes`.
    pub route: Option<usize>,
    pub target: Option<Arc<Target>>,
    pub upstream_time: Option<Duration>,
    /// Only when the access log is on.
    pub log: Option<LogFields>,
}

/// What only the access log needs.
pub struct LogFields {
    pub time: SystemTime,
    pub request_id: HeaderValue,
    pub traceparent: Option<HeaderValue>,
    pub client_ip: Option<IpAddr>,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    /// Request body bytes, counted as they stream upstream.
    pub bytes_in: Arc<AtomicU64>,
    pub consumer: Option<Arc<str>>,
}

impl Exchange {
    pub fn start(rt: &Runtime, method: &Method, uri: &Uri) -> Exchange {
        let log = rt.settings.access_log.is_some().then(|| LogFields {
            time: SystemTime::now(),
            request_id: HeaderValue::from_static(""),
            traceparent: None,
            client_ip: None,
            host: None,
            uri: uri.clone(),
            bytes_in: Arc::new(AtomicU64::new(0)),
            consumer: None,
        });
        Exchange {
            start: Instant::now(),
            method: method.clone(),
            status: 0,
            route: None,
            target: None,
            upstream_time: None,
            log,
        }
    }

    /// The response is done (or abandoned) after `bytes_out` body bytes;
    /// `rt` is the runtime the request ran on.
    pub fn finish(self, rt: &Runtime, bytes_out: u64) {
        let elapsed = self.start.elapsed();
        let m = metrics();
        let route = self.route.map(|i| &rt.routes[i]);
        let route_name = route.map_or_else(|| Arc::clone(&NO_ROUTE), |r| r.name.clone());
        m.requests
            .get_or_create(&metrics::RequestLabels {
                route: metrics::Name(route_name),
                method: metrics::method_label(&self.method),
                status: self.status,
            })
            .inc();
        if let Some(r) = route {
            r.duration.observe(elapsed.as_secs_f64());
        }
        if let (Some(log), Some(writer)) = (self.log, &rt.settings.access_log) {
            writer.log(access_log::Entry {
                time: log.time,
                request_id: log.request_id,
                traceparent: log.traceparent,
                client_ip: log.client_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
                method: self.method,
                host: log.host,
                uri: log.uri,
                status: self.status,
                bytes_in: log.bytes_in.load(Ordering::Relaxed),
                bytes_out,
                duration: elapsed,
                upstream_time: self.upstream_time,
                route: route.map(|r| r.name.clone()),
                upstream: route.and_then(|r| r.upstream_name()),
                target: self.target.as_ref().map(|t| t.authority.clone()),
                consumer: log.consumer,
            });
        }
    }
}

/// Publishes the per-target gauges of a runtime that was just put in force.
pub fn on_runtime(rt: &Runtime) {
    let healthy = &metrics().upstream_target_healthy;
    healthy.clear();
    for up in rt.upstreams.values() {
        for t in &up.targets {
            // No health checks yet: every target takes traffic.
            healthy
                .get_or_create(&metrics::TargetLabels {
                    upstream: metrics::Name(up.name.clone()),
                    target: metrics::Name(t.label.clone()),
                })
                .set(1);
        }
    }
}

/// The `route` label of requests that matched no route.
static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
