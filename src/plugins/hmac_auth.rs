//! `hmac_auth`: each request is signed with a secret the caller shares with
//! the gateway (`consumers[].hmac`). SPEC section 3:
//!
//! ```text
//! X-Signature = base64(HMAC-SHA256(secret,
//!     METHOD \n PATH?QUERY \n X-Timestamp \n X-Nonce \n hex(SHA256(body))))
//! ```
//!
//! The path is the request target as sent. `X-Timestamp` (Unix seconds)
//! must be within `clock_skew` of now, and a nonce is accepted once while
//! its timestamp is: remembered in memory or, with `nonce_store: redis`,
//! in Redis so every gateway node refuses a replay. The nonce is recorded
//! only after the signature verified, so forged requests cannot burn the
//! nonces of real ones.
//!
//! The body is read (within the route's size limit) to hash it before the
//! upstream call, then sent on as read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine;
use http::{HeaderName, request};
use moka::sync::Cache;
use sha2::{Digest, Sha256};

use super::{Consumer, RequestCtx};
use crate::body::RequestBody;
use crate::config::{ConsumerConfig, HmacAuthConfig, Store};
use crate::error::GatewayError;
use crate::redis_client::Redis;

static KEY_ID: HeaderName = HeaderName::from_static("x-key-id");
static TIMESTAMP: HeaderName = HeaderName::from_static("x-timestamp");
static NONCE: HeaderName = HeaderName::from_static("x-nonce");
static SIGNATURE: HeaderName = HeaderName::from_static("x-signature");

/// Nonces longer than this are refused.
const MAX_NONCE: usize = 128;
/// Nonces the in-memory store holds at most (beyond that, the oldest go:
/// use `nonce_store: redis` for more than this many signed requests per
/// `2 × clock_skew`).
const LOCAL_NONCES: u64 = 1_000_000;

const REFUSED: GatewayError = GatewayError::Unauthorized {
    plugin: "hmac_auth",
    challenge: "HMAC-SHA256 realm=\"portcullis\", headers=\"x-key-id x-timestamp x-nonce x-signature\"",
    detail: "a valid request signature is required",
};

/// `key_id` → the secret and its consumer.
#[derive(Default)]
pub struct CredentialIndex(HashMap<String, (hmac::Key, Arc<Consumer>)>);

impl CredentialIndex {
    /// Errors name the field: an empty secret, a `key_id` used twice.
    pub fn build(
        configs: &[ConsumerConfig],
        consumers: &HashMap<String, Arc<Consumer>>,
    ) -> Result<CredentialIndex, Vec<(String, String)>> {
        let mut index = HashMap::new();
        let mut errors = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let Some(consumer) = consumers.get(&c.name) else {
                continue;
            };
            for (j, cred) in c.hmac.iter().enumerate() {
                let field = format!("consumers[{i}].hmac[{j}]");
                if cred.secret.is_empty() {
                    errors.push((format!("{field}.secret"), "must not be empty".into()));
                    continue;
                }
                let key = hmac::Key::new(hmac::HMAC_SHA256, cred.secret.as_bytes());
                if index
                    .insert(cred.key_id.clone(), (key, consumer.clone()))
                    .is_some()
                {
                    errors.push((
                        format!("{field}.key_id"),
                        format!("key id `{}` is used twice", cred.key_id),
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(CredentialIndex(index))
        } else {
            Err(errors)
        }
    }
}

enum Nonces {
    /// Each nonce lives until its timestamp leaves the window.
    Local(Cache<String, Duration>),
    Redis(Arc<Redis>),
}

struct UntilWindowEnds;

impl moka::Expiry<String, Duration> for UntilWindowEnds {
    fn expire_after_create(&self, _: &String, ttl: &Duration, _: std::time::Instant) -> Option<Duration> {
        Some(*ttl)
    }
}

pub struct HmacAuth {
    skew: u64,
    credentials: Arc<CredentialIndex>,
    nonces: Nonces,
}

impl HmacAuth {
    /// Errors name the field under `hmac_auth`.
    pub fn new(
        cfg: &HmacAuthConfig,
        credentials: Arc<CredentialIndex>,
        redis: Option<Arc<Redis>>,
    ) -> Result<HmacAuth, (String, String)> {
        let nonces = match cfg.nonce_store {
            Store::Local | Store::Memory => Nonces::Local(
                Cache::builder()
                    .max_capacity(LOCAL_NONCES)
                    .expire_after(UntilWindowEnds)
                    .build(),
            ),
            Store::Redis => Nonces::Redis(redis.ok_or_else(|| {
                (
                    "nonce_store".to_string(),
                    "`nonce_store: redis` needs the top-level `redis` section".to_string(),
                )
            })?),
            Store::Hybrid => {
                return Err(("nonce_store".into(), "must be `local` or `redis`".into()));
            }
        };
        Ok(HmacAuth {
            skew: cfg.clock_skew.0.as_secs(),
            credentials,
            nonces,
        })
    }

    pub async fn authenticate(
        &self,
        ctx: &mut RequestCtx<'_>,
        req: &request::Parts,
        body: &mut RequestBody,
    ) -> Result<(), GatewayError> {
        let header = |name: &HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(key_id), Some(timestamp), Some(nonce), Some(signature)) = (
            header(&KEY_ID),
            header(&TIMESTAMP),
            header(&NONCE),
            header(&SIGNATURE),
        ) else {
            return Err(REFUSED);
        };
        if nonce.is_empty() || nonce.len() > MAX_NONCE {
            return Err(REFUSED);
        }
        let ts: u64 = timestamp.parse().map_err(|_| REFUSED)?;
        let now = super::unix_now();
        if ts.abs_diff(now) > self.skew {
            return Err(REFUSED);
        }
        let (key, consumer) = self.credentials.0.get(key_id).ok_or(REFUSED)?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| REFUSED)?;
        // Only now, for a known key, is the body worth reading.
        let body = body.read_whole().await?;
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let digest = crate::hex::encode(&Sha256::digest(&body));
        let message = format!("{}\n{target}\n{timestamp}\n{nonce}\n{digest}", req.method);
        // Constant time.
        hmac::verify(key, message.as_bytes(), &signature).map_err(|_| REFUSED)?;
        // The nonce must be remembered until its timestamp is out of the window.
        let ttl = Duration::from_secs((ts + self.skew).saturating_sub(now) + 1);
        if !self.first_use(key_id, nonce, ttl).await? {
            tracing::debug!(
                request_id = crate::telemetry::id_text(&ctx.request_id),
                key_id,
                "hmac_auth: nonce replayed"
            );
            return Err(REFUSED);
        }
        ctx.consumer = Some(consumer.clone());
        Ok(())
    }

    /// Records the nonce; false if it was seen before.
    async fn first_use(&self, key_id: &str, nonce: &str, ttl: Duration) -> Result<bool, GatewayError> {
        let key = format!("portcullis:nonce:{key_id}:{nonce}");
        match &self.nonces {
            Nonces::Local(cache) => Ok(cache.entry(key).or_insert(ttl).is_fresh()),
            Nonces::Redis(redis) => {
                let mut pipe = redis::pipe();
                pipe.cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64);
                let (set,): (Option<String>,) =
                    redis
                        .query(&pipe)
                        .await
                        .map_err(|cause| GatewayError::Unavailable {
                            plugin: "hmac_auth",
                            cause,
                        })?;
                Ok(set.is_some())
            }
        }
    }
}
