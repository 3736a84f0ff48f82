//! Semantic checks on a parsed [`Config`]: references, uniqueness, value
//! ranges, and capabilities not built yet (refused by name, never ignored).
//! Patterns (paths, regexes, rewrites) are checked where they are compiled,
//! in `crate::snapshot`.

use std::collections::HashSet;

use http::{HeaderName, HeaderValue};

use super::FieldError;
use super::de::did_you_mean;
use super::model::*;

pub fn validate(config: &Config) -> Vec<FieldError> {
    let mut v = Validator { errors: Vec::new() };
    v.check(config);
    v.errors
}

struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn check(&mut self, c: &Config) {
        if c.version != 1 {
            self.err(
                "version",
                format!(
                    "unsupported config version {}; this gateway reads version 1",
                    c.version
                ),
            );
        }
        self.server(&c.server);
        if let Some(admin) = &c.admin {
            let has_token = admin.token.as_deref().is_some_and(|t| !t.is_empty());
            if !has_token && !admin.address.ip().is_loopback() {
                self.err(
                    "admin.token",
                    format!(
                        "a token is required for the admin API on the non-loopback address {}",
                        admin.address
                    ),
                );
            }
        }
        let mut consumer_names = HashSet::new();
        for (i, consumer) in c.consumers.iter().enumerate() {
            crate::yielding::point();
            let p = format!("consumers[{i}]");
            if consumer.name.is_empty() {
                self.err(format!("{p}.name"), "must not be empty");
            } else if !consumer_names.insert(consumer.name.as_str()) {
                self.err(
                    format!("{p}.name"),
                    format!("duplicate consumer name `{}`", consumer.name),
                );
            }
            self.plugins(&consumer.plugins, &format!("{p}.plugins"));
            // These run before the consumer is known: on a consumer they would never run.
            let pl = &consumer.plugins;
            for (name, present) in [
                ("ip_restriction", pl.ip_restriction.is_some()),
                ("waf", pl.waf.is_some()),
                ("cors", pl.cors.is_some()),
                ("api_key", pl.api_key.is_some()),
                ("jwt", pl.jwt.is_some()),
                ("phantom_token", pl.phantom_token.is_some()),
                ("hmac_auth", pl.hmac_auth.is_some()),
            ] {
                if present {
                    self.err(
                        format!("{p}.plugins.{name}"),
                        format!("`{name}` runs before the caller is identified, so it cannot be set per consumer; set it on the route or globally"),
                    );
                }
            }
        }
        self.plugins(&c.plugins, "plugins");

        let mut names = HashSet::new();
        for (i, u) in c.upstreams.iter().enumerate() {
            crate::yielding::point();
            let p = format!("upstreams[{i}]");
            if !names.insert(u.name.as_str()) {
                self.err(
                    format!("{p}.name"),
                    format!("duplicate upstream name `{}`", u.name),
                );
            }
            self.upstream(u, &p);
        }
        let upstreams: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
        let mut names = HashSet::new();
        for (i, r) in c.routes.iter().enumerate() {
            crate::yielding::point();
            let p = format!("routes[{i}]");
            if !names.insert(r.name.as_str()) {
                self.err(format!("{p}.name"), format!("duplicate route name `{}`", r.name));
            }
            self.route(r, &p, &upstreams);
        }
    }

    fn server(&mut self, s: &ServerConfig) {
        if s.listeners.is_empty() {
            self.err("server.listeners", "at least one listener is needed");
        }
        let (mut names, mut addrs) = (HashSet::new(), HashSet::new());
        for (i, l) in s.listeners.iter().enumerate() {
            let p = format!("server.listeners[{i}]");
            if let Some(name) = &l.name
                && !names.insert(name.as_str())
            {
                self.err(format!("{p}.name"), format!("duplicate listener name `{name}`"));
            }
            // Port 0 asks the OS for any free port: never a clash.
            if l.address.port() != 0 && !addrs.insert(l.address) {
                self.err(
                    format!("{p}.address"),
                    format!("address {} is used by another listener", l.address),
                );
            }
        }
        let l = &s.limits;
        let p = "server.limits";
        if l.max_connections == 0 {
            self.err(format!("{p}.max_connections"), "must be at least 1");
        }
        if l.max_request_header_bytes.0 < 1024 {
            self.err(format!("{p}.max_request_header_bytes"), "must be at least 1KiB");
        }
        if l.max_request_header_bytes.0 > 1 << 20 {
            self.err(format!("{p}.max_request_header_bytes"), "must be at most 1MiB");
        }
        for (name, d) in [
            ("header_read_timeout", l.header_read_timeout),
            ("idle_timeout", l.idle_timeout),
            ("request_timeout", l.request_timeout),
        ] {
            if d.0.is_zero() {
                self.err(format!("{p}.{name}"), "must be above zero");
            }
        }
        if l.http2_max_concurrent_streams == 0 {
            self.err(format!("{p}.http2_max_concurrent_streams"), "must be at least 1");
        }
        if HeaderName::from_bytes(s.request_id.header.as_bytes()).is_err() {
            self.err(
                "server.request_id.header",
                format!("`{}` is not a valid header name", s.request_id.header),
            );
        }
        if let Some(log) = s.access_log.as_ref().filter(|a| a.enabled) {
            if log.format != "json" {
                self.err(
                    "server.access_log.format",
                    format!(
                        "unknown format `{}`; the access log is written as `json`",
                        log.format
                    ),
                );
            }
            if log.buffer.0 < 4096 {
                self.err("server.access_log.buffer", "must be at least 4KiB");
            }
            if log.path.is_empty() {
                self.err("server.access_log.path", "must be `stdout` or a file path");
            }
        }
        if let Some(t) = &s.tracing {
            if let Some(endpoint) = t.otlp_endpoint.as_deref().filter(|e| !e.is_empty())
                && let Err(e) = crate::telemetry::trace::traces_url(endpoint)
            {
                self.err("server.tracing.otlp_endpoint", e);
            }
            if !(0.0..=1.0).contains(&t.sample_ratio) {
                self.err("server.tracing.sample_ratio", "must be between 0 and 1");
            }
            if t.service_name.is_empty() {
                self.err("server.tracing.service_name", "must not be empty");
            }
        }
        if let Some(path) = &s.metrics_path
            && (!path.starts_with('/') || path.contains(['?', '#', ' ']))
        {
            self.err(
                "server.metrics_path",
                format!("`{path}` is not a path (it must start with `/`)"),
            );
        }
    }

    fn upstream(&mut self, u: &UpstreamConfig, p: &str) {
        if u.name.is_empty() {
            self.err(format!("{p}.name"), "must not be empty");
        }
        if u.targets.is_empty() {
            self.err(format!("{p}.targets"), "at least one target is needed");
        }
        for (i, t) in u.targets.iter().enumerate() {
            let tp = format!("{p}.targets[{i}]");
            if let Err(msg) = crate::upstream::parse_target_url(&t.url) {
                self.err(format!("{tp}.url"), msg);
            }
            if t.weight == 0 || t.weight > 10_000 {
                self.err(format!("{tp}.weight"), "must be between 1 and 10000");
            }
        }
        match (&u.hash_on, u.load_balancing) {
            (None, LoadBalancing::ConsistentHash) => self.err(
                format!("{p}.hash_on"),
                "is required for consistent_hash (ip, consumer, header:NAME or cookie:NAME)",
            ),
            (Some(h), _) => {
                if let Err(msg) = crate::upstream::HashOn::parse(h) {
                    self.err(format!("{p}.hash_on"), msg);
                }
            }
            _ => {}
        }
        if let Some(a) = u.health_checks.as_ref().and_then(|h| h.active.as_ref()) {
            let q = format!("{p}.health_checks.active");
            if !a.path.starts_with('/') || a.path.parse::<http::uri::PathAndQuery>().is_err() {
                self.err(format!("{q}.path"), "must be a path starting with `/`");
            }
            if a.interval.0 < std::time::Duration::from_millis(100) {
                self.err(format!("{q}.interval"), "must be at least 100ms");
            }
            if a.timeout.0.is_zero() {
                self.err(format!("{q}.timeout"), "must be above zero");
            }
            for (name, n) in [
                ("healthy_threshold", a.healthy_threshold),
                ("unhealthy_threshold", a.unhealthy_threshold),
            ] {
                if n == 0 {
                    self.err(format!("{q}.{name}"), "must be at least 1");
                }
            }
        }
        if let Some(cb) = &u.circuit_breaker {
            if !(cb.failure_rate > 0.0 && cb.failure_rate <= 1.0) {
                self.err(format!("{p}.circuit_breaker.failure_rate"), "must be in (0, 1]");
            }
            if cb.min_requests == 0 {
                self.err(format!("{p}.circuit_breaker.min_requests"), "must be at least 1");
            }
            if cb.half_open_requests == 0 {
                self.err(
                    format!("{p}.circuit_breaker.half_open_requests"),
                    "must be at least 1",
                );
            }
            if cb.window.0.is_zero() {
                self.err(format!("{p}.circuit_breaker.window"), "must be more than 0");
            }
        }
        if let Some(r) = &u.retries {
            if r.attempts > crate::upstream::retry::MAX_ATTEMPTS {
                self.err(
                    format!("{p}.retries.attempts"),
                    format!("must be at most {}", crate::upstream::retry::MAX_ATTEMPTS),
                );
            }
            if let Err(msg) = crate::upstream::retry::RetryOn::parse(&r.on) {
                self.err(format!("{p}.retries.on"), msg);
            }
            if r.budget.is_some_and(|b| !(0.0..=1.0).contains(&b)) {
                self.err(format!("{p}.retries.budget"), "must be between 0 and 1");
            }
        }
        for (name, d) in [
            ("connect", u.timeouts.connect),
            ("read", u.timeouts.read),
            ("write", u.timeouts.write),
        ] {
            if d.0.is_zero() {
                self.err(format!("{p}.timeouts.{name}"), "must be above zero");
            }
        }
    }

    fn route(&mut self, r: &RouteConfig, p: &str, upstreams: &[&str]) {
        if r.name.is_empty() {
            self.err(format!("{p}.name"), "must not be empty");
        }
        let actions = [r.upstream.is_some(), r.respond.is_some(), r.aggregate.is_some()];
        match actions.iter().filter(|a| **a).count() {
            0 => self.err(
                p.to_string(),
                "a route needs `upstream`, `respond` or `aggregate`",
            ),
            1 => {}
            _ => self.err(
                p.to_string(),
                "`upstream`, `respond` and `aggregate` exclude each other",
            ),
        }
        if let Some(name) = &r.upstream
            && !upstreams.contains(&name.as_str())
        {
            let msg = match did_you_mean(name, upstreams.iter().copied()) {
                Some(s) => format!("unknown upstream `{name}` (did you mean `{s}`?)"),
                None => format!("unknown upstream `{name}`"),
            };
            self.err(format!("{p}.upstream"), msg);
        }
        if let Some(a) = &r.aggregate {
            for (name, c) in &a.calls {
                if !upstreams.contains(&c.upstream.as_str()) {
                    let msg = match did_you_mean(&c.upstream, upstreams.iter().copied()) {
                        Some(s) => format!("unknown upstream `{}` (did you mean `{s}`?)", c.upstream),
                        None => format!("unknown upstream `{}`", c.upstream),
                    };
                    self.err(format!("{p}.aggregate.calls.{name}.upstream"), msg);
                }
            }
        }
        if r.grpc_transcode.is_some() && r.upstream.is_none() {
            self.err(
                format!("{p}.grpc_transcode"),
                "needs the route's `upstream` (a gRPC one)",
            );
        }
        for (i, m) in r.matcher.methods.iter().enumerate() {
            if crate::router::method_bit(m).is_none() {
                self.err(
                    format!("{p}.match.methods[{i}]"),
                    format!("`{m}` is not a known HTTP method (write it in capitals, e.g. GET)"),
                );
            }
        }
        for (i, h) in r.matcher.hosts.iter().enumerate() {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty() || bare.contains('*') || bare.contains('/') || bare.contains(' ') {
                self.err(
                    format!("{p}.match.hosts[{i}]"),
                    format!("`{h}` is not a host name (a leading `*.` is the only wildcard)"),
                );
            }
        }
        for name in r.matcher.headers.keys() {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.err(format!("{p}.match.headers.{name}"), "not a valid header name");
            }
        }
        for (field, value) in [("strip_prefix", &r.strip_prefix), ("rewrite", &r.rewrite)] {
            if let Some(v) = value
                && !v.starts_with('/')
            {
                self.err(format!("{p}.{field}"), "must start with `/`");
            }
        }
        if r.timeout.is_some_and(|t| t.0.is_zero()) {
            self.err(format!("{p}.timeout"), "must be above zero");
        }
        if let Some(resp) = &r.respond {
            if !(100..=599).contains(&resp.status) || (100..200).contains(&resp.status) {
                self.err(
                    format!("{p}.respond.status"),
                    "must be a final status code (200-599)",
                );
            }
            self.headers(&resp.headers, &format!("{p}.respond.headers"));
        }
        self.plugins(&r.plugins, &format!("{p}.plugins"));
    }

    fn headers(&mut self, map: &std::collections::BTreeMap<String, String>, p: &str) {
        for (k, v) in map {
            if HeaderName::from_bytes(k.as_bytes()).is_err() {
                self.err(format!("{p}.{k}"), "not a valid header name");
            } else if HeaderValue::from_str(v).is_err() {
                self.err(format!("{p}.{k}"), "not a valid header value");
            }
        }
    }

    fn header_transform(&mut self, h: &HeaderTransformConfig, p: &str) {
        self.headers(&h.add, &format!("{p}.add"));
        self.headers(&h.set, &format!("{p}.set"));
        for (i, name) in h.remove.iter().enumerate() {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.err(format!("{p}.remove[{i}]"), "not a valid header name");
            }
        }
        for (from, to) in &h.rename {
            if HeaderName::from_bytes(from.as_bytes()).is_err()
                || HeaderName::from_bytes(to.as_bytes()).is_err()
            {
                self.err(format!("{p}.rename.{from}"), "not a valid header name");
            }
        }
    }

    fn plugins(&mut self, plugins: &PluginsConfig, p: &str) {
        let PluginsConfig {
            ip_restriction,
            waf: _,
            cors: _,
            request_validation: _,
            api_key,
            jwt: _,
            phantom_token: _,
            hmac_auth: _,
            acl,
            rate_limit: _,
            request_transform,
            cache: _,
            response_transform,
            compression: _,
        } = plugins;
        if let Some(ip) = ip_restriction
            && ip.allow.is_empty()
            && ip.deny.is_empty()
        {
            self.err(format!("{p}.ip_restriction"), "needs `allow` or `deny`");
        }
        if let Some(t) = request_transform {
            self.header_transform(&t.headers, &format!("{p}.request_transform.headers"));
        }
        if let Some(t) = response_transform {
            self.header_transform(&t.headers, &format!("{p}.response_transform.headers"));
        }
        if let Some(k) = api_key {
            if HeaderName::from_bytes(k.header.as_bytes()).is_err() {
                self.err(
                    format!("{p}.api_key.header"),
                    format!("`{}` is not a valid header name", k.header),
                );
            }
            if k.query.as_deref() == Some("") {
                self.err(format!("{p}.api_key.query"), "must not be empty");
            }
        }
        if let Some(a) = acl
            && a.allow.is_empty()
            && a.deny.is_empty()
        {
            self.err(format!("{p}.acl"), "needs `allow` or `deny`");
        }
    }
}
