//! A real, throwaway `redis-server` for tests: non-persistent, loopback or unix socket only,
//! no fixed ports. The raw [`RedisServer::cli`] speaks RESP by hand so tests can poke the
//! server (e.g. `CLIENT KILL TYPE pubsub`) without depending on the client under test.
//! [`RedisCluster`] and [`RedisSentinels`] put several of them together: a Redis Cluster,
//! and a master with a replica watched by three sentinels.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start`/`restart` wait for the server to answer `PING`.
const START_LIMIT: Duration = Duration::from_secs(10);
/// Read/write bound of each raw command.
const IO_LIMIT: Duration = Duration::from_secs(5);

/// Where the server listens.
#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// A running `redis-server` child, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    endpoint: Endpoint,
    /// Extra command-line options (cluster, replication, password).
    options: Vec<String>,
    /// Written to `redis.conf` and given first on the command line (a sentinel needs a file).
    config: Option<String>,
    /// Sent with `AUTH` before every raw command.
    password: Option<String>,
    /// What `RedisStore::connect` takes: `redis+unix://…` or `redis://127.0.0.1:N/0`
    /// (with `:password@` when the server has one).
    pub url: String,
}

impl RedisServer {
    /// A server on a unix socket in a fresh temporary directory (no TCP listener).
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra server options that override the defaults,
    /// e.g. `&["--appendonly", "yes", "--appendfsync", "always"]` for a server whose data
    /// survives [`stop`](Self::stop) (SIGKILL) and [`restart`](Self::restart): its directory
    /// is kept across restarts.
    pub fn start_with(options: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory for redis");
        let socket = dir.path().join("redis.sock");
        let url = format!("redis+unix://{}", socket.display());
        Self::launch(dir, Endpoint::Unix(socket), url, options)
    }

    /// A server on 127.0.0.1 at a port the OS picked as free.
    pub fn start_tcp() -> RedisServer {
        Self::start_tcp_with(&[])
    }

    /// A TCP server with extra `redis-server` options, e.g. `["--cluster-enabled", "yes"]`.
    /// A `--requirepass` among them is used by [`Self::cli`] and put in [`Self::url`].
    pub fn start_tcp_with(options: &[&str]) -> RedisServer {
        let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        Self::start_tcp_picking(|| (free_addr(), options.clone()))
    }

    /// A TCP server on the address and with the options `pick` returns. A port picked as
    /// free can be taken (by any connection's local end) before redis binds it; then `pick`
    /// is asked again, a few times.
    fn start_tcp_picking(mut pick: impl FnMut() -> (SocketAddr, Vec<String>)) -> RedisServer {
        let mut attempt = 1;
        loop {
            let (addr, options) = pick();
            match Self::try_launch_tcp(addr, options, None) {
                Ok(server) => return server,
                Err(log) if attempt < 5 && log.contains("Address already in use") => attempt += 1,
                Err(log) => panic!("{log}"),
            }
        }
    }

    /// A server on `addr` started as `redis-server [<config file>] <options…>`; its
    /// password is the `--requirepass` option's, if any.
    fn try_launch_tcp(
        addr: SocketAddr,
        options: Vec<String>,
        config: Option<String>,
    ) -> Result<RedisServer, String> {
        let password = options
            .iter()
            .position(|o| o == "--requirepass")
            .map(|i| options[i + 1].clone());
        let dir = tempfile::tempdir().expect("temporary directory for redis");
        let auth = password
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"));
        let url = format!("redis://{auth}{addr}/0");
        let mut server = RedisServer {
            child: None,
            dir,
            endpoint: Endpoint::Tcp(addr),
            options,
            config,
            password,
            url,
        };
        server.try_spawn()?;
        Ok(server)
    }

    fn launch(
        dir: tempfile::TempDir,
        endpoint: Endpoint,
        url: String,
        options: &[&str],
    ) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            dir,
            endpoint,
            options: options.iter().map(|o| o.to_string()).collect(),
            config: None,
            password: None,
            url,
        };
        server.spawn();
        server
    }

    /// The TCP address (panics for a unix-socket server).
    pub fn addr(&self) -> SocketAddr {
        match &self.endpoint {
            Endpoint::Tcp(addr) => *addr,
            Endpoint::Unix(path) => panic!("{} has no TCP address", path.display()),
        }
    }

    /// `127.0.0.1:<port>`, as keygate's `store.redis.*.nodes` take it.
    pub fn node(&self) -> String {
        self.addr().to_string()
    }

    /// Starts the child on this server's endpoint and directory, and waits until it answers.
    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "redis-server is already running");
        let mut cmd = Command::new("redis-server");
        if let Some(config) = &self.config {
            // Sentinel rewrites its file, so it lives in the server's own directory.
            let path = self.dir.path().join("redis.conf");
            std::fs::write(&path, config).expect("write redis.conf");
            cmd.arg(path);
        }
        match &self.endpoint {
            Endpoint::Unix(socket) => {
                // Port 0 turns TCP off entirely; only the socket (owner-only) is reachable.
                cmd.args(["--port", "0", "--unixsocket"])
                    .arg(socket)
                    .args(["--unixsocketperm", "700"]);
            }
            Endpoint::Tcp(addr) => {
                cmd.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"]);
            }
        }
        // Nothing persisted: data lives exactly as long as the process.
        for (option, value) in [
            ("--save", ""),
            ("--appendonly", "no"),
            ("--daemonize", "no"),
        ] {
            cmd.arg(option).arg(value);
        }
        cmd.arg("--dir").arg(self.dir.path());
        cmd.args(&self.options);
        // Appending keeps the log of earlier runs for diagnosing a failed restart.
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open redis log");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone redis log handle"))
            .stderr(log);
        self.child = Some(
            cmd.spawn()
                .expect("spawn redis-server (install it with `apt-get install -y redis-server`)"),
        );
        self.wait_ready()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's output so far (all runs), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Polls with `PING` until `+PONG`, the child exits, or [`START_LIMIT`] passes.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if matches!(self.command(&["PING"]), Ok(Reply::Simple(ref s)) if s == "PONG") {
                return Ok(());
            }
            let child = self.child.as_mut().expect("child was just spawned");
            if let Some(status) = child.try_wait().expect("poll redis-server") {
                self.child = None;
                return Err(format!(
                    "redis-server exited with {status} before answering\n{}",
                    self.log()
                ));
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "redis-server did not answer PING within {START_LIMIT:?}\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL, no shutdown save) and reaps it. Data is lost.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already exited is fine; anything else would leave a stray server behind.
            let _ = child.kill();
            child.wait().expect("reap redis-server");
        }
    }

    /// Stops the server if running, then starts it again on the same socket or port and
    /// directory. It comes back empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("poll redis-server").is_none(),
            None => false,
        }
    }

    /// Runs one raw command and renders the reply as text, panicking on I/O failure:
    /// simple strings and integers as themselves, bulk strings as their content, a nil as
    /// `(nil)`, an error as `(error) <message>`, and an array as its elements, one per line.
    pub fn cli(&self, args: &[&str]) -> String {
        match self.command(args) {
            Ok(reply) => reply.to_string(),
            Err(e) => panic!("redis command {args:?} failed: {e}\n{}", self.log()),
        }
    }

    /// Runs one raw command on a fresh connection (after `AUTH` when the server has a
    /// password) and returns the parsed reply.
    pub fn command(&self, args: &[&str]) -> std::io::Result<Reply> {
        let mut request = Vec::new();
        if let Some(password) = &self.password {
            encode(&mut request, &["AUTH", password]);
        }
        encode(&mut request, args);
        let replies = 1 + usize::from(self.password.is_some());
        let mut answers = match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(IO_LIMIT))?;
                stream.set_write_timeout(Some(IO_LIMIT))?;
                exchange(stream, &request, replies)?
            }
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect_timeout(addr, IO_LIMIT)?;
                stream.set_read_timeout(Some(IO_LIMIT))?;
                stream.set_write_timeout(Some(IO_LIMIT))?;
                exchange(stream, &request, replies)?
            }
        };
        Ok(answers.pop().expect("one reply per command"))
    }

    /// The pid of the running child.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is running").id()
    }
}

/// A port on 127.0.0.1 the OS picked as free. Bind-and-release: a small race with other
/// processes, but no fixed port. If the port is taken meanwhile, redis exits and
/// `wait_ready` reports it with the log.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("pick a free port")
}

fn encode(request: &mut Vec<u8>, args: &[&str]) {
    request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Simple(s) => f.write_str(s),
            Reply::Error(s) => write!(f, "(error) {s}"),
            Reply::Integer(n) => write!(f, "{n}"),
            Reply::Bulk(Some(bytes)) => f.write_str(&String::from_utf8_lossy(bytes)),
            Reply::Bulk(None) | Reply::Array(None) => f.write_str("(nil)"),
            Reply::Array(Some(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{item}")?;
                }
                Ok(())
            }
        }
    }
}

fn exchange<S: Read + Write>(
    mut stream: S,
    request: &[u8],
    replies: usize,
) -> std::io::Result<Vec<Reply>> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut reader = BufReader::new(stream);
    (0..replies).map(|_| read_reply(&mut reader)).collect()
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let line = read_line(reader)?;
    let (kind, rest) = line.split_at(1);
    let length = |text: &str| -> std::io::Result<i64> {
        text.parse()
            .map_err(|_| invalid(format!("bad length in reply line {line:?}")))
    };
    Ok(match kind {
        "+" => Reply::Simple(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Integer(length(rest)?),
        "$" => match usize::try_from(length(rest)?) {
            // A negative length is the nil bulk string.
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data)?;
                data.truncate(len);
                Reply::Bulk(Some(data))
            }
        },
        "*" => match usize::try_from(length(rest)?) {
            Err(_) => Reply::Array(None),
            Ok(len) => Reply::Array(Some(
                (0..len)
                    .map(|_| read_reply(reader))
                    .collect::<std::io::Result<_>>()?,
            )),
        },
        _ => return Err(invalid(format!("unknown reply type in {line:?}"))),
    })
}

/// One `\r\n`-terminated line without its terminator; never empty.
fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let Some(line) = line.strip_suffix("\r\n") else {
        return Err(invalid(format!("truncated reply line {line:?}")));
    };
    if line.is_empty() {
        return Err(invalid("empty reply line".to_owned()));
    }
    Ok(line.to_owned())
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Waits (bounded by `limit`) until `ready` returns `Some`, then returns it; panics with
/// `what` and `context()` otherwise.
pub fn poll<T>(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// How long cluster nodes and sentinels wait before calling a silent node down. Short, so
/// failovers in tests take about two seconds.
const NODE_TIMEOUT_MS: &str = "1000";
/// Bound on a cluster or a sentinel group coming up.
const FORM_LIMIT: Duration = Duration::from_secs(20);

/// A Redis Cluster on 127.0.0.1: `masters` masters sharing the 16384 slots evenly, each
/// with `replicas` replicas. Every node is killed when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    pub masters: usize,
}

impl RedisCluster {
    /// Starts the nodes, assigns slots, joins them and waits until every node reports
    /// `cluster_state:ok` and every replica is in sync.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let total = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..total)
            .map(|_| {
                RedisServer::start_tcp_picking(|| {
                    // The cluster bus gets a port of its own: port + 10000 may not exist.
                    let bus = free_addr().port().to_string();
                    let options = [
                        // Replicas sync at once instead of waiting 5 s for more to join.
                        "--repl-diskless-sync-delay",
                        "0",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        NODE_TIMEOUT_MS,
                        "--cluster-port",
                        &bus,
                    ];
                    (free_addr(), options.map(String::from).to_vec())
                })
            })
            .collect();
        let cluster = RedisCluster { nodes, masters };
        let per = 16384 / masters;
        for m in 0..masters {
            let (lo, hi) = (
                m * per,
                if m + 1 == masters {
                    16383
                } else {
                    (m + 1) * per - 1
                },
            );
            let node = &cluster.nodes[m];
            // Distinct epochs up front, as redis-cli does, so no collision has to be resolved.
            expect_ok(node.cli(&["CLUSTER", "SET-CONFIG-EPOCH", &(m + 1).to_string()]));
            expect_ok(node.cli(&["CLUSTER", "ADDSLOTSRANGE", &lo.to_string(), &hi.to_string()]));
        }
        for node in &cluster.nodes[1..] {
            let bus = node.cli(&["CONFIG", "GET", "cluster-port"]);
            let bus = bus.lines().nth(1).expect("cluster-port value");
            let port = node.addr().port().to_string();
            expect_ok(cluster.nodes[0].cli(&["CLUSTER", "MEET", "127.0.0.1", &port, bus]));
        }
        poll(
            "every node knows every other",
            FORM_LIMIT,
            || {
                cluster
                    .nodes
                    .iter()
                    .all(|n| {
                        let table = n.cli(&["CLUSTER", "NODES"]);
                        table.lines().count() == total
                            && !table.contains("handshake")
                            && !table.contains("noaddr")
                    })
                    .then_some(())
            },
            || cluster.describe(),
        );
        for m in 0..masters {
            let id = cluster.nodes[m].cli(&["CLUSTER", "MYID"]);
            for r in 0..replicas {
                let replica = &cluster.nodes[masters + m * replicas + r];
                expect_ok(replica.cli(&["CLUSTER", "REPLICATE", id.trim()]));
            }
        }
        cluster.wait_healthy(&[]);
        cluster
    }

    /// Waits until every node but `dead` reports `cluster_state:ok`, every live replica's
    /// link to its master is up, and they agree on who serves every slot.
    pub fn wait_healthy(&self, dead: &[usize]) {
        let live: Vec<&RedisServer> = self.live(dead).collect();
        poll(
            "the cluster is healthy",
            FORM_LIMIT,
            || {
                let ok = live.iter().all(|n| {
                    let info = n.cli(&["CLUSTER", "INFO"]);
                    let replication = n.cli(&["INFO", "replication"]);
                    info.contains("cluster_state:ok")
                        && (replication.contains("role:master")
                            || replication.contains("master_link_status:up"))
                });
                let layouts: Vec<Vec<(u16, u16)>> =
                    live.iter().map(|n| serving_masters(n)).collect();
                (ok && layouts.windows(2).all(|w| w[0] == w[1])).then_some(())
            },
            || self.describe(),
        );
    }

    fn live<'a>(&'a self, dead: &'a [usize]) -> impl Iterator<Item = &'a RedisServer> + 'a {
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(i, _)| !dead.contains(i))
            .map(|(_, n)| n)
    }

    /// `127.0.0.1:<port>` of every node, for `store.redis.cluster.nodes`.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::node).collect()
    }

    /// The index of the node serving `key`'s slot as master, asked of a live node.
    pub fn master_of(&self, key: &str, dead: &[usize]) -> usize {
        let asked = self.live(dead).next().expect("a live node");
        let slot: u16 = asked
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("a slot number");
        let port = cluster_nodes(&asked.cli(&["CLUSTER", "NODES"]))
            .into_iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|(lo, hi)| (*lo..=*hi).contains(&slot))
            })
            .unwrap_or_else(|| panic!("no master serves slot {slot}\n{}", self.describe()))
            .port;
        self.index_of(port)
    }

    fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.addr().port() == port)
            .expect("a node of this cluster")
    }

    /// How many pub/sub subscribers each node has on `channel` (0 for a dead node).
    pub fn subscribers(&self, channel: &str) -> Vec<u32> {
        self.nodes
            .iter()
            .map(|n| match n.command(&["PUBSUB", "NUMSUB", channel]) {
                Ok(Reply::Array(Some(items))) => match items.get(1) {
                    Some(Reply::Integer(count)) => *count as u32,
                    _ => 0,
                },
                _ => 0,
            })
            .collect()
    }

    /// Every node's view, for failure messages.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| match n.command(&["CLUSTER", "NODES"]) {
                Ok(reply) => format!("--- {} sees:\n{reply}", n.node()),
                Err(e) => format!("--- {}: {e}", n.node()),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `(slot range start, master port)` of every live master, sorted.
fn serving_masters(node: &RedisServer) -> Vec<(u16, u16)> {
    let mut layout: Vec<(u16, u16)> = cluster_nodes(&node.cli(&["CLUSTER", "NODES"]))
        .into_iter()
        .filter(|n| n.master && !n.failed)
        .flat_map(|n| {
            n.slots
                .iter()
                .map(move |(lo, _)| (*lo, n.port))
                .collect::<Vec<_>>()
        })
        .collect();
    layout.sort();
    layout
}

/// One line of `CLUSTER NODES`, as far as the tests need it.
struct ClusterNode {
    port: u16,
    master: bool,
    failed: bool,
    slots: Vec<(u16, u16)>,
}

fn cluster_nodes(table: &str) -> Vec<ClusterNode> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = fields.get(1)?;
            let flags = fields.get(2)?;
            let port = addr.split('@').next()?.rsplit_once(':')?.1.parse().ok()?;
            let slots = fields
                .iter()
                .skip(8)
                .filter(|r| !r.starts_with('['))
                .filter_map(|r| {
                    let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                    Some((lo.parse().ok()?, hi.parse().ok()?))
                })
                .collect();
            Some(ClusterNode {
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail"),
                slots,
            })
        })
        .collect()
}

fn expect_ok(reply: String) {
    assert_eq!(reply, "OK", "a cluster setup command failed");
}

/// The master name the sentinels in [`RedisSentinels`] watch.
pub const SENTINEL_MASTER: &str = "keygate-test";

/// A master and one replica, both with `password`, watched by three sentinels that need
/// the same password. Every process is killed when dropped.
pub struct RedisSentinels {
    /// `data[0]` starts as the master, `data[1]` as its replica.
    pub data: Vec<RedisServer>,
    pub sentinels: Vec<RedisServer>,
}

impl RedisSentinels {
    pub fn start(password: &str) -> RedisSentinels {
        let auth = [
            "--requirepass",
            password,
            "--masterauth",
            password,
            // Replicas sync at once instead of waiting 5 s for more replicas to join.
            "--repl-diskless-sync-delay",
            "0",
        ];
        let master = RedisServer::start_tcp_with(&auth);
        let mut replica_options = auth.to_vec();
        let master_port = master.addr().port().to_string();
        replica_options.extend(["--replicaof", "127.0.0.1", &master_port]);
        let replica = RedisServer::start_tcp_with(&replica_options);
        let data = vec![master, replica];
        poll(
            "the replica is in sync",
            FORM_LIMIT,
            || {
                data[1]
                    .cli(&["INFO", "replication"])
                    .contains("master_link_status:up")
                    .then_some(())
            },
            || data[1].log(),
        );

        let mut attempt = 1;
        let sentinels = loop {
            match Self::try_start_sentinels(password, &data) {
                Ok(sentinels) => break sentinels,
                Err(log) if attempt < 5 && log.contains("Address already in use") => attempt += 1,
                Err(log) => panic!("{log}"),
            }
        };
        let group = RedisSentinels { data, sentinels };
        poll(
            "the sentinels agree on the master and can fail over",
            FORM_LIMIT,
            || {
                group
                    .sentinels
                    .iter()
                    .all(|s| {
                        s.cli(&["SENTINEL", "CKQUORUM", SENTINEL_MASTER])
                            .starts_with("OK")
                    })
                    .then_some(())
            },
            || group.describe(),
        );
        group
    }

    /// Three sentinels on fresh ports watching `data[0]`. Sentinels that already know each
    /// other and the replica answer at once, instead of after a few rounds of hello
    /// messages; their ids are fixed for that.
    fn try_start_sentinels(
        password: &str,
        data: &[RedisServer],
    ) -> Result<Vec<RedisServer>, String> {
        let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let id = |i: usize| format!("{:040x}", i + 1);
        (0..3)
            .map(|i| {
                let mut config = format!(
                    "sentinel myid {}\n\
                     sentinel sentinel-pass {password}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
                     sentinel auth-pass {SENTINEL_MASTER} {password}\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} {NODE_TIMEOUT_MS}\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
                     sentinel known-replica {SENTINEL_MASTER} 127.0.0.1 {}\n",
                    id(i),
                    data[1].addr().port(),
                    master_port = data[0].addr().port(),
                );
                for (j, other) in addrs.iter().enumerate().filter(|(j, _)| *j != i) {
                    config.push_str(&format!(
                        "sentinel known-sentinel {SENTINEL_MASTER} 127.0.0.1 {} {}\n",
                        other.port(),
                        id(j)
                    ));
                }
                let options = ["--sentinel", "--requirepass", password];
                RedisServer::try_launch_tcp(
                    addrs[i],
                    options.map(String::from).to_vec(),
                    Some(config),
                )
            })
            .collect()
    }

    /// `127.0.0.1:<port>` of every sentinel, for `store.redis.sentinel.nodes`.
    pub fn sentinel_nodes(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::node).collect()
    }

    /// The index in `data` of the server the (live) sentinels name as master.
    pub fn master(&self) -> usize {
        let sentinel = self
            .sentinels
            .iter()
            .find(|s| s.command(&["PING"]).is_ok())
            .expect("a live sentinel");
        let reply = sentinel.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER]);
        let port: u16 = reply
            .lines()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no master address: {reply}"));
        self.data
            .iter()
            .position(|d| d.addr().port() == port)
            .expect("the master is one of ours")
    }

    /// Waits until the sentinels name a master other than `old` and it has taken the role.
    pub fn wait_for_failover(&self, old: usize) -> usize {
        poll(
            "the sentinels promote the replica",
            FORM_LIMIT,
            || {
                let new = self.master();
                (new != old && self.data[new].cli(&["ROLE"]).starts_with("master")).then_some(new)
            },
            || self.describe(),
        )
    }

    /// What the first live sentinel knows, for failure messages.
    pub fn describe(&self) -> String {
        self.sentinels
            .iter()
            .map(
                |s| match s.command(&["SENTINEL", "MASTER", SENTINEL_MASTER]) {
                    Ok(reply) => format!("--- sentinel {}:\n{reply}", s.node()),
                    Err(e) => format!("--- sentinel {}: {e}\n{}", s.node(), s.log()),
                },
            )
            .collect::<Vec<_>>()
            .join("\n")
    }
}
