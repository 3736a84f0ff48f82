//! The typed config file (SPEC section 2). Plain data: serde structs with
//! defaults and `deny_unknown_fields`, no behaviour. The JSON Schema of the
//! file (`portcullis schema`) is derived from these same types, doc
//! comments included.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::Deserialize;

use super::types::{ByteSize, Cidr, Duration, Rate};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    #[serde(default)]
    pub plugins: PluginsConfig,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listeners")]
    pub listeners: Vec<ListenerConfig>,
    /// Peers allowed to set `X-Forwarded-For`.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Duration,
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
    #[serde(default)]
    pub request_id: RequestIdConfig,
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    /// Serve Prometheus metrics on the data listeners at this path.
    #[serde(default)]
    pub metrics_path: Option<String>,
    /// Add `Via: 1.1 portcullis` to requests and responses (RFC 9110 §7.6.3).
    #[serde(default)]
    pub via: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listeners: default_listeners(),
            trusted_proxies: Vec::new(),
            limits: LimitsConfig::default(),
            shutdown_timeout: default_shutdown_timeout(),
            access_log: None,
            request_id: RequestIdConfig::default(),
            tracing: None,
            metrics_path: None,
            via: false,
        }
    }
}

fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig {
        name: Some("public".into()),
        address: "0.0.0.0:8080".parse().unwrap(),
        tls: None,
    }]
}

fn default_shutdown_timeout() -> Duration {
    Duration::secs(30)
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(deserialize_with = "super::types::socket_addr")]
    pub address: SocketAddr,
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    pub certificates: Vec<CertificateConfig>,
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
    #[serde(default)]
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    pub ca: String,
    #[serde(default = "yes")]
    pub required: bool,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_connections: u32,
    pub max_request_header_bytes: ByteSize,
    pub max_request_body_bytes: ByteSize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_request_header_bytes: ByteSize(32 << 10),
            max_request_body_bytes: ByteSize(10 << 20),
            header_read_timeout: Duration::secs(10),
            idle_timeout: Duration::secs(60),
            request_timeout: Duration::secs(60),
            http2_max_concurrent_streams: 128,
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "stdout")]
    pub path: String,
    #[serde(default = "json")]
    pub format: String,
    /// Lines waiting for the writer, at most; past it new lines are
    /// dropped (and counted) rather than slowing requests.
    #[serde(default = "default_access_log_buffer")]
    pub buffer: ByteSize,
}

fn default_access_log_buffer() -> ByteSize {
    ByteSize(8 << 20)
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestIdConfig {
    pub header: String,
    /// Keep a client's request id instead of generating one.
    pub trust_incoming: bool,
}

impl Default for RequestIdConfig {
    fn default() -> Self {
        RequestIdConfig {
            header: "X-Request-Id".into(),
            trust_incoming: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    #[serde(default)]
    pub always_sample_errors: bool,
}

fn default_sample_ratio() -> f64 {
    0.01
}
fn default_service_name() -> String {
    "portcullis".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(
        default = "default_admin_address",
        deserialize_with = "super::types::socket_addr"
    )]
    pub address: SocketAddr,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub persist: Option<bool>,
}

fn default_admin_address() -> SocketAddr {
    "127.0.0.1:9901".parse().unwrap()
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub cluster: Option<RedisClusterConfig>,
    #[serde(default = "default_redis_pool")]
    pub pool_size: u32,
    #[serde(default = "default_redis_timeout")]
    pub timeout: Duration,
}

fn default_redis_pool() -> u32 {
    16
}
fn default_redis_timeout() -> Duration {
    Duration::millis(50)
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisClusterConfig {
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// For `consistent_hash`: `ip`, `consumer`, `header:NAME` or `cookie:NAME`.
    #[serde(default)]
    pub hash_on: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    #[serde(default)]
    pub timeouts: UpstreamTimeouts,
    #[serde(default)]
    pub keepalive: KeepaliveConfig,
    #[serde(default)]
    pub health_checks: Option<HealthChecksConfig>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    #[serde(default)]
    pub retries: Option<RetriesConfig>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub url: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    100
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    Weighted,
    LeastConnections,
    RandomTwo,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
    Grpc,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect: Duration::secs(3),
            read: Duration::secs(30),
            write: Duration::secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    pub max_idle_per_target: usize,
    pub idle_timeout: Duration,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            max_idle_per_target: 64,
            idle_timeout: Duration::secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthChecksConfig {
    #[serde(default)]
    pub active: Option<ActiveHealthCheckConfig>,
    #[serde(default)]
    pub passive: Option<PassiveHealthCheckConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthCheckConfig {
    pub path: String,
    #[serde(default = "five_seconds")]
    pub interval: Duration,
    #[serde(default = "one_second")]
    pub timeout: Duration,
    #[serde(default = "two")]
    pub healthy_threshold: u32,
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthCheckConfig {
    #[serde(default = "five")]
    pub unhealthy_threshold: u32,
    #[serde(default = "three")]
    pub timeout_threshold: u32,
}

/// Each field may be left out: `circuit_breaker: {}` turns the breaker on
/// with the values of SPEC section 2's example.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub half_open_requests: u32,
    pub slow_call_threshold: Option<Duration>,
    pub failure_statuses: Option<Vec<u16>>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::secs(10),
            open_for: Duration::secs(30),
            half_open_requests: 3,
            slow_call_threshold: None,
            failure_statuses: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetriesConfig {
    #[serde(default = "one")]
    pub attempts: u32,
    /// `connect_failure`, `reset`, and answer statuses (`502`, `503`, `504`).
    #[serde(default)]
    #[schemars(schema_with = "retry_on_schema")]
    pub on: Vec<String>,
    #[serde(default)]
    pub backoff: Option<Duration>,
    #[serde(default)]
    pub budget: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub rewrite: Option<String>,
    #[serde(default)]
    pub max_request_body_bytes: Option<ByteSize>,
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub respond: Option<RespondConfig>,
    #[serde(default)]
    pub aggregate: Option<AggregateConfig>,
    #[serde(default)]
    pub grpc_transcode: Option<GrpcTranscodeConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    /// Exact value, or `~regex`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

fn default_status() -> u16 {
    200
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    pub timeout: Duration,
    pub calls: BTreeMap<String, AggregateCallConfig>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateCallConfig {
    pub upstream: String,
    pub path: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub fallback: Option<serde_json::Value>,
    #[serde(default)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcTranscodeConfig {
    pub descriptor_set: String,
    #[serde(default)]
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyCredential>,
    #[serde(default)]
    pub hmac: Vec<HmacCredential>,
    #[serde(default)]
    pub jwt_subjects: Vec<String>,
    /// Client certificate names (the first SAN, else the subject CN) that
    /// identify this consumer on mTLS listeners.
    #[serde(default)]
    pub cert_subjects: Vec<String>,
    #[serde(default)]
    pub plugins: PluginsConfig,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCredential {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub key_sha256: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacCredential {
    pub key_id: String,
    pub secret: String,
}

/// The plugins of one scope (global, route or consumer), by name.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    #[serde(default)]
    pub ip_restriction: Option<IpRestrictionConfig>,
    #[serde(default)]
    pub waf: Option<WafConfig>,
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    #[serde(default)]
    pub request_validation: Option<RequestValidationConfig>,
    #[serde(default)]
    pub api_key: Option<ApiKeyConfig>,
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    #[serde(default)]
    pub phantom_token: Option<PhantomTokenConfig>,
    #[serde(default)]
    pub hmac_auth: Option<HmacAuthConfig>,
    #[serde(default)]
    pub acl: Option<AclConfig>,
    #[serde(default)]
    pub rate_limit: Option<OneOrMany<RateLimitPolicy>>,
    #[serde(default)]
    pub request_transform: Option<RequestTransformConfig>,
    #[serde(default)]
    pub cache: Option<CacheConfig>,
    #[serde(default)]
    pub response_transform: Option<ResponseTransformConfig>,
    #[serde(default)]
    pub compression: Option<CompressionConfig>,
}

// One item (a mapping) or a list of them. Deserialized by the node's kind,
// so an error inside names the item's field and line (serde's untagged
// enums only say that no variant matched). Not a doc comment: schemars
// would put it in the published schema.
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
        struct Kind<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Kind<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping or a list of mappings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(OneOrMany::One)
            }
        }
        d.deserialize_any(Kind(std::marker::PhantomData))
    }
}

impl<T> OneOrMany<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(t) => std::slice::from_ref(t),
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpRestrictionConfig {
    #[serde(default)]
    pub allow: Vec<Cidr>,
    #[serde(default)]
    pub deny: Vec<Cidr>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WafConfig {
    #[serde(default)]
    pub rules: Vec<WafRuleFamily>,
    #[serde(default = "one_u8")]
    pub paranoia: u8,
    #[serde(default)]
    pub inspect: Vec<WafInspect>,
    #[serde(default)]
    pub mode: WafMode,
    #[serde(default)]
    pub exclude: Vec<WafExclusion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WafRuleFamily {
    Sqli,
    Xss,
    PathTraversal,
    CommandInjection,
    Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WafInspect {
    Path,
    Query,
    Headers,
    Body,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WafMode {
    #[default]
    Block,
    Detect,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WafExclusion {
    pub rule: String,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    #[serde(default)]
    pub origins: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub credentials: bool,
    #[serde(default)]
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestValidationConfig {
    /// A file path, or the schema inline.
    pub json_schema: serde_json::Value,
    #[serde(default)]
    pub content_types: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    #[serde(default = "default_api_key_header")]
    pub header: String,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub hide_credentials: bool,
}

fn default_api_key_header() -> String {
    "X-Api-Key".into()
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    #[serde(default = "thirty_seconds")]
    pub clock_skew: Duration,
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub required_claims: Vec<String>,
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

fn default_consumer_claim() -> String {
    "sub".into()
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    #[serde(default)]
    pub kid: Option<String>,
    pub alg: String,
    #[serde(default)]
    pub pem: Option<String>,
    #[serde(default)]
    pub pem_file: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PhantomTokenConfig {
    pub source: PhantomSource,
    #[serde(default = "default_phantom_prefix")]
    pub redis_key_prefix: String,
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    #[serde(default = "thirty_seconds")]
    pub cache_ttl: Duration,
    #[serde(default = "default_forward_header")]
    pub forward_header: String,
}

fn default_phantom_prefix() -> String {
    "phantom:".into()
}
fn default_forward_header() -> String {
    "Authorization".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PhantomSource {
    Redis,
    Introspection,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub signing_key: Option<JwtKeyConfig>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacAuthConfig {
    #[serde(default = "default_hmac_skew")]
    pub clock_skew: Duration,
    #[serde(default)]
    pub nonce_store: Store,
}

fn default_hmac_skew() -> Duration {
    Duration::secs(300)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Store {
    #[default]
    Local,
    Redis,
    Hybrid,
    Memory,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    #[serde(default)]
    pub algorithm: RateLimitAlgorithm,
    #[serde(default)]
    pub rate: Option<Rate>,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub window: Option<Duration>,
    #[serde(default)]
    pub key: Vec<String>,
    #[serde(default)]
    pub store: Store,
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Duration,
    #[serde(default)]
    pub on_store_error: OnStoreError,
}

fn default_sync_interval() -> Duration {
    Duration::millis(100)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAlgorithm {
    #[default]
    TokenBucket,
    LeakyBucket,
    FixedWindow,
    SlidingWindowLog,
    SlidingWindowCounter,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestTransformConfig {
    #[serde(default)]
    pub headers: HeaderTransformConfig,
    #[serde(default)]
    pub query: QueryTransformConfig,
    #[serde(default)]
    pub json: Option<JsonTransformConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderTransformConfig {
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryTransformConfig {
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonTransformConfig {
    #[serde(default)]
    pub add: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "thirty_seconds")]
    pub ttl: Duration,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub key: Vec<String>,
    #[serde(default = "default_cache_store")]
    pub store: Store,
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
}

fn default_cache_store() -> Store {
    Store::Memory
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseTransformConfig {
    #[serde(default)]
    pub headers: HeaderTransformConfig,
    #[serde(default)]
    pub json: Option<JsonTransformConfig>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    #[serde(default)]
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub min_bytes: Option<ByteSize>,
}

fn yes() -> bool {
    true
}
fn stdout() -> String {
    "stdout".into()
}
fn json() -> String {
    "json".into()
}
fn one() -> u32 {
    1
}
fn one_u8() -> u8 {
    1
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn five() -> u32 {
    5
}
fn one_second() -> Duration {
    Duration::secs(1)
}
fn five_seconds() -> Duration {
    Duration::secs(5)
}
fn thirty_seconds() -> Duration {
    Duration::secs(30)
}

/// `retries.on`: condition names or status codes (YAML writes those as numbers).
fn retry_on_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "anyOf": [
                {"enum": ["connect_failure", "reset"]},
                {"type": "integer", "minimum": 100, "maximum": 599},
                {"type": "string", "pattern": "^[1-5][0-9][0-9]$"},
            ]
        }
    })
}
