//! The verifier: key hash → cached key → cached owner → a [`Principal`] or a [`Refusal`].
//!
//! Two caches: keys by hash (the compact [`KeyCache`]), users by id in moka (a user entry
//! carries its groups' permissions already merged). A permission change therefore evicts one user entry, not
//! every key of that user. Entries stay *fresh* for `cache.ttl`; after that the next
//! request reloads them, and if the store is down it may keep using the old record for
//! `cache.stale_if_error` more. Unknown keys are remembered for `cache.negative_ttl`.
//! When invalidation events may have been missed, every entry is marked for revalidation.

use std::borrow::Cow;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use http::HeaderValue;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use moka::Expiry;

use super::key::KeyHash;
use super::key_cache::KeyCache;
use super::permissions;
use crate::clock::{monotonic_ms, unix_ms};
use crate::config::CacheConfig;
use crate::proxy::Refusal;
use crate::store::{KeyRecord, RateLimit, Store, StoreError, UserBundle};
use crate::telemetry;

/// What the cache knows about one key hash.
#[derive(Clone)]
pub enum KeyEntry {
    Known {
        key: CachedKey,
        stamp: Stamp,
        owner: OwnerHint,
    },
    /// The store said no such key (or it was revoked).
    Unknown { stamp: Stamp },
}

/// The key owner's cache entry, kept with the key so that a hit needs no lookup in the user
/// cache (moka's read path was the largest share of a hit after the clock). It stands only
/// while no user or group changed since it was taken (`generation`, see
/// [`Verifier::user_changes`]) and it is fresh; otherwise the user cache answers and the key
/// entry takes the answer as its new hint.
#[derive(Clone)]
pub struct OwnerHint {
    pub(super) entry: Arc<UserEntry>,
    pub(super) generation: u32,
}

impl OwnerHint {
    /// A hint that never stands (for entries made outside a verifier, as benches do).
    pub fn none(stamp: Stamp) -> Self {
        Self {
            entry: Arc::new(UserEntry { user: None, stamp }),
            generation: u32::MAX,
        }
    }
}

/// When an entry was loaded, and in which cache epoch (see [`Verifier::revalidate_all`]).
#[derive(Clone, Copy)]
pub struct Stamp {
    /// [`monotonic_ms`] at the time of the load.
    pub fetched_ms: u64,
    pub epoch: u64,
}

/// The parts of a key record the data plane needs. A request owns its copy: the text sits
/// inline (a hit copies a few dozen bytes instead of touching a reference count that every
/// core shares), and the key cache keeps the text in its own arena rather than one heap
/// allocation per key (see [`KeyCache`]).
#[derive(Clone)]
pub struct CachedKey {
    facts: KeyFacts,
    text: KeyText,
}

/// The key's id, its owner's id, the id as a header value when it differs from the id, and
/// the name as a header value, back to back: header values are slices of it. Generated ids,
/// a user id and a short name fit inline.
pub type KeyText = smallvec::SmallVec<[u8; 128]>;

/// A cached key without its text: where the parts of the text end, and the rest. The key
/// cache stores this beside the text's place in its arena.
#[derive(Clone)]
pub struct KeyFacts {
    id_end: u32,
    owner_end: u32,
    name_start: u32,
    text_len: u32,
    /// The id needed encoding as a header value: the encoded id sits between the owner
    /// and the name. Otherwise the id is its own header value.
    id_encoded: bool,
    enabled: bool,
    /// Unix milliseconds; `i64::MAX`: never.
    expires_at_ms: i64,
    /// Restriction and rate limit: most keys have neither.
    limits: Option<Arc<KeyLimits>>,
}

struct KeyLimits {
    /// The key's own restriction of its owner's permissions, if any.
    restriction: Option<Box<[String]>>,
    rate_limit: Option<RateLimit>,
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
    pub key: CachedKey,
    /// The key's hash: where its uses are noted ([`Verifier::note_use`]).
    hash: KeyHash,
    /// The owner's cache entry, whose user exists and is active. Held as the entry the key's
    /// hint shares, not as its user: every key of one user shares both, so each reference
    /// taken is a count both cores update on one cache line, and a request takes one.
    owner: Arc<UserEntry>,
    /// Set when the key narrows its owner's permissions.
    narrowed: Option<(Vec<String>, HeaderValue)>,
    /// The Unix time (whole seconds) at which the key was checked unexpired: also the time
    /// of its use, so that a request reads the wall clock once.
    checked_unix_s: u32,
}

impl Principal {
    pub fn user(&self) -> &CachedUser {
        self.owner
            .user
            .as_deref()
            .expect("a principal is made only for an owner that exists")
    }

    pub fn permissions(&self) -> &[String] {
        match &self.narrowed {
            Some((perms, _)) => perms,
            None => &self.user().permissions,
        }
    }

    pub fn permissions_header(&self) -> &HeaderValue {
        match &self.narrowed {
            Some((_, header)) => header,
            None => &self.user().permissions_header,
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

/// How long entries stay fresh, and usable at all; see the module docs.
#[derive(Clone, Copy)]
pub struct Policy {
    ttl: Duration,
    negative_ttl: Duration,
    stale_if_error: Duration,
}

impl Policy {
    /// When a key in use is reloaded in the background: at three quarters of its `ttl`.
    fn refresh_after_ms(&self) -> u64 {
        u64::try_from((self.ttl * 3 / 4).as_millis()).unwrap_or(u64::MAX)
    }

    pub fn new(ttl: Duration, negative_ttl: Duration, stale_if_error: Duration) -> Self {
        Self {
            ttl,
            negative_ttl,
            stale_if_error,
        }
    }
}

/// Entries that carry their own load time and know whether they are negative.
pub trait Cached: Clone + Send + Sync + 'static {
    fn stamp(&self) -> Stamp;
    fn is_negative(&self) -> bool;

    fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.stamp().fetched_ms))
    }

    /// Fresh entries are used without asking the store. An entry from an earlier epoch is
    /// never fresh, but can still stand in during an outage.
    fn is_fresh(&self, now_ms: u64, epoch: u64, p: &Policy) -> bool {
        self.stamp().epoch == epoch
            && self.age(now_ms)
                < if self.is_negative() {
                    p.negative_ttl
                } else {
                    p.ttl
                }
    }

    /// Whether the entry may still be used at all (fresh, or as a stand-in).
    fn is_alive(&self, now_ms: u64, p: &Policy) -> bool {
        self.age(now_ms) < self.lifetime(p)
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

impl Cached for Arc<UserEntry> {
    fn stamp(&self) -> Stamp {
        self.stamp
    }
    fn is_negative(&self) -> bool {
        self.user.is_none()
    }
}

struct LifetimeExpiry(Policy);

impl<K, V: Cached> Expiry<K, V> for LifetimeExpiry {
    fn expire_after_create(&self, _: &K, value: &V, _: std::time::Instant) -> Option<Duration> {
        Some(value.lifetime(&self.0))
    }
    fn expire_after_update(
        &self,
        _: &K,
        value: &V,
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
    /// Bumped after every eviction of users (a user or group changed): owner hints taken
    /// before it no longer stand. Wraps; a hint would have to sit through exactly 2^32
    /// changes to stand again by mistake, and entries live minutes.
    user_changes: AtomicU32,
    /// Key evictions so far (revocations and every other key change) by the first byte of
    /// the key hash, see [`Verifier::forget_if_changed`].
    key_changes: [AtomicU64; 256],
}

/// The two caches and the rules they were built with.
struct Caches {
    config: CacheConfig,
    keys: KeyCache,
    /// foldhash, seeded per process: moka's default SipHash was a visible share of a hit.
    users: Cache<String, Arc<UserEntry>, foldhash::fast::RandomState>,
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
            keys: KeyCache::new(config.max_entries, policy),
            users: Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(LifetimeExpiry(policy))
                .support_invalidation_closures()
                .build_with_hasher(foldhash::fast::RandomState::default()),
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
            // Never equal to `OwnerHint::none`'s generation until it wraps.
            user_changes: AtomicU32::new(0),
            key_changes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Applies changed cache settings (config reload). moka caches cannot be resized, so
    /// new settings start new, empty caches: expect a burst of store loads after such a
    /// reload. Unchanged settings keep the warm caches.
    pub fn reconfigure(&self, config: &CacheConfig) {
        if self.caches.load().config != *config {
            let old = self.caches.swap(Arc::new(Caches::new(config)));
            // Uses noted in the old cache and not yet written. A request that read the old
            // caches before the swap and notes its use after this leaves it there: that
            // one key's `last_used_at` then waits for its next use.
            self.caches.load().keys.restore_uses(old.keys.take_uses());
        }
    }

    /// Notes an admitted request of `principal` for its key's `last_used_at`: the time its
    /// key was checked.
    pub fn note_use(&self, principal: &Principal) {
        self.caches.load().keys.note_use(
            &principal.hash,
            || principal.key.id(),
            principal.checked_unix_s,
        );
    }

    /// Key uses noted and not yet taken, a part at a time (see [`KeyCache::take_uses_in`]):
    /// key id and time (whole seconds). `None` past the last part.
    pub fn take_uses_in(&self, part: usize) -> Option<Vec<(String, DateTime<Utc>)>> {
        self.caches.load().keys.take_uses_in(part)
    }

    /// Takes back uses that could not be written; the next [`Self::take_uses_in`] has them.
    pub fn restore_uses(&self, uses: Vec<(String, DateTime<Utc>)>) {
        self.caches.load().keys.restore_uses(uses);
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Checks a well-formed key's hash: it must exist, be enabled and unexpired, and belong
    /// to an active user.
    pub async fn verify(self: &Arc<Self>, hash: &KeyHash) -> Result<Principal, Refusal> {
        // One set of caches for the whole decision, even if a reload swaps them meanwhile.
        // A guard, not a clone of the `Arc`: its count would be one more cache line that
        // both cores write on every request.
        let caches = self.caches.load();
        // One read of the clock for every freshness check of this decision.
        let now_ms = monotonic_ms();
        // A fresh entry, the common case, answers here; the load path and its future only
        // when there is none (boxed: hits should not carry its size, nor its moves).
        let cached = caches.keys.get_at(hash, now_ms);
        let entry = match fresh_hit(cached, now_ms, &self.epoch, &caches.policy) {
            Some((entry, lookup)) => {
                telemetry::record_cache_lookup(lookup.label());
                entry
            }
            None => Box::pin(self.key_entry(&caches, hash, now_ms)).await?,
        };
        let (key, owner) = match entry {
            KeyEntry::Known { key, owner, stamp } => {
                self.refresh_ahead(&caches, hash, stamp, now_ms);
                (key, owner)
            }
            KeyEntry::Unknown { .. } => return Err(Refusal::InvalidKey),
        };
        if !key.enabled() {
            return Err(Refusal::KeyDisabled);
        }
        let checked_ms = unix_ms();
        if key.facts.expires_at_ms <= checked_ms {
            return Err(Refusal::KeyExpired);
        }
        let user_entry = if self.stands(&owner, &caches.policy, now_ms) {
            owner.entry
        } else {
            // Boxed: a user cache lookup (moka, and the store behind it) is a future of a
            // kilobyte, which every request's future would otherwise carry for a path that
            // hits seldom take.
            Box::pin(self.owner_entry(&caches, hash, key.owner(), now_ms)).await?
        };
        let Some(user) = user_entry.user.as_deref() else {
            return Err(Refusal::InvalidKey);
        };
        if !user.active {
            return Err(Refusal::UserInactive);
        }
        let narrowed = key.restriction().map(|restriction| {
            let perms = permissions::narrow(&user.permissions, restriction);
            let header = header_text(&perms.join(","));
            (perms, header)
        });
        Ok(Principal {
            key,
            hash: *hash,
            owner: user_entry,
            narrowed,
            checked_unix_s: u32::try_from(checked_ms / 1000).unwrap_or(u32::MAX),
        })
    }

    /// Forgets a key, a user, or every user in a group (used when an admin change lands).
    pub async fn evict_key(&self, hash: &KeyHash) {
        // Counted before the eviction: see `forget_if_changed`.
        self.key_changes(hash).fetch_add(1, Ordering::SeqCst);
        self.caches.load().keys.invalidate(hash);
    }

    /// The eviction count of `hash`'s stripe: one counter per 256th of all hashes, so that
    /// keys issued in bulk (each an eviction) do not drop every load running meanwhile.
    fn key_changes(&self, hash: &KeyHash) -> &AtomicU64 {
        &self.key_changes[usize::from(hash.0[0])]
    }

    /// Called after a load of `hash` cached its answer, with the eviction count of its stripe
    /// read before the load began. If it moved since, this answer may predate a change:
    /// the eviction can land between the load's store read and its insert, and would leave a
    /// revoked key cached. It is dropped, and the next request loads again. Evictions count
    /// before they evict, so either this sees the count move or the eviction comes after the
    /// insert and removes it.
    fn forget_if_changed(&self, caches: &Caches, hash: &KeyHash, before: u64) {
        if self.key_changes(hash).load(Ordering::SeqCst) != before {
            caches.keys.invalidate(hash);
        }
    }

    /// Frees the memory of cached keys past their lifetime (run now and then).
    pub fn sweep(&self) {
        self.caches.load().keys.sweep();
    }

    pub async fn evict_user(&self, id: &str) {
        // Counted on both sides of the eviction: see `user_changed`.
        self.user_changed();
        self.caches.load().users.invalidate(id).await;
        self.user_changed();
    }

    pub fn evict_group(&self, group: &str) {
        self.user_changed();
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
        self.user_changed();
    }

    /// Called before and after the user cache forgets what changed. After: a hint taken
    /// before this either predates the eviction or may hold what it evicted, and must not
    /// stand. Before: a user load overlapping the eviction may insert what it read after the
    /// eviction ran; it then sees the count moved ([`Self::forget_user_if_changed`]), or
    /// its insert came first and the eviction removes it.
    fn user_changed(&self) {
        self.user_changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Called after a user was cached by a load that started when the change count was
    /// `before`: if a user or group changed since, the cached entry may be the one the
    /// eviction was meant to remove (a deactivated user kept until its `ttl`), so it goes
    /// and the next request loads the user again. Changes are admin operations: rare.
    async fn forget_user_if_changed(&self, caches: &Caches, id: &str, before: u32) {
        if self.user_changes.load(Ordering::SeqCst) != before {
            caches.users.invalidate(id).await;
        }
    }

    /// Whether a key entry's owner hint may answer for the user cache.
    fn stands(&self, hint: &OwnerHint, policy: &Policy, now_ms: u64) -> bool {
        hint.generation == self.user_changes.load(Ordering::SeqCst)
            && hint
                .entry
                .is_fresh(now_ms, self.epoch.load(Ordering::Acquire), policy)
    }

    /// The owner from the user cache, when the key entry's hint does not stand; the key
    /// entry keeps it as its new hint.
    async fn owner_entry(
        &self,
        caches: &Caches,
        hash: &KeyHash,
        owner: &str,
        now_ms: u64,
    ) -> Result<Arc<UserEntry>, Refusal> {
        // Read before the lookup: a change after this point makes the new hint not stand.
        let generation = self.user_changes.load(Ordering::SeqCst);
        let entry = self.user_entry(caches, owner, now_ms).await?;
        let hint = OwnerHint {
            entry: entry.clone(),
            generation,
        };
        caches.keys.set_owner(hash, hint);
        Ok(entry)
    }

    /// After invalidation events may have been missed: every cached entry must be checked
    /// with the store before its next use. Unlike a flush, the old entries remain as the
    /// `stale_if_error` fallback, so a store outage still serves the keys it served before.
    pub fn revalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn stamp_now(&self) -> Stamp {
        Stamp {
            fetched_ms: monotonic_ms(),
            epoch: self.epoch.load(Ordering::Acquire),
        }
    }

    async fn key_entry(
        &self,
        caches: &Caches,
        hash: &KeyHash,
        now_ms: u64,
    ) -> Result<KeyEntry, Refusal> {
        let changes = self.key_changes(hash).load(Ordering::SeqCst);
        let (entry, lookup) = read_through(
            &caches.keys,
            hash,
            &self.epoch,
            &caches.policy,
            now_ms,
            || self.load_key_entry(caches, hash),
        )
        .await
        .map_err(outage_refusal)?;
        if lookup == Lookup::Miss {
            self.forget_if_changed(caches, hash, changes);
        }
        telemetry::record_cache_lookup(lookup.label());
        Ok(entry)
    }

    /// The key and its owner from the store, the owner also cached on its own.
    async fn load_key_entry(
        &self,
        caches: &Caches,
        hash: &KeyHash,
    ) -> Result<KeyEntry, StoreError> {
        // Stamped before the load: an epoch bump or a user change during it leaves the
        // result unfresh, or the owner's hint not standing.
        let stamp = self.stamp_now();
        let generation = self.user_changes.load(Ordering::SeqCst);
        let Some(bundle) = self.store.load_key(hash).await? else {
            return Ok(KeyEntry::Unknown { stamp });
        };
        // The same round trip brought the owner. When the user cache holds the same user,
        // fresh, the key shares that entry: every key keeps its owner's entry alive as its
        // hint, and a copy per key took 785 MiB for a million cached keys of one user, 533
        // MiB with the copy shared (`ZIPF_FILL=1 benches/load/run zipf`). Otherwise the
        // loaded owner is cached too, unless a user changed meanwhile (it may be this one,
        // evicted while this older copy was on its way).
        let loaded = UserEntry::from_bundle(bundle.owner, stamp);
        let epoch = self.epoch.load(Ordering::Acquire);
        let owner = match caches.users.get(&bundle.key.owner).await {
            Some(current)
                if current.user_is(&loaded)
                    && current.is_fresh(monotonic_ms(), epoch, &caches.policy) =>
            {
                current
            }
            _ => {
                let owner = Arc::new(loaded);
                if self.user_changes.load(Ordering::SeqCst) == generation {
                    let id = &bundle.key.owner;
                    caches.users.insert(id.clone(), owner.clone()).await;
                    self.forget_user_if_changed(caches, id, generation).await;
                }
                owner
            }
        };
        Ok(KeyEntry::Known {
            key: CachedKey::from_record(&bundle.key),
            stamp,
            owner: OwnerHint {
                entry: owner,
                generation,
            },
        })
    }

    /// Reloads a key in use before its entry stops being fresh, in a task of its own, so that
    /// no request waits for it: without this, every key in use expired onto the request path
    /// once per `ttl`, and keys warmed together queued their reloads on the store together
    /// (p99.9 of 57 ms in the load bench). One refresh per key at a time; a failed one is
    /// retried after [`key_cache::REFRESH_RETRY`], not on every request.
    fn refresh_ahead(
        self: &Arc<Self>,
        caches: &Arc<Caches>,
        hash: &KeyHash,
        seen: Stamp,
        now_ms: u64,
    ) {
        if now_ms.saturating_sub(seen.fetched_ms) < caches.policy.refresh_after_ms() {
            return;
        }
        // No runtime (a caller polling by hand): the entry is reloaded when it expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !caches.keys.begin_refresh(hash, now_ms) {
            return;
        }
        let (verifier, caches, hash) = (self.clone(), caches.clone(), *hash);
        runtime.spawn(async move {
            // Requests that waited in line for a load they needed take its result instead.
            let newer = |e: &KeyEntry| e.stamp().fetched_ms > seen.fetched_ms;
            let changes = verifier.key_changes(&hash).load(Ordering::SeqCst);
            let load = verifier.load_key_entry(&caches, &hash);
            let (_, failure) = caches.keys.load_once(&hash, newer, load).await;
            verifier.forget_if_changed(&caches, &hash, changes);
            if let Some(e) = &failure {
                tracing::debug!(error = %e, "refreshing a cached key failed; it is served until its lifetime ends");
            }
            caches.keys.end_refresh(&hash, failure.is_none());
        });
    }

    async fn user_entry(
        &self,
        caches: &Caches,
        id: &str,
        now_ms: u64,
    ) -> Result<Arc<UserEntry>, Refusal> {
        // Read before any load: not the hot path (a key's owner hint answers hits).
        let changes = self.user_changes.load(Ordering::SeqCst);
        let load = || async {
            let stamp = self.stamp_now();
            let bundle = self.store.load_user(id).await?;
            Ok(Arc::new(UserEntry::from_bundle(bundle, stamp)))
        };
        let read = read_through(&caches.users, id, &self.epoch, &caches.policy, now_ms, load).await;
        self.forget_user_if_changed(caches, id, changes).await;
        let (entry, _) = read.map_err(outage_refusal)?;
        Ok(entry)
    }
}

/// A store fault never turns into 401/403: the caller may well hold a good key.
fn outage_refusal(e: StoreError) -> Refusal {
    tracing::warn!(error = %e, "store lookup failed; answering auth_unavailable");
    Refusal::AuthUnavailable
}

/// What read-through needs of a cache: a lookup, and loads that run one at a time per key.
pub trait LoadingCache<Q: ?Sized>: Sync {
    type Entry: Cached;

    /// The entry for `key`, if one is cached and alive at `now_ms` ([`monotonic_ms`]).
    fn lookup(&self, key: &Q, now_ms: u64) -> impl Future<Output = Option<Self::Entry>> + Send;

    /// Waits its turn among callers loading `key`, then runs `load` (a future: nothing
    /// happens until it is awaited) unless the cached entry is `fresh` by now, and caches what it loads. Answers the entry cached afterwards and
    /// the load's error, if it failed.
    fn load_once<Fut>(
        &self,
        key: &Q,
        fresh: impl Fn(&Self::Entry) -> bool + Send + Sync,
        load: Fut,
    ) -> impl Future<Output = (Option<Self::Entry>, Option<StoreError>)> + Send
    where
        Fut: Future<Output = Result<Self::Entry, StoreError>> + Send;
}

impl LoadingCache<KeyHash> for KeyCache {
    type Entry = KeyEntry;

    fn lookup(&self, key: &KeyHash, now_ms: u64) -> impl Future<Output = Option<KeyEntry>> + Send {
        std::future::ready(self.get_at(key, now_ms))
    }

    async fn load_once<Fut>(
        &self,
        key: &KeyHash,
        fresh: impl Fn(&KeyEntry) -> bool + Send + Sync,
        load: Fut,
    ) -> (Option<KeyEntry>, Option<StoreError>)
    where
        Fut: Future<Output = Result<KeyEntry, StoreError>> + Send,
    {
        self.one_load_at_a_time(key, async {
            // Someone else may have refreshed it while we waited our turn.
            if let Some(current) = self.get(key).filter(|e| fresh(e)) {
                return (Some(current), None);
            }
            match load.await {
                Ok(loaded) => {
                    self.insert(*key, loaded.clone());
                    (Some(loaded), None)
                }
                Err(e) => (self.get(key), Some(e)),
            }
        })
        .await
    }
}

impl<K, Q, V, S> LoadingCache<Q> for Cache<K, V, S>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ToOwned<Owned = K> + Sync + ?Sized,
    V: Cached,
    S: std::hash::BuildHasher + Clone + Send + Sync + 'static,
{
    type Entry = V;

    /// moka reads its own clock.
    fn lookup(&self, key: &Q, _now_ms: u64) -> impl Future<Output = Option<V>> + Send {
        self.get(key)
    }

    async fn load_once<Fut>(
        &self,
        key: &Q,
        fresh: impl Fn(&V) -> bool + Send + Sync,
        load: Fut,
    ) -> (Option<V>, Option<StoreError>)
    where
        Fut: Future<Output = Result<V, StoreError>> + Send,
    {
        let mut failure = None;
        // moka serialises `and_compute_with` per key.
        let outcome = self
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let failure = &mut failure;
                async move {
                    // Someone else may have refreshed it while we waited our turn.
                    if current.as_ref().is_some_and(|e| fresh(e.value())) {
                        return Op::Nop;
                    }
                    match load.await {
                        Ok(loaded) => Op::Put(loaded),
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
        (entry, failure)
    }
}

/// `entry` if it is fresh, and how the lookup went (a hit, or a negative hit).
fn fresh_hit<E: Cached>(
    entry: Option<E>,
    now_ms: u64,
    epoch: &AtomicU64,
    policy: &Policy,
) -> Option<(E, Lookup)> {
    let entry = entry.filter(|e| e.is_fresh(now_ms, epoch.load(Ordering::Acquire), policy))?;
    let lookup = if entry.is_negative() {
        Lookup::NegativeHit
    } else {
        Lookup::Hit
    };
    Some((entry, lookup))
}

/// Fresh entries come straight from the cache. Otherwise exactly one caller per key loads
/// (the others wait and reuse its result). If the load fails, a not-too-old entry is served
/// as stale; without one the error stands.
async fn read_through<C, Q, Fut>(
    cache: &C,
    key: &Q,
    epoch: &AtomicU64,
    policy: &Policy,
    now_ms: u64,
    load: impl FnOnce() -> Fut,
) -> Result<(C::Entry, Lookup), StoreError>
where
    C: LoadingCache<Q>,
    Q: ?Sized,
    Fut: Future<Output = Result<C::Entry, StoreError>> + Send,
{
    // `now_ms` also after waiting for another caller's load: it only lengthens freshness by
    // that wait, and the entry that load brought is the freshest there is.
    let fresh = |entry: &C::Entry| entry.is_fresh(now_ms, epoch.load(Ordering::Acquire), policy);
    if let Some(hit) = fresh_hit(cache.lookup(key, now_ms).await, now_ms, epoch, policy) {
        return Ok(hit);
    }
    // Boxed: the load (store round trip, cache insert) is a future of several kilobytes,
    // and unboxed it would size every request's future for a path only misses take. That
    // future is moved a few times per request; the profile showed the copies (memmove).
    match Box::pin(cache.load_once(key, fresh, load())).await {
        (Some(entry), None) => Ok((entry, Lookup::Miss)),
        // Both caches drop positive entries once `ttl + stale_if_error` has passed, so
        // whatever is still here is within the window.
        (Some(entry), Some(e)) => {
            tracing::debug!(error = %e, "store failed; serving the last known record");
            Ok((entry, Lookup::Stale))
        }
        (None, Some(e)) => Err(e),
        (None, None) => Err(StoreError::Other("cache entry vanished during load".into())),
    }
}

impl CachedKey {
    pub fn from_record(record: &KeyRecord) -> Self {
        let id_header = header_text_of(&record.id);
        let name_header = header_text_of(&record.name);
        let mut text = KeyText::new();
        let offset = |text: &KeyText| u32::try_from(text.len()).expect("ids and names are short");
        text.extend_from_slice(record.id.as_bytes());
        let id_end = offset(&text);
        text.extend_from_slice(record.owner.as_bytes());
        let owner_end = offset(&text);
        let id_encoded = match id_header {
            Cow::Borrowed(_) => false,
            Cow::Owned(encoded) => {
                text.extend_from_slice(encoded.as_bytes());
                true
            }
        };
        let name_start = offset(&text);
        text.extend_from_slice(name_header.as_bytes());
        let limits = (record.permissions.is_some() || record.rate_limit.is_some()).then(|| {
            Arc::new(KeyLimits {
                restriction: record.permissions.clone().map(Vec::into_boxed_slice),
                rate_limit: record.rate_limit,
            })
        });
        let facts = KeyFacts {
            id_end,
            owner_end,
            name_start,
            text_len: offset(&text),
            id_encoded,
            enabled: record.enabled,
            expires_at_ms: record
                .expires_at
                .map_or(i64::MAX, |at| at.timestamp_millis()),
            limits,
        };
        Self { facts, text }
    }

    /// A key taken apart for the key cache: the text goes to its arena.
    pub fn into_parts(self) -> (KeyFacts, KeyText) {
        (self.facts, self.text)
    }

    /// A key as the key cache stores it: `text` is the text it was taken apart with.
    pub fn from_parts(facts: KeyFacts, text: &[u8]) -> Self {
        debug_assert_eq!(text.len(), facts.text_len());
        Self {
            facts,
            text: KeyText::from_slice(text),
        }
    }

    pub fn id(&self) -> &str {
        self.str_at(0..self.facts.id_end)
    }

    /// The id of the user the key belongs to.
    pub fn owner(&self) -> &str {
        self.str_at(self.facts.id_end..self.facts.owner_end)
    }

    pub fn enabled(&self) -> bool {
        self.facts.enabled
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        (self.facts.expires_at_ms != i64::MAX)
            .then(|| DateTime::from_timestamp_millis(self.facts.expires_at_ms))
            .flatten()
    }

    /// The key's own restriction of its owner's permissions, if any.
    pub fn restriction(&self) -> Option<&[String]> {
        self.facts.limits.as_ref()?.restriction.as_deref()
    }

    pub fn rate_limit(&self) -> Option<&RateLimit> {
        self.facts.limits.as_ref()?.rate_limit.as_ref()
    }

    /// The id as header value bytes (made visible ASCII when the key was loaded).
    pub fn id_header_bytes(&self) -> &[u8] {
        let facts = &self.facts;
        let (start, end) = if facts.id_encoded {
            (facts.owner_end, facts.name_start)
        } else {
            (0, facts.id_end)
        };
        &self.text[start as usize..end as usize]
    }

    /// The name as header value bytes (made visible ASCII when the key was loaded).
    pub fn name_header_bytes(&self) -> &[u8] {
        &self.text[self.facts.name_start as usize..]
    }

    fn str_at(&self, range: Range<u32>) -> &str {
        str_at(&self.text, range)
    }
}

impl KeyFacts {
    /// The length of the key's text.
    pub fn text_len(&self) -> usize {
        self.text_len as usize
    }

    /// The key's id in `text`, the text it was taken apart with.
    pub fn id_of<'t>(&self, text: &'t [u8]) -> &'t str {
        str_at(text, 0..self.id_end)
    }
}

fn str_at(text: &[u8], range: Range<u32>) -> &str {
    std::str::from_utf8(&text[range.start as usize..range.end as usize])
        .expect("sliced at the boundaries of the strings it was built from")
}

impl UserEntry {
    /// Whether both hold the same user record (or both none): what decisions read of it.
    fn user_is(&self, other: &UserEntry) -> bool {
        match (&self.user, &other.user) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.id == b.id
                    && a.tenant == b.tenant
                    && a.active == b.active
                    && a.groups == b.groups
                    && a.permissions == b.permissions
                    && a.rate_limit == b.rate_limit
            }
            _ => false,
        }
    }

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
    HeaderValue::from_str(&header_text_of(text)).expect("visible ASCII is a valid header value")
}

/// [`header_text`]'s encoding, borrowed when `text` needs none.
fn header_text_of(text: &str) -> Cow<'_, str> {
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'%';
    if text.bytes().all(plain) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
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
