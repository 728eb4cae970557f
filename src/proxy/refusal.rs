//! Every way the gateway can refuse a request, and the one function that renders them
//! (CONTRACT §5). Nothing else in the proxy builds an error response.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::rewrite::X_REQUEST_ID;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A request the gateway cannot make sense of (it never reaches an upstream).
    BadRequest,
    MissingKey,
    InvalidKey,
    KeyExpired,
    KeyDisabled,
    UserInactive,
    InsufficientPermissions,
    RateLimited {
        retry_after_secs: u64,
    },
    AuthUnavailable,
    NoRoute,
    UpstreamUnavailable,
    UpstreamTimeout,
}

impl Refusal {
    /// The stable `error.code` of CONTRACT §5; also the `result` label of auth metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadRequest => "invalid_request",
            Refusal::MissingKey => "missing_key",
            Refusal::InvalidKey => "invalid_key",
            Refusal::KeyExpired => "key_expired",
            Refusal::KeyDisabled => "key_disabled",
            Refusal::UserInactive => "user_inactive",
            Refusal::InsufficientPermissions => "insufficient_permissions",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::AuthUnavailable => "auth_unavailable",
            Refusal::NoRoute => "no_route",
            Refusal::UpstreamUnavailable => "upstream_unavailable",
            Refusal::UpstreamTimeout => "upstream_timeout",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            Refusal::MissingKey | Refusal::InvalidKey => StatusCode::UNAUTHORIZED,
            Refusal::KeyExpired
            | Refusal::KeyDisabled
            | Refusal::UserInactive
            | Refusal::InsufficientPermissions => StatusCode::FORBIDDEN,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Words for a person; deliberately says nothing about which check of a key failed
    /// beyond the code, so a caller cannot probe for existing keys.
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::BadRequest => "the request cannot be forwarded as sent",
            Refusal::MissingKey => "this route needs an API key",
            Refusal::InvalidKey => "the API key is not valid",
            Refusal::KeyExpired => "the API key has expired",
            Refusal::KeyDisabled => "the API key is disabled",
            Refusal::UserInactive => "the owner of the API key is deactivated",
            Refusal::InsufficientPermissions => {
                "the API key lacks a permission this route requires"
            }
            Refusal::RateLimited { .. } => "too many requests; retry later",
            Refusal::AuthUnavailable => "keys cannot be checked right now; retry later",
            Refusal::NoRoute => "no route matches this request",
            Refusal::UpstreamUnavailable => "the upstream service could not be reached",
            Refusal::UpstreamTimeout => "the upstream service did not answer in time",
        }
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    error: ErrorBody<'a>,
    request_id: &'a str,
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

/// JSON body of the error shape shared by the proxy and the admin API.
pub fn error_json(code: &str, message: &str, request_id: &str) -> Bytes {
    let body = Body {
        error: ErrorBody { code, message },
        request_id,
    };
    // Serialising three strings cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The single place a [`Refusal`] becomes an HTTP response.
pub fn render(refusal: &Refusal, request_id: &HeaderValue) -> Response<Full<Bytes>> {
    let id = request_id.to_str().unwrap_or_default();
    let mut response = Response::new(Full::new(error_json(refusal.code(), refusal.message(), id)));
    *response.status_mut() = refusal.status();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(X_REQUEST_ID, request_id.clone());
    match refusal {
        Refusal::MissingKey | Refusal::InvalidKey => {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keygate\""),
            );
        }
        Refusal::RateLimited { retry_after_secs } => {
            headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs.max(&1)));
        }
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body_json(r: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = futures_util::FutureExt::now_or_never(r.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn every_refusal_maps_to_the_contract_status_and_code() {
        let table = [
            (Refusal::BadRequest, 400, "invalid_request"),
            (Refusal::MissingKey, 401, "missing_key"),
            (Refusal::InvalidKey, 401, "invalid_key"),
            (Refusal::KeyExpired, 403, "key_expired"),
            (Refusal::KeyDisabled, 403, "key_disabled"),
            (Refusal::UserInactive, 403, "user_inactive"),
            (
                Refusal::InsufficientPermissions,
                403,
                "insufficient_permissions",
            ),
            (
                Refusal::RateLimited {
                    retry_after_secs: 7,
                },
                429,
                "rate_limited",
            ),
            (Refusal::AuthUnavailable, 503, "auth_unavailable"),
            (Refusal::NoRoute, 404, "no_route"),
            (Refusal::UpstreamUnavailable, 502, "upstream_unavailable"),
            (Refusal::UpstreamTimeout, 504, "upstream_timeout"),
        ];
        let id = HeaderValue::from_static("req-123");
        for (refusal, status, code) in table {
            let response = render(&refusal, &id);
            assert_eq!(response.status().as_u16(), status, "{code}");
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            assert_eq!(response.headers()[X_REQUEST_ID], "req-123");
            let json = body_json(response);
            assert_eq!(json["error"]["code"], code);
            assert_eq!(json["error"]["message"], refusal.message());
            assert_eq!(json["request_id"], "req-123");
        }
    }

    #[test]
    fn key_refusals_carry_www_authenticate() {
        let id = HeaderValue::from_static("r");
        for r in [Refusal::MissingKey, Refusal::InvalidKey] {
            assert!(render(&r, &id).headers().contains_key(WWW_AUTHENTICATE));
        }
        assert!(!render(&Refusal::NoRoute, &id)
            .headers()
            .contains_key(WWW_AUTHENTICATE));
    }

    #[test]
    fn rate_limited_sets_retry_after_of_at_least_one_second() {
        let id = HeaderValue::from_static("r");
        let r = render(
            &Refusal::RateLimited {
                retry_after_secs: 3,
            },
            &id,
        );
        assert_eq!(r.headers()[RETRY_AFTER], "3");
        let r = render(
            &Refusal::RateLimited {
                retry_after_secs: 0,
            },
            &id,
        );
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }
}
