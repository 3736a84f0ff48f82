//! Bodies that cross the gateway. Both directions stream frame by frame; no
//! body is buffered whole on the proxy path unless a plugin needs it.
//!
//! - [`RequestBody`]: the client's body on its way upstream, cut off with
//!   [`BodyTooLarge`] past the route's limit (the upstream never sees it whole).
//!   Only a plugin that must check the body first (`hmac_auth`) reads it
//!   whole, within that same limit.
//! - [`ResponseBody`]: what the client receives: a gateway-made body, or the
//!   upstream's body under the request deadline and the per-chunk read timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::error::GatewayError;
use crate::upstream::InFlight;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past the route's `max_request_body_bytes`.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body exceeds the limit")
    }
}
impl std::error::Error for BodyTooLarge {}

/// The upstream stopped sending within the read timeout or the request deadline.
#[derive(Debug)]
pub struct ReadTimeout;

impl std::fmt::Display for ReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream read timed out")
    }
}
impl std::error::Error for ReadTimeout {}

/// The client's body broke mid-stream (bad chunk, reset): its fault, not the upstream's.
#[derive(Debug)]
pub struct ClientBodyError(pub BoxError);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client request body: {}", self.0)
    }
}
impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A client's request body as its connection hands it over.
pub enum ClientBody {
    /// HTTP/2, and HTTP/1.1 connections hyper serves (upgrades).
    Hyper(Incoming),
    /// HTTP/1.1 from the gateway's own connection loop.
    Http1(crate::proxy::http1::ServerBody),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Http1(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Http1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Http1(b) => b.size_hint(),
        }
    }
}

/// The client's request body, streamed upstream with a size limit; or a
/// body already read whole (by a plugin that must see it, or made by the
/// gateway itself).
pub struct RequestBody {
    source: Source,
    /// The route's limit, and what is left of it.
    limit: u64,
    remaining: u64,
    /// Counts the bytes read from the client, for the access log.
    counter: Option<Arc<AtomicU64>>,
}

enum Source {
    Stream(ClientBody),
    Full(Option<Bytes>),
}

impl RequestBody {
    pub fn new(inner: ClientBody, limit: u64, counter: Option<Arc<AtomicU64>>) -> Self {
        RequestBody {
            source: Source::Stream(inner),
            limit,
            remaining: limit,
            counter,
        }
    }

    /// A body the gateway sends itself (JWKS and introspection calls), or
    /// a copy sent again by a retry. Empty means no body at all.
    pub fn full(data: Bytes) -> Self {
        RequestBody {
            source: Source::Full(Some(data).filter(|d| !d.is_empty())),
            limit: u64::MAX,
            remaining: u64::MAX,
            counter: None,
        }
    }

    /// Reads the whole body (within the route's limit) and keeps it, so it
    /// is still sent upstream afterwards. For the plugins that must see the
    /// body before the upstream call; everything else streams.
    pub async fn read_whole(&mut self) -> Result<Bytes, GatewayError> {
        if let Source::Full(data) = &self.source {
            return Ok(data.clone().unwrap_or_default());
        }
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Err(e) if e.is::<BodyTooLarge>() => {
                    return Err(GatewayError::PayloadTooLarge { limit: self.limit });
                }
                Err(_) => {
                    return Err(GatewayError::BadRequest {
                        detail: "the request body is malformed or was cut off",
                        close: true,
                    });
                }
            }
        }
        let data = buf.freeze();
        self.source = Source::Full(Some(data.clone()).filter(|d| !d.is_empty()));
        Ok(data)
    }

    /// The whole body, to send again should the upstream call fail after
    /// it may have been sent: read now (within the route's limit) when its
    /// length is known and at most `bound`. `None` for a larger or unsized
    /// (chunked) body, which streams once and is never sent twice.
    pub async fn replayable(&mut self, bound: u64) -> Result<Option<Bytes>, GatewayError> {
        if let Source::Stream(inner) = &self.source
            && !inner.is_end_stream()
            && inner.size_hint().exact().is_none_or(|n| n > bound)
        {
            return Ok(None);
        }
        self.read_whole().await.map(Some)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let inner = match &mut self.source {
            Source::Stream(inner) => inner,
            Source::Full(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.remaining -= len;
                    if let Some(c) = &self.counter {
                        c.fetch_add(len, Ordering::Relaxed);
                    }
                }
                Some(Ok(frame))
            }
            Some(Err(e)) => Some(Err(Box::new(ClientBodyError(e)))),
            None => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Stream(inner) => inner.is_end_stream(),
            Source::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Stream(inner) => inner.size_hint(),
            Source::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// The body of a response to a client.
pub enum ResponseBody {
    Full(Option<Bytes>),
    /// Boxed: a response moves through several calls on its way to the
    /// client, and this keeps it ~100 bytes smaller at each copy.
    Upstream(Box<UpstreamBody>),
    /// A body a response phase rewrites as it streams (compression, a
    /// cache recording it).
    Wrapped(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>),
}

/// An upstream's response body on its way to the client.
pub struct UpstreamBody {
    inner: crate::upstream::Body,
    deadline: Instant,
    read_timeout: Duration,
    /// Armed only when the upstream makes us wait: most small bodies arrive
    /// with their headers and never need a timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// The target's in-flight slot, let go at the end of the body (or
    /// when the body is dropped).
    in_flight: Option<InFlight>,
}

impl ResponseBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(data.into()))
    }

    pub fn wrap(body: impl Body<Data = Bytes, Error = BoxError> + Send + 'static) -> Self {
        ResponseBody::Wrapped(http_body_util::combinators::UnsyncBoxBody::new(body))
    }

    /// Streams an upstream body; each chunk must arrive within `read_timeout`
    /// and the whole body before `deadline`.
    pub fn upstream(
        inner: crate::upstream::Body,
        deadline: Instant,
        read_timeout: Duration,
        in_flight: InFlight,
    ) -> Self {
        // hyper will not poll an empty body: the exchange is already complete.
        let in_flight = (!inner.is_end_stream()).then_some(in_flight);
        ResponseBody::Upstream(Box::new(UpstreamBody {
            inner,
            deadline,
            read_timeout,
            timer: None,
            in_flight,
        }))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Upstream(up) => match Pin::new(&mut up.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(timer) = up.timer.as_mut() {
                        timer
                            .as_mut()
                            .reset(up.deadline.min(crate::clock::recent() + up.read_timeout));
                    }
                    if up.inner.is_end_stream() {
                        up.in_flight = None;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    up.in_flight = None;
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    up.in_flight = None;
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    let (deadline, read_timeout) = (up.deadline, up.read_timeout);
                    let timer = up.timer.get_or_insert_with(|| {
                        Box::pin(tokio::time::sleep_until(
                            deadline.min(crate::clock::recent() + read_timeout),
                        ))
                    });
                    ready!(timer.as_mut().poll(cx));
                    up.in_flight = None;
                    Poll::Ready(Some(Err(Box::new(ReadTimeout))))
                }
            },
            ResponseBody::Wrapped(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(data) => data.is_none(),
            ResponseBody::Upstream(up) => up.inner.is_end_stream(),
            ResponseBody::Wrapped(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ResponseBody::Upstream(up) => up.inner.size_hint(),
            ResponseBody::Wrapped(body) => body.size_hint(),
        }
    }
}

/// An upstream's answer read whole, at most `limit` bytes, with its
/// trailers: 504 when the upstream stalls, 502 when it breaks or sends more.
pub async fn collect_answer(
    body: ResponseBody,
    limit: usize,
) -> Result<http_body_util::Collected<Bytes>, GatewayError> {
    use http_body_util::BodyExt;
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if caused_by::<ReadTimeout>(&*e) {
                GatewayError::GatewayTimeout
            } else {
                GatewayError::UpstreamProtocol(format!("reading the upstream's answer: {e}"))
            }
        })
}

/// The first `T` in `err`'s source chain (`err` included).
pub fn find_cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// `err` and its causes as one line, `outer: inner: root`, for logs: hyper
/// and io errors say little alone ("connection error") and their `Debug`
/// form is not meant for people. A cause whose text the line already ends
/// with is not repeated.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cur = e.source();
    }
    line
}

/// Whether `err` (or anything in its source chain) is a `T`.
pub fn caused_by<T: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    find_cause::<T>(err).is_some()
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug)]
    struct Outer(std::io::Error, &'static str);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_chain_reads_outer_to_root_without_repeating_a_cause() {
        let reset = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(
            chain(&Outer(reset(), "connection error")),
            "connection error: reset by peer"
        );
        // An outer error that already quotes its cause.
        assert_eq!(
            chain(&Outer(reset(), "sending: reset by peer")),
            "sending: reset by peer"
        );
    }
}
