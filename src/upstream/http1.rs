//! HTTP/1.1 to an upstream, driven inside the request's own task.
//!
//! hyper's client runs each connection as a task of its own and hands
//! requests, responses and body chunks across channels: two tasks woken per
//! request. Here the task that serves the client writes the request head
//! straight to the upstream socket, reads the response head from it, and then
//! reads the body as the client's connection asks for it. The connection goes
//! back to the idle stack when the body has been read to its end; a body
//! dropped midway closes it.
//!
//! Framing follows RFC 9112 §6: responses to `HEAD`, `1xx`, `204` and `304`
//! have no body; `Transfer-Encoding: chunked` is decoded, and any other
//! transfer coding refused (the gateway cannot decode it);
//! `Content-Length` counts; neither means the body ends when the connection
//! does. A response with both, or with conflicting lengths, is refused
//! (response splitting). Interim `1xx` answers are skipped.
//!
//! WebSocket upgrades and HTTP/2 still go through hyper ([`super::pool`]).

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::pool::{CallError, Idle, UpstreamIo};
use crate::body::{BoxError, RequestBody};
use crate::http1::{
    BodyFraming, Chunked, Decoded, FieldError, FieldSpans, Framing, FramingError, MAX_HEADERS, READ_CHUNK,
    fields, is_allowed_trailer, poll_fill, put_chunk_size, put_field,
};

/// A response head larger than this is refused (over HTTP/2 too).
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One HTTP/1.1 connection to a target, idle or in an exchange. Boxed for
/// its life, so that handing it between the pool and a body moves a pointer.
pub(super) struct Conn {
    io: UpstreamIo,
    /// Bytes received and not yet consumed.
    read: BytesMut,
    /// Room to ask for before the next read: doubled while reads fill it.
    want: usize,
    /// The request head and body framing waiting to be written; kept to
    /// reuse its allocation.
    write: Vec<u8>,
}

/// A failed exchange: why, and the request when it may go on another
/// connection.
pub(super) struct Failed {
    pub error: CallError,
    pub request: HandedBack,
}

/// What a failed exchange gives back of its request.
pub(super) enum HandedBack {
    /// Not one byte of it was written: it may go anywhere, whatever its method.
    Unsent(Box<Request<RequestBody>>),
    /// A request without a body, written whole, on a connection the
    /// upstream then closed or reset before one byte of answer: what an
    /// upstream's idle timeout does to a request that crosses its close.
    /// The pool judges whether it may go again (RFC 9112 §9.3.1).
    Unanswered(Box<Request<RequestBody>>),
    /// Nothing: it may have been acted on, or its body is spent.
    Nothing,
}

impl Conn {
    pub(super) fn new(io: UpstreamIo) -> Box<Conn> {
        Box::new(Conn {
            io,
            read: BytesMut::with_capacity(READ_CHUNK),
            want: READ_CHUNK,
            write: Vec::with_capacity(1024),
        })
    }

    /// Before the connection waits idle: buffers grown for a large body or
    /// head go back to their first size, so an idle connection holds ~9 KiB,
    /// not up to 256 KiB.
    pub(super) fn trim(&mut self) {
        self.want = READ_CHUNK;
        if self.read.capacity() > 2 * READ_CHUNK {
            self.read = BytesMut::with_capacity(READ_CHUNK);
        }
        if self.write.capacity() > 16 * 1024 {
            self.write = Vec::with_capacity(1024);
        }
    }

    #[cfg(test)]
    pub(super) fn read_capacity(&self) -> usize {
        self.read.capacity()
    }

    /// Puts a connection whose exchange is complete back on `idle`, unless
    /// the upstream sent more than the answer (those bytes would be read
    /// as the next request's answer).
    fn park(self: Box<Self>, idle: &Idle) {
        if self.read.is_empty() {
            idle.put(self);
        }
    }

    /// Whether an idle connection may carry a request: the upstream has not
    /// closed it or sent anything unasked. Costs no system call unless the
    /// socket was reported readable.
    pub(super) fn is_usable(&mut self) -> bool {
        self.read.is_empty() && self.io.is_quiet()
    }

    /// Sends `req` and reads the response head, which must come before
    /// `head_deadline`. The body reads from this connection and puts it
    /// back on `idle` once read to its end (when it can carry another
    /// request).
    pub(super) async fn send(
        mut self: Box<Self>,
        mut req: Box<Request<RequestBody>>,
        head_deadline: Instant,
        idle: &Arc<Idle>,
    ) -> Result<Response<Body>, Failed> {
        let framing = encode_head(&mut self.write, &req);
        let head_only = framing == RequestFraming::None;
        self.io.set_head_deadline(Some(head_deadline));
        let mut out = Outgoing {
            framing,
            offset: 0,
            data: Bytes::new(),
            crlf_due: false,
            sent: 0,
            done: head_only,
            flushed: false,
            started: false,
        };
        let to_head = req.method() == Method::HEAD;
        let body = req.body_mut();
        // A failed write, kept while the answer may still be readable.
        let mut broken: Option<io::Error> = None;
        let read_head = poll_fn(|cx| {
            // Write while the upstream takes it, and read meanwhile: an
            // upstream may answer (and stop reading) before the body's end.
            if !out.flushed && broken.is_none() {
                match out.poll_write(cx, &mut self.io, &mut self.write, body) {
                    Poll::Ready(Err(Stop::Fatal(e))) => return Poll::Ready(Err(e)),
                    // Not started, or the upstream stopped reading (the
                    // write timeout): nothing more to wait for.
                    Poll::Ready(Err(Stop::Io(e))) if !out.started || e.kind() == io::ErrorKind::TimedOut => {
                        return Poll::Ready(Err(CallError::Exchange(e.into())));
                    }
                    Poll::Ready(Err(Stop::Io(e))) => broken = Some(e),
                    _ => {}
                }
            }
            poll_head(cx, &mut self.io, &mut self.read, &mut self.want, to_head).map_err(|e| {
                match broken.take() {
                    // The write failed first: that is the cause.
                    Some(w) => CallError::Exchange(w.into()),
                    None => e,
                }
            })
        })
        .await;
        self.io.set_head_deadline(None);
        let head = match read_head {
            Ok(head) => head,
            Err(error) => {
                let request = if !out.started {
                    HandedBack::Unsent(req)
                } else if head_only && self.read.is_empty() && closed_under(&error) {
                    HandedBack::Unanswered(req)
                } else {
                    HandedBack::Nothing
                };
                return Err(Failed { error, request });
            }
        };
        crate::http1::recycle(std::mem::take(req.headers_mut()));
        let Head {
            response,
            framing,
            keep_alive,
        } = head;
        // An answer before the whole request was written: the rest of the
        // body is not sent, and the connection cannot carry another request.
        let reusable = keep_alive && out.flushed;
        let mut answer = Body {
            conn: None,
            idle: None,
            first: None,
            framing,
        };
        if let BodyFraming::Length(n) = answer.framing
            && self.read.len() as u64 >= n
        {
            // The whole body came with the head: the connection is free now.
            answer.first = Some(self.read.split_to(n as usize).freeze());
            answer.framing = BodyFraming::Done;
        }
        if answer.framing == BodyFraming::Done {
            if reusable {
                self.park(idle);
            }
        } else {
            answer.conn = Some(self);
            answer.idle = reusable.then(|| idle.clone());
        }
        Ok(response.map(|()| answer))
    }
}

/// Why writing a request stopped.
enum Stop {
    /// The socket refused it; the upstream may still have answered.
    Io(io::Error),
    /// The client's body failed or broke its declared length.
    Fatal(CallError),
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RequestFraming {
    None,
    Length(u64),
    Chunked,
}

/// Writes the request line and header fields into `buf`, the framing
/// header last, and says how the body follows.
fn encode_head(buf: &mut Vec<u8>, req: &Request<RequestBody>) -> RequestFraming {
    buf.clear();
    buf.extend_from_slice(req.method().as_str().as_bytes());
    buf.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let mut declared = false;
    for (name, value) in req.headers() {
        // The framing is this hop's own, written below from the body itself.
        if name == CONTENT_LENGTH {
            declared = true;
            continue;
        }
        if name == TRANSFER_ENCODING {
            continue;
        }
        put_field(buf, name, value);
    }
    let body = req.body();
    let framing = if body.is_end_stream() {
        // RFC 9110 §8.6: a length for methods that define content, even empty.
        let defines_content = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
        if declared || defines_content {
            buf.extend_from_slice(b"content-length: 0\r\n");
        }
        RequestFraming::None
    } else if let Some(n) = body.size_hint().exact() {
        buf.extend_from_slice(b"content-length: ");
        buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        buf.extend_from_slice(b"\r\n");
        RequestFraming::Length(n)
    } else {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
        RequestFraming::Chunked
    };
    buf.extend_from_slice(b"\r\n");
    framing
}

/// The request on its way out: the bytes in the connection's write buffer
/// (head, chunk framing) go first, then `data`, then the next body frame.
struct Outgoing {
    framing: RequestFraming,
    /// How much of the write buffer is written.
    offset: usize,
    data: Bytes,
    /// A chunk's data was queued: its closing CRLF goes before what follows.
    crlf_due: bool,
    /// Body bytes taken so far (checked against a declared length).
    sent: u64,
    /// The body has ended and its last framing is queued.
    done: bool,
    /// Everything is written and flushed.
    flushed: bool,
    /// Some of the request reached the socket or the body was read from:
    /// it cannot be handed back for another connection.
    started: bool,
}

impl Outgoing {
    /// Writes until the upstream pushes back, the client's body has nothing
    /// yet, or the request is complete.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut UpstreamIo,
        buf: &mut Vec<u8>,
        body: &mut RequestBody,
    ) -> Poll<Result<(), Stop>> {
        loop {
            while self.offset < buf.len() || !self.data.is_empty() {
                let pending = &buf[self.offset..];
                let written = if self.data.is_empty() {
                    Pin::new(&mut *io).poll_write(cx, pending)
                } else if pending.is_empty() {
                    Pin::new(&mut *io).poll_write(cx, &self.data)
                } else {
                    let slices = [IoSlice::new(pending), IoSlice::new(&self.data)];
                    Pin::new(&mut *io).poll_write_vectored(cx, &slices)
                };
                let n = match ready!(written) {
                    Ok(0) => return Poll::Ready(Err(Stop::Io(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => n,
                    Err(e) => return Poll::Ready(Err(Stop::Io(e))),
                };
                self.started = true;
                let from_buf = n.min(pending.len());
                self.offset += from_buf;
                self.data.advance(n - from_buf);
            }
            buf.clear();
            self.offset = 0;
            if self.done {
                if let Err(e) = ready!(Pin::new(&mut *io).poll_flush(cx)) {
                    return Poll::Ready(Err(Stop::Io(e)));
                }
                self.flushed = true;
                return Poll::Ready(Ok(()));
            }
            let frame = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => {
                    // Nothing more from the client yet: what was written must leave now.
                    if let Poll::Ready(Err(e)) = Pin::new(&mut *io).poll_flush(cx) {
                        return Poll::Ready(Err(Stop::Io(e)));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(frame) => frame,
            };
            self.started = true;
            match frame {
                None => self.finish(buf, None)?,
                Some(Err(e)) => return Poll::Ready(Err(Stop::Fatal(CallError::Exchange(e)))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.queue(buf, data)?,
                    Err(frame) => self.finish(buf, frame.into_trailers().ok())?,
                },
            }
        }
    }

    fn queue(&mut self, buf: &mut Vec<u8>, data: Bytes) -> Result<(), Stop> {
        if data.is_empty() {
            return Ok(());
        }
        self.sent += data.len() as u64;
        match self.framing {
            RequestFraming::Length(n) if self.sent > n => return Err(Stop::Fatal(body_length_error())),
            RequestFraming::Chunked => {
                if std::mem::replace(&mut self.crlf_due, true) {
                    buf.extend_from_slice(b"\r\n");
                }
                put_chunk_size(buf, data.len());
            }
            _ => {}
        }
        self.data = data;
        Ok(())
    }

    /// The body ended (with `trailers`, if any): the last framing is queued.
    fn finish(&mut self, buf: &mut Vec<u8>, trailers: Option<HeaderMap>) -> Result<(), Stop> {
        self.done = true;
        match self.framing {
            RequestFraming::Length(n) if self.sent != n => Err(Stop::Fatal(body_length_error())),
            RequestFraming::Chunked => {
                if self.crlf_due {
                    buf.extend_from_slice(b"\r\n");
                }
                buf.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.iter().flatten() {
                    if !is_allowed_trailer(name) {
                        continue;
                    }
                    put_field(buf, name, value);
                }
                buf.extend_from_slice(b"\r\n");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn body_length_error() -> CallError {
    CallError::Exchange("the request body does not match its length".into())
}

/// A parsed response head, and how its body is framed.
struct Head {
    response: Response<()>,
    framing: BodyFraming,
    keep_alive: bool,
}

/// Reads until a final response head is complete (interim `1xx` answers
/// are skipped).
fn poll_head(
    cx: &mut Context<'_>,
    io: &mut UpstreamIo,
    read: &mut BytesMut,
    want: &mut usize,
    to_head: bool,
) -> Poll<Result<Head, CallError>> {
    loop {
        if !read.is_empty() {
            match parse_head(read, to_head) {
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) if read.len() > MAX_HEAD_BYTES => {
                    return Poll::Ready(Err(protocol("the response head is too large")));
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        match ready!(poll_fill(io, read, want, cx)) {
            Ok(0) if read.is_empty() => {
                return Poll::Ready(Err(CallError::Exchange(Box::new(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed before a response",
                )))));
            }
            Ok(0) => return Poll::Ready(Err(protocol("the connection closed inside the response head"))),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Poll::Ready(Err(CallError::HeadTimeout)),
            Err(e) => return Poll::Ready(Err(CallError::Exchange(e.into()))),
        }
    }
}

/// Whether the upstream closed or reset the connection (rather than
/// answering badly or slowly).
fn closed_under(error: &CallError) -> bool {
    let CallError::Exchange(e) = error else {
        return false;
    };
    e.downcast_ref::<io::Error>().is_some_and(|e| {
        matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        )
    })
}

/// How a response body is delimited (RFC 9112 §6.3).
fn response_framing(f: &Framing, status: StatusCode, to_head: bool) -> Result<BodyFraming, CallError> {
    if to_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(BodyFraming::Done);
    }
    Ok(match (f.transfer_encoding, f.length) {
        (Some(_), Some(_)) => {
            return Err(protocol(
                "the response has both Content-Length and Transfer-Encoding",
            ));
        }
        (Some(true), None) if f.codings == 1 => BodyFraming::Chunked(Chunked::Size),
        // Another coding (`gzip, chunked`, `gzip`): the gateway cannot
        // decode it, and relaying the bytes without the coding that names
        // them would hand the client a body it cannot read (nginx: 502).
        (Some(_), None) => return Err(protocol("the response has a transfer coding other than chunked")),
        (None, Some(0)) => BodyFraming::Done,
        (None, Some(n)) => BodyFraming::Length(n),
        (None, None) => BodyFraming::Close,
    })
}

fn protocol(message: &'static str) -> CallError {
    CallError::Exchange(Box::new(io::Error::new(io::ErrorKind::InvalidData, message)))
}

/// Parses the response head at the start of `read`, consuming it when
/// complete; interim (1xx) answers before it are consumed and skipped.
/// `None`: more bytes are needed.
fn parse_head(read: &mut BytesMut, to_head: bool) -> Result<Option<Head>, CallError> {
    // A loop, not recursion: an upstream may send any number of interim
    // answers in one burst (each was a stack frame of ~4 KiB, and 13,000
    // of them overflowed the stack and aborted the gateway).
    loop {
        match parse_one_head(read, to_head)? {
            Parsed::Final(head) => return Ok(Some(head)),
            Parsed::Interim if !read.is_empty() => continue,
            Parsed::Interim | Parsed::Partial => return Ok(None),
        }
    }
}

enum Parsed {
    Final(Head),
    /// A 1xx answer, consumed.
    Interim,
    Partial,
}

/// One head at the start of `read`.
fn parse_one_head(read: &mut BytesMut, to_head: bool) -> Result<Parsed, CallError> {
    // Offsets of each field's name and value in the head, so the values
    // can share the received bytes instead of being copied.
    let mut spans = FieldSpans::new();
    let (len, status, version) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            read,
            &mut fields,
        ) {
            // The bound holds however the head arrived, in one read or several.
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
                return Err(protocol("the response head is too large"));
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(protocol("the response has too many header fields"));
            }
            Err(_) => return Err(protocol("the response head is malformed")),
        };
        spans.record(read.as_ptr(), parsed.headers);
        (len, parsed.code.unwrap_or(0), parsed.version.unwrap_or(1))
    };
    let status = StatusCode::from_u16(status).map_err(|_| protocol("the response status is invalid"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(protocol("the upstream switched protocols unasked"));
        }
        // 100 Continue, 103 Early Hints: the final answer follows.
        read.advance(len);
        return Ok(Parsed::Interim);
    }
    let head = read.split_to(len).freeze();
    // Room for the fields the gateway adds on the way back (the request
    // id), so adding them does not grow and rehash the map.
    let (headers, framing) = fields(&head, spans.as_slice(), 2).map_err(|e| {
        protocol(match e {
            FieldError::Name => "a response header name is invalid",
            FieldError::Value => "a response header value is invalid",
            FieldError::Framing(FramingError::InvalidLength) => "the response Content-Length is invalid",
            FieldError::Framing(FramingError::ConflictingLengths) => {
                "the response has conflicting Content-Length values"
            }
        })
    })?;
    let version = crate::http1::version(version);
    let close = framing.close;
    let framing = response_framing(&framing, status, to_head)?;
    let keep_alive = version == Version::HTTP_11 && framing != BodyFraming::Close && !close;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Parsed::Final(Head {
        response,
        framing,
        keep_alive,
    }))
}

/// A response body read from an HTTP/1.1 upstream connection.
pub struct Body {
    /// The connection, while the body is being read from it.
    conn: Option<Box<Conn>>,
    /// Where the connection goes when the body is read to the end; `None`
    /// when it cannot carry another request.
    idle: Option<Arc<Idle>>,
    /// The part of the body that came with the head.
    first: Option<Bytes>,
    framing: BodyFraming,
}

/// The upstream broke the body's framing, or the connection mid-body.
fn body_error(message: &'static str) -> BoxError {
    Box::new(io::Error::new(io::ErrorKind::InvalidData, message))
}

impl Body {
    /// The body is read to its end: the connection may serve another request.
    fn complete(&mut self) {
        self.framing = BodyFraming::Done;
        if let (Some(conn), Some(idle)) = (self.conn.take(), self.idle.take()) {
            conn.park(&idle);
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            if let BodyFraming::Length(left) = &mut this.framing {
                *left -= first.len() as u64;
            }
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            if this.framing == BodyFraming::Done {
                return Poll::Ready(None);
            }
            let conn = this
                .conn
                .as_mut()
                .expect("a body being read holds its connection");
            match this.framing.decode(&mut conn.read) {
                Ok(Decoded::Data(data)) => {
                    if this.framing == BodyFraming::Done {
                        this.complete();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    this.complete();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    this.complete();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(e) => return Poll::Ready(Some(Err(body_error(e)))),
            }
            match ready!(poll_fill(&mut conn.io, &mut conn.read, &mut conn.want, cx)) {
                Ok(0) if this.framing == BodyFraming::Close => {
                    // The end of the connection is the end of this body.
                    this.framing = BodyFraming::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return Poll::Ready(Some(Err(body_error(
                        "the upstream closed the connection mid-body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.framing == BodyFraming::Done
    }

    fn size_hint(&self) -> SizeHint {
        let first = self.first.as_ref().map_or(0, |f| f.len() as u64);
        match self.framing {
            BodyFraming::Done => SizeHint::with_exact(first),
            // `first` is counted in `left` until it is handed out.
            BodyFraming::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(raw: &str, to_head: bool) -> Result<Option<Head>, CallError> {
        parse_head(&mut BytesMut::from(raw), to_head)
    }

    fn framing(raw: &str) -> BodyFraming {
        match head(raw, false) {
            Ok(Some(h)) => h.framing,
            Ok(None) => panic!("incomplete head"),
            Err(e) => panic!("refused: {e:?}"),
        }
    }

    #[test]
    fn any_number_of_interim_answers_is_skipped_without_recursion() {
        let raw = "HTTP/1.1 100 \r\n\r\n".repeat(20_000) + "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let mut read = BytesMut::from(raw.as_str());
        let h = parse_head(&mut read, false).unwrap().expect("the final head");
        assert_eq!(h.response.status(), StatusCode::OK);
        assert_eq!(&read[..], b"ok");
        // Interim answers alone: consumed, the final one still to come.
        let mut read = BytesMut::from(
            "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
                .repeat(3)
                .as_str(),
        );
        assert!(parse_head(&mut read, false).unwrap().is_none());
        assert!(read.is_empty());
    }

    #[test]
    fn a_head_over_the_bound_is_refused_even_when_it_came_whole() {
        let big = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert!(head(&big, false).is_err());
        let fits = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES - 100)
        );
        assert!(head(&fits, false).unwrap().is_some());
    }

    #[test]
    fn a_response_body_is_framed_by_its_headers() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            BodyFraming::Length(5)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"),
            BodyFraming::Length(5)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            BodyFraming::Done
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n"),
            BodyFraming::Chunked(Chunked::Size)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), BodyFraming::Close);
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
            BodyFraming::Done
        );
        assert_eq!(framing("HTTP/1.1 304 Not Modified\r\n\r\n"), BodyFraming::Done);
        let to_head = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true);
        assert_eq!(to_head.ok().flatten().map(|h| h.framing), Some(BodyFraming::Done));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            // Transfer codings the gateway cannot decode: relayed without
            // them, the body would be unreadable.
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(head(raw, false).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn interim_answers_are_skipped_and_the_rest_waits_for_more_bytes() {
        let mut read = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nx-a: 1\r\ncontent-length: 2\r\n\r\nok",
        );
        let h = parse_head(&mut read, false).ok().flatten().expect("a final head");
        assert_eq!(h.response.status(), StatusCode::CREATED);
        assert_eq!(h.response.headers()["x-a"], "1");
        assert_eq!(&read[..], b"ok");
        assert!(h.keep_alive);
        assert!(head("HTTP/1.1 200 OK\r\ncontent-le", false).is_ok_and(|h| h.is_none()));
        assert!(head("HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
        assert!(head("HTTP/1.1 2000 OK\r\n\r\n", false).is_err());
        assert!(head("garbage\r\n\r\n", false).is_err());
    }

    #[test]
    fn a_connection_close_or_http_1_0_answer_ends_the_connection() {
        let close = head(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        assert!(!close.ok().flatten().expect("head").keep_alive);
        let old = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false);
        assert!(!old.ok().flatten().expect("head").keep_alive);
    }

    /// One upstream connection on 127.0.0.1 answering every request with
    /// `answer`, written in pieces cut at `cuts` (each piece its own
    /// segment); and the gateway's pool to it. Counts accepted connections.
    async fn split_upstream(
        answer: Vec<u8>,
        cuts: Vec<usize>,
    ) -> (super::super::Pool, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = s.set_nodelay(true);
                let (answer, mut cuts) = (answer.clone(), cuts.clone());
                cuts.retain(|&c| c > 0 && c < answer.len());
                cuts.sort_unstable();
                cuts.dedup();
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    while s.read(&mut request).await.is_ok_and(|n| n > 0) {
                        let mut from = 0;
                        for &cut in cuts.iter().chain([answer.len()].iter()) {
                            if s.write_all(&answer[from..cut]).await.is_err() {
                                return;
                            }
                            from = cut;
                            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    }
                });
            }
        });
        let pool = super::super::Pool::new(
            addr.to_string().parse().expect("authority"),
            super::super::PoolConfig {
                http2: false,
                tls: None,
                connect_timeout: std::time::Duration::from_secs(2),
                write_timeout: std::time::Duration::from_secs(2),
                max_idle: 4,
                idle_timeout: std::time::Duration::from_secs(60),
            },
        );
        (pool, accepted)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// However the upstream's bytes are cut into segments, a sized or a
        /// chunked body (extensions, trailers) decodes to the same bytes, and
        /// the connection carries the next request.
        #[test]
        fn bodies_decode_the_same_however_the_bytes_are_split(
            chunked: bool,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 1..300),
            chunk in 1usize..64,
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let answer = if chunked {
                let mut a = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for piece in payload.chunks(chunk) {
                    a.extend_from_slice(format!("{:x};e=1\r\n", piece.len()).as_bytes());
                    a.extend_from_slice(piece);
                    a.extend_from_slice(b"\r\n");
                }
                a.extend_from_slice(b"0\r\nx-t: 1\r\n\r\n");
                a
            } else {
                let mut a = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", payload.len()).into_bytes();
                a.extend_from_slice(&payload);
                a
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let (bodies, trailers, accepted) = rt.block_on(async {
                use http_body_util::BodyExt;
                let (pool, accepted) = split_upstream(answer, cuts).await;
                let mut bodies = Vec::new();
                let mut trailers = Vec::new();
                for _ in 0..2 {
                    let req = Request::get("/").body(RequestBody::full(Bytes::new())).expect("request");
                    let deadline = Instant::now() + std::time::Duration::from_secs(5);
                    let resp = pool.send(Box::new(req), deadline).await.map_err(|e| format!("{:?}", e.error)).expect("an answer");
                    let collected = resp.into_body().collect().await.expect("a whole body");
                    trailers.push(collected.trailers().and_then(|t| t.get("x-t")).map(|v| v.as_bytes().to_vec()));
                    bodies.push(collected.to_bytes());
                }
                (bodies, trailers, accepted.load(std::sync::atomic::Ordering::SeqCst))
            });
            for body in &bodies {
                proptest::prop_assert_eq!(&body[..], &payload[..]);
            }
            let want = chunked.then(|| b"1".to_vec());
            proptest::prop_assert_eq!(&trailers, &vec![want.clone(), want]);
            proptest::prop_assert_eq!(accepted, 1);
        }
    }

    #[tokio::test]
    async fn a_connection_back_from_a_large_body_waits_idle_with_small_buffers() {
        use http_body_util::BodyExt;
        let size = 4 << 20;
        let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n").into_bytes();
        answer.resize(answer.len() + size, b'x');
        let (pool, _) = split_upstream(answer, Vec::new()).await;
        let req = Request::get("/")
            .body(RequestBody::full(Bytes::new()))
            .expect("request");
        let resp = pool
            .send(Box::new(req), Instant::now() + std::time::Duration::from_secs(5))
            .await
            .map_err(|e| format!("{:?}", e.error))
            .expect("an answer");
        let mut largest = 0;
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("a frame").into_data().unwrap_or_default();
            largest = largest.max(data.len());
        }
        // Reads grew while the body streamed, and were trimmed after it.
        assert!(largest > 2 * READ_CHUNK, "largest read {largest}");
        let capacities = pool.idle().read_capacities();
        assert_eq!(capacities.len(), 1, "the connection is back");
        assert!(capacities[0] <= 2 * READ_CHUNK, "{capacities:?}");
    }

    #[test]
    fn the_request_head_carries_this_hops_framing() {
        let mut buf = Vec::new();
        let mut req = Request::post("/a?b=1")
            .body(RequestBody::full(Bytes::from_static(b"hello")))
            .expect("request");
        req.headers_mut().insert("x-a", HeaderValue::from_static("1"));
        req.headers_mut()
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let framing = encode_head(&mut buf, &req);
        assert_eq!(framing, RequestFraming::Length(5));
        assert_eq!(
            String::from_utf8_lossy(&buf),
            "POST /a?b=1 HTTP/1.1\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n"
        );
        let req = Request::get("/")
            .body(RequestBody::full(Bytes::new()))
            .expect("request");
        let framing = encode_head(&mut buf, &req);
        assert_eq!(framing, RequestFraming::None);
        assert_eq!(String::from_utf8_lossy(&buf), "GET / HTTP/1.1\r\n\r\n");
        let req = Request::put("/")
            .body(RequestBody::full(Bytes::new()))
            .expect("request");
        encode_head(&mut buf, &req);
        assert_eq!(
            String::from_utf8_lossy(&buf),
            "PUT / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
