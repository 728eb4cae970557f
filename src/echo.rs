//! `keygate echo`: a small upstream that answers every request with a JSON description of
//! it, for trying keygate, tests and benches.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::server::{self, ConnInfo, ConnOptions};

/// Echo is for trying things out; a larger body is refused rather than held in memory.
pub const MAX_ECHO_BODY: usize = 16 * 1024 * 1024;

#[derive(serde::Serialize)]
struct Echo<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: BTreeMap<&'a str, Vec<String>>,
    body: String,
}

pub async fn handle(
    req: Request<Incoming>,
    _conn: ConnInfo,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_ECHO_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let status = if e.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            let mut r = Response::new(Full::new(Bytes::from(format!("{e}\n"))));
            *r.status_mut() = status;
            return Ok(r);
        }
    };
    let mut headers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let echo = Echo {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let json = serde_json::to_vec(&echo).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(json)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// Runs the echo server until SIGINT/SIGTERM.
pub async fn run(listen: SocketAddr) -> std::io::Result<()> {
    // Installed before "listening" is logged, as in `keygate serve`.
    let shutdown = crate::app::shutdown_signal();
    let listener = server::bind("echo", listen).await?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        "echo",
        listener,
        ConnOptions::internal(),
        handle,
        // Nothing to hand over to: the echo server is for trying keygate out.
        CancellationToken::new(),
        stop.clone(),
        Duration::from_secs(5),
    ));
    shutdown.await;
    stop.cancel();
    let _ = server.await;
    Ok(())
}
