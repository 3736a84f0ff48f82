//! Request hygiene and the headers the gateway sets: hop-by-hop removal,
//! `X-Forwarded-*` (honouring `trusted_proxies`), the request id and the W3C
//! `traceparent`. Headers the gateway sets are removed from the client's
//! request first, and a client's `Connection` header cannot remove them.

use std::net::IpAddr;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};

use crate::config::Cidr;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static VIA: HeaderName = HeaderName::from_static("via");

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == TE
        || name == UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == http::header::PROXY_AUTHORIZATION
        || name == http::header::PROXY_AUTHENTICATE
        || name == http::header::TRAILER
}

/// Fields a `Connection` header may not nominate for removal: the
/// forwarded chain a trusted proxy sent and the trace context. Dropping
/// `X-Forwarded-For` that way would leave the trusted proxy's own address
/// as the client's (Traefik CVE-2024-45410).
fn kept_despite_connection(name: &HeaderName) -> bool {
    proxy_only(name.as_str()) || name == TRACEPARENT
}

/// Removes the client's headers that spell one of `owned` with `_` for
/// `-` (`X_Forwarded_For`, `x-forwarded_for`). CGI-style servers (PHP,
/// WSGI, Rack) read both spellings as `HTTP_X_FORWARDED_FOR`, so the
/// client's could stand in for the one the gateway sets. `owned` gets the
/// name with dashes.
pub fn drop_underscore_aliases(headers: &mut HeaderMap, owned: impl Fn(&str) -> bool) {
    // One pass over the names; with none to drop, the vector never allocates.
    let aliases: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_') && owned(&k.as_str().replace('_', "-")))
        .cloned()
        .collect();
    for name in aliases {
        headers.remove(name);
    }
}

/// What one pass over a client's field names found, so the rules that
/// look for rare names cost one pass between them.
#[derive(Default, Clone, Copy)]
pub struct Names {
    /// A name with `_` (see [`drop_underscore_aliases`]).
    pub underscore: bool,
    /// A field only a proxy may send (see [`set_forwarded`]).
    pub proxy_only: bool,
    /// `tracestate`, dropped when the trace is not continued.
    pub tracestate: bool,
    /// `traceparent`: only then is there a trace to continue (most
    /// requests have none, and a lookup hashes the name).
    pub traceparent: bool,
}

pub fn scan_names(headers: &HeaderMap) -> Names {
    let mut names = Names::default();
    for k in headers.keys() {
        let s = k.as_str();
        names.underscore |= s.bytes().any(|b| b == b'_');
        names.proxy_only |= proxy_only(s);
        names.tracestate |= k == TRACESTATE;
        names.traceparent |= k == TRACEPARENT;
    }
    names
}

/// What the gateway itself sets on every request (the forwarded chain,
/// the request id, the trace context) or only a trusted proxy may send.
pub fn set_by_the_gateway(name: &str, request_id_header: &HeaderName) -> bool {
    name == TRACEPARENT || name == TRACESTATE || name == request_id_header.as_str() || proxy_only(name)
}

/// Fields only a proxy sets, which upstream frameworks believe: the
/// client's address (`X-Real-IP`, `True-Client-IP`, ...), the scheme,
/// port and prefix it used (`X-Forwarded-*`: Spring, Rails and Django
/// build redirects from them; Traefik CVE-2024-52003), and the path it
/// asked for (`X-Original-URL`, `X-Rewrite-URL`: Symfony and IIS route by
/// them, past the gateway's path rules). From a peer outside
/// `trusted_proxies` they are removed.
fn proxy_only(name: &str) -> bool {
    // Most names start otherwise: decided on the first byte.
    if !matches!(name.as_bytes().first(), Some(b'x' | b'f' | b't' | b'c')) {
        return false;
    }
    name.starts_with("x-forwarded-")
        || matches!(
            name,
            "x-real-ip"
                | "forwarded"
                | "x-client-ip"
                | "true-client-ip"
                | "cf-connecting-ip"
                | "fastly-client-ip"
                | "x-cluster-client-ip"
                | "x-original-url"
                | "x-rewrite-url"
        )
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the
/// `Connection` header names (but not [`kept_despite_connection`] ones).
/// Returns whether the message had `TE: trailers` (gRPC needs it passed on
/// to HTTP/2 upstreams).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // Most messages carry none: one pass over the names, without hashing.
    if !headers.keys().any(is_hop_by_hop) {
        return false;
    }
    let te_trailers = headers.get_all(TE).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
    });
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|name| !kept_despite_connection(name))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &CONNECTION,
        &TRANSFER_ENCODING,
        &TE,
        &UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ] {
        headers.remove(name);
    }
    headers.remove(http::header::PROXY_AUTHORIZATION);
    headers.remove(http::header::PROXY_AUTHENTICATE);
    headers.remove(http::header::TRAILER);
    te_trailers
}

pub fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    !trusted.is_empty() && trusted.iter().any(|c| c.contains(&ip))
}

/// The client's address: the peer, or, when the peer is a trusted proxy,
/// the rightmost `X-Forwarded-For` entry that is not a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut leftmost = peer;
    let entries = headers.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>();
    for v in entries.iter().rev() {
        for item in v.to_str().unwrap_or("").rsplit(',') {
            let Some(ip) = parse_xff_item(item.trim()) else {
                return leftmost;
            };
            if !is_trusted(ip, trusted) {
                return ip;
            }
            leftmost = ip;
        }
    }
    leftmost
}

fn parse_xff_item(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    // `[v6]:port` or `v4:port`
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    s.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

/// Sets `X-Forwarded-For/Proto/Host`. From an untrusted peer, whatever the
/// client sent is replaced; from a trusted one, the peer is appended to its chain.
/// The peer's address as a header value; made once per connection.
pub fn ip_header_value(ip: IpAddr) -> HeaderValue {
    match crate::config::types::canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let n = write_ipv4(&mut buf, v4);
            HeaderValue::from_bytes(&buf[..n]).expect("digits and dots")
        }
        IpAddr::V6(v6) => HeaderValue::from_str(&v6.to_string()).expect("an address is a valid header value"),
    }
}

/// `peer_value` is the peer's [`ip_header_value`].
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer_value: &HeaderValue,
    peer_trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
    names: Names,
) {
    let peer_value = peer_value.clone();
    let xff = if peer_trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let prior: Vec<&[u8]> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let mut chain = prior.join(&b", "[..]);
        chain.extend_from_slice(b", ");
        chain.extend_from_slice(peer_value.as_bytes());
        HeaderValue::from_maybe_shared(bytes::Bytes::from(chain)).unwrap_or(peer_value)
    } else {
        peer_value
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    if !peer_trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !peer_trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        match host.cloned() {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST.clone(), h);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    // Backends may believe these; only a trusted proxy may send them. One
    // pass over the names, since they are rarely there.
    let set_above = |k: &HeaderName| k == X_FORWARDED_FOR || k == X_FORWARDED_PROTO || k == X_FORWARDED_HOST;
    let spoofed = |k: &HeaderName| proxy_only(k.as_str()) && !set_above(k);
    if !peer_trusted && names.proxy_only {
        let names: Vec<HeaderName> = headers.keys().filter(|k| spoofed(k)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// Writes `ip` in dotted form into `buf`; returns the length.
fn write_ipv4(buf: &mut [u8; 15], ip: std::net::Ipv4Addr) -> usize {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    n
}

/// A new random request id: 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    crate::hex::encode_into(&mut buf, &fastrand::u128(..).to_be_bytes());
    crate::http1::header_value(Bytes::copy_from_slice(&buf)).expect("hex is a valid header value")
}

/// Accepts a client's request id only if it is short and printable.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// The `traceparent` to send upstream: the client's trace continued with a
/// new parent id (this hop) and its sampling decision, or a new trace if it
/// sent none or an invalid one, sampled as `new_sampled` says.
pub fn next_traceparent(incoming: Option<&HeaderValue>, new_sampled: bool) -> HeaderValue {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-01";
    if !new_sampled {
        buf[54] = b'0';
    }
    match incoming
        .map(HeaderValue::as_bytes)
        .filter(|b| valid_traceparent(b))
    {
        Some(b) => {
            buf[3..35].copy_from_slice(&b[3..35]);
            buf[53..55].copy_from_slice(&b[53..55]);
        }
        None => crate::hex::encode_into(&mut buf[3..35], &nonzero(fastrand::u128).to_be_bytes()),
    }
    crate::hex::encode_into(&mut buf[36..52], &nonzero(fastrand::u64).to_be_bytes());
    crate::http1::header_value(Bytes::copy_from_slice(&buf)).expect("hex is a valid header value")
}

/// A random id other than zero (W3C Trace Context: all-zero ids are
/// invalid). The full range redrawn on zero, not `1..`: fastrand maps a
/// range with a division, a 128-bit one in software for trace ids.
fn nonzero<T: Default + PartialEq>(draw: impl Fn(std::ops::RangeFull) -> T) -> T {
    loop {
        let id = draw(..);
        if id != T::default() {
            return id;
        }
    }
}

/// The sampled bit of a (valid) `traceparent`'s flags.
pub fn is_sampled(traceparent: &[u8]) -> bool {
    traceparent
        .get(54)
        .and_then(|c| (*c as char).to_digit(16))
        .is_some_and(|d| d & 1 == 1)
}

/// W3C Trace Context §4.3: version `00` is exactly 55 bytes; a later
/// version (not `ff`) is read by the same first four fields when what
/// follows them starts with `-`, and continued as version `00`.
pub fn valid_traceparent(b: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    let version_fits = match b.get(..2) {
        Some(b"00") => b.len() == 55,
        Some(v) => hex(v) && v != b"ff" && (b.len() == 55 || b.get(55) == Some(&b'-')),
        None => false,
    };
    version_fits
        && b.len() >= 55
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[3..35])
        && hex(&b[36..52])
        && hex(&b[53..55])
        && b[3..35].iter().any(|c| *c != b'0')
        && b[36..52].iter().any(|c| *c != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> Vec<Cidr> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    #[test]
    fn client_ip_is_rightmost_untrusted() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.5".parse().unwrap());
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &trusted()),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        // An untrusted peer cannot claim another address.
        assert_eq!(
            client_ip("8.8.8.8".parse().unwrap(), &h, &trusted()),
            "8.8.8.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &HeaderMap::new(), &trusted()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv4_formatting() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.9.199",
        ] {
            let mut buf = [0u8; 15];
            let n = write_ipv4(&mut buf, ip.parse().unwrap());
            assert_eq!(&buf[..n], ip.as_bytes());
        }
    }

    #[test]
    fn xff_replaced_or_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("x-real-ip", "6.6.6.6".parse().unwrap());
        let names = scan_names(&h);
        set_forwarded(
            &mut h,
            &ip_header_value("8.8.8.8".parse().unwrap()),
            false,
            "http",
            Some(&HeaderValue::from_static("api.example.com")),
            names,
        );
        assert_eq!(h["x-forwarded-for"], "8.8.8.8");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert!(h.get("x-real-ip").is_none());
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        let names = scan_names(&h);
        set_forwarded(
            &mut h,
            &ip_header_value("10.0.0.1".parse().unwrap()),
            true,
            "http",
            None,
            names,
        );
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.0.0.1");
    }

    #[test]
    fn connection_cannot_hide_gateway_headers_and_hop_by_hop_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "x-custom, keep-alive".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(strip_hop_by_hop(&mut h), "TE: trailers is reported");
        assert!(h.is_empty(), "{h:?}");

        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            "X-Forwarded-For, x-forwarded-prefix, forwarded, traceparent"
                .parse()
                .unwrap(),
        );
        for name in [
            "x-forwarded-for",
            "x-forwarded-prefix",
            "forwarded",
            "traceparent",
        ] {
            h.insert(name, "1".parse().unwrap());
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 4, "only Connection goes: {h:?}");
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn traceparent_propagates_or_starts() {
        let incoming = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let next = next_traceparent(Some(&incoming), true);
        let s = next.to_str().unwrap();
        assert!(s.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(s.ends_with("-01"));
        assert_ne!(&s[36..52], "00f067aa0ba902b7");
        let fresh = next_traceparent(Some(&HeaderValue::from_static("garbage")), true);
        assert!(valid_traceparent(fresh.as_bytes()));
        assert_ne!(
            &fresh.to_str().unwrap()[3..35],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(next_traceparent(None, false).to_str().unwrap().ends_with("-00"));
        // The caller's decision wins over ours.
        assert!(
            next_traceparent(Some(&incoming), false)
                .to_str()
                .unwrap()
                .ends_with("-01")
        );
    }

    #[test]
    fn underscore_spellings_of_gateway_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for name in [
            "x_forwarded_for",
            "x-forwarded_host",
            "x_request_id",
            "x_real_ip",
            "api_key",
            "x-custom",
        ] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
        }
        let request_id = HeaderName::from_static("x-request-id");
        drop_underscore_aliases(&mut h, |n| set_by_the_gateway(n, &request_id));
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["api_key", "x-custom"]);
    }

    #[test]
    fn later_traceparent_versions_are_continued_as_version_00() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for (value, valid) in [
            (format!("00-{id}"), true),
            (format!("01-{id}"), true),
            (format!("cc-{id}-what-comes-later"), true),
            // Version 00 has exactly four fields.
            (format!("00-{id}-extra"), false),
            (format!("ff-{id}"), false),
            (format!("01-{id}x"), false),
            (format!("0A-{id}"), false),
            (format!("00-{}", id.to_uppercase()), false),
        ] {
            assert_eq!(valid_traceparent(value.as_bytes()), valid, "{value}");
        }
        let later = HeaderValue::from_str(&format!("cc-{id}-later")).unwrap();
        let next = next_traceparent(Some(&later), true);
        assert!(
            next.to_str()
                .unwrap()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert_eq!(next.len(), 55);
    }

    /// Whether a valid `traceparent` is flagged sampled.
    #[test]
    fn sampled_flag() {
        assert!(is_sampled(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_sampled(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        ));
        assert!(is_sampled(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
        ));
    }
}
