//! The Prometheus metrics of SPEC section 6, in one process-wide registry.
//!
//! Label values come from the config (route, upstream, listener names;
//! target `host:port`) or from small closed sets (method, status code), never
//! from raw paths or other client input, so cardinality stays bounded.
//! Series that have one label set per config object (a route's duration
//! histogram) are looked up once when the runtime is compiled and kept there.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Seconds: 0.5 ms to 60 s, about ×2.5 apart.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// A config name as a label value, shared with the runtime (no copy per request).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Name,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamRequestLabels {
    pub upstream: Name,
    pub target: Name,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub upstream: Name,
    pub target: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub route: Name,
    pub plugin: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub route: Name,
    pub rule: Name,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: HistogramFamily<RouteLabel>,
    pub upstream_duration: HistogramFamily<UpstreamLabel>,
    pub upstream_requests: Family<UpstreamRequestLabels, Counter>,
    pub rate_limited: Family<RouteLabel, Counter>,
    pub auth_failures: Family<PluginLabels, Counter>,
    pub waf_blocked: Family<RuleLabels, Counter>,
    pub circuit_breaker_state: Family<UpstreamLabel, Gauge>,
    pub upstream_target_healthy: Family<TargetLabels, Gauge>,
    pub connections_active: Family<ListenerLabel, Gauge>,
    pub cache_requests: Family<RouteResultLabels, Counter>,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub access_log_dropped: Counter,
    pub rate_limit_store_errors: Counter,
    pub upstream_retries: Family<UpstreamLabel, Counter>,
    pub waf_detected: Family<RuleLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteResultLabels {
    pub route: Name,
    pub result: &'static str,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            upstream_duration: Family::new_with_constructor(duration_histogram),
            upstream_requests: Family::default(),
            rate_limited: Family::default(),
            auth_failures: Family::default(),
            waf_blocked: Family::default(),
            circuit_breaker_state: Family::default(),
            upstream_target_healthy: Family::default(),
            connections_active: Family::default(),
            cache_requests: Family::default(),
            config_reloads: Family::default(),
            access_log_dropped: Counter::default(),
            rate_limit_store_errors: Counter::default(),
            upstream_retries: Family::default(),
            waf_detected: Family::default(),
            registry: Registry::default(),
        };
        // Counters are registered without `_total`: the encoder adds it.
        registry.register(
            "requests",
            "Requests answered, by route, method and status",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response",
            m.request_duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response head",
            m.upstream_duration.clone(),
        );
        registry.register(
            "upstream_requests",
            "Upstream calls, by upstream, target and status",
            m.upstream_requests.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by rate limiting",
            m.rate_limited.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused by an auth plugin",
            m.auth_failures.clone(),
        );
        registry.register(
            "waf_blocked",
            "Requests blocked by the WAF",
            m.waf_blocked.clone(),
        );
        registry.register(
            "circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            m.circuit_breaker_state.clone(),
        );
        registry.register(
            "upstream_target_healthy",
            "1 when the target takes traffic, 0 when ejected",
            m.upstream_target_healthy.clone(),
        );
        registry.register(
            "connections_active",
            "Open client connections, by listener",
            m.connections_active.clone(),
        );
        registry.register(
            "cache_requests",
            "Response cache lookups: hit, miss or bypass",
            m.cache_requests.clone(),
        );
        registry.register(
            "config_reloads",
            "Config changes applied (success) or refused (failure)",
            m.config_reloads.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            m.access_log_dropped.clone(),
        );
        registry.register(
            "rate_limit_store_errors",
            "Rate-limit decisions the store (Redis) failed to make; on_store_error decided",
            m.rate_limit_store_errors.clone(),
        );
        registry.register(
            "upstream_retries",
            "Upstream calls sent again after a failure (retries)",
            m.upstream_retries.clone(),
        );
        registry.register(
            "waf_detected",
            "WAF matches let through (mode: detect), by route and rule",
            m.waf_detected.clone(),
        );
        // Both outcomes exist from the start, so a rate() over them works at once.
        for result in ["success", "failure"] {
            drop(m.config_reloads.get_or_create(&ResultLabel { result }));
        }
        Metrics { registry, ..m }
    }

    /// The per-route histogram, to keep in the compiled route.
    pub fn route_duration(&self, route: &Arc<str>) -> Histogram {
        self.request_duration
            .get_or_create(&RouteLabel {
                route: Name(route.clone()),
            })
            .clone()
    }

    pub fn upstream_duration(&self, upstream: &Arc<str>) -> Histogram {
        self.upstream_duration
            .get_or_create(&UpstreamLabel {
                upstream: Name(upstream.clone()),
            })
            .clone()
    }

    /// `circuit_breaker_state{upstream}`: made only for upstreams with a breaker.
    pub fn circuit_breaker_state(&self, upstream: &str) -> Gauge {
        self.circuit_breaker_state
            .get_or_create(&UpstreamLabel {
                upstream: Name(upstream.into()),
            })
            .clone()
    }

    /// `waf_detected_total{route,rule}`.
    pub fn waf_detected(&self, route: &str, rule: &str) -> Counter {
        self.waf_detected
            .get_or_create(&RuleLabels {
                route: Name(route.into()),
                rule: Name(rule.into()),
            })
            .clone()
    }

    /// `upstream_target_healthy{upstream,target}`.
    pub fn target_healthy(&self, upstream: &Arc<str>, target: &Arc<str>) -> Gauge {
        self.upstream_target_healthy
            .get_or_create(&TargetLabels {
                upstream: Name(upstream.clone()),
                target: Name(target.clone()),
            })
            .clone()
    }

    pub fn listener_connections(&self, listener: &str) -> Gauge {
        self.connections_active
            .get_or_create(&ListenerLabel {
                listener: Name(listener.into()),
            })
            .clone()
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }
}

/// Counter handles of one family for one config object (a route, a
/// target), by a small key (method and status), so the hot path finds its
/// counter with a few atomic loads instead of hashing a label set and taking
/// the family's lock. Keys past the slots fall back to the family lookup
/// (same counters, just slower).
#[derive(Default)]
pub struct CounterCache {
    slots: [Slot; 12],
}

#[derive(Default)]
struct Slot {
    /// The key + 1; 0 = free.
    key: AtomicU32,
    counter: OnceLock<Counter>,
}

impl CounterCache {
    /// Increments the counter of `key`; `lookup` finds it in its family on a miss.
    pub fn inc(&self, key: u32, lookup: impl FnOnce() -> Counter) {
        let tagged = key.wrapping_add(1);
        for slot in &self.slots {
            match slot.key.load(Ordering::Acquire) {
                k if k == tagged => {
                    if let Some(c) = slot.counter.get() {
                        c.inc();
                        return;
                    }
                    // Claimed by another thread that is still filling it in.
                    break;
                }
                0 => {
                    if slot
                        .key
                        .compare_exchange(0, tagged, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        slot.counter.get_or_init(lookup).inc();
                        return;
                    }
                    if slot.key.load(Ordering::Acquire) == tagged {
                        break;
                    }
                }
                _ => {}
            }
        }
        lookup().inc();
    }
}

/// The key of a (method, status) pair in a [`CounterCache`]; `method` is a
/// [`method_index`].
pub fn method_status_key(method: usize, status: u16) -> u32 {
    (method as u32) << 16 | u32::from(status)
}

/// The metrics in the OpenMetrics text format.
pub fn encode() -> String {
    let mut out = String::with_capacity(8 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &metrics().registry);
    out
}

/// A method as a label: the standard ones by name, anything else `OTHER`,
/// so a client cannot mint new series.
pub fn method_label(m: &http::Method) -> &'static str {
    METHOD_LABELS[method_index(m)]
}

/// The `method` label values; [`method_index`] points into it.
pub const METHOD_LABELS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

pub fn method_index(m: &http::Method) -> usize {
    use http::Method;
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_follow_the_spec() {
        let m = metrics();
        m.requests
            .get_or_create(&RequestLabels {
                route: Name("unit-test-route".into()),
                method: method_label(&http::Method::from_bytes(b"BREW").unwrap()),
                status: 200,
            })
            .inc();
        m.route_duration(&"unit-test-route".into()).observe(0.003);
        // Through a cache: the same series.
        let cache = CounterCache::default();
        for _ in 0..2 {
            cache.inc(method_status_key(9, 200), || {
                m.requests
                    .get_or_create(&RequestLabels {
                        route: Name("unit-test-route".into()),
                        method: "OTHER",
                        status: 200,
                    })
                    .clone()
            });
        }
        let text = encode();
        assert!(
            text.contains(
                r#"portcullis_requests_total{route="unit-test-route",method="OTHER",status="200"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"portcullis_request_duration_seconds_bucket{le="0.005",route="unit-test-route"} 1"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
