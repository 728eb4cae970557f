//! `keygate keys|users|groups|verify`: a command-line client of the admin API
//! (CONTRACT §2, §6). [`AdminClient`] speaks HTTP and JSON, [`commands`] turns each
//! subcommand into requests, [`output`] renders answers for people.
//!
//! Exit status: 0 on success, 1 when the API refuses (its `code: message` on stderr) or
//! cannot be reached, 2 for usage errors (clap's own, and ours: no token, a bad URL,
//! nothing to change). The token is never printed.

pub mod commands;
pub mod output;

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::cli::{AdminArgs, ClientCommand};

/// The longest a TCP connect may take, whatever `--timeout` says.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one client subcommand to completion and returns the process exit status.
pub fn run(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keygate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = String::new();
    let result = runtime.block_on(commands::execute(command, &mut out));
    // Whatever was rendered goes out even when a later page failed.
    write_stdout(&out);
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Negative) => ExitCode::from(1),
        Err(e) => {
            eprintln!("keygate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A command that ran: `Negative` is an answer the caller should see as "no" (a key
/// `verify` would refuse), reported by exit status 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Negative,
}

/// Writes what has been rendered so far, so a following note on stderr comes after it.
pub(crate) fn flush_stdout(out: &mut String) {
    write_stdout(out);
    out.clear();
}

fn write_stdout(text: &str) {
    let mut stdout = io::stdout().lock();
    // A closed pipe (`keygate keys list | head`) is not an error worth reporting.
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Everything that can go wrong talking to the admin API.
#[derive(Debug)]
pub enum ClientError {
    /// The command line asks for something impossible; nothing was sent.
    Usage(String),
    /// The API answered with an error.
    Api {
        status: StatusCode,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// No answer: connection refused, DNS, TLS, or a timeout.
    Unreachable { url: String, reason: String },
    /// An answer that is not what the API sends (e.g. another server on that port).
    Protocol { url: String, reason: String },
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Usage(message) => f.write_str(message),
            ClientError::Api {
                status,
                code,
                message,
                request_id,
            } => {
                write!(f, "{code}: {message}")?;
                match request_id {
                    Some(id) if status.is_server_error() => write!(f, " (request id {id})"),
                    _ => Ok(()),
                }
            }
            ClientError::Unreachable { url, reason } => {
                write!(f, "cannot reach the admin API at {url}: {reason}")
            }
            ClientError::Protocol { url, reason } => {
                write!(f, "unexpected answer from {url}: {reason}")
            }
        }
    }
}

impl std::error::Error for ClientError {}

type Http = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client of one admin API: base URL, bearer token, connection pool.
pub struct AdminClient {
    /// Scheme, authority and an optional path prefix, without a trailing `/`.
    base: String,
    authorization: HeaderValue,
    http: Http,
    timeout: Duration,
}

impl AdminClient {
    pub fn new(args: &AdminArgs) -> Result<Self, ClientError> {
        let base = args.admin_url.trim().trim_end_matches('/').to_owned();
        let uri: Uri = base.parse().map_err(|e| {
            ClientError::Usage(format!(
                "--admin-url `{}` is not a URL: {e}",
                args.admin_url
            ))
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(ClientError::Usage(format!(
                "--admin-url `{}` must look like http://HOST:PORT or https://HOST:PORT",
                args.admin_url
            )));
        }
        if uri.query().is_some() {
            return Err(ClientError::Usage(format!(
                "--admin-url `{}` must not have a query",
                args.admin_url
            )));
        }
        let token = args.token.as_ref().ok_or_else(|| {
            ClientError::Usage(
                "no admin token: set KEYGATE_ADMIN_TOKEN (or pass --token)".to_owned(),
            )
        })?;
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", token.expose()))
            .map_err(|_| {
                ClientError::Usage(
                    "the admin token has characters an HTTP header cannot carry".to_owned(),
                )
            })?;
        authorization.set_sensitive(true);
        Ok(Self {
            base,
            authorization,
            http: http_client(args.timeout.min(CONNECT_TIMEOUT))?,
            timeout: args.timeout,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.expect_json(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.expect_json(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.expect_json(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.expect_json(Method::PATCH, path, Some(body)).await
    }

    /// DELETE: success is any 2xx, usually 204 without a body.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, path, None).await.map(|_| ())
    }

    async fn expect_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url,
            reason: format!("the body is not JSON ({e})"),
        })
    }

    /// Sends one request (`path` starts with `/` and is already percent-encoded) and
    /// returns the body of a 2xx answer; anything else becomes a [`ClientError`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Bytes, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("keygate-cli/", env!("CARGO_PKG_VERSION")),
            );
        let payload = match body {
            Some(value) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(value).expect("a JSON value serializes"))
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| ClientError::Usage(format!("cannot build a request for {url}: {e}")))?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                // "client error (Connect)" says less than its cause ("tcp connect error: …").
                let reason = match std::error::Error::source(&e) {
                    Some(cause) if e.is_connect() => error_chain(cause),
                    _ => error_chain(&e),
                };
                ClientError::Unreachable {
                    url: self.base.clone(),
                    reason,
                }
            })?;
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: self.base.clone(),
                    reason: format!("the answer was cut off: {}", error_chain(&e)),
                })?
                .to_bytes();
            Ok::<_, ClientError>((parts.status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Unreachable {
                url: self.base.clone(),
                reason: format!("no answer within {:?}", self.timeout),
            })??;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(api_error(status, &bytes))
        }
    }
}

fn http_client(connect_timeout: Duration) -> Result<Http, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Usage(format!("TLS setup failed: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The API's `{"error":{"code","message"},"request_id"}`, or a stand-in for a body that
/// is not one (e.g. from a proxy in front of the admin listener).
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |v: &Value, name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
    if let Some(error) = parsed.as_ref().and_then(|v| v.get("error")) {
        if let (Some(code), Some(message)) = (field(error, "code"), field(error, "message")) {
            return ClientError::Api {
                status,
                code,
                message,
                request_id: parsed.as_ref().and_then(|v| field(v, "request_id")),
            };
        }
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(200).collect();
    ClientError::Api {
        status,
        code: format!("http_{}", status.as_u16()),
        message: if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("no error body")
                .to_owned()
        } else {
            output::sanitize(&text)
        },
        request_id: None,
    }
}

/// An error and its causes, `outer: inner: …` (hyper's own message alone is vague).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// Percent-encodes one path segment or query value: everything but unreserved
/// characters, so an id such as `..` or `a/b` cannot change the route.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_ids_inside_their_segment() {
        assert_eq!(encode("alice"), "alice");
        assert_eq!(encode("a.b@c"), "a%2Eb%40c");
        assert_eq!(encode(".."), "%2E%2E");
        assert_eq!(encode("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn api_errors_keep_code_and_message() {
        let e = api_error(
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"code":"unauthorized","message":"bad token"},"request_id":"r1"}"#,
        );
        assert_eq!(e.to_string(), "unauthorized: bad token");
        assert_eq!(e.exit_code(), 1);
        let e = api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"error":{"code":"internal","message":"internal error"},"request_id":"r2"}"#,
        );
        assert_eq!(e.to_string(), "internal: internal error (request id r2)");
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>\n");
        assert_eq!(e.to_string(), "http_502: <html>bad gateway</html>");
        let e = api_error(StatusCode::NOT_FOUND, b"");
        assert_eq!(e.to_string(), "http_404: Not Found");
    }
}
