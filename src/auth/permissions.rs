//! Permission sets: a user's own ∪ its groups', narrowed by a key's restriction.
//! A permission ending in `:*` grants everything below it (`billing:*` ⊇ `billing:read`).

use std::collections::BTreeSet;

/// Whether `held` grants `wanted`, exactly or through a `prefix:*` wildcard.
pub fn grants(held: &[impl AsRef<str>], wanted: &str) -> bool {
    held.iter().any(|h| grants_one(h.as_ref(), wanted))
}

fn grants_one(held: &str, wanted: &str) -> bool {
    if held == wanted {
        return true;
    }
    match held.strip_suffix('*') {
        // `a:*` grants `a:x` and `a:x:y`, but not `a` itself.
        Some(scope) if scope.ends_with(':') => {
            wanted.len() > scope.len() && wanted.starts_with(scope)
        }
        _ => false,
    }
}

/// The union of the given permission lists, sorted and without duplicates.
pub fn union<'a>(lists: impl IntoIterator<Item = &'a [String]>) -> Vec<String> {
    let set: BTreeSet<&String> = lists.into_iter().flatten().collect();
    set.into_iter().cloned().collect()
}

/// What a key restricted to `restriction` may do when its owner holds `held`: every
/// permission granted by both sides, sorted. `a:*` ∩ `a:read` = `a:read`.
pub fn narrow(held: &[String], restriction: &[String]) -> Vec<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for r in restriction {
        if grants(held, r) {
            out.insert(r.clone());
        }
    }
    for h in held {
        if grants(restriction, h) {
            out.insert(h.clone());
        }
    }
    out.into_iter().collect()
}

/// Whether `held` grants every permission in `required`.
pub fn satisfies(held: &[String], required: &[String]) -> bool {
    required.iter().all(|r| grants(held, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn wildcards_grant_below_their_scope_only() {
        let held = v(&["billing:*", "users:read"]);
        assert!(grants(&held, "billing:read"));
        assert!(grants(&held, "billing:invoices:write"));
        assert!(grants(&held, "billing:*"));
        assert!(!grants(&held, "billing"));
        assert!(!grants(&held, "billingx:read"));
        assert!(grants(&held, "users:read"));
        assert!(!grants(&held, "users:write"));
        assert!(
            !grants(&v(&["*"]), "anything"),
            "a bare * is not a wildcard"
        );
    }

    #[test]
    fn union_is_sorted_and_deduplicated() {
        let user = v(&["b:read", "a:write"]);
        let group = v(&["a:write", "c:*"]);
        assert_eq!(
            union([user.as_slice(), group.as_slice()]),
            v(&["a:write", "b:read", "c:*"])
        );
    }

    #[test]
    fn narrowing_keeps_what_both_sides_grant() {
        assert_eq!(
            narrow(&v(&["a:*", "b:read"]), &v(&["a:read"])),
            v(&["a:read"])
        );
        assert_eq!(narrow(&v(&["a:read", "b:x"]), &v(&["a:*"])), v(&["a:read"]));
        assert_eq!(narrow(&v(&["a:*"]), &v(&["a:*", "z:read"])), v(&["a:*"]));
        assert_eq!(narrow(&v(&["a:read"]), &v(&[])), Vec::<String>::new());
    }

    #[test]
    fn satisfies_needs_every_requirement() {
        let held = v(&["orders:*", "users:read"]);
        assert!(satisfies(&held, &v(&["orders:write", "users:read"])));
        assert!(!satisfies(&held, &v(&["orders:write", "users:write"])));
        assert!(satisfies(&held, &[]));
    }
}
