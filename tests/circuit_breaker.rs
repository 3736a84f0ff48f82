//! The circuit breaker (SPEC sections 2 and 8) through the real binary: a
//! real upstream that fails, the circuit opening, failing fast with nothing
//! sent, half-open probes closing or reopening it; its state in the metric
//! and the admin health endpoint.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn opens_fails_fast_and_recovers_through_probes() {
    let up = Upstream::start("u").await;
    let yaml = config(
        &format!(
            "  - name: u\n    targets: [{{url: \"{}\"}}]\n    circuit_breaker: {{failure_rate: 0.5, min_requests: 4, window: 10s, open_for: 500ms, half_open_requests: 2}}\n",
            up.url()
        ),
        "  - name: api\n    match: {paths: [/]}\n    upstream: u\n",
        "admin: {address: \"127.0.0.1:0\", token: t}\n",
    );
    let gw = Gateway::start(&yaml);
    let health = gw.admin_get("/upstreams/u/health", "t").await.json();
    assert_eq!(health["circuit_breaker"], "closed");

    // 2 of 4 calls fail (503): 50%, the circuit opens.
    for path in ["/ok", "/status/503", "/ok", "/status/503"] {
        get(&gw.url(path)).await;
    }
    assert_eq!(up.count(), 4);
    let r = get(&gw.url("/ok")).await;
    r.problem(503, "circuit-open");
    assert_eq!(up.count(), 4, "an open circuit sends nothing upstream");
    assert_eq!(
        gw.admin_get("/upstreams/u/health", "t").await.json()["circuit_breaker"],
        "open"
    );
    let m = gw.admin_metrics("t").await;
    assert!(
        m.contains(r#"portcullis_circuit_breaker_state{upstream="u"} 1"#),
        "{m}"
    );

    // After open_for: half-open; a failed probe reopens at once.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&gw.url("/status/502")).await.status, 502);
    get(&gw.url("/ok")).await.problem(503, "circuit-open");
    assert_eq!(up.count(), 5);

    // Half-open again: two good probes close it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&gw.url("/ok")).await.status, 200);
    assert_eq!(get(&gw.url("/ok")).await.status, 200);
    assert_eq!(
        gw.admin_get("/upstreams/u/health", "t").await.json()["circuit_breaker"],
        "closed"
    );
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/ok")).await.status, 200);
    }
    let m = gw.admin_metrics("t").await;
    assert!(
        m.contains(r#"portcullis_circuit_breaker_state{upstream="u"} 0"#),
        "{m}"
    );

    // The breaker removed by a reload: its series goes with it.
    let body = format!(r#"{{"targets": [{{"url": "{}"}}]}}"#, up.url());
    let r = gw.admin_send("PUT", "/upstreams/u", "t", &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let m = gw.admin_metrics("t").await;
    assert!(!m.contains("portcullis_circuit_breaker_state{"), "{m}");
    assert!(gw.admin_get("/upstreams/u/health", "t").await.json()["circuit_breaker"].is_null());
}

#[tokio::test]
async fn slow_calls_and_connect_failures_count() {
    let up = Upstream::start("u").await;
    let yaml = config(
        &format!(
            "  - name: slow\n    targets: [{{url: \"{}\"}}]\n    circuit_breaker: {{failure_rate: 1.0, min_requests: 2, window: 10s, open_for: 30s, half_open_requests: 1, slow_call_threshold: 50ms}}\n\
             \x20 - name: down\n    targets: [{{url: \"http://127.0.0.1:1\"}}]\n    circuit_breaker: {{failure_rate: 1.0, min_requests: 2, window: 10s, open_for: 30s, half_open_requests: 1}}\n",
            up.url()
        ),
        "  - name: slow\n    match: {paths: [/delay]}\n    upstream: slow\n  - name: down\n    match: {paths: [/down]}\n    upstream: down\n",
        "",
    );
    let gw = Gateway::start(&yaml);
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/delay/100")).await.status, 200);
    }
    get(&gw.url("/delay/0")).await.problem(503, "circuit-open");
    // The default retry sends a refused request once more: two failed
    // calls, and the circuit opens.
    assert_eq!(get(&gw.url("/down")).await.status, 502);
    get(&gw.url("/down")).await.problem(503, "circuit-open");
}
