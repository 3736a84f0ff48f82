//! Request framing as the client sent it, for the one smuggling shape hyper
//! accepts: `Content-Length` together with `Transfer-Encoding`. hyper drops
//! the Content-Length and frames by Transfer-Encoding, so the handler never
//! sees the conflict; SPEC section 8 wants such requests refused.
//!
//! The scanner follows an HTTP/1 connection's bytes message by message:
//! heads are examined, bodies are skipped by their Content-Length or walked
//! chunk by chunk (never inspected), so pipelined requests are numbered
//! exactly as hyper will see them. It reports the number of the first
//! request whose head carries both headers.

use std::borrow::Cow;

/// Heads larger than this are refused by hyper (`max_buf_size`) anyway.
const MAX_HEAD: usize = 1 << 20;

#[derive(Debug, Default)]
enum State {
    #[default]
    Head,
    /// Bytes of a Content-Length body still to skip.
    Body(u64),
    ChunkSize,
    /// Bytes of chunk data still to skip, then the CRLF after it.
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailers,
    /// HTTP/2, an upgrade, or framing hyper itself will refuse: nothing more to learn.
    Off,
}

#[derive(Debug, Default)]
pub struct FramingScanner {
    state: State,
    /// A head or a line that spans reads.
    buf: Vec<u8>,
    /// Request heads seen so far.
    heads: u64,
    /// Whether the connection began with the HTTP/2 preface.
    http2: bool,
}

/// What a head says about its body.
enum Framing {
    None,
    Length(u64),
    Chunked,
    Conflict,
    Unknown,
}

impl FramingScanner {
    pub fn is_http2(&self) -> bool {
        self.http2
    }

    /// Feeds bytes read from the client. Returns the number (1-based) of a
    /// request whose head carries both Content-Length and Transfer-Encoding.
    pub fn feed(&mut self, mut data: &[u8]) -> Option<u64> {
        // The HTTP/2 preface, possibly in pieces.
        const PREFACE: &[u8] = b"PRI * HTTP/2.0";
        if self.heads == 0 && matches!(self.state, State::Head) && self.buf.len() < PREFACE.len() {
            let have = self.buf.len();
            let take = (PREFACE.len() - have).min(data.len());
            if self
                .buf
                .iter()
                .chain(&data[..take])
                .zip(PREFACE)
                .all(|(a, b)| a == b)
            {
                if have + take == PREFACE.len() {
                    self.http2 = true;
                    self.state = State::Off;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(data);
                }
                return None;
            }
        }
        while !data.is_empty() {
            match self.state {
                State::Off => return None,
                State::Head => {
                    let (head, rest) = self.take_until(data, b"\r\n\r\n")?;
                    // Blank lines before a request are allowed (RFC 9112 §2.2).
                    if head.is_empty() {
                        data = rest;
                        continue;
                    }
                    self.heads += 1;
                    let framing = framing_of(&head);
                    self.buf.clear();
                    data = rest;
                    match framing {
                        Framing::None => {}
                        Framing::Length(n) => self.state = State::Body(n),
                        Framing::Chunked => self.state = State::ChunkSize,
                        Framing::Conflict => {
                            // The request is refused and the connection closed.
                            self.state = State::Off;
                            return Some(self.heads);
                        }
                        Framing::Unknown => self.state = State::Off,
                    }
                }
                State::Body(n) => {
                    let skip = n.min(data.len() as u64);
                    data = &data[skip as usize..];
                    self.state = if n == skip {
                        State::Head
                    } else {
                        State::Body(n - skip)
                    };
                }
                State::ChunkSize => {
                    let (line, rest) = self.take_until(data, b"\r\n")?;
                    let size = line.split(|b| *b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(size)
                        .ok()
                        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok());
                    self.buf.clear();
                    data = rest;
                    self.state = match size {
                        Some(0) => State::Trailers,
                        Some(n) => State::ChunkData(n),
                        // hyper refuses the body; the connection ends.
                        None => State::Off,
                    };
                }
                State::ChunkData(n) => {
                    let skip = n.min(data.len() as u64);
                    data = &data[skip as usize..];
                    self.state = if n == skip {
                        State::ChunkDataEnd(2)
                    } else {
                        State::ChunkData(n - skip)
                    };
                }
                State::ChunkDataEnd(n) => {
                    let skip = usize::from(n).min(data.len());
                    data = &data[skip..];
                    self.state = if usize::from(n) == skip {
                        State::ChunkSize
                    } else {
                        State::ChunkDataEnd(n - skip as u8)
                    };
                }
                State::Trailers => {
                    let (line, rest) = self.take_until(data, b"\r\n")?;
                    self.buf.clear();
                    data = rest;
                    if line.is_empty() {
                        self.state = State::Head;
                    }
                }
            }
        }
        None
    }

    /// Splits at the first `delim`, counting bytes held from earlier reads.
    /// Returns the part before it (borrowed unless it spans reads) and what follows.
    fn take_until<'d>(&mut self, data: &'d [u8], delim: &[u8]) -> Option<(Cow<'d, [u8]>, &'d [u8])> {
        if self.buf.is_empty() {
            if let Some(end) = find(data, delim) {
                return Some((Cow::Borrowed(&data[..end]), &data[end + delim.len()..]));
            }
            self.buf.extend_from_slice(data);
        } else {
            let start = self.buf.len().saturating_sub(delim.len() - 1);
            let old = self.buf.len();
            self.buf.extend_from_slice(data);
            if let Some(end) = find(&self.buf[start..], delim).map(|p| p + start) {
                let consumed = end + delim.len() - old;
                let part = self.buf[..end].to_vec();
                return Some((Cow::Owned(part), &data[consumed..]));
            }
        }
        if self.buf.len() > MAX_HEAD {
            self.state = State::Off;
            self.buf = Vec::new();
        }
        None
    }
}

/// Where `delim` (`\r\n` or `\r\n\r\n`) starts in `hay`. Jumps from
/// line feed to line feed: no searcher to build for a few hundred bytes.
fn find(hay: &[u8], delim: &[u8]) -> Option<usize> {
    let back = delim.len() - 1;
    memchr::memchr_iter(b'\n', hay)
        .find(|&i| i >= back && hay[i - back..=i] == *delim)
        .map(|i| i - back)
}

/// The value of `line` if it is the header `name` (case-insensitive).
fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.get(name.len()..)?;
    (line[..name.len()].eq_ignore_ascii_case(name) && rest.first() == Some(&b':'))
        .then(|| rest[1..].trim_ascii())
}

fn framing_of(head: &[u8]) -> Framing {
    let (mut length, mut chunked, mut other_te, mut upgrade) = (None, false, false, false);
    // Skip the request line.
    let mut start = memchr::memchr(b'\n', head).map_or(head.len(), |i| i + 1);
    while start < head.len() {
        let end = memchr::memchr(b'\n', &head[start..]).map_or(head.len(), |i| start + i);
        let line = &head[start..end];
        start = end + 1;
        // Most lines start with none of these letters: one byte decides.
        match line.first().map(u8::to_ascii_lowercase) {
            Some(b'c') => {
                if let Some(value) = header_value(line, b"content-length") {
                    match std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        Some(n) => length = Some(n),
                        None => return Framing::Unknown,
                    }
                }
            }
            Some(b't') => {
                if let Some(value) = header_value(line, b"transfer-encoding") {
                    let last = value
                        .rsplit(|b| *b == b',')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    chunked = last.eq_ignore_ascii_case(b"chunked");
                    other_te |= !chunked;
                }
            }
            Some(b'u') => upgrade |= header_value(line, b"upgrade").is_some(),
            _ => {}
        }
    }
    match (length, chunked || other_te) {
        (Some(_), true) => Framing::Conflict,
        // hyper refuses a Transfer-Encoding not ending in chunked.
        (None, true) if other_te => Framing::Unknown,
        // After an upgrade the bytes are no longer HTTP/1 messages.
        _ if upgrade => Framing::Unknown,
        (None, true) => Framing::Chunked,
        (Some(0), false) | (None, false) => Framing::None,
        (Some(n), false) => Framing::Length(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (Option<u64>, u64) {
        let mut s = FramingScanner::default();
        let mut hit = None;
        for c in chunks {
            hit = hit.or(s.feed(c));
        }
        (hit, s.heads)
    }

    #[test]
    fn conflict_in_the_first_request() {
        let req =
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(scan(&[req]).0, Some(1));
        let te_first = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(scan(&[te_first]).0, Some(1));
    }

    #[test]
    fn pipelined_requests_are_counted_across_bodies() {
        let stream = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\nGET /fake HTTP/1.1\r\nX: y\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\nTrailer: t\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        // The fake head inside /b's body is skipped: /d is the 4th request.
        assert_eq!(scan(&[stream]), (Some(4), 4));
        // Byte by byte, the same.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(scan(&bytes), (Some(4), 4));
        // In uneven pieces.
        let pieces: Vec<&[u8]> = stream.chunks(7).collect();
        assert_eq!(scan(&pieces), (Some(4), 4));
    }

    #[test]
    fn clean_connections_report_nothing() {
        let stream = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan(&[stream]), (None, 3));
    }

    #[test]
    fn http2_and_upgrades_switch_it_off() {
        let mut s = FramingScanner::default();
        assert_eq!(s.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), None);
        assert!(s.is_http2());
        let mut s = FramingScanner::default();
        for piece in [&b"PRI "[..], b"* HTTP", b"/2.0\r\n\r\nSM\r\n\r\n"] {
            assert_eq!(s.feed(piece), None);
        }
        assert!(s.is_http2(), "a preface in pieces");
        assert_eq!(
            scan(&[b"PR", b"OPFIND / HTTP/1.1\r\n\r\n"]).1,
            1,
            "a method starting like the preface"
        );
        let (hit, _) = scan(&[b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"]);
        assert_eq!(hit, None, "after an upgrade the bytes are not HTTP/1");
    }
}
