//! The embedded backend: one redb file, for a single instance that needs no Redis.
//!
//! Every record is stored as JSON (the same encoding as the Redis backend, so a dump from one
//! reads in the other). Each trait method is one redb transaction: writes commit with redb's
//! default durability (fsync before `commit` returns), so a write that answered `Ok` survives a
//! crash, and a write that fails leaves nothing behind (the transaction is dropped, i.e.
//! aborted). redb is synchronous, so every transaction runs on tokio's blocking pool.
//!
//! Layout:
//! - `keys`: SHA-256 of the secret (32 bytes) → key JSON — the data-plane lookup;
//! - `key_ids`: key id → hash, so admin calls by id find the record;
//! - `users`, `groups`: id → JSON;
//! - `owner_keys`, `tenant_keys`: `(owner | tenant, key id)` → `()`. A tuple key sorts by its
//!   first element, then by the second, so one tenant's (or owner's) keys are a contiguous run
//!   in id order, and a page after a cursor is a single range scan starting at
//!   `(tenant, cursor)`.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;

use super::{
    decode, encode, DeletedUser, Group, KeyBundle, KeyPage, KeyQuery, KeyRecord, Store, StoreError,
    User, UserBundle,
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
        Ok(!matches || pager.offer(key))
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
}

impl<'txn> KeyTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            keys: txn.open_table(KEYS).db()?,
            ids: txn.open_table(KEY_IDS).db()?,
            by_owner: txn.open_table(OWNER_KEYS).db()?,
            by_tenant: txn.open_table(TENANT_KEYS).db()?,
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

    /// Removes key `id`, its record and every index entry; returns the record.
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
        Ok(Some(removed))
    }
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
            key_by_id(&ids, &keys, &id)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn user(id: &str, tenant: &str, groups: &[&str]) -> User {
        let now = Utc::now();
        User {
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            name: format!("user {id}"),
            active: true,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            permissions: vec!["read".to_owned()],
            created_at: now,
            updated_at: now,
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

    fn key(id: &str, owner: &str, tenant: &str) -> KeyRecord {
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
