//! `grpc_transcode` (SPEC section 4): REST/JSON clients in front of a gRPC
//! upstream, from a FileDescriptorSet read at config load (no generated
//! code).
//!
//! ```text
//! HTTP method + path → binding (google.api.http, else POST /pkg.Service/Method)
//!   → message from the JSON body (`body: "*"` or one field), path
//!     variables and query parameters (proto3 JSON mapping)
//!   → gRPC over HTTP/2 (framed, `grpc-timeout` from the route deadline)
//!   → grpc-status 0: the message(s) as JSON (a server stream: an array, or
//!     NDJSON on `Accept: application/x-ndjson`, each message sent as it
//!     comes); else the status mapped to HTTP with the message in a
//!     problem+json body (or, after a stream's first message, the answer
//!     cut short)
//! ```
//!
//! A request already speaking gRPC (`Content-Type: application/grpc…`) on
//! such a route is proxied as is.

mod template;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, request};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, ReflectMessage, SerializeOptions, Value,
};
use tokio::time::Instant;

use self::template::PathTemplate;
use super::forward::{Call, forward};
use crate::body::{RequestBody, ResponseBody};
use crate::config::GrpcTranscodeConfig;
use crate::error::GatewayError;
use crate::plugins::RequestCtx;
use crate::snapshot::Route;
use crate::telemetry::Exchange;
use crate::upstream::Upstream;

/// The largest answer message read (each of a server stream's).
const MAX_ANSWER: usize = 8 << 20;
/// `google.api.http`, the MethodOptions extension holding an HttpRule.
const HTTP_RULE: &str = "google.api.http";

/// Path variables: each field path with its value.
type Vars<'t> = Vec<(&'t [String], String)>;

pub struct Transcoder {
    bindings: Vec<Binding>,
}

/// One HTTP method and path template bound to a gRPC method.
struct Binding {
    method: Method,
    template: PathTemplate,
    body: BodyRule,
    /// `response_body`: only this field of the answer is sent.
    response_body: Option<FieldDescriptor>,
    grpc: MethodDescriptor,
    /// `/pkg.Service/Method`.
    grpc_path: PathAndQuery,
}

enum BodyRule {
    /// No body; every field not in the path comes from the query.
    None,
    /// `body: "*"`: the body is the whole message.
    Whole,
    /// `body: "field"`: the body is that field.
    Field(FieldDescriptor),
}

impl Transcoder {
    /// Errors name a field of `grpc_transcode` and say why.
    pub fn new(cfg: &GrpcTranscodeConfig) -> Result<Transcoder, (String, String)> {
        let bytes = std::fs::read(&cfg.descriptor_set).map_err(|e| {
            (
                "descriptor_set".to_string(),
                format!("cannot read {}: {e}", cfg.descriptor_set),
            )
        })?;
        let pool = DescriptorPool::decode(&bytes[..]).map_err(|e| {
            (
                "descriptor_set".to_string(),
                format!("not a FileDescriptorSet (protoc --include_imports -o FILE): {e}"),
            )
        })?;
        let services = if cfg.services.is_empty() {
            pool.services().collect::<Vec<_>>()
        } else {
            let mut out = Vec::new();
            for (i, name) in cfg.services.iter().enumerate() {
                match pool.get_service_by_name(name) {
                    Some(s) => out.push(s),
                    None => {
                        return Err((
                            format!("services[{i}]"),
                            format!("no service `{name}` in {}", cfg.descriptor_set),
                        ));
                    }
                }
            }
            out
        };
        let http = pool.get_extension_by_name(HTTP_RULE);
        let mut bindings = Vec::new();
        for service in services {
            for m in service.methods() {
                if m.is_client_streaming() {
                    // A JSON request is one message.
                    continue;
                }
                let grpc_path = PathAndQuery::try_from(format!("/{}/{}", service.full_name(), m.name()))
                    .map_err(|e| ("services".to_string(), e.to_string()))?;
                let rule = http.as_ref().and_then(|ext| {
                    let options = m.options();
                    options
                        .has_extension(ext)
                        .then(|| options.get_extension(ext).into_owned())
                });
                let before = bindings.len();
                if let Some(Value::Message(rule)) = rule {
                    add_rule(&mut bindings, &rule, &m, &grpc_path, true)
                        .map_err(|e| ("descriptor_set".to_string(), format!("{}: {e}", m.full_name())))?;
                }
                if bindings.len() == before {
                    // No annotation: POST /pkg.Service/Method with the message as JSON.
                    bindings.push(Binding {
                        method: Method::POST,
                        template: PathTemplate::parse(grpc_path.as_str())
                            .map_err(|e| ("services".to_string(), e))?,
                        body: BodyRule::Whole,
                        response_body: None,
                        grpc: m.clone(),
                        grpc_path,
                    });
                }
            }
        }
        Ok(Transcoder { bindings })
    }

    /// Transcodes one request and its answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &self,
        route: &Route,
        upstream: &Upstream,
        ctx: &RequestCtx<'_>,
        host: Option<HeaderValue>,
        mut parts: Box<request::Parts>,
        path: &str,
        mut body: RequestBody,
        ex: &mut Exchange,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let (b, vars) = self.find(&parts.method, path)?;
        let data = body.read_whole().await?;
        let msg = b.request_message(&data, &vars, parts.uri.query())?;
        let mut framed = BytesMut::new();
        frame(&msg, &mut framed);

        let ndjson = b.grpc.is_server_streaming()
            && parts
                .headers
                .get(ACCEPT)
                .is_some_and(|a| a.as_bytes().starts_with(b"application/x-ndjson"));
        parts.method = Method::POST;
        let h = &mut parts.headers;
        for name in [CONTENT_LENGTH, ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE] {
            h.remove(name);
        }
        // Reserved gRPC headers are the gateway's to set, never the client's.
        let reserved: Vec<HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("grpc-"))
            .cloned()
            .collect();
        for name in reserved {
            h.remove(name);
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        let left = ctx.deadline.saturating_duration_since(Instant::now());
        h.insert(HeaderName::from_static("grpc-timeout"), grpc_timeout(left));
        let call = Call {
            route,
            upstream,
            ctx,
            host,
            deadline: ctx.deadline,
        };
        let resp = forward(
            call,
            parts,
            b.grpc_path.clone(),
            RequestBody::full(framed.freeze()),
            ex,
        )
        .await?;
        b.answer(resp, ndjson).await
    }

    /// The binding for this method and path: 405 when the path is bound
    /// only to other methods, 404 when it is not bound at all.
    fn find(&self, method: &Method, path: &str) -> Result<(&Binding, Vars<'_>), GatewayError> {
        let mut allow = 0u16;
        for b in &self.bindings {
            if let Some(vars) = b.template.matches(path) {
                if b.method == *method {
                    return Ok((b, vars));
                }
                allow |= crate::router::method_bit(b.method.as_str()).unwrap_or(0);
            }
        }
        if allow != 0 {
            return Err(GatewayError::MethodNotAllowed { allow });
        }
        Err(GatewayError::RouteNotFound)
    }
}

/// Adds the bindings of one HttpRule (and its `additional_bindings`).
fn add_rule(
    out: &mut Vec<Binding>,
    rule: &DynamicMessage,
    m: &MethodDescriptor,
    grpc_path: &PathAndQuery,
    top: bool,
) -> Result<(), String> {
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let mut pattern = None;
    for verb in ["get", "put", "post", "delete", "patch"] {
        if let Some(p) = text(verb) {
            pattern = Some((
                Method::from_bytes(verb.to_uppercase().as_bytes()).map_err(|e| e.to_string())?,
                p,
            ));
        }
    }
    if pattern.is_none()
        && let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref()
    {
        let kind = custom
            .get_field_by_name("kind")
            .and_then(|v| v.as_str().map(str::to_string));
        let path = custom
            .get_field_by_name("path")
            .and_then(|v| v.as_str().map(str::to_string));
        if let (Some(kind), Some(path)) = (kind, path) {
            pattern = Some((
                Method::from_bytes(kind.as_bytes()).map_err(|e| e.to_string())?,
                path,
            ));
        }
    }
    if let Some((method, path)) = pattern {
        let template = PathTemplate::parse(&path).map_err(|e| format!("path `{path}`: {e}"))?;
        let input = m.input();
        for field in template.fields() {
            field_path(&input, field).map_err(|e| format!("path `{path}`: {e}"))?;
        }
        let body = match text("body").as_deref() {
            None => BodyRule::None,
            Some("*") => BodyRule::Whole,
            Some(f) => BodyRule::Field(
                input
                    .get_field_by_name(f)
                    .ok_or_else(|| format!("body `{f}` is not a field of {}", input.full_name()))?,
            ),
        };
        let response_body = match text("response_body") {
            None => None,
            Some(f) => Some(m.output().get_field_by_name(&f).ok_or_else(|| {
                format!("response_body `{f}` is not a field of {}", m.output().full_name())
            })?),
        };
        out.push(Binding {
            method,
            template,
            body,
            response_body,
            grpc: m.clone(),
            grpc_path: grpc_path.clone(),
        });
    }
    if top && let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
        for r in more {
            if let Value::Message(r) = r {
                add_rule(out, r, m, grpc_path, false)?;
            }
        }
    }
    Ok(())
}

/// The fields along `path` (`store.id`) from `desc`; each but the last a message.
fn field_path(desc: &MessageDescriptor, path: &[String]) -> Result<Vec<FieldDescriptor>, String> {
    let mut out = Vec::with_capacity(path.len());
    let mut current = desc.clone();
    for (i, name) in path.iter().enumerate() {
        let f = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| format!("`{}` is not a field of {}", path.join("."), desc.full_name()))?;
        if i + 1 < path.len() {
            match f.kind() {
                Kind::Message(m) if !f.is_list() && !f.is_map() => current = m,
                _ => return Err(format!("`{name}` in `{}` is not a message", path.join("."))),
            }
        }
        out.push(f);
    }
    Ok(out)
}

fn invalid(pointer: String, detail: String) -> GatewayError {
    GatewayError::ValidationFailed { pointer, detail }
}

impl Binding {
    /// The request message from the body, the path variables and the query.
    fn request_message(
        &self,
        body: &[u8],
        vars: &[(&[String], String)],
        query: Option<&str>,
    ) -> Result<DynamicMessage, GatewayError> {
        let input = self.grpc.input();
        let mut msg = DynamicMessage::new(input.clone());
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            &[][..]
        } else {
            body
        };
        match &self.body {
            BodyRule::Whole if !body.is_empty() => msg = from_json(input.clone(), body, "")?,
            BodyRule::Field(f) if !body.is_empty() => {
                // Pointers are into the client's body: here, the field itself.
                let value = match f.kind() {
                    Kind::Message(m) if !f.is_list() && !f.is_map() => {
                        Value::Message(from_json(m, body, "")?)
                    }
                    _ => {
                        let json: serde_json::Value = serde_json::from_slice(body)
                            .map_err(|e| invalid(String::new(), format!("the body is not JSON: {e}")))?;
                        json_to_field(f, &json).map_err(|e| invalid(String::new(), e))?
                    }
                };
                msg.set_field(f, value);
            }
            BodyRule::None if !body.is_empty() => {
                return Err(GatewayError::BadRequest {
                    detail: "this method takes no request body",
                    close: false,
                });
            }
            _ => {}
        }
        for (path, value) in vars {
            set_path(&mut msg, path, value).map_err(|e| invalid(format!("/{}", path.join("/")), e))?;
        }
        // The query fills the fields the path and body leave, unless the
        // body is the whole message. Unknown parameters are ignored (auth
        // plugins may read their own).
        if let (Some(q), false) = (query, matches!(self.body, BodyRule::Whole)) {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let key = crate::plugins::percent_decode(k);
                let path: Vec<String> = key.split('.').map(str::to_string).collect();
                if vars.iter().any(|(p, _)| p.first() == path.first()) {
                    continue;
                }
                if let BodyRule::Field(f) = &self.body
                    && path.first().is_some_and(|p| p == f.name() || p == f.json_name())
                {
                    continue;
                }
                if field_path(&input, &path).is_err() {
                    continue;
                }
                let value = crate::plugins::percent_decode(v);
                set_path(&mut msg, &path, &value).map_err(|e| {
                    invalid(
                        format!("/{}", path.join("/")),
                        format!("query parameter `{key}`: {e}"),
                    )
                })?;
            }
        }
        Ok(msg)
    }

    /// The client's answer from the upstream's.
    async fn answer(
        &self,
        resp: Response<ResponseBody>,
        ndjson: bool,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let (parts, body) = resp.into_parts();
        if parts.status != StatusCode::OK {
            return Err(GatewayError::UpstreamProtocol(format!(
                "a gRPC upstream answered HTTP {}",
                parts.status
            )));
        }
        let mut json = JsonStream {
            upstream: body,
            buf: BytesMut::new(),
            head_status: status_fields(&parts.headers),
            trailers: None,
            output: self.grpc.output(),
            response_body: self.response_body.clone(),
            streaming: self.grpc.is_server_streaming(),
            ndjson,
            written: 0,
            finished: false,
            pending: None,
        };
        // Up to the first message (or the end), the status can still
        // become the answer's; a unary answer is read whole.
        let first = std::future::poll_fn(|cx| json.poll_next(cx)).await?;
        if !json.streaming {
            let rest = std::future::poll_fn(|cx| json.poll_next(cx)).await?;
            if rest.is_some() || json.written != 1 {
                return Err(GatewayError::UpstreamProtocol(format!(
                    "a unary gRPC answer with {} messages",
                    json.written
                )));
            }
        }
        let content_type = if ndjson {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        let (body, length) = if json.finished {
            let whole = first.unwrap_or_default();
            let n = whole.len();
            (ResponseBody::full(whole), Some(n))
        } else {
            // The rest as it comes: after this, a status other than OK can
            // only cut the answer short (see `JsonStream`).
            json.pending = first;
            (ResponseBody::wrap(json), None)
        };
        let mut resp = Response::new(body);
        let h = resp.headers_mut();
        // The upstream's metadata goes on; its gRPC framing headers do not.
        for (k, v) in &parts.headers {
            let n = k.as_str();
            if !(n.starts_with("grpc-") || n == "content-type" || n == "content-length" || n == "trailer") {
                h.append(k.clone(), v.clone());
            }
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(n) = length {
            h.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        Ok(resp)
    }
}

/// One answer message as proto3 JSON (lowerCamelCase names, 64-bit
/// integers as strings, enums by name), or only its `response_body` field.
fn write_json(
    response_body: Option<&FieldDescriptor>,
    msg: &DynamicMessage,
    out: &mut Vec<u8>,
) -> Result<(), GatewayError> {
    let err = |e: serde_json::Error| GatewayError::UpstreamProtocol(e.to_string());
    let write = |m: &DynamicMessage, out: &mut Vec<u8>| {
        m.serialize_with_options(&mut serde_json::Serializer::new(out), &SerializeOptions::new())
            .map_err(err)
    };
    let Some(f) = response_body else {
        return write(msg, out);
    };
    match &*msg.get_field(f) {
        Value::Message(m) => write(m, out),
        Value::List(items) if items.iter().all(|i| matches!(i, Value::Message(_))) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if let Value::Message(m) = item {
                    write(m, out)?;
                }
            }
            out.push(b']');
            Ok(())
        }
        // Scalars and maps: their JSON form, from the message's.
        _ => {
            let json = msg
                .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
                .map_err(err)?;
            let value = json
                .get(f.json_name())
                .cloned()
                .unwrap_or_else(|| default_json(f));
            serde_json::to_writer(out, &value).map_err(err)
        }
    }
}

fn default_json(f: &FieldDescriptor) -> serde_json::Value {
    use serde_json::Value as J;
    if f.is_list() {
        return J::Array(Vec::new());
    }
    match f.kind() {
        Kind::Message(_) => J::Object(Default::default()),
        Kind::Bool => J::Bool(false),
        Kind::String | Kind::Bytes => J::String(String::new()),
        Kind::Int64 | Kind::Uint64 | Kind::Sint64 | Kind::Fixed64 | Kind::Sfixed64 => J::String("0".into()),
        Kind::Enum(e) => e.default_value().name().into(),
        _ => J::from(0),
    }
}

/// The message `desc` from JSON `body`; an error names the failing field as
/// a JSON pointer under `prefix`.
fn from_json(desc: MessageDescriptor, body: &[u8], prefix: &str) -> Result<DynamicMessage, GatewayError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
    let options = DeserializeOptions::new();
    let result = DynamicMessage::deserialize_with_options(desc, tracked, &options).and_then(|m| {
        de.end()?;
        Ok(m)
    });
    result.map_err(|e| {
        let path = track.path();
        let mut pointer = prefix.to_string();
        for seg in path.iter() {
            use serde_path_to_error::Segment;
            match seg {
                Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
                Segment::Map { key } | Segment::Enum { variant: key } => push_pointer(&mut pointer, key),
                Segment::Unknown => {}
            }
        }
        // An unknown field fails on its name, before the path reaches it.
        let message = e.to_string();
        if let Some(rest) = message.strip_prefix("unrecognized field name '")
            && let Some((name, _)) = rest.split_once('\'')
        {
            push_pointer(&mut pointer, name);
        }
        let detail = if pointer.is_empty() {
            format!("the body does not fit the request message: {e}")
        } else {
            format!("`{pointer}` does not fit the request message: {e}")
        };
        invalid(pointer, detail)
    })
}

/// Appends one JSON pointer token (RFC 6901 escapes).
fn push_pointer(pointer: &mut String, token: &str) {
    pointer.push('/');
    pointer.push_str(&token.replace('~', "~0").replace('/', "~1"));
}

/// Sets the field at `path` from its text form (path variables, query).
/// A repeated field gets the value appended.
fn set_path(msg: &mut DynamicMessage, path: &[String], text: &str) -> Result<(), String> {
    let fields = field_path(&msg.descriptor(), path)?;
    let mut current = msg;
    for f in &fields[..fields.len() - 1] {
        current = match current.get_field_mut(f) {
            Value::Message(m) => m,
            _ => return Err(format!("`{}` is not a message", f.name())),
        };
    }
    let last = &fields[fields.len() - 1];
    let value = scalar(last, text)?;
    if last.is_list() {
        if let Value::List(items) = current.get_field_mut(last) {
            items.push(value);
        }
    } else {
        current.set_field(last, value);
    }
    Ok(())
}

/// A scalar field's value from text.
fn scalar(f: &FieldDescriptor, text: &str) -> Result<Value, String> {
    let bad = |what: &str| format!("`{text}` is not {what}");
    Ok(match f.kind() {
        Kind::String => Value::String(text.to_string()),
        Kind::Bytes => {
            use base64::Engine;
            let engine = base64::engine::general_purpose::STANDARD;
            let url = base64::engine::general_purpose::URL_SAFE;
            let data = engine
                .decode(text)
                .or_else(|_| url.decode(text))
                .map_err(|_| bad("base64"))?;
            Value::Bytes(data.into())
        }
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(bad("true or false")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| bad("a 32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| bad("a 64-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => {
            Value::U32(text.parse().map_err(|_| bad("an unsigned 32-bit integer"))?)
        }
        Kind::Uint64 | Kind::Fixed64 => {
            Value::U64(text.parse().map_err(|_| bad("an unsigned 64-bit integer"))?)
        }
        Kind::Float => Value::F32(text.parse().map_err(|_| bad("a number"))?),
        Kind::Double => Value::F64(text.parse().map_err(|_| bad("a number"))?),
        Kind::Enum(e) => match e.get_value_by_name(text) {
            Some(v) => Value::EnumNumber(v.number()),
            None => match text.parse::<i32>().ok().and_then(|n| e.get_value(n)) {
                Some(v) => Value::EnumNumber(v.number()),
                None => return Err(format!("`{text}` is not a value of {}", e.full_name())),
            },
        },
        Kind::Message(m) => return Err(format!("a {} cannot be set from text", m.full_name())),
    })
}

/// A non-message body field (`body: "tags"`) from JSON.
fn json_to_field(f: &FieldDescriptor, json: &serde_json::Value) -> Result<Value, String> {
    let one = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => scalar(f, s),
        serde_json::Value::Number(n) => scalar(f, &n.to_string()),
        serde_json::Value::Bool(b) => scalar(f, if *b { "true" } else { "false" }),
        other => Err(format!("{other} does not fit `{}`", f.name())),
    };
    match json {
        serde_json::Value::Array(items) if f.is_list() => {
            Ok(Value::List(items.iter().map(one).collect::<Result<_, _>>()?))
        }
        v if !f.is_list() => one(v),
        _ => Err(format!("`{}` takes a list", f.name())),
    }
}

/// Appends `msg` as a gRPC frame: no compression flag, 4-byte length, bytes.
pub fn frame(msg: &DynamicMessage, out: &mut BytesMut) {
    let len = msg.encoded_len();
    out.reserve(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    msg.encode_raw(out);
}

/// An answer's messages as JSON, converted as the upstream sends them: a
/// unary answer's one message, or a server stream as a JSON array (`[`,
/// messages with `,`, `]`) or NDJSON (a message a line). Each message is
/// bounded by `MAX_ANSWER`, not the whole stream.
///
/// The status comes last (trailers, or the head of a trailers-only answer).
/// Once a message has gone to the client the answer is a 200, so a status
/// other than OK after that ends the body in an error: the client sees the
/// answer cut short (no closing `]`, no final chunk, or a reset stream)
/// rather than one that looks complete.
struct JsonStream {
    upstream: ResponseBody,
    buf: BytesMut,
    /// `grpc-status` and `grpc-message` of the answer's head.
    head_status: Option<HeaderMap>,
    trailers: Option<HeaderMap>,
    output: MessageDescriptor,
    response_body: Option<FieldDescriptor>,
    streaming: bool,
    ndjson: bool,
    /// Messages converted so far.
    written: usize,
    finished: bool,
    /// JSON read before the answer's head went out, sent first.
    pending: Option<Bytes>,
}

/// The client's body, once the head is out.
impl http_body::Body for JsonStream {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let chunk = match this.pending.take() {
            Some(chunk) => Ok(Some(chunk)),
            None => std::task::ready!(this.poll_next(cx)),
        };
        std::task::Poll::Ready(match chunk {
            Ok(chunk) => chunk.map(|c| Ok(http_body::Frame::data(c))),
            Err(e) => {
                tracing::debug!(error = %e, "a transcoded server stream failed after its first message");
                this.finished = true;
                Some(Err(e.to_string().into()))
            }
        })
    }
}

impl JsonStream {
    /// The JSON of the messages that came since the last call (at least
    /// one), the closing `]` at the end of an array, or `None` once done.
    fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Option<Bytes>, GatewayError>> {
        use std::task::Poll;
        loop {
            if self.finished {
                return Poll::Ready(Ok(None));
            }
            let mut out = Vec::new();
            while let Some(frame) = next_frame(&mut self.buf)? {
                let msg = DynamicMessage::decode(self.output.clone(), frame).map_err(|e| {
                    GatewayError::UpstreamProtocol(format!("a gRPC message that does not decode: {e}"))
                })?;
                if self.streaming && !self.ndjson {
                    out.push(if self.written == 0 { b'[' } else { b',' });
                }
                write_json(self.response_body.as_ref(), &msg, &mut out)?;
                if self.ndjson {
                    out.push(b'\n');
                }
                self.written += 1;
            }
            if !out.is_empty() {
                return Poll::Ready(Ok(Some(Bytes::from(out))));
            }
            let frame = match std::task::ready!(http_body::Body::poll_frame(
                std::pin::Pin::new(&mut self.upstream),
                cx
            )) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Err(GatewayError::UpstreamProtocol(e.to_string()))),
                None => return Poll::Ready(self.end()),
            };
            match frame.into_data() {
                Ok(data) => self.buf.extend_from_slice(&data),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.trailers = Some(trailers);
                    }
                }
            }
        }
    }

    /// The end of the upstream's answer: its status, and the array's close.
    fn end(&mut self) -> Result<Option<Bytes>, GatewayError> {
        self.finished = true;
        if !self.buf.is_empty() {
            return Err(malformed("a truncated frame"));
        }
        // A trailers-only answer carries its status in the head.
        let status = self
            .trailers
            .as_ref()
            .filter(|t| t.contains_key("grpc-status"))
            .or(self.head_status.as_ref())
            .ok_or_else(|| GatewayError::UpstreamProtocol("a gRPC answer without grpc-status".into()))?;
        let code: u16 = status
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| {
                GatewayError::UpstreamProtocol("a gRPC answer with an invalid grpc-status".into())
            })?;
        if code != 0 {
            let message = status
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .map(crate::plugins::percent_decode_path)
                .unwrap_or_default();
            return Err(GatewayError::GrpcStatus { code, message });
        }
        Ok(match (self.streaming && !self.ndjson, self.written) {
            (false, _) => None,
            (true, 0) => Some(Bytes::from_static(b"[]")),
            (true, _) => Some(Bytes::from_static(b"]")),
        })
    }
}

/// The status fields of an answer's head, if it has them.
fn status_fields(headers: &HeaderMap) -> Option<HeaderMap> {
    let status = headers.get("grpc-status")?;
    let mut out = HeaderMap::new();
    out.insert("grpc-status", status.clone());
    if let Some(m) = headers.get("grpc-message") {
        out.insert("grpc-message", m.clone());
    }
    Some(out)
}

fn malformed(why: &str) -> GatewayError {
    GatewayError::UpstreamProtocol(format!("a malformed gRPC answer: {why}"))
}

/// The next whole message at the start of `buf`, taken off it; `None`
/// while its frame has not all come.
fn next_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, GatewayError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    if header[0] & 1 != 0 {
        return Err(malformed("a compressed message (none was asked for)"));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_ANSWER {
        return Err(malformed("a message over 8 MiB"));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let mut frame = buf.split_to(5 + len);
    Ok(Some(frame.split_off(5).freeze()))
}

/// `grpc-timeout`: at most 8 digits and a unit.
fn grpc_timeout(d: Duration) -> HeaderValue {
    let ms = d.as_millis().max(1);
    let value = if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", (d.as_secs()).min(99_999_999))
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("1S"))
}

/// Whether the request already speaks gRPC (passed through untouched).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// gRPC status codes as HTTP statuses (as grpc-gateway and Envoy map them).
pub fn http_status(code: u16) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        4 => StatusCode::GATEWAY_TIMEOUT,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The problem type slug of a gRPC status: `grpc-not-found`, ….
pub fn status_slug(code: u16) -> &'static str {
    match code {
        1 => "grpc-cancelled",
        3 => "grpc-invalid-argument",
        4 => "grpc-deadline-exceeded",
        5 => "grpc-not-found",
        6 => "grpc-already-exists",
        7 => "grpc-permission-denied",
        8 => "grpc-resource-exhausted",
        9 => "grpc-failed-precondition",
        10 => "grpc-aborted",
        11 => "grpc-out-of-range",
        12 => "grpc-unimplemented",
        13 => "grpc-internal",
        14 => "grpc-unavailable",
        15 => "grpc-data-loss",
        16 => "grpc-unauthenticated",
        _ => "grpc-unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_like_grpc_gateway() {
        assert_eq!(http_status(5), StatusCode::NOT_FOUND);
        assert_eq!(http_status(3), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(16), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(14), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http_status(99), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(status_slug(5), "grpc-not-found");
    }

    #[test]
    fn frames_are_taken_whole_and_checked() {
        let mut buf = BytesMut::from(&b"\0\0\0\0\x02hi\0\0\0\0\0\0\0"[..]);
        assert_eq!(next_frame(&mut buf).unwrap().unwrap(), &b"hi"[..]);
        assert_eq!(next_frame(&mut buf).unwrap().unwrap(), &b""[..]);
        // Two bytes of the next header: wait for the rest.
        assert_eq!(next_frame(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"\0\0");
        // A frame longer than what came: wait.
        let mut buf = BytesMut::from(&b"\0\0\0\0\x05hi"[..]);
        assert_eq!(next_frame(&mut buf).unwrap(), None);
        assert!(next_frame(&mut BytesMut::from(&b"\x01\0\0\0\x02hi"[..])).is_err());
        assert!(next_frame(&mut BytesMut::from(&b"\0\xff\xff\xff\xff"[..])).is_err());
    }

    #[test]
    fn timeouts_fit_the_header() {
        assert_eq!(grpc_timeout(Duration::from_millis(1500)), "1500m");
        assert_eq!(grpc_timeout(Duration::ZERO), "1m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }
}
