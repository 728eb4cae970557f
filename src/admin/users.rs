//! `/v1/users`, `/v1/groups` and `/v1/audit`: the directory keys draw their permissions
//! from, and the record of who changed what.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;

use super::caller::Caller;
use super::error::ApiError;
use super::extract::{Id, Params, RawBody};
use super::views::*;
use super::{parse_json, validate, Shared};
use crate::events::Change;
use crate::store::{Group, User, DEFAULT_TENANT};

#[utoipa::path(get, path = "/v1/users", tag = "users",
    responses((status = 200, body = UserList), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_users(
    State(state): State<Shared>,
    caller: Caller,
) -> Result<Json<UserList>, ApiError> {
    caller.require_admin()?;
    let users = state.store.list_users(caller.tenant()).await?;
    Ok(Json(UserList {
        items: users.iter().map(UserView::from).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn show_user(
    State(state): State<Shared>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<UserView>, ApiError> {
    // Self-service callers may read their own user (to see their permissions).
    let user = user_in_reach(&state, &caller, &id).await?;
    Ok(Json(UserView::from(&user)))
}

#[utoipa::path(put, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path, pattern = r"^[A-Za-z0-9._@-]{1,128}$")), request_body = PutUser,
    responses((status = 200, body = UserView), (status = 201, body = UserView), (status = 400, body = ErrorBody),
              (status = 409, description = "The id belongs to another tenant's user", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_user(
    State(state): State<Shared>,
    caller: Caller,
    Id(id): Id,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    caller.require_admin()?;
    validate::id("id", &id)?;
    let req: PutUser = parse_json(&body)?;
    let existing = state.store.get_user(&id).await?;
    let tenant = chosen_tenant(&caller, req.tenant.as_deref())?;
    if let Some(old) = &existing {
        if !caller.can_see(&old.tenant, None) {
            // Someone else's user with this id: ids are global, so it is taken.
            return Err(ApiError::Conflict(format!("user id `{id}` is taken")));
        }
        if old.tenant != tenant {
            return Err(ApiError::invalid(
                "tenant",
                "a user cannot move to another tenant (its keys would not follow)",
            ));
        }
    }
    let now = Utc::now();
    let user = User {
        id: id.clone(),
        tenant,
        name: req.name.unwrap_or_default(),
        active: req.active.unwrap_or(true),
        groups: req.groups.unwrap_or_default(),
        permissions: req.permissions.unwrap_or_default(),
        created_at: existing.as_ref().map_or(now, |u| u.created_at),
        updated_at: now,
        rate_limit: req.rate_limit.flatten(),
    };
    let user = checked_user(&state, user).await?;
    state.store.put_user(&user).await?;
    state.publish(Change::User { id: id.clone() }).await?;
    let (status, action) = if existing.is_some() {
        (StatusCode::OK, "user.replace")
    } else {
        (StatusCode::CREATED, "user.create")
    };
    state.audit(&caller, action, &id, &user.tenant).await;
    Ok((status, Json(UserView::from(&user))))
}

#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path)), request_body = PutUser,
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn patch_user(
    State(state): State<Shared>,
    caller: Caller,
    Id(id): Id,
    RawBody(body): RawBody,
) -> Result<Json<UserView>, ApiError> {
    caller.require_admin()?;
    let req: PutUser = parse_json(&body)?;
    let mut user = user_in_reach(&state, &caller, &id).await?;
    if req.tenant.as_ref().is_some_and(|t| *t != user.tenant) {
        return Err(ApiError::invalid(
            "tenant",
            "a user cannot move to another tenant (its keys would not follow)",
        ));
    }
    if let Some(name) = req.name {
        user.name = name;
    }
    if let Some(active) = req.active {
        user.active = active;
    }
    if let Some(groups) = req.groups {
        user.groups = groups;
    }
    if let Some(perms) = req.permissions {
        user.permissions = perms;
    }
    if let Some(limit) = req.rate_limit {
        user.rate_limit = limit;
    }
    user.updated_at = Utc::now();
    let user = checked_user(&state, user).await?;
    state.store.put_user(&user).await?;
    state.publish(Change::User { id: id.clone() }).await?;
    let action = match req.active {
        Some(false) => "user.deactivate",
        Some(true) => "user.activate",
        None => "user.update",
    };
    state.audit(&caller, action, &id, &user.tenant).await;
    Ok(Json(UserView::from(&user)))
}

#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 204, description = "The user and all its keys are gone"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_user(
    State(state): State<Shared>,
    caller: Caller,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    user_in_reach(&state, &caller, &id).await?;
    let Some(deleted) = state.store.delete_user(&id).await? else {
        return Err(ApiError::NotFound(format!("user {id}")));
    };
    for key in &deleted.keys {
        state.publish(Change::Key { hash: key.hash }).await?;
    }
    state.publish(Change::User { id: id.clone() }).await?;
    state
        .audit(&caller, "user.delete", &id, &deleted.user.tenant)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/groups", tag = "groups",
    responses((status = 200, body = GroupList)), security(("bearer" = [])))]
pub async fn list_groups(
    State(state): State<Shared>,
    caller: Caller,
) -> Result<Json<GroupList>, ApiError> {
    caller.require_admin()?;
    let groups = state.store.list_groups(caller.tenant()).await?;
    Ok(Json(GroupList {
        items: groups.iter().map(GroupView::from).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups", params(("id" = String, Path)),
    responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn show_group(
    State(state): State<Shared>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<GroupView>, ApiError> {
    caller.require_admin()?;
    let group = group_in_reach(&state, &caller, &id).await?;
    Ok(Json(GroupView::from(&group)))
}

#[utoipa::path(put, path = "/v1/groups/{id}", tag = "groups", params(("id" = String, Path, pattern = r"^[A-Za-z0-9._@-]{1,128}$")), request_body = PutGroup,
    responses((status = 200, body = GroupView), (status = 201, body = GroupView), (status = 400, body = ErrorBody),
              (status = 409, description = "The id belongs to another tenant's group", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_group(
    State(state): State<Shared>,
    caller: Caller,
    Id(id): Id,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<GroupView>), ApiError> {
    caller.require_admin()?;
    validate::id("id", &id)?;
    let req: PutGroup = parse_json(&body)?;
    validate::permissions("permissions", &req.permissions)?;
    let tenant = chosen_tenant(&caller, req.tenant.as_deref())?;
    let existing = state.store.get_group(&id).await?;
    if let Some(old) = &existing {
        if !caller.can_see(&old.tenant, None) {
            return Err(ApiError::Conflict(format!("group id `{id}` is taken")));
        }
        if old.tenant != tenant {
            return Err(ApiError::invalid(
                "tenant",
                "a group cannot move to another tenant",
            ));
        }
    }
    let now = Utc::now();
    let group = Group {
        id: id.clone(),
        tenant,
        permissions: validate::normalized(req.permissions),
        created_at: existing.as_ref().map_or(now, |g| g.created_at),
        updated_at: now,
    };
    state.store.put_group(&group).await?;
    state.publish(Change::Group { id: id.clone() }).await?;
    let (status, action) = if existing.is_some() {
        (StatusCode::OK, "group.replace")
    } else {
        (StatusCode::CREATED, "group.create")
    };
    state.audit(&caller, action, &id, &group.tenant).await;
    Ok((status, Json(GroupView::from(&group))))
}

#[utoipa::path(delete, path = "/v1/groups/{id}", tag = "groups", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted and removed from its members; they lose its permissions at once"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_group(
    State(state): State<Shared>,
    caller: Caller,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    group_in_reach(&state, &caller, &id).await?;
    let Some(group) = state.store.delete_group(&id).await? else {
        return Err(ApiError::NotFound(format!("group {id}")));
    };
    // Members forget the group, so a later group of the same name grants them nothing and
    // their records stay valid to edit.
    for mut member in state.store.list_users(Some(&group.tenant)).await? {
        if member.groups.contains(&id) {
            member.groups.retain(|g| *g != id);
            member.updated_at = Utc::now();
            state.store.put_user(&member).await?;
            state.publish(Change::User { id: member.id }).await?;
        }
    }
    state.publish(Change::Group { id: id.clone() }).await?;
    state
        .audit(&caller, "group.delete", &id, &group.tenant)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(PageQuery),
    responses((status = 200, body = AuditList), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn audit(
    State(state): State<Shared>,
    caller: Caller,
    Params(q): Params<PageQuery>,
) -> Result<Json<AuditList>, ApiError> {
    caller.require_admin()?;
    let limit = validate::limit(q.limit)?;
    let page = state
        .store
        .list_audit(caller.tenant(), limit, q.cursor.as_deref())
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Other(msg) if msg.contains("cursor") => {
                ApiError::invalid("cursor", msg)
            }
            other => other.into(),
        })?;
    Ok(Json(AuditList {
        items: page.items.iter().map(AuditView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// The tenant a new object goes to: the caller's own for tenant admins (who may name it
/// but not another), the named or default one for the super-admin.
fn chosen_tenant(caller: &Caller, asked: Option<&str>) -> Result<String, ApiError> {
    if let Some(t) = asked {
        validate::tenant("tenant", t)?;
    }
    match (caller.tenant(), asked) {
        (Some(mine), Some(t)) if t != mine => Err(ApiError::Forbidden(
            "tenant admins manage their own tenant only".into(),
        )),
        (Some(mine), _) => Ok(mine.to_owned()),
        (None, Some(t)) => Ok(t.to_owned()),
        (None, None) => Ok(DEFAULT_TENANT.to_owned()),
    }
}

/// Checks a user's fields and that its groups exist in its tenant; lists come back sorted.
async fn checked_user(state: &Shared, mut user: User) -> Result<User, ApiError> {
    validate::rate_limit("rate_limit", user.rate_limit.as_ref())?;
    validate::display_name(&user.name)?;
    validate::permissions("permissions", &user.permissions)?;
    for (i, g) in user.groups.iter().enumerate() {
        validate::id(&format!("groups[{i}]"), g)?;
        let group = state.store.get_group(g).await?;
        if group.is_none_or(|g| g.tenant != user.tenant) {
            return Err(ApiError::invalid(
                format!("groups[{i}]"),
                format!("no group `{g}` in tenant `{}`", user.tenant),
            ));
        }
    }
    user.groups = validate::normalized(user.groups);
    user.permissions = validate::normalized(user.permissions);
    Ok(user)
}

async fn user_in_reach(state: &Shared, caller: &Caller, id: &str) -> Result<User, ApiError> {
    state
        .store
        .get_user(id)
        .await?
        .filter(|u| caller.can_see(&u.tenant, Some(&u.id)))
        .ok_or_else(|| ApiError::NotFound(format!("user {id}")))
}

async fn group_in_reach(state: &Shared, caller: &Caller, id: &str) -> Result<Group, ApiError> {
    state
        .store
        .get_group(id)
        .await?
        .filter(|g| caller.can_see(&g.tenant, None))
        .ok_or_else(|| ApiError::NotFound(format!("group {id}")))
}

#[utoipa::path(get, path = "/v1/whoami", tag = "users",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    let (role, tenant, user, key_id) = match caller {
        Caller::SuperAdmin => ("super_admin", None, None, None),
        Caller::TenantAdmin {
            tenant,
            user,
            key_id,
        } => ("tenant_admin", Some(tenant), Some(user), Some(key_id)),
        Caller::SelfService {
            tenant,
            user,
            key_id,
        } => ("self", Some(tenant), Some(user), Some(key_id)),
    };
    Json(WhoAmI {
        role: role.to_owned(),
        tenant,
        user,
        key_id,
    })
}
