//! API keys: the format check (`key::check`) and reading a key from request headers
//! (`Authenticator::presented`, `strip_credentials`). The input is one candidate key, as
//! bytes; it is tried as a string and in each place a request can carry a key.

use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use keygate::auth::key::{self, FormatError, KeyHash};
use keygate::auth::{Authenticator, Presented};

/// The default key prefix and key header.
const PREFIX: &str = "kg";
const KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");
/// Optional whitespace around header values and between the parts of credentials.
const OWS: [char; 2] = [' ', '\t'];

pub struct Outcome {
    /// The input passed the format check: a key the proxy would look up.
    pub well_formed: bool,
}

pub fn check(data: &[u8]) -> Outcome {
    let well_formed = std::str::from_utf8(data).is_ok_and(check_format);
    // Header values are bytes; hyper refuses the ones `HeaderValue` refuses.
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let auth = authenticator();
        check_key_header(auth, &value);
        check_bearer(auth, data);
        check_authorization(auth, &value);
    }
    Outcome { well_formed }
}

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let config = super::config_from(super::raw_config()).expect("the default config");
        super::authenticator(&config)
    })
}

/// `key::check` agrees with the format written out again below, with the default prefix
/// and with the input's own prefix; an accepted key is ASCII and hashes consistently.
fn check_format(text: &str) -> bool {
    let result = key::check(text, PREFIX);
    assert_eq!(
        result,
        expected_format(text, PREFIX),
        "key::check({text:?})"
    );
    if let Some((prefix, _)) = text.split_once('_') {
        // Any prefix config validation allows: 1 to 16 letters or digits.
        if (1..=16).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
            assert_eq!(
                key::check(text, prefix),
                expected_format(text, prefix),
                "key::check({text:?}, {prefix:?})"
            );
        }
    }
    if result.is_ok() {
        assert!(key::has_prefix(text, PREFIX), "{text:?}");
        assert_eq!(key::start_of(text), text[..key::START_LEN]);
        let hash = KeyHash::of(text);
        assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
    }
    result.is_ok()
}

/// CONTRACT §4 written out independently of `key::check`: `<prefix>_`, 30 base62
/// characters, then the CRC32 of everything before them as 6 base62 digits, most
/// significant first, digits `0-9A-Za-z`.
fn expected_format(text: &str, prefix: &str) -> Result<(), FormatError> {
    let body = text
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .ok_or(FormatError::Prefix)?;
    if body.len() != 36 {
        return Err(FormatError::Length);
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(FormatError::Alphabet);
    }
    let (signed, checksum) = text.as_bytes().split_at(text.len() - 6);
    let mut crc = u64::from(crc32fast::hash(signed));
    let mut want = [0u8; 6];
    for slot in want.iter_mut().rev() {
        let d = (crc % 62) as u8;
        *slot = match d {
            0..=9 => b'0' + d,
            10..=35 => b'A' + d - 10,
            _ => b'a' + d - 36,
        };
        crc /= 62;
    }
    if checksum != want {
        return Err(FormatError::Checksum);
    }
    Ok(())
}

/// A key header yields its text without surrounding whitespace; a value that is not text
/// is refused (`Ambiguous`), never ignored. Stripping removes the header.
fn check_key_header(auth: &Authenticator, value: &HeaderValue) {
    let mut headers = HeaderMap::new();
    headers.insert(KEY_HEADER, value.clone());
    let expected = match value.to_str() {
        Ok(text) => Presented::One(text.trim_matches(OWS)),
        Err(_) => Presented::Ambiguous,
    };
    assert_eq!(auth.presented(&headers), expected, "X-API-Key: {value:?}");
    auth.strip_credentials(&mut headers);
    assert!(headers.is_empty(), "left after stripping: {headers:?}");
}

/// `Authorization: Bearer <input>` carries our key when the token has our prefix, and is
/// then removed; any other token is the upstream's and is forwarded untouched. The same key
/// also in the key header counts once; a different one makes the request ambiguous.
fn check_bearer(auth: &Authenticator, data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(&[b"Bearer ", data].concat()) else {
        return;
    };
    let ours = our_bearer_token(&value);
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value.clone());
    // Our prefix in a value that is not text: refused, like a key header that is not text.
    let ours_not_text = ours.is_none() && carries_our_token(&value, PREFIX);
    let expected = match ours {
        _ if ours_not_text => Presented::Ambiguous,
        Some(key) => Presented::One(key),
        None => Presented::Nothing,
    };
    assert_eq!(
        auth.presented(&headers),
        expected,
        "Authorization: {value:?}"
    );

    let key_value = HeaderValue::from_bytes(data).expect("checked by the caller");
    let mut both = headers.clone();
    both.insert(KEY_HEADER, key_value.clone());
    let in_key_header = key_value.to_str().map(|t| t.trim_matches(OWS));
    let expected_both = match (in_key_header, ours) {
        _ if ours_not_text => Presented::Ambiguous,
        (Err(_), _) => Presented::Ambiguous,
        (Ok(a), Some(b)) if a != b => Presented::Ambiguous,
        (Ok(a), _) => Presented::One(a),
    };
    assert_eq!(auth.presented(&both), expected_both, "both: {both:?}");

    auth.strip_credentials(&mut headers);
    match ours {
        _ if ours_not_text => assert!(headers.is_empty(), "left: {headers:?}"),
        Some(_) => assert!(headers.is_empty(), "left: {headers:?}"),
        None => assert_eq!(
            headers.get(AUTHORIZATION),
            Some(&value),
            "foreign token changed"
        ),
    }
}

/// The input as a whole `Authorization` value, whatever its scheme: after stripping, no
/// value that carries a token with our prefix is left for the upstream to see.
fn check_authorization(auth: &Authenticator, value: &HeaderValue) {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value.clone());
    auth.strip_credentials(&mut headers);
    assert_eq!(auth.presented(&headers), Presented::Nothing);
    for left in headers.get_all(AUTHORIZATION) {
        assert!(
            !carries_our_token(left, PREFIX),
            "a key survived stripping: Authorization: {left:?}"
        );
    }
}

/// The token of `Bearer <token>` when it has our prefix (RFC 9110 §11.4: one space after
/// the scheme; surrounding whitespace ignored).
fn our_bearer_token(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?.trim_matches(OWS);
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim_matches(OWS);
    (scheme.eq_ignore_ascii_case("bearer") && token.starts_with(&format!("{PREFIX}_")))
        .then_some(token)
}

/// Whether an `Authorization` value holds a token with our prefix after a bearer scheme,
/// read as an upstream might: any whitespace after the scheme, any bytes in the token.
pub fn carries_our_token(value: &HeaderValue, prefix: &str) -> bool {
    if F2_PENDING && value.to_str().is_err() {
        return false;
    }
    let separators: &[u8] = if F2_PENDING { b" " } else { b" \t" };
    let bytes = value.as_bytes().trim_ascii();
    let Some(split) = bytes.iter().position(|b| separators.contains(b)) else {
        return false;
    };
    let (scheme, token) = bytes.split_at(split);
    let token = token.trim_ascii();
    scheme.eq_ignore_ascii_case(b"bearer")
        && token.len() > prefix.len()
        && token.starts_with(prefix.as_bytes())
        && token[prefix.len()] == b'_'
}

/// Finding F2 (docs/fuzzing.md) is not fixed yet: `Bearer<TAB>kg_…` and a `kg_…` token with
/// non-ASCII bytes are neither checked nor removed. Until the fix in src/auth/mod.rs lands,
/// only what it reads today (text, a space after the scheme) counts as carrying our key;
/// with the fix, set this to false and un-ignore the F2 test in tests/fuzz_corpus.rs.
const F2_PENDING: bool = false;
