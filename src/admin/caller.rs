//! Who is calling the admin API, and what they may touch (CONTRACT §6):
//! the bootstrap token is a super-admin of every tenant; a key with `keygate:admin`
//! administers its own tenant; a key with `keygate:self` manages its own user's keys.

use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::auth::key::{self, KeyHash};
use crate::auth::{permissions, Verifier};
use crate::config::Secret;
use crate::proxy::Refusal;

pub const ADMIN_PERMISSION: &str = "keygate:admin";
pub const SELF_PERMISSION: &str = "keygate:self";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    SuperAdmin,
    TenantAdmin {
        tenant: String,
        user: String,
        key_id: String,
    },
    SelfService {
        tenant: String,
        user: String,
        key_id: String,
    },
}

impl Caller {
    /// How audit entries and `created_by` name this caller (never a secret).
    pub fn actor(&self) -> String {
        match self {
            Caller::SuperAdmin => "bootstrap".into(),
            Caller::TenantAdmin { user, key_id, .. } | Caller::SelfService { user, key_id, .. } => {
                format!("{user} (key {key_id})")
            }
        }
    }

    /// The one tenant this caller is confined to; `None` for the super-admin.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::SuperAdmin => None,
            Caller::TenantAdmin { tenant, .. } | Caller::SelfService { tenant, .. } => Some(tenant),
        }
    }

    pub fn is_admin(&self) -> bool {
        !matches!(self, Caller::SelfService { .. })
    }

    /// Admins only: users, groups, audit, other users' keys.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this needs keygate:admin".into()))
        }
    }

    /// Whether an object of `tenant` owned by `owner` (a user id, for keys) is in reach.
    /// Out-of-reach objects are reported as not found, so ids of other tenants don't leak.
    pub fn can_see(&self, tenant: &str, owner: Option<&str>) -> bool {
        match self {
            Caller::SuperAdmin => true,
            Caller::TenantAdmin { tenant: mine, .. } => mine == tenant,
            Caller::SelfService {
                tenant: mine, user, ..
            } => mine == tenant && owner == Some(user.as_str()),
        }
    }
}

/// Identifies the caller from `Authorization: Bearer <token>`.
pub async fn identify(
    headers: &HeaderMap,
    bootstrap: Option<&Secret>,
    key_prefix: &str,
    verifier: &std::sync::Arc<Verifier>,
) -> Result<Caller, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized(
            "send Authorization: Bearer <admin token or API key>",
        ))?;

    if let Some(secret) = bootstrap {
        // Constant time: the comparison must not reveal how much of a guess was right.
        if bool::from(token.as_bytes().ct_eq(secret.expose().as_bytes())) {
            return Ok(Caller::SuperAdmin);
        }
    }
    if key::check(token, key_prefix).is_err() {
        return Err(ApiError::Unauthorized("the token is not valid"));
    }
    let principal =
        verifier
            .verify(&KeyHash::of(token))
            .await
            .map_err(|refusal| match refusal {
                Refusal::AuthUnavailable => ApiError::Unavailable,
                _ => ApiError::Unauthorized("the token is not valid"),
            })?;
    let (tenant, user, key_id) = (
        principal.user().tenant.to_string(),
        principal.user().id.to_string(),
        principal.key.id().to_owned(),
    );
    let held = principal.permissions();
    if permissions::grants(held, ADMIN_PERMISSION) {
        Ok(Caller::TenantAdmin {
            tenant,
            user,
            key_id,
        })
    } else if permissions::grants(held, SELF_PERMISSION) {
        Ok(Caller::SelfService {
            tenant,
            user,
            key_id,
        })
    } else {
        Err(ApiError::Forbidden(
            "this key has neither keygate:admin nor keygate:self".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reach_follows_tenant_and_ownership() {
        let admin = Caller::TenantAdmin {
            tenant: "a".into(),
            user: "u".into(),
            key_id: "k".into(),
        };
        let me = Caller::SelfService {
            tenant: "a".into(),
            user: "u".into(),
            key_id: "k".into(),
        };
        assert!(Caller::SuperAdmin.can_see("b", Some("x")));
        assert!(admin.can_see("a", Some("x")));
        assert!(!admin.can_see("b", Some("u")));
        assert!(me.can_see("a", Some("u")));
        assert!(!me.can_see("a", Some("x")));
        assert!(!me.can_see("b", Some("u")));
        assert!(me.require_admin().is_err());
        assert!(admin.require_admin().is_ok());
    }
}
