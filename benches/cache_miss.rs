//! What a cache miss costs against a real local Redis: the store's one-round-trip
//! `load_key` alone, and a whole `Verifier::verify` that misses its key cache.
//! Run: `cargo bench --bench cache_miss`. Figures are recorded in BENCHMARKS.md.
//!
//! The bench starts its own throwaway `redis-server` (nothing persisted), listening on a
//! unix socket in a temporary directory and on 127.0.0.1 at a free port, seeds 10,000 keys
//! of one user, and measures each call over both transports. Without `redis-server` on the
//! PATH it prints why and measures nothing.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use keygate::auth::key::{self, KeyHash};
use keygate::auth::Verifier;
use keygate::config::Config;
use keygate::store::metered::Metered;
use keygate::store::redis::RedisStore;
use keygate::store::{Group, KeyRecord, Store, User};
use keygate::telemetry;
use metrics_exporter_prometheus::PrometheusHandle;

/// How many keys are seeded, all owned by one user.
const KEYS: usize = 10_000;
const PREFIX: &str = "kgbench:";
/// How long the server may take to answer its first `PING`.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A `redis-server` child on a unix socket and on 127.0.0.1, killed when dropped.
struct RedisServer {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    tcp: SocketAddr,
}

impl RedisServer {
    /// `None` when `redis-server` is not installed.
    fn start() -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary directory for redis");
        let socket = dir.path().join("redis.sock");
        // Bind-and-release: a small race with other processes, but no fixed port.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a free port");
        let log = File::create(dir.path().join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .args(["--port", &tcp.port().to_string(), "--bind", "127.0.0.1"])
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone redis log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server");
        let mut server = RedisServer {
            child,
            dir,
            socket,
            tcp,
        };
        server.wait_ready();
        Some(server)
    }

    fn unix_url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    fn tcp_url(&self) -> String {
        format!("redis://{}/0", self.tcp)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        while !ping(&self.socket) {
            if let Some(status) = self.child.try_wait().expect("poll redis-server") {
                panic!("redis-server exited with {status}\n{}", self.log());
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server did not answer within {START_LIMIT:?}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw `PING` on the unix socket: whether the server answers `+PONG`.
fn ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line == "+PONG\r\n"
}

/// One user in one group, owning [`KEYS`] keys; returns the keys' hashes.
async fn seed(store: &dyn Store) -> Vec<KeyHash> {
    let now = Utc::now();
    store
        .put_group(&Group {
            id: "readers".into(),
            tenant: "acme".into(),
            permissions: vec!["orders:read".into(), "items:read".into()],
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    store
        .put_user(&User {
            id: "alice".into(),
            tenant: "acme".into(),
            name: "Alice Example".into(),
            active: true,
            groups: vec!["readers".into()],
            permissions: vec!["billing:read".into()],
            created_at: now,
            updated_at: now,
            rate_limit: None,
        })
        .await
        .unwrap();
    let records: Vec<KeyRecord> = (0..KEYS)
        .map(|i| {
            let secret = key::generate("kg").unwrap();
            KeyRecord {
                id: format!("key_{i:05}"),
                hash: KeyHash::of(&secret),
                start: key::start_of(&secret),
                name: format!("bench key {i}"),
                description: String::new(),
                owner: "alice".into(),
                tenant: "acme".into(),
                enabled: true,
                created_at: now,
                updated_at: now,
                expires_at: None,
                last_used_at: None,
                permissions: None,
                created_by: "bench".into(),
                meta: None,
                rate_limit: None,
            }
        })
        .collect();
    // The connection manager pipelines concurrent calls over its one connection.
    for chunk in records.chunks(500) {
        let inserts = chunk.iter().map(|r| store.insert_key(r));
        for result in futures_util::future::join_all(inserts).await {
            result.unwrap();
        }
    }
    records.iter().map(|r| r.hash).collect()
}

/// The value of one counter series in the /metrics text, 0 when absent.
fn counter(metrics: &PrometheusHandle, series: &str) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn bench(c: &mut Criterion) {
    let Some(server) = RedisServer::start() else {
        eprintln!(
            "cache_miss: SKIPPED, `redis-server` is not installed \
             (e.g. `apt-get install -y redis-server`)"
        );
        return;
    };
    // As in `keygate serve`: store calls and cache lookups are counted (which the miss pays
    // for), and the counters tell below how many verifications really missed.
    let metrics = telemetry::install_metrics().expect("install the Prometheus recorder");
    // One thread, like one worker of the server's runtime. The connection manager's driver
    // task runs on it while `block_on` waits.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let hashes = rt.block_on(async {
        let store = RedisStore::connect(&server.unix_url(), PREFIX)
            .await
            .unwrap();
        seed(&store).await
    });
    // The verifier's store is wrapped in `Metered`, as `store::open` does in production.
    // Its cache is capped at one entry (`max_entries: 1`), and each call takes the next of
    // the 10,000 seeded keys in turn, so a key is asked for again only after 9,999 others
    // went through a one-entry cache: every key lookup misses and costs one `load_key`
    // round trip. The owner arrives in that same round trip and is cached by it, so the
    // user lookup that follows hits, exactly as on a production miss (the one user always
    // fits in the one-entry user cache).
    let config = Config::from_yaml(
        "cache: { max_entries: 1 }\nroutes:\n  - { name: api, upstream: 'http://127.0.0.1:9' }\n",
        &|_| None,
    )
    .unwrap();

    let mut group = c.benchmark_group("cache_miss");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));

    for (transport, url) in [("unix", server.unix_url()), ("tcp", server.tcp_url())] {
        let store: Arc<dyn Store> = Arc::new(
            rt.block_on(RedisStore::connect(&url, PREFIX))
                .unwrap_or_else(|e| panic!("connect {url}: {e}")),
        );
        // Connect (lazily) and load the scripts before measuring.
        rt.block_on(store.load_key(&hashes[0])).unwrap().unwrap();

        let mut next = 0usize;
        group.bench_function(format!("load_key/{transport}"), |b| {
            b.iter(|| {
                next = (next + 1) % KEYS;
                let bundle = rt.block_on(store.load_key(black_box(&hashes[next])));
                assert!(bundle.unwrap().is_some_and(|b| b.owner.is_some()));
            })
        });

        let verifier = Arc::new(Verifier::new(
            Arc::new(Metered::new(store.clone())),
            &config.cache,
        ));
        assert!(rt.block_on(verifier.verify(&hashes[0])).is_ok());
        let lookups = |result: &str| {
            counter(
                &metrics,
                &format!("keygate_auth_cache_lookups_total{{result=\"{result}\"}}"),
            )
        };
        let store_calls = |op: &str| {
            counter(
                &metrics,
                &format!("keygate_store_requests_total{{op=\"{op}\",result=\"ok\"}}"),
            )
        };
        let before = (lookups("miss"), lookups("hit"), store_calls("load_user"));
        let mut next = 0usize;
        group.bench_function(format!("verifier_miss/{transport}"), |b| {
            b.iter(|| {
                next = (next + 1) % KEYS;
                let principal = rt.block_on(verifier.verify(black_box(&hashes[next])));
                assert!(principal.is_ok());
            })
        });
        eprintln!(
            "verifier_miss/{transport}: {} key-cache misses, {} hits, {} load_user calls",
            lookups("miss") - before.0,
            lookups("hit") - before.1,
            store_calls("load_user") - before.2,
        );
        // Drain the store-latency histogram samples the recorder has been keeping.
        metrics.run_upkeep();
    }
    group.finish();
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
