//! The config loader: YAML text → `Config::from_yaml` (parse, defaults, validation), as
//! `keygate serve`, `check-config` and a reload run it.
//!
//! Any input either loads or is refused with an error naming a key path; a config that
//! loads can be used (identity header names, routes, upstream URIs) and its effective form
//! (`check-config` output) loads again to the same config, without the secrets in it.

use http::Uri;
use keygate::auth::IdentityHeaders;
use keygate::config::duration::{format_duration, parse_duration};
use keygate::config::{Config, ConfigError};
use keygate::proxy::rewrite;
use keygate::proxy::route::Router;

/// The only environment variable the checks set: the admin token, which must never be
/// printed.
const ADMIN_TOKEN: &str = "fuzz-admin-token-3141";

pub enum Outcome {
    Loaded,
    /// Refused with `ConfigError::Invalid` (or not UTF-8, which reading the file refuses).
    Refused {
        path: String,
    },
}

fn env(name: &str) -> Option<String> {
    (name == "KEYGATE_ADMIN_TOKEN").then(|| ADMIN_TOKEN.to_owned())
}

pub fn check(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else {
        return Outcome::Refused {
            path: "(not UTF-8)".into(),
        };
    };
    check_duration(text);
    match Config::from_yaml(text, &env) {
        Ok(config) => {
            check_usable(&config);
            check_effective_config(&config, text);
            Outcome::Loaded
        }
        Err(ConfigError::Invalid { path, message }) => {
            check_error(&path, &message);
            Outcome::Refused { path }
        }
        Err(e @ ConfigError::Read { .. }) => panic!("from_yaml read a file: {e}"),
    }
}

/// Durations are read back to the same value from the form they are written in.
fn check_duration(text: &str) {
    if let Ok(d) = parse_duration(text) {
        let shown = format_duration(d);
        assert_eq!(
            parse_duration(&shown),
            Ok(d),
            "{text:?} was written as {shown:?}"
        );
    }
}

/// An error names where it is: a non-empty path an operator can read on one line, and a
/// message saying what is wrong.
fn check_error(path: &str, message: &str) {
    assert!(!path.is_empty(), "error without a key path: {message:?}");
    assert!(
        !path.chars().any(char::is_control),
        "key path with control characters: {path:?}"
    );
    assert!(
        !message.trim().is_empty(),
        "error at {path} without a message"
    );
}

/// What the proxy builds from a config that loaded must build without panicking.
fn check_usable(config: &Config) {
    let identity = IdentityHeaders::new(&config.identity.header_prefix);
    assert!(identity
        .user
        .as_str()
        .starts_with(&config.identity.header_prefix.to_ascii_lowercase()));
    Router::new(&config.routes);
    let root: Uri = "/".parse().expect("a path");
    for route in &config.routes {
        let strip = route.strip_prefix.then_some(route.path_prefix.as_str());
        let target = &route.upstream;
        let uri = rewrite::upstream_uri(target, &root, strip)
            .unwrap_or_else(|e| panic!("route {} cannot forward `/`: {e}", route.name));
        assert_eq!(uri.authority(), Some(&target.authority));
    }
}

/// `check-config` prints the effective config; it loads again to the same effective config
/// and never shows the admin token.
fn check_effective_config(config: &Config, input: &str) {
    let shown = config.redacted_yaml();
    if !input.contains(ADMIN_TOKEN) {
        assert!(!shown.contains(ADMIN_TOKEN), "the admin token was printed");
    }
    let again = Config::from_yaml(&shown, &env)
        .unwrap_or_else(|e| panic!("the effective config does not load: {e}\n{shown}"));
    assert_eq!(
        again.redacted_yaml(),
        shown,
        "the effective config changed on reload"
    );
}
