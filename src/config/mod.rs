//! Configuration: YAML → [`raw`] serde structs → [`validate`] → the typed [`Config`].
//!
//! Every error names the key's path (`routes[1].upstream`) so an operator can find it.

pub mod duration;
pub mod raw;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{Method, Uri};

pub use duration::HumanDuration;
pub use raw::{AuthMode, CpuAffinity, LogFormat, RawConfig, RedisMode, StoreBackend};

/// Environment variable that overrides `store.redis.url` (it usually carries a password).
pub const ENV_REDIS_URL: &str = "KEYGATE_REDIS_URL";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `path` is the key's location in the document, e.g. `routes[0].timeout`.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub status: StatusConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub keys: KeysConfig,
    pub identity: IdentityConfig,
    pub upstream: UpstreamConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    /// Failed authentications one client IP may make (token bucket); `None`: no limit.
    pub failed_auth_per_ip: Option<crate::store::RateLimit>,
    pub routes: Vec<RouteConfig>,
    /// The document as loaded (defaults filled, environment applied), for `check-config`.
    raw: RawConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Proxy worker threads, each with its own event loop and listening socket.
    pub workers: usize,
    pub cpu_affinity: CpuAffinity,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_env: String,
    /// The bootstrap super-admin token, read from the variable `token_env` names.
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatusConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub embedded_path: PathBuf,
    pub redis_url: Secret,
    pub redis_key_prefix: String,
    pub redis_topology: RedisTopology,
}

impl StoreConfig {
    /// Everything a Redis connection needs: the topology (where) and the URL (how).
    pub fn redis_target(&self) -> RedisTarget {
        RedisTarget {
            url: self.redis_url.clone(),
            topology: self.redis_topology.clone(),
        }
    }
}

/// How keygate reaches Redis (`store.redis.mode` and the nodes that mode needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server, at the URL.
    Standalone,
    /// A Redis Cluster. `seeds` are tried for the topology; empty means the URL's node.
    Cluster { seeds: Vec<RedisNode> },
    /// The master that `sentinels` know as `master`, followed through failovers. `auth`:
    /// the sentinels take the URL's user and password too.
    Sentinel {
        master: String,
        sentinels: Vec<RedisNode>,
        auth: bool,
    },
}

/// A `host:port` from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisNode {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for RedisNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where and how to connect to Redis: what the store and the event transport are built from.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisTarget {
    /// In every mode the scheme, user, password and database; the address too when
    /// standalone (or the cluster seed when no seeds are listed).
    pub url: Secret,
    pub topology: RedisTopology,
}

impl RedisTarget {
    /// A single server at `url`.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url),
            topology: RedisTopology::Standalone,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub max_entries: u64,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_if_error: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeysConfig {
    pub prefix: String,
    pub headers: Vec<HeaderName>,
    pub authorization_bearer: bool,
    pub default_ttl: Duration,
    pub allow_never_expires: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    /// As configured (`X-Keygate-`), used to build outgoing header names.
    pub header_prefix: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownConfig {
    pub delay: Duration,
    pub grace: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        let raw = raw::RawLog::default();
        Self {
            format: raw.format,
            level: raw.level,
            access: raw.access,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: Arc<str>,
    pub path_prefix: String,
    /// Lower-cased; compared with the request's host (without port unless this has one).
    pub host: Option<String>,
    pub methods: Option<Vec<Method>>,
    pub upstream: UpstreamTarget,
    pub auth: AuthMode,
    pub require: Vec<String>,
    pub strip_prefix: bool,
    pub timeout: Duration,
    pub preserve_host: bool,
    pub upstream_http2: bool,
}

/// Where a route sends its requests: `scheme://authority` plus an optional base path.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Prepended to the forwarded path; empty or without a trailing `/`.
    pub base_path: String,
}

/// More proxy workers than this is a typo, not a machine.
const MAX_PROXY_WORKERS: usize = 1024;

impl Config {
    /// Reads, parses and validates the file, applying `KEYGATE_*` environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, &|name| std::env::var(name).ok())
    }

    /// Parses a YAML document; `env` looks up environment variables (injectable for tests).
    pub fn from_yaml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut raw = parse_raw(text)?;
        if let Some(url) = env(ENV_REDIS_URL).filter(|u| !u.is_empty()) {
            raw.store.redis.url = url;
        }
        validate(raw, env)
    }

    /// The effective configuration as YAML, with passwords in URLs replaced by `****`.
    pub fn redacted_yaml(&self) -> String {
        let mut raw = self.raw.clone();
        raw.store.redis.url = redact_url_password(&raw.store.redis.url);
        let mut out = serde_yaml::to_string(&raw).unwrap_or_else(|e| format!("# {e}\n"));
        let token_state = if self.admin.token.is_some() {
            "set"
        } else {
            "NOT set: the admin API will refuse every call"
        };
        out.push_str(&format!(
            "# admin token: read from ${}, {token_state}\n",
            self.admin.token_env
        ));
        out
    }
}

fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
    // An empty file is a valid config of all defaults (it still needs routes, checked later).
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let mut path = err.path().to_string();
        let inner = err.into_inner();
        let mut message = inner.to_string();
        // serde_yaml prefixes its own copy of the path; keep one.
        if let Some((head, rest)) = message.split_once(": ") {
            if path.starts_with(head) {
                message = rest.to_owned();
            }
        }
        let (located, message) = locate_unknown_field(path, message);
        path = located;
        if path == "." {
            path = "(document)".into();
        }
        invalid(path, message)
    })
}

/// serde reports an unknown key at its parent's path or at its own, depending on the format;
/// returns the path that names the key itself and a message without serde's
/// "unknown field" phrasing (the listed alternatives are kept). Shared with the admin API.
pub(crate) fn locate_unknown_field(path: String, message: String) -> (String, String) {
    let Some((key, expected)) = message
        .strip_prefix("unknown field `")
        .and_then(split_unknown_field)
    else {
        return (path, message);
    };
    let segment = key_segment(key);
    let path = if path == "." || path == key {
        segment
    } else if let Some(parent) = path.strip_suffix(key).and_then(|p| p.strip_suffix('.')) {
        format!("{parent}.{segment}")
    } else {
        format!("{path}.{segment}")
    };
    (path, format!("unknown key; {expected}"))
}

/// Splits serde's "`KEY`, expected …" (or "`KEY`, there are no fields") after its opening
/// backtick into the key and the rest. The key may itself hold backticks, so its end is
/// found by the words that follow it.
fn split_unknown_field(rest: &str) -> Option<(&str, &str)> {
    ["`, expected ", "`, there are no fields"]
        .iter()
        .find_map(|end| rest.find(end))
        .map(|i| (&rest[..i], &rest[i + 3..]))
}

/// A key as a path segment: a plain word as it is; anything else (empty, spaces, dots,
/// control characters) quoted, so the path is never empty and stays on one line.
fn key_segment(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn redact_url_password(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => match uri.authority() {
            Some(auth) if auth.as_str().contains('@') => {
                let (userinfo, host) = auth.as_str().rsplit_once('@').unwrap_or(("", ""));
                let user = userinfo.split_once(':').map_or("", |(u, _)| u);
                url.replacen(auth.as_str(), &format!("{user}:****@{host}"), 1)
            }
            _ => url.to_owned(),
        },
        Err(_) => url.to_owned(),
    }
}

/// Turns the raw document into the typed config, naming the first bad key.
pub fn validate(
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let proxy = ProxyConfig {
        listen: socket_addr("proxy.listen", &raw.proxy.listen)?,
        tls: raw
            .proxy
            .tls
            .as_ref()
            .map(|t| -> Result<TlsFiles, ConfigError> {
                Ok(TlsFiles {
                    cert_file: non_empty_path("proxy.tls.cert_file", &t.cert_file)?,
                    key_file: non_empty_path("proxy.tls.key_file", &t.key_file)?,
                })
            })
            .transpose()?,
        header_read_timeout: positive("proxy.header_read_timeout", raw.proxy.header_read_timeout)?,
        max_header_bytes: {
            // hyper's HTTP/1 parser cannot work with a smaller buffer.
            const MIN: usize = 8 * 1024;
            if raw.proxy.max_header_bytes < MIN {
                return Err(invalid(
                    "proxy.max_header_bytes",
                    format!("must be at least {MIN}"),
                ));
            }
            raw.proxy.max_header_bytes
        },
        max_headers: {
            if raw.proxy.max_headers == 0 {
                return Err(invalid("proxy.max_headers", "must be at least 1"));
            }
            raw.proxy.max_headers
        },
        workers: match raw.proxy.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n if n > MAX_PROXY_WORKERS => {
                return Err(invalid(
                    "proxy.workers",
                    format!("must be at most {MAX_PROXY_WORKERS} (0: one per CPU)"),
                ))
            }
            n => n,
        },
        cpu_affinity: raw.proxy.cpu_affinity,
    };

    let token_env = raw.admin.token_env.trim().to_owned();
    if token_env.is_empty() {
        return Err(invalid(
            "admin.token_env",
            "must name an environment variable",
        ));
    }
    let admin = AdminConfig {
        listen: socket_addr("admin.listen", &raw.admin.listen)?,
        token: env(&token_env).filter(|t| !t.is_empty()).map(Secret::new),
        token_env,
    };
    let status = StatusConfig {
        listen: socket_addr("status.listen", &raw.status.listen)?,
    };

    let (redis_url, redis_topology) = validate_redis(&raw.store.redis)?;
    let store = StoreConfig {
        backend: raw.store.backend,
        embedded_path: non_empty_path("store.embedded.path", &raw.store.embedded.path)?,
        redis_url,
        redis_key_prefix: raw.store.redis.key_prefix.clone(),
        redis_topology,
    };

    let cache = CacheConfig {
        max_entries: if raw.cache.max_entries == 0 {
            return Err(invalid("cache.max_entries", "must be at least 1"));
        } else {
            raw.cache.max_entries
        },
        ttl: positive("cache.ttl", raw.cache.ttl)?,
        negative_ttl: raw.cache.negative_ttl.0,
        stale_if_error: raw.cache.stale_if_error.0,
    };

    let identity = IdentityConfig {
        header_prefix: {
            let p = raw.identity.header_prefix.as_str();
            if p.is_empty() || HeaderName::from_bytes(p.as_bytes()).is_err() {
                return Err(invalid(
                    "identity.header_prefix",
                    "must be a non-empty header-name prefix such as `X-Keygate-`",
                ));
            }
            if let Some(name) = GATEWAY_HEADERS.iter().find(|h| is_identity_header(h, p)) {
                return Err(invalid(
                    "identity.header_prefix",
                    format!(
                        "`{p}` would take in `{name}`, which the gateway forwards or sets \
                         itself; use a prefix of its own such as `X-Keygate-`"
                    ),
                ));
            }
            p.to_owned()
        },
    };

    let keys = validate_keys(&raw.keys, &identity)?;

    let upstream = UpstreamConfig {
        connect_timeout: positive("upstream.connect_timeout", raw.upstream.connect_timeout)?,
        pool_idle_timeout: raw.upstream.pool_idle_timeout.0,
        pool_max_idle_per_host: raw.upstream.pool_max_idle_per_host,
        ca_file: raw
            .upstream
            .ca_file
            .as_deref()
            .map(|p| non_empty_path("upstream.ca_file", p))
            .transpose()?,
    };

    let shutdown = ShutdownConfig {
        delay: raw.shutdown.delay.0,
        grace: raw.shutdown.grace.0,
    };

    let log = LogConfig {
        format: raw.log.format,
        level: {
            if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
                return Err(invalid(
                    "log.level",
                    "is not a valid filter; use e.g. `info` or `keygate=debug,info`",
                ));
            }
            raw.log.level.clone()
        },
        access: raw.log.access,
    };

    let failed_auth_per_ip = raw.limits.failed_auth_per_ip;
    if let Some(limit) = &failed_auth_per_ip {
        if limit.requests == 0 || limit.per.0.is_zero() {
            return Err(invalid(
                "limits.failed_auth_per_ip",
                "needs requests ≥ 1 and per > 0, or null to turn the limit off",
            ));
        }
    }

    if raw.routes.is_empty() {
        return Err(invalid("routes", "at least one route is required"));
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.iter().enumerate() {
        let route = validate_route(&format!("routes[{i}]"), r)?;
        if let Some(prev) = routes
            .iter()
            .position(|p: &RouteConfig| p.name == route.name)
        {
            return Err(invalid(
                format!("routes[{i}].name"),
                format!("`{}` is already the name of routes[{prev}]", route.name),
            ));
        }
        routes.push(route);
    }

    Ok(Config {
        proxy,
        admin,
        status,
        store,
        cache,
        keys,
        identity,
        upstream,
        shutdown,
        log,
        failed_auth_per_ip,
        routes,
        raw,
    })
}

fn validate_redis(raw: &raw::RawRedis) -> Result<(Secret, RedisTopology), ConfigError> {
    let url = raw.url.trim();
    let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| url.starts_with(s));
    if !scheme_ok {
        return Err(invalid(
            "store.redis.url",
            "must start with redis://, rediss://, redis+unix:// or unix://",
        ));
    }
    let unused = |block: &str| {
        invalid(
            format!("store.redis.{block}"),
            format!("is only read with `mode: {block}`; set the mode or remove the block"),
        )
    };
    let topology = match raw.mode {
        RedisMode::Standalone => {
            if raw.cluster.is_some() {
                return Err(unused("cluster"));
            }
            if raw.sentinel.is_some() {
                return Err(unused("sentinel"));
            }
            RedisTopology::Standalone
        }
        RedisMode::Cluster => {
            if raw.sentinel.is_some() {
                return Err(unused("sentinel"));
            }
            let db = tcp_url_db(url, "a cluster")?;
            if db != 0 {
                return Err(invalid(
                    "store.redis.url",
                    "selects a database, but a Redis Cluster has only database 0",
                ));
            }
            let nodes = raw.cluster.as_ref().map_or(&[][..], |c| &c.nodes[..]);
            RedisTopology::Cluster {
                seeds: redis_nodes("store.redis.cluster.nodes", nodes)?,
            }
        }
        RedisMode::Sentinel => {
            if raw.cluster.is_some() {
                return Err(unused("cluster"));
            }
            tcp_url_db(url, "sentinel mode")?;
            let Some(sentinel) = &raw.sentinel else {
                return Err(invalid(
                    "store.redis.sentinel",
                    "is required with `mode: sentinel`: { master: <name>, nodes: [host:port, ...] }",
                ));
            };
            let master = sentinel.master.trim();
            if master.is_empty() {
                return Err(invalid(
                    "store.redis.sentinel.master",
                    "must name the master the sentinels monitor",
                ));
            }
            if sentinel.nodes.is_empty() {
                return Err(invalid(
                    "store.redis.sentinel.nodes",
                    "must list at least one sentinel (host:port); three or more for failover",
                ));
            }
            RedisTopology::Sentinel {
                master: master.to_owned(),
                sentinels: redis_nodes("store.redis.sentinel.nodes", &sentinel.nodes)?,
                auth: sentinel.auth,
            }
        }
    };
    Ok((Secret::new(url), topology))
}

/// Checks that `url` names a TCP server (cluster and sentinel nodes are found over TCP) and
/// returns its database number.
fn tcp_url_db(url: &str, mode: &str) -> Result<i64, ConfigError> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|e| invalid("store.redis.url", format!("is not a usable Redis URL: {e}")))?;
    if matches!(info.addr(), redis::ConnectionAddr::Unix(_)) {
        return Err(invalid(
            "store.redis.url",
            format!("must be redis:// or rediss:// in {mode}: its nodes are reached over TCP"),
        ));
    }
    Ok(info.redis_settings().db())
}

/// Parses `host:port` entries (`[v6]:port` for IPv6 literals).
fn redis_nodes(path: &str, nodes: &[String]) -> Result<Vec<RedisNode>, ConfigError> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let bad = || {
                invalid(
                    format!("{path}[{i}]"),
                    format!("`{text}` is not host:port such as `10.0.0.5:6379`"),
                )
            };
            let (host, port) = text.trim().rsplit_once(':').ok_or_else(bad)?;
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let port: u16 = port.parse().map_err(|_| bad())?;
            if host.is_empty() || port == 0 || host.contains(['/', '@', '[', ']']) {
                return Err(bad());
            }
            Ok(RedisNode {
                host: host.to_owned(),
                port,
            })
        })
        .collect()
}

fn validate_keys(raw: &raw::RawKeys, identity: &IdentityConfig) -> Result<KeysConfig, ConfigError> {
    let prefix_ok = !raw.prefix.is_empty()
        && raw.prefix.len() <= 16
        && raw.prefix.bytes().all(|b| b.is_ascii_alphanumeric());
    if !prefix_ok {
        return Err(invalid("keys.prefix", "must be 1 to 16 letters or digits"));
    }
    if raw.headers.is_empty() && !raw.authorization_bearer {
        return Err(invalid(
            "keys.headers",
            "is empty and keys.authorization_bearer is false: no way to send a key",
        ));
    }
    let mut headers = Vec::with_capacity(raw.headers.len());
    for (i, h) in raw.headers.iter().enumerate() {
        let path = format!("keys.headers[{i}]");
        let name = HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| invalid(&path, format!("`{h}` is not a valid header name")))?;
        if name == http::header::AUTHORIZATION {
            return Err(invalid(
                path,
                "use keys.authorization_bearer for the Authorization header",
            ));
        }
        if GATEWAY_HEADERS.contains(&name.as_str()) {
            return Err(invalid(
                path,
                format!(
                    "`{name}` is read or set by the gateway itself, so a key in it would \
                     reach the upstream or the logs; use a header of its own such as \
                     `X-API-Key`"
                ),
            ));
        }
        if is_identity_header(name.as_str(), &identity.header_prefix) {
            return Err(invalid(
                path,
                "must not start with identity.header_prefix (those headers are stripped)",
            ));
        }
        headers.push(name);
    }
    Ok(KeysConfig {
        prefix: raw.prefix.clone(),
        headers,
        authorization_bearer: raw.authorization_bearer,
        default_ttl: positive("keys.default_ttl", raw.default_ttl)?,
        allow_never_expires: raw.allow_never_expires,
    })
}

/// Headers the gateway reads or sets for its own purposes (routing, request ids, forwarding,
/// connection handling, body framing), or forwards untouched (a foreign `Authorization`):
/// none may carry a key, and the identity prefix may not take any of them in. A key in
/// `X-Request-Id` would be echoed to the upstream, the client and the access log; in `Host`,
/// forwarded as `X-Forwarded-Host`.
const GATEWAY_HEADERS: [&str; 14] = [
    "host",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "authorization",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Whether `name`, with `_` read as `-`, starts with `prefix`, ignoring case.
/// Shared by config checks and the proxy's identity-header stripping.
pub fn is_identity_header(name: &str, prefix: &str) -> bool {
    let (name, prefix) = (name.as_bytes(), prefix.as_bytes());
    name.len() >= prefix.len()
        && name.iter().zip(prefix).all(|(&n, &p)| {
            let n = if n == b'_' { b'-' } else { n };
            let p = if p == b'_' { b'-' } else { p };
            n.eq_ignore_ascii_case(&p)
        })
}

fn validate_route(path: &str, r: &raw::RawRoute) -> Result<RouteConfig, ConfigError> {
    // Must start with a letter or digit: `_none` is the metrics label of unrouted requests.
    let name_ok = r.name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && r.name.len() <= 64
        && r.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(invalid(
            format!("{path}.name"),
            "is required: 1 to 64 letters, digits, `-`, `_` or `.`, starting with a letter \
             or digit (it labels metrics)",
        ));
    }
    if !r.path_prefix.starts_with('/') || r.path_prefix.contains(['?', '#']) {
        return Err(invalid(
            format!("{path}.path_prefix"),
            "must start with `/` and hold no `?` or `#`",
        ));
    }
    let host = match &r.host {
        Some(h) if h.trim().is_empty() || h.parse::<http::uri::Authority>().is_err() => {
            return Err(invalid(
                format!("{path}.host"),
                format!("`{h}` is not a host name"),
            ))
        }
        Some(h) => Some(h.trim().to_ascii_lowercase()),
        None => None,
    };
    let methods = match &r.methods {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(invalid(
                format!("{path}.methods"),
                "is empty; leave it out to allow every method",
            ))
        }
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, m)| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                        invalid(
                            format!("{path}.methods[{i}]"),
                            format!("`{m}` is not a method"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let upstream = upstream_target(&format!("{path}.upstream"), &r.upstream)?;
    if !r.require.is_empty() && r.auth != AuthMode::Required {
        return Err(invalid(
            format!("{path}.require"),
            "needs `auth: required`: only a checked key has permissions",
        ));
    }
    for (i, perm) in r.require.iter().enumerate() {
        if perm.is_empty() || perm.contains(|c: char| c.is_whitespace() || c == ',') {
            return Err(invalid(
                format!("{path}.require[{i}]"),
                "a permission is a non-empty word without spaces or commas",
            ));
        }
    }
    Ok(RouteConfig {
        name: Arc::from(r.name.as_str()),
        path_prefix: r.path_prefix.clone(),
        host,
        methods,
        upstream,
        auth: r.auth,
        require: r.require.clone(),
        strip_prefix: r.strip_prefix,
        timeout: positive(&format!("{path}.timeout"), r.timeout)?,
        preserve_host: r.preserve_host,
        upstream_http2: r.upstream_http2,
    })
}

fn upstream_target(path: &str, text: &str) -> Result<UpstreamTarget, ConfigError> {
    let bad = |why: &str| invalid(path, format!("`{text}` {why}"));
    if text.is_empty() {
        return Err(invalid(path, "is required, e.g. `http://127.0.0.1:9000`"));
    }
    let uri: Uri = text.parse().map_err(|_| bad("is not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => http::uri::Scheme::HTTP,
        Some("https") => http::uri::Scheme::HTTPS,
        _ => return Err(bad("must start with http:// or https://")),
    };
    let authority = uri.authority().cloned().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not carry credentials"));
    }
    if uri.query().is_some() {
        return Err(bad("must not have a query string"));
    }
    Ok(UpstreamTarget {
        scheme,
        authority,
        base_path: uri.path().trim_end_matches('/').to_owned(),
    })
}

fn socket_addr(path: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        invalid(
            path,
            format!("`{text}` is not an address such as `0.0.0.0:8080` or `[::1]:8080`"),
        )
    })
}

fn non_empty_path(path: &str, text: &str) -> Result<PathBuf, ConfigError> {
    if text.trim().is_empty() {
        return Err(invalid(path, "must not be empty"));
    }
    Ok(PathBuf::from(text))
}

fn positive(path: &str, d: HumanDuration) -> Result<Duration, ConfigError> {
    if d.0.is_zero() {
        return Err(invalid(path, "must be greater than zero"));
    }
    Ok(d.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const MINIMAL: &str =
        "routes:\n  - name: api\n    upstream: http://127.0.0.1:9000\n    auth: none\n";

    fn error_of(yaml: &str) -> (String, String) {
        match Config::from_yaml(yaml, &no_env) {
            Err(ConfigError::Invalid { path, message }) => (path, message),
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_gets_contract_defaults() {
        let c = Config::from_yaml(MINIMAL, &no_env).unwrap();
        assert_eq!(c.proxy.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.status.listen.to_string(), "0.0.0.0:8082");
        assert_eq!(c.store.backend, StoreBackend::Embedded);
        assert_eq!(c.cache.max_entries, 1_000_000);
        assert_eq!(c.cache.ttl, Duration::from_secs(60));
        assert_eq!(c.keys.headers, vec![HeaderName::from_static("x-api-key")]);
        assert_eq!(c.identity.header_prefix, "X-Keygate-");
        assert_eq!(c.routes[0].path_prefix, "/");
        assert_eq!(c.routes[0].timeout, Duration::from_secs(30));
    }

    #[test]
    fn proxy_workers_default_to_one_per_cpu_and_are_bounded() {
        let c = Config::from_yaml(MINIMAL, &no_env).unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(c.proxy.workers, cpus);
        let c = Config::from_yaml(&format!("proxy: {{ workers: 3 }}\n{MINIMAL}"), &no_env).unwrap();
        assert_eq!(c.proxy.workers, 3);
        let (path, msg) = error_of(&format!("proxy: {{ workers: 5000 }}\n{MINIMAL}"));
        assert_eq!(path, "proxy.workers");
        assert!(msg.contains("at most 1024"), "{msg}");
        let (path, _) = error_of(&format!("proxy: {{ workers: -1 }}\n{MINIMAL}"));
        assert_eq!(path, "proxy.workers");
    }

    #[test]
    fn cpu_affinity_is_auto_unless_turned_off() {
        let c = Config::from_yaml(MINIMAL, &no_env).unwrap();
        assert_eq!(c.proxy.cpu_affinity, CpuAffinity::Auto);
        let off = format!("proxy: {{ cpu_affinity: off }}\n{MINIMAL}");
        let c = Config::from_yaml(&off, &no_env).unwrap();
        assert_eq!(c.proxy.cpu_affinity, CpuAffinity::Off);
        let (path, _) = error_of(&format!("proxy: {{ cpu_affinity: pinned }}\n{MINIMAL}"));
        assert_eq!(path, "proxy.cpu_affinity");
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let (path, msg) = error_of(&format!("{MINIMAL}    colour: blue\n"));
        assert_eq!(path, "routes[0].colour");
        assert!(msg.starts_with("unknown key"), "{msg}");
        let (path, _) = error_of(&format!("proxy:\n  lisen: 1\n{MINIMAL}"));
        assert_eq!(path, "proxy.lisen");
        let (path, _) = error_of(&format!("bogus: 1\n{MINIMAL}"));
        assert_eq!(path, "bogus");
    }

    #[test]
    fn unknown_keys_that_are_not_plain_words_are_quoted_in_the_path() {
        // Found by the config fuzz checks (docs/fuzzing.md, F1): an empty key, an empty path.
        let (path, msg) = error_of(&format!("\"\": 1\n{MINIMAL}"));
        assert_eq!(path, "\"\"");
        assert!(
            msg.starts_with("unknown key; expected one of `proxy`"),
            "{msg}"
        );
        let (path, _) = error_of(&format!("{MINIMAL}    \"a b\": 1\n"));
        assert_eq!(path, "routes[0].\"a b\"");
        let (path, _) = error_of(&format!("proxy:\n  \"x\\ny\": 1\n{MINIMAL}"));
        assert_eq!(path, "proxy.\"x\\ny\"");
        // A backtick in the key is part of it, not the end of serde's quoting.
        let (path, msg) = error_of(&format!("\"a`b\": 1\n{MINIMAL}"));
        assert_eq!(path, "\"a`b\"");
        assert!(msg.starts_with("unknown key; expected"), "{msg}");
        let (path, _) = error_of(&format!("{MINIMAL}    x-y_z: 1\n"));
        assert_eq!(path, "routes[0].x-y_z");
    }

    #[test]
    fn key_headers_and_identity_prefix_keep_clear_of_the_gateways_own_headers() {
        // Found with the header_rewrite fuzz target's invariants (docs/fuzzing.md, F4): a key
        // in X-Request-Id or Host reached the upstream; an identity prefix of `X-Request-`
        // let a client-chosen X-Request-Id pass as an identity header.
        for header in [
            "X-Request-Id",
            "Host",
            "x-forwarded-for",
            "Connection",
            "Upgrade",
        ] {
            let (path, msg) = error_of(&format!(
                "keys: {{ headers: [X-API-Key, {header}] }}\n{MINIMAL}"
            ));
            assert_eq!(path, "keys.headers[1]", "{header}");
            assert!(msg.contains("gateway itself"), "{msg}");
        }
        let (path, msg) = error_of(&format!("keys: {{ headers: [Authorization] }}\n{MINIMAL}"));
        assert_eq!(path, "keys.headers[0]");
        assert!(msg.contains("authorization_bearer"), "{msg}");
        for prefix in ["X-Request-", "x_forwarded_", "X-", "H", "Co", "Te"] {
            let (path, msg) = error_of(&format!(
                "identity: {{ header_prefix: '{prefix}' }}\n{MINIMAL}"
            ));
            assert_eq!(path, "identity.header_prefix", "{prefix}");
            assert!(msg.contains("forwards or sets"), "{msg}");
        }
        for prefix in ["X-Keygate-", "X-Auth-", "Caller-", "X-Requester-"] {
            let yaml = format!("identity: {{ header_prefix: '{prefix}' }}\n{MINIMAL}");
            assert!(Config::from_yaml(&yaml, &no_env).is_ok(), "{prefix}");
        }
    }

    #[test]
    fn bad_values_name_their_path() {
        let (path, _) = error_of(&MINIMAL.replace("http://127.0.0.1:9000", "ftp://x"));
        assert_eq!(path, "routes[0].upstream");
        let (path, msg) = error_of(&format!("{MINIMAL}    timeout: 30 seconds\n"));
        assert_eq!(path, "routes[0].timeout");
        assert!(msg.contains("unit"), "{msg}");
        let (path, _) = error_of(&format!("proxy:\n  listen: nowhere\n{MINIMAL}"));
        assert_eq!(path, "proxy.listen");
        let (path, _) = error_of(&format!("{MINIMAL}    methods: [GET, 'B@D']\n"));
        assert_eq!(path, "routes[0].methods[1]");
        let (path, _) = error_of(&format!(
            "{MINIMAL}  - name: api\n    upstream: http://x\n    auth: none\n"
        ));
        assert_eq!(path, "routes[1].name");
        let (path, _) = error_of("routes: []\n");
        assert_eq!(path, "routes");
    }

    #[test]
    fn auth_defaults_to_required_and_require_needs_it() {
        let c = Config::from_yaml(&MINIMAL.replace("    auth: none\n", ""), &no_env).unwrap();
        assert_eq!(c.routes[0].auth, AuthMode::Required);
        let (path, msg) = error_of(&format!("{MINIMAL}    require: [orders:read]\n"));
        assert_eq!(path, "routes[0].require");
        assert!(msg.contains("auth: required"), "{msg}");
    }

    #[test]
    fn environment_overrides_redis_url_and_reads_admin_token() {
        let env = |name: &str| match name {
            "KEYGATE_REDIS_URL" => Some("redis://:hunter2@redis:6379/1".to_owned()),
            "KEYGATE_ADMIN_TOKEN" => Some("sekret-token".to_owned()),
            _ => None,
        };
        let c = Config::from_yaml(MINIMAL, &env).unwrap();
        assert_eq!(c.store.redis_url.expose(), "redis://:hunter2@redis:6379/1");
        assert_eq!(c.admin.token.as_ref().unwrap().expose(), "sekret-token");
        let shown = c.redacted_yaml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("sekret-token"), "{shown}");
        assert!(shown.contains("redis://:****@redis:6379/1"), "{shown}");
        assert!(!format!("{c:?}").contains("sekret-token"));
    }

    #[test]
    fn redis_mode_defaults_to_standalone() {
        let c = Config::from_yaml(MINIMAL, &no_env).unwrap();
        assert_eq!(c.store.redis_topology, RedisTopology::Standalone);
        assert!(
            !c.redacted_yaml().contains("sentinel"),
            "{}",
            c.redacted_yaml()
        );
    }

    #[test]
    fn cluster_mode_takes_seed_nodes() {
        let yaml = format!(
            "store:\n  backend: redis\n  redis:\n    mode: cluster\n    url: redis://:pw@10.0.0.1:6379\n    cluster: {{ nodes: ['10.0.0.1:6379', 'redis-b:7000', '[::1]:7001'] }}\n{MINIMAL}"
        );
        let c = Config::from_yaml(&yaml, &no_env).unwrap();
        let node = |host: &str, port| RedisNode {
            host: host.into(),
            port,
        };
        assert_eq!(
            c.store.redis_topology,
            RedisTopology::Cluster {
                seeds: vec![
                    node("10.0.0.1", 6379),
                    node("redis-b", 7000),
                    node("::1", 7001)
                ]
            }
        );
        assert_eq!(node("::1", 7001).to_string(), "[::1]:7001");
        let again = Config::from_yaml(&c.redacted_yaml(), &no_env).unwrap();
        assert_eq!(again.store.redis_topology, c.store.redis_topology);
        // No nodes: the URL's node is the seed.
        let c = Config::from_yaml(
            &format!("store: {{ redis: {{ mode: cluster }} }}\n{MINIMAL}"),
            &no_env,
        )
        .unwrap();
        assert_eq!(
            c.store.redis_topology,
            RedisTopology::Cluster { seeds: vec![] }
        );
    }

    #[test]
    fn sentinel_mode_takes_master_and_sentinels_and_the_url_keeps_credentials() {
        let yaml = format!(
            "store:\n  redis:\n    mode: sentinel\n    url: redis://mymaster/2\n    sentinel: {{ master: mymaster, nodes: ['s1:26379', 's2:26379'], auth: true }}\n{MINIMAL}"
        );
        let env = |name: &str| {
            (name == "KEYGATE_REDIS_URL").then(|| "redis://:hunter2@mymaster/2".to_owned())
        };
        let c = Config::from_yaml(&yaml, &env).unwrap();
        assert_eq!(
            c.store.redis_topology,
            RedisTopology::Sentinel {
                master: "mymaster".into(),
                sentinels: vec![
                    RedisNode {
                        host: "s1".into(),
                        port: 26379
                    },
                    RedisNode {
                        host: "s2".into(),
                        port: 26379
                    }
                ],
                auth: true,
            }
        );
        assert_eq!(c.store.redis_url.expose(), "redis://:hunter2@mymaster/2");
        assert_eq!(c.store.redis_target().url, c.store.redis_url);
        assert!(!c.redacted_yaml().contains("hunter2"));
    }

    #[test]
    fn redis_topology_errors_name_their_path() {
        let with = |redis: &str| format!("store:\n  redis:\n{redis}{MINIMAL}");
        let cases = [
            ("    mode: ring\n", "store.redis.mode"),
            ("    cluster: { nodes: [a:1] }\n", "store.redis.cluster"),
            (
                "    mode: cluster\n    sentinel: { master: m }\n",
                "store.redis.sentinel",
            ),
            (
                "    mode: cluster\n    cluster: { nodes: [a:1, 'b'] }\n",
                "store.redis.cluster.nodes[1]",
            ),
            (
                "    mode: cluster\n    cluster: { nodes: ['a:0'] }\n",
                "store.redis.cluster.nodes[0]",
            ),
            (
                "    mode: cluster\n    cluster: { seeds: [] }\n",
                "store.redis.cluster.seeds",
            ),
            (
                "    mode: cluster\n    url: redis://h:6379/3\n",
                "store.redis.url",
            ),
            (
                "    mode: cluster\n    url: redis+unix:///tmp/r.sock\n",
                "store.redis.url",
            ),
            ("    mode: sentinel\n", "store.redis.sentinel"),
            (
                "    mode: sentinel\n    sentinel: { nodes: [s:1] }\n",
                "store.redis.sentinel.master",
            ),
            (
                "    mode: sentinel\n    sentinel: { master: m }\n",
                "store.redis.sentinel.nodes",
            ),
            (
                "    mode: sentinel\n    sentinel: { master: m, nodes: ['s:x'] }\n",
                "store.redis.sentinel.nodes[0]",
            ),
            (
                "    mode: sentinel\n    sentinel: { master: m, nodes: [s:1], quorum: 2 }\n",
                "store.redis.sentinel.quorum",
            ),
        ];
        for (redis, want) in cases {
            let (path, message) = error_of(&with(redis));
            assert_eq!(path, want, "{redis}: {message}");
        }
    }

    #[test]
    fn redacted_yaml_parses_back_to_the_same_config() {
        let c = Config::from_yaml(MINIMAL, &no_env).unwrap();
        let again = Config::from_yaml(&c.redacted_yaml(), &no_env).unwrap();
        assert_eq!(again.redacted_yaml(), c.redacted_yaml());
    }

    #[test]
    fn identity_header_match_ignores_case_and_underscores() {
        for name in [
            "x-keygate-user",
            "X_Keygate_User",
            "X-KEYGATE-",
            "x_keygate-permissions",
        ] {
            assert!(is_identity_header(name, "X-Keygate-"), "{name}");
        }
        for name in ["x-keygat", "x-api-key", "keygate-user", "x-keygateuser"] {
            assert!(!is_identity_header(name, "X-Keygate-"), "{name}");
        }
    }

    #[test]
    fn upstream_base_path_is_kept_without_trailing_slash() {
        let c = Config::from_yaml(&MINIMAL.replace("9000", "9000/base/"), &no_env).unwrap();
        assert_eq!(c.routes[0].upstream.base_path, "/base");
        assert_eq!(c.routes[0].upstream.authority.as_str(), "127.0.0.1:9000");
    }
}
