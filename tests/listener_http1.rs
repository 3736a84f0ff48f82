//! The HTTP/1.1 listener loop on the wire: pipelining, heads and bodies in
//! pieces, HTTP/1.0, response framing chosen per client, HEAD, trailers,
//! the hand-over to hyper (Expect), the Date field, and shutdown of idle
//! keep-alive connections. Raw sockets, so every byte is the gateway's.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn setup() -> (Gateway, Upstream) {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(
        &upstream("a", &up),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n",
        "",
    ));
    (gw, up)
}

fn statuses(resp: &str) -> Vec<&str> {
    resp.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &resp[i + 9..i + 12])
        .collect()
}

fn seen_uris(up: &Upstream) -> Vec<String> {
    up.requests
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.clone())
        .collect()
}

/// The head of the first response in `resp` (without the blank line).
fn first_head(resp: &str) -> &str {
    &resp[..resp.find("\r\n\r\n").expect("a complete head")]
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (gw, up) = setup().await;
    let (resp, closed) = raw(
        gw.addr(),
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(statuses(&resp), ["200", "200", "200"], "{resp}");
    assert!(closed, "the last request asked to close");
    assert_eq!(seen_uris(&up), ["/one", "/two", "/three"]);
    let bodies: Vec<usize> = up.requests.lock().unwrap().iter().map(|s| s.body_len).collect();
    assert_eq!(bodies, [0, 5, 0], "the body of /two, and only it");
    let last = &resp[resp.rfind("HTTP/1.1 ").unwrap()..];
    assert!(last.contains("connection: close"), "{last}");
}

#[tokio::test]
async fn a_head_in_pieces_and_a_chunked_body_with_trailers_arrive_whole() {
    let (gw, up) = setup().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    let head = b"POST /pieces HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n";
    for piece in head.chunks(7).chain(body.chunks(5)) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(statuses(&out), ["200"], "{out}");
    let seen = up.last();
    assert_eq!(seen.uri, "/pieces");
    assert_eq!(seen.body_len, 11, "hello world, without the chunk framing");
}

#[tokio::test]
async fn http_1_0_clients_keep_alive_only_when_they_ask() {
    let (gw, up) = setup().await;
    // Without keep-alive: one answer, then the connection closes.
    let (resp, closed) = raw(
        gw.addr(),
        b"GET /a HTTP/1.0\r\nHost: x\r\n\r\nGET /never HTTP/1.0\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(statuses(&resp), ["200"], "{resp}");
    assert!(first_head(&resp).contains("connection: close"), "{resp}");
    assert!(closed);
    // With it: the answer says so and the next request is served.
    let (resp, closed) = raw(
        gw.addr(),
        b"GET /b HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\nGET /c HTTP/1.0\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(statuses(&resp), ["200", "200"], "{resp}");
    assert!(first_head(&resp).contains("connection: keep-alive"), "{resp}");
    assert!(closed);
    assert_eq!(seen_uris(&up), ["/a", "/b", "/c"]);
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_for_http_1_1_and_ends_with_the_connection_for_1_0() {
    let (gw, _up) = setup().await;
    // The upstream streams /bytes/N without a length.
    let (resp, _) = raw(
        gw.addr(),
        b"GET /bytes/3000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let head = first_head(&resp);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let body = &resp[head.len() + 4..];
    let mut decoded = String::new();
    let mut rest = body;
    loop {
        let line_end = rest.find("\r\n").expect("a chunk-size line");
        let size = usize::from_str_radix(&rest[..line_end], 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        decoded.push_str(&rest[..size]);
        rest = &rest[size + 2..];
    }
    assert_eq!(decoded, "x".repeat(3000));

    let (resp, closed) = raw(
        gw.addr(),
        b"GET /bytes/3000 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let head = first_head(&resp);
    assert!(
        !head.contains("transfer-encoding"),
        "no chunked to HTTP/1.0: {head}"
    );
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(&resp[head.len() + 4..], "x".repeat(3000));
    assert!(closed, "the end of the body is the end of the connection");
}

#[tokio::test]
async fn a_head_answer_has_a_length_and_no_body() {
    let (gw, _up) = setup().await;
    let (resp, closed) = raw(
        gw.addr(),
        b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\nGET /status/204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let head = first_head(&resp);
    assert!(head.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(head.contains("content-length: "), "{head}");
    // The next answer follows the head at once: no body bytes in between.
    assert!(resp[head.len() + 4..].starts_with("HTTP/1.1 204"), "{resp}");
    assert!(closed);
}

#[tokio::test]
async fn trailers_reach_http_1_1_clients_that_take_them() {
    // Over HTTP/2 the upstream sends its trailers whatever the request said.
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(
        &format!(
            "  - name: a\n    protocol: http2\n    targets: [{{url: \"{}\"}}]\n",
            up.url()
        ),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n",
        "",
    ));
    let (resp, _) = raw(
        gw.addr(),
        b"GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.contains("transfer-encoding: chunked"), "{resp}");
    assert!(resp.ends_with("0\r\ngrpc-status: 0\r\n\r\n"), "{resp:?}");

    let (resp, _) = raw(
        gw.addr(),
        b"GET /trailers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(!resp.contains("grpc-status"), "trailers unasked: {resp:?}");
}

#[tokio::test]
async fn an_expect_request_is_served_after_the_hand_over_to_hyper() {
    let (gw, up) = setup().await;
    let (resp, closed) = raw(
        gw.addr(),
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
POST /second HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello\
GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let finals: Vec<&str> = statuses(&resp).into_iter().filter(|s| *s != "100").collect();
    assert_eq!(finals, ["200", "200", "200"], "{resp}");
    assert!(closed);
    assert_eq!(seen_uris(&up), ["/first", "/second", "/third"]);
    assert_eq!(up.requests.lock().unwrap()[1].body_len, 5);
}

#[tokio::test]
async fn answers_carry_a_date() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(
        &upstream("a", &up),
        "  - name: r\n    match: {paths: [\"/a\"]}\n    upstream: a\n",
        "",
    ));
    // A gateway-made answer (no route).
    let (resp, _) = raw(
        gw.addr(),
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    let date = first_head(&resp)
        .lines()
        .find_map(|l| l.strip_prefix("date: "))
        .unwrap_or_else(|| panic!("no date: {resp}"));
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let up = Upstream::start("a").await;
    let mut gw = Gateway::start(&config(
        &upstream("a", &up),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n",
        "  shutdown_timeout: 20s\n",
    ));
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The connection now sits idle, kept alive.
    let start = Instant::now();
    let status = tokio::task::spawn_blocking(move || gw.terminate()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the drain waited for an idle connection: {:?}",
        start.elapsed()
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
}

#[tokio::test]
async fn an_unread_body_already_received_does_not_cost_the_connection() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(
        &upstream("a", &up),
        "  - name: ping\n    match: {paths: [\"= /ping\"]}\n    respond: {body: pong}\n  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n",
        "",
    ));
    // The fixed answer never reads the upload; the next request follows on
    // the same connection, read from after the skipped body.
    let (resp, closed) = raw(
        gw.addr(),
        b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world\
POST /ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(statuses(&resp), ["200", "200", "200"], "{resp}");
    assert_eq!(resp.matches("pong").count(), 2, "{resp}");
    assert!(closed);
    assert_eq!(seen_uris(&up), ["/after"]);
}

#[tokio::test]
async fn a_large_last_frame_is_written_whole_and_the_connection_goes_on() {
    // A fixed answer larger than what is copied next to the head: its one
    // frame goes out from its own buffer, after the exchange is recorded.
    let big = "x".repeat(100_000);
    let gw = Gateway::start(&format!(
        "version: 1\nserver:\n  listeners: [{{name: public, address: \"127.0.0.1:0\"}}]\nroutes:\n  - name: big\n    match: {{paths: [\"= /big\"]}}\n    respond: {{body: \"{big}\"}}\n"
    ));
    let (resp, closed) = raw(
        gw.addr(),
        b"GET /big HTTP/1.1\r\nHost: x\r\n\r\nGET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(statuses(&resp), ["200", "200"]);
    assert!(closed);
    let first = first_head(&resp);
    assert!(first.contains("content-length: 100000"), "{first}");
    let body = &resp[first.len() + 4..first.len() + 4 + 100_000];
    assert_eq!(body, big);
    assert!(resp[first.len() + 4 + 100_000..].starts_with("HTTP/1.1 200"));
    assert!(resp.ends_with(&big), "the second answer ends with the whole body");
}
