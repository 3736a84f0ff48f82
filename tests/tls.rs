//! TLS listeners (SPEC `server.listeners[].tls`) through the real binary:
//! certificates chosen by SNI, ALPN h2 and http/1.1, TLS 1.2 and 1.3,
//! session resumption, client certificates (mTLS, required or optional)
//! naming consumers, and certificate files read again on reload.

mod support;

use std::sync::Arc;

use support::*;

/// A gateway with one TLS listener (certificates `a.test` and `*.b.test`)
/// and the given client_auth and consumers; its upstream echoes requests.
struct Setup {
    gw: Gateway,
    ca: TestCa,
    a: Issued,
    b: Issued,
    _up: Upstream,
}

async fn setup(client_auth: &str, consumers: &str) -> Setup {
    let up = Upstream::start("u").await;
    let ca = TestCa::new("server CA");
    let a = ca.issue("a", "a.test", &["a.test"]);
    let b = ca.issue("b", "b.test", &["*.b.test"]);
    let yaml = format!(
        "version: 1\nserver:\n  listeners:\n    - name: tls\n      address: 127.0.0.1:0\n      tls:\n        certificates:\n          - {{cert: \"{}\", key: \"{}\", server_names: [a.test]}}\n          - {{cert: \"{}\", key: \"{}\", server_names: [\"*.b.test\"]}}\n{client_auth}\
         upstreams:\n{}routes:\n  - name: open\n    match: {{paths: [/open]}}\n    upstream: u\n  - name: members\n    match: {{paths: [/members]}}\n    upstream: u\n    plugins:\n      acl: {{allow: [members]}}\n{consumers}",
        a.cert_file.display(),
        a.key_file.display(),
        b.cert_file.display(),
        b.key_file.display(),
        upstream("u", &up),
    );
    Setup {
        gw: Gateway::start(&yaml),
        ca,
        a,
        b,
        _up: up,
    }
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let s = setup("", "").await;
    let h1 = s.ca.client(None, &["http/1.1"]);
    let h2 = s.ca.client(None, &["h2", "http/1.1"]);

    let x = tls_get(s.gw.addr(), h1.clone(), "a.test", "/open").await.unwrap();
    assert_eq!(x.resp.status, 200);
    assert_eq!(x.server_cert, s.a.der);
    assert_eq!(x.alpn.as_deref(), Some("http/1.1"));
    let seen = x.resp.json();
    assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https");

    // A wildcard one label deep.
    let x = tls_get(s.gw.addr(), h2.clone(), "api.b.test", "/open")
        .await
        .unwrap();
    assert_eq!(x.server_cert, s.b.der);
    assert_eq!(x.alpn.as_deref(), Some("h2"));
    assert_eq!(x.resp.status, 200);

    // An unknown name gets the first certificate, which the client then refuses.
    let err = tls_get(s.gw.addr(), h1, "other.test", "/open")
        .await
        .err()
        .unwrap();
    assert!(err.contains("handshake"), "{err}");
}

#[tokio::test]
async fn tls_1_2_and_1_3_and_resumption() {
    let s = setup("", "").await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(s.ca.der()).unwrap();
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        );
        let first = tls_get(s.gw.addr(), config.clone(), "a.test", "/open")
            .await
            .unwrap();
        assert_eq!(first.resp.status, 200, "{version:?}");
        assert!(!first.resumed);
        // The same client config keeps the session (ticket or id): resumed.
        let second = tls_get(s.gw.addr(), config, "a.test", "/open").await.unwrap();
        assert_eq!(second.resp.status, 200);
        assert!(second.resumed, "{version:?} session resumed");
    }
}

#[tokio::test]
async fn required_client_certificates_name_consumers() {
    let clients = TestCa::new("client CA");
    let alice = clients.issue("alice", "alice", &["alice.clients.test"]);
    let stranger = TestCa::new("another CA").issue("mallory", "mallory", &["alice.clients.test"]);
    let s = setup(
        &format!(
            "        client_auth: {{ca: \"{}\", required: true}}\n",
            clients.ca_file.display()
        ),
        "consumers:\n  - name: alice\n    groups: [members]\n    cert_subjects: [alice.clients.test]\n    plugins:\n      request_transform: {headers: {set: {x-consumer: alice}}}\n",
    )
    .await;
    // No certificate, or one from another CA: no connection.
    for client in [s.ca.client(None, &["http/1.1"]), {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(s.ca.der()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![stranger.der.clone()], stranger.key())
            .unwrap(),
        )
    }] {
        let r = tls_get(s.gw.addr(), client, "a.test", "/open").await;
        match r {
            Err(_) => {}
            // TLS 1.3: the server's refusal may come after the client's handshake ends.
            Ok(x) => panic!("answered {}", x.resp.status),
        }
    }
    // Alice's certificate: she is the consumer, in her group.
    let client = s.ca_client_with(&alice);
    let x = tls_get(s.gw.addr(), client, "a.test", "/members").await.unwrap();
    assert_eq!(x.resp.status, 200);
    assert_eq!(x.resp.json()["headers"]["x-consumer"][0], "alice");
}

impl Setup {
    fn ca_client_with(&self, cert: &Issued) -> Arc<rustls::ClientConfig> {
        self.ca.client(Some(cert), &["h2", "http/1.1"])
    }
}

#[tokio::test]
async fn optional_client_certificates() {
    let clients = TestCa::new("client CA");
    let bob = clients.issue("bob", "bob", &[]);
    let s = setup(
        &format!(
            "        client_auth: {{ca: \"{}\", required: false}}\n",
            clients.ca_file.display()
        ),
        "consumers:\n  - name: bob\n    groups: [members]\n    cert_subjects: [bob]\n",
    )
    .await;
    // Without a certificate: served, but no consumer for the ACL.
    let anon = s.ca.client(None, &["http/1.1"]);
    assert_eq!(
        tls_get(s.gw.addr(), anon.clone(), "a.test", "/open")
            .await
            .unwrap()
            .resp
            .status,
        200
    );
    tls_get(s.gw.addr(), anon, "a.test", "/members")
        .await
        .unwrap()
        .resp
        .problem(403, "forbidden");
    // With one (no SANs: the subject CN names him).
    let x = tls_get(s.gw.addr(), s.ca_client_with(&bob), "a.test", "/members")
        .await
        .unwrap();
    assert_eq!(x.resp.status, 200);
}

#[tokio::test]
async fn sighup_reads_the_certificate_files_again_without_dropping_connections() {
    let s = setup("", "").await;
    let client = s.ca.client(None, &["http/1.1"]);
    // A connection opened before the reload.
    let tcp = tokio::net::TcpStream::connect(s.gw.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect("a.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);

    // The certificate is replaced on disk (a new key and serial), then SIGHUP.
    let renewed = s.ca.issue("a-renewed", "a.test", &["a.test"]);
    std::fs::copy(&renewed.cert_file, &s.a.cert_file).unwrap();
    std::fs::copy(&renewed.key_file, &s.a.key_file).unwrap();
    s.gw.signal("HUP");
    let mut served = None;
    for _ in 0..100 {
        let x = tls_get(s.gw.addr(), s.ca.client(None, &["http/1.1"]), "a.test", "/open")
            .await
            .unwrap();
        if x.server_cert == renewed.der {
            served = Some(x);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(served.is_some(), "new connections get the new certificate");

    // The old connection still works.
    let req = http::Request::get("/open")
        .header("host", "a.test")
        .body(http_body_util::Full::<bytes::Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn certificate_errors_are_named() {
    let ca = TestCa::new("ca");
    let a = ca.issue("a", "a.test", &["a.test"]);
    let other = ca.issue("other", "o.test", &["o.test"]);
    let yaml = format!(
        "version: 1\nserver:\n  listeners:\n    - address: 127.0.0.1:0\n      tls:\n        certificates:\n          - {{cert: \"{}\", key: \"{}\"}}\n          - {{cert: /nonexistent.pem, key: \"{}\"}}\n        alpn: [h3]\nroutes:\n  - name: r\n    match: {{paths: [/]}}\n    respond: {{status: 200}}\n",
        a.cert_file.display(),
        other.key_file.display(),
        a.key_file.display(),
    );
    let err = fails("validate", &yaml);
    assert!(
        err.contains("server.listeners[0].tls.certificates[0].key: does not fit the certificate"),
        "{err}"
    );
    let fixed = yaml.replace(
        &other.key_file.display().to_string(),
        &a.key_file.display().to_string(),
    );
    let err = fails("validate", &fixed);
    assert!(
        err.contains("server.listeners[0].tls.certificates[1].cert: cannot read /nonexistent.pem"),
        "{err}"
    );
    let fixed = fixed.replace("/nonexistent.pem", &a.cert_file.display().to_string());
    let err = fails("validate", &fixed);
    assert!(
        err.contains("server.listeners[0].tls.alpn[0]: `h3` is not a protocol served here (h2, http/1.1)"),
        "{err}"
    );
}

/// A gateway whose upstream `u` has `upstream_lines` (targets, tls), with
/// one route to it.
fn via(upstream_lines: &str) -> Gateway {
    Gateway::start(&config(
        upstream_lines,
        "  - name: r\n    match: {paths: [/]}\n    upstream: u\n",
        "",
    ))
}

#[tokio::test]
async fn upstreams_over_tls_with_a_custom_ca_sni_and_client_certificates() {
    let ca = TestCa::new("internal CA");
    let cert = ca.issue("svc", "svc", &["users.internal"]);
    let h1 = Upstream::start_tls("h1", ca.server(&cert, &["http/1.1"], None)).await;
    let h2 = Upstream::start_tls("h2", ca.server(&cert, &["h2"], None)).await;
    let ca_file = ca.ca_file.display();

    // HTTP/1.1 and HTTP/2 (ALPN h2), the certificate checked against the
    // given CA for the name given.
    for (up, protocol, version) in [(&h1, "http1", "HTTP/1.1"), (&h2, "http2", "HTTP/2.0")] {
        let gw = via(&format!(
            "  - name: u\n    targets: [{{url: \"https://{}\"}}]\n    protocol: {protocol}\n    tls: {{ca: \"{ca_file}\", server_name: users.internal}}\n",
            up.addr
        ));
        let r = get(&gw.url("/x")).await;
        assert_eq!(r.status, 200, "{protocol}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(up.last().version, version);
    }

    // The name does not match, or the CA is not the issuer: 502, logged.
    for tls in [
        format!("{{ca: \"{ca_file}\", server_name: other.internal}}"),
        format!(
            "{{ca: \"{}\", server_name: users.internal}}",
            TestCa::new("other").ca_file.display()
        ),
    ] {
        let gw = via(&format!(
            "  - name: u\n    targets: [{{url: \"https://{}\"}}]\n    tls: {tls}\n",
            h1.addr
        ));
        get(&gw.url("/x")).await.problem(502, "bad-gateway");
        // The log is read from the gateway's stderr by another thread.
        eventually("the log says why", || async {
            gw.logged("invalid peer certificate")
        })
        .await;
    }

    // mTLS to the upstream: it requires a certificate from its client CA.
    let clients = TestCa::new("gateway clients");
    let gw_cert = clients.issue("gw", "gateway", &["gateway.internal"]);
    let strict = Upstream::start_tls("strict", ca.server(&cert, &["http/1.1"], Some(&clients))).await;
    let plain = via(&format!(
        "  - name: u\n    targets: [{{url: \"https://{}\"}}]\n    tls: {{ca: \"{ca_file}\", server_name: users.internal}}\n",
        strict.addr
    ));
    assert_eq!(get(&plain.url("/x")).await.status, 502);
    let with_cert = via(&format!(
        "  - name: u\n    targets: [{{url: \"https://{}\"}}]\n    tls: {{ca: \"{ca_file}\", server_name: users.internal, client_cert: \"{}\", client_key: \"{}\"}}\n",
        strict.addr,
        gw_cert.cert_file.display(),
        gw_cert.key_file.display()
    ));
    assert_eq!(get(&with_cert.url("/x")).await.status, 200);
    assert_eq!(strict.count(), 1);
}

#[test]
fn upstream_tls_errors_are_named() {
    let yaml = "version: 1\nupstreams:\n  - name: u\n    targets: [{url: \"https://127.0.0.1:1\"}, {url: \"http://127.0.0.1:2\"}]\n  - name: v\n    targets: [{url: \"https://127.0.0.1:1\"}]\n    tls: {ca: /nonexistent/ca.pem}\n  - name: w\n    targets: [{url: \"https://127.0.0.1:1\"}]\n    tls: {client_cert: /x.pem}\nroutes:\n  - name: r\n    match: {paths: [/]}\n    upstream: u\n";
    fails_with(
        "validate",
        yaml,
        &[
            "upstreams[0].targets: mixes http and https targets",
            "upstreams[1].tls.ca: cannot read /nonexistent/ca.pem",
            "upstreams[2].tls.client_key: is needed with client_cert",
        ],
    );
}
