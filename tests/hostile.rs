//! Hostile input (SPEC section 8): every malformed request gets a 4xx or a
//! closed connection, and nothing of it reaches the upstream.

mod support;

use std::time::Duration;

use support::*;

async fn setup() -> (Gateway, Upstream) {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(
        &upstream("a", &up),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n",
        "",
    ));
    (gw, up)
}

/// Sends `request`, expects `status` (and problem+json when `problem`) or a
/// closed connection when `status` is 0; the upstream must see nothing.
async fn refused(gw: &Gateway, up: &Upstream, request: &[u8], status: u16) {
    let before = up.count();
    let (resp, closed) = raw(gw.addr(), request, Duration::from_secs(3)).await;
    if status == 0 {
        assert!(resp.is_empty() || resp.starts_with("HTTP/1.1 4"), "{resp}");
    } else {
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status}")),
            "wanted {status} for {:?}, got {resp:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert!(
        closed,
        "connection left open after refusing {:?}",
        String::from_utf8_lossy(request)
    );
    assert_eq!(
        up.count(),
        before,
        "the upstream saw a refused request: {:?}",
        String::from_utf8_lossy(request)
    );
}

#[tokio::test]
async fn request_smuggling_shapes_are_refused() {
    let (gw, up) = setup().await;
    // CL + TE: hyper alone would take TE; we refuse and close.
    let (resp, closed) = raw(
        gw.addr(),
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(
        resp.contains("application/problem+json") && resp.contains("urn:portcullis:error:bad-request"),
        "{resp}"
    );
    assert!(
        !resp.contains("smuggled") && resp.matches("HTTP/1.1").count() == 1,
        "a second request was read: {resp}"
    );
    assert!(closed);
    assert_eq!(up.count(), 0);

    refused(
        &gw,
        &up,
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    )
    .await;
    refused(
        &gw,
        &up,
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        400,
    )
    .await;
    refused(
        &gw,
        &up,
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello",
        400,
    )
    .await;
    refused(
        &gw,
        &up,
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nhello",
        400,
    )
    .await;
    refused(
        &gw,
        &up,
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    )
    .await;
    refused(&gw, &up, b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", 400).await;
    // `chunked` last but not alone: another coding would be lost on the
    // way up; `chunked` twice is forbidden (RFC 9112 §6.1).
    for te in [
        "gzip, chunked",
        "chunked, chunked",
        "chunked\r\nTransfer-Encoding: chunked",
    ] {
        let head =
            format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        refused(&gw, &up, head.as_bytes(), 400).await;
    }
    refused(
        &gw,
        &up,
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        0,
    )
    .await;
}

#[tokio::test]
async fn malformed_header_syntax_is_refused() {
    let (gw, up) = setup().await;
    // obs-fold
    refused(
        &gw,
        &up,
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
        400,
    )
    .await;
    // whitespace before the colon
    refused(&gw, &up, b"GET /a HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n", 400).await;
    // NUL in a value
    refused(
        &gw,
        &up,
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        400,
    )
    .await;
    // bare CR in a value
    refused(&gw, &up, b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400).await;
    // empty header name
    refused(&gw, &up, b"GET /a HTTP/1.1\r\nHost: x\r\n: value\r\n\r\n", 400).await;
    // malformed request line
    refused(&gw, &up, b"GET /a HTTP/9.9 extra\r\nHost: x\r\n\r\n", 0).await;
    refused(
        &gw,
        &up,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        0,
    )
    .await;
    // HTTP/1.1 needs exactly one valid Host
    refused(&gw, &up, b"GET /a HTTP/1.1\r\n\r\n", 400).await;
    refused(&gw, &up, b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400).await;
    refused(&gw, &up, b"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n", 400).await;
    // a fragment in the request target (HAProxy CVE-2023-45539)
    refused(&gw, &up, b"GET /admin#.png HTTP/1.1\r\nHost: x\r\n\r\n", 400).await;
    refused(&gw, &up, b"GET /a?b#c HTTP/1.1\r\nHost: x\r\n\r\n", 400).await;
}

#[tokio::test]
async fn unsafe_paths_get_400_invalid_path() {
    let (gw, up) = setup().await;
    for path in [
        "/a%2Fb",
        "/a%2fb",
        "/a%5Cb",
        "/a%00b",
        "/../etc/passwd",
        "/a/%2e%2e/%2e%2e/b",
        "/a%zz",
    ] {
        let r = get(&gw.url(path)).await;
        let v = r.problem(400, "invalid-path");
        assert!(v["detail"].as_str().unwrap().contains("path"), "{v}");
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_body_malformed_mid_stream_never_reaches_the_upstream_whole() {
    let (gw, up) = setup().await;
    // Valid chunk, then a broken chunk size: the upstream request is aborted.
    let (resp, closed) = raw(
        gw.addr(),
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\nworld\r\n0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(closed, "{resp}");
    assert!(
        up.requests.lock().unwrap().iter().all(|s| s.body_len != 10),
        "the upstream saw the whole body"
    );
}

/// Hundreds of random and mutated requests: each gets an answer or a closed
/// connection, the gateway stays up, and a normal request still works.
#[tokio::test]
async fn random_and_mutated_requests_never_take_the_gateway_down() {
    let (gw, up) = setup().await;
    let valid: &[&[u8]] = &[
        b"GET /a?x=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    ];
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for i in 0..400 {
        let mut b = valid[i % valid.len()].to_vec();
        match i % 4 {
            // random bytes
            0 => b = (0..rng.usize(1..300)).map(|_| rng.u8(..)).collect(),
            // flip bytes
            1 => {
                for _ in 0..rng.usize(1..6) {
                    let at = rng.usize(..b.len());
                    b[at] = rng.u8(..);
                }
            }
            // insert interesting bytes
            2 => {
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..=b.len());
                    let piece: &[u8] = [
                        &b"\r\n"[..],
                        b"\0",
                        b" ",
                        b":",
                        b"\n",
                        b"%2F",
                        b"..",
                        b"\r\n\r\n",
                        b"chunked",
                        b"99999999999999999999",
                    ][rng.usize(..10)];
                    b.splice(at..at, piece.iter().copied());
                }
            }
            // truncate
            _ => b.truncate(rng.usize(..b.len())),
        }
        inputs.push(b);
    }
    for batch in inputs.chunks(50) {
        let mut tasks = Vec::new();
        for input in batch {
            let input = input.clone();
            let addr = gw.addr();
            tasks.push(tokio::spawn(async move {
                raw(addr, &input, Duration::from_millis(500)).await
            }));
        }
        for t in tasks {
            let (resp, _) = t.await.unwrap();
            // Whatever came back is an HTTP answer, not garbage or a panic message.
            assert!(
                resp.is_empty() || resp.starts_with("HTTP/") || resp.as_bytes()[0] == 0,
                "{resp:?}"
            );
        }
    }
    let r = get(&gw.url("/still-alive")).await;
    assert_eq!(r.status, 200);
    assert!(up.requests.lock().unwrap().iter().all(|s| !s.uri.contains("%2F")));
    let logs = gw.logs.lock().unwrap().join("\n");
    assert!(!logs.contains("panicked"), "{logs}");
}

/// One HTTP/2 frame: 9-byte header, then the payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// CVE-2023-44487: a client opening and resetting streams as fast as it can
/// gets GOAWAY and a closed connection, and nothing reaches the upstream
/// from the flood.
#[tokio::test]
async fn http2_rapid_reset_gets_goaway() {
    let (gw, up) = setup().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    // HPACK, static table: :method GET, :scheme http, :path /delay/1000, :authority x.
    let mut block = vec![0x82, 0x86, 0x44, 11];
    block.extend_from_slice(b"/delay/1000");
    block.extend_from_slice(&[0x41, 1, b'x']);
    for i in 0..2000u32 {
        let stream = 1 + 2 * i;
        out.extend(h2_frame(0x1, 0x5, stream, &block)); // HEADERS, END_STREAM | END_HEADERS
        out.extend(h2_frame(0x3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM, CANCEL
    }
    let _ = s.write_all(&out).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    // Walk the frames the server sent, looking for GOAWAY (type 7).
    let (mut at, mut goaway) = (0, false);
    while at + 9 <= got.len() {
        let len = (usize::from(got[at]) << 16) | (usize::from(got[at + 1]) << 8) | usize::from(got[at + 2]);
        goaway |= got[at + 3] == 0x7;
        at += 9 + len;
    }
    assert!(goaway, "no GOAWAY in {} bytes", got.len());
    assert!(closed, "the connection stayed open");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        up.count() < 100,
        "{} flood requests reached the upstream",
        up.count()
    );
    assert_eq!(get(&gw.url("/after")).await.status, 200);
}

/// CVE-2024-27316 family: a header block that never ends (CONTINUATION
/// after CONTINUATION) is cut off at the header-list limit, not buffered forever.
#[tokio::test]
async fn http2_continuation_flood_is_cut_off() {
    let (gw, up) = setup().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    out.extend(h2_frame(0x1, 0x1, 1, &[0x82, 0x86, 0x84, 0x41, 1, b'x'])); // HEADERS without END_HEADERS
    // Literal header fields, never indexed, 1 KiB values: valid HPACK, endless.
    let mut field = vec![0x10, 5];
    field.extend_from_slice(b"x-pad");
    field.extend_from_slice(&[0x7f, 0x81, 0x07]); // value length 127 + 1 + 7*128 = 1024
    field.extend(std::iter::repeat_n(b'a', 1024));
    let writer = tokio::spawn(async move {
        let _ = s.write_all(&out).await;
        for _ in 0..2000 {
            if s.write_all(&h2_frame(0x9, 0, 1, &field)).await.is_err() {
                return s;
            }
        }
        s
    });
    let mut s = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("writer stuck")
        .unwrap();
    let mut buf = [0u8; 16384];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => continue,
            Err(_) => break false,
        }
    };
    assert!(
        closed,
        "2 MiB of CONTINUATION frames did not close the connection"
    );
    assert_eq!(up.count(), 0);
    assert_eq!(get(&gw.url("/after")).await.status, 200);
}

#[tokio::test]
async fn a_pipelined_cl_te_request_is_refused_too() {
    let (gw, up) = setup().await;
    let (resp, closed) = raw(
        gw.addr(),
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    let statuses: Vec<&str> = resp
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &resp[i..i + 12])
        .collect();
    assert_eq!(statuses, ["HTTP/1.1 200", "HTTP/1.1 400"], "{resp}");
    assert!(closed);
    let seen: Vec<String> = up
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert_eq!(seen, ["/first"]);
}
