//! HTTP/1.1 client connections, served by the gateway's own loop.
//!
//! hyper's server runs a dispatcher state machine per connection and hands
//! each request to the service through a boxed future. Here one loop per
//! connection reads a head (httparse), builds the request with header
//! values sharing the received bytes, runs the handler in the same task,
//! and writes the response head with a small body in one write. The
//! request body reads from the same buffer and socket, through a handle
//! the loop takes back when the exchange is over.
//!
//! What this loop does not serve it hands to hyper, with the bytes read so
//! far: the HTTP/2 preface (h2c prior knowledge, or `h2` over TLS), upgrade
//! requests (WebSocket), `CONNECT`, and `Expect` (100-continue).
//!
//! Framing (RFC 9112 §6, SPEC §8): `Transfer-Encoding` must end in
//! `chunked` and is refused in HTTP/1.0; `Content-Length` must be digits,
//! several must agree; both together are marked for the handler, which
//! refuses the request and closes the connection (request smuggling).

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderName, Method, Request, Response, StatusCode, Uri, Version, request};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::server::ConflictingFraming;
use crate::body::{BoxError, ClientBody};
use crate::error::GatewayError;
use crate::http1::{
    BodyFraming, Chunked, Decoded, FieldError, FieldSpans, FramingError, MAX_HEADERS, READ_CHUNK, fields,
    poll_fill, put_chunk_size, put_field,
};

/// A client stream (TCP, or TLS over it).
pub trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientIo for T {}

/// What the loop needs to know of the limits in force.
pub struct Settings {
    /// `server.limits.max_request_header_bytes`: the handler answers 431
    /// past it...
    pub max_header_bytes: u64,
    /// ...and a head still unfinished past this many bytes is refused here.
    pub max_head_buffer: usize,
    pub request_id_header: HeaderName,
}

/// How a connection's loop ended.
pub enum Outcome<S> {
    Closed,
    /// The rest of the connection is hyper's: the stream, and what was
    /// read from it and not consumed.
    Handoff(S, Bytes),
}

/// The connection's read side (buffer and framing of the request body
/// being read) and its stream, shared by the loop and the body handle.
struct Shared<S: ?Sized> {
    read: BytesMut,
    want: usize,
    /// What is left of the current request's body.
    body: BodyFraming,
    io: S,
}

type Link = Arc<Mutex<Shared<dyn ClientIo>>>;

/// A lock that a panic elsewhere does not poison for good.
pub(super) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request body read from the client's connection as the upstream call
/// asks for it.
pub struct ServerBody {
    link: Option<Link>,
    done: bool,
}

impl ServerBody {
    fn empty() -> Self {
        ServerBody {
            link: None,
            done: true,
        }
    }
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(link) = this.link.as_ref().filter(|_| !this.done) else {
            return Poll::Ready(None);
        };
        let mut guard = lock(link);
        let s = &mut *guard;
        loop {
            match s.body.decode(&mut s.read) {
                Ok(Decoded::Data(data)) => {
                    this.done = s.body == BodyFraming::Done;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            match ready!(poll_fill(&mut s.io, &mut s.read, &mut s.want, cx)) {
                Ok(0) => return Poll::Ready(Some(Err("the client closed the connection mid-body".into()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match &self.link {
            Some(link) if !self.done => match lock(link).body {
                BodyFraming::Length(n) => SizeHint::with_exact(n),
                BodyFraming::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
            _ => SizeHint::with_exact(0),
        }
    }
}

/// Serves HTTP/1.1 requests on `io` until either side closes, `closing`
/// says the gateway is shutting down, or a request needs hyper.
pub async fn serve<S, B, F, Fut>(
    io: S,
    settings: &Settings,
    closing: &(dyn Fn() -> bool + Sync),
    mut respond: F,
) -> Outcome<S>
where
    S: ClientIo + 'static,
    F: FnMut(Box<request::Parts>, ClientBody) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes, Error = BoxError>,
{
    let shared = Arc::new(Mutex::new(Shared {
        read: BytesMut::with_capacity(READ_CHUNK),
        want: READ_CHUNK,
        body: BodyFraming::Done,
        io,
    }));
    let mut out = Vec::with_capacity(OUT_START);
    let mut first = true;
    loop {
        let head = match read_head(&shared, settings, closing, &mut first).await {
            Ok(Next::Request(head)) => head,
            Ok(Next::Handoff) => return handoff(shared),
            Ok(Next::Closed) => return Outcome::Closed,
            Err(e) => {
                refuse(&shared, &mut out, settings, e).await;
                return Outcome::Closed;
            }
        };
        let Head {
            mut parts,
            framing,
            keep_alive,
            conflict,
            te_trailers,
        } = head;
        if conflict {
            parts.extensions.insert(ConflictingFraming);
        }
        let body = if framing == BodyFraming::Done {
            ServerBody::empty()
        } else {
            lock(&shared).body = framing;
            ServerBody {
                link: Some(shared.clone() as Link),
                done: false,
            }
        };
        let answer = Answer {
            to_head: parts.method == Method::HEAD,
            version: parts.version,
            trailers: te_trailers,
        };
        let response = respond(parts, ClientBody::Http1(body)).await;
        let keep_alive = keep_alive && !closing();
        let kept = write_response(&shared, &mut out, response, &answer, keep_alive).await;
        // Another request may follow only once this one's body is read to
        // its end and no handle to it is left (it would read the next one).
        let reusable = kept && Arc::strong_count(&shared) == 1 && {
            let mut s = lock(&shared);
            let done = skip_buffered_body(&mut s);
            s.trim();
            done
        };
        if !reusable {
            close(&shared).await;
            return Outcome::Closed;
        }
        if out.capacity() > 4 * OUT_START {
            out = Vec::with_capacity(OUT_START);
        }
    }
}

/// The response buffer's first size (a head and a small body).
const OUT_START: usize = 1024;

impl<S: ?Sized> Shared<S> {
    /// Between requests: a read buffer grown for a large body goes back to
    /// its first size, so a connection waiting for its next request holds
    /// ~8 KiB, not up to the 256 KiB of the largest reads.
    fn trim(&mut self) {
        self.want = READ_CHUNK;
        if self.read.is_empty() && self.read.capacity() > 2 * READ_CHUNK {
            self.read = BytesMut::with_capacity(READ_CHUNK);
        }
    }
}

/// Whether the request body is read to its end, after dropping what is
/// left of it if all of that is already buffered (a body the answer did not
/// need, such as a small upload to a fixed `respond:` route). No reads.
fn skip_buffered_body<S: ?Sized>(s: &mut Shared<S>) -> bool {
    loop {
        match s.body.decode(&mut s.read) {
            Ok(Decoded::Data(_) | Decoded::Trailers(_)) => {}
            Ok(Decoded::End) => return true,
            Ok(Decoded::More) | Err(_) => return false,
        }
    }
}

/// What the next request needs. (Not boxed: that would be an allocation
/// per request for a value that moves once.)
#[allow(clippy::large_enum_variant)]
enum Next {
    Request(Head),
    Handoff,
    Closed,
}

/// A parsed request head.
struct Head {
    /// Boxed: it moves down several calls to the upstream's, each a copy
    /// into memory the connection has not touched since its last request.
    parts: Box<request::Parts>,
    framing: BodyFraming,
    keep_alive: bool,
    /// Both `Content-Length` and `Transfer-Encoding` came.
    conflict: bool,
    /// The client takes trailers (`TE: trailers`).
    te_trailers: bool,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn read_head<S: ClientIo>(
    shared: &Mutex<Shared<S>>,
    settings: &Settings,
    closing: &(dyn Fn() -> bool + Sync),
    first: &mut bool,
) -> Result<Next, GatewayError> {
    poll_fn(|cx| {
        let mut guard = lock(shared);
        let s = &mut *guard;
        loop {
            if !s.read.is_empty() {
                if *first {
                    if s.read.len() < PREFACE.len() && PREFACE.starts_with(&s.read) {
                        // Maybe the HTTP/2 preface: wait for all of it.
                    } else if s.read.starts_with(PREFACE) {
                        return Poll::Ready(Ok(Next::Handoff));
                    } else {
                        *first = false;
                    }
                }
                if !*first {
                    match parse_head(&mut s.read)? {
                        Parsed::Head(head) => return Poll::Ready(Ok(Next::Request(head))),
                        Parsed::Handoff => return Poll::Ready(Ok(Next::Handoff)),
                        Parsed::Partial if s.read.len() > settings.max_head_buffer => {
                            return Poll::Ready(Err(GatewayError::HeadersTooLarge {
                                limit: settings.max_header_bytes,
                            }));
                        }
                        Parsed::Partial => {}
                    }
                }
            } else if closing() {
                // Shutting down, and no request is under way.
                return Poll::Ready(Ok(Next::Closed));
            }
            match ready!(poll_fill(&mut s.io, &mut s.read, &mut s.want, cx)) {
                Ok(0) | Err(_) => return Poll::Ready(Ok(Next::Closed)),
                Ok(_) => {}
            }
        }
    })
    .await
}

#[allow(clippy::large_enum_variant)]
enum Parsed {
    Head(Head),
    /// Not ours to serve (upgrade, `CONNECT`, `Expect`); nothing consumed.
    Handoff,
    Partial,
}

fn bad(detail: &'static str) -> GatewayError {
    GatewayError::BadRequest { detail, close: true }
}

/// Parses the request head at the start of `read`, consuming it when
/// complete and ours to serve.
fn parse_head(read: &mut BytesMut) -> Result<Parsed, GatewayError> {
    // Offsets of the target and of each field's name and value, so that
    // they can share the received bytes instead of being copied.
    let mut spans = FieldSpans::new();
    let (len, method, target, version) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut []);
        let len = match parsed.parse_with_uninit_headers(read, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err(GatewayError::TooManyHeaders),
            Err(_) => return Err(bad("the request head is malformed")),
        };
        let method = parsed.method.unwrap_or_default();
        if method == "CONNECT" {
            return Ok(Parsed::Handoff);
        }
        let method =
            Method::from_bytes(method.as_bytes()).map_err(|_| bad("the request method is invalid"))?;
        if parsed
            .headers
            .iter()
            .any(|f| f.name.eq_ignore_ascii_case("upgrade") || f.name.eq_ignore_ascii_case("expect"))
        {
            return Ok(Parsed::Handoff);
        }
        spans.record(read.as_ptr(), parsed.headers);
        let path = parsed.path.unwrap_or_default();
        // A request target has no fragment (RFC 9112 §3.2). `Uri` would
        // drop it, so `/admin#.png` would be one path to a rule that saw
        // the raw target and another to the router (HAProxy CVE-2023-45539).
        if path.contains('#') {
            return Err(bad("the request target contains a fragment (`#`)"));
        }
        let start = path.as_ptr() as usize - read.as_ptr() as usize;
        (
            len,
            method,
            (start, start + path.len()),
            parsed.version.unwrap_or(1),
        )
    };
    let head = read.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.1))
        .map_err(|_| bad("the request target is invalid"))?;
    // Room for the fields the gateway adds on the way up (forwarded,
    // request id, trace context), so adding them does not grow the map.
    let (headers, framing) = fields(&head, spans.as_slice(), 8).map_err(|e| {
        bad(match e {
            FieldError::Name => "a header field name is invalid",
            FieldError::Value => "a header field value is invalid",
            FieldError::Framing(FramingError::InvalidLength) => "the request's Content-Length is invalid",
            FieldError::Framing(FramingError::ConflictingLengths) => {
                "the request has conflicting Content-Length values"
            }
        })
    })?;
    let version = crate::http1::version(version);
    let conflict = framing.transfer_encoding.is_some() && framing.length.is_some();
    let body = match (framing.transfer_encoding, framing.length) {
        (Some(_), _) if version == Version::HTTP_10 => {
            return Err(bad("an HTTP/1.0 request must not carry Transfer-Encoding"));
        }
        (Some(false), _) => return Err(bad("the request's Transfer-Encoding does not end in chunked")),
        // Another coding before it (`gzip, chunked`) would be lost on the
        // way up, and `chunked` twice is forbidden (RFC 9112 §6.1); nginx
        // and haproxy take `chunked` alone too.
        (Some(true), _) if framing.codings > 1 => {
            return Err(bad("the request's Transfer-Encoding must be chunked alone"));
        }
        // With a Content-Length too (`conflict`) it is framed as chunked,
        // and the handler refuses it.
        (Some(true), _) => BodyFraming::Chunked(Chunked::Size),
        (None, Some(0)) | (None, None) => BodyFraming::Done,
        (None, Some(n)) => BodyFraming::Length(n),
    };
    let keep_alive = if version == Version::HTTP_11 {
        !framing.close
    } else {
        framing.keep_alive && !framing.close
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Parsed::Head(Head {
        parts: Box::new(parts),
        framing: body,
        keep_alive,
        conflict,
        te_trailers: framing.te_trailers,
    }))
}

/// Gives the stream and the unread bytes back for hyper, if no body
/// handle holds them.
fn handoff<S: ClientIo>(shared: Arc<Mutex<Shared<S>>>) -> Outcome<S> {
    match Arc::try_unwrap(shared) {
        Ok(m) => {
            let s = m.into_inner().unwrap_or_else(|p| p.into_inner());
            Outcome::Handoff(s.io, s.read.freeze())
        }
        Err(_) => Outcome::Closed,
    }
}

/// Answers a head that cannot be served (problem+json) before closing.
async fn refuse<S: ClientIo>(
    shared: &Mutex<Shared<S>>,
    out: &mut Vec<u8>,
    settings: &Settings,
    e: GatewayError,
) {
    let id = super::forwarded::new_request_id();
    let mut resp = e.into_response(&id);
    resp.headers_mut().insert(settings.request_id_header.clone(), id);
    let answer = Answer {
        to_head: false,
        version: Version::HTTP_11,
        trailers: false,
    };
    write_response(shared, out, resp, &answer, false).await;
    close(shared).await;
}

/// Ends a connection: the write side first, then what the client is
/// still sending is read and dropped for a moment, so that closing with
/// unread bytes (a reset) does not destroy the answer on its way.
async fn close<S: ClientIo>(shared: &Mutex<Shared<S>>) {
    let _ = poll_fn(|cx| Pin::new(&mut lock(shared).io).poll_shutdown(cx)).await;
    let drain = poll_fn(|cx| {
        let mut guard = lock(shared);
        let s = &mut *guard;
        let mut total = 0usize;
        loop {
            s.read.clear();
            match ready!(poll_fill(&mut s.io, &mut s.read, &mut s.want, cx)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(n) => total += n,
            }
            if total > 1 << 20 {
                return Poll::Ready(());
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// What the request says about how to answer it.
struct Answer {
    to_head: bool,
    version: Version,
    /// The client takes trailers (`TE: trailers`).
    trailers: bool,
}

/// How the response body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OutFraming {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

/// Data frames up to this size are copied next to the head (one write);
/// larger ones are written from their own buffer.
const COPY_MAX: usize = 16 * 1024;
/// Buffered output is written once it reaches this size.
const FLUSH_AT: usize = 64 * 1024;

/// Writes `response`; whether the connection can carry another request.
async fn write_response<S: ClientIo, B>(
    shared: &Mutex<Shared<S>>,
    out: &mut Vec<u8>,
    response: Response<B>,
    answer: &Answer,
    mut keep_alive: bool,
) -> bool
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    let (parts, body) = response.into_parts();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length = None;
    let mut dated = false;
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH {
            length = crate::http1::parse_length(value.as_bytes());
            continue;
        }
        if name == CONNECTION {
            keep_alive &= !value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| crate::http1::trim(t).eq_ignore_ascii_case(b"close"));
            continue;
        }
        if name == TRANSFER_ENCODING {
            continue;
        }
        dated |= name == DATE;
        put_field(out, name, value);
    }
    let status = parts.status;
    crate::http1::recycle(parts.headers);
    let bodiless =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if answer.to_head || bodiless {
        // HEAD: the length a GET would have had. The upstream's field says
        // it; a body of the gateway's own (a `respond:` route, a problem)
        // says it by its size. An upstream's answer to HEAD has an empty
        // body, which says nothing.
        let own = || body.size_hint().exact().filter(|&n| n > 0 && answer.to_head);
        if let Some(n) = length.or_else(own).filter(|_| status != StatusCode::NO_CONTENT) {
            put_length(out, n);
        }
        OutFraming::None
    } else if let Some(n) = length.or_else(|| body.size_hint().exact()) {
        put_length(out, n);
        if n == 0 {
            OutFraming::None
        } else {
            OutFraming::Length(n)
        }
    } else if body.is_end_stream() {
        put_length(out, 0);
        OutFraming::None
    } else if answer.version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        OutFraming::Chunked
    } else {
        keep_alive = false;
        OutFraming::Close
    };
    if !dated {
        put_date(out);
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if answer.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if framing == OutFraming::None {
        drop(body);
        return write_all(shared, out).await.is_ok() && keep_alive;
    }
    match write_body(shared, out, body, framing, answer.trailers).await {
        Ok(()) => keep_alive && framing != OutFraming::Close,
        Err(()) => false,
    }
}

fn put_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Streams the body after the head in `out`. Frames that are ready at
/// once are gathered into one write; when the body has nothing yet, what
/// is gathered goes out first.
///
/// The body is dropped (which records the exchange: metrics, access log)
/// before its last bytes are written, so a client that has its answer
/// finds it counted. A large last frame is written from its own buffer
/// then, not copied.
async fn write_body<S: ClientIo, B>(
    shared: &Mutex<Shared<S>>,
    out: &mut Vec<u8>,
    body: B,
    framing: OutFraming,
    send_trailers: bool,
) -> Result<(), ()>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    let mut sent = 0u64;
    let mut trailers = None;
    // A last frame too large to copy, written after the body is dropped.
    let mut tail = None;
    {
        let mut body = pin!(body);
        loop {
            let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    flush(shared, out).await?;
                    poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => {
                    // The client can only learn of it by the connection ending early.
                    tracing::debug!(error = %e, "response body failed mid-stream");
                    let _ = flush(shared, out).await;
                    return Err(());
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        break;
                    }
                },
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            if let OutFraming::Length(n) = framing
                && sent > n
            {
                tracing::debug!("response body longer than its Content-Length");
                let _ = flush(shared, out).await;
                return Err(());
            }
            if framing == OutFraming::Chunked {
                put_chunk_size(out, data.len());
            }
            let last = body.is_end_stream();
            if data.len() <= COPY_MAX {
                out.extend_from_slice(&data);
            } else if last {
                tail = Some(data);
                break;
            } else {
                flush(shared, out).await?;
                write_all(shared, &data).await.map_err(|_| ())?;
            }
            if framing == OutFraming::Chunked {
                out.extend_from_slice(b"\r\n");
            }
            if last {
                break;
            }
            if out.len() >= FLUSH_AT {
                flush(shared, out).await?;
            }
        }
    }
    // What follows the tail, if there is one; else it joins `out`.
    let mut after = Vec::new();
    let end = if tail.is_some() { &mut after } else { &mut *out };
    match framing {
        OutFraming::Length(n) if sent != n => {
            tracing::debug!("response body shorter than its Content-Length");
            let _ = flush(shared, out).await;
            return Err(());
        }
        OutFraming::Chunked => {
            if tail.is_some() {
                end.extend_from_slice(b"\r\n");
            }
            end.extend_from_slice(b"0\r\n");
            if send_trailers {
                for (name, value) in trailers.iter().flatten() {
                    if crate::http1::is_allowed_trailer(name) {
                        put_field(end, name, value);
                    }
                }
            }
            end.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    flush(shared, out).await?;
    if let Some(tail) = tail {
        write_all(shared, &tail).await.map_err(|_| ())?;
        flush(shared, &mut after).await?;
    }
    Ok(())
}

async fn flush<S: ClientIo>(shared: &Mutex<Shared<S>>, out: &mut Vec<u8>) -> Result<(), ()> {
    if out.is_empty() {
        return Ok(());
    }
    let r = write_all(shared, out).await;
    out.clear();
    r.map_err(|_| ())
}

async fn write_all<S: ClientIo>(shared: &Mutex<Shared<S>>, buf: &[u8]) -> io::Result<()> {
    let mut written = 0;
    poll_fn(|cx| {
        let mut guard = lock(shared);
        let io = &mut guard.io;
        while written < buf.len() {
            match ready!(Pin::new(&mut *io).poll_write(cx, &buf[written..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(&mut *io).poll_flush(cx)
    })
    .await
}

/// Appends a `date` field (RFC 9110 §6.6.1), formatted once a second. The
/// wall clock is read only when the second may have changed; the recent
/// monotonic reading tells (see `clock`).
fn put_date(out: &mut Vec<u8>) {
    thread_local! {
        /// The field's text, and the instant by which its second has ended.
        static DATE: RefCell<(Option<tokio::time::Instant>, [u8; 29])> = const { RefCell::new((None, [0; 29])) };
    }
    let now = crate::clock::recent();
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0.is_none_or(|until| now >= until) {
            let wall = SystemTime::now();
            let text = httpdate::fmt_http_date(wall);
            if text.len() == 29 {
                // `now` is no later than `wall`: the text is renewed early, never late.
                let into_second = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = Some(now + Duration::from_nanos(u64::from(1_000_000_000 - into_second)));
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&cached.1);
        out.extend_from_slice(b"\r\n");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wall-clock second `put_date` wrote.
    fn date_written() -> SystemTime {
        let mut out = Vec::new();
        put_date(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        let value = text
            .strip_prefix("date: ")
            .and_then(|t| t.strip_suffix("\r\n"))
            .unwrap();
        httpdate::parse_http_date(value).unwrap()
    }

    #[test]
    fn the_cached_date_follows_the_wall_clock_across_seconds() {
        // Within one second and across the next boundaries: never behind
        // the wall clock's second, never ahead of it.
        let end = SystemTime::now() + Duration::from_millis(2500);
        while SystemTime::now() < end {
            let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let written = date_written().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            assert!(
                before <= written && written <= after,
                "{before} <= {written} <= {after}"
            );
            std::thread::sleep(Duration::from_millis(7));
        }
    }

    #[test]
    fn a_connection_between_requests_gives_back_the_room_of_a_large_body() {
        let mut s = Shared {
            read: BytesMut::with_capacity(READ_CHUNK),
            want: 256 * 1024,
            body: BodyFraming::Done,
            io: (),
        };
        s.read.reserve(256 * 1024);
        s.trim();
        assert_eq!(s.want, READ_CHUNK);
        assert!(s.read.capacity() <= 2 * READ_CHUNK, "{}", s.read.capacity());
        // Bytes of a pipelined request are kept, whatever the room.
        s.read.reserve(256 * 1024);
        s.read.extend_from_slice(b"GET / HTTP/1.1\r\n");
        s.trim();
        assert_eq!(&s.read[..], b"GET / HTTP/1.1\r\n");
    }
}
