//! The admin API (SPEC section 6) on its own listener, loopback by default.
//!
//! Every endpoint but `/healthz` and `/readyz` needs `Authorization: Bearer
//! <admin.token>`; the check comes before anything else, so a caller without
//! the token learns nothing, not even whether an object exists. With no token
//! configured every other endpoint answers 401. Every output redacts secrets.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::{ApplyError, Control, Kind, State};
use crate::body::ResponseBody;
use crate::config::{ConfigErrors, emit};
use crate::error::{problem, problem_with};
use crate::proxy::forwarded::new_request_id;

/// The largest config body accepted (a config of 10,000 routes is ~2 MiB).
const MAX_BODY: usize = 64 << 20;

/// Binds the admin listener or says why it cannot.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("admin: cannot bind {addr}: {e}"))
}

/// Serves the admin API until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    control: Arc<Control>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "admin: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let control = control.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let control = control.clone();
                async move { Ok::<_, Infallible>(answer(&control, req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// A response in the making: JSON, or a problem.
type Answer = Response<ResponseBody>;

fn json_answer(status: StatusCode, body: String) -> Answer {
    let mut resp = Response::new(ResponseBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn value_answer(status: StatusCode, v: Value) -> Answer {
    json_answer(status, v.to_string())
}

async fn answer(control: &Arc<Control>, req: Request<Incoming>) -> Answer {
    let id = new_request_id();
    let mut resp = route(control, req, &id).await;
    resp.headers_mut().insert("x-request-id", id);
    resp
}

async fn route(control: &Arc<Control>, req: Request<Incoming>, id: &HeaderValue) -> Answer {
    let path = req.uri().path().to_string();
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (&method, &segs[..]) {
        (&Method::GET, ["healthz"]) => return value_answer(StatusCode::OK, json!({"status": "ok"})),
        // Ready once a config is loaded (it is, or we would not be serving)
        // and Redis, when the config has it, answers.
        (&Method::GET, ["readyz"]) => {
            let redis = control.runtime().load().shared.redis.clone();
            if let Some(redis) = redis
                && !redis.ping().await
            {
                return value_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "not ready", "reason": "redis does not answer"}),
                );
            }
            return value_answer(StatusCode::OK, json!({"status": "ready"}));
        }
        _ => {}
    }
    if !authorized(control, req.headers()) {
        let mut resp = problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin token is required (Authorization: Bearer <token>)",
            id,
        );
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
        );
        return resp;
    }
    match (&method, &segs[..]) {
        (&Method::GET, ["status"]) => {
            let state = control.state().await;
            let c = &state.loaded.config;
            value_answer(
                StatusCode::OK,
                json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_seconds": control.uptime().as_secs(),
                    "config_version": state.version,
                    "routes": c.routes.len(),
                    "upstreams": c.upstreams.len(),
                    "consumers": c.consumers.len(),
                }),
            )
        }
        (&Method::GET, ["metrics"]) => {
            let mut resp = json_answer(StatusCode::OK, crate::telemetry::metrics::encode());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(crate::telemetry::metrics::CONTENT_TYPE),
            );
            resp
        }
        (&Method::GET, ["config"]) => {
            let json = control
                .blocking(|_, state| emit::to_json(&state.loaded.document, true))
                .await;
            json_answer(StatusCode::OK, json)
        }
        (&Method::PUT, ["config"]) => {
            let body = match body_bytes(req, id).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let result = control
                .blocking(move |c, state| utf8(body).map(|text| c.replace(state, &text)))
                .await;
            match result {
                Ok(Ok(version)) => changed(control, StatusCode::OK, version).await,
                Ok(Err(e)) => apply_error(e, id),
                Err(()) => not_utf8(id),
            }
        }
        (&Method::POST, ["config", "validate"]) => {
            let body = match body_bytes(req, id).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let result = control
                .blocking(move |c, state| utf8(body).map(|text| c.check(&text, state)))
                .await;
            match result {
                Ok(Ok(())) => value_answer(StatusCode::OK, json!({"valid": true})),
                Ok(Err(errors)) => validation_failed(&errors, id),
                Err(()) => not_utf8(id),
            }
        }
        (&Method::GET, [section]) if Kind::from_section(section).is_some() => {
            let kind = Kind::from_section(section).unwrap_or(Kind::Route);
            let state = control.state().await;
            let items = match state.loaded.document.get(kind.section()) {
                Some(n) if !n.is_null() => emit::to_json(n, true),
                _ => "[]".into(),
            };
            json_answer(StatusCode::OK, items)
        }
        (&Method::GET, ["upstreams", name, "health"]) => upstream_health(control, name, id),
        (m, [section, name]) if Kind::from_section(section).is_some() => {
            let kind = Kind::from_section(section).unwrap_or(Kind::Route);
            match *m {
                Method::GET => {
                    let state = control.state().await;
                    match super::find(&state.loaded.document, kind, name) {
                        Some(obj) => json_answer(StatusCode::OK, emit::to_json(obj, true)),
                        None => not_found(kind, name, id),
                    }
                }
                Method::PUT => {
                    let text = match body_bytes(req, id).await.map(utf8) {
                        Ok(Ok(t)) => t,
                        Ok(Err(())) => return not_utf8(id),
                        Err(resp) => return resp,
                    };
                    put_object(control, kind, name.to_string(), text, id).await
                }
                Method::DELETE => delete_object(control, kind, name, id).await,
                _ => method_not_allowed("GET, PUT, DELETE", id),
            }
        }
        _ => problem(StatusCode::NOT_FOUND, "not-found", "no such admin endpoint", id),
    }
}

/// Constant-time check of the bearer token: the time taken does not tell
/// how much of a guess was right.
fn authorized(control: &Control, headers: &http::HeaderMap) -> bool {
    let Some(token) = control
        .admin()
        .and_then(|a| a.token.clone())
        .filter(|t| !t.is_empty())
    else {
        return false;
    };
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| crate::plugins::jwt::bearer(v.as_bytes()))
    else {
        return false;
    };
    // The scheme is case-insensitive (RFC 9110 §11.1), as the JWT plugin reads it.
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Every byte of the longer input is visited whatever the contents;
    // only the (non-secret) length decides the work done.
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The request body, read on the request's thread; its UTF-8 check (a
/// millisecond for a large config) is done on the config-change thread.
async fn body_bytes(req: Request<Incoming>, id: &HeaderValue) -> Result<Bytes, Answer> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                &format!("the body exceeds {MAX_BODY} bytes"),
                id,
            ));
        }
        Err(_) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "the body could not be read",
                id,
            ));
        }
    };
    Ok(bytes)
}

/// The body as text.
fn utf8(bytes: Bytes) -> Result<String, ()> {
    String::from_utf8(Vec::from(bytes)).map_err(|_| ())
}

fn not_utf8(id: &HeaderValue) -> Answer {
    problem(
        StatusCode::BAD_REQUEST,
        "bad-request",
        "the body must be UTF-8 YAML or JSON",
        id,
    )
}

/// 400 `validation-failed` with every error: `{"path", "line", "message"}`.
fn validation_failed(errors: &ConfigErrors, id: &HeaderValue) -> Answer {
    let list: Vec<Value> = errors
        .errors
        .iter()
        .map(|e| json!({"path": e.path, "line": e.line, "message": e.message}))
        .collect();
    let n = list.len();
    let mut ext = serde_json::Map::new();
    ext.insert("errors".into(), Value::Array(list));
    problem_with(
        StatusCode::BAD_REQUEST,
        "validation-failed",
        &format!(
            "the config is invalid ({n} error{}); nothing was applied",
            if n == 1 { "" } else { "s" }
        ),
        id,
        ext,
    )
}

fn apply_error(e: ApplyError, id: &HeaderValue) -> Answer {
    match e {
        ApplyError::Invalid(errors) => validation_failed(&errors, id),
        ApplyError::Persist(why) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "persist-failed",
            &format!("the change was not applied: {why}"),
            id,
        ),
    }
}

async fn changed(control: &Control, status: StatusCode, version: String) -> Answer {
    let state = control.state().await;
    let c = &state.loaded.config;
    value_answer(
        status,
        json!({
            "config_version": version,
            "routes": c.routes.len(),
            "upstreams": c.upstreams.len(),
            "consumers": c.consumers.len(),
        }),
    )
}

fn not_found(kind: Kind, name: &str, id: &HeaderValue) -> Answer {
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        &format!("no {} named `{name}`", kind.section().trim_end_matches('s')),
        id,
    )
}

fn method_not_allowed(allow: &'static str, id: &HeaderValue) -> Answer {
    let mut resp = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        &format!("this endpoint accepts: {allow}"),
        id,
    );
    resp.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    resp
}

async fn put_object(
    control: &Arc<Control>,
    kind: Kind,
    name: String,
    text: String,
    id: &HeaderValue,
) -> Answer {
    let object = match crate::config::parse_document(&text, "request body") {
        Ok(n) => n,
        Err(errors) => return validation_failed(&errors, id),
    };
    let id = id.clone();
    control
        .blocking(move |control, state| {
            let mut doc = state.raw.clone();
            let created = match super::put(&mut doc, kind, &name, object) {
                Ok(created) => created,
                Err(message) => return validation_failed(&super::body_error(message), &id),
            };
            match control.apply_admin(state, doc, "request body") {
                Ok(_) => {
                    let body = super::find(&state.loaded.document, kind, &name)
                        .map(|n| emit::to_json(n, true))
                        .unwrap_or_else(|| "{}".into());
                    let status = if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    json_answer(status, body)
                }
                Err(e) => apply_error(e, &id),
            }
        })
        .await
}

async fn delete_object(control: &Arc<Control>, kind: Kind, name: &str, id: &HeaderValue) -> Answer {
    let (name, id) = (name.to_string(), id.clone());
    control
        .blocking(move |control, state| delete_locked(control, state, kind, &name, &id))
        .await
}

fn delete_locked(control: &Control, state: &mut State, kind: Kind, name: &str, id: &HeaderValue) -> Answer {
    if super::find(&state.raw, kind, name).is_none() {
        return not_found(kind, name, id);
    }
    if kind == Kind::Upstream {
        let users = routes_using(state, name);
        if !users.is_empty() {
            let mut ext = serde_json::Map::new();
            ext.insert("routes".into(), json!(users));
            return problem_with(
                StatusCode::CONFLICT,
                "conflict",
                &format!("upstream `{name}` is used by routes: {}", users.join(", ")),
                id,
                ext,
            );
        }
    }
    let mut doc = state.raw.clone();
    super::remove(&mut doc, kind, name);
    match control.apply_admin(state, doc, "request body") {
        Ok(_) => {
            let mut resp = Response::new(ResponseBody::full(Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        Err(e) => apply_error(e, id),
    }
}

/// Routes whose `upstream` is `name`.
fn routes_using(state: &State, name: &str) -> Vec<String> {
    state
        .loaded
        .config
        .routes
        .iter()
        .filter(|r| {
            r.upstream.as_deref() == Some(name)
                || r.aggregate
                    .as_ref()
                    .is_some_and(|a| a.calls.values().any(|c| c.upstream == name))
        })
        .map(|r| r.name.clone())
        .collect()
}

fn upstream_health(control: &Control, name: &str, id: &HeaderValue) -> Answer {
    let rt = control.runtime().load();
    let Some(up) = rt.upstreams.get(name) else {
        return not_found(Kind::Upstream, name, id);
    };
    let circuit = up.breaker.as_ref().map(|b| b.mode().name());
    let targets: Vec<Value> = up
        .targets
        .iter()
        .map(|t| {
            // When the ejection ends, in Unix seconds.
            let until = t.health.ejected_for().map(|left| {
                (std::time::SystemTime::now() + left)
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            });
            json!({"url": format!("http://{}", t.authority), "healthy": !t.health.is_ejected(), "ejected_until": until})
        })
        .collect();
    value_answer(
        StatusCode::OK,
        json!({"upstream": name, "circuit_breaker": circuit, "targets": targets}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn names_in_paths_are_percent_decoded() {
        assert_eq!(percent_decode("users%20api"), "users api");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain"), "plain");
    }
}
