use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use chatsys_core::domain;
use chatsys_core::view::ApplicationView;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{JsonBody, PathParams, QueryMap};
use super::{AppState, Shared, created, list_response};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/applications", get(list).post(create))
        .route("/applications/{token}", get(read).put(rename))
}

#[derive(Deserialize, ToSchema)]
pub struct NameBody {
    /// 1 to 255 characters, at least one of them visible (not whitespace, a control character or an
    /// invisible format character such as a zero-width space).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"[^\s\x00-\x1F\x7F-\x9F\u00AD\u034F\u061C\u115F\u1160\u17B4\u17B5\u180B-\u180F\u200B-\u200F\u202A-\u202E\u2060-\u206F\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8]"
    )]
    pub name: String,
}

#[utoipa::path(post, path = "/applications", tag = "applications", request_body = NameBody,
    responses(
        (status = 201, description = "Created", body = ApplicationView,
            headers(("Location" = String, description = "The new application's path"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Request over the size limit", body = ErrorBody),
        (status = 422, description = "Missing or invalid name", body = ErrorBody),
        (status = 503, description = "A backing service is down", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait")))))]
pub async fn create(
    State(state): Shared,
    JsonBody(body): JsonBody<NameBody>,
) -> ApiResult<Response> {
    let application = state.service.create_application(&body.name).await?;
    Ok(created(
        format!("/applications/{}", application.token),
        application,
    ))
}

#[utoipa::path(get, path = "/applications", tag = "applications",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
           ("after" = Option<String>, Query, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$", description = "Token of the last application of the previous page")),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Applications in creation order", body = [ApplicationView],
            headers(("Link" = String, description = "rel=\"next\": the next page, while there is one"))),
        (status = 400, description = "Bad limit or after", body = ErrorBody),
        (status = 401, description = "Admin key missing or wrong", body = ErrorBody),
        (status = 404, description = "No application has the token given as after", body = ErrorBody),
        (status = 503, description = "A backing service is down", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait")))))]
pub async fn list(
    State(state): Shared,
    headers: HeaderMap,
    query: QueryMap,
) -> ApiResult<Response> {
    if let Some(key) = &state.admin_key {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), key.as_bytes())) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "listing applications needs the admin key",
            ));
        }
    }
    let limit = domain::parse_page(query.get("limit"), None)?.limit;
    let page = state
        .service
        .list_applications(query.get("after"), limit)
        .await?;
    Ok(list_response(page, "/applications", limit, &[]))
}

#[utoipa::path(get, path = "/applications/{token}", tag = "applications",
    params(("token" = String, Path, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")),
    responses((status = 200, description = "The application", body = ApplicationView),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 503, description = "A backing service is down", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait")))))]
pub async fn read(
    State(state): Shared,
    PathParams(token): PathParams<String>,
) -> ApiResult<Json<ApplicationView>> {
    Ok(Json(state.service.application(&token).await?))
}

#[utoipa::path(put, path = "/applications/{token}", tag = "applications", request_body = NameBody,
    params(("token" = String, Path, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")),
    responses((status = 200, description = "Renamed", body = ApplicationView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 413, description = "Request over the size limit", body = ErrorBody),
        (status = 422, description = "Missing or invalid name", body = ErrorBody),
        (status = 503, description = "A backing service is down", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait")))))]
pub async fn rename(
    State(state): Shared,
    PathParams(token): PathParams<String>,
    JsonBody(body): JsonBody<NameBody>,
) -> ApiResult<Json<ApplicationView>> {
    Ok(Json(
        state.service.rename_application(&token, &body.name).await?,
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    /// The schema attribute takes only a literal: the document must still carry the server's rule.
    #[test]
    fn the_documented_name_pattern_is_the_servers_rule() {
        let document: serde_json::Value =
            serde_json::from_str(&super::super::openapi::document()).unwrap();
        assert_eq!(
            document["components"]["schemas"]["NameBody"]["properties"]["name"]["pattern"],
            chatsys_core::domain::VISIBLE_CHARACTER
        );
    }
}
