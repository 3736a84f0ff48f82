//! Verification keys: configured inline (`jwt.keys`) or published by an
//! identity provider as a JSON Web Key Set (`jwt.jwks_url`).
//!
//! Every key is pinned to the algorithms it may verify: the `alg` written
//! with it, or (a JWK without `alg`) the algorithms of its key type. A token
//! naming another algorithm never reaches that key, which is what defeats
//! the HS/RS confusion attack (an RSA public key used as an HMAC secret).
//! Symmetric keys come only from the config file, never from a download.
//!
//! A key set is downloaded when its plugin starts, every
//! [`REFRESH_EVERY`], and when a token names a `kid` it does not hold; the
//! last is limited to once per [`MIN_REFETCH`] so tokens with made-up `kid`s
//! cannot cause a fetch storm (a rotation right after start still gets its
//! one download). A failed or junk download keeps the last
//! good keys.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::config::JwtKeyConfig;
use crate::upstream::fetch::Endpoint;

/// Periodic download of a key set.
const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// At most one download per this long for unknown `kid`s (SPEC section 8).
const MIN_REFETCH: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The algorithms this gateway verifies, by name.
pub const ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
    "EdDSA",
];

/// A set of algorithms, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlgSet(u16);

impl AlgSet {
    pub const ALL: AlgSet = AlgSet(0x0fff);

    pub fn of(alg: Algorithm) -> AlgSet {
        AlgSet(1 << bit(alg))
    }

    pub fn family(family: AlgorithmFamily) -> AlgSet {
        family
            .algorithms()
            .iter()
            .fold(AlgSet::default(), |set, a| set.with(*a))
    }

    pub fn with(self, alg: Algorithm) -> AlgSet {
        AlgSet(self.0 | 1 << bit(alg))
    }

    pub fn contains(self, alg: Algorithm) -> bool {
        self.0 & 1 << bit(alg) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

fn bit(alg: Algorithm) -> u16 {
    match alg {
        Algorithm::HS256 => 0,
        Algorithm::HS384 => 1,
        Algorithm::HS512 => 2,
        Algorithm::RS256 => 3,
        Algorithm::RS384 => 4,
        Algorithm::RS512 => 5,
        Algorithm::PS256 => 6,
        Algorithm::PS384 => 7,
        Algorithm::PS512 => 8,
        Algorithm::ES256 => 9,
        Algorithm::ES384 => 10,
        _ => 11,
    }
}

/// Parses an algorithm name; `none` and unknown names are refused.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("`none` (unsigned tokens) is never accepted".into());
    }
    if !ALGORITHMS.contains(&name) {
        return Err(format!(
            "unknown algorithm `{name}`; one of {}",
            ALGORITHMS.join(", ")
        ));
    }
    name.parse().map_err(|_| format!("unknown algorithm `{name}`"))
}

/// A key and the algorithms it may verify.
pub struct Key {
    pub kid: Option<String>,
    pub algs: AlgSet,
    pub key: DecodingKey,
}

/// A configured key's algorithm and material: the HMAC secret, or the PEM
/// text (inline or read from `pem_file`). Errors name the field.
enum Material {
    Secret(Vec<u8>),
    Pem(Vec<u8>),
}

fn material(cfg: &JwtKeyConfig) -> Result<(Algorithm, Material), (&'static str, String)> {
    let alg = parse_algorithm(&cfg.alg).map_err(|e| ("alg", e))?;
    if alg.family() == AlgorithmFamily::Hmac {
        return match (&cfg.secret, &cfg.pem, &cfg.pem_file) {
            (Some(s), None, None) if !s.is_empty() => Ok((alg, Material::Secret(s.clone().into_bytes()))),
            _ => Err(("secret", format!("{} needs `secret` (and no PEM)", cfg.alg))),
        };
    }
    let pem = match (&cfg.secret, &cfg.pem, &cfg.pem_file) {
        (None, Some(pem), None) => pem.clone().into_bytes(),
        (None, None, Some(path)) => {
            std::fs::read(path).map_err(|e| ("pem_file", format!("cannot read {path}: {e}")))?
        }
        _ => {
            return Err((
                "pem",
                format!("{} needs one of `pem` or `pem_file` (and no `secret`)", cfg.alg),
            ));
        }
    };
    Ok((alg, Material::Pem(pem)))
}

impl Key {
    /// A key written in the config. Errors name the field (relative to the key).
    pub fn from_config(cfg: &JwtKeyConfig) -> Result<Key, (&'static str, String)> {
        let (alg, material) = material(cfg)?;
        let key = match material {
            Material::Secret(s) => DecodingKey::from_secret(&s),
            Material::Pem(pem) => {
                let family = alg.family();
                match family {
                    AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                    AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                    _ => DecodingKey::from_ed_pem(&pem),
                }
                .map_err(|e| ("pem", format!("not a {family:?} public key in PEM: {e}")))?
            }
        };
        Ok(Key {
            kid: cfg.kid.clone(),
            algs: AlgSet::of(alg),
            key,
        })
    }

    /// A key of a downloaded set; `None` for keys we must not or cannot use
    /// (symmetric, encryption-only, unknown type).
    fn from_jwk(jwk: &Jwk) -> Option<Key> {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            return None;
        }
        let family_algs = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgSet::family(AlgorithmFamily::Rsa),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => AlgSet::of(Algorithm::ES256),
                EllipticCurve::P384 => AlgSet::of(Algorithm::ES384),
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                AlgSet::of(Algorithm::EdDSA)
            }
            _ => return None,
        };
        let algs = match jwk.common.key_algorithm {
            None => family_algs,
            Some(declared) => {
                let alg = key_algorithm(declared)?;
                if !family_algs.contains(alg) {
                    return None;
                }
                AlgSet::of(alg)
            }
        };
        Some(Key {
            kid: jwk.common.key_id.clone(),
            algs,
            key: DecodingKey::from_jwk(jwk).ok()?,
        })
    }
}

fn key_algorithm(k: KeyAlgorithm) -> Option<Algorithm> {
    Some(match k {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A key the gateway signs its own tokens with (`phantom_token`'s
/// `introspection.signing_key`): a private key in PEM, or an HMAC secret.
pub struct SigningKey {
    pub header: jsonwebtoken::Header,
    pub key: jsonwebtoken::EncodingKey,
}

impl SigningKey {
    pub fn from_config(cfg: &JwtKeyConfig) -> Result<SigningKey, (&'static str, String)> {
        use jsonwebtoken::EncodingKey;
        let (alg, material) = material(cfg)?;
        let key = match material {
            Material::Secret(s) => EncodingKey::from_secret(&s),
            Material::Pem(pem) => {
                let family = alg.family();
                match family {
                    AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
                    AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
                    _ => EncodingKey::from_ed_pem(&pem),
                }
                .map_err(|e| ("pem", format!("not a {family:?} private key in PEM: {e}")))?
            }
        };
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = cfg.kid.clone();
        Ok(SigningKey { header, key })
    }

    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        jsonwebtoken::encode(&self.header, claims, &self.key).map_err(|e| e.to_string())
    }
}

/// Parses a JWKS document; keys we cannot use are skipped, one by one.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    Ok(set
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter_map(|jwk| Key::from_jwk(&jwk))
        .collect())
}

/// A key set downloaded from `jwks_url`, shared by every plugin naming that
/// URL and carried over across reloads.
pub struct Jwks {
    endpoint: Endpoint,
    keys: ArcSwap<Vec<Key>>,
    /// Bumped on every successful download.
    generation: AtomicU64,
    /// When an unknown `kid` last caused a download. Held during any
    /// download, so concurrent requests wait for one download.
    last_on_unknown: tokio::sync::Mutex<Option<Instant>>,
    started: AtomicBool,
}

impl Jwks {
    pub fn new(url: &str) -> Result<Jwks, String> {
        Ok(Jwks {
            endpoint: Endpoint::parse(url)?,
            keys: ArcSwap::from_pointee(Vec::new()),
            generation: AtomicU64::new(0),
            last_on_unknown: tokio::sync::Mutex::new(None),
            started: AtomicBool::new(false),
        })
    }

    /// The keys held now, and their generation.
    pub fn keys(&self) -> (Arc<Vec<Key>>, u64) {
        let generation = self.generation.load(Ordering::Acquire);
        (self.keys.load_full(), generation)
    }

    /// Starts the periodic download (the first one now), once. Needs a
    /// tokio runtime; the task ends when the set is dropped.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Jwks> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                {
                    let Some(jwks) = weak.upgrade() else { return };
                    let _one_at_a_time = jwks.last_on_unknown.lock().await;
                    jwks.download().await;
                }
                tokio::time::sleep(REFRESH_EVERY).await;
            }
        });
    }

    /// Downloads the set again because a token named a key not held at
    /// `seen` generation. Returns whether new keys are there to look at:
    /// false when a download happened within [`MIN_REFETCH`] or failed.
    pub async fn refresh_unknown(self: &Arc<Self>, seen: u64) -> bool {
        self.start();
        let mut last = self.last_on_unknown.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            // Downloaded while this request waited.
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return false;
        }
        *last = Some(Instant::now());
        self.download().await
    }

    async fn download(&self) -> bool {
        let req = self
            .endpoint
            .request(http::Method::GET)
            .header(http::header::ACCEPT, "application/json")
            .body(RequestBody::full(bytes::Bytes::new()));
        let result = match req {
            Ok(req) => self.endpoint.send(req, FETCH_TIMEOUT).await,
            Err(e) => Err(e.to_string()),
        };
        let keys = result.and_then(|(parts, body)| {
            if !parts.status.is_success() {
                return Err(format!("status {}", parts.status.as_u16()));
            }
            parse_jwks(&body)
        });
        match keys {
            Ok(keys) if !keys.is_empty() => {
                tracing::info!(url = %self.endpoint.url, keys = keys.len(), "JWKS downloaded");
                self.keys.store(Arc::new(keys));
                self.generation.fetch_add(1, Ordering::AcqRel);
                true
            }
            Ok(_) => {
                tracing::warn!(url = %self.endpoint.url, "JWKS has no usable keys; keeping the last good keys");
                false
            }
            Err(e) => {
                tracing::warn!(url = %self.endpoint.url, error = %e, "JWKS download failed; keeping the last good keys");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alg_sets() {
        let rsa = AlgSet::family(AlgorithmFamily::Rsa);
        assert!(rsa.contains(Algorithm::RS256) && rsa.contains(Algorithm::PS512));
        assert!(!rsa.contains(Algorithm::HS256));
        assert!(AlgSet::of(Algorithm::EdDSA).contains(Algorithm::EdDSA));
        assert!(parse_algorithm("none").is_err());
        assert!(parse_algorithm("NONE").is_err());
        assert!(parse_algorithm("HS1").is_err());
        assert_eq!(parse_algorithm("ES384").unwrap(), Algorithm::ES384);
    }

    #[test]
    fn junk_jwks_documents() {
        assert!(parse_jwks(b"nope").is_err());
        assert!(parse_jwks(b"{}").is_err());
        // Unusable keys are skipped: symmetric, unknown type, encryption-only.
        let doc = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"},{"kty":"XYZ"},
            {"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}]}"#;
        assert!(parse_jwks(doc).unwrap().is_empty());
    }
}
