use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use chatsys_core::domain;
use chatsys_core::view::ChatView;

use super::error::{ApiResult, ErrorBody};
use super::extract::{OptionalJson, PathParams, QueryMap};
use super::{AppState, Shared, created, list_response};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/applications/{token}/chats", get(list).post(create))
        .route("/applications/{token}/chats/{number}", get(read))
}

#[utoipa::path(post, path = "/applications/{token}/chats", tag = "chats",
    params(("token" = String, Path, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")),
    responses(
        (status = 201, description = "Accepted and numbered; readable at once, listed once the worker stored it", body = ChatView,
            headers(("Location" = String, description = "The new chat's path"))),
        (status = 400, description = "Malformed JSON body", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 413, description = "Request over the size limit", body = ErrorBody),
        (status = 503, description = "A backing service is down", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait")))))]
pub async fn create(
    State(state): Shared,
    PathParams(token): PathParams<String>,
    _body: OptionalJson,
) -> ApiResult<Response> {
    let chat = state.service.create_chat(&token).await?;
    Ok(created(
        format!("/applications/{token}/chats/{}", chat.number),
        chat,
    ))
}

#[utoipa::path(get, path = "/applications/{token}/chats", tag = "chats",
    params(("token" = String, Path, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
           ("after" = Option<u64>, Query, minimum = 0, maximum = 9223372036854775807_u64, description = "Number of the last chat of the previous page")),
    responses(
        (status = 200, description = "Chats by number", body = [ChatView],
            headers(("Link" = String, description = "rel=\"next\": the next page, while there is one"))),
        (status = 400, description = "Bad limit or after", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 503, description = "A backing service is down", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait")))))]
pub async fn list(
    State(state): Shared,
    PathParams(token): PathParams<String>,
    query: QueryMap,
) -> ApiResult<Response> {
    let page = query.page()?;
    let chats = state.service.list_chats(&token, page).await?;
    Ok(list_response(
        chats,
        &format!("/applications/{token}/chats"),
        page.limit,
        &[],
    ))
}

#[utoipa::path(get, path = "/applications/{token}/chats/{number}", tag = "chats",
    params(("token" = String, Path, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"), ("number" = u64, Path, minimum = 1, maximum = 9223372036854775807_u64)),
    responses((status = 200, description = "The chat", body = ChatView),
        (status = 404, description = "Unknown token or number", body = ErrorBody),
        (status = 503, description = "A backing service is down", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait")))))]
pub async fn read(
    State(state): Shared,
    PathParams((token, number)): PathParams<(String, String)>,
) -> ApiResult<Json<ChatView>> {
    let number = domain::parse_number(&number, "chat")?;
    Ok(Json(state.service.chat(&token, number).await?))
}
