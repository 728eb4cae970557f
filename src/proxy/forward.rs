//! The pooled upstream clients, the per-route timeout, and upgrade tunnels.
//!
//! Plain-http HTTP/1.1 upstreams, the common case, go through our own client
//! ([`super::h1`]); TLS, HTTP/2 and protocol upgrades through hyper's.

use std::io;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::task::TaskTracker;

use super::h1::{H1Client, HeadWriter, ResponseBody, UpstreamRequest};
use super::rewrite::RequestHeaders;
use crate::config::UpstreamConfig;
use crate::server::RequestBody;

type Connector = HttpsConnector<HttpConnector>;

/// Why a request could not be forwarded; kept apart so a timeout never reads as a refusal.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("upstream request failed: {0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// How a request reaches its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Our HTTP/1.1 client, in the request's own task.
    Direct,
    /// hyper's client, HTTP/1.1 or HTTP/2 as ALPN decides (TLS, upgrades).
    Negotiated,
    /// hyper's client, HTTP/2 only (`upstream_http2`).
    Http2,
}

/// One connection pool per protocol choice; routes share them, keyed by upstream authority.
pub struct Upstreams {
    direct: H1Client,
    negotiated: Client<Connector, RequestBody>,
    http2_only: Client<Connector, RequestBody>,
}

impl Upstreams {
    pub fn new(cfg: &UpstreamConfig) -> io::Result<Self> {
        let tls = client_tls(cfg)?;
        Ok(Self {
            direct: H1Client::new(cfg),
            negotiated: client(cfg, tls.clone(), false),
            http2_only: client(cfg, tls, true),
        })
    }

    /// Sends the request (`head`, with the upstream's URI, and `body`) and waits up to
    /// `timeout` from `sent` for the response head. The body then streams without a
    /// deadline: a large download is not a slow upstream. `sent` is the caller's clock
    /// reading, which also times the exchange: one clock read less per request.
    ///
    /// The headers are rewritten on the way: written straight into the request head by
    /// our client, edited in the request for hyper's, which takes `head` (left empty).
    pub async fn send(
        &self,
        head: &mut Parts,
        body: RequestBody,
        rewrite: &RequestHeaders<'_>,
        via: Via,
        sent: Instant,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, ForwardError> {
        let deadline = tokio::time::Instant::from_std(sent + timeout);
        if via != Via::Direct {
            // Boxed: hyper's client future is large, and the common path should not carry
            // its size (every request's future is moved as a whole at least once).
            let req = Request::from_parts(std::mem::replace(head, empty_head()), body);
            return Box::pin(self.send_negotiated(req, rewrite, via, deadline, timeout)).await;
        }
        let (Some(authority), Some(target)) = (head.uri.authority(), head.uri.path_and_query())
        else {
            return Err(boxed("upstream URI without authority or path"));
        };
        let send = self.direct.send(UpstreamRequest {
            authority,
            method: &head.method,
            target,
            headers: |writer: &mut HeadWriter<'_>| rewrite.emit(&head.headers, writer),
            body,
        });
        match tokio::time::timeout_at(deadline, send).await {
            Ok(response) => Ok(response.map_err(boxed)?.map(Either::Right)),
            Err(_) => Err(ForwardError::Timeout(timeout)),
        }
    }

    async fn send_negotiated(
        &self,
        mut req: Request<RequestBody>,
        rewrite: &RequestHeaders<'_>,
        via: Via,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, ForwardError> {
        rewrite.apply(req.headers_mut());
        let client = if via == Via::Http2 {
            &self.http2_only
        } else {
            &self.negotiated
        };
        match tokio::time::timeout_at(deadline, client.request(req)).await {
            Ok(response) => Ok(response.map_err(boxed)?.map(Either::Left)),
            Err(_) => Err(ForwardError::Timeout(timeout)),
        }
    }
}

/// A request head with nothing in it, left where one was taken.
fn empty_head() -> Parts {
    Request::new(()).into_parts().0
}

fn boxed(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ForwardError {
    ForwardError::Failed(e.into())
}

/// A response body from either client: hyper's, or ours.
pub type UpstreamBody = Either<Incoming, ResponseBody>;

fn client_tls(cfg: &UpstreamConfig) -> io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("upstream.ca_file {}: {e}", path.display()),
            )
        })?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert?).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("upstream.ca_file: {e}"))
            })?;
        }
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn client(
    cfg: &UpstreamConfig,
    tls: rustls::ClientConfig,
    http2_only: bool,
) -> Client<Connector, RequestBody> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if http2_only {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().enable_http2().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
        .http2_only(http2_only)
        // We set Host ourselves (preserve_host); only fill it when the request has none.
        .set_host(true)
        .build(connector)
}

/// Joins the client's and the upstream's upgraded connections and copies bytes both ways
/// until either side closes. Tracked so shutdown can wait for open tunnels.
pub fn spawn_tunnel(
    tracker: &TaskTracker,
    client: OnUpgrade,
    upstream: OnUpgrade,
    route: std::sync::Arc<str>,
) {
    tracker.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(route = %route, error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(route = %route, error = %e, "tunnel closed with an error");
        }
    });
}
