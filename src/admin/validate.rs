//! Field checks for admin requests; each error names the field (CONTRACT §6).

use chrono::{DateTime, NaiveDate, Utc};

use super::error::ApiError;

pub const NAME_MAX: usize = 200;
pub const DESCRIPTION_MAX: usize = 1000;
pub const META_MAX_BYTES: usize = 4096;
pub const PERMISSIONS_MAX: usize = 100;
pub const PAGE_DEFAULT: usize = 100;
pub const PAGE_MAX: usize = 1000;
/// The longest rate-limit window: longer ones would hand out `Retry-After` values of years.
pub const RATE_LIMIT_PER_MAX: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// The latest expiry a key may have: the last second of year 9999. RFC 3339 (and so the
/// API's own answers) has four-digit years, and rolling a key adds its lifetime to the
/// current time, which must stay representable.
pub fn latest_expiry() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_opt(23, 59, 59))
        .expect("a valid date")
        .and_utc()
}

pub fn expiry(field: &str, at: DateTime<Utc>) -> Result<(), ApiError> {
    if at > latest_expiry() {
        return Err(ApiError::invalid(field, "must be before the year 10000"));
    }
    Ok(())
}

/// User and group ids: `[A-Za-z0-9._@-]{1,128}`.
pub fn id(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "must be 1 to 128 of A-Z a-z 0-9 . _ @ -",
        ))
    }
}

/// Tenants follow the id rules too: they label headers and filters.
pub fn tenant(field: &str, value: &str) -> Result<(), ApiError> {
    id(field, value)
}

pub fn name(value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(
            "name",
            format!("must be 1 to {NAME_MAX} characters"),
        ));
    }
    display_name(value)
}

/// A name shown to people (keys' required, users' optional): bounded, one line.
pub fn display_name(value: &str) -> Result<(), ApiError> {
    if value.chars().count() > NAME_MAX {
        return Err(ApiError::invalid(
            "name",
            format!("must be 1 to {NAME_MAX} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub fn description(value: &str) -> Result<(), ApiError> {
    if value.chars().count() > DESCRIPTION_MAX {
        return Err(ApiError::invalid(
            "description",
            format!("must be at most {DESCRIPTION_MAX} characters"),
        ));
    }
    Ok(())
}

/// Permission names: non-empty, no spaces or commas (they are joined with commas in
/// headers), a `*` only as the final `:*`.
pub fn permissions(field: &str, values: &[String]) -> Result<(), ApiError> {
    if values.len() > PERMISSIONS_MAX {
        return Err(ApiError::invalid(
            field,
            format!("at most {PERMISSIONS_MAX} permissions"),
        ));
    }
    for (i, p) in values.iter().enumerate() {
        let star_ok = !p.contains('*') || (p.ends_with(":*") && p.matches('*').count() == 1);
        let ok = !p.is_empty()
            && p.len() <= 200
            && star_ok
            && p.bytes().all(|b| b.is_ascii_graphic() && b != b',');
        if !ok {
            return Err(ApiError::invalid(
                format!("{field}[{i}]"),
                "a permission is visible ASCII without commas, with `*` only as a final `:*`",
            ));
        }
    }
    Ok(())
}

pub fn meta(value: &serde_json::Value) -> Result<(), ApiError> {
    if !value.is_object() {
        return Err(ApiError::invalid("meta", "must be a JSON object"));
    }
    if serde_json::to_vec(value).map_or(usize::MAX, |v| v.len()) > META_MAX_BYTES {
        return Err(ApiError::invalid(
            "meta",
            format!("must be at most {META_MAX_BYTES} bytes as JSON"),
        ));
    }
    Ok(())
}

pub fn rate_limit(field: &str, value: Option<&crate::store::RateLimit>) -> Result<(), ApiError> {
    match value {
        Some(r) if r.requests == 0 => Err(ApiError::invalid(
            format!("{field}.requests"),
            "must be at least 1",
        )),
        Some(r) if r.per.0.is_zero() => Err(ApiError::invalid(
            format!("{field}.per"),
            "must be greater than zero",
        )),
        Some(r) if r.per.0 > RATE_LIMIT_PER_MAX => Err(ApiError::invalid(
            format!("{field}.per"),
            "must be at most 365d",
        )),
        _ => Ok(()),
    }
}

pub fn limit(value: Option<usize>) -> Result<usize, ApiError> {
    match value {
        None => Ok(PAGE_DEFAULT),
        Some(n) if (1..=PAGE_MAX).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid(
            "limit",
            format!("must be 1 to {PAGE_MAX}"),
        )),
    }
}

/// Sorted and deduplicated, so stored lists compare and display predictably.
pub fn normalized(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values.dedup();
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_contract_alphabet() {
        assert!(id("id", "alice@example.com").is_ok());
        assert!(id("id", "svc-1.prod_x").is_ok());
        for bad in ["", "has space", "slash/", &"x".repeat(129), "ünï"] {
            assert!(id("id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_descriptions_have_limits() {
        assert!(name("Billing export").is_ok());
        assert!(name(&"é".repeat(200)).is_ok());
        assert!(name(&"é".repeat(201)).is_err());
        assert!(name("  ").is_err());
        assert!(name("a\nb").is_err());
        assert!(description(&"d".repeat(1000)).is_ok());
        assert!(description(&"d".repeat(1001)).is_err());
        assert!(display_name("").is_ok());
        assert!(display_name("a\u{0}b").is_err());
    }

    #[test]
    fn expiries_stay_within_four_digit_years() {
        assert!(expiry("expires_at", latest_expiry()).is_ok());
        let later = latest_expiry() + chrono::Duration::seconds(1);
        assert!(expiry("expires_at", later).is_err());
    }

    #[test]
    fn permissions_are_header_safe() {
        let ok: Vec<String> = ["orders:read", "billing:*", "keygate:admin"]
            .map(String::from)
            .to_vec();
        assert!(permissions("permissions", &ok).is_ok());
        for bad in ["", "a,b", "a b", "*", "a:*:b", "a*"] {
            let err = permissions("permissions", &[bad.to_owned()]).unwrap_err();
            assert!(
                err.to_string().starts_with("permissions[0]"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit(None).unwrap(), 100);
        assert_eq!(limit(Some(1000)).unwrap(), 1000);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(1001)).is_err());
    }
}
