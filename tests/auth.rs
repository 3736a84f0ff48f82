//! Identity at the edge, first part: consumers, `api_key`, `acl` (SPEC
//! sections 2, 3 and 8), through the real binary.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use support::*;

fn auth_config(up: &Upstream) -> String {
    format!(
        "{}consumers:\n  - name: mobile\n    groups: [orders-read, free-tier]\n    api_keys: [{{key: mobile-key-123}}]\n    plugins:\n      request_transform: {{headers: {{set: {{x-tier: free}}}}}}\n  - name: partner\n    groups: [partners]\n    api_keys: [{{key_sha256: {}}}]\n  - name: banned\n    groups: [orders-read, blocked]\n    api_keys: [{{key: banned-key}}]\n",
        config(
            &upstream("orders", up),
            "  - name: orders\n    match: {paths: [/orders]}\n    upstream: orders\n    plugins:\n      api_key: {query: api_key, hide_credentials: true}\n      acl: {allow: [orders-read], deny: [blocked]}\n  - name: open\n    match: {paths: [/open]}\n    upstream: orders\n    plugins:\n      api_key: {}\n",
            "",
        ),
        sha256_hex("partner-secret"),
    )
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn call(gw: &Gateway, path: &str, key: Option<&str>) -> Resp {
    let mut b = req("GET", &gw.url(path));
    if let Some(k) = key {
        b = b.header("x-api-key", k);
    }
    send(&client_h1(), b.body(Full::<Bytes>::default()).unwrap()).await
}

#[tokio::test]
async fn api_keys_identify_consumers() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&auth_config(&up));

    // No key, an unknown key, an empty key: 401 with a challenge, never the upstream.
    for key in [None, Some("wrong"), Some("")] {
        let r = call(&gw, "/open/x", key).await;
        r.problem(401, "unauthorized");
        assert!(r.header("www-authenticate").starts_with("ApiKey"));
    }
    assert_eq!(up.count(), 0);

    // A key in the header; `hide_credentials` is off on this route.
    let r = call(&gw, "/open/x", Some("mobile-key-123")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-api-key"], "mobile-key-123");
    // The consumer's own plugins run after auth.
    assert_eq!(up.last().headers["x-tier"], "free");

    // A key given as key_sha256 in the config.
    assert_eq!(call(&gw, "/open/x", Some("partner-secret")).await.status, 200);
    assert!(up.last().headers.get("x-tier").is_none());
}

#[tokio::test]
async fn hidden_credentials_and_acl() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&auth_config(&up));

    // The key in the query, removed before forwarding.
    let r = call(&gw, "/orders/7?api_key=mobile-key-123&x=1", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(up.last().uri, "/orders/7?x=1");
    // In the header, removed too.
    assert_eq!(call(&gw, "/orders/7", Some("mobile-key-123")).await.status, 200);
    assert!(up.last().headers.get("x-api-key").is_none());

    // acl: a consumer outside `allow`, and one in `deny`: 403.
    let before = up.count();
    call(&gw, "/orders/7", Some("partner-secret"))
        .await
        .problem(403, "forbidden");
    call(&gw, "/orders/7", Some("banned-key"))
        .await
        .problem(403, "forbidden");
    assert_eq!(up.count(), before, "nothing refused reaches the upstream");
}

#[tokio::test]
async fn failures_are_counted_and_logged_consumers_named() {
    let up = Upstream::start("u").await;
    let text = format!(
        "{}admin: {{address: \"127.0.0.1:0\", token: t}}\n",
        auth_config(&up).replace("server:\n", "server:\n  access_log: {enabled: true}\n")
    );
    let gw = Gateway::start(&text);
    for _ in 0..3 {
        call(&gw, "/orders/1", Some("nope"))
            .await
            .problem(401, "unauthorized");
    }
    assert_eq!(call(&gw, "/orders/1", Some("mobile-key-123")).await.status, 200);
    let m = gw.admin_metrics("t").await;
    assert!(
        m.contains(r#"portcullis_auth_failures_total{route="orders",plugin="api_key"} 3"#),
        "{m}"
    );
    let stdout = gw.stdout.clone();
    for _ in 0..100 {
        if stdout.lock().unwrap().len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let lines = gw.stdout.lock().unwrap().clone();
    let ok: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(ok["consumer"], "mobile");
    let refused: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(refused["status"], 401);
    assert!(refused["consumer"].is_null());
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("mobile-key-123") || l.contains("nope"))
    );
}

#[test]
fn bad_key_configs_are_refused() {
    let err = fails(
        "validate",
        "version: 1\nconsumers:\n  - {name: a, api_keys: [{key: same}]}\n  - {name: b, api_keys: [{key: same}, {key_sha256: xyz}, {}]}\n",
    );
    assert!(
        err.contains("consumers[1].api_keys[0]: this key is already the key of consumer `a`"),
        "{err}"
    );
    assert!(
        err.contains("consumers[1].api_keys[1].key_sha256: must be 64 hex digits"),
        "{err}"
    );
    assert!(err.contains("consumers[1].api_keys[2]: needs one of"), "{err}");
    let err = fails(
        "validate",
        "version: 1\nroutes:\n  - {name: r, match: {paths: [/]}, respond: {body: x}, plugins: {acl: {}, api_key: {header: \"bad header\"}}}\n",
    );
    assert!(
        err.contains("routes[0].plugins.acl: needs `allow` or `deny`"),
        "{err}"
    );
    assert!(err.contains("routes[0].plugins.api_key.header"), "{err}");
    let err = fails(
        "validate",
        "version: 1\nconsumers:\n  - {name: a, plugins: {api_key: {}, ip_restriction: {allow: [10.0.0.0/8]}}}\n",
    );
    assert!(
        err.contains("consumers[0].plugins.api_key: `api_key` runs before the caller is identified"),
        "{err}"
    );
    assert!(err.contains("consumers[0].plugins.ip_restriction"), "{err}");
}
