//! Graceful shutdown on SIGTERM: stop accepting, finish requests in flight
//! (up to `shutdown_timeout`), exit 0.

mod support;

use std::time::{Duration, Instant};

use http_body_util::Full;
use support::*;

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let up = Upstream::start("a").await;
    let mut gw = Gateway::start(&config(
        &upstream("a", &up),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n",
        "",
    ));
    let addr = gw.addr();
    let url = gw.url("/delay/1000");
    let in_flight =
        tokio::spawn(
            async move { send(&client_h1(), req("GET", &url).body(Full::default()).unwrap()).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || gw.terminate()).await.unwrap();
    let resp = in_flight.await.unwrap();
    assert_eq!(resp.status, 200, "the request in flight was lost");
    assert_eq!(resp.body, "delayed");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn shutdown_timeout_bounds_the_drain() {
    let up = Upstream::start("a").await;
    let mut gw = Gateway::start(&config(
        &upstream("a", &up),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n",
        "  shutdown_timeout: 300ms\n",
    ));
    let url = gw.url("/delay/5000");
    let _stuck = tokio::spawn(async move {
        client_h1()
            .request(req("GET", &url).body(Full::default()).unwrap())
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let status = tokio::task::spawn_blocking(move || gw.terminate()).await.unwrap();
    assert!(status.success());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "drain took {:?}",
        start.elapsed()
    );
}
