//! The two store backends a test can run keygate on.

use std::sync::Arc;

use keygate::store::embedded::EmbeddedStore;
use keygate::store::redis::RedisStore;
use keygate::store::Store;

use super::redis::RedisServer;

/// The Redis key prefix tests use, so fixtures written directly land where keygate reads.
pub const TEST_REDIS_PREFIX: &str = "kgtest:";

/// Where the gateway under test keeps its keys.
pub enum Backend {
    Embedded(tempfile::TempDir),
    Redis(RedisServer),
}

impl Backend {
    pub fn embedded() -> Self {
        Backend::Embedded(tempfile::tempdir().unwrap())
    }

    pub fn redis() -> Self {
        Backend::Redis(RedisServer::start())
    }

    pub fn store_yaml(&self) -> String {
        match self {
            Backend::Embedded(dir) => format!(
                "store: {{ backend: embedded, embedded: {{ path: '{}' }} }}\n",
                dir.path().join("keygate.db").display()
            ),
            Backend::Redis(server) => format!(
                "store: {{ backend: redis, redis: {{ url: '{}', key_prefix: '{TEST_REDIS_PREFIX}' }} }}\n",
                server.url
            ),
        }
    }

    /// A store client for fixtures. The embedded file is locked while keygate runs, so
    /// embedded fixtures are written before it starts and the handle dropped.
    pub async fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Embedded(dir) => {
                Arc::new(EmbeddedStore::open(&dir.path().join("keygate.db")).unwrap())
            }
            Backend::Redis(server) => Arc::new(
                RedisStore::connect(&server.url, TEST_REDIS_PREFIX)
                    .await
                    .unwrap(),
            ),
        }
    }
}
