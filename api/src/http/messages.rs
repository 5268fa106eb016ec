use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use chatsys_core::CoreError;
use chatsys_core::domain;
use chatsys_core::view::MessageView;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiResult, ErrorBody};
use super::extract::{JsonBody, PathParams, QueryMap};
use super::{AppState, Shared, created, list_response};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/applications/{token}/chats/{number}/messages",
            get(list).post(create),
        )
        .route(
            "/applications/{token}/chats/{number}/messages/search",
            get(search),
        )
        .route(
            "/applications/{token}/chats/{number}/messages/{message}",
            get(read).put(edit),
        )
}

#[derive(Deserialize, ToSchema)]
pub struct BodyBody {
    /// 1 character to 64 KiB (65,536 bytes of UTF-8; the schema can only bound characters).
    #[schema(min_length = 1, max_length = 65536)]
    pub body: String,
}

#[utoipa::path(post, path = "/applications/{token}/chats/{number}/messages", tag = "messages", request_body = BodyBody,
    params(("token" = String, Path, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"), ("number" = u64, Path, minimum = 1, maximum = 9223372036854775807_u64)),
    responses(
        (status = 201, description = "Accepted and numbered; readable at once, listed and searchable once the worker stored it",
            body = MessageView, headers(("Location" = String, description = "The new message's path"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown token or chat", body = ErrorBody),
        (status = 413, description = "Request over the size limit", body = ErrorBody),
        (status = 422, description = "Missing, empty or oversized body", body = ErrorBody),
        (status = 503, description = "A backing service is down", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait")))))]
pub async fn create(
    State(state): Shared,
    PathParams((token, chat)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<BodyBody>,
) -> ApiResult<Response> {
    let chat = domain::parse_number(&chat, "chat")?;
    let message = state
        .service
        .create_message(&token, chat, &body.body)
        .await?;
    Ok(created(
        format!(
            "/applications/{token}/chats/{chat}/messages/{}",
            message.number
        ),
        message,
    ))
}

#[utoipa::path(get, path = "/applications/{token}/chats/{number}/messages", tag = "messages",
    params(("token" = String, Path, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"), ("number" = u64, Path, minimum = 1, maximum = 9223372036854775807_u64),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
           ("after" = Option<u64>, Query, minimum = 0, maximum = 9223372036854775807_u64, description = "Number of the last message of the previous page")),
    responses(
        (status = 200, description = "Messages by number", body = [MessageView],
            headers(("Link" = String, description = "rel=\"next\": the next page, while there is one"))),
        (status = 400, description = "Bad limit or after", body = ErrorBody),
        (status = 404, description = "Unknown token or chat", body = ErrorBody),
        (status = 503, description = "A backing service is down", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait")))))]
pub async fn list(
    State(state): Shared,
    PathParams((token, chat)): PathParams<(String, String)>,
    query: QueryMap,
) -> ApiResult<Response> {
    let page = query.page()?;
    let chat = domain::parse_number(&chat, "chat")?;
    let messages = state.service.list_messages(&token, chat, page).await?;
    Ok(list_response(
        messages,
        &format!("/applications/{token}/chats/{chat}/messages"),
        page.limit,
        &[],
    ))
}

#[utoipa::path(get, path = "/applications/{token}/chats/{number}/messages/{message}", tag = "messages",
    params(("token" = String, Path, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"), ("number" = u64, Path, minimum = 1, maximum = 9223372036854775807_u64), ("message" = u64, Path, minimum = 1, maximum = 9223372036854775807_u64)),
    responses((status = 200, description = "The message, including one accepted but not stored yet", body = MessageView),
        (status = 404, description = "Unknown token, chat or message", body = ErrorBody),
        (status = 503, description = "A backing service is down", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait")))))]
pub async fn read(
    State(state): Shared,
    PathParams((token, chat, number)): PathParams<(String, String, String)>,
) -> ApiResult<Json<MessageView>> {
    let chat = domain::parse_number(&chat, "chat")?;
    let number = domain::parse_number(&number, "message")?;
    Ok(Json(state.service.message(&token, chat, number).await?))
}

#[utoipa::path(put, path = "/applications/{token}/chats/{number}/messages/{message}", tag = "messages", request_body = BodyBody,
    params(("token" = String, Path, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"), ("number" = u64, Path, minimum = 1, maximum = 9223372036854775807_u64), ("message" = u64, Path, minimum = 1, maximum = 9223372036854775807_u64)),
    responses((status = 200, description = "Edited; the last edit accepted wins", body = MessageView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown token, chat or message", body = ErrorBody),
        (status = 413, description = "Request over the size limit", body = ErrorBody),
        (status = 422, description = "Missing, empty or oversized body", body = ErrorBody),
        (status = 503, description = "A backing service is down", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait")))))]
pub async fn edit(
    State(state): Shared,
    PathParams((token, chat, number)): PathParams<(String, String, String)>,
    JsonBody(body): JsonBody<BodyBody>,
) -> ApiResult<Json<MessageView>> {
    let chat = domain::parse_number(&chat, "chat")?;
    let number = domain::parse_number(&number, "message")?;
    Ok(Json(
        state
            .service
            .edit_message(&token, chat, number, &body.body)
            .await?,
    ))
}

#[utoipa::path(get, path = "/applications/{token}/chats/{number}/messages/search", tag = "messages",
    params(("token" = String, Path, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$"), ("number" = u64, Path, minimum = 1, maximum = 9223372036854775807_u64),
           ("q" = String, Query, min_length = 1, pattern = r"\S", description = "Text to find anywhere in the body, case-insensitive; `key` is accepted as an alias"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
           ("after" = Option<u64>, Query, minimum = 0, maximum = 9223372036854775807_u64, description = "Number of the last message of the previous page")),
    responses(
        (status = 200, description = "Matching messages of this chat in number order. Every match is reached by following `Link`; a page may hold fewer than `limit` messages (even none) when the search stopped at its per-request budget, and only the absence of `Link` means the end", body = [MessageView],
            headers(("Link" = String, description = "rel=\"next\": the next page, while more matches may follow"))),
        (status = 400, description = "Empty or missing q, bad limit or after", body = ErrorBody),
        (status = 404, description = "Unknown token or chat", body = ErrorBody),
        (status = 503, description = "A backing service is down", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait")))))]
pub async fn search(
    State(state): Shared,
    PathParams((token, chat)): PathParams<(String, String)>,
    query: QueryMap,
) -> ApiResult<Response> {
    let page = query.page()?;
    let chat = domain::parse_number(&chat, "chat")?;
    let q = query
        .get("q")
        .or(query.get("key"))
        .ok_or(CoreError::invalid_query("q", "is required"))?;
    let hits = state.service.search(&token, chat, q, page).await?;
    let path = format!("/applications/{token}/chats/{chat}/messages/search");
    Ok(list_response(hits, &path, page.limit, &[("q", q)]))
}
