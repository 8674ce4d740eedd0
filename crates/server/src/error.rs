//! The API's error contract: every failure is JSON of the shape
//! `{"error": {"code", "message", "indeterminate"}}` with a status that says how
//! to react (400 fix the request, 404 missing, 409 conflict, 413 too large,
//! 503 retry later, 504 timed out). `indeterminate: true` means a write may or
//! may not have taken effect.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_client::views::{Failure, FailureDetail};
use cairn_storage::ApplyError;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub indeterminate: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), indeterminate: false }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn invalid_json(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// The log could not answer: the write may have applied.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            indeterminate: true,
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError {
            indeterminate: true,
            ..ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Failure {
            error: FailureDetail {
                code: self.code.to_string(),
                message: self.message,
                indeterminate: self.indeterminate,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ApplyError> for ApiError {
    fn from(error: ApplyError) -> ApiError {
        let message = error.to_string();
        match error {
            ApplyError::TableNotFound { .. } => ApiError::not_found("table_not_found", message),
            ApplyError::DocNotFound { .. } => ApiError::not_found("doc_not_found", message),
            ApplyError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            ApplyError::RevisionMismatch { .. } => {
                ApiError::new(StatusCode::CONFLICT, "revision_conflict", message)
            }
            ApplyError::Invalid { .. } => ApiError::bad_request(message),
            // The command did not apply: safe to retry.
            ApplyError::SessionUnknown { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "session_expired", message)
            }
            ApplyError::StaleSequence { .. } => {
                ApiError::new(StatusCode::CONFLICT, "stale_sequence", message)
            }
            ApplyError::SequenceReused { .. } => {
                ApiError::new(StatusCode::CONFLICT, "sequence_reused", message)
            }
        }
    }
}

impl From<cairn_storage::Error> for ApiError {
    fn from(error: cairn_storage::Error) -> ApiError {
        match error {
            cairn_storage::Error::TableNotFound { .. } => {
                ApiError::not_found("table_not_found", error.to_string())
            }
            other => {
                tracing::error!(error = %other, "storage error while reading");
                ApiError::internal(format!("storage error: {other}"))
            }
        }
    }
}

impl From<cairn_consensus::Error> for ApiError {
    fn from(error: cairn_consensus::Error) -> ApiError {
        use cairn_consensus::Error;
        match &error {
            // Never proposed: a retry cannot apply the request twice.
            Error::Unavailable { .. } => ApiError {
                indeterminate: false,
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", error.to_string())
            },
            Error::Refused { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "refused", error.to_string())
            }
            Error::NotServing { .. } => ApiError {
                indeterminate: false,
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_serving", error.to_string())
            },
            Error::Busy { .. } => ApiError {
                indeterminate: false,
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", error.to_string())
            },
            // Proposed, then lost sight of: it may have taken effect.
            Error::Orphaned { .. } => ApiError {
                indeterminate: true,
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "orphaned", error.to_string())
            },
            Error::Stopped | Error::Storage(_) => {
                ApiError::unavailable(format!("the node cannot serve: {error}"))
            }
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request(format!("bad path: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad_request(format!("bad query string: {}", rejection.body_text()))
    }
}

/// Maps a body that could not be read; the size limit is named in the message.
pub fn body_error(rejection: BytesRejection, limit_bytes: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over the limit of {limit_bytes} bytes"),
        );
    }
    ApiError::bad_request(format!("could not read the request body: {}", rejection.body_text()))
}
