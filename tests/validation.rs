//! `request_validation` (SPEC section 3) through the real binary: JSON
//! bodies checked against a JSON Schema, 400 `validation-failed` with the
//! failing JSON pointer, the valid body forwarded as it came.

mod support;

use support::*;

const SCHEMA: &str = r#"{type: object, required: [name, qty], additionalProperties: false, properties: {name: {type: string, minLength: 1}, qty: {type: integer, minimum: 1}, items: {type: array, items: {type: object, required: [sku], properties: {sku: {type: string}}}}}}"#;

async fn post(gw: &Gateway, path: &str, content_type: Option<&str>, body: &str) -> Resp {
    post_as(&gw.url(path), content_type, body).await
}

#[tokio::test]
async fn bodies_are_checked_against_the_schema() {
    let up = Upstream::start("u").await;
    let dir = test_dir("schema-");
    let schema_file = dir.join("order.json");
    std::fs::write(&schema_file, r#"{"type": "object", "required": ["id"]}"#).unwrap();
    let yaml = config(
        &upstream("u", &up),
        &format!(
            "  - name: orders\n    match: {{paths: [/orders]}}\n    upstream: u\n    max_request_body_bytes: 1KiB\n    plugins:\n      request_validation: {{json_schema: {SCHEMA}}}\n\
             \x20 - name: file\n    match: {{paths: [/file]}}\n    upstream: u\n    plugins:\n      request_validation: {{json_schema: \"{}\", content_types: [application/vnd.order+json]}}\n",
            schema_file.display()
        ),
        "",
    );
    let gw = Gateway::start(&yaml);
    let json = Some("application/json; charset=utf-8");

    let good = r#"{"name": "tea", "qty": 2, "items": [{"sku": "T-1"}]}"#;
    let r = post(&gw, "/orders", json, good).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(up.last().body_len, good.len(), "forwarded whole");

    for (body, pointer, says) in [
        (r#"{"name": "tea"}"#, "", "qty"),
        (r#"{"name": "tea", "qty": 0}"#, "/qty", "minimum"),
        (
            r#"{"name": "tea", "qty": 1, "items": [{"sku": "a"}, {"sku": 5}]}"#,
            "/items/1/sku",
            "string",
        ),
        (r#"{"name": "tea", "qty": 1, "extra": true}"#, "", "extra"),
        (r#"{"name": "tea", "qty": "#, "", "not valid JSON"),
    ] {
        let before = up.count();
        let r = post(&gw, "/orders", json, body).await;
        let p = r.problem(400, "validation-failed");
        assert_eq!(p["pointer"], pointer, "{body}: {p}");
        assert!(p["detail"].as_str().unwrap().contains(says), "{body}: {p}");
        assert_eq!(up.count(), before, "an invalid body never reaches the upstream");
    }
    // Not JSON by its label, or no body where one is needed.
    post(&gw, "/orders", Some("text/plain"), good)
        .await
        .problem(400, "validation-failed");
    post(&gw, "/orders", None, good)
        .await
        .problem(400, "validation-failed");
    post(&gw, "/orders", json, "")
        .await
        .problem(400, "validation-failed");
    // A GET has nothing to check.
    assert_eq!(get(&gw.url("/orders")).await.status, 200);
    // Over the route's body limit: 413 before any parsing.
    let big = format!(r#"{{"name": "{}", "qty": 1}}"#, "x".repeat(2000));
    post(&gw, "/orders", json, &big)
        .await
        .problem(413, "payload-too-large");

    // A schema from a file, and the route's own media type.
    assert_eq!(
        post(&gw, "/file", Some("application/vnd.order+json"), r#"{"id": 1}"#)
            .await
            .status,
        200
    );
    post(&gw, "/file", Some("application/json"), r#"{"id": 1}"#)
        .await
        .problem(400, "validation-failed");
    let p = post(&gw, "/file", Some("application/vnd.order+json"), "{}")
        .await
        .problem(400, "validation-failed");
    assert!(p["detail"].as_str().unwrap().contains("id"), "{p}");
}

#[test]
fn schema_errors_are_named() {
    let yaml = "version: 1\nroutes:\n  - name: a\n    match: {paths: [/a]}\n    respond: {status: 200}\n    plugins:\n      request_validation: {json_schema: {type: 12}}\n  - name: b\n    match: {paths: [/b]}\n    respond: {status: 200}\n    plugins:\n      request_validation: {json_schema: /nonexistent/schema.json}\n";
    fails_with(
        "validate",
        yaml,
        &[
            "routes[0].plugins.request_validation.json_schema: not a valid JSON Schema",
            "routes[1].plugins.request_validation.json_schema: cannot read /nonexistent/schema.json",
        ],
    );
}
