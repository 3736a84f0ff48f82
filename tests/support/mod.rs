//! Test harness: the real `portcullis` binary on 127.0.0.1:0, real upstream
//! servers (hyper, HTTP/1.1 + h2c), real clients (HTTP/1.1, h2c, raw TCP).
#![allow(dead_code)]

pub mod keys;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A running gateway process. Killed on drop.
pub struct Gateway {
    child: Option<Child>,
    pub addrs: Vec<SocketAddr>,
    /// The admin API's address, when the config has an `admin` section.
    pub admin: Option<SocketAddr>,
    pub config_path: std::path::PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Lines on stdout (the access log, by default).
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// Whether dropping this removes the config file's directory.
    owns_config: bool,
    /// Stdout left unread (a stuck log reader), when asked for.
    _unread_stdout: Option<std::process::ChildStdout>,
}

/// Writes `yaml` to `config.yaml` in a directory of its own (the gateway
/// watches the file's directory).
pub fn write_config(yaml: &str) -> std::path::PathBuf {
    let path = test_dir("").join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A new, empty directory under the system's temp dir; `tag` goes in its name.
pub fn test_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-test-{}-{tag}{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

/// Runs `portcullis COMMAND -c FILE` on `yaml`, expects exit code 1, and
/// returns what it printed on stderr.
pub fn fails(command: &str, yaml: &str) -> String {
    let path = write_config(yaml);
    let out = Command::new(bin())
        .args([command, "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

/// Runs `command` on `yaml` like [`fails`], and checks that each of
/// `expected` is in its error output (each names a field and says why).
pub fn fails_with(command: &str, yaml: &str, expected: &[&str]) {
    let err = fails(command, yaml);
    for e in expected {
        assert!(err.contains(e), "{e} in\n{err}");
    }
}

impl Gateway {
    /// Starts the gateway; listeners in `yaml` should use `127.0.0.1:0`.
    pub fn start(yaml: &str) -> Gateway {
        Gateway::start_with(yaml, &[])
    }

    /// Starts the gateway with extra `run` arguments.
    pub fn start_with(yaml: &str, args: &[&str]) -> Gateway {
        let mut gw = Gateway::start_file(&write_config(yaml), args);
        gw.owns_config = true;
        gw
    }

    /// Starts the gateway with extra environment variables.
    pub fn start_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let mut gw = Gateway::start_opts(&write_config(yaml), &[], true, env);
        gw.owns_config = true;
        gw
    }

    /// Starts the gateway with a stdout nobody reads: once the pipe is
    /// full, writes to it block (a stuck access log consumer).
    pub fn start_stuck_stdout(yaml: &str) -> Gateway {
        let mut gw = Gateway::start_opts(&write_config(yaml), &[], false, &[]);
        gw.owns_config = true;
        gw
    }

    /// Starts the gateway on an existing config file (kept on drop).
    pub fn start_file(config_path: &std::path::Path, args: &[&str]) -> Gateway {
        Gateway::start_opts(config_path, args, true, &[])
    }

    fn start_opts(
        config_path: &std::path::Path,
        args: &[&str],
        read_stdout: bool,
        env: &[(&str, &str)],
    ) -> Gateway {
        let mut child = Command::new(bin())
            .envs(env.iter().copied())
            .args(["run", "-c"])
            .arg(config_path)
            .args(["--log-format", "json", "--log-level", "debug", "--workers", "2"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portcullis");
        let stderr = child.stderr.take().unwrap();
        let stdout_pipe = child.stdout.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stdout2 = stdout.clone();
        let mut unread = None;
        if read_stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout_pipe).lines() {
                    let Ok(line) = line else { break };
                    stdout2.lock().unwrap().push(line);
                }
            });
        } else {
            unread = Some(stdout_pipe);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let logs2 = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"listening\"")
                    || line.contains("admin API listening")
                    || line.contains("config loaded")
                {
                    let _ = tx.send(line.clone());
                }
                logs2.lock().unwrap().push(line);
            }
        });
        let mut addrs = Vec::new();
        let mut admin = None;
        loop {
            let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
                panic!("gateway did not start; logs: {:?}", logs.lock().unwrap());
            });
            if line.contains("config loaded") {
                break;
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let addr = v["address"].as_str().unwrap().parse().unwrap();
            if line.contains("admin API listening") {
                admin = Some(addr);
            } else {
                addrs.push(addr);
            }
        }
        Gateway {
            child: Some(child),
            addrs,
            admin,
            config_path: config_path.to_path_buf(),
            logs,
            stdout,
            owns_config: false,
            _unread_stdout: unread,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// `GET` an admin endpoint with the admin token `token`.
    pub async fn admin_get(&self, path: &str, token: &str) -> Resp {
        self.admin_send("GET", path, token, "").await
    }

    /// Calls an admin endpoint with the admin token `token`.
    pub async fn admin_send(&self, method: &str, path: &str, token: &str, body: &str) -> Resp {
        send(
            &client_h1(),
            req(method, &self.admin_url(path))
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
    }

    /// The admin API's `/metrics` text, with the admin token `token`.
    pub async fn admin_metrics(&self, token: &str) -> String {
        String::from_utf8_lossy(&self.admin_get("/metrics", token).await.body).into_owned()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{}",
            self.admin.expect("the config has an admin section"),
            path
        )
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Waits for the process to exit (after a signal sent earlier).
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }

    /// Sends a signal (`HUP`, `TERM`) to the process.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().unwrap();
        Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether a log line containing `needle` has been seen.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.owns_config
            && let Some(dir) = self.config_path.parent()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// A real HTTP upstream on 127.0.0.1:0 (HTTP/1.1 and h2c). Paths:
/// `/delay/MS` (`?json`: then the echo), `/status/CODE`, `/bytes/N` (streamed in 1 KiB chunks),
/// `/big-header/N` (an `x-big` field of N bytes),
/// `/slow-body/MS` (headers now, body after MS), anything else echoes the
/// request as JSON. Every answer carries `x-upstream: NAME`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub requests: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    pub concurrent: Arc<AtomicUsize>,
    pub max_concurrent: Arc<AtomicUsize>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Upstream::serve(name, None).await
    }

    /// The same over TLS with `config` (its ALPN decides h2 or HTTP/1.1).
    pub async fn start_tls(name: &str, config: Arc<rustls::ServerConfig>) -> Upstream {
        Upstream::serve(name, Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn serve(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let concurrent = Arc::new(AtomicUsize::new(0));
        let max_concurrent = Arc::new(AtomicUsize::new(0));
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let state = (
            name.to_string(),
            requests.clone(),
            concurrent.clone(),
            max_concurrent.clone(),
        );
        let conns = connections.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop_rx.changed() => return,
                    r = listener.accept() => r.unwrap(),
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(upstream_answer(req, state).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            requests,
            connections,
            concurrent,
            max_concurrent,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Name, requests seen, requests in progress, most in progress at once.
type UpState = (String, Arc<Mutex<Vec<Seen>>>, Arc<AtomicUsize>, Arc<AtomicUsize>);

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream_answer(
    req: Request<Incoming>,
    (name, requests, concurrent, max_concurrent): UpState,
) -> Response<UpBody> {
    let now = concurrent.fetch_add(1, Ordering::SeqCst) + 1;
    max_concurrent.fetch_max(now, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        // An aborted body is not a request this upstream "saw".
        concurrent.fetch_sub(1, Ordering::SeqCst);
        let mut r = Response::new(Full::new(Bytes::from("incomplete body")).boxed());
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let seen = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: format!("{:?}", parts.version),
        headers: parts.headers.clone(),
        body_len: body.len(),
    };
    requests.lock().unwrap().push(seen.clone());
    let path = parts.uri.path().to_string();
    let mut parts_iter = path.trim_start_matches('/').splitn(2, '/');
    let (mut kind, arg) = (parts_iter.next().unwrap_or(""), parts_iter.next().unwrap_or(""));
    // `/delay/MS?json`: the echo below, after the delay.
    if kind == "delay" && parts.uri.query() == Some("json") {
        tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(0))).await;
        kind = "";
    }
    let mut resp = match kind {
        "delay" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(0))).await;
            Response::new(Full::new(Bytes::from("delayed")).boxed())
        }
        "big-header" => {
            // An answer whose head carries N bytes of one field.
            let mut r = Response::new(Full::new(Bytes::from("big")).boxed());
            let n: usize = arg.parse().unwrap_or(0);
            r.headers_mut().insert("x-big", "a".repeat(n).parse().unwrap());
            r
        }
        "status" => {
            let mut r = Response::new(Full::new(Bytes::from("status")).boxed());
            *r.status_mut() = StatusCode::from_u16(arg.parse().unwrap_or(500)).unwrap();
            r
        }
        "bytes" => {
            let n: usize = arg.parse().unwrap_or(0);
            let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..n.div_ceil(1024))
                .map(|i| Ok(Frame::data(Bytes::from(vec![b'x'; (n - i * 1024).min(1024)]))))
                .collect();
            Response::new(StreamBody::new(futures_stream(chunks)).boxed())
        }
        "trailers" => {
            // gRPC style: the status comes in trailers; says whether TE: trailers arrived.
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                vec![Ok(Frame::data(Bytes::from("ok"))), Ok(Frame::trailers(trailers))];
            let mut r = Response::new(StreamBody::new(futures_stream(frames)).boxed());
            let te = parts
                .headers
                .get("te")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            r.headers_mut()
                .insert("x-saw-te", te.parse().unwrap_or_else(|_| "none".parse().unwrap()));
            r
        }
        "slow-body" => {
            let ms: u64 = arg.parse().unwrap_or(0);
            let stream = async_stream_once(ms);
            Response::new(StreamBody::new(stream).boxed())
        }
        _ => {
            let mut headers = BTreeMap::new();
            for (k, v) in &parts.headers {
                headers
                    .entry(k.to_string())
                    .or_insert_with(Vec::new)
                    .push(v.to_str().unwrap_or("").to_string());
            }
            let json = serde_json::json!({
                "upstream": name,
                "method": seen.method,
                "uri": seen.uri,
                "headers": headers,
                "body_len": body.len(),
            });
            let mut r = Response::new(Full::new(Bytes::from(json.to_string())).boxed());
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
    };
    resp.headers_mut().insert("x-upstream", name.parse().unwrap());
    resp.headers_mut()
        .insert("connection", "keep-alive".parse().unwrap());
    resp.headers_mut()
        .insert("keep-alive", "timeout=30".parse().unwrap());
    concurrent.fetch_sub(1, Ordering::SeqCst);
    resp
}

fn futures_stream<T: Send + 'static>(items: Vec<T>) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::iter(items)
}

/// A body that arrives `ms` after the headers.
fn async_stream_once(ms: u64) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    futures_util::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Frame::data(Bytes::from("late body")))
    })
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    /// Checks an RFC 9457 problem answer and returns its body.
    pub fn problem(&self, status: u16, slug: &str) -> serde_json::Value {
        assert_eq!(
            self.status,
            status,
            "body: {:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), "application/problem+json");
        let v = self.json();
        assert_eq!(v["type"], format!("urn:portcullis:error:{slug}"));
        assert_eq!(v["status"], status);
        assert!(v["title"].is_string() && v["detail"].is_string());
        assert_eq!(v["request_id"], self.header("x-request-id"));
        v
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client_h1() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn client_h2() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Resp {
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Resp {
        status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Resp {
    send(&client_h1(), Request::get(url).body(Full::default()).unwrap()).await
}

/// POSTs `n` bytes.
pub async fn post_bytes(client: &TestClient, url: &str, n: usize) -> Resp {
    send(
        client,
        req("POST", url)
            .body(Full::new(Bytes::from(vec![b'a'; n])))
            .unwrap(),
    )
    .await
}

/// POSTs `body` to `url`, labelled `content_type` when given.
pub async fn post_as(url: &str, content_type: Option<&str>, body: &str) -> Resp {
    let mut b = req("POST", url);
    if let Some(t) = content_type {
        b = b.header("content-type", t);
    }
    send(
        &client_h1(),
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
    )
    .await
}

pub fn req(method: &str, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

/// Writes raw bytes on a new connection and reads until the server closes
/// it (or `wait` passes). Returns what came back and whether it was closed.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Sends `POST path` with a `mib` MiB body on a new connection, the body
/// streamed from a task of its own (it may stall or be refused), and reads
/// the answer until it contains `until`. Panics if the connection closes
/// first or nothing comes within 10 s. Returns what was read.
pub async fn upload_until(addr: SocketAddr, path: &str, mib: usize, until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        mib << 20
    );
    tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let chunk = vec![b'z'; 1 << 20];
        for _ in 0..mib {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap_or(0);
        assert!(
            n > 0,
            "closed before {until:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Polls until `f` holds (reloads and health checks are asynchronous), up to 10 s.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A config with one listener on 127.0.0.1:0, the given upstreams and routes.
pub fn config(upstreams: &str, routes: &str, extra: &str) -> String {
    format!(
        "version: 1\nserver:\n  listeners:\n    - name: public\n      address: 127.0.0.1:0\n{extra}\nupstreams:\n{upstreams}\nroutes:\n{routes}\n"
    )
}

/// An upstream entry with one target.
pub fn upstream(name: &str, up: &Upstream) -> String {
    format!("  - name: {name}\n    targets: [{{url: \"{}\"}}]\n", up.url())
}

/// A small HTTP/1.1 service on 127.0.0.1:0 (a JWKS endpoint, a token
/// introspection endpoint): each request, its body read whole, is answered
/// by `handler`. `hits` counts the requests.
pub struct Service {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Service {
    pub async fn start<F>(handler: F) -> Service
    where
        F: Fn(http::request::Parts, Bytes) -> Response<Full<Bytes>> + Send + Sync + 'static,
    {
        Service::serve(handler, None).await
    }

    /// The same over TLS, with a certificate of `tls`'s CA (`https_url`).
    pub async fn start_tls<F>(tls: &TestTls, handler: F) -> Service
    where
        F: Fn(http::request::Parts, Bytes) -> Response<Full<Bytes>> + Send + Sync + 'static,
    {
        Service::serve(handler, Some(tokio_rustls::TlsAcceptor::from(tls.server.clone()))).await
    }

    async fn serve<F>(handler: F, tls: Option<tokio_rustls::TlsAcceptor>) -> Service
    where
        F: Fn(http::request::Parts, Bytes) -> Response<Full<Bytes>> + Send + Sync + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop_rx.changed() => return,
                    r = listener.accept() => r.unwrap(),
                };
                let (handler, counter) = (handler.clone(), counter.clone());
                let mut conn_stop = stop_rx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (handler, counter) = (handler.clone(), counter.clone());
                        async move {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            Ok::<_, Infallible>(handler(parts, body))
                        }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    // Stopping the service closes its kept-alive connections too.
                    match tls {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = conn_stop.changed() => {}
                            }
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = conn_stop.changed() => {}
                            }
                        }
                    }
                });
            }
        });
        Service { addr, hits, stop }
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A real `redis-server` on a free 127.0.0.1 port, no persistence. Killed
/// on drop; `stop` and `start` again on the same port to test outages.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(Vec::new())
    }

    fn start_with(extra: Vec<String>) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = RedisServer {
            port,
            child: None,
            extra,
        };
        r.resume();
        r
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                // DEBUG SLEEP: a Redis that hangs, for timeout tests.
                "--enable-debug-command",
                "yes",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if self.try_cmd(&["PING"]).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn try_cmd(&self, args: &[&str]) -> Option<redis::Value> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).ok()
    }

    /// Runs one command (blocking client).
    pub fn cmd(&self, args: &[&str]) -> redis::Value {
        self.try_cmd(args)
            .unwrap_or_else(|| panic!("redis command {args:?} failed"))
    }

    /// How many times `command` has run (`INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let redis::Value::BulkString(info) = self.cmd(&["INFO", "commandstats"]) else {
            return 0;
        };
        let info = String::from_utf8_lossy(&info).into_owned();
        let prefix = format!("cmdstat_{}:calls=", command.to_lowercase());
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real Redis Cluster of `n` masters (no replicas) on free 127.0.0.1
/// ports, made with `redis-cli --cluster create`, every slot covered.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        let dir = test_dir("cluster-");
        let nodes: Vec<RedisServer> = (0..n)
            .map(|i| {
                RedisServer::start_with(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &dir.join(format!("nodes-{i}.conf")).display().to_string(),
                        "--dir",
                        &dir.display().to_string(),
                    ]
                    .map(String::from)
                    .to_vec(),
                )
            })
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is installed (with redis-server)");
        assert!(status.success(), "redis-cli --cluster create failed");
        for node in &nodes {
            for attempt in 0.. {
                let info = match node.cmd(&["CLUSTER", "INFO"]) {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    redis::Value::VerbatimString { text, .. } => text,
                    other => format!("{other:?}"),
                };
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(attempt < 200, "the cluster did not become ready: {info}");
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        RedisCluster { nodes }
    }

    /// The `redis.cluster.nodes` list.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }
}

/// A test certificate authority (rcgen), its certificate in `ca_file`.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub ca_file: std::path::PathBuf,
    dir: std::path::PathBuf,
}

/// A certificate a [`TestCa`] signed, and its key, in files and in memory.
pub struct Issued {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    pub der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Issued {
    pub fn key(&self) -> rustls::pki_types::PrivateKeyDer<'static> {
        rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }
}

impl TestCa {
    /// A TLS server presenting `cert` (and this CA), with ALPN `alpn`, and
    /// client certificates from `clients` required when given.
    pub fn server(
        &self,
        cert: &Issued,
        alpn: &[&str],
        clients: Option<&TestCa>,
    ) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der()).unwrap();
                builder.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap(),
                )
            }
        };
        let mut config = builder
            .with_single_cert(vec![cert.der.clone(), self.der()], cert.key())
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }

    pub fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = test_dir("ca-");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, issuer.pem()).unwrap();
        TestCa { issuer, ca_file, dir }
    }

    /// A certificate for `names` (SANs; IP addresses or DNS names) with
    /// subject CN `cn`, written to `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, cn: &str, names: &[&str]) -> Issued {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = self.dir.join(format!("{file}.pem"));
        let key_file = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Issued {
            cert_file,
            key_file,
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    pub fn der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A TLS client trusting this CA, with `client` as its certificate if
    /// given, offering `alpn`.
    pub fn client(&self, client: Option<&Issued>, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match client {
            Some(c) => builder
                .with_client_auth_cert(vec![c.der.clone()], c.key())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

/// What a TLS exchange showed: the answer, the server's certificate, the
/// protocol ALPN chose, and whether the session was resumed.
pub struct TlsExchange {
    pub resp: Resp,
    pub server_cert: rustls::pki_types::CertificateDer<'static>,
    pub alpn: Option<String>,
    pub resumed: bool,
}

/// One `GET path` over a new TLS connection to `addr`, asking for
/// `server_name` (SNI), over HTTP/2 when ALPN picks `h2`.
pub async fn tls_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    path: &str,
) -> Result<TlsExchange, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let server_cert = conn.peer_certificates().unwrap()[0].clone();
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let req = Request::get(format!("https://{server_name}{path}"))
        .header("host", server_name)
        .body(Full::<Bytes>::default())
        .unwrap();
    let io = TokioIo::new(tls);
    let resp = if alpn.as_deref() == Some("h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = path.parse().unwrap();
        sender.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(TlsExchange {
        resp: Resp {
            status,
            headers: parts.headers,
            body,
        },
        server_cert,
        alpn,
        resumed,
    })
}

/// A test CA, and a server certificate it signed for 127.0.0.1 and
/// `localhost`. `ca_file` is the CA in PEM (for `SSL_CERT_FILE`).
pub struct TestTls {
    pub ca_file: std::path::PathBuf,
    pub server: Arc<rustls::ServerConfig>,
}

impl TestTls {
    pub fn new() -> TestTls {
        let ca = TestCa::new("Portcullis test CA");
        let leaf = ca.issue("server", "server", &["127.0.0.1", "localhost"]);
        TestTls {
            server: ca.server(&leaf, &[], None),
            ca_file: ca.ca_file.clone(),
        }
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.ca_file).unwrap()
    }
}
