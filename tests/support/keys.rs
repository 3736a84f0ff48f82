//! Keys for the auth tests and benchmarks, generated on the spot (aws-lc-rs),
//! and tokens signed with them (jsonwebtoken). Shared by tests/ and
//! benches/jwt.rs (included there by path).
#![allow(dead_code)]

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub enc: EncodingKey,
    /// The public key (or the secret, for HS) as the gateway config takes it.
    pub public_pem: String,
}

pub fn pem(label: &str, der: &[u8]) -> String {
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

pub fn rsa_key(kid: &str, alg: Algorithm) -> TestKey {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let private: aws_lc_rs::encoding::Pkcs8V1Der = kp.as_der().unwrap();
    let public: aws_lc_rs::encoding::PublicKeyX509Der = kp.public_key().as_der().unwrap();
    TestKey {
        kid: kid.into(),
        alg,
        enc: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes()).unwrap(),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    }
}

pub fn ec_key(kid: &str, alg: Algorithm) -> TestKey {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    };
    let curve = if alg == Algorithm::ES256 {
        &ECDSA_P256_SHA256_FIXED_SIGNING
    } else {
        &ECDSA_P384_SHA384_FIXED_SIGNING
    };
    let doc = EcdsaKeyPair::generate_pkcs8(curve, &aws_lc_rs::rand::SystemRandom::new()).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(curve, doc.as_ref()).unwrap();
    let public: aws_lc_rs::encoding::PublicKeyX509Der = kp.public_key().as_der().unwrap();
    TestKey {
        kid: kid.into(),
        alg,
        enc: EncodingKey::from_ec_pem(pem("PRIVATE KEY", doc.as_ref()).as_bytes()).unwrap(),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    }
}

pub fn ed_key(kid: &str) -> TestKey {
    let kp = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
    let private: aws_lc_rs::encoding::Pkcs8V1Der = kp.as_der().unwrap();
    let public: aws_lc_rs::encoding::PublicKeyX509Der = kp.public_key().as_der().unwrap();
    TestKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        enc: EncodingKey::from_ed_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes()).unwrap(),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    }
}

pub const HS_SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

pub fn hs_key(kid: &str) -> TestKey {
    TestKey {
        kid: kid.into(),
        alg: Algorithm::HS256,
        enc: EncodingKey::from_secret(HS_SECRET.as_bytes()),
        public_pem: String::new(),
    }
}

impl TestKey {
    /// The key's entry in `jwt.keys`.
    pub fn config(&self) -> String {
        let alg = format!("{:?}", self.alg);
        if self.alg == Algorithm::HS256 {
            format!("{{kid: {}, alg: {alg}, secret: \"{HS_SECRET}\"}}", self.kid)
        } else {
            format!(
                "{{kid: {}, alg: {alg}, pem: {}}}",
                self.kid,
                serde_json::to_string(&self.public_pem).unwrap()
            )
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.enc).unwrap()
    }

    pub fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.enc, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }
}
