//! `cors` (SPEC section 3, Fetch standard) through the real binary:
//! preflights answered by the gateway, headers on every answer from an
//! allowed origin (gateway-made errors too), none for others, `Vary: Origin`.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use support::*;

async fn call(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = req(method, &gw.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&client_h1(), b.body(Full::<Bytes>::default()).unwrap()).await
}

#[tokio::test]
async fn preflights_and_answers_follow_the_fetch_standard() {
    let up = Upstream::start("u").await;
    let yaml = config(
        &upstream("u", &up),
        "  - name: api\n    match: {paths: [/api]}\n    upstream: u\n    plugins:\n      cors: {origins: [\"https://app.example.com\", \"https://*.example.org\"], methods: [GET, POST, DELETE], headers: [content-type, x-api-key], expose_headers: [x-request-id], credentials: true, max_age: 10m}\n      api_key: {}\n\
         \x20 - name: public\n    match: {paths: [/public]}\n    upstream: u\n    plugins:\n      cors: {origins: [\"*\"]}\n",
        "consumers:\n  - name: app\n    api_keys: [{key: app-key}]\n",
    );
    let gw = Gateway::start(&yaml);
    let app = ("origin", "https://app.example.com");

    // A preflight: answered here (no key needed, the upstream sees nothing).
    let r = call(
        &gw,
        "OPTIONS",
        "/api/orders",
        &[
            app,
            ("access-control-request-method", "DELETE"),
            ("access-control-request-headers", "X-Api-Key, Content-Type"),
        ],
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), "https://app.example.com");
    assert_eq!(r.header("access-control-allow-methods"), "GET, POST, DELETE");
    assert_eq!(
        r.header("access-control-allow-headers"),
        "content-type, x-api-key"
    );
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    assert_eq!(r.header("access-control-max-age"), "600");
    let vary: Vec<_> = r
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(vary.contains(&"origin"), "{vary:?}");
    assert_eq!(up.count(), 0);

    // A method or header not allowed, or another origin: no CORS headers.
    for headers in [
        vec![app, ("access-control-request-method", "PUT")],
        vec![
            app,
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "x-secret"),
        ],
        vec![
            ("origin", "https://evil.test"),
            ("access-control-request-method", "GET"),
        ],
    ] {
        let r = call(&gw, "OPTIONS", "/api/orders", &headers).await;
        assert_eq!(r.status, 204);
        assert!(
            r.headers.get("access-control-allow-origin").is_none(),
            "{headers:?}"
        );
        assert!(r.headers.get("access-control-allow-methods").is_none());
    }

    // The real request: headers on the upstream's answer ...
    let r = call(&gw, "GET", "/api/orders", &[app, ("x-api-key", "app-key")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), "https://app.example.com");
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    assert_eq!(r.header("access-control-expose-headers"), "x-request-id");
    assert!(r.headers.get_all("vary").iter().any(|v| v == "origin"));
    // ... and on the gateway's own refusals, so the page can read them.
    let r = call(
        &gw,
        "GET",
        "/api/orders",
        &[("origin", "https://shop.example.org")],
    )
    .await;
    r.problem(401, "unauthorized");
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://shop.example.org"
    );
    // Another origin: the answer, without CORS headers.
    let r = call(
        &gw,
        "GET",
        "/api/orders",
        &[("origin", "https://evil.test"), ("x-api-key", "app-key")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("access-control-allow-origin").is_none());
    assert!(r.headers.get("access-control-allow-credentials").is_none());
    assert!(r.headers.get_all("vary").iter().any(|v| v == "origin"));
    // No Origin: not a CORS request.
    let r = call(&gw, "GET", "/api/orders", &[("x-api-key", "app-key")]).await;
    assert!(r.headers.get("access-control-allow-origin").is_none());

    // Any origin, without credentials: `*`.
    let r = call(&gw, "GET", "/public", &[("origin", "https://anyone.test")]).await;
    assert_eq!(r.header("access-control-allow-origin"), "*");
    assert!(r.headers.get("access-control-allow-credentials").is_none());
}

#[test]
fn credentials_with_any_origin_is_refused() {
    let yaml = "version: 1\nroutes:\n  - name: a\n    match: {paths: [/a]}\n    respond: {status: 200}\n    plugins:\n      cors: {origins: [\"*\"], credentials: true}\n  - name: b\n    match: {paths: [/b]}\n    respond: {status: 200}\n    plugins:\n      cors: {origins: [app.example.com]}\n";
    fails_with(
        "validate",
        yaml,
        &[
            "routes[0].plugins.cors.credentials: cannot be used with origin `*`",
            "routes[1].plugins.cors.origins[0]: `app.example.com` is not an origin",
        ],
    );
}
