//! One conformance suite for every `Store` backend. Each `check_*` is written once against
//! `&dyn Store`; `conformance!` runs it on a fresh embedded (redb) store, on a fresh Redis
//! store backed by its own real `redis-server`, on a Redis Cluster of three masters, and on
//! a master found through Redis Sentinel, so every backend and every way of reaching Redis
//! is held to exactly the same semantics. Backend-specific behaviour
//! (persistence, outages) follows at the end.

mod common;

use std::any::Any;
use std::collections::HashSet;
use std::slice;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keygate::auth::key::{generate, start_of, KeyHash};
use keygate::config::{RedisNode, RedisTarget, RedisTopology};
use keygate::store::embedded::EmbeddedStore;
use keygate::store::redis::RedisStore;
use keygate::store::{
    AuditEntry, AuditPage, DeletedUser, Group, KeyBundle, KeyPage, KeyQuery, KeyRecord, Store,
    StoreError, User, UserBundle,
};

use common::redis::{RedisCluster, RedisSentinels, RedisServer, SENTINEL_MASTER};

const PREFIX: &str = "keygate:";

// --- fixtures -------------------------------------------------------------------------

/// A store plus whatever must outlive it (the database's directory, the redis server).
/// Fields drop in order: the store closes before its files or server go away.
struct Fixture {
    store: Box<dyn Store>,
    _keep: Box<dyn Any>,
}

fn embedded_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("keygate.db")).expect("open embedded store");
    assert_eq!(store.backend(), "embedded");
    Fixture {
        store: Box::new(store),
        _keep: Box::new(dir),
    }
}

async fn redis_fixture() -> Fixture {
    let server = RedisServer::start();
    let store = connect(&server.url, PREFIX).await;
    assert_eq!(store.backend(), "redis");
    Fixture {
        store: Box::new(store),
        _keep: Box::new(server),
    }
}

/// `RedisStore::connect`, bounded so a hanging connect fails the test instead of the run.
async fn connect(url: &str, prefix: &str) -> RedisStore {
    tokio::time::timeout(Duration::from_secs(10), RedisStore::connect(url, prefix))
        .await
        .expect("RedisStore::connect hung")
        .expect("RedisStore::connect failed")
}

/// A cluster-mode store on `cluster` whose prefix is the check's name: each check's data
/// sits in a slot of its own, so the checks together exercise every master.
async fn cluster_store(cluster: &RedisCluster, check: &str) -> RedisStore {
    let seeds = cluster
        .nodes
        .iter()
        .map(|n| local_node(n.addr().port()))
        .collect();
    let target = RedisTarget {
        topology: RedisTopology::Cluster { seeds },
        ..RedisTarget::standalone(cluster.nodes[0].url.clone())
    };
    open_store(&target, check).await
}

fn local_node(port: u16) -> RedisNode {
    RedisNode {
        host: "127.0.0.1".into(),
        port,
    }
}

/// `RedisStore::open` under the prefix `<check>:`, bounded like [`connect`].
async fn open_store(target: &RedisTarget, check: &str) -> RedisStore {
    let prefix = format!("{check}:");
    tokio::time::timeout(Duration::from_secs(10), RedisStore::open(target, &prefix))
        .await
        .expect("RedisStore::open hung")
        .expect("RedisStore::open failed")
}

/// A sentinel-mode store on `group` whose prefix is the check's name.
async fn sentinel_store(group: &RedisSentinels, check: &str) -> RedisStore {
    let sentinels = group
        .sentinels
        .iter()
        .map(|s| local_node(s.addr().port()))
        .collect();
    let target = RedisTarget {
        topology: RedisTopology::Sentinel {
            master: SENTINEL_MASTER.into(),
            sentinels,
            auth: true,
        },
        ..RedisTarget::standalone(format!("redis://:{SENTINEL_PASSWORD}@{SENTINEL_MASTER}/0"))
    };
    open_store(&target, check).await
}

const SENTINEL_PASSWORD: &str = "conformance-pass";

/// Two tests per check, `embedded::check_x` and `redis::check_x`, each on a fresh store,
/// and `redis_cluster::every_check` and `redis_sentinel::every_check` that run them all on
/// one cluster and one sentinel group (starting those per check would cost more than the
/// checks).
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $check() {
                    let fixture = super::embedded_fixture();
                    super::$check(&*fixture.store).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $check() {
                    let fixture = super::redis_fixture().await;
                    super::$check(&*fixture.store).await;
                }
            )*
        }
        mod redis_cluster {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_check() {
                let cluster = super::RedisCluster::start(3, 0);
                let mut masters = std::collections::HashSet::new();
                $(
                    let name = stringify!($check);
                    masters.insert(cluster.master_of(&format!("{{{name}:}}"), &[]));
                    let store = super::cluster_store(&cluster, name).await;
                    eprintln!("cluster: {name}");
                    super::$check(&store).await;
                )*
                assert_eq!(masters.len(), 3, "the checks' data should land on every master");
            }
        }
        mod redis_sentinel {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_check() {
                let group = super::RedisSentinels::start(super::SENTINEL_PASSWORD);
                $(
                    let name = stringify!($check);
                    let store = super::sentinel_store(&group, name).await;
                    eprintln!("sentinel: {name}");
                    super::$check(&store).await;
                )*
            }
        }
    };
}

conformance!(
    check_ping,
    check_load_unknown_key,
    check_load_key_with_owner_and_groups,
    check_insert_conflicts_change_nothing,
    check_concurrent_inserts_of_one_hash,
    check_get_and_update_key,
    check_delete_key,
    check_list_keys_paging_and_filters,
    check_users,
    check_delete_user_takes_its_keys,
    check_groups,
    check_load_user,
    check_touch_keys,
    check_touch_forgotten_with_its_key,
    check_audit_order_and_filter,
    check_audit_paging,
    check_audit_bad_cursors,
);

// --- record builders ------------------------------------------------------------------

/// A new enabled key with a fresh random secret.
fn key(id: &str, owner: &str, tenant: &str) -> KeyRecord {
    let secret = generate("kg").unwrap();
    let now = Utc::now();
    KeyRecord {
        id: id.to_owned(),
        hash: KeyHash::of(&secret),
        start: start_of(&secret),
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
        created_by: "conformance".to_owned(),
        meta: None,
        rate_limit: None,
    }
}

fn user(id: &str, tenant: &str, groups: &[&str]) -> User {
    let now = Utc::now();
    User {
        id: id.to_owned(),
        tenant: tenant.to_owned(),
        name: format!("User {id}"),
        active: true,
        groups: strings(groups),
        permissions: strings(&["own:read"]),
        created_at: now,
        updated_at: now,
        rate_limit: None,
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

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn ids<'a>(items: impl IntoIterator<Item = &'a KeyRecord>) -> Vec<String> {
    items.into_iter().map(|k| k.id.clone()).collect()
}

fn query(tenant: Option<&str>, owner: Option<&str>, limit: usize) -> KeyQuery {
    KeyQuery {
        tenant: tenant.map(str::to_owned),
        owner: owner.map(str::to_owned),
        limit,
        cursor: None,
    }
}

/// Walks every page of `query` and returns the ids in the order served, checking each page
/// against the paging contract on the way: full pages, a cursor exactly when more follow
/// (so never on the last page, even one that fills `limit` exactly), and the cursor being
/// the page's last id.
async fn walk(store: &dyn Store, mut query: KeyQuery) -> Vec<String> {
    let limit = query.limit;
    let mut seen = Vec::new();
    // A backend that never ends the walk must fail, not hang: no filter here matches more
    // than 25 keys, so a correct walk needs at most 25 / limit + 1 pages.
    for _ in 0..=(25 / limit + 1) {
        let page: KeyPage = store.list_keys(&query).await.unwrap();
        assert!(
            page.items.len() <= limit,
            "page of {} items for limit {limit}",
            page.items.len()
        );
        assert!(
            query.cursor.is_none() || !page.items.is_empty(),
            "next_cursor {:?} led to an empty page",
            query.cursor
        );
        seen.extend(ids(&page.items));
        match page.next_cursor {
            None => return seen,
            Some(cursor) => {
                assert_eq!(
                    page.items.len(),
                    limit,
                    "a short page ({:?}) still has a next_cursor",
                    ids(&page.items)
                );
                assert_eq!(
                    Some(&cursor),
                    seen.last(),
                    "next_cursor is not the last id of the page"
                );
                query.cursor = Some(cursor);
            }
        }
    }
    panic!("paging {query:?} did not end; ids so far: {seen:?}");
}

/// A usage report for `touch_keys`.
fn touch(id: &str, at: DateTime<Utc>) -> (String, DateTime<Utc>) {
    (id.to_owned(), at)
}

/// `last_used_at` in unix milliseconds: both backends keep usage times at that precision.
fn used_ms(key: &KeyRecord) -> Option<i64> {
    key.last_used_at.map(|at| at.timestamp_millis())
}

/// The usage of each key as `get_key` and as every listing that includes it show it; the
/// reads must agree. `None` for a key that `get_key` does not find.
async fn usage(store: &dyn Store, id: &str) -> Option<i64> {
    let key = store.get_key(id).await.unwrap()?;
    let got = used_ms(&key);
    for q in [
        query(None, None, 100),
        query(Some(&key.tenant), None, 100),
        query(None, Some(&key.owner), 100),
    ] {
        let page = store.list_keys(&q).await.unwrap();
        let listed = page.items.iter().find(|k| k.id == id);
        let listed = listed.unwrap_or_else(|| panic!("{id} missing from {q:?}"));
        assert_eq!(
            used_ms(listed),
            got,
            "{id}: list_keys {q:?} and get_key disagree on last_used_at"
        );
    }
    got
}

/// An audit entry as a caller hands it to `append_audit`: with an id of its own, which the
/// store must replace (every entry here carries the same one).
fn audit(i: usize, tenant: &str) -> AuditEntry {
    AuditEntry {
        id: "from-the-caller".to_owned(),
        at: Utc::now(),
        actor: "conformance".to_owned(),
        action: "key.create".to_owned(),
        target: format!("key_{i}"),
        tenant: tenant.to_owned(),
    }
}

/// Appends seven entries over tenants t1 (4) and t2 (3), in order; returns them as appended.
async fn append_seven(store: &dyn Store) -> Vec<AuditEntry> {
    let tenants = ["t1", "t2", "t1", "t1", "t2", "t1", "t2"];
    let mut appended = Vec::new();
    for (i, tenant) in tenants.into_iter().enumerate() {
        let entry = audit(i, tenant);
        store.append_audit(&entry).await.unwrap();
        appended.push(entry);
    }
    appended
}

/// `entries` without their ids, to compare with what was appended.
fn without_ids(entries: &[AuditEntry]) -> Vec<AuditEntry> {
    entries
        .iter()
        .map(|e| AuditEntry {
            id: String::new(),
            ..e.clone()
        })
        .collect()
}

fn audit_ids(entries: &[AuditEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.id.as_str()).collect()
}

/// Walks every page of the audit log like `walk` does for keys, checking the same paging
/// contract, and returns the entries in the order served.
async fn walk_audit(store: &dyn Store, tenant: Option<&str>, limit: usize) -> Vec<AuditEntry> {
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    // No walk here covers more than 10 entries.
    for _ in 0..=(10 / limit + 1) {
        let page: AuditPage = store
            .list_audit(tenant, limit, cursor.as_deref())
            .await
            .unwrap();
        assert!(
            page.items.len() <= limit,
            "page of {} entries for limit {limit}",
            page.items.len()
        );
        assert!(
            cursor.is_none() || !page.items.is_empty(),
            "next_cursor {cursor:?} led to an empty page"
        );
        seen.extend(page.items.iter().cloned());
        match page.next_cursor {
            None => return seen,
            Some(next) => {
                assert_eq!(
                    page.items.len(),
                    limit,
                    "a short page ({:?}) still has a next_cursor",
                    audit_ids(&page.items)
                );
                assert_eq!(
                    Some(next.as_str()),
                    seen.last().map(|e| e.id.as_str()),
                    "next_cursor is not the last id of the page"
                );
                cursor = Some(next);
            }
        }
    }
    panic!("paging the audit log of {tenant:?} did not end; so far: {seen:?}");
}

// --- checks ---------------------------------------------------------------------------

async fn check_ping(store: &dyn Store) {
    store.ping().await.expect("ping");
}

async fn check_load_unknown_key(store: &dyn Store) {
    let unknown = KeyHash::of(&generate("kg").unwrap());
    assert_eq!(store.load_key(&unknown).await.unwrap(), None);
    assert_eq!(store.get_key("key_unknown").await.unwrap(), None);
}

async fn check_load_key_with_owner_and_groups(store: &dyn Store) {
    let k = key("key_a", "alice", "t1");
    store.insert_key(&k).await.unwrap();

    // The owner does not exist (yet): the key loads, ownerless.
    assert_eq!(
        store.load_key(&k.hash).await.unwrap(),
        Some(KeyBundle {
            key: k.clone(),
            owner: None
        })
    );

    // Groups that do not exist are skipped, the rest come in the order the user lists them
    // (g2 before g1 on purpose: not sorted, not insertion order).
    let alice = user("alice", "t1", &["g2", "missing", "g1"]);
    store.put_user(&alice).await.unwrap();
    let bundle = store.load_key(&k.hash).await.unwrap().unwrap();
    assert_eq!(
        bundle.owner,
        Some(UserBundle {
            user: alice.clone(),
            groups: vec![]
        }),
        "no group exists yet"
    );

    let (g1, g2) = (group("g1", "t1"), group("g2", "t1"));
    store.put_group(&g1).await.unwrap();
    store.put_group(&g2).await.unwrap();
    let expected_owner = UserBundle {
        user: alice.clone(),
        groups: vec![g2.clone(), g1.clone()],
    };
    assert_eq!(
        store.load_key(&k.hash).await.unwrap(),
        Some(KeyBundle {
            key: k.clone(),
            owner: Some(expected_owner.clone())
        })
    );
    assert_eq!(
        store.load_user("alice").await.unwrap(),
        Some(expected_owner)
    );
}

async fn check_insert_conflicts_change_nothing(store: &dyn Store) {
    let original = key("key_a", "alice", "t1");
    store.insert_key(&original).await.unwrap();

    // Same id, different secret.
    let same_id = key("key_a", "bob", "t2");
    match store.insert_key(&same_id).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("duplicate id: expected Conflict, got {other:?}"),
    }
    // Different id, same secret.
    let same_hash = KeyRecord {
        hash: original.hash,
        ..key("key_b", "bob", "t2")
    };
    match store.insert_key(&same_hash).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("duplicate hash: expected Conflict, got {other:?}"),
    }

    // Neither refused insert left a trace.
    assert_eq!(
        store.get_key("key_a").await.unwrap(),
        Some(original.clone())
    );
    assert_eq!(store.get_key("key_b").await.unwrap(), None);
    assert_eq!(store.load_key(&same_id.hash).await.unwrap(), None);
    assert_eq!(
        store.load_key(&original.hash).await.unwrap().map(|b| b.key),
        Some(original.clone())
    );
    let all = store.list_keys(&query(None, None, 10)).await.unwrap();
    assert_eq!(ids(&all.items), ["key_a"]);
    for (tenant, owner) in [("t2", "bob"), ("t1", "alice")] {
        let by_owner = store
            .list_keys(&query(None, Some(owner), 10))
            .await
            .unwrap();
        let by_tenant = store
            .list_keys(&query(Some(tenant), None, 10))
            .await
            .unwrap();
        let expected: &[&str] = if owner == "alice" { &["key_a"] } else { &[] };
        assert_eq!(ids(&by_owner.items), expected, "owner {owner}");
        assert_eq!(ids(&by_tenant.items), expected, "tenant {tenant}");
    }
}

/// The uniqueness of a hash must hold under racing writers, not just sequential ones: of
/// many concurrent inserts of one secret under different ids, exactly one wins.
async fn check_concurrent_inserts_of_one_hash(store: &dyn Store) {
    let base = key("key_00", "alice", "t1");
    let records: Vec<KeyRecord> = (0..16)
        .map(|i| KeyRecord {
            id: format!("key_{i:02}"),
            ..base.clone()
        })
        .collect();
    let results = futures_util::future::join_all(records.iter().map(|k| store.insert_key(k))).await;
    let winners: Vec<&str> = records
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(k, _)| k.id.as_str())
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "winners: {winners:?}; results: {results:?}"
    );
    for result in &results {
        assert!(
            matches!(result, Ok(()) | Err(StoreError::Conflict(_))),
            "{result:?}"
        );
    }
    let all = store.list_keys(&query(None, None, 100)).await.unwrap();
    assert_eq!(ids(&all.items), winners);
    let loaded = store.load_key(&base.hash).await.unwrap().unwrap();
    assert_eq!(loaded.key.id, winners[0]);
}

async fn check_get_and_update_key(store: &dyn Store) {
    let k = key("key_a", "alice", "t1");
    store.insert_key(&k).await.unwrap();
    assert_eq!(store.get_key("key_a").await.unwrap(), Some(k.clone()));

    let updated = KeyRecord {
        name: "renamed".to_owned(),
        description: "now with a description".to_owned(),
        enabled: false,
        permissions: Some(strings(&["a:read", "b:*"])),
        expires_at: Some(Utc::now() + chrono::Duration::days(1)),
        meta: Some(serde_json::json!({"team": "infra"})),
        updated_at: Utc::now(),
        ..k.clone()
    };
    store.update_key(&updated).await.unwrap();
    assert_eq!(store.get_key("key_a").await.unwrap(), Some(updated.clone()));
    assert_eq!(
        store.load_key(&k.hash).await.unwrap().map(|b| b.key),
        Some(updated.clone())
    );
    let listed = store.list_keys(&query(None, None, 10)).await.unwrap();
    assert_eq!(listed.items, slice::from_ref(&updated));

    match store.update_key(&key("key_unknown", "alice", "t1")).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("update of an unknown id: expected NotFound, got {other:?}"),
    }
    assert_eq!(store.get_key("key_unknown").await.unwrap(), None);

    // The hash is what the data plane finds a key by; an update cannot swap the secret
    // behind an id (roll creates a new key instead).
    let new_secret = KeyRecord {
        name: "swapped".to_owned(),
        ..key("key_a", "alice", "t1")
    };
    match store.update_key(&new_secret).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("update with a different hash: expected Conflict, got {other:?}"),
    }
    assert_eq!(store.load_key(&new_secret.hash).await.unwrap(), None);
    assert_eq!(store.get_key("key_a").await.unwrap(), Some(updated.clone()));

    // Moving a key to another owner and tenant moves it in the list filters too.
    let moved = KeyRecord {
        owner: "bob".to_owned(),
        tenant: "t2".to_owned(),
        ..updated
    };
    store.update_key(&moved).await.unwrap();
    for (q, want) in [
        (query(None, Some("alice"), 10), &[][..]),
        (query(Some("t1"), None, 10), &[]),
        (query(None, Some("bob"), 10), &["key_a"]),
        (query(Some("t2"), Some("bob"), 10), &["key_a"]),
    ] {
        assert_eq!(
            ids(&store.list_keys(&q).await.unwrap().items),
            want,
            "{q:?}"
        );
    }
    assert_eq!(
        store.load_key(&k.hash).await.unwrap().map(|b| b.key),
        Some(moved)
    );
}

async fn check_delete_key(store: &dyn Store) {
    let doomed = key("key_a", "alice", "t1");
    let kept = key("key_b", "alice", "t1");
    store.insert_key(&doomed).await.unwrap();
    store.insert_key(&kept).await.unwrap();

    assert_eq!(
        store.delete_key("key_a").await.unwrap(),
        Some(doomed.clone())
    );
    assert_eq!(store.get_key("key_a").await.unwrap(), None);
    assert_eq!(store.load_key(&doomed.hash).await.unwrap(), None);
    assert_eq!(store.delete_key("key_a").await.unwrap(), None);
    for q in [
        query(None, None, 10),
        query(Some("t1"), None, 10),
        query(None, Some("alice"), 10),
    ] {
        assert_eq!(
            ids(&store.list_keys(&q).await.unwrap().items),
            ["key_b"],
            "{q:?}"
        );
    }
    assert_eq!(store.get_key("key_b").await.unwrap(), Some(kept));

    // The hash is free again once its key is gone.
    let reused = KeyRecord {
        hash: doomed.hash,
        ..key("key_c", "alice", "t1")
    };
    store.insert_key(&reused).await.unwrap();
    assert_eq!(
        store.load_key(&doomed.hash).await.unwrap().map(|b| b.key),
        Some(reused)
    );
}

async fn check_list_keys_paging_and_filters(store: &dyn Store) {
    // 25 keys over 2 tenants and 3 owners, inserted in a scrambled order so that id order
    // cannot come out of insertion order by accident.
    let tenants = ["t1", "t2"];
    let owners = ["u0", "u1", "u2"];
    let all: Vec<KeyRecord> = (0..25)
        .map(|i| key(&format!("key_{i:02}"), owners[i % 3], tenants[i % 2]))
        .collect();
    for i in 0..25 {
        store.insert_key(&all[(i * 7) % 25]).await.unwrap();
    }

    let expected = |tenant: Option<&str>, owner: Option<&str>| -> Vec<String> {
        ids(all
            .iter()
            .filter(|k| tenant.is_none_or(|t| k.tenant == t) && owner.is_none_or(|o| k.owner == o)))
    };
    let filters = [
        (None, None),
        (Some("t1"), None),
        (Some("t2"), None),
        (None, Some("u0")),
        (None, Some("u1")),
        (None, Some("u2")),
        (Some("t1"), Some("u2")),
        (Some("t2"), Some("u0")),
        (Some("t3"), None),
        (None, Some("nobody")),
        (Some("t1"), Some("nobody")),
    ];
    for (tenant, owner) in filters {
        for limit in [10, 1, 7, 100] {
            let got = walk(store, query(tenant, owner, limit)).await;
            let unique: HashSet<&String> = got.iter().collect();
            assert_eq!(unique.len(), got.len(), "duplicates in {got:?}");
            assert_eq!(
                got,
                expected(tenant, owner),
                "tenant {tenant:?}, owner {owner:?}, limit {limit}"
            );
        }
    }

    // No limit (0) means a default page, which holds all 25 here; not an empty page.
    let unlimited = store.list_keys(&query(None, None, 0)).await.unwrap();
    assert_eq!(unlimited.items, all);
    assert_eq!(unlimited.next_cursor, None);

    // Unfiltered, limit 10: exactly 10 + 10 + 5, with no cursor after the last page.
    let first = store.list_keys(&query(None, None, 10)).await.unwrap();
    assert_eq!(first.items, all[..10]);
    assert_eq!(first.next_cursor.as_deref(), Some("key_09"));
    let last = store
        .list_keys(&KeyQuery {
            cursor: Some("key_19".to_owned()),
            ..query(None, None, 10)
        })
        .await
        .unwrap();
    assert_eq!(last.items, all[20..]);
    assert_eq!(last.next_cursor, None);

    // A cursor is a position, not a reference: paging goes on past a key deleted meanwhile,
    // and past a cursor that never was an id.
    store.delete_key("key_10").await.unwrap().unwrap();
    for (cursor, want) in [
        ("key_10", ["key_11", "key_12", "key_13"]),
        ("key_10x", ["key_11", "key_12", "key_13"]),
    ] {
        let page = store
            .list_keys(&KeyQuery {
                cursor: Some(cursor.to_owned()),
                ..query(None, None, 3)
            })
            .await
            .unwrap();
        assert_eq!(ids(&page.items), want, "after cursor {cursor}");
    }
}

async fn check_users(store: &dyn Store) {
    assert_eq!(store.get_user("carol").await.unwrap(), None);
    assert_eq!(store.list_users(None).await.unwrap(), Vec::<User>::new());

    // Put out of id order to check that listing sorts.
    let carol = user("carol", "t2", &[]);
    let alice = user("alice", "t1", &["g1"]);
    let bob = user("bob", "t1", &[]);
    for u in [&carol, &alice, &bob] {
        store.put_user(u).await.unwrap();
    }
    assert_eq!(store.get_user("alice").await.unwrap(), Some(alice.clone()));

    // Putting again replaces every field, including the tenant.
    let alice2 = User {
        tenant: "t2".to_owned(),
        name: "Alice Replaced".to_owned(),
        active: false,
        groups: strings(&["g2", "g3"]),
        permissions: vec![],
        updated_at: Utc::now(),
        ..alice.clone()
    };
    store.put_user(&alice2).await.unwrap();
    assert_eq!(store.get_user("alice").await.unwrap(), Some(alice2.clone()));

    assert_eq!(
        store.list_users(None).await.unwrap(),
        [alice2.clone(), bob.clone(), carol.clone()]
    );
    // The tenant index follows the replacement: alice moved from t1 to t2.
    assert_eq!(
        store.list_users(Some("t1")).await.unwrap(),
        slice::from_ref(&bob)
    );
    assert_eq!(store.list_users(Some("t2")).await.unwrap(), [alice2, carol]);
    assert_eq!(
        store.list_users(Some("t3")).await.unwrap(),
        Vec::<User>::new()
    );
}

async fn check_delete_user_takes_its_keys(store: &dyn Store) {
    let alice = user("alice", "t1", &[]);
    let bob = user("bob", "t1", &[]);
    store.put_user(&alice).await.unwrap();
    store.put_user(&bob).await.unwrap();
    // Alice's keys interleave with Bob's in id order and are inserted out of order.
    let alice_keys = [
        key("key_05", "alice", "t1"),
        key("key_01", "alice", "t1"),
        key("key_03", "alice", "t1"),
    ];
    let bob_keys = [key("key_02", "bob", "t1"), key("key_04", "bob", "t1")];
    for k in alice_keys.iter().chain(&bob_keys) {
        store.insert_key(k).await.unwrap();
    }

    let mut alice_sorted = alice_keys.to_vec();
    alice_sorted.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        store.delete_user("alice").await.unwrap(),
        Some(DeletedUser {
            user: alice.clone(),
            keys: alice_sorted
        })
    );

    assert_eq!(store.get_user("alice").await.unwrap(), None);
    assert_eq!(store.load_user("alice").await.unwrap(), None);
    for k in &alice_keys {
        assert_eq!(store.get_key(&k.id).await.unwrap(), None, "{}", k.id);
        assert_eq!(store.load_key(&k.hash).await.unwrap(), None, "{}", k.id);
    }
    let listed = store
        .list_keys(&query(None, Some("alice"), 10))
        .await
        .unwrap();
    assert_eq!(listed.items, Vec::<KeyRecord>::new());
    assert_eq!(store.list_users(None).await.unwrap(), slice::from_ref(&bob));

    // Bob and his keys are untouched.
    for k in &bob_keys {
        assert_eq!(store.get_key(&k.id).await.unwrap().as_ref(), Some(k));
        let bundle = store.load_key(&k.hash).await.unwrap().unwrap();
        assert_eq!(bundle.owner.map(|o| o.user), Some(bob.clone()));
    }
    let all = store.list_keys(&query(None, None, 10)).await.unwrap();
    assert_eq!(ids(&all.items), ["key_02", "key_04"]);

    assert_eq!(store.delete_user("alice").await.unwrap(), None);
    assert_eq!(store.delete_user("nobody").await.unwrap(), None);

    // A user without keys deletes with an empty list.
    let dave = user("dave", "t2", &[]);
    store.put_user(&dave).await.unwrap();
    assert_eq!(
        store.delete_user("dave").await.unwrap(),
        Some(DeletedUser {
            user: dave,
            keys: vec![]
        })
    );
}

async fn check_groups(store: &dyn Store) {
    assert_eq!(store.get_group("g1").await.unwrap(), None);
    assert_eq!(store.list_groups(None).await.unwrap(), Vec::<Group>::new());

    let g3 = group("g3", "t2");
    let g1 = group("g1", "t1");
    let g2 = group("g2", "t1");
    for g in [&g3, &g1, &g2] {
        store.put_group(g).await.unwrap();
    }
    assert_eq!(store.get_group("g1").await.unwrap(), Some(g1.clone()));

    let g1b = Group {
        permissions: strings(&["x:read"]),
        updated_at: Utc::now(),
        ..g1.clone()
    };
    store.put_group(&g1b).await.unwrap();
    assert_eq!(store.get_group("g1").await.unwrap(), Some(g1b.clone()));

    assert_eq!(
        store.list_groups(None).await.unwrap(),
        [g1b.clone(), g2.clone(), g3.clone()]
    );
    assert_eq!(
        store.list_groups(Some("t1")).await.unwrap(),
        [g1b.clone(), g2.clone()]
    );
    assert_eq!(
        store.list_groups(Some("t2")).await.unwrap(),
        slice::from_ref(&g3)
    );
    assert_eq!(
        store.list_groups(Some("t9")).await.unwrap(),
        Vec::<Group>::new()
    );

    // Deleting a group removes it from its members' bundles at once.
    let alice = user("alice", "t1", &["g1", "g2"]);
    store.put_user(&alice).await.unwrap();
    let k = key("key_a", "alice", "t1");
    store.insert_key(&k).await.unwrap();
    assert_eq!(
        store.load_user("alice").await.unwrap().unwrap().groups,
        [g1b.clone(), g2.clone()]
    );

    assert_eq!(store.delete_group("g1").await.unwrap(), Some(g1b));
    assert_eq!(store.get_group("g1").await.unwrap(), None);
    assert_eq!(store.delete_group("g1").await.unwrap(), None);
    assert_eq!(store.delete_group("nothing").await.unwrap(), None);
    assert_eq!(
        store.list_groups(None).await.unwrap(),
        [g2.clone(), g3.clone()]
    );
    assert_eq!(
        store.list_groups(Some("t1")).await.unwrap(),
        slice::from_ref(&g2)
    );

    let expected = UserBundle {
        // The user still names g1; the bundle just no longer resolves it.
        user: alice,
        groups: vec![g2],
    };
    assert_eq!(
        store.load_user("alice").await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(
        store.load_key(&k.hash).await.unwrap().and_then(|b| b.owner),
        Some(expected)
    );
}

async fn check_load_user(store: &dyn Store) {
    assert_eq!(store.load_user("nobody").await.unwrap(), None);
    let solo = user("solo", "t1", &[]);
    store.put_user(&solo).await.unwrap();
    assert_eq!(
        store.load_user("solo").await.unwrap(),
        Some(UserBundle {
            user: solo,
            groups: vec![]
        })
    );
}

async fn check_touch_keys(store: &dyn Store) {
    let a = key("key_a", "alice", "t1");
    let b = key("key_b", "alice", "t2");
    let c = key("key_c", "bob", "t1");
    for k in [&a, &b, &c] {
        store.insert_key(k).await.unwrap();
    }
    let now = Utc::now();
    let old = now - chrono::Duration::hours(2);
    let mid = now - chrono::Duration::hours(1);
    let ms = |at: DateTime<Utc>| Some(at.timestamp_millis());
    for id in ["key_a", "key_b", "key_c"] {
        assert_eq!(usage(store, id).await, None, "{id} before any touch");
    }

    store.touch_keys(&[]).await.expect("an empty batch");
    assert_eq!(usage(store, "key_a").await, None);

    // Unknown ids are skipped; the rest of the batch still applies.
    store
        .touch_keys(&[
            touch("key_unknown", now),
            touch("key_a", mid),
            touch("key_zzz", now),
            touch("key_b", old),
        ])
        .await
        .expect("a batch with unknown ids");
    assert_eq!(
        usage(store, "key_a").await,
        ms(mid),
        "key_a after its first touch"
    );
    assert_eq!(
        usage(store, "key_b").await,
        ms(old),
        "key_b after its first touch"
    );
    assert_eq!(usage(store, "key_c").await, None, "key_c was not touched");
    assert_eq!(store.get_key("key_unknown").await.unwrap(), None);

    // An older time never replaces a newer one: not in a later batch, nor within one.
    store.touch_keys(&[touch("key_a", old)]).await.unwrap();
    assert_eq!(
        usage(store, "key_a").await,
        ms(mid),
        "moved back by a later batch"
    );
    store
        .touch_keys(&[touch("key_b", now), touch("key_b", mid)])
        .await
        .unwrap();
    assert_eq!(
        usage(store, "key_b").await,
        ms(now),
        "moved back within a batch"
    );
    // A newer one does.
    store.touch_keys(&[touch("key_a", now)]).await.unwrap();
    assert_eq!(usage(store, "key_a").await, ms(now), "not moved forward");

    // A touch of an id that was no key then is not remembered for a key created later.
    store
        .insert_key(&key("key_unknown", "bob", "t2"))
        .await
        .unwrap();
    assert_eq!(usage(store, "key_unknown").await, None);
}

/// Usage belongs to the key, not to its id: a key deleted (directly or with its owner) and
/// created again under the same id starts unused.
async fn check_touch_forgotten_with_its_key(store: &dyn Store) {
    let bob = user("bob", "t1", &[]);
    store.put_user(&bob).await.unwrap();
    store
        .insert_key(&key("key_a", "alice", "t1"))
        .await
        .unwrap();
    store.insert_key(&key("key_b", "bob", "t1")).await.unwrap();
    let now = Utc::now();
    store
        .touch_keys(&[touch("key_a", now), touch("key_b", now)])
        .await
        .unwrap();
    for id in ["key_a", "key_b"] {
        let got = usage(store, id).await;
        assert_eq!(got, Some(now.timestamp_millis()), "{id} after a touch");
    }

    store.delete_key("key_a").await.unwrap().unwrap();
    store
        .insert_key(&key("key_a", "alice", "t1"))
        .await
        .unwrap();
    assert_eq!(usage(store, "key_a").await, None, "after delete_key");

    store.delete_user("bob").await.unwrap().unwrap();
    store.put_user(&bob).await.unwrap();
    store.insert_key(&key("key_b", "bob", "t1")).await.unwrap();
    assert_eq!(usage(store, "key_b").await, None, "after delete_user");
}

async fn check_audit_order_and_filter(store: &dyn Store) {
    let empty = store.list_audit(None, 10, None).await.unwrap();
    assert_eq!(empty, AuditPage::default());

    let appended = append_seven(store).await;
    let newest_first: Vec<AuditEntry> = appended.iter().rev().cloned().collect();

    let all = store.list_audit(None, 100, None).await.unwrap();
    assert_eq!(all.next_cursor, None);
    assert_eq!(without_ids(&all.items), without_ids(&newest_first));
    // Ids are the store's own: all distinct, none the caller's.
    let ids = audit_ids(&all.items);
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate audit ids: {ids:?}");
    assert!(
        ids.iter()
            .all(|id| !id.is_empty() && *id != "from-the-caller"),
        "the store kept the caller's id: {ids:?}"
    );

    // A tenant's entries are the same entries (ids included), in the same order.
    for tenant in ["t1", "t2", "t3"] {
        let page = store.list_audit(Some(tenant), 100, None).await.unwrap();
        let expected: Vec<AuditEntry> = all
            .items
            .iter()
            .filter(|e| e.tenant == tenant)
            .cloned()
            .collect();
        assert_eq!(page.items, expected, "tenant {tenant}");
        assert_eq!(page.next_cursor, None, "tenant {tenant}");
    }
    assert_eq!(
        store
            .list_audit(Some("t1"), 100, None)
            .await
            .unwrap()
            .items
            .len(),
        4
    );

    // No limit (0) means a default page, which holds all 7 here; not an empty page.
    assert_eq!(store.list_audit(None, 0, None).await.unwrap(), all);
    let t2 = store.list_audit(Some("t2"), 0, None).await.unwrap();
    assert_eq!(audit_ids(&t2.items).len(), 3);
}

async fn check_audit_paging(store: &dyn Store) {
    append_seven(store).await;
    let all = store.list_audit(None, 100, None).await.unwrap().items;
    assert_eq!(all.len(), 7);

    for tenant in [None, Some("t1"), Some("t2"), Some("t3")] {
        let expected: Vec<AuditEntry> = all
            .iter()
            .filter(|e| tenant.is_none_or(|t| e.tenant == t))
            .cloned()
            .collect();
        // 3 and 2 leave a short last page; 1, 4 (t1) and 7 (all) end on a full one.
        for limit in [3, 1, 2, 4, 7, 100] {
            let got = walk_audit(store, tenant, limit).await;
            assert_eq!(got, expected, "tenant {tenant:?}, limit {limit}");
        }
    }

    // Limit 3 over all: 3 + 3 + 1.
    let first = store.list_audit(None, 3, None).await.unwrap();
    assert_eq!(first.items, all[..3]);
    let cursor = first.next_cursor.expect("a cursor after the first page");

    // The cursor is a position: entries appended since do not shift the pages after it.
    store.append_audit(&audit(7, "t1")).await.unwrap();
    let second = store.list_audit(None, 3, Some(&cursor)).await.unwrap();
    assert_eq!(second.items, all[3..6]);
    let cursor = second.next_cursor.expect("a cursor after the second page");
    let third = store.list_audit(None, 3, Some(&cursor)).await.unwrap();
    assert_eq!(third.items, all[6..]);
    assert_eq!(third.next_cursor, None);
    // ...and the new entry is first in a fresh listing.
    let fresh = store.list_audit(None, 100, None).await.unwrap().items;
    assert_eq!(fresh.len(), 8);
    assert_eq!(fresh[0].target, "key_7");
    assert_eq!(fresh[1..], all[..]);

    // A cursor from one tenant's listing is a position in the others' too.
    let t2_first = store.list_audit(Some("t2"), 1, None).await.unwrap();
    let t2_cursor = t2_first.next_cursor.expect("t2 has 3 entries");
    let newest_t2 = all.iter().position(|e| e.tenant == "t2").unwrap();
    let after = store.list_audit(None, 100, Some(&t2_cursor)).await.unwrap();
    assert_eq!(after.items, all[newest_t2 + 1..]);
}

async fn check_audit_bad_cursors(store: &dyn Store) {
    append_seven(store).await;
    for cursor in [
        "garbage",
        "",
        "-",
        "zz-1",
        "1-2-3",
        "from-the-caller",
        "99999999999999999999999-0",
        "99999999999999999999999",
    ] {
        for tenant in [None, Some("t1")] {
            let outcome = store.list_audit(tenant, 3, Some(cursor)).await;
            assert!(
                outcome.is_err(),
                "cursor {cursor:?}, tenant {tenant:?}: expected an error, got {outcome:?}"
            );
        }
    }
}

// --- backend-specific -----------------------------------------------------------------

/// The Redis store holds no state of its own: a second client (here over TCP, to cover
/// `redis://` URLs too) sees the first one's writes, and another key prefix sees none.
#[tokio::test]
async fn redis_data_is_shared_between_clients() {
    let server = RedisServer::start_tcp();
    let first = connect(&server.url, PREFIX).await;
    let alice = user("alice", "t1", &["g1"]);
    let g1 = group("g1", "t1");
    let k = key("key_a", "alice", "t1");
    first.put_user(&alice).await.unwrap();
    first.put_group(&g1).await.unwrap();
    first.insert_key(&k).await.unwrap();

    let second = connect(&server.url, PREFIX).await;
    assert_eq!(
        second.load_key(&k.hash).await.unwrap(),
        Some(KeyBundle {
            key: k.clone(),
            owner: Some(UserBundle {
                user: alice.clone(),
                groups: vec![g1.clone()]
            })
        })
    );
    assert_eq!(second.get_key("key_a").await.unwrap(), Some(k.clone()));
    assert_eq!(second.list_users(None).await.unwrap(), [alice]);
    assert_eq!(second.list_groups(None).await.unwrap(), [g1]);

    // A second writer is visible to the first, too.
    second.delete_key("key_a").await.unwrap().unwrap();
    assert_eq!(first.load_key(&k.hash).await.unwrap(), None);

    let other = connect(&server.url, "other:").await;
    first.insert_key(&k).await.unwrap();
    assert_eq!(other.load_key(&k.hash).await.unwrap(), None);
    assert_eq!(other.list_users(None).await.unwrap(), Vec::<User>::new());
    // Every name lives under the prefix, which the backend may wrap in a Redis Cluster hash
    // tag (`{keygate:}…`) to keep all of its data in one slot.
    let names = server.cli(&["KEYS", "*"]);
    assert!(
        !names.is_empty(),
        "the first client wrote nothing to redis?"
    );
    for name in names.lines() {
        let inside = name.starts_with(PREFIX) || name.starts_with(&format!("{{{PREFIX}}}"));
        assert!(inside, "key {name:?} outside the prefix {PREFIX:?}");
    }
}

/// While the server is down every call fails fast as `Unavailable` (the data plane then
/// answers 503), and the same store object recovers on its own once the server is back.
// Multi-threaded: `RedisServer::restart` blocks its thread while redis starts, and the
// client's reconnection tasks must keep running meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_unavailable_then_recovers() {
    let mut server = RedisServer::start();
    let store = connect(&server.url, PREFIX).await;
    let k = key("key_a", "alice", "t1");
    store.insert_key(&k).await.unwrap();
    assert!(store.load_key(&k.hash).await.unwrap().is_some());

    server.stop();
    let bound = Duration::from_secs(5);
    let outcome = tokio::time::timeout(bound, store.load_key(&k.hash))
        .await
        .unwrap_or_else(|_| panic!("load_key hung for {bound:?} with redis down"));
    match outcome {
        Err(e) => assert!(e.is_unavailable(), "expected Unavailable, got {e:?}"),
        Ok(v) => panic!("load_key answered {v:?} with redis down"),
    }
    let ping = tokio::time::timeout(bound, store.ping())
        .await
        .unwrap_or_else(|_| panic!("ping hung for {bound:?} with redis down"));
    assert!(
        ping.as_ref().is_err_and(StoreError::is_unavailable),
        "ping with redis down: {ping:?}"
    );

    server.restart();
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let ping = tokio::time::timeout(Duration::from_secs(1), store.ping()).await;
        if matches!(ping, Ok(Ok(()))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "store did not reconnect within {bound:?}; last ping: {ping:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The restarted server is empty (nothing persisted): the store works again from scratch.
    assert_eq!(store.load_key(&k.hash).await.unwrap(), None);
    store.insert_key(&k).await.unwrap();
    assert_eq!(
        store.load_key(&k.hash).await.unwrap().map(|b| b.key),
        Some(k)
    );
}

/// The embedded store is durable: what was written is there after closing and reopening.
#[tokio::test]
async fn embedded_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.db");
    let alice = user("alice", "t1", &["g1"]);
    let g1 = group("g1", "t1");
    let kept = key("key_a", "alice", "t1");
    let deleted = key("key_b", "alice", "t1");
    {
        let store = EmbeddedStore::open(&path).unwrap();
        store.put_user(&alice).await.unwrap();
        store.put_group(&g1).await.unwrap();
        store.insert_key(&kept).await.unwrap();
        store.insert_key(&deleted).await.unwrap();
        store.delete_key("key_b").await.unwrap().unwrap();
    }
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(
        store.load_key(&kept.hash).await.unwrap(),
        Some(KeyBundle {
            key: kept.clone(),
            owner: Some(UserBundle {
                user: alice.clone(),
                groups: vec![g1.clone()]
            })
        })
    );
    assert_eq!(store.load_key(&deleted.hash).await.unwrap(), None);
    let listed = store.list_keys(&query(None, None, 10)).await.unwrap();
    assert_eq!(listed.items, [kept]);
    assert_eq!(store.list_users(Some("t1")).await.unwrap(), [alice]);
    assert_eq!(store.list_groups(None).await.unwrap(), [g1]);
}
