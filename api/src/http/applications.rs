use std::sync::Arc;

use crate::http::views::ApplicationView;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use utoipa::ToSchema;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use super::extract::{IdempotencyKeyHeader, JsonBody, PathParams, Query};
use super::params::{ApplicationPath, ApplicationsQuery};
use super::{AppState, ListLinks, Shared, created, list_response};
use chatsys_core::domain::Page;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, rename, delete))
        .routes(routes!(rotate_token))
}

#[derive(Deserialize, ToSchema)]
pub struct ApplicationName {
    /// 1 to 255 characters, at least one of them visible (not whitespace, a control character or an
    /// invisible format character such as a zero-width space).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"[^\s\x00-\x1F\x7F-\x9F\u00AD\u034F\u061C\u115F\u1160\u17B4\u17B5\u180B-\u180F\u200B-\u200F\u202A-\u202E\u2060-\u206F\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8]"
    )]
    pub name: String,
}

/// Create an application
///
/// Returns the application with its generated token, the only way to name it from then on.
#[utoipa::path(post, path = "/applications", tag = "applications", operation_id = "applications_create",
    params(IdempotencyKeyHeader), request_body = ApplicationName,
    responses(
        (status = 201, description = "Created", body = ApplicationView,
            headers(("Location" = String, description = "The new application's path")))))]
pub async fn create(
    State(state): Shared,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    JsonBody(body): JsonBody<ApplicationName>,
) -> ApiResult<Response> {
    let application = state
        .service
        .create_application(&body.name, key.as_ref())
        .await?;
    Ok(created(
        format!("/applications/{}", application.resource.token),
        ApplicationView::from(&application.resource),
        application.replayed,
    ))
}

/// List applications
///
/// Every application in creation order, a page at a time: follow the `Link` header's `rel="next"` until
/// there is none. Each holds its token, so this needs the admin key as a bearer token; a server started
/// without one (`CHATSYS_ADMIN_KEY`) lists nothing to anyone.
#[utoipa::path(get, path = "/applications", tag = "applications", operation_id = "applications_list",
    params(ApplicationsQuery),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "A page of applications, in creation order", body = [ApplicationView],
            headers(("Link" = String, description = "`<…>; rel=\"next\"`: the next page, while there is one"))),
        (status = 401, description = "The admin key was missing or wrong (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The server has no admin key, so listing is off (`forbidden`); or the request came from a web page whose origin the server does not allow (`origin_not_allowed`)", body = ErrorBody),
        (status = 404, description = "No application has the token given as `after`", body = ErrorBody)))]
pub async fn list(
    State(state): Shared,
    headers: HeaderMap,
    Query(query): Query<ApplicationsQuery>,
) -> ApiResult<Response> {
    require_admin(&state, &headers, "listing applications")?;
    let limit = query.limit()?;
    let page = state
        .service
        .list_applications(query.after.as_deref(), limit)
        .await?;
    Ok(list_response(
        page,
        "/applications",
        &ListLinks::of(Page::first(limit)),
    ))
}

/// Read an application
///
/// The application with its `chats_count`.
#[utoipa::path(get, path = "/applications/{token}", tag = "applications", operation_id = "applications_read",
    params(ApplicationPath),
    responses((status = 200, description = "The application", body = ApplicationView)))]
pub async fn read(
    State(state): Shared,
    PathParams(path): PathParams<ApplicationPath>,
) -> ApiResult<Json<ApplicationView>> {
    let application = state.service.application(&path.token.0).await?;
    Ok(Json(ApplicationView::from(&application)))
}

/// Rename an application
///
/// The token stays the same.
#[utoipa::path(put, path = "/applications/{token}", tag = "applications", operation_id = "applications_rename",
    params(ApplicationPath), request_body = ApplicationName,
    responses((status = 200, description = "Renamed", body = ApplicationView)))]
pub async fn rename(
    State(state): Shared,
    PathParams(path): PathParams<ApplicationPath>,
    JsonBody(body): JsonBody<ApplicationName>,
) -> ApiResult<Json<ApplicationView>> {
    let application = state
        .service
        .rename_application(&path.token.0, &body.name)
        .await?;
    Ok(Json(ApplicationView::from(&application)))
}

/// Replace an application's token
///
/// Returns the application with a new token, for when the old one leaked. The old token names nothing
/// from then on: every replica answers it 404 within 2 seconds, the event streams opened with it end
/// (within 2 seconds more), and the idempotency keys used with it are gone. Nothing else changes.
#[utoipa::path(post, path = "/applications/{token}/token", tag = "applications",
    operation_id = "applications_rotate_token", params(ApplicationPath),
    responses((status = 200, description = "The application, with its new token", body = ApplicationView)))]
pub async fn rotate_token(
    State(state): Shared,
    PathParams(path): PathParams<ApplicationPath>,
) -> ApiResult<Json<ApplicationView>> {
    let application = state.service.rotate_token(&path.token.0).await?;
    Ok(Json(ApplicationView::from(&application)))
}

/// Delete an application
///
/// Deletes the application with all its chats and messages: its token answers 404 from then on (on every
/// replica within 2 seconds), and the worker removes what it held, from the store and from search. Needs
/// the admin key as a bearer token. Asked again for a token already deleted, it queues the removal again.
#[utoipa::path(delete, path = "/applications/{token}", tag = "applications", operation_id = "applications_delete",
    params(ApplicationPath),
    security(("admin_key" = [])),
    responses(
        (status = 202, description = "Deleted (the worker removes what it held)"),
        (status = 401, description = "The admin key was missing or wrong (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The server has no admin key, so deleting is off (`forbidden`); or the request came from a web page whose origin the server does not allow (`origin_not_allowed`)", body = ErrorBody)))]
pub async fn delete(
    State(state): Shared,
    headers: HeaderMap,
    PathParams(path): PathParams<ApplicationPath>,
) -> ApiResult<StatusCode> {
    require_admin(&state, &headers, "deleting an application")?;
    state.service.delete_application(&path.token.0).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Refuses a request without the admin key as its bearer token (`what` names what needs it).
fn require_admin(state: &AppState, headers: &HeaderMap, what: &str) -> ApiResult<()> {
    let Some(key) = &state.admin_key else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "{what} needs an admin key, and this server has none: start it with \
                 CHATSYS_ADMIN_KEY (or --admin-key) and send the key as `Authorization: Bearer <key>`"
            ),
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), key.as_bytes())) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            format!("{what} needs the admin key"),
        ));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
