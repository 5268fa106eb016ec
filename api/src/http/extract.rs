//! Extractors that turn malformed requests into the contract's errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use chatsys_core::CoreError;
use chatsys_core::idempotency::{IdempotencyKey, KEY_MAX_BYTES};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{ObjectBuilder, Required, Type};

use super::AppState;
use super::error::{ApiError, ErrorCode};

/// A JSON body, whatever the Content-Type: a syntax error is a 400, a valid document of the wrong
/// shape a 422 naming the field, a body over the limit a 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let (bytes, _paid) = read_limited(req, state).await?;
        let value = json_object(&bytes, "the body must be a JSON object")?;
        typed(value).map(JsonBody)
    }
}

/// A JSON object read as `T`: a 422 naming the field when it does not fit.
fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let message = if field == "." {
            e.inner().to_string()
        } else {
            format!("{field}: {}", e.inner())
        };
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidField,
            message,
        )
    })
}

/// An optional JSON body: none (or only white space) is `None`, otherwise it is read as a [`JsonBody`].
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let (bytes, _paid) = read_limited(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        let value = json_object(&bytes, "the body, when there is one, must be a JSON object")?;
        typed(value).map(|value| OptionalJson(Some(value)))
    }
}

/// A body that must be a JSON object: a syntax error is a 400, any other JSON value a 422.
fn json_object(bytes: &[u8], not_an_object: &str) -> Result<serde_json::Value, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedJson,
            format!("malformed JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidField,
            not_an_object,
        ));
    }
    Ok(value)
}

/// Query parameters as the fields of `T`, all text, checked by the handler so that a bad value's answer
/// names it. A parameter given twice counts once, with its last value; unknown ones are ignored; an
/// undecodable query string is a 400.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let invalid = |e: &dyn std::fmt::Display| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidQuery,
                format!("unreadable query string: {e}"),
            )
        };
        let query = parts.uri.query().unwrap_or("");
        let last_of_each: HashMap<String, String> =
            serde_urlencoded::from_str::<Vec<(String, String)>>(query)
                .map_err(|e| invalid(&e))?
                .into_iter()
                .collect();
        let deduplicated = serde_urlencoded::to_string(&last_of_each).map_err(|e| invalid(&e))?;
        serde_urlencoded::from_str(&deduplicated)
            .map(Query)
            .map_err(|e| invalid(&e))
    }
}

/// The `Idempotency-Key` header of a create: absent is `None`; given twice, or not 1 to 255 visible
/// ASCII characters, is a 400.
pub struct IdempotencyKeyHeader(pub Option<IdempotencyKey>);

const IDEMPOTENCY_KEY: &str = "idempotency-key";

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(IdempotencyKeyHeader(None)),
            (Some(value), None) => Ok(IdempotencyKeyHeader(Some(IdempotencyKey::parse(
                value.as_bytes(),
            )?))),
            (Some(_), Some(_)) => {
                Err(CoreError::invalid_header("Idempotency-Key", "must be given once").into())
            }
        }
    }
}

impl utoipa::IntoParams for IdempotencyKeyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(KEY_MAX_BYTES))
            .pattern(Some("^[!-~]+$"));
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "A key the client chooses for this create, unique per request (a UUID, say), so that \
                     retrying it is safe. A retry with the same key and the same request within 24 hours \
                     gets the first answer (same status and body, with `Idempotent-Replayed: true`) and \
                     creates nothing. The same key with another request is answered 422 \
                     `idempotency_key_reused`; a retry while the first attempt is still being served waits \
                     for it up to 2 s, then is answered 409 `idempotency_key_in_flight`. A first attempt \
                     whose answer was lost (the server died after accepting it) is finished by the retry \
                     with the same number. Keys are scoped to the application and its token (creating an \
                     application has a scope of its own): a key used with a token that was replaced is \
                     gone with it. Errors other than these are not remembered: a retry after one runs anew.",
                ))
                .schema(Some(schema))
                .build(),
        ]
    }
}

/// Path parameters; a segment that cannot be one (invalid UTF-8, say) names nothing: 404.
///
/// Every parameter of ours, a token or a number, is spelt with unreserved characters only, which never
/// need percent-encoding. A segment that percent-encodes anyway is not the canonical spelling of any
/// resource, so it names nothing either: `/chats/%31` is a 404, not another name of chat 1. The rule is
/// checked on the raw path, since the parameters come decoded. Routes match the raw path and their
/// literal segments hold no `%`, so a `%` in a matched path is in one of its parameters.
///
/// The parameter types of [`super::params`] refuse what cannot name a resource, and their message
/// (`chat not found`) is the answer's.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let not_found =
            |message: &str| ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message);
        if parts.uri.path().contains('%') {
            return Err(not_found("no such resource"));
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParams(value))
            .map_err(|rejection| match rejection {
                PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                    ErrorKind::Message(message) => not_found(message),
                    _ => not_found("no such resource"),
                },
                _ => not_found("no such resource"),
            })
    }
}

/// Bytes of request bodies that may be held in memory at once, over all requests: stalled uploads can
/// take this much and no more. A request pays for its buffer as it grows and is repaid when it ends.
pub struct BodyBudget(Arc<Semaphore>);

impl BodyBudget {
    pub fn new(bytes: u64) -> Self {
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        BodyBudget(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }
}

/// How long an upload waits for others to free the budget before it is answered 503.
const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// What a request's body holds of the [`BodyBudget`] while it is read and parsed: what a client can hold
/// by sending slowly. The values parsed from it live on while the handler runs, which takes no longer
/// for a slow client.
#[derive(Default)]
struct Paid(Option<OwnedSemaphorePermit>);

impl Paid {
    async fn pay(
        &mut self,
        budget: &BodyBudget,
        bytes: usize,
        deadline: Instant,
    ) -> Result<(), ApiError> {
        let busy = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServiceUnavailable,
                "too many uploads in progress, retry shortly",
            )
        };
        let bytes = u32::try_from(bytes).map_err(|_| busy())?;
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(BUDGET_WAIT);
        let permit = match budget.0.clone().try_acquire_many_owned(bytes) {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(wait, budget.0.clone().acquire_many_owned(bytes))
                .await
                .map_err(|_| busy())?
                .map_err(|_| busy())?,
        };
        match self.0.as_mut() {
            Some(held) => held.merge(permit),
            None => self.0 = Some(permit),
        }
        Ok(())
    }
}

/// How much of an oversized body is read and thrown away before answering 413: closing a connection
/// with unread data makes the kernel reset it, and the client would lose the answer.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// The first buffer for a body; it then doubles, up to the declared length or the limit.
const FIRST_BUFFER: usize = 16 * 1024;

/// Reads the body whole, within the size limit, the body timeout and the memory budget.
///
/// The buffer grows by doubling but never past the declared `Content-Length` (or the limit without
/// one): a body of a declared length ends in a buffer of exactly that size, with no slack, and the
/// bytes paid for are the bytes allocated. It is not allocated whole up front, so a client that
/// declares a large body and sends a few bytes holds a few kilobytes, not the limit.
async fn read_limited(req: Request, state: &AppState) -> Result<(Bytes, Paid), ApiError> {
    let limit = state.max_request_bytes;
    let deadline = Instant::now() + state.body_timeout;
    let too_large = || ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit + DRAIN_LIMIT) {
        return Err(too_large());
    }
    let ceiling = declared.unwrap_or(limit).min(limit);
    let mut paid_for = Paid::default();
    let mut stream = req.into_body().into_data_stream();
    let mut body = Vec::new();
    let mut paid = 0usize;
    let mut received = 0usize;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorCode::Timeout,
                    "the request body did not arrive in time",
                ));
            }
        };
        let chunk = chunk.map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "the body could not be read",
            )
        })?;
        received += chunk.len();
        if received <= limit {
            let needed = body.len() + chunk.len();
            if needed > paid {
                let grown = needed.max((paid * 2).max(FIRST_BUFFER).min(ceiling));
                paid_for
                    .pay(&state.body_budget, grown - paid, deadline)
                    .await?;
                body.reserve_exact(grown - body.len());
                paid = grown;
            }
            body.extend_from_slice(&chunk);
        } else if received > limit + DRAIN_LIMIT {
            break;
        }
    }
    if received > limit {
        return Err(too_large());
    }
    Ok((Bytes::from(body), paid_for))
}
