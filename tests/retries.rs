//! Retries (SPEC `upstreams[].retries`, defaults in section 8) through the
//! real binary, against real upstreams that answer 503, reset connections,
//! refuse them or hang: what is retried, where, how often, and what never is.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Full, StreamBody};
use hyper::body::Frame;
use support::*;

/// An upstream that always answers `status`.
async fn always(status: u16) -> Service {
    Service::start(move |_, _| {
        let mut r = http::Response::new(Full::new(Bytes::from("no")));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r
    })
    .await
}

/// A target that reads a request and closes the connection without a word.
/// Returns its address and how many requests it swallowed.
async fn resetting() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, seen)
}

/// Passive ejection off, so round robin keeps sending to the bad target.
const NO_EJECTION: &str = "    health_checks: {passive: {unhealthy_threshold: 0, timeout_threshold: 0}}\n";

fn route(name: &str, path: &str) -> String {
    format!("  - name: {name}\n    match: {{paths: [{path}]}}\n    upstream: {name}\n")
}

#[tokio::test]
async fn listed_statuses_are_retried_on_another_target_for_idempotent_methods_only() {
    let bad = always(503).await;
    let good = Upstream::start("good").await;
    let retries = "    retries: {attempts: 2, on: [connect_failure, reset, 503], backoff: 1ms}\n";
    let yaml = config(
        &format!(
            "  - name: get\n    targets: [{{url: \"{b}\"}}, {{url: \"{g}\"}}]\n{NO_EJECTION}{retries}\
             \x20 - name: post\n    targets: [{{url: \"{b}\"}}, {{url: \"{g}\"}}]\n{NO_EJECTION}{retries}\
             \x20 - name: put\n    targets: [{{url: \"{b}\"}}, {{url: \"{g}\"}}]\n{NO_EJECTION}{retries}",
            b = bad.url(""),
            g = good.url()
        ),
        &[
            route("get", "/get"),
            route("post", "/post"),
            // A replay carries the upstream's path, not the client's.
            format!("{}    rewrite: /replayed\n", route("put", "/put")),
        ]
        .concat(),
        "admin: {address: \"127.0.0.1:0\", token: t}\n",
    );
    let gw = Gateway::start(&yaml);

    // Every GET that met the 503 was sent again, to the good target.
    for _ in 0..10 {
        let r = get(&gw.url("/get")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), "good");
    }
    let bad_gets = bad.hits();
    assert!(bad_gets >= 5, "{bad_gets}");
    assert_eq!(good.count(), 10, "each GET reached the good target once");
    let m = gw.admin_metrics("t").await;
    let line = format!("portcullis_upstream_retries_total{{upstream=\"get\"}} {bad_gets}");
    assert!(m.contains(&line), "{line} in\n{m}");

    // POST may have been processed by the 503: never sent twice.
    let client = client_h1();
    let mut refused = 0;
    for _ in 0..10 {
        match post_bytes(&client, &gw.url("/post"), 10).await.status {
            200 => {}
            503 => refused += 1,
            s => panic!("{s}"),
        }
    }
    assert_eq!(
        refused,
        bad.hits() - bad_gets,
        "each POST the 503 saw is the client's answer"
    );
    assert_eq!(good.count(), 10 + 10 - refused);

    // PUT is idempotent: a small body is replayed whole to the good
    // target; one over the replay bound (64 KiB) is not.
    let small = post_like(&client, "PUT", &gw.url("/put"), 1000).await;
    assert_eq!(small.status, 200);
    assert_eq!(good.last().method, "PUT");
    assert_eq!(good.last().body_len, 1000);
    assert_eq!(good.last().uri, "/replayed");
    let before = good.count();
    let large = post_like(&client, "PUT", &gw.url("/put"), 100 * 1024).await;
    assert_eq!(
        large.status, 503,
        "a body over the replay bound is not sent twice"
    );
    assert_eq!(good.count(), before);
}

async fn post_like(client: &TestClient, method: &str, url: &str, n: usize) -> Resp {
    send(
        client,
        req(method, url)
            .body(Full::new(Bytes::from(vec![b'a'; n])))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_reset_is_retried_for_get_but_not_for_post() {
    let (reset_addr, swallowed) = resetting().await;
    let good = Upstream::start("good").await;
    let yaml = config(
        &format!(
            "  - name: u\n    targets: [{{url: \"http://{reset_addr}\"}}, {{url: \"{}\"}}]\n{NO_EJECTION}    retries: {{attempts: 1, on: [reset], backoff: 1ms}}\n",
            good.url()
        ),
        &route("u", "/"),
        "",
    );
    let gw = Gateway::start(&yaml);
    for _ in 0..6 {
        assert_eq!(get(&gw.url("/x")).await.status, 200);
    }
    assert!(swallowed.load(Ordering::SeqCst) >= 3);
    let client = client_h1();
    let (mut failed, before) = (0, swallowed.load(Ordering::SeqCst));
    for _ in 0..6 {
        match post_bytes(&client, &gw.url("/x"), 10).await.status {
            200 => {}
            502 => failed += 1,
            s => panic!("{s}"),
        }
    }
    assert_eq!(failed, swallowed.load(Ordering::SeqCst) - before);
    assert!(failed >= 3, "{failed}");
}

#[tokio::test]
async fn a_refused_connection_is_retried_for_any_method_with_its_streamed_body() {
    let good = Upstream::start("good").await;
    // The default policy: one extra attempt on connect_failure.
    let yaml = config(
        &format!(
            "  - name: u\n    targets: [{{url: \"http://127.0.0.1:1\"}}, {{url: \"{}\"}}]\n{NO_EJECTION}",
            good.url()
        ),
        &route("u", "/"),
        "",
    );
    let gw = Gateway::start(&yaml);
    let client = client_h1();
    for _ in 0..4 {
        // Chunked: a body of unknown length, never buffered, still whole upstream.
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..8)
            .map(|_| Ok(Frame::data(Bytes::from(vec![b'c'; 1000]))))
            .collect();
        let body = http_body_util::BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks)));
        let c =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let resp = c
            .request(req("POST", &gw.url("/x")).body(body).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(good.last().body_len, 8000);
        assert_eq!(post_bytes(&client, &gw.url("/y"), 5).await.status, 200);
    }
    assert_eq!(good.count(), 8);
}

#[tokio::test]
async fn the_budget_caps_retries() {
    let bad = always(503).await;
    // Budget 0: only the floor of 10 retries per second (over 10 s) remains.
    let yaml = config(
        &format!(
            "  - name: u\n    targets: [{{url: \"{}\"}}]\n{NO_EJECTION}    retries: {{attempts: 1, on: [503], backoff: 1ms, budget: 0}}\n",
            bad.url("")
        ),
        &route("u", "/"),
        "admin: {address: \"127.0.0.1:0\", token: t}\n",
    );
    let gw = Gateway::start(&yaml);
    let client = client_h1();
    for _ in 0..150 {
        let r = send(&client, req("GET", &gw.url("/x")).body(Full::default()).unwrap()).await;
        assert_eq!(r.status, 503);
    }
    assert_eq!(bad.hits(), 150 + 100, "150 requests, 100 retries");
    let m = gw.admin_metrics("t").await;
    assert!(
        m.contains("portcullis_upstream_retries_total{upstream=\"u\"} 100"),
        "{m}"
    );
}

#[tokio::test]
async fn the_route_timeout_bounds_all_attempts() {
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hanging.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hanging.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let yaml = config(
        &format!(
            "  - name: u\n    targets: [{{url: \"http://{addr}\"}}]\n{NO_EJECTION}    timeouts: {{read: 300ms}}\n    retries: {{attempts: 5, on: [504], backoff: 1ms}}\n"
        ),
        "  - name: u\n    match: {paths: [/]}\n    upstream: u\n    timeout: 500ms\n",
        "",
    );
    let gw = Gateway::start(&yaml);
    let started = Instant::now();
    get(&gw.url("/x")).await.problem(504, "gateway-timeout");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(
        took < Duration::from_millis(900),
        "five attempts of 300 ms would take 1.5 s: {took:?}"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 2, "300 ms, then the 200 ms left");
}

#[test]
fn policy_errors_are_named() {
    let yaml = "version: 1\nupstreams:\n  - name: u\n    targets: [{url: \"http://127.0.0.1:9\"}]\n    retries: {attempts: 11, on: [connect_failure, 404, timeout], budget: 1.5}\nroutes:\n  - name: a\n    match: {paths: [/a]}\n    upstream: u\n";
    fails_with(
        "validate",
        yaml,
        &[
            "config.yaml:5: upstreams[0].retries.attempts: must be at most 10",
            "upstreams[0].retries.on: `404` is not a retry condition (connect_failure, reset, or a status 500-599)",
            "upstreams[0].retries.budget: must be between 0 and 1",
        ],
    );
}
