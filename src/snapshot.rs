//! Compiles a validated [`Config`] into the immutable [`Runtime`] the data
//! plane reads: the route table, each route's action and plugin pipeline, and
//! the upstream pools. A runtime is never changed; a reload builds a new one
//! aside and swaps the [`RuntimeHandle`] pointer, so requests in flight finish
//! on the runtime they started with.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use prometheus_client::metrics::histogram::Histogram;

use crate::config::{Cidr, Config, FieldError, LimitsConfig};
use crate::plugins::{self, Consumer, GlobalPlugins, Pipeline};
use crate::router::{Conditions, PathPattern, RouteTable};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::CounterCache;
use crate::telemetry::trace::Tracer;
use crate::upstream::Upstream;

/// The runtime in force; swapped whole on reload.
pub type RuntimeHandle = Arc<ArcSwap<Runtime>>;

pub struct Runtime {
    pub settings: Settings,
    pub table: RouteTable,
    pub routes: Vec<Route>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Known callers by name, with their own plugins; auth phases set one
    /// on the request.
    pub consumers: HashMap<String, Arc<Consumer>>,
    /// `portcullis_requests_total` of requests that matched no route.
    pub unrouted: CounterCache,
    /// What the plugins share: credential indexes, key sets, connections.
    pub shared: plugins::Shared,
    /// Whether any scope has `compression` (else the client's
    /// Accept-Encoding is not kept for the response phase).
    pub compresses: bool,
}

impl Runtime {
    /// Starts the background work of a runtime put in force: key set
    /// downloads, active health checks. Work already running for state
    /// carried over from the runtime before goes on as it is. Needs a
    /// tokio runtime.
    pub fn start(&self) {
        self.shared.start();
        for upstream in self.upstreams.values() {
            upstream.start_checks();
        }
    }
}

/// Dropped route by route: the old runtime of a large config is freed on
/// the reload's background thread, yielding as it goes (or, if requests
/// still ran on it, by the last of them, where yielding is a no-op).
impl Drop for Runtime {
    fn drop(&mut self) {
        for route in self.routes.drain(..) {
            drop(route);
            crate::yielding::point();
        }
    }
}

/// Server-wide settings read per connection or request.
pub struct Settings {
    pub trusted_proxies: Vec<Cidr>,
    pub limits: LimitsConfig,
    pub request_id_header: HeaderName,
    pub trust_request_id: bool,
    pub via: bool,
    /// `server.access_log`, when enabled.
    pub access_log: Option<Arc<AccessLog>>,
    /// `server.metrics_path`: metrics on the data listeners too.
    pub metrics_path: Option<String>,
    pub shutdown_timeout: Duration,
    /// `server.tracing` with an OTLP endpoint.
    pub tracer: Option<Arc<Tracer>>,
    /// Each listener's TLS settings (by its place in `server.listeners`),
    /// certificate files read at compile time.
    pub listener_tls: Vec<Option<Arc<rustls::ServerConfig>>>,
}

pub struct Route {
    pub name: Arc<str>,
    /// `portcullis_request_duration_seconds{route}`.
    pub duration: Histogram,
    /// `portcullis_requests_total{route,method,status}`.
    pub requests: CounterCache,
    /// The name as a JSON string literal, for access log lines.
    pub name_json: Box<str>,
    pub action: Action,
    pub max_body: u64,
    pub timeout: Duration,
    pub pipeline: Pipeline,
}

impl Route {
    /// The upstream it proxies to, if it does.
    pub fn upstream(&self) -> Option<&Upstream> {
        match &self.action {
            Action::Proxy { upstream, .. } | Action::Transcode { upstream, .. } => Some(upstream),
            Action::Respond { .. } | Action::Aggregate(_) => None,
        }
    }
}

pub enum Action {
    Proxy {
        upstream: Arc<Upstream>,
        strip_prefix: Option<String>,
        rewrite: Option<Rewrite>,
    },
    Respond {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    Aggregate(Box<crate::proxy::aggregate::Aggregate>),
    /// REST/JSON to gRPC; requests already in gRPC pass through.
    Transcode {
        upstream: Arc<Upstream>,
        transcoder: Box<crate::proxy::transcode::Transcoder>,
    },
}

impl Action {
    /// Where a proxied request goes: the upstream, `strip_prefix` and `rewrite`.
    pub fn proxied(&self) -> Option<(&Arc<Upstream>, Option<&str>, Option<&Rewrite>)> {
        match self {
            Action::Proxy {
                upstream,
                strip_prefix,
                rewrite,
            } => Some((upstream, strip_prefix.as_deref(), rewrite.as_ref())),
            Action::Transcode { upstream, .. } => Some((upstream, None, None)),
            Action::Respond { .. } | Action::Aggregate(_) => None,
        }
    }
}

/// A `rewrite` template: literal text and `{name}` captures.
pub struct Rewrite {
    parts: Vec<RewritePart>,
}

enum RewritePart {
    Literal(String),
    Capture(String),
}

/// A piece of text with `{name}` placeholders (`rewrite`, aggregate paths).
pub(crate) enum Brace<'a> {
    Text(&'a str),
    Name(&'a str),
}

/// Splits `s` into literal text and `{…}` names.
pub(crate) fn braces(s: &str) -> Result<Vec<Brace<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Brace::Text(&rest[..open]));
        }
        let close = rest[open..].find('}').ok_or("unclosed `{`")? + open;
        parts.push(Brace::Name(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("unmatched `}`".into());
    }
    if !rest.is_empty() {
        parts.push(Brace::Text(rest));
    }
    Ok(parts)
}

impl Rewrite {
    fn parse(s: &str) -> Result<Rewrite, String> {
        let mut parts = Vec::new();
        for piece in braces(s)? {
            parts.push(match piece {
                Brace::Text(t) => RewritePart::Literal(t.to_string()),
                Brace::Name(name) => {
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        return Err(format!("`{{{name}}}` is not a capture name"));
                    }
                    RewritePart::Capture(name.to_string())
                }
            });
        }
        Ok(Rewrite { parts })
    }

    fn captures(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            RewritePart::Capture(c) => Some(c.as_str()),
            RewritePart::Literal(_) => None,
        })
    }

    /// The rewritten path (and query, if the template has its own `?`).
    pub fn render(&self, captures: &[(&str, &str)]) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                RewritePart::Literal(l) => out.push_str(l),
                RewritePart::Capture(name) => {
                    if let Some((_, v)) = captures.iter().find(|(n, _)| n == name) {
                        out.push_str(v);
                    }
                }
            }
        }
        out
    }
}

/// Removes `prefix` from `path` on a segment boundary; `/` if nothing is left.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Cow<'a, str> {
    match path.strip_prefix(prefix) {
        Some("") => Cow::Borrowed("/"),
        Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
        _ => Cow::Borrowed(path),
    }
}

/// Builds the runtime. Errors name the field they belong to. `previous` is
/// the runtime this one replaces: unchanged upstream targets are carried
/// over with their connection pools.
pub fn compile(cfg: &Config, previous: Option<&Runtime>) -> Result<Runtime, Vec<FieldError>> {
    build(cfg, previous, true)
}

/// Compiles without opening outputs (the access log file, the trace
/// exporter): the checks of `portcullis validate` and `POST /config/validate`,
/// which must leave nothing behind.
pub fn check(cfg: &Config) -> Result<Runtime, Vec<FieldError>> {
    build(cfg, None, false)
}

fn build(cfg: &Config, previous: Option<&Runtime>, open_outputs: bool) -> Result<Runtime, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut upstreams = HashMap::new();
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let old = previous.and_then(|p| p.upstreams.get(&u.name)).map(|u| &**u);
        match Upstream::build(u, old) {
            Ok(up) => {
                upstreams.insert(u.name.clone(), Arc::new(up));
            }
            Err((field, message)) => errors.push(FieldError::new(format!("upstreams[{i}].{field}"), message)),
        }
    }
    let (mut shared, shared_errors) = plugins::Shared::build(cfg, previous.map(|p| &p.shared));
    errors.extend(shared_errors);
    let consumers: HashMap<String, Arc<Consumer>> = cfg
        .consumers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let consumer = Consumer::build(c, &format!("consumers[{i}]"), &shared, &mut errors);
            (c.name.clone(), Arc::new(consumer))
        })
        .collect();
    errors.extend(shared.index(cfg, &consumers));
    let global = GlobalPlugins::build(&cfg.plugins, &shared, &mut errors);

    let mut table_input = Vec::with_capacity(cfg.routes.len());
    let mut routes = Vec::with_capacity(cfg.routes.len());
    for (i, r) in cfg.routes.iter().enumerate() {
        crate::yielding::point();
        let p = format!("routes[{i}]");
        let mut patterns = Vec::new();
        let defaults = ["/".to_string()];
        let paths = if r.matcher.paths.is_empty() {
            &defaults[..]
        } else {
            &r.matcher.paths[..]
        };
        for (j, path) in paths.iter().enumerate() {
            match PathPattern::parse(path) {
                Ok(pat) => patterns.push(pat),
                Err(e) => errors.push(FieldError::new(format!("{p}.match.paths[{j}]"), e)),
            }
        }
        let rewrite = match r.rewrite.as_deref().map(Rewrite::parse) {
            Some(Ok(rw)) => {
                for name in rw.captures() {
                    if let Some(pat) = patterns
                        .iter()
                        .find(|pat| !pat.captures().iter().any(|c| c == name))
                    {
                        errors.push(FieldError::new(
                            format!("{p}.rewrite"),
                            format!("`{{{name}}}` is not captured by path {pat:?}"),
                        ));
                    }
                }
                Some(rw)
            }
            Some(Err(e)) => {
                errors.push(FieldError::new(format!("{p}.rewrite"), e));
                None
            }
            None => None,
        };
        let action = if let Some(resp) = &r.respond {
            let mut headers = HeaderMap::new();
            for (k, v) in &resp.headers {
                if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                    headers.append(k, v);
                }
            }
            Action::Respond {
                status: StatusCode::from_u16(resp.status).unwrap_or(StatusCode::OK),
                headers,
                body: Bytes::from(resp.body.clone()),
            }
        } else if let Some(agg) = &r.aggregate {
            // Captures every path of the route has: the ones a call may use.
            let mut captures = patterns.first().map(|p| p.captures()).unwrap_or_default();
            captures.retain(|c| patterns.iter().all(|p| p.captures().contains(c)));
            match crate::proxy::aggregate::Aggregate::new(
                agg,
                &upstreams,
                &captures,
                &format!("{p}.aggregate"),
                &mut errors,
            ) {
                Some(a) => Action::Aggregate(Box::new(a)),
                None => continue,
            }
        } else if let (Some(t), Some(up)) = (
            &r.grpc_transcode,
            r.upstream.as_ref().and_then(|u| upstreams.get(u)),
        ) {
            if up.protocol == crate::config::Protocol::Http1 {
                errors.push(FieldError::new(
                    format!("{p}.upstream"),
                    format!(
                        "`{}` speaks http1; grpc_transcode needs `protocol: grpc`",
                        up.name
                    ),
                ));
                continue;
            }
            match crate::proxy::transcode::Transcoder::new(t) {
                Ok(transcoder) => Action::Transcode {
                    upstream: up.clone(),
                    transcoder: Box::new(transcoder),
                },
                Err((field, message)) => {
                    errors.push(FieldError::new(format!("{p}.grpc_transcode.{field}"), message));
                    continue;
                }
            }
        } else if let Some(up) = r.upstream.as_ref().and_then(|u| upstreams.get(u)) {
            Action::Proxy {
                upstream: up.clone(),
                strip_prefix: r
                    .strip_prefix
                    .as_ref()
                    .map(|s| s.trim_end_matches('/').to_string()),
                rewrite,
            }
        } else {
            // Reported by validation (missing or unknown upstream).
            continue;
        };
        table_input.push((
            routes.len(),
            patterns,
            Conditions {
                hosts: r.matcher.hosts.clone(),
                methods: r.matcher.methods.clone(),
                headers: r
                    .matcher
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                priority: r.priority,
            },
        ));
        let name: Arc<str> = r.name.as_str().into();
        routes.push(Route {
            duration: crate::telemetry::metrics().route_duration(&name),
            requests: CounterCache::default(),
            name_json: crate::telemetry::access_log::json_literal(&name),
            name,
            action,
            max_body: r
                .max_request_body_bytes
                .unwrap_or(cfg.server.limits.max_request_body_bytes)
                .0,
            timeout: r.timeout.unwrap_or(cfg.server.limits.request_timeout).0,
            pipeline: Pipeline::build(&global, &r.plugins, &shared, &format!("{p}.plugins"), &mut errors),
        });
    }
    let table = match RouteTable::build(&table_input) {
        Ok(t) => Some(t),
        Err(errs) => {
            for (route, msg) in errs {
                let idx = cfg
                    .routes
                    .iter()
                    .position(|r| *r.name == *routes[route].name)
                    .unwrap_or(route);
                errors.push(FieldError::new(format!("routes[{idx}]"), msg));
            }
            None
        }
    };
    let access_log = match cfg.server.access_log.as_ref().filter(|a| a.enabled) {
        None => None,
        // The same destination keeps its writer (and its queue) across reloads.
        Some(a) => match previous.and_then(|p| p.settings.access_log.as_ref()) {
            Some(old) if old.path == a.path && old.max_pending as u64 == a.buffer.0 => Some(old.clone()),
            _ if !errors.is_empty() => None,
            _ if !open_outputs => {
                if let Err(e) = AccessLog::check(&a.path) {
                    errors.push(FieldError::new("server.access_log.path", e));
                }
                None
            }
            _ => match AccessLog::open(&a.path, a.buffer.0 as usize) {
                Ok(log) => Some(Arc::new(log)),
                Err(e) => {
                    errors.push(FieldError::new("server.access_log.path", e));
                    None
                }
            },
        },
    };
    // An empty endpoint (`${OTLP_ENDPOINT:-}`) is no endpoint.
    let tracer = match cfg
        .server
        .tracing
        .as_ref()
        .filter(|t| t.otlp_endpoint.as_deref().is_some_and(|e| !e.is_empty()))
    {
        None => None,
        // The same settings keep their exporter (and its queue) across reloads.
        Some(t) => match previous.and_then(|p| p.settings.tracer.as_ref()) {
            Some(old) if old.settings == *t => Some(old.clone()),
            _ if !errors.is_empty() || !open_outputs => None,
            _ => match Tracer::start(t) {
                Ok(tracer) => Some(Arc::new(tracer)),
                Err(e) => {
                    errors.push(FieldError::new("server.tracing.otlp_endpoint", e));
                    None
                }
            },
        },
    };
    let listener_tls = cfg
        .server
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let tls = l.tls.as_ref()?;
            crate::tls::server_config(tls)
                .map_err(|(field, message)| {
                    errors.push(FieldError::new(
                        format!("server.listeners[{i}].tls.{field}"),
                        message,
                    ))
                })
                .ok()
        })
        .collect();
    shared.finish();
    match table {
        Some(table) if errors.is_empty() => Ok(Runtime {
            settings: Settings {
                trusted_proxies: cfg.server.trusted_proxies.clone(),
                limits: cfg.server.limits.clone(),
                request_id_header: HeaderName::from_bytes(cfg.server.request_id.header.as_bytes())
                    .unwrap_or(HeaderName::from_static("x-request-id")),
                trust_request_id: cfg.server.request_id.trust_incoming,
                via: cfg.server.via,
                access_log,
                metrics_path: cfg.server.metrics_path.clone(),
                shutdown_timeout: cfg.server.shutdown_timeout.0,
                tracer,
                listener_tls,
            },
            table,
            routes,
            upstreams,
            unrouted: CounterCache::default(),
            consumers,
            shared,
            compresses: cfg.plugins.compression.is_some()
                || cfg.routes.iter().any(|r| r.plugins.compression.is_some())
                || cfg.consumers.iter().any(|c| c.plugins.compression.is_some()),
        }),
        _ => Err(errors),
    }
}

/// Loads, validates and compiles a config file (outputs not opened): the
/// whole check behind `portcullis validate`.
pub fn load(path: &std::path::Path) -> Result<(crate::config::Loaded, Runtime), crate::config::ConfigErrors> {
    let loaded = crate::config::load_file(path)?;
    let runtime = check(&loaded.config).map_err(|e| loaded.locate(e))?;
    Ok((loaded, runtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_on_segments() {
        assert_eq!(strip_prefix("/api/v1/users/7", "/api/v1"), "/users/7");
        assert_eq!(strip_prefix("/api/v1", "/api/v1"), "/");
        assert_eq!(strip_prefix("/api/v1x", "/api/v1"), "/api/v1x");
    }

    #[test]
    fn rewrite_templates() {
        let rw = Rewrite::parse("/users/{id}/files/{rest}?v=2").unwrap();
        assert_eq!(
            rw.render(&[("id", "7"), ("rest", "a/b")]),
            "/users/7/files/a/b?v=2"
        );
        assert!(Rewrite::parse("/x/{").is_err());
        assert!(Rewrite::parse("/x/{a-b}").is_err());
    }

    #[test]
    fn rewrite_captures_must_exist() {
        let text = "version: 1\nupstreams: [{name: u, targets: [{url: 'http://127.0.0.1:1'}]}]\nroutes:\n  - name: r\n    match: {paths: ['/users/{id}', /people]}\n    upstream: u\n    rewrite: /u/{id}\n";
        let loaded = crate::config::load_str(text, "t.yaml", &|_| None).unwrap();
        let errs = compile(&loaded.config, None).err().unwrap();
        let located = loaded.locate(errs).to_string();
        assert!(
            located.contains("t.yaml:7: routes[0].rewrite: `{id}` is not captured"),
            "{located}"
        );
    }
}
