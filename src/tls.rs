//! TLS with rustls (aws-lc-rs): the listeners' server side (certificates by
//! SNI, ALPN, client certificates) and the client side towards upstreams
//! (custom CA, SNI name, client certificate). TLS 1.2 and 1.3 only.
//!
//! Certificate and key files are read when a config is compiled, so every
//! reload reads them again: new connections get the new certificates, open
//! ones keep theirs.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::config::{CertificateConfig, ListenerTlsConfig, UpstreamTlsConfig};

/// A config error: the field (under the section being built) and why.
pub type FieldError = (String, String);

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Every certificate in a PEM file, in order.
pub fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    certs_from(&pem, path)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("cannot read a private key from {path}: {e}"))
}

fn certified_key(c: &CertificateConfig, field: &str) -> Result<Arc<CertifiedKey>, FieldError> {
    let chain = read_certs(&c.cert).map_err(|e| (format!("{field}.cert"), e))?;
    let key = read_key(&c.key).map_err(|e| (format!("{field}.key"), e))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(|e| {
            (
                format!("{field}.key"),
                format!("does not fit the certificate: {e}"),
            )
        })
}

/// Picks the certificate for the name the client asked for (SNI): an exact
/// name, then a `*.` wildcard one label deep; otherwise (or without SNI)
/// the first certificate.
#[derive(Debug)]
struct BySni {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        // rustls hands over the name lowercased and validated.
        let found = self.exact.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        });
        Some(found.unwrap_or(&self.default).clone())
    }
}

/// The server side of a TLS listener. Errors name the field under `tls`.
pub fn server_config(cfg: &ListenerTlsConfig) -> Result<Arc<rustls::ServerConfig>, FieldError> {
    let mut keys = Vec::new();
    for (i, c) in cfg.certificates.iter().enumerate() {
        keys.push(certified_key(c, &format!("certificates[{i}]"))?);
    }
    let Some(default) = keys.first().cloned() else {
        return Err(("certificates".into(), "at least one certificate is needed".into()));
    };
    let mut resolver = BySni {
        default,
        exact: HashMap::new(),
        wildcard: HashMap::new(),
    };
    for (i, (c, key)) in cfg.certificates.iter().zip(&keys).enumerate() {
        for (j, name) in c.server_names.iter().enumerate() {
            let name = name.to_ascii_lowercase();
            let (map, bare) = match name.strip_prefix("*.") {
                Some(parent) => (&mut resolver.wildcard, parent.to_string()),
                None => (&mut resolver.exact, name.clone()),
            };
            if bare.is_empty() || bare.contains('*') {
                return Err((
                    format!("certificates[{i}].server_names[{j}]"),
                    format!("`{name}` is not a host name (a wildcard is `*.` then a name)"),
                ));
            }
            if map.insert(bare, key.clone()).is_some() {
                return Err((
                    format!("certificates[{i}].server_names[{j}]"),
                    format!("`{name}` is already served by another certificate"),
                ));
            }
        }
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("certificates".to_string(), e.to_string()))?;
    let builder = match &cfg.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(&auth.ca).map_err(|e| ("client_auth.ca".to_string(), e))? {
                roots
                    .add(cert)
                    .map_err(|e| ("client_auth.ca".to_string(), format!("not a CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| ("client_auth.ca".to_string(), e.to_string()))?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = if cfg.alpn.is_empty() {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        let mut alpn = Vec::new();
        for (i, p) in cfg.alpn.iter().enumerate() {
            match p.as_str() {
                "h2" | "http/1.1" => alpn.push(p.as_bytes().to_vec()),
                other => {
                    return Err((
                        format!("alpn[{i}]"),
                        format!("`{other}` is not a protocol served here (h2, http/1.1)"),
                    ));
                }
            }
        }
        alpn
    };
    // Resumption: stateless tickets (TLS 1.3 and 1.2) and a session cache.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| ("certificates".to_string(), format!("session tickets: {e}")))?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(Arc::new(config))
}

/// The client side towards one upstream, and a digest of what made it
/// (settings and file contents): equal digests, equal settings, so a reload
/// that changes neither keeps the upstream's connections.
#[derive(Clone)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    digest: [u8; 32],
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").finish_non_exhaustive()
    }
}

/// Reads a file, feeding its name and bytes to `digest`.
fn read_into(path: &str, digest: &mut sha2::Sha256) -> Result<Vec<u8>, String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    digest.update(path.as_bytes());
    digest.update(&bytes);
    Ok(bytes)
}

fn certs_from(pem: &[u8], path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate in it"));
    }
    Ok(certs)
}

/// The client side towards one upstream: its CA (else the system's trust
/// roots), its client certificate for mTLS, ALPN `alpn`. Errors name the
/// field under `tls`.
pub fn client_config(cfg: &UpstreamTlsConfig, alpn: &[&[u8]]) -> Result<UpstreamTls, FieldError> {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for p in alpn {
        digest.update(p);
    }
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca {
        Some(ca) => {
            let pem = read_into(ca, &mut digest).map_err(|e| ("ca".to_string(), e))?;
            for cert in certs_from(&pem, ca).map_err(|e| ("ca".to_string(), e))? {
                roots
                    .add(cert)
                    .map_err(|e| ("ca".to_string(), format!("not a CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err((
                    "ca".into(),
                    "no system trust roots found; give the upstream's CA".into(),
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("ca".to_string(), e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&cfg.client_cert, &cfg.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let pem = read_into(cert, &mut digest).map_err(|e| ("client_cert".to_string(), e))?;
            let chain = certs_from(&pem, cert).map_err(|e| ("client_cert".to_string(), e))?;
            let key_pem = read_into(key, &mut digest).map_err(|e| ("client_key".to_string(), e))?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                (
                    "client_key".to_string(),
                    format!("{key}: not a PEM private key: {e}"),
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ("client_key".to_string(), format!("does not fit client_cert: {e}")))?
        }
        (Some(_), None) => return Err(("client_key".into(), "is needed with client_cert".into())),
        (None, Some(_)) => return Err(("client_cert".into(), "is needed with client_key".into())),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::in_memory_sessions(256);
    Ok(UpstreamTls {
        config: Arc::new(config),
        digest: digest.finalize().into(),
    })
}

/// What the gateway knows of a client that presented a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    /// The DNS, URI and email names of the subject alternative names.
    pub sans: Vec<String>,
}

impl ClientIdentity {
    /// Reads the end-entity certificate rustls verified.
    pub fn from_der(cert: &CertificateDer<'_>) -> Option<ClientIdentity> {
        use x509_parser::extensions::GeneralName;
        let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let common_name = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let sans = x509
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                            Some(s.to_string())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(ClientIdentity { common_name, sans })
    }

    /// The name a consumer is found by: the first SAN, else the common name.
    pub fn name(&self) -> Option<&str> {
        self.sans
            .first()
            .map(String::as_str)
            .or(self.common_name.as_deref())
    }
}
