//! `aggregate` routes (SPEC sections 4 and 8) through the real binary,
//! against three real backends: calls made at once, the auth context
//! forwarded, optional calls' fallbacks and `_errors`, required calls
//! failing the request, template values that cannot rewrite the path.

mod support;

use std::time::{Duration, Instant};

use http_body_util::Full;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use support::*;

const SECRET: &str = "aggregate-test-secret";

fn token(sub: &str) -> String {
    let claims = json!({"sub": sub, "exp": 4_102_444_800u64, "tier": 3});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

struct Backends {
    users: Upstream,
    orders: Upstream,
    recs: Upstream,
}

async fn backends() -> Backends {
    Backends {
        users: Upstream::start("users").await,
        orders: Upstream::start("orders").await,
        recs: Upstream::start("recs").await,
    }
}

fn upstreams(b: &Backends, extra: &str) -> String {
    format!(
        "{}{}{}{extra}",
        upstream("users", &b.users),
        upstream("orders", &b.orders),
        upstream("recs", &b.recs)
    )
}

fn jwt_plugin() -> String {
    format!("      jwt: {{keys: [{{kid: k, alg: HS256, secret: {SECRET}}}], algorithms: [HS256]}}\n")
}

async fn call(gw: &Gateway, path: &str, bearer: Option<&str>) -> Resp {
    let mut b = req("GET", &gw.url(path));
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send(&client_h1(), b.body(Full::default()).unwrap()).await
}

#[tokio::test]
async fn one_answer_from_three_services_with_the_auth_context() {
    let b = backends().await;
    let routes = format!(
        "  - name: home\n    match: {{paths: [\"= /api/home\"], methods: [GET]}}\n    plugins:\n{}    aggregate:\n      timeout: 2s\n      calls:\n\
         \x20       user: {{upstream: users, path: \"/users/{{jwt.sub}}\", required: true}}\n\
         \x20       orders: {{upstream: orders, path: \"/orders?user={{jwt.sub}}&limit=5\"}}\n\
         \x20       recs: {{upstream: recs, path: \"/recs/{{jwt.sub}}\", fallback: []}}\n",
        jwt_plugin()
    );
    let gw = Gateway::start(&config(&upstreams(&b, ""), &routes, ""));
    let t = token("ann");

    let r = call(&gw, "/api/home", Some(&t)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), "application/json");
    let v = r.json();
    assert_eq!(v["user"]["upstream"], "users");
    assert_eq!(v["user"]["uri"], "/users/ann");
    assert_eq!(v["orders"]["uri"], "/orders?user=ann&limit=5");
    assert_eq!(v["recs"]["uri"], "/recs/ann");
    assert!(v.get("_errors").is_none(), "{v}");
    // Each call carries the client's credential and this request's id.
    for name in ["user", "orders", "recs"] {
        assert_eq!(v[name]["method"], "GET");
        assert_eq!(v[name]["headers"]["authorization"][0], format!("Bearer {t}"));
        assert_eq!(v[name]["headers"]["x-request-id"][0], r.header("x-request-id"));
        assert_eq!(v[name]["headers"]["accept"][0], "application/json");
        // HTTP/1.1 upstreams need a Host: the client's, as when proxying.
        assert_eq!(v[name]["headers"]["host"][0], gw.addr().to_string());
    }

    // The route's auth applies: no token, no calls.
    call(&gw, "/api/home", None).await.problem(401, "unauthorized");
    assert_eq!(b.users.count(), 1);
}

#[tokio::test]
async fn calls_run_at_once() {
    let b = backends().await;
    let routes = "  - name: slow\n    match: {paths: [\"= /slow\"]}\n    aggregate:\n      timeout: 5s\n      calls:\n\
         \x20       a: {upstream: users, path: \"/delay/400?json\"}\n\
         \x20       b: {upstream: orders, path: \"/delay/400?json\"}\n\
         \x20       c: {upstream: recs, path: \"/delay/400?json\"}\n";
    let gw = Gateway::start(&config(&upstreams(&b, ""), routes, ""));
    call(&gw, "/slow", None).await; // connections warmed
    let start = Instant::now();
    let r = call(&gw, "/slow", None).await;
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["c"]["upstream"], "recs");
    // One after the other would take 1.2 s.
    assert!(took < Duration::from_millis(800), "took {took:?}");
}

#[tokio::test]
async fn failed_calls_take_their_fallback_or_fail_the_request() {
    let b = backends().await;
    let breaker = "  - name: broken\n    targets: [{url: \"http://127.0.0.1:1\"}]\n    circuit_breaker: {failure_rate: 1.0, min_requests: 2, window: 10s, open_for: 30s, half_open_requests: 1}\n\
                   \x20 - name: down\n    targets: [{url: \"http://127.0.0.1:1\"}]\n";
    let routes = "  - name: mixed\n    match: {paths: [\"= /mixed\"]}\n    aggregate:\n      timeout: 2s\n      calls:\n\
         \x20       ok: {upstream: users, path: \"/fine\", required: true}\n\
         \x20       unavailable: {upstream: orders, path: \"/status/503\", fallback: {items: []}}\n\
         \x20       refused: {upstream: down, path: \"/x\"}\n\
         \x20       slow: {upstream: recs, path: \"/delay/2000?json\", timeout: 150ms, fallback: 0}\n\
         \x20 - name: required-fails\n    match: {paths: [\"= /required-fails\"]}\n    aggregate:\n      timeout: 2s\n      calls:\n\
         \x20       must: {upstream: orders, path: \"/status/500\", required: true}\n\
         \x20       other: {upstream: users, path: \"/fine\"}\n\
         \x20 - name: required-slow\n    match: {paths: [\"= /required-slow\"]}\n    aggregate:\n      timeout: 200ms\n      calls:\n\
         \x20       must: {upstream: recs, path: \"/delay/2000?json\", required: true}\n\
         \x20 - name: breaker\n    match: {paths: [\"= /breaker\"]}\n    aggregate:\n      timeout: 2s\n      calls:\n\
         \x20       gone: {upstream: broken, path: \"/x\"}\n\
         \x20       ok: {upstream: users, path: \"/fine\"}\n";
    let gw = Gateway::start(&config(&upstreams(&b, breaker), routes, ""));

    let r = call(&gw, "/mixed", None).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["ok"]["uri"], "/fine");
    assert_eq!(v["unavailable"], json!({"items": []}));
    assert_eq!(v["refused"], json!(null));
    assert_eq!(v["slow"], json!(0));
    assert_eq!(
        v["_errors"],
        json!({"unavailable": "status 503", "refused": "connect", "slow": "timeout"})
    );

    let p = call(&gw, "/required-fails", None)
        .await
        .problem(502, "bad-gateway");
    assert!(p["detail"].as_str().unwrap().contains("`must`"), "{p}");
    assert!(p["detail"].as_str().unwrap().contains("status 500"), "{p}");
    call(&gw, "/required-slow", None)
        .await
        .problem(504, "gateway-timeout");

    // Trip the breaker, then an open circuit fails the call at once.
    for _ in 0..3 {
        call(&gw, "/breaker", None).await;
    }
    let start = Instant::now();
    let r = call(&gw, "/breaker", None).await;
    assert_eq!(r.json()["_errors"], json!({"gone": "circuit_open"}));
    assert!(start.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn client_values_are_encoded_into_their_place() {
    let b = backends().await;
    let routes = "  - name: search\n    match: {paths: [\"/search/{term}\"]}\n    aggregate:\n      timeout: 2s\n      calls:\n\
         \x20       by_path: {upstream: users, path: \"/find/{path.term}\"}\n\
         \x20       by_query: {upstream: orders, path: \"/find?q={query.q}&safe=1\"}\n\
         \x20       by_header: {upstream: recs, path: \"/find/{header.x-tenant}/items\"}\n\
         \x20       no_jwt: {upstream: recs, path: \"/find/{jwt.sub}\"}\n";
    let gw = Gateway::start(&config(&upstreams(&b, ""), routes, ""));
    let r = send(
        &client_h1(),
        req("GET", &gw.url("/search/a.b?q=..%2Fadmin%3Fx%3D1%26safe%3D0"))
            .header("x-tenant", "../../etc")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["by_path"]["uri"], "/find/a%2Eb");
    assert_eq!(
        v["by_query"]["uri"],
        "/find?q=%2E%2E%2Fadmin%3Fx%3D1%26safe%3D0&safe=1"
    );
    assert_eq!(v["by_header"]["uri"], "/find/%2E%2E%2F%2E%2E%2Fetc/items");
    // No JWT on this route: the call is not made, and says why.
    assert_eq!(v["no_jwt"], json!(null));
    assert_eq!(v["_errors"]["no_jwt"], "`{jwt.sub}` has no value");
    assert_eq!(b.recs.count(), 1);
}

#[test]
fn bad_aggregate_configs_name_the_field() {
    fails_with(
        "validate",
        "version: 1\nupstreams:\n  - name: users\n    targets: [{url: \"http://127.0.0.1:9\"}]\nroutes:\n  - name: a\n    match: {paths: [\"/a/{id}\"]}\n    aggregate:\n      timeout: 1s\n      calls:\n        x: {upstream: user, path: \"/u\"}\n",
        &["routes[0].aggregate.calls.x.upstream: unknown upstream `user` (did you mean `users`?)"],
    );
    fails_with(
        "validate",
        "version: 1\nupstreams:\n  - name: users\n    targets: [{url: \"http://127.0.0.1:9\"}]\nroutes:\n  - name: a\n    match: {paths: [\"/a/{id}\"]}\n    aggregate:\n      timeout: 1s\n      calls:\n        x: {upstream: users, path: \"/u/{path.nope}\"}\n        y: {upstream: users, path: \"/u/{cookie.c}\"}\n        _z: {upstream: users, path: \"/u\"}\n",
        &[
            "routes[0].aggregate.calls.x.path: `{path.nope}` is not captured by the route's paths",
            "routes[0].aggregate.calls.y.path: unknown variable `{cookie.c}`",
            "routes[0].aggregate.calls._z: call names starting with `_` are reserved",
        ],
    );
}
