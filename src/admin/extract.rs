//! What the handlers take from a request — the path id, the query, the body — with every
//! way it can be malformed answered as a JSON `invalid_request` naming the field, never as
//! axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;

use super::error::ApiError;

/// Largest request body the admin API reads. The biggest valid body (a key with a full
/// description, 100 permissions and 4 KiB of meta) is far smaller.
pub const BODY_MAX: usize = 1024 * 1024;

/// The `{id}` of a path, percent-decoded.
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Id(id)),
            // The only way a matched `{id}` fails: its percent-decoding is not UTF-8.
            Err(_) => Err(ApiError::invalid(
                "id",
                "must be UTF-8 once percent-decoded",
            )),
        }
    }
}

/// The query string, parsed strictly (unknown parameters are errors naming them).
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        match Query::<T>::try_from_uri(&parts.uri) {
            Ok(Query(params)) => Ok(Params(params)),
            Err(rejection) => Err(query_error(&rejection.body_text())),
        }
    }
}

/// axum reports `Failed to deserialize query string: <field>: <message>` (its own
/// serde_path_to_error); name the field the way body errors do.
fn query_error(text: &str) -> ApiError {
    let detail = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text);
    let (path, message) = match detail.split_once(": ") {
        Some((path, message)) if !path.contains(' ') => (path.to_owned(), message.to_owned()),
        _ => (".".to_owned(), detail.to_owned()),
    };
    let (field, message) = crate::config::locate_unknown_field(path, message);
    ApiError::invalid(if field == "." { "query" } else { &field }, message)
}

/// The raw request body, at most [`BODY_MAX`] bytes.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| match e {
                BytesRejection::FailedToBufferBody(e)
                    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
                {
                    ApiError::invalid("body", format!("must be at most {BODY_MAX} bytes"))
                }
                _ => ApiError::invalid("body", "could not be read"),
            })
    }
}

/// Parses a JSON body strictly: unknown fields and type errors name the field.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid("body", "expected a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde_json appends " at line L column C": noise for a one-line API body.
        let message = message
            .split_once(" at line ")
            .map_or(message.clone(), |(m, _)| m.to_owned());
        let (mut field, message) = crate::config::locate_unknown_field(path, message);
        // A missing field is reported at its parent; name the field itself.
        if let Some((name, _)) = message
            .strip_prefix("missing field `")
            .and_then(|r| r.split_once('`'))
        {
            field = if field == "." {
                name.to_owned()
            } else {
                format!("{field}.{name}")
            };
        }
        ApiError::invalid(
            if field == "." {
                "body".to_owned()
            } else {
                field
            },
            message,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_errors_name_the_parameter() {
        let e =
            query_error("Failed to deserialize query string: limit: invalid digit found in string");
        assert_eq!(e.to_string(), "limit: invalid digit found in string");
        let e = query_error(
            "Failed to deserialize query string: unknown field `colour`, expected one of `owner`, `limit`",
        );
        assert!(e.to_string().starts_with("colour: unknown key"), "{e}");
        let e = query_error("Failed to deserialize query string: something odd happened");
        assert!(e.to_string().starts_with("query: something odd"), "{e}");
    }
}
