//! The admin API (SPEC sections 6 and 8) against the real binary: auth,
//! every endpoint, redaction, validation, per-object changes, persistence.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use support::*;

const TOKEN: &str = "s3cret-admin-token";

fn admin_section(extra: &str) -> String {
    format!("admin:\n  address: 127.0.0.1:0\n  token: {TOKEN}\n{extra}")
}

fn base(up: &Upstream, extra_admin: &str) -> String {
    format!(
        "{}\n{}",
        config(
            &upstream("users", up),
            "  - name: users-api\n    match: {paths: [/users]}\n    upstream: users\n  - name: ping\n    match: {paths: [\"= /ping\"]}\n    respond: {body: pong}\n",
            "",
        ),
        admin_section(extra_admin)
    )
}

async fn admin(gw: &Gateway, method: &str, path: &str, body: &str, token: Option<&str>) -> Resp {
    let mut b = req(method, &gw.admin_url(path));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send(
        &client_h1(),
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
    )
    .await
}

async fn authed(gw: &Gateway, method: &str, path: &str, body: &str) -> Resp {
    admin(gw, method, path, body, Some(TOKEN)).await
}

#[tokio::test]
async fn token_is_required_and_reveals_nothing() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&base(&up, ""));
    // Health endpoints need no token.
    assert_eq!(admin(&gw, "GET", "/healthz", "", None).await.status, 200);
    assert_eq!(admin(&gw, "GET", "/readyz", "", None).await.status, 200);

    for token in [
        None,
        Some("wrong"),
        Some("s3cret-admin-toke"),
        Some("s3cret-admin-token2"),
    ] {
        let existing = admin(&gw, "GET", "/routes/users-api", "", token).await;
        let missing = admin(&gw, "GET", "/routes/nope", "", token).await;
        let v1 = existing.problem(401, "unauthorized");
        let v2 = missing.problem(401, "unauthorized");
        assert_eq!(v1["detail"], v2["detail"], "no hint whether the object exists");
        assert!(existing.header("www-authenticate").starts_with("Bearer"));
        // Changes are refused too, and nothing is applied.
        admin(&gw, "DELETE", "/routes/users-api", "", token)
            .await
            .problem(401, "unauthorized");
    }
    assert_eq!(get(&gw.url("/ping")).await.status, 200);
    assert_eq!(authed(&gw, "GET", "/routes/users-api", "").await.status, 200);
    assert_eq!(authed(&gw, "GET", "/routes/nope", "").await.status, 404);
    // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
    let client = client_h1();
    let with = |value: String| {
        send(
            &client,
            req("GET", &gw.admin_url("/status"))
                .header("authorization", value)
                .body(Full::default())
                .unwrap(),
        )
    };
    assert_eq!(with(format!("bearer {TOKEN}")).await.status, 200);
    assert_eq!(with(format!("BEARER {TOKEN}")).await.status, 200);
    assert_eq!(with(format!("Bearer {}", TOKEN.to_uppercase())).await.status, 401);
    assert_eq!(with(format!("Basic {TOKEN}")).await.status, 401);
}

#[tokio::test]
async fn without_a_token_everything_but_health_is_401() {
    let text = format!("{}\nadmin:\n  address: 127.0.0.1:0\n", config("  []", "  []", ""));
    let gw = Gateway::start(&text);
    assert!(gw.logged("admin.token is not set"));
    assert_eq!(admin(&gw, "GET", "/healthz", "", None).await.status, 200);
    admin(&gw, "GET", "/status", "", None)
        .await
        .problem(401, "unauthorized");
    admin(&gw, "GET", "/status", "", Some(""))
        .await
        .problem(401, "unauthorized");
}

#[test]
fn no_token_on_a_public_address_refuses_to_start() {
    let err = fails(
        "run",
        "version: 1\nserver:\n  listeners: [{address: \"127.0.0.1:0\"}]\nadmin:\n  address: 0.0.0.0:0\n",
    );
    assert!(err.contains("admin.token: a token is required"), "{err}");
}

#[tokio::test]
async fn status_config_and_redaction() {
    let up = Upstream::start("u").await;
    let text = format!(
        "{}consumers:\n  - name: mobile\n    api_keys: [{{key: key-AAA111}}]\n    hmac: [{{key_id: m1, secret: hmac-BBB222}}]\n",
        base(&up, "")
    );
    let gw = Gateway::start(&text);
    let status = authed(&gw, "GET", "/status", "").await;
    assert_eq!(status.status, 200);
    let v = status.json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64());
    assert_eq!(v["routes"], 2);
    assert_eq!(v["upstreams"], 1);
    assert_eq!(v["consumers"], 1);
    let version = v["config_version"].as_str().unwrap().to_string();
    assert!(!version.is_empty());

    for path in ["/config", "/consumers/mobile", "/consumers"] {
        let r = authed(&gw, "GET", path, "").await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), "application/json");
        let body = String::from_utf8_lossy(&r.body);
        for secret in [TOKEN, "key-AAA111", "hmac-BBB222"] {
            assert!(!body.contains(secret), "{path} leaks {secret}: {body}");
        }
        assert!(body.contains("<redacted>"), "{path}: {body}");
    }
    let cfg = authed(&gw, "GET", "/config", "").await.json();
    assert_eq!(cfg["admin"]["token"], "<redacted>");
    assert_eq!(cfg["consumers"][0]["api_keys"][0]["key"], "<redacted>");
    assert_eq!(cfg["consumers"][0]["hmac"][0]["key_id"], "m1");
    assert_eq!(cfg["routes"][0]["name"], "users-api");
    let route = authed(&gw, "GET", "/routes/users-api", "").await.json();
    assert_eq!(route["upstream"], "users");

    let health = authed(&gw, "GET", "/upstreams/users/health", "").await.json();
    assert_eq!(health["upstream"], "users");
    assert!(health["circuit_breaker"].is_null());
    assert_eq!(health["targets"][0]["url"], up.url());
    assert_eq!(health["targets"][0]["healthy"], true);
    assert_eq!(authed(&gw, "GET", "/upstreams/nope/health", "").await.status, 404);
    assert_eq!(authed(&gw, "GET", "/nothing-here", "").await.status, 404);
}

#[tokio::test]
async fn put_config_validates_everything_before_applying() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start_with(&base(&up, "  persist: false\n"), &["--no-watch"]);
    let before = authed(&gw, "GET", "/status", "").await.json()["config_version"].clone();

    // Two errors: both reported, neither applied.
    let bad = format!(
        "{}\nroutes:\n  - name: a\n    match: {{paths: [/a]}}\n    upstream: missing\n  - name: b\n    match: {{paths: [/b]}}\n    respond: {{body: b}}\n    prority: 1\n{}",
        "version: 1\nserver:\n  listeners: [{name: public, address: \"127.0.0.1:0\"}]\n",
        admin_section("")
    );
    let r = authed(&gw, "PUT", "/config", &bad).await;
    let v = r.problem(400, "validation-failed");
    let errors = v["errors"].as_array().unwrap();
    assert!(!errors.is_empty(), "{v}");
    assert!(
        errors
            .iter()
            .any(|e| e["path"] == "routes[1].prority" && e["line"] == 12),
        "{v}"
    );
    // Malformed YAML and wrong types.
    authed(&gw, "PUT", "/config", "version: 1\nroutes: [\n")
        .await
        .problem(400, "validation-failed");
    authed(&gw, "PUT", "/config", "{\"version\": \"one\"}")
        .await
        .problem(400, "validation-failed");
    // Validate-only reports the same without applying.
    let r = authed(&gw, "POST", "/config/validate", &bad).await;
    r.problem(400, "validation-failed");
    assert_eq!(
        get(&gw.url("/ping")).await.status,
        200,
        "the old config keeps serving"
    );
    assert_eq!(
        authed(&gw, "GET", "/status", "").await.json()["config_version"],
        before
    );

    // A valid change: the new route serves, the old one is gone.
    let good = format!(
        "version: 1\nserver:\n  listeners: [{{name: public, address: \"127.0.0.1:0\"}}]\nroutes:\n  - name: hello\n    match: {{paths: [\"= /hello\"]}}\n    respond: {{body: hi}}\n{}",
        admin_section("  persist: false\n")
    );
    let r = authed(&gw, "POST", "/config/validate", &good).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        get(&gw.url("/hello")).await.status,
        404,
        "validate applies nothing"
    );
    let r = authed(&gw, "PUT", "/config", &good).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert_ne!(v["config_version"], before);
    assert_eq!(get(&gw.url("/hello")).await.body, "hi");
    assert_eq!(get(&gw.url("/ping")).await.status, 404);

    // A listener change needs a restart: refused whole.
    let moved = good.replace("address: \"127.0.0.1:0\"", "address: \"127.0.0.1:1\"");
    let v = authed(&gw, "PUT", "/config", &moved)
        .await
        .problem(400, "validation-failed");
    assert!(
        v["errors"][0]["message"].as_str().unwrap().contains("restart"),
        "{v}"
    );
}

#[tokio::test]
async fn objects_are_created_replaced_and_deleted() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start_with(&base(&up, "  persist: false\n"), &["--no-watch"]);

    let route = "match: {paths: [/orders]}\nupstream: users\n";
    let r = authed(&gw, "PUT", "/routes/orders", route).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.json()["name"], "orders");
    assert_eq!(get(&gw.url("/orders/7")).await.status, 200);
    assert_eq!(up.last().uri, "/orders/7");

    // Replace (JSON body, name given and matching).
    let r = authed(
        &gw,
        "PUT",
        "/routes/orders",
        r#"{"name": "orders", "match": {"paths": ["/orders"]}, "respond": {"status": 202, "body": "queued"}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = get(&gw.url("/orders/7")).await;
    assert_eq!((r.status, &r.body[..]), (202, &b"queued"[..]));

    // A name that differs from the URL, a dangling reference, a non-object.
    authed(&gw, "PUT", "/routes/orders", "name: other\nrespond: {body: x}\n")
        .await
        .problem(400, "validation-failed");
    let v = authed(
        &gw,
        "PUT",
        "/routes/orders",
        "match: {paths: [/o]}\nupstream: nope\n",
    )
    .await
    .problem(400, "validation-failed");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("unknown upstream"),
        "{v}"
    );
    authed(&gw, "PUT", "/routes/orders", "[1, 2]")
        .await
        .problem(400, "validation-failed");
    assert_eq!(get(&gw.url("/orders/7")).await.status, 202, "nothing applied");

    // Upstreams: an upstream in use cannot be deleted.
    let v = authed(&gw, "DELETE", "/upstreams/users", "")
        .await
        .problem(409, "conflict");
    assert_eq!(v["routes"], serde_json::json!(["users-api"]));
    let r = authed(
        &gw,
        "PUT",
        "/upstreams/spare",
        &format!("targets: [{{url: \"{}\"}}]\n", up.url()),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(authed(&gw, "DELETE", "/upstreams/spare", "").await.status, 204);
    assert_eq!(authed(&gw, "GET", "/upstreams/spare", "").await.status, 404);

    // Consumers.
    let r = authed(
        &gw,
        "PUT",
        "/consumers/partner",
        "api_keys: [{key: partner-key-XYZ}]\n",
    )
    .await;
    assert_eq!(r.status, 201);
    assert!(!String::from_utf8_lossy(&r.body).contains("partner-key-XYZ"));
    assert_eq!(authed(&gw, "GET", "/status", "").await.json()["consumers"], 1);
    assert_eq!(authed(&gw, "DELETE", "/consumers/partner", "").await.status, 204);

    // Delete the route; 404 after.
    assert_eq!(authed(&gw, "DELETE", "/routes/orders", "").await.status, 204);
    assert_eq!(get(&gw.url("/orders/7")).await.status, 404);
    assert_eq!(authed(&gw, "DELETE", "/routes/orders", "").await.status, 404);
    assert_eq!(authed(&gw, "PATCH", "/routes/ping", "").await.status, 405);
}

#[tokio::test]
async fn admin_changes_persist_across_a_restart() {
    let up = Upstream::start("u").await;
    let text = format!("{}\n# a comment\n", base(&up, "")).replace(
        &format!("token: {TOKEN}"),
        "token: ${PORTCULLIS_TEST_ADMIN_TOKEN:-s3cret-admin-token}",
    );
    let path = write_config(&text);
    let r = {
        let gw = Gateway::start_file(&path, &[]);
        let r = authed(
            &gw,
            "PUT",
            "/routes/orders",
            "match: {paths: [/orders]}\nupstream: users\n",
        )
        .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let saved = std::fs::read_to_string(&path).unwrap();
        assert!(saved.contains("orders"), "{saved}");
        // The env reference is written back as written, not its value.
        assert!(
            saved.contains("${PORTCULLIS_TEST_ADMIN_TOKEN:-s3cret-admin-token}"),
            "{saved}"
        );
        // Our own write-back is not taken for an outside change.
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert!(!gw.logged("\"origin\":\"File\""), "{:?}", gw.logs.lock().unwrap());
        r
    };
    assert_eq!(r.json()["name"], "orders");
    let gw = Gateway::start_file(&path, &[]);
    assert_eq!(get(&gw.url("/orders/1")).await.status, 200);
    assert_eq!(get(&gw.url("/ping")).await.status, 200);
    drop(gw);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
