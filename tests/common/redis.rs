//! A real, throwaway `redis-server` for tests: non-persistent unless asked (see
//! [`RedisServer::start_with`]), loopback or unix socket only, no fixed ports. The raw [`RedisServer::cli`] speaks RESP by hand so tests can poke the
//! server (e.g. `CLIENT KILL TYPE pubsub`) without depending on the client under test.

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
    /// Extra `--option value` arguments, after the defaults so they override them.
    extra: Vec<String>,
    /// What `RedisStore::connect` takes: `redis+unix://…` or `redis://127.0.0.1:N/0`.
    pub url: String,
}

impl RedisServer {
    /// A server on a unix socket in a fresh temporary directory (no TCP listener).
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra server arguments that override the defaults,
    /// e.g. `&["--appendonly", "yes", "--appendfsync", "always"]` for a server whose data
    /// survives [`stop`](Self::stop) (SIGKILL) and [`restart`](Self::restart): its directory
    /// is kept across restarts.
    pub fn start_with(args: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory for redis");
        let socket = dir.path().join("redis.sock");
        let url = format!("redis+unix://{}", socket.display());
        Self::launch(dir, Endpoint::Unix(socket), url, args)
    }

    /// A server on 127.0.0.1 at a port the OS picked as free.
    pub fn start_tcp() -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory for redis");
        // Bind-and-release: a small race with other processes, but no fixed port. If the
        // port is taken meanwhile, redis exits and `wait_ready` reports it with the log.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a free port");
        let url = format!("redis://{addr}/0");
        Self::launch(dir, Endpoint::Tcp(addr), url, &[])
    }

    fn launch(
        dir: tempfile::TempDir,
        endpoint: Endpoint,
        url: String,
        extra: &[&str],
    ) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            dir,
            endpoint,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            url,
        };
        server.spawn();
        server
    }

    /// Starts the child on this server's endpoint and directory, and waits until it answers.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let mut cmd = Command::new("redis-server");
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
        // Nothing persisted unless `extra` asks: data lives exactly as long as the process.
        for (option, value) in [
            ("--save", ""),
            ("--appendonly", "no"),
            ("--daemonize", "no"),
        ] {
            cmd.arg(option).arg(value);
        }
        cmd.arg("--dir").arg(self.dir.path());
        cmd.args(&self.extra);
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
        self.wait_ready();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's output so far (all runs), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Polls with `PING` until `+PONG`, the child exits, or [`START_LIMIT`] passes.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if matches!(self.command(&["PING"]), Ok(Reply::Simple(ref s)) if s == "PONG") {
                return;
            }
            let child = self.child.as_mut().expect("child was just spawned");
            if let Some(status) = child.try_wait().expect("poll redis-server") {
                self.child = None;
                panic!(
                    "redis-server exited with {status} before answering\n{}",
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!(
                    "redis-server did not answer PING within {START_LIMIT:?}\n{}",
                    self.log()
                );
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

    /// Stops the server if running, then starts it again on the same socket or port,
    /// directory and arguments. It comes back empty, unless [`start_with`](Self::start_with)
    /// turned persistence on: then with what it had written to disk.
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

    /// Runs one raw command on a fresh connection and returns the parsed reply.
    pub fn command(&self, args: &[&str]) -> std::io::Result<Reply> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(IO_LIMIT))?;
                stream.set_write_timeout(Some(IO_LIMIT))?;
                exchange(stream, &request)
            }
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect_timeout(addr, IO_LIMIT)?;
                stream.set_read_timeout(Some(IO_LIMIT))?;
                stream.set_write_timeout(Some(IO_LIMIT))?;
                exchange(stream, &request)
            }
        }
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

fn exchange<S: Read + Write>(mut stream: S, request: &[u8]) -> std::io::Result<Reply> {
    stream.write_all(request)?;
    stream.flush()?;
    read_reply(&mut BufReader::new(stream))
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
