//! `waf` (SPEC section 3) through the real binary: block with a 403 naming
//! the rule (never the payload), detect mode letting through and counting,
//! exclusions by rule and path, encoded payloads caught, bodies inspected.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use support::*;

async fn post(gw: &Gateway, path: &str, content_type: &str, body: &str) -> Resp {
    post_as(&gw.url(path), Some(content_type), body).await
}

#[tokio::test]
async fn block_detect_and_exclusions() {
    let up = Upstream::start("u").await;
    let yaml = config(
        &upstream("u", &up),
        "  - name: api\n    match: {paths: [/api]}\n    upstream: u\n    plugins:\n      waf: {exclude: [{rule: lfi-100, path: /api/files}, {rule: xss}]}\n\
         \x20 - name: watch\n    match: {paths: [/watch]}\n    upstream: u\n    plugins:\n      waf: {mode: detect, rules: [sqli]}\n",
        "admin: {address: \"127.0.0.1:0\", token: t}\n",
    );
    let gw = Gateway::start(&yaml);

    // Double-encoded: `1' OR '1'='1`.
    let r = get(&gw.url("/api/orders?id=1%2527%2520OR%2520%25271%2527%253D%25271")).await;
    let p = r.problem(403, "waf-blocked");
    assert_eq!(p["rule"], "sqli-100");
    assert!(
        !p["detail"].as_str().unwrap().contains("OR"),
        "the payload is not echoed: {p}"
    );
    assert_eq!(up.count(), 0, "a blocked request never reaches the upstream");
    // In a JSON body, and in a form body.
    post(
        &gw,
        "/api/orders",
        "application/json",
        r#"{"note": "x", "q": ["1 UNION SELECT password FROM users"]}"#,
    )
    .await
    .problem(403, "waf-blocked");
    post(
        &gw,
        "/api/run",
        "application/x-www-form-urlencoded",
        "cmd=ping+-c1+x%3B+cat+%2Fetc%2Fpasswd",
    )
    .await
    .problem(403, "waf-blocked");
    // A header.
    let r = send(
        &client_h1(),
        req("GET", &gw.url("/api/x"))
            .header("x-api-user", "() { :; }; /bin/bash -c id")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    r.problem(403, "waf-blocked");

    // Benign traffic passes.
    for path in [
        "/api/customers?name=O%27Brien",
        "/api/go?next=https%3A%2F%2Fexample.com%2Fa%3Fb%3D1",
    ] {
        assert_eq!(get(&gw.url(path)).await.status, 200, "{path}");
    }
    assert_eq!(
        post(
            &gw,
            "/api/orders",
            "application/json",
            r#"{"customer": "O'Hara", "note": "ring twice; leave at the door"}"#
        )
        .await
        .status,
        200
    );

    // Exclusions: one rule under a path, a whole family everywhere.
    assert_eq!(get(&gw.url("/api/files?name=..%2Freadme.md")).await.status, 200);
    let r = get(&gw.url("/api/other?name=..%2Freadme.md")).await;
    assert_eq!(r.problem(403, "waf-blocked")["rule"], "lfi-100");
    assert_eq!(
        get(&gw.url("/api/page?q=%3Cscript%3Ealert(1)%3C/script%3E"))
            .await
            .status,
        200
    );

    // Detect mode: let through, logged and counted.
    let before = up.count();
    assert_eq!(get(&gw.url("/watch?id=1%20UNION%20SELECT%201")).await.status, 200);
    assert_eq!(up.count(), before + 1);
    let m = gw.admin_metrics("t").await;
    for line in [
        r#"portcullis_waf_blocked_total{route="api",rule="sqli-100"} 1"#,
        r#"portcullis_waf_detected_total{route="watch",rule="sqli-102"} 1"#,
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    eventually("the detection is logged", || async {
        gw.logged("WAF detected a match")
    })
    .await;
}

#[test]
fn waf_errors_are_named() {
    let yaml = "version: 1\nroutes:\n  - name: a\n    match: {paths: [/a]}\n    respond: {status: 200}\n    plugins:\n      waf: {paranoia: 5, exclude: [{rule: sqli-999}]}\n";
    let err = fails("validate", yaml);
    assert!(
        err.contains("routes[0].plugins.waf.paranoia: must be 1, 2, 3 or 4"),
        "{err}"
    );
    let yaml = yaml.replace("paranoia: 5, ", "");
    let err = fails("validate", &yaml);
    assert!(
        err.contains("routes[0].plugins.waf.exclude[0].rule: `sqli-999` is not a WAF rule id or family"),
        "{err}"
    );
}

#[tokio::test]
async fn encoded_bodies_are_never_inflated() {
    // A gzip header and then bytes no inflater would accept: were the
    // gateway (or its WAF) to decompress request bodies, this would fail or
    // change; it passes through byte for byte, so a decompression bomb
    // cannot expand inside the gateway.
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(
        &upstream("u", &up),
        "  - name: api\n    match: {paths: [/api]}\n    upstream: u\n    plugins:\n      waf: {}\n",
        "",
    ));
    let mut body = vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0x03];
    body.extend((0..4096u32).map(|i| (i * 7 % 251) as u8));
    let r = send(
        &client_h1(),
        req("POST", &gw.url("/api/upload"))
            .header("content-type", "application/octet-stream")
            .header("content-encoding", "gzip")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.body_len, body.len());
    assert_eq!(seen.headers["content-encoding"], "gzip");
}
