//! The plugin pipeline. Whatever their order in the file, plugins run in the
//! fixed phase order of SPEC section 3:
//!
//! ```text
//! ip_restriction → waf → cors → auth → acl → rate_limit → request_validation
//!   → request_transform → cache → [upstream call] → response_transform → compression
//! ```
//!
//! A route's plugin replaces the global plugin of the same name. Each plugin
//! is plain logic in its own module; [`Plugin`] only dispatches to it (an
//! enum, so calls are static and the hot path allocates nothing). Adding a
//! plugin means a module, a variant and a line in [`instantiate`]; the proxy
//! core does not change.

pub mod acl;
pub mod api_key;
pub mod cache;
pub mod compression;
pub mod cors;
pub mod hmac_auth;
pub mod ip_restriction;
pub mod json_ops;
pub mod jwks;
pub mod jwt;
pub mod phantom_token;
pub mod rate_limit;
pub mod request_validation;
pub mod transform;
pub mod waf;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Response, request, response};

use crate::body::{RequestBody, ResponseBody};
use crate::config::{Config, ConsumerConfig, FieldError, PluginsConfig};
use crate::error::GatewayError;

/// The phases, in run order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    IpRestriction,
    Waf,
    Cors,
    Auth,
    Acl,
    RateLimit,
    RequestValidation,
    RequestTransform,
    Cache,
    ResponseTransform,
    Compression,
}

/// Per-request state shared by the phases.
pub struct RequestCtx<'r> {
    pub request_id: HeaderValue,
    /// The client's address, derived with `trusted_proxies`.
    pub client_ip: IpAddr,
    /// Set by an auth phase; later phases (rate limits, ACLs, logs) read it.
    pub consumer: Option<Arc<Consumer>>,
    /// The route's name (a rate-limit key part).
    pub route: &'r str,
    /// Set by `rate_limit`: what the `RateLimit-*` response headers say.
    pub quota: Option<rate_limit::Quota>,
    /// Set by `cors`: the CORS headers every answer gets.
    pub cors: Option<cors::CorsAnswer>,
    /// When the route's `timeout` runs out.
    pub deadline: tokio::time::Instant,
    /// Set by `jwt`: the verified token's claims (aggregate templates).
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// A known caller (`consumers[]`), with its own plugins.
pub struct Consumer {
    pub name: String,
    pub groups: Vec<String>,
    /// Its plugins for phases after auth (the consumer is known only then),
    /// sorted by phase.
    request: Vec<Plugin>,
    response: Vec<Plugin>,
}

impl Consumer {
    /// Errors name the field under `scope` (`consumers[i]`). A consumer's
    /// own plugins run after auth (validation refuses the others).
    pub fn build(
        cfg: &ConsumerConfig,
        scope: &str,
        shared: &Shared,
        errors: &mut Vec<FieldError>,
    ) -> Consumer {
        let mut plugins: Vec<Plugin> = instantiate(&cfg.plugins, shared, &format!("{scope}.plugins"), errors)
            .into_iter()
            .filter(|p| p.phase() > Phase::Auth)
            .collect();
        plugins.sort_by_key(Plugin::phase);
        let (response, request) = plugins.into_iter().partition(Plugin::is_response_phase);
        Consumer {
            name: cfg.name.clone(),
            groups: cfg.groups.clone(),
            request,
            response,
        }
    }
}

/// What a request phase decided.
pub enum Flow {
    Continue,
    /// Answer now; later phases and the upstream call are skipped.
    Respond(Box<Response<ResponseBody>>),
}

#[derive(Clone)]
pub enum Plugin {
    IpRestriction(Arc<ip_restriction::IpRestriction>),
    Waf(Arc<waf::Waf>),
    Cors(Arc<cors::Cors>),
    ApiKey(Arc<api_key::ApiKey>),
    Jwt(Arc<jwt::Jwt>),
    PhantomToken(Arc<phantom_token::PhantomToken>),
    HmacAuth(Arc<hmac_auth::HmacAuth>),
    Acl(Arc<acl::Acl>),
    RateLimit(Arc<rate_limit::RateLimit>),
    RequestValidation(Arc<request_validation::RequestValidation>),
    RequestTransform(Arc<transform::RequestTransform>),
    Cache(Arc<cache::Cache>),
    ResponseTransform(Arc<transform::ResponseTransform>),
    Compression(Arc<compression::Compression>),
}

impl Plugin {
    pub fn name(&self) -> &'static str {
        match self {
            Plugin::IpRestriction(_) => "ip_restriction",
            Plugin::Cors(_) => "cors",
            Plugin::Waf(_) => "waf",
            Plugin::ApiKey(_) => "api_key",
            Plugin::Jwt(_) => "jwt",
            Plugin::PhantomToken(_) => "phantom_token",
            Plugin::HmacAuth(_) => "hmac_auth",
            Plugin::Acl(_) => "acl",
            Plugin::RequestValidation(_) => "request_validation",
            Plugin::RateLimit(_) => "rate_limit",
            Plugin::RequestTransform(_) => "request_transform",
            Plugin::Cache(_) => "cache",
            Plugin::ResponseTransform(_) => "response_transform",
            Plugin::Compression(_) => "compression",
        }
    }

    pub fn phase(&self) -> Phase {
        match self {
            Plugin::IpRestriction(_) => Phase::IpRestriction,
            Plugin::Cors(_) => Phase::Cors,
            Plugin::Waf(_) => Phase::Waf,
            Plugin::ApiKey(_) | Plugin::Jwt(_) | Plugin::PhantomToken(_) | Plugin::HmacAuth(_) => Phase::Auth,
            Plugin::Acl(_) => Phase::Acl,
            Plugin::RateLimit(_) => Phase::RateLimit,
            Plugin::RequestValidation(_) => Phase::RequestValidation,
            Plugin::RequestTransform(_) => Phase::RequestTransform,
            Plugin::Cache(_) => Phase::Cache,
            Plugin::ResponseTransform(_) => Phase::ResponseTransform,
            Plugin::Compression(_) => Phase::Compression,
        }
    }

    fn is_response_phase(&self) -> bool {
        self.phase() >= Phase::ResponseTransform
    }

    async fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        req: &mut request::Parts,
        body: &mut RequestBody,
    ) -> Result<Flow, GatewayError> {
        match self {
            Plugin::IpRestriction(p) => p.check(ctx.client_ip).map(|()| Flow::Continue),
            Plugin::Cors(p) => Ok(p.check(req, &mut ctx.cors)),
            Plugin::Waf(p) => {
                if let Some(hit) = p.check(ctx, req, body).await? {
                    crate::telemetry::metrics()
                        .waf_detected(ctx.route, hit.rule)
                        .inc();
                }
                Ok(Flow::Continue)
            }
            Plugin::ApiKey(p) => p.authenticate(ctx, req).map(|()| Flow::Continue),
            // Boxed: their futures (a JWKS download, a moka cache entry) are
            // 4–8 KiB, and every connection's task would reserve that room
            // for every request, these plugins or not.
            Plugin::Jwt(p) => Box::pin(p.authenticate(ctx, req)).await.map(|()| Flow::Continue),
            Plugin::PhantomToken(p) => Box::pin(p.authenticate(ctx, req)).await.map(|()| Flow::Continue),
            Plugin::HmacAuth(p) => p.authenticate(ctx, req, body).await.map(|()| Flow::Continue),
            Plugin::Acl(p) => p.check(ctx).map(|()| Flow::Continue),
            Plugin::RateLimit(p) => p.check(ctx, req).await.map(|()| Flow::Continue),
            Plugin::RequestValidation(p) => p.check(req, body).await.map(|()| Flow::Continue),
            Plugin::RequestTransform(p) => {
                p.apply(req);
                p.apply_body(req, body).await.map(|()| Flow::Continue)
            }
            // The cache decides around the upstream call (`Pipeline::cache`).
            Plugin::Cache(_) | Plugin::ResponseTransform(_) | Plugin::Compression(_) => Ok(Flow::Continue),
        }
    }

    fn on_response(&self, _ctx: &RequestCtx<'_>, resp: &mut response::Parts) {
        match self {
            Plugin::ResponseTransform(p) => p.apply(resp),
            Plugin::IpRestriction(_)
            | Plugin::Waf(_)
            | Plugin::Cors(_)
            | Plugin::ApiKey(_)
            | Plugin::Jwt(_)
            | Plugin::PhantomToken(_)
            | Plugin::HmacAuth(_)
            | Plugin::Acl(_)
            | Plugin::RateLimit(_)
            | Plugin::RequestValidation(_)
            | Plugin::RequestTransform(_)
            | Plugin::Cache(_)
            | Plugin::Compression(_) => {}
        }
    }
}

/// Replaces the request's query with `pairs` (`k=v`, already encoded);
/// none left means no `?`.
pub(crate) fn set_query<S: AsRef<str>>(req: &mut request::Parts, pairs: &[S]) {
    let path = req.uri.path();
    let pq = if pairs.is_empty() {
        path.to_string()
    } else {
        let joined: Vec<&str> = pairs.iter().map(AsRef::as_ref).collect();
        format!("{path}?{}", joined.join("&"))
    };
    let mut parts = req.uri.clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            req.uri = uri;
        }
    }
}

/// What plugins are built with besides their own options: indexes over
/// every consumer's credentials, and the connections shared by every plugin
/// (carried over from the runtime before, so a reload does not reconnect).
#[derive(Default)]
pub struct Shared {
    /// Every consumer's API keys.
    pub keys: Arc<api_key::KeyIndex>,
    /// Every consumer's `jwt_subjects`.
    pub subjects: Arc<jwt::SubjectIndex>,
    /// Every consumer's `cert_subjects` (mTLS client certificates).
    pub cert_subjects: Arc<HashMap<String, Arc<Consumer>>>,
    /// Every consumer's `hmac` credentials.
    pub hmac: Arc<hmac_auth::CredentialIndex>,
    /// The `redis` section's connections.
    pub redis: Option<Arc<crate::redis_client::Redis>>,
    /// Downloaded key sets, by URL.
    jwks: Carried<jwks::Jwks>,
    /// `store: local` rate-limit counts, by the policy and its place.
    limits: Carried<rate_limit::LocalCounts>,
    /// Cache stores, by kind and size: every route using one shares it, and
    /// what is cached survives a reload.
    caches: Carried<cache::Store>,
}

/// State that outlives a reload when the config that made it is unchanged
/// (a key set and its keys, rate-limit counts), found by a key that says
/// what made it. While a runtime is built, what the runtime before held is
/// at hand; [`Carried::finish`] lets go of what the new one did not take.
pub struct Carried<T> {
    used: Mutex<HashMap<String, Arc<T>>>,
    before: Mutex<HashMap<String, Arc<T>>>,
}

impl<T> Default for Carried<T> {
    fn default() -> Self {
        Carried {
            used: Mutex::default(),
            before: Mutex::default(),
        }
    }
}

impl<T> Carried<T> {
    fn after(previous: Option<&Carried<T>>) -> Carried<T> {
        let before = previous
            .map(|p| p.used.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        Carried {
            used: Mutex::default(),
            before: Mutex::new(before),
        }
    }

    /// The one in use under `key`, the runtime before's, or a new one.
    pub fn get_or_make<E>(&self, key: &str, make: impl FnOnce() -> Result<T, E>) -> Result<Arc<T>, E> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = used.get(key) {
            return Ok(t.clone());
        }
        let before = self.before.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        let t = match before {
            Some(t) => t,
            None => Arc::new(make()?),
        };
        used.insert(key.to_string(), t.clone());
        Ok(t)
    }

    fn finish(&self) {
        self.before.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn each(&self, mut f: impl FnMut(&Arc<T>)) {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .for_each(&mut f);
    }
}

impl Shared {
    /// What the plugins of every scope draw on: the Redis connections and
    /// the state carried over from `previous` (the runtime before, whose
    /// connections are reused). The credential indexes stay empty until
    /// [`Shared::index`]: the consumers are built in between, with their
    /// own plugins drawing on this.
    pub fn build(cfg: &Config, previous: Option<&Shared>) -> (Shared, Vec<FieldError>) {
        let mut errors = Vec::new();
        // The same settings keep their connections.
        let redis = match (&cfg.redis, previous.and_then(|p| p.redis.as_ref())) {
            (None, _) => None,
            (Some(c), Some(old)) if old.settings == *c => Some(old.clone()),
            (Some(c), _) => match crate::redis_client::Redis::new(c) {
                Ok(r) => Some(Arc::new(r)),
                Err((field, message)) => {
                    errors.push(FieldError::new(format!("redis.{field}"), message));
                    None
                }
            },
        };
        let shared = Shared {
            redis,
            jwks: Carried::after(previous.map(|p| &p.jwks)),
            limits: Carried::after(previous.map(|p| &p.limits)),
            caches: Carried::after(previous.map(|p| &p.caches)),
            ..Shared::default()
        };
        (shared, errors)
    }

    /// Indexes the consumers' credentials; errors name the field.
    pub fn index(&mut self, cfg: &Config, consumers: &HashMap<String, Arc<Consumer>>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let keys = api_key::KeyIndex::build(&cfg.consumers, consumers).unwrap_or_else(|errs| {
            errors.extend(errs.into_iter().map(|(f, m)| FieldError::new(f, m)));
            api_key::KeyIndex::default()
        });
        let mut subjects = jwt::SubjectIndex::new();
        let mut cert_subjects = HashMap::new();
        for (i, c) in cfg.consumers.iter().enumerate() {
            let Some(consumer) = consumers.get(&c.name) else {
                continue;
            };
            for (j, sub) in c.jwt_subjects.iter().enumerate() {
                if let Some(other) = subjects.insert(sub.clone(), consumer.clone()) {
                    errors.push(FieldError::new(
                        format!("consumers[{i}].jwt_subjects[{j}]"),
                        format!("`{sub}` is already a subject of consumer `{}`", other.name),
                    ));
                }
            }
            for (j, sub) in c.cert_subjects.iter().enumerate() {
                if let Some(other) = cert_subjects.insert(sub.clone(), consumer.clone()) {
                    errors.push(FieldError::new(
                        format!("consumers[{i}].cert_subjects[{j}]"),
                        format!("`{sub}` is already a subject of consumer `{}`", other.name),
                    ));
                }
            }
        }
        let hmac = hmac_auth::CredentialIndex::build(&cfg.consumers, consumers).unwrap_or_else(|errs| {
            errors.extend(errs.into_iter().map(|(f, m)| FieldError::new(f, m)));
            hmac_auth::CredentialIndex::default()
        });
        self.keys = Arc::new(keys);
        self.subjects = Arc::new(subjects);
        self.cert_subjects = Arc::new(cert_subjects);
        self.hmac = Arc::new(hmac);
        errors
    }

    /// The key set at `url`: the one in use, the one the runtime before
    /// held, or a new one.
    fn jwks(&self, url: &str) -> Result<Arc<jwks::Jwks>, String> {
        self.jwks.get_or_make(url, || jwks::Jwks::new(url))
    }

    /// Ends the build: state of the runtime before that this config does
    /// not use is let go (key sets stop refreshing once that runtime is gone).
    pub fn finish(&self) {
        self.jwks.finish();
        self.limits.finish();
        self.caches.finish();
    }

    /// Starts the background work of a runtime put in force (key set
    /// downloads). Needs a tokio runtime.
    pub fn start(&self) {
        self.jwks.each(|set| set.start());
    }
}

/// 401 for a request without a bearer token (RFC 6750: no error code).
pub(crate) const fn bearer_missing(plugin: &'static str) -> GatewayError {
    GatewayError::Unauthorized {
        plugin,
        challenge: "Bearer realm=\"portcullis\"",
        detail: "a bearer token is required",
    }
}

/// 401 for a bearer token that does not pass; why stays in the log.
pub(crate) const fn bearer_invalid(plugin: &'static str) -> GatewayError {
    GatewayError::Unauthorized {
        plugin,
        challenge: "Bearer realm=\"portcullis\", error=\"invalid_token\"",
        detail: "the access token is invalid or has expired",
    }
}

/// Seconds since the Unix epoch (token and signature times).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Builds the plugins configured in one scope, in no particular order.
/// Errors name the field under `scope` (`routes[3].plugins`).
fn instantiate(
    cfg: &PluginsConfig,
    shared: &Shared,
    scope: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<Plugin> {
    let mut out = Vec::new();
    if let Some(c) = &cfg.ip_restriction {
        out.push(Plugin::IpRestriction(Arc::new(
            ip_restriction::IpRestriction::new(c),
        )));
    }
    if let Some(c) = &cfg.waf {
        match waf::Waf::new(c) {
            Ok(p) => out.push(Plugin::Waf(Arc::new(p))),
            Err((field, message)) => errors.push(FieldError::new(format!("{scope}.waf.{field}"), message)),
        }
    }
    if let Some(c) = &cfg.cors {
        match cors::Cors::new(c) {
            Ok(p) => out.push(Plugin::Cors(Arc::new(p))),
            Err((field, message)) => errors.push(FieldError::new(format!("{scope}.cors.{field}"), message)),
        }
    }
    if let Some(c) = &cfg.api_key {
        out.push(Plugin::ApiKey(Arc::new(api_key::ApiKey::new(
            c,
            shared.keys.clone(),
        ))));
    }
    if let Some(c) = &cfg.jwt {
        let set = match c.jwks_url.as_deref().map(|url| shared.jwks(url)) {
            Some(Err(e)) => {
                errors.push(FieldError::new(format!("{scope}.jwt.jwks_url"), e));
                None
            }
            Some(Ok(set)) => Some(set),
            None => None,
        };
        match jwt::Jwt::new(c, shared.subjects.clone(), set) {
            Ok(p) => out.push(Plugin::Jwt(Arc::new(p))),
            Err((field, message)) => errors.push(FieldError::new(format!("{scope}.jwt.{field}"), message)),
        }
    }
    if let Some(c) = &cfg.phantom_token {
        match phantom_token::PhantomToken::new(c, shared.redis.clone(), shared.subjects.clone()) {
            Ok(p) => out.push(Plugin::PhantomToken(Arc::new(p))),
            Err((field, message)) => {
                errors.push(FieldError::new(format!("{scope}.phantom_token.{field}"), message))
            }
        }
    }
    if let Some(c) = &cfg.hmac_auth {
        match hmac_auth::HmacAuth::new(c, shared.hmac.clone(), shared.redis.clone()) {
            Ok(p) => out.push(Plugin::HmacAuth(Arc::new(p))),
            Err((field, message)) => {
                errors.push(FieldError::new(format!("{scope}.hmac_auth.{field}"), message))
            }
        }
    }
    if let Some(c) = &cfg.acl {
        out.push(Plugin::Acl(Arc::new(acl::Acl::new(c))));
    }
    if let Some(c) = &cfg.rate_limit {
        match rate_limit::RateLimit::new(c.as_slice(), shared.redis.clone(), &shared.limits, scope) {
            Ok(p) => out.push(Plugin::RateLimit(Arc::new(p))),
            Err((field, message)) => errors.push(FieldError::new(
                format!(
                    "{scope}.rate_limit{}{field}",
                    if field.starts_with('[') { "" } else { "." }
                ),
                message,
            )),
        }
    }
    if let Some(c) = &cfg.request_validation {
        match request_validation::RequestValidation::new(c) {
            Ok(p) => out.push(Plugin::RequestValidation(Arc::new(p))),
            Err((field, message)) => errors.push(FieldError::new(
                format!("{scope}.request_validation.{field}"),
                message,
            )),
        }
    }
    if let Some(c) = &cfg.request_transform {
        match transform::RequestTransform::new(c) {
            Ok(p) => out.push(Plugin::RequestTransform(Arc::new(p))),
            Err((field, message)) => errors.push(FieldError::new(
                format!("{scope}.request_transform.{field}"),
                message,
            )),
        }
    }
    if let Some(c) = &cfg.cache {
        let memory = |max_bytes: u64| {
            let key = format!("memory:{max_bytes}");
            shared
                .caches
                .get_or_make(&key, || Ok::<_, ()>(cache::Store::memory(max_bytes)))
                .unwrap_or_else(|()| Arc::new(cache::Store::memory(max_bytes)))
        };
        let redis = shared.redis.as_ref().map(|r| {
            move || {
                let key = format!("redis:{:p}", Arc::as_ptr(r));
                shared
                    .caches
                    .get_or_make(&key, || Ok::<_, ()>(cache::Store::redis(r.clone())))
                    .unwrap_or_else(|()| Arc::new(cache::Store::redis(r.clone())))
            }
        });
        match cache::Cache::new(c, memory, redis) {
            Ok(p) => out.push(Plugin::Cache(Arc::new(p))),
            Err((field, message)) => errors.push(FieldError::new(format!("{scope}.cache.{field}"), message)),
        }
    }
    if let Some(c) = &cfg.response_transform {
        match transform::ResponseTransform::new(c) {
            Ok(p) => out.push(Plugin::ResponseTransform(Arc::new(p))),
            Err((field, message)) => errors.push(FieldError::new(
                format!("{scope}.response_transform.{field}"),
                message,
            )),
        }
    }
    if let Some(c) = &cfg.compression {
        match compression::Compression::new(c) {
            Ok(p) => out.push(Plugin::Compression(Arc::new(p))),
            Err((field, message)) => {
                errors.push(FieldError::new(format!("{scope}.compression.{field}"), message))
            }
        }
    }
    out
}

/// The (percent-decoded) value of `name` in a query string.
pub(crate) fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Appends `value` with every byte escaped as `%XX` but ASCII letters,
/// digits and the bytes in `keep`.
pub(crate) fn percent_encode_into(out: &mut String, value: &str, keep: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// `%XX` escapes and `+` decoded (a form: a query string).
pub(crate) fn percent_decode(s: &str) -> String {
    decode_percent(s, true)
}

/// `%XX` escapes decoded, `+` kept (a path, a header value).
pub(crate) fn percent_decode_path(s: &str) -> String {
    decode_percent(s, false)
}

fn decode_percent(s: &str, plus_is_space: bool) -> String {
    let hex = |c: &u8| (*c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex)) {
                (Some(h), Some(l)) => {
                    out.push((h << 4 | l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `chain` with `own` merged in: same-named plugins replaced, the others
/// added, in phase order. Built only for requests of consumers with plugins.
fn merge_consumer<'a>(chain: &'a [Plugin], own: &'a [Plugin]) -> Vec<&'a Plugin> {
    let mut merged: Vec<&Plugin> = chain
        .iter()
        .filter(|p| !own.iter().any(|o| o.name() == p.name()))
        .collect();
    merged.extend(own.iter());
    merged.sort_by_key(|p| p.phase());
    merged
}

/// The global plugins, built once and shared by every route's pipeline.
pub struct GlobalPlugins(Vec<Plugin>);

impl GlobalPlugins {
    pub fn build(cfg: &PluginsConfig, shared: &Shared, errors: &mut Vec<FieldError>) -> Self {
        GlobalPlugins(instantiate(cfg, shared, "plugins", errors))
    }
}

/// One route's plugins, sorted by phase.
#[derive(Clone, Default)]
pub struct Pipeline {
    request: Vec<Plugin>,
    response: Vec<Plugin>,
}

impl Pipeline {
    /// Global plugins merged with the route's; the route's win by name.
    /// Errors name the field under `scope` (`routes[3].plugins`).
    pub fn build(
        global: &GlobalPlugins,
        route: &PluginsConfig,
        shared: &Shared,
        scope: &str,
        errors: &mut Vec<FieldError>,
    ) -> Pipeline {
        let own = instantiate(route, shared, scope, errors);
        let mut all: Vec<Plugin> = global
            .0
            .iter()
            .filter(|g| !own.iter().any(|o| o.name() == g.name()))
            .cloned()
            .collect();
        all.extend(own);
        all.sort_by_key(Plugin::phase);
        let (response, request) = all.into_iter().partition(Plugin::is_response_phase);
        Pipeline { request, response }
    }

    /// Whether [`Pipeline::on_request`] has anything to run for this
    /// request: a request-phase plugin of the route (or global), or of the
    /// consumer already named (by a client certificate).
    pub fn runs_on_request(&self, ctx: &RequestCtx<'_>) -> bool {
        !self.request.is_empty() || ctx.consumer.as_ref().is_some_and(|c| !c.request.is_empty())
    }

    /// Runs the request phases in order until one answers. Once an auth
    /// phase has named a consumer with plugins of its own, the phases after
    /// auth use the consumer's plugins: they replace route and global ones of
    /// the same name and add their own (SPEC: consumer > route > global).
    pub async fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        req: &mut request::Parts,
        body: &mut RequestBody,
    ) -> Result<Flow, GatewayError> {
        for (i, p) in self.request.iter().enumerate() {
            if p.phase() > Phase::Auth
                && let Some(consumer) = ctx.consumer.clone().filter(|c| !c.request.is_empty())
            {
                for p in merge_consumer(&self.request[i..], &consumer.request) {
                    if let Flow::Respond(resp) = p.on_request(ctx, req, body).await? {
                        return Ok(Flow::Respond(resp));
                    }
                }
                return Ok(Flow::Continue);
            }
            if let Flow::Respond(resp) = p.on_request(ctx, req, body).await? {
                return Ok(Flow::Respond(resp));
            }
        }
        // A consumer's plugins, when the route has nothing after auth.
        if let Some(consumer) = ctx.consumer.clone().filter(|c| !c.request.is_empty()) {
            for p in &consumer.request {
                if let Flow::Respond(resp) = p.on_request(ctx, req, body).await? {
                    return Ok(Flow::Respond(resp));
                }
            }
        }
        Ok(Flow::Continue)
    }

    pub fn on_response(&self, ctx: &RequestCtx<'_>, resp: &mut response::Parts) {
        match ctx.consumer.as_ref().filter(|c| !c.response.is_empty()) {
            None => {
                for p in &self.response {
                    p.on_response(ctx, resp);
                }
            }
            Some(consumer) => {
                for p in merge_consumer(&self.response, &consumer.response) {
                    p.on_response(ctx, resp);
                }
            }
        }
    }

    /// The response-phase plugin `pick` selects for this request: the
    /// consumer's, else the route's (or the global one).
    fn response_plugin<T>(
        &self,
        ctx: &RequestCtx<'_>,
        pick: impl Fn(&Plugin) -> Option<&Arc<T>>,
    ) -> Option<Arc<T>> {
        let consumer = ctx.consumer.as_ref().filter(|c| !c.response.is_empty());
        consumer
            .and_then(|c| c.response.iter().find_map(&pick))
            .or_else(|| self.response.iter().find_map(&pick))
            .cloned()
    }

    /// The `cache` that applies to this request (the consumer's, else the
    /// route's or the global one).
    pub fn cache(&self, ctx: &RequestCtx<'_>) -> Option<Arc<cache::Cache>> {
        let pick = |p: &Plugin| match p {
            Plugin::Cache(c) => Some(c.clone()),
            _ => None,
        };
        let consumer = ctx.consumer.as_ref().filter(|c| !c.request.is_empty());
        consumer
            .and_then(|c| c.request.iter().find_map(pick))
            .or_else(|| self.request.iter().find_map(pick))
    }

    /// The `response_transform` whose `json` edits apply to this request's
    /// answer.
    pub fn response_json(&self, ctx: &RequestCtx<'_>) -> Option<Arc<transform::ResponseTransform>> {
        self.response_plugin(ctx, |p| match p {
            Plugin::ResponseTransform(t) => Some(t),
            _ => None,
        })
        .filter(|t| t.edits_json())
    }

    /// The `compression` that applies to this request's answer.
    pub fn compression(&self, ctx: &RequestCtx<'_>) -> Option<Arc<compression::Compression>> {
        self.response_plugin(ctx, |p| match p {
            Plugin::Compression(c) => Some(c),
            _ => None,
        })
    }

    /// Plugin names in run order.
    pub fn names(&self) -> Vec<&'static str> {
        self.request
            .iter()
            .chain(&self.response)
            .map(Plugin::name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IpRestrictionConfig, RequestTransformConfig, ResponseTransformConfig};

    #[test]
    fn phase_order_and_route_overrides_global() {
        let global = PluginsConfig {
            response_transform: Some(ResponseTransformConfig::default()),
            request_transform: Some(RequestTransformConfig::default()),
            ip_restriction: Some(IpRestrictionConfig {
                allow: vec!["10.0.0.0/8".parse().unwrap()],
                deny: vec![],
            }),
            ..Default::default()
        };
        let mut errors = Vec::new();
        let g = GlobalPlugins::build(&global, &Shared::default(), &mut errors);
        let p = Pipeline::build(
            &g,
            &PluginsConfig::default(),
            &Shared::default(),
            "r",
            &mut errors,
        );
        assert_eq!(
            p.names(),
            ["ip_restriction", "request_transform", "response_transform"]
        );

        let route = PluginsConfig {
            ip_restriction: Some(IpRestrictionConfig {
                allow: vec!["127.0.0.1".parse().unwrap()],
                deny: vec![],
            }),
            ..Default::default()
        };
        let p = Pipeline::build(&g, &route, &Shared::default(), "r", &mut errors);
        assert!(errors.is_empty());
        let Plugin::IpRestriction(ip) = &p.request[0] else {
            panic!()
        };
        assert!(ip.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(ip.check("10.1.1.1".parse().unwrap()).is_err());
    }

    #[test]
    fn key_sets_carry_over_reloads_by_url() {
        let cfg = |url: &str| {
            let yaml = format!("version: 1\nplugins:\n  jwt: {{jwks_url: \"{url}\"}}\n");
            crate::config::load_str(&yaml, "t.yaml", &|_| None)
                .unwrap()
                .config
        };
        let build = |cfg: &Config, previous: Option<&Shared>| {
            let (shared, errors) = Shared::build(cfg, previous);
            let mut errors2 = Vec::new();
            let global = GlobalPlugins::build(&cfg.plugins, &shared, &mut errors2);
            shared.finish();
            assert!(errors.is_empty() && errors2.is_empty());
            (shared, global)
        };
        let a = cfg("http://127.0.0.1:1/a");
        let (first, _g1) = build(&a, None);
        let set = first.jwks("http://127.0.0.1:1/a").unwrap();
        let (second, _g2) = build(&a, Some(&first));
        assert!(Arc::ptr_eq(&set, &second.jwks("http://127.0.0.1:1/a").unwrap()));
        // Another URL: the old set is not carried into the new runtime.
        let (third, _g3) = build(&cfg("http://127.0.0.1:1/b"), Some(&second));
        assert_eq!(third.jwks.used.lock().unwrap().len(), 1);
        assert!(third.jwks.before.lock().unwrap().is_empty());
        assert!(
            !third
                .jwks
                .used
                .lock()
                .unwrap()
                .contains_key("http://127.0.0.1:1/a")
        );
    }
}
