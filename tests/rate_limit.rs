//! `rate_limit` with the local store (SPEC sections 3 and 8) through the
//! real binary: exact counts at the burst, headers on every answer, keys,
//! several policies, consumer overrides, leaky-bucket shaping.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use support::*;

async fn hit(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = req("GET", &gw.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&client_h1(), b.body(Full::<Bytes>::default()).unwrap()).await
}

/// GETs every URL at once; each answer's status and when it came.
async fn at_once(urls: &[String]) -> Vec<(u16, Duration)> {
    let started = Instant::now();
    let calls: Vec<_> = urls
        .iter()
        .cloned()
        .map(|url| {
            tokio::spawn(async move {
                let r = send(&client_h1(), req("GET", &url).body(Full::default()).unwrap()).await;
                (r.status, started.elapsed())
            })
        })
        .collect();
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap());
    }
    results
}

fn limits(r: &Resp) -> (String, String, String) {
    (
        r.header("ratelimit-limit").to_string(),
        r.header("ratelimit-remaining").to_string(),
        r.header("ratelimit-reset").to_string(),
    )
}

#[tokio::test]
async fn token_bucket_burst_is_exact_and_headers_are_on_every_answer() {
    let up = Upstream::start("u").await;
    let yaml = format!(
        "{}consumers:\n  - name: gold\n    api_keys: [{{key: gold-key}}]\n    plugins:\n      rate_limit: {{rate: 1/m, burst: 5, key: [consumer]}}\n",
        config(
            &upstream("u", &up),
            "  - name: api\n    match: {paths: [/api]}\n    upstream: u\n    plugins:\n      rate_limit: {rate: 1/m, burst: 3}\n\
             \x20 - name: users\n    match: {paths: [/users]}\n    upstream: u\n    plugins:\n      rate_limit: {algorithm: fixed_window, limit: 2, window: 1h, key: [\"header:X-User\"]}\n\
             \x20 - name: keyed\n    match: {paths: [/keyed]}\n    upstream: u\n    plugins:\n      api_key: {}\n      rate_limit: {rate: 1/m, burst: 1, key: [consumer]}\n",
            "admin: {address: \"127.0.0.1:0\", token: t}\n",
        )
    );
    let gw = Gateway::start(&yaml);

    for remaining in ["2", "1", "0"] {
        let r = hit(&gw, "/api", &[]).await;
        assert_eq!(r.status, 200);
        let (limit, rem, reset) = limits(&r);
        assert_eq!((limit.as_str(), rem.as_str()), ("3", remaining));
        assert!(reset.parse::<u64>().unwrap() >= 1);
    }
    let r = hit(&gw, "/api", &[]).await;
    r.problem(429, "rate-limited");
    assert_eq!(limits(&r).1, "0");
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(up.count(), 3, "refused requests never reach the upstream");

    // A reload that leaves the policy as it was keeps its counts.
    let put = send(
        &client_h1(),
        req("PUT", &gw.admin_url("/routes/extra"))
            .header("authorization", "Bearer t")
            .body(Full::new(Bytes::from(
                r#"{"match": {"paths": ["/extra"]}, "respond": {"status": 200}}"#,
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(put.status, 201, "{:?}", put.body);
    assert_eq!(hit(&gw, "/extra", &[]).await.status, 200);
    hit(&gw, "/api", &[]).await.problem(429, "rate-limited");

    // A client outside trusted_proxies cannot pose as another IP for a fresh bucket.
    hit(&gw, "/api", &[("x-forwarded-for", "203.0.113.9")])
        .await
        .problem(429, "rate-limited");

    // Keyed by a header: each user has their own window.
    for user in ["ann", "bob"] {
        for _ in 0..2 {
            assert_eq!(hit(&gw, "/users", &[("x-user", user)]).await.status, 200);
        }
        hit(&gw, "/users", &[("x-user", user)])
            .await
            .problem(429, "rate-limited");
    }

    // A consumer's own policy replaces the route's: burst 5 instead of 1.
    for _ in 0..5 {
        assert_eq!(hit(&gw, "/keyed", &[("x-api-key", "gold-key")]).await.status, 200);
    }
    hit(&gw, "/keyed", &[("x-api-key", "gold-key")])
        .await
        .problem(429, "rate-limited");
    // Unauthenticated requests are refused before counting.
    hit(&gw, "/keyed", &[]).await.problem(401, "unauthorized");
    // The consumer's counts survive a reload that leaves its policy as it was.
    let put = gw
        .admin_send(
            "PUT",
            "/routes/extra2",
            "t",
            r#"{"match": {"paths": ["/extra2"]}, "respond": {"status": 200}}"#,
        )
        .await;
    assert_eq!(put.status, 201, "{:?}", put.body);
    hit(&gw, "/keyed", &[("x-api-key", "gold-key")])
        .await
        .problem(429, "rate-limited");

    let m = gw.admin_metrics("t").await;
    assert!(
        m.contains(r#"portcullis_rate_limited_total{route="api"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"portcullis_rate_limited_total{route="users"} 2"#),
        "{m}"
    );
}

#[tokio::test]
async fn several_policies_and_the_closest_one_in_headers() {
    let up = Upstream::start("u").await;
    let yaml = config(
        &upstream("u", &up),
        "  - name: api\n    match: {paths: [/api]}\n    upstream: u\n    plugins:\n      rate_limit:\n        - {algorithm: sliding_window_log, limit: 10, window: 1h}\n        - {algorithm: sliding_window_counter, limit: 3, window: 1h, key: [global]}\n",
        "",
    );
    let gw = Gateway::start(&yaml);
    let r = hit(&gw, "/api", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(limits(&r).0, "3", "the policy closest to its limit");
    assert_eq!(limits(&r).1, "2");
    assert_eq!(hit(&gw, "/api", &[]).await.status, 200);
    assert_eq!(hit(&gw, "/api", &[]).await.status, 200);
    let r = hit(&gw, "/api", &[]).await;
    r.problem(429, "rate-limited");
    assert_eq!(limits(&r).0, "3");
}

#[tokio::test]
async fn leaky_bucket_delays_then_refuses() {
    let up = Upstream::start("u").await;
    let yaml = config(
        &upstream("u", &up),
        "  - name: api\n    match: {paths: [/api]}\n    upstream: u\n    plugins:\n      rate_limit: {algorithm: leaky_bucket, rate: 10/s, burst: 2, key: [global]}\n",
        "",
    );
    let gw = Gateway::start(&yaml);
    let results = at_once(&vec![gw.url("/api"); 4]).await;
    let ok: Vec<Duration> = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, d)| *d)
        .collect();
    let refused = results.iter().filter(|(s, _)| *s == 429).count();
    // One now and two queued (released 100 and 200 ms later); the fourth refused.
    assert_eq!((ok.len(), refused), (3, 1), "{results:?}");
    let slowest = ok.iter().max().unwrap();
    assert!(*slowest >= Duration::from_millis(180), "{results:?}");
}

#[test]
fn policy_errors_are_named() {
    let yaml = "version: 1\nroutes:\n  - name: a\n    match: {paths: [/a]}\n    respond: {status: 200}\n    plugins:\n      rate_limit:\n        - {algorithm: token_bucket, burst: 3}\n        - {algorithm: fixed_window, limit: 3, window: 1m, key: [\"cookie:x\"]}\n  - name: b\n    match: {paths: [/b]}\n    respond: {status: 200}\n    plugins:\n      rate_limit: {rate: 5/s, store: redis}\n  - name: c\n    match: {paths: [/c]}\n    respond: {status: 200}\n    plugins:\n      rate_limit: {rate: 5/s, store: hybrid}\n";
    let err = fails("validate", yaml);
    assert!(
        err.contains("routes[0].plugins.rate_limit[0].rate: a bucket needs `rate`"),
        "{err}"
    );
    assert!(
        err.contains(
            "routes[1].plugins.rate_limit.store: `store: redis` needs the top-level `redis` section"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "routes[2].plugins.rate_limit.store: `store: hybrid` needs the top-level `redis` section"
        ),
        "{err}"
    );
}

fn redis_config(up: &Upstream, redis: &RedisServer) -> String {
    let route = |name: &str, policy: &str| {
        format!(
            "  - name: {name}\n    match: {{paths: [/{name}]}}\n    upstream: u\n    plugins:\n      rate_limit: {{{policy}, key: [global], store: redis}}\n"
        )
    };
    let routes = [
        route("tb", "rate: 1/m, burst: 5"),
        route("fw", "algorithm: fixed_window, limit: 3, window: 1h"),
        route("sl", "algorithm: sliding_window_log, limit: 3, window: 1h"),
        route("sc", "algorithm: sliding_window_counter, limit: 3, window: 1h"),
        route("lb", "algorithm: leaky_bucket, rate: 5/s, burst: 1"),
        route("open", "rate: 1/m, burst: 100, on_store_error: allow"),
        route("closed", "rate: 1/m, burst: 100, on_store_error: deny"),
    ]
    .concat();
    format!(
        "{}redis: {{url: \"{}\", timeout: 200ms}}\n",
        config(
            &upstream("u", up),
            &routes,
            "admin: {address: \"127.0.0.1:0\", token: t}\n"
        ),
        redis.url()
    )
}

#[tokio::test]
async fn redis_store_one_limit_across_two_gateways() {
    let up = Upstream::start("u").await;
    let mut redis = RedisServer::start();
    let yaml = redis_config(&up, &redis);
    let (gw1, gw2) = (Gateway::start(&yaml), Gateway::start(&yaml));

    // Each algorithm: the limit holds across both nodes, exactly.
    for (path, limit) in [("/tb", 5), ("/fw", 3), ("/sl", 3), ("/sc", 3)] {
        let mut passed = 0;
        for i in 0..10 {
            let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
            let r = hit(gw, path, &[]).await;
            match r.status {
                200 => passed += 1,
                429 => {
                    r.problem(429, "rate-limited");
                    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
                }
                s => panic!("{path}: {s}"),
            }
        }
        assert_eq!(passed, limit, "{path}");
    }
    let r = hit(&gw1, "/fw", &[]).await;
    assert_eq!(
        limits(&r),
        ("3".into(), "0".into(), r.header("ratelimit-reset").into())
    );

    // Leaky bucket: one goes, one waits in the queue, the rest are refused.
    let results = at_once(&[gw1.url("/lb"), gw2.url("/lb"), gw1.url("/lb"), gw2.url("/lb")]).await;
    assert_eq!(
        results.iter().filter(|(s, _)| *s == 200).count(),
        2,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .any(|(s, d)| *s == 200 && *d >= Duration::from_millis(150)),
        "{results:?}"
    );

    // Redis down: `allow` lets requests through, `deny` answers 503.
    redis.stop();
    let r = hit(&gw1, "/open", &[]).await;
    assert_eq!(r.status, 200);
    hit(&gw1, "/closed", &[])
        .await
        .problem(503, "service-unavailable");
    let m = gw1.admin_metrics("t").await;
    assert!(m.contains("portcullis_rate_limit_store_errors_total 2"), "{m}");
    eventually("the store failure is logged", || async {
        gw1.logged("rate limit store failed")
    })
    .await;

    // Back: decisions are made again (the old counts are gone with the data).
    redis.resume();
    let mut status = 0;
    for _ in 0..50 {
        status = hit(&gw1, "/closed", &[]).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(hit(&gw1, "/closed", &[]).await.header("ratelimit-limit"), "100");
}

#[tokio::test]
async fn hybrid_store_overshoots_by_at_most_one_sync_of_the_other_node() {
    let up = Upstream::start("u").await;
    let redis = RedisServer::start();
    let yaml = format!(
        "{}redis: {{url: \"{}\", timeout: 200ms}}\n",
        config(
            &upstream("u", &up),
            "  - name: api\n    match: {paths: [/api]}\n    upstream: u\n    plugins:\n      rate_limit: {algorithm: fixed_window, limit: 20, window: 1h, key: [global], store: hybrid, sync_interval: 100ms}\n",
            "",
        ),
        redis.url()
    );
    let (gw1, gw2) = (Gateway::start(&yaml), Gateway::start(&yaml));
    // 60 requests, alternating, one every 20 ms: each node sees 25 per second,
    // 2.5 per sync interval. Alone, each node would let 20 through (40 in all).
    let mut passed = 0;
    for i in 0..60 {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        match hit(gw, "/api", &[]).await.status {
            200 => passed += 1,
            429 => {}
            s => panic!("{s}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Documented bound: the limit plus what the other node lets through
    // before it sees the global count (within two sync intervals: ~5 here).
    eprintln!("hybrid, two nodes: {passed} of 60 let through (limit 20)");
    assert!((20..=26).contains(&passed), "{passed}");
    // Redis holds the global count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let keys = redis.cmd(&["KEYS", "rl:*"]);
    let redis::Value::Array(keys) = keys else {
        panic!("{keys:?}")
    };
    assert_eq!(keys.len(), 1);
    let redis::Value::BulkString(key) = &keys[0] else {
        panic!()
    };
    let count = redis.cmd(&["GET", std::str::from_utf8(key).unwrap()]);
    let redis::Value::BulkString(count) = count else {
        panic!("{count:?}")
    };
    assert_eq!(String::from_utf8_lossy(&count), passed.to_string());
}

#[tokio::test]
async fn leaky_bucket_waits_no_longer_than_the_route_timeout() {
    let up = Upstream::start("u").await;
    let yaml = config(
        &upstream("u", &up),
        "  - name: api\n    match: {paths: [/api]}\n    upstream: u\n    timeout: 150ms\n    plugins:\n      rate_limit: {algorithm: leaky_bucket, rate: 10/s, burst: 5, key: [global]}\n",
        "",
    );
    let gw = Gateway::start(&yaml);
    let results = at_once(&vec![gw.url("/api"); 4]).await;
    // Now, and 100 ms later, fit in 150 ms; 200 and 300 ms do not: 429 at once.
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 2, "{results:?}");
    for (status, took) in &results {
        assert!(*status == 200 || *status == 429, "{results:?}");
        assert!(*took < Duration::from_millis(140), "{results:?}");
    }
}

#[tokio::test]
async fn redis_cluster_store_one_limit_per_key_across_two_gateways() {
    let up = Upstream::start("u").await;
    let cluster = RedisCluster::start(3);
    let nodes = cluster
        .node_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let route = |name: &str, policy: &str| {
        format!(
            "  - name: {name}\n    match: {{paths: [/{name}]}}\n    upstream: u\n    plugins:\n      rate_limit: {{{policy}, key: [\"header:X-Tenant\"], store: redis, on_store_error: deny}}\n"
        )
    };
    let routes = [
        route("tb", "rate: 1/m, burst: 3"),
        route("fw", "algorithm: fixed_window, limit: 3, window: 1h"),
        route("sc", "algorithm: sliding_window_counter, limit: 3, window: 1h"),
    ]
    .concat();
    let yaml = format!(
        "{}redis: {{cluster: {{nodes: [{nodes}]}}, timeout: 500ms}}\n",
        config(&upstream("u", &up), &routes, "")
    );
    let (gw1, gw2) = (Gateway::start(&yaml), Gateway::start(&yaml));

    // Each tenant's counts live in its own slot, on whichever node holds it:
    // the limit holds per tenant across both gateways, exactly.
    for path in ["/tb", "/fw", "/sc"] {
        for tenant in 0..6 {
            let tenant = format!("tenant-{tenant}");
            let mut passed = 0;
            for i in 0..6 {
                let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
                match hit(gw, path, &[("x-tenant", &tenant)]).await.status {
                    200 => passed += 1,
                    429 => {}
                    s => panic!("{path} {tenant}: {s}"),
                }
            }
            assert_eq!(passed, 3, "{path} {tenant}");
        }
    }
    // The keys are spread over the cluster's nodes.
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| !matches!(n.cmd(&["DBSIZE"]), redis::Value::Int(0)))
        .count();
    assert!(holding >= 2, "keys on {holding} node(s)");
}

#[test]
fn a_consumer_policy_may_use_redis() {
    let yaml = "version: 1\nredis: {url: \"redis://127.0.0.1:1\"}\nconsumers:\n  - name: c\n    api_keys: [{key: k}]\n    plugins:\n      rate_limit: {rate: 5/s, key: [consumer], store: redis}\nroutes:\n  - name: a\n    match: {paths: [/a]}\n    respond: {status: 200}\n";
    let out = std::process::Command::new(bin())
        .args(["validate", "-c"])
        .arg(write_config(yaml))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn redis_section_errors_are_named() {
    let base = "version: 1\nroutes:\n  - name: a\n    match: {paths: [/a]}\n    respond: {status: 200}\n";
    for (redis, expected) in [
        (
            "redis: {url: \"redis://127.0.0.1:1\", cluster: {nodes: [\"redis://127.0.0.1:2\"]}}\n",
            "redis.cluster: give either `url` or `cluster`, not both",
        ),
        (
            "redis: {cluster: {nodes: []}}\n",
            "redis.cluster.nodes: at least one node is needed",
        ),
        (
            "redis: {cluster: {nodes: [\"redis://127.0.0.1:2\", \"127.0.0.1:3\"]}}\n",
            "redis.cluster.nodes[1]: not a Redis URL (redis://host:port)",
        ),
    ] {
        let err = fails("validate", &format!("{base}{redis}"));
        assert!(err.contains(expected), "{expected} in\n{err}");
    }
}
