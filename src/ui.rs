//! The built-in web UI (issue 19): the files of `ui/dist/`, compiled into the binary by `build.rs`, served
//! from memory under `/ui/`. `GET /` redirects there with a relative `Location`, so the UI works under any
//! path prefix a proxy adds. A file's `.gz` sibling (written by the UI's build) is sent to clients that
//! accept gzip. Hashed files under `assets/` are cached for a year; `index.html` is revalidated. The
//! Content-Security-Policy keeps the page to this origin: no script, font or request goes elsewhere.
//!
//! The files are static and public (no data in them), so they need no token; the UI asks for one when an
//! API call answers 401.

use axum::Router;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

mod files {
    include!(concat!(env!("OUT_DIR"), "/ui_files.rs"));
}

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; \
                   connect-src 'self' ws: wss:; font-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'self'";

/// The UI's routes.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { redirect("ui/") }))
        .route("/ui", get(|| async { redirect("ui/") }))
        .route("/ui/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route("/ui/{*path}", get(|Path(path): Path<String>, headers: HeaderMap| async move { serve(&path, &headers) }))
        .route("/graph", get(|RawQuery(q): RawQuery| async move { graph(q.as_deref()) }))
}

/// Prometheus' `/graph?g0.expr=...`, the link alerts carry as `generatorURL` (the ruler writes it as
/// Prometheus does, so Alertmanager and chat messages link back): the UI's Metrics view with that query.
fn graph(q: Option<&str>) -> Response {
    let expr = form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "g0.expr")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let enc: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    let to = if expr.is_empty() { "ui/#/metrics".to_string() } else { format!("ui/#/metrics?query={enc}") };
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

fn find(path: &str) -> Option<&'static [u8]> {
    files::FILES.binary_search_by(|(p, _)| (*p).cmp(path)).ok().map(|i| files::FILES[i].1)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    if path.ends_with(".gz") || path.split('/').any(|s| s == ".." || s.is_empty()) {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    let Some(raw) = find(path) else {
        if files::FILES.is_empty() {
            return (StatusCode::NOT_FOUND, "this lumen was built without its web UI (ui/dist is empty)\n")
                .into_response();
        }
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let gzip_ok = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().split(';').next() == Some("gzip")));
    let gz = if gzip_ok { find(&format!("{path}.gz")) } else { None };
    let cache = if path.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    let mut resp = (StatusCode::OK, gz.unwrap_or(raw)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    if gz.is_some() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

/// The UI's files, for tests: (path, bytes).
pub fn files() -> &'static [(&'static str, &'static [u8])] {
    files::FILES
}
