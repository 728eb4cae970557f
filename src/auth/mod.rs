//! Authentication and authorization of proxied requests.
//!
//! extract the key (headers, bearer) → check its format and checksum → verify it
//! (cache → store) → authorize against the route's `require` → tell the upstream who it is.

pub mod key;
pub mod key_cache;
pub mod permissions;
pub mod verifier;

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::config::{AuthMode, Config};
use crate::proxy::rewrite::HeaderSink;
use crate::proxy::Refusal;
use crate::telemetry;
use key::KeyHash;
pub use verifier::{Principal, Verifier};

/// Who is calling, as far as the upstream is told.
// One per request, on its task's stack: boxing the principal (its key's text is inline, so
// that a hit shares no reference count between cores) would be an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Caller {
    /// `auth: none` route: nothing was checked, nothing is claimed.
    Unchecked,
    /// `auth: optional` route without a key.
    Anonymous,
    Key(Principal),
}

/// What the client presented as its key.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    Nothing,
    One(&'a str),
    /// Two different keys, or a key header that is not text: refused as `invalid_key`.
    Ambiguous,
}

/// The names of the identity headers, made from `identity.header_prefix` once.
pub struct IdentityHeaders {
    pub prefix: String,
    pub key_id: HeaderName,
    pub key_name: HeaderName,
    pub tenant: HeaderName,
    pub user: HeaderName,
    pub groups: HeaderName,
    pub permissions: HeaderName,
    pub anonymous: HeaderName,
}

impl IdentityHeaders {
    pub fn new(prefix: &str) -> Self {
        let name = |suffix: &str| {
            let name = format!("{prefix}{suffix}").to_ascii_lowercase();
            HeaderName::from_bytes(name.as_bytes()).expect("config validation checked the prefix");
            HeaderName::from_static(interned(name))
        };
        Self {
            prefix: prefix.to_owned(),
            key_id: name("Key-Id"),
            key_name: name("Key-Name"),
            tenant: name("Tenant"),
            user: name("User"),
            groups: name("Groups"),
            permissions: name("Permissions"),
            anonymous: name("Anonymous"),
        }
    }

    /// Puts the caller's identity into `sink`; the client's own identity headers are never
    /// forwarded ([`crate::proxy::rewrite::RequestHeaders::emit`]).
    pub fn emit(&self, caller: &Caller, sink: &mut impl HeaderSink) {
        match caller {
            Caller::Unchecked => {}
            Caller::Anonymous => sink.put(&self.anonymous, &HeaderValue::from_static("true")),
            Caller::Key(p) => {
                sink.put_bytes(&self.key_id, p.key.id_header_bytes());
                sink.put_bytes(&self.key_name, p.key.name_header_bytes());
                sink.put(&self.tenant, &p.user().tenant_header);
                sink.put(&self.user, &p.user().user_header);
                sink.put(&self.groups, &p.user().groups_header);
                sink.put(&self.permissions, p.permissions_header());
            }
        }
    }
}

/// `name` for the rest of the process. Identity header names are made static so that adding
/// one to a request copies a pointer: a name made at run time is shared by reference count,
/// and six increments and six decrements per request showed in the profile. Each distinct
/// name is leaked once; a config reload with the same prefix finds the names already there.
fn interned(name: String) -> &'static str {
    static NAMES: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(&known) = names.get(name.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}

/// The authenticate and authorize stages, shared by every route.
pub struct Authenticator {
    verifier: Arc<Verifier>,
    key_prefix: String,
    key_headers: Vec<HeaderName>,
    bearer: bool,
}

impl Authenticator {
    pub fn new(config: &Config, verifier: Arc<Verifier>) -> Self {
        Self {
            verifier,
            key_prefix: config.keys.prefix.clone(),
            key_headers: config.keys.headers.clone(),
            bearer: config.keys.authorization_bearer,
        }
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Decides who the caller is under `mode`. Records the decision metric.
    pub async fn authenticate(
        &self,
        mode: AuthMode,
        headers: &HeaderMap,
    ) -> Result<Caller, Refusal> {
        if mode == AuthMode::None {
            return Ok(Caller::Unchecked);
        }
        let outcome = match self.presented(headers) {
            Presented::Nothing if mode == AuthMode::Optional => Ok(Caller::Anonymous),
            Presented::Nothing => Err(Refusal::MissingKey),
            Presented::Ambiguous => Err(Refusal::InvalidKey),
            Presented::One(secret) => match key::check(secret, &self.key_prefix) {
                // Garbage costs a checksum and nothing else: no cache entry, no store call.
                Err(_) => Err(Refusal::InvalidKey),
                Ok(()) => self
                    .verifier
                    .verify(&KeyHash::of(secret))
                    .await
                    .map(Caller::Key),
            },
        };
        if let Err(refusal) = &outcome {
            telemetry::record_auth_decision(refusal.code());
        }
        outcome
    }

    /// Checks the route's `require` list and records the final decision.
    pub fn authorize(&self, caller: &Caller, require: &[String]) -> Result<(), Refusal> {
        let result = match caller {
            Caller::Unchecked => return Ok(()),
            Caller::Anonymous => {
                telemetry::record_auth_decision("anonymous");
                return Ok(());
            }
            Caller::Key(p) if permissions::satisfies(p.permissions(), require) => Ok(()),
            Caller::Key(_) => Err(Refusal::InsufficientPermissions),
        };
        telemetry::record_auth_decision(match &result {
            Ok(()) => "ok",
            Err(r) => r.code(),
        });
        result
    }

    /// The key(s) in the configured headers and in `Authorization: Bearer`. A bearer token
    /// without our prefix is the upstream's business and is ignored.
    pub fn presented<'a>(&self, headers: &'a HeaderMap) -> Presented<'a> {
        let mut found: Option<&'a str> = None;
        let mut take = |candidate: Option<&'a str>| -> bool {
            match (candidate.map(str::trim), found) {
                (None, _) => false,
                (Some(c), Some(f)) => c != f,
                (Some(c), None) => {
                    found = Some(c);
                    false
                }
            }
        };
        for name in &self.key_headers {
            for value in headers.get_all(name) {
                // A key header that is not text cannot hold a key: refuse, don't ignore.
                let Ok(text) = value.to_str() else {
                    return Presented::Ambiguous;
                };
                if take(Some(text)) {
                    return Presented::Ambiguous;
                }
            }
        }
        if self.bearer {
            for value in headers.get_all(AUTHORIZATION) {
                let candidate = match self.bearer_key(value) {
                    Bearer::Ours(key) => Some(key),
                    // Ours, but not text: refused like a key header that is not text.
                    Bearer::NotText => return Presented::Ambiguous,
                    Bearer::Foreign => None,
                };
                if take(candidate) {
                    return Presented::Ambiguous;
                }
            }
        }
        match found {
            Some(secret) => Presented::One(secret),
            None => Presented::Nothing,
        }
    }

    /// Whether this header carries the key: every configured key header, and an
    /// `Authorization` value that holds one of our keys (a foreign bearer token is the
    /// upstream's business). Such headers never reach the upstream.
    pub fn is_credential(&self, name: &HeaderName, value: &HeaderValue) -> bool {
        self.key_headers.contains(name)
            || (self.bearer
                && name == AUTHORIZATION
                && !matches!(self.bearer_key(value), Bearer::Foreign))
    }

    /// Removes every header [`Self::is_credential`] picks, in place.
    pub fn strip_credentials(&self, headers: &mut HeaderMap) {
        if !headers.iter().any(|(n, v)| self.is_credential(n, v)) {
            return;
        }
        let mut kept = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers.iter() {
            if !self.is_credential(name, value) {
                kept.append(name.clone(), value.clone());
            }
        }
        *headers = kept;
    }

    /// Reads an `Authorization` value as bytes, so that a value that is not text (obs-text)
    /// or a tab after the scheme cannot hide one of our keys from the checks and the removal
    /// (both found by fuzzing: docs/fuzzing.md, F2).
    fn bearer_key<'a>(&self, value: &'a HeaderValue) -> Bearer<'a> {
        let bytes = value.as_bytes().trim_ascii();
        let Some(split) = bytes.iter().position(|&b| b == b' ' || b == b'\t') else {
            return Bearer::Foreign;
        };
        let (scheme, token) = (&bytes[..split], bytes[split..].trim_ascii());
        let prefix = self.key_prefix.as_bytes();
        let ours = scheme.eq_ignore_ascii_case(b"bearer")
            && token.len() > prefix.len()
            && token.starts_with(prefix)
            && token[prefix.len()] == b'_';
        match (ours, value.to_str()) {
            (false, _) => Bearer::Foreign,
            (true, Err(_)) => Bearer::NotText,
            (true, Ok(_)) => match std::str::from_utf8(token) {
                Ok(key) => Bearer::Ours(key),
                Err(_) => Bearer::NotText,
            },
        }
    }
}

/// What an `Authorization` value holds, as far as keygate is concerned.
enum Bearer<'a> {
    /// `Bearer <one of our keys>`.
    Ours(&'a str),
    /// `Bearer` with our prefix, in a value that is not text.
    NotText,
    /// Anything else: the upstream's business.
    Foreign,
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::{authenticator, headers};

    #[test]
    fn finds_the_key_in_any_configured_place() {
        let a = authenticator();
        assert_eq!(
            a.presented(&headers(&[("x-api-key", "kg_one")])),
            Presented::One("kg_one")
        );
        assert_eq!(
            a.presented(&headers(&[("x-alt-key", "kg_one")])),
            Presented::One("kg_one")
        );
        assert_eq!(
            a.presented(&headers(&[("authorization", "Bearer kg_one")])),
            Presented::One("kg_one")
        );
        assert_eq!(
            a.presented(&headers(&[("authorization", "bearer  kg_one ")])),
            Presented::One("kg_one")
        );
        assert_eq!(a.presented(&headers(&[])), Presented::Nothing);
    }

    #[test]
    fn the_same_key_twice_is_fine_two_different_keys_are_not() {
        let a = authenticator();
        let same = headers(&[("x-api-key", "kg_one"), ("authorization", "Bearer kg_one")]);
        assert_eq!(a.presented(&same), Presented::One("kg_one"));
        let two = headers(&[("x-api-key", "kg_one"), ("authorization", "Bearer kg_two")]);
        assert_eq!(a.presented(&two), Presented::Ambiguous);
        let dup = headers(&[("x-api-key", "kg_one"), ("x-api-key", "kg_two")]);
        assert_eq!(a.presented(&dup), Presented::Ambiguous);
    }

    #[test]
    fn foreign_bearer_tokens_are_left_for_the_upstream() {
        let a = authenticator();
        let mut h = headers(&[
            ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"),
            ("x-api-key", "kg_one"),
        ]);
        assert_eq!(a.presented(&h), Presented::One("kg_one"));
        a.strip_credentials(&mut h);
        assert_eq!(
            h.get(AUTHORIZATION).unwrap(),
            "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"
        );
        assert!(h.get("x-api-key").is_none());

        let mut h = headers(&[("authorization", "Bearer kg_one")]);
        a.strip_credentials(&mut h);
        assert!(h.get(AUTHORIZATION).is_none());
    }

    #[test]
    fn non_text_key_header_is_ambiguous() {
        let a = authenticator();
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_bytes(b"kg_\xff").unwrap());
        assert_eq!(a.presented(&h), Presented::Ambiguous);
    }

    #[test]
    fn identity_header_names_are_lowercase_and_made_once_per_prefix() {
        let first = IdentityHeaders::new("X-Team-");
        assert_eq!(first.key_id.as_str(), "x-team-key-id");
        assert_eq!(first.permissions.as_str(), "x-team-permissions");
        let again = IdentityHeaders::new("X-Team-");
        assert!(std::ptr::eq(
            first.user.as_str().as_ptr(),
            again.user.as_str().as_ptr()
        ));
        assert_eq!(
            IdentityHeaders::new("X-Other-").user.as_str(),
            "x-other-user"
        );
    }
}
