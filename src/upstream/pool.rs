//! Keep-alive connections to one target.
//!
//! HTTP/1.1 ([`http1`](super::http1)): idle connections wait in a small
//! stack; a request takes one (or dials a new one) and drives it in its own
//! task; the connection comes back when its response body has been read to
//! the end. A response abandoned midway closes its connection instead: it
//! cannot carry another request.
//!
//! HTTP/2 (hyper): one shared, multiplexed connection, dialled again when it
//! closes. WebSocket upgrades (hyper) go on a connection of their own.
//!
//! A request is sent again on another connection only when none of it was
//! written (a pooled connection the upstream had just closed); once any of
//! it may have reached the upstream it is never retried here. A request
//! that never left is handed back to the caller with the error
//! ([`SendError::unsent`]), for a retry on another target.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as hyper_http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::http1::{self, HandedBack};
use super::retry;
use crate::body::{BoxError, RequestBody};
use crate::outline::outlined;

/// Why a call to an upstream failed.
#[derive(Debug)]
pub enum CallError {
    /// No connection could be made: the request was never sent.
    Connect(std::io::Error),
    /// Connecting took longer than the connect timeout: never sent.
    ConnectTimeout,
    /// No response head before the deadline (the request may have been processed).
    HeadTimeout,
    /// The exchange failed after the request may have been (partly) sent:
    /// the upstream's I/O or protocol, or the client's body.
    Exchange(BoxError),
}

/// A failed send: why, and the request when it never left the gateway.
pub struct SendError {
    pub error: CallError,
    /// Boxed: the error path is rare, the success path should stay small.
    pub unsent: Option<Box<Request<RequestBody>>>,
}

impl SendError {
    fn unsent(error: CallError, req: Box<Request<RequestBody>>) -> SendError {
        SendError {
            error,
            unsent: Some(req),
        }
    }

    fn sent(error: CallError) -> SendError {
        SendError { error, unsent: None }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub http2: bool,
    /// TLS towards the target, when the upstream speaks it.
    pub tls: Option<PoolTls>,
    pub connect_timeout: Duration,
    /// A write to the upstream that makes no progress this long fails.
    pub write_timeout: Duration,
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

/// TLS towards a target: the client settings and the name its certificate
/// must carry (and SNI sends).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolTls {
    pub client: crate::tls::UpstreamTls,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

pub struct Pool {
    authority: Authority,
    cfg: PoolConfig,
    /// Shared with the response bodies, which put their connection back.
    idle: Arc<Idle>,
    shared_h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Held while dialling HTTP/2, so concurrent first requests share one connection.
    h2_dial: tokio::sync::Mutex<()>,
}

/// Marks a request (in its extensions) as a WebSocket upgrade: sent on a
/// connection of its own, driven with upgrades on.
#[derive(Clone, Copy)]
pub struct UpgradeRequest;

/// Idle HTTP/1.1 connections of one target, the most recently used on top.
pub(super) struct Idle {
    conns: Mutex<Vec<(Box<http1::Conn>, Instant)>>,
    max: usize,
    timeout: Duration,
}

impl Idle {
    /// Keeps a connection whose exchange is complete, if there is room.
    pub(super) fn put(&self, mut conn: Box<http1::Conn>) {
        conn.trim();
        let now = crate::clock::recent();
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() < self.max {
            conns.push((conn, now));
        }
    }

    /// The read buffer capacity of each idle connection.
    #[cfg(test)]
    pub(super) fn read_capacities(&self) -> Vec<usize> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.iter().map(|(c, _)| c.read_capacity()).collect()
    }

    /// A connection that can carry a request now, if one waits.
    fn take(&self) -> Option<Box<http1::Conn>> {
        loop {
            let (mut conn, since) = self.conns.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if crate::clock::recent().saturating_duration_since(since) < self.timeout && conn.is_usable() {
                return Some(conn);
            }
        }
    }
}

/// A response body from a target.
pub enum Body {
    Http1(http1::Body),
    /// HTTP/2, or the answer to an upgrade.
    Hyper(Incoming),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Http1(b) => Pin::new(b).poll_frame(cx),
            Body::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Http1(b) => b.is_end_stream(),
            Body::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Http1(b) => b.size_hint(),
            Body::Hyper(b) => b.size_hint(),
        }
    }
}

impl Pool {
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    #[cfg(test)]
    pub(super) fn idle(&self) -> &Idle {
        &self.idle
    }

    pub fn new(authority: Authority, cfg: PoolConfig) -> Pool {
        Pool {
            authority,
            idle: Arc::new(Idle {
                conns: Mutex::new(Vec::new()),
                max: cfg.max_idle,
                timeout: cfg.idle_timeout,
            }),
            cfg,
            shared_h2: Mutex::new(None),
            h2_dial: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `req`; its response head must arrive before `head_deadline`.
    /// A failure hands the request back when none of it can have reached
    /// the upstream, so the caller may send it elsewhere whatever its method.
    pub async fn send(
        &self,
        mut req: Box<Request<RequestBody>>,
        head_deadline: Instant,
    ) -> Result<Response<Body>, SendError> {
        // The HTTP/2 exchange, upgrades and dials are polled out of line
        // (`outline.rs`): a connection's task reserves room for the largest
        // future a request may await, and its code carries every branch
        // inlined, whether or not a request gets there.
        if self.cfg.http2 {
            return outlined(self.send_h2(req, head_deadline)).await;
        }
        // Marked by the handler; an empty extension map makes this check free.
        if req.extensions().get::<UpgradeRequest>().is_some() {
            return outlined(self.send_upgrade(req, head_deadline)).await;
        }
        // Set once a pooled connection closed under a written request:
        // that request goes on a new connection, so it is sent at most twice.
        let mut redial = false;
        loop {
            let pooled = if redial { None } else { self.idle.take() };
            let (conn, fresh) = match pooled {
                Some(c) => (c, false),
                None => match outlined(self.connect()).await {
                    Ok(io) => (http1::Conn::new(io), true),
                    Err(e) => return Err(SendError::unsent(e, req)),
                },
            };
            let http1::Failed { error, request } = match conn.send(req, head_deadline, &self.idle).await {
                Ok(resp) => return Ok(resp.map(Body::Http1)),
                Err(failed) => failed,
            };
            match request {
                // Not one byte written on a pooled connection that had just
                // closed: safe to send on another.
                HandedBack::Unsent(unsent) if !fresh => req = unsent,
                // A kept-alive connection the upstream closed as the request
                // crossed it: the upstream dropped it unread, or at worst
                // read it. An idempotent request may go again (RFC 9112
                // §9.3.1; nginx and Go's client do the same); others get
                // the error, as a fresh connection's failure does.
                HandedBack::Unanswered(again) if !fresh && retry::is_idempotent(again.method()) => {
                    tracing::debug!(target = %self.authority, "a kept-alive connection closed under the request; sending it on a new one");
                    req = again;
                    redial = true;
                }
                HandedBack::Unsent(unsent) => return Err(SendError::unsent(error, unsent)),
                HandedBack::Unanswered(_) | HandedBack::Nothing => return Err(SendError::sent(error)),
            }
        }
    }

    /// One exchange on the shared HTTP/2 connection (dialled if there is
    /// none). Streams share the connection: each keeps its own timer.
    async fn send_h2(
        &self,
        req: Box<Request<RequestBody>>,
        head_deadline: Instant,
    ) -> Result<Response<Body>, SendError> {
        let mut sender = match self.open_h2() {
            Some(s) => s,
            None => match tokio::time::timeout_at(head_deadline, self.h2_sender()).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(SendError::unsent(e, req)),
                Err(_) => return Err(SendError::unsent(CallError::ConnectTimeout, req)),
            },
        };
        exchanged(tokio::time::timeout_at(head_deadline, sender.try_send_request(*req)).await)
    }

    /// An upgrade request on a new connection of its own, driven with
    /// upgrades on so that a 101 hands the connection over.
    async fn send_upgrade(
        &self,
        req: Box<Request<RequestBody>>,
        head_deadline: Instant,
    ) -> Result<Response<Body>, SendError> {
        let io = match self.connect().await {
            Ok(io) => TokioIo::new(io),
            Err(e) => return Err(SendError::unsent(e, req)),
        };
        let (mut sender, conn) = match hyper_http1::Builder::new().handshake(io).await {
            Ok(handshake) => handshake,
            Err(e) => return Err(SendError::unsent(CallError::Exchange(e.into()), req)),
        };
        drive(conn.with_upgrades());
        if sender.ready().await.is_err() {
            let e = std::io::Error::other("connection closed during handshake");
            return Err(SendError::unsent(CallError::Connect(e), req));
        }
        exchanged(tokio::time::timeout_at(head_deadline, sender.try_send_request(*req)).await)
    }

    async fn connect(&self) -> Result<UpstreamIo, CallError> {
        // TCP, then the TLS handshake if any, within the connect timeout.
        let dial = async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(self.authority.as_str()).await?.collect();
            let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the target");
            let mut stream = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let stream = stream.ok_or(last)?;
            let _ = stream.set_nodelay(true);
            match &self.cfg.tls {
                None => Ok(Stream::Plain(stream)),
                Some(tls) => tokio_rustls::TlsConnector::from(tls.client.config.clone())
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map(|s| Stream::Tls(Box::new(s)))
                    .map_err(|e| std::io::Error::new(e.kind(), format!("TLS: {e}"))),
            }
        };
        let stream = match tokio::time::timeout(self.cfg.connect_timeout, dial).await {
            Err(_) => return Err(CallError::ConnectTimeout),
            Ok(Err(e)) => return Err(CallError::Connect(e)),
            Ok(Ok(s)) => s,
        };
        Ok(UpstreamIo {
            head_at: None,
            head_timer: None,
            armed: None,
            inner: stream,
            write_timeout: self.cfg.write_timeout,
            write_timer: None,
        })
    }

    async fn h2_sender(&self) -> Result<http2::SendRequest<RequestBody>, CallError> {
        if let Some(s) = self.open_h2() {
            return Ok(s);
        }
        let _dialling = self.h2_dial.lock().await;
        // Someone else may have dialled while we waited.
        if let Some(s) = self.open_h2() {
            return Ok(s);
        }
        let io = TokioIo::new(self.connect().await?);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // The bound HTTP/1.1 answers have; hyper's own is 16 KiB.
            .max_header_list_size(http1::MAX_HEAD_BYTES as u32)
            .handshake(io)
            .await
            .map_err(|e| CallError::Exchange(e.into()))?;
        drive(conn);
        *self.shared_h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    fn open_h2(&self) -> Option<http2::SendRequest<RequestBody>> {
        let slot = self.shared_h2.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().filter(|s| !s.is_closed()).cloned()
    }
}

/// Runs a hyper client connection in its own task until it closes.
fn drive(conn: impl Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
}

/// A connection to a target: TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The stream to an upstream, with the write timeout: a write the
/// upstream does not accept within `write_timeout` (its socket buffer stays
/// full) fails with `TimedOut`. The timer exists only while a write waits,
/// so the usual path costs nothing.
pub(super) struct UpstreamIo {
    inner: Stream,
    /// HTTP/1.1: the deadline for the response head of the exchange in
    /// flight, enforced with one timer for the connection's life.
    head_at: Option<Instant>,
    head_timer: Option<Pin<Box<Sleep>>>,
    /// The deadline `head_timer` is set to.
    armed: Option<Instant>,
    write_timeout: Duration,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl UpstreamIo {
    /// Reads fail with `TimedOut` once `at` passes, until this is called again.
    pub(super) fn set_head_deadline(&mut self, at: Option<Instant>) {
        self.head_at = at;
    }

    /// Whether the upstream has neither closed the connection nor sent
    /// anything since the last read: a read with a no-op waker, which tokio
    /// answers without a system call unless the socket turned readable.
    pub(super) fn is_quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(&mut self.inner)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }

    fn on_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Pending => {
                let timeout = self.write_timeout;
                let timer = self
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "upstream write timed out",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.write_timer = None;
                ready
            }
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if r.is_pending()
            && let Some(at) = this.head_at
        {
            // Each exchange has a later deadline than the one before, as a
            // rule. The timer is not moved for each (a reset costs more than
            // the rest of this read): it stays armed at an earlier deadline,
            // and when that passes it is moved on to the exchange's own.
            let fired = match (this.head_timer.as_mut(), this.armed) {
                (Some(t), Some(armed)) if armed <= at => {
                    t.as_mut().poll(cx).is_ready()
                        && (armed == at || {
                            t.as_mut().reset(at);
                            this.armed = Some(at);
                            t.as_mut().poll(cx).is_ready()
                        })
                }
                (timer, _) => {
                    let timer = match timer {
                        Some(t) => {
                            t.as_mut().reset(at);
                            t
                        }
                        None => this.head_timer.insert(Box::pin(tokio::time::sleep_until(at))),
                    };
                    this.armed = Some(at);
                    timer.as_mut().poll(cx).is_ready()
                }
            };
            if fired {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no response head from the upstream in time",
                )));
            }
        }
        r
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A hyper client exchange's outcome within the head deadline; the request
/// is handed back when hyper did not send it.
fn exchanged(
    outcome: Result<
        Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<RequestBody>>>,
        tokio::time::error::Elapsed,
    >,
) -> Result<Response<Body>, SendError> {
    match outcome {
        Ok(Ok(resp)) => Ok(resp.map(Body::Hyper)),
        Ok(Err(mut e)) => Err(match e.take_message() {
            Some(unsent) => SendError::unsent(CallError::Exchange(e.into_error().into()), Box::new(unsent)),
            None => SendError::sent(CallError::Exchange(e.into_error().into())),
        }),
        Err(_) => Err(SendError::sent(CallError::HeadTimeout)),
    }
}
