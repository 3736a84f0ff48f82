//! OpenTelemetry traces over OTLP/HTTP to a real collector endpoint (a
//! hyper server on 127.0.0.1 decoding the protobuf export requests).

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;
use support::*;

/// Receives OTLP/HTTP exports; keeps the spans and the resource attributes.
struct Collector {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service_names = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let state = (spans.clone(), service_names.clone(), paths.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (spans, names, paths) = state.clone();
                        async move {
                            paths.lock().unwrap().push(req.uri().path().to_string());
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            for rs in export.resource_spans {
                                for attr in rs.resource.unwrap().attributes {
                                    if attr.key == "service.name"
                                        && let Some(Value::StringValue(s)) = attr.value.unwrap().value
                                    {
                                        names.lock().unwrap().push(s);
                                    }
                                }
                                for ss in rs.scope_spans {
                                    spans.lock().unwrap().extend(ss.spans);
                                }
                            }
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector {
            addr,
            spans,
            service_names,
            paths,
        }
    }

    /// Waits until `n` spans have arrived (exports are batched, once a second).
    async fn wait_for(&self, n: usize) -> Vec<Span> {
        for _ in 0..100 {
            if self.spans.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.spans.lock().unwrap().clone()
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn gateway(up: &Upstream, collector: &Collector, tracing: &str) -> Gateway {
    Gateway::start(&config(
        &upstream("users", up),
        "  - name: api\n    match: {paths: [/api]}\n    upstream: users\n    strip_prefix: /api\n",
        &format!(
            "  tracing: {{otlp_endpoint: \"http://{}\", service_name: edge-gw, {tracing}}}\n",
            collector.addr
        ),
    ))
}

#[tokio::test]
async fn sampled_requests_export_a_server_and_a_client_span() {
    let up = Upstream::start("u").await;
    let collector = Collector::start().await;
    let gw = gateway(&up, &collector, "sample_ratio: 1.0");

    let incoming_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming_parent = "00f067aa0ba902b7";
    let r = send(
        &client_h1(),
        req("GET", &gw.url("/api/items"))
            .header("traceparent", format!("00-{incoming_trace}-{incoming_parent}-01"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let sent = up.last().headers["traceparent"].to_str().unwrap().to_string();
    assert_eq!(&sent[3..35], incoming_trace, "the trace continues upstream");

    let spans = collector.wait_for(2).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(collector.paths.lock().unwrap()[0], "/v1/traces");
    assert!(
        collector
            .service_names
            .lock()
            .unwrap()
            .contains(&"edge-gw".to_string())
    );
    let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).unwrap();
    let client = spans.iter().find(|s| s.kind == SpanKind::Client as i32).unwrap();
    // W3C context: the caller's span is the server span's parent; the
    // client span is the parent the upstream was given.
    assert_eq!(hex(&server.trace_id), incoming_trace);
    assert_eq!(hex(&server.parent_span_id), incoming_parent);
    assert_eq!(hex(&client.trace_id), incoming_trace);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(hex(&client.span_id), &sent[36..52]);
    assert_eq!(server.name, "GET api");
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    assert_eq!(
        attr(server, "http.route"),
        Some(&Value::StringValue("api".into()))
    );
    assert_eq!(
        attr(server, "url.path"),
        Some(&Value::StringValue("/api/items".into()))
    );
    assert_eq!(
        attr(server, "portcullis.request_id"),
        Some(&Value::StringValue(r.header("x-request-id").into()))
    );
    assert_eq!(
        attr(client, "server.port"),
        Some(&Value::IntValue(i64::from(up.addr.port())))
    );
    assert_eq!(
        attr(client, "portcullis.upstream"),
        Some(&Value::StringValue("users".into()))
    );

    // A new trace (no traceparent) is sampled by ratio (1.0 here): a root span.
    assert_eq!(get(&gw.url("/api/x")).await.status, 200);
    let spans = collector.wait_for(4).await;
    let root = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32 && s.parent_span_id.is_empty())
        .expect("a root server span");
    assert!(
        up.last().headers["traceparent"]
            .to_str()
            .unwrap()
            .ends_with("-01")
    );
    assert_ne!(hex(&root.trace_id), incoming_trace);
}

#[tokio::test]
async fn unsampled_requests_export_nothing_but_errors_can() {
    let up = Upstream::start("u").await;
    let collector = Collector::start().await;
    let gw = gateway(&up, &collector, "sample_ratio: 0.0, always_sample_errors: true");

    for _ in 0..5 {
        assert_eq!(get(&gw.url("/api/ok")).await.status, 200);
    }
    // The decision travels upstream: not sampled.
    assert!(
        up.last().headers["traceparent"]
            .to_str()
            .unwrap()
            .ends_with("-00")
    );
    // A caller that says "not sampled" is obeyed too.
    let r = send(
        &client_h1(),
        req("GET", &gw.url("/api/ok"))
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            )
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    // An error is exported although not sampled.
    assert_eq!(get(&gw.url("/api/status/503")).await.status, 503);
    let spans = collector.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans_later = collector.spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 2, "only the error's spans: {spans:?}");
    assert_eq!(spans_later.len(), 2);
    let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).unwrap();
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(&Value::IntValue(503))
    );
    assert_eq!(server.status.as_ref().unwrap().code, 2, "status ERROR");
}

#[test]
fn a_bad_endpoint_is_a_config_error() {
    let err = fails(
        "validate",
        "version: 1\nserver:\n  tracing: {otlp_endpoint: \"grpc://collector:4317\", sample_ratio: 2}\n",
    );
    assert!(err.contains("server.tracing.otlp_endpoint"), "{err}");
    assert!(
        err.contains("server.tracing.sample_ratio: must be between 0 and 1"),
        "{err}"
    );
}
