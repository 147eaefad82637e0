//! The dashboard page (`/`) and its files (`/web/…`), embedded in the binary: an HTML
//! page, ES modules and the vendored uPlot 1.6.32 (MIT; its licence at
//! `/web/vendor/uplot/LICENSE`), no build step. The page talks to `/ws` and the
//! `/api/v1` reads like any other client.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Every file the page loads: its path under `/web/`, its type and its bytes.
const FILES: [(&str, &str, &str); 8] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "book.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/book.js"),
    ),
    (
        "ring.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/ring.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
    (
        "vendor/uplot/uPlot.esm.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/vendor/uplot/uPlot.esm.js"),
    ),
    (
        "vendor/uplot/uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../web/vendor/uplot/uPlot.min.css"),
    ),
    (
        "vendor/uplot/LICENSE",
        "text/plain; charset=utf-8",
        include_str!("../../web/vendor/uplot/LICENSE"),
    ),
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
];

/// `/`: the page.
pub(super) async fn index() -> Response {
    file(Path("index.html".into())).await
}

/// `/web/{*path}`: one of the page's files.
pub(super) async fn file(Path(path): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                // The files change only with the binary: revalidate, never guess.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no such file: /web/{path}\n"),
        )
            .into_response(),
    }
}
