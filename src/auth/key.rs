//! The API key format (CONTRACT §4): `<prefix>_<30 base62 random><6 base62 CRC32>`.
//!
//! The checksum covers everything before it (prefix, `_` and the random part), so a typo
//! or a truncated key is refused by arithmetic alone — no cache entry, no store lookup.

use std::fmt;

use sha2::{Digest, Sha256};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const RANDOM_LEN: usize = 30;
pub const CHECKSUM_LEN: usize = 6;
/// How much of a secret is shown back (`start`) to recognise a key without revealing it.
pub const START_LEN: usize = 8;

/// SHA-256 of a secret: the only form in which a key is stored or cached.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not a secret, but the first bytes are plenty to tell keys apart in logs.
        write!(f, "KeyHash({}…)", &self.to_hex()[..12])
    }
}

impl serde::Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&text).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// Why a string is not a well-formed key. Callers answer `invalid_key` for all of them;
/// the distinction is for tests and debug logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("wrong prefix")]
    Prefix,
    #[error("wrong length")]
    Length,
    #[error("not base62")]
    Alphabet,
    #[error("checksum mismatch")]
    Checksum,
}

/// Checks shape and checksum of `text` for a key with `prefix`, without allocating.
pub fn check(text: &str, prefix: &str) -> Result<(), FormatError> {
    let body = text
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .ok_or(FormatError::Prefix)?;
    if body.len() != RANDOM_LEN + CHECKSUM_LEN {
        return Err(FormatError::Length);
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(FormatError::Alphabet);
    }
    let (signed, checksum) = text.split_at(text.len() - CHECKSUM_LEN);
    if encode_checksum(crc32fast::hash(signed.as_bytes())).as_slice() != checksum.as_bytes() {
        return Err(FormatError::Checksum);
    }
    Ok(())
}

/// Whether `text` is shaped like one of our keys (right prefix), valid or not. Used to tell
/// a keygate key in `Authorization: Bearer` from an upstream's own token.
pub fn has_prefix(text: &str, prefix: &str) -> bool {
    text.len() > prefix.len() && text.starts_with(prefix) && text.as_bytes()[prefix.len()] == b'_'
}

/// A new key from the OS CSPRNG.
pub fn generate(prefix: &str) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(prefix.len() + 1 + RANDOM_LEN + CHECKSUM_LEN);
    out.push_str(prefix);
    out.push('_');
    push_random_base62(&mut out, RANDOM_LEN)?;
    let checksum = encode_checksum(crc32fast::hash(out.as_bytes()));
    out.push_str(std::str::from_utf8(&checksum).expect("base62 is ASCII"));
    Ok(out)
}

/// Appends `n` uniformly random base62 characters from the OS CSPRNG.
pub fn push_random_base62(out: &mut String, n: usize) -> Result<(), getrandom::Error> {
    let mut filled = 0;
    let mut buf = [0u8; 64];
    while filled < n {
        getrandom::fill(&mut buf)?;
        // Rejection sampling: 248 = 4 × 62, so `b % 62` is uniform for b < 248.
        for &b in buf.iter().filter(|&&b| b < 248) {
            if filled == n {
                break;
            }
            out.push(BASE62[(b % 62) as usize] as char);
            filled += 1;
        }
    }
    Ok(())
}

/// A key record id: `key_` + creation time (base62 ms, fixed width, so ids sort by age)
/// + 8 random characters.
pub fn new_key_id() -> Result<String, getrandom::Error> {
    let mut ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut time = [b'0'; 8];
    for slot in time.iter_mut().rev() {
        *slot = BASE62[(ms % 62) as usize];
        ms /= 62;
    }
    let mut id = String::with_capacity(20);
    id.push_str("key_");
    id.push_str(std::str::from_utf8(&time).expect("base62 is ASCII"));
    push_random_base62(&mut id, 8)?;
    Ok(id)
}

/// The first characters of a secret, shown in listings to recognise it.
pub fn start_of(secret: &str) -> String {
    secret.chars().take(START_LEN).collect()
}

/// Fixed-width base62 of a CRC32 (62^6 > 2^32, so six digits always suffice).
fn encode_checksum(mut n: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_have_the_contract_shape() {
        let key = generate("kg").unwrap();
        assert_eq!(key.len(), 2 + 1 + 30 + 6);
        assert!(key.starts_with("kg_"));
        assert_eq!(check(&key, "kg"), Ok(()));
        assert_ne!(key, generate("kg").unwrap());
        assert_eq!(start_of(&key), key[..8]);
    }

    #[test]
    fn refuses_each_kind_of_malformed_key() {
        let key = generate("kg").unwrap();
        assert_eq!(check(&key, "other"), Err(FormatError::Prefix));
        assert_eq!(
            check(&key.replacen("kg_", "kg-", 1), "kg"),
            Err(FormatError::Prefix)
        );
        assert_eq!(check(&key[..key.len() - 1], "kg"), Err(FormatError::Length));
        assert_eq!(check(&format!("{key}x"), "kg"), Err(FormatError::Length));
        let mut bad = key.clone().into_bytes();
        bad[5] = b'-';
        assert_eq!(
            check(std::str::from_utf8(&bad).unwrap(), "kg"),
            Err(FormatError::Alphabet)
        );
        assert_eq!(check("", "kg"), Err(FormatError::Prefix));
        assert_eq!(check("kg_ünïcödé", "kg"), Err(FormatError::Length));
    }

    #[test]
    fn hash_round_trips_through_hex_and_serde() {
        let h = KeyHash::of("kg_secret");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<KeyHash>(&json).unwrap(), h);
        assert_eq!(KeyHash::from_hex("zz"), None);
        assert!(
            !format!("{h:?}").contains(&h.to_hex()),
            "Debug shows only a prefix of the hash"
        );
    }

    #[test]
    fn key_ids_sort_by_creation_time() {
        let a = new_key_id().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_key_id().unwrap();
        assert_eq!(a.len(), 20);
        assert!(a.starts_with("key_") && a < b, "{a} {b}");
    }

    #[test]
    fn bearer_prefix_detection() {
        assert!(has_prefix("kg_abc", "kg"));
        assert!(!has_prefix("kgx_abc", "kg"));
        assert!(!has_prefix("eyJhbGciOi", "kg"));
        assert!(!has_prefix("kg", "kg"));
    }

    proptest! {
        #[test]
        fn any_generated_key_round_trips(prefix in "[a-z]{1,8}") {
            let key = generate(&prefix).unwrap();
            prop_assert_eq!(check(&key, &prefix), Ok(()));
        }

        #[test]
        fn any_single_character_change_fails(pos in 3usize..39, replacement in 0usize..62) {
            let key = generate("kg").unwrap();
            let mut bytes = key.clone().into_bytes();
            let new = BASE62[replacement];
            prop_assume!(bytes[pos] != new);
            bytes[pos] = new;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(check(&changed, "kg").is_err(), "{} passed after changing {}", changed, pos);
        }

        #[test]
        fn arbitrary_strings_never_panic(text in ".{0,80}") {
            let _ = check(&text, "kg");
        }
    }
}
