//! `acl`: allows or denies by the consumer's groups (after auth). A request
//! with no consumer, or one in a `deny` group, or in none of the `allow`
//! groups (when `allow` is given), gets 403.

use super::RequestCtx;
use crate::config::AclConfig;
use crate::error::GatewayError;

pub struct Acl {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl Acl {
    pub fn new(cfg: &AclConfig) -> Acl {
        Acl {
            allow: cfg.allow.clone(),
            deny: cfg.deny.clone(),
        }
    }

    pub fn check(&self, ctx: &RequestCtx<'_>) -> Result<(), GatewayError> {
        let denied = GatewayError::Forbidden("access to this route is not allowed for this caller");
        let Some(consumer) = &ctx.consumer else {
            return Err(denied);
        };
        let member = |groups: &[String]| consumer.groups.iter().any(|g| groups.contains(g));
        if member(&self.deny) || (!self.allow.is_empty() && !member(&self.allow)) {
            return Err(denied);
        }
        Ok(())
    }
}
