//! `request_transform.json` and `response_transform.json` (SPEC sections 3
//! and 8) through the real binary: JSON bodies edited by JSON pointer both
//! ways, other bodies untouched, lengths kept right.

mod support;

use http_body_util::Full;
use support::*;

/// Answers with the request body as it arrived, labelled as the request was.
async fn echo() -> Service {
    Service::start(|parts, body| {
        let mut r = http::Response::new(Full::new(body));
        if let Some(t) = parts.headers.get("content-type") {
            r.headers_mut().insert("content-type", t.clone());
        }
        r
    })
    .await
}

async fn post(gw: &Gateway, path: &str, content_type: &str, body: &str) -> Resp {
    post_as(&gw.url(path), Some(content_type), body).await
}

#[tokio::test]
async fn json_bodies_are_edited_both_ways() {
    let up = echo().await;
    let yaml = config(
        &format!("  - name: u\n    targets: [{{url: \"{}\"}}]\n", up.url("")),
        "  - name: req\n    match: {paths: [/req]}\n    upstream: u\n    plugins:\n      request_transform: {json: {remove: [/password], rename: {/user: /login}, add: {/meta/source: gateway}}}\n\
         \x20 - name: resp\n    match: {paths: [/resp]}\n    upstream: u\n    plugins:\n      response_transform: {json: {allow: [/id, /name, /tags]}}\n",
        "",
    );
    let gw = Gateway::start(&yaml);

    // The upstream got the edited request (and echoed it back).
    let r = post(
        &gw,
        "/req",
        "application/json",
        r#"{"user": "ann", "password": "hunter2", "n": 1}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"login": "ann", "n": 1, "meta": {"source": "gateway"}})
    );
    assert_eq!(r.header("content-length"), r.body.len().to_string());

    // The client gets the allow-listed answer only.
    let r = post(
        &gw,
        "/resp",
        "application/json; charset=utf-8",
        r#"{"id": 7, "name": "tea", "cost_price": 1.2, "tags": ["a"]}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"id": 7, "name": "tea", "tags": ["a"]})
    );
    assert_eq!(r.header("content-length"), r.body.len().to_string());

    // Not JSON: untouched both ways.
    let r = post(&gw, "/req", "text/plain", "password=hunter2").await;
    assert_eq!(&r.body[..], b"password=hunter2");
    let r = post(&gw, "/resp", "text/plain", "cost_price=1.2").await;
    assert_eq!(&r.body[..], b"cost_price=1.2");

    // Labelled JSON but not JSON: the client's is a 400, the upstream's a 502
    // (an allow-list never lets an answer through unfiltered).
    post(&gw, "/req", "application/json", "{oops")
        .await
        .problem(400, "bad-request");
    post(&gw, "/resp", "application/json", "{oops")
        .await
        .problem(502, "bad-gateway");
}

#[test]
fn pointer_errors_are_named() {
    let yaml = "version: 1\nroutes:\n  - name: a\n    match: {paths: [/a]}\n    respond: {status: 200}\n    plugins:\n      request_transform: {json: {remove: [password]}}\n      response_transform: {json: {allow: [/ok, bad]}}\n";
    fails_with(
        "validate",
        yaml,
        &[
            "routes[0].plugins.request_transform.json.remove[0]: `password` is not a JSON pointer",
            "routes[0].plugins.response_transform.json.allow[1]: `bad` is not a JSON pointer",
        ],
    );
}
