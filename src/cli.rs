//! The command line (CONTRACT §2).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::config::duration::parse_duration;
use crate::config::Secret;

#[derive(Debug, Parser)]
#[command(name = "keygate", version, about = "API-key authentication gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, env = "KEYGATE_CONFIG", value_name = "PATH")]
        config: PathBuf,
    },
    /// Validate a config file and print the effective config with secrets redacted.
    CheckConfig {
        #[arg(long, env = "KEYGATE_CONFIG", value_name = "PATH")]
        config: PathBuf,
    },
    /// Run a small upstream that answers every request with a JSON description of it.
    Echo {
        #[arg(long, default_value = "127.0.0.1:9000", value_name = "ADDR")]
        listen: SocketAddr,
    },
    #[command(flatten)]
    Client(Box<ClientCommand>),
}

/// Everything after `keygate keys|users|groups|verify`: clients of the admin API
/// (CONTRACT §2, §6), run by [`crate::client::run`].
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Issue, list, edit, disable, roll, revoke and import API keys.
    Keys {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage users (key owners): tenant, groups and permissions.
    Users {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Manage groups: named sets of permissions users can belong to.
    Groups {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: GroupsCommand,
    },
    /// Ask the gateway what it would decide for a key (exit status 1 when it would refuse it).
    Verify {
        #[command(flatten)]
        admin: AdminArgs,
        /// The key; leave it out or give `-` to read it from standard input (keeps it out of
        /// the process list and shell history).
        #[arg(value_name = "KEY")]
        key: Option<String>,
        /// Also check that the key grants this permission (repeatable).
        #[arg(long = "require", value_name = "PERMISSION")]
        require: Vec<String>,
    },
}

/// How to reach the admin API; accepted before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Base URL of the admin listener.
    #[arg(
        long,
        global = true,
        help_heading = "Admin API",
        env = "KEYGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:8081",
        value_name = "URL"
    )]
    pub admin_url: String,
    /// Admin token (the bootstrap token or an admin/self-service key). Prefer the
    /// environment variable: arguments are visible in the process list.
    #[arg(
        long,
        global = true,
        help_heading = "Admin API",
        env = "KEYGATE_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = parse_secret
    )]
    pub token: Option<Secret>,
    /// Print the API's JSON answer (pretty) instead of a table or `key: value` lines.
    #[arg(long, global = true, help_heading = "Admin API")]
    pub json: bool,
    /// Give up on a request after this long.
    #[arg(long, global = true, help_heading = "Admin API", default_value = "30s", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key; its secret is printed once.
    Create {
        /// The user the key belongs to (self-service callers may leave it out).
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// A label for people, 1 to 200 characters.
        #[arg(long)]
        name: String,
        /// Up to 1000 characters.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        expiry: Expiry,
        /// Narrow the key to this one of its owner's permissions (repeatable).
        #[arg(long = "permission", value_name = "PERMISSION")]
        permissions: Vec<String>,
        /// Free-form JSON stored with the key.
        #[arg(long, value_name = "JSON", value_parser = parse_json_arg)]
        meta: Option<serde_json::Value>,
        /// Print nothing but the secret.
        #[arg(long, short)]
        quiet: bool,
    },
    /// List keys (newest first is up to the store; use --all to follow every page).
    List {
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// Super-admin only.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum)]
        status: Option<KeyStatusArg>,
        /// Page size (1 to 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Continue after this cursor (from the previous page).
        #[arg(long, conflicts_with = "all")]
        cursor: Option<String>,
        /// Follow `next_cursor` until the last page.
        #[arg(long)]
        all: bool,
    },
    /// Show one key.
    Show { id: String },
    /// Change a key's name, description, expiry or permission restriction.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// RFC 3339 time, e.g. 2030-01-01T00:00:00Z.
        #[arg(long, value_name = "TIME", value_parser = parse_time_arg, group = "new_expiry")]
        expires_at: Option<DateTime<Utc>>,
        /// From now, e.g. 30d.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg, group = "new_expiry")]
        expires_in: Option<Duration>,
        /// Remove the expiry (if the gateway allows keys that never expire).
        #[arg(long, group = "new_expiry")]
        never_expires: bool,
        /// Replace the key's permission restriction (repeatable).
        #[arg(long = "permission", value_name = "PERMISSION")]
        permissions: Vec<String>,
        /// Remove the restriction: the key gets all of its owner's permissions.
        #[arg(long, conflicts_with = "permissions")]
        clear_permissions: bool,
    },
    /// Disable a key (it is refused with `key_disabled` until enabled again).
    Disable { id: String },
    /// Enable a disabled key.
    Enable { id: String },
    /// Delete a key for good; every gateway instance forgets it before this returns.
    Revoke { id: String },
    /// Issue a replacement key (same owner, name and permissions); the old one stops
    /// working after the grace period.
    Roll {
        id: String,
        /// How long the old key keeps working, e.g. 24h (default: it stops at once).
        #[arg(long, value_name = "DURATION", value_parser = checked_duration_text)]
        grace: Option<String>,
        /// Print nothing but the new secret.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Adopt a key from an existing system, by its secret or its SHA-256.
    #[command(group = ArgGroup::new("material").required(true).args(["sha256", "key"]))]
    Import {
        #[arg(long, value_name = "USER")]
        owner: String,
        #[arg(long)]
        name: String,
        /// SHA-256 of the secret, 64 hex digits.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// The secret itself (`-` reads it from standard input).
        #[arg(long, value_name = "SECRET")]
        key: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// RFC 3339 time.
        #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
        expires_at: Option<DateTime<Utc>>,
        /// Import it disabled.
        #[arg(long)]
        disabled: bool,
        #[arg(long = "permission", value_name = "PERMISSION")]
        permissions: Vec<String>,
        #[arg(long, value_name = "JSON", value_parser = parse_json_arg)]
        meta: Option<serde_json::Value>,
    },
}

/// At most one way to say when a new key expires (default: `keys.default_ttl`).
#[derive(Debug, Clone, Args)]
#[group(multiple = false)]
pub struct Expiry {
    /// From now, e.g. 30d.
    #[arg(long, value_name = "DURATION", value_parser = checked_duration_text)]
    pub expires_in: Option<String>,
    /// RFC 3339 time, e.g. 2030-01-01T00:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub expires_at: Option<DateTime<Utc>>,
    /// No expiry (if the gateway allows it).
    #[arg(long)]
    pub never_expires: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyStatusArg {
    Active,
    Disabled,
    Expired,
}

impl KeyStatusArg {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatusArg::Active => "active",
            KeyStatusArg::Disabled => "disabled",
            KeyStatusArg::Expired => "expired",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users.
    List,
    /// Show one user.
    Show { id: String },
    /// Create or replace a user (fields left out are reset to their defaults).
    Put {
        id: String,
        /// Super-admin only; default `default` (tenant admins: their own).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Create it deactivated: its keys are refused with `user_inactive`.
        #[arg(long)]
        inactive: bool,
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        #[arg(long = "permission", value_name = "PERMISSION")]
        permissions: Vec<String>,
    },
    /// Change some of a user's fields; lists given replace the old ones.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_name = "true|false", value_parser = clap::value_parser!(bool))]
        active: Option<bool>,
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Remove the user from every group.
        #[arg(long, conflicts_with = "groups")]
        clear_groups: bool,
        #[arg(long = "permission", value_name = "PERMISSION")]
        permissions: Vec<String>,
        /// Remove every permission of the user's own (groups' stay).
        #[arg(long, conflicts_with = "permissions")]
        clear_permissions: bool,
    },
    /// Delete a user and all of its keys.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List groups.
    List,
    /// Show one group.
    Show { id: String },
    /// Create or replace a group.
    Put {
        id: String,
        /// Super-admin only; default `default` (tenant admins: their own).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long = "permission", value_name = "PERMISSION")]
        permissions: Vec<String>,
    },
    /// Delete a group; its members lose its permissions at once.
    Delete { id: String },
}

fn parse_secret(text: &str) -> Result<Secret, String> {
    Ok(Secret::new(text))
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

/// A duration checked here (a typo is a usage error) but sent as written.
fn checked_duration_text(text: &str) -> Result<String, String> {
    parse_duration(text).map(|_| text.trim().to_owned())
}

fn parse_time_arg(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time such as 2030-01-01T00:00:00Z ({e})"))
}

fn parse_json_arg(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn admin_options_go_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "keygate",
            "keys",
            "--admin-url",
            "http://h:1",
            "list",
            "--json",
            "--token",
            "t",
        ])
        .unwrap();
        let Command::Client(client) = cli.command else {
            panic!("not a client command")
        };
        let ClientCommand::Keys { admin, command } = *client else {
            panic!("not keys")
        };
        assert_eq!(admin.admin_url, "http://h:1");
        assert!(admin.json);
        assert_eq!(admin.token.unwrap().expose(), "t");
        assert!(matches!(command, KeysCommand::List { .. }));
    }

    #[test]
    fn conflicting_choices_are_usage_errors() {
        for args in [
            &[
                "keygate",
                "keys",
                "create",
                "--name",
                "n",
                "--expires-in",
                "1d",
                "--never-expires",
            ][..],
            &[
                "keygate",
                "keys",
                "create",
                "--name",
                "n",
                "--expires-in",
                "1x",
            ],
            &[
                "keygate",
                "keys",
                "update",
                "k",
                "--permission",
                "a",
                "--clear-permissions",
            ],
            &["keygate", "keys", "import", "--owner", "u", "--name", "n"],
            &["keygate", "keys", "list", "--cursor", "c", "--all"],
            &["keygate", "users", "update", "u", "--active", "maybe"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }
}
