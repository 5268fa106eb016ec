//! Extractors that turn malformed requests into the contract's errors.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use bytes::Bytes;
use chatsys_core::domain::{self, Page};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body, whatever the Content-Type: a syntax error is a 400, a valid document of the wrong
/// shape a 422 naming the field, a body over the limit a 413.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| ApiError::for_status(e.status()))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("malformed JSON: {e}")))?;
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", e.to_string()))
    }
}

/// An optional JSON body (chat creation takes none): empty is fine, otherwise it must be JSON.
pub struct OptionalJson;

impl<S: Send + Sync> FromRequest<S> for OptionalJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| ApiError::for_status(e.status()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson);
        }
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .map(|_| OptionalJson)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("malformed JSON: {e}")))
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
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("unreadable query string: {e}")))
    }
}

impl QueryMap {
    pub fn page(&self) -> Result<Page, ApiError> {
        Ok(domain::parse_page(self.0.get("limit").map(String::as_str), self.0.get("after").map(String::as_str))?)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}
