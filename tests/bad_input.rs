//! Hostile and malformed requests on a raw socket: the gateway must answer sensibly, stay up,
//! and never let a smuggled request reach the upstream.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::{Response, StatusCode};
use http_body_util::Full;

/// An upstream that records the path of every request it receives.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = upstream(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(req.uri().path().to_owned());
            Response::new(Full::from("ok"))
        }
    })
    .await;
    (addr, seen)
}

/// Sends raw bytes, reads until the server closes or 3 s pass; returns every status line.
fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out)
        .split("\r\n")
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_requests_are_answered_and_nothing_is_smuggled() {
    let (up, seen) = recording_upstream().await;
    let gw = Gateway::start(&format!(
        "proxy: {{ listen: '127.0.0.1:0', header_read_timeout: 1s, max_headers: 100 }}\nroutes:\n  - {{ name: open, upstream: 'http://{up}', auth: none }}\n"
    ));
    let addr = gw.proxy;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // Both framings: the chunked body ends at "0", the rest must not become a request.
        ("content-length with transfer-encoding",
         b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), "200"),
        ("two content-lengths",
         b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), "400"),
        ("obsolete line folding", b"GET /c HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n".to_vec(), "400"),
        ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(), "404"),
        ("asterisk form", b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), "404"),
        ("HTTP/1.0", b"GET /d HTTP/1.0\r\n\r\n".to_vec(), "200"),
        ("absolute form", b"GET http://elsewhere.example/e HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), "200"),
        ("non-UTF-8 header value", b"GET /f HTTP/1.1\r\nHost: h\r\nX-Bin: \xff\xfe\r\n\r\n".to_vec(), "200"),
        ("encoded CR/LF in the path", b"GET /g%0d%0aX-Injected:%201 HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), "200"),
        // RFC 9112 §2.2 lets a recipient read a bare LF as a line end; hyper does, and the
        // request goes upstream re-serialised with CRLF, so both sides see the same headers.
        ("bare LF as a line end", b"GET /h HTTP/1.1\r\nHost: h\r\nX-A: a\nX-B: 1\r\n\r\n".to_vec(), "200"),
    ];
    for (name, bytes, want) in &cases {
        let statuses = tokio::task::spawn_blocking({
            let bytes = bytes.clone();
            move || raw(addr, &bytes)
        })
        .await
        .unwrap();
        assert!(
            statuses.len() == 1 && statuses[0].contains(want),
            "{name}: expected one {want} answer, got {statuses:?}"
        );
    }
    // Thousands of headers: 431 from the header limits.
    let mut many = b"GET /i HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..3000 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let statuses = tokio::task::spawn_blocking(move || raw(addr, &many))
        .await
        .unwrap();
    assert!(
        statuses.first().is_some_and(|s| s.contains("431")),
        "{statuses:?}"
    );

    let reached = seen.lock().unwrap().clone();
    assert!(
        !reached.iter().any(|p| p.contains("smuggled")),
        "a smuggled request reached the upstream: {reached:?}"
    );
    assert!(
        !reached.iter().any(|p| p == "/b" || p == "/c"),
        "a refused request reached the upstream: {reached:?}"
    );
    assert_eq!(
        get(&client(), &gw.status_url("/healthz")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&client(), &gw.url("/after")).await.status,
        StatusCode::OK,
        "still serving"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_disconnected() {
    let (up, _) = recording_upstream().await;
    let gw = Gateway::start(&format!(
        "proxy: {{ listen: '127.0.0.1:0', header_read_timeout: 1s }}\nroutes:\n  - {{ name: open, upstream: 'http://{up}', auth: none }}\n"
    ));
    let addr = gw.proxy;
    let closed_after = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Slow: ")
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        // The server either closes (0) or answers 408 and closes; both end the read.
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(
        closed_after < Duration::from_secs(5),
        "slow client held the connection for {closed_after:?}"
    );
    assert_eq!(get(&client(), &gw.url("/ok")).await.status, StatusCode::OK);
}
