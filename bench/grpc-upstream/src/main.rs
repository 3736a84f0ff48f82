//! A minimal gRPC server for benchmarks: every call on every path gets the
//! same framed `shop.v1.Item` and `grpc-status: 0` in trailers, after its
//! request body is read. Usage: `grpc-upstream [ADDR]` (127.0.0.1:19850).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A gRPC frame holding shop.v1.Item { sku: "abc", display_name: "Item abc",
/// quantity: 12345678901234, availability: IN_STOCK }, encoded by hand.
fn item_frame() -> Bytes {
    let mut msg = vec![0x0a, 3];
    msg.extend_from_slice(b"abc");
    msg.extend_from_slice(&[0x12, 8]);
    msg.extend_from_slice(b"Item abc");
    msg.push(0x18);
    let mut q: u64 = 12_345_678_901_234;
    while q >= 0x80 {
        msg.push((q as u8) | 0x80);
        q >>= 7;
    }
    msg.push(q as u8);
    msg.extend_from_slice(&[0x20, 1]);
    let mut frame = vec![0];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    Bytes::from(frame)
}

async fn answer(req: Request<Incoming>, frame: Bytes) -> Result<Response<Frames>, Infallible> {
    let _ = req.into_body().collect().await;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut r = Response::new(Frames(vec![Ok(Frame::data(frame)), Ok(Frame::trailers(trailers))].into_iter()));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    Ok(r)
}

/// A body of a few frames known up front.
struct Frames(std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.next())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:19850".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    let frame = item_frame();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let frame = frame.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, frame.clone()));
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(1024)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
