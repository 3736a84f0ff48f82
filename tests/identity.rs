//! `phantom_token` and `hmac_auth` (SPEC sections 3, 7 and 8) through the
//! real binary, with a real `redis-server` (stopped and started again
//! mid-test), a real introspection endpoint, and two gateways sharing one
//! Redis.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use sha2::Digest;
use support::*;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The JWT an identity provider would have issued for `sub`.
fn issued_jwt(sub: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": now() + 3600}),
        &EncodingKey::from_secret(b"the-idp-secret"),
    )
    .unwrap()
}

async fn with_token(gw: &Gateway, path: &str, token: &str) -> Resp {
    send(
        &client_h1(),
        req("GET", &gw.url(path))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::default())
            .unwrap(),
    )
    .await
}

fn phantom_config(up: &Upstream, redis: &RedisServer, cache_ttl: &str) -> String {
    format!(
        "{}redis: {{url: \"{}\", timeout: 200ms}}\nconsumers:\n  - name: web\n    groups: [users]\n    jwt_subjects: [user-1]\n",
        config(
            &upstream("u", up),
            &format!(
                "  - name: api\n    match: {{paths: [/api]}}\n    upstream: u\n    plugins:\n      phantom_token: {{source: redis, cache_ttl: {cache_ttl}}}\n\
                 \x20 - name: members\n    match: {{paths: [/members]}}\n    upstream: u\n    plugins:\n      phantom_token: {{source: redis, cache_ttl: {cache_ttl}}}\n      acl: {{allow: [users]}}\n"
            ),
            "admin: {address: \"127.0.0.1:0\", token: t}\n",
        ),
        redis.url()
    )
}

#[tokio::test]
async fn phantom_tokens_from_redis() {
    let up = Upstream::start("u").await;
    let mut redis = RedisServer::start();
    let gw = Gateway::start(&phantom_config(&up, &redis, "1s"));
    let jwt = issued_jwt("user-1");
    redis.cmd(&["SET", "phantom:opaque-1", &jwt, "EX", "60"]);

    // The upstream gets the JWT; the client's opaque token stays at the gateway.
    let r = with_token(&gw, "/api/x", "opaque-1").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(up.last().headers["authorization"], format!("Bearer {jwt}"));
    // Its subject maps to a consumer: the ACL passes.
    assert_eq!(with_token(&gw, "/members/x", "opaque-1").await.status, 200);

    // Unknown token, no token: 401, nothing upstream.
    let before = up.count();
    let r = with_token(&gw, "/api/x", "nope").await;
    r.problem(401, "unauthorized");
    assert!(r.header("www-authenticate").contains("invalid_token"));
    let r = send(
        &client_h1(),
        req("GET", &gw.url("/api/x")).body(Full::default()).unwrap(),
    )
    .await;
    r.problem(401, "unauthorized");
    assert_eq!(up.count(), before);

    // Revocation: deleting the key takes effect within cache_ttl (1 s).
    redis.cmd(&["DEL", "phantom:opaque-1"]);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    with_token(&gw, "/api/x", "opaque-1")
        .await
        .problem(401, "unauthorized");

    // The key's TTL is the token's lifetime, even under a longer cache_ttl.
    drop(gw);
    let gw = Gateway::start(&phantom_config(&up, &redis, "30s"));
    redis.cmd(&["SET", "phantom:short", &jwt, "PX", "1200"]);
    assert_eq!(with_token(&gw, "/api/x", "short").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    with_token(&gw, "/api/x", "short")
        .await
        .problem(401, "unauthorized");

    // Cold cache: one lookup (GET + PTTL, one round trip) per token, and
    // concurrent requests for one token share it. Warm cache: no Redis at all.
    redis.cmd(&["SET", "phantom:busy", &jwt, "EX", "60"]);
    let gets = redis.calls("get");
    let mut calls = Vec::new();
    for _ in 0..20 {
        let url = gw.url("/api/x");
        calls.push(tokio::spawn(async move {
            send(
                &client_h1(),
                req("GET", &url)
                    .header("authorization", "Bearer busy")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .status
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!(redis.calls("get"), gets + 1);

    // Redis goes down: cached tokens still pass; others fail closed (503),
    // and the gateway is not ready.
    redis.cmd(&["SET", "phantom:later", &jwt, "EX", "60"]);
    redis.stop();
    assert_eq!(with_token(&gw, "/api/x", "busy").await.status, 200);
    with_token(&gw, "/api/x", "later")
        .await
        .problem(503, "service-unavailable");
    assert_eq!(get(&gw.admin_url("/readyz")).await.status, 503);

    // Redis comes back: lookups work again.
    redis.resume();
    redis.cmd(&["SET", "phantom:later", &jwt, "EX", "60"]);
    let mut status = 0;
    for _ in 0..50 {
        status = with_token(&gw, "/api/x", "later").await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(get(&gw.admin_url("/readyz")).await.status, 200);

    // Redis hangs (DEBUG SLEEP): the lookup gives up at redis.timeout (200ms), 503.
    redis.cmd(&["SET", "phantom:during-hang", &jwt, "EX", "60"]);
    let port = redis.port;
    let hang = std::thread::spawn(move || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
        let mut conn = client.get_connection().unwrap();
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("1.5")
            .query::<()>(&mut conn)
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    with_token(&gw, "/api/x", "during-hang")
        .await
        .problem(503, "service-unavailable");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    hang.join().unwrap();
}

#[tokio::test]
async fn phantom_tokens_by_introspection() {
    let up = Upstream::start("u").await;
    let idp_jwt = issued_jwt("user-1");
    let served = idp_jwt.clone();
    let idp = Service::start(move |parts, body| {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("gateway:s%26cret")
        );
        if parts.headers.get("authorization").map(|v| v.to_str().unwrap()) != Some(expected.as_str()) {
            let mut r = Response::new(Full::new(Bytes::from("{}")));
            *r.status_mut() = http::StatusCode::UNAUTHORIZED;
            return r;
        }
        assert_eq!(parts.method, "POST");
        assert!(
            parts.headers["accept"]
                .to_str()
                .unwrap()
                .contains("application/jwt")
        );
        let form = String::from_utf8(body.to_vec()).unwrap();
        let token = form
            .split('&')
            .find_map(|p| p.strip_prefix("token="))
            .unwrap()
            .to_string();
        let json = |v: Value| Response::new(Full::new(Bytes::from(v.to_string())));
        match token.as_str() {
            "as-jwt" => {
                let mut r = Response::new(Full::new(Bytes::from(served.clone())));
                r.headers_mut()
                    .insert("content-type", "application/jwt".parse().unwrap());
                r
            }
            "jwt-member" => json(json!({"active": true, "jwt": served})),
            "claims" => json(json!({"active": true, "sub": "user-9", "scope": "read", "exp": now() + 60})),
            "expired" => json(json!({"active": true, "sub": "user-9", "exp": now() - 5})),
            "broken" => {
                let mut r = Response::new(Full::new(Bytes::from("oops")));
                *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                r
            }
            _ => json(json!({"active": false})),
        }
    })
    .await;
    let yaml = config(
        &upstream("u", &up),
        &format!(
            "  - name: api\n    match: {{paths: [/api]}}\n    upstream: u\n    plugins:\n      phantom_token:\n        source: introspection\n        forward_header: X-Jwt\n        introspection:\n          url: \"{}\"\n          client_id: gateway\n          client_secret: \"s&cret\"\n          signing_key: {{kid: gw1, alg: HS256, secret: internal-signing-secret-0123456789}}\n",
            idp.url("/introspect")
        ),
        "",
    );
    let gw = Gateway::start(&yaml);

    for token in ["as-jwt", "jwt-member"] {
        let r = with_token(&gw, "/api", token).await;
        assert_eq!(r.status, 200, "{token}: {:?}", r.body);
        let seen = up.last();
        assert_eq!(seen.headers["x-jwt"], format!("Bearer {idp_jwt}"));
        assert!(
            seen.headers.get("authorization").is_none(),
            "the opaque token is not forwarded"
        );
    }
    // Claims only: the gateway signs them into a JWT with its own key.
    assert_eq!(with_token(&gw, "/api", "claims").await.status, 200);
    let forwarded = up.last().headers["x-jwt"].to_str().unwrap().to_string();
    let jwt = forwarded.strip_prefix("Bearer ").unwrap();
    let mut v = Validation::new(Algorithm::HS256);
    v.validate_aud = false;
    let data = jsonwebtoken::decode::<Value>(
        jwt,
        &DecodingKey::from_secret(b"internal-signing-secret-0123456789"),
        &v,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], "user-9");
    assert_eq!(data.header.kid.as_deref(), Some("gw1"));
    assert!(data.claims.get("active").is_none());

    // Cached: asking again does not call the endpoint.
    let hits = idp.hits();
    assert_eq!(with_token(&gw, "/api", "claims").await.status, 200);
    assert_eq!(idp.hits(), hits);

    for token in ["inactive", "expired"] {
        with_token(&gw, "/api", token).await.problem(401, "unauthorized");
    }
    with_token(&gw, "/api", "broken")
        .await
        .problem(503, "service-unavailable");
    drop(idp);
    with_token(&gw, "/api", "new-token")
        .await
        .problem(503, "service-unavailable");
}

/// An HMAC-signed request per SPEC section 3.
fn signed(
    gw: &Gateway,
    method: &str,
    target: &str,
    body: &str,
    ts: u64,
    nonce: &str,
    secret: &str,
) -> http::Request<Full<Bytes>> {
    let digest = sha2::Sha256::digest(body.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let message = format!("{method}\n{target}\n{ts}\n{nonce}\n{hex}");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, message.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    req(method, &gw.url(target))
        .header("x-key-id", "mobile-1")
        .header("x-timestamp", ts.to_string())
        .header("x-nonce", nonce)
        .header("x-signature", signature)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

const SECRET: &str = "mobile-hmac-secret";

fn hmac_config(up: &Upstream, nonce_store: &str, redis: Option<&RedisServer>) -> String {
    let redis = redis
        .map(|r| format!("redis: {{url: \"{}\", timeout: 200ms}}\n", r.url()))
        .unwrap_or_default();
    format!(
        "{}{redis}consumers:\n  - name: mobile\n    groups: [app]\n    hmac: [{{key_id: mobile-1, secret: {SECRET}}}]\n",
        config(
            &upstream("u", up),
            &format!(
                "  - name: orders\n    match: {{paths: [/orders]}}\n    upstream: u\n    max_request_body_bytes: 1KiB\n    plugins:\n      hmac_auth: {{nonce_store: {nonce_store}}}\n      acl: {{allow: [app]}}\n"
            ),
            "",
        )
    )
}

#[tokio::test]
async fn hmac_signed_requests() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&hmac_config(&up, "local", None));
    let c = client_h1();
    let t = now();

    let r = send(&c, signed(&gw, "GET", "/orders?id=7", "", t, "n1", SECRET)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(up.last().uri, "/orders?id=7");
    let r = send(
        &c,
        signed(&gw, "POST", "/orders", "{\"item\":1}", t, "n2", SECRET),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        up.last().body_len,
        10,
        "the body read for the hash still reaches the upstream"
    );
    let before = up.count();

    // Replay of a used nonce.
    send(&c, signed(&gw, "GET", "/orders?id=7", "", t, "n1", SECRET))
        .await
        .problem(401, "unauthorized");
    // Wrong secret, stale and future timestamps.
    send(&c, signed(&gw, "GET", "/orders", "", t, "n3", "wrong"))
        .await
        .problem(401, "unauthorized");
    send(&c, signed(&gw, "GET", "/orders", "", t - 400, "n4", SECRET))
        .await
        .problem(401, "unauthorized");
    send(&c, signed(&gw, "GET", "/orders", "", t + 400, "n5", SECRET))
        .await
        .problem(401, "unauthorized");
    // A body or target other than the one signed.
    let mut r = signed(&gw, "POST", "/orders", "{\"item\":1}", t, "n6", SECRET);
    *r.body_mut() = Full::new(Bytes::from("{\"item\":2}"));
    send(&c, r).await.problem(401, "unauthorized");
    let mut r = signed(&gw, "GET", "/orders?id=7", "", t, "n7", SECRET);
    *r.uri_mut() = gw.url("/orders?id=8").parse().unwrap();
    send(&c, r).await.problem(401, "unauthorized");
    // Unknown key id, missing or junk headers.
    let mut r = signed(&gw, "GET", "/orders", "", t, "n8", SECRET);
    r.headers_mut().insert("x-key-id", "other".parse().unwrap());
    send(&c, r).await.problem(401, "unauthorized");
    for header in ["x-key-id", "x-timestamp", "x-nonce", "x-signature"] {
        let mut r = signed(&gw, "GET", "/orders", "", t, "n9", SECRET);
        r.headers_mut().remove(header);
        let resp = send(&c, r).await;
        resp.problem(401, "unauthorized");
        assert!(resp.header("www-authenticate").starts_with("HMAC-SHA256"));
    }
    let mut r = signed(&gw, "GET", "/orders", "", t, "n10", SECRET);
    r.headers_mut()
        .insert("x-signature", "%%%not base64".parse().unwrap());
    send(&c, r).await.problem(401, "unauthorized");
    let mut r = signed(&gw, "GET", "/orders", "", t, "n11", SECRET);
    r.headers_mut()
        .insert("x-timestamp", "yesterday".parse().unwrap());
    send(&c, r).await.problem(401, "unauthorized");
    let long_nonce = "n".repeat(200);
    send(&c, signed(&gw, "GET", "/orders", "", t, &long_nonce, SECRET))
        .await
        .problem(401, "unauthorized");
    assert_eq!(up.count(), before, "nothing unauthenticated reaches the upstream");

    // A body past the route's limit is refused, not buffered.
    let big = "x".repeat(2048);
    send(&c, signed(&gw, "POST", "/orders", &big, t, "n12", SECRET))
        .await
        .problem(413, "payload-too-large");
}

#[tokio::test]
async fn hmac_nonces_are_shared_through_redis() {
    let up = Upstream::start("u").await;
    let mut redis = RedisServer::start();
    let yaml = hmac_config(&up, "redis", Some(&redis));
    let gw1 = Gateway::start(&yaml);
    let gw2 = Gateway::start(&yaml);
    let c = client_h1();
    let t = now();

    // One nonce, two nodes: the second is a replay.
    assert_eq!(
        send(&c, signed(&gw1, "GET", "/orders", "", t, "shared-1", SECRET))
            .await
            .status,
        200
    );
    send(&c, signed(&gw2, "GET", "/orders", "", t, "shared-1", SECRET))
        .await
        .problem(401, "unauthorized");
    assert_eq!(
        send(&c, signed(&gw2, "GET", "/orders", "", t, "shared-2", SECRET))
            .await
            .status,
        200
    );

    // Redis down: fail closed.
    redis.stop();
    send(&c, signed(&gw1, "GET", "/orders", "", t, "shared-3", SECRET))
        .await
        .problem(503, "service-unavailable");
    redis.resume();
    let mut status = 0;
    for i in 0..50 {
        status = send(
            &c,
            signed(&gw1, "GET", "/orders", "", now(), &format!("after-{i}"), SECRET),
        )
        .await
        .status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
}
