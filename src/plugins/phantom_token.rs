//! `phantom_token`: the phantom token pattern. Clients hold an opaque token
//! (`Authorization: Bearer <opaque>`); the gateway swaps it for the JWT it
//! stands for and forwards that (`forward_header`, as `Bearer <jwt>`). The
//! client never sees the JWT, the upstream never sees the opaque token.
//!
//! The JWT comes from Redis (`<redis_key_prefix><opaque>`, lifetime the
//! key's TTL) or from an OAuth2 introspection endpoint (RFC 7662). Answers
//! are cached locally for at most `cache_ttl` (and never past the token's
//! own lifetime), so a deleted key is revoked within `cache_ttl`; concurrent
//! misses for one token share one lookup. Unknown, expired or revoked → 401.
//! Redis or the endpoint failing → 503: the plugin fails closed.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, request};
use moka::future::Cache;
use serde_json::Value;

use super::jwks::SigningKey;
use super::jwt::SubjectIndex;
use super::{Consumer, RequestCtx, unix_now};
use crate::body::RequestBody;
use crate::config::{PhantomSource, PhantomTokenConfig};
use crate::error::GatewayError;
use crate::redis_client::Redis;
use crate::upstream::fetch::Endpoint;

/// Opaque tokens longer than this are refused unread.
const MAX_TOKEN: usize = 4096;
/// Entries the local cache holds at most.
const CACHE_ENTRIES: u64 = 100_000;
const INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(3);

const NO_TOKEN: GatewayError = super::bearer_missing("phantom_token");
const INVALID: GatewayError = super::bearer_invalid("phantom_token");

enum Source {
    Redis { redis: Arc<Redis>, prefix: String },
    Introspection(Box<Introspection>),
}

struct Introspection {
    endpoint: Endpoint,
    /// `Basic base64(client_id:client_secret)`.
    credentials: HeaderValue,
    signing_key: Option<SigningKey>,
}

/// What a known opaque token stands for.
struct Granted {
    /// `Bearer <jwt>`.
    forward: HeaderValue,
    consumer: Option<Arc<Consumer>>,
    /// How long the answer may be cached.
    ttl: Duration,
}

/// Why a lookup gave no JWT.
enum Miss {
    Unknown,
    Unavailable(String),
}

struct ForTtl;

impl moka::Expiry<String, Arc<Granted>> for ForTtl {
    fn expire_after_create(&self, _: &String, v: &Arc<Granted>, _: std::time::Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

pub struct PhantomToken {
    source: Source,
    cache_ttl: Duration,
    forward_header: HeaderName,
    subjects: Arc<SubjectIndex>,
    cache: Cache<String, Arc<Granted>>,
}

impl PhantomToken {
    /// Errors name the field under `phantom_token`.
    pub fn new(
        cfg: &PhantomTokenConfig,
        redis: Option<Arc<Redis>>,
        subjects: Arc<SubjectIndex>,
    ) -> Result<PhantomToken, (String, String)> {
        let source = match cfg.source {
            PhantomSource::Redis => Source::Redis {
                redis: redis.ok_or_else(|| {
                    (
                        "source".to_string(),
                        "`source: redis` needs the top-level `redis` section".to_string(),
                    )
                })?,
                prefix: cfg.redis_key_prefix.clone(),
            },
            PhantomSource::Introspection => {
                let i = cfg.introspection.as_ref().ok_or_else(|| {
                    (
                        "introspection".to_string(),
                        "`source: introspection` needs `introspection: {url, client_id, client_secret}`"
                            .to_string(),
                    )
                })?;
                let endpoint = Endpoint::parse(&i.url).map_err(|e| ("introspection.url".to_string(), e))?;
                // RFC 6749 section 2.3.1: both parts form-encoded, then Basic.
                let pair = format!("{}:{}", form_encode(&i.client_id), form_encode(&i.client_secret));
                let basic = base64::engine::general_purpose::STANDARD.encode(pair);
                let credentials = HeaderValue::from_str(&format!("Basic {basic}")).map_err(|_| {
                    (
                        "introspection.client_id".to_string(),
                        "not usable in a header".to_string(),
                    )
                })?;
                let signing_key = match &i.signing_key {
                    Some(k) => Some(
                        SigningKey::from_config(k)
                            .map_err(|(f, e)| (format!("introspection.signing_key.{f}"), e))?,
                    ),
                    None => None,
                };
                Source::Introspection(Box::new(Introspection {
                    endpoint,
                    credentials,
                    signing_key,
                }))
            }
        };
        let forward_header = HeaderName::from_bytes(cfg.forward_header.as_bytes()).map_err(|_| {
            (
                "forward_header".to_string(),
                format!("`{}` is not a header name", cfg.forward_header),
            )
        })?;
        Ok(PhantomToken {
            source,
            cache_ttl: cfg.cache_ttl.0,
            forward_header,
            subjects,
            cache: Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .expire_after(ForTtl)
                .build(),
        })
    }

    /// Swaps the opaque token for its JWT, or refuses.
    pub async fn authenticate(
        &self,
        ctx: &mut RequestCtx<'_>,
        req: &mut request::Parts,
    ) -> Result<(), GatewayError> {
        let token = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| super::jwt::bearer(v.as_bytes()))
            .ok_or(NO_TOKEN)?;
        if token.len() > MAX_TOKEN {
            return Err(INVALID);
        }
        let granted = self
            .cache
            .try_get_with_by_ref(token, self.lookup(token))
            .await
            .map_err(|miss| match &*miss {
                Miss::Unknown => INVALID,
                Miss::Unavailable(cause) => GatewayError::Unavailable {
                    plugin: "phantom_token",
                    cause: cause.clone(),
                },
            })?;
        // The opaque token stays here; only the JWT goes on.
        req.headers.remove(http::header::AUTHORIZATION);
        req.headers
            .insert(self.forward_header.clone(), granted.forward.clone());
        ctx.consumer.clone_from(&granted.consumer);
        Ok(())
    }

    async fn lookup(&self, token: &str) -> Result<Arc<Granted>, Miss> {
        let now = unix_now();
        let (jwt, lifetime) = match &self.source {
            Source::Redis { redis, prefix } => {
                let key = format!("{prefix}{token}");
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
                let (jwt, pttl): (Option<String>, i64) =
                    redis.query(&pipe).await.map_err(Miss::Unavailable)?;
                let jwt = jwt.ok_or(Miss::Unknown)?;
                let lifetime = match pttl {
                    ms if ms > 0 => Some(Duration::from_millis(ms as u64)),
                    -1 => None,
                    _ => return Err(Miss::Unknown),
                };
                (jwt, lifetime)
            }
            Source::Introspection(i) => {
                let jwt = i.introspect(token, now).await?;
                let lifetime = match claim(&jwt, "exp").and_then(|v| v.as_u64()) {
                    Some(exp) if exp <= now => return Err(Miss::Unknown),
                    Some(exp) => Some(Duration::from_secs(exp - now)),
                    None => None,
                };
                (jwt, lifetime)
            }
        };
        let forward = HeaderValue::from_str(&format!("Bearer {}", jwt.trim()))
            .map_err(|_| Miss::Unavailable("the stored JWT is not a header value".into()))?;
        let consumer = claim(&jwt, "sub")
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|sub| self.subjects.get(sub))
            .cloned();
        Ok(Arc::new(Granted {
            forward,
            consumer,
            ttl: lifetime.map_or(self.cache_ttl, |l| l.min(self.cache_ttl)),
        }))
    }
}

impl Introspection {
    /// RFC 7662: `POST token=...` with the client's credentials. Returns
    /// the JWT: the answer itself (`application/jwt`), its `jwt` member, or
    /// its claims signed with `signing_key`.
    async fn introspect(&self, token: &str, now: u64) -> Result<String, Miss> {
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let req = self
            .endpoint
            .request(http::Method::POST)
            .header(http::header::AUTHORIZATION, self.credentials.clone())
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/jwt, application/json;q=0.9")
            .body(RequestBody::full(Bytes::from(body)))
            .map_err(|e| Miss::Unavailable(e.to_string()))?;
        let (parts, body) = self
            .endpoint
            .send(req, INTROSPECTION_TIMEOUT)
            .await
            .map_err(Miss::Unavailable)?;
        if !parts.status.is_success() {
            return Err(Miss::Unavailable(format!(
                "{} answered {}",
                self.endpoint.url,
                parts.status.as_u16()
            )));
        }
        let is_jwt = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/jwt"));
        if is_jwt {
            return String::from_utf8(body.to_vec())
                .map(|s| s.trim().to_string())
                .map_err(|_| Miss::Unavailable("the introspection JWT is not text".into()));
        }
        let answer: serde_json::Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|e| Miss::Unavailable(format!("{}: not JSON: {e}", self.endpoint.url)))?;
        if answer.get("active") != Some(&Value::Bool(true)) {
            return Err(Miss::Unknown);
        }
        if let Some(jwt) = answer.get("jwt").and_then(Value::as_str) {
            return Ok(jwt.to_string());
        }
        let key = self.signing_key.as_ref().ok_or_else(|| {
            Miss::Unavailable(
                "the introspection answer has claims but no `jwt`, and no `signing_key` is configured".into(),
            )
        })?;
        let mut claims = answer;
        claims.remove("active");
        if claims
            .get("exp")
            .and_then(Value::as_u64)
            .is_some_and(|exp| exp <= now)
        {
            return Err(Miss::Unknown);
        }
        claims.entry("iat").or_insert(Value::from(now));
        key.sign(&Value::Object(claims)).map_err(Miss::Unavailable)
    }
}

/// A claim of a JWT from a trusted source (our Redis, our introspection
/// endpoint), read without checking the signature: only to bound the cache
/// lifetime and name the consumer. The upstream verifies the JWT itself.
fn claim(jwt: &str, name: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let mut claims: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.remove(name)
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // Spaces kept, then written `+`: the only byte forms treat apart.
    super::percent_encode_into(&mut out, s, b"-._~ ");
    out.replace(' ', "+")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b+c/d=é"), "a+b%2Bc%2Fd%3D%C3%A9");
    }

    #[test]
    fn claims_of_trusted_jwts() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"u1","exp":5}"#);
        let jwt = format!("h.{payload}.s");
        assert_eq!(claim(&jwt, "sub"), Some(Value::from("u1")));
        assert_eq!(claim(&jwt, "exp"), Some(Value::from(5)));
        assert_eq!(claim("junk", "sub"), None);
    }
}
