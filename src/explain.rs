//! `portcullis explain -c FILE METHOD URL [-H 'Name: value']... [--json]`:
//! what the gateway would do with a request, without sending anything.
//!
//! ```text
//! normalize the path → every route path that matches, most specific
//!   first, each with why it was or was not chosen → the plugin chain in
//!   run order → the action: upstream and the path sent to it, a fixed
//!   answer, an aggregate's calls, or gRPC transcoding
//! ```
//!
//! A request no route takes is said so, with the nearest route paths.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde_json::{Value, json};

use crate::router::{Lookup, RouteRequest, Verdict, path};
use crate::snapshot::{Action, Runtime};

/// The explanation, as JSON (`--json`) and as text (the default).
pub struct Explanation {
    pub json: Value,
    /// Whether a route takes the request.
    pub routed: bool,
}

/// Explains `method url` with `headers` (each `Name: value`).
pub fn explain(rt: &Runtime, method: &str, url: &str, headers: &[String]) -> Result<Explanation, String> {
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| format!("`{method}` is not an HTTP method"))?;
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL or a path: {e}"))?;
    let mut map = HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("`{h}` is not a header (write `Name: value`)"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        let value =
            HeaderValue::from_str(value.trim()).map_err(|_| format!("the value of `{name}` is not valid"))?;
        map.append(name, value);
    }
    let host = uri
        .host()
        .map(str::to_string)
        .or_else(|| {
            map.get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .map(|h| crate::proxy::handler::route_host(&h).into_owned());
    let raw_path = uri.path();
    let normalized = match path::normalize(raw_path) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Explanation {
                json: json!({
                    "request": {"method": method.as_str(), "host": host, "path": raw_path},
                    "route": null,
                    "upstream": null,
                    "upstream_path": null,
                    "plugins": [],
                    "refused": {"status": 400, "type": "urn:portcullis:error:invalid-path", "detail": e.describe()},
                }),
                routed: false,
            });
        }
    };
    let req = RouteRequest {
        host: host.as_deref(),
        method: &method,
        path: &normalized,
        headers: &map,
    };
    let candidates: Vec<Value> = rt
        .table
        .explain(&req)
        .into_iter()
        .map(|c| {
            let why = match &c.verdict {
                Verdict::Chosen => "chosen".to_string(),
                Verdict::Host => format!(
                    "its hosts do not include {}",
                    host.as_deref().unwrap_or("(no host)")
                ),
                Verdict::Header(name) => format!("header `{name}` is missing or differs"),
                Verdict::Method(allow) => format!("it takes {} only", crate::router::allow_header(*allow)),
                Verdict::LessSpecific => "it matches too, but a more specific route wins".to_string(),
            };
            json!({
                "route": &*rt.routes[c.route].name,
                "index": c.route,
                "path": c.pattern,
                "chosen": c.verdict == Verdict::Chosen,
                "why": why,
            })
        })
        .collect();
    let request = json!({
        "method": method.as_str(),
        "host": host,
        "path": raw_path,
        "normalized_path": &*normalized,
        "query": uri.query(),
    });
    let found = match rt.table.lookup(&req) {
        Lookup::Found(m) => m,
        Lookup::MethodNotAllowed(allow) => {
            return Ok(Explanation {
                json: json!({
                    "request": request,
                    "route": null,
                    "upstream": null,
                    "upstream_path": null,
                    "plugins": [],
                    "candidates": candidates,
                    "refused": {
                        "status": 405,
                        "type": "urn:portcullis:error:method-not-allowed",
                        "allow": crate::router::allow_header(allow),
                    },
                }),
                routed: false,
            });
        }
        Lookup::NotFound => {
            let nearest: Vec<Value> = rt
                .table
                .nearest(&normalized, 3)
                .into_iter()
                .map(|(route, p)| json!({"route": &*rt.routes[route].name, "index": route, "path": p}))
                .collect();
            return Ok(Explanation {
                json: json!({
                    "request": request,
                    "route": null,
                    "upstream": null,
                    "upstream_path": null,
                    "plugins": [],
                    "candidates": candidates,
                    "refused": {"status": 404, "type": "urn:portcullis:error:route-not-found"},
                    "nearest": nearest,
                }),
                routed: false,
            });
        }
    };
    let route = &rt.routes[found.route];
    let captures: serde_json::Map<String, Value> = rt
        .table
        .captures(&found, &normalized)
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect();
    let action = match &route.action {
        Action::Respond { status, .. } => json!({"kind": "respond", "status": status.as_u16()}),
        Action::Aggregate(agg) => json!({
            "kind": "aggregate",
            "upstreams": agg.upstreams().map(|u| &*u.name).collect::<Vec<_>>(),
        }),
        Action::Proxy { .. } | Action::Transcode { .. } => {
            let (upstream, strip_prefix, rewrite) = route.action.proxied().ok_or("no upstream")?;
            let pq = crate::proxy::handler::upstream_path_and_query(
                &uri,
                &normalized,
                strip_prefix,
                rewrite,
                || rt.table.captures(&found, &normalized),
            )
            .map_err(|_| "the rewritten path is invalid".to_string())?;
            let kind = match route.action {
                Action::Transcode { .. } => "grpc_transcode",
                _ => "proxy",
            };
            json!({
                "kind": kind,
                "upstream": &*upstream.name,
                "protocol": format!("{:?}", upstream.protocol).to_lowercase(),
                "targets": upstream.targets.iter().map(|t| t.label.to_string()).collect::<Vec<_>>(),
                "upstream_path": pq.as_str(),
            })
        }
    };
    Ok(Explanation {
        // SPEC section 1: `route`, `upstream`, `upstream_path` and `plugins`
        // at the top (null where the route calls no single upstream); the
        // rest is detail.
        json: json!({
            "request": request,
            "route": &*route.name,
            "upstream": action["upstream"].clone(),
            "upstream_path": action["upstream_path"].clone(),
            "plugins": route.pipeline.names(),
            "match": {"index": found.route, "captures": captures},
            "candidates": candidates,
            "action": action,
        }),
        routed: true,
    })
}

/// A JSON value as text: strings bare, null as `-`.
fn s(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        Value::Null => Cow::Borrowed("-"),
        other => Cow::Owned(other.to_string()),
    }
}

/// The explanation for a person.
pub fn text(e: &Explanation) -> String {
    let j = &e.json;
    let mut out = String::new();
    let r = &j["request"];
    out.push_str(&format!(
        "request   {} {} (host {})\n",
        s(&r["method"]),
        s(&r["path"]),
        s(&r["host"])
    ));
    if r["normalized_path"].is_string() && r["normalized_path"] != r["path"] {
        out.push_str(&format!("          normalized to {}\n", s(&r["normalized_path"])));
    }
    match &j["route"] {
        Value::Null => {
            let refused = &j["refused"];
            out.push_str(&format!(
                "route     no route matches: {} {}",
                s(&refused["status"]),
                s(&refused["type"])
            ));
            if let Some(allow) = refused["allow"].as_str() {
                out.push_str(&format!(" (Allow: {allow})"));
            }
            if let Some(detail) = refused["detail"].as_str() {
                out.push_str(&format!(": {detail}"));
            }
            out.push('\n');
        }
        route => {
            let found = &j["match"];
            out.push_str(&format!(
                "route     {} (routes[{}])\n",
                s(route),
                s(&found["index"])
            ));
            if let Some(c) = found["captures"].as_object().filter(|c| !c.is_empty()) {
                let list: Vec<String> = c.iter().map(|(k, v)| format!("{k}={}", s(v))).collect();
                out.push_str(&format!("          captures {}\n", list.join(", ")));
            }
        }
    }
    if let Some(cands) = j["candidates"].as_array().filter(|c| !c.is_empty()) {
        out.push_str("candidates, most specific first:\n");
        for c in cands {
            let mark = if c["chosen"] == true { "*" } else { " " };
            out.push_str(&format!(
                "  {mark} {:<20} {:<28} {}\n",
                s(&c["route"]),
                format!("\"{}\"", s(&c["path"])),
                s(&c["why"])
            ));
        }
    }
    if let Some(near) = j["nearest"].as_array().filter(|n| !n.is_empty()) {
        out.push_str("nearest routes:\n");
        for n in near {
            out.push_str(&format!("    {:<20} \"{}\"\n", s(&n["route"]), s(&n["path"])));
        }
    }
    if let Some(plugins) = j["plugins"].as_array().filter(|_| j["route"].is_string()) {
        let names: Vec<Cow<'_, str>> = plugins.iter().map(s).collect();
        let chain = if names.is_empty() {
            "(none)".to_string()
        } else {
            names.join(" → ")
        };
        out.push_str(&format!("plugins   {chain}\n"));
        out.push_str("          (a consumer's own plugins replace these once auth names it)\n");
    }
    let a = &j["action"];
    match a["kind"].as_str() {
        Some("respond") => out.push_str(&format!(
            "action    answered by the gateway: {}\n",
            s(&a["status"])
        )),
        Some("aggregate") => {
            let ups: Vec<Cow<'_, str>> = a["upstreams"]
                .as_array()
                .map(|u| u.iter().map(s).collect())
                .unwrap_or_default();
            out.push_str(&format!("action    aggregate of calls to {}\n", ups.join(", ")));
        }
        Some(kind) => {
            let targets: Vec<Cow<'_, str>> = a["targets"]
                .as_array()
                .map(|t| t.iter().map(s).collect())
                .unwrap_or_default();
            out.push_str(&format!(
                "action    {} to upstream {} ({}: {})\n          upstream path {}\n",
                if kind == "grpc_transcode" {
                    "gRPC transcoding"
                } else {
                    "proxy"
                },
                s(&a["upstream"]),
                s(&a["protocol"]),
                targets.join(", "),
                s(&a["upstream_path"])
            ));
        }
        None => {}
    }
    out
}
