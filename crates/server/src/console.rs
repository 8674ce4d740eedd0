//! The web console and the example apps: plain HTML, CSS and JavaScript
//! compiled into the binary (`crates/server/console/`), so that every node
//! serves them with nothing loaded from elsewhere. They are clients of the
//! public HTTP API like any other: the pages hold no data, and every call
//! they make carries the token the person logged in with.
//!
//! | path | page |
//! |---|---|
//! | `/` | the console |
//! | `/apps/todo/` | the realtime todo app |
//! | `/lib/cairn.js` | the browser client both use: failover across nodes, resumable feeds |

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset { path: "/", content_type: HTML, body: include_str!("../console/index.html") },
    Asset {
        path: "/console/console.js",
        content_type: JS,
        body: include_str!("../console/console.js"),
    },
    Asset {
        path: "/console/console.css",
        content_type: CSS,
        body: include_str!("../console/console.css"),
    },
    Asset { path: "/lib/cairn.js", content_type: JS, body: include_str!("../console/cairn.js") },
    Asset {
        path: "/apps/todo/",
        content_type: HTML,
        body: include_str!("../console/todo/index.html"),
    },
    Asset {
        path: "/apps/todo/todo.js",
        content_type: JS,
        body: include_str!("../console/todo/todo.js"),
    },
    Asset {
        path: "/apps/todo/todo.css",
        content_type: CSS,
        body: include_str!("../console/todo/todo.css"),
    },
];

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Pages may load only what this node serves; they may call any node
/// (`connect-src`: the console goes on through another node when its own
/// dies, and submits desired states to the cloud).
const CSP: &str = "default-src 'self'; connect-src 'self' http: https:; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the pages (or `/apps/todo` without its slash).
pub fn is_page(path: &str) -> bool {
    path == "/apps/todo" || ASSETS.iter().any(|asset| asset.path == path)
}

/// The pages' routes.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for asset in ASSETS {
        router = router.route(asset.path, get(move || async move { serve(asset) }));
    }
    router.route(
        "/apps/todo",
        get(|| async {
            (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/apps/todo/")]).into_response()
        }),
    )
}

fn serve(asset: &'static Asset) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
