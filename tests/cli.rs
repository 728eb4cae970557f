//! `keygate keys|users|groups|verify` against a real gateway (embedded store): what the
//! CLI prints, its exit statuses, and that the keys it manages behave on the proxy.

mod common;

use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use keygate::auth::key;

const TOKEN: &str = "t0ken";

struct Setup {
    gw: Gateway,
    client: HttpClient,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let up = echo_upstream().await;
    let yaml = format!(
        "store: {{ embedded: {{ path: '{}' }} }}\nroutes:\n  - {{ name: api, path_prefix: /, upstream: 'http://{up}' }}\n",
        dir.path().join("kg.db").display()
    );
    let gw = Gateway::start_with_env(&yaml, &[("KEYGATE_ADMIN_TOKEN", TOKEN)]);
    Setup {
        gw,
        client: client(),
        _dir: dir,
    }
}

impl Setup {
    /// Runs the CLI (off the async runtime) with the admin URL and token in its environment.
    async fn cli(&self, args: &[&str]) -> (std::process::ExitStatus, String, String) {
        self.cli_with(args, TOKEN).await
    }

    async fn cli_with(
        &self,
        args: &[&str],
        token: &str,
    ) -> (std::process::ExitStatus, String, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let url = self.gw.admin_url("");
        let token = token.to_owned();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli_with_env(
                &args,
                &[
                    ("KEYGATE_ADMIN_URL", url.as_str()),
                    ("KEYGATE_ADMIN_TOKEN", token.as_str()),
                ],
            )
        })
        .await
        .unwrap()
    }

    /// Runs the CLI and insists it succeeded; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let (status, out, err) = self.cli(args).await;
        assert!(
            status.success(),
            "`keygate {}` failed ({status}):\nstdout: {out}\nstderr: {err}",
            args.join(" ")
        );
        out
    }

    async fn proxy_status(&self, secret: &str) -> StatusCode {
        let req = Request::get(self.gw.url("/orders"))
            .header("x-api-key", secret)
            .body(Full::default())
            .unwrap();
        send(&self.client, req).await.status
    }
}

/// The single line a `--quiet` create/roll prints, checked to be a well-formed key.
fn only_secret(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected only the secret, got: {stdout:?}");
    let secret = lines[0].to_owned();
    key::check(&secret, "kg").unwrap_or_else(|e| panic!("{secret:?} is not a key: {e}"));
    secret
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_issued_and_managed_by_the_cli_behave_on_the_proxy() {
    let s = setup().await;

    let out = s
        .ok(&[
            "groups",
            "put",
            "readers",
            "--tenant",
            "acme",
            "--permission",
            "orders:read",
        ])
        .await;
    assert!(out.contains("orders:read"), "{out}");
    let out = s
        .ok(&[
            "users", "put", "alice", "--tenant", "acme", "--name", "Alice", "--group", "readers",
        ])
        .await;
    assert!(out.contains("readers"), "{out}");
    let out = s.ok(&["users", "list"]).await;
    let header = out.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["ID", "TENANT", "ACTIVE", "GROUPS", "PERMISSIONS"]
    );
    assert!(out.contains("alice") && out.contains("acme"), "{out}");
    let out = s.ok(&["groups", "list"]).await;
    assert!(
        out.contains("readers") && out.contains("orders:read"),
        "{out}"
    );

    // --quiet: the secret alone, and it works.
    let out = s
        .ok(&[
            "keys",
            "create",
            "--owner",
            "alice",
            "--name",
            "ci",
            "--expires-in",
            "30d",
            "--quiet",
        ])
        .await;
    let secret = only_secret(&out);
    assert_eq!(s.proxy_status(&secret).await, StatusCode::OK);

    // The human create output shows the record, then the secret once on its own line.
    let out = s
        .ok(&["keys", "create", "--owner", "alice", "--name", "laptop"])
        .await;
    let lines: Vec<&str> = out.lines().collect();
    let banner = lines
        .iter()
        .position(|l| l.starts_with("secret (shown once"))
        .unwrap_or_else(|| panic!("no secret banner: {out}"));
    assert_eq!(
        banner + 2,
        lines.len(),
        "the secret is the last line: {out}"
    );
    let laptop = lines[banner + 1];
    key::check(laptop, "kg").unwrap();
    assert_eq!(out.matches(laptop).count(), 1, "{out}");
    assert!(out.contains("owner:") && out.contains("alice"), "{out}");

    // --json parses; the id comes from it.
    let list = json(&s.ok(&["keys", "list", "--owner", "alice", "--json"]).await);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    let ci = items.iter().find(|k| k["name"] == "ci").unwrap();
    let id = ci["id"].as_str().unwrap().to_owned();
    assert_eq!(ci["start"], secret[..8]);
    assert!(!list.to_string().contains(&secret));

    // The table: headers, the id, never the secret.
    let out = s.ok(&["keys", "list"]).await;
    assert!(out.starts_with("ID"), "{out}");
    for column in [
        "NAME",
        "START",
        "OWNER",
        "STATUS",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ] {
        assert!(out.lines().next().unwrap().contains(column), "{out}");
    }
    assert!(out.contains(&id), "{out}");
    assert!(!out.contains(&secret) && !out.contains(laptop), "{out}");

    // Paging with --limit 1 --all still gets both.
    let all = json(
        &s.ok(&["keys", "list", "--limit", "1", "--all", "--json"])
            .await,
    );
    assert_eq!(all["items"].as_array().unwrap().len(), 2, "{all}");
    assert!(all["next_cursor"].is_null());

    let out = s.ok(&["keys", "show", &id]).await;
    assert!(out.contains("status:") && out.contains("active"), "{out}");
    let out = s
        .ok(&["keys", "update", &id, "--description", "build bot"])
        .await;
    assert!(out.contains("build bot"), "{out}");

    s.ok(&["keys", "disable", &id]).await;
    assert_eq!(s.proxy_status(&secret).await, StatusCode::FORBIDDEN);
    let shown = json(&s.ok(&["keys", "show", &id, "--json"]).await);
    assert_eq!(shown["status"], "disabled");
    s.ok(&["keys", "enable", &id]).await;
    assert_eq!(s.proxy_status(&secret).await, StatusCode::OK);

    // Roll: the new secret works, the old one stops (no grace).
    let out = s.ok(&["keys", "roll", &id, "--quiet"]).await;
    let rolled = only_secret(&out);
    assert_ne!(rolled, secret);
    assert_eq!(s.proxy_status(&rolled).await, StatusCode::OK);
    assert_eq!(s.proxy_status(&secret).await, StatusCode::FORBIDDEN);

    // verify: exit 0 and the key id for a good key (read from stdin here would also do).
    let verdict = json(&s.ok(&["verify", &rolled, "--json"]).await);
    assert_eq!(verdict["valid"], true, "{verdict}");
    let rolled_id = verdict["key_id"].as_str().unwrap().to_owned();
    assert_ne!(rolled_id, id);

    let out = s.ok(&["keys", "revoke", &rolled_id]).await;
    assert!(out.contains(&rolled_id), "{out}");
    assert_eq!(s.proxy_status(&rolled).await, StatusCode::UNAUTHORIZED);
    let (status, out, _) = s.cli(&["verify", &rolled]).await;
    assert_eq!(status.code(), Some(1), "a refused key exits 1: {out}");
    assert!(out.contains("invalid_key"), "{out}");

    // API refusals: `keygate: <code>: <message>`, exit 1.
    let (status, out, err) = s.cli(&["keys", "show", &rolled_id]).await;
    assert_eq!(status.code(), Some(1));
    assert!(out.is_empty(), "{out}");
    assert!(err.starts_with("keygate: not_found: "), "{err}");

    // Usage errors exit 2 and send nothing.
    let (status, _, err) = s.cli(&["keys", "update", &id]).await;
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("nothing to change"), "{err}");
    let (status, _, _) = s.cli(&["keys", "create", "--owner", "alice"]).await;
    assert_eq!(status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_and_unreachable_admin_urls_are_reported_on_stderr() {
    let s = setup().await;

    let (status, out, err) = s.cli_with(&["keys", "list"], "wrong-token").await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(out.is_empty(), "nothing on stdout: {out}");
    assert!(err.contains("unauthorized"), "{err}");
    assert!(
        !err.contains("wrong-token"),
        "the token is never printed: {err}"
    );

    // No token at all: a usage error before any request.
    let url = s.gw.admin_url("");
    let (status, out, err) = tokio::task::spawn_blocking(move || {
        run_cli_with_env(&["users", "list", "--admin-url", &url], &[])
    })
    .await
    .unwrap();
    if std::env::var_os("KEYGATE_ADMIN_TOKEN").is_none() {
        assert_eq!(status.code(), Some(2), "{err}");
        assert!(out.is_empty());
        assert!(err.contains("KEYGATE_ADMIN_TOKEN"), "{err}");
    }

    let dead = format!("http://{}", closed_port());
    let (status, out, err) = s
        .cli(&["keys", "list", "--admin-url", &dead, "--timeout", "5s"])
        .await;
    assert!(!status.success());
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("cannot reach the admin API at {dead}")),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "{err}");
}
