//! Idle upstream connections, by upstream authority and by thread. Taken newest first (the
//! one most likely still open and warm), dropped after `pool_idle_timeout` by a sweep.
//!
//! By thread because a socket belongs to the event loop it was opened on: each proxy worker
//! runs its own (`crate::workers`), and a connection used from another worker's loop would
//! have every readiness event cross threads.

use std::hash::{Hash, Hasher};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::uri::Authority;
use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::H1Error;
use crate::config::UpstreamConfig;

/// Read buffer growth step; most responses fit in one.
const READ_CHUNK: usize = 16 * 1024;

/// One upstream connection and the bytes read from it but not yet consumed.
pub struct Conn {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl Conn {
    /// Reads whatever the socket has into `buf`; `Ok(0)` is the upstream's close.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        poll_read_drained(&self.stream, &mut self.buf, cx)
    }

    /// Whether an idle connection is open with nothing to read. A system call only when
    /// the socket has been readable since it last reported nothing: otherwise tokio answers
    /// from its cached readiness.
    fn is_silent(&mut self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Reads what `stream` has into `buf`'s free room (there must be some); `Ok(0)` is the
/// peer's close. A short read took everything the socket had, so tokio is told it is no
/// longer readable: otherwise its cached readiness stays set, and the next wait for data
/// (the next answer, the next request, or the pool's idle check) would start with a read
/// that finds nothing, one wasted system call per request. Safe against races: tokio keeps
/// readiness that a newer event set, and never clears the peer's close.
pub fn poll_read_drained(
    stream: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        let room = buf.capacity() - buf.len();
        match stream.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Ok(n) if n > 0 && n < room => {
                let _ = stream.try_io(tokio::io::Interest::READABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
                return Poll::Ready(Ok(n));
            }
            result => return Poll::Ready(result),
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle connections of one thread and upstream.
#[derive(PartialEq, Eq)]
struct Key {
    thread: ThreadId,
    authority: Authority,
}

/// How a request looks its key up: without cloning the authority, whose shared count both
/// workers would write.
struct KeyRef<'a> {
    thread: ThreadId,
    authority: &'a Authority,
}

/// Hashes only the thread and the authority's length: `Authority` hashes itself a byte at
/// a time, lowercased, which with SipHash cost about 1,000 instructions per lookup (two
/// lookups per request; callgrind, BENCHMARKS.md). A worker talks to a handful of
/// upstreams, and equal lengths are told apart by the comparison.
fn key_hash<H: Hasher>(thread: ThreadId, authority: &Authority, state: &mut H) {
    thread.hash(state);
    authority.as_str().len().hash(state);
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        key_hash(self.thread, &self.authority, state);
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        key_hash(self.thread, self.authority, state);
    }
}

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.thread == key.thread && *self.authority == key.authority
    }
}

type IdleMap = hashbrown::HashMap<Key, Vec<Idle>, foldhash::fast::RandomState>;

/// One lock per group of threads, on a cache line of its own: each proxy worker takes only
/// its own, instead of both cores taking one lock twice per request.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<IdleMap>);

const SHARDS: usize = 8;

/// This thread's id and shard (threads are numbered as they first use a pool).
fn this_thread() -> (ThreadId, usize) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static THIS: (ThreadId, usize) =
            (thread::current().id(), NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
    }
    THIS.with(|this| *this)
}

pub struct Pool {
    idle: Box<[Shard]>,
    max_idle_per_host: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(cfg: &UpstreamConfig) -> Arc<Self> {
        let pool = Arc::new(Self {
            idle: (0..SHARDS).map(|_| Shard::default()).collect(),
            max_idle_per_host: cfg.pool_max_idle_per_host,
            idle_timeout: cfg.pool_idle_timeout,
            connect_timeout: cfg.connect_timeout,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// An idle connection to `authority`, if one is open and silent. Anything readable on
    /// an idle connection (its close, a `408` some servers send before closing, bytes an
    /// upstream wrongly sent after a response) rules it out: read later, it would be taken
    /// for the answer to the next request.
    pub fn checkout(&self, authority: &Authority) -> Option<Conn> {
        let mut closed = Vec::new();
        let (thread, shard) = this_thread();
        let found = {
            let mut idle = self.idle[shard].0.lock();
            let list = idle.get_mut(&KeyRef { thread, authority })?;
            let mut found = None;
            while let Some(mut entry) = list.pop() {
                if entry.since.elapsed() < self.idle_timeout && entry.conn.is_silent() {
                    found = Some(entry.conn);
                    break;
                }
                closed.push(entry);
            }
            found
        };
        drop(closed); // closing sockets is a system call each: outside the lock
        found
    }

    /// Keeps a connection whose last exchange ended cleanly, unless enough are idle.
    pub fn put(&self, authority: &Authority, conn: Conn) {
        let entry = Idle {
            conn,
            since: Instant::now(),
        };
        let (thread, shard) = this_thread();
        let mut idle = self.idle[shard].0.lock();
        let key = KeyRef { thread, authority };
        let list = match idle.get_mut(&key) {
            Some(list) => list,
            None => idle
                .entry(Key {
                    thread,
                    authority: authority.clone(),
                })
                .or_default(),
        };
        if list.len() < self.max_idle_per_host {
            list.push(entry);
        }
    }

    pub async fn connect(&self, authority: &Authority) -> Result<Conn, H1Error> {
        let port = authority.port_u16().unwrap_or(80);
        // `[::1]` is how a URL writes an IPv6 address; the resolver wants it bare.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| H1Error::ConnectTimeout(self.connect_timeout))?
            .map_err(H1Error::Connect)?;
        stream.set_nodelay(true).map_err(H1Error::Connect)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&keepalive)
            .map_err(H1Error::Connect)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        })
    }

    /// Closes connections idle for longer than the timeout; returns how many stay open.
    fn sweep_once(&self) -> usize {
        let mut expired = Vec::new();
        let mut remaining = 0;
        for shard in &self.idle {
            let mut idle = shard.0.lock();
            for list in idle.values_mut() {
                let (keep, old): (Vec<Idle>, Vec<Idle>) = std::mem::take(list)
                    .into_iter()
                    .partition(|entry| entry.since.elapsed() < self.idle_timeout);
                *list = keep;
                expired.extend(old);
            }
            idle.retain(|_, list| !list.is_empty());
            remaining += idle.values().map(Vec::len).sum::<usize>();
        }
        drop(expired); // closed outside the lock
        remaining
    }
}

/// Runs while the pool exists: idle connections past their timeout are closed even when no
/// request comes to take them.
async fn sweep(pool: Weak<Pool>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(p) => {
                p.sweep_once();
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn config(idle: Duration, max: usize) -> UpstreamConfig {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(1),
            pool_idle_timeout: idle,
            pool_max_idle_per_host: max,
            ca_file: None,
        }
    }

    #[tokio::test]
    async fn idle_connections_are_reused_capped_and_expire() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..3 {
                held.push(listener.accept().await.unwrap().0);
            }
            held
        });
        let pool = Pool::new(&config(Duration::from_millis(300), 2));
        let conns = [
            pool.connect(&authority).await.unwrap(),
            pool.connect(&authority).await.unwrap(),
            pool.connect(&authority).await.unwrap(),
        ];
        let _held = accept.await.unwrap();
        for conn in conns {
            pool.put(&authority, conn);
        }
        assert_eq!(pool.sweep_once(), 2, "at most pool_max_idle_per_host idle");
        assert!(pool.checkout(&authority).is_some());
        let last = pool.checkout(&authority).unwrap();
        assert!(pool.checkout(&authority).is_none());
        pool.put(&authority, last);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(pool.sweep_once(), 0, "expired connections are closed");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let pool = Pool::new(&config(Duration::from_secs(60), 4));
        let conn = pool.connect(&authority).await.unwrap();
        let (mut server_side, _) = listener.accept().await.unwrap();
        pool.put(&authority, conn);
        server_side.shutdown().await.unwrap();
        drop(server_side);
        // Let the FIN arrive and the reactor see it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.checkout(&authority).is_none());
    }
}
