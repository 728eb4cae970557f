//! Each client subcommand: the request(s) it makes and what it prints. Output is built in
//! a `String` and written by the caller; notes for people (more pages, empty lists) go to
//! stderr so stdout stays what a script expects.

use std::collections::HashSet;
use std::io::BufRead;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::output;
use super::{encode, AdminClient, ClientError, Outcome};
use crate::cli::{AdminArgs, ClientCommand, GroupsCommand, KeysCommand, UsersCommand};

/// What `keys create` and `keys roll` print above the secret, so it cannot be missed.
pub const SECRET_BANNER: &str = "secret (shown once, store it now):";

/// The admin connection and output mode every command shares.
struct Ctx {
    api: AdminClient,
    json: bool,
}

impl Ctx {
    fn new(admin: &AdminArgs) -> Result<Self, ClientError> {
        Ok(Self {
            api: AdminClient::new(admin)?,
            json: admin.json,
        })
    }
}

pub async fn execute(command: ClientCommand, out: &mut String) -> Result<Outcome, ClientError> {
    match command {
        ClientCommand::Keys { admin, command } => {
            keys(&Ctx::new(&admin)?, command, out).await?;
            Ok(Outcome::Success)
        }
        ClientCommand::Users { admin, command } => {
            users(&Ctx::new(&admin)?, command, out).await?;
            Ok(Outcome::Success)
        }
        ClientCommand::Groups { admin, command } => {
            groups(&Ctx::new(&admin)?, command, out).await?;
            Ok(Outcome::Success)
        }
        ClientCommand::Verify {
            admin,
            key,
            require,
        } => {
            let ctx = Ctx::new(&admin)?;
            let key = secret_argument(key.as_deref(), "KEY")?;
            let mut body = json!({ "key": key });
            if !require.is_empty() {
                body["require"] = json!(require);
            }
            let answer = ctx.api.post("/v1/verify", &body).await?;
            if ctx.json {
                output::json(out, &answer);
            } else {
                output::verify_fields(out, &answer, Utc::now());
            }
            let valid = answer.get("valid").and_then(Value::as_bool) == Some(true);
            Ok(if valid {
                Outcome::Success
            } else {
                Outcome::Negative
            })
        }
    }
}

async fn keys(ctx: &Ctx, command: KeysCommand, out: &mut String) -> Result<(), ClientError> {
    let api = &ctx.api;
    match command {
        KeysCommand::Create {
            owner,
            name,
            description,
            expiry,
            permissions,
            meta,
            quiet,
        } => {
            let mut body = Map::new();
            insert(&mut body, "owner", owner);
            body.insert("name".into(), json!(name));
            insert(&mut body, "description", description);
            insert(&mut body, "expires_in", expiry.expires_in);
            insert(&mut body, "expires_at", expiry.expires_at.map(rfc3339));
            if expiry.never_expires {
                body.insert("never_expires".into(), json!(true));
            }
            if !permissions.is_empty() {
                body.insert("permissions".into(), json!(permissions));
            }
            insert(&mut body, "meta", meta);
            let issued = api.post("/v1/keys", &Value::Object(body)).await?;
            issued_key(ctx, &issued, quiet, None, out)
        }
        KeysCommand::List {
            owner,
            tenant,
            status,
            limit,
            cursor,
            all,
        } => {
            let mut query = Vec::new();
            push_query(&mut query, "owner", owner.as_deref());
            push_query(&mut query, "tenant", tenant.as_deref());
            push_query(&mut query, "status", status.map(|s| s.as_str()));
            push_query(&mut query, "limit", limit.map(|l| l.to_string()).as_deref());
            let (items, next, first_page) = list_keys(api, &query, cursor, all).await?;
            if ctx.json {
                match first_page {
                    // One page: exactly what the API said.
                    Some(page) if !all => output::json(out, &page),
                    _ => output::json(out, &json!({ "items": items, "next_cursor": next })),
                }
            } else if items.is_empty() {
                eprintln!("no keys found");
            } else {
                output::keys_table(out, &items);
            }
            if let Some(cursor) = next {
                if !ctx.json {
                    // After the table, not before it, when both go to a terminal.
                    super::flush_stdout(out);
                    eprintln!(
                        "more keys: add --cursor {} for the next page, or --all",
                        output::sanitize(&cursor)
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Show { id } => {
            let key = api.get(&format!("/v1/keys/{}", encode(&id))).await?;
            show_key(ctx, &key, out);
            Ok(())
        }
        KeysCommand::Update {
            id,
            name,
            description,
            expires_at,
            expires_in,
            never_expires,
            permissions,
            clear_permissions,
        } => {
            let mut body = Map::new();
            insert(&mut body, "name", name);
            insert(&mut body, "description", description);
            if let Some(at) = expires_at {
                body.insert("expires_at".into(), json!(rfc3339(at)));
            }
            if let Some(d) = expires_in {
                let at = chrono::TimeDelta::from_std(d)
                    .ok()
                    .and_then(|d| Utc::now().checked_add_signed(d))
                    .ok_or_else(|| ClientError::Usage("--expires-in is too large".into()))?;
                body.insert("expires_at".into(), json!(rfc3339(at)));
            }
            if never_expires {
                body.insert("expires_at".into(), Value::Null);
            }
            if clear_permissions {
                body.insert("permissions".into(), Value::Null);
            } else if !permissions.is_empty() {
                body.insert("permissions".into(), json!(permissions));
            }
            if body.is_empty() {
                return Err(ClientError::Usage(
                    "nothing to change: give --name, --description, --expires-at, \
                     --expires-in, --never-expires, --permission or --clear-permissions"
                        .into(),
                ));
            }
            let key = api
                .patch(&format!("/v1/keys/{}", encode(&id)), &Value::Object(body))
                .await?;
            show_key(ctx, &key, out);
            Ok(())
        }
        KeysCommand::Disable { id } => set_enabled(ctx, &id, false, out).await,
        KeysCommand::Enable { id } => set_enabled(ctx, &id, true, out).await,
        KeysCommand::Revoke { id } => {
            api.delete(&format!("/v1/keys/{}", encode(&id))).await?;
            if !ctx.json {
                out.push_str(&format!("revoked key {}\n", output::sanitize(&id)));
            }
            Ok(())
        }
        KeysCommand::Roll { id, grace, quiet } => {
            let body = match &grace {
                Some(g) => json!({ "grace": g }),
                None => json!({}),
            };
            let issued = api
                .post(&format!("/v1/keys/{}/roll", encode(&id)), &body)
                .await?;
            let note = format!(
                "old key {} stops working {}",
                output::sanitize(&id),
                grace.map_or("now".to_owned(), |g| format!("in {g}"))
            );
            issued_key(ctx, &issued, quiet, Some(note), out)
        }
        KeysCommand::Import {
            owner,
            name,
            sha256,
            key,
            description,
            expires_at,
            disabled,
            permissions,
            meta,
        } => {
            let mut body = Map::new();
            body.insert("owner".into(), json!(owner));
            body.insert("name".into(), json!(name));
            insert(&mut body, "sha256", sha256);
            if let Some(key) = key {
                body.insert("key".into(), json!(secret_argument(Some(&key), "--key")?));
            }
            insert(&mut body, "description", description);
            insert(&mut body, "expires_at", expires_at.map(rfc3339));
            if disabled {
                body.insert("enabled".into(), json!(false));
            }
            if !permissions.is_empty() {
                body.insert("permissions".into(), json!(permissions));
            }
            insert(&mut body, "meta", meta);
            let key = api.post("/v1/keys/import", &Value::Object(body)).await?;
            show_key(ctx, &key, out);
            Ok(())
        }
    }
}

/// Pages through `GET /v1/keys`: one page, or every page with `all`. Returns the items,
/// the cursor for more (if any) and the first page as the API sent it.
async fn list_keys(
    api: &AdminClient,
    query: &[String],
    mut cursor: Option<String>,
    all: bool,
) -> Result<(Vec<Value>, Option<String>, Option<Value>), ClientError> {
    let mut items = Vec::new();
    let mut first = None;
    let mut seen = HashSet::new();
    loop {
        let mut q = query.to_vec();
        push_query(&mut q, "cursor", cursor.as_deref());
        let path = if q.is_empty() {
            "/v1/keys".to_owned()
        } else {
            format!("/v1/keys?{}", q.join("&"))
        };
        let page = api.get(&path).await?;
        let Some(page_items) = page.get("items").and_then(Value::as_array) else {
            return Err(ClientError::Protocol {
                url: format!("{}{path}", api.base()),
                reason: "the answer has no `items` list".into(),
            });
        };
        items.extend(page_items.iter().cloned());
        let next = page
            .get("next_cursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if first.is_none() {
            first = Some(page);
        }
        match next {
            Some(c) if all => {
                if !seen.insert(c.clone()) {
                    return Err(ClientError::Protocol {
                        url: format!("{}{path}", api.base()),
                        reason: format!("cursor `{}` came back twice", output::sanitize(&c)),
                    });
                }
                cursor = Some(c);
            }
            next => return Ok((items, next, first)),
        }
    }
}

async fn set_enabled(
    ctx: &Ctx,
    id: &str,
    enabled: bool,
    out: &mut String,
) -> Result<(), ClientError> {
    let key = ctx
        .api
        .patch(
            &format!("/v1/keys/{}", encode(id)),
            &json!({ "enabled": enabled }),
        )
        .await?;
    if ctx.json {
        output::json(out, &key);
    } else {
        out.push_str(&format!(
            "{} key {} ({}); status: {}\n",
            if enabled { "enabled" } else { "disabled" },
            output::text(&key, "id"),
            output::text(&key, "name"),
            output::text(&key, "status"),
        ));
    }
    Ok(())
}

/// The answer of create/roll: the record, then the secret alone on the last line.
/// `--quiet` prints only that line (and wins over `--json`).
fn issued_key(
    ctx: &Ctx,
    issued: &Value,
    quiet: bool,
    note: Option<String>,
    out: &mut String,
) -> Result<(), ClientError> {
    let Some(secret) = issued.get("key").and_then(Value::as_str) else {
        return Err(ClientError::Protocol {
            url: ctx.api.base().to_owned(),
            reason: "the answer carries no `key`".into(),
        });
    };
    if quiet {
        out.push_str(secret);
        out.push('\n');
    } else if ctx.json {
        output::json(out, issued);
    } else {
        output::key_fields(out, issued, Utc::now());
        if let Some(note) = note {
            out.push_str(&note);
            out.push('\n');
        }
        out.push('\n');
        out.push_str(SECRET_BANNER);
        out.push('\n');
        out.push_str(secret);
        out.push('\n');
    }
    Ok(())
}

fn show_key(ctx: &Ctx, key: &Value, out: &mut String) {
    if ctx.json {
        output::json(out, key);
    } else {
        output::key_fields(out, key, Utc::now());
    }
}

async fn users(ctx: &Ctx, command: UsersCommand, out: &mut String) -> Result<(), ClientError> {
    let api = &ctx.api;
    let user = match command {
        UsersCommand::List => {
            let list = api.get("/v1/users").await?;
            let items = items_of(&list);
            if ctx.json {
                output::json(out, &list);
            } else if items.is_empty() {
                eprintln!("no users found");
            } else {
                output::users_table(out, items);
            }
            return Ok(());
        }
        UsersCommand::Show { id } => api.get(&format!("/v1/users/{}", encode(&id))).await?,
        UsersCommand::Put {
            id,
            tenant,
            name,
            inactive,
            groups,
            permissions,
        } => {
            let mut body = Map::new();
            insert(&mut body, "tenant", tenant);
            insert(&mut body, "name", name);
            body.insert("active".into(), json!(!inactive));
            body.insert("groups".into(), json!(groups));
            body.insert("permissions".into(), json!(permissions));
            api.put(&format!("/v1/users/{}", encode(&id)), &Value::Object(body))
                .await?
        }
        UsersCommand::Update {
            id,
            name,
            active,
            groups,
            clear_groups,
            permissions,
            clear_permissions,
        } => {
            let mut body = Map::new();
            insert(&mut body, "name", name);
            insert(&mut body, "active", active);
            if clear_groups || !groups.is_empty() {
                body.insert("groups".into(), json!(groups));
            }
            if clear_permissions || !permissions.is_empty() {
                body.insert("permissions".into(), json!(permissions));
            }
            if body.is_empty() {
                return Err(ClientError::Usage(
                    "nothing to change: give --name, --active, --group, --clear-groups, \
                     --permission or --clear-permissions"
                        .into(),
                ));
            }
            api.patch(&format!("/v1/users/{}", encode(&id)), &Value::Object(body))
                .await?
        }
        UsersCommand::Delete { id } => {
            api.delete(&format!("/v1/users/{}", encode(&id))).await?;
            if !ctx.json {
                out.push_str(&format!(
                    "deleted user {} and its keys\n",
                    output::sanitize(&id)
                ));
            }
            return Ok(());
        }
    };
    if ctx.json {
        output::json(out, &user);
    } else {
        output::user_fields(out, &user);
    }
    Ok(())
}

async fn groups(ctx: &Ctx, command: GroupsCommand, out: &mut String) -> Result<(), ClientError> {
    let api = &ctx.api;
    let group = match command {
        GroupsCommand::List => {
            let list = api.get("/v1/groups").await?;
            let items = items_of(&list);
            if ctx.json {
                output::json(out, &list);
            } else if items.is_empty() {
                eprintln!("no groups found");
            } else {
                output::groups_table(out, items);
            }
            return Ok(());
        }
        GroupsCommand::Show { id } => api.get(&format!("/v1/groups/{}", encode(&id))).await?,
        GroupsCommand::Put {
            id,
            tenant,
            permissions,
        } => {
            let mut body = Map::new();
            insert(&mut body, "tenant", tenant);
            body.insert("permissions".into(), json!(permissions));
            api.put(&format!("/v1/groups/{}", encode(&id)), &Value::Object(body))
                .await?
        }
        GroupsCommand::Delete { id } => {
            api.delete(&format!("/v1/groups/{}", encode(&id))).await?;
            if !ctx.json {
                out.push_str(&format!("deleted group {}\n", output::sanitize(&id)));
            }
            return Ok(());
        }
    };
    if ctx.json {
        output::json(out, &group);
    } else {
        output::group_fields(out, &group);
    }
    Ok(())
}

fn items_of(list: &Value) -> &[Value] {
    list.get("items")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn insert<T: serde::Serialize>(body: &mut Map<String, Value>, name: &str, value: Option<T>) {
    if let Some(v) = value {
        body.insert(name.to_owned(), json!(v));
    }
}

fn push_query(query: &mut Vec<String>, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        query.push(format!("{name}={}", encode(v)));
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A secret given as an argument, or read from the first line of stdin when it is absent
/// or `-` (so it stays out of `ps` and shell history).
fn secret_argument(given: Option<&str>, what: &str) -> Result<String, ClientError> {
    match given {
        Some(text) if text != "-" => Ok(text.to_owned()),
        _ => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| ClientError::Usage(format!("cannot read {what} from stdin: {e}")))?;
            let line = line.trim();
            if line.is_empty() {
                return Err(ClientError::Usage(format!(
                    "no {what}: give it as an argument or on standard input"
                )));
            }
            Ok(line.to_owned())
        }
    }
}
