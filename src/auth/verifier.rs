//! The verifier: key hash → cached key → cached owner → a [`Principal`] or a [`Refusal`].
//!
//! Two moka caches: keys by hash, users by id (a user entry carries its groups'
//! permissions already merged). A permission change therefore evicts one user entry, not
//! every key of that user. Entries stay *fresh* for `cache.ttl`; after that the next
//! request reloads them, and if the store is down it may keep using the old record for
//! `cache.stale_if_error` more. Unknown keys are remembered for `cache.negative_ttl`.
//! When invalidation events may have been missed, every entry is marked for revalidation.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::Utc;
use http::HeaderValue;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use moka::Expiry;

use super::key::KeyHash;
use super::permissions;
use crate::config::CacheConfig;
use crate::proxy::Refusal;
use crate::store::{KeyRecord, RateLimit, Store, StoreError, UserBundle};
use crate::telemetry;

/// What the cache knows about one key hash.
pub enum KeyEntry {
    Known {
        key: Arc<CachedKey>,
        stamp: Stamp,
    },
    /// The store said no such key (or it was revoked).
    Unknown {
        stamp: Stamp,
    },
}

/// When an entry was loaded, and in which cache epoch (see [`Verifier::revalidate_all`]).
#[derive(Clone, Copy)]
pub struct Stamp {
    fetched: Instant,
    epoch: u64,
}

/// The parts of a key record the data plane needs, with header values made once.
pub struct CachedKey {
    pub id: Box<str>,
    pub owner: Box<str>,
    pub enabled: bool,
    pub expires_at: Option<chrono::DateTime<Utc>>,
    /// The key's own restriction of its owner's permissions, if any.
    pub restriction: Option<Box<[String]>>,
    pub rate_limit: Option<RateLimit>,
    pub id_header: HeaderValue,
    pub name_header: HeaderValue,
}

/// What the cache knows about one user id.
pub struct UserEntry {
    /// `None`: no such user (deleted); its keys work for no one.
    user: Option<Arc<CachedUser>>,
    stamp: Stamp,
}

/// A user with its groups resolved: effective permissions = own ∪ groups'.
pub struct CachedUser {
    pub id: Box<str>,
    pub tenant: Box<str>,
    pub active: bool,
    /// Ids of the groups that exist, sorted; events evict users by group.
    pub groups: Box<[String]>,
    /// Sorted, deduplicated.
    pub permissions: Box<[String]>,
    pub rate_limit: Option<RateLimit>,
    pub tenant_header: HeaderValue,
    pub user_header: HeaderValue,
    pub groups_header: HeaderValue,
    pub permissions_header: HeaderValue,
}

/// A caller whose key passed every check.
pub struct Principal {
    pub key: Arc<CachedKey>,
    pub user: Arc<CachedUser>,
    /// Set when the key narrows its owner's permissions.
    narrowed: Option<(Vec<String>, HeaderValue)>,
}

impl Principal {
    pub fn permissions(&self) -> &[String] {
        match &self.narrowed {
            Some((perms, _)) => perms,
            None => &self.user.permissions,
        }
    }

    pub fn permissions_header(&self) -> &HeaderValue {
        match &self.narrowed {
            Some((_, header)) => header,
            None => &self.user.permissions_header,
        }
    }
}

/// How a cache lookup was answered (the `result` label of the lookup counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    NegativeHit,
    Miss,
    Stale,
}

impl Lookup {
    fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::NegativeHit => "negative_hit",
            Lookup::Miss => "miss",
            Lookup::Stale => "stale",
        }
    }
}

#[derive(Clone, Copy)]
struct Policy {
    ttl: Duration,
    negative_ttl: Duration,
    stale_if_error: Duration,
}

/// Entries that carry their own load time and know whether they are negative.
trait Cached: Send + Sync + 'static {
    fn stamp(&self) -> Stamp;
    fn is_negative(&self) -> bool;

    /// Fresh entries are used without asking the store. An entry from an earlier epoch is
    /// never fresh, but can still stand in during an outage.
    fn is_fresh(&self, now: Instant, epoch: u64, p: &Policy) -> bool {
        let stamp = self.stamp();
        let age = now.saturating_duration_since(stamp.fetched);
        stamp.epoch == epoch
            && age
                < if self.is_negative() {
                    p.negative_ttl
                } else {
                    p.ttl
                }
    }

    /// How long moka keeps the entry: fresh time plus, for positive entries, the window in
    /// which it may stand in for the store during an outage.
    fn lifetime(&self, p: &Policy) -> Duration {
        if self.is_negative() {
            p.negative_ttl
        } else {
            p.ttl + p.stale_if_error
        }
    }
}

impl Cached for KeyEntry {
    fn stamp(&self) -> Stamp {
        match self {
            KeyEntry::Known { stamp, .. } | KeyEntry::Unknown { stamp } => *stamp,
        }
    }
    fn is_negative(&self) -> bool {
        matches!(self, KeyEntry::Unknown { .. })
    }
}

impl Cached for UserEntry {
    fn stamp(&self) -> Stamp {
        self.stamp
    }
    fn is_negative(&self) -> bool {
        self.user.is_none()
    }
}

struct LifetimeExpiry(Policy);

impl<K, V: Cached> Expiry<K, Arc<V>> for LifetimeExpiry {
    fn expire_after_create(
        &self,
        _: &K,
        value: &Arc<V>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.lifetime(&self.0))
    }
    fn expire_after_update(
        &self,
        _: &K,
        value: &Arc<V>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.lifetime(&self.0))
    }
}

pub struct Verifier {
    store: Arc<dyn Store>,
    /// Replaced whole when a config reload changes the cache settings.
    caches: ArcSwap<Caches>,
    /// Bumped when invalidation events may have been missed; entries of older epochs must
    /// be revalidated with the store before use.
    epoch: AtomicU64,
}

/// The two caches and the rules they were built with.
struct Caches {
    config: CacheConfig,
    keys: Cache<KeyHash, Arc<KeyEntry>>,
    users: Cache<String, Arc<UserEntry>>,
    policy: Policy,
}

impl Caches {
    fn new(config: &CacheConfig) -> Self {
        let policy = Policy {
            ttl: config.ttl,
            negative_ttl: config.negative_ttl,
            stale_if_error: config.stale_if_error,
        };
        Self {
            config: config.clone(),
            keys: Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(LifetimeExpiry(policy))
                .build(),
            users: Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(LifetimeExpiry(policy))
                .support_invalidation_closures()
                .build(),
            policy,
        }
    }
}

impl Verifier {
    pub fn new(store: Arc<dyn Store>, config: &CacheConfig) -> Self {
        Self {
            store,
            caches: ArcSwap::from_pointee(Caches::new(config)),
            epoch: AtomicU64::new(0),
        }
    }

    /// Applies changed cache settings (config reload). moka caches cannot be resized, so
    /// new settings start new, empty caches: expect a burst of store loads after such a
    /// reload. Unchanged settings keep the warm caches.
    pub fn reconfigure(&self, config: &CacheConfig) {
        if self.caches.load().config != *config {
            self.caches.store(Arc::new(Caches::new(config)));
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Checks a well-formed key's hash: it must exist, be enabled and unexpired, and belong
    /// to an active user.
    pub async fn verify(&self, hash: &KeyHash) -> Result<Principal, Refusal> {
        // One set of caches for the whole decision, even if a reload swaps them meanwhile.
        let caches = self.caches.load_full();
        let entry = self.key_entry(&caches, hash).await?;
        let key = match &*entry {
            KeyEntry::Known { key, .. } => key.clone(),
            KeyEntry::Unknown { .. } => return Err(Refusal::InvalidKey),
        };
        if !key.enabled {
            return Err(Refusal::KeyDisabled);
        }
        if key.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(Refusal::KeyExpired);
        }
        let user_entry = self.user_entry(&caches, &key.owner).await?;
        let Some(user) = user_entry.user.clone() else {
            return Err(Refusal::InvalidKey);
        };
        if !user.active {
            return Err(Refusal::UserInactive);
        }
        let narrowed = key.restriction.as_ref().map(|restriction| {
            let perms = permissions::narrow(&user.permissions, restriction);
            let header = header_text(&perms.join(","));
            (perms, header)
        });
        Ok(Principal {
            key,
            user,
            narrowed,
        })
    }

    /// Forgets a key, a user, or every user in a group (used when an admin change lands).
    pub async fn evict_key(&self, hash: &KeyHash) {
        self.caches.load().keys.invalidate(hash).await;
    }

    pub async fn evict_user(&self, id: &str) {
        self.caches.load().users.invalidate(id).await;
    }

    pub fn evict_group(&self, group: &str) {
        let group = group.to_owned();
        // Only fails when closures are unsupported, which this cache was built with.
        let _ = self
            .caches
            .load()
            .users
            .invalidate_entries_if(move |_, entry| {
                entry
                    .user
                    .as_ref()
                    .is_some_and(|u| u.groups.contains(&group))
            });
    }

    /// After invalidation events may have been missed: every cached entry must be checked
    /// with the store before its next use. Unlike a flush, the old entries remain as the
    /// `stale_if_error` fallback, so a store outage still serves the keys it served before.
    pub fn revalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn stamp_now(&self) -> Stamp {
        Stamp {
            fetched: Instant::now(),
            epoch: self.epoch.load(Ordering::Acquire),
        }
    }

    async fn key_entry(&self, caches: &Caches, hash: &KeyHash) -> Result<Arc<KeyEntry>, Refusal> {
        let load = || async {
            // Stamped before the load: an epoch bump during it leaves the result unfresh.
            let stamp = self.stamp_now();
            let Some(bundle) = self.store.load_key(hash).await? else {
                return Ok(KeyEntry::Unknown { stamp });
            };
            // The same round trip brought the owner: cache it too.
            let owner = bundle.key.owner.clone();
            let user = UserEntry::from_bundle(bundle.owner, stamp);
            caches.users.insert(owner, Arc::new(user)).await;
            Ok(KeyEntry::Known {
                key: Arc::new(CachedKey::from_record(&bundle.key)),
                stamp,
            })
        };
        let (entry, lookup) = read_through(&caches.keys, hash, &self.epoch, &caches.policy, load)
            .await
            .map_err(outage_refusal)?;
        telemetry::record_cache_lookup(lookup.label());
        Ok(entry)
    }

    async fn user_entry(&self, caches: &Caches, id: &str) -> Result<Arc<UserEntry>, Refusal> {
        let load = || async {
            let stamp = self.stamp_now();
            let bundle = self.store.load_user(id).await?;
            Ok(UserEntry::from_bundle(bundle, stamp))
        };
        let (entry, _) = read_through(&caches.users, id, &self.epoch, &caches.policy, load)
            .await
            .map_err(outage_refusal)?;
        Ok(entry)
    }
}

/// A store fault never turns into 401/403: the caller may well hold a good key.
fn outage_refusal(e: StoreError) -> Refusal {
    tracing::warn!(error = %e, "store lookup failed; answering auth_unavailable");
    Refusal::AuthUnavailable
}

/// Fresh entries come straight from the cache. Otherwise exactly one caller per key loads
/// (moka serialises `and_compute_with` per key; the others wait and reuse its result). If
/// the load fails, a not-too-old entry is served as stale; without one the error stands.
async fn read_through<K, Q, V, F, Fut>(
    cache: &Cache<K, Arc<V>>,
    key: &Q,
    epoch: &AtomicU64,
    policy: &Policy,
    load: F,
) -> Result<(Arc<V>, Lookup), StoreError>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    V: Cached,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<V, StoreError>>,
{
    let fresh = |entry: &V| entry.is_fresh(Instant::now(), epoch.load(Ordering::Acquire), policy);
    if let Some(entry) = cache.get(key).await {
        if fresh(&entry) {
            let lookup = if entry.is_negative() {
                Lookup::NegativeHit
            } else {
                Lookup::Hit
            };
            return Ok((entry, lookup));
        }
    }
    let mut failure = None;
    let outcome = cache
        .entry_by_ref(key)
        .and_compute_with(|current| {
            let failure = &mut failure;
            async move {
                // Someone else may have refreshed it while we waited our turn.
                if current.as_ref().is_some_and(|e| fresh(e.value())) {
                    return Op::Nop;
                }
                match load().await {
                    Ok(fresh) => Op::Put(Arc::new(fresh)),
                    Err(e) => {
                        *failure = Some(e);
                        Op::Nop
                    }
                }
            }
        })
        .await;
    let entry = match outcome {
        CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
            Some(e.into_value())
        }
        CompResult::StillNone(_) | CompResult::Removed(_) => None,
    };
    match (failure, entry) {
        (None, Some(entry)) => Ok((entry, Lookup::Miss)),
        // moka drops positive entries once `ttl + stale_if_error` has passed, so whatever
        // is still here is within the window.
        (Some(e), Some(entry)) => {
            tracing::debug!(error = %e, "store failed; serving the last known record");
            Ok((entry, Lookup::Stale))
        }
        (Some(e), None) => Err(e),
        (None, None) => Err(StoreError::Other("cache entry vanished during load".into())),
    }
}

impl CachedKey {
    fn from_record(record: &KeyRecord) -> Self {
        Self {
            id: record.id.as_str().into(),
            owner: record.owner.as_str().into(),
            enabled: record.enabled,
            expires_at: record.expires_at,
            restriction: record.permissions.clone().map(Vec::into_boxed_slice),
            rate_limit: record.rate_limit,
            id_header: header_text(&record.id),
            name_header: header_text(&record.name),
        }
    }
}

impl UserEntry {
    fn from_bundle(bundle: Option<UserBundle>, stamp: Stamp) -> Self {
        let user = bundle.map(|b| {
            let mut groups: Vec<String> = b.groups.iter().map(|g| g.id.clone()).collect();
            groups.sort();
            groups.dedup();
            let permissions = permissions::union(
                std::iter::once(b.user.permissions.as_slice())
                    .chain(b.groups.iter().map(|g| g.permissions.as_slice())),
            );
            Arc::new(CachedUser {
                id: b.user.id.as_str().into(),
                tenant: b.user.tenant.as_str().into(),
                active: b.user.active,
                rate_limit: b.user.rate_limit,
                tenant_header: header_text(&b.user.tenant),
                user_header: header_text(&b.user.id),
                groups_header: header_text(&groups.join(",")),
                permissions_header: header_text(&permissions.join(",")),
                groups: groups.into_boxed_slice(),
                permissions: permissions.into_boxed_slice(),
            })
        });
        Self { user, stamp }
    }
}

/// A header value for free text (key names may hold any Unicode): bytes outside visible
/// ASCII are percent-encoded so the value is always valid and unambiguous.
pub fn header_text(text: &str) -> HeaderValue {
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'%';
    if text.bytes().all(plain) {
        return HeaderValue::from_str(text).expect("visible ASCII is a valid header value");
    }
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).expect("percent-encoded ASCII is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_percent_encodes_what_headers_cannot_carry() {
        assert_eq!(header_text("Billing key"), "Billing key");
        assert_eq!(header_text("clé été"), "cl%C3%A9 %C3%A9t%C3%A9");
        assert_eq!(header_text("100%"), "100%25");
        assert_eq!(header_text("a\r\nX-Injected: 1"), "a%0D%0AX-Injected: 1");
    }
}
