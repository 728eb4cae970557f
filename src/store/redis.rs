//! The Redis backend.
//!
//! Layout: every key name starts with the configured prefix in braces (`{keygate:}key:<hash>`),
//! a Redis Cluster hash tag, so all of keygate's data shares one slot. That keeps each
//! multi-key operation one atomic Lua script (one round trip for a cache miss) on a single
//! server, behind Sentinel, and on a cluster alike (see [`conn`] and docs/redis.md). Every
//! script declares at least one key so a cluster routes it to the node of that slot; the
//! other names a script builds carry the same tag, so they are on that node too.
//!
//! | key                       | type | holds                                  |
//! |---------------------------|------|----------------------------------------|
//! | `{p}key:<sha256 hex>`     | str  | KeyRecord JSON                         |
//! | `{p}keyid:<id>`           | str  | the key's sha256 hex                   |
//! | `{p}user:<id>`            | str  | User JSON                              |
//! | `{p}group:<id>`           | str  | Group JSON                             |
//! | `{p}keys`, `{p}owner-keys:<user>`, `{p}tenant-keys:<tenant>` | zset | key ids (score 0, lex order) |
//! | `{p}users`, `{p}groups`   | zset | ids                                    |
//! | `{p}last-used`            | hash | key id → unix ms of last use (batched) |
//! | `{p}audit`                | stream | audit entries, capped                |

mod conn;
mod pubsub;
mod sentinel;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

pub use conn::{is_outage, RedisConn};
pub use pubsub::{Messages, Subscriber};
pub use sentinel::SentinelConn;

use super::{
    decode, encode, AuditEntry, AuditPage, DeletedUser, Group, KeyBundle, KeyPage, KeyQuery,
    KeyRecord, Store, StoreError, User, UserBundle, AUDIT_MAX_ENTRIES,
};
use crate::auth::key::KeyHash;
use crate::config::RedisTarget;

const DEFAULT_PAGE: usize = 100;

/// Returns `[key, user?, group…]` JSON for a key hash, or nil.
const LOAD_KEY_LUA: &str = r#"
local k = redis.call('GET', KEYS[1])
if not k then return nil end
local owner = cjson.decode(k).owner
local out = {k}
local u = redis.call('GET', ARGV[1] .. 'user:' .. owner)
if not u then return out end
table.insert(out, u)
for _, g in ipairs(cjson.decode(u).groups or {}) do
  local gj = redis.call('GET', ARGV[1] .. 'group:' .. g)
  if gj then table.insert(out, gj) end
end
return out
"#;

/// KEYS: user. ARGV: tag. Returns `[user, group…]` JSON, or nil.
const LOAD_USER_LUA: &str = r#"
local u = redis.call('GET', KEYS[1])
if not u then return nil end
local out = {u}
for _, g in ipairs(cjson.decode(u).groups or {}) do
  local gj = redis.call('GET', ARGV[1] .. 'group:' .. g)
  if gj then table.insert(out, gj) end
end
return out
"#;

/// KEYS: key, keyid, keys, owner-keys, tenant-keys. ARGV: json, hash hex, id.
const INSERT_KEY_LUA: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 'id' end
if redis.call('EXISTS', KEYS[1]) == 1 then return 'hash' end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
redis.call('ZADD', KEYS[4], 0, ARGV[3])
redis.call('ZADD', KEYS[5], 0, ARGV[3])
return 'ok'
"#;

/// KEYS: keyid. ARGV: tag, id, hash hex, json, owner, tenant.
const UPDATE_KEY_LUA: &str = r#"
local p, id = ARGV[1], ARGV[2]
local hex = redis.call('GET', KEYS[1])
if not hex then return 'missing' end
if hex ~= ARGV[3] then return 'hash' end
local old = redis.call('GET', p .. 'key:' .. hex)
if old then
  local rec = cjson.decode(old)
  if rec.owner ~= ARGV[5] then
    redis.call('ZREM', p .. 'owner-keys:' .. rec.owner, id)
    redis.call('ZADD', p .. 'owner-keys:' .. ARGV[5], 0, id)
  end
  if rec.tenant ~= ARGV[6] then
    redis.call('ZREM', p .. 'tenant-keys:' .. rec.tenant, id)
    redis.call('ZADD', p .. 'tenant-keys:' .. ARGV[6], 0, id)
  end
end
redis.call('SET', p .. 'key:' .. hex, ARGV[4])
return 'ok'
"#;

/// Shared by key and user deletion: removes one key id and its indexes, returns its JSON.
const DELETE_KEY_FN: &str = r#"
local function delete_key(p, id)
  local hex = redis.call('GET', p .. 'keyid:' .. id)
  redis.call('DEL', p .. 'keyid:' .. id)
  redis.call('ZREM', p .. 'keys', id)
  redis.call('HDEL', p .. 'last-used', id)
  if not hex then return nil end
  local k = redis.call('GET', p .. 'key:' .. hex)
  redis.call('DEL', p .. 'key:' .. hex)
  if k then
    local rec = cjson.decode(k)
    redis.call('ZREM', p .. 'owner-keys:' .. rec.owner, id)
    redis.call('ZREM', p .. 'tenant-keys:' .. rec.tenant, id)
  end
  return k
end
"#;

/// KEYS: keyid (for routing). ARGV: tag, id.
const DELETE_KEY_LUA: &str = r#"
local k = delete_key(ARGV[1], ARGV[2])
if not k then return nil end
return k
"#;

/// KEYS: user. ARGV: tag, user id. Returns `[user, key…]` JSON, or nil.
const DELETE_USER_LUA: &str = r#"
local p, uid = ARGV[1], ARGV[2]
local u = redis.call('GET', KEYS[1])
if not u then return nil end
local out = {u}
for _, id in ipairs(redis.call('ZRANGE', p .. 'owner-keys:' .. uid, 0, -1)) do
  local k = delete_key(p, id)
  if k then table.insert(out, k) end
end
redis.call('DEL', p .. 'owner-keys:' .. uid, KEYS[1])
redis.call('ZREM', p .. 'users', uid)
return out
"#;

/// KEYS: group. ARGV: tag, group id. Returns the group JSON, or nil.
const DELETE_GROUP_LUA: &str = r#"
local g = redis.call('GET', KEYS[1])
if not g then return nil end
redis.call('DEL', KEYS[1])
redis.call('ZREM', ARGV[1] .. 'groups', ARGV[2])
return g
"#;

/// KEYS: last-used hash. ARGV: tag, then id/ms pairs. Keeps the newest time; skips
/// ids that are not (or no longer) keys.
const TOUCH_KEYS_LUA: &str = r#"
local p = ARGV[1]
for i = 2, #ARGV, 2 do
  local id, ms = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('EXISTS', p .. 'keyid:' .. id) == 1 then
    local old = tonumber(redis.call('HGET', KEYS[1], id) or '0')
    if ms > old then redis.call('HSET', KEYS[1], id, ms) end
  end
end
return 'ok'
"#;

struct Scripts {
    load_key: Script,
    load_user: Script,
    insert_key: Script,
    update_key: Script,
    delete_key: Script,
    delete_user: Script,
    delete_group: Script,
    touch_keys: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            load_key: Script::new(LOAD_KEY_LUA),
            load_user: Script::new(LOAD_USER_LUA),
            insert_key: Script::new(INSERT_KEY_LUA),
            update_key: Script::new(UPDATE_KEY_LUA),
            delete_key: Script::new(&format!("{DELETE_KEY_FN}{DELETE_KEY_LUA}")),
            delete_user: Script::new(&format!("{DELETE_KEY_FN}{DELETE_USER_LUA}")),
            delete_group: Script::new(DELETE_GROUP_LUA),
            touch_keys: Script::new(TOUCH_KEYS_LUA),
        }
    }
}

pub struct RedisStore {
    conn: RedisConn,
    /// `{<key_prefix>}`: the hash tag every key name starts with.
    tag: String,
    scripts: Scripts,
}

impl RedisStore {
    /// A single server at `url` (the standalone mode; used by tools and tests).
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self, StoreError> {
        Self::open(&RedisTarget::standalone(url), key_prefix).await
    }

    /// Connects lazily: keygate starts (and serves cached keys) even while Redis is down;
    /// the connection reconnects by itself (see [`RedisConn`]).
    pub async fn open(target: &RedisTarget, key_prefix: &str) -> Result<Self, StoreError> {
        let tag = format!("{{{key_prefix}}}");
        let conn = RedisConn::open(target, &tag)
            .map_err(|e| StoreError::Other(format!("store.redis is not usable: {e}")))?;
        Ok(Self {
            conn,
            tag,
            scripts: Scripts::new(),
        })
    }

    fn name(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.tag)
    }

    fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Key records for ids, in the given order, skipping ids whose record vanished.
    async fn keys_by_id(&self, ids: &[String]) -> Result<Vec<KeyRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let id_names: Vec<String> = ids.iter().map(|id| self.name("keyid", id)).collect();
        let hashes: Vec<Option<String>> = conn.mget(&id_names).await.map_err(map_err)?;
        let key_names: Vec<String> = hashes
            .iter()
            .flatten()
            .map(|h| self.name("key", h))
            .collect();
        if key_names.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<Option<Vec<u8>>> = conn.mget(&key_names).await.map_err(map_err)?;
        let mut keys = records
            .iter()
            .flatten()
            .map(|json| decode("key", json))
            .collect::<Result<Vec<KeyRecord>, _>>()?;
        self.merge_last_used(&mut keys).await?;
        Ok(keys)
    }

    /// Fills `last_used_at` from the separate usage hash (see `touch_keys`).
    async fn merge_last_used(&self, keys: &mut [KeyRecord]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        let used: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(format!("{}last-used", self.tag))
            .arg(&ids)
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        for (key, ms) in keys.iter_mut().zip(used) {
            let touched = ms.and_then(chrono::DateTime::from_timestamp_millis);
            key.last_used_at = key.last_used_at.max(touched);
        }
        Ok(())
    }

    async fn all_of<T: serde::de::DeserializeOwned>(
        &self,
        index: &str,
        kind: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut conn = self.conn();
        let ids: Vec<String> = conn
            .zrange(format!("{}{index}", self.tag), 0, -1)
            .await
            .map_err(map_err)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = ids.iter().map(|id| self.name(kind, id)).collect();
        let values: Vec<Option<Vec<u8>>> = conn.mget(&names).await.map_err(map_err)?;
        values
            .iter()
            .flatten()
            .map(|json| decode(kind, json))
            .collect()
    }

    async fn put_json<T: serde::Serialize>(
        &self,
        index: &str,
        kind: &str,
        id: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let json = encode(value)?;
        redis::pipe()
            .atomic()
            .set(self.name(kind, id), json)
            .ignore()
            .zadd(format!("{}{index}", self.tag), id, 0)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(map_err)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        let json: Option<Vec<u8>> = self
            .conn()
            .get(self.name(kind, id))
            .await
            .map_err(map_err)?;
        json.map(|j| decode(kind, &j)).transpose()
    }
}

/// Connection trouble (a node down, a failover under way) is an outage: 503 for uncached
/// keys. Anything Redis itself said about the command is not.
fn map_err(e: redis::RedisError) -> StoreError {
    if conn::is_outage(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Other(e.to_string())
    }
}

/// Decodes `[user, group…]` JSON values.
fn user_bundle(values: &[Vec<u8>]) -> Result<Option<UserBundle>, StoreError> {
    let Some((user, groups)) = values.split_first() else {
        return Ok(None);
    };
    Ok(Some(UserBundle {
        user: decode("user", user)?,
        groups: groups
            .iter()
            .map(|g| decode("group", g))
            .collect::<Result<_, _>>()?,
    }))
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.conn().ping().await.map_err(map_err)
    }

    async fn load_key(&self, hash: &KeyHash) -> Result<Option<KeyBundle>, StoreError> {
        let values: Option<Vec<Vec<u8>>> = self
            .scripts
            .load_key
            .key(self.name("key", &hash.to_hex()))
            .arg(&self.tag)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        let Some(values) = values else {
            return Ok(None);
        };
        let Some((key, owner)) = values.split_first() else {
            return Ok(None);
        };
        Ok(Some(KeyBundle {
            key: decode("key", key)?,
            owner: user_bundle(owner)?,
        }))
    }

    async fn load_user(&self, id: &str) -> Result<Option<UserBundle>, StoreError> {
        let values: Option<Vec<Vec<u8>>> = self
            .scripts
            .load_user
            .key(self.name("user", id))
            .arg(&self.tag)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        match values {
            Some(values) => user_bundle(&values),
            None => Ok(None),
        }
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let hex = key.hash.to_hex();
        let outcome: String = self
            .scripts
            .insert_key
            .key(self.name("key", &hex))
            .key(self.name("keyid", &key.id))
            .key(format!("{}keys", self.tag))
            .key(self.name("owner-keys", &key.owner))
            .key(self.name("tenant-keys", &key.tenant))
            .arg(encode(key)?)
            .arg(&hex)
            .arg(&key.id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        match outcome.as_str() {
            "ok" => Ok(()),
            "id" => Err(StoreError::Conflict(format!("key id {}", key.id))),
            _ => Err(StoreError::Conflict("a key with the same secret".into())),
        }
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.keys_by_id(&[id.to_owned()]).await?.pop())
    }

    async fn update_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let outcome: String = self
            .scripts
            .update_key
            .key(self.name("keyid", &key.id))
            .arg(&self.tag)
            .arg(&key.id)
            .arg(key.hash.to_hex())
            .arg(encode(key)?)
            .arg(&key.owner)
            .arg(&key.tenant)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        match outcome.as_str() {
            "ok" => Ok(()),
            "missing" => Err(StoreError::NotFound(format!("key {}", key.id))),
            _ => Err(StoreError::Conflict(format!(
                "key {} has a different secret",
                key.id
            ))),
        }
    }

    async fn delete_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let json: Option<Vec<u8>> = self
            .scripts
            .delete_key
            .key(self.name("keyid", id))
            .arg(&self.tag)
            .arg(id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        json.map(|j| decode("key", &j)).transpose()
    }

    async fn list_keys(&self, query: &KeyQuery) -> Result<KeyPage, StoreError> {
        let limit = if query.limit == 0 {
            DEFAULT_PAGE
        } else {
            query.limit
        };
        // Walk the narrowest index; the other filter (if any) is applied to what it yields.
        let index = match (&query.owner, &query.tenant) {
            (Some(owner), _) => self.name("owner-keys", owner),
            (None, Some(tenant)) => self.name("tenant-keys", tenant),
            (None, None) => format!("{}keys", self.tag),
        };
        let mut items = Vec::with_capacity(limit + 1);
        let mut after = query.cursor.clone();
        loop {
            let min = after.as_ref().map_or("-".to_owned(), |c| format!("({c}"));
            let batch = limit + 1 - items.len();
            let ids: Vec<String> = self
                .conn()
                .zrangebylex_limit(&index, min, "+", 0, batch as isize)
                .await
                .map_err(map_err)?;
            let exhausted = ids.len() < batch;
            after = ids.last().cloned();
            items.extend(
                self.keys_by_id(&ids)
                    .await?
                    .into_iter()
                    .filter(|k| query.tenant.as_ref().is_none_or(|t| &k.tenant == t))
                    .filter(|k| query.owner.as_ref().is_none_or(|o| &k.owner == o)),
            );
            if exhausted || items.len() > limit {
                break;
            }
        }
        let more = items.len() > limit;
        items.truncate(limit);
        Ok(KeyPage {
            next_cursor: if more {
                items.last().map(|k| k.id.clone())
            } else {
                None
            },
            items,
        })
    }

    async fn put_user(&self, user: &User) -> Result<(), StoreError> {
        self.put_json("users", "user", &user.id, user).await
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.get_json("user", id).await
    }

    async fn list_users(&self, tenant: Option<&str>) -> Result<Vec<User>, StoreError> {
        let mut users: Vec<User> = self.all_of("users", "user").await?;
        users.retain(|u| tenant.is_none_or(|t| u.tenant == t));
        Ok(users)
    }

    async fn delete_user(&self, id: &str) -> Result<Option<DeletedUser>, StoreError> {
        let values: Option<Vec<Vec<u8>>> = self
            .scripts
            .delete_user
            .key(self.name("user", id))
            .arg(&self.tag)
            .arg(id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        let Some(values) = values else {
            return Ok(None);
        };
        let Some((user, keys)) = values.split_first() else {
            return Ok(None);
        };
        Ok(Some(DeletedUser {
            user: decode("user", user)?,
            keys: keys
                .iter()
                .map(|k| decode("key", k))
                .collect::<Result<_, _>>()?,
        }))
    }

    async fn put_group(&self, group: &Group) -> Result<(), StoreError> {
        self.put_json("groups", "group", &group.id, group).await
    }

    async fn get_group(&self, id: &str) -> Result<Option<Group>, StoreError> {
        self.get_json("group", id).await
    }

    async fn list_groups(&self, tenant: Option<&str>) -> Result<Vec<Group>, StoreError> {
        let mut groups: Vec<Group> = self.all_of("groups", "group").await?;
        groups.retain(|g| tenant.is_none_or(|t| g.tenant == t));
        Ok(groups)
    }

    async fn delete_group(&self, id: &str) -> Result<Option<Group>, StoreError> {
        let json: Option<Vec<u8>> = self
            .scripts
            .delete_group
            .key(self.name("group", id))
            .arg(&self.tag)
            .arg(id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        json.map(|j| decode("group", &j)).transpose()
    }

    async fn touch_keys(
        &self,
        used: &[(String, chrono::DateTime<chrono::Utc>)],
    ) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let mut call = self
            .scripts
            .touch_keys
            .key(format!("{}last-used", self.tag));
        call.arg(&self.tag);
        for (id, at) in used {
            call.arg(id).arg(at.timestamp_millis());
        }
        call.invoke_async::<String>(&mut self.conn())
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        redis::cmd("XADD")
            .arg(format!("{}audit", self.tag))
            .arg("MAXLEN")
            .arg("~")
            .arg(AUDIT_MAX_ENTRIES)
            .arg("*")
            .arg("entry")
            .arg(encode(entry)?)
            .query_async::<String>(&mut self.conn())
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn list_audit(
        &self,
        tenant: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<AuditPage, StoreError> {
        let limit = if limit == 0 { DEFAULT_PAGE } else { limit };
        if let Some(c) = cursor {
            // Stream ids are `<ms>-<seq>`; refuse anything else before Redis does, vaguely.
            let valid = c.split_once('-').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.bytes().chain(b.bytes()).all(|x| x.is_ascii_digit())
            });
            if !valid {
                return Err(StoreError::Other(format!("invalid cursor `{c}`")));
            }
        }
        let mut items = Vec::with_capacity(limit + 1);
        let mut before = cursor.map_or("+".to_owned(), |c| format!("({c}"));
        loop {
            let batch = (limit + 1 - items.len()).max(16);
            let rows: Vec<(String, Vec<(String, Vec<u8>)>)> = redis::cmd("XREVRANGE")
                .arg(format!("{}audit", self.tag))
                .arg(&before)
                .arg("-")
                .arg("COUNT")
                .arg(batch)
                .query_async(&mut self.conn())
                .await
                .map_err(map_err)?;
            let exhausted = rows.len() < batch;
            if let Some((last, _)) = rows.last() {
                before = format!("({last}");
            }
            for (id, fields) in rows {
                let Some((_, json)) = fields.into_iter().find(|(f, _)| f == "entry") else {
                    continue;
                };
                let mut entry: AuditEntry = decode("audit entry", &json)?;
                entry.id = id;
                if tenant.is_none_or(|t| entry.tenant == t) {
                    items.push(entry);
                }
            }
            if exhausted || items.len() > limit {
                break;
            }
        }
        let more = items.len() > limit;
        items.truncate(limit);
        Ok(AuditPage {
            next_cursor: if more {
                items.last().map(|e| e.id.clone())
            } else {
                None
            },
            items,
        })
    }
}
