//! Redis Sentinel: finding the master, following it through failovers, and hearing of a
//! switch as soon as the sentinels announce it.
//!
//! Why listen for `+switch-master`: after a planned switch-over (`SENTINEL FAILOVER`), the
//! old master keeps answering *as a master* until the sentinels reconfigure it, which they
//! do only after some seconds (they wait to be sure it is not flapping). A client still
//! connected to it would keep writing there, and those writes — a revocation, say — are
//! lost when it turns replica. So, as Jedis and Lettuce do, keygate subscribes to the
//! sentinels' switch announcements and drops its master connection the moment one comes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Msg, Pipeline, ProtocolVersion, PushInfo,
    PushKind, RedisConnectionInfo, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::conn::{at_node, describe, node_config, timed_out};
use crate::config::RedisNode;

/// Bound on asking the sentinels for the master and connecting to it.
pub(crate) const SENTINEL_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed master lookup, commands fail at once for this long instead of each
/// asking the sentinels again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The channel on which sentinels announce `<name> <old ip> <old port> <new ip> <new port>`.
const SWITCH_CHANNEL: &str = "+switch-master";

/// The sentinels, with the URL's user and password when `auth` says they need them.
pub(crate) fn sentinel_nodes(
    url: &ConnectionInfo,
    sentinels: &[RedisNode],
    auth: bool,
) -> Vec<ConnectionInfo> {
    let mut settings = RedisConnectionInfo::default();
    if auth {
        if let Some(user) = url.redis_settings().username() {
            settings = settings.set_username(user);
        }
        if let Some(password) = url.redis_settings().password() {
            settings = settings.set_password(password);
        }
    }
    sentinels
        .iter()
        .map(|n| at_node(url, &n.host, n.port).set_redis_settings(settings.clone()))
        .collect()
}

/// A client that asks `sentinels` for `master` and connects to it with the URL's
/// credentials, database, protocol and TLS.
pub(crate) fn sentinel_client(
    url: &ConnectionInfo,
    master: &str,
    sentinels: &[ConnectionInfo],
) -> RedisResult<SentinelClient> {
    let mut data_nodes = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(url.redis_settings().clone());
    if let ConnectionAddr::TcpTls { insecure, .. } = url.addr() {
        data_nodes = data_nodes.set_tls_mode(if *insecure {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        });
    }
    SentinelClient::build(
        sentinels.to_vec(),
        master,
        Some(data_nodes),
        SentinelServerType::Master,
    )
}

/// Counts the sentinels' announcements that `master` moved, from a background task that
/// stays subscribed on one sentinel after another. Stops when dropped.
pub(crate) struct SwitchWatch {
    switches: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl SwitchWatch {
    /// Must be called within the Tokio runtime.
    pub(crate) fn start(sentinels: Vec<ConnectionInfo>, master: String) -> Self {
        let (tx, switches) = watch::channel(0);
        let task = tokio::spawn(watch_switches(sentinels, master, tx));
        Self { switches, task }
    }

    /// How many switches (or gaps in listening, which may hide one) there have been.
    pub(crate) fn count(&self) -> u64 {
        *self.switches.borrow()
    }

    /// Resolves at the next switch after now.
    pub(crate) fn next(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut switches = self.switches.clone();
        switches.borrow_and_update();
        async move {
            // An error means the watch stopped: then no switch will ever be told.
            if switches.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for SwitchWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch_switches(sentinels: Vec<ConnectionInfo>, master: String, tx: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(100);
    let mut listened = false;
    for sentinel in sentinels.iter().cycle() {
        let subscribed = tokio::time::timeout(SENTINEL_LOOKUP_TIMEOUT, async {
            let mut pubsub = redis::Client::open(sentinel.clone())?
                .get_async_pubsub()
                .await?;
            pubsub.subscribe(SWITCH_CHANNEL).await?;
            Ok::<_, RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(pubsub)) = subscribed {
            backoff = Duration::from_millis(100);
            // Not listening for a while may have hidden a switch: count one, to be safe.
            if listened {
                tx.send_modify(|n| *n += 1);
            }
            listened = true;
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                if announces_switch_of(&msg, &master) {
                    tracing::info!(%master, announcement = ?msg.get_payload::<String>().ok(), "sentinels switched the master");
                    tx.send_modify(|n| *n += 1);
                }
            }
            tracing::debug!(sentinel = %describe(sentinel), "lost the sentinel's switch announcements; trying the next");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn announces_switch_of(msg: &Msg, master: &str) -> bool {
    msg.get_payload::<String>()
        .is_ok_and(|p| p.split(' ').next() == Some(master))
}

/// A connection to whichever server the sentinels currently name as master; the next
/// command asks the sentinels again once it is dropped: when the sentinels announce a
/// switch, when it closes, or when a command on it fails for want of a connection or finds
/// a replica (READONLY). A command that fails is not retried: it may have run.
///
/// Sentinel closes every client of a server it reconfigures. The connection speaks RESP3
/// so that the client library tells of the close at once, and the next command goes to
/// the new master instead of failing on the closed connection.
#[derive(Clone)]
pub struct SentinelConn(Arc<Shared>);

struct Shared {
    /// Held while asking the sentinels, so one lookup serves every waiting command.
    lookup: tokio::sync::Mutex<Lookup>,
    master: ArcSwapOption<Master>,
    db: i64,
    sentinels: Vec<ConnectionInfo>,
    name: String,
    /// Started with the first command (it needs the runtime).
    switches: OnceLock<SwitchWatch>,
    /// The switch count the current connection was made after.
    seen_switches: AtomicU64,
}

struct Master {
    conn: MultiplexedConnection,
    /// Which connection this is, so a late notice about it cannot drop its successor.
    generation: u64,
}

struct Lookup {
    client: SentinelClient,
    generation: u64,
    failed: Option<(Instant, RedisError)>,
}

impl SentinelConn {
    pub(crate) fn new(
        url: &ConnectionInfo,
        master: &str,
        sentinels: &[RedisNode],
        auth: bool,
    ) -> RedisResult<Self> {
        let sentinels = sentinel_nodes(url, sentinels, auth);
        let settings = url.redis_settings().clone();
        let db = settings.db();
        let url = url
            .clone()
            .set_redis_settings(settings.set_protocol(ProtocolVersion::RESP3));
        Ok(Self(Arc::new(Shared {
            lookup: tokio::sync::Mutex::new(Lookup {
                client: sentinel_client(&url, master, &sentinels)?,
                generation: 0,
                failed: None,
            }),
            master: ArcSwapOption::empty(),
            db,
            sentinels,
            name: master.to_owned(),
            switches: OnceLock::new(),
            seen_switches: AtomicU64::new(0),
        })))
    }

    async fn master(&self) -> RedisResult<Arc<Master>> {
        let shared = &self.0;
        let switches = shared
            .switches
            .get_or_init(|| SwitchWatch::start(shared.sentinels.clone(), shared.name.clone()))
            .count();
        if shared.seen_switches.swap(switches, Ordering::AcqRel) != switches {
            if let Some(current) = shared.master.load_full() {
                shared.forget(current.generation);
            }
        }
        if let Some(master) = shared.master.load_full() {
            return Ok(master);
        }
        let mut lookup = shared.lookup.lock().await;
        // Another command may have connected while this one waited for the lock.
        if let Some(master) = shared.master.load_full() {
            return Ok(master);
        }
        if let Some((at, e)) = &lookup.failed {
            if at.elapsed() < RETRY_PAUSE {
                return Err(e.clone());
            }
        }
        lookup.generation += 1;
        let generation = lookup.generation;
        let weak = Arc::downgrade(shared);
        let on_push = move |push: PushInfo| {
            if push.kind == PushKind::Disconnection {
                if let Some(shared) = weak.upgrade() {
                    shared.forget(generation);
                }
            }
            Ok::<(), std::convert::Infallible>(())
        };
        let config = node_config().set_push_sender(on_push);
        let found = tokio::time::timeout(SENTINEL_LOOKUP_TIMEOUT, async {
            let client = lookup.client.async_get_client().await?;
            let addr = describe(client.get_connection_info());
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            Ok::<_, RedisError>((conn, addr))
        })
        .await
        .unwrap_or_else(|_| Err(timed_out("asking the sentinels for the master")));
        match found {
            Ok((conn, addr)) => {
                tracing::info!(master = %addr, "connected to the master named by the sentinels");
                let master = Arc::new(Master { conn, generation });
                shared.master.store(Some(master.clone()));
                lookup.failed = None;
                Ok(master)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the master named by the sentinels");
                lookup.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// After a command: a master that is gone or was demoted is forgotten.
    fn check<T>(&self, master: &Master, result: &RedisResult<T>) {
        if result.as_ref().is_err_and(lost_master) {
            self.0.forget(master.generation);
        }
    }
}

impl Shared {
    /// Drops connection `generation` unless it was already replaced.
    fn forget(&self, generation: u64) {
        let current = self.master.load_full();
        if current.as_ref().is_some_and(|m| m.generation == generation) {
            self.master.compare_and_swap(&current, None);
            tracing::warn!("left the Redis master; asking the sentinels again");
        }
    }
}

fn lost_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let master = self.master().await?;
            let result = master.conn.clone().req_packed_command(cmd).await;
            self.check(&master, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let master = self.master().await?;
            let result = master
                .conn
                .clone()
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.check(&master, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.0.db
    }
}
