//! `cache` (SPEC sections 3 and 8) through the real binary: hits served
//! without the upstream, `Cache-Control` and `Vary` honoured, bypasses,
//! invalidation by unsafe methods, request coalescing proven by the
//! upstream's request count, and a cache shared by two gateways in Redis.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Full;
use support::*;

/// Each answer is numbered, so a hit shows which upstream answer it replays.
async fn backend() -> Service {
    let n = Arc::new(AtomicUsize::new(0));
    Service::start(move |parts, _| {
        let n = n.fetch_add(1, Ordering::SeqCst) + 1;
        let lang = parts
            .headers
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_string();
        let body = format!("{} {} #{n} {lang}", parts.method, parts.uri);
        let mut r = http::Response::new(Full::new(body.into()));
        r.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        let extra: &[(&str, &str)] = match parts.uri.path() {
            "/nostore" => &[("cache-control", "no-store")],
            "/private" => &[("cache-control", "private, max-age=60")],
            "/cookie" => &[("set-cookie", "session=1")],
            "/short" => &[("cache-control", "max-age=1")],
            "/vary" => &[("vary", "Accept-Language")],
            "/error" => {
                *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                &[]
            }
            _ => &[],
        };
        for (k, v) in extra {
            r.headers_mut().insert(*k, v.parse().unwrap());
        }
        r
    })
    .await
}

async fn call(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = req(method, &gw.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&client_h1(), b.body(Full::default()).unwrap()).await
}

async fn get(gw: &Gateway, path: &str) -> Resp {
    call(gw, "GET", path, &[]).await
}

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn gateway(up: &Service, cache: &str, extra: &str) -> Gateway {
    Gateway::start(&config(
        &format!("  - name: u\n    targets: [{{url: \"{}\"}}]\n", up.url("")),
        &format!(
            "  - name: cached\n    match: {{paths: [/]}}\n    upstream: u\n    plugins:\n      cache: {cache}\n"
        ),
        &format!("admin: {{address: \"127.0.0.1:0\", token: t}}\n{extra}"),
    ))
}

#[tokio::test]
async fn hits_are_served_without_the_upstream() {
    let up = backend().await;
    let gw = gateway(&up, "{ttl: 60s}", "");

    let first = get(&gw, "/items?page=1").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), "MISS");
    let second = get(&gw, "/items?page=1").await;
    assert_eq!(second.header("x-cache"), "HIT");
    assert_eq!(second.body, first.body, "the hit replays the first answer");
    assert_eq!(second.header("content-type"), "text/plain");
    assert!(second.header("age").parse::<u64>().unwrap() <= 60);
    assert_eq!(
        second.header("x-request-id").len(),
        first.header("x-request-id").len()
    );
    assert_ne!(second.header("x-request-id"), first.header("x-request-id"));
    assert_eq!(up.hits(), 1);

    // Another query is another entry; HEAD reads GET's entry, without a body.
    assert_eq!(get(&gw, "/items?page=2").await.header("x-cache"), "MISS");
    let head = call(&gw, "HEAD", "/items?page=1", &[]).await;
    assert_eq!(head.header("x-cache"), "HIT");
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), first.body.len().to_string());
    assert_eq!(up.hits(), 2);

    let m = gw.admin_metrics("t").await;
    assert!(
        m.contains(r#"portcullis_cache_requests_total{route="cached",result="hit"} 2"#),
        "{m}"
    );

    // What is cached survives a reload.
    gw.signal("HUP");
    eventually("the reload", || async { gw.logged("config reloaded") }).await;
    assert_eq!(get(&gw, "/items?page=1").await.header("x-cache"), "HIT");
    assert_eq!(up.hits(), 2);
    assert!(
        m.contains(r#"portcullis_cache_requests_total{route="cached",result="miss"} 2"#),
        "{m}"
    );
}

#[tokio::test]
async fn cache_control_and_bypasses_are_honoured() {
    let up = backend().await;
    let gw = gateway(&up, "{ttl: 60s}", "");

    // Answers that must not be stored: each request reaches the upstream.
    for path in ["/nostore", "/private", "/cookie", "/error"] {
        let a = get(&gw, path).await;
        let b = get(&gw, path).await;
        assert_eq!(b.header("x-cache"), "MISS", "{path}");
        assert_ne!(a.body, b.body, "{path}");
    }

    // max-age wins over ttl: gone after a second.
    let a = get(&gw, "/short").await;
    assert_eq!(get(&gw, "/short").await.body, a.body);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = get(&gw, "/short").await;
    assert_eq!(b.header("x-cache"), "MISS");
    assert_ne!(b.body, a.body);

    // Client no-cache and credentials (the key has no consumer): BYPASS.
    get(&gw, "/page").await;
    for headers in [
        &[("cache-control", "no-cache")][..],
        &[("pragma", "no-cache")][..],
        &[("authorization", "Bearer x")][..],
    ] {
        let r = call(&gw, "GET", "/page", headers).await;
        assert_eq!(r.header("x-cache"), "BYPASS", "{headers:?}");
        assert!(text(&r).starts_with("GET /page #"), "{}", text(&r));
    }
    assert_eq!(get(&gw, "/page").await.header("x-cache"), "HIT");
}

#[tokio::test]
async fn vary_and_invalidation() {
    let up = backend().await;
    let gw = gateway(&up, "{ttl: 60s}", "");

    // Vary: Accept-Language keeps languages apart.
    let de = call(&gw, "GET", "/vary", &[("accept-language", "de")]).await;
    let de2 = call(&gw, "GET", "/vary", &[("accept-language", "de")]).await;
    assert_eq!(de2.header("x-cache"), "HIT");
    assert_eq!(de2.body, de.body);
    let fr = call(&gw, "GET", "/vary", &[("accept-language", "fr")]).await;
    assert_eq!(fr.header("x-cache"), "MISS");
    assert!(text(&fr).ends_with(" fr"), "{}", text(&fr));

    // An unsafe method through the gateway drops every entry of the path.
    get(&gw, "/users/7").await;
    get(&gw, "/users/7?expand=1").await;
    get(&gw, "/users/8").await;
    assert_eq!(get(&gw, "/users/7").await.header("x-cache"), "HIT");
    let post = call(&gw, "POST", "/users/7", &[]).await;
    assert_eq!(post.header("x-cache"), "BYPASS");
    assert_eq!(get(&gw, "/users/7").await.header("x-cache"), "MISS");
    assert_eq!(get(&gw, "/users/7?expand=1").await.header("x-cache"), "MISS");
    assert_eq!(get(&gw, "/users/8").await.header("x-cache"), "HIT");
    // A failed change drops nothing.
    let del = call(&gw, "DELETE", "/error", &[]).await;
    assert_eq!(del.status, 500);
    assert_eq!(get(&gw, "/users/7").await.header("x-cache"), "HIT");
}

#[tokio::test]
async fn concurrent_misses_send_one_upstream_request() {
    let up = Upstream::start("slow").await;
    let gw = Gateway::start(&config(
        &upstream("u", &up),
        "  - name: cached\n    match: {paths: [/]}\n    upstream: u\n    plugins:\n      cache: {ttl: 60s}\n",
        "",
    ));
    let client = client_h1();
    let calls = (0..20).map(|_| {
        let client = client.clone();
        let url = gw.url("/delay/300");
        async move { send(&client, req("GET", &url).body(Full::default()).unwrap()).await }
    });
    let answers = futures_util::future::join_all(calls).await;
    assert_eq!(up.count(), 1, "20 concurrent misses, one upstream request");
    let misses = answers.iter().filter(|r| r.header("x-cache") == "MISS").count();
    assert_eq!(misses, 1);
    for r in &answers {
        assert_eq!(r.status, 200);
        assert_eq!(r.body, answers[0].body);
    }
}

#[tokio::test]
async fn two_gateways_share_a_redis_cache() {
    let redis = RedisServer::start();
    let up = backend().await;
    let extra = format!("redis: {{url: \"{}\"}}\n", redis.url());
    let gw1 = gateway(&up, "{ttl: 60s, store: redis}", &extra);
    let gw2 = gateway(&up, "{ttl: 60s, store: redis}", &extra);

    let first = get(&gw1, "/shared").await;
    assert_eq!(first.header("x-cache"), "MISS");

    // Stored off the response path, in one hash per host and path.
    eventually("the entry is in Redis", || async {
        redis.cmd(&["HLEN", "portcullis:cache:127.0.0.1/shared"]) == redis::Value::Int(1)
    })
    .await;
    let r = get(&gw2, "/shared").await;
    assert_eq!(r.header("x-cache"), "HIT");
    assert_eq!(r.body, first.body);
    assert_eq!(up.hits(), 1);

    // A change through one node drops the entry for both.
    call(&gw2, "PUT", "/shared", &[]).await;
    let after = get(&gw1, "/shared").await;
    assert_eq!(after.header("x-cache"), "MISS");
    assert_ne!(after.body, first.body);
}
