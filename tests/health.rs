//! Passive health checks (SPEC sections 2 and 8, on by default): targets
//! that fail or hang in a row are ejected and take no traffic; with none
//! left, 503 `no-healthy-target` fast.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use support::*;

/// A target that accepts connections and never answers.
async fn hanging_target() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn failing_and_hanging_targets_are_ejected() {
    let good = Upstream::start("good").await;
    let hanging = hanging_target().await;
    let yaml = config(
        &format!(
            "  - name: refused\n    targets: [{{url: \"{}\"}}, {{url: \"http://127.0.0.1:1\"}}]\n\
             \x20 - name: hangs\n    targets: [{{url: \"{}\"}}, {{url: \"http://{hanging}\"}}]\n    timeouts: {{read: 200ms}}\n\
             \x20 - name: dead\n    targets: [{{url: \"http://127.0.0.1:1\"}}]\n    health_checks: {{passive: {{unhealthy_threshold: 2}}}}\n",
            good.url(),
            good.url()
        ),
        "  - name: refused\n    match: {paths: [/refused]}\n    upstream: refused\n\
         \x20 - name: hangs\n    match: {paths: [/hangs]}\n    upstream: hangs\n\
         \x20 - name: dead\n    match: {paths: [/dead]}\n    upstream: dead\n",
        "admin: {address: \"127.0.0.1:0\", token: t}\n",
    );
    let gw = Gateway::start(&yaml);

    // Round robin over a good and a refusing target: each refused call is
    // retried on the good one (the default retry), so the client sees no
    // failure; 5 failures in a row eject the bad target.
    for _ in 0..40 {
        assert_eq!(get(&gw.url("/refused")).await.status, 200);
    }
    let health = gw.admin_get("/upstreams/refused/health", "t").await.json();
    let targets = health["targets"].as_array().unwrap();
    assert_eq!(targets[0]["healthy"], true);
    assert_eq!(targets[1]["healthy"], false);
    assert!(targets[1]["ejected_until"].as_u64().unwrap() > 1_700_000_000);
    let m = gw.admin_metrics("t").await;
    for line in [
        r#"portcullis_upstream_target_healthy{upstream="refused",target="127.0.0.1:1"} 0"#,
        r#"portcullis_upstream_requests_total{upstream="refused",target="127.0.0.1:1",status="502"} 5"#,
        r#"portcullis_upstream_retries_total{upstream="refused"} 5"#,
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }

    // A hanging target: 3 timeouts (504, each bounded by the read timeout) eject it.
    let mut timeouts = 0;
    let started = std::time::Instant::now();
    for _ in 0..30 {
        match get(&gw.url("/hangs")).await.status {
            200 => {}
            504 => timeouts += 1,
            s => panic!("{s}"),
        }
    }
    assert_eq!(timeouts, 3);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // No target left: 503 at once. (The refused call is retried once on the
    // same, only target: two failures.)
    assert_eq!(get(&gw.url("/dead")).await.status, 502);
    get(&gw.url("/dead")).await.problem(503, "no-healthy-target");
}

/// A target whose `/health` answers the status held in the returned cell;
/// everything else gets 200. Every answer says `x-upstream: NAME`.
async fn checked_target(name: &'static str) -> (Service, Arc<AtomicU16>) {
    let status = Arc::new(AtomicU16::new(200));
    let cell = status.clone();
    let svc = Service::start(move |parts, _| {
        let code = if parts.uri.path() == "/health" {
            cell.load(Ordering::SeqCst)
        } else {
            200
        };
        let mut r = http::Response::new(Full::new(Bytes::from(name)));
        *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
        r.headers_mut().insert("x-upstream", name.parse().unwrap());
        r
    })
    .await;
    (svc, status)
}

async fn healthy(gw: &Gateway, upstream: &str, i: usize) -> bool {
    let path = format!("/upstreams/{upstream}/health");
    gw.admin_get(&path, "t").await.json()["targets"][i]["healthy"] == true
}

#[tokio::test]
async fn active_checks_take_targets_out_and_bring_them_back() {
    let (a, a_status) = checked_target("a").await;
    let (b, _) = checked_target("b").await;
    let hanging = hanging_target().await;
    let checks = "    health_checks: {active: {path: /health, interval: 100ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 2}}\n";
    let upstreams = format!(
        "  - name: u\n    targets: [{{url: \"{}\"}}, {{url: \"{}\"}}]\n{checks}\
         \x20 - name: h\n    targets: [{{url: \"http://{hanging}\"}}]\n{checks}",
        a.url(""),
        b.url("")
    );
    let admin = "admin: {address: \"127.0.0.1:0\", token: t}\n";
    let gw = Gateway::start(&config(
        &upstreams,
        "  - name: r\n    match: {paths: [/]}\n    upstream: u\n",
        admin,
    ));
    let answered_by = |gw: &Gateway| {
        let url = gw.url("/x");
        async move { get(&url).await.header("x-upstream").to_string() }
    };

    // Both pass: both take traffic.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(answered_by(&gw).await);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // a fails its checks: out of rotation, all traffic to b.
    a_status.store(500, Ordering::SeqCst);
    eventually("a out of rotation", || async { !healthy(&gw, "u", 0).await }).await;
    let health = gw.admin_get("/upstreams/u/health", "t").await.json();
    assert!(health["targets"][0]["ejected_until"].is_null(), "{health}");
    for _ in 0..10 {
        assert_eq!(answered_by(&gw).await, "b");
    }
    let m = gw.admin_metrics("t").await;
    let line = format!(
        "portcullis_upstream_target_healthy{{upstream=\"u\",target=\"{}\"}} 0",
        a.addr
    );
    assert!(m.contains(&line), "{line} in\n{m}");

    // Checks that get no answer in time fail too.
    eventually("the hanging target out of rotation", || async {
        !healthy(&gw, "h", 0).await
    })
    .await;

    // b goes away (connections refused): no target left, 503 at once.
    drop(b);
    eventually("b out of rotation", || async { !healthy(&gw, "u", 1).await }).await;
    let started = std::time::Instant::now();
    get(&gw.url("/x")).await.problem(503, "no-healthy-target");
    assert!(started.elapsed() < Duration::from_millis(100));

    // a passes again (twice in a row): back in rotation.
    a_status.store(200, Ordering::SeqCst);
    eventually("a back", || async { healthy(&gw, "u", 0).await }).await;
    assert_eq!(answered_by(&gw).await, "a");

    // The upstream removed by a reload: its checks stop.
    let r = gw
        .admin_send(
            "PUT",
            "/config",
            "t",
            &config(
                "",
                "  - name: r\n    match: {paths: [/]}\n    respond: {body: gone}\n",
                admin,
            )
            .replace("upstreams:\n\n", ""),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let checks = a.hits();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.hits(), checks, "no checks once the upstream is gone");
}

#[test]
fn active_check_errors_are_named() {
    let yaml = "version: 1\nupstreams:\n  - name: u\n    targets: [{url: \"http://127.0.0.1:9\"}]\n    health_checks:\n      active: {path: health, interval: 10ms, healthy_threshold: 0}\nroutes:\n  - name: a\n    match: {paths: [/a]}\n    upstream: u\n";
    fails_with(
        "validate",
        yaml,
        &[
            "config.yaml:6: upstreams[0].health_checks.active.path: must be a path starting with `/`",
            "upstreams[0].health_checks.active.interval: must be at least 100ms",
            "upstreams[0].health_checks.active.healthy_threshold: must be at least 1",
        ],
    );
}
