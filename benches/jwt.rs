//! What a JWT costs the first time the gateway sees it: the full check
//! (header, key lookup, signature, claims), no cache. Later requests with
//! the same token are a cache lookup (measured end to end by bench/plugins.sh).
//! Must stay under 50 µs for RS256. `cargo bench --bench jwt`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;
use portcullis::plugins::jwt::Jwt;

#[path = "../tests/support/keys.rs"]
mod keys;

fn cold_verification(c: &mut Criterion) {
    let key = keys::rsa_key("k1", Algorithm::RS256);
    let yaml = format!(
        "version: 1\nplugins:\n  jwt:\n    issuer: https://idp\n    algorithms: [RS256]\n    claims_to_headers: {{sub: X-User-Id}}\n    keys: [{{kid: k1, alg: RS256, pem: {}}}]\n",
        serde_json::to_string(&key.public_pem).unwrap()
    );
    let loaded = portcullis::config::load_str(&yaml, "bench.yaml", &|_| None).unwrap();
    let cfg = loaded.config.plugins.jwt.as_ref().unwrap();
    let jwt = Jwt::new(cfg, Arc::default(), None).map_err(|e| e.1).unwrap();

    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims =
        serde_json::json!({"iss": "https://idp", "sub": "user-1", "exp": exp, "scope": "read write"});
    let token = key.sign(&claims);

    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert!(rt.block_on(jwt.verify_uncached(&token)));
    c.bench_function("jwt RS256 cold verification", |b| {
        b.iter(|| rt.block_on(jwt.verify_uncached(black_box(&token))))
    });
}

criterion_group!(benches, cold_verification);
criterion_main!(benches);
