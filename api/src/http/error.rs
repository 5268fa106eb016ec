//! One error type for the HTTP layer: every failure becomes `{"error":{"code","message"}}` with the
//! right status. A client's mistake is never a 5xx; internal details are logged, not sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chatsys_core::CoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// Every error response's body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// For people: may change between versions; programs read `code`.
    pub message: String,
}

/// What went wrong, stable and machine-readable; the server sends no code outside this list.
/// `malformed_json` (400): the body is not JSON. `invalid_query` (400): a query parameter is missing or
/// out of range, or the query string is unreadable. `bad_request` (400): the request could not be read.
/// `unauthorized` (401): the admin key is missing or wrong. `not_found` (404): no such application,
/// chat, message or route. `method_not_allowed` (405): the path exists, not with this method; `Allow`
/// names the methods it takes. `timeout` (408): the body did not arrive in time. `payload_too_large`
/// (413): the body is over the size limit. `invalid_field` (422): the body is JSON of the wrong shape,
/// or a field is invalid. `internal` (500): a fault of the server. `service_unavailable` (503): a
/// backing service is down, or too many uploads are in progress; retry after `Retry-After` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    InvalidQuery,
    BadRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    Timeout,
    PayloadTooLarge,
    InvalidField,
    Internal,
    ServiceUnavailable,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The error for a status produced outside the handlers (routing, body limits).
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => (
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (
                ErrorCode::PayloadTooLarge,
                "request body over the size limit",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (ErrorCode::MalformedJson, "the body must be JSON")
            }
            StatusCode::REQUEST_TIMEOUT => (ErrorCode::Timeout, "request took too long"),
            s if s.is_client_error() => (ErrorCode::BadRequest, "bad request"),
            _ => (ErrorCode::Internal, "internal error"),
        };
        ApiError::new(status, code, message)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("{what} not found"),
            ),
            CoreError::Invalid { field, message } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidField,
                format!("{field} {message}"),
            ),
            CoreError::InvalidQuery { param, message } => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidQuery,
                format!("{param} {message}"),
            ),
            CoreError::Unavailable { backend, detail } => {
                tracing::warn!(%backend, detail, "backing service unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::ServiceUnavailable,
                    format!("{backend} unavailable, retry shortly"),
                )
            }
            CoreError::Rejected(detail) | CoreError::Schema(detail) => {
                tracing::error!(detail, "unexpected refusal on the request path");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
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
                code: self.code,
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
