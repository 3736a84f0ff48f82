//! Requests the gateway makes on its own behalf (a JWKS download, a token
//! introspection). Answers are small documents: read whole, with a size
//! bound and a deadline.
//!
//! They go through the same keep-alive pool as proxied calls; `https`
//! endpoints are verified against the system's trust roots
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` override them).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request, Uri, response};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::pool::PoolTls;
use super::{Pool, PoolConfig};
use crate::body::RequestBody;

/// Answers larger than this are refused.
const MAX_ANSWER: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 16;

/// An `http(s)://host:port/path` the gateway calls.
pub struct Endpoint {
    pub url: String,
    authority: Authority,
    path: PathAndQuery,
    pool: Pool,
}

impl Endpoint {
    /// Checks `url`: `http` or `https`, with a host.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (authority, uri) = super::parse_url(url)?;
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let tls = if uri.scheme_str() == Some("https") {
            Some(PoolTls {
                client: system_tls()?,
                server_name: super::server_name(&authority).map_err(|e| format!("`{url}`: {e}"))?,
            })
        } else {
            None
        };
        let pool = Pool::new(
            authority.clone(),
            PoolConfig {
                http2: false,
                tls,
                connect_timeout: CONNECT_TIMEOUT,
                write_timeout: Duration::from_secs(5),
                max_idle: MAX_IDLE,
                idle_timeout: Duration::from_secs(60),
            },
        );
        Ok(Endpoint {
            url: url.to_string(),
            authority,
            path,
            pool,
        })
    }

    /// A request to this endpoint, `Host` set.
    pub fn request(&self, method: Method) -> http::request::Builder {
        let host =
            HeaderValue::from_str(self.authority.as_str()).expect("an authority is a valid header value");
        Request::builder()
            .method(method)
            .uri(Uri::from(self.path.clone()))
            .header(http::header::HOST, host)
    }

    /// Sends `req` and reads the answer whole before `timeout` elapses.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
        timeout: Duration,
    ) -> Result<(response::Parts, Bytes), String> {
        let deadline = Instant::now() + timeout;
        let exchange = async {
            let resp = self
                .pool
                .send(Box::new(req), deadline)
                .await
                .map_err(|e| format!("{:?}", e.error))?;
            read(resp).await
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(format!("{}: {e}", self.url)),
            Err(_) => Err(format!("{}: timed out", self.url)),
        }
    }
}

/// The answer, read whole (at most [`MAX_ANSWER`] bytes).
async fn read(resp: http::Response<super::Body>) -> Result<(response::Parts, Bytes), String> {
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((parts, body))
}

/// The TLS client settings: TLS 1.2 and 1.3, the system's trust roots,
/// HTTP/1.1; loaded once.
fn system_tls() -> Result<crate::tls::UpstreamTls, String> {
    static CONFIG: OnceLock<Result<crate::tls::UpstreamTls, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| crate::tls::client_config(&Default::default(), &[b"http/1.1"]).map_err(|(_, e)| e))
        .clone()
}
