//! Extractors that turn malformed requests into the contract's errors.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use bytes::{Bytes, BytesMut};
use chatsys_core::domain::{self, Page};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// A JSON body, whatever the Content-Type: a syntax error is a 400, a valid document of the wrong
/// shape a 422 naming the field, a body over the limit a 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let bytes = read_limited(req, state.max_request_bytes).await?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("malformed JSON: {e}"),
            )
        })?;
        if !value.is_object() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "the body must be a JSON object",
            ));
        }
        serde_path_to_error::deserialize(value)
            .map(JsonBody)
            .map_err(|e| {
                let field = e.path().to_string();
                let message = if field == "." {
                    e.inner().to_string()
                } else {
                    format!("{field}: {}", e.inner())
                };
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
            })
    }
}

/// An optional JSON body (chat creation takes none): empty is fine, otherwise it must be JSON.
pub struct OptionalJson;

impl FromRequest<Arc<AppState>> for OptionalJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let bytes = read_limited(req, state.max_request_bytes).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson);
        }
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .map(|_| OptionalJson)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    format!("malformed JSON: {e}"),
                )
            })
    }
}

/// The query string as a map; undecodable query strings are a 400.
pub struct QueryMap(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .map(|pairs| QueryMap(pairs.into_iter().collect()))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("unreadable query string: {e}"),
                )
            })
    }
}

impl QueryMap {
    pub fn page(&self) -> Result<Page, ApiError> {
        Ok(domain::parse_page(
            self.0.get("limit").map(String::as_str),
            self.0.get("after").map(String::as_str),
        )?)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// Path parameters; a segment that cannot be one (invalid UTF-8, say) names nothing: 404.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParams(value))
            .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource"))
    }
}

/// How much of an oversized body is read and thrown away before answering 413: closing a connection
/// with unread data makes the kernel reset it, and the client would lose the answer.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

async fn read_limited(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit + DRAIN_LIMIT) {
        return Err(too_large());
    }
    let mut stream = req.into_body().into_data_stream();
    let mut body = BytesMut::new();
    let mut received = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the body could not be read",
            )
        })?;
        received += chunk.len();
        if received <= limit {
            body.extend_from_slice(&chunk);
        } else if received > limit + DRAIN_LIMIT {
            break;
        }
    }
    if received > limit {
        return Err(too_large());
    }
    Ok(body.freeze())
}
