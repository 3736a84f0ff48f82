//! `api_key`: the caller names itself with a key in a header (or a query
//! parameter); the key identifies a consumer.
//!
//! Keys are never compared as text: the presented key is hashed (SHA-256)
//! and the digest looked up in a map built from every consumer's `key`
//! (hashed at load) and `key_sha256`. One lookup, whatever the number of
//! consumers, and no early-exit comparison against a secret to time.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, request};
use sha2::{Digest, Sha256};

use super::{Consumer, RequestCtx, percent_decode, query_value};
use crate::config::{ApiKeyConfig, ConsumerConfig};
use crate::error::GatewayError;

/// SHA-256 of a key → its consumer.
#[derive(Default)]
pub struct KeyIndex(HashMap<[u8; 32], Arc<Consumer>>);

impl KeyIndex {
    /// Indexes every consumer's keys. Errors name the field: a bad
    /// `key_sha256`, or a key two consumers share.
    pub fn build(
        configs: &[ConsumerConfig],
        consumers: &HashMap<String, Arc<Consumer>>,
    ) -> Result<KeyIndex, Vec<(String, String)>> {
        let mut index = HashMap::new();
        let mut errors = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let Some(consumer) = consumers.get(&c.name) else {
                continue;
            };
            for (j, k) in c.api_keys.iter().enumerate() {
                let field = format!("consumers[{i}].api_keys[{j}]");
                let digest = match (&k.key, &k.key_sha256) {
                    (Some(key), None) if !key.is_empty() => Sha256::digest(key.as_bytes()).into(),
                    (None, Some(hex)) => match crate::hex::decode::<32>(hex.as_bytes()) {
                        Some(d) => d,
                        None => {
                            errors.push((
                                format!("{field}.key_sha256"),
                                "must be 64 hex digits (a SHA-256)".to_string(),
                            ));
                            continue;
                        }
                    },
                    _ => {
                        errors.push((
                            field,
                            "needs one of `key` (not empty) or `key_sha256`".to_string(),
                        ));
                        continue;
                    }
                };
                if let Some(other) = index.insert(digest, consumer.clone()) {
                    errors.push((
                        field,
                        format!("this key is already the key of consumer `{}`", other.name),
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(KeyIndex(index))
        } else {
            Err(errors)
        }
    }

    fn find(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        self.0.get(&digest)
    }
}

/// Keys longer than this are refused without hashing.
const MAX_KEY: usize = 4096;

pub struct ApiKey {
    header: HeaderName,
    query: Option<String>,
    hide_credentials: bool,
    keys: Arc<KeyIndex>,
}

impl ApiKey {
    pub fn new(cfg: &ApiKeyConfig, keys: Arc<KeyIndex>) -> ApiKey {
        ApiKey {
            // Checked by validation.
            header: HeaderName::from_bytes(cfg.header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-api-key")),
            query: cfg.query.clone(),
            hide_credentials: cfg.hide_credentials,
            keys,
        }
    }

    /// Identifies the consumer, or refuses with 401.
    pub fn authenticate(
        &self,
        ctx: &mut RequestCtx<'_>,
        req: &mut request::Parts,
    ) -> Result<(), GatewayError> {
        let refused = || GatewayError::Unauthorized {
            plugin: "api_key",
            challenge: "ApiKey realm=\"portcullis\"",
            detail: "a valid API key is required",
        };
        let from_header = req.headers.get(&self.header).map(|v| Cow::Borrowed(v.as_bytes()));
        let presented = from_header.or_else(|| {
            let name = self.query.as_deref()?;
            query_value(req.uri.query()?, name).map(|v| Cow::Owned(v.into_bytes()))
        });
        let key = presented
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY)
            .ok_or_else(refused)?;
        let consumer = self.keys.find(&key).ok_or_else(refused)?.clone();
        ctx.consumer = Some(consumer);
        if self.hide_credentials {
            req.headers.remove(&self.header);
            if let Some(name) = &self.query {
                strip_query_param(req, name);
            }
        }
        Ok(())
    }
}

/// Removes every `name=...` from the request's query.
fn strip_query_param(req: &mut request::Parts, name: &str) {
    let Some(query) = req.uri.query() else {
        return;
    };
    let kept: Vec<String> = query
        .split('&')
        .filter(|pair| percent_decode(pair.split_once('=').map_or(pair, |(k, _)| k)) != name)
        .map(str::to_string)
        .collect();
    super::set_query(req, &kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values() {
        assert_eq!(
            query_value("a=1&api_key=k%2By&b", "api_key").as_deref(),
            Some("k+y")
        );
        assert_eq!(query_value("a=1", "api_key"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn query_credentials_are_stripped() {
        let (mut parts, ()) = http::Request::get("/x?a=1&api_key=s&b=2")
            .body(())
            .unwrap()
            .into_parts();
        strip_query_param(&mut parts, "api_key");
        assert_eq!(parts.uri, "/x?a=1&b=2");
        let (mut parts, ()) = http::Request::get("/x?api_key=s").body(()).unwrap().into_parts();
        strip_query_param(&mut parts, "api_key");
        assert_eq!(parts.uri, "/x");
    }
}
