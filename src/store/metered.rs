//! Wraps any [`Store`] so that every call is counted and timed under its operation name
//! (`keygate_store_requests_total{op,result}`, `keygate_store_request_duration_seconds{op}`)
//! and `keygate_store_up` follows what the store last did. Backends stay free of metrics.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{
    AuditEntry, AuditPage, DeletedUser, Group, KeyBundle, KeyPage, KeyQuery, KeyRecord, Store,
    StoreError, User, UserBundle,
};
use crate::auth::key::KeyHash;
use crate::telemetry;

pub struct Metered {
    inner: Arc<dyn Store>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner }
    }

    async fn measure<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        telemetry::record_store_request(op, &result, started.elapsed());
        result
    }
}

#[async_trait]
impl Store for Metered {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.measure("ping", self.inner.ping()).await
    }
    async fn load_key(&self, hash: &KeyHash) -> Result<Option<KeyBundle>, StoreError> {
        self.measure("load_key", self.inner.load_key(hash)).await
    }
    async fn load_user(&self, id: &str) -> Result<Option<UserBundle>, StoreError> {
        self.measure("load_user", self.inner.load_user(id)).await
    }
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.measure("insert_key", self.inner.insert_key(key)).await
    }
    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.measure("get_key", self.inner.get_key(id)).await
    }
    async fn update_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.measure("update_key", self.inner.update_key(key)).await
    }
    async fn delete_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.measure("delete_key", self.inner.delete_key(id)).await
    }
    async fn list_keys(&self, query: &KeyQuery) -> Result<KeyPage, StoreError> {
        self.measure("list_keys", self.inner.list_keys(query)).await
    }
    async fn put_user(&self, user: &User) -> Result<(), StoreError> {
        self.measure("put_user", self.inner.put_user(user)).await
    }
    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.measure("get_user", self.inner.get_user(id)).await
    }
    async fn list_users(&self, tenant: Option<&str>) -> Result<Vec<User>, StoreError> {
        self.measure("list_users", self.inner.list_users(tenant))
            .await
    }
    async fn delete_user(&self, id: &str) -> Result<Option<DeletedUser>, StoreError> {
        self.measure("delete_user", self.inner.delete_user(id))
            .await
    }
    async fn put_group(&self, group: &Group) -> Result<(), StoreError> {
        self.measure("put_group", self.inner.put_group(group)).await
    }
    async fn get_group(&self, id: &str) -> Result<Option<Group>, StoreError> {
        self.measure("get_group", self.inner.get_group(id)).await
    }
    async fn list_groups(&self, tenant: Option<&str>) -> Result<Vec<Group>, StoreError> {
        self.measure("list_groups", self.inner.list_groups(tenant))
            .await
    }
    async fn delete_group(&self, id: &str) -> Result<Option<Group>, StoreError> {
        self.measure("delete_group", self.inner.delete_group(id))
            .await
    }
    async fn touch_keys(
        &self,
        used: &[(String, chrono::DateTime<chrono::Utc>)],
    ) -> Result<(), StoreError> {
        self.measure("touch_keys", self.inner.touch_keys(used))
            .await
    }
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.measure("append_audit", self.inner.append_audit(entry))
            .await
    }
    async fn list_audit(
        &self,
        tenant: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<AuditPage, StoreError> {
        self.measure("list_audit", self.inner.list_audit(tenant, limit, cursor))
            .await
    }
}
