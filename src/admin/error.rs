//! Every admin API failure, and the one place it becomes a response (same JSON shape as the
//! proxy's refusals, CONTRACT §5/§6).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::proxy::refusal::error_json;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, or one that is neither the bootstrap token nor a working key.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A valid caller asking for something outside its reach.
    #[error("{0}")]
    Forbidden(String),
    /// A request that fails validation; the message names the field.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The store could not be reached; nothing was changed.
    #[error("the store is unavailable; retry later")]
    Unavailable,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Invalid { .. } => "invalid_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable => "store_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError::Unavailable,
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::Conflict(what) => ApiError::Conflict(format!("already exists: {what}")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "admin request failed");
        }
        let message = self.to_string();
        let request_id = super::current_request_id();
        let mut response = (
            self.status(),
            error_json(self.code(), &message, &request_id),
        )
            .into_response();
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Bearer realm=\"keygate-admin\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_status_and_code() {
        let table = [
            (ApiError::Unauthorized("x"), 401, "unauthorized"),
            (ApiError::Forbidden("x".into()), 403, "forbidden"),
            (
                ApiError::invalid("name", "too long"),
                400,
                "invalid_request",
            ),
            (ApiError::NotFound("key k".into()), 404, "not_found"),
            (ApiError::Conflict("x".into()), 409, "conflict"),
            (ApiError::Unavailable, 503, "store_unavailable"),
            (ApiError::Internal("x".into()), 500, "internal"),
        ];
        for (error, status, code) in table {
            assert_eq!(error.status().as_u16(), status);
            assert_eq!(error.code(), code);
        }
        assert_eq!(
            ApiError::invalid("name", "must be 1 to 200 characters").to_string(),
            "name: must be 1 to 200 characters"
        );
    }

    #[test]
    fn store_errors_keep_their_meaning() {
        assert!(matches!(
            ApiError::from(StoreError::Unavailable("down".into())),
            ApiError::Unavailable
        ));
        assert!(matches!(
            ApiError::from(StoreError::NotFound("k".into())),
            ApiError::NotFound(_)
        ));
        assert!(matches!(
            ApiError::from(StoreError::Conflict("k".into())),
            ApiError::Conflict(_)
        ));
    }
}
