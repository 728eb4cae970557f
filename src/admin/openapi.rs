//! `GET /openapi.json`, generated from the handlers' own annotations and types.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
    modifiers(&BearerAuth),
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
}
