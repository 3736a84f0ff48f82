//! Listeners and connections: accept, the connection cap, HTTP/1.1 and h2c
//! (prior knowledge) on one port, keep-alive, the header-read (slowloris) and
//! idle timeouts, and graceful drain on shutdown.
//!
//! hyper's own header-read timer also runs while a keep-alive connection sits
//! idle, which would cut idle connections at `header_read_timeout` instead of
//! `idle_timeout`. So each connection has a small watchdog instead: the
//! stream wrapper notes when bytes arrive, the service notes when requests
//! start and finish, and the watchdog closes the connection when a request
//! head takes longer than `header_read_timeout` or the connection has been
//! idle for `idle_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::framing::FramingScanner;
use super::handler::{ConnInfo, handle};
use super::http1::{self, lock};
use crate::body::{BoxError, ClientBody, ResponseBody};
use crate::snapshot::{Runtime, RuntimeHandle};
use crate::telemetry::Exchange;

/// A bound listener, ready to serve.
pub struct Listener {
    pub name: String,
    /// Its place in `server.listeners`, where the runtime keeps its TLS settings.
    pub index: usize,
    pub listener: TcpListener,
}

/// Binds every listener of the config, or says which one failed and why.
pub async fn bind(specs: &[(String, SocketAddr)]) -> Result<Vec<Listener>, String> {
    let mut out = Vec::new();
    for (index, (name, addr)) in specs.iter().enumerate() {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(|e| format!("listener `{name}`: cannot create a socket: {e}"))?;
        socket
            .set_reuseaddr(true)
            .map_err(|e| format!("listener `{name}`: {e}"))?;
        socket
            .set_nodelay(true)
            .map_err(|e| format!("listener `{name}`: {e}"))?;
        socket
            .bind(*addr)
            .map_err(|e| format!("listener `{name}`: cannot bind {addr}: {e}"))?;
        let listener = socket
            .listen(4096)
            .map_err(|e| format!("listener `{name}`: cannot listen on {addr}: {e}"))?;
        out.push(Listener {
            name: name.clone(),
            index,
            listener,
        });
    }
    Ok(out)
}

/// Serves until `shutdown` resolves, then drains connections for up to
/// `server.shutdown_timeout` of the config then in force (requests in flight
/// finish; idle connections close).
pub async fn serve(listeners: Vec<Listener>, runtime: RuntimeHandle, shutdown: impl Future<Output = ()>) {
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(ServerCtx {
        runtime,
        active: AtomicUsize::new(0),
        all_closed: tokio::sync::Notify::new(),
    });
    let mut accept_loops = Vec::new();
    for l in listeners {
        accept_loops.push(tokio::spawn(accept_loop(
            l,
            ctx.clone(),
            graceful.clone(),
            stop_rx.clone(),
        )));
    }
    shutdown.await;
    let drain_timeout = ctx.runtime.load().settings.shutdown_timeout;
    tracing::info!(
        connections = ctx.active.load(Ordering::Relaxed),
        "shutting down: no new connections, draining"
    );
    let _ = stop_tx.send(true);
    for task in accept_loops {
        let _ = task.await;
    }
    let deadline = Instant::now() + drain_timeout;
    // The accept loops held the other references; they have all returned.
    let drained = match Arc::try_unwrap(graceful) {
        Ok(graceful) => tokio::time::timeout_at(deadline, graceful.shutdown())
            .await
            .is_ok(),
        Err(_) => {
            tracing::warn!("connections could not be told to drain; waiting shutdown_timeout");
            tokio::time::sleep_until(deadline).await;
            false
        }
    };
    // WebSocket tunnels outlive their connections: they were told to close
    // (1001) and are given what is left of the time.
    let drained = drained && tokio::time::timeout_at(deadline, ctx.closed()).await.is_ok();
    if !drained {
        tracing::warn!(
            connections = ctx.active.load(Ordering::Relaxed),
            "shutdown_timeout reached with requests still in flight; closing them"
        );
    }
}

struct ServerCtx {
    runtime: RuntimeHandle,
    /// Open client connections (WebSocket tunnels included), against
    /// `max_connections`.
    active: AtomicUsize,
    /// Told when `active` falls to zero.
    all_closed: tokio::sync::Notify,
}

impl ServerCtx {
    /// Resolves once no client connection or tunnel is open.
    async fn closed(&self) {
        loop {
            // Registered before the check: a close in between still wakes it.
            let notified = self.all_closed.notified();
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A client connection's place against `max_connections`, given back when
/// the last holder drops it: the connection, or the WebSocket tunnel it
/// became.
struct Slot {
    ctx: Arc<ServerCtx>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
        if self.ctx.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.ctx.all_closed.notify_waiters();
        }
    }
}

/// What a WebSocket tunnel keeps of the connection it came from: its
/// place against `max_connections`, and word of shutdown.
#[derive(Clone)]
pub struct ConnHold {
    _slot: Arc<Slot>,
    stop: watch::Receiver<bool>,
}

impl ConnHold {
    /// Resolves when the gateway starts shutting down.
    pub async fn stopping(&mut self) {
        let _ = self.stop.wait_for(|stop| *stop).await;
    }
}

async fn accept_loop(
    l: Listener,
    ctx: Arc<ServerCtx>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let connections = crate::telemetry::metrics().listener_connections(&l.name);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => return,
            r = l.listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(listener = %l.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let max = ctx.runtime.load().settings.limits.max_connections as usize;
        if ctx.active.fetch_add(1, Ordering::Relaxed) >= max {
            ctx.active.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(listener = %l.name, %peer, "max_connections reached; closing new connection");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        connections.inc();
        tokio::spawn(serve_connection(
            stream,
            peer,
            l.index,
            ctx.clone(),
            Drain {
                watcher: graceful.watcher(),
                stop: stop.clone(),
            },
            connections.clone(),
        ));
    }
}

/// How a connection learns of shutdown: hyper's connections through the
/// watcher, the HTTP/1.1 loop through `stop`. Holding the watcher keeps the
/// drain waiting for the connection.
struct Drain {
    watcher: hyper_util::server::graceful::Watcher,
    stop: watch::Receiver<bool>,
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
    ctx: Arc<ServerCtx>,
    drain: Drain,
    gauge: prometheus_client::metrics::gauge::Gauge,
) {
    // Counted in `active` by the accept loop.
    let hold = ConnHold {
        _slot: Arc::new(Slot {
            ctx: ctx.clone(),
            gauge,
        }),
        stop: drain.stop.clone(),
    };

    // The limits and certificates in force when the connection opens apply
    // to all of it.
    let (limits, tls) = {
        let rt = ctx.runtime.load();
        (
            ConnLimits::new(&rt.settings),
            rt.settings.listener_tls.get(listener).cloned().flatten(),
        )
    };
    let header_timeout = limits.header_timeout;
    let Some(tls) = tls else {
        let info = ConnInfo::new(peer, false, None, hold);
        return serve_stream(stream, info, &ctx, drain, limits).await;
    };
    // The handshake counts against the header timeout: a client that
    // stalls it holds the connection no longer than one that stalls its head.
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    let stream = match tokio::time::timeout(header_timeout, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let client = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(crate::tls::ClientIdentity::from_der);
    let info = ConnInfo::new(peer, true, client, hold);
    serve_stream(stream, info, &ctx, drain, limits).await
}

/// The limits in force when a connection opens; they apply to all of it.
struct ConnLimits {
    header_timeout: Duration,
    idle_timeout: Duration,
    builder: auto::Builder<TokioExecutor>,
    http1: http1::Settings,
}

impl ConnLimits {
    fn new(settings: &crate::snapshot::Settings) -> Self {
        let limits = &settings.limits;
        ConnLimits {
            header_timeout: limits.header_read_timeout.0,
            idle_timeout: limits.idle_timeout.0,
            builder: connection_builder(limits),
            http1: http1::Settings {
                max_header_bytes: limits.max_request_header_bytes.0,
                max_head_buffer: head_backstop(limits),
                request_id_header: settings.request_id_header.clone(),
            },
        }
    }
}

/// Requests a little over the header limit still parse, so the handler
/// answers them with a problem+json 431; far beyond it (this backstop) the
/// protocol layer refuses them by itself. Bounded by the 1 MiB maximum of
/// `max_request_header_bytes`.
fn head_backstop(limits: &crate::config::LimitsConfig) -> usize {
    (limits.max_request_header_bytes.0 as usize * 2 + 16 * 1024).max(8192)
}

/// Answers one request, on either protocol path.
async fn respond(
    runtime: &RuntimeHandle,
    info: &ConnInfo,
    tracker: &Arc<Tracker>,
    parts: Box<http::request::Parts>,
    body: ClientBody,
) -> hyper::Response<TrackedBody> {
    let guard = RequestGuard::start(tracker.clone());
    // Each request reads the runtime once: a reload never changes it mid-request.
    let rt = runtime.load_full();
    // Boxed from the start: the record rides with the response through
    // several moves (into the body, through the write path), and a pointer
    // moves where ~200 bytes would be copied into cold memory each time.
    let mut ex = Box::new(Exchange::start(&rt, &parts.method, info.peer.ip()));
    let resp = handle(&rt, info, parts, body, &mut ex).await;
    resp.map(|body| TrackedBody {
        inner: body,
        _guard: guard,
        recorder: Recorder {
            exchange: Some((rt, ex)),
            bytes_out: 0,
        },
    })
}

/// Serves HTTP on an accepted (and, for TLS, handshaken) connection:
/// HTTP/1.1 in the gateway's own loop, which hands the connection to
/// hyper for HTTP/2 and upgrades.
async fn serve_stream<S>(stream: S, info: ConnInfo, ctx: &Arc<ServerCtx>, drain: Drain, limits: ConnLimits)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let tracker = Arc::new(Tracker::new());
    let io = WatchedStream {
        inner: stream,
        tracker: tracker.clone(),
        framing: None,
        prefix: Bytes::new(),
    };
    let info = Arc::new(info);
    let runtime = ctx.runtime.clone();
    let conn_tracker = tracker.clone();
    let Drain { watcher, mut stop } = drain;
    let ConnLimits {
        header_timeout,
        idle_timeout,
        builder,
        http1: settings,
    } = limits;
    // The connection runs in its own task so that its every wake-up polls
    // the connection alone; this task only waits for the watchdog, the
    // shutdown signal or the end.
    let done = Arc::new(tokio::sync::Notify::new());
    let done_tx = done.clone();
    // Its polls share clock readings (see `clock`).
    let conn_task = tokio::spawn(crate::clock::scoped(async move {
        let tracker = conn_tracker;
        let closing = || tracker.closing.load(Ordering::SeqCst);
        let outcome = http1::serve(io, &settings, &closing, |parts, body| {
            respond(&runtime, &info, &tracker, parts, body)
        })
        .await;
        if let http1::Outcome::Handoff(mut io, buffered) = outcome {
            // hyper sees the connection from the bytes not yet consumed;
            // requests are numbered from there for the framing scanner.
            io.prefix = buffered;
            io.framing = Some(FramingScanner::default());
            tracker.requests.store(0, Ordering::Relaxed);
            tracker.conflict_at.store(0, Ordering::Relaxed);
            let svc_tracker = tracker.clone();
            let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let n = svc_tracker.requests.fetch_add(1, Ordering::Relaxed) + 1;
                if svc_tracker.conflict_at.load(Ordering::Relaxed) == n {
                    req.extensions_mut().insert(ConflictingFraming);
                }
                let (runtime, info, tracker) = (runtime.clone(), info.clone(), svc_tracker.clone());
                async move {
                    let head = req.method() == http::Method::HEAD;
                    let (parts, body) = req.into_parts();
                    let mut resp = respond(
                        &runtime,
                        &info,
                        &tracker,
                        Box::new(parts),
                        ClientBody::Hyper(body),
                    )
                    .await;
                    if head {
                        // hyper leaves out a HEAD answer's body over HTTP/1.1
                        // only; over HTTP/2 it would send it (a protocol
                        // error). The headers stay, with the length a GET's
                        // body would have had.
                        let exact = resp.body().size_hint().exact().filter(|&n| n > 0);
                        if let Some(n) =
                            exact.filter(|_| !resp.headers().contains_key(http::header::CONTENT_LENGTH))
                        {
                            resp.headers_mut().insert(http::header::CONTENT_LENGTH, n.into());
                        }
                        resp.body_mut().inner = ResponseBody::Full(None);
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            // With upgrades: a WebSocket's 101 hands the connection to its tunnel.
            let conn = watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        done_tx.notify_one();
    }));
    let finished = done.notified();
    let watch = watchdog(&tracker, header_timeout, idle_timeout);
    tokio::pin!(finished, watch);
    loop {
        tokio::select! {
            _ = &mut finished => return,
            changed = stop.changed(), if !tracker.closing.load(Ordering::SeqCst) => {
                if changed.is_err() || *stop.borrow() {
                    // An idle HTTP/1.1 connection closes now, a busy one after its answer.
                    tracker.closing.store(true, Ordering::SeqCst);
                    if let Some(w) = lock(&tracker.reader).take() {
                        w.wake();
                    }
                }
            }
            reason = &mut watch => {
                tracing::debug!(%peer, reason, "closing connection");
                if reason == HEADER_TIMEOUT && !tracker.http2.load(Ordering::Relaxed) {
                    // Answer 408 (SPEC section 5) through the stream, then let the connection close.
                    let header = ctx.runtime.load().settings.request_id_header.clone();
                    *lock(&tracker.timeout_answer) = Some(request_timeout_answer(&header));
                    tracker.answer_pending.store(true, Ordering::Release);
                    if let Some(w) = lock(&tracker.reader).take() {
                        w.wake();
                    }
                    if tokio::time::timeout(Duration::from_secs(1), &mut finished).await.is_ok() {
                        return;
                    }
                }
                conn_task.abort();
                return;
            }
        }
    }
}

const HEADER_TIMEOUT: &str = "request header read timeout";
const STALLED_READER: &str = "the client took none of its answer for idle_timeout";

/// The raw HTTP/1.1 408 problem+json answer for a head that never finished.
fn request_timeout_answer(request_id_header: &http::HeaderName) -> Vec<u8> {
    let id = super::forwarded::new_request_id();
    let resp = crate::error::problem(
        http::StatusCode::REQUEST_TIMEOUT,
        "request-timeout",
        "the request headers did not arrive in time",
        &id,
    );
    let body = match resp.body() {
        ResponseBody::Full(Some(b)) => b.clone(),
        _ => Bytes::new(),
    };
    let mut out = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/problem+json\r\n{}: {}\r\ncontent-length: {}\r\ndate: {}\r\nconnection: close\r\n\r\n",
        request_id_header,
        id.to_str().unwrap_or(""),
        body.len(),
        // RFC 9110 §6.6.1: a 4xx carries the date.
        httpdate::fmt_http_date(std::time::SystemTime::now())
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Connection activity, shared by the stream wrapper, the service and the watchdog.
struct Tracker {
    epoch: Instant,
    /// Milliseconds since `epoch` (+1, so 0 means "never").
    last_activity: AtomicU64,
    /// When the first byte of a request head arrived while idle; 0 = none.
    head_started: AtomicU64,
    in_flight: AtomicU32,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// The number (1-based) of the first request whose head carried both
    /// Content-Length and Transfer-Encoding; 0 = none.
    conflict_at: AtomicU64,
    /// HTTP/2: frames between streams (PING, SETTINGS) are not request heads,
    /// so only the idle timeout applies between requests.
    http2: AtomicBool,
    /// The gateway is shutting down: no request after the one under way.
    closing: AtomicBool,
    /// Set by the watchdog when a request head took too long: the 408 the
    /// stream writes before it reports end of stream to hyper.
    timeout_answer: std::sync::Mutex<Option<Vec<u8>>>,
    /// `timeout_answer` is set: checked on every read, so an atomic, not the lock.
    answer_pending: AtomicBool,
    /// The reader's waker, kept while waiting between requests, so the
    /// watchdog can make the stream write that answer.
    reader: std::sync::Mutex<Option<std::task::Waker>>,
    /// Since when a write to the client has been waiting for room (the
    /// client reads nothing); 0 = not waiting.
    write_blocked_since: AtomicU64,
}

impl Tracker {
    fn new() -> Self {
        // A new connection owes us a request head within header_read_timeout.
        Tracker {
            epoch: Instant::now(),
            last_activity: AtomicU64::new(1),
            head_started: AtomicU64::new(1),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            conflict_at: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            timeout_answer: std::sync::Mutex::new(None),
            answer_pending: AtomicBool::new(false),
            reader: std::sync::Mutex::new(None),
            write_blocked_since: AtomicU64::new(0),
        }
    }

    /// Notes whether a write to the client went through or must wait.
    fn on_write<T>(&self, result: &Poll<T>) {
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        match result {
            Poll::Pending if blocked == 0 => self.write_blocked_since.store(self.now(), Ordering::Relaxed),
            Poll::Ready(_) if blocked != 0 => self.write_blocked_since.store(0, Ordering::Relaxed),
            _ => {}
        }
    }

    fn now(&self) -> u64 {
        let now = crate::clock::recent();
        now.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    fn on_read(&self) {
        // Only bytes that arrive between requests matter to the watchdog
        // (a request in flight is bounded by request_timeout): skip the clock otherwise.
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let now = self.now();
            self.last_activity.store(now, Ordering::Relaxed);
            if self.head_started.load(Ordering::Relaxed) == 0 && !self.http2.load(Ordering::Relaxed) {
                self.head_started.store(now, Ordering::Relaxed);
            }
        }
    }
}

/// Closes connections whose request head is too slow, that sit idle too
/// long, or whose client takes no bytes of its answer for `idle_timeout`
/// (it would hold the upstream connection and the answer's buffers for
/// as long as it likes: nginx's `send_timeout`).
async fn watchdog(t: &Tracker, header_timeout: Duration, idle_timeout: Duration) -> &'static str {
    let header_ms = header_timeout.as_millis() as u64;
    let idle_ms = idle_timeout.as_millis() as u64;
    loop {
        let now = t.now();
        let wake = if t.in_flight.load(Ordering::Relaxed) > 0 {
            match t.write_blocked_since.load(Ordering::Relaxed) {
                0 => now + idle_ms,
                blocked if now >= blocked + idle_ms => return STALLED_READER,
                blocked => blocked + idle_ms,
            }
        } else {
            let head = t.head_started.load(Ordering::Relaxed);
            if head != 0 {
                if now >= head + header_ms {
                    return HEADER_TIMEOUT;
                }
                head + header_ms
            } else {
                let last = t.last_activity.load(Ordering::Relaxed);
                if now >= last + idle_ms {
                    return "idle timeout";
                }
                last + idle_ms
            }
        };
        tokio::time::sleep(Duration::from_millis(wake - now)).await;
    }
}

/// Marks a request in flight from the moment its head is parsed until its
/// response body is done (or dropped).
struct RequestGuard(Arc<Tracker>);

impl RequestGuard {
    fn start(t: Arc<Tracker>) -> Self {
        t.in_flight.fetch_add(1, Ordering::Relaxed);
        t.head_started.store(0, Ordering::Relaxed);
        RequestGuard(t)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.last_activity.store(self.0.now(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records the exchange when the response body is done or dropped.
struct Recorder {
    exchange: Option<(Arc<Runtime>, Box<Exchange>)>,
    bytes_out: u64,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some((rt, ex)) = self.exchange.take() {
            ex.finish(&rt, self.bytes_out);
        }
    }
}

pin_project_lite::pin_project! {
    struct TrackedBody {
        #[pin]
        inner: ResponseBody,
        recorder: Recorder,
        _guard: RequestGuard,
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame
            && let Some(data) = f.data_ref()
        {
            this.recorder.bytes_out += data.len() as u64;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Marks a request whose head carried both `Content-Length` and
/// `Transfer-Encoding` (see [`super::framing`]); the handler refuses it.
#[derive(Clone, Copy, Debug)]
pub struct ConflictingFraming;

/// A client stream (TCP, or TLS over it) that reports reads of the HTTP
/// bytes to its connection's [`Tracker`].
///
/// Once a connection is handed to hyper, the stream first gives back the
/// bytes the HTTP/1.1 loop had read (`prefix`), and the framing scanner
/// follows what hyper reads.
struct WatchedStream<S> {
    inner: S,
    tracker: Arc<Tracker>,
    framing: Option<FramingScanner>,
    prefix: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WatchedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.tracker.answer_pending.load(Ordering::Acquire) {
            // The watchdog gave up on this request head: answer, then end the stream.
            // Best effort, never waiting: a small answer fits the socket buffer.
            if let Some(answer) = lock(&this.tracker.timeout_answer).take() {
                let mut inner = Pin::new(&mut this.inner);
                let _ = inner.as_mut().poll_write(cx, &answer);
                let _ = inner.poll_flush(cx);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = if this.prefix.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            Poll::Ready(Ok(()))
        };
        match r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                if let Some(framing) = &mut this.framing {
                    let was_http2 = framing.is_http2();
                    if let Some(n) = framing.feed(&buf.filled()[before..]) {
                        let _ = this.tracker.conflict_at.compare_exchange(
                            0,
                            n,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    if framing.is_http2() && !was_http2 {
                        this.tracker.http2.store(true, Ordering::Relaxed);
                        // The preface counts as the start of the first request.
                        this.tracker.head_started.store(0, Ordering::Relaxed);
                    }
                }
                this.tracker.on_read();
            }
            Poll::Pending if this.tracker.in_flight.load(Ordering::Relaxed) == 0 => {
                let mut reader = lock(&this.tracker.reader);
                if !reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *reader = Some(cx.waker().clone());
                }
                drop(reader);
                if this.tracker.closing.load(Ordering::SeqCst) {
                    // Shutdown began while this read was being set up.
                    cx.waker().wake_by_ref();
                }
            }
            _ => {}
        }
        r
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WatchedStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.tracker.on_write(&written);
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.tracker.on_write(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn connection_builder(limits: &crate::config::LimitsConfig) -> auto::Builder<TokioExecutor> {
    let backstop = head_backstop(limits);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        // The watchdog times header reads (see the module docs).
        .header_read_timeout(None)
        .max_buf_size(backstop);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(backstop as u32)
        // CVE-2023-44487 (rapid reset): at most this many streams reset
        // before being accepted; past it the connection gets GOAWAY.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        // RFC 8441: WebSocket over HTTP/2 (an extended CONNECT).
        .enable_connect_protocol();
    builder
}
