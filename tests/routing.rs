//! Routing through the real gateway (SPEC "Path rules"): hosts, prefixes,
//! exact paths, templates, regexes, methods, headers, precedence.

mod support;

use http_body_util::Full;
use support::*;

fn respond(name: &str, matcher: &str) -> String {
    format!("  - name: {name}\n    match: {matcher}\n    respond: {{body: {name}}}\n")
}

async fn hit(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Option<String>) {
    let mut b = req(method, &gw.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let r = send(&client_h1(), b.body(Full::default()).unwrap()).await;
    let allow = r.headers.get("allow").map(|v| v.to_str().unwrap().to_string());
    (r.status, String::from_utf8_lossy(&r.body).into_owned(), allow)
}

#[tokio::test]
async fn precedence_methods_hosts_and_headers() {
    let routes = [
        respond("root", r#"{paths: ["/"]}"#),
        respond("regex", r#"{paths: ["~ ^/api/v[0-9]+/items$"]}"#),
        respond("api", r#"{paths: ["/api"]}"#),
        respond("users", r#"{paths: ["/api/v1/users"], methods: [GET, POST]}"#),
        respond("user", r#"{paths: ["/api/v1/users/{id}"], methods: [GET]}"#),
        respond("me", r#"{paths: ["= /api/v1/users/me"]}"#),
        respond(
            "v2",
            r#"{paths: ["/api/v1/users"], methods: [GET], headers: {x-api-version: "2"}}"#,
        ),
        respond(
            "tenant",
            r#"{paths: ["/api/v1/users"], headers: {x-tenant: "~^acme-[0-9]+$"}}
    priority: 5"#,
        ),
        respond("host", r#"{paths: ["/api"], hosts: ["*.example.com"]}"#),
        respond(
            "host-exact",
            r#"{paths: ["/api"], hosts: ["api.example.com"]}
    priority: 1"#,
        ),
        respond("only", r#"{paths: ["/only"], methods: [PUT, DELETE]}"#),
    ]
    .concat();
    let gw = Gateway::start(&config("  []", &routes, ""));
    assert_eq!(hit(&gw, "GET", "/api/v1/users/me", &[]).await.1, "me");
    assert_eq!(hit(&gw, "GET", "/api/v1/users/7", &[]).await.1, "user");
    assert_eq!(hit(&gw, "POST", "/api/v1/users", &[]).await.1, "users");
    assert_eq!(hit(&gw, "GET", "/api/v1/users/7/orders", &[]).await.1, "users");
    // A more specific path whose method does not match falls back to a less specific route.
    assert_eq!(hit(&gw, "DELETE", "/api/v1/users/7", &[]).await.1, "api");
    assert_eq!(
        hit(&gw, "GET", "/api/v2/items", &[]).await.1,
        "api",
        "a literal prefix beats a regex"
    );
    assert_eq!(hit(&gw, "GET", "/api", &[]).await.1, "api");
    assert_eq!(hit(&gw, "GET", "/apix", &[]).await.1, "root");
    assert_eq!(
        hit(&gw, "GET", "/api/v1/users", &[("x-api-version", "2")])
            .await
            .1,
        "v2"
    );
    assert_eq!(
        hit(&gw, "GET", "/api/v1/users", &[("x-tenant", "acme-7")])
            .await
            .1,
        "tenant"
    );
    assert_eq!(
        hit(&gw, "GET", "/api/v1/users", &[("x-tenant", "other")]).await.1,
        "users"
    );
    assert_eq!(
        hit(&gw, "GET", "/api/x", &[("host", "shop.example.com")]).await.1,
        "host"
    );
    assert_eq!(
        hit(&gw, "GET", "/api/x", &[("host", "API.example.com:8080")])
            .await
            .1,
        "host-exact"
    );
    assert_eq!(
        hit(&gw, "GET", "/api/x", &[("host", "example.com")]).await.1,
        "api"
    );
    // With a root route, a wrong method on /only falls through to it.
    assert_eq!(hit(&gw, "GET", "/only", &[]).await.1, "root");
}

#[tokio::test]
async fn not_found_and_regex_only() {
    let routes = [
        respond("re", r#"{paths: ["~ ^/v[0-9]+/items$"]}"#),
        respond("exact", r#"{paths: ["= /health"]}"#),
        respond("only", r#"{paths: ["/only"], methods: [PUT, DELETE]}"#),
    ]
    .concat();
    let gw = Gateway::start(&config("  []", &routes, ""));
    assert_eq!(hit(&gw, "GET", "/v12/items", &[]).await.1, "re");
    assert_eq!(hit(&gw, "GET", "/health", &[]).await.1, "exact");
    get(&gw.url("/health/x")).await.problem(404, "route-not-found");
    get(&gw.url("/v1/items/x")).await.problem(404, "route-not-found");
    // Paths are case-sensitive.
    get(&gw.url("/HEALTH")).await.problem(404, "route-not-found");
    // Normalization happens before matching.
    assert_eq!(hit(&gw, "GET", "/x/../health", &[]).await.1, "exact");
    assert_eq!(hit(&gw, "GET", "//health", &[]).await.1, "exact");
    assert_eq!(hit(&gw, "GET", "/%68ealth", &[]).await.1, "exact");
    // 405 with Allow when only the method is wrong and nothing else matches.
    let r = get(&gw.url("/only/x")).await;
    r.problem(405, "method-not-allowed");
    assert_eq!(r.header("allow"), "PUT, DELETE");
    assert_eq!(hit(&gw, "DELETE", "/only", &[]).await.1, "only");
}

#[tokio::test]
async fn ten_thousand_routes_load_and_route() {
    let mut routes = String::new();
    for i in 0..10_000 {
        routes.push_str(&format!(
            "  - name: r{i}\n    match: {{paths: [\"/svc{i}/items/{{id}}\"]}}\n    respond: {{body: r{i}}}\n"
        ));
    }
    let gw = Gateway::start(&config("  []", &routes, ""));
    assert_eq!(hit(&gw, "GET", "/svc9999/items/1", &[]).await.1, "r9999");
    assert_eq!(hit(&gw, "GET", "/svc0/items/1", &[]).await.1, "r0");
    get(&gw.url("/svc10000/items/1"))
        .await
        .problem(404, "route-not-found");
}
