//! Upstream services: their targets, the balancer that picks one, and the
//! keep-alive connection pool that reaches them (HTTP/1.1 or HTTP/2).

pub mod balance;
pub mod breaker;
pub mod fetch;
pub mod health;
pub mod http1;
pub mod pool;
pub mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};

pub use balance::{Balancer, HashOn, PickContext};
pub use pool::{Body, CallError, Pool, PoolConfig, SendError};

use crate::config::{Protocol, UpstreamConfig};

/// Checks a target URL: `http://host:port` or `https://host:port`, no
/// path. Returns its authority and whether it is `https`.
pub fn parse_target_url(url: &str) -> Result<(Authority, bool), String> {
    let (authority, uri) = parse_url(url)?;
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("`{url}`: a target is host:port only, without a path"));
    }
    Ok((authority, uri.scheme_str() == Some("https")))
}

/// The name a target's TLS certificate must carry: its host (a DNS name or
/// an IP address).
pub fn server_name(authority: &Authority) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| format!("`{host}` is not a valid TLS server name"))
}

/// Checks an `http` or `https` URL with a host and no credentials. Returns
/// its authority (port 80 or 443 when none is written) and the parsed URL.
pub(crate) fn parse_url(url: &str) -> Result<(Authority, http::Uri), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err(format!("`{url}`: the scheme must be http or https")),
    };
    let auth = uri
        .authority()
        .ok_or_else(|| format!("`{url}` has no host"))?
        .clone();
    if auth.as_str().contains('@') {
        return Err(format!("`{url}`: credentials in URLs are not allowed"));
    }
    // `http::Authority` reads a port it cannot hold (`:70000`) as none at
    // all: the default port would be dialled in its place.
    let written_port = auth
        .as_str()
        .strip_prefix(auth.host())
        .and_then(|r| r.strip_prefix(':'));
    if let Some(port) = written_port
        && !port.parse::<u16>().is_ok_and(|p| p != 0)
    {
        return Err(format!("`{url}`: the port must be a number from 1 to 65535"));
    }
    let auth = if written_port.is_some() {
        auth
    } else {
        format!("{}:{default_port}", auth.host())
            .parse()
            .map_err(|_| format!("`{url}` has an invalid host"))?
    };
    Ok((auth, uri))
}

/// One backend instance. Lives as long as any request using it.
pub struct Target {
    pub authority: Authority,
    /// `host:port`, the `target` metric label.
    pub label: Arc<str>,
    /// `host:port` as a JSON string literal, for access log lines.
    pub label_json: Box<str>,
    /// `portcullis_upstream_requests_total{upstream,target,status}`, by status.
    pub requests: crate::telemetry::metrics::CounterCache,
    pub weight: u32,
    in_flight: AtomicUsize,
    pub pool: Pool,
    /// Passive and active health: consecutive failures, ejection.
    pub health: health::TargetHealth,
    /// `health_checks.active`, when configured.
    pub active: Option<crate::config::ActiveHealthCheckConfig>,
}

impl Target {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Holds a target's in-flight slot until dropped, when the response body
/// is done (the body's connection goes back to the pool by itself).
pub struct InFlight {
    target: Arc<Target>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Upstream {
    pub name: Arc<str>,
    /// The name as a JSON string literal, for access log lines.
    pub name_json: Box<str>,
    /// `portcullis_upstream_duration_seconds{upstream}`.
    pub duration: prometheus_client::metrics::histogram::Histogram,
    pub targets: Vec<Arc<Target>>,
    balancer: Balancer,
    pub protocol: Protocol,
    pub read_timeout: Duration,
    /// `circuit_breaker`, when configured.
    pub breaker: Option<Arc<breaker::Breaker>>,
    /// `health_checks.passive` (on by default).
    pub passive: health::Passive,
    /// `retries` (on by default: once, on connect failures).
    pub retry: retry::Policy,
    /// Whether calls go over TLS.
    pub tls: bool,
}

/// Logs and exports a change of whether `target` takes traffic.
fn report(upstream: &Arc<str>, target: &Target, change: health::Change, why: &str) {
    let healthy = match change {
        health::Change::None => return,
        health::Change::Ejected => {
            tracing::warn!(upstream = %upstream, target = %target.authority, "target out of rotation: {why}");
            0
        }
        health::Change::Readmitted => {
            tracing::info!(upstream = %upstream, target = %target.authority, "target back in rotation: {why}");
            1
        }
    };
    crate::telemetry::metrics()
        .target_healthy(upstream, &target.label)
        .set(healthy);
}

impl Upstream {
    /// Builds from the config; errors (which validation reports first) name
    /// the field. A target of `previous` (the same upstream in the config
    /// being replaced) that is unchanged is kept as it is, with its pool of
    /// open connections and its counters: a reload causes no reconnect storm.
    pub fn build(cfg: &UpstreamConfig, previous: Option<&Upstream>) -> Result<Upstream, (String, String)> {
        let http2 = matches!(cfg.protocol, Protocol::Http2 | Protocol::Grpc);
        if cfg.targets.is_empty() {
            return Err(("targets".into(), "at least one target is needed".into()));
        }
        let parsed = cfg
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| parse_target_url(&t.url).map_err(|e| (format!("targets[{i}].url"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        // TLS when the targets say `https` or the upstream has a `tls` section.
        let https = parsed.iter().filter(|(_, https)| *https).count();
        if https != 0 && https != parsed.len() {
            return Err((
                "targets".into(),
                "mixes http and https targets; an upstream speaks one or the other".into(),
            ));
        }
        let tls = match (&cfg.tls, https != 0) {
            (None, false) => None,
            (settings, _) => {
                let settings = settings.clone().unwrap_or_default();
                let alpn: &[&[u8]] = if http2 { &[b"h2"] } else { &[b"http/1.1"] };
                let client = crate::tls::client_config(&settings, alpn)
                    .map_err(|(field, e)| (format!("tls.{field}"), e))?;
                Some((client, settings.server_name))
            }
        };
        let active = cfg.health_checks.as_ref().and_then(|h| h.active.clone());
        let targets: Vec<Arc<Target>> = parsed
            .into_iter()
            .enumerate()
            .map(|(i, (authority, _))| {
                let t = &cfg.targets[i];
                let tls = match &tls {
                    None => None,
                    Some((client, name)) => Some(pool::PoolTls {
                        client: client.clone(),
                        server_name: match name {
                            Some(n) => rustls::pki_types::ServerName::try_from(n.clone()).map_err(|_| {
                                (
                                    "tls.server_name".to_string(),
                                    format!("`{n}` is not a valid TLS server name"),
                                )
                            })?,
                            None => server_name(&authority).map_err(|e| (format!("targets[{i}].url"), e))?,
                        },
                    }),
                };
                let pool_cfg = PoolConfig {
                    http2,
                    tls,
                    connect_timeout: cfg.timeouts.connect.0,
                    write_timeout: cfg.timeouts.write.0,
                    max_idle: cfg.keepalive.max_idle_per_target,
                    idle_timeout: cfg.keepalive.idle_timeout.0,
                };
                let weight = t.weight.max(1);
                let kept = previous.and_then(|p| {
                    p.targets.iter().find(|old| {
                        old.authority == authority
                            && old.weight == weight
                            && *old.pool.config() == pool_cfg
                            && old.active == active
                    })
                });
                if let Some(old) = kept {
                    return Ok(old.clone());
                }
                Ok(Arc::new(Target {
                    pool: Pool::new(authority.clone(), pool_cfg),
                    label: authority.as_str().into(),
                    label_json: crate::telemetry::access_log::json_literal(authority.as_str()),
                    requests: Default::default(),
                    authority,
                    weight,
                    in_flight: AtomicUsize::new(0),
                    health: Default::default(),
                    active: active.clone(),
                }))
            })
            .collect::<Result<_, (String, String)>>()?;
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        let hash_on = cfg
            .hash_on
            .as_deref()
            .map(HashOn::parse)
            .transpose()
            .map_err(|e| ("hash_on".to_string(), e))?;
        let name: Arc<str> = cfg.name.as_str().into();
        // The same settings keep the circuit's state across a reload.
        let breaker = cfg.circuit_breaker.as_ref().map(|c| {
            match previous
                .and_then(|p| p.breaker.as_ref())
                .filter(|b| b.settings == *c)
            {
                Some(old) => old.clone(),
                None => Arc::new(breaker::Breaker::new(c, &name)),
            }
        });
        let passive = cfg.health_checks.as_ref().and_then(|h| h.passive.as_ref());
        Ok(Upstream {
            breaker,
            passive: health::Passive {
                unhealthy_threshold: passive.map_or(5, |p| p.unhealthy_threshold),
                timeout_threshold: passive.map_or(3, |p| p.timeout_threshold),
            },
            duration: crate::telemetry::metrics().upstream_duration(&name),
            name_json: crate::telemetry::access_log::json_literal(&name),
            name,
            balancer: Balancer::new(cfg.load_balancing, &weights, hash_on),
            targets,
            protocol: cfg.protocol,
            read_timeout: cfg.timeouts.read.0,
            retry: retry::Policy::new(cfg.retries.as_ref()),
            tls: tls.is_some(),
        })
    }

    /// Picks a target that is not ejected and takes an in-flight slot on
    /// it; `None` when every target is ejected. A retry passes the targets
    /// already tried in `avoid`: another one is taken when there is one.
    pub fn pick(&self, ctx: &PickContext<'_>, avoid: &[Arc<Target>]) -> Option<(Arc<Target>, InFlight)> {
        let n = self.targets.len();
        let first = self.balancer.pick(n, ctx, |i| self.targets[i].in_flight());
        // The balancer's choice, or the next target that takes traffic.
        let usable = |i: &usize| !self.targets[*i].health.is_ejected();
        let fresh = |i: &usize| !avoid.iter().any(|t| Arc::ptr_eq(t, &self.targets[*i]));
        let mut order = (0..n).map(|k| (first + k) % n);
        let i = match avoid {
            [] => order.find(usable)?,
            _ => order
                .clone()
                .find(|i| usable(i) && fresh(i))
                .or_else(|| order.find(usable))?,
        };
        let target = self.targets[i].clone();
        target.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((target.clone(), InFlight { target }))
    }

    /// Counts a call's outcome for its target's health; logs and exports an
    /// ejection.
    pub fn record(&self, target: &Target, outcome: health::Outcome) {
        let change = target.health.record(outcome, self.passive);
        if change != health::Change::None {
            report(&self.name, target, change, "consecutive failed calls");
        }
    }

    /// Starts the active health checks of the targets, if configured (once
    /// per target). Needs a tokio runtime.
    pub fn start_checks(&self) {
        for t in &self.targets {
            health::start_checks(t, self);
        }
    }

    pub fn scheme(&self) -> Scheme {
        if self.tls { Scheme::HTTPS } else { Scheme::HTTP }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        assert_eq!(
            parse_target_url("http://127.0.0.1:9001").unwrap().0.as_str(),
            "127.0.0.1:9001"
        );
        assert_eq!(
            parse_target_url("http://users.internal").unwrap().0.as_str(),
            "users.internal:80"
        );
        assert_eq!(
            parse_target_url("https://x").unwrap(),
            ("x:443".parse().unwrap(), true)
        );
        assert!(parse_target_url("ftp://x:1").is_err());
        assert!(parse_target_url("http://x:1/path").is_err());
        assert!(parse_target_url("http://u:p@x:1").is_err());
        assert_eq!(
            parse_target_url("http://[::1]:9001").unwrap().0.as_str(),
            "[::1]:9001"
        );
        // A port that does not fit is an error, not the default port.
        for url in [
            "http://127.0.0.1:70000",
            "http://x:0",
            "http://x:",
            "http://[::1]:99999",
        ] {
            let e = parse_target_url(url).unwrap_err();
            assert!(
                e.contains("the port must be a number from 1 to 65535"),
                "{url}: {e}"
            );
        }
    }
}
