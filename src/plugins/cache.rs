//! `cache`: answers kept in memory or Redis and served without calling the
//! upstream (SPEC sections 3 and 8).
//!
//! ```text
//! unsafe method       → forward; a 2xx/3xx answer drops every entry of the path
//! not cacheable       → forward                         (X-Cache: BYPASS)
//! fresh entry         → answer from it, with Age        (X-Cache: HIT)
//! another fill runs   → wait for it, then look again
//! otherwise           → forward; a storable answer is recorded as it
//!                       streams to the client and stored at its end
//!                                                       (X-Cache: MISS)
//! ```
//!
//! Keys: the host and path (always), the method (HEAD reads GET's
//! entries), the route, then the configured parts (`query`, `header:NAME`,
//! `consumer`). The answer's `Vary` headers are recorded and must match.

mod store;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, PRAGMA, SET_COOKIE, TRANSFER_ENCODING,
    VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, request};
use http_body::{Body, Frame, SizeHint};

pub use self::store::Store;
use self::store::{Entry, FillGuard, Turn, unix_ms};
use super::RequestCtx;
use crate::body::{BoxError, ResponseBody};
use crate::config::{CacheConfig, Store as StoreKind};

/// The largest body stored; larger answers stream through unrecorded.
const MAX_ENTRY_BYTES: u64 = 8 << 20;
const DEFAULT_MAX_BYTES: u64 = 256 << 20;

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Bypass,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Bypass => "BYPASS",
        })
    }
}

enum KeyPart {
    Query,
    Header(HeaderName),
    Consumer,
}

pub struct Cache {
    ttl: Duration,
    methods: Vec<Method>,
    key: Vec<KeyPart>,
    by_consumer: bool,
    max_entry: u64,
    store: Arc<Store>,
}

/// What the cache decided for one request, finished once the answer is known.
pub enum Plan {
    Hit(Response<ResponseBody>),
    /// Forward; record a storable answer (`fill` present unless HEAD).
    Miss(Option<Fill>),
    Bypass,
    /// An unsafe method: a successful answer drops the path's entries.
    Invalidate {
        store: Arc<Store>,
        group: String,
    },
}

/// Where a storable answer goes.
pub struct Fill {
    store: Arc<Store>,
    group: String,
    variant: String,
    request_headers: HeaderMap,
    ttl: Duration,
    max_entry: u64,
    /// Held until the answer is stored or given up; others wait on it.
    guard: Option<FillGuard>,
}

impl Cache {
    /// `memory` finds the in-memory store this config uses (carried over
    /// reloads); `redis` is the `redis` section's connection.
    pub fn new(
        cfg: &CacheConfig,
        memory: impl FnOnce(u64) -> Arc<Store>,
        redis: Option<impl FnOnce() -> Arc<Store>>,
    ) -> Result<Cache, (String, String)> {
        let methods = if cfg.methods.is_empty() {
            vec![Method::GET, Method::HEAD]
        } else {
            let mut out = Vec::new();
            for (i, m) in cfg.methods.iter().enumerate() {
                match m.as_str() {
                    "GET" => out.push(Method::GET),
                    "HEAD" => out.push(Method::HEAD),
                    other => {
                        return Err((
                            format!("methods[{i}]"),
                            format!("`{other}` cannot be cached (only GET and HEAD)"),
                        ));
                    }
                }
            }
            out
        };
        let mut key = Vec::new();
        let parts = if cfg.key.is_empty() {
            &["path".to_string(), "query".to_string()][..]
        } else {
            &cfg.key[..]
        };
        for (i, part) in parts.iter().enumerate() {
            match part.as_str() {
                "path" => {}
                "query" => key.push(KeyPart::Query),
                "consumer" => key.push(KeyPart::Consumer),
                other => match other
                    .strip_prefix("header:")
                    .map(|n| HeaderName::from_bytes(n.as_bytes()))
                {
                    Some(Ok(name)) => key.push(KeyPart::Header(name)),
                    _ => {
                        return Err((
                            format!("key[{i}]"),
                            format!(
                                "unknown key part `{other}` (expected path, query, header:NAME or consumer)"
                            ),
                        ));
                    }
                },
            }
        }
        if cfg.ttl.0.is_zero() {
            return Err(("ttl".into(), "must be more than zero".into()));
        }
        let max_bytes = cfg.max_bytes.map_or(DEFAULT_MAX_BYTES, |b| b.0);
        let store = match cfg.store {
            StoreKind::Memory => memory(max_bytes),
            StoreKind::Redis => match redis {
                Some(make) => make(),
                None => return Err(("store".into(), "`store: redis` needs the `redis` section".into())),
            },
            StoreKind::Local | StoreKind::Hybrid => {
                return Err(("store".into(), "expected memory or redis".into()));
            }
        };
        Ok(Cache {
            ttl: cfg.ttl.0,
            methods,
            by_consumer: key.iter().any(|k| matches!(k, KeyPart::Consumer)),
            key,
            max_entry: MAX_ENTRY_BYTES.min(max_bytes),
            store,
        })
    }

    /// Decides for a request about to be forwarded. `host` and `path` are
    /// the client's (normalized), before any rewrite.
    pub async fn plan(&self, ctx: &RequestCtx<'_>, req: &request::Parts, host: &str, path: &str) -> Plan {
        let group = format!("{host}{path}");
        if is_unsafe(&req.method) {
            return Plan::Invalidate {
                store: self.store.clone(),
                group,
            };
        }
        let client_no_store = directive(&req.headers, "no-store");
        let bypass = !self.methods.contains(&req.method)
            || client_no_store
            || directive(&req.headers, "no-cache")
            || req
                .headers
                .get_all(PRAGMA)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
            || (req.headers.contains_key(AUTHORIZATION) && !self.by_consumer);
        if bypass {
            return Plan::Bypass;
        }
        let variant = self.variant(ctx, req);
        let head = req.method == Method::HEAD;
        let mut waited = false;
        loop {
            match self.store.get(&group, &variant).await {
                Ok(Some(entry)) if entry.fresh(unix_ms()) && entry.vary_matches(&req.headers) => {
                    return Plan::Hit(hit(&entry, head));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cache store failed; forwarding");
                    return Plan::Bypass;
                }
            }
            if head {
                return Plan::Miss(None);
            }
            let guard = match self.store.turn(format!("{group}\n{variant}")) {
                Turn::Lead(guard) => Some(guard),
                // Another request is fetching this answer: wait for it once.
                Turn::Wait(mut rx) if !waited => {
                    waited = true;
                    let _ = tokio::time::timeout_at(ctx.deadline, rx.changed()).await;
                    continue;
                }
                Turn::Wait(_) => None,
            };
            return Plan::Miss(Some(Fill {
                store: self.store.clone(),
                group,
                variant,
                request_headers: req.headers.clone(),
                ttl: self.ttl,
                max_entry: self.max_entry,
                guard,
            }));
        }
    }

    fn variant(&self, ctx: &RequestCtx<'_>, req: &request::Parts) -> String {
        // HEAD is answered from GET's entries.
        let mut v = String::with_capacity(64);
        v.push_str("GET\n");
        v.push_str(ctx.route);
        for part in &self.key {
            v.push('\n');
            match part {
                KeyPart::Query => v.push_str(req.uri.query().unwrap_or("")),
                KeyPart::Header(name) => {
                    for (i, value) in req.headers.get_all(name).iter().enumerate() {
                        if i > 0 {
                            v.push(',');
                        }
                        v.push_str(&String::from_utf8_lossy(value.as_bytes()));
                    }
                }
                KeyPart::Consumer => {
                    if let Some(c) = &ctx.consumer {
                        v.push_str(&c.name);
                    }
                }
            }
        }
        v
    }
}

impl Plan {
    pub fn outcome(&self) -> Outcome {
        match self {
            Plan::Hit(_) => Outcome::Hit,
            Plan::Miss(_) => Outcome::Miss,
            Plan::Bypass | Plan::Invalidate { .. } => Outcome::Bypass,
        }
    }

    /// Completes the plan with the upstream's answer.
    pub async fn finish(self, mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
        let outcome = self.outcome();
        resp.headers_mut().insert(X_CACHE.clone(), outcome.header());
        match self {
            Plan::Miss(Some(fill)) => fill.record(resp),
            Plan::Invalidate { store, group } => {
                let status = resp.status();
                if (status.is_success() || status.is_redirection())
                    && let Err(e) = store.purge(&group).await
                {
                    tracing::warn!(error = %e, path = %group, "cache purge failed");
                }
                resp
            }
            Plan::Hit(_) | Plan::Miss(None) | Plan::Bypass => resp,
        }
    }
}

impl Fill {
    /// Streams `resp` on, recording it when it may be stored.
    fn record(self, resp: Response<ResponseBody>) -> Response<ResponseBody> {
        let Some(lifetime) = storable(resp.status(), resp.headers(), self.ttl) else {
            return resp;
        };
        if resp.body().size_hint().lower() > self.max_entry {
            return resp;
        }
        let Some(vary) = vary_values(resp.headers(), &self.request_headers) else {
            return resp;
        };
        let (parts, body) = resp.into_parts();
        let mut headers = parts.headers.clone();
        headers.remove(AGE);
        headers.remove(X_CACHE.clone());
        let now = unix_ms();
        let pending = Pending {
            entry: Entry {
                status: parts.status,
                headers,
                body: Bytes::new(),
                vary,
                stored: now,
                expires: now.saturating_add(lifetime.as_millis() as u64),
            },
            fill: self,
        };
        Response::from_parts(parts, ResponseBody::wrap(Recorder::new(body, pending)))
    }
}

/// The answer to serve from `entry`.
fn hit(entry: &Entry, head: bool) -> Response<ResponseBody> {
    let mut resp = Response::new(if head {
        ResponseBody::Full(None)
    } else {
        ResponseBody::full(entry.body.clone())
    });
    *resp.status_mut() = entry.status;
    let h = resp.headers_mut();
    *h = entry.headers.clone();
    h.insert(CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    h.insert(
        AGE,
        HeaderValue::from(unix_ms().saturating_sub(entry.stored) / 1000),
    );
    h.insert(X_CACHE.clone(), Outcome::Hit.header());
    resp
}

fn is_unsafe(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// Whether `Cache-Control` holds `name` (any value).
fn directive(h: &HeaderMap, name: &str) -> bool {
    directive_value(h, name).is_some()
}

/// The value of a `Cache-Control` directive (`""` when it has none).
fn directive_value<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| {
            let (k, v) = d.split_once('=').unwrap_or((d, ""));
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().trim_matches('"'))
        })
}

/// How long an answer may be kept, or `None` when it must not be stored:
/// `s-maxage`, else `max-age`, else the configured `ttl`.
fn storable(status: StatusCode, h: &HeaderMap, ttl: Duration) -> Option<Duration> {
    let cacheable_status = matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308 | 404 | 410);
    if !cacheable_status
        || h.contains_key(SET_COOKIE)
        || h.contains_key(CONTENT_RANGE)
        || ["no-store", "private", "no-cache"]
            .iter()
            .any(|d| directive(h, d))
    {
        return None;
    }
    let seconds = |name| directive_value(h, name).and_then(|v| v.parse::<u64>().ok());
    let lifetime = match seconds("s-maxage").or_else(|| seconds("max-age")) {
        Some(s) => Duration::from_secs(s),
        None => ttl,
    };
    (!lifetime.is_zero()).then_some(lifetime)
}

/// The request headers the answer's `Vary` names, or `None` for `Vary: *`.
fn vary_values(resp: &HeaderMap, req: &HeaderMap) -> Option<Vec<(HeaderName, Option<HeaderValue>)>> {
    let mut out = Vec::new();
    for value in resp.get_all(VARY) {
        for name in value.to_str().ok()?.split(',') {
            let name = name.trim();
            if name == "*" {
                return None;
            }
            if name.is_empty() {
                continue;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            out.push((name.clone(), req.get(&name).cloned()));
        }
    }
    Some(out)
}

struct Pending {
    entry: Entry,
    fill: Fill,
}

/// The answer's body on its way to the client, copied (by reference: the
/// chunks are shared, not copied) until it ends, then stored.
struct Recorder {
    inner: ResponseBody,
    chunks: Vec<Bytes>,
    size: u64,
    pending: Option<Pending>,
}

impl Recorder {
    fn new(inner: ResponseBody, pending: Pending) -> Self {
        Recorder {
            inner,
            chunks: Vec::new(),
            size: 0,
            pending: Some(pending),
        }
    }

    fn complete(&mut self) {
        let Some(Pending { mut entry, fill }) = self.pending.take() else {
            return;
        };
        let chunks = std::mem::take(&mut self.chunks);
        entry.body = match chunks.len() {
            1 => chunks.into_iter().next().unwrap_or_default(),
            _ => chunks.concat().into(),
        };
        entry.headers.remove(TRANSFER_ENCODING);
        entry
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
        // Memory is written at once. Redis is written off the response
        // path; waiting requests are released (the guard dropped) once done.
        if let Some(entry) = fill.store.put_now(&fill.group, &fill.variant, entry) {
            tokio::spawn(async move {
                if let Err(e) = fill.store.put(&fill.group, &fill.variant, entry).await {
                    tracing::warn!(error = %e, "cache store failed");
                }
                drop(fill.guard);
            });
        }
    }
}

impl Body for Recorder {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(data) if this.pending.is_some() => {
                    this.size += data.len() as u64;
                    let max = this.pending.as_ref().map_or(0, |p| p.fill.max_entry);
                    if this.size > max {
                        // Too big to keep: stream on without recording.
                        this.pending = None;
                        this.chunks = Vec::new();
                    } else {
                        this.chunks.push(data.clone());
                        if this.inner.is_end_stream() {
                            this.complete();
                        }
                    }
                }
                Some(_) => {}
                // Trailers are not kept, so such answers are not stored.
                None => this.pending = None,
            },
            Poll::Ready(None) => this.complete(),
            Poll::Ready(Some(Err(_))) => this.pending = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn lifetimes_follow_cache_control() {
        let ttl = Duration::from_secs(30);
        let ok = StatusCode::OK;
        assert_eq!(storable(ok, &headers(&[]), ttl), Some(ttl));
        let h = headers(&[("cache-control", "public, max-age=5, s-maxage=9")]);
        assert_eq!(storable(ok, &h, ttl), Some(Duration::from_secs(9)));
        let h = headers(&[("cache-control", "max-age=5")]);
        assert_eq!(storable(ok, &h, ttl), Some(Duration::from_secs(5)));
        for cc in ["no-store", "private", "no-cache", "max-age=0"] {
            let mut h = HeaderMap::new();
            h.insert(CACHE_CONTROL, HeaderValue::from_static(cc));
            assert_eq!(storable(ok, &h, ttl), None, "{cc}");
        }
        assert_eq!(storable(ok, &headers(&[("set-cookie", "a=b")]), ttl), None);
        assert_eq!(
            storable(StatusCode::INTERNAL_SERVER_ERROR, &headers(&[]), ttl),
            None
        );
        assert_eq!(storable(StatusCode::PARTIAL_CONTENT, &headers(&[]), ttl), None);
    }

    #[test]
    fn vary_star_is_never_stored() {
        let req = headers(&[("accept-language", "de")]);
        assert_eq!(vary_values(&headers(&[("vary", "*")]), &req), None);
        let v = vary_values(&headers(&[("vary", "Accept-Language, X-Other")]), &req).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].1.as_ref().unwrap(), "de");
        assert_eq!(v[1].1, None);
    }
}
