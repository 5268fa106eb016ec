//! One error type for the HTTP layer: every failure becomes `{"error":{"code","message"}}` with the
//! right status. A client's mistake is never a 5xx; internal details are logged, not sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatsys_core::CoreError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: malformed_json, invalid_query, invalid_field, unauthorized, not_found,
    /// method_not_allowed, timeout, payload_too_large, service_unavailable, internal.
    pub code: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The error for a status produced outside the handlers (routing, body limits).
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => {
                ("method_not_allowed", "method not allowed on this route")
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                ("payload_too_large", "request body over the size limit")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("malformed_json", "the body must be JSON"),
            StatusCode::REQUEST_TIMEOUT => ("timeout", "request took too long"),
            s if s.is_client_error() => ("bad_request", "bad request"),
            _ => ("internal", "internal error"),
        };
        ApiError::new(status, code, message)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            CoreError::Invalid { field, message } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("{field} {message}"),
            ),
            CoreError::InvalidQuery { param, message } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{param} {message}"),
            ),
            CoreError::Unavailable { backend, detail } => {
                tracing::warn!(%backend, detail, "backing service unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    format!("{backend} unavailable, retry shortly"),
                )
            }
            CoreError::Rejected(detail) => {
                tracing::error!(detail, "unexpected refusal on the request path");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // A request that timed out may still be sending: what follows on the connection is not a
        // request, so it is closed after the answer.
        if self.status == StatusCode::REQUEST_TIMEOUT {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
