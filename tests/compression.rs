//! `compression` (SPEC sections 3 and 8) through the real binary: gzip and
//! brotli chosen by `Accept-Encoding`, answers that must stay as they are
//! left alone, and a stream compressed as it flows.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn text() -> String {
    "{\"item\": \"portcullis\", \"n\": 12345}\n".repeat(400)
}

/// Answers by path: `/json` (compressible), `/small`, `/png`, `/gzipped`
/// (already encoded), `/partial` (206), `/no-transform`.
async fn backend() -> Service {
    Service::start(|parts, _| {
        let (ct, body, status, extra): (&str, Bytes, u16, Option<(&str, &str)>) = match parts.uri.path() {
            "/json" => ("application/json", text().into(), 200, Some(("etag", "\"v1\""))),
            "/small" => ("application/json", Bytes::from_static(b"{\"a\":1}"), 200, None),
            "/png" => ("image/png", vec![7u8; 4096].into(), 200, None),
            "/gzipped" => (
                "text/plain",
                gzip(text().as_bytes()).into(),
                200,
                Some(("content-encoding", "gzip")),
            ),
            "/partial" => (
                "text/plain",
                text().into(),
                206,
                Some(("content-range", "bytes 0-99/100000")),
            ),
            "/no-transform" => (
                "text/plain",
                text().into(),
                200,
                Some(("cache-control", "no-transform")),
            ),
            _ => ("text/plain", Bytes::new(), 404, None),
        };
        let mut r = http::Response::new(Full::new(body));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r.headers_mut().insert("content-type", ct.parse().unwrap());
        if let Some((k, v)) = extra {
            r.headers_mut().insert(k, v.parse().unwrap());
        }
        r
    })
    .await
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn decode(encoding: &str, data: &[u8]) -> String {
    let mut out = String::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(data).read_to_string(&mut out),
        "br" => brotli::Decompressor::new(data, 4096).read_to_string(&mut out),
        other => panic!("unexpected encoding {other}"),
    }
    .unwrap();
    out
}

async fn fetch(gw: &Gateway, path: &str, accept: Option<&str>) -> Resp {
    let mut b = req("GET", &gw.url(path));
    if let Some(a) = accept {
        b = b.header("accept-encoding", a);
    }
    send(&client_h1(), b.body(Full::default()).unwrap()).await
}

fn gateway(up: &Service, plugin: &str) -> Gateway {
    Gateway::start(&config(
        &format!("  - name: u\n    targets: [{{url: \"{}\"}}]\n", up.url("")),
        "  - name: all\n    match: {paths: [/]}\n    upstream: u\n",
        &format!("plugins:\n  compression: {plugin}\n"),
    ))
}

#[tokio::test]
async fn answers_are_compressed_by_accept_encoding() {
    let up = backend().await;
    let gw = gateway(&up, "{}");

    for (accept, want) in [
        ("gzip, deflate, br", "br"),
        ("gzip", "gzip"),
        ("br;q=0.5, gzip;q=0.9", "gzip"),
        ("*", "br"),
    ] {
        let r = fetch(&gw, "/json", Some(accept)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), want, "accept {accept}");
        assert_eq!(r.header("vary"), "Accept-Encoding");
        assert!(
            r.headers
                .get("content-length")
                .is_none_or(|l| l.to_str().unwrap() == r.body.len().to_string())
        );
        assert!(r.body.len() < text().len() / 5, "{want}: {} bytes", r.body.len());
        assert_eq!(decode(want, &r.body), text());
        // The encoded bytes differ: the validator is weakened.
        assert_eq!(r.header("etag"), "W/\"v1\"");
    }

    // No Accept-Encoding, or nothing acceptable: identity, still with Vary
    // so a shared cache does not serve it to a client that accepts more.
    for accept in [None, Some("identity"), Some("gzip;q=0, br;q=0")] {
        let r = fetch(&gw, "/json", accept).await;
        assert!(r.headers.get("content-encoding").is_none(), "{accept:?}");
        assert_eq!(r.header("vary"), "Accept-Encoding");
        assert_eq!(r.header("etag"), "\"v1\"");
        assert_eq!(r.body, text());
    }
}

#[tokio::test]
async fn answers_that_must_stay_as_they_are_are_left_alone() {
    let up = backend().await;
    let gw = gateway(&up, "{algorithms: [gzip], min_bytes: 1KiB}");

    // Smaller than min_bytes, not a compressible type, 206, no-transform.
    for path in ["/small", "/png", "/partial", "/no-transform"] {
        let r = fetch(&gw, path, Some("gzip, br")).await;
        assert!(r.headers.get("content-encoding").is_none(), "{path}");
        assert!(r.headers.get("vary").is_none(), "{path}");
        assert_eq!(r.header("content-length"), r.body.len().to_string(), "{path}");
    }
    // Already encoded: passed through once, never encoded twice.
    let r = fetch(&gw, "/gzipped", Some("gzip, br")).await;
    assert_eq!(r.header("content-encoding"), "gzip");
    assert_eq!(decode("gzip", &r.body), text());
    // brotli is not enabled on this gateway.
    let r = fetch(&gw, "/json", Some("br")).await;
    assert!(r.headers.get("content-encoding").is_none());
    let r = fetch(&gw, "/json", Some("br, gzip")).await;
    assert_eq!(r.header("content-encoding"), "gzip");
}

/// An upstream that sends one event, then waits for `go` before the second
/// and the end: a gateway that buffered the stream to compress it would
/// never let the client see the first event.
#[tokio::test]
async fn a_stream_is_compressed_as_it_flows() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        let first = "data: one\n\n".repeat(200);
        s.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n",
                first.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        go_rx.await.unwrap();
        let second = "data: two\n\n";
        s.write_all(format!("{:x}\r\n{second}\r\n0\r\n\r\n", second.len()).as_bytes())
            .await
            .unwrap();
        let _ = s.read(&mut buf).await;
    });
    let gw = Gateway::start(&config(
        &format!("  - name: u\n    targets: [{{url: \"http://{addr}\"}}]\n"),
        "  - name: events\n    match: {paths: [/events]}\n    upstream: u\n    plugins:\n      compression: {algorithms: [gzip]}\n",
        "",
    ));

    let resp = client_h1()
        .request(
            req("GET", &gw.url("/events"))
                .header("accept-encoding", "gzip")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let mut body = resp.into_body();
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let first_seen = async {
        loop {
            let frame = body.frame().await.unwrap().unwrap();
            if let Ok(data) = frame.into_data() {
                decoder.write_all(&data).unwrap();
                decoder.flush().unwrap();
                if String::from_utf8_lossy(decoder.get_ref()).contains("data: one") {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), first_seen)
        .await
        .expect("the first event never arrived while the stream was open");
    go.send(()).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    decoder.write_all(&rest).unwrap();
    let all = String::from_utf8(decoder.finish().unwrap()).unwrap();
    assert_eq!(all, "data: one\n\n".repeat(200) + "data: two\n\n");
}
