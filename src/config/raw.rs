//! The config file as written: serde structs with defaults, no cross-field checks.
//! `super::validate` turns these into the typed [`super::Config`].

use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;

pub const DEFAULT_PROXY_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
pub const DEFAULT_STATUS_LISTEN: &str = "0.0.0.0:8082";
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "KEYGATE_ADMIN_TOKEN";
/// A slow client may take this long to send its request head before the connection is closed.
pub const DEFAULT_HEADER_READ_TIMEOUT: HumanDuration = HumanDuration::secs(10);
/// nginx's `large_client_header_buffers` default is 4×8k; 64 KiB fits large cookies and JWTs.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// `0`: one proxy worker per CPU.
pub const DEFAULT_PROXY_WORKERS: usize = 0;
pub const DEFAULT_EMBEDDED_PATH: &str = "data/keygate.db";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "keygate:";
pub const DEFAULT_CACHE_MAX_ENTRIES: u64 = 1_000_000;
pub const DEFAULT_CACHE_TTL: HumanDuration = HumanDuration::secs(60);
pub const DEFAULT_CACHE_NEGATIVE_TTL: HumanDuration = HumanDuration::secs(10);
pub const DEFAULT_CACHE_STALE_IF_ERROR: HumanDuration = HumanDuration::secs(300);
pub const DEFAULT_KEY_PREFIX: &str = "kg";
pub const DEFAULT_KEY_HEADER: &str = "X-API-Key";
pub const DEFAULT_KEY_TTL: HumanDuration = HumanDuration::secs(365 * 86_400);
pub const DEFAULT_IDENTITY_PREFIX: &str = "X-Keygate-";
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: HumanDuration = HumanDuration::secs(5);
/// Below the 120 s keep-alive most upstream servers use, so we close idle connections first.
pub const DEFAULT_UPSTREAM_POOL_IDLE_TIMEOUT: HumanDuration = HumanDuration::secs(90);
pub const DEFAULT_UPSTREAM_POOL_MAX_IDLE_PER_HOST: usize = 512;
/// Kubernetes waits 30 s after SIGTERM by default; drain a little less so we exit cleanly.
pub const DEFAULT_SHUTDOWN_GRACE: HumanDuration = HumanDuration::secs(25);
pub const DEFAULT_SHUTDOWN_DELAY: HumanDuration = HumanDuration::secs(0);
/// Generous, because clients behind one NAT or load balancer share an IP.
pub const DEFAULT_FAILED_AUTH_PER_IP: crate::store::RateLimit = crate::store::RateLimit {
    requests: 100,
    per: HumanDuration::secs(60),
};
pub const DEFAULT_ROUTE_PATH_PREFIX: &str = "/";
pub const DEFAULT_ROUTE_TIMEOUT: HumanDuration = HumanDuration::secs(30);

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub proxy: RawProxy,
    pub admin: RawAdmin,
    pub status: RawStatus,
    pub store: RawStore,
    pub cache: RawCache,
    pub keys: RawKeys,
    pub identity: RawIdentity,
    pub upstream: RawUpstream,
    pub shutdown: RawShutdown,
    pub log: RawLog,
    pub limits: RawLimits,
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Failed authentications (`invalid_key`) one client IP may make before it gets 429s;
    /// `null` turns the limit off.
    pub failed_auth_per_ip: Option<crate::store::RateLimit>,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            failed_auth_per_ip: Some(DEFAULT_FAILED_AUTH_PER_IP),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    pub listen: String,
    pub tls: Option<RawTls>,
    pub header_read_timeout: HumanDuration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub workers: usize,
    pub cpu_affinity: CpuAffinity,
}

impl Default for RawProxy {
    fn default() -> Self {
        Self {
            listen: DEFAULT_PROXY_LISTEN.into(),
            tls: None,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            workers: DEFAULT_PROXY_WORKERS,
            cpu_affinity: CpuAffinity::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: String,
    pub token_env: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN.into(),
            token_env: DEFAULT_ADMIN_TOKEN_ENV.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStatus {
    pub listen: String,
}

impl Default for RawStatus {
    fn default() -> Self {
        Self {
            listen: DEFAULT_STATUS_LISTEN.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Embedded,
    Redis,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub backend: StoreBackend,
    pub embedded: RawEmbedded,
    pub redis: RawRedis,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEmbedded {
    pub path: String,
}

impl Default for RawEmbedded {
    fn default() -> Self {
        Self {
            path: DEFAULT_EMBEDDED_PATH.into(),
        }
    }
}

/// Whether the proxy workers are tied to CPUs (`proxy.cpu_affinity`; see `src/affinity.rs`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CpuAffinity {
    /// One worker per CPU when the workers are exactly as many as the CPUs keygate may run
    /// on; otherwise left to the kernel.
    #[default]
    Auto,
    /// Always left to the kernel's scheduler.
    Off,
}

/// How keygate finds its Redis (`store.redis.mode`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server at `url`.
    #[default]
    Standalone,
    /// A Redis Cluster, discovered from seed nodes.
    Cluster,
    /// A master (and its failovers) found through Redis Sentinel.
    Sentinel,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRedis {
    pub mode: RedisMode,
    /// Standalone: the server. Cluster: the seed when `cluster.nodes` is empty. In every
    /// mode: the scheme, user, password and database used for the data nodes.
    pub url: String,
    pub key_prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<RawRedisCluster>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<RawRedisSentinel>,
}

impl Default for RawRedis {
    fn default() -> Self {
        Self {
            mode: RedisMode::Standalone,
            url: DEFAULT_REDIS_URL.into(),
            key_prefix: DEFAULT_REDIS_KEY_PREFIX.into(),
            cluster: None,
            sentinel: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawRedisCluster {
    /// Seed nodes, `host:port`; any reachable one reveals the rest of the cluster.
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawRedisSentinel {
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master: String,
    /// The sentinels, `host:port`.
    pub nodes: Vec<String>,
    /// Whether the sentinels themselves require the url's user and password.
    pub auth: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub max_entries: u64,
    pub ttl: HumanDuration,
    pub negative_ttl: HumanDuration,
    pub stale_if_error: HumanDuration,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_CACHE_MAX_ENTRIES,
            ttl: DEFAULT_CACHE_TTL,
            negative_ttl: DEFAULT_CACHE_NEGATIVE_TTL,
            stale_if_error: DEFAULT_CACHE_STALE_IF_ERROR,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKeys {
    pub prefix: String,
    pub headers: Vec<String>,
    pub authorization_bearer: bool,
    pub default_ttl: HumanDuration,
    /// Whether `POST /v1/keys` may ask for `never_expires: true`.
    pub allow_never_expires: bool,
}

impl Default for RawKeys {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_KEY_PREFIX.into(),
            headers: vec![DEFAULT_KEY_HEADER.into()],
            authorization_bearer: true,
            default_ttl: DEFAULT_KEY_TTL,
            allow_never_expires: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIdentity {
    pub header_prefix: String,
}

impl Default for RawIdentity {
    fn default() -> Self {
        Self {
            header_prefix: DEFAULT_IDENTITY_PREFIX.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub connect_timeout: HumanDuration,
    pub pool_idle_timeout: HumanDuration,
    pub pool_max_idle_per_host: usize,
    /// Extra PEM CA bundle trusted for `https://` upstreams, on top of the public roots.
    pub ca_file: Option<String>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            pool_idle_timeout: DEFAULT_UPSTREAM_POOL_IDLE_TIMEOUT,
            pool_max_idle_per_host: DEFAULT_UPSTREAM_POOL_MAX_IDLE_PER_HOST,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShutdown {
    /// How long `/readyz` answers 503 before listeners stop accepting, so load balancers
    /// (and Kubernetes endpoints) stop sending new traffic first.
    pub delay: HumanDuration,
    /// How long in-flight requests and tunnels may take to finish after that.
    pub grace: HumanDuration,
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self {
            delay: DEFAULT_SHUTDOWN_DELAY,
            grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `keygate=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
    /// One line per proxied request (target `keygate::access`).
    pub access: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
            access: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Required,
    Optional,
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoute {
    pub name: String,
    pub path_prefix: String,
    pub host: Option<String>,
    pub methods: Option<Vec<String>>,
    pub upstream: String,
    pub auth: AuthMode,
    pub require: Vec<String>,
    pub strip_prefix: bool,
    pub timeout: HumanDuration,
    /// Send the client's `Host` upstream instead of the upstream's own authority.
    pub preserve_host: bool,
    /// Speak HTTP/2 to the upstream (h2c prior knowledge for `http://`), e.g. for gRPC.
    pub upstream_http2: bool,
}

impl Default for RawRoute {
    fn default() -> Self {
        Self {
            name: String::new(),
            path_prefix: DEFAULT_ROUTE_PATH_PREFIX.into(),
            host: None,
            methods: None,
            upstream: String::new(),
            auth: AuthMode::default(),
            require: Vec::new(),
            strip_prefix: false,
            timeout: DEFAULT_ROUTE_TIMEOUT,
            preserve_host: false,
            upstream_http2: false,
        }
    }
}
