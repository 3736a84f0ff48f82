//! Passive health checks (SPEC sections 2 and 8, on by default): targets
//! that fail or hang in a row are ejected and take no traffic; with none
//! left, 503 `no-healthy-target` fast.

mod support;

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
