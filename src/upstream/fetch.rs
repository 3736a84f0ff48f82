//! Requests the gateway makes on its own behalf (a JWKS download, a token
//! introspection), over the same keep-alive pool as proxied calls. Answers
//! are small documents: read whole, with a size bound and a deadline.

use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request, Uri, response};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::{Pool, PoolConfig};
use crate::body::RequestBody;

/// Answers larger than this are refused.
const MAX_ANSWER: usize = 1 << 20;

/// An `http://host:port/path` the gateway calls.
pub struct Endpoint {
    pub url: String,
    authority: Authority,
    path: PathAndQuery,
    pool: Pool,
}

impl Endpoint {
    /// Checks `url`: `http` with a host (`https` needs TLS to upstreams,
    /// which is not built yet).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (authority, uri) = super::parse_http_url(url)?;
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let pool = Pool::new(
            authority.clone(),
            PoolConfig {
                http2: false,
                connect_timeout: Duration::from_secs(3),
                write_timeout: Duration::from_secs(5),
                max_idle: 16,
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
        let (resp, lease) = self
            .pool
            .send(req, deadline)
            .await
            .map_err(|e| format!("{}: {e:?}", self.url))?;
        let (parts, body) = resp.into_parts();
        let read = http_body_util::Limited::new(body, MAX_ANSWER).collect();
        let body = match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => return Err(format!("{}: reading the answer: {e}", self.url)),
            Err(_) => return Err(format!("{}: timed out", self.url)),
        };
        self.pool.release(lease);
        Ok((parts, body))
    }
}
