//! `server.limits` and the route body limit, enforced on real connections.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::Full;
use support::*;

async fn setup(limits: &str) -> (Gateway, Upstream) {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(
        &upstream("a", &up),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n  - name: small\n    match: {paths: [\"/small\"]}\n    upstream: a\n    max_request_body_bytes: 100\n",
        &format!("  limits:\n{limits}"),
    ));
    (gw, up)
}

#[tokio::test]
async fn body_limit_exact_passes_one_more_is_413() {
    let (gw, up) = setup("    max_request_body_bytes: 1KiB\n").await;
    let c = client_h1();
    let ok = post_bytes(&c, &gw.url("/x"), 1024).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["body_len"], 1024);
    let before = up.count();
    post_bytes(&c, &gw.url("/x"), 1025)
        .await
        .problem(413, "payload-too-large");
    assert_eq!(
        up.count(),
        before,
        "a body over the limit (Content-Length) must not be forwarded"
    );
    // The route lowers it.
    assert_eq!(post_bytes(&c, &gw.url("/small"), 100).await.status, 200);
    post_bytes(&c, &gw.url("/small"), 101)
        .await
        .problem(413, "payload-too-large");
    // Chunked (no Content-Length): cut off mid-stream, still 413.
    let mut chunked = b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"32\r\n");
        chunked.extend_from_slice(&[b'b'; 50]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (resp, _) = raw(gw.addr(), &chunked, Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(
        up.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.uri == "/small")
            .all(|s| s.body_len <= 100)
    );
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (gw, up) = setup("    max_request_header_bytes: 4KiB\n").await;
    let c = client_h1();
    let ok = send(
        &c,
        req("GET", &gw.url("/x"))
            .header("x-big", "a".repeat(3000))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(ok.status, 200);
    // Over HTTP/1.1 and HTTP/2 alike.
    for client in [c, client_h2()] {
        send(
            &client,
            req("GET", &gw.url("/x"))
                .header("x-big", "a".repeat(5000))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .problem(431, "headers-too-large");
    }
    // Far past the limit, the connection layer refuses before parsing.
    let big = format!(
        "GET /x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let (resp, closed) = raw(gw.addr(), big.as_bytes(), Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert!(closed);
    // More than 100 fields, however small, over both protocols alike.
    for client in [client_h1(), client_h2()] {
        let mut many = req("GET", &gw.url("/x"));
        for i in 0..120 {
            many = many.header(format!("x-f{i}"), "v");
        }
        let r = send(&client, many.body(Full::default()).unwrap()).await;
        r.problem(431, "headers-too-large");
        assert!(
            String::from_utf8_lossy(&r.body).contains("more than 100 header fields"),
            "{:?}",
            r.body
        );
    }
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn slow_headers_are_cut_off_but_idle_keepalive_is_kept() {
    let (gw, _up) = setup("    header_read_timeout: 500ms\n    idle_timeout: 2s\n").await;
    // Slowloris: a request head that never finishes.
    let start = std::time::Instant::now();
    let (resp, closed) = raw(
        gw.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed, "{resp}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(resp.starts_with("HTTP/1.1 408 Request Timeout"), "{resp}");
    assert!(resp.contains("urn:portcullis:error:request-timeout"), "{resp}");
    // Dated, as every 4xx (RFC 9110 §6.6.1).
    let date = resp
        .lines()
        .find_map(|l| l.strip_prefix("date: "))
        .unwrap_or_else(|| panic!("no date in {resp}"));
    assert!(httpdate::parse_http_date(date.trim()).is_ok(), "{date}");
    // A connection that never sends a byte gets the same answer.
    let (resp, closed) = raw(gw.addr(), b"", Duration::from_secs(5)).await;
    assert!(closed && resp.starts_with("HTTP/1.1 408"), "{resp}");

    // A keep-alive connection idle longer than header_read_timeout (but less
    // than idle_timeout) still serves its next request.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    s.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    s.write_all(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "idle keep-alive was cut early"
    );
    // ... and is closed once idle_timeout passes.
    let start = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "expected close");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn request_timeout_is_504() {
    let (gw, _up) = setup("    request_timeout: 300ms\n").await;
    let start = std::time::Instant::now();
    get(&gw.url("/delay/3000")).await.problem(504, "gateway-timeout");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn max_connections_closes_the_excess() {
    let (gw, _up) = setup("    max_connections: 2\n").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let b = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the third connection should be closed");
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        get(&gw.url("/x")).await.status,
        200,
        "capacity comes back when connections close"
    );
}

#[tokio::test]
async fn http2_concurrent_streams_are_capped() {
    let (gw, up) = setup("    http2_max_concurrent_streams: 4\n").await;
    let c = client_h2();
    // One request first, so the client has the server's SETTINGS before it opens many streams.
    assert_eq!(
        send(&c, req("GET", &gw.url("/warm")).body(Full::default()).unwrap())
            .await
            .status,
        200
    );
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = c.clone();
        let url = gw.url("/delay/150");
        tasks.push(tokio::spawn(async move {
            send(&c, req("GET", &url).body(Full::default()).unwrap())
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let max = up.max_concurrent.load(Ordering::SeqCst);
    assert!(
        max <= 4,
        "the upstream saw {max} concurrent requests from one h2 connection"
    );
    assert!(max >= 2);
}

#[tokio::test]
async fn idle_http2_connections_get_the_idle_timeout_not_the_header_timeout() {
    let (gw, _up) = setup("    header_read_timeout: 300ms\n    idle_timeout: 5s\n").await;
    // A client that PINGs while idle, as browsers and gRPC clients do.
    let c: TestClient = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(Duration::from_millis(100))
        .http2_keep_alive_while_idle(true)
        .build_http();
    assert_eq!(
        send(&c, req("GET", &gw.url("/one")).body(Full::default()).unwrap())
            .await
            .status,
        200
    );
    // Past header_read_timeout, within idle_timeout, with PINGs arriving meanwhile.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        send(&c, req("GET", &gw.url("/two")).body(Full::default()).unwrap())
            .await
            .status,
        200
    );
    let logs = gw.logs.lock().unwrap().join("\n");
    assert!(
        !logs.contains("request header read timeout"),
        "an idle h2 connection was cut as a slow request:\n{logs}"
    );
    assert_eq!(logs.matches("\"listening\"").count(), 1);
}

#[tokio::test]
async fn too_many_headers_are_refused() {
    let (gw, up) = setup("    max_request_header_bytes: 64KiB\n").await;
    let mut request = String::from("GET /x HTTP/1.1\r\nHost: a\r\n");
    for i in 0..150 {
        request.push_str(&format!("x-h{i}: v\r\n"));
    }
    request.push_str("\r\n");
    let (answer, closed) = raw(gw.addr(), request.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(closed);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_slow_body_is_cut_off_by_the_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, _up) = setup("    request_timeout: 1s\n").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // One byte every 200 ms: the whole body would take 200 s.
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let _ = s.write_all(b"a").await;
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the slow body was not cut off"
        );
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_closed_after_the_idle_timeout() {
    // A slow-read client would hold its upstream connection for as long as
    // it liked. One that reads slowly but steadily keeps its answer.
    let (gw, _up) = setup("    idle_timeout: 1s\n    header_read_timeout: 1s\n").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 16 << 20;
    let addr = gw.addr();
    let connect = |small_window: bool| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if small_window {
            socket.set_recv_buffer_size(4096).unwrap();
        }
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        s
    };
    let read_all = |mut s: tokio::net::TcpStream, pause: Duration| async move {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
            if total > SIZE {
                return total;
            }
            tokio::time::sleep(pause).await;
        }
    };

    let stalled = connect(true).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got = tokio::time::timeout(Duration::from_secs(10), read_all(stalled, Duration::ZERO))
        .await
        .expect("the stalled connection was never closed");
    assert!(
        got < SIZE,
        "the whole answer ({got} bytes) reached a client that stopped reading"
    );

    // Reading what has arrived every 100 ms: never a second without taking bytes.
    let steady = connect(false).await;
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        read_all(steady, Duration::from_millis(100)),
    )
    .await
    .unwrap();
    assert!(got > SIZE, "a steady reader was cut off after {got} bytes");
}
