//! The admin API's request and response bodies. `/openapi.json` is generated from these
//! types, so the document cannot drift from what the handlers accept and return.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::store::{AuditEntry, Group, KeyRecord, RateLimit, User};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Disabled,
    Expired,
}

impl KeyStatus {
    pub fn of(key: &KeyRecord, now: DateTime<Utc>) -> Self {
        if !key.enabled {
            KeyStatus::Disabled
        } else if key.is_expired(now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// A key as the API shows it: never the secret, only its first characters (`start`).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub start: String,
    pub name: String,
    pub description: String,
    pub owner: String,
    pub tenant: String,
    pub status: KeyStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub permissions: Option<Vec<String>>,
    pub created_by: String,
    #[schema(value_type = Option<Object>)]
    pub meta: Option<serde_json::Value>,
    pub rate_limit: Option<RateLimit>,
}

impl KeyView {
    pub fn of(key: &KeyRecord) -> Self {
        Self {
            id: key.id.clone(),
            start: key.start.clone(),
            name: key.name.clone(),
            description: key.description.clone(),
            owner: key.owner.clone(),
            tenant: key.tenant.clone(),
            status: KeyStatus::of(key, Utc::now()),
            created_at: key.created_at,
            updated_at: key.updated_at,
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
            permissions: key.permissions.clone(),
            created_by: key.created_by.clone(),
            meta: key.meta.clone(),
            rate_limit: key.rate_limit,
        }
    }
}

/// A new key with its secret: the only answer that ever carries it.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedKey {
    #[serde(flatten)]
    pub record: KeyView,
    /// The secret. Shown once; only its SHA-256 is stored.
    pub key: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"owner": "alice", "name": "CI deploys", "expires_in": "90d"}))]
pub struct CreateKey {
    /// The user the key belongs to. Self-service callers may leave it out (themselves).
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,128}$")]
    pub owner: Option<String>,
    /// 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Up to 1000 characters.
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    /// A duration such as `30d`; or give `expires_at`, or `never_expires: true`.
    #[schema(pattern = r"^[0-9]+(ms|s|m|h|d)$")]
    pub expires_in: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub never_expires: Option<bool>,
    /// Narrow the key to these of its owner's permissions.
    #[schema(max_items = 100)]
    pub permissions: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub meta: Option<serde_json::Value>,
    /// e.g. `{"requests": 100, "per": "1s"}`, enforced by each gateway instance.
    pub rate_limit: Option<RateLimit>,
}

/// Absent fields stay as they are; `permissions: null` removes the restriction and
/// `expires_at: null` makes the key never expire (where the config allows it).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub permissions: Option<Option<Vec<String>>>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RateLimit>)]
    pub rate_limit: Option<Option<RateLimit>>,
}

/// Tells "field absent" (`None`) from "field is null" (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"grace": "24h"}))]
pub struct RollKey {
    /// How long the old key keeps working, e.g. `24h`. Default: it stops at once.
    #[schema(pattern = r"^[0-9]+(ms|s|m|h|d)$")]
    pub grace: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportKey {
    /// SHA-256 of the secret, 64 hex digits; or give the secret as `key`.
    #[schema(pattern = r"^[0-9A-Fa-f]{64}$")]
    pub sha256: Option<String>,
    pub key: Option<String>,
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,128}$")]
    pub owner: String,
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub enabled: Option<bool>,
    pub permissions: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub meta: Option<serde_json::Value>,
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListKeysQuery {
    pub owner: Option<String>,
    /// Super-admin only; others see their own tenant.
    pub tenant: Option<String>,
    pub status: Option<KeyStatus>,
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<KeyView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub key: String,
    pub require: Option<Vec<String>>,
}

/// The same decision the proxy would make for this key.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyAnswer {
    pub valid: bool,
    /// `ok`, or the refusal code the proxy would answer with.
    pub code: String,
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub user: Option<String>,
    pub groups: Option<Vec<String>>,
    pub permissions: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tenant": "acme", "name": "Alice", "groups": ["readers"], "permissions": ["profile:read"]}))]
pub struct PutUser {
    pub tenant: Option<String>,
    pub name: Option<String>,
    pub active: Option<bool>,
    pub groups: Option<Vec<String>>,
    pub permissions: Option<Vec<String>>,
    /// Shared by all of the user's keys, per gateway instance. With PATCH, `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RateLimit>)]
    pub rate_limit: Option<Option<RateLimit>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub active: bool,
    pub groups: Vec<String>,
    pub permissions: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.clone(),
            tenant: u.tenant.clone(),
            name: u.name.clone(),
            active: u.active,
            groups: u.groups.clone(),
            permissions: u.permissions.clone(),
            rate_limit: u.rate_limit,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub items: Vec<UserView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tenant": "acme", "permissions": ["orders:read"]}))]
pub struct PutGroup {
    pub tenant: Option<String>,
    pub permissions: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    pub id: String,
    pub tenant: String,
    pub permissions: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Group> for GroupView {
    fn from(g: &Group) -> Self {
        Self {
            id: g.id.clone(),
            tenant: g.tenant.clone(),
            permissions: g.permissions.clone(),
            created_at: g.created_at,
            updated_at: g.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    pub items: Vec<GroupView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub tenant: String,
}

impl From<&AuditEntry> for AuditView {
    fn from(e: &AuditEntry) -> Self {
        Self {
            at: e.at,
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            tenant: e.tenant.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditView>,
    pub next_cursor: Option<String>,
}

/// The error body shared with the proxy.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    pub request_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// Who the caller is, for clients such as the console that adapt to it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// `super_admin` (the bootstrap token), `tenant_admin` (keygate:admin) or `self` (keygate:self).
    pub role: String,
    /// `None` for the super-admin, who spans every tenant.
    pub tenant: Option<String>,
    pub user: Option<String>,
    pub key_id: Option<String>,
}
