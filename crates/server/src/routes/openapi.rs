//! The OpenAPI 3.1 document of the v1 API, served at `/v1/openapi.json`.
//!
//! It is made from the code, not written beside it: each handler carries its
//! `#[utoipa::path]` (method, path, parameters, bodies, answers), the answers
//! are the very types the handlers serialize ([`cairn_client::views`]), and
//! the router registers each handler together with its description, so a
//! route cannot exist without its entry nor an entry without its route. The
//! one exception is the key-value routes: their path is a wildcard (`keys may
//! contain '/'`), which OpenAPI cannot state, so they are routed by hand and
//! described under `/v1/kv/{key}`; a test checks that both stay.

use std::collections::BTreeMap;

use axum::http::header;
use axum::response::IntoResponse;
use bytes::Bytes;
use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder, ResponsesBuilder,
};
use utoipa::OpenApi;

use crate::state::AppState;

/// The error answers any route may give, each a [`Failure`] body. Listed on
/// every operation: which of them a route can give depends on the cluster's
/// state as much as on the request.
///
/// [`Failure`]: cairn_client::views::Failure
pub struct Failures;

impl utoipa::IntoResponses for Failures {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        let failures = [
            ("400", "The request is malformed or refused: fix it before sending it again."),
            ("401", "No token, or one that is not valid: send `Authorization: Bearer <token>`."),
            ("404", "A table, document, key, record, session or route that does not exist."),
            (
                "403",
                "The token's role does not allow this (`forbidden`); a session of another \
                 credential (`session_forbidden`); or a browser's request from elsewhere: a \
                 Host this node does not answer to, or a page of another origin.",
            ),
            ("405", "The method is not allowed on this path."),
            ("408", "The request body did not arrive in time."),
            (
                "409",
                "A conflict: an existing id, a revision or a sequence number; a backup name \
                 taken, or a node without a backup directory.",
            ),
            ("413", "The request body is over the node's limit (`--max-body-bytes`)."),
            ("415", "A POST without `Content-Type: application/json`."),
            (
                "503",
                "The node cannot serve now (`no_quorum`, `not_serving`, `busy`, `orphaned`, \
                 `unavailable`): retry, here or on another node.",
            ),
            ("504", "The write or read barrier did not complete in time."),
        ];
        let mut responses = ResponsesBuilder::new();
        for (status, description) in failures {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Failure")));
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", content.build());
            responses = responses.response(status, response.build());
        }
        responses.build().responses
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cairn",
        description = "A replicated JSON document store: tables of JSON documents and a \
                       key-value space, every write ordered by OmniPaxos. Writes take \
                       `Cairn-Session` and `Cairn-Seq` headers for exactly-once retries; \
                       reads are linearizable unless `?read=local`. Every route but \
                       `/v1/health`, this document and `/metrics` needs \
                       `Authorization: Bearer <token>` whose role (`read`, `write`, \
                       `admin`) covers it."
    ),
    components(schemas(cairn_client::views::Failure, cairn_client::views::FailureDetail)),
    tags(
        (name = "cluster", description = "Health, membership and sessions."),
        (name = "tables", description = "Tables and their JSON documents."),
        (name = "kv", description = "The key-value space: raw bytes under keys."),
        (name = "system", description = "The control plane's records."),
        (name = "tokens", description = "Clients' bearer tokens and their roles (admin only)."),
    )
)]
pub struct ApiDoc;

/// The key-value routes, routed by hand (see the module's comment).
#[derive(OpenApi)]
#[openapi(paths(super::kv::get, super::kv::put, super::kv::delete, super::kv::increment))]
pub struct KvDoc;

/// `GET /v1/openapi.json`: the document, rendered once when the router is made.
/// Each request shares the rendered bytes; none is copied.
pub fn serve(document: Bytes) -> axum::routing::MethodRouter<AppState> {
    axum::routing::get(move || {
        let document = document.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], document).into_response() }
    })
}

/// Renders the document the router collected, with the hand-routed paths.
pub fn render(mut document: Document) -> String {
    document.merge(KvDoc::openapi());
    // Serializing a document of plain maps and strings cannot fail.
    document.to_pretty_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "rendering the OpenAPI document");
        String::from("{}")
    })
}
