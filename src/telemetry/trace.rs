//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when
//! `server.tracing.otlp_endpoint` is set.
//!
//! Each sampled request gives a server span (the request through the
//! gateway) and, when an upstream was called, a client span under it whose
//! id is the one sent upstream in `traceparent`, so the upstream's spans hang
//! under the gateway's. The decision is made when the request arrives: an
//! incoming `traceparent` decides (its sampled flag), else `sample_ratio`.
//! With `always_sample_errors`, requests answered with a 5xx are exported
//! too. Spans are built after the fact from the exchange's record (no
//! per-request span objects on the hot path), queued, and sent in batches by
//! a thread of their own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::uri::Authority;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use prost::Message;

use crate::config::TracingConfig;

/// Spans waiting for export; beyond this, new ones are dropped.
const MAX_QUEUED: usize = 8192;
/// A batch is sent when this many spans wait, or every [`INTERVAL`].
const BATCH: usize = 512;
const INTERVAL: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// One trace exporter (one endpoint), shared by the runtimes that use it.
pub struct Tracer {
    pub settings: TracingConfig,
    sample_ratio: f64,
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Vec<Span>>,
    wake: Condvar,
    closed: AtomicBool,
    /// Set by `flush`, cleared by the exporter when the queue is sent.
    flushing: Mutex<bool>,
    flushed: Condvar,
}

/// The trace context of one request, when it may be exported.
pub struct RequestTrace {
    pub start: SystemTime,
    /// The `traceparent` sent upstream (trace id, client span id, flags).
    pub sent: [u8; 55],
    /// The caller's span, from an incoming `traceparent`.
    pub parent: Option<[u8; 16]>,
    pub sampled: bool,
    /// When the upstream call started.
    pub upstream_start: Option<SystemTime>,
    pub path: String,
    pub request_id: http::HeaderValue,
    pub client_ip: std::net::IpAddr,
}

/// How the request ended, for its spans.
pub struct SpanInfo<'a> {
    pub method: &'a str,
    pub route: Option<&'a str>,
    pub status: u16,
    pub end: SystemTime,
    pub upstream: Option<&'a str>,
    pub target: Option<&'a Authority>,
    /// The upstream's status, when it answered.
    pub upstream_status: Option<u16>,
    /// How long the upstream took to answer (its response head).
    pub upstream_time: Option<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The URL spans are posted to: the endpoint as given, with `/v1/traces`
/// added when it has no path (the OTLP/HTTP convention).
pub fn traces_url(endpoint: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| format!("`{endpoint}` is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "`{endpoint}`: the scheme must be http or https (OTLP/HTTP, e.g. http://127.0.0.1:4318)"
        ));
    }
    if uri.authority().is_none() {
        return Err(format!("`{endpoint}` has no host"));
    }
    // The checks the exporter's connection makes (port, credentials), so
    // `validate` finds what `run` would.
    crate::upstream::parse_url(endpoint)?;
    if uri.path() == "/" || uri.path().is_empty() {
        let base = endpoint.trim_end_matches('/');
        return format!("{base}/v1/traces")
            .parse()
            .map_err(|_| format!("`{endpoint}` is not a URL"));
    }
    Ok(uri)
}

impl Tracer {
    /// Starts the exporter thread for `settings` (validated: the endpoint is set and parses).
    pub fn start(settings: &TracingConfig) -> Result<Tracer, String> {
        let endpoint = settings.otlp_endpoint.as_deref().unwrap_or_default();
        let url = traces_url(endpoint)?;
        let collector = crate::upstream::fetch::Endpoint::parse(&url.to_string())?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            flushing: Mutex::new(false),
            flushed: Condvar::new(),
        });
        let exporter = Exporter {
            collector,
            resource: Resource {
                attributes: vec![kv("service.name", &settings.service_name)],
                ..Default::default()
            },
            shared: shared.clone(),
        };
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || exporter.run())
            .map_err(|e| format!("cannot start the trace exporter: {e}"))?;
        Ok(Tracer {
            sample_ratio: settings.sample_ratio.clamp(0.0, 1.0),
            settings: settings.clone(),
            shared,
        })
    }

    /// Whether a request that brought no sampling decision is sampled.
    pub fn sample(&self) -> bool {
        self.sample_ratio >= 1.0 || fastrand::f64() < self.sample_ratio
    }

    pub fn always_sample_errors(&self) -> bool {
        self.settings.always_sample_errors
    }

    /// Queues the spans of one request, if it is to be exported.
    pub fn record(&self, t: &RequestTrace, info: &SpanInfo<'_>) {
        let error = info.status >= 500;
        if !(t.sampled || error && self.settings.always_sample_errors) {
            return;
        }
        let Some(trace_id) = crate::hex::decode::<16>(&t.sent[3..35]) else {
            return;
        };
        let Some(client_span_id) = crate::hex::decode::<8>(&t.sent[36..52]) else {
            return;
        };
        let server_span_id = fastrand::u64(1..).to_be_bytes();
        let mut attributes = vec![
            kv("http.request.method", info.method),
            kv("url.path", &t.path),
            int("http.response.status_code", i64::from(info.status)),
            kv("client.address", &t.client_ip.to_string()),
            kv("portcullis.request_id", t.request_id.to_str().unwrap_or("")),
        ];
        if let Some(route) = info.route {
            attributes.push(kv("http.route", route));
        }
        let server = Span {
            trace_id: trace_id.to_vec(),
            span_id: server_span_id.to_vec(),
            parent_span_id: t
                .parent
                .as_ref()
                .and_then(|p| crate::hex::decode::<8>(p))
                .map(|p| p.to_vec())
                .unwrap_or_default(),
            name: match info.route {
                Some(route) => format!("{} {route}", info.method),
                None => info.method.to_string(),
            },
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: nanos(t.start),
            end_time_unix_nano: nanos(info.end),
            attributes,
            status: Some(status_of(error)),
            ..Default::default()
        };
        let mut spans = vec![server];
        if let (Some(start), Some(took)) = (t.upstream_start, info.upstream_time) {
            let end = start + took;
            let mut attributes = vec![kv("http.request.method", info.method)];
            if let Some(target) = info.target {
                attributes.push(kv("server.address", target.host()));
                if let Some(port) = target.port_u16() {
                    attributes.push(int("server.port", i64::from(port)));
                }
            }
            if let Some(status) = info.upstream_status {
                attributes.push(int("http.response.status_code", i64::from(status)));
            }
            if let Some(upstream) = info.upstream {
                attributes.push(kv("portcullis.upstream", upstream));
            }
            let failed = info.upstream_status.is_none_or(|s| s >= 400);
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: client_span_id.to_vec(),
                parent_span_id: server_span_id.to_vec(),
                name: info.method.to_string(),
                kind: span::SpanKind::Client as i32,
                start_time_unix_nano: nanos(start),
                end_time_unix_nano: nanos(end),
                attributes,
                status: Some(status_of(failed)),
                ..Default::default()
            });
        }
        let wake = {
            let mut queue = lock(&self.shared.queue);
            if queue.len() + spans.len() > MAX_QUEUED {
                return;
            }
            queue.extend(spans);
            queue.len() >= BATCH
        };
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Sends what is queued and waits (up to the export timeout) for it to go.
    pub fn flush(&self) {
        let mut flushing = lock(&self.shared.flushing);
        *flushing = true;
        self.shared.wake.notify_one();
        let _ = self
            .shared
            .flushed
            .wait_timeout_while(flushing, EXPORT_TIMEOUT, |f| *f);
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

fn status_of(error: bool) -> Status {
    Status {
        code: if error {
            status::StatusCode::Error
        } else {
            status::StatusCode::Unset
        } as i32,
        ..Default::default()
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

struct Exporter {
    /// The collector's traces URL, over a kept-alive connection (http or https).
    collector: crate::upstream::fetch::Endpoint,
    resource: Resource,
    shared: Arc<Shared>,
}

impl Exporter {
    fn run(self) {
        // Its own small runtime: exports never compete with requests for
        // the data plane's worker threads.
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "trace exporter cannot start; no spans will be exported");
                return;
            }
        };
        let mut failures = 0u32;
        loop {
            let batch = {
                let queue = lock(&self.shared.queue);
                let (mut queue, _) = self
                    .shared
                    .wake
                    .wait_timeout_while(queue, INTERVAL, |q| {
                        q.len() < BATCH
                            && !self.shared.closed.load(Ordering::Acquire)
                            && !*lock(&self.shared.flushing)
                    })
                    .unwrap_or_else(|p| p.into_inner());
                std::mem::take(&mut *queue)
            };
            if !batch.is_empty() {
                let n = batch.len();
                match rt.block_on(self.export(batch)) {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        // Once per run of failures, not once per batch.
                        if failures == 1 {
                            tracing::warn!(url = %self.collector.url, spans = n, error = %e, "trace export failed; spans dropped");
                        }
                    }
                }
            }
            {
                let mut flushing = lock(&self.shared.flushing);
                if *flushing {
                    *flushing = false;
                    self.shared.flushed.notify_all();
                }
            }
            if self.shared.closed.load(Ordering::Acquire) && lock(&self.shared.queue).is_empty() {
                return;
            }
        }
    }

    async fn export(&self, spans: Vec<Span>) -> Result<(), String> {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "portcullis".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = Bytes::from(request.encode_to_vec());
        tokio::time::timeout(EXPORT_TIMEOUT, self.post(body))
            .await
            .map_err(|_| "timed out".to_string())?
    }

    async fn post(&self, body: Bytes) -> Result<(), String> {
        let req = self
            .collector
            .request(http::Method::POST)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(crate::body::RequestBody::full(body))
            .map_err(|e| e.to_string())?;
        let (parts, _) = self.collector.send(req, EXPORT_TIMEOUT).await?;
        if parts.status.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {}", parts.status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap().to_string(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").unwrap().to_string(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/custom/path").unwrap().path(),
            "/custom/path"
        );
        assert_eq!(
            traces_url("https://c:4318").unwrap().to_string(),
            "https://c:4318/v1/traces"
        );
        assert!(traces_url("ftp://c:4318").is_err());
        assert!(traces_url("c:4318").is_err());
        assert!(traces_url("http://c:70000").is_err());
    }
}
