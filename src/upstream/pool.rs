//! Keep-alive connections to one target, on `hyper::client::conn`.
//!
//! HTTP/1.1: idle connections wait in a small stack; a request takes one (or
//! dials a new one) and the connection comes back when its response body has
//! been read to the end ([`Lease::release`]). A response abandoned midway
//! closes its connection instead: it cannot carry another request.
//!
//! HTTP/2: one shared, multiplexed connection, dialled again when it closes.
//!
//! A request is sent again on a fresh connection only when hyper hands it
//! back unsent (a pooled connection the upstream had just closed); once any
//! of it may have reached the upstream it is never retried here. A request
//! that never left is handed back to the caller with the error
//! ([`SendError::unsent`]), for a retry on another target.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::body::RequestBody;

/// Why a call to an upstream failed.
#[derive(Debug)]
pub enum CallError {
    /// No connection could be made: the request was never sent.
    Connect(std::io::Error),
    /// Connecting took longer than the connect timeout: never sent.
    ConnectTimeout,
    /// No response head before the deadline (the request may have been processed).
    HeadTimeout,
    /// The exchange failed after the request may have been (partly) sent.
    Exchange(hyper::Error),
}

/// A failed send: why, and the request when it never left the gateway.
pub struct SendError {
    pub error: CallError,
    /// Boxed: the error path is rare, the success path should stay small.
    pub unsent: Option<Box<Request<RequestBody>>>,
}

impl SendError {
    fn unsent(error: CallError, req: Request<RequestBody>) -> SendError {
        SendError {
            error,
            unsent: Some(Box::new(req)),
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
    idle: Mutex<Vec<(H1Conn, Instant)>>,
    shared_h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Held while dialling HTTP/2, so concurrent first requests share one connection.
    h2_dial: tokio::sync::Mutex<()>,
}

/// Marks a request (in its extensions) as a WebSocket upgrade: sent on a
/// connection of its own, driven with upgrades on.
#[derive(Clone, Copy)]
pub struct UpgradeRequest;

/// A connection held by one exchange until its response body is done.
pub enum Lease {
    Http1(H1Conn),
    Http2,
    /// A connection of one upgrade request (WebSocket): never pooled, it
    /// belongs to the tunnel after a 101.
    Upgrade,
}

/// An HTTP/1.1 connection: its sender, and the deadline its reader enforces.
pub struct H1Conn {
    sender: http1::SendRequest<RequestBody>,
    head_deadline: Arc<HeadDeadline>,
}

/// The response-head deadline of the exchange on one HTTP/1.1 connection,
/// set by the request and enforced by the connection's reader
/// ([`UpstreamIo`]). One timer per connection, pushed later request after
/// request (a lock-free update in tokio), instead of a timer per request.
#[derive(Default)]
struct HeadDeadline {
    /// Milliseconds since [`epoch`] (+1); 0 = no exchange waiting for a head.
    at: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl HeadDeadline {
    fn set(&self, at: Instant) {
        let ms = at.saturating_duration_since(epoch()).as_millis() as u64 + 1;
        self.at.store(ms, Ordering::Release);
    }

    fn clear(&self) {
        self.at.store(0, Ordering::Release);
    }
}

impl Pool {
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    pub fn new(authority: Authority, cfg: PoolConfig) -> Pool {
        Pool {
            authority,
            cfg,
            idle: Mutex::new(Vec::new()),
            shared_h2: Mutex::new(None),
            h2_dial: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `req`; its response head must arrive before `head_deadline`.
    /// On success also returns the connection's lease. A failure hands the
    /// request back when none of it can have reached the upstream, so the
    /// caller may send it elsewhere whatever its method.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
        head_deadline: Instant,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        if self.cfg.http2 {
            // Streams share the connection: each keeps its own timer.
            let sender = match tokio::time::timeout_at(head_deadline, self.h2_sender()).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(SendError::unsent(e, req)),
                Err(_) => return Err(SendError::unsent(CallError::ConnectTimeout, req)),
            };
            let mut sender = sender;
            return match tokio::time::timeout_at(head_deadline, sender.try_send_request(req)).await {
                Ok(Ok(resp)) => Ok((resp, Lease::Http2)),
                Ok(Err(mut e)) => Err(match e.take_message() {
                    Some(unsent) => SendError::unsent(CallError::Exchange(e.into_error()), unsent),
                    None => SendError::sent(CallError::Exchange(e.into_error())),
                }),
                Err(_) => Err(SendError::sent(CallError::HeadTimeout)),
            };
        }
        // Marked by the handler; an empty extension map makes this check free.
        if req.extensions().get::<UpgradeRequest>().is_some() {
            return self.send_upgrade(req, head_deadline).await;
        }
        let mut req = req;
        loop {
            let (conn, fresh) = match self.checkout() {
                Some(c) => (c, false),
                None => match self.dial_h1(false).await {
                    Ok(c) => (c, true),
                    Err(e) => return Err(SendError::unsent(e, req)),
                },
            };
            let H1Conn {
                mut sender,
                head_deadline: deadline,
            } = conn;
            if sender.ready().await.is_err() {
                if fresh {
                    let e = std::io::Error::other("connection closed during handshake");
                    return Err(SendError::unsent(CallError::Connect(e), req));
                }
                continue;
            }
            deadline.set(head_deadline);
            let sent = sender.try_send_request(req).await;
            deadline.clear();
            match sent {
                Ok(resp) => {
                    return Ok((
                        resp,
                        Lease::Http1(H1Conn {
                            sender,
                            head_deadline: deadline,
                        }),
                    ));
                }
                Err(mut e) => match e.take_message() {
                    // Never written to the wire: safe to send on another connection.
                    Some(unsent) if !fresh => req = unsent,
                    Some(unsent) => {
                        return Err(SendError::unsent(CallError::Exchange(e.into_error()), unsent));
                    }
                    None => return Err(SendError::sent(CallError::Exchange(e.into_error()))),
                },
            }
        }
    }

    /// An upgrade request on a new connection of its own, driven with
    /// upgrades on so that a 101 hands the connection over.
    async fn send_upgrade(
        &self,
        req: Request<RequestBody>,
        head_deadline: Instant,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let mut conn = match self.dial_h1(true).await {
            Ok(c) => c,
            Err(e) => return Err(SendError::unsent(e, req)),
        };
        if conn.sender.ready().await.is_err() {
            let e = std::io::Error::other("connection closed during handshake");
            return Err(SendError::unsent(CallError::Connect(e), req));
        }
        conn.head_deadline.set(head_deadline);
        let sent = conn.sender.try_send_request(req).await;
        conn.head_deadline.clear();
        match sent {
            Ok(resp) => Ok((resp, Lease::Upgrade)),
            Err(mut e) => Err(match e.take_message() {
                Some(unsent) => SendError::unsent(CallError::Exchange(e.into_error()), unsent),
                None => SendError::sent(CallError::Exchange(e.into_error())),
            }),
        }
    }

    /// Puts a connection back after its response was read to the end.
    pub fn release(&self, lease: Lease) {
        if let Lease::Http1(conn) = lease {
            if conn.sender.is_closed() {
                return;
            }
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < self.cfg.max_idle {
                idle.push((conn, Instant::now()));
            }
        }
    }

    fn checkout(&self) -> Option<H1Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if !conn.sender.is_closed() && since.elapsed() < self.cfg.idle_timeout {
                return Some(conn);
            }
        }
        None
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
            head_deadline: None,
            head_timer: None,
            armed: 0,
            inner: stream,
            write_timeout: self.cfg.write_timeout,
            write_timer: None,
        })
    }

    async fn dial_h1(&self, upgrades: bool) -> Result<H1Conn, CallError> {
        let head_deadline = Arc::new(HeadDeadline::default());
        let mut io = self.connect().await?;
        io.head_deadline = Some(head_deadline.clone());
        let io = TokioIo::new(io);
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(CallError::Exchange)?;
        if upgrades {
            drive(conn.with_upgrades());
        } else {
            drive(conn);
        }
        Ok(H1Conn {
            sender,
            head_deadline,
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
            .handshake(io)
            .await
            .map_err(CallError::Exchange)?;
        drive(conn);
        *self.shared_h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    fn open_h2(&self) -> Option<http2::SendRequest<RequestBody>> {
        let slot = self.shared_h2.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().filter(|s| !s.is_closed()).cloned()
    }
}

/// Runs a client connection in its own task until it closes.
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
struct UpstreamIo {
    inner: Stream,
    /// HTTP/1.1 only: the deadline for the response head of the exchange in
    /// flight, enforced here with one timer for the connection's life.
    head_deadline: Option<Arc<HeadDeadline>>,
    head_timer: Option<Pin<Box<Sleep>>>,
    /// The deadline `head_timer` is set to (same encoding as `HeadDeadline::at`).
    armed: u64,
    write_timeout: Duration,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl UpstreamIo {
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
        if r.is_pending() {
            let at = this
                .head_deadline
                .as_ref()
                .map_or(0, |d| d.at.load(Ordering::Acquire));
            if at != 0 {
                let fired = match this.head_timer.as_mut() {
                    // Armed for this deadline, with this task's waker: only its state matters.
                    Some(t) if this.armed == at => t.is_elapsed(),
                    armed => {
                        let when = epoch() + Duration::from_millis(at - 1);
                        let timer = match armed {
                            Some(t) => {
                                // Later than before: tokio extends it without touching the wheel.
                                t.as_mut().reset(when);
                                t
                            }
                            None => this.head_timer.insert(Box::pin(tokio::time::sleep_until(when))),
                        };
                        this.armed = at;
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
