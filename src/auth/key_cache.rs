//! The key cache: key hash → what the gateway last learned about that key, for up to
//! `cache.max_entries` keys in little memory.
//!
//! Users are cached in moka (few entries, invalidated by group); keys are not, because a
//! gateway may hold a million of them and moka's own bookkeeping is about 270–300 bytes per
//! entry (measured: 1,000,000 `u64 → u64` entries took 256–291 MiB), which alone would spend
//! the whole 300 MB budget for 1,000,000 cached keys. Here the bookkeeping is a slab of slots
//! plus a hashbrown index of `u32` slot numbers, about 10 bytes per key besides the slot.
//!
//! - **No heap allocation per key**: a key's text (ids and name) is kept in its shard's text
//!   arena, one growing buffer, and a hit copies it out (no reference count shared by the
//!   cores). As an allocation of its own, each text also paid a reference count and the
//!   allocator's rounding (`cargo bench --bench cache_memory`: 264 → 228 bytes per key with
//!   the slot's 128 → 112 bytes).
//!
//! - **Shards**, each behind a `parking_lot` read-write lock: a hit takes only a read lock.
//! - **Eviction** is CLOCK (second chance): a hit sets the slot's `referenced` bit; a full
//!   shard evicts the first slot the hand finds unreferenced (or past its lifetime), clearing
//!   bits as it goes. Close to LRU for skewed key choices, without a list to update per hit.
//! - **Lifetime**: an entry older than its lifetime ([`Cached::lifetime`]) reads as absent
//!   and is dropped by [`KeyCache::sweep`] or reused by eviction.
//! - **Last use**: an admitted request notes the time in its key's slot (an atomic store,
//!   once a second per key at most); [`KeyCache::take_uses`] collects the notes for the
//!   store. A key that leaves the cache hands its note to a list, so no use is lost.
//! - **Index hash**: keyed with a per-process random seed. SHA-256 output is uniform, but a
//!   client can grind secrets whose hashes collide in the bits an unkeyed table would use.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};

use super::key::KeyHash;
use super::verifier::{Cached, CachedKey, KeyEntry, KeyFacts, OwnerHint, Policy, Stamp, UserEntry};
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
    /// Uses not yet written of keys that have left the cache since (evicted, reloaded,
    /// invalidated, swept), or whose write failed: key id and unix seconds.
    left_uses: Mutex<Vec<(Box<str>, u32)>>,
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
    /// The texts of the shard's known keys.
    texts: TextArena,
}

struct Slot {
    hash: KeyHash,
    /// Set by every hit, cleared as the CLOCK hand passes: a second chance.
    referenced: AtomicBool,
    /// Unix seconds of the key's latest admitted use not yet collected; 0: none. Fills what
    /// would be padding.
    last_use_s: AtomicU32,
    /// `None` while the slot is on the free list.
    entry: Option<StoredEntry>,
}

/// A [`KeyEntry`] as a slot holds it: 112 bytes with the slot's hash (128 with the text as a
/// reference-counted allocation of its own, which came on top).
#[derive(Clone)]
struct StoredEntry {
    stamp: Stamp,
    /// `None`: the store said no such key.
    known: Option<StoredKey>,
}

/// A known key: its text is in the shard's arena. The owner hint's two fields are kept
/// apart so that the text's place fills what would be padding.
#[derive(Clone)]
struct StoredKey {
    facts: KeyFacts,
    text_at: u32,
    owner_generation: u32,
    owner: Arc<UserEntry>,
}

/// The texts of one shard's keys, back to back in one buffer. A replaced or dropped key
/// leaves its text behind as garbage, until the buffer is packed again.
#[derive(Default)]
struct TextArena {
    bytes: Vec<u8>,
    garbage: usize,
}

/// Texts are packed once garbage is at least half the buffer and this large.
const MIN_GARBAGE_TO_PACK: usize = 4096;

/// Text bytes reserved per key a shard reserves for: a generated id, a user id and a short
/// name. Address space only until used; longer texts grow the buffer.
const TEXT_BYTES_RESERVED: usize = 64;

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
                    texts: TextArena::default(),
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
            left_uses: Mutex::default(),
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
        Some(entry.to_entry(&shard.texts))
    }

    /// Caches `entry` for `hash`, replacing what was there; a full shard evicts one entry.
    pub fn insert(&self, hash: KeyHash, entry: KeyEntry) {
        let h = self.index_hash(&hash);
        let mut guard = self.shard(h).write();
        let shard = &mut *guard;
        if let Some(i) = shard.position(h, &hash) {
            shard.release(i, &self.left_uses);
            let stored = shard.store(entry);
            let slot = &mut shard.slots[i as usize];
            slot.entry = Some(stored);
            *slot.referenced.get_mut() = true;
            return;
        }
        let occupied = shard.index.len();
        let full = self.entries.load(Ordering::Relaxed) >= self.max_entries
            || occupied >= self.shard_limit;
        let i = if full && occupied > 0 {
            let victim = self.clock_victim(shard);
            let old = self.index_hash(&shard.slots[victim as usize].hash);
            self.unindex(shard, old, victim);
            shard.release(victim, &self.left_uses);
            victim
        } else if let Some(i) = shard.free.pop() {
            self.entries.fetch_add(1, Ordering::Relaxed);
            i
        } else {
            if shard.slots.capacity() == 0 {
                // Reserved once: address space only, pages are touched as slots fill.
                shard.slots.reserve_exact(self.shard_reserve);
                shard.index.reserve(self.shard_reserve, |_| 0);
                shard
                    .texts
                    .bytes
                    .reserve(self.shard_reserve * TEXT_BYTES_RESERVED);
            }
            self.entries.fetch_add(1, Ordering::Relaxed);
            shard.slots.push(Slot::free(hash));
            u32::try_from(shard.slots.len() - 1).expect("a shard holds under 2^32 slots")
        };
        let stored = shard.store(entry);
        shard.slots[i as usize] = Slot {
            entry: Some(stored),
            ..Slot::free(hash)
        };
        let Shard { index, slots, .. } = shard;
        index.insert_unique(h, i, |&j| self.index_hash(&slots[j as usize].hash));
    }

    /// Makes `hint` the owner hint of the key cached for `hash`, if it is cached and known.
    pub fn set_owner(&self, hash: &KeyHash, hint: OwnerHint) {
        let h = self.index_hash(hash);
        let mut guard = self.shard(h).write();
        let shard = &mut *guard;
        if let Some(i) = shard.position(h, hash) {
            if let Some(StoredEntry {
                known: Some(key), ..
            }) = &mut shard.slots[i as usize].entry
            {
                key.owner = hint.entry;
                key.owner_generation = hint.generation;
            }
        }
    }

    /// Notes an admitted use of the key `id` (hash `hash`) at `unix_s` seconds. Cached keys
    /// (all but those evicted since their request read them) note it in their slot; `id` is
    /// asked for only otherwise (taking it from a `CachedKey` checks its UTF-8 again).
    pub fn note_use<'k>(&self, hash: &KeyHash, id: impl FnOnce() -> &'k str, unix_s: u32) {
        let h = self.index_hash(hash);
        let shard = self.shard(h).read();
        if let Some(i) = shard.position(h, hash) {
            let noted = &shard.slots[i as usize].last_use_s;
            // Relaxed: the note publishes nothing else, and collection swaps it out
            // atomically. Stored only when the second moves, so that a key in use by both
            // cores does not bounce its slot between them.
            if noted.load(Ordering::Relaxed) < unix_s {
                noted.store(unix_s, Ordering::Relaxed);
            }
            return;
        }
        drop(shard);
        self.left_uses.lock().push((id().into(), unix_s));
    }

    /// Every use noted and not yet collected, as key id and time; the notes are cleared.
    pub fn take_uses(&self) -> Vec<(String, DateTime<Utc>)> {
        (0..)
            .map_while(|part| self.take_uses_in(part))
            .flatten()
            .collect()
    }

    /// The uses noted in `part` and not yet collected; `None` past the last part. Part 0
    /// holds the uses of keys that left, then comes one part per shard: collected a part at
    /// a time, a million keys in use are never all in one list (and are written a part at
    /// a time, too).
    pub fn take_uses_in(&self, part: usize) -> Option<Vec<(String, DateTime<Utc>)>> {
        let at = |(id, unix_s): (Box<str>, u32)| Some((id.into_string(), unix_time(unix_s)?));
        let Some(shard) = part.checked_sub(1) else {
            let left = std::mem::take(&mut *self.left_uses.lock());
            return Some(left.into_iter().filter_map(at).collect());
        };
        let shard = self.shards.get(shard)?.read();
        let mut uses = Vec::new();
        for slot in &shard.slots {
            // A use noted after the swap stays for the next collection.
            if slot.last_use_s.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let unix_s = slot.last_use_s.swap(0, Ordering::Relaxed);
            let id = slot.entry.as_ref().and_then(|e| e.key_id(&shard.texts));
            if let (Some(id), Some(at)) = (id, unix_time(unix_s)) {
                uses.push((id.to_owned(), at));
            }
        }
        Some(uses)
    }

    /// Takes back uses that could not be written; the next collection returns them.
    pub fn restore_uses(&self, uses: impl IntoIterator<Item = (String, DateTime<Utc>)>) {
        let uses = uses.into_iter().map(|(id, at)| {
            let unix_s = u32::try_from(at.timestamp()).unwrap_or(u32::MAX);
            (id.into_boxed_str(), unix_s)
        });
        self.left_uses.lock().extend(uses);
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
            shard.pack_texts_if_wasteful();
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

    fn expired(&self, entry: &StoredEntry, now_ms: u64) -> bool {
        !entry.is_alive(now_ms, &self.policy)
    }

    /// Empties a slot and puts it on the free list.
    fn vacate(&self, shard: &mut Shard, h: u64, slot: u32) {
        self.unindex(shard, h, slot);
        shard.release(slot, &self.left_uses);
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

    /// `entry` as a slot of this shard holds it, its text moved into the arena.
    fn store(&mut self, entry: KeyEntry) -> StoredEntry {
        match entry {
            KeyEntry::Unknown { stamp } => StoredEntry { stamp, known: None },
            KeyEntry::Known { key, stamp, owner } => {
                let (facts, text) = key.into_parts();
                self.pack_texts_if_wasteful();
                let text_at = self.texts.push(&text);
                StoredEntry {
                    stamp,
                    known: Some(StoredKey {
                        facts,
                        text_at,
                        owner_generation: owner.generation,
                        owner: owner.entry,
                    }),
                }
            }
        }
    }

    /// Empties a slot (it stays where it is); its text becomes garbage, and a use noted in
    /// it moves to `left_uses`.
    fn release(&mut self, slot: u32, left_uses: &Mutex<Vec<(Box<str>, u32)>>) {
        let slot = &mut self.slots[slot as usize];
        let unix_s = std::mem::take(slot.last_use_s.get_mut());
        let Some(key) = slot.entry.take().and_then(|e| e.known) else {
            return;
        };
        if unix_s != 0 {
            let id = key.id(&self.texts).into();
            left_uses.lock().push((id, unix_s));
        }
        self.texts.garbage += key.facts.text_len();
    }

    /// Moves the texts of the keys cached now into a new buffer, leaving the garbage out,
    /// when garbage is at least half the buffer: copying then costs at most as much as the
    /// bytes that became garbage since the last packing.
    fn pack_texts_if_wasteful(&mut self) {
        let texts = &mut self.texts;
        if texts.garbage < MIN_GARBAGE_TO_PACK || texts.garbage * 2 < texts.bytes.len() {
            return;
        }
        // The same capacity: the shard is as full as it was, most likely.
        let mut packed = Vec::with_capacity(texts.bytes.capacity());
        for slot in &mut self.slots {
            if let Some(StoredEntry {
                known: Some(key), ..
            }) = &mut slot.entry
            {
                let at = key.text_at as usize;
                let moved = text_place(&packed);
                packed.extend_from_slice(&texts.bytes[at..at + key.facts.text_len()]);
                key.text_at = moved;
            }
        }
        texts.bytes = packed;
        texts.garbage = 0;
    }
}

impl Slot {
    fn free(hash: KeyHash) -> Self {
        Self {
            hash,
            referenced: AtomicBool::new(false),
            last_use_s: AtomicU32::new(0),
            entry: None,
        }
    }
}

impl StoredEntry {
    /// The entry as the verifier uses it, with a copy of the key's text.
    fn to_entry(&self, texts: &TextArena) -> KeyEntry {
        let stamp = self.stamp;
        let Some(key) = &self.known else {
            return KeyEntry::Unknown { stamp };
        };
        KeyEntry::Known {
            key: CachedKey::from_parts(key.facts.clone(), key.text(texts)),
            stamp,
            owner: OwnerHint {
                entry: key.owner.clone(),
                generation: key.owner_generation,
            },
        }
    }

    fn key_id<'t>(&self, texts: &'t TextArena) -> Option<&'t str> {
        Some(self.known.as_ref()?.id(texts))
    }
}

impl StoredKey {
    fn text<'t>(&self, texts: &'t TextArena) -> &'t [u8] {
        let at = self.text_at as usize;
        &texts.bytes[at..at + self.facts.text_len()]
    }

    fn id<'t>(&self, texts: &'t TextArena) -> &'t str {
        self.facts.id_of(self.text(texts))
    }
}

impl Cached for StoredEntry {
    fn stamp(&self) -> Stamp {
        self.stamp
    }
    fn is_negative(&self) -> bool {
        self.known.is_none()
    }
}

impl TextArena {
    /// Appends `text`; answers where it starts.
    fn push(&mut self, text: &[u8]) -> u32 {
        let at = text_place(&self.bytes);
        self.bytes.extend_from_slice(text);
        at
    }
}

/// Where the next text appended to `bytes` starts.
fn text_place(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).expect("a shard's texts take under 4 GiB")
}

/// `unix_s` as a time; `None` for 0 (no use) and times past what a timestamp holds.
fn unix_time(unix_s: u32) -> Option<DateTime<Utc>> {
    (unix_s != 0)
        .then(|| DateTime::from_timestamp(i64::from(unix_s), 0))
        .flatten()
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
    use crate::store::model::samples;
    use crate::store::KeyRecord;

    fn policy(ttl_ms: u64) -> Policy {
        let ttl = Duration::from_millis(ttl_ms);
        Policy::new(ttl, ttl, Duration::ZERO)
    }

    fn hash(n: u32) -> KeyHash {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&n.to_le_bytes());
        KeyHash(h)
    }

    /// A known key whose id, owner and name all say `n`; the name is `n` times `é`, so
    /// texts vary in length and the id-as-header stays plain while the name is encoded.
    fn known(n: u32) -> KeyEntry {
        let record = KeyRecord {
            hash: hash(n),
            name: format!("name {n} {}", "é".repeat(n as usize % 7)),
            ..samples::key(&format!("key_{n}"), &format!("user_{n}"), "t")
        };
        let stamp = Stamp {
            fetched_ms: monotonic_ms(),
            epoch: 0,
        };
        KeyEntry::Known {
            key: CachedKey::from_record(&record),
            stamp,
            owner: OwnerHint::none(stamp),
        }
    }

    /// The key cached for `n` reads back as [`known`] made it.
    fn assert_reads_back(cache: &KeyCache, n: u32) {
        let Some(KeyEntry::Known { key, .. }) = cache.get(&hash(n)) else {
            panic!("key {n} is cached and known");
        };
        let KeyEntry::Known { key: made, .. } = known(n) else {
            unreachable!()
        };
        assert_eq!(key.id(), format!("key_{n}"));
        assert_eq!(key.owner(), format!("user_{n}"));
        assert_eq!(key.id_header_bytes(), made.id_header_bytes());
        assert_eq!(key.name_header_bytes(), made.name_header_bytes());
    }

    #[test]
    fn a_slot_holds_a_key_in_112_bytes() {
        // The per-key cost of a million cached keys: slot, text in the arena, index.
        assert!(
            std::mem::size_of::<Slot>() <= 112,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    #[test]
    fn texts_read_back_through_replacements_evictions_and_packing() {
        let cache = KeyCache::new(200, policy(60_000));
        let arena_len = |cache: &KeyCache| cache.shards[0].read().texts.bytes.len();
        for n in 0..200 {
            cache.insert(hash(n), known(n));
        }
        let full = arena_len(&cache);
        // Every key replaced many times over (and some turned unknown and back): the
        // garbage they leave is packed away, the live texts move and still read back.
        for round in 0..50 {
            for n in 0..200 {
                if (n + round) % 5 == 0 {
                    cache.insert(hash(n), unknown());
                }
                cache.insert(hash(n), known(n));
            }
            cache.invalidate(&hash(round));
            cache.insert(hash(round), known(round));
        }
        for n in 0..200 {
            assert_reads_back(&cache, n);
        }
        assert!(
            arena_len(&cache) <= 2 * full + MIN_GARBAGE_TO_PACK,
            "garbage is packed"
        );
        // Eviction by newer keys, then a sweep of what expired: both leave garbage behind.
        for n in 1000..1400 {
            cache.insert(hash(n), known(n));
        }
        assert_eq!(cache.len(), 200);
        for n in 1200..1400 {
            assert_reads_back(&cache, n);
        }
    }

    #[test]
    fn a_sweep_packs_the_texts_of_what_expired() {
        let cache = KeyCache::new(1000, policy(30));
        for n in 0..1000 {
            cache.insert(hash(n), known(n));
        }
        assert!(cache.shards[0].read().texts.bytes.len() > MIN_GARBAGE_TO_PACK);
        std::thread::sleep(Duration::from_millis(40));
        cache.sweep();
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.shards[0].read().texts.bytes.len(), 0);
    }

    #[test]
    fn uses_are_collected_once_and_none_is_lost_when_keys_leave() {
        let cache = KeyCache::new(3, policy(60_000));
        let taken = |cache: &KeyCache| {
            let mut uses: Vec<(String, i64)> = cache
                .take_uses()
                .into_iter()
                .map(|(id, at)| (id, at.timestamp()))
                .collect();
            uses.sort();
            uses
        };
        for n in 1..=3 {
            cache.insert(hash(n), known(n));
        }
        cache.note_use(&hash(1), || "key_1", 1_000);
        cache.note_use(&hash(1), || "key_1", 1_005);
        cache.note_use(&hash(1), || "key_1", 1_002); // an older clock reading is not kept
        cache.note_use(&hash(2), || "key_2", 1_000);
        cache.note_use(&hash(3), || "key_3", 1_000);
        // Key 1 reloaded, key 2 revoked, key 3 evicted by a new key: each note moves out of
        // its slot. A key evicted before its request noted its use is noted all the same.
        cache.insert(hash(1), known(1));
        cache.invalidate(&hash(2));
        cache.note_use(&hash(4), || "key_4", 1_001);
        cache.insert(hash(5), known(5));
        // Keys 1 (just reloaded) and 5 (read) have their second chance: CLOCK evicts key 3.
        assert!(cache.get(&hash(5)).is_some());
        cache.insert(hash(6), known(6));
        assert!(cache.get(&hash(3)).is_none(), "key 3 was evicted");
        let expected = |pairs: &[(&str, i64)]| {
            pairs
                .iter()
                .map(|(id, s)| (id.to_string(), *s))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            taken(&cache),
            expected(&[
                ("key_1", 1_005),
                ("key_2", 1_000),
                ("key_3", 1_000),
                ("key_4", 1_001)
            ])
        );
        assert!(cache.take_uses().is_empty(), "taken once");
        // Noted in a slot, taken, then a write failed: the next collection has it again.
        cache.note_use(&hash(6), || "key_6", 1_010);
        let failed = cache.take_uses();
        cache.restore_uses(failed);
        assert_eq!(taken(&cache), expected(&[("key_6", 1_010)]));
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
