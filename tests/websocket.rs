//! WebSocket proxying (SPEC section 4) through the real binary, with a real
//! WebSocket client and server (tokio-tungstenite): frames both ways, auth
//! and rate limits on the upgrade, oversized frames closed with 1009, the
//! idle timeout, and clean closes from either side.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message};

type Client = WebSocketStream<TcpStream>;

/// What the echo server saw: each handshake's headers and each close code.
#[derive(Default)]
struct Seen {
    handshakes: Vec<http::HeaderMap>,
    closes: Vec<u16>,
}

/// Echoes every message; `bye` makes it close with 1000 itself.
async fn echo_server() -> (std::net::SocketAddr, Arc<Mutex<Seen>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let record = record.clone();
            tokio::spawn(async move {
                let headers_seen = record.clone();
                // The callback's signature (a large error type) is tungstenite's.
                #[allow(clippy::result_large_err)]
                let callback = move |req: &http::Request<()>, resp| {
                    headers_seen
                        .lock()
                        .unwrap()
                        .handshakes
                        .push(req.headers().clone());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if t.as_str() == "bye" => {
                            let _ = ws
                                .close(Some(CloseFrame {
                                    code: CloseCode::Normal,
                                    reason: "bye".into(),
                                }))
                                .await;
                        }
                        // A failed send ends the loop at the next read.
                        Message::Text(_) | Message::Binary(_) => {
                            let _ = ws.send(msg).await;
                        }
                        Message::Close(frame) => {
                            record
                                .lock()
                                .unwrap()
                                .closes
                                .push(frame.map_or(1005, |f| u16::from(f.code)));
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn connect(gw: &Gateway, path: &str, key: Option<&str>) -> Result<Client, Error> {
    let mut request = format!("ws://{}{path}", gw.addr()).into_client_request().unwrap();
    if let Some(k) = key {
        request.headers_mut().insert("x-api-key", k.parse().unwrap());
    }
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    tokio_tungstenite::client_async(request, tcp)
        .await
        .map(|(ws, _)| ws)
}

/// The next close frame's code from the gateway (or the peer through it).
async fn close_code(ws: &mut Client) -> u16 {
    let wait = async {
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Close(frame)) = msg {
                return frame.map_or(1005, |f| u16::from(f.code));
            }
        }
        0
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("no close frame")
}

fn gateway(upstream: std::net::SocketAddr, extra_server: &str) -> Gateway {
    Gateway::start(&format!(
        "version: 1\nserver:\n  listeners: [{{name: public, address: \"127.0.0.1:0\"}}]\n{extra_server}\
         upstreams:\n  - name: ws\n    targets: [{{url: \"http://{upstream}\"}}]\n\
         routes:\n  - name: chat\n    match: {{paths: [/chat]}}\n    upstream: ws\n    max_request_body_bytes: 1KiB\n    plugins:\n      api_key: {{}}\n      rate_limit: {{rate: 1/m, burst: 3, key: [consumer]}}\n\
         \x20 - name: open\n    match: {{paths: [/open]}}\n    upstream: ws\n\
         consumers:\n  - name: ann\n    api_keys: [{{key: ann-key}}]\n"
    ))
}

#[tokio::test]
async fn frames_pass_both_ways_after_an_authenticated_upgrade() {
    let (addr, seen) = echo_server().await;
    let gw = gateway(addr, "");

    let mut ws = connect(&gw, "/chat", Some("ann-key")).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let blob = vec![7u8; 1000];
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));

    // The upstream saw the upgrade with the gateway's headers.
    {
        let s = seen.lock().unwrap();
        let h = &s.handshakes[0];
        assert_eq!(h["upgrade"], "websocket");
        assert!(h.contains_key("x-request-id"));
        assert!(h.contains_key("x-forwarded-for"));
        assert!(h.contains_key("sec-websocket-key"));
    }

    // A clean close from the client: the server's close comes back.
    ws.close(None).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1005);
    eventually("the server saw the close", || async {
        !seen.lock().unwrap().closes.is_empty()
    })
    .await;

    // A clean close from the server.
    let mut ws = connect(&gw, "/chat", Some("ann-key")).await.unwrap();
    ws.send(Message::text("bye")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1000);
}

#[tokio::test]
async fn auth_and_rate_limits_apply_to_the_upgrade() {
    let (addr, seen) = echo_server().await;
    let gw = gateway(addr, "");

    match connect(&gw, "/chat", None).await {
        Err(Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    match connect(&gw, "/chat", Some("wrong")).await {
        Err(Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // Burst of 3 upgrades, then 429.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(&gw, "/chat", Some("ann-key")).await.unwrap());
    }
    match connect(&gw, "/chat", Some("ann-key")).await {
        Err(Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    assert_eq!(seen.lock().unwrap().handshakes.len(), 3);
}

#[tokio::test]
async fn an_oversized_frame_is_closed_with_1009() {
    let (addr, seen) = echo_server().await;
    let gw = gateway(addr, "");
    let mut ws = connect(&gw, "/chat", Some("ann-key")).await.unwrap();
    ws.send(Message::text("small")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("small"));
    // Over the route's 1 KiB.
    ws.send(Message::binary(vec![1u8; 4096])).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1009);
    // The upstream never got the frame; it was told its peer went away.
    eventually("the upstream saw 1001", || async {
        seen.lock().unwrap().closes == [1001]
    })
    .await;
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let (addr, _) = echo_server().await;
    let gw = gateway(addr, "  limits: {idle_timeout: 300ms}\n");
    let mut ws = connect(&gw, "/open", None).await.unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    assert_eq!(close_code(&mut ws).await, 1001);
}

#[tokio::test]
async fn websocket_over_http2_is_an_extended_connect() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::protocol::Role;

    let (addr, seen) = echo_server().await;
    let gw = gateway(addr, "");
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let connect = |key: Option<&str>| {
        let mut b = http::Request::builder()
            .method("CONNECT")
            .uri(format!("http://{}/chat", gw.addr()))
            .header("sec-websocket-version", "13");
        if let Some(k) = key {
            b = b.header("x-api-key", k);
        }
        let mut req = b.body(Empty::<bytes::Bytes>::new()).unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        req
    };
    // The server's SETTINGS (extended CONNECT allowed) arrive first.
    sender.ready().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Auth applies to it as to an HTTP/1.1 upgrade.
    let refused = sender.send_request(connect(None)).await.unwrap();
    assert_eq!(refused.status(), 401);

    let resp = sender.send_request(connect(Some("ann-key"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    let stream = hyper::upgrade::on(resp).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(stream), Role::Client, None).await;
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over h2"));
    // The upstream saw an HTTP/1.1 upgrade with a key of the gateway's.
    let h = seen.lock().unwrap().handshakes[0].clone();
    assert_eq!(h["upgrade"], "websocket");
    assert!(h.contains_key("sec-websocket-key"));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn a_tunnel_keeps_its_place_against_max_connections() {
    let (addr, _) = echo_server().await;
    let gw = gateway(addr, "  limits: {max_connections: 1}\n");
    let mut ws = connect(&gw, "/open", None).await.unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    // Well after the upgrade, when the connection's HTTP side has surely
    // ended (without the tunnel's hold, its place was free by then): the
    // upgraded connection still counts, and another is turned away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (resp, closed) = raw(
        gw.addr(),
        b"GET /open HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        resp.is_empty() && closed,
        "a connection over the cap was served: {resp:?}"
    );
    // Once the tunnel closes, its place is free again.
    ws.close(None).await.unwrap();
    close_code(&mut ws).await;
    eventually("a new connection is served", || async {
        let (resp, _) = raw(
            gw.addr(),
            b"GET /open HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        !resp.is_empty()
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_tunnels_with_1001_and_waits_for_them() {
    let (addr, seen) = echo_server().await;
    let mut gw = gateway(addr, "  shutdown_timeout: 10s\n");
    let mut ws = connect(&gw, "/open", None).await.unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    let started = std::time::Instant::now();
    gw.signal("TERM");
    // Both sides hear that the gateway is going away...
    assert_eq!(close_code(&mut ws).await, 1001);
    eventually("the upstream saw 1001", || async {
        seen.lock().unwrap().closes == [1001]
    })
    .await;
    // ...and the gateway exits cleanly once the tunnel is closed, well
    // before shutdown_timeout.
    let status = tokio::task::spawn_blocking(move || gw.wait_exit()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_upstream_switching_to_another_protocol_is_a_502() {
    // An upstream that answers the WebSocket upgrade with a 101 to h2c: the
    // client must not be told it has a WebSocket.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nPRI",
                )
                .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    let gw = gateway(addr, "");
    let (text, _) = raw(
        gw.addr(),
        b"GET /open HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(!text.contains("PRI"), "{text}");
    // A real WebSocket upstream still works through the same route.
    let (addr, _) = echo_server().await;
    let gw = gateway(addr, "");
    let mut ws = connect(&gw, "/open", None).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
}

#[tokio::test]
async fn a_side_that_stops_reading_does_not_hold_the_tunnel() {
    // The client sends and never reads: the echoes back up until the
    // gateway's writes to it wait. The tunnel closes after idle_timeout
    // instead of holding both connections for good.
    let (addr, _) = echo_server().await;
    let gw = gateway(addr, "  limits: {idle_timeout: 1s}\n");
    let mut ws = connect(&gw, "/open", None).await.unwrap();
    let blob = Message::binary(vec![1u8; 64 << 10]);
    let mut stalled = false;
    for _ in 0..2000 {
        match tokio::time::timeout(Duration::from_millis(500), ws.send(blob.clone())).await {
            Ok(Ok(())) => {}
            // The send waits (everything between is full) or the tunnel is gone.
            Ok(Err(_)) | Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    assert!(stalled, "128 MiB went out without the echoes being read");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Now read: the echoes that were buffered, then the end.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(_))) => {}
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled tunnel was still open");
}
