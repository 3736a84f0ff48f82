//! The plugin pipeline on real requests: ip_restriction, request_transform,
//! response_transform; global and route scopes.

mod support;

use http_body_util::Full;
use support::*;

#[tokio::test]
async fn ip_restriction_uses_the_client_ip_and_route_overrides_global() {
    let up = Upstream::start("a").await;
    let routes = "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n\
                  \x20 - name: open\n    match: {paths: [\"/open\"]}\n    upstream: a\n    plugins:\n      ip_restriction: {allow: [127.0.0.1]}\n\
                  \x20 - name: ping\n    match: {paths: [\"= /ping\"]}\n    respond: {body: pong}\n";
    let gw = Gateway::start(&format!(
        "{}plugins:\n  ip_restriction: {{allow: [10.0.0.0/8], deny: [10.9.0.0/16]}}\n",
        config(&upstream("a", &up), routes, "")
    ));
    let v = get(&gw.url("/x")).await.problem(403, "forbidden");
    assert!(
        !v["detail"].as_str().unwrap().contains("127.0.0.1"),
        "the detail should not echo addresses"
    );
    // Plugins run on routes that answer by themselves too.
    get(&gw.url("/ping")).await.problem(403, "forbidden");
    // An untrusted peer cannot claim an allowed address.
    let spoof = send(
        &client_h1(),
        req("GET", &gw.url("/x"))
            .header("x-forwarded-for", "10.1.2.3")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(spoof.status, 403);
    assert_eq!(up.count(), 0);
    // The route's ip_restriction replaces the global one.
    assert_eq!(get(&gw.url("/open")).await.status, 200);
    assert_eq!(up.count(), 1);

    // Behind a trusted proxy, the client IP comes from X-Forwarded-For.
    let gw = Gateway::start(&format!(
        "{}plugins:\n  ip_restriction: {{allow: [10.0.0.0/8], deny: [10.9.0.0/16]}}\n",
        config(&upstream("a", &up), routes, "  trusted_proxies: [127.0.0.0/8]\n")
    ));
    let via = |xff: &'static str| {
        let url = gw.url("/x");
        async move {
            send(
                &client_h1(),
                req("GET", &url)
                    .header("x-forwarded-for", xff)
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .status
        }
    };
    assert_eq!(via("10.1.2.3").await, 200);
    assert_eq!(via("10.9.0.1").await, 403);
    assert_eq!(
        via("8.8.8.8, 10.1.2.3").await,
        200,
        "rightmost untrusted address is the client"
    );
    assert_eq!(via("10.1.2.3, 8.8.8.8").await, 403);
}

#[tokio::test]
async fn request_and_response_transforms() {
    let up = Upstream::start("a").await;
    let routes = "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n    plugins:\n      request_transform:\n        headers: {add: {x-tag: added}, set: {x-env: prod}, remove: [x-debug], rename: {x-old: x-new}}\n        query: {add: {source: gateway}, remove: [debug]}\n      response_transform:\n        headers: {remove: [x-upstream], set: {x-served-by: portcullis}, add: {x-extra: one}}\n";
    let gw = Gateway::start(&config(&upstream("a", &up), routes, ""));
    let r = send(
        &client_h1(),
        req("GET", &gw.url("/items?debug=1&page=2"))
            .header("x-tag", "client")
            .header("x-env", "dev")
            .header("x_env", "dev")
            .header("x-debug", "1")
            .header("x-old", "v")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/items?page=2&source=gateway");
    let tags: Vec<_> = seen
        .headers
        .get_all("x-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["client", "added"]);
    assert_eq!(seen.headers["x-env"], "prod");
    // A `_` spelling would read as x-env to a CGI-style server.
    assert!(!seen.headers.contains_key("x_env"));
    assert!(!seen.headers.contains_key("x-debug"));
    assert_eq!(seen.headers["x-new"], "v");
    assert!(!r.headers.contains_key("x-upstream"));
    assert_eq!(r.header("x-served-by"), "portcullis");
    assert_eq!(r.header("x-extra"), "one");
}

#[tokio::test]
async fn plugins_see_the_gateways_forwarding_headers_not_the_clients() {
    let up = Upstream::start("a").await;
    let routes = "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: a\n    plugins:\n      request_transform:\n        headers: {rename: {x-forwarded-for: x-client-chain}}\n";
    let gw = Gateway::start(&config(&upstream("a", &up), routes, ""));
    let r = send(
        &client_h1(),
        req("GET", &gw.url("/x"))
            .header("x-forwarded-for", "6.6.6.6")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-client-chain"], "127.0.0.1");
    assert!(
        !seen.headers.contains_key("x-forwarded-for"),
        "the operator's rename wins over the gateway's header"
    );
}
