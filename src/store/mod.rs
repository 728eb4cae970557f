//! The store: where keys, users and groups live. Two real backends behind one trait —
//! Redis for fleets, redb ("embedded") for a single instance — and one conformance suite
//! (`tests/store_conformance.rs`) that both must pass.

pub mod embedded;
pub mod metered;
pub mod model;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::auth::key::KeyHash;
use crate::config::{StoreBackend, StoreConfig};
pub use model::{
    AuditEntry, Group, KeyBundle, KeyRecord, RateLimit, User, UserBundle, DEFAULT_TENANT,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time. The data plane answers
    /// `auth_unavailable` (503) for uncached keys — never 401/403.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// An id or key hash that must be unique is taken.
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A stored record could not be decoded.
    #[error("corrupt record {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Which keys to list, in id order, after `cursor` (the last id of the previous page).
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    pub tenant: Option<String>,
    pub owner: Option<String>,
    pub limit: usize,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPage {
    pub items: Vec<KeyRecord>,
    /// Present when more items may follow.
    pub next_cursor: Option<String>,
}

/// Newest first; `next_cursor` continues after the last item.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

/// How many audit entries a store keeps; older ones are dropped first.
pub const AUDIT_MAX_ENTRIES: usize = 100_000;

/// What a deleted user took with it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletedUser {
    pub user: User,
    pub keys: Vec<KeyRecord>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `redis` or `embedded`, for logs.
    fn backend(&self) -> &'static str;

    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;

    // --- data plane: what a cache miss needs, each in one round trip ---

    /// A key by the hash of its secret, with its owner and the owner's groups.
    async fn load_key(&self, hash: &KeyHash) -> Result<Option<KeyBundle>, StoreError>;
    /// A user with its groups (after a user or group change evicted it from the cache).
    async fn load_user(&self, id: &str) -> Result<Option<UserBundle>, StoreError>;

    // --- keys ---

    /// Stores a new key; `Conflict` if its id or hash exists.
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Replaces an existing key's record (same id and hash); `NotFound` otherwise.
    async fn update_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// Removes a key; returns what was removed.
    async fn delete_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    async fn list_keys(&self, query: &KeyQuery) -> Result<KeyPage, StoreError>;

    // --- users and groups ---

    /// Creates or replaces a user.
    async fn put_user(&self, user: &User) -> Result<(), StoreError>;
    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError>;
    /// All users, or those of one tenant, in id order.
    async fn list_users(&self, tenant: Option<&str>) -> Result<Vec<User>, StoreError>;
    /// Removes a user and every key it owns.
    async fn delete_user(&self, id: &str) -> Result<Option<DeletedUser>, StoreError>;

    async fn put_group(&self, group: &Group) -> Result<(), StoreError>;
    async fn get_group(&self, id: &str) -> Result<Option<Group>, StoreError>;
    async fn list_groups(&self, tenant: Option<&str>) -> Result<Vec<Group>, StoreError>;
    async fn delete_group(&self, id: &str) -> Result<Option<Group>, StoreError>;

    // --- usage and audit ---

    /// Records when keys were last used (batched by the data plane, never per request).
    /// Unknown ids are ignored; an older time never replaces a newer one. Read back as
    /// `last_used_at` by `get_key` and `list_keys`.
    async fn touch_keys(
        &self,
        used: &[(String, chrono::DateTime<chrono::Utc>)],
    ) -> Result<(), StoreError>;
    /// Appends an entry (its `id` is assigned here), dropping the oldest beyond
    /// [`AUDIT_MAX_ENTRIES`].
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Entries newest first, of one tenant or all, older than `cursor` when given.
    async fn list_audit(
        &self,
        tenant: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<AuditPage, StoreError>;
}

/// Opens the configured backend, wrapped so every call is counted and timed.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    let inner: Arc<dyn Store> = match config.backend {
        StoreBackend::Embedded => Arc::new(embedded::EmbeddedStore::open(&config.embedded_path)?),
        StoreBackend::Redis => Arc::new(
            redis::RedisStore::open(&config.redis_target(), &config.redis_key_prefix).await?,
        ),
    };
    Ok(Arc::new(metered::Metered::new(inner)))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Other(format!("encoding a record: {e}")))
}
