//! The HTTP API's routes (see the README, "HTTP API (v1)"). Handlers parse and
//! validate at the edge, turn the request into one state-machine [`Op`] or one
//! read, and map the outcome to the JSON contract. Unknown routes and methods
//! get JSON errors too.
//!
//! [`Op`]: cairn_storage::Op

mod admin;
mod backups;
pub(crate) mod changes;
mod cluster;
mod docs;
mod kv;
mod openapi;
mod system;
mod tables;
mod tokens;

pub(crate) use backups::BACKUP_SCRATCH_DIR;
pub(crate) use tables::unexpected;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::routing::get;
use axum::{Json, Router};
use cairn_client::views::Created;
use cairn_storage::Applied;
use cairn_util::browser;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::metrics;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let (described, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(cluster::health))
        .routes(routes!(cluster::cluster))
        .routes(routes!(cluster::open_session))
        .routes(routes!(tables::list))
        .routes(routes!(tables::create, tables::drop))
        .routes(routes!(docs::list, docs::insert))
        .routes(routes!(docs::get, docs::replace, docs::update, docs::delete))
        .routes(routes!(system::get, system::put))
        .routes(routes!(admin::list, admin::add))
        .routes(routes!(admin::remove))
        .routes(routes!(admin::finalize))
        .routes(routes!(backups::list, backups::create))
        .routes(routes!(backups::delete))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(tokens::login))
        .routes(routes!(changes::table))
        .routes(routes!(changes::kv))
        .split_for_parts();
    let document = bytes::Bytes::from(openapi::render(document));
    described
        // Keys may contain '/': a wildcard, described by hand (see `openapi`).
        .route("/v1/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete).post(kv::increment))
        .route("/v1/openapi.json", openapi::serve(document))
        .route("/metrics", get(metrics::scrape))
        .merge(crate::console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // Outermost first: metrics, browser checks, then who is asking.
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

/// Refuses what a web page could send through a user's browser: a name this
/// node does not answer to (DNS rebinding) or a page of an origin it does not
/// trust (see [`cairn_util::browser`]): 403, before anything of the request
/// is read or done. Pages of the cluster's members (see
/// [`AppState::trusts_page_of`]) are trusted (the console
/// goes on through another node when its own dies): their preflights are
/// answered here, before authentication (a browser sends them without
/// credentials), and their answers get CORS headers.
async fn guard(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let headers = request.headers();
    let text = |name| headers.get(name).map(|value: &HeaderValue| value.to_str().unwrap_or(""));
    let checked = browser::Request {
        method: request.method().as_str(),
        host: text(header::HOST),
        origin: text(header::ORIGIN),
        content_type: text(header::CONTENT_TYPE),
    };
    // The content type of a POST is checked by the routes that take one
    // (`extract::JsonPost`), so a method a path does not take is still 405.
    let access =
        match state.config.browser.check_access(&checked, |origin| state.trusts_page_of(origin)) {
            Ok(access) => access,
            Err(refusal) => {
                return ApiError::new(StatusCode::FORBIDDEN, "forbidden", refusal.to_string())
                    .into_response()
            }
        };
    let preflight = request.method() == Method::OPTIONS
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let browser::Access::Trusted(origin) = access else {
        return next.run(request).await;
    };
    let mut response =
        if preflight { StatusCode::NO_CONTENT.into_response() } else { next.run(request).await };
    for (name, value) in browser::cors_headers(&origin, preflight) {
        // The origin passed the checks as text: it makes a header value.
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found("route_not_found", format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The answer to a write that may create: 201 when it did, 200 otherwise.
fn created_answer(applied: &Applied, created: bool) -> (StatusCode, Json<Created>) {
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(Created { created, index: applied.index }))
}
