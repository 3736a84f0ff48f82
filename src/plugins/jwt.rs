//! `jwt`: the caller presents a signed JSON Web Token, by default in
//! `Authorization: Bearer` (options `header`, `query`, `cookie` add other
//! places).
//!
//! A token passes when its signature verifies with a key pinned to the
//! token's algorithm ([`super::jwks`]), the algorithm is allowed, its
//! header has no `crit` extension we do not implement (none), and `exp`,
//! `nbf`, `iat` (within `clock_skew`), `iss`, `aud` and the required claims
//! hold. Key-locating headers (`jku`, `x5u`, `jwk`, `x5c`) are never used.
//!
//! A verified token is cached until it expires, with what it grants (the
//! consumer, the headers to forward), so a client repeating its token costs
//! one cache lookup, not a signature check. Refusals say no more than RFC
//! 6750 allows: `invalid_token`, and the reason goes to the debug log.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, request};
use jsonwebtoken::{Algorithm, Validation};
use moka::sync::Cache;
use serde_json::{Map, Value};

use super::jwks::{AlgSet, Jwks, Key, parse_algorithm};
use super::{Consumer, RequestCtx, unix_now};
use crate::config::JwtConfig;
use crate::error::GatewayError;

/// Tokens longer than this are refused unread.
pub const MAX_TOKEN: usize = 8192;
/// Memory the verified-token cache may use.
const CACHE_BYTES: u64 = 64 << 20;
/// A token without `exp` is checked again after this long.
const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Keys tried for one token that names no `kid`.
const MAX_CANDIDATES: usize = 4;

/// JWT subjects (`consumers[].jwt_subjects`) → their consumer.
pub type SubjectIndex = HashMap<String, Arc<Consumer>>;

const NO_TOKEN: GatewayError = super::bearer_missing("jwt");
const INVALID: GatewayError = super::bearer_invalid("jwt");

pub struct Jwt {
    header: Option<HeaderName>,
    query: Option<String>,
    cookie: Option<String>,
    keys: Vec<Key>,
    jwks: Option<Arc<Jwks>>,
    /// `algorithms`; every algorithm when not set (each key is still pinned to its own).
    allowed: AlgSet,
    /// One per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    skew: u64,
    required: Vec<String>,
    consumer_claim: String,
    subjects: Arc<SubjectIndex>,
    claims_to_headers: Vec<(String, HeaderName)>,
    verified: Cache<String, Arc<Verified>>,
}

/// What a verified token grants.
struct Verified {
    /// Unix seconds after which the token no longer passes (`exp` + skew).
    until: u64,
    consumer: Option<Arc<Consumer>>,
    headers: Box<[(HeaderName, HeaderValue)]>,
    claims: Arc<Map<String, Value>>,
}

struct UntilExpiry;

impl moka::Expiry<String, Arc<Verified>> for UntilExpiry {
    fn expire_after_create(&self, _: &String, v: &Arc<Verified>, _: std::time::Instant) -> Option<Duration> {
        let left = Duration::from_secs(v.until.saturating_sub(unix_now()));
        Some(left.min(MAX_CACHE_TTL))
    }
}

impl Jwt {
    /// Builds the plugin; errors name the field under `jwt`.
    pub fn new(
        cfg: &JwtConfig,
        subjects: Arc<SubjectIndex>,
        jwks: Option<Arc<Jwks>>,
    ) -> Result<Jwt, (String, String)> {
        let mut keys = Vec::new();
        for (i, k) in cfg.keys.iter().enumerate() {
            keys.push(Key::from_config(k).map_err(|(field, e)| (format!("keys[{i}].{field}"), e))?);
        }
        if keys.is_empty() && jwks.is_none() {
            return Err(("keys".into(), "needs `keys` or `jwks_url`".into()));
        }
        let mut allowed = AlgSet::default();
        for (i, name) in cfg.algorithms.iter().enumerate() {
            allowed = allowed.with(parse_algorithm(name).map_err(|e| (format!("algorithms[{i}]"), e))?);
        }
        if allowed.is_empty() {
            allowed = AlgSet::ALL;
        }
        let validations = super::jwks::ALGORITHMS
            .iter()
            .filter_map(|name| name.parse::<Algorithm>().ok())
            .filter(|a| allowed.contains(*a))
            .map(|alg| (alg, validation(cfg, alg)))
            .collect();
        let header = match &cfg.header {
            Some(h) => Some(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| ("header".to_string(), format!("`{h}` is not a header name")))?,
            ),
            None => None,
        };
        let mut claims_to_headers = Vec::new();
        for (claim, name) in &cfg.claims_to_headers {
            let h = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                (
                    format!("claims_to_headers.{claim}"),
                    format!("`{name}` is not a header name"),
                )
            })?;
            claims_to_headers.push((claim.clone(), h));
        }
        Ok(Jwt {
            header,
            query: cfg.query.clone(),
            cookie: cfg.cookie.clone(),
            keys,
            jwks,
            allowed,
            validations,
            skew: cfg.clock_skew.0.as_secs(),
            required: cfg.required_claims.clone(),
            consumer_claim: cfg.consumer_claim.clone(),
            subjects,
            claims_to_headers,
            verified: Cache::builder()
                .max_capacity(CACHE_BYTES)
                .weigher(|k: &String, v: &Arc<Verified>| {
                    let headers: usize = v
                        .headers
                        .iter()
                        .map(|(n, v)| n.as_str().len() + v.len() + 64)
                        .sum();
                    (k.len() + headers + 128).try_into().unwrap_or(u32::MAX)
                })
                .expire_after(UntilExpiry)
                .build(),
        })
    }

    /// Starts downloading the key set, if any (needs a tokio runtime).
    pub fn start(&self) {
        if let Some(j) = &self.jwks {
            j.start();
        }
    }

    /// Checks the token and names the consumer it maps to (none when its
    /// subject maps to no consumer: an `acl` then refuses it).
    pub async fn authenticate(
        &self,
        ctx: &mut RequestCtx<'_>,
        req: &mut request::Parts,
    ) -> Result<(), GatewayError> {
        // Headers this plugin sets are never taken from the client, nor
        // spelled with `_` for `-` (read as the same by CGI-style servers).
        for (_, name) in &self.claims_to_headers {
            req.headers.remove(name);
        }
        crate::proxy::forwarded::drop_underscore_aliases(&mut req.headers, |n| {
            self.claims_to_headers.iter().any(|(_, name)| name.as_str() == n)
        });
        let token = self.token(req).ok_or(NO_TOKEN)?;
        if token.len() > MAX_TOKEN {
            return Err(INVALID);
        }
        let now = unix_now();
        let verified = match self.verified.get(token.as_ref()) {
            Some(v) if v.until >= now => v,
            _ => {
                let v = Arc::new(self.verify(&token, now).await.map_err(|why| {
                    tracing::debug!(
                        request_id = crate::telemetry::id_text(&ctx.request_id),
                        why,
                        "jwt refused"
                    );
                    INVALID
                })?);
                self.verified.insert(token.into_owned(), v.clone());
                v
            }
        };
        ctx.consumer.clone_from(&verified.consumer);
        ctx.claims = Some(verified.claims.clone());
        for (name, value) in verified.headers.iter() {
            req.headers.insert(name.clone(), value.clone());
        }
        Ok(())
    }

    /// The full check of `token`, bypassing the cache: what a token costs
    /// the first time it is seen (`benches/jwt.rs`).
    pub async fn verify_uncached(&self, token: &str) -> bool {
        self.verify(token, unix_now()).await.is_ok()
    }

    /// The token, from the first place that has one.
    fn token<'a>(&self, req: &'a request::Parts) -> Option<Cow<'a, str>> {
        if let Some(t) = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()))
        {
            return Some(Cow::Borrowed(t));
        }
        if let Some(name) = &self.header
            && let Some(v) = req.headers.get(name)
        {
            let v = v.to_str().ok()?;
            return Some(Cow::Borrowed(bearer(v.as_bytes()).unwrap_or(v.trim())));
        }
        if let Some(name) = &self.query
            && let Some(v) = req.uri.query().and_then(|q| super::query_value(q, name))
        {
            return Some(Cow::Owned(v));
        }
        let name = self.cookie.as_deref()?;
        req.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then_some(Cow::Borrowed(v))
            })
    }

    /// The full check of a token not in the cache. The error says why, for the log.
    async fn verify(&self, token: &str, now: u64) -> Result<Verified, &'static str> {
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err("not three segments");
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed header")?;
        if header.crit.is_some() {
            return Err("unsupported crit extension");
        }
        let alg = header.alg;
        if !self.allowed.contains(alg) {
            return Err("algorithm not allowed");
        }
        let kid = header.kid.as_deref();
        let mut result = self.try_keys(&self.keys, token, alg, kid);
        if !matches!(result, Some(Ok(_)))
            && let Some(jwks) = &self.jwks
        {
            let (keys, generation) = jwks.keys();
            let mut from_set = self.try_keys(&keys, token, alg, kid);
            if from_set.is_none() && jwks.refresh_unknown(generation).await {
                from_set = self.try_keys(&jwks.keys().0, token, alg, kid);
            }
            if from_set.is_some() {
                result = from_set;
            }
        }
        let claims = result.ok_or("no key for this kid and algorithm")??;
        self.grant(&claims, now)
    }

    /// Verifies with the keys that may: `None` when none may.
    fn try_keys(
        &self,
        keys: &[Key],
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Option<Result<Map<String, Value>, &'static str>> {
        let validation = &self.validations.iter().find(|(a, _)| *a == alg)?.1;
        let mut last = None;
        let candidates = keys
            .iter()
            .filter(|k| k.algs.contains(alg) && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid))
            .take(MAX_CANDIDATES);
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return Some(Ok(data.claims)),
                Err(e) => last = Some(Err(reason(&e))),
            }
        }
        last
    }

    /// What valid claims grant, after the checks jsonwebtoken leaves to us.
    fn grant(&self, claims: &Map<String, Value>, now: u64) -> Result<Verified, &'static str> {
        if let Some(iat) = claims.get("iat") {
            let iat = iat.as_u64().ok_or("iat is not a number")?;
            if iat > now + self.skew {
                return Err("issued in the future");
            }
        }
        if !self.required.iter().all(|c| claims.contains_key(c)) {
            return Err("a required claim is missing");
        }
        let until = match claims.get("exp") {
            Some(exp) => exp
                .as_u64()
                .ok_or("exp is not a number")?
                .saturating_add(self.skew),
            None => u64::MAX,
        };
        let consumer = claims
            .get(&self.consumer_claim)
            .and_then(Value::as_str)
            .and_then(|sub| self.subjects.get(sub))
            .cloned();
        let headers = self
            .claims_to_headers
            .iter()
            .filter_map(|(claim, name)| {
                let value = match claims.get(claim)? {
                    Value::String(s) => HeaderValue::from_str(s),
                    Value::Null => return None,
                    other => HeaderValue::from_str(&other.to_string()),
                };
                Some((name.clone(), value.ok()?))
            })
            .collect();
        Ok(Verified {
            until,
            consumer,
            headers,
            claims: Arc::new(claims.clone()),
        })
    }
}

/// The token of an `Authorization: Bearer <token>` value.
pub(crate) fn bearer(v: &[u8]) -> Option<&str> {
    let scheme = v.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    std::str::from_utf8(&v[7..])
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn validation(cfg: &JwtConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.clock_skew.0.as_secs();
    v.validate_nbf = true;
    v.validate_exp = true;
    v.required_spec_claims.clear();
    if let Some(iss) = &cfg.issuer {
        v.set_issuer(&[iss]);
        v.required_spec_claims.insert("iss".into());
    }
    if cfg.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&cfg.audiences);
        v.required_spec_claims.insert("aud".into());
    }
    v
}

fn reason(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        ErrorKind::InvalidAlgorithm => "algorithm does not match the key",
        _ => "malformed token",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bear"), None);
    }
}
