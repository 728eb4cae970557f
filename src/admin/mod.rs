//! The control plane: the admin API under `/v1` (CONTRACT §6) and `GET /openapi.json`.
//! It meets the data plane only through the store and invalidation [`crate::events`].

pub mod caller;
pub mod console;
pub mod error;
pub mod extract;
pub mod keys;
pub mod openapi;
pub mod users;
pub mod validate;
pub mod views;

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use futures_util::FutureExt;
use hyper::body::Incoming;
use tower::ServiceExt;

use crate::auth::Verifier;
use crate::config::{Config, KeysConfig, Secret};
use crate::events::{Change, Events};
use crate::proxy::rewrite;
use crate::store::{AuditEntry, Store};
pub use caller::Caller;
pub use error::ApiError;
pub use extract::parse_json;

/// Everything the handlers share.
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub verifier: Arc<Verifier>,
    pub events: Arc<Events>,
    pub bootstrap: Option<Secret>,
    pub keys: KeysConfig,
}

pub type Shared = Arc<AdminState>;

impl AdminState {
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        verifier: Arc<Verifier>,
        events: Arc<Events>,
    ) -> Self {
        Self {
            store,
            verifier,
            events,
            bootstrap: config.admin.token.clone(),
            keys: config.keys.clone(),
        }
    }

    /// Tells every instance what changed; a write is not done until this succeeds.
    pub async fn publish(&self, change: Change) -> Result<(), ApiError> {
        self.events.publish(change).await.map_err(ApiError::from)
    }

    /// Records an admin write. The write itself already happened, so a failure here is
    /// logged rather than turned into an error answer.
    pub async fn audit(&self, caller: &Caller, action: &str, target: &str, tenant: &str) {
        let entry = AuditEntry {
            id: String::new(),
            at: Utc::now(),
            actor: caller.actor(),
            action: action.to_owned(),
            target: target.to_owned(),
            tenant: tenant.to_owned(),
        };
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(error = %e, action, target, "audit entry could not be stored");
        }
    }
}

/// The admin router: `/v1/...` and `/openapi.json`.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/import", post(keys::import))
        .route(
            "/v1/keys/{id}",
            get(keys::show).patch(keys::update).delete(keys::revoke),
        )
        .route("/v1/keys/{id}/roll", post(keys::roll))
        .route("/v1/verify", post(keys::verify))
        .route("/v1/users", get(users::list_users))
        .route(
            "/v1/users/{id}",
            get(users::show_user)
                .put(users::put_user)
                .patch(users::patch_user)
                .delete(users::delete_user),
        )
        .route("/v1/groups", get(users::list_groups))
        .route(
            "/v1/groups/{id}",
            get(users::show_group)
                .put(users::put_group)
                .delete(users::delete_group),
        )
        .route("/v1/audit", get(users::audit))
        .route("/v1/whoami", get(users::whoami))
        .route("/openapi.json", get(openapi::document))
        .route("/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .fallback(|| async { ApiError::NotFound("endpoint".into()) })
        .layer(DefaultBodyLimit::max(extract::BODY_MAX))
        .layer(middleware::from_fn(with_request_id))
        .with_state(state)
}

/// Adapts the router to the listener's handler shape.
pub fn handler(
    router: Router,
) -> impl Fn(Request<Incoming>, crate::server::ConnInfo) -> HandlerFuture + Clone + Send + Sync + 'static
{
    move |req, _conn| {
        let router = router.clone();
        Box::pin(async move {
            Ok(router
                .oneshot(req.map(Body::new))
                .await
                .unwrap_or_else(|e| match e {}))
        })
    }
}

pub type HandlerFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

tokio::task_local! {
    static REQUEST_ID: HeaderValue;
}

/// The id of the admin request being handled (for error bodies).
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// Gives every answer its `X-Request-Id`, and turns a handler panic into a JSON 500 rather
/// than a connection closed without an answer (the panic itself is logged by the hook).
async fn with_request_id(req: Request, next: Next) -> Response {
    let id = rewrite::request_id(req.headers());
    let handled = async {
        std::panic::AssertUnwindSafe(next.run(req))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| ApiError::Internal("a handler panicked".into()).into_response())
    };
    let mut response = REQUEST_ID.scope(id.clone(), handled).await;
    response.headers_mut().insert(rewrite::X_REQUEST_ID, id);
    response
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        caller::identify(
            &parts.headers,
            state.bootstrap.as_ref(),
            &state.keys.prefix,
            &state.verifier,
        )
        .await
    }
}
