//! What a JWT costs the first time the gateway sees it: the full check
//! (header, key lookup, signature, claims), no cache. Later requests with
//! the same token are a cache lookup (measured end to end by bench/auth.sh).
//! Must stay under 50 µs for RS256. `cargo bench --bench jwt`

use std::hint::black_box;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::plugins::jwt::Jwt;

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn cold_verification(c: &mut Criterion) {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let private: aws_lc_rs::encoding::Pkcs8V1Der = kp.as_der().unwrap();
    let public: aws_lc_rs::encoding::PublicKeyX509Der = kp.public_key().as_der().unwrap();
    let yaml = format!(
        "version: 1\nplugins:\n  jwt:\n    issuer: https://idp\n    algorithms: [RS256]\n    claims_to_headers: {{sub: X-User-Id}}\n    keys: [{{kid: k1, alg: RS256, pem: {}}}]\n",
        serde_json::to_string(&pem("PUBLIC KEY", public.as_ref())).unwrap()
    );
    let loaded = portcullis::config::load_str(&yaml, "bench.yaml", &|_| None).unwrap();
    let cfg = loaded.config.plugins.jwt.as_ref().unwrap();
    let jwt = Jwt::new(cfg, Arc::default(), None).map_err(|e| e.1).unwrap();

    let enc = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims =
        serde_json::json!({"iss": "https://idp", "sub": "user-1", "exp": exp, "scope": "read write"});
    let token = jsonwebtoken::encode(&header, &claims, &enc).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert!(rt.block_on(jwt.verify_uncached(&token)));
    c.bench_function("jwt RS256 cold verification", |b| {
        b.iter(|| rt.block_on(jwt.verify_uncached(black_box(&token))))
    });
}

criterion_group!(benches, cold_verification);
criterion_main!(benches);
