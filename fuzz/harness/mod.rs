//! The invariants the fuzz targets check, shared with `tests/fuzz_corpus.rs`, which replays
//! the checked-in seeds and regressions through the same checks on a stable toolchain.
//!
//! Each `check` takes the raw fuzz input and panics when an invariant breaks: that panic is
//! what libFuzzer reports as a crash. What each one checks: docs/fuzzing.md.

pub mod api_key;
pub mod config;
pub mod header_rewrite;

use std::sync::{Arc, OnceLock};

use chrono::Utc;
use keygate::auth::key::{self, KeyHash};
use keygate::auth::{Authenticator, Caller, Verifier};
use keygate::config::raw::{RawConfig, RawRoute};
use keygate::config::{validate, Config, ConfigError};
use keygate::store::embedded::EmbeddedStore;
use keygate::store::{KeyRecord, Store, User};

/// What the checks need from a store, made once per process.
struct Fixture {
    verifier: Arc<Verifier>,
    /// A caller whose key passed every check, as `authenticate` returns it.
    caller: Caller,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        // The store stays open after its directory is removed below (the file is unlinked,
        // not closed), so no temporary directory outlives the process.
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("fuzz.db")).expect("an embedded store"));
        let config = config_from(raw_config()).expect("the default config");
        let verifier = Arc::new(Verifier::new(store.clone(), &config.cache));
        let secret = key::generate("kg").expect("a key");
        let caller = rt.block_on(async {
            let now = Utc::now();
            store
                .put_user(&User {
                    id: "zoë@example".into(),
                    tenant: "acme".into(),
                    name: "Zoë".into(),
                    active: true,
                    groups: Vec::new(),
                    permissions: vec!["orders:read".into(), "orders:write".into()],
                    created_at: now,
                    updated_at: now,
                    rate_limit: None,
                })
                .await
                .expect("put_user");
            store
                .insert_key(&KeyRecord {
                    id: "key_fuzz".into(),
                    hash: KeyHash::of(&secret),
                    start: key::start_of(&secret),
                    // Text a header cannot carry as it is: the value arrives percent-encoded.
                    name: "Zoë's key, \"CI\"\r\n".into(),
                    description: String::new(),
                    owner: "zoë@example".into(),
                    tenant: "acme".into(),
                    enabled: true,
                    created_at: now,
                    updated_at: now,
                    expires_at: None,
                    last_used_at: None,
                    permissions: None,
                    created_by: "fuzz".into(),
                    meta: None,
                    rate_limit: None,
                })
                .await
                .expect("insert_key");
            let principal = verifier
                .verify(&KeyHash::of(&secret))
                .await
                .unwrap_or_else(|r| panic!("the fixture key was refused: {}", r.code()));
            Caller::Key(principal)
        });
        drop(dir);
        Fixture { verifier, caller }
    })
}

/// The caller of a request whose key was accepted.
pub fn key_caller() -> &'static Caller {
    &fixture().caller
}

/// The defaults plus the one route a config needs.
pub fn raw_config() -> RawConfig {
    let mut raw = RawConfig::default();
    raw.routes.push(RawRoute {
        name: "api".into(),
        upstream: "http://127.0.0.1:9000".into(),
        ..RawRoute::default()
    });
    raw
}

/// Validates `raw` as `keygate serve` would, with no environment variables set.
pub fn config_from(raw: RawConfig) -> Result<Config, ConfigError> {
    validate(raw, &|_| None)
}

/// An authenticator for `config`, as the proxy builds one per config (re)load.
pub fn authenticator(config: &Config) -> Authenticator {
    Authenticator::new(config, fixture().verifier.clone())
}
