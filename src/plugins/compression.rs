//! `compression`: gzip or brotli by the client's `Accept-Encoding`, as the
//! answer streams (each burst of upstream data is compressed and flushed as
//! it comes, so a slow stream is never held back to fill a buffer).
//!
//! Left alone: answers already encoded, `206`, `204`, `304`, bodies known to
//! be smaller than `min_bytes`, types that do not compress (images, video,
//! archives: only text-like types are compressed) and `Cache-Control:
//! no-transform`.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, VARY,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ResponseBody};
use crate::config::CompressionConfig;

/// Output collected before it is handed on, even while input keeps coming.
const OUTPUT_CHUNK: usize = 32 << 10;
const GZIP_LEVEL: u32 = 6;
/// Quality 5 of 11: near gzip's speed with a better ratio (11 is for
/// compressing ahead of time, not on the fly).
const BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW: u32 = 22;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Brotli,
    Gzip,
}

impl Algorithm {
    fn token(self) -> &'static str {
        match self {
            Algorithm::Brotli => "br",
            Algorithm::Gzip => "gzip",
        }
    }
}

pub struct Compression {
    brotli: bool,
    gzip: bool,
    min_bytes: u64,
}

impl Compression {
    pub fn new(cfg: &CompressionConfig) -> Result<Self, (String, String)> {
        let (mut brotli, mut gzip) = (cfg.algorithms.is_empty(), cfg.algorithms.is_empty());
        for (i, a) in cfg.algorithms.iter().enumerate() {
            match a.as_str() {
                "br" => brotli = true,
                "gzip" => gzip = true,
                other => {
                    return Err((
                        format!("algorithms[{i}]"),
                        format!("unknown algorithm `{other}` (expected br or gzip)"),
                    ));
                }
            }
        }
        Ok(Compression {
            brotli,
            gzip,
            min_bytes: cfg.min_bytes.map_or(1024, |b| b.0),
        })
    }

    /// The algorithm `accept` (the client's `Accept-Encoding`) prefers among
    /// the enabled ones: highest q-value, brotli on a tie, none at q=0.
    pub fn choose(&self, accept: Option<&HeaderValue>) -> Option<Algorithm> {
        let accept = accept?.to_str().ok()?;
        let (mut br, mut gz, mut any) = (None, None, None);
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| v.trim().parse::<f32>().ok())?
                })
                .unwrap_or(1.0);
            if coding.eq_ignore_ascii_case("br") {
                br = Some(q);
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gz = Some(q);
            } else if coding == "*" {
                any = Some(q);
            }
        }
        let q = |explicit: Option<f32>, enabled: bool| {
            if enabled {
                explicit.or(any).unwrap_or(0.0)
            } else {
                0.0
            }
        };
        let (qb, qg) = (q(br, self.brotli), q(gz, self.gzip));
        if qb <= 0.0 && qg <= 0.0 {
            None
        } else if qb >= qg {
            Some(Algorithm::Brotli)
        } else {
            Some(Algorithm::Gzip)
        }
    }

    /// Compresses `resp` for a client that sent `accept`, when it is worth
    /// it. Every answer that could be compressed gets `Vary:
    /// Accept-Encoding`, compressed or not, so shared caches keep both.
    pub fn apply(
        &self,
        accept: Option<&HeaderValue>,
        resp: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        if !self.eligible(resp.status(), resp.headers(), resp.body().size_hint()) {
            return resp;
        }
        let (mut parts, body) = resp.into_parts();
        add_vary(&mut parts.headers);
        let Some(algorithm) = self.choose(accept) else {
            return Response::from_parts(parts, body);
        };
        let h = &mut parts.headers;
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(algorithm.token()));
        h.remove(CONTENT_LENGTH);
        h.remove(ACCEPT_RANGES);
        // The encoded bytes differ, so a strong validator no longer holds.
        if let Some(etag) = h.get(ETAG)
            && !etag.as_bytes().starts_with(b"W/")
            && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat())
        {
            h.insert(ETAG, weak);
        }
        Response::from_parts(parts, ResponseBody::wrap(Encoded::new(body, algorithm)))
    }

    fn eligible(&self, status: StatusCode, h: &HeaderMap, size: SizeHint) -> bool {
        let status_ok = !status.is_informational()
            && !matches!(
                status,
                StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
            );
        let identity = h
            .get(CONTENT_ENCODING)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let no_transform = h
            .get_all(CACHE_CONTROL)
            .iter()
            .any(|v| contains_token(v.as_bytes(), b"no-transform"));
        let big_enough = size.exact().is_none_or(|n| n >= self.min_bytes.max(1));
        status_ok
            && identity
            && !no_transform
            && !h.contains_key(CONTENT_RANGE)
            && big_enough
            && h.get(CONTENT_TYPE).is_some_and(compressible)
    }
}

/// The client's `Accept-Encoding`, kept for the response phase.
pub fn accept_encoding(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get(ACCEPT_ENCODING).cloned()
}

/// Text-like media types; the others are already compressed or binary.
fn compressible(content_type: &HeaderValue) -> bool {
    let Ok(ct) = content_type.to_str() else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind == "text"
        || sub.ends_with("+json")
        || sub.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/ecmascript"
                | "application/xml"
                | "application/x-ndjson"
                | "application/graphql-response+json"
                | "application/wasm"
                | "image/svg+xml"
                | "image/x-icon"
                | "image/bmp"
                | "font/ttf"
                | "font/otf"
                | "application/vnd.ms-fontobject"
        )
}

fn contains_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',').any(|t| {
        t.trim_ascii()
            .split(|&b| b == b'=')
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case(token))
    })
}

fn add_vary(h: &mut HeaderMap) {
    let present = h
        .get_all(VARY)
        .iter()
        .any(|v| contains_token(v.as_bytes(), b"accept-encoding") || v.as_bytes() == b"*");
    if !present {
        h.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Algorithm::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                8 << 10,
                BROTLI_QUALITY,
                BROTLI_WINDOW,
            ))),
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Brotli(e) => e.write_all(data),
        }
    }

    /// A sync flush: everything written so far becomes decodable output.
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Brotli(e) => e.flush(),
        }
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Brotli(e) => Ok(e.into_inner()),
        }
    }
}

/// A response body compressed as it streams.
pub struct Encoded {
    inner: ResponseBody,
    encoder: Option<Encoder>,
    /// Input written since the last flush.
    unflushed: bool,
    trailers: Option<HeaderMap>,
}

impl Encoded {
    fn new(inner: ResponseBody, algorithm: Algorithm) -> Self {
        Encoded {
            inner,
            encoder: Some(Encoder::new(algorithm)),
            unflushed: false,
            trailers: None,
        }
    }

    fn take_output(&mut self) -> Option<Bytes> {
        let out = self.encoder.as_mut()?.output();
        (!out.is_empty()).then(|| Bytes::from(std::mem::take(out)))
    }
}

impl Body for Encoded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        encoder.write(&data)?;
                        this.unflushed = true;
                        if encoder.output().len() >= OUTPUT_CHUNK
                            && let Some(out) = this.take_output()
                        {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body: they follow the last data.
                        this.trailers = frame.into_trailers().ok();
                        return finish(this);
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return finish(this),
                Poll::Pending => {
                    // Nothing more for now: send what the client can decode.
                    if this.unflushed {
                        encoder.flush()?;
                        this.unflushed = false;
                    }
                    return match this.take_output() {
                        Some(out) => Poll::Ready(Some(Ok(Frame::data(out)))),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn finish(this: &mut Encoded) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    let Some(encoder) = this.encoder.take() else {
        return Poll::Ready(None);
    };
    let out = encoder.finish()?;
    if out.is_empty() {
        return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
    }
    Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Read;

    fn plugin(algorithms: &[&str]) -> Compression {
        Compression::new(&CompressionConfig {
            algorithms: algorithms.iter().map(|s| s.to_string()).collect(),
            min_bytes: None,
        })
        .unwrap()
    }

    fn choose(c: &Compression, accept: &str) -> Option<Algorithm> {
        c.choose(Some(&HeaderValue::from_str(accept).unwrap()))
    }

    #[test]
    fn negotiation() {
        let both = plugin(&[]);
        assert_eq!(choose(&both, "gzip, br"), Some(Algorithm::Brotli));
        assert_eq!(choose(&both, "gzip, deflate"), Some(Algorithm::Gzip));
        assert_eq!(choose(&both, "br;q=0.5, gzip;q=0.8"), Some(Algorithm::Gzip));
        assert_eq!(choose(&both, "br;q=0, gzip;q=0"), None);
        assert_eq!(choose(&both, "*"), Some(Algorithm::Brotli));
        assert_eq!(choose(&both, "br;q=0, *;q=0.1"), Some(Algorithm::Gzip));
        assert_eq!(choose(&both, "identity"), None);
        assert_eq!(both.choose(None), None);
        let gzip_only = plugin(&["gzip"]);
        assert_eq!(choose(&gzip_only, "br"), None);
        assert_eq!(choose(&gzip_only, "br, gzip"), Some(Algorithm::Gzip));
        assert!(
            Compression::new(&CompressionConfig {
                algorithms: vec!["zstd".into()],
                min_bytes: None
            })
            .is_err()
        );
    }

    #[test]
    fn media_types() {
        let yes = [
            "text/html; charset=utf-8",
            "application/json",
            "application/problem+json",
            "image/svg+xml",
        ];
        for ct in yes {
            assert!(compressible(&HeaderValue::from_static(ct)), "{ct}");
        }
        for ct in [
            "image/png",
            "application/zip",
            "video/mp4",
            "application/octet-stream",
        ] {
            assert!(!compressible(&HeaderValue::from_static(ct)), "{ct}");
        }
    }

    #[tokio::test]
    async fn streams_decodable_output() {
        let text = "portcullis ".repeat(5000);
        for algorithm in [Algorithm::Gzip, Algorithm::Brotli] {
            let body = Encoded::new(ResponseBody::full(text.clone()), algorithm);
            let bytes = body.collect().await.unwrap().to_bytes();
            assert!(
                bytes.len() < text.len() / 10,
                "{algorithm:?} compressed to {}",
                bytes.len()
            );
            let mut out = String::new();
            match algorithm {
                Algorithm::Gzip => flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut out),
                Algorithm::Brotli => brotli::Decompressor::new(&bytes[..], 4096).read_to_string(&mut out),
            }
            .unwrap();
            assert_eq!(out, text);
        }
    }
}
