//! `/v1/keys`, `/v1/keys/import`, `/v1/keys/{id}`, `/v1/keys/{id}/roll`, `/v1/verify`.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};

use super::caller::Caller;
use super::error::ApiError;
use super::extract::{Id, Params, RawBody};
use super::views::*;
use super::{parse_json, validate, Shared};
use crate::auth::key::{self, KeyHash};
use crate::auth::permissions;
use crate::config::{duration::parse_duration, KeysConfig};
use crate::events::Change;
use crate::proxy::Refusal;
use crate::store::{KeyQuery, KeyRecord, User};

/// A page walk with a status filter stops after this many store pages and hands back a
/// cursor, so one request never scans a whole tenant.
const MAX_PAGES_PER_LIST: usize = 20;

#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, description = "The key, with its secret (shown once)", body = IssuedKey),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<Shared>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let req: CreateKey = parse_json(&body)?;
    let owner_id = match (&req.owner, &caller) {
        (Some(owner), _) => owner.clone(),
        (None, Caller::SelfService { user, .. }) => user.clone(),
        (None, _) => return Err(ApiError::invalid("owner", "is required")),
    };
    let owner = owner_in_reach(&state, &caller, &owner_id).await?;
    validate::rate_limit("rate_limit", req.rate_limit.as_ref())?;
    let description = checked_fields(
        &req.name,
        req.description,
        req.permissions.as_deref(),
        req.meta.as_ref(),
    )?;
    let now = Utc::now();
    let expires_at = initial_expiry(
        &state.keys,
        now,
        req.expires_in.as_deref(),
        req.expires_at,
        req.never_expires,
    )?;
    let secret = new_secret(&state.keys.prefix)?;
    let record = KeyRecord {
        id: key::new_key_id().map_err(|e| ApiError::Internal(e.to_string()))?,
        hash: KeyHash::of(&secret),
        start: key::start_of(&secret),
        name: req.name,
        description,
        owner: owner.id,
        tenant: owner.tenant,
        enabled: true,
        created_at: now,
        updated_at: now,
        expires_at,
        last_used_at: None,
        permissions: req.permissions.map(validate::normalized),
        created_by: caller.actor(),
        meta: req.meta,
        rate_limit: req.rate_limit,
    };
    state.store.insert_key(&record).await?;
    state.publish(Change::Key { hash: record.hash }).await?;
    state
        .audit(&caller, "key.create", &record.id, &record.tenant)
        .await;
    Ok(issued(&record, secret))
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(ListKeysQuery),
    responses((status = 200, body = KeyList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Shared>,
    caller: Caller,
    Params(q): Params<ListKeysQuery>,
) -> Result<Json<KeyList>, ApiError> {
    let limit = validate::limit(q.limit)?;
    let (tenant, owner) = match &caller {
        Caller::SuperAdmin => (q.tenant, q.owner),
        Caller::TenantAdmin { tenant, .. } => {
            if q.tenant.as_ref().is_some_and(|t| t != tenant) {
                return Err(ApiError::Forbidden(
                    "tenant admins see their own tenant only".into(),
                ));
            }
            (Some(tenant.clone()), q.owner)
        }
        Caller::SelfService { tenant, user, .. } => {
            if q.owner.as_ref().is_some_and(|o| o != user)
                || q.tenant.as_ref().is_some_and(|t| t != tenant)
            {
                return Err(ApiError::Forbidden(
                    "self-service keys see their own user's keys only".into(),
                ));
            }
            (Some(tenant.clone()), Some(user.clone()))
        }
    };
    let now = Utc::now();
    let mut items = Vec::with_capacity(limit);
    let mut cursor = q.cursor;
    let mut next_cursor = None;
    for _ in 0..MAX_PAGES_PER_LIST {
        let page = state
            .store
            .list_keys(&KeyQuery {
                tenant: tenant.clone(),
                owner: owner.clone(),
                limit,
                cursor: cursor.clone(),
            })
            .await?;
        let examined = page.items.len();
        for (i, key) in page.items.into_iter().enumerate() {
            cursor = Some(key.id.clone());
            if q.status.is_none_or(|s| KeyStatus::of(&key, now) == s) {
                items.push(KeyView::of(&key));
                if items.len() == limit {
                    let more = i + 1 < examined || page.next_cursor.is_some();
                    next_cursor = more.then(|| key.id.clone());
                    break;
                }
            }
        }
        if items.len() == limit || page.next_cursor.is_none() {
            break;
        }
        // The scan budget ran out with the page not full: let the client continue.
        next_cursor = cursor.clone();
    }
    Ok(Json(KeyList { items, next_cursor }))
}

#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn show(
    State(state): State<Shared>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<KeyView>, ApiError> {
    let key = key_in_reach(&state, &caller, &id).await?;
    Ok(Json(KeyView::of(&key)))
}

#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)), request_body = UpdateKey,
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<Shared>,
    caller: Caller,
    Id(id): Id,
    RawBody(body): RawBody,
) -> Result<Json<KeyView>, ApiError> {
    let req: UpdateKey = parse_json(&body)?;
    let mut key = key_in_reach(&state, &caller, &id).await?;
    let now = Utc::now();
    if let Some(name) = req.name {
        validate::name(&name)?;
        key.name = name;
    }
    if let Some(description) = req.description {
        validate::description(&description)?;
        key.description = description;
    }
    if let Some(expires_at) = req.expires_at {
        match expires_at {
            Some(at) if at <= now => return Err(ApiError::invalid("expires_at", "is in the past")),
            Some(at) => {
                validate::expiry("expires_at", at)?;
                key.expires_at = Some(at);
            }
            None if !state.keys.allow_never_expires => {
                return Err(ApiError::invalid(
                    "expires_at",
                    "null (never expires) is not allowed by keys.allow_never_expires",
                ))
            }
            None => key.expires_at = None,
        }
    }
    if let Some(perms) = req.permissions {
        if let Some(list) = &perms {
            validate::permissions("permissions", list)?;
        }
        key.permissions = perms.map(validate::normalized);
    }
    if let Some(limit) = req.rate_limit {
        validate::rate_limit("rate_limit", limit.as_ref())?;
        key.rate_limit = limit;
    }
    let action = match req.enabled {
        Some(false) => "key.disable",
        Some(true) => "key.enable",
        None => "key.update",
    };
    if let Some(enabled) = req.enabled {
        key.enabled = enabled;
    }
    key.updated_at = now;
    state.store.update_key(&key).await?;
    state.publish(Change::Key { hash: key.hash }).await?;
    state.audit(&caller, action, &key.id, &key.tenant).await;
    Ok(Json(KeyView::of(&key)))
}

#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 204, description = "Revoked; every instance has been told"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<Shared>,
    caller: Caller,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    let key = key_in_reach(&state, &caller, &id).await?;
    let Some(removed) = state.store.delete_key(&key.id).await? else {
        return Err(ApiError::NotFound(format!("key {id}")));
    };
    // Answer only once every instance has been told to forget it.
    state.publish(Change::Key { hash: removed.hash }).await?;
    state
        .audit(&caller, "key.revoke", &removed.id, &removed.tenant)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/keys/{id}/roll", tag = "keys", params(("id" = String, Path)), request_body = RollKey,
    responses((status = 201, description = "The new key, with its secret (shown once)", body = IssuedKey),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn roll(
    State(state): State<Shared>,
    caller: Caller,
    Id(id): Id,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let req: RollKey = if body.is_empty() {
        RollKey::default()
    } else {
        parse_json(&body)?
    };
    let grace = match req.grace.as_deref() {
        Some(text) => parse_duration(text).map_err(|e| ApiError::invalid("grace", e))?,
        None => std::time::Duration::ZERO,
    };
    let mut old = key_in_reach(&state, &caller, &id).await?;
    let now = Utc::now();
    let secret = new_secret(&state.keys.prefix)?;
    let new = KeyRecord {
        id: key::new_key_id().map_err(|e| ApiError::Internal(e.to_string()))?,
        hash: KeyHash::of(&secret),
        start: key::start_of(&secret),
        created_at: now,
        updated_at: now,
        // The new key lives as long as the old one was meant to (within the latest expiry;
        // a record imported with a far date must not overflow the clock arithmetic).
        expires_at: old.expires_at.map(|at| {
            now.checked_add_signed(at - old.created_at)
                .map_or(validate::latest_expiry(), |t| {
                    t.min(validate::latest_expiry())
                })
        }),
        last_used_at: None,
        created_by: caller.actor(),
        enabled: true,
        ..old.clone()
    };
    state.store.insert_key(&new).await?;
    let grace_end = now + chrono_duration("grace", grace)?;
    old.expires_at = Some(old.expires_at.map_or(grace_end, |at| at.min(grace_end)));
    old.updated_at = now;
    state.store.update_key(&old).await?;
    state.publish(Change::Key { hash: old.hash }).await?;
    state.publish(Change::Key { hash: new.hash }).await?;
    state
        .audit(
            &caller,
            "key.roll",
            &format!("{} -> {}", old.id, new.id),
            &new.tenant,
        )
        .await;
    Ok(issued(&new, secret))
}

#[utoipa::path(post, path = "/v1/keys/import", tag = "keys", request_body = ImportKey,
    responses((status = 201, body = KeyView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn import(
    State(state): State<Shared>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    caller.require_admin()?;
    let req: ImportKey = parse_json(&body)?;
    let (hash, start) = match (&req.sha256, &req.key) {
        (Some(hex), None) => {
            let hash = KeyHash::from_hex(&hex.to_ascii_lowercase())
                .ok_or_else(|| ApiError::invalid("sha256", "must be 64 hex digits"))?;
            (hash, String::new())
        }
        (None, Some(secret)) => {
            // The proxy refuses malformed keys before any lookup, so only keys in this
            // gateway's format can ever be presented.
            key::check(secret, &state.keys.prefix).map_err(|e| {
                ApiError::invalid(
                    "key",
                    format!(
                        "is not a `{}_` key with a valid checksum ({e})",
                        state.keys.prefix
                    ),
                )
            })?;
            (KeyHash::of(secret), key::start_of(secret))
        }
        _ => {
            return Err(ApiError::invalid(
                "sha256",
                "give exactly one of sha256 and key",
            ))
        }
    };
    let owner = owner_in_reach(&state, &caller, &req.owner).await?;
    validate::rate_limit("rate_limit", req.rate_limit.as_ref())?;
    if let Some(at) = req.expires_at {
        validate::expiry("expires_at", at)?;
    }
    let description = checked_fields(
        &req.name,
        req.description,
        req.permissions.as_deref(),
        req.meta.as_ref(),
    )?;
    let now = Utc::now();
    let record = KeyRecord {
        id: key::new_key_id().map_err(|e| ApiError::Internal(e.to_string()))?,
        hash,
        start,
        name: req.name,
        description,
        owner: owner.id,
        tenant: owner.tenant,
        enabled: req.enabled.unwrap_or(true),
        created_at: now,
        updated_at: now,
        expires_at: req.expires_at,
        last_used_at: None,
        permissions: req.permissions.map(validate::normalized),
        created_by: caller.actor(),
        meta: req.meta,
        rate_limit: req.rate_limit,
    };
    state.store.insert_key(&record).await?;
    // The hash may sit in a negative cache from an earlier attempt with this key.
    state.publish(Change::Key { hash: record.hash }).await?;
    state
        .audit(&caller, "key.import", &record.id, &record.tenant)
        .await;
    Ok((StatusCode::CREATED, Json(KeyView::of(&record))))
}

#[utoipa::path(post, path = "/v1/verify", tag = "keys", request_body = VerifyRequest,
    responses((status = 200, description = "The decision the proxy would make", body = VerifyAnswer)),
    security(("bearer" = [])))]
pub async fn verify(
    State(state): State<Shared>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<Json<VerifyAnswer>, ApiError> {
    let req: VerifyRequest = parse_json(&body)?;
    let require = req.require.unwrap_or_default();
    validate::permissions("require", &require)?;
    let refused = |r: Refusal| VerifyAnswer {
        valid: false,
        code: r.code().to_owned(),
        key_id: None,
        tenant: None,
        user: None,
        groups: None,
        permissions: None,
        expires_at: None,
    };
    if key::check(&req.key, &state.keys.prefix).is_err() {
        return Ok(Json(refused(Refusal::InvalidKey)));
    }
    let principal = match state.verifier.verify(&KeyHash::of(&req.key)).await {
        Ok(p) => p,
        Err(Refusal::AuthUnavailable) => return Err(ApiError::Unavailable),
        Err(r) => return Ok(Json(refused(r))),
    };
    // Keys outside the caller's reach look like unknown keys.
    if !caller.can_see(&principal.user().tenant, Some(&principal.user().id)) {
        return Ok(Json(refused(Refusal::InvalidKey)));
    }
    let allowed = permissions::satisfies(principal.permissions(), &require);
    Ok(Json(VerifyAnswer {
        valid: allowed,
        code: if allowed {
            "ok"
        } else {
            Refusal::InsufficientPermissions.code()
        }
        .to_owned(),
        key_id: Some(principal.key.id().to_owned()),
        tenant: Some(principal.user().tenant.to_string()),
        user: Some(principal.user().id.to_string()),
        groups: Some(principal.user().groups.to_vec()),
        permissions: Some(principal.permissions().to_vec()),
        expires_at: principal.key.expires_at(),
    }))
}

/// Checks the descriptive fields a new key carries; returns the description to store.
fn checked_fields(
    name: &str,
    description: Option<String>,
    permissions: Option<&[String]>,
    meta: Option<&serde_json::Value>,
) -> Result<String, ApiError> {
    validate::name(name)?;
    let description = description.unwrap_or_default();
    validate::description(&description)?;
    if let Some(perms) = permissions {
        validate::permissions("permissions", perms)?;
    }
    if let Some(meta) = meta {
        validate::meta(meta)?;
    }
    Ok(description)
}

/// The user a caller may issue keys for: in its tenant (admins) or itself (self-service).
async fn owner_in_reach(state: &Shared, caller: &Caller, owner: &str) -> Result<User, ApiError> {
    validate::id("owner", owner)?;
    state
        .store
        .get_user(owner)
        .await?
        .filter(|u| caller.can_see(&u.tenant, Some(&u.id)))
        .ok_or_else(|| {
            ApiError::invalid(
                "owner",
                format!("no user `{owner}` that you may issue keys for"),
            )
        })
}

/// A key the caller may see; others are "not found" so ids of other tenants don't leak.
async fn key_in_reach(state: &Shared, caller: &Caller, id: &str) -> Result<KeyRecord, ApiError> {
    state
        .store
        .get_key(id)
        .await?
        .filter(|k| caller.can_see(&k.tenant, Some(&k.owner)))
        .ok_or_else(|| ApiError::NotFound(format!("key {id}")))
}

fn initial_expiry(
    cfg: &KeysConfig,
    now: DateTime<Utc>,
    expires_in: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
    never: Option<bool>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    let never = never.unwrap_or(false);
    if usize::from(expires_in.is_some()) + usize::from(expires_at.is_some()) + usize::from(never)
        > 1
    {
        return Err(ApiError::invalid(
            "expires_in",
            "give at most one of expires_in, expires_at and never_expires",
        ));
    }
    if let Some(text) = expires_in {
        let d = parse_duration(text).map_err(|e| ApiError::invalid("expires_in", e))?;
        if d.is_zero() {
            return Err(ApiError::invalid("expires_in", "must be greater than zero"));
        }
        return Ok(Some(now + chrono_duration("expires_in", d)?));
    }
    if let Some(at) = expires_at {
        if at <= now {
            return Err(ApiError::invalid("expires_at", "is in the past"));
        }
        validate::expiry("expires_at", at)?;
        return Ok(Some(at));
    }
    if never {
        if !cfg.allow_never_expires {
            return Err(ApiError::invalid(
                "never_expires",
                "is not allowed by this gateway (keys.allow_never_expires)",
            ));
        }
        return Ok(None);
    }
    Ok(Some(
        now + chrono_duration("keys.default_ttl", cfg.default_ttl)?,
    ))
}

fn chrono_duration(field: &str, d: std::time::Duration) -> Result<chrono::Duration, ApiError> {
    chrono::Duration::from_std(d)
        .ok()
        .filter(|d| *d < chrono::Duration::days(100 * 365))
        .ok_or_else(|| ApiError::invalid(field, "is too long"))
}

fn new_secret(prefix: &str) -> Result<String, ApiError> {
    key::generate(prefix).map_err(|e| ApiError::Internal(format!("no randomness from the OS: {e}")))
}

/// 201 with the secret; `Cache-Control: no-store` so no cache along the way keeps it.
fn issued(record: &KeyRecord, secret: String) -> Response {
    let mut response = (
        StatusCode::CREATED,
        Json(IssuedKey {
            record: KeyView::of(record),
            key: secret,
        }),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(allow_never: bool) -> KeysConfig {
        KeysConfig {
            prefix: "kg".into(),
            headers: vec![],
            authorization_bearer: true,
            default_ttl: Duration::from_secs(86_400),
            allow_never_expires: allow_never,
        }
    }

    #[test]
    fn expiry_rules() {
        let now = Utc::now();
        let day = chrono::Duration::days(1);
        assert_eq!(
            initial_expiry(&cfg(false), now, None, None, None).unwrap(),
            Some(now + day)
        );
        assert_eq!(
            initial_expiry(&cfg(false), now, Some("7d"), None, None).unwrap(),
            Some(now + day * 7)
        );
        assert!(initial_expiry(&cfg(false), now, None, Some(now - day), None).is_err());
        assert!(initial_expiry(&cfg(false), now, None, None, Some(true)).is_err());
        assert_eq!(
            initial_expiry(&cfg(true), now, None, None, Some(true)).unwrap(),
            None
        );
        assert!(initial_expiry(&cfg(true), now, Some("1d"), None, Some(true)).is_err());
        assert!(initial_expiry(&cfg(false), now, Some("soon"), None, None).is_err());
        assert!(initial_expiry(&cfg(false), now, Some("0s"), None, None).is_err());
    }
}
