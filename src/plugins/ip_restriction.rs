//! `ip_restriction`: allow/deny CIDR lists (IPv4 and IPv6) on the client IP
//! derived with `trusted_proxies`. Deny wins; with an allow list, anything
//! outside it is refused.

use std::net::IpAddr;

use crate::config::{Cidr, IpRestrictionConfig};
use crate::error::GatewayError;

pub struct IpRestriction {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl IpRestriction {
    pub fn new(cfg: &IpRestrictionConfig) -> Self {
        IpRestriction {
            allow: cfg.allow.clone(),
            deny: cfg.deny.clone(),
        }
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), GatewayError> {
        let denied = self.deny.iter().any(|c| c.contains(&ip));
        let allowed = self.allow.is_empty() || self.allow.iter().any(|c| c.contains(&ip));
        if denied || !allowed {
            Err(GatewayError::Forbidden(
                "your address is not allowed to use this route",
            ))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_and_allow_restricts() {
        let cfg = IpRestrictionConfig {
            allow: vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()],
            deny: vec!["10.9.0.0/16".parse().unwrap()],
        };
        let p = IpRestriction::new(&cfg);
        assert!(p.check("10.1.2.3".parse().unwrap()).is_ok());
        assert!(p.check("2001:db8::7".parse().unwrap()).is_ok());
        assert!(p.check("10.9.1.1".parse().unwrap()).is_err());
        assert!(p.check("192.168.1.1".parse().unwrap()).is_err());
        let deny_only = IpRestriction::new(&IpRestrictionConfig {
            allow: vec![],
            deny: vec!["1.2.3.4".parse().unwrap()],
        });
        assert!(deny_only.check("1.2.3.5".parse().unwrap()).is_ok());
        assert!(deny_only.check("1.2.3.4".parse().unwrap()).is_err());
    }
}
