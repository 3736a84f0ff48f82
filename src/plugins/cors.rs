//! `cors`: cross-origin requests per the Fetch standard.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//!   is answered here, 204, and never reaches the upstream or the auth
//!   phases (browsers send it without credentials).
//! - Other requests from an allowed origin get `Access-Control-Allow-Origin`
//!   (and `-Allow-Credentials`, `-Expose-Headers`) on their answer, whatever
//!   it is, gateway-made errors included, so the page can read it.
//! - A disallowed origin gets no CORS header at all; the browser then keeps
//!   the answer from the page.
//! - `Vary: Origin` goes on every answer that depends on the origin; `*` is
//!   never sent with credentials (a config error).

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, request};

use crate::body::ResponseBody;
use crate::config::CorsConfig;
use crate::plugins::Flow;

const DEFAULT_METHODS: &str = "GET, HEAD, PUT, PATCH, POST, DELETE";

enum OriginRule {
    /// `scheme://host[:port]`, lowercased.
    Exact(String),
    /// `scheme://*.example.com`: any subdomain (not the domain itself).
    Subdomains { scheme: String, suffix: String },
}

pub struct Cors {
    any_origin: bool,
    origins: Vec<OriginRule>,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    /// Lowercased; `None` = whatever the preflight asks for.
    headers: Option<Vec<String>>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// What the answer to a request with an `Origin` gets, decided in the
/// request phase and applied to whatever answer goes out.
#[derive(Clone)]
pub struct CorsAnswer {
    plugin: Arc<Cors>,
    /// The origin to allow, when it is allowed.
    allow: Option<HeaderValue>,
}

impl Cors {
    /// Errors name the field under `cors`.
    pub fn new(cfg: &CorsConfig) -> Result<Cors, (String, String)> {
        if cfg.origins.is_empty() {
            return Err((
                "origins".into(),
                "list the allowed origins (or `*` for any)".into(),
            ));
        }
        let mut any_origin = false;
        let mut origins = Vec::new();
        for (i, o) in cfg.origins.iter().enumerate() {
            let o = o.trim_end_matches('/').to_ascii_lowercase();
            if o == "*" {
                any_origin = true;
                continue;
            }
            let Some((scheme, host)) = o.split_once("://") else {
                return Err((
                    format!("origins[{i}]"),
                    format!("`{o}` is not an origin (scheme://host[:port], or `*`)"),
                ));
            };
            if host.is_empty() || host.contains('/') {
                return Err((
                    format!("origins[{i}]"),
                    format!("`{o}` is not an origin: no path, just scheme://host[:port]"),
                ));
            }
            match host.strip_prefix("*.") {
                Some(suffix) if !suffix.contains('*') => origins.push(OriginRule::Subdomains {
                    scheme: scheme.to_string(),
                    suffix: format!(".{suffix}"),
                }),
                _ if host.contains('*') => {
                    return Err((
                        format!("origins[{i}]"),
                        format!("`{o}`: a wildcard is only `scheme://*.domain`"),
                    ));
                }
                _ => origins.push(OriginRule::Exact(o.clone())),
            }
        }
        if any_origin && cfg.credentials {
            return Err((
                "credentials".into(),
                "cannot be used with origin `*` (the Fetch standard forbids it); list the origins".into(),
            ));
        }
        let mut methods = Vec::new();
        for (i, m) in cfg.methods.iter().enumerate() {
            methods.push(
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| (format!("methods[{i}]"), format!("`{m}` is not a method")))?,
            );
        }
        let methods_value = if methods.is_empty() {
            HeaderValue::from_static(DEFAULT_METHODS)
        } else {
            joined(methods.iter().map(Method::as_str)).map_err(|e| ("methods".to_string(), e))?
        };
        if methods.is_empty() {
            methods = DEFAULT_METHODS
                .split(", ")
                .filter_map(|m| m.parse().ok())
                .collect();
        }
        for (field, list) in [("headers", &cfg.headers), ("expose_headers", &cfg.expose_headers)] {
            for (i, h) in list.iter().enumerate() {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| (format!("{field}[{i}]"), format!("`{h}` is not a header name")))?;
            }
        }
        let headers =
            (!cfg.headers.is_empty()).then(|| cfg.headers.iter().map(|h| h.to_ascii_lowercase()).collect());
        let expose = if cfg.expose_headers.is_empty() {
            None
        } else {
            Some(
                joined(cfg.expose_headers.iter().map(String::as_str))
                    .map_err(|e| ("expose_headers".to_string(), e))?,
            )
        };
        Ok(Cors {
            any_origin,
            origins,
            methods,
            methods_value,
            headers,
            expose,
            credentials: cfg.credentials,
            max_age: cfg.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
        })
    }

    fn allows(&self, origin: &str) -> bool {
        if self.any_origin {
            return true;
        }
        let origin = origin.to_ascii_lowercase();
        self.origins.iter().any(|rule| match rule {
            OriginRule::Exact(o) => *o == origin,
            OriginRule::Subdomains { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|rest| rest.strip_prefix("://"))
                .is_some_and(|host| {
                    // The port, if any, is not part of the domain match.
                    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
                    host.len() > suffix.len() && host.ends_with(suffix.as_str())
                }),
        })
    }

    /// The `Access-Control-Allow-Origin` value for an allowed origin.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// The request phase: a preflight is answered; any other request with
    /// an `Origin` gets what its answer must carry.
    pub fn check(self: &Arc<Self>, req: &request::Parts, answer: &mut Option<CorsAnswer>) -> Flow {
        let Some(origin) = req.headers.get(header::ORIGIN) else {
            return Flow::Continue;
        };
        let allowed = origin.to_str().is_ok_and(|o| self.allows(o));
        let preflight =
            req.method == Method::OPTIONS && req.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            return Flow::Respond(Box::new(self.preflight(req, origin, allowed)));
        }
        *answer = Some(CorsAnswer {
            plugin: self.clone(),
            allow: allowed.then(|| self.allow_origin(origin)),
        });
        Flow::Continue
    }

    fn preflight(&self, req: &request::Parts, origin: &HeaderValue, allowed: bool) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::full(bytes::Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        for vary in [
            "origin",
            "access-control-request-method",
            "access-control-request-headers",
        ] {
            h.append(header::VARY, HeaderValue::from_static(vary));
        }
        let method_ok = req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        let requested = req.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        let headers_ok = match (&self.headers, requested.and_then(|v| v.to_str().ok())) {
            (None, _) | (_, None) => true,
            (Some(allowed), Some(asked)) => asked
                .split(',')
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .all(|n| allowed.contains(&n)),
        };
        if !(allowed && method_ok && headers_ok) {
            return resp;
        }
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone());
        let allow_headers = match &self.headers {
            Some(list) => joined(list.iter().map(String::as_str)).ok(),
            None => requested.cloned(),
        };
        if let Some(v) = allow_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(age) = &self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        resp
    }
}

impl CorsAnswer {
    /// Sets the CORS headers on the answer (replacing any the upstream sent).
    pub fn apply(&self, headers: &mut HeaderMap) {
        let cors = &self.plugin;
        for name in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            headers.remove(name);
        }
        if !cors.any_origin {
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        let Some(origin) = &self.allow else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if cors.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &cors.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

fn joined<'a>(items: impl Iterator<Item = &'a str>) -> Result<HeaderValue, String> {
    let s = items.collect::<Vec<_>>().join(", ");
    HeaderValue::from_str(&s).map_err(|_| format!("`{s}` is not a header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Result<Cors, (String, String)> {
        Cors::new(&CorsConfig {
            origins: origins.iter().map(|s| s.to_string()).collect(),
            methods: vec![],
            headers: vec![],
            expose_headers: vec![],
            credentials,
            max_age: None,
        })
    }

    #[test]
    fn origin_rules() {
        let c = cors(&["https://app.example.com", "https://*.example.org"], true).unwrap();
        assert!(c.allows("https://app.example.com"));
        assert!(c.allows("HTTPS://APP.EXAMPLE.COM"));
        assert!(!c.allows("http://app.example.com"));
        assert!(!c.allows("https://app.example.com.evil.test"));
        assert!(c.allows("https://a.example.org") && c.allows("https://a.b.example.org:8443"));
        assert!(!c.allows("https://example.org") && !c.allows("https://evilexample.org"));
        assert!(!c.allows("null"));
        assert_eq!(cors(&["*"], true).err().unwrap().0, "credentials");
        assert_eq!(cors(&[], false).err().unwrap().0, "origins");
        assert_eq!(cors(&["app.example.com"], false).err().unwrap().0, "origins[0]");
        assert_eq!(cors(&["https://a.*.com"], false).err().unwrap().0, "origins[0]");
    }
}
