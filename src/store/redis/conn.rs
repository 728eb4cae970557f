//! One command connection for the three ways keygate reaches Redis: a single server, a
//! Redis Cluster, or the master that Redis Sentinel names. Each reconnects by itself. A
//! command that finds no server fails within [`RESPONSE_TIMEOUT`] (the data plane then answers
//! 503 for uncached keys and keeps serving cached ones) and a later command tries again.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};

use super::sentinel::SentinelConn;
use crate::config::{RedisNode, RedisTarget, RedisTopology};

/// A command that takes longer than this is treated as an outage: the data plane would
/// rather answer 503 quickly than hold requests.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A cloneable command connection; clones share the underlying connections.
#[derive(Clone)]
pub enum RedisConn {
    Standalone(ConnectionManager),
    Cluster {
        conn: ClusterConnection,
        /// The slot of keygate's hash tag: where its data and its PINGs go.
        home: Route,
    },
    Sentinel(SentinelConn),
}

impl RedisConn {
    /// Connects lazily: nothing is dialled until the first command, so keygate starts (and
    /// serves cached keys) while Redis is down. `home_key` is any key name carrying keygate's
    /// hash tag.
    pub fn open(target: &RedisTarget, home_key: &str) -> RedisResult<Self> {
        let url = target.url.expose().into_connection_info()?;
        match &target.topology {
            RedisTopology::Standalone => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    // Give up a reconnect round quickly; the next command starts another one.
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                let conn = redis::Client::open(url)?.get_connection_manager_lazy(config)?;
                Ok(RedisConn::Standalone(conn))
            }
            RedisTopology::Cluster { seeds } => {
                let client = ClusterClient::builder(cluster_seeds(&url, seeds))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    // The overall bound stays RESPONSE_TIMEOUT; within it, a request that met
                    // a failing node retries soon on the refreshed slot map.
                    .retries(3)
                    .min_retry_wait(20)
                    .max_retry_wait(300)
                    .build()?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT);
                Ok(RedisConn::Cluster {
                    conn: client.get_pending_async_connection_with_config(config),
                    home: Route::with_key(home_key, SlotAddr::Master),
                })
            }
            RedisTopology::Sentinel {
                master,
                sentinels,
                auth,
            } => Ok(RedisConn::Sentinel(SentinelConn::new(
                &url, master, sentinels, *auth,
            )?)),
        }
    }

    /// Whether the server holding keygate's data answers. In a cluster that is the master of
    /// keygate's slot, not every node: other shards being down does not concern keygate.
    pub async fn ping(&mut self) -> RedisResult<()> {
        let ping = redis::cmd("PING");
        match self {
            RedisConn::Cluster { conn, home } => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(*home));
                conn.route_command(ping, route).await.map(|_| ())
            }
            _ => ping.query_async::<String>(self).await.map(|_| ()),
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_command(cmd),
            RedisConn::Cluster { conn, .. } => conn.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster { conn, .. } => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Standalone(c) => c.get_db(),
            RedisConn::Cluster { conn, .. } => conn.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
    }
}

/// Whether a command failed for want of a (working) server, as opposed to Redis refusing
/// the command itself.
pub fn is_outage(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    // `maxmemory` reached under `noeviction`: writes are refused until memory is freed, a
    // condition to retry later (503), not a fault in the request.
    if e.code() == Some("OOM") {
        return true;
    }
    matches!(
        e.kind(),
        ErrorKind::Io
            | ErrorKind::Client
            | ErrorKind::AuthenticationFailed
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::MasterNameNotFoundBySentinel
            | ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
    )
}

/// `url` with its address replaced by `node`, keeping credentials, database and TLS.
pub(crate) fn at_node(url: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match url.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    url.clone().set_addr(addr)
}

/// `host:port` (or the socket path) of a node, never its credentials: for logs.
pub(crate) fn describe(node: &ConnectionInfo) -> String {
    match node.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        ConnectionAddr::Unix(path) => path.display().to_string(),
        other => format!("{other:?}"),
    }
}

/// The configured seeds, or the URL's own node when none are listed.
pub(crate) fn cluster_seeds(url: &ConnectionInfo, seeds: &[RedisNode]) -> Vec<ConnectionInfo> {
    if seeds.is_empty() {
        return vec![url.clone()];
    }
    seeds
        .iter()
        .map(|n| at_node(url, &n.host, n.port))
        .collect()
}

pub(crate) fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out"),
    ))
}

/// Connection settings for a single node reached directly (pub/sub, discovery, masters).
pub(crate) fn node_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
}
