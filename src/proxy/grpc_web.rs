//! gRPC-Web (browsers) to gRPC, on any route to an `http2` or `grpc`
//! upstream: the request goes up as gRPC over HTTP/2; the answer comes back
//! with its trailers as a last frame in the body (flag `0x80`), since
//! browsers cannot read HTTP trailers.
//!
//! ```text
//! application/grpc-web[+proto]       → application/grpc[+proto]   (body as is)
//! application/grpc-web-text[+proto]  → application/grpc[+proto]   (body base64-decoded)
//! answer: data frames as they come, then the trailers frame; base64 for -text
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Response, request};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, RequestBody, ResponseBody};
use crate::error::GatewayError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Binary,
    Text,
}

/// The gRPC-Web variant a request speaks, from its `Content-Type`.
pub fn variant(headers: &HeaderMap) -> Option<Variant> {
    let ct = headers.get(CONTENT_TYPE)?.as_bytes();
    if ct.starts_with(b"application/grpc-web-text") {
        Some(Variant::Text)
    } else if ct.starts_with(b"application/grpc-web") {
        Some(Variant::Binary)
    } else {
        None
    }
}

/// Turns a gRPC-Web request into a gRPC one. A text body is read whole
/// (within the route's body limit) to be decoded.
pub async fn request(
    variant: Variant,
    parts: &mut request::Parts,
    mut body: RequestBody,
) -> Result<RequestBody, GatewayError> {
    let proto = parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().ends_with(b"+proto"));
    parts.headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if proto {
            "application/grpc+proto"
        } else {
            "application/grpc"
        }),
    );
    parts.headers.insert(TE, HeaderValue::from_static("trailers"));
    parts.headers.remove("x-grpc-web");
    match variant {
        Variant::Binary => Ok(body),
        Variant::Text => {
            let text = body.read_whole().await?;
            let clean: Vec<u8> = text
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            let data = B64.decode(&clean).map_err(|_| GatewayError::BadRequest {
                detail: "a grpc-web-text body that is not base64",
                close: false,
            })?;
            parts.headers.remove(CONTENT_LENGTH);
            Ok(RequestBody::full(Bytes::from(data)))
        }
    }
}

/// The gRPC answer as gRPC-Web.
pub fn response(variant: Variant, resp: Response<ResponseBody>) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    let grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        // Not a gRPC answer (a gateway error, an HTTP error): as it is.
        return Response::from_parts(parts, body);
    }
    let ct = match variant {
        Variant::Binary => "application/grpc-web+proto",
        Variant::Text => "application/grpc-web-text+proto",
    };
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.remove(http::header::TRAILER);
    Response::from_parts(
        parts,
        ResponseBody::wrap(WebBody {
            inner: body,
            variant,
            carry: BytesMut::new(),
            done: false,
        }),
    )
}

/// The answer body, with its trailers moved into a last frame, and base64
/// for the text variant (bytes carried over so the stream is one base64
/// text, padded only at its end).
struct WebBody {
    inner: ResponseBody,
    variant: Variant,
    /// Text: at most 2 bytes waiting for a whole 3-byte group.
    carry: BytesMut,
    done: bool,
}

impl WebBody {
    fn encode(&mut self, data: Bytes, last: bool) -> Bytes {
        match self.variant {
            Variant::Binary => data,
            Variant::Text => {
                self.carry.extend_from_slice(&data);
                let whole = if last {
                    self.carry.len()
                } else {
                    self.carry.len() / 3 * 3
                };
                let chunk = self.carry.split_to(whole);
                Bytes::from(B64.encode(&chunk))
            }
        }
    }
}

/// The trailers frame: flag 0x80, length, `name:value\r\n` lines.
fn trailers_frame(trailers: &HeaderMap) -> Bytes {
    let mut text = Vec::new();
    for (k, v) in trailers {
        text.extend_from_slice(k.as_str().as_bytes());
        text.push(b':');
        text.extend_from_slice(v.as_bytes());
        text.extend_from_slice(b"\r\n");
    }
    let mut out = BytesMut::with_capacity(5 + text.len());
    out.put_u8(0x80);
    out.put_u32(text.len() as u32);
    out.put_slice(&text);
    out.freeze()
}

impl Body for WebBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            return match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.encode(data, false);
                        if out.is_empty() {
                            continue;
                        }
                        Poll::Ready(Some(Ok(Frame::data(out))))
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        this.done = true;
                        let out = this.encode(trailers_frame(&trailers), true);
                        Poll::Ready(Some(Ok(Frame::data(out))))
                    }
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    // No trailers (a trailers-only answer keeps its status in the headers).
                    this.done = true;
                    let out = this.encode(Bytes::new(), true);
                    Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(out))))
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn text_answers_are_one_base64_stream() {
        let mut web = WebBody {
            inner: ResponseBody::full(Bytes::from_static(b"\0\0\0\0\x04abcd")),
            variant: Variant::Text,
            carry: BytesMut::new(),
            done: false,
        };
        let mut out = Vec::new();
        while let Some(f) = web.frame().await {
            out.extend_from_slice(f.unwrap().data_ref().unwrap());
        }
        let text = String::from_utf8(out).unwrap();
        assert!(!text.trim_end_matches('=').contains('='), "{text}");
        assert_eq!(B64.decode(&text).unwrap(), b"\0\0\0\0\x04abcd");
    }

    #[test]
    fn trailers_become_a_frame() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let f = trailers_frame(&t);
        assert_eq!(&f[..], b"\x80\0\0\0\x0fgrpc-status:0\r\n");
    }
}
