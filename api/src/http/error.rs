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
/// out of range, or the query string is unreadable. `invalid_header` (400): `Idempotency-Key` is malformed
/// or given twice. `bad_request` (400): the request
/// could not be read. `unauthorized` (401): the admin key is missing or wrong. `forbidden` (403): the
/// server has no admin key, so nobody may list applications. `origin_not_allowed` (403): the request
/// came from a web page whose origin is not allowed (`CHATSYS_CORS_ALLOWED_ORIGINS`). `not_found` (404):
/// no such application, chat, message or route. `method_not_allowed` (405): the path exists, not with
/// this method; `Allow` names the methods it takes. `timeout` (408): the body did not arrive in time.
/// `idempotency_key_in_flight` (409): another request with this `Idempotency-Key` is still being
/// served; retry after `Retry-After` seconds. `precondition_failed` (412): the message changed since the
/// `ETag` given in `If-Match`; the answer's `ETag` is its current one. `payload_too_large` (413): the body is over the size
/// limit. `uri_too_long` (414): the path and query are over the limit. `invalid_field` (422): the body
/// is JSON of the wrong shape, or a field is invalid. `idempotency_key_reused` (422): this
/// `Idempotency-Key` was used for a different request. `headers_too_large` (431): too many request
/// headers, or too many bytes of them. `too_many_requests` (429): the application went over its request
/// rate, or over its event streams on one server (or the server over all of them); retry after
/// `Retry-After` seconds. `internal` (500): a fault of the server. `service_unavailable`
/// (503): a backing service is down, or too many uploads are in progress; retry after `Retry-After`
/// seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    InvalidQuery,
    InvalidHeader,
    BadRequest,
    Unauthorized,
    Forbidden,
    OriginNotAllowed,
    NotFound,
    MethodNotAllowed,
    Timeout,
    IdempotencyKeyInFlight,
    PreconditionFailed,
    PayloadTooLarge,
    UriTooLong,
    InvalidField,
    IdempotencyKeyReused,
    HeadersTooLarge,
    TooManyRequests,
    Internal,
    ServiceUnavailable,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for `Retry-After`, when the error says when to retry.
    pub retry_after: Option<u64>,
    /// The resource's current version, for `ETag`, when the error is that the client's is not it.
    pub current_version: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            current_version: None,
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
            StatusCode::URI_TOO_LONG => (ErrorCode::UriTooLong, "the request target is too long"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
                ErrorCode::HeadersTooLarge,
                "the request headers are too large",
            ),
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
            CoreError::InvalidHeader { header, message } => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidHeader,
                format!("{header} {message}"),
            ),
            CoreError::VersionMoved { newest } => ApiError {
                current_version: Some(newest),
                ..ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    ErrorCode::PreconditionFailed,
                    "the message changed since the ETag given in If-Match: read it again (its ETag is this answer's)",
                )
            },
            CoreError::KeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used for a different request: use a new key for a new request",
            ),
            CoreError::KeyInFlight => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::IdempotencyKeyInFlight,
                "a request with this Idempotency-Key is still in progress: retry after Retry-After seconds",
            ),
            CoreError::TooMany { what, retry_after } => {
                let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                ApiError {
                    retry_after: Some(seconds),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        ErrorCode::TooManyRequests,
                        format!("too many {what}: retry after {seconds} s"),
                    )
                }
            }
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
        let retry_after = self.retry_after.or(matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT
        )
        .then_some(1));
        if let Some(version) = self.current_version {
            response
                .headers_mut()
                .insert(header::ETAG, super::conditional::version_etag(version));
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
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
