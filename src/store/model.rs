//! What the store holds: keys (by SHA-256 of the secret), users and groups. Tenants are a
//! field of users, groups and keys, not records of their own.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::key::KeyHash;
use crate::config::HumanDuration;

/// The tenant of users and groups created without one.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub hash: KeyHash,
    /// The first characters of the secret, to recognise it in a list.
    pub start: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The user the key belongs to; the key has that user's permissions.
    pub owner: String,
    pub tenant: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// When set, the key has only these of its owner's permissions.
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
    pub created_by: String,
    #[serde(default)]
    pub meta: Option<serde_json::Value>,
    /// Requests this key may make per instance (token bucket); none = unlimited.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// `requests` per `per`, refilled continuously, bursting up to `requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RateLimit {
    pub requests: u32,
    /// A duration such as `1s` or `1m`.
    #[schema(value_type = String, pattern = r"^[0-9]+(ms|s|m|h|d)$")]
    pub per: HumanDuration,
}

impl KeyRecord {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub tenant: String,
    #[serde(default)]
    pub name: String,
    pub active: bool,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Requests all of this user's keys together may make per instance; none = unlimited.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub tenant: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A user with the groups it names that exist (a deleted group grants nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct UserBundle {
    pub user: User,
    pub groups: Vec<Group>,
}

/// Everything the data plane needs for a key it has not cached, loaded in one go.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyBundle {
    pub key: KeyRecord,
    /// `None` when the owner no longer exists: the key then works for no one.
    pub owner: Option<UserBundle>,
}

/// One admin write, as `GET /v1/audit` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Assigned by the store when appended; increases with time (the paging cursor).
    pub id: String,
    pub at: DateTime<Utc>,
    /// Who did it: `bootstrap` or `<user> (key <id>)`; never a secret.
    pub actor: String,
    /// e.g. `key.create`, `user.delete`.
    pub action: String,
    pub target: String,
    pub tenant: String,
}

/// Records for tests: active, enabled, no limits, created now.
#[cfg(test)]
pub(crate) mod samples {
    use super::*;

    /// Key `id` of `owner`; its secret is `kg_secret_<id>`.
    pub fn key(id: &str, owner: &str, tenant: &str) -> KeyRecord {
        let now = Utc::now();
        KeyRecord {
            id: id.to_owned(),
            hash: KeyHash::of(&format!("kg_secret_{id}")),
            start: "kg_secre".to_owned(),
            name: format!("key {id}"),
            description: String::new(),
            owner: owner.to_owned(),
            tenant: tenant.to_owned(),
            enabled: true,
            created_at: now,
            updated_at: now,
            expires_at: None,
            last_used_at: None,
            permissions: None,
            created_by: "test".to_owned(),
            meta: None,
            rate_limit: None,
        }
    }

    /// User `id` in no group, with the `read` permission.
    pub fn user(id: &str, tenant: &str) -> User {
        let now = Utc::now();
        User {
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            name: format!("user {id}"),
            active: true,
            groups: vec![],
            permissions: vec!["read".to_owned()],
            created_at: now,
            updated_at: now,
            rate_limit: None,
        }
    }
}
