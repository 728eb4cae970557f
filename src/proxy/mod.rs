//! The data plane. One request takes one straight path through these stages:
//!
//! route → authenticate → authorize → rewrite → forward → respond → record
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
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, Caller, IdentityHeaders};
use crate::config::{Config, RouteConfig};
use crate::server::ConnInfo;
use crate::telemetry;
use crate::usage::Usage;
use forward::{ForwardError, Upstreams};
pub use refusal::Refusal;
use rewrite::ClientSide;
use route::Router;

/// Bodies stream through untouched; refusals are small and complete.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

pub struct Proxy {
    router: Router,
    auth: Arc<Authenticator>,
    identity: IdentityHeaders,
    upstreams: Upstreams,
    usage: Arc<Usage>,
    /// Upgraded connections (WebSocket) outlive their request; shutdown waits for them here.
    tunnels: TaskTracker,
}

impl Proxy {
    pub fn new(
        config: &Config,
        auth: Arc<Authenticator>,
        usage: Arc<Usage>,
        tunnels: TaskTracker,
    ) -> io::Result<Self> {
        Ok(Self {
            router: Router::new(&config.routes),
            auth,
            identity: IdentityHeaders::new(&config.identity.header_prefix),
            upstreams: Upstreams::new(&config.upstream)?,
            usage,
            tunnels,
        })
    }

    /// The hyper service entry point: never fails, every outcome is a response.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let request_id = rewrite::request_id(req.headers());
        if let Some(path) = route::normalize_path(req.uri().path()) {
            if let Err(refusal) = replace_path(&mut req, &path) {
                return Ok(self.refuse(&refusal, None, request_id, started));
            }
        }
        let route = match self
            .router
            .find(req.method(), request_host(&req), req.uri().path())
        {
            Some(route) => route.clone(),
            None => return Ok(self.refuse(&Refusal::NoRoute, None, request_id, started)),
        };
        let mut response = match self.forward(&route, req, &conn, &request_id).await {
            Ok(response) => response.map(Either::Left),
            Err(refusal) => return Ok(self.refuse(&refusal, Some(&route), request_id, started)),
        };
        response
            .headers_mut()
            .insert(rewrite::X_REQUEST_ID, request_id);
        telemetry::record_http_request(&route.name, response.status(), started.elapsed());
        Ok(response)
    }

    /// respond + record for a request that ends in a refusal.
    fn refuse(
        &self,
        refusal: &Refusal,
        route: Option<&RouteConfig>,
        request_id: HeaderValue,
        started: Instant,
    ) -> Response<ProxyBody> {
        let response = refusal::render(refusal, &request_id).map(Either::Right);
        let route_label = route.map_or(telemetry::NO_ROUTE_LABEL, |r| &r.name);
        telemetry::record_http_request(route_label, response.status(), started.elapsed());
        response
    }

    /// authenticate → authorize → rewrite → forward, for a request that matched `route`.
    async fn forward(
        &self,
        route: &Arc<RouteConfig>,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
    ) -> Result<Response<Incoming>, Refusal> {
        // Upgrades are an HTTP/1.1 mechanism on both sides; on an HTTP/2 upstream the
        // request goes through as a plain request without its upgrade headers.
        let caller = self.auth.authenticate(route.auth, req.headers()).await?;
        self.auth.authorize(&caller, &route.require)?;
        if let Caller::Key(principal) = &caller {
            self.usage.record(&principal.key.id);
        }

        let upgrade = req.version() == Version::HTTP_11
            && !route.upstream_http2
            && rewrite::wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let original_host = request_host_value(&req);
        let uri = rewrite::upstream_uri(
            &route.upstream,
            req.uri(),
            route.strip_prefix.then_some(route.path_prefix.as_str()),
        )
        .map_err(|e| {
            tracing::debug!(error = %e, "request path cannot be forwarded");
            Refusal::BadRequest
        })?;

        let headers = req.headers_mut();
        rewrite::strip_hop_by_hop(headers, upgrade);
        self.auth.strip_credentials(headers);
        rewrite::strip_identity_headers(headers, &self.identity.prefix);
        self.identity.add(headers, &caller);
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

/// The host the client addressed: the request target's authority when it has one
/// (HTTP/2 `:authority`, HTTP/1 absolute form — RFC 9112 §3.2.2 says it wins), else `Host`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

fn request_host_value<B>(req: &Request<B>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    }
}

/// Swaps the request's path for `path`, keeping the query.
fn replace_path<B>(req: &mut Request<B>, path: &str) -> Result<(), Refusal> {
    let mut parts = req.uri().clone().into_parts();
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    parts.path_and_query = Some(pq.parse().map_err(|_| Refusal::BadRequest)?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Refusal::BadRequest)?;
    Ok(())
}
