//! Bodies that cross the gateway. Both directions stream frame by frame; no
//! body is buffered whole on the proxy path.
//!
//! - [`RequestBody`]: the client's body on its way upstream, cut off with
//!   [`BodyTooLarge`] past the route's limit (the upstream never sees it whole).
//! - [`ResponseBody`]: what the client receives: a gateway-made body, or the
//!   upstream's body under the request deadline and the per-chunk read timeout.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

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
pub struct ClientBodyError(pub hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client request body: {}", self.0)
    }
}
impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The client's request body, streamed upstream with a size limit.
pub struct RequestBody {
    inner: Incoming,
    remaining: u64,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64) -> Self {
        RequestBody {
            inner,
            remaining: limit,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.remaining -= len;
                }
                Some(Ok(frame))
            }
            Some(Err(e)) => Some(Err(Box::new(ClientBodyError(e)))),
            None => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The body of a response to a client.
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        Full { data: Option<Bytes> },
        Upstream {
            inner: Incoming,
            #[pin]
            timer: Sleep,
            deadline: Instant,
            read_timeout: Duration,
            // Dropped with the body: releases the target's in-flight slot.
            guard: Option<InFlight>,
        },
    }
}

impl ResponseBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        ResponseBody::Full {
            data: Some(data.into()),
        }
    }

    pub fn empty() -> Self {
        ResponseBody::Full { data: None }
    }

    /// Streams an upstream body; each chunk must arrive within `read_timeout`
    /// and the whole body before `deadline`.
    pub fn upstream(
        inner: Incoming,
        deadline: Instant,
        read_timeout: Duration,
        guard: Option<InFlight>,
    ) -> Self {
        let first = deadline.min(Instant::now() + read_timeout);
        ResponseBody::Upstream {
            inner,
            timer: tokio::time::sleep_until(first),
            deadline,
            read_timeout,
            guard,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ResponseBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBodyProj::Upstream {
                inner,
                mut timer,
                deadline,
                read_timeout,
                guard,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let next = (*deadline).min(Instant::now() + *read_timeout);
                    timer.as_mut().reset(next);
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    guard.take();
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    ready!(timer.poll(cx));
                    guard.take();
                    Poll::Ready(Some(Err(Box::new(ReadTimeout))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full { data } => data.is_none(),
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

/// Whether `err` (or anything in its source chain) is a `T`.
pub fn caused_by<T: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<T>() {
            return true;
        }
        cur = e.source();
    }
    false
}
