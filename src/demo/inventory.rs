//! The demo's gRPC inventory service (`shop.v1.Inventory` of
//! tests/fixtures/protos/inventory.proto), over h2c on 127.0.0.1:0:
//! messages built and read with prost-reflect from the embedded descriptor
//! set, so there is no generated code. Three items, `sku-1` to `sku-3`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

/// `protoc --include_imports` of inventory.proto (kept current by
/// tests/grpc.rs).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!("inventory.pb");

const ITEMS: [(&str, &str, i64, &str); 3] = [
    ("sku-1", "Espresso beans, 1 kg", 42, "w1"),
    ("sku-2", "Milk frother", 7, "w1"),
    ("sku-3", "Ceramic cup", 0, "w2"),
];

pub async fn start() -> Result<SocketAddr, String> {
    let pool = DescriptorPool::decode(DESCRIPTOR_SET).map_err(|e| format!("the demo descriptor set: {e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start the demo inventory service: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let pool = pool.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let pool = pool.clone();
                    async move { Ok::<_, Infallible>(answer(&pool, req).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// Messages, then `grpc-status` (and `grpc-message`) in trailers.
fn grpc(messages: &[DynamicMessage], status: u32, message: &str) -> Response<Body> {
    let mut data = BytesMut::new();
    for m in messages {
        crate::proxy::transcode::frame(m, &mut data);
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if let Ok(v) = HeaderValue::from_str(&message.replace(' ', "%20")) {
        trailers.insert("grpc-message", v);
    }
    let frames = [Frame::data(data.freeze()), Frame::trailers(trailers)];
    let body = http_body_util::StreamBody::new(frames_stream(frames));
    let mut r = Response::new(body.boxed_unsync());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

/// A stream of a few frames known up front.
fn frames_stream<const N: usize>(
    frames: [Frame<Bytes>; N],
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::iter(frames.into_iter().map(Ok))
}

fn item(
    pool: &DescriptorPool,
    (sku, name, quantity, warehouse): (&str, &str, i64, &str),
) -> Option<DynamicMessage> {
    let mut m = DynamicMessage::new(pool.get_message_by_name("shop.v1.Item")?);
    m.set_field_by_name("sku", Value::String(sku.into()));
    m.set_field_by_name("display_name", Value::String(name.into()));
    m.set_field_by_name("quantity", Value::I64(quantity));
    m.set_field_by_name(
        "availability",
        Value::EnumNumber(if quantity > 0 { 1 } else { 2 }),
    );
    let mut loc = DynamicMessage::new(pool.get_message_by_name("shop.v1.Location")?);
    loc.set_field_by_name("warehouse", Value::String(warehouse.into()));
    m.set_field_by_name("location", Value::Message(loc));
    Some(m)
}

fn text(m: &DynamicMessage, name: &str) -> String {
    m.get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

async fn answer(pool: &DescriptorPool, req: Request<Incoming>) -> Response<Body> {
    let name = req.uri().path().rsplit('/').next().unwrap_or("").to_string();
    let method: Option<MethodDescriptor> = pool
        .get_service_by_name("shop.v1.Inventory")
        .and_then(|s| s.methods().find(|m| m.name() == name));
    let Some(method) = method else {
        return grpc(&[], 12, "no such method");
    };
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let Some(request) = body
        .get(5..)
        .and_then(|b| DynamicMessage::decode(method.input(), b).ok())
    else {
        return grpc(&[], 3, "a malformed request");
    };
    let all = || ITEMS.iter().filter_map(|i| item(pool, *i));
    match name.as_str() {
        "GetItem" | "Reserve" => {
            let sku = text(&request, "sku");
            match ITEMS.iter().find(|i| i.0 == sku).and_then(|i| item(pool, *i)) {
                Some(m) => grpc(&[m], 0, ""),
                None => grpc(&[], 5, &format!("no item {sku}")),
            }
        }
        "ListItems" => {
            let warehouse = text(&request, "warehouse");
            let items: Vec<Value> = ITEMS
                .iter()
                .filter(|i| warehouse.is_empty() || i.3 == warehouse)
                .filter_map(|i| item(pool, *i))
                .map(Value::Message)
                .collect();
            let mut resp = DynamicMessage::new(method.output());
            resp.set_field_by_name("items", Value::List(items));
            grpc(&[resp], 0, "")
        }
        "Watch" => grpc(&all().collect::<Vec<_>>(), 0, ""),
        _ => grpc(&[], 12, "the demo does not implement this method"),
    }
}
