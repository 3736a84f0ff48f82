//! HTTP/1.1 message framing (RFC 9112), shared by the two sides that speak
//! it: client connections ([`crate::proxy::http1`]) and upstream
//! connections ([`crate::upstream::http1`]).
//!
//! Both read into a `BytesMut` and take bodies out of it with
//! [`BodyFraming::decode`]: sized bodies, chunked bodies (extensions and
//! trailers), and bodies that end with the connection.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::AsyncRead;
use tokio_util::io::poll_read_buf;

/// At most this many header fields in a head (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// A trailer section larger than this is refused.
pub const MAX_TRAILER_BYTES: usize = 64 * 1024;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Room asked of the read buffer before a read, at first...
pub const READ_CHUNK: usize = 8 * 1024;
/// ...and at most, after reads that kept filling it (a large body).
const MAX_READ: usize = 256 * 1024;

/// One read into `read`, with room for `want` more bytes. Like hyper's
/// adaptive strategy: a read that fills the room asks for twice as much
/// next time (a large body streams in fewer reads), one that uses little
/// of it asks for half.
pub fn poll_fill<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    read: &mut BytesMut,
    want: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < *want / 2 {
        read.reserve(*want);
    }
    let room = read.capacity() - read.len();
    let n = ready!(poll_read_buf(Pin::new(io), cx, read))?;
    if n == room {
        *want = (*want * 2).min(MAX_READ);
    } else if n < room / 4 {
        *want = (*want / 2).max(READ_CHUNK);
    }
    Poll::Ready(Ok(n))
}

thread_local! {
    /// Emptied header maps kept for the next head this thread parses.
    static SPARE_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// Header maps kept per thread, and the largest kept (in fields).
const SPARE_MAPS_MAX: usize = 64;
const SPARE_MAP_CAPACITY: usize = 32;

/// A header map with room for `fields`: an emptied one this thread kept,
/// when there is one, instead of two new allocations.
pub fn header_map(fields: usize) -> HeaderMap {
    match SPARE_MAPS.with(|spares| spares.borrow_mut().pop()) {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Keeps a map whose message is done for [`header_map`], emptied, unless
/// it grew large or enough are kept.
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > SPARE_MAP_CAPACITY {
        return;
    }
    map.clear();
    SPARE_MAPS.with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARE_MAPS_MAX {
            spares.push(map);
        }
    });
}

/// Where a field's name and value sit in a head: byte offsets.
#[derive(Clone, Copy, Default)]
pub struct Span {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

/// The spans of a head's fields, noted while httparse's borrow of the
/// buffer lasts, so that the values can share the bytes once the head is
/// split off. Most heads fit inline; longer ones spill to the heap.
pub struct FieldSpans {
    inline: [Span; 24],
    spill: Vec<Span>,
    len: usize,
}

impl FieldSpans {
    pub fn new() -> Self {
        FieldSpans {
            inline: [Span::default(); 24],
            spill: Vec::new(),
            len: 0,
        }
    }

    /// Notes `fields`, parsed from the buffer that starts at `base`.
    pub fn record(&mut self, base: *const u8, fields: &[httparse::Header<'_>]) {
        let base = base as usize;
        let span = |field: &httparse::Header<'_>| {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            Span {
                name: (name as u32, (name + field.name.len()) as u32),
                value: (value as u32, (value + field.value.len()) as u32),
            }
        };
        self.len = fields.len();
        if fields.len() <= self.inline.len() {
            for (slot, field) in self.inline.iter_mut().zip(fields) {
                *slot = span(field);
            }
        } else {
            self.spill = fields.iter().map(span).collect();
        }
    }

    pub fn as_slice(&self) -> &[Span] {
        if self.len <= self.inline.len() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }
}

impl Default for FieldSpans {
    fn default() -> Self {
        Self::new()
    }
}

/// The version of a head, from httparse's minor version.
pub fn version(minor: u8) -> http::Version {
    if minor == 1 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_10
    }
}

/// Why a head's fields were refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FieldError {
    Name,
    Value,
    Framing(FramingError),
}

/// The header map of a head split off as `head`, whose fields are at
/// `spans`, with room for `extra` more; and the fields that frame its body,
/// noted on the way (no lookups after).
pub fn fields(head: &Bytes, spans: &[Span], extra: usize) -> Result<(HeaderMap, Framing), FieldError> {
    let mut headers = header_map(spans.len() + extra);
    let mut framing = Framing::default();
    for span in spans {
        let name = HeaderName::from_bytes(&head[span.name.0 as usize..span.name.1 as usize])
            .map_err(|_| FieldError::Name)?;
        let value = header_value(head.slice(span.value.0 as usize..span.value.1 as usize))
            .map_err(|_| FieldError::Value)?;
        framing.note(&name, &value).map_err(FieldError::Framing)?;
        headers.append(name, value);
    }
    Ok((headers, framing))
}

/// `bytes` as a header value, refused if `HeaderValue` would refuse it.
/// Most values are visible ASCII and spaces: those are checked eight bytes
/// at a time, a quarter of the instructions of `HeaderValue`'s byte-wise
/// check (which the others, with a tab or obs-text, still take).
pub fn header_value(bytes: Bytes) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    if !plain_ascii(&bytes) {
        return HeaderValue::from_maybe_shared(bytes);
    }
    // SAFETY: `from_maybe_shared_unchecked` asks for valid UTF-8, and the
    // type's invariant is that no byte is a control character other than
    // HTAB (`HeaderValue::is_valid`: b >= 32 && b != 127 || b == b'\t').
    // `plain_ascii` returned true, so every byte is in 0x20..=0x7E: ASCII,
    // hence UTF-8, and none is a control character.
    #[allow(unsafe_code)]
    Ok(unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) })
}

/// Whether every byte of `b` is in 0x20..=0x7E (SP and visible ASCII).
fn plain_ascii(b: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const SPACE: u64 = u64::from_ne_bytes([0x20; 8]);
    const DEL: u64 = u64::from_ne_bytes([0x7f; 8]);
    let mut words = b.chunks_exact(8);
    for word in &mut words {
        let x = u64::from_ne_bytes(word.try_into().expect("eight bytes"));
        // A byte of 0x80 or more fails by its own high bit (`x` is in the
        // test). Among the others, `x - 0x20…` sets the high bit of the
        // lowest byte below 0x20, if any, and of none otherwise (no byte
        // borrows unless one is below 0x20); a byte of 0x7F is a zero byte
        // of `x ^ 0x7F…`, found the same way with `- 0x01…`.
        let below_space = x.wrapping_sub(SPACE) & !x;
        let d = x ^ DEL;
        let del = d.wrapping_sub(ONES) & !d;
        if (x | below_space | del) & HIGH != 0 {
            return false;
        }
    }
    words.remainder().iter().all(|&c| (0x20..0x7f).contains(&c))
}

/// The fields of a head that frame its body and its connection, noted
/// while the head is built (no lookups after).
#[derive(Default)]
pub struct Framing {
    /// `Content-Length`, all its values agreeing.
    pub length: Option<u64>,
    /// `Transfer-Encoding` seen, and whether its last coding is `chunked`.
    pub transfer_encoding: Option<bool>,
    /// The transfer codings named, over all `Transfer-Encoding` fields.
    pub codings: u32,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive` (what an HTTP/1.0 peer must say to keep it).
    pub keep_alive: bool,
    /// `TE: trailers`: the peer takes a trailer section.
    pub te_trailers: bool,
}

/// Why a head's framing fields cannot be trusted.
#[derive(Debug, PartialEq, Eq)]
pub enum FramingError {
    InvalidLength,
    ConflictingLengths,
}

impl Framing {
    /// Notes one header field of the head.
    pub fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), FramingError> {
        if name == CONTENT_LENGTH {
            for part in value.as_bytes().split(|&b| b == b',') {
                let n = parse_length(trim(part)).ok_or(FramingError::InvalidLength)?;
                if self.length.is_some_and(|l| l != n) {
                    return Err(FramingError::ConflictingLengths);
                }
                self.length = Some(n);
            }
        } else if name == TRANSFER_ENCODING {
            let mut last = None;
            for coding in value.as_bytes().split(|&b| b == b',').map(trim) {
                self.codings = self.codings.saturating_add(u32::from(!coding.is_empty()));
                last = Some(coding);
            }
            self.transfer_encoding = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
        } else if name == CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',').map(trim) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == TE {
            // `trailers`, possibly among codings with parameters.
            self.te_trailers |= value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(b"trailers"));
        }
        Ok(())
    }
}

pub fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Decimal digits only, no sign, no overflow.
pub fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// How much of a message body is left, by its framing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BodyFraming {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the peer closes the connection (responses only).
    Close,
    Done,
}

/// Where the chunked decoder is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Chunked {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// After a chunk's data, at its CRLF.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
}

/// What [`BodyFraming::decode`] took out of the buffer.
#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    /// The trailer section; the body is done.
    Trailers(HeaderMap),
    /// The body is done.
    End,
    /// More bytes are needed.
    More,
}

impl BodyFraming {
    /// Takes the next piece of the body out of `read`. After `Data` the
    /// framing is `Done` if that was the last of it.
    pub fn decode(&mut self, read: &mut BytesMut) -> Result<Decoded, &'static str> {
        loop {
            match *self {
                BodyFraming::Done => return Ok(Decoded::End),
                BodyFraming::Length(_) | BodyFraming::Close if read.is_empty() => return Ok(Decoded::More),
                BodyFraming::Length(left) => {
                    let (data, left) = take_up_to(read, left);
                    *self = if left == 0 {
                        BodyFraming::Done
                    } else {
                        BodyFraming::Length(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                BodyFraming::Close => return Ok(Decoded::Data(read.split().freeze())),
                BodyFraming::Chunked(state) => {
                    let next = match state {
                        Chunked::Size => match memchr::memchr(b'\n', read) {
                            Some(end) => {
                                let size = parse_chunk_size(&read[..end]).ok_or("a chunk size is invalid")?;
                                read.advance(end + 1);
                                if size == 0 {
                                    Chunked::Trailers
                                } else {
                                    Chunked::Data(size)
                                }
                            }
                            None if read.len() > MAX_CHUNK_LINE => {
                                return Err("a chunk-size line is too long");
                            }
                            None => return Ok(Decoded::More),
                        },
                        Chunked::Data(_) if read.is_empty() => return Ok(Decoded::More),
                        Chunked::Data(left) => {
                            let (data, left) = take_up_to(read, left);
                            *self = BodyFraming::Chunked(if left == 0 {
                                Chunked::DataEnd
                            } else {
                                Chunked::Data(left)
                            });
                            return Ok(Decoded::Data(data));
                        }
                        Chunked::DataEnd if read.len() < 2 => return Ok(Decoded::More),
                        Chunked::DataEnd => {
                            if &read[..2] != b"\r\n" {
                                return Err("a chunk does not end with CRLF");
                            }
                            read.advance(2);
                            Chunked::Size
                        }
                        Chunked::Trailers => {
                            if read.starts_with(b"\r\n") {
                                read.advance(2);
                                *self = BodyFraming::Done;
                                return Ok(Decoded::End);
                            }
                            return match parse_trailers(read)? {
                                Some(trailers) => {
                                    *self = BodyFraming::Done;
                                    Ok(Decoded::Trailers(trailers))
                                }
                                None if read.len() > MAX_TRAILER_BYTES => {
                                    Err("the trailer section is too large")
                                }
                                None => Ok(Decoded::More),
                            };
                        }
                    };
                    *self = BodyFraming::Chunked(next);
                }
            }
        }
    }
}

/// Up to `left` bytes off the front of `read`, and how many are left after them.
fn take_up_to(read: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let take = (read.len() as u64).min(left) as usize;
    (read.split_to(take).freeze(), left - take as u64)
}

/// A chunk-size line without its LF: hex digits, then optional
/// extensions, then CR.
pub fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r")?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = &line[digits..];
    let rest = &rest[rest.iter().take_while(|b| matches!(b, b' ' | b'\t')).count()..];
    if !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// The trailer section at the start of `read` (ending in an empty line),
/// consumed when complete. Fields that must not be trailers are dropped.
fn parse_trailers(read: &mut BytesMut) -> Result<Option<HeaderMap>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, map) = match httparse::parse_headers(read, &mut fields) {
        Ok(httparse::Status::Complete((len, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for field in fields.iter() {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(field.name.as_bytes()),
                    HeaderValue::from_bytes(field.value),
                ) else {
                    return Err("a trailer field is invalid");
                };
                if is_allowed_trailer(&name) {
                    map.append(name, value);
                }
            }
            (len, map)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("the trailer section is malformed"),
    };
    read.advance(len);
    Ok(Some(map))
}

/// Fields that must not travel as trailers (RFC 9110 §6.5.1): framing,
/// routing and connection control.
pub fn is_allowed_trailer(name: &HeaderName) -> bool {
    use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, TE, TRAILER};
    ![
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
        HOST,
        TE,
        TRAILER,
        AUTHORIZATION,
        CONTENT_TYPE,
    ]
    .contains(name)
}

/// Appends `name: value\r\n`.
pub fn put_field(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// Appends a chunk-size line for `len` bytes of data.
pub fn put_chunk_size(buf: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
    buf.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(parse_chunk_size(b"1a\r"), Some(26));
        assert_eq!(parse_chunk_size(b"1A;name=value\r"), Some(26));
        assert_eq!(parse_chunk_size(b"0 ;x\r"), Some(0));
        assert_eq!(parse_chunk_size(b"1a"), None, "no CR");
        assert_eq!(parse_chunk_size(b"\r"), None);
        assert_eq!(parse_chunk_size(b"-1\r"), None);
        assert_eq!(parse_chunk_size(b"1x\r"), None);
        assert_eq!(parse_chunk_size(b"1000000000000000\r"), None, "overflow");
    }

    #[test]
    fn the_word_check_agrees_with_the_byte_check_for_every_byte_anywhere() {
        // Every byte value at every offset of values 1 to 20 bytes long
        // (whole words, tails, both), among bytes that pass.
        for len in 1..=20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut value = vec![b'a'; len];
                    value[at] = b;
                    let plain = (0x20..0x7f).contains(&b);
                    assert_eq!(plain_ascii(&value), plain, "byte {b:#04x} at {at} of {len}");
                    let expected = HeaderValue::from_bytes(&value).ok();
                    let got = header_value(Bytes::from(value)).ok();
                    assert_eq!(got, expected, "byte {b:#04x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn values_with_tabs_or_obs_text_take_the_full_check() {
        let tab = header_value(Bytes::from_static(b"a\tb")).unwrap();
        assert_eq!(tab.as_bytes(), b"a\tb");
        let obs = header_value(Bytes::from_static(b"caf\xe9 au lait")).unwrap();
        assert_eq!(obs.as_bytes(), b"caf\xe9 au lait");
        assert!(obs.to_str().is_err(), "not visible ASCII");
        assert!(header_value(Bytes::from_static(b"a\r\nb: c")).is_err());
        assert!(header_value(Bytes::from_static(b"nul\0 in the middle of a long value")).is_err());
        assert!(header_value(Bytes::from_static(b"")).unwrap().is_empty());
    }

    #[test]
    fn field_spans_point_at_each_name_and_value_however_many() {
        for n in [0, 3, 24, 25, 90] {
            let mut head = String::new();
            for i in 0..n {
                head.push_str(&format!("x-field-{i}: value {i}\r\n"));
            }
            head.push_str("\r\n");
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let httparse::Status::Complete((_, parsed)) =
                httparse::parse_headers(head.as_bytes(), &mut fields).unwrap()
            else {
                panic!("complete")
            };
            let mut spans = FieldSpans::new();
            spans.record(head.as_ptr(), parsed);
            assert_eq!(spans.as_slice().len(), n);
            for (i, span) in spans.as_slice().iter().enumerate() {
                assert_eq!(
                    &head[span.name.0 as usize..span.name.1 as usize],
                    format!("x-field-{i}")
                );
                assert_eq!(
                    &head[span.value.0 as usize..span.value.1 as usize],
                    format!("value {i}")
                );
            }
        }
    }

    #[test]
    fn te_trailers_is_a_token_not_a_substring() {
        let noted = |v: &'static str| {
            let mut f = Framing::default();
            f.note(&TE, &HeaderValue::from_static(v)).unwrap();
            f.te_trailers
        };
        assert!(noted("trailers"));
        assert!(noted("gzip, Trailers"));
        assert!(!noted("gzip"));
        assert!(!noted("x-trailers-ish"));
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        for (n, want) in [(0, "0\r\n"), (9, "9\r\n"), (26, "1a\r\n"), (65536, "10000\r\n")] {
            let mut buf = Vec::new();
            put_chunk_size(&mut buf, n);
            assert_eq!(buf, want.as_bytes());
        }
    }

    #[test]
    fn a_chunked_body_decodes_to_its_data_and_trailers() {
        let mut read =
            BytesMut::from(&b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 9\r\nhost: no\r\n\r\nNEXT"[..]);
        let mut framing = BodyFraming::Chunked(Chunked::Size);
        let mut data = Vec::new();
        let trailers = loop {
            match framing.decode(&mut read).unwrap() {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => break t,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(data, b"abcde");
        assert_eq!(trailers.get("x-sum").unwrap(), "9");
        assert!(trailers.get("host").is_none(), "routing fields are not trailers");
        assert_eq!(framing, BodyFraming::Done);
        assert_eq!(&read[..], b"NEXT", "the next message is left in the buffer");
    }

    #[test]
    fn a_sized_body_stops_at_its_length() {
        let mut read = BytesMut::from(&b"hello world"[..]);
        let mut framing = BodyFraming::Length(5);
        match framing.decode(&mut read).unwrap() {
            Decoded::Data(d) => assert_eq!(&d[..], b"hello"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(framing, BodyFraming::Done);
        assert_eq!(&read[..], b" world");
    }

    #[test]
    fn a_bad_chunk_is_an_error() {
        for raw in [&b"zz\r\n"[..], b"3\r\nabcX\r\n"] {
            let mut read = BytesMut::from(raw);
            let mut framing = BodyFraming::Chunked(Chunked::Size);
            let err = loop {
                match framing.decode(&mut read) {
                    Ok(Decoded::Data(_)) => {}
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(e) => break e,
                }
            };
            assert!(err.contains("chunk"), "{err}");
        }
    }
}
