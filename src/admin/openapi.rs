//! `GET /openapi.json`, generated from the handlers' own annotations and types.

use axum::Json;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};

use super::views::*;
use super::{keys, users};

#[derive(OpenApi)]
#[openapi(
    info(title = "keygate admin API", description = "Issue, list, edit, disable, roll and revoke API keys; manage users, groups; read the audit log."),
    paths(
        keys::create, keys::list, keys::show, keys::update, keys::revoke, keys::roll, keys::import, keys::verify,
        users::list_users, users::show_user, users::put_user, users::patch_user, users::delete_user,
        users::list_groups, users::show_group, users::put_group, users::delete_group, users::audit,
        users::whoami,
    ),
    components(schemas(
        KeyStatus, KeyView, IssuedKey, CreateKey, UpdateKey, RollKey, ImportKey, KeyList, VerifyRequest,
        VerifyAnswer, PutUser, UserView, UserList, PutGroup, GroupView, GroupList, AuditView, AuditList,
        ErrorBody, ErrorDetail, WhoAmI, crate::store::RateLimit,
    )),
    modifiers(&BearerAuth, &CommonErrors),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(
                "The bootstrap admin token, or an API key with keygate:admin or keygate:self",
            )).build()),
        );
    }
}

/// What any operation may answer besides its own codes, added to each so the handlers'
/// annotations list only what is particular to them: 400 wherever a path id, a query or a
/// body can be malformed (the shared extractors); 401 (no or a bad token), 403 (a key
/// without the role) and 503 (the store is unreachable) behind the bearer token.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let takes_input = op.request_body.is_some()
                    || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let mut common = Vec::new();
                if takes_input {
                    common.push(("400", "invalid_request: the message names the field"));
                }
                if secured {
                    common.extend([
                        ("401", "unauthorized: no token, or not a valid one"),
                        ("403", "forbidden: the token's role does not allow this"),
                        (
                            "503",
                            "store_unavailable: the store cannot be reached; retry",
                        ),
                    ]);
                }
                for (status, description) in common {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(description));
                }
            }
        }
    }
}

fn error_response(description: &str) -> RefOr<Response> {
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content("application/json", body)
        .build()
        .into()
}

/// The document is public: it describes the API, it grants nothing.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_every_contract_path() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for path in [
            "/v1/keys",
            "/v1/keys/{id}",
            "/v1/keys/{id}/roll",
            "/v1/keys/import",
            "/v1/verify",
            "/v1/users",
            "/v1/users/{id}",
            "/v1/groups",
            "/v1/groups/{id}",
            "/v1/audit",
        ] {
            assert!(
                doc["paths"].get(path).is_some(),
                "{path} missing from openapi.json"
            );
        }
        assert!(doc["components"]["schemas"]["KeyView"]["properties"]
            .get("start")
            .is_some());
        assert!(
            doc["components"]["schemas"]["KeyView"]["properties"]
                .get("key")
                .is_none(),
            "a listed key never has its secret"
        );
    }

    #[test]
    fn every_operation_documents_the_shared_errors() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                operations += 1;
                let responses = &op["responses"];
                for status in ["401", "403", "503"] {
                    assert_eq!(
                        responses[status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} lacks {status}"
                    );
                }
                let takes_input = op.get("requestBody").is_some() || op.get("parameters").is_some();
                assert_eq!(
                    responses.get("400").is_some(),
                    takes_input,
                    "{method} {path}: 400 wherever there is input"
                );
            }
        }
        assert_eq!(operations, 19);
    }
}
