//! keygate: an API-key authentication gateway.
//!
//! The data plane lives in [`proxy`] and [`auth`], keys and users in [`store`], connection handling in [`server`], configuration in
//! [`config`], and the status listener in [`status`]. [`app`] wires them together.

pub mod admin;
pub mod affinity;
pub mod app;
pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod echo;
pub mod events;
pub mod huge_pages;
pub mod limits;
pub mod proxy;
pub mod server;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod usage;
pub mod workers;

#[cfg(test)]
pub(crate) mod test_support {
    use http::header::{HeaderMap, HeaderName, HeaderValue};

    /// A header map from name/value pairs, repeated names appended.
    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// An authenticator taking keys from `X-API-Key`, `X-Alt-Key` and bearer tokens, over
    /// an empty embedded store.
    pub fn authenticator() -> crate::auth::Authenticator {
        let config = crate::config::Config::from_yaml(
            "keys: { headers: [X-API-Key, X-Alt-Key] }\nroutes:\n  - { name: a, upstream: 'http://x', auth: none }\n",
            &|_| None,
        )
        .unwrap();
        let store = std::sync::Arc::new(
            crate::store::embedded::EmbeddedStore::open(
                &tempfile::tempdir().unwrap().keep().join("k.db"),
            )
            .unwrap(),
        );
        let verifier = crate::auth::Verifier::new(store, &config.cache);
        crate::auth::Authenticator::new(&config, std::sync::Arc::new(verifier))
    }
}
