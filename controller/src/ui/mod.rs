//! The fleet dashboard at `/ui`: one HTML page, a stylesheet and a script,
//! compiled into the binary with `include_str!` (no build step, nothing
//! fetched from elsewhere at run time).
//!
//! Invariants:
//! - **Static and unauthenticated.** The page holds no data; it asks for an
//!   API token once, keeps it in the browser's `sessionStorage` (gone when
//!   the tab closes, never a cookie, so no request carries it implicitly),
//!   and every data call is an ordinary `/v1/...` request with
//!   `Authorization: Bearer`. Whatever the page can show, the API already
//!   serves to the same token.
//! - **Read-mostly.** The only writing call is the dry run (`POST
//!   /v1/deployments` with `dry_run: true`), which stores and touches
//!   nothing. Deploying, cancelling and revoking stay in the CLI.
//! - A strict Content-Security-Policy (`'self'` only, no inline script):
//!   text from agents and logs is inserted as text, never as HTML.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::OnceLock;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// What the browser may do with the page: only talk to this controller.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The page with the controller's version filled in, so it can highlight
/// agents running another version without an extra call.
fn index_html() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| INDEX.replace("__VESEMIR_VERSION__", env!("CARGO_PKG_VERSION")))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small, and must change with the binary: revalidate every load.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// The routes `/ui`, `/ui/` and its assets, for the API router to merge.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset("text/html; charset=utf-8", index_html()) }),
        )
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", index_html()) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
