//! The data plane. One request takes one straight path through these stages:
//!
//! route → (authenticate → authorize: the keys stage) → rewrite → forward → respond → record
//!
//! Each stage lives in its own module; failures are [`Refusal`]s rendered in `refusal.rs`.

pub mod forward;
pub mod refusal;
pub mod rewrite;
pub mod route;

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::config::{Config, RouteConfig};
use crate::server::ConnInfo;
use crate::telemetry;
use forward::{ForwardError, Upstreams};
pub use refusal::Refusal;
use rewrite::ClientSide;
use route::Router;

/// Bodies stream through untouched; refusals are small and complete.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

pub struct Proxy {
    router: Router,
    upstreams: Upstreams,
    identity_prefix: String,
    /// Upgraded connections (WebSocket) outlive their request; shutdown waits for them here.
    tunnels: TaskTracker,
}

impl Proxy {
    pub fn new(config: &Config, tunnels: TaskTracker) -> io::Result<Self> {
        Ok(Self {
            router: Router::new(&config.routes),
            upstreams: Upstreams::new(&config.upstream)?,
            identity_prefix: config.identity.header_prefix.clone(),
            tunnels,
        })
    }

    /// The hyper service entry point: never fails, every outcome is a response.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let request_id = rewrite::request_id(req.headers());
        let route = self
            .router
            .find(req.method(), request_host(&req), req.uri().path())
            .cloned();

        let outcome = match &route {
            Some(route) => self.forward(route, req, &conn, &request_id).await,
            None => Err(Refusal::NoRoute),
        };
        let mut response = match outcome {
            Ok(response) => response.map(Either::Left),
            Err(refusal) => refusal::render(&refusal, &request_id).map(Either::Right),
        };
        response
            .headers_mut()
            .insert(rewrite::X_REQUEST_ID, request_id);

        let route_label = route
            .as_ref()
            .map_or(telemetry::NO_ROUTE_LABEL, |r| &r.name);
        telemetry::record_http_request(route_label, response.status(), started.elapsed());
        Ok(response)
    }

    /// rewrite → forward → upstream response, for a request that matched `route`.
    async fn forward(
        &self,
        route: &Arc<RouteConfig>,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
    ) -> Result<Response<Incoming>, Refusal> {
        let upgrade = req.version() == Version::HTTP_11 && rewrite::wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let original_host = request_host_value(&req);
        let uri = rewrite::upstream_uri(
            &route.upstream,
            req.uri(),
            route.strip_prefix.then_some(route.path_prefix.as_str()),
        )
        .map_err(|e| {
            tracing::debug!(error = %e, "request path cannot be forwarded");
            Refusal::NoRoute
        })?;

        let headers = req.headers_mut();
        rewrite::strip_hop_by_hop(headers, upgrade);
        rewrite::strip_identity_headers(headers, &self.identity_prefix);
        rewrite::set_forwarding_headers(
            headers,
            &ClientSide {
                ip: conn.peer.ip(),
                tls: conn.tls,
                host: original_host.as_ref(),
            },
        );
        headers.insert(rewrite::X_REQUEST_ID, request_id.clone());
        match (&original_host, route.preserve_host) {
            (Some(host), true) => {
                headers.insert(header::HOST, host.clone());
            }
            // The client fills Host from the upstream URI when none is set.
            _ => {
                headers.remove(header::HOST);
            }
        }
        *req.uri_mut() = uri;
        *req.version_mut() = if route.upstream_http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };

        let sent = Instant::now();
        let result = self
            .upstreams
            .send(req, route.upstream_http2, route.timeout)
            .await;
        telemetry::record_upstream_duration(&route.name, sent.elapsed());
        let mut response = result.map_err(|e| {
            tracing::warn!(route = %route.name, error = %e, source = ?std::error::Error::source(&e), "upstream request failed");
            match e {
                ForwardError::Timeout(_) => Refusal::UpstreamTimeout,
                ForwardError::Failed(_) => Refusal::UpstreamUnavailable,
            }
        })?;

        let switched = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client_upgrade)) = (switched, client_upgrade) {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            forward::spawn_tunnel(
                &self.tunnels,
                client_upgrade,
                upstream_upgrade,
                route.name.clone(),
            );
        }
        rewrite::strip_hop_by_hop(response.headers_mut(), switched && upgrade);
        Ok(response)
    }
}

/// The host the client addressed: `Host` for HTTP/1, `:authority` for HTTP/2.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

fn request_host_value<B>(req: &Request<B>) -> Option<HeaderValue> {
    req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}
