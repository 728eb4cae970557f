//! The key cache: key hash → what the gateway last learned about that key, for up to
//! `cache.max_entries` keys in little memory.
//!
//! Users are cached in moka (few entries, invalidated by group); keys are not, because a
//! gateway may hold a million of them and moka's own bookkeeping is about 270–300 bytes per
//! entry (measured: 1,000,000 `u64 → u64` entries took 256–291 MiB), which alone would spend
//! the whole 300 MB budget for 1,000,000 cached keys. Here the bookkeeping is a slab of slots
//! plus a hashbrown index of `u32` slot numbers, about 20 bytes per key besides the slot.
//!
//! - **Shards**, each behind a `parking_lot` read-write lock: a hit takes only a read lock.
//! - **Eviction** is CLOCK (second chance): a hit sets the slot's `referenced` bit; a full
//!   shard evicts the first slot the hand finds unreferenced (or past its lifetime), clearing
//!   bits as it goes. Close to LRU for skewed key choices, without a list to update per hit.
//! - **Lifetime**: an entry older than its lifetime ([`Cached::lifetime`]) reads as absent
//!   and is dropped by [`KeyCache::sweep`] or reused by eviction.
//! - **Index hash**: keyed with a per-process random seed. SHA-256 output is uniform, but a
//!   client can grind secrets whose hashes collide in the bits an unkeyed table would use.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};

use super::key::KeyHash;
use super::verifier::{Cached, KeyEntry, Policy};
use crate::clock::monotonic_ms;

/// Shards hold at least this many entries before the cache is split further.
const MIN_PER_SHARD: u64 = 4096;
const MAX_SHARDS: u64 = 64;

pub struct KeyCache {
    shards: Box<[RwLock<Shard>]>,
    /// The bound over all shards: an insertion into a full cache evicts in its own shard.
    /// Keys spread evenly over shards, so shards stay near `max_entries / shards` each.
    max_entries: usize,
    /// Entries cached now, in all shards.
    entries: AtomicUsize,
    /// A shard's own bound, twice its even share, so that no shard grows without limit.
    shard_limit: usize,
    /// What each shard reserves up front: its even share and a little.
    shard_reserve: usize,
    policy: Policy,
    seed: RandomState,
    /// A queue per key being loaded, so a burst of requests for one uncached key costs one
    /// store lookup. Present only while someone holds or waits for the turn.
    loading: Mutex<HashMap<KeyHash, Arc<tokio::sync::Mutex<()>>>>,
    /// Keys being refreshed ahead of their expiry, or whose refresh failed: when it started
    /// ([`monotonic_ms`]). Small: keys in use during the last quarter of their `ttl`.
    refreshing: Mutex<HashMap<KeyHash, u64>>,
    /// Refreshes claimed and not yet ended, at most [`MAX_REFRESHES_RUNNING`].
    refreshes_running: AtomicUsize,
}

/// The most background refreshes at once. A key that finds them all busy is refreshed by a
/// later request, or loaded when it expires. Unbounded, a million keys entering their refresh
/// window together (the 1,000,000-key fill of `benches/load/run zipf`) spawned hundreds of
/// thousands of loads at once: their tasks took hundreds of MiB (RSS peak 671 MiB) and the
/// store timed out for requests (503s).
pub const MAX_REFRESHES_RUNNING: usize = 64;

/// How long after a failed refresh the next one may start.
pub const REFRESH_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

struct Shard {
    /// Slot numbers, found by the keyed hash of the slot's key hash.
    index: HashTable<u32>,
    slots: Vec<Slot>,
    /// Slots emptied by `invalidate` or `sweep`, reused before anything is evicted.
    free: Vec<u32>,
    /// The CLOCK hand: the next slot eviction looks at.
    hand: usize,
}

struct Slot {
    hash: KeyHash,
    /// Set by every hit, cleared as the CLOCK hand passes: a second chance.
    referenced: AtomicBool,
    /// `None` while the slot is on the free list.
    entry: Option<KeyEntry>,
}

impl KeyCache {
    pub fn new(max_entries: u64, policy: Policy) -> Self {
        let max_entries = max_entries.max(1);
        // The largest power of two that leaves every shard MIN_PER_SHARD entries.
        let fitting = (max_entries / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        let shard_count = 1 << fitting.ilog2();
        let share = max_entries.div_ceil(shard_count);
        let as_usize = |n: u64| usize::try_from(n).expect("max_entries fits in memory");
        let shards = (0..shard_count)
            .map(|_| {
                RwLock::new(Shard {
                    index: HashTable::new(),
                    slots: Vec::new(),
                    free: Vec::new(),
                    hand: 0,
                })
            })
            .collect();
        Self {
            shards,
            max_entries: as_usize(max_entries),
            entries: AtomicUsize::new(0),
            shard_limit: as_usize(share * 2),
            shard_reserve: as_usize(share + share / 8),
            policy,
            seed: RandomState::new(),
            loading: Mutex::default(),
            refreshing: Mutex::default(),
            refreshes_running: AtomicUsize::new(0),
        }
    }

    /// Runs `work` once every earlier caller for `hash` has finished theirs (FIFO).
    pub async fn one_load_at_a_time<T>(&self, hash: &KeyHash, work: impl Future<Output = T>) -> T {
        let turn = Turn::take(self, *hash);
        let _held = turn.queue.lock().await;
        work.await
        // `_held` is released before `turn` is dropped: locals drop in reverse order, also
        // when the caller gives up (a client disconnecting mid-load) and this is dropped.
    }

    /// Claims the refresh of `hash`: false while another runs, within [`REFRESH_RETRY`]
    /// of one that failed, or while [`MAX_REFRESHES_RUNNING`] run. A claim must be ended.
    pub fn begin_refresh(&self, hash: &KeyHash, now_ms: u64) -> bool {
        let mut refreshing = self.refreshing.lock();
        // Counted under the lock, so that claims never pass the bound.
        if self.refreshes_running.load(Ordering::Relaxed) >= MAX_REFRESHES_RUNNING {
            return false;
        }
        match refreshing.get_mut(hash) {
            Some(started) if now_ms.saturating_sub(*started) < retry_ms() => return false,
            Some(started) => *started = now_ms,
            None => {
                refreshing.insert(*hash, now_ms);
            }
        }
        self.refreshes_running.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Ends a refresh. A failed one stays claimed until [`REFRESH_RETRY`] has passed.
    pub fn end_refresh(&self, hash: &KeyHash, succeeded: bool) {
        let mut refreshing = self.refreshing.lock();
        self.refreshes_running.fetch_sub(1, Ordering::Relaxed);
        if succeeded {
            refreshing.remove(hash);
        }
    }

    /// The entry for `hash` if one is cached and within its lifetime.
    pub fn get(&self, hash: &KeyHash) -> Option<KeyEntry> {
        self.get_at(hash, monotonic_ms())
    }

    /// [`KeyCache::get`] with the clock already read ([`monotonic_ms`]).
    pub fn get_at(&self, hash: &KeyHash, now_ms: u64) -> Option<KeyEntry> {
        let h = self.index_hash(hash);
        let shard = self.shard(h).read();
        let slot = shard.position(h, hash)?;
        let slot = &shard.slots[slot as usize];
        let entry = slot.entry.as_ref()?;
        if self.expired(entry, now_ms) {
            return None;
        }
        // Relaxed: the bit is an eviction hint; a lost update only costs a second chance.
        if !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        Some(entry.clone())
    }

    /// Caches `entry` for `hash`, replacing what was there; a full shard evicts one entry.
    pub fn insert(&self, hash: KeyHash, entry: KeyEntry) {
        let h = self.index_hash(&hash);
        let mut guard = self.shard(h).write();
        let shard = &mut *guard;
        if let Some(i) = shard.position(h, &hash) {
            let slot = &mut shard.slots[i as usize];
            slot.entry = Some(entry);
            *slot.referenced.get_mut() = true;
            return;
        }
        let slot = Slot {
            hash,
            referenced: AtomicBool::new(false),
            entry: Some(entry),
        };
        let occupied = shard.index.len();
        let full = self.entries.load(Ordering::Relaxed) >= self.max_entries
            || occupied >= self.shard_limit;
        let i = if full && occupied > 0 {
            let victim = self.clock_victim(shard);
            let old = self.index_hash(&shard.slots[victim as usize].hash);
            self.unindex(shard, old, victim);
            shard.slots[victim as usize] = slot;
            victim
        } else if let Some(i) = shard.free.pop() {
            self.entries.fetch_add(1, Ordering::Relaxed);
            shard.slots[i as usize] = slot;
            i
        } else {
            if shard.slots.capacity() == 0 {
                // Reserved once: address space only, pages are touched as slots fill.
                shard.slots.reserve_exact(self.shard_reserve);
                shard.index.reserve(self.shard_reserve, |_| 0);
            }
            self.entries.fetch_add(1, Ordering::Relaxed);
            shard.slots.push(slot);
            u32::try_from(shard.slots.len() - 1).expect("a shard holds under 2^32 slots")
        };
        let Shard { index, slots, .. } = shard;
        index.insert_unique(h, i, |&j| self.index_hash(&slots[j as usize].hash));
    }

    /// Changes the entry cached for `hash` in place, if there is one.
    pub fn update(&self, hash: &KeyHash, change: impl FnOnce(&mut KeyEntry)) {
        let h = self.index_hash(hash);
        let mut guard = self.shard(h).write();
        let shard = &mut *guard;
        if let Some(i) = shard.position(h, hash) {
            if let Some(entry) = &mut shard.slots[i as usize].entry {
                change(entry);
            }
        }
    }

    /// Forgets `hash` (an admin change made the cached answer wrong).
    pub fn invalidate(&self, hash: &KeyHash) {
        let h = self.index_hash(hash);
        let mut guard = self.shard(h).write();
        let shard = &mut *guard;
        if let Some(i) = shard.position(h, hash) {
            self.vacate(shard, h, i);
        }
    }

    /// Drops entries past their lifetime so their memory is reused. One shard is locked at a
    /// time, so lookups in the others go on.
    pub fn sweep(&self) {
        let now = monotonic_ms();
        // Failed refreshes past their retry time (a running one is re-claimed at worst).
        self.refreshing
            .lock()
            .retain(|_, started| now.saturating_sub(*started) < retry_ms());
        for lock in &self.shards {
            let now = monotonic_ms();
            let mut guard = lock.write();
            let shard = &mut *guard;
            for i in 0..shard.slots.len() {
                let i = u32::try_from(i).expect("a shard holds under 2^32 slots");
                let slot = &shard.slots[i as usize];
                if slot.entry.as_ref().is_some_and(|e| self.expired(e, now)) {
                    let h = self.index_hash(&slot.hash);
                    self.vacate(shard, h, i);
                }
            }
        }
    }

    /// How many keys (known and unknown) are cached, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn index_hash(&self, hash: &KeyHash) -> u64 {
        // Eight bytes of a SHA-256 are as random as all 32 and hash in a quarter of the time;
        // slots compare the whole hash.
        let (head, _) = hash.0.split_first_chunk::<8>().expect("32 bytes");
        self.seed.hash_one(u64::from_ne_bytes(*head))
    }

    fn shard(&self, h: u64) -> &RwLock<Shard> {
        // The top bits: hashbrown places entries by the low bits and tags them with the top 7,
        // so bits 48–53 are independent of both.
        &self.shards[(h >> 48) as usize & (self.shards.len() - 1)]
    }

    fn expired(&self, entry: &KeyEntry, now_ms: u64) -> bool {
        !entry.is_alive(now_ms, &self.policy)
    }

    /// Empties a slot and puts it on the free list.
    fn vacate(&self, shard: &mut Shard, h: u64, slot: u32) {
        self.unindex(shard, h, slot);
        shard.slots[slot as usize].entry = None;
        shard.free.push(slot);
        self.entries.fetch_sub(1, Ordering::Relaxed);
    }

    fn unindex(&self, shard: &mut Shard, h: u64, slot: u32) {
        if let Ok(found) = shard.index.find_entry(h, |&j| j == slot) {
            found.remove();
        }
    }

    /// The slot to evict from a shard with entries: the first occupied one the hand finds
    /// expired or without its second chance. Ends within two turns, since the first turn
    /// clears every bit.
    fn clock_victim(&self, shard: &mut Shard) -> u32 {
        let now = monotonic_ms();
        let len = shard.slots.len();
        loop {
            let i = shard.hand;
            shard.hand = (shard.hand + 1) % len;
            let slot = &mut shard.slots[i];
            let Some(entry) = &slot.entry else {
                continue;
            };
            if self.expired(entry, now) || !std::mem::take(slot.referenced.get_mut()) {
                return u32::try_from(i).expect("a shard holds under 2^32 slots");
            }
        }
    }
}

impl Shard {
    /// The slot holding `hash`, whose index hash is `h`.
    fn position(&self, h: u64, hash: &KeyHash) -> Option<u32> {
        self.index
            .find(h, |&i| self.slots[i as usize].hash == *hash)
            .copied()
    }
}

fn retry_ms() -> u64 {
    u64::try_from(REFRESH_RETRY.as_millis()).expect("a second")
}

/// A place in the queue for one key; the last one out removes the queue.
struct Turn<'a> {
    cache: &'a KeyCache,
    hash: KeyHash,
    queue: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Turn<'a> {
    fn take(cache: &'a KeyCache, hash: KeyHash) -> Self {
        let queue = cache.loading.lock().entry(hash).or_default().clone();
        Self { cache, hash, queue }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut loading = self.cache.loading.lock();
        // Clones are only made under this lock, so 2 (the map's and ours) means no one
        // else holds or waits for this queue.
        if Arc::strong_count(&self.queue) == 2 {
            loading.remove(&self.hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::verifier::Stamp;

    fn policy(ttl_ms: u64) -> Policy {
        let ttl = Duration::from_millis(ttl_ms);
        Policy::new(ttl, ttl, Duration::ZERO)
    }

    fn hash(n: u32) -> KeyHash {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&n.to_le_bytes());
        KeyHash(h)
    }

    fn unknown() -> KeyEntry {
        KeyEntry::Unknown {
            stamp: Stamp {
                fetched_ms: monotonic_ms(),
                epoch: 0,
            },
        }
    }

    #[test]
    fn refreshes_are_one_per_key_and_bounded_in_number() {
        let cache = KeyCache::new(100, policy(60_000));
        let now = monotonic_ms();
        assert!(cache.begin_refresh(&hash(0), now));
        assert!(!cache.begin_refresh(&hash(0), now), "one at a time per key");
        for n in 1..MAX_REFRESHES_RUNNING {
            assert!(cache.begin_refresh(&hash(n as u32), now));
        }
        let next = hash(MAX_REFRESHES_RUNNING as u32);
        assert!(!cache.begin_refresh(&next, now), "all running");
        cache.end_refresh(&hash(0), true);
        assert!(
            cache.begin_refresh(&next, now),
            "one ended, one more may start"
        );
        // A failed refresh frees its place but keeps its key claimed until the retry time.
        cache.end_refresh(&hash(1), false);
        assert!(!cache.begin_refresh(&hash(1), now));
        assert!(cache.begin_refresh(&hash(1), now + retry_ms()));
    }

    #[test]
    fn get_answers_what_was_inserted_until_invalidated() {
        let cache = KeyCache::new(100, policy(60_000));
        assert!(cache.get(&hash(1)).is_none());
        cache.insert(hash(1), unknown());
        cache.insert(hash(2), unknown());
        assert!(cache.get(&hash(1)).is_some());
        assert_eq!(cache.len(), 2);
        cache.invalidate(&hash(1));
        assert!(cache.get(&hash(1)).is_none());
        assert!(cache.get(&hash(2)).is_some());
        // The freed slot is reused, the count stays right.
        cache.insert(hash(3), unknown());
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&hash(3)).is_some());
    }

    #[test]
    fn a_full_cache_keeps_its_bound_and_the_entries_in_use() {
        let cache = KeyCache::new(64, policy(60_000));
        for n in 0..64 {
            cache.insert(hash(n), unknown());
        }
        for round in 0..20 {
            // Key 0 is used between every insertion: CLOCK gives it a second chance each time.
            for n in 0..64 {
                assert!(cache.get(&hash(0)).is_some(), "round {round}, insert {n}");
                cache.insert(hash(1000 + round * 64 + n), unknown());
            }
        }
        assert_eq!(cache.len(), 64);
        assert!(cache.get(&hash(0)).is_some());
    }

    #[test]
    fn entries_past_their_lifetime_read_as_absent_and_are_swept() {
        let cache = KeyCache::new(10, policy(30));
        cache.insert(hash(1), unknown());
        assert!(cache.get(&hash(1)).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get(&hash(1)).is_none());
        assert_eq!(cache.len(), 1);
        cache.sweep();
        assert_eq!(cache.len(), 0);
    }

    #[tokio::test]
    async fn loads_of_one_key_take_turns_and_leave_nothing_behind() {
        let cache = Arc::new(KeyCache::new(10, policy(60_000)));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, running) = (cache.clone(), running.clone());
                tokio::spawn(async move {
                    cache
                        .one_load_at_a_time(&hash(7), async {
                            assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "one at a time");
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                            running.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(cache.loading.lock().is_empty());
        // Callers that give up, holding the turn or waiting for it, leave nothing behind.
        let key = hash(7);
        let holder = cache.one_load_at_a_time(&key, std::future::pending::<()>());
        let waiter = cache.one_load_at_a_time(&key, async { unreachable!("never its turn") });
        let both = async { tokio::join!(holder, waiter) };
        assert!(tokio::time::timeout(Duration::from_millis(5), both)
            .await
            .is_err());
        assert!(cache.loading.lock().is_empty());
    }

    #[test]
    fn large_caches_are_sharded_and_still_bounded() {
        let cache = KeyCache::new(100_000, policy(60_000));
        assert_eq!(cache.shards.len(), 16);
        for n in 0..120_000 {
            cache.insert(hash(n), unknown());
        }
        assert_eq!(cache.len(), 100_000);
        let per_shard = cache.shards.iter().map(|s| s.read().index.len());
        assert_eq!(per_shard.sum::<usize>(), 100_000);
    }
}
