use std::sync::Arc;

use crate::http::views::{FoundMessageView, MessageView};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use chatsys_core::domain::Order;
use chatsys_core::search_text::SearchOrder;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::conditional::{IfMatch, IfNoneMatch, Tagged, with_etag};
use super::error::{ApiResult, ErrorBody};
use super::extract::{IdempotencyKeyHeader, JsonBody, PathParams, Query};
use super::params::{
    ApplicationPath, ChatPath, ListQuery, MessagePath, SearchPageQuery, SearchQuery,
};
use super::{AppState, ListLinks, SEARCH_ORDER, Shared, created, list_response};

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(search))
        .routes(routes!(search_application))
        .routes(routes!(read, edit, delete))
}

/// A message's text, to post or to replace.
#[derive(Deserialize, ToSchema)]
pub struct MessageBody {
    /// At least one character and at most 65,536 bytes of UTF-8 (`x-max-bytes`). JSON Schema can only
    /// count characters, so `maxLength` is the most a body within the limit can have, not a promise:
    /// 40,000 × "é" is 80,000 bytes and answered 422.
    #[schema(min_length = 1, max_length = 65536, extensions(("x-max-bytes" = json!(65536))))]
    pub body: String,
}

/// Post a message
///
/// Numbers the message at once (1, 2, 3… within the chat) and queues its storage: it is readable right
/// away, listed and searchable once the worker has stored it.
#[utoipa::path(post, path = "/applications/{token}/chats/{number}/messages", tag = "messages",
    operation_id = "messages_create", params(ChatPath, IdempotencyKeyHeader), request_body = MessageBody,
    responses(
        (status = 201, description = "Accepted and numbered", body = MessageView,
            headers(
                ("Location" = String, description = "The new message's path"),
                ("ETag" = String, description = "The message's version, for `If-Match`")))))]
pub async fn create(
    State(state): Shared,
    PathParams(path): PathParams<ChatPath>,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    JsonBody(body): JsonBody<MessageBody>,
) -> ApiResult<Response> {
    let (token, chat) = (path.token.0, path.number.0);
    let message = state
        .service
        .create_message(&token, chat, &body.body, key.as_ref())
        .await?;
    let view = MessageView::from(&message.resource);
    let etag = view.etag();
    let mut response = created(
        format!(
            "/applications/{token}/chats/{chat}/messages/{}",
            view.number
        ),
        view,
        message.replayed,
    );
    response.headers_mut().insert(header::ETAG, etag);
    Ok(response)
}

/// List a chat's messages
///
/// Stored messages by number, oldest first or with `order=desc` newest first, a page at a time: follow
/// the `Link` header's `rel="next"` until there is none (`rel="prev"` leads back). `Chat-Last-Event-Id`
/// names the chat's latest change as of the page: the chat's event stream opened with `after` set to it
/// sends every change the page does not show, and none it does.
#[utoipa::path(get, path = "/applications/{token}/chats/{number}/messages", tag = "messages",
    operation_id = "messages_list", params(ChatPath, ListQuery),
    responses(
        (status = 200, description = "A page of messages, by number in the order asked", body = [MessageView],
            headers(
                ("Link" = String, description = "`<…>; rel=\"next\"` while the list goes on, and `<…>; rel=\"prev\"` when the page was asked for next to a cursor, both in the same order"),
                ("Chat-Last-Event-Id" = u64, description = "The chat's latest change as of this page (0 for none): open the event stream `after` it")))))]
pub async fn list(
    State(state): Shared,
    PathParams(path): PathParams<ChatPath>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Response> {
    let page = query.page()?;
    let (token, chat) = (path.token.0, path.number.0);
    let messages = state.service.list_messages(&token, chat, page).await?;
    Ok(list_response(
        messages,
        &format!("/applications/{token}/chats/{chat}/messages"),
        &ListLinks::of(page),
    ))
}

/// Read a message
///
/// The message, including one accepted but not stored yet, with its `ETag`.
#[utoipa::path(get, path = "/applications/{token}/chats/{number}/messages/{message}", tag = "messages",
    operation_id = "messages_read", params(MessagePath, IfNoneMatch),
    responses(
        (status = 200, description = "The message", body = MessageView,
            headers(("ETag" = String, description = "The message's version, for `If-Match` and `If-None-Match`"))),
        (status = 304, description = "The message is still in the state `If-None-Match` named",
            headers(("ETag" = String, description = "The message's version")))))]
pub async fn read(
    State(state): Shared,
    PathParams(path): PathParams<MessagePath>,
    if_none_match: IfNoneMatch,
) -> ApiResult<Response> {
    let message = state
        .service
        .message(&path.token.0, path.number.0, path.message.0)
        .await?;
    Ok(if_none_match.answer(MessageView::from(&message)))
}

/// Edit a message
///
/// Replaces the message's body. Without `If-Match`, when edits race the last one accepted wins; with
/// it, the edit is made only if nobody else's came first.
#[utoipa::path(put, path = "/applications/{token}/chats/{number}/messages/{message}", tag = "messages",
    operation_id = "messages_edit", params(MessagePath, IfMatch), request_body = MessageBody,
    responses(
        (status = 200, description = "Edited", body = MessageView,
            headers(("ETag" = String, description = "The new version, for the next `If-Match`"))),
        (status = 412, description = "The message changed since the `If-Match` version (`precondition_failed`); nothing was edited", body = ErrorBody,
            headers(("ETag" = String, description = "The message's current version")))))]
pub async fn edit(
    State(state): Shared,
    PathParams(path): PathParams<MessagePath>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<MessageBody>,
) -> ApiResult<Response> {
    let message = state
        .service
        .edit_message(
            &path.token.0,
            path.number.0,
            path.message.0,
            &body.body,
            expected.as_deref(),
        )
        .await?;
    Ok(with_etag(MessageView::from(&message)))
}

/// Delete a message
///
/// Queues the message's deletion and answers at once: from then on the message answers 404, and an edit
/// of it too; lists, counts and search forget it once the worker has stored the delete, and its chat's
/// event stream sends `message.deleted`. Its number is never used again. With `If-Match`, only if
/// nobody changed the message since that version. A delete racing an edit ends deleted, whichever
/// comes first.
#[utoipa::path(delete, path = "/applications/{token}/chats/{number}/messages/{message}", tag = "messages",
    operation_id = "messages_delete", params(MessagePath, IfMatch),
    responses(
        (status = 202, description = "Deleted (the worker removes what remains of it)"),
        (status = 412, description = "The message changed since the `If-Match` version (`precondition_failed`); nothing was deleted", body = ErrorBody,
            headers(("ETag" = String, description = "The message's current version")))))]
pub async fn delete(
    State(state): Shared,
    PathParams(path): PathParams<MessagePath>,
    IfMatch(expected): IfMatch,
) -> ApiResult<StatusCode> {
    state
        .service
        .delete_message(
            &path.token.0,
            path.number.0,
            path.message.0,
            expected.as_deref(),
        )
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Search a chat's messages
///
/// Stored messages of this chat holding every word of `q` (each anywhere, a part of a word matching) and
/// every "quoted phrase", compared after Unicode normalisation and full case folding, newest first (or
/// by relevance). Every match is reached by following `Link`; a page may hold fewer than `limit`
/// messages (even none) when the search stopped at its per-request budget, and only the absence of
/// `Link` means the end.
#[utoipa::path(get, path = "/applications/{token}/chats/{number}/messages/search", tag = "messages",
    operation_id = "messages_search", params(ChatPath, SearchQuery, SearchPageQuery),
    responses(
        (status = 200, description = "A page of matching messages, in the order `Search-Order` names", body = [FoundMessageView],
            headers(
                ("Link" = String, description = "`<…>; rel=\"next\"`: the next page, while more matches may follow"),
                ("Search-Order" = String, description = "`newest` or `relevance`: the order of the results")))))]
pub async fn search(
    State(state): Shared,
    PathParams(path): PathParams<ChatPath>,
    Query(search): Query<SearchQuery>,
    Query(page): Query<SearchPageQuery>,
) -> ApiResult<Response> {
    let (token, chat) = (path.token.0, path.number.0);
    let path = format!("/applications/{token}/chats/{chat}/messages/search");
    found(&state, &token, Some(chat), &path, &search, &page).await
}

/// Search an application's messages
///
/// As the search of one chat, across every chat of the application; each message names its chat.
/// Newest first is by creation time (to the millisecond), then chat, then number.
#[utoipa::path(get, path = "/applications/{token}/messages/search", tag = "messages",
    operation_id = "messages_search_application", params(ApplicationPath, SearchQuery, SearchPageQuery),
    responses(
        (status = 200, description = "A page of matching messages, in the order `Search-Order` names", body = [FoundMessageView],
            headers(
                ("Link" = String, description = "`<…>; rel=\"next\"`: the next page, while more matches may follow"),
                ("Search-Order" = String, description = "`newest` or `relevance`: the order of the results")))))]
pub async fn search_application(
    State(state): Shared,
    PathParams(path): PathParams<ApplicationPath>,
    Query(search): Query<SearchQuery>,
    Query(page): Query<SearchPageQuery>,
) -> ApiResult<Response> {
    let token = path.token.0;
    let path = format!("/applications/{token}/messages/search");
    found(&state, &token, None, &path, &search, &page).await
}

/// A page of search results, with `Link` to the next and the order named.
async fn found(
    state: &AppState,
    token: &str,
    chat: Option<u64>,
    path: &str,
    search: &SearchQuery,
    page: &SearchPageQuery,
) -> ApiResult<Response> {
    let limit = page.limit()?;
    let order = search.order()?;
    let q = search.text()?;
    let hits = state
        .service
        .search(token, chat, q, order, page.after.as_deref(), limit)
        .await?;
    let mut extra = vec![("q", q)];
    if order == SearchOrder::Relevance {
        extra.push(("order", order.as_str()));
    }
    let links = ListLinks {
        order: Order::Asc,
        limit,
        extra: &extra,
    };
    let mut response = list_response(hits, path, &links);
    response
        .headers_mut()
        .insert(SEARCH_ORDER, HeaderValue::from_static(order.as_str()));
    Ok(response)
}
