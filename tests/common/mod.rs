//! Test harness: a real keygate binary as a child process, real upstreams on 127.0.0.1:0,
//! and plain hyper clients. Nothing here uses a fixed port.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// A running `keygate serve`, killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub status: SocketAddr,
    pub log: Arc<Mutex<String>>,
    /// The config file keygate was started with (rewrite it, then `sighup()`).
    pub config_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts keygate with `config` (YAML). Listen addresses default to 127.0.0.1:0.
    pub fn start(config: &str) -> Gateway {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.yaml");
        std::fs::write(&path, with_test_listeners(config)).unwrap();

        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn keygate");
        let (log, addrs) = capture_log(child.stderr.take().unwrap());
        let addrs = wait_for_listeners(&addrs, &["proxy", "admin", "status"], &log, &mut child);
        Gateway {
            child,
            proxy: addrs["proxy"],
            admin: addrs["admin"],
            status: addrs["status"],
            log,
            config_path: path,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn status_url(&self, path: &str) -> String {
        format!("http://{}{}", self.status, path)
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Replaces the config file (listeners on 127.0.0.1:0 added as at start); pair with
    /// `sighup()`.
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config_path, with_test_listeners(config)).unwrap();
    }

    /// Asks keygate to reload its config file.
    pub fn sighup(&self) {
        self.signal("-HUP");
    }

    fn signal(&self, which: &str) {
        let ok = Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {which} failed");
    }

    /// Waits (bounded: 10 s) until the log contains `needle` `count` times.
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "log never showed `{needle}` {count}×:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "keygate did not exit within {limit:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident and peak resident memory of the process, in KiB, from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// A field of the gateway process's /proc status (`THP_enabled`, …), if the kernel has it.
    pub fn status_field(&self, field: &str) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    }

    /// Each thread's name and the CPUs it may run on (`Cpus_allowed_list` in /proc), sorted.
    pub fn thread_cpus(&self) -> Vec<(String, String)> {
        let tasks = format!("/proc/{}/task", self.child.id());
        let mut threads: Vec<(String, String)> = std::fs::read_dir(tasks)
            .unwrap()
            .filter_map(|task| {
                let dir = task.ok()?.path();
                let name = std::fs::read_to_string(dir.join("comm")).ok()?;
                let status = std::fs::read_to_string(dir.join("status")).ok()?;
                Some((name.trim().to_owned(), cpus_allowed(&status)?))
            })
            .collect();
        threads.sort();
        threads
    }
}

/// The CPUs this test process may run on (`Cpus_allowed_list` of /proc/self/status).
pub fn own_cpu_list() -> String {
    cpus_allowed(&std::fs::read_to_string("/proc/self/status").unwrap()).unwrap()
}

/// The `Cpus_allowed_list` of a /proc `status` file, such as `0-3,6`.
fn cpus_allowed(status: &str) -> Option<String> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    Some(list.trim().to_owned())
}

/// How many CPUs a `Cpus_allowed_list` such as `0-3,6` names.
pub fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `config` with every listener it does not set put on 127.0.0.1:0. Only a top-level key
/// counts (`key_prefix: 'kgadmin:'` must not).
fn with_test_listeners(config: &str) -> String {
    let has_section = |name: &str| config.lines().any(|l| l.starts_with(&format!("{name}:")));
    let mut text = String::new();
    for listener in ["proxy", "admin", "status"] {
        if !has_section(listener) {
            text.push_str(&format!("{listener}: {{ listen: \"127.0.0.1:0\" }}\n"));
        }
    }
    text.push_str(config);
    text
}

type Addrs = Arc<Mutex<HashMap<String, SocketAddr>>>;

/// Copies the child's stderr into a buffer and picks out `listening listener=… addr=…`.
fn capture_log(stderr: std::process::ChildStderr) -> (Arc<Mutex<String>>, Addrs) {
    let log = Arc::new(Mutex::new(String::new()));
    let addrs: Addrs = Arc::default();
    let (log2, addrs2) = (log.clone(), addrs.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some((name, addr)) = parse_listening(&line) {
                addrs2.lock().unwrap().insert(name, addr);
            }
            let mut log = log2.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    (log, addrs)
}

fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    if line.starts_with('{') {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        let name = entry["listener"].as_str()?.to_owned();
        return Some((name, entry["addr"].as_str()?.parse().ok()?));
    }
    let name = line
        .split("listener=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .trim_matches('"');
    let addr = line
        .split("addr=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((name.to_owned(), addr))
}

fn wait_for_listeners(
    addrs: &Addrs,
    names: &[&str],
    log: &Arc<Mutex<String>>,
    child: &mut Child,
) -> HashMap<String, SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let found = addrs.lock().unwrap();
            if names.iter().all(|n| found.contains_key(*n)) {
                return found.clone();
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("keygate exited early ({status}):\n{}", log.lock().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "keygate did not start:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `keygate <args>` to completion (at most 30 s, then it is killed and the test fails)
/// and returns (exit status, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    run_cli_with_env(args, &[])
}

pub fn run_cli_with_env(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out_pipe, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err_pipe, &mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`keygate {}` did not finish within 30 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// An in-process HTTP/1.1 + h2c upstream on 127.0.0.1:0 running `handler`.
pub async fn upstream<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An upstream that answers with keygate's own echo handler (JSON of the request).
pub async fn echo_upstream() -> SocketAddr {
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    upstream(move |req| async move {
        keygate::echo::handle(req, keygate::server::ConnInfo { peer, tls: false })
            .await
            .unwrap()
    })
    .await
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends a request with a 30 s bound and collects the whole answer.
pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    try_send(client, req)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`send`], for tests where no answer is a possible outcome (a server being killed):
/// `Err` says why there was none.
pub async fn try_send(client: &HttpClient, req: Request<Full<Bytes>>) -> Result<Answer, String> {
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| "request timed out".to_owned())?
        .map_err(|e| format!("request failed: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body failed: {e}"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

pub async fn get(client: &HttpClient, url: &str) -> Answer {
    send(client, Request::get(url).body(Full::default()).unwrap()).await
}

/// Polls `url` until it answers `want` or 10 s pass.
pub async fn wait_for_status(client: &HttpClient, url: &str, want: StatusCode) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.request(Request::get(url).body(Full::default()).unwrap()),
        )
        .await
        {
            if r.status() == want {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one Prometheus sample, e.g. `keygate_http_requests_total{route="api",code="200"}`.
pub fn metric_value(metrics_text: &str, series: &str) -> Option<f64> {
    metrics_text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

pub mod backend;
pub mod redis;

/// Calls the admin API of `gw` with a bearer token and an optional JSON body; returns the
/// status and the body as JSON (`null` when empty).
pub async fn admin_call(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method(method)
        .uri(gw.admin_url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::from(body.map(|b| b.to_string()).unwrap_or_default()))
        .unwrap();
    let answer = send(&client(), req).await;
    let json = if answer.body.is_empty() {
        serde_json::Value::Null
    } else {
        answer.json()
    };
    (answer.status, json)
}
