//! The web console: static HTML, CSS and JavaScript modules from `console/`, compiled into
//! the binary and served on the admin listener at `/` and `/console/{file}`. Nothing is
//! fetched at run time, so it works on a machine with no internet. The page calls the
//! admin API under `/v1` from the browser, with the token the person pasted.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// Only our own files, no inline code, no framing, no form posts anywhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file of the console. Adding a file to `console/` means adding it here.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: HTML,
        body: include_bytes!("../../console/index.html"),
    },
    Asset {
        name: "app.css",
        content_type: CSS,
        body: include_bytes!("../../console/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("../../console/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_bytes!("../../console/api.js"),
    },
    Asset {
        name: "ui.js",
        content_type: JS,
        body: include_bytes!("../../console/ui.js"),
    },
    Asset {
        name: "keys.js",
        content_type: JS,
        body: include_bytes!("../../console/keys.js"),
    },
    Asset {
        name: "directory.js",
        content_type: JS,
        body: include_bytes!("../../console/directory.js"),
    },
];

/// `GET /`: the console's page.
pub async fn index(headers: HeaderMap) -> Response {
    serve(
        find("index.html").expect("index.html is embedded"),
        &headers,
    )
}

/// `GET /console/{file}`: its scripts and styles.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match find(&file) {
        Some(i) => serve(i, &headers),
        None => ApiError::NotFound("console file".into()).into_response(),
    }
}

fn find(name: &str) -> Option<usize> {
    ASSETS.iter().position(|a| a.name == name)
}

/// Strong validators, computed once: `Cache-Control: no-cache` makes the browser ask every
/// time, and an unchanged file then costs a 304.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header")
            })
            .collect()
    })
}

fn serve(index: usize, request: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_by_name_and_nothing_else() {
        for a in ASSETS {
            assert_eq!(find(a.name).map(|i| ASSETS[i].name), Some(a.name));
            assert!(!a.body.is_empty(), "{} is empty", a.name);
        }
        assert_eq!(find("../Cargo.toml"), None);
        assert_eq!(find(""), None);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(ASSETS[find("index.html").unwrap()].body).unwrap();
        for tag in html.split("<script").skip(1) {
            let open = tag.split('>').next().unwrap();
            assert!(open.contains("src="), "inline <script>: {open}");
        }
        assert!(!html.contains("<style"), "inline <style>");
        assert!(!html.contains(" style="), "inline style attribute");
        assert!(!html.contains(" onclick="), "inline event handler");
    }
}
