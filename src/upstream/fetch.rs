//! Requests the gateway makes on its own behalf (a JWKS download, a token
//! introspection). Answers are small documents: read whole, with a size
//! bound and a deadline.
//!
//! `http` endpoints use the same keep-alive pool as proxied calls. `https`
//! ones connect with rustls, verifying the server against the system's
//! trust roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` override them), and keep
//! their connections alive too.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request, Uri, response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::time::Instant;

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
    transport: Transport,
}

enum Transport {
    Plain(Pool),
    Tls {
        server_name: ServerName<'static>,
        idle: Mutex<Vec<http1::SendRequest<RequestBody>>>,
    },
}

impl Endpoint {
    /// Checks `url`: `http` or `https`, with a host.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (authority, uri) = super::parse_url(url)?;
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let transport = if uri.scheme_str() == Some("https") {
            let host = authority.host().trim_start_matches('[').trim_end_matches(']');
            let server_name = ServerName::try_from(host.to_string())
                .map_err(|_| format!("`{url}`: `{host}` is not a valid TLS server name"))?;
            Transport::Tls {
                server_name,
                idle: Mutex::new(Vec::new()),
            }
        } else {
            Transport::Plain(Pool::new(
                authority.clone(),
                PoolConfig {
                    http2: false,
                    connect_timeout: CONNECT_TIMEOUT,
                    write_timeout: Duration::from_secs(5),
                    max_idle: MAX_IDLE,
                    idle_timeout: Duration::from_secs(60),
                },
            ))
        };
        Ok(Endpoint {
            url: url.to_string(),
            authority,
            path,
            transport,
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
            match &self.transport {
                Transport::Plain(pool) => {
                    let (resp, lease) = pool
                        .send(req, deadline)
                        .await
                        .map_err(|e| format!("{:?}", e.error))?;
                    let answer = read(resp).await?;
                    pool.release(lease);
                    Ok::<_, String>(answer)
                }
                Transport::Tls { server_name, idle } => {
                    let pooled = idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let mut sender = match pooled {
                        Some(s) if !s.is_closed() => s,
                        _ => self.dial_tls(server_name).await?,
                    };
                    sender.ready().await.map_err(|e| e.to_string())?;
                    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                    let answer = read(resp).await?;
                    let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
                    if !sender.is_closed() && idle.len() < MAX_IDLE {
                        idle.push(sender);
                    }
                    Ok(answer)
                }
            }
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(format!("{}: {e}", self.url)),
            Err(_) => Err(format!("{}: timed out", self.url)),
        }
    }

    async fn dial_tls(
        &self,
        server_name: &ServerName<'static>,
    ) -> Result<http1::SendRequest<RequestBody>, String> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(client_config()?)
            .connect(server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// The answer, read whole (at most [`MAX_ANSWER`] bytes).
async fn read(resp: http::Response<Incoming>) -> Result<(response::Parts, Bytes), String> {
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((parts, body))
}

/// The TLS client settings: TLS 1.2 and 1.3, the system's trust roots,
/// loaded once.
fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!("no trust roots found ({:?})", found.errors));
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
}
