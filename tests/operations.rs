//! Operating the gateway: hot reload (file, SIGHUP, admin API) without
//! loss, metrics after known traffic, and the access log.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use support::*;

const TOKEN: &str = "ops-token";

fn with_admin(text: String) -> String {
    format!("{text}admin:\n  address: 127.0.0.1:0\n  token: {TOKEN}\n  persist: false\n")
}

fn respond_route(name: &str, path: &str, body: &str) -> String {
    format!("  - name: {name}\n    match: {{paths: [\"{path}\"]}}\n    respond: {{body: {body}}}\n")
}

async fn metrics(gw: &Gateway) -> String {
    let r = send(
        &client_h1(),
        req("GET", &gw.admin_url("/metrics"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .starts_with("application/openmetrics-text")
    );
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// The value of the sample `name{labels}` (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn file_changes_reload_and_bad_ones_are_refused() {
    let gw = Gateway::start(&with_admin(config(
        "  []",
        &respond_route("a", "= /a", "one"),
        "",
    )));
    assert_eq!(get(&gw.url("/a")).await.body, "one");

    // A valid change on disk is picked up.
    std::fs::write(
        &gw.config_path,
        with_admin(config("  []", &respond_route("a", "= /a", "two"), "")),
    )
    .unwrap();
    eventually("the new file is served", || async {
        get(&gw.url("/a")).await.body == "two"
    })
    .await;

    // An invalid one is refused; the config in force keeps serving.
    std::fs::write(
        &gw.config_path,
        "version: 1\nroutes:\n  - name: a\n    upstream: gone\n",
    )
    .unwrap();
    eventually("the refusal is logged", || async {
        gw.logged("config change refused")
    })
    .await;
    assert!(gw.logged("unknown upstream `gone`"));
    assert_eq!(get(&gw.url("/a")).await.body, "two");
    let m = metrics(&gw).await;
    assert_eq!(
        sample(&m, r#"portcullis_config_reloads_total{result="failure"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, r#"portcullis_config_reloads_total{result="success"}"#),
        1.0,
        "{m}"
    );

    // Other files changing in the config's directory make the watch read
    // it again: a file still refused for the same errors is not logged
    // nor counted again.
    let dir = gw.config_path.parent().unwrap().to_path_buf();
    for i in 0..5 {
        std::fs::write(dir.join("neighbour.txt"), format!("{i}")).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let refusals = || {
        gw.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("config change refused"))
            .count()
    };
    assert_eq!(refusals(), 1);
    let m = metrics(&gw).await;
    assert_eq!(
        sample(&m, r#"portcullis_config_reloads_total{result="failure"}"#),
        1.0,
        "{m}"
    );
    // Another error is news.
    std::fs::write(
        &gw.config_path,
        "version: 1\nroutes:\n  - name: a\n    upstream: missing\n",
    )
    .unwrap();
    eventually("the new refusal is logged", || async { refusals() == 2 }).await;
}

#[tokio::test]
async fn sighup_reloads_the_file() {
    let gw = Gateway::start_with(
        &with_admin(config("  []", &respond_route("a", "= /a", "one"), "")),
        &["--no-watch"],
    );
    std::fs::write(
        &gw.config_path,
        with_admin(config("  []", &respond_route("a", "= /a", "two"), "")),
    )
    .unwrap();
    // Not watched: nothing changes until the signal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&gw.url("/a")).await.body, "one");
    gw.signal("HUP");
    eventually("SIGHUP reloads", || async {
        get(&gw.url("/a")).await.body == "two"
    })
    .await;
    assert!(gw.logged("SIGHUP"));
}

/// 20 reloads while clients send requests without pause, over HTTP/1.1
/// and HTTP/2 keep-alive connections: every request gets its answer, no
/// connection is dropped, and upstream connections are reused across
/// reloads (no reconnect storm).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_under_load_lose_nothing() {
    let up = Upstream::start("u").await;
    let version = |n: usize| {
        with_admin(config(
            &upstream("users", &up),
            &format!(
                "  - name: api\n    match: {{paths: [/api]}}\n    upstream: users\n{}",
                respond_route("gen", "= /gen", &format!("v{n}"))
            ),
            "",
        ))
    };
    let gw = Arc::new(Gateway::start_with(&version(0), &["--no-watch"]));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..6 {
        let (gw, stop, ok) = (gw.clone(), stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            // One client each: its connections stay open across reloads.
            let client = if i % 2 == 0 { client_h1() } else { client_h2() };
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let path = if i % 3 == 0 { "/gen" } else { "/api/x" };
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.request(req("GET", &gw.url(path)).body(Full::<Bytes>::default()).unwrap()),
                )
                .await;
                match r {
                    Ok(Ok(resp)) if resp.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(resp)) => failures.push(format!("status {}", resp.status())),
                    Ok(Err(e)) => failures.push(format!("error {e:?}")),
                    Err(_) => failures.push("timeout".into()),
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let conns_before = up.connections.load(Ordering::SeqCst);
    let admin = client_h1();
    for n in 1..=20 {
        let r = send(
            &admin,
            req("PUT", &gw.admin_url("/config"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Full::new(Bytes::from(version(n))))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&gw.url("/gen")).await.body, "v20");
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let served = ok.load(Ordering::Relaxed);
    assert!(served > 200, "only {served} requests");
    // The clients' connections were never cut: the h2 clients would have
    // reconnected, which shows as errors above; the upstream pool was kept,
    // so reloads opened (almost) no new upstream connections.
    let new_conns = up.connections.load(Ordering::SeqCst) - conns_before;
    assert!(
        new_conns <= 4,
        "{new_conns} new upstream connections over 20 reloads"
    );
    let m = metrics(&gw).await;
    assert_eq!(
        sample(&m, r#"portcullis_config_reloads_total{result="success"}"#),
        20.0
    );
}

#[tokio::test]
async fn metrics_count_known_traffic() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&with_admin(config(
        &upstream("users", &up),
        &format!(
            "  - name: api\n    match: {{paths: [/api]}}\n    upstream: users\n    strip_prefix: /api\n{}",
            respond_route("ping", "= /ping", "pong")
        ),
        "  metrics_path: /internal/metrics\n",
    )));
    let client = client_h1();
    for _ in 0..5 {
        assert_eq!(
            send(
                &client,
                req("GET", &gw.url("/api/1")).body(Full::default()).unwrap()
            )
            .await
            .status,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            send(
                &client,
                req("POST", &gw.url("/api/status/503"))
                    .body(Full::default())
                    .unwrap()
            )
            .await
            .status,
            503
        );
    }
    assert_eq!(get(&gw.url("/ping")).await.status, 200);
    assert_eq!(get(&gw.url("/nowhere")).await.status, 404);
    let brew = send(
        &client,
        req("BREW", &gw.url("/ping")).body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(brew.status, 200);

    let target = up.addr.to_string();
    // The duration is recorded when the response body ends, just after the client has it.
    let gw_ref = &gw;
    eventually("all requests recorded", || async move {
        sample(
            &metrics(gw_ref).await,
            r#"portcullis_request_duration_seconds_count{route="api"}"#,
        ) == 8.0
    })
    .await;
    let m = metrics(&gw).await;
    let expect = [
        (
            r#"portcullis_requests_total{route="api",method="GET",status="200"}"#.to_string(),
            5.0,
        ),
        (
            r#"portcullis_requests_total{route="api",method="POST",status="503"}"#.to_string(),
            3.0,
        ),
        (
            r#"portcullis_requests_total{route="ping",method="GET",status="200"}"#.to_string(),
            1.0,
        ),
        // A client's made-up method does not make a new series.
        (
            r#"portcullis_requests_total{route="ping",method="OTHER",status="200"}"#.to_string(),
            1.0,
        ),
        (
            r#"portcullis_requests_total{route="",method="GET",status="404"}"#.to_string(),
            1.0,
        ),
        (
            format!(
                r#"portcullis_upstream_requests_total{{upstream="users",target="{target}",status="200"}}"#
            ),
            5.0,
        ),
        (
            format!(
                r#"portcullis_upstream_requests_total{{upstream="users",target="{target}",status="503"}}"#
            ),
            3.0,
        ),
        (
            r#"portcullis_upstream_duration_seconds_count{upstream="users"}"#.to_string(),
            8.0,
        ),
        (
            r#"portcullis_request_duration_seconds_bucket{le="+Inf",route="api"}"#.to_string(),
            8.0,
        ),
        (
            r#"portcullis_connections_active{listener="public"}"#.to_string(),
            1.0,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&m, &series), value, "{series} in\n{m}");
    }
    // No raw path ever becomes a label.
    assert!(!m.contains("/api/1") && !m.contains("nowhere"));
    assert_eq!(
        sample(
            &m,
            &format!(r#"portcullis_upstream_target_healthy{{upstream="users",target="{target}"}}"#)
        ),
        1.0
    );
    assert!(
        m.contains(r#"portcullis_config_reloads_total{result="failure"} 0"#),
        "{m}"
    );
    // Also on the data listener, at server.metrics_path, without a token.
    let r = get(&gw.url("/internal/metrics")).await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("portcullis_requests_total"));
}

#[tokio::test]
async fn access_log_lines_describe_each_request() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(
        &upstream("users", &up),
        "  - name: api\n    match: {paths: [/api]}\n    upstream: users\n",
        "  access_log: {enabled: true}\n",
    ));
    let r = send(
        &client_h1(),
        req("POST", &gw.url("/api/items?secret=1"))
            .header("host", "api.example.com")
            .body(Full::new(Bytes::from_static(b"0123456789")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let request_id = r.header("x-request-id").to_string();
    assert_eq!(get(&gw.url("/missing")).await.status, 404);

    let stdout = gw.stdout.clone();
    eventually("two access log lines", || {
        let stdout = stdout.clone();
        async move { stdout.lock().unwrap().len() >= 2 }
    })
    .await;
    let lines = gw.stdout.lock().unwrap().clone();
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["request_id"], request_id.as_str());
    assert_eq!(first["method"], "POST");
    assert_eq!(first["host"], "api.example.com");
    assert_eq!(first["path"], "/api/items");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes_in"], 10);
    assert_eq!(first["bytes_out"].as_u64().unwrap() as usize, r.body.len());
    assert_eq!(first["route"], "api");
    assert_eq!(first["upstream"], "users");
    assert_eq!(first["target"], up.addr.to_string());
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert!(first["consumer"].is_null());
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(first["upstream_time_ms"].as_f64().unwrap() > 0.0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    // The trace id is the one sent upstream in traceparent.
    let traceparent = up.last().headers["traceparent"].to_str().unwrap().to_string();
    assert_eq!(first["trace_id"], &traceparent[3..35]);
    assert!(!lines[0].contains("secret"), "query strings are not logged");
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["status"], 404);
    assert!(second["route"].is_null());
}

#[tokio::test]
async fn access_log_to_a_file() {
    let dir = std::env::temp_dir().join(format!("portcullis-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("access.log");
    let gw = Gateway::start(&config(
        "  []",
        &respond_route("ping", "= /ping", "pong"),
        &format!("  access_log: {{enabled: true, path: \"{}\"}}\n", file.display()),
    ));
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/ping")).await.status, 200);
    }
    let f = file.clone();
    eventually("three lines in the file", || {
        let f = f.clone();
        async move { std::fs::read_to_string(&f).is_ok_and(|t| t.lines().count() == 3) }
    })
    .await;
    for line in std::fs::read_to_string(&file).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["route"], "ping");
    }
    assert!(gw.stdout.lock().unwrap().is_empty());
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}

/// A log consumer that stops reading (stdout is a pipe nobody reads) does
/// not slow requests: lines past `access_log.buffer` are dropped and counted.
#[tokio::test]
async fn a_stuck_access_log_drops_lines_instead_of_slowing_requests() {
    let gw = Gateway::start_stuck_stdout(&with_admin(config(
        "  []",
        &respond_route("ping", "= /ping", "pong"),
        "  access_log: {enabled: true, buffer: 16KiB}\n",
    )));
    let client = client_h1();
    let started = std::time::Instant::now();
    // ~340 bytes a line: the 64 KiB pipe and the 16 KiB buffer hold ~240.
    for _ in 0..2000 {
        let r = send(
            &client,
            req("GET", &gw.url("/ping")).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let took = started.elapsed();
    let m = metrics(&gw).await;
    let dropped = sample(&m, "portcullis_access_log_dropped_total");
    assert!(dropped >= 1000.0, "dropped {dropped}\n{m}");
    // Not a timing target: a blocked writer would stall these requests for good.
    assert!(took < Duration::from_secs(60), "{took:?}");
    // Nor does it stop a clean shutdown.
    let mut gw = gw;
    assert!(gw.terminate().success());
}

/// Limits change on reload too: a header size that passed is refused after
/// the limit is lowered.
#[tokio::test]
async fn reloaded_limits_apply() {
    let text = |limit: &str| {
        with_admin(config(
            "  []",
            &respond_route("ping", "= /ping", "pong"),
            &format!("  limits: {{max_request_header_bytes: {limit}}}\n"),
        ))
    };
    let gw = Gateway::start_with(&text("32KiB"), &["--no-watch"]);
    let big = "x".repeat(3000);
    let hit = || async {
        send(
            &client_h1(),
            req("GET", &gw.url("/ping"))
                .header("x-big", big.as_str())
                .body(Full::default())
                .unwrap(),
        )
        .await
        .status
    };
    assert_eq!(hit().await, 200);
    let r = send(
        &client_h1(),
        req("PUT", &gw.admin_url("/config"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::from(text("2KiB"))))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(hit().await, 431);
}
