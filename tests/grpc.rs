//! gRPC through the real binary (SPEC section 4): REST/JSON transcoded to a
//! real gRPC server over HTTP/2 (a descriptor set compiled from
//! tests/fixtures/protos at test time, no generated code on either side),
//! and native gRPC clients passed through with their trailers.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use serde_json::json;
use support::*;

const PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/protos");

/// The inventory descriptor set, compiled by protox, written to a file.
fn descriptor_set() -> (DescriptorPool, std::path::PathBuf) {
    let mut compiler = protox::Compiler::new([PROTOS]).unwrap();
    compiler
        .include_imports(true)
        .open_file("inventory.proto")
        .unwrap();
    let bytes = compiler.encode_file_descriptor_set();
    let dir = test_dir("grpc");
    let path = dir.join("inventory.pb");
    std::fs::write(&path, &bytes).unwrap();
    (DescriptorPool::decode(&bytes[..]).unwrap(), path)
}

fn framed(msg: &DynamicMessage) -> Bytes {
    let data = msg.encode_to_vec();
    let mut out = BytesMut::new();
    out.put_u8(0);
    out.put_u32(data.len() as u32);
    out.put_slice(&data);
    out.freeze()
}

type Body = BoxBody<Bytes, Infallible>;

fn grpc_answer(data: Bytes, status: u32, message: &str, seen: &HeaderMap) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", status.to_string().parse().unwrap());
    if !message.is_empty() {
        trailers.insert("grpc-message", message.parse().unwrap());
    }
    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
        vec![Ok(Frame::data(data)), Ok(Frame::trailers(trailers))];
    let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
    r.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    // What the server saw, sent back as response metadata.
    for (from, to) in [
        ("authorization", "x-saw-authorization"),
        ("grpc-timeout", "x-saw-timeout"),
    ] {
        if let Some(v) = seen.get(from) {
            r.headers_mut().insert(to, v.clone());
        }
    }
    r
}

fn status_trailers(status: u32, message: &str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", status.to_string().parse().unwrap());
    if !message.is_empty() {
        trailers.insert("grpc-message", message.parse().unwrap());
    }
    trailers
}

/// A server stream's answer from its frames.
fn grpc_stream(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    r
}

/// Lets the `paced` stream send its second message.
static NEXT_MESSAGE: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn item(pool: &DescriptorPool, sku: &str, quantity: i64) -> DynamicMessage {
    let desc = pool.get_message_by_name("shop.v1.Item").unwrap();
    let mut m = DynamicMessage::new(desc);
    m.set_field_by_name("sku", Value::String(sku.into()));
    m.set_field_by_name("display_name", Value::String(format!("Item {sku}")));
    m.set_field_by_name("quantity", Value::I64(quantity));
    m.set_field_by_name("availability", Value::EnumNumber(1));
    let mut ts = DynamicMessage::new(pool.get_message_by_name("google.protobuf.Timestamp").unwrap());
    ts.set_field_by_name("seconds", Value::I64(1_767_323_045)); // 2026-01-02T03:04:05Z
    m.set_field_by_name("updated_at", Value::Message(ts));
    m.set_field_by_name(
        "tags",
        Value::List(vec![Value::String("a".into()), Value::String("b".into())]),
    );
    let mut loc = DynamicMessage::new(pool.get_message_by_name("shop.v1.Location").unwrap());
    loc.set_field_by_name("warehouse", Value::String("w1".into()));
    loc.set_field_by_name("aisle", Value::I32(3));
    m.set_field_by_name("location", Value::Message(loc));
    m
}

fn text(m: &DynamicMessage, name: &str) -> String {
    m.get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The inventory service, by hand: each request decoded and answered with
/// prost-reflect messages, gRPC framing and trailers over hyper's HTTP/2.
async fn inventory_server(pool: DescriptorPool) -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (pool, record) = (pool.clone(), record.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (pool, record) = (pool.clone(), record.clone());
                    async move {
                        // `reset`: the stream is reset instead of answered.
                        if req.uri().path().ends_with("/GetItem") && req.headers().contains_key("x-reset") {
                            return Err(std::io::Error::other("reset"));
                        }
                        Ok(answer(&pool, req, &record).await)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

async fn answer(
    pool: &DescriptorPool,
    req: Request<Incoming>,
    record: &Mutex<Vec<HeaderMap>>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    record.lock().unwrap().push(parts.headers.clone());
    let body = body.collect().await.unwrap().to_bytes();
    let service = pool.get_service_by_name("shop.v1.Inventory").unwrap();
    let name = parts.uri.path().rsplit('/').next().unwrap_or("");
    let Some(method) = service.methods().find(|m| m.name() == name) else {
        return grpc_answer(Bytes::new(), 12, "unknown method", &parts.headers);
    };
    let req = DynamicMessage::decode(method.input(), &body[5..]).unwrap();
    let h = &parts.headers;
    let ok = |m: DynamicMessage| grpc_answer(framed(&m), 0, "", h);
    match name {
        "GetItem" => match text(&req, "sku").as_str() {
            "missing" => {
                // Trailers-only: the status in the headers, no body.
                let mut r = Response::new(Full::new(Bytes::new()).boxed());
                r.headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                r.headers_mut().insert("grpc-status", "5".parse().unwrap());
                r.headers_mut()
                    .insert("grpc-message", "no%20item%20missing".parse().unwrap());
                r
            }
            "garbage" => grpc_answer(Bytes::from_static(&[0, 0, 0, 0, 9, 1, 2]), 0, "", h),
            sku => ok(item(pool, sku, 12_345_678_901_234)),
        },
        "ListItems" => {
            let limit = req
                .get_field_by_name("limit")
                .and_then(|v| v.as_i32())
                .unwrap_or(0);
            let warehouse = text(&req, "warehouse");
            let availability = req
                .get_field_by_name("availability")
                .and_then(|v| v.as_enum_number())
                .unwrap_or(0);
            let tags = req
                .get_field_by_name("tags")
                .map(|v| v.into_owned())
                .unwrap_or(Value::List(vec![]));
            let items: Vec<Value> = (0..limit)
                .map(|i| {
                    let mut it = item(pool, &format!("{warehouse}-{i}"), i.into());
                    it.set_field_by_name("availability", Value::EnumNumber(availability));
                    it.set_field_by_name("tags", tags.clone());
                    Value::Message(it)
                })
                .collect();
            let mut resp = DynamicMessage::new(method.output());
            resp.set_field_by_name("items", Value::List(items));
            resp.set_field_by_name("next_page", Value::String(format!("{warehouse}-{limit}")));
            ok(resp)
        }
        "CreateItem" | "UpdateItem" => {
            let Some(Value::Message(it)) = req.get_field_by_name("item").map(|v| v.into_owned()) else {
                return grpc_answer(Bytes::new(), 3, "no item", h);
            };
            ok(it)
        }
        "DeleteItem" => ok(DynamicMessage::new(method.output())),
        "Watch" if text(&req, "warehouse") == "paced" => {
            // One message, then the next only when the test says so.
            let pool = pool.clone();
            let frames = futures_util::stream::unfold(0, move |step| {
                let pool = pool.clone();
                async move {
                    let frame = match step {
                        0 => Frame::data(framed(&item(&pool, "paced-0", 0))),
                        1 => {
                            NEXT_MESSAGE.notified().await;
                            Frame::data(framed(&item(&pool, "paced-1", 1)))
                        }
                        2 => Frame::trailers(status_trailers(0, "")),
                        _ => return None,
                    };
                    Some((Ok::<_, Infallible>(frame), step + 1))
                }
            });
            grpc_stream(StreamBody::new(frames).boxed())
        }
        "Watch" if text(&req, "warehouse") == "closed" => {
            grpc_answer(Bytes::new(), 5, "no%20such%20warehouse", h)
        }
        "Watch" if text(&req, "warehouse") == "failing" => {
            // One message, then an error status.
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(framed(&item(pool, "failing-0", 0)))),
                Ok(Frame::trailers(status_trailers(14, "backend down"))),
            ];
            grpc_stream(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        }
        "Watch" => {
            let count = req
                .get_field_by_name("count")
                .and_then(|v| v.as_i32())
                .unwrap_or(0);
            let mut data = BytesMut::new();
            for i in 0..count {
                data.put_slice(&framed(&item(
                    pool,
                    &format!("{}-{i}", text(&req, "warehouse")),
                    i.into(),
                )));
            }
            grpc_answer(data.freeze(), 0, "", h)
        }
        "Reserve" => {
            let count = req
                .get_field_by_name("count")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            ok(item(pool, &text(&req, "sku"), count))
        }
        _ => grpc_answer(Bytes::new(), 12, "unimplemented", h),
    }
}

struct Setup {
    gw: Gateway,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    pool: DescriptorPool,
}

async fn setup() -> Setup {
    let (pool, path) = descriptor_set();
    let (addr, seen) = inventory_server(pool.clone()).await;
    let gw = Gateway::start(&config(
        &format!("  - name: inventory\n    protocol: grpc\n    targets: [{{url: \"http://{addr}\"}}]\n"),
        &format!(
            "  - name: inventory\n    match: {{paths: [\"/v1\", \"/shop.v1.Inventory\"]}}\n    upstream: inventory\n    timeout: 5s\n    grpc_transcode:\n      descriptor_set: {}\n      services: [shop.v1.Inventory]\n",
            path.display()
        ),
        "",
    ));
    Setup { gw, seen, pool }
}

async fn call(gw: &Gateway, method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Resp {
    let mut b = req(method, &gw.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = body.map_or(Bytes::new(), |s| Bytes::from(s.to_string()));
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    send(&client_h1(), b.body(Full::new(body)).unwrap()).await
}

#[tokio::test]
async fn rest_calls_are_transcoded_both_ways() {
    let s = setup().await;
    let gw = &s.gw;

    let r = call(
        gw,
        "GET",
        "/v1/inventory/abc",
        None,
        &[("authorization", "Bearer t0k")],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), "application/json");
    // Fields in the message's order, as protobuf JSON printers write them.
    assert!(
        r.body
            .starts_with(br#"{"sku":"abc","displayName":"Item abc","quantity":"#),
        "{:?}",
        r.body
    );
    assert_eq!(
        r.json(),
        json!({
            "sku": "abc", "displayName": "Item abc", "quantity": "12345678901234",
            "availability": "IN_STOCK", "updatedAt": "2026-01-02T03:04:05Z",
            "tags": ["a", "b"], "location": {"warehouse": "w1", "aisle": 3}
        })
    );
    // Metadata: the client's headers went up, the server's came back.
    assert_eq!(r.header("x-saw-authorization"), "Bearer t0k");
    let timeout = r.header("x-saw-timeout");
    let ms: u64 = timeout.strip_suffix('m').unwrap().parse().unwrap();
    assert!(ms > 3000 && ms <= 5000, "{timeout}");
    assert_eq!(s.seen.lock().unwrap()[0]["content-type"], "application/grpc");

    // Query parameters into fields: enums by name, repeated fields.
    let r = call(
        gw,
        "GET",
        "/v1/inventory?warehouse=w2&limit=2&availability=BACKORDER&tags=x&tags=y",
        None,
        &[],
    )
    .await;
    let v = r.json();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    assert_eq!(v["items"][1]["sku"], "w2-1");
    assert_eq!(v["items"][0]["availability"], "BACKORDER");
    assert_eq!(v["items"][0]["tags"], json!(["x", "y"]));
    assert_eq!(v["nextPage"], "w2-2");

    // An additional binding with a path variable and response_body.
    let r = call(gw, "GET", "/v1/warehouses/w3/items?limit=1", None, &[]).await;
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["sku"], "w3-0");

    // body: "item", proto and JSON field names both accepted.
    let r = call(
        gw,
        "POST",
        "/v1/inventory",
        Some(r#"{"sku": "new", "display_name": "New", "quantity": "5", "availability": "BACKORDER"}"#),
        &[],
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"sku": "new", "displayName": "New", "quantity": "5", "availability": "BACKORDER"})
    );

    // A nested path variable merged with the body.
    let r = call(
        gw,
        "PATCH",
        "/v1/inventory/p1",
        Some(r#"{"displayName": "Renamed"}"#),
        &[],
    )
    .await;
    assert_eq!(r.json(), json!({"sku": "p1", "displayName": "Renamed"}));

    let r = call(gw, "DELETE", "/v1/inventory/d1", None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({}));

    // No annotation: POST /package.Service/Method with the message as JSON.
    let r = call(
        gw,
        "POST",
        "/shop.v1.Inventory/Reserve",
        Some(r#"{"sku": "r1", "count": "3"}"#),
        &[],
    )
    .await;
    assert_eq!(r.json()["quantity"], "3");
}

#[tokio::test]
async fn server_streams_are_arrays_or_ndjson() {
    let s = setup().await;
    let r = call(&s.gw, "GET", "/v1/warehouses/w1/watch?count=3", None, &[]).await;
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert_eq!(v[2]["sku"], "w1-2");

    let r = call(
        &s.gw,
        "GET",
        "/v1/warehouses/w1/watch?count=2",
        None,
        &[("accept", "application/x-ndjson")],
    )
    .await;
    assert_eq!(r.header("content-type"), "application/x-ndjson");
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["sku"], "w1-1");
}

/// Reads from `s` into `got` until `until` is in it or the stream ends.
async fn read_until(s: &mut tokio::net::TcpStream, got: &mut Vec<u8>, until: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(got).contains(until) {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {until:?} in {:?}", String::from_utf8_lossy(got)))
            .unwrap();
        if n == 0 {
            return;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// The data of a chunked body, and whether its last chunk came.
fn dechunk(mut body: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size = usize::from_str_radix(std::str::from_utf8(&body[..eol]).unwrap(), 16).unwrap();
        if size == 0 {
            return (out, true);
        }
        let Some(chunk) = body.get(eol + 2..eol + 2 + size) else {
            return (out, false);
        };
        out.extend_from_slice(chunk);
        body = &body[(eol + 4 + size).min(body.len())..];
    }
}

#[tokio::test]
async fn a_server_stream_reaches_the_client_as_it_comes() {
    use tokio::io::AsyncWriteExt;
    let s = setup().await;
    let mut c = tokio::net::TcpStream::connect(s.gw.addr()).await.unwrap();
    c.write_all(b"GET /v1/warehouses/paced/watch?count=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The first message comes while the upstream holds back the second.
    let mut got = Vec::new();
    read_until(&mut c, &mut got, "paced-0").await;
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(!text.contains("paced-1"), "{text}");
    NEXT_MESSAGE.notify_one();
    read_until(&mut c, &mut got, "\r\n0\r\n\r\n").await;
    let at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let (json, complete) = dechunk(&got[at..]);
    assert!(complete);
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v[0]["sku"], "paced-0");
    assert_eq!(v[1]["sku"], "paced-1");
    assert_eq!(v.as_array().unwrap().len(), 2);

    // An error status after the first message cannot change the 200 any
    // more: the answer is cut short, never made to look complete.
    let (resp, closed) = raw(
        s.gw.addr(),
        b"GET /v1/warehouses/failing/watch HTTP/1.1\r\nHost: x\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(closed);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let at = resp.find("\r\n\r\n").unwrap() + 4;
    let (json, complete) = dechunk(&resp.as_bytes()[at..]);
    assert!(!complete, "{resp}");
    let json = String::from_utf8(json).unwrap();
    assert!(json.starts_with(r#"[{"sku":"failing-0""#), "{json}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&json).is_err(),
        "{json}"
    );

    // Before any message, the status is still the answer's; an empty
    // stream is an empty array.
    let p = call(&s.gw, "GET", "/v1/warehouses/closed/watch", None, &[])
        .await
        .problem(404, "grpc-not-found");
    assert_eq!(p["detail"], "no such warehouse");
    let r = call(&s.gw, "GET", "/v1/warehouses/w1/watch?count=0", None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "[]");
}

#[tokio::test]
async fn errors_are_mapped_and_bad_json_is_named() {
    let s = setup().await;
    let gw = &s.gw;

    let p = call(gw, "GET", "/v1/inventory/missing", None, &[])
        .await
        .problem(404, "grpc-not-found");
    assert_eq!(p["detail"], "no item missing");
    assert_eq!(p["grpc_status"], 5);

    for (body, pointer) in [
        (r#"{"sku": 5}"#, "/sku"),
        (r#"{"availability": "SOMETIMES"}"#, "/availability"),
        (r#"{"location": {"aisle": "third"}}"#, "/location/aisle"),
        (r#"{"nope": 1}"#, "/nope"),
    ] {
        let p = call(gw, "POST", "/v1/inventory", Some(body), &[])
            .await
            .problem(400, "validation-failed");
        assert_eq!(p["pointer"], pointer, "{body}: {p}");
    }
    let p = call(gw, "GET", "/v1/inventory?limit=abc", None, &[])
        .await
        .problem(400, "validation-failed");
    assert!(p["detail"].as_str().unwrap().contains("limit"), "{p}");
    call(gw, "POST", "/v1/inventory", Some("{oops"), &[])
        .await
        .problem(400, "validation-failed");

    // A malformed answer from the upstream, a reset stream.
    call(gw, "GET", "/v1/inventory/garbage", None, &[])
        .await
        .problem(502, "bad-gateway");
    call(gw, "GET", "/v1/inventory/x", None, &[("x-reset", "1")])
        .await
        .problem(502, "bad-gateway");

    // A bound path with another method; an unbound path.
    let r = call(gw, "PUT", "/v1/inventory/x", None, &[]).await;
    r.problem(405, "method-not-allowed");
    assert_eq!(r.header("allow"), "GET, DELETE, PATCH");
    call(gw, "GET", "/v1/nothing", None, &[])
        .await
        .problem(404, "route-not-found");
}

#[tokio::test]
async fn native_grpc_passes_through_with_trailers() {
    let s = setup().await;
    let desc: MessageDescriptor = s.pool.get_message_by_name("shop.v1.GetItemRequest").unwrap();
    let mut msg = DynamicMessage::new(desc);
    msg.set_field_by_name("sku", Value::String("native".into()));
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let resp = client
        .request(
            req("POST", &s.gw.url("/shop.v1.Inventory/GetItem"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(framed(&msg)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    let data = collected.to_bytes();
    let item =
        DynamicMessage::decode(s.pool.get_message_by_name("shop.v1.Item").unwrap(), &data[5..]).unwrap();
    assert_eq!(text(&item, "sku"), "native");
}

/// The frames of a gRPC(-Web) body: (flag, bytes).
fn web_frames(mut data: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        out.push((data[0], data[5..5 + len].to_vec()));
        data = &data[5 + len..];
    }
    assert!(data.is_empty(), "trailing bytes");
    out
}

#[tokio::test]
async fn grpc_web_is_translated_both_ways() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let s = setup().await;
    let mut msg = DynamicMessage::new(s.pool.get_message_by_name("shop.v1.GetItemRequest").unwrap());
    msg.set_field_by_name("sku", Value::String("web".into()));
    let item_desc = s.pool.get_message_by_name("shop.v1.Item").unwrap();

    // Binary, over HTTP/1.1 as browsers send it.
    let r = send(
        &client_h1(),
        req("POST", &s.gw.url("/shop.v1.Inventory/GetItem"))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(Full::new(framed(&msg)))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/grpc-web+proto");
    let frames = web_frames(&r.body);
    assert_eq!(frames.len(), 2, "a message, then the trailers");
    let item = DynamicMessage::decode(item_desc.clone(), &frames[0].1[..]).unwrap();
    assert_eq!(text(&item, "sku"), "web");
    assert_eq!(frames[1].0, 0x80);
    assert_eq!(
        String::from_utf8(frames[1].1.clone()).unwrap(),
        "grpc-status:0\r\n"
    );
    // The upstream got gRPC.
    let seen = s.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(seen["content-type"], "application/grpc+proto");
    assert_eq!(seen["te"], "trailers");

    // Text: base64 both ways.
    let r = send(
        &client_h1(),
        req("POST", &s.gw.url("/shop.v1.Inventory/GetItem"))
            .header("content-type", "application/grpc-web-text")
            .body(Full::new(Bytes::from(b64.encode(framed(&msg)))))
            .unwrap(),
    )
    .await;
    assert_eq!(r.header("content-type"), "application/grpc-web-text+proto");
    let frames = web_frames(&b64.decode(&r.body).unwrap());
    assert_eq!(
        text(
            &DynamicMessage::decode(item_desc, &frames[0].1[..]).unwrap(),
            "sku"
        ),
        "web"
    );
    assert_eq!(frames[1].0, 0x80);

    // A trailers-only answer keeps its status in the headers.
    msg.set_field_by_name("sku", Value::String("missing".into()));
    let r = send(
        &client_h1(),
        req("POST", &s.gw.url("/shop.v1.Inventory/GetItem"))
            .header("content-type", "application/grpc-web+proto")
            .body(Full::new(framed(&msg)))
            .unwrap(),
    )
    .await;
    assert_eq!(r.header("grpc-status"), "5");
    assert!(r.body.is_empty());
}

#[test]
fn bad_transcoding_configs_name_the_field() {
    let (_, path) = descriptor_set();
    let yaml = |upstream_protocol: &str, descriptor: &str, service: &str| {
        format!(
            "version: 1\nupstreams:\n  - name: inv\n    protocol: {upstream_protocol}\n    targets: [{{url: \"http://127.0.0.1:9\"}}]\nroutes:\n  - name: a\n    match: {{paths: [/v1]}}\n    upstream: inv\n    grpc_transcode: {{descriptor_set: \"{descriptor}\", services: [{service}]}}\n"
        )
    };
    let mut cases: HashMap<String, &str> = HashMap::new();
    cases.insert(
        yaml("grpc", "/nonexistent.pb", "shop.v1.Inventory"),
        "routes[0].grpc_transcode.descriptor_set: cannot read /nonexistent.pb",
    );
    cases.insert(
        yaml("grpc", &path.display().to_string(), "shop.v1.Nope"),
        "routes[0].grpc_transcode.services[0]: no service `shop.v1.Nope`",
    );
    cases.insert(
        yaml("http1", &path.display().to_string(), "shop.v1.Inventory"),
        "routes[0].upstream: `inv` speaks http1; grpc_transcode needs `protocol: grpc`",
    );
    for (yaml, want) in &cases {
        fails_with("validate", yaml, &[want]);
    }
}

/// The demo's inventory service embeds a compiled copy of
/// tests/fixtures/protos: it must be the one those files compile to.
/// `PORTCULLIS_BLESS=1 cargo test --test grpc` writes it again.
#[test]
fn the_demo_descriptor_set_is_current() {
    let mut compiler = protox::Compiler::new([PROTOS]).unwrap();
    compiler
        .include_imports(true)
        .open_file("inventory.proto")
        .unwrap();
    let fresh = compiler.encode_file_descriptor_set();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/demo/inventory.pb");
    if std::env::var_os("PORTCULLIS_BLESS").is_some() {
        std::fs::write(path, &fresh).unwrap();
    }
    let committed = std::fs::read(path).unwrap_or_default();
    assert!(
        committed == fresh,
        "src/demo/inventory.pb is stale: run PORTCULLIS_BLESS=1 cargo test --test grpc"
    );
}
