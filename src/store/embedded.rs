//! The embedded backend: one redb file, for a single instance that needs no Redis.
//!
//! Every record is stored as JSON (`super::encode`, as the Redis backend does). Each trait
//! method is one redb transaction: writes commit with redb's default durability (fsync before
//! `commit` returns), so a write that answered `Ok` survives a crash, and a write that fails
//! leaves nothing behind (the transaction is dropped, i.e. aborted). redb is synchronous, so
//! every transaction runs on tokio's blocking pool.
//!
//! Layout:
//! - `keys`: SHA-256 of the secret (32 bytes) → key JSON — the data-plane lookup;
//! - `key_ids`: key id → hash, so admin calls by id find the record;
//! - `users`, `groups`: id → JSON;
//! - `owner_keys`, `tenant_keys`: `(owner | tenant, key id)` → `()`. A tuple key sorts by its
//!   first element, then by the second, so one tenant's (or owner's) keys are a contiguous run
//!   in id order, and a page after a cursor is a single range scan starting at
//!   `(tenant, cursor)`;
//! - `last_used`: key id → when the key was last used (unix millis). Kept apart from the key
//!   record so the data plane's usage writes never race an admin's rewrite of the record; reads
//!   merge it into `last_used_at`, and deleting a key removes its entry;
//! - `audit`: sequence number → audit entry JSON. The sequence increases by one per append, and
//!   the entry's id is that number zero-padded to 20 digits, so ids sort like the sequence;
//! - `audit_tenants`: `(tenant, sequence)` → `()`, so one tenant's entries are a contiguous run
//!   that reads newest first by iterating backwards.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;

use super::{
    decode, encode, AuditEntry, AuditPage, DeletedUser, Group, KeyBundle, KeyPage, KeyQuery,
    KeyRecord, Store, StoreError, User, UserBundle, AUDIT_MAX_ENTRIES,
};
use crate::auth::key::KeyHash;

/// Id-or-hash → JSON record. The key type is `&str` for ids and `&[u8]` for hashes.
type RecordTable<K> = TableDefinition<'static, K, &'static [u8]>;
/// `(owner or tenant, key id)` → nothing: an index whose entries are all in the key.
type IndexTable = TableDefinition<'static, (&'static str, &'static str), ()>;

const KEYS: RecordTable<&[u8]> = TableDefinition::new("keys");
const KEY_IDS: RecordTable<&str> = TableDefinition::new("key_ids");
const USERS: RecordTable<&str> = TableDefinition::new("users");
const GROUPS: RecordTable<&str> = TableDefinition::new("groups");
const OWNER_KEYS: IndexTable = TableDefinition::new("owner_keys");
const TENANT_KEYS: IndexTable = TableDefinition::new("tenant_keys");
/// Key id → when the key was last used, in unix milliseconds.
const LAST_USED: TableDefinition<'static, &str, i64> = TableDefinition::new("last_used");
/// Sequence number → audit entry JSON.
const AUDIT: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("audit");
/// `(tenant, sequence number)` → nothing: the audit entries of each tenant.
const AUDIT_TENANTS: TableDefinition<'static, (&str, u64), ()> =
    TableDefinition::new("audit_tenants");

/// Page size when a query asks for `limit: 0`.
const DEFAULT_PAGE: usize = 100;

/// A redb database holding keys, users and groups. Cheap to share: the handle is an `Arc`.
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path`, creating missing parent directories.
    ///
    /// Every table is created here, in one committed transaction, so that later read
    /// transactions never fail on a table that no write has touched yet.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let shown = path.display();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Other(format!(
                    "embedded store {shown}: cannot create directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let db = Database::create(path).map_err(|e| {
            StoreError::Other(match e {
                redb::DatabaseError::DatabaseAlreadyOpen => format!(
                    "embedded store {shown}: the file is locked by another process \
                     (is another keygate instance using it?)"
                ),
                other => format!("embedded store {shown}: cannot open: {other}"),
            })
        })?;
        create_tables(&db)
            .map_err(|e| StoreError::Other(format!("embedded store {shown}: {e}")))?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    /// [`Store::append_audit`], keeping at most `max` entries (at least the new one).
    async fn append_audit_bounded(&self, entry: &AuditEntry, max: usize) -> Result<(), StoreError> {
        let entry = entry.clone();
        self.write(move |txn| append_audit_in(txn, entry, max))
            .await
    }

    /// Runs `f` in a read transaction (a consistent snapshot) on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_read().db()?;
            f(&txn)
        })
        .await
    }

    /// Runs `f` in a write transaction on the blocking pool and commits it if `f` succeeds.
    /// When `f` fails the transaction is dropped, which aborts it: nothing `f` wrote is kept.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_write().db()?;
            let out = f(&txn)?;
            txn.commit().db()?;
            Ok(out)
        })
        .await
    }
}

fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(KEYS)?;
    txn.open_table(KEY_IDS)?;
    txn.open_table(USERS)?;
    txn.open_table(GROUPS)?;
    txn.open_table(OWNER_KEYS)?;
    txn.open_table(TENANT_KEYS)?;
    txn.open_table(LAST_USED)?;
    txn.open_table(AUDIT)?;
    txn.open_table(AUDIT_TENANTS)?;
    txn.commit()?;
    Ok(())
}

/// Runs blocking work off the async threads; a panicked or cancelled task becomes `Other`.
async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Other(format!("embedded store task failed: {e}")))?
}

/// Converts any redb error into a `StoreError` with `.db()?`.
trait RedbResult<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> RedbResult<T> for Result<T, E> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| db_error(e.into()))
    }
}

/// I/O failures mean the store cannot answer — `Unavailable`, so the data plane keeps serving
/// cached keys and answers 503 for the rest — while redb reporting a damaged file is `Corrupt`.
fn db_error(err: redb::Error) -> StoreError {
    match err {
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed => {
            StoreError::Unavailable(format!("embedded store: {err}"))
        }
        redb::Error::Corrupted(detail) => StoreError::Corrupt {
            what: "embedded database".to_owned(),
            detail,
        },
        other => StoreError::Other(format!("embedded store: {other}")),
    }
}

/// The JSON record stored under `id`, decoded.
fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    what: &str,
    id: &str,
) -> Result<Option<T>, StoreError> {
    match table.get(id).db()? {
        Some(bytes) => decode(&format!("{what} {id}"), bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// Every record of a users or groups table, decoded, in id order, keeping those `keep` accepts.
fn all_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    what: &str,
    mut keep: impl FnMut(&T) -> bool,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter().db()? {
        let (id, bytes) = entry.db()?;
        let record: T = decode(&format!("{what} {}", id.value()), bytes.value())?;
        if keep(&record) {
            out.push(record);
        }
    }
    Ok(out)
}

/// A user and the groups it names that exist, in the user's order (a missing group grants
/// nothing, so it is skipped rather than reported).
fn user_bundle(
    users: &impl ReadableTable<&'static str, &'static [u8]>,
    groups: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<UserBundle>, StoreError> {
    let Some(user) = get_json::<User>(users, "user", id)? else {
        return Ok(None);
    };
    let mut found = Vec::with_capacity(user.groups.len());
    for group_id in &user.groups {
        if let Some(group) = get_json::<Group>(groups, "group", group_id)? {
            found.push(group);
        }
    }
    Ok(Some(UserBundle {
        user,
        groups: found,
    }))
}

/// The key stored under `hash`, decoded.
fn key_by_hash(
    keys: &impl ReadableTable<&'static [u8], &'static [u8]>,
    hash: &[u8],
) -> Result<Option<KeyRecord>, StoreError> {
    match keys.get(hash).db()? {
        Some(bytes) => decode("key", bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// The hash the id index holds for key `id`.
fn hash_of(
    ids: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<[u8; 32]>, StoreError> {
    let Some(bytes) = ids.get(id).db()? else {
        return Ok(None);
    };
    <[u8; 32]>::try_from(bytes.value())
        .map(Some)
        .map_err(|_| StoreError::Corrupt {
            what: format!("key index {id}"),
            detail: format!(
                "expected a 32-byte hash, found {} bytes",
                bytes.value().len()
            ),
        })
}

/// The key with id `id`, through the id index. An index entry without its record can only come
/// from a damaged file (both are written in one transaction), so it is reported, not skipped.
fn key_by_id(
    ids: &impl ReadableTable<&'static str, &'static [u8]>,
    keys: &impl ReadableTable<&'static [u8], &'static [u8]>,
    id: &str,
) -> Result<Option<KeyRecord>, StoreError> {
    let Some(hash) = hash_of(ids, id)? else {
        return Ok(None);
    };
    key_by_hash(keys, &hash)?
        .map(Some)
        .ok_or_else(|| StoreError::Corrupt {
            what: format!("key index {id}"),
            detail: "names a hash with no key record".to_owned(),
        })
}

/// Calls `visit` with the key ids filed under `prefix` in an owner or tenant index, in id
/// order, starting after `cursor`, until `visit` returns `false` or the run ends.
fn scan_index(
    index: &impl ReadableTable<(&'static str, &'static str), ()>,
    prefix: &str,
    cursor: Option<&str>,
    mut visit: impl FnMut(&str) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let start = match cursor {
        Some(cursor) => Bound::Excluded((prefix, cursor)),
        // "" sorts before every id, so this is the first entry of the run.
        None => Bound::Included((prefix, "")),
    };
    for entry in index.range((start, Bound::Unbounded)).db()? {
        let (filed, _) = entry.db()?;
        let (filed_under, id) = filed.value();
        if filed_under != prefix || !visit(id)? {
            break;
        }
    }
    Ok(())
}

/// Calls `visit` with every key id after `cursor`, in id order, until it returns `false`.
fn scan_ids(
    ids: &impl ReadableTable<&'static str, &'static [u8]>,
    cursor: Option<&str>,
    mut visit: impl FnMut(&str) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let start = cursor.map_or(Bound::Unbounded, Bound::Excluded);
    for entry in ids.range::<&str>((start, Bound::Unbounded)).db()? {
        let (id, _) = entry.db()?;
        if !visit(id.value())? {
            break;
        }
    }
    Ok(())
}

/// Collects one page of keys: takes up to `limit` of them, then looks at one more only to
/// learn whether another page follows — so `next_cursor` is never set on the last page.
struct Pager {
    limit: usize,
    items: Vec<KeyRecord>,
    more: bool,
}

impl Pager {
    fn new(limit: usize) -> Self {
        let limit = if limit == 0 { DEFAULT_PAGE } else { limit };
        Self {
            limit,
            items: Vec::new(),
            more: false,
        }
    }

    /// Takes a matching key; `false` once the page is full and a further match was seen.
    fn offer(&mut self, key: KeyRecord) -> bool {
        if self.items.len() == self.limit {
            self.more = true;
            return false;
        }
        self.items.push(key);
        true
    }

    fn finish(self) -> KeyPage {
        let next_cursor = if self.more {
            self.items.last().map(|k| k.id.clone())
        } else {
            None
        };
        KeyPage {
            items: self.items,
            next_cursor,
        }
    }
}

fn list_keys_in(txn: &ReadTransaction, query: &KeyQuery) -> Result<KeyPage, StoreError> {
    let keys = txn.open_table(KEYS).db()?;
    let ids = txn.open_table(KEY_IDS).db()?;
    let last_used = txn.open_table(LAST_USED).db()?;
    let cursor = query.cursor.as_deref();
    let mut pager = Pager::new(query.limit);
    // Filter on the records too, so that with both filters set the owner index (the smaller
    // run) drives the scan and the tenant is checked per key.
    let mut visit = |id: &str| {
        let Some(key) = key_by_id(&ids, &keys, id)? else {
            return Ok(true);
        };
        let matches = query.owner.as_deref().is_none_or(|o| o == key.owner)
            && query.tenant.as_deref().is_none_or(|t| t == key.tenant);
        Ok(!matches || pager.offer(with_last_used(&last_used, key)?))
    };
    match (&query.owner, &query.tenant) {
        (Some(owner), _) => {
            scan_index(&txn.open_table(OWNER_KEYS).db()?, owner, cursor, &mut visit)?
        }
        (None, Some(tenant)) => scan_index(
            &txn.open_table(TENANT_KEYS).db()?,
            tenant,
            cursor,
            &mut visit,
        )?,
        (None, None) => scan_ids(&ids, cursor, &mut visit)?,
    }
    Ok(pager.finish())
}

/// The key tables of a write transaction, opened together because every key write touches all
/// four: the record, the id index, and the owner and tenant indexes.
struct KeyTables<'txn> {
    keys: Table<'txn, &'static [u8], &'static [u8]>,
    ids: Table<'txn, &'static str, &'static [u8]>,
    by_owner: Table<'txn, (&'static str, &'static str), ()>,
    by_tenant: Table<'txn, (&'static str, &'static str), ()>,
    last_used: Table<'txn, &'static str, i64>,
}

impl<'txn> KeyTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            keys: txn.open_table(KEYS).db()?,
            ids: txn.open_table(KEY_IDS).db()?,
            by_owner: txn.open_table(OWNER_KEYS).db()?,
            by_tenant: txn.open_table(TENANT_KEYS).db()?,
            last_used: txn.open_table(LAST_USED).db()?,
        })
    }

    fn put_record(&mut self, key: &KeyRecord) -> Result<(), StoreError> {
        self.keys
            .insert(key.hash.0.as_slice(), encode(key)?.as_slice())
            .db()?;
        Ok(())
    }

    fn index(&mut self, key: &KeyRecord) -> Result<(), StoreError> {
        self.by_owner
            .insert((key.owner.as_str(), key.id.as_str()), ())
            .db()?;
        self.by_tenant
            .insert((key.tenant.as_str(), key.id.as_str()), ())
            .db()?;
        Ok(())
    }

    fn unindex(&mut self, key: &KeyRecord) -> Result<(), StoreError> {
        self.by_owner
            .remove((key.owner.as_str(), key.id.as_str()))
            .db()?;
        self.by_tenant
            .remove((key.tenant.as_str(), key.id.as_str()))
            .db()?;
        Ok(())
    }

    /// Removes key `id`, its record, every index entry and its usage; returns the record, with
    /// `last_used_at` as reads show it.
    fn remove(&mut self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let Some(hash) = hash_of(&self.ids, id)? else {
            return Ok(None);
        };
        self.ids.remove(id).db()?;
        let removed = match self.keys.remove(hash.as_slice()).db()? {
            Some(bytes) => decode::<KeyRecord>(&format!("key {id}"), bytes.value())?,
            None => {
                return Err(StoreError::Corrupt {
                    what: format!("key index {id}"),
                    detail: "names a hash with no key record".to_owned(),
                })
            }
        };
        self.unindex(&removed)?;
        let used = self.last_used.remove(id).db()?.map(|ms| ms.value());
        Ok(Some(merge_last_used(removed, used)))
    }
}

/// `key` with `last_used_at` the later of its own and `used` (unix millis, from `last_used`).
fn merge_last_used(mut key: KeyRecord, used: Option<i64>) -> KeyRecord {
    if let Some(at) = used.and_then(DateTime::<Utc>::from_timestamp_millis) {
        if key.last_used_at.is_none_or(|own| own < at) {
            key.last_used_at = Some(at);
        }
    }
    key
}

/// `key` with the usage the `last_used` table holds for it merged in.
fn with_last_used(
    last_used: &impl ReadableTable<&'static str, i64>,
    key: KeyRecord,
) -> Result<KeyRecord, StoreError> {
    let used = last_used.get(key.id.as_str()).db()?.map(|ms| ms.value());
    Ok(merge_last_used(key, used))
}

fn touch_keys_in(
    txn: &WriteTransaction,
    used: &[(String, DateTime<Utc>)],
) -> Result<(), StoreError> {
    let ids = txn.open_table(KEY_IDS).db()?;
    let mut last_used = txn.open_table(LAST_USED).db()?;
    for (id, at) in used {
        let at = at.timestamp_millis();
        if ids.get(id.as_str()).db()?.is_none() {
            continue;
        }
        let newer = match last_used.get(id.as_str()).db()? {
            Some(stored) => at > stored.value(),
            None => true,
        };
        if newer {
            last_used.insert(id.as_str(), at).db()?;
        }
    }
    Ok(())
}

/// An audit entry's id: its sequence number, zero-padded so that ids sort like numbers.
fn audit_id(seq: u64) -> String {
    format!("{seq:020}")
}

/// The sequence number of an audit id a client sent back as a cursor.
fn parse_audit_cursor(cursor: &str) -> Result<u64, StoreError> {
    if cursor.is_empty() || !cursor.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid_cursor(cursor));
    }
    cursor.parse().map_err(|_| invalid_cursor(cursor))
}

fn invalid_cursor(cursor: &str) -> StoreError {
    StoreError::Other(format!(
        "invalid cursor {cursor:?}: expected the id of an audit entry"
    ))
}

/// Appends `entry` under the next sequence number, then drops the oldest entries beyond `max`
/// (never the new one, so the sequence keeps increasing).
fn append_audit_in(
    txn: &WriteTransaction,
    mut entry: AuditEntry,
    max: usize,
) -> Result<(), StoreError> {
    let mut audit = txn.open_table(AUDIT).db()?;
    let mut tenants = txn.open_table(AUDIT_TENANTS).db()?;
    let seq = match audit.last().db()? {
        Some((last, _)) => last
            .value()
            .checked_add(1)
            .ok_or_else(|| StoreError::Other("audit log: sequence numbers exhausted".to_owned()))?,
        None => 1,
    };
    entry.id = audit_id(seq);
    audit.insert(seq, encode(&entry)?.as_slice()).db()?;
    tenants.insert((entry.tenant.as_str(), seq), ()).db()?;

    let max = u64::try_from(max.max(1)).unwrap_or(u64::MAX);
    while audit.len().db()? > max {
        let Some((oldest, bytes)) = audit.pop_first().db()? else {
            break;
        };
        let oldest = oldest.value();
        // An undecodable entry is dropped all the same (a damaged entry must not block every
        // later append); its tenant index entry then names no record and reads skip it.
        if let Ok(dropped) = decode::<AuditEntry>("audit entry", bytes.value()) {
            tenants.remove((dropped.tenant.as_str(), oldest)).db()?;
        }
    }
    Ok(())
}

/// One page of audit entries, newest first; see [`Store::list_audit`].
fn list_audit_in(
    txn: &ReadTransaction,
    tenant: Option<&str>,
    limit: usize,
    before: Option<u64>,
) -> Result<AuditPage, StoreError> {
    let limit = if limit == 0 { DEFAULT_PAGE } else { limit };
    let audit = txn.open_table(AUDIT).db()?;
    let end = before.map_or(Bound::Unbounded, Bound::Excluded);
    let mut items = Vec::new();
    let mut more = false;
    // Takes the entry at `seq` if the page has room; `false` once a further one was seen.
    let mut offer = |seq: u64| -> Result<bool, StoreError> {
        let Some(bytes) = audit.get(seq).db()? else {
            // Only a tenant index entry left by a damaged, trimmed record.
            return Ok(true);
        };
        if items.len() == limit {
            more = true;
            return Ok(false);
        }
        items.push(decode::<AuditEntry>(
            &format!("audit entry {seq}"),
            bytes.value(),
        )?);
        Ok(true)
    };
    match tenant {
        Some(tenant) => {
            let tenants = txn.open_table(AUDIT_TENANTS).db()?;
            let end = match end {
                Bound::Excluded(seq) => Bound::Excluded((tenant, seq)),
                _ => Bound::Included((tenant, u64::MAX)),
            };
            let range = tenants.range((Bound::Included((tenant, 0)), end)).db()?;
            for filed in range.rev() {
                let (filed, _) = filed.db()?;
                if !offer(filed.value().1)? {
                    break;
                }
            }
        }
        None => {
            for entry in audit.range::<u64>((Bound::Unbounded, end)).db()?.rev() {
                let (seq, _) = entry.db()?;
                if !offer(seq.value())? {
                    break;
                }
            }
        }
    }
    let next_cursor = if more {
        items.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(AuditPage { items, next_cursor })
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|_| Ok(())).await
    }

    async fn load_key(&self, hash: &KeyHash) -> Result<Option<KeyBundle>, StoreError> {
        let hash = *hash;
        self.read(move |txn| {
            let Some(key) = key_by_hash(&txn.open_table(KEYS).db()?, &hash.0)? else {
                return Ok(None);
            };
            let users = txn.open_table(USERS).db()?;
            let groups = txn.open_table(GROUPS).db()?;
            let owner = user_bundle(&users, &groups, &key.owner)?;
            Ok(Some(KeyBundle { key, owner }))
        })
        .await
    }

    async fn load_user(&self, id: &str) -> Result<Option<UserBundle>, StoreError> {
        let id = id.to_owned();
        self.read(move |txn| {
            let users = txn.open_table(USERS).db()?;
            let groups = txn.open_table(GROUPS).db()?;
            user_bundle(&users, &groups, &id)
        })
        .await
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.write(move |txn| {
            let mut tables = KeyTables::open(txn)?;
            if tables.ids.get(key.id.as_str()).db()?.is_some() {
                return Err(StoreError::Conflict(format!("key id {}", key.id)));
            }
            if tables.keys.get(key.hash.0.as_slice()).db()?.is_some() {
                return Err(StoreError::Conflict("a key with the same hash".to_owned()));
            }
            tables.put_record(&key)?;
            tables
                .ids
                .insert(key.id.as_str(), key.hash.0.as_slice())
                .db()?;
            tables.index(&key)
        })
        .await
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |txn| {
            let ids = txn.open_table(KEY_IDS).db()?;
            let keys = txn.open_table(KEYS).db()?;
            let Some(key) = key_by_id(&ids, &keys, &id)? else {
                return Ok(None);
            };
            with_last_used(&txn.open_table(LAST_USED).db()?, key).map(Some)
        })
        .await
    }

    async fn update_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.write(move |txn| {
            let mut tables = KeyTables::open(txn)?;
            let Some(old) = key_by_id(&tables.ids, &tables.keys, &key.id)? else {
                return Err(StoreError::NotFound(format!("key {}", key.id)));
            };
            if old.hash != key.hash {
                // The hash is what the data plane looks a key up by; changing it would be a
                // new key under an old id, which roll/insert do instead.
                return Err(StoreError::Conflict(format!(
                    "key {} is stored with a different hash",
                    key.id
                )));
            }
            tables.put_record(&key)?;
            if old.owner != key.owner || old.tenant != key.tenant {
                tables.unindex(&old)?;
                tables.index(&key)?;
            }
            Ok(())
        })
        .await
    }

    async fn delete_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let id = id.to_owned();
        self.write(move |txn| KeyTables::open(txn)?.remove(&id))
            .await
    }

    async fn list_keys(&self, query: &KeyQuery) -> Result<KeyPage, StoreError> {
        let query = query.clone();
        self.read(move |txn| list_keys_in(txn, &query)).await
    }

    async fn put_user(&self, user: &User) -> Result<(), StoreError> {
        let (id, bytes) = (user.id.clone(), encode(user)?);
        self.write(move |txn| {
            txn.open_table(USERS)
                .db()?
                .insert(id.as_str(), bytes.as_slice())
                .db()?;
            Ok(())
        })
        .await
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let id = id.to_owned();
        self.read(move |txn| get_json(&txn.open_table(USERS).db()?, "user", &id))
            .await
    }

    async fn list_users(&self, tenant: Option<&str>) -> Result<Vec<User>, StoreError> {
        let tenant = tenant.map(str::to_owned);
        self.read(move |txn| {
            all_json(&txn.open_table(USERS).db()?, "user", |u: &User| {
                tenant.as_deref().is_none_or(|t| t == u.tenant)
            })
        })
        .await
    }

    async fn delete_user(&self, id: &str) -> Result<Option<DeletedUser>, StoreError> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut users = txn.open_table(USERS).db()?;
            let user: User = match users.remove(id.as_str()).db()? {
                Some(bytes) => decode(&format!("user {id}"), bytes.value())?,
                None => return Ok(None),
            };
            let mut tables = KeyTables::open(txn)?;
            // Collect first: the index cannot be changed while a range over it is open.
            let mut owned = Vec::new();
            scan_index(&tables.by_owner, &id, None, |key_id| {
                owned.push(key_id.to_owned());
                Ok(true)
            })?;
            let mut keys = Vec::with_capacity(owned.len());
            for key_id in &owned {
                keys.extend(tables.remove(key_id)?);
            }
            Ok(Some(DeletedUser { user, keys }))
        })
        .await
    }

    async fn put_group(&self, group: &Group) -> Result<(), StoreError> {
        let (id, bytes) = (group.id.clone(), encode(group)?);
        self.write(move |txn| {
            txn.open_table(GROUPS)
                .db()?
                .insert(id.as_str(), bytes.as_slice())
                .db()?;
            Ok(())
        })
        .await
    }

    async fn get_group(&self, id: &str) -> Result<Option<Group>, StoreError> {
        let id = id.to_owned();
        self.read(move |txn| get_json(&txn.open_table(GROUPS).db()?, "group", &id))
            .await
    }

    async fn list_groups(&self, tenant: Option<&str>) -> Result<Vec<Group>, StoreError> {
        let tenant = tenant.map(str::to_owned);
        self.read(move |txn| {
            all_json(&txn.open_table(GROUPS).db()?, "group", |g: &Group| {
                tenant.as_deref().is_none_or(|t| t == g.tenant)
            })
        })
        .await
    }

    async fn delete_group(&self, id: &str) -> Result<Option<Group>, StoreError> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut groups = txn.open_table(GROUPS).db()?;
            let removed = groups.remove(id.as_str()).db()?;
            removed
                .map(|bytes| decode(&format!("group {id}"), bytes.value()))
                .transpose()
        })
        .await
    }

    async fn touch_keys(&self, used: &[(String, DateTime<Utc>)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let used = used.to_vec();
        self.write(move |txn| touch_keys_in(txn, &used)).await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.append_audit_bounded(entry, AUDIT_MAX_ENTRIES).await
    }

    async fn list_audit(
        &self,
        tenant: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<AuditPage, StoreError> {
        let before = cursor.map(parse_audit_cursor).transpose()?;
        let tenant = tenant.map(str::to_owned);
        self.read(move |txn| list_audit_in(txn, tenant.as_deref(), limit, before))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::samples::{self, key};
    use chrono::Utc;

    fn user(id: &str, tenant: &str, groups: &[&str]) -> User {
        User {
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..samples::user(id, tenant)
        }
    }

    fn group(id: &str, tenant: &str) -> Group {
        let now = Utc::now();
        Group {
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            permissions: vec![format!("{id}:*")],
            created_at: now,
            updated_at: now,
        }
    }

    fn ids(page: &KeyPage) -> Vec<&str> {
        page.items.iter().map(|k| k.id.as_str()).collect()
    }

    /// A page as (ids, next cursor), to compare in one assertion.
    fn shape(page: &KeyPage) -> (Vec<&str>, Option<&str>) {
        (ids(page), page.next_cursor.as_deref())
    }

    #[tokio::test]
    async fn keys_round_trip_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/keygate.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.backend(), "embedded");
        store.ping().await.unwrap();

        // The user names a group that does not exist: it is skipped, not an error.
        let alice = user("alice", "acme", &["ops", "gone", "dev"]);
        store.put_user(&alice).await.unwrap();
        store.put_group(&group("dev", "acme")).await.unwrap();
        store.put_group(&group("ops", "acme")).await.unwrap();
        let k1 = key("k1", "alice", "acme");
        store.insert_key(&k1).await.unwrap();

        let bundle = store.load_key(&k1.hash).await.unwrap().unwrap();
        assert_eq!(bundle.key, k1);
        let owner = bundle.owner.unwrap();
        assert_eq!(owner.user, alice);
        let group_ids: Vec<_> = owner.groups.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(
            group_ids,
            ["ops", "dev"],
            "in the user's order, missing ones skipped"
        );
        assert_eq!(store.load_key(&KeyHash::of("other")).await.unwrap(), None);

        // A key whose owner does not exist loads with no owner.
        let orphan = key("k2", "nobody", "acme");
        store.insert_key(&orphan).await.unwrap();
        assert_eq!(
            store.load_key(&orphan.hash).await.unwrap().unwrap().owner,
            None
        );
        drop(store);

        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.get_key("k1").await.unwrap(), Some(k1.clone()));
        assert_eq!(store.get_user("alice").await.unwrap(), Some(alice));
        assert_eq!(store.delete_key("k1").await.unwrap(), Some(k1.clone()));
        assert_eq!(store.delete_key("k1").await.unwrap(), None);
        assert_eq!(store.load_key(&k1.hash).await.unwrap(), None);
        let page = store.list_keys(&KeyQuery::default()).await.unwrap();
        assert_eq!(ids(&page), ["k2"]);
        // The id and hash are free again.
        store.insert_key(&k1).await.unwrap();
    }

    #[tokio::test]
    async fn conflicts_and_updates() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db")).unwrap();
        let k1 = key("k1", "alice", "acme");
        store.insert_key(&k1).await.unwrap();

        let same_id = KeyRecord {
            hash: KeyHash::of("kg_another_secret"),
            ..k1.clone()
        };
        let err = store.insert_key(&same_id).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("id")),
            "{err}"
        );
        let same_hash = KeyRecord {
            id: "k9".to_owned(),
            ..k1.clone()
        };
        let err = store.insert_key(&same_hash).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("hash")),
            "{err}"
        );
        assert_eq!(
            store.get_key("k9").await.unwrap(),
            None,
            "refused insert left nothing"
        );

        let err = store
            .update_key(&key("k5", "alice", "acme"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        let err = store.update_key(&same_id).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");

        // Moving a key to another owner and tenant moves its index entries.
        let moved = KeyRecord {
            owner: "bob".to_owned(),
            tenant: "globex".to_owned(),
            name: "renamed".to_owned(),
            ..k1.clone()
        };
        store.update_key(&moved).await.unwrap();
        assert_eq!(store.get_key("k1").await.unwrap(), Some(moved.clone()));
        let by = |owner: Option<&str>, tenant: Option<&str>| KeyQuery {
            owner: owner.map(str::to_owned),
            tenant: tenant.map(str::to_owned),
            ..KeyQuery::default()
        };
        assert!(store
            .list_keys(&by(Some("alice"), None))
            .await
            .unwrap()
            .items
            .is_empty());
        assert!(store
            .list_keys(&by(None, Some("acme")))
            .await
            .unwrap()
            .items
            .is_empty());
        let page = store
            .list_keys(&by(Some("bob"), Some("globex")))
            .await
            .unwrap();
        assert_eq!(page.items, [moved]);
    }

    #[tokio::test]
    async fn pages_follow_id_order_filters_and_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db")).unwrap();
        for (id, owner, tenant) in [
            ("a", "u1", "t1"),
            ("b", "u2", "t2"),
            ("c", "u1", "t1"),
            ("d", "u3", "t1"),
            ("e", "u1", "t2"),
            ("f", "u1", "t1"),
        ] {
            store.insert_key(&key(id, owner, tenant)).await.unwrap();
        }
        let query =
            |tenant: Option<&str>, owner: Option<&str>, limit, cursor: Option<&str>| KeyQuery {
                tenant: tenant.map(str::to_owned),
                owner: owner.map(str::to_owned),
                limit,
                cursor: cursor.map(str::to_owned),
            };

        let all = store.list_keys(&query(None, None, 0, None)).await.unwrap();
        assert_eq!(ids(&all), ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(all.next_cursor, None);

        let p1 = store
            .list_keys(&query(Some("t1"), None, 2, None))
            .await
            .unwrap();
        assert_eq!(shape(&p1), (vec!["a", "c"], Some("c")));
        let p2 = store
            .list_keys(&query(Some("t1"), None, 2, Some("c")))
            .await
            .unwrap();
        assert_eq!(shape(&p2), (vec!["d", "f"], None), "exact fit: no cursor");

        let p = store
            .list_keys(&query(None, Some("u1"), 3, Some("a")))
            .await
            .unwrap();
        assert_eq!(shape(&p), (vec!["c", "e", "f"], None));
        let p = store
            .list_keys(&query(Some("t1"), Some("u1"), 1, None))
            .await
            .unwrap();
        assert_eq!(shape(&p), (vec!["a"], Some("a")));
        let p = store
            .list_keys(&query(None, None, 10, Some("bb")))
            .await
            .unwrap();
        assert_eq!(
            ids(&p),
            ["c", "d", "e", "f"],
            "a cursor need not be an existing id"
        );
        let p = store
            .list_keys(&query(Some("t0"), None, 10, None))
            .await
            .unwrap();
        assert!(p.items.is_empty() && p.next_cursor.is_none());
    }

    #[tokio::test]
    async fn deleting_a_user_takes_its_keys_and_groups_are_independent() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db")).unwrap();
        store.put_user(&user("alice", "t1", &["g1"])).await.unwrap();
        store.put_user(&user("bob", "t2", &[])).await.unwrap();
        store.put_group(&group("g1", "t1")).await.unwrap();
        store.put_group(&group("g2", "t2")).await.unwrap();
        let (k2, k1, k3) = (
            key("k2", "alice", "t1"),
            key("k1", "alice", "t1"),
            key("k3", "bob", "t2"),
        );
        for k in [&k2, &k1, &k3] {
            store.insert_key(k).await.unwrap();
        }

        let users = store.list_users(Some("t1")).await.unwrap();
        assert_eq!(
            users.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
            ["alice"]
        );
        assert_eq!(store.list_users(None).await.unwrap().len(), 2);
        let g2 = store.get_group("g2").await.unwrap().unwrap();
        assert_eq!(store.list_groups(Some("t2")).await.unwrap(), [g2]);
        assert_eq!(store.list_groups(None).await.unwrap().len(), 2);

        let deleted = store.delete_user("alice").await.unwrap().unwrap();
        assert_eq!(deleted.user.id, "alice");
        assert_eq!(
            deleted.keys,
            [k1.clone(), k2.clone()],
            "every owned key, in id order"
        );
        assert_eq!(store.delete_user("alice").await.unwrap(), None);
        assert_eq!(store.load_key(&k1.hash).await.unwrap(), None);
        let left = store.list_keys(&KeyQuery::default()).await.unwrap();
        assert_eq!(left.items, [k3]);

        // Deleting a group leaves the users naming it alone; they stop getting it.
        store.put_user(&user("carol", "t1", &["g1"])).await.unwrap();
        let g1 = store.delete_group("g1").await.unwrap().unwrap();
        assert_eq!(g1.id, "g1");
        assert_eq!(store.delete_group("g1").await.unwrap(), None);
        let carol = store.load_user("carol").await.unwrap().unwrap();
        assert_eq!(carol.user.groups, ["g1"]);
        assert!(carol.groups.is_empty());
        assert_eq!(store.load_user("alice").await.unwrap(), None);
    }

    /// A time with whole milliseconds, as the usage table keeps it.
    fn at(millis: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(millis).unwrap()
    }

    #[tokio::test]
    async fn touches_show_as_last_used_and_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db")).unwrap();
        let (k1, k2) = (key("k1", "alice", "t1"), key("k2", "alice", "t1"));
        store.insert_key(&k1).await.unwrap();
        store.insert_key(&k2).await.unwrap();
        let (t1, t2, t3) = (
            at(1_700_000_000_000),
            at(1_700_000_060_000),
            at(1_700_000_120_000),
        );
        let touch = |id: &str, at| (id.to_owned(), at);

        store.touch_keys(&[]).await.unwrap();
        // Unknown ids are ignored, and do not spoil the rest of the batch.
        store
            .touch_keys(&[touch("nope", t3), touch("k1", t2)])
            .await
            .unwrap();
        let used = |k: Option<KeyRecord>| k.unwrap().last_used_at;
        assert_eq!(used(store.get_key("k1").await.unwrap()), Some(t2));
        assert_eq!(used(store.get_key("k2").await.unwrap()), None);
        assert_eq!(store.get_key("nope").await.unwrap(), None);
        let page = store.list_keys(&KeyQuery::default()).await.unwrap();
        assert_eq!(
            page.items
                .iter()
                .map(|k| k.last_used_at)
                .collect::<Vec<_>>(),
            [Some(t2), None]
        );
        // The key was not created by the touch of an unknown id.
        assert_eq!(ids(&page), ["k1", "k2"]);

        // Older times never replace newer ones, in one batch or across batches.
        store
            .touch_keys(&[touch("k1", t1), touch("k2", t3), touch("k2", t1)])
            .await
            .unwrap();
        assert_eq!(used(store.get_key("k1").await.unwrap()), Some(t2));
        assert_eq!(used(store.get_key("k2").await.unwrap()), Some(t3));
        let by_owner = KeyQuery {
            owner: Some("alice".to_owned()),
            ..KeyQuery::default()
        };
        let page = store.list_keys(&by_owner).await.unwrap();
        assert_eq!(
            page.items
                .iter()
                .map(|k| k.last_used_at)
                .collect::<Vec<_>>(),
            [Some(t2), Some(t3)]
        );

        // The record's own time counts too: the later of the two is shown.
        let mut own = store.get_key("k1").await.unwrap().unwrap();
        own.last_used_at = Some(t3);
        store.update_key(&own).await.unwrap();
        assert_eq!(used(store.get_key("k1").await.unwrap()), Some(t3));
        // An admin update with an older (or no) time does not hide the recorded usage.
        own.last_used_at = None;
        own.name = "renamed".to_owned();
        store.update_key(&own).await.unwrap();
        let k1_now = store.get_key("k1").await.unwrap().unwrap();
        assert_eq!(
            (k1_now.name.as_str(), k1_now.last_used_at),
            ("renamed", Some(t2))
        );

        // Deleting returns the usage and forgets it: a new key under the id starts unused.
        assert_eq!(used(store.delete_key("k1").await.unwrap()), Some(t2));
        store.touch_keys(&[touch("k1", t3)]).await.unwrap();
        store.insert_key(&k1).await.unwrap();
        assert_eq!(used(store.get_key("k1").await.unwrap()), None);

        // Deleting a user takes its keys' usage too.
        store.put_user(&user("alice", "t1", &[])).await.unwrap();
        let deleted = store.delete_user("alice").await.unwrap().unwrap();
        assert_eq!(
            deleted
                .keys
                .iter()
                .map(|k| k.last_used_at)
                .collect::<Vec<_>>(),
            [None, Some(t3)]
        );
        store.insert_key(&k2).await.unwrap();
        assert_eq!(used(store.get_key("k2").await.unwrap()), None);
        let txn = store.db.begin_read().unwrap();
        assert!(txn.open_table(LAST_USED).unwrap().is_empty().unwrap());
    }

    fn audit(tenant: &str, action: &str) -> AuditEntry {
        AuditEntry {
            id: "ignored".to_owned(),
            at: Utc::now(),
            actor: "bootstrap".to_owned(),
            action: action.to_owned(),
            target: "k1".to_owned(),
            tenant: tenant.to_owned(),
        }
    }

    fn actions(page: &AuditPage) -> Vec<&str> {
        page.items.iter().map(|e| e.action.as_str()).collect()
    }

    /// A page as (actions, next cursor), to compare in one assertion.
    fn audit_shape(page: &AuditPage) -> (Vec<&str>, Option<&str>) {
        (actions(page), page.next_cursor.as_deref())
    }

    #[tokio::test]
    async fn audit_lists_newest_first_by_tenant_and_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = EmbeddedStore::open(&path).unwrap();
        let empty = store.list_audit(None, 0, None).await.unwrap();
        assert_eq!(empty, AuditPage::default());

        for (tenant, action) in [
            ("t1", "a1"),
            ("t2", "a2"),
            ("t1", "a3"),
            ("t1", "a4"),
            ("t2", "a5"),
        ] {
            store.append_audit(&audit(tenant, action)).await.unwrap();
        }
        let all = store.list_audit(None, 0, None).await.unwrap();
        assert_eq!(actions(&all), ["a5", "a4", "a3", "a2", "a1"]);
        assert_eq!(all.next_cursor, None);
        // Ids are assigned, distinct, and sort in append order.
        let ids: Vec<&str> = all.items.iter().map(|e| e.id.as_str()).collect();
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
        assert_eq!(all.items[4].id, audit_id(1));
        assert!(all.items.iter().all(|e| e.id != "ignored"));

        // Paging everything, two at a time.
        let p1 = store.list_audit(None, 2, None).await.unwrap();
        assert_eq!(actions(&p1), ["a5", "a4"]);
        assert_eq!(p1.next_cursor.as_deref(), Some(p1.items[1].id.as_str()));
        let p2 = store
            .list_audit(None, 2, p1.next_cursor.as_deref())
            .await
            .unwrap();
        assert_eq!(actions(&p2), ["a3", "a2"]);
        let p3 = store
            .list_audit(None, 2, p2.next_cursor.as_deref())
            .await
            .unwrap();
        assert_eq!(audit_shape(&p3), (vec!["a1"], None));

        // One tenant, with an exact fit on the last page.
        let t1 = store.list_audit(Some("t1"), 2, None).await.unwrap();
        assert_eq!(actions(&t1), ["a4", "a3"]);
        assert!(t1.items.iter().all(|e| e.tenant == "t1"));
        let t1_more = store
            .list_audit(Some("t1"), 1, t1.next_cursor.as_deref())
            .await
            .unwrap();
        assert_eq!(audit_shape(&t1_more), (vec!["a1"], None));
        let t2 = store.list_audit(Some("t2"), 2, None).await.unwrap();
        assert_eq!(audit_shape(&t2), (vec!["a5", "a2"], None));
        // A cursor from the unfiltered list works for a tenant's too.
        let t2_older = store
            .list_audit(Some("t2"), 0, Some(&all.items[1].id))
            .await
            .unwrap();
        assert_eq!(actions(&t2_older), ["a2"]);
        let none = store.list_audit(Some("t9"), 0, None).await.unwrap();
        assert_eq!(none, AuditPage::default());
        let before_first = store.list_audit(None, 0, Some(&audit_id(1))).await.unwrap();
        assert_eq!(before_first, AuditPage::default());

        for bad in ["", "abc", "-1", "+5", "1e3", "99999999999999999999999"] {
            let err = store.list_audit(None, 0, Some(bad)).await.unwrap_err();
            assert!(
                matches!(&err, StoreError::Other(m) if m.contains("invalid cursor")),
                "{bad:?}: {err}"
            );
        }

        // The sequence continues after a reopen.
        drop(store);
        let store = EmbeddedStore::open(&path).unwrap();
        store.append_audit(&audit("t1", "a6")).await.unwrap();
        let newest = store.list_audit(None, 1, None).await.unwrap();
        assert_eq!(newest.items[0].id, audit_id(6));
        assert_eq!(newest.items[0].action, "a6");
    }

    #[tokio::test]
    async fn audit_drops_the_oldest_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db")).unwrap();
        for i in 1..=7 {
            let tenant = if i % 2 == 0 { "even" } else { "odd" };
            store
                .append_audit_bounded(&audit(tenant, &format!("a{i}")), 4)
                .await
                .unwrap();
        }
        let all = store.list_audit(None, 0, None).await.unwrap();
        assert_eq!(actions(&all), ["a7", "a6", "a5", "a4"]);
        assert_eq!(all.items[0].id, audit_id(7), "ids keep counting");
        // The tenant index lost the dropped entries too.
        let odd = store.list_audit(Some("odd"), 0, None).await.unwrap();
        assert_eq!(actions(&odd), ["a7", "a5"]);
        let txn = store.db.begin_read().unwrap();
        assert_eq!(txn.open_table(AUDIT_TENANTS).unwrap().len().unwrap(), 4);
        drop(txn);

        // A lower bound trims several at once; the new entry always stays.
        store
            .append_audit_bounded(&audit("odd", "a8"), 0)
            .await
            .unwrap();
        let all = store.list_audit(None, 0, None).await.unwrap();
        assert_eq!(actions(&all), ["a8"]);
        assert_eq!(all.items[0].id, audit_id(8));
        assert!(store
            .list_audit(Some("even"), 0, None)
            .await
            .unwrap()
            .items
            .is_empty());
    }

    #[test]
    fn a_file_in_use_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _first = EmbeddedStore::open(&path).unwrap();
        let Err(err) = EmbeddedStore::open(&path) else {
            panic!("a second open of the same file succeeded");
        };
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("locked"),
            "{text}"
        );
    }
}
