//! WebSocket proxying (SPEC section 4): an HTTP/1.1 `Upgrade: websocket`
//! request, or an HTTP/2 extended CONNECT (RFC 8441, routed as a `GET`),
//! goes through the request phases like any other (auth and rate limits
//! apply to it), then to an `http1` upstream as an HTTP/1.1 upgrade on a
//! connection of its own. On `101 Switching Protocols` the client's
//! connection (or HTTP/2 stream, answered 200) and the upstream's become a
//! tunnel:
//!
//! ```text
//! client ⇄ frame scanner ⇄ upstream
//! ```
//!
//! Bytes pass as they come; the scanner reads only frame headers, so a
//! frame larger than the route's `max_request_body_bytes` is refused
//! before any of it is forwarded: its sender gets a close frame 1009
//! (message too big), the other side 1001 (going away). A tunnel silent
//! for `server.limits.idle_timeout` is closed with 1001 both ways. A close
//! frame from either side passes through, and the end of one connection
//! ends the other, so a clean close handshake happens end to end.

use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Version, request};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::server::ConnHold;

const READ_BUFFER: usize = 16 << 10;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_GOING_AWAY: u16 = 1001;
/// How long a closing frame may wait for a side to take it.
const CLOSE_WRITE_LIMIT: Duration = Duration::from_secs(1);

/// How a request asks to become a WebSocket, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    No,
    /// HTTP/1.1 `GET` with `Connection: upgrade`, `Upgrade: websocket`
    /// (RFC 6455 section 4.1).
    Http1,
    /// HTTP/2 extended `CONNECT` with `:protocol websocket` (RFC 8441).
    Http2,
}

/// Read before hop-by-hop headers are removed.
pub fn upgrade_kind(parts: &request::Parts) -> Upgrade {
    if parts.version == Version::HTTP_2
        && parts.method == Method::CONNECT
        && parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
    {
        return Upgrade::Http2;
    }
    // `Upgrade` first: one lookup decides for the requests that have none.
    let h1 = parts.version == Version::HTTP_11
        && parts.method == Method::GET
        && parts
            .headers
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && parts
            .headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if h1 { Upgrade::Http1 } else { Upgrade::No }
}

/// Whether a 101's `Upgrade` names WebSocket (and nothing else).
pub fn switches_to_websocket(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(UPGRADE).iter();
    upgrades
        .next()
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && upgrades.next().is_none()
}

/// An HTTP/2 WebSocket request as the HTTP/1.1 upgrade an upstream
/// expects: a `GET` with a fresh `Sec-WebSocket-Key` (RFC 8441 clients send
/// none; the upstream's answer to it is checked by nobody but is required).
pub fn as_http1_upgrade(parts: &mut request::Parts) {
    parts.method = Method::GET;
    if !parts.headers.contains_key("sec-websocket-key") {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_be_bytes());
        if let Ok(v) = HeaderValue::from_str(&key) {
            parts.headers.insert("sec-websocket-key", v);
        }
    }
}

/// The hop-by-hop headers of an upgrade, set again on the request sent
/// upstream and on the 101 sent back.
pub fn set_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// Limits of one tunnel.
#[derive(Clone, Copy)]
pub struct TunnelLimits {
    pub max_frame: u64,
    pub idle_timeout: Duration,
}

/// Joins the client's and the upstream's upgraded connections once both
/// are handed over, in a task of its own.
/// The tunnel keeps `hold` (its connection's place against
/// `max_connections`) until it closes, and closes with 1001 at shutdown.
pub fn spawn_tunnel(client: OnUpgrade, upstream: OnUpgrade, limits: TunnelLimits, mut hold: ConnHold) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade not completed");
                return;
            }
        };
        let reason = tunnel(
            TokioIo::new(client),
            TokioIo::new(upstream),
            limits,
            hold.stopping(),
        )
        .await;
        tracing::debug!(reason, "websocket tunnel closed");
    });
}

/// Which way bytes go, and so who the peer is that sent them.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Client,
    Upstream,
}

/// What woke the tunnel.
enum Event {
    Read(Side, std::io::Result<usize>),
    Idle,
    Stopping,
}

/// Relays frames both ways until a side closes, the tunnel idles, a frame
/// is too large, or `stopping` resolves (shutdown).
async fn tunnel<C, U>(
    mut client: C,
    mut upstream: U,
    limits: TunnelLimits,
    stopping: impl Future<Output = ()>,
) -> &'static str
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut stopping = std::pin::pin!(stopping);
    let mut from_client = Direction::new(limits.max_frame);
    let mut from_upstream = Direction::new(limits.max_frame);
    let mut client_buf = vec![0u8; READ_BUFFER];
    let mut upstream_buf = vec![0u8; READ_BUFFER];
    let mut idle_until = Instant::now() + limits.idle_timeout;
    loop {
        let event = tokio::select! {
            r = client.read(&mut client_buf) => Event::Read(Side::Client, r),
            r = upstream.read(&mut upstream_buf) => Event::Read(Side::Upstream, r),
            () = tokio::time::sleep_until(idle_until) => Event::Idle,
            () = &mut stopping => Event::Stopping,
        };
        let (side, read) = match event {
            Event::Read(side, read) => (side, read),
            Event::Idle | Event::Stopping => {
                // 1001 to each side, where it falls between frames; a side
                // in the middle of a frame only sees its stream end.
                let client_between = from_upstream.between_frames();
                let upstream_between = from_client.between_frames();
                bounded(going_away(&mut client, Side::Client, client_between)).await;
                bounded(going_away(&mut upstream, Side::Upstream, upstream_between)).await;
                return if matches!(event, Event::Idle) {
                    "idle"
                } else {
                    "shutting down"
                };
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                // One side is gone: end the other's stream after what it has.
                let _ = match side {
                    Side::Client => upstream.shutdown().await,
                    Side::Upstream => client.shutdown().await,
                };
                return "closed";
            }
            Ok(n) => n,
        };
        idle_until = Instant::now() + limits.idle_timeout;
        let (dir, data) = match side {
            Side::Client => (&mut from_client, &client_buf[..n]),
            Side::Upstream => (&mut from_upstream, &upstream_buf[..n]),
        };
        let (out, oversized) = dir.scan(data);
        let write = async {
            match side {
                Side::Client => upstream.write_all(&out).await,
                Side::Upstream => client.write_all(&out).await,
            }
        };
        // A side that stops reading would otherwise stall the tunnel for
        // good, past its idle timeout and past shutdown: it gets as long
        // as an idle tunnel does.
        let written = tokio::select! {
            written = write => written,
            () = tokio::time::sleep(limits.idle_timeout) => return "a side took no bytes for idle_timeout",
            () = &mut stopping => return "shutting down",
        };
        if written.is_err() {
            return "write failed";
        }
        if oversized {
            // The sender of the oversized frame hears why; the other side
            // that its peer went away.
            let (client_code, upstream_code) = match side {
                Side::Client => (CLOSE_TOO_BIG, CLOSE_GOING_AWAY),
                Side::Upstream => (CLOSE_GOING_AWAY, CLOSE_TOO_BIG),
            };
            bounded(close(&mut client, Side::Client, client_code)).await;
            bounded(close(&mut upstream, Side::Upstream, upstream_code)).await;
            return "frame too big";
        }
    }
}

/// Runs a closing write for at most [`CLOSE_WRITE_LIMIT`]: a side that
/// takes no bytes does not get to hold the tunnel open. Its outcome does
/// not matter: the tunnel ends either way.
async fn bounded(write: impl Future<Output = std::io::Result<()>>) {
    let _ = tokio::time::timeout(CLOSE_WRITE_LIMIT, write).await;
}

/// Ends `side`'s stream, with a 1001 close frame first when it is between
/// frames (a close frame inside another frame's payload would corrupt it).
async fn going_away<S: AsyncWrite + Unpin>(
    stream: &mut S,
    side: Side,
    between_frames: bool,
) -> std::io::Result<()> {
    if between_frames {
        close(stream, side, CLOSE_GOING_AWAY).await
    } else {
        stream.shutdown().await
    }
}

/// Sends a close frame with `code` to `side`, then ends the stream. Frames
/// to the upstream are masked (the gateway is its client), frames to the
/// client are not (RFC 6455 section 5.1).
async fn close<S: AsyncWrite + Unpin>(stream: &mut S, side: Side, code: u16) -> std::io::Result<()> {
    let [hi, lo] = code.to_be_bytes();
    let frame = match side {
        Side::Client => vec![0x88, 0x02, hi, lo],
        Side::Upstream => {
            let mask: [u8; 4] = fastrand::u32(..).to_be_bytes();
            vec![
                0x88,
                0x82,
                mask[0],
                mask[1],
                mask[2],
                mask[3],
                hi ^ mask[0],
                lo ^ mask[1],
            ]
        }
    };
    stream.write_all(&frame).await?;
    stream.shutdown().await
}

/// The frame boundaries of one direction of a tunnel.
struct Direction {
    max_frame: u64,
    /// The header being read (at most 14 bytes: 2 + 8 length + 4 mask).
    header: Vec<u8>,
    /// Payload bytes left in the current frame.
    payload_left: u64,
}

impl Direction {
    fn new(max_frame: u64) -> Self {
        Direction {
            max_frame,
            header: Vec::with_capacity(14),
            payload_left: 0,
        }
    }

    /// Whether what was forwarded this way ends on a frame boundary (a
    /// header still being read was not forwarded).
    fn between_frames(&self) -> bool {
        self.payload_left == 0
    }

    /// The bytes of `data` to forward now, and whether a frame over the
    /// limit began. A header split across reads is held back until it is
    /// whole, so an oversized frame never has a byte forwarded.
    fn scan(&mut self, data: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(data.len() + self.header.len());
        let mut i = 0;
        while i < data.len() {
            if self.payload_left > 0 {
                let n = (self.payload_left.min((data.len() - i) as u64)) as usize;
                out.extend_from_slice(&data[i..i + n]);
                self.payload_left -= n as u64;
                i += n;
                continue;
            }
            self.header.push(data[i]);
            i += 1;
            let Some(len) = header_complete(&self.header) else {
                continue;
            };
            if len > self.max_frame {
                return (out, true);
            }
            out.extend_from_slice(&self.header);
            self.header.clear();
            self.payload_left = len;
        }
        (out, false)
    }
}

/// The payload length once `h` holds a whole frame header.
fn header_complete(h: &[u8]) -> Option<u64> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let (len_bytes, len) = match h[1] & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let need = 2 + len_bytes + if masked { 4 } else { 0 };
    if h.len() < need {
        return None;
    }
    Some(len.unwrap_or_else(|| {
        h[2..2 + len_bytes]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn frames_pass_whole_whatever_the_reads() {
        let stream: Vec<u8> = [
            frame(5, true),
            frame(300, true),
            frame(70_000, false),
            frame(0, false),
        ]
        .concat();
        for chunk in [1, 3, 7, 1000, stream.len()] {
            let mut d = Direction::new(100_000);
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                let (o, over) = d.scan(piece);
                assert!(!over);
                out.extend(o);
            }
            assert_eq!(out, stream, "reads of {chunk}");
        }
    }

    #[test]
    fn an_oversized_frame_is_caught_at_its_header() {
        let stream: Vec<u8> = [frame(10, true), frame(2000, true)].concat();
        for chunk in [1, 5, stream.len()] {
            let mut d = Direction::new(1000);
            let mut out = Vec::new();
            let mut over = false;
            for piece in stream.chunks(chunk) {
                let (o, o_over) = d.scan(piece);
                out.extend(o);
                if o_over {
                    over = true;
                    break;
                }
            }
            assert!(over);
            // Only the first, small frame went on.
            assert_eq!(out, frame(10, true), "reads of {chunk}");
        }
    }
}
