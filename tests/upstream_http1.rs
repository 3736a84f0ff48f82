//! The gateway's own HTTP/1.1 client, against a hand-written upstream that
//! frames its answers in every way RFC 9112 allows (and some it refuses).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the upstream does for one request.
struct Answer {
    /// Written one after another, with a pause between them.
    pieces: Vec<Vec<u8>>,
    /// Read the request body before answering.
    read_body: bool,
    /// Close the connection after answering (after a short pause).
    close: bool,
}

fn answer(pieces: &[&[u8]]) -> Answer {
    Answer {
        pieces: pieces.iter().map(|p| p.to_vec()).collect(),
        read_body: true,
        close: false,
    }
}

/// A hand-written upstream: per request, reads the head (and the body it
/// announces), records it, and answers as `script` says for the path.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(script: fn(&str) -> Answer) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (count, log) = (accepted.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, script, log.clone()));
            }
        });
        Scripted { addr, accepted, seen }
    }

    fn config(&self, extra_route: &str) -> String {
        config(
            &format!("  - name: a\n    targets: [{{url: \"http://{}\"}}]\n", self.addr),
            &format!("  - name: r\n    match: {{paths: [\"/\"]}}\n    upstream: a\n{extra_route}"),
            "",
        )
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn last(&self) -> String {
        self.seen.lock().unwrap().last().cloned().unwrap_or_default()
    }
}

async fn serve(mut s: tokio::net::TcpStream, script: fn(&str) -> Answer, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = read_until(&mut s, &mut buf, b"\r\n\r\n", 0).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let todo = script(&path);
        let lower = head.to_ascii_lowercase();
        let mut end = head_end;
        if todo.read_body {
            if lower.contains("transfer-encoding: chunked") {
                match read_until(&mut s, &mut buf, b"0\r\n\r\n", head_end).await {
                    Some(e) => end = e,
                    None => return,
                }
            } else if let Some(n) = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok())
            {
                while buf.len() < head_end + n {
                    let mut more = [0u8; 65536];
                    match s.read(&mut more).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&more[..k]),
                    }
                }
                end = head_end + n;
            }
        }
        seen.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&buf[..end.min(buf.len())]).into_owned());
        buf.drain(..end.min(buf.len()));
        for (i, piece) in todo.pieces.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            if s.write_all(piece).await.is_err() {
                return;
            }
        }
        if todo.close {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
    }
}

/// Reads into `buf` until `needle` appears at or after `from`; returns the
/// end of the needle. `None`: the connection closed first.
async fn read_until(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    needle: &[u8],
    from: usize,
) -> Option<usize> {
    loop {
        if let Some(i) = buf[from.min(buf.len())..]
            .windows(needle.len())
            .position(|w| w == needle)
        {
            return Some(from + i + needle.len());
        }
        let mut more = [0u8; 65536];
        match s.read(&mut more).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&more[..n]),
        }
    }
}

fn script(path: &str) -> Answer {
    match path {
        "/chunked" => answer(&[
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-up: 1\r\n\r\n5;ext=1\r\nhel",
            b"lo\r\n6\r",
            b"\n world\r\n0\r\nx-sum: 11\r\n\r\n",
        ]),
        "/split-head" => answer(&[b"HTTP/1.1 200 OK\r\ncont", b"ent-length: 4\r\n", b"\r\nbo", b"dy"]),
        "/close-delimited" => Answer {
            close: true,
            ..answer(&[b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the end"])
        },
        "/early-hints" => answer(&[b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]),
        // A burst of interim answers in one write (13,000 used to overflow
        // the gateway's stack and abort it).
        "/many-interim" => Answer {
            pieces: vec![
                [
                    "HTTP/1.1 100 \r\n\r\n".repeat(13_000).as_bytes(),
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                ]
                .concat(),
            ],
            ..answer(&[])
        },
        "/huge-head" => answer(&[format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
            "a".repeat(70_000)
        )
        .as_bytes()]),
        "/no-content" => answer(&[b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\nx-up: 1\r\n\r\n"]),
        "/head" => answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"]),
        "/both" => answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]),
        "/gzip-chunked" => answer(&[b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"]),
        "/conflict" => answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"]),
        "/bad-chunk" => answer(&[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"]),
        "/short" => Answer {
            close: true,
            ..answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"])
        },
        "/too-early" => Answer {
            read_body: false,
            close: true,
            ..answer(&[b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\ncontent-length: 4\r\n\r\nnope"])
        },
        _ => answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]),
    }
}

#[tokio::test]
async fn chunked_answers_are_decoded_and_the_connection_reused() {
    let up = Scripted::start(script).await;
    let gw = Gateway::start(&up.config(""));
    let r = get(&gw.url("/chunked")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hello world"[..]));
    assert_eq!(r.header("x-up"), "1");
    let r = get(&gw.url("/split-head")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"body"[..]));
    let r = get(&gw.url("/early-hints")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    let r = get(&gw.url("/many-interim")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    // Each body was read to its end: all three went over one connection.
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn a_body_delimited_by_the_close_is_read_to_the_end() {
    let up = Scripted::start(script).await;
    let gw = Gateway::start(&up.config(""));
    let r = get(&gw.url("/close-delimited")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"until the end"[..]));
    // That connection is gone; the next request opens another.
    let r = get(&gw.url("/x")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn an_answer_to_head_has_no_body_and_keeps_the_connection() {
    let up = Scripted::start(script).await;
    let gw = Gateway::start(&up.config(""));
    let r = send(
        &client_h1(),
        req("HEAD", &gw.url("/head")).body(Default::default()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = get(&gw.url("/x")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn a_204_reaches_clients_without_content_length() {
    // RFC 9110 §8.6: a 204 never carries Content-Length, whatever the
    // upstream sent; an HTTP/2 client would otherwise get it.
    let up = Scripted::start(script).await;
    let gw = Gateway::start(&up.config(""));
    for client in [client_h1(), client_h2()] {
        let r = send(
            &client,
            req("GET", &gw.url("/no-content"))
                .body(Default::default())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 204);
        assert_eq!(r.header("x-up"), "1");
        assert!(!r.headers.contains_key("content-length"), "{:?}", r.headers);
        assert!(r.body.is_empty());
    }
    // The bodiless answer left the connection fit for the next request.
    let r = get(&gw.url("/x")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn ambiguous_or_broken_framing_never_reaches_the_client_whole() {
    let up = Scripted::start(script).await;
    let gw = Gateway::start(&up.config(""));
    // Response splitting: refused before any of it is relayed.
    get(&gw.url("/both")).await.problem(502, "bad-gateway");
    // A head past 64 KiB, even one that arrives in a single read.
    get(&gw.url("/huge-head")).await.problem(502, "bad-gateway");
    get(&gw.url("/conflict")).await.problem(502, "bad-gateway");
    // A transfer coding the gateway cannot undo: relayed without it, the
    // client would get gzip bytes it has no way to know are gzip.
    get(&gw.url("/gzip-chunked")).await.problem(502, "bad-gateway");
    // Broken after the head: the client's answer is cut off, never completed.
    for path in ["/bad-chunk", "/short"] {
        let (text, closed) = raw(
            gw.addr(),
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        // Closed without an answer, or with a head and less body than it announced.
        assert!(closed, "{path}: the client connection is closed");
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 200"),
            "{path}: {text}"
        );
        assert!(!text.contains("hello"), "{path}: {text}");
        if path == "/short"
            && let Some((head, body)) = text.split_once("\r\n\r\n")
        {
            assert!(head.contains("content-length: 10"), "{text}");
            assert!(body.len() < 10, "{text}");
        }
    }
}

#[tokio::test]
async fn uploads_keep_their_framing_and_an_early_answer_is_relayed() {
    let up = Scripted::start(script).await;
    let gw = Gateway::start(&up.config("    max_request_body_bytes: 64MiB\n"));
    // A chunked upload goes on chunked, chunk by chunk, with its end.
    let (text, _) = raw(
        gw.addr(),
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = up.last();
    assert!(seen.contains("transfer-encoding: chunked\r\n"), "{seen}");
    assert!(
        seen.ends_with("\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
        "{seen}"
    );
    // A sized upload keeps its length.
    let r = post_as(&gw.url("/up"), Some("text/plain"), "hello").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(
        seen.contains("content-length: 5\r\n") && seen.ends_with("\r\n\r\nhello"),
        "{seen}"
    );

    // The upstream answers 413 without reading a 32 MiB upload: the client gets that answer.
    let text = upload_until(gw.addr(), "/too-early", 32, "nope").await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

#[tokio::test]
async fn a_reused_connection_times_out_each_answer_from_its_own_request() {
    // One keep-alive connection; `/wait/MS` is answered after MS milliseconds.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(end) = read_until(&mut s, &mut buf, b"\r\n\r\n", 0).await {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("/");
                    let ms = path
                        .strip_prefix("/wait/")
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = Gateway::start(&config(
        &format!("  - name: a\n    timeouts: {{read: 400ms}}\n    targets: [{{url: \"http://{addr}\"}}]\n"),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n",
        "",
    ));
    // The first exchange's deadline passes while the second waits for its
    // answer, which comes within its own 400 ms.
    assert_eq!(get(&gw.url("/wait/0")).await.status, 200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = get(&gw.url("/wait/300")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "both went over one connection"
    );
    // A third answer that takes too long times out after its own 400 ms.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let start = std::time::Instant::now();
    get(&gw.url("/wait/3000")).await.problem(504, "gateway-timeout");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

/// An upstream that closes kept-alive connections as requests cross them:
/// `answers(n)` says whether the `n`th request of all (0-based) is answered;
/// one that is not is read and then the connection is closed, with a reset
/// when `n % 4 == 1`. Records each request line it read.
async fn closing_upstream(
    answers: fn(usize) -> bool,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (log, count) = (seen.clone(), accepted.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let conn = count.fetch_add(1, Ordering::SeqCst);
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(end) = read_until(&mut s, &mut buf, b"\r\n\r\n", 0).await {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.clear();
                    let n = {
                        let mut seen = log.lock().unwrap();
                        seen.push(head.lines().next().unwrap_or_default().to_string());
                        seen.len() - 1
                    };
                    if !answers(n) {
                        if n % 4 == 1 {
                            s.set_zero_linger().unwrap();
                        }
                        return;
                    }
                    let body = format!("conn {conn}");
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen, accepted)
}

#[tokio::test]
async fn an_idempotent_request_on_a_connection_closed_under_it_goes_on_a_new_one() {
    // Every connection answers its first request and drops its second.
    let (addr, seen, accepted) = closing_upstream(|n| n % 2 == 0).await;
    let gw = Gateway::start(&config(
        &format!("  - name: a\n    targets: [{{url: \"http://{addr}\"}}]\n"),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n",
        "",
    ));
    // Request 0 opens connection 0; request 1 goes on it and is dropped
    // (a reset), so it is sent again on connection 1, which answers it.
    assert_eq!(get(&gw.url("/a")).await.body, b"conn 0"[..]);
    let r = get(&gw.url("/b")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"conn 1"[..]));
    // Request 3 (DELETE, idempotent) on connection 1 is dropped with a FIN
    // and sent again on connection 2.
    let r = send(
        &client_h1(),
        req("DELETE", &gw.url("/c")).body(Default::default()).unwrap(),
    )
    .await;
    assert_eq!((r.status, &r.body[..]), (200, &b"conn 2"[..]));
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "GET /a HTTP/1.1",
            "GET /b HTTP/1.1",
            "GET /b HTTP/1.1",
            "DELETE /c HTTP/1.1",
            "DELETE /c HTTP/1.1"
        ]
    );
}

#[tokio::test]
async fn a_request_closed_under_is_sent_again_only_when_idempotent_and_only_once() {
    // Only the first request of all is answered.
    let (addr, seen, accepted) = closing_upstream(|n| n == 0).await;
    let gw = Gateway::start(&config(
        &format!("  - name: a\n    targets: [{{url: \"http://{addr}\"}}]\n"),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n",
        "",
    ));
    assert_eq!(get(&gw.url("/a")).await.status, 200);
    // A POST on the kept-alive connection may have been acted on: not sent again.
    post_as(&gw.url("/p"), Some("text/plain"), "x")
        .await
        .problem(502, "bad-gateway");
    assert_eq!(seen.lock().unwrap().len(), 2);
    // A GET dropped on a new connection is the upstream's failure, not a
    // stale connection: sent once (the default retries cover only
    // connect failures).
    get(&gw.url("/g")).await.problem(502, "bad-gateway");
    assert_eq!(
        *seen.lock().unwrap(),
        ["GET /a HTTP/1.1", "POST /p HTTP/1.1", "GET /g HTTP/1.1"]
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // The log says why in words, not as a Rust debug dump.
    let why = format!(
        "\"error\":\"the upstream service sent an invalid response ({addr}: the connection closed before a response)\""
    );
    for _ in 0..50 {
        if gw.logged(&why) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.logged(&why), "no log line with {why}");
}
