//! `jwt` (SPEC sections 3 and 8) through the real binary: tokens signed
//! with keys generated here, a real JWKS server that rotates its keys, and
//! every attack of the issue refused.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::keys::*;
use support::*;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Claims that pass the test config: issuer, audience, an hour to live.
fn claims(sub: &str) -> Value {
    json!({"iss": "https://idp.test", "aud": "orders", "sub": sub, "scope": "read write",
           "iat": now(), "exp": now() + 3600})
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn call(gw: &Gateway, path: &str, auth: Option<&str>) -> Resp {
    let mut b = req("GET", &gw.url(path))
        .header("x-user-id", "forged-by-client")
        // The same to a CGI-style server (HTTP_X_USER_ID).
        .header("x_user_id", "forged-by-client");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    send(&client_h1(), b.body(Full::<Bytes>::default()).unwrap()).await
}

async fn bearer(gw: &Gateway, path: &str, token: &str) -> Resp {
    call(gw, path, Some(&format!("Bearer {token}"))).await
}

struct Keys {
    rsa: TestKey,
    ps: TestKey,
    ec: TestKey,
    ed: TestKey,
    hs: TestKey,
    es384: TestKey,
}

fn keys() -> Keys {
    Keys {
        rsa: rsa_key("rsa1", Algorithm::RS256),
        ps: rsa_key("ps1", Algorithm::PS256),
        ec: ec_key("ec1", Algorithm::ES256),
        ed: ed_key("ed1"),
        hs: hs_key("hs1"),
        es384: ec_key("es384", Algorithm::ES384),
    }
}

fn jwt_config(up: &Upstream, k: &Keys) -> String {
    let keys: Vec<String> = [&k.rsa, &k.ps, &k.ec, &k.ed, &k.hs, &k.es384]
        .iter()
        .map(|k| k.config())
        .collect();
    format!(
        "{}consumers:\n  - name: mobile\n    groups: [app]\n    jwt_subjects: [user-1]\n\
         plugins:\n  jwt:\n    issuer: https://idp.test\n    audiences: [orders]\n\
         \x20   algorithms: [RS256, PS256, ES256, EdDSA, HS256]\n    keys: [{}]\n\
         \x20   claims_to_headers: {{sub: X-User-Id, scope: X-Scope}}\n    required_claims: [exp]\n    clock_skew: 30s\n",
        config(
            &upstream("u", up),
            "  - name: api\n    match: {paths: [/api]}\n    upstream: u\n\
             \x20 - name: members\n    match: {paths: [/members]}\n    upstream: u\n    plugins:\n      acl: {allow: [app]}\n",
            "admin: {address: \"127.0.0.1:0\", token: t}\n",
        ),
        keys.join(", "),
    )
}

#[tokio::test]
async fn every_algorithm_verifies_and_claims_are_forwarded() {
    let up = Upstream::start("u").await;
    let k = keys();
    let gw = Gateway::start(&jwt_config(&up, &k));

    for key in [&k.rsa, &k.ps, &k.ec, &k.ed, &k.hs] {
        let r = bearer(&gw, "/api/x", &key.sign(&claims("user-1"))).await;
        assert_eq!(r.status, 200, "{:?}: {:?}", key.alg, r.body);
        let seen = up.last();
        // The client's forged X-User-Id is gone; the claim's value is there.
        assert_eq!(seen.headers.get_all("x-user-id").iter().count(), 1);
        assert_eq!(seen.headers["x-user-id"], "user-1");
        assert!(!seen.headers.contains_key("x_user_id"));
        assert_eq!(seen.headers["x-scope"], "read write");
    }
    // The same token again: served (from the verified-token cache).
    let token = k.rsa.sign(&claims("user-1"));
    for _ in 0..3 {
        assert_eq!(bearer(&gw, "/api/x", &token).await.status, 200);
    }

    // The subject maps to a consumer, so the ACL passes; another subject
    // is a valid token with no consumer: the ACL refuses it.
    assert_eq!(bearer(&gw, "/members/x", &token).await.status, 200);
    let stranger = k.rsa.sign(&claims("user-2"));
    assert_eq!(bearer(&gw, "/api/x", &stranger).await.status, 200);
    bearer(&gw, "/members/x", &stranger)
        .await
        .problem(403, "forbidden");

    // `exp` within the clock skew still passes.
    let mut c = claims("user-1");
    c["exp"] = json!(now() - 10);
    assert_eq!(bearer(&gw, "/api/x", &k.rsa.sign(&c)).await.status, 200);
}

#[tokio::test]
async fn bad_tokens_and_attacks_are_refused() {
    let up = Upstream::start("u").await;
    let k = keys();
    let gw = Gateway::start(&jwt_config(&up, &k));

    // No token: a plain challenge.
    let r = call(&gw, "/api/x", None).await;
    r.problem(401, "unauthorized");
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"portcullis\"");

    let header = |v: Value| b64(&v);
    let good = claims("user-1");
    let mut cases: Vec<(&str, String)> = Vec::new();

    // alg none, in any spelling.
    for alg in ["none", "None", "NONE"] {
        cases.push((
            "alg none",
            format!("{}.{}.", header(json!({"alg": alg, "typ": "JWT"})), b64(&good)),
        ));
    }
    // HS/RS key confusion: HS256 signed with the RSA public key as the secret.
    let confused = EncodingKey::from_secret(k.rsa.public_pem.as_bytes());
    for kid in [Some("rsa1"), None] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_string);
        cases.push((
            "key confusion",
            jsonwebtoken::encode(&h, &good, &confused).unwrap(),
        ));
    }
    // A configured key whose algorithm is not in `algorithms`.
    cases.push(("algorithm not allowed", k.es384.sign(&good)));
    // An RS256 token presented under another key's kid.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("ec1".into());
    cases.push((
        "kid of another key type",
        jsonwebtoken::encode(&h, &good, &k.rsa.enc).unwrap(),
    ));
    // Signed by a key the gateway does not know, pointing at itself.
    let evil = rsa_key("evil", Algorithm::RS256);
    let evil_jwks = Service::start(|_, _| Response::new(Full::new(Bytes::from("{}")))).await;
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("evil".into());
    h.jku = Some(evil_jwks.url("/jwks"));
    cases.push(("jku", jsonwebtoken::encode(&h, &good, &evil.enc).unwrap()));
    let mut h = Header::new(Algorithm::RS256);
    h.jwk = Some(evil.jwk());
    cases.push((
        "embedded jwk",
        jsonwebtoken::encode(&h, &good, &evil.enc).unwrap(),
    ));
    h.jwk = None;
    h.kid = Some("rsa1".into());
    cases.push((
        "wrong key for the kid",
        jsonwebtoken::encode(&h, &good, &evil.enc).unwrap(),
    ));
    // An unknown critical header extension.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa1".into());
    h.crit = Some(vec!["urn:example:policy".into()]);
    cases.push(("crit", jsonwebtoken::encode(&h, &good, &k.rsa.enc).unwrap()));
    // Claims.
    let with = |field: &str, v: Value| {
        let mut c = claims("user-1");
        if v.is_null() {
            c.as_object_mut().unwrap().remove(field);
        } else {
            c[field] = v;
        }
        k.rsa.sign(&c)
    };
    cases.push(("expired", with("exp", json!(now() - 120))));
    cases.push(("exp as text", with("exp", json!("never"))));
    cases.push(("not yet valid", with("nbf", json!(now() + 120))));
    cases.push(("issued in the future", with("iat", json!(now() + 120))));
    cases.push(("wrong issuer", with("iss", json!("https://evil.test"))));
    cases.push(("no issuer", with("iss", Value::Null)));
    cases.push(("wrong audience", with("aud", json!("billing"))));
    cases.push(("no audience", with("aud", Value::Null)));
    cases.push(("no exp (required)", with("exp", Value::Null)));
    // A valid signature over other claims.
    let t = k.rsa.sign(&good);
    let parts: Vec<&str> = t.split('.').collect();
    let tampered = claims("admin");
    cases.push((
        "tampered payload",
        format!("{}.{}.{}", parts[0], b64(&tampered), parts[2]),
    ));
    // Shapes.
    cases.push(("two segments", format!("{}.{}", parts[0], parts[1])));
    cases.push(("four segments", format!("{t}.{}", parts[2])));
    cases.push(("bad base64", "!!!.###.$$$".into()));
    cases.push((
        "junk header",
        format!("{}.{}.{}", b64(&json!("x")), parts[1], parts[2]),
    ));
    cases.push(("huge", format!("{}.{}.{}", parts[0], "A".repeat(9000), parts[2])));

    for (what, token) in &cases {
        let r = bearer(&gw, "/api/x", token).await;
        r.problem(401, "unauthorized");
        assert_eq!(
            r.header("www-authenticate"),
            "Bearer realm=\"portcullis\", error=\"invalid_token\"",
            "{what}"
        );
        // Never more than RFC 6750 allows: the reason stays in the log.
        let detail = r.json()["detail"].as_str().unwrap().to_string();
        assert_eq!(detail, "the access token is invalid or has expired", "{what}");
    }
    // Garbage Authorization values.
    for auth in ["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "\u{1}", "Bearer a b c"] {
        if let Ok(v) = http::HeaderValue::from_str(auth) {
            let r = call(&gw, "/api/x", Some(v.to_str().unwrap_or("x"))).await;
            r.problem(401, "unauthorized");
        }
    }
    assert_eq!(up.count(), 0, "nothing unauthenticated reaches the upstream");
    assert_eq!(evil_jwks.hits(), 0, "jku is never followed");

    let m = gw.admin_metrics("t").await;
    let want = format!(
        "portcullis_auth_failures_total{{route=\"api\",plugin=\"jwt\"}} {}",
        cases.len() + 1 + 4
    );
    assert!(m.contains(&want), "{want} in\n{m}");
}

#[tokio::test]
async fn other_token_places() {
    let up = Upstream::start("u").await;
    let k = hs_key("hs1");
    let yaml = config(
        &upstream("u", &up),
        &format!(
            "  - name: api\n    match: {{paths: [/api]}}\n    upstream: u\n    plugins:\n      jwt: {{keys: [{}], header: X-Token, query: token, cookie: session}}\n",
            k.config()
        ),
        "",
    );
    let gw = Gateway::start(&yaml);
    let token = k.sign(&json!({"sub": "s", "exp": now() + 60}));
    let client = client_h1();
    for b in [
        req("GET", &gw.url("/api")).header("x-token", token.as_str()),
        req("GET", &gw.url("/api")).header("x-token", format!("Bearer {token}")),
        req("GET", &gw.url(&format!("/api?token={token}"))),
        req("GET", &gw.url("/api")).header("cookie", format!("a=1; session={token}")),
    ] {
        let r = send(&client, b.body(Full::default()).unwrap()).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let r = send(
        &client,
        req("GET", &gw.url("/api"))
            .header("cookie", "session=x.y.z")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    r.problem(401, "unauthorized");
}

#[tokio::test]
async fn jwks_keys_rotate_and_refresh_is_rate_limited() {
    let up = Upstream::start("u").await;
    let a = rsa_key("a", Algorithm::RS256);
    let b = rsa_key("b", Algorithm::RS256);
    let set = |keys: &[&TestKey]| {
        serde_json::to_string(&JwkSet {
            keys: keys.iter().map(|k| k.jwk()).collect(),
        })
        .unwrap()
    };
    let doc = Arc::new(Mutex::new(set(&[&a])));
    let served = doc.clone();
    let jwks = Service::start(move |parts, _| {
        assert_eq!(parts.method, "GET");
        Response::new(Full::new(Bytes::from(served.lock().unwrap().clone())))
    })
    .await;
    let yaml = config(
        &upstream("u", &up),
        &format!(
            "  - name: api\n    match: {{paths: [/api]}}\n    upstream: u\n    plugins:\n      jwt: {{jwks_url: \"{}\", algorithms: [RS256]}}\n",
            jwks.url("/jwks")
        ),
        "",
    );
    let gw = Gateway::start(&yaml);
    let claims = |n: i64| json!({"sub": "s", "n": n, "exp": now() + 600});

    // The set is fetched at start; a's tokens pass.
    let r = bearer(&gw, "/api", &a.sign(&claims(1))).await;
    assert_eq!(r.status, 200, "{:?}", gw.logs.lock().unwrap());
    let after_start = jwks.hits();
    assert!((1..=2).contains(&after_start), "{after_start}");

    // The provider rotates to b: b's first token makes the gateway fetch again.
    *doc.lock().unwrap() = set(&[&b]);
    assert_eq!(bearer(&gw, "/api", &b.sign(&claims(2))).await.status, 200);
    assert_eq!(jwks.hits(), after_start + 1);

    // Made-up kids: refused, and no fetch storm (one per 10 s at most).
    for i in 0..20 {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(format!("made-up-{i}"));
        let t = jsonwebtoken::encode(&h, &claims(i), &b.enc).unwrap();
        bearer(&gw, "/api", &t).await.problem(401, "unauthorized");
    }
    assert_eq!(jwks.hits(), after_start + 1);

    // The endpoint turns to junk: the last good keys keep working.
    *doc.lock().unwrap() = "<html>oops</html>".into();
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("c".into());
    let unknown = jsonwebtoken::encode(&h, &claims(3), &b.enc).unwrap();
    bearer(&gw, "/api", &unknown).await.problem(401, "unauthorized");
    assert_eq!(jwks.hits(), after_start + 2, "the unknown kid caused one fetch");
    assert_eq!(bearer(&gw, "/api", &b.sign(&claims(4))).await.status, 200);
    eventually("the failed download is logged", || async {
        gw.logged("JWKS download failed") || gw.logged("keeping the last good keys")
    })
    .await;
}

#[tokio::test]
async fn jwks_over_https_is_verified() {
    let up = Upstream::start("u").await;
    let tls = TestTls::new();
    let key = rsa_key("tls-key", Algorithm::RS256);
    let doc = serde_json::to_string(&JwkSet {
        keys: vec![key.jwk()],
    })
    .unwrap();
    let jwks = Service::start_tls(&tls, move |_, _| {
        Response::new(Full::new(Bytes::from(doc.clone())))
    })
    .await;
    let yaml = config(
        &upstream("u", &up),
        &format!(
            "  - name: api\n    match: {{paths: [/api]}}\n    upstream: u\n    plugins:\n      jwt: {{jwks_url: \"{}\"}}\n",
            jwks.https_url("/jwks")
        ),
        "",
    );
    let token = key.sign(&json!({"sub": "s", "exp": now() + 600}));

    // Trusting the test CA (SSL_CERT_FILE): the set downloads over TLS.
    let ca = tls.ca_file.to_str().unwrap();
    let gw = Gateway::start_env(&yaml, &[("SSL_CERT_FILE", ca)]);
    let r = bearer(&gw, "/api", &token).await;
    assert_eq!(r.status, 200, "{:?}", gw.logs.lock().unwrap());
    drop(gw);

    // Not trusting it: the certificate is refused, so is the token.
    let empty = tls.ca_file.with_file_name("other-ca.pem");
    std::fs::write(&empty, TestTls::new().ca_pem()).unwrap();
    let gw = Gateway::start_env(&yaml, &[("SSL_CERT_FILE", empty.to_str().unwrap())]);
    bearer(&gw, "/api", &token).await.problem(401, "unauthorized");
    // The log is read from the gateway's stderr by another thread.
    eventually("the failed download is logged", || async {
        gw.logged("JWKS download failed")
    })
    .await;
    assert!(gw.logged("certificate"), "{:?}", gw.logs.lock().unwrap());
}
