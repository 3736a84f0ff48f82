//! Plain proxying through the real binary: HTTP/1.1 and h2c, headers,
//! streaming, path handling, upstream failures.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use support::*;

async fn one_route(extra: &str, route_extra: &str) -> (Gateway, Upstream) {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(
        &upstream("a", &up),
        &format!("  - name: r\n    match: {{paths: [\"/\"]}}\n    upstream: a\n{route_extra}"),
        extra,
    ));
    (gw, up)
}

#[tokio::test]
async fn proxies_http1_and_h2c_on_one_port() {
    let (gw, up) = one_route("", "").await;
    let r = get(&gw.url("/hello?x=1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uri"], "/hello?x=1");
    assert_eq!(r.json()["method"], "GET");
    let r2 = send(
        &client_h2(),
        req("POST", &gw.url("/h2"))
            .body(Full::new(Bytes::from("abc")))
            .unwrap(),
    )
    .await;
    assert_eq!(r2.status, 200);
    assert_eq!(r2.json()["uri"], "/h2");
    assert_eq!(r2.json()["body_len"], 3);
    // The upstream is HTTP/1.1 whatever the client spoke, with the client's :authority as Host.
    assert_eq!(up.last().version, "HTTP/1.1");
    assert_eq!(up.last().headers["host"], gw.addr().to_string().as_str());
    assert_eq!(up.count(), 2);
}

/// A client's trace context (the W3C spec's example).
const CLIENT_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn forwarding_headers_request_id_and_traceparent() {
    let (gw, up) = one_route("", "").await;
    let r = send(
        &client_h1(),
        req("GET", &gw.url("/x"))
            .header("host", "api.example.com")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-host", "evil.example")
            .header("x-request-id", "client-chosen")
            .header("traceparent", CLIENT_TRACEPARENT)
            .header("tracestate", "vendor=abc")
            // What CGI-style servers read as X-Forwarded-For and X-Request-Id.
            .header("x_forwarded_for", "6.6.6.6")
            .header("x-request_id", "client-chosen")
            .header("api_key", "kept")
            // What only a proxy may say: prefix, original path, client address.
            .header("x-forwarded-prefix", "/evil")
            .header("x-forwarded-port", "1")
            .header("x-original-url", "/admin")
            .header("true-client-ip", "6.6.6.6")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(!seen.headers.contains_key("x_forwarded_for"));
    assert!(!seen.headers.contains_key("x-request_id"));
    assert_eq!(seen.headers["api_key"], "kept", "other underscore names pass");
    for name in [
        "x-forwarded-prefix",
        "x-forwarded-port",
        "x-original-url",
        "true-client-ip",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} from an untrusted client"
        );
    }
    // An untrusted client cannot plant its own chain.
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "api.example.com");
    assert_eq!(seen.headers["host"], "api.example.com");
    // Request id: generated (not trusted by default), sent upstream and echoed.
    let id = r.header("x-request-id");
    assert_ne!(id, "client-chosen");
    assert_eq!(id.len(), 32);
    assert_eq!(seen.headers["x-request-id"], id);
    // traceparent: same trace, new parent span.
    let tp = seen.headers["traceparent"].to_str().unwrap();
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
    assert!(!tp.contains("00f067aa0ba902b7"));
    // The trace's vendor state goes with it.
    assert_eq!(seen.headers["tracestate"], "vendor=abc");
    // Without one, a new trace starts.
    get(&gw.url("/y")).await;
    let tp2 = up.last().headers["traceparent"].to_str().unwrap().to_string();
    assert_eq!(tp2.len(), 55);
    assert!(!tp2.starts_with("00-4bf92f"));
    // An invalid traceparent starts a new trace too, and the old trace's
    // tracestate is not passed on as if it were this one's.
    let r = send(
        &client_h1(),
        req("GET", &gw.url("/z"))
            .header("traceparent", CLIENT_TRACEPARENT.replace("00-", "ff-"))
            .header("tracestate", "vendor=abc")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(
        !seen.headers["traceparent"]
            .to_str()
            .unwrap()
            .starts_with("00-4bf92f")
    );
    assert!(!seen.headers.contains_key("tracestate"));
}

#[tokio::test]
async fn trusted_proxies_append_and_trusted_request_ids() {
    let (gw, up) = one_route("  trusted_proxies: [127.0.0.0/8]\n  request_id: { header: X-Request-Id, trust_incoming: true }\n  via: true\n", "").await;
    let r = send(
        &client_h1(),
        req("GET", &gw.url("/x"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-prefix", "/api")
            .header("x-request-id", "abc-123")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.header("x-request-id"), "abc-123");
    assert_eq!(r.header("via"), "1.1 portcullis");
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(
        seen.headers["x-forwarded-prefix"], "/api",
        "a trusted proxy's is kept"
    );
    assert_eq!(seen.headers["x-request-id"], "abc-123");
    assert_eq!(seen.headers["via"], "1.1 portcullis");

    // A `Connection` header naming the forwarded fields cannot drop the
    // trusted chain, which would leave the proxy's own address as the
    // client's (Traefik CVE-2024-45410), nor the trace context.
    send(
        &client_h1(),
        req("GET", &gw.url("/x"))
            .header(
                "connection",
                "x-forwarded-for, X-Forwarded-Proto, traceparent, x-real-ip, x-hop",
            )
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("x-real-ip", "203.0.113.9")
            .header("x-hop", "1")
            .header("traceparent", CLIENT_TRACEPARENT)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.9");
    let tp = seen.headers["traceparent"].to_str().unwrap();
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
    // Other fields it names are still hop-by-hop.
    assert!(!seen.headers.contains_key("x-hop"));
}

#[tokio::test]
async fn hop_by_hop_headers_removed_both_ways() {
    let (gw, up) = one_route("", "").await;
    let r = send(
        &client_h1(),
        req("GET", &gw.url("/x"))
            .header("connection", "x-secret, x-forwarded-for, x-request-id")
            .header("x-secret", "1")
            .header("te", "trailers")
            .header("upgrade", "websocket")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    for h in ["x-secret", "te", "upgrade", "proxy-authorization"] {
        assert!(!seen.headers.contains_key(h), "{h} was forwarded");
    }
    // Connection cannot remove what the gateway sets.
    assert!(seen.headers.contains_key("x-forwarded-for"));
    assert!(seen.headers.contains_key("x-request-id"));
    // The upstream's keep-alive header does not reach the client.
    assert!(!r.headers.contains_key("keep-alive"));
    assert_eq!(r.header("x-upstream"), "a");
}

#[tokio::test]
async fn cookies_split_over_http2_reach_an_http1_upstream_as_one_field() {
    // Browsers send each cookie pair as its own field over HTTP/2; an
    // HTTP/1.1 server reads one Cookie field (RFC 9113 §8.2.3).
    let (gw, up) = one_route("", "").await;
    let r = send(
        &client_h2(),
        req("GET", &gw.url("/x"))
            .header("cookie", "a=1")
            .header("cookie", "session=s3; b=2")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.version, "HTTP/1.1");
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; session=s3; b=2"]);
}

#[tokio::test]
async fn streams_large_bodies_both_ways() {
    let (gw, up) = one_route("", "").await;
    let r = get(&gw.url("/bytes/3000000")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3_000_000);
    let big = Bytes::from(vec![b'y'; 5_000_000]);
    let r = send(
        &client_h2(),
        req("PUT", &gw.url("/upload")).body(Full::new(big)).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 5_000_000);
    assert_eq!(up.last().method, "PUT");
}

#[tokio::test]
async fn response_headers_arrive_before_a_slow_body() {
    // Streaming, not buffering: the client gets the headers while the body is pending.
    let (gw, _up) = one_route("", "").await;
    let client = client_h1();
    let start = std::time::Instant::now();
    let resp = client
        .request(
            req("GET", &gw.url("/slow-body/700"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(600),
        "headers were held back: {:?}",
        start.elapsed()
    );
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "late body");
}

#[tokio::test]
async fn upstream_keep_alive_pool_reuses_connections() {
    let (gw, up) = one_route("", "").await;
    let client = client_h1();
    for _ in 0..30 {
        let r = send(&client, req("GET", &gw.url("/k")).body(Full::default()).unwrap()).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.count(), 30);
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
}

#[tokio::test]
async fn http2_upstreams() {
    let up = Upstream::start("h2").await;
    let gw = Gateway::start(&config(
        &format!(
            "  - name: a\n    protocol: http2\n    targets: [{{url: \"{}\"}}]\n",
            up.url()
        ),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n",
        "",
    ));
    for _ in 0..5 {
        let r = get(&gw.url("/two")).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.last().version, "HTTP/2.0");
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one multiplexed connection"
    );
    // Answer heads up to 64 KiB pass, as over HTTP/1.1 (hyper alone stops at 16 KiB).
    let r = get(&gw.url("/big-header/30000")).await;
    assert_eq!((r.status, r.header("x-big").len()), (200, 30000));
    // Past it: 502, and the connection's other requests go on.
    get(&gw.url("/big-header/70000"))
        .await
        .problem(502, "bad-gateway");
    assert_eq!(get(&gw.url("/two")).await.status, 200);
}

#[tokio::test]
async fn strip_prefix_rewrite_and_query() {
    let up = Upstream::start("a").await;
    let routes = "  - name: strip\n    match: {paths: [\"/api/v1\"]}\n    upstream: a\n    strip_prefix: /api/v1\n\
                  \x20 - name: rw\n    match: {paths: [\"/users/{id}/files/{rest*}\"]}\n    upstream: a\n    rewrite: /v2/u/{id}/f/{rest}\n\
                  \x20 - name: rwq\n    match: {paths: [\"/search/{term}\"]}\n    upstream: a\n    rewrite: /find?q={term}\n";
    let gw = Gateway::start(&config(&upstream("a", &up), routes, ""));
    assert_eq!(
        get(&gw.url("/api/v1/users/7?a=1")).await.json()["uri"],
        "/users/7?a=1"
    );
    assert_eq!(get(&gw.url("/api/v1")).await.json()["uri"], "/");
    assert_eq!(
        get(&gw.url("/users/42/files/a/b.txt?dl=1")).await.json()["uri"],
        "/v2/u/42/f/a/b.txt?dl=1"
    );
    // A rewrite with its own query replaces the client's.
    assert_eq!(
        get(&gw.url("/search/cats?page=2")).await.json()["uri"],
        "/find?q=cats"
    );
    // The normalized path is what is forwarded.
    assert_eq!(
        get(&gw.url("/api/v1//users/./7/../8")).await.json()["uri"],
        "/users/8"
    );
}

#[tokio::test]
async fn absolute_form_is_routed_by_path_and_never_contacts_the_named_host() {
    let (gw, up) = one_route("", "").await;
    let (resp, _) = raw(
        gw.addr(),
        b"GET http://169.254.169.254/latest/meta-data HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(up.last().uri, "/latest/meta-data");

    // The host the gateway routes on (the target's authority) is the one
    // the upstream gets as Host, whatever Host the client also sent
    // (RFC 9112 §3.2.2): a virtual host cannot be reached behind another.
    let (resp, _) = raw(
        gw.addr(),
        b"GET http://api.example.com/x HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.last();
    assert_eq!(seen.headers["host"], "api.example.com");
    assert_eq!(seen.headers["x-forwarded-host"], "api.example.com");
    assert_eq!(up.count(), 2);

    // Another scheme is not an HTTP request to forward.
    let (resp, _) = raw(
        gw.addr(),
        b"GET ftp://api.example.com/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("scheme is not http or https"), "{resp}");
    assert_eq!(up.count(), 2);

    // Over HTTP/2, a Host naming another host than :authority is malformed
    // (RFC 9113 §8.3.1); the same one in another case is not.
    let r = send(
        &client_h2(),
        req("GET", &gw.url("/y"))
            .header("host", "admin.internal")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    r.problem(400, "bad-request");
    assert_eq!(up.count(), 2);
    let r = send(
        &client_h2(),
        req("GET", &gw.url("/y"))
            .header("host", gw.addr().to_string().to_uppercase())
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn respond_routes_answer_without_an_upstream() {
    let gw = Gateway::start(&config(
        "  []",
        "  - name: ping\n    match: {paths: [\"= /ping\"]}\n    respond: {status: 201, headers: {content-type: text/plain, x-a: b}, body: pong}\n",
        "",
    ));
    let r = get(&gw.url("/ping")).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body, "pong");
    assert_eq!(r.header("x-a"), "b");
    assert_eq!(r.header("x-request-id").len(), 32);
    get(&gw.url("/ping/x")).await.problem(404, "route-not-found");

    // HEAD: the headers a GET gets, its length included, and no body, over
    // both protocols (HTTP/2 sent the body: a protocol error).
    let (resp, _) = raw(
        gw.addr(),
        b"HEAD /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    assert!(resp.contains("content-length: 4\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\n"), "a body came: {resp:?}");
    let r = send(
        &client_h2(),
        req("HEAD", &gw.url("/ping")).body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("content-length"), "4");
    assert!(r.body.is_empty(), "{:?}", r.body);
}

#[tokio::test]
async fn upstream_refusing_answering_garbage_or_hanging() {
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // A server that answers garbage.
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = garbage.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"SSH-2.0-OpenSSH_9.0\r\nnot http at all\r\n\r\n")
                    .await;
            });
        }
    });
    let slow = Upstream::start("slow").await;
    let ups = format!(
        "  - name: dead\n    targets: [{{url: \"http://{dead}\"}}]\n  - name: garbage\n    targets: [{{url: \"http://{garbage_addr}\"}}]\n  - name: slow\n    timeouts: {{read: 300ms}}\n    targets: [{{url: \"{}\"}}]\n",
        slow.url()
    );
    let routes = "  - name: d\n    match: {paths: [\"/dead\"]}\n    upstream: dead\n  - name: g\n    match: {paths: [\"/garbage\"]}\n    upstream: garbage\n  - name: s\n    match: {paths: [\"/delay\"]}\n    upstream: slow\n  - name: t\n    match: {paths: [\"/route-timeout\"]}\n    upstream: slow\n    timeout: 200ms\n    rewrite: /delay/2000\n";
    let gw = Gateway::start(&config(&ups, routes, ""));
    let refused = get(&gw.url("/dead")).await.problem(502, "bad-gateway");
    // The warning names the request by its id, as the client saw it
    // (the text, not a quoted debug form).
    let id = refused["request_id"].as_str().unwrap().to_string();
    let logged = format!("\"request_id\":\"{id}\"");
    for _ in 0..50 {
        if gw.logged(&logged) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.logged(&logged), "no warning with {logged}");
    get(&gw.url("/garbage")).await.problem(502, "bad-gateway");
    let start = std::time::Instant::now();
    get(&gw.url("/delay/2000")).await.problem(504, "gateway-timeout");
    assert!(start.elapsed() < Duration::from_millis(1500));
    get(&gw.url("/delay/10")).await;
    let start = std::time::Instant::now();
    get(&gw.url("/route-timeout"))
        .await
        .problem(504, "gateway-timeout");
    assert!(start.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_reused() {
    // An upstream that answers one keep-alive request per connection, then closes it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    let gw = Gateway::start(&config(
        &format!("  - name: a\n    targets: [{{url: \"http://{addr}\"}}]\n"),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n",
        "",
    ));
    for _ in 0..3 {
        let r = get(&gw.url("/x")).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn trailers_and_te_pass_through_to_http2_upstreams() {
    let up = Upstream::start("grpc").await;
    let gw = Gateway::start(&config(
        &format!(
            "  - name: g\n    protocol: grpc\n    targets: [{{url: \"{}\"}}]\n",
            up.url()
        ),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: g\n",
        "",
    ));
    let resp = client_h2()
        .request(
            req("POST", &gw.url("/trailers"))
                .header("te", "trailers")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-saw-te"], "trailers");
    use http_body_util::BodyExt;
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().expect("trailers")["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "ok");
}

#[tokio::test]
async fn several_listeners_serve_the_same_routes() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        "version: 1\nserver:\n  listeners:\n    - {{name: one, address: \"127.0.0.1:0\"}}\n    - {{name: two, address: \"127.0.0.1:0\"}}\n{}",
        format_args!(
            "upstreams:\n{}routes:\n  - name: r\n    match: {{paths: [\"/\"]}}\n    upstream: a\n",
            upstream("a", &up)
        )
    ));
    assert_eq!(gw.addrs.len(), 2);
    for addr in &gw.addrs {
        let r = get(&format!("http://{addr}/x")).await;
        assert_eq!(r.status, 200);
        let r2 = send(
            &client_h2(),
            req("GET", &format!("http://{addr}/y"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(r2.status, 200);
    }
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn bodiless_answers_release_the_upstream_connection() {
    let (gw, up) = one_route("", "").await;
    let c = client_h1();
    for _ in 0..5 {
        let head = send(&c, req("HEAD", &gw.url("/h")).body(Full::default()).unwrap()).await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        let no_content = send(
            &c,
            req("GET", &gw.url("/status/204")).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(no_content.status, 204);
    }
    assert_eq!(up.count(), 10);
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "HEAD and 204 answers must give their connection back to the pool"
    );
}

#[tokio::test]
async fn expect_100_continue_uploads_are_forwarded() {
    let (gw, up) = one_route("", "").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").await.unwrap();
    let mut got = String::new();
    while !got.contains("\"body_len\":5") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("200 OK"), "{got}");
    assert_eq!(up.last().body_len, 5);
}

#[tokio::test]
async fn an_upstream_that_stops_reading_hits_the_write_timeout() {
    // Accepts, then never reads: the upload fills the socket buffers and stalls.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
    });
    let gw = Gateway::start(&config(
        &format!(
            "  - name: a\n    timeouts: {{write: 300ms, read: 20s}}\n    targets: [{{url: \"http://{addr}\"}}]\n"
        ),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n    max_request_body_bytes: 100MiB\n",
        "",
    ));
    let start = std::time::Instant::now();
    let text = upload_until(gw.addr(), "/up", 64, "\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(8), "{:?}", start.elapsed());
}
