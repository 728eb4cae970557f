//! The data plane. One request takes one straight path through these stages:
//!
//! route → authenticate → authorize → rewrite → forward → respond → record
//!
//! Each stage lives in its own module; failures are [`Refusal`]s rendered in `refusal.rs`.

pub mod forward;
pub mod h1;
pub mod refusal;
pub mod rewrite;
pub mod route;

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::server::RequestBody;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::Scheme;
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use tokio_util::task::TaskTracker;

use crate::auth::verifier::CachedKey;
use crate::auth::{Authenticator, Caller, IdentityHeaders, Verifier};
use crate::config::{AuthMode, Config, UpstreamConfig};
use crate::limits::{retry_after_secs, RateLimits};
use crate::server::{CarriesHeaders, ConnInfo};
use crate::store::RateLimit;
use crate::telemetry::RouteMetrics;
use forward::{ForwardError, UpstreamBody, Upstreams, Via};
pub use refusal::Refusal;
use rewrite::ClientSide;
use route::{Route, Router};

/// Bodies stream through untouched; refusals are small and complete.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Everything a config reload replaces. A request keeps the state it started with, so a
/// reload never changes the rules half-way through a request.
pub struct ProxyState {
    router: Router,
    auth: Authenticator,
    identity: IdentityHeaders,
    /// Shared between states while `upstream` settings are unchanged, so a reload keeps
    /// the pooled upstream connections.
    upstreams: Arc<Upstreams>,
    upstream_config: UpstreamConfig,
    access_log: bool,
    failed_auth_per_ip: Option<RateLimit>,
}

impl ProxyState {
    fn build(
        config: &Config,
        verifier: Arc<Verifier>,
        previous: Option<&ProxyState>,
    ) -> io::Result<Self> {
        let upstreams = match previous {
            Some(p) if p.upstream_config == config.upstream => p.upstreams.clone(),
            _ => Arc::new(Upstreams::new(&config.upstream)?),
        };
        Ok(Self {
            router: Router::new(&config.routes),
            auth: Authenticator::new(config, verifier),
            identity: IdentityHeaders::new(&config.identity.header_prefix),
            upstreams,
            upstream_config: config.upstream.clone(),
            access_log: config.log.access,
            failed_auth_per_ip: config.failed_auth_per_ip,
        })
    }
}

pub struct Proxy {
    state: ArcSwap<ProxyState>,
    verifier: Arc<Verifier>,
    /// Kept across reloads: budgets are not reset by a config change.
    limits: Arc<RateLimits>,
    /// Upgraded connections (WebSocket) outlive their request; shutdown waits for them here.
    tunnels: TaskTracker,
}

/// What happened to one request, for metrics and the access log.
struct Exchange<'s> {
    request_id: HeaderValue,
    started: Instant,
    route: Option<&'s Route>,
    /// `ok`, `anonymous`, `unchecked` (auth: none), or the refusal code.
    decision: &'static str,
    /// For the access log only (left out when it is off). Boxed: inline, the key's text
    /// would add 200 bytes to every request's future, which is moved as a whole.
    key: Option<Box<CachedKey>>,
    upstream: Option<Duration>,
}

impl Proxy {
    pub fn new(config: &Config, verifier: Arc<Verifier>, tunnels: TaskTracker) -> io::Result<Self> {
        let state = ProxyState::build(config, verifier.clone(), None)?;
        Ok(Self {
            state: ArcSwap::from_pointee(state),
            verifier,
            limits: Arc::new(RateLimits::default()),
            tunnels,
        })
    }

    pub fn limits(&self) -> &Arc<RateLimits> {
        &self.limits
    }

    /// Builds the state a new config asks for (routes, key headers, identity prefix,
    /// upstream and log settings) without using it yet.
    pub fn prepare(&self, config: &Config) -> io::Result<ProxyState> {
        ProxyState::build(config, self.verifier.clone(), Some(&self.state.load()))
    }

    /// Requests that start from now on use `state`; those in flight finish with theirs.
    pub fn commit(&self, state: ProxyState) {
        self.state.store(Arc::new(state));
    }

    /// The hyper service entry point: never fails, every outcome is a response.
    ///
    /// The request is taken apart here once, and its head is lent to each stage rather
    /// than moved: every move of a request is a copy of 260 bytes, and every future that
    /// takes one by value keeps room for it (the profile showed the copies, `memmove`).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
        conn: ConnInfo,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let (mut head, body) = req.into_parts();
        let state = self.state.load_full();
        let mut exchange = Exchange {
            request_id: rewrite::request_id(&head.headers),
            started: Instant::now(),
            route: None,
            decision: "unchecked",
            key: None,
            upstream: None,
        };
        // For the access log (the request itself moves upstream): shared bytes, but still
        // a reference count per part, so taken only when the log is on; boxed, so that the
        // future of a request without it stays small.
        let logged = state
            .access_log
            .then(|| Box::new((head.method.clone(), head.uri.clone())));
        let processed = self
            .process(&state, &mut head, body, &conn, &mut exchange)
            .await;
        let mut response = match processed {
            Ok(response) => response.map(Either::Left),
            Err(refusal) => refusal::render(&refusal, &exchange.request_id).map(Either::Right),
        };
        response
            .headers_mut()
            .insert(rewrite::X_REQUEST_ID, exchange.request_id.clone());
        // The upstream's own, if it sent one, is replaced like any other.
        if let Some(upstream_headers) = response.body_mut().header_block_mut() {
            upstream_headers.remove(&rewrite::X_REQUEST_ID);
        }
        let elapsed = exchange.started.elapsed();
        let metrics = exchange
            .route
            .map_or(RouteMetrics::unrouted(), |r| &*r.metrics);
        metrics.record_request(response.status(), elapsed);
        if let Some(logged) = &logged {
            let (method, uri) = &**logged;
            access_log(&exchange, method, uri, &conn, response.status(), elapsed);
        }
        Ok(response)
    }

    /// route → authenticate → authorize → rewrite → forward.
    async fn process<'s>(
        &self,
        state: &'s ProxyState,
        req: &mut Parts,
        body: RequestBody,
        conn: &ConnInfo,
        exchange: &mut Exchange<'s>,
    ) -> Result<Response<UpstreamBody>, Refusal> {
        if let Some(path) = route::normalize_path(req.uri.path()) {
            replace_path(&mut req.uri, &path)?;
        }
        let route = state
            .router
            .find(&req.method, request_host(req), req.uri.path())
            .ok_or(Refusal::NoRoute)?;
        exchange.route = Some(route);

        let ip = conn.peer.ip().to_canonical();
        let failed_auth_limit = state
            .failed_auth_per_ip
            .as_ref()
            .filter(|_| route.config.auth != AuthMode::None);
        if let Some(limit) = failed_auth_limit {
            // A client that keeps guessing is refused before its guess costs a lookup.
            self.limits.failed_auth_blocked(ip, limit).map_err(|wait| {
                exchange.decision = "rate_limited";
                Refusal::RateLimited {
                    retry_after_secs: retry_after_secs(wait),
                }
            })?;
        }
        let caller = state
            .auth
            .authenticate(route.config.auth, &req.headers)
            .await;
        let caller = caller.inspect_err(|r| {
            exchange.decision = r.code();
            if let (Refusal::InvalidKey, Some(limit)) = (r, failed_auth_limit) {
                self.limits.failed_auth(ip, limit);
            }
        })?;
        let authorized = state.auth.authorize(&caller, &route.config.require);
        exchange.decision = match (&authorized, &caller) {
            (Err(r), _) => r.code(),
            (Ok(()), Caller::Key(_)) => "ok",
            (Ok(()), Caller::Anonymous) => "anonymous",
            (Ok(()), Caller::Unchecked) => "unchecked",
        };
        authorized?;
        if let Caller::Key(principal) = &caller {
            if state.access_log {
                // Only the access log names the key: no copy of it otherwise.
                exchange.key = Some(Box::new(principal.key.clone()));
            }
            self.limits.admit_principal(principal).map_err(|wait| {
                exchange.decision = "rate_limited";
                Refusal::RateLimited {
                    retry_after_secs: retry_after_secs(wait),
                }
            })?;
            self.verifier.note_use(principal);
        }
        self.forward(state, route, req, body, conn, &caller, exchange)
            .await
    }

    /// rewrite → forward → the upstream's response.
    #[allow(clippy::too_many_arguments)] // the request's head and body, and what it met
    async fn forward(
        &self,
        state: &ProxyState,
        route: &Route,
        req: &mut Parts,
        body: RequestBody,
        conn: &ConnInfo,
        caller: &Caller,
        exchange: &mut Exchange<'_>,
    ) -> Result<Response<UpstreamBody>, Refusal> {
        // Upgrades are an HTTP/1.1 mechanism on both sides; on an HTTP/2 upstream the
        // request goes through as a plain request without its upgrade headers.
        let upgrade = req.version == Version::HTTP_11
            && !route.config.upstream_http2
            && rewrite::wants_upgrade(&req.headers);
        // What `hyper::upgrade::on` takes from a request (it takes no request head).
        let client_upgrade = upgrade
            .then(|| req.extensions.remove::<hyper::upgrade::OnUpgrade>())
            .flatten();

        let original_host = request_host_value(req);
        let uri = rewrite::upstream_uri(
            &route.config.upstream,
            &req.uri,
            route
                .config
                .strip_prefix
                .then_some(route.config.path_prefix.as_str()),
        )
        .map_err(|e| {
            tracing::debug!(error = %e, "request path cannot be forwarded");
            Refusal::BadRequest
        })?;

        req.uri = uri;
        req.version = if route.config.upstream_http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };

        let via = if route.config.upstream_http2 {
            Via::Http2
        } else if upgrade || route.config.upstream.scheme != Scheme::HTTP {
            Via::Negotiated
        } else {
            Via::Direct
        };
        let rewrite = rewrite::RequestHeaders {
            auth: &state.auth,
            identity: &state.identity,
            caller,
            client: ClientSide {
                ip: conn.peer.ip(),
                tls: conn.tls,
                host: original_host.as_ref(),
            },
            request_id: &exchange.request_id,
            upgrade,
            preserve_host: route.config.preserve_host,
        };
        let sent = Instant::now();
        let result = state
            .upstreams
            .send(req, body, &rewrite, via, sent, route.config.timeout)
            .await;
        let upstream_elapsed = sent.elapsed();
        exchange.upstream = Some(upstream_elapsed);
        route.metrics.record_upstream(upstream_elapsed);
        let mut response = result.map_err(|e| {
            tracing::warn!(route = %route.config.name, error = %e, source = ?std::error::Error::source(&e), "upstream request failed");
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
                route.config.name.clone(),
            );
        }
        rewrite::strip_hop_by_hop(response.headers_mut(), switched && upgrade);
        Ok(response)
    }
}

/// One line per request (`target: keygate::access`): ids, route, decision, status and
/// timings. The path is logged without its query string, which may carry secrets; the
/// key appears only as its id.
fn access_log(
    x: &Exchange<'_>,
    method: &http::Method,
    uri: &Uri,
    conn: &ConnInfo,
    status: http::StatusCode,
    elapsed: Duration,
) {
    tracing::info!(
        target: "keygate::access",
        request_id = x.request_id.to_str().unwrap_or_default(),
        client = %conn.peer.ip(),
        method = method.as_str(),
        path = uri.path(),
        route = x.route.map_or("-", |r| &*r.config.name),
        status = status.as_u16(),
        decision = x.decision,
        key_id = x.key.as_ref().map_or("-", |k| k.id()),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        upstream_ms = x.upstream.map(|d| d.as_secs_f64() * 1000.0),
        "request"
    );
}

/// The host the client addressed: the request target's authority when it has one
/// (HTTP/2 `:authority`, HTTP/1 absolute form — RFC 9112 §3.2.2 says it wins), else `Host`.
fn request_host(req: &Parts) -> Option<&str> {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

fn request_host_value(req: &Parts) -> Option<HeaderValue> {
    match req.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers.get(header::HOST).cloned(),
    }
}

/// Swaps the path of `uri` for `path`, keeping the query.
fn replace_path(uri: &mut Uri, path: &str) -> Result<(), Refusal> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| Refusal::BadRequest)?);
    *uri = Uri::from_parts(parts).map_err(|_| Refusal::BadRequest)?;
    Ok(())
}
