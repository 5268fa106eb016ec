//! Browsers: pages of the allowed origins may call the API (CORS, from `tower-http`); a request from
//! any other page is refused before it does anything.
//!
//! A browser sends some cross-origin requests without asking first (a "simple" `POST` with a
//! `text/plain` body, say) and only hides the answer from the page. CORS headers alone would let such a
//! request create a message that the page then reports as failed, and creates again when it retries.
//! So a request that carries an `Origin` neither allowed nor the API's own is answered 403 here,
//! before any handler runs. Clients that are not browsers send no `Origin` and are not concerned.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chatsys_settings::origin_authority;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::error::{ApiError, ErrorCode};
use super::{CHAT_LAST_EVENT_ID, IDEMPOTENT_REPLAYED, REQUEST_ID, SEARCH_ORDER, Shared};

/// The request headers a page may send: the ones the API reads.
const ALLOWED_HEADERS: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static("last-event-id"),
    REQUEST_ID,
];

/// The response headers a page may read besides the always-visible ones.
const EXPOSED_HEADERS: [HeaderName; 8] = [
    header::LINK,
    CHAT_LAST_EVENT_ID,
    SEARCH_ORDER,
    header::ETAG,
    header::LOCATION,
    header::RETRY_AFTER,
    REQUEST_ID,
    IDEMPOTENT_REPLAYED,
];

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// CORS for these origins (none: no page of another origin may read an answer). No credentials: the
/// API's credentials are the token in the path and the admin key a page sends itself, never cookies.
pub fn layer(origins: &[HeaderValue]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers(ALLOWED_HEADERS)
        .expose_headers(EXPOSED_HEADERS)
        .max_age(PREFLIGHT_MAX_AGE)
}

/// `tower-http` answers a preflight 200 with an empty body; it is a 204, as the Fetch standard's
/// examples and most servers answer it.
pub async fn preflights_have_no_content(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = next.run(req).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

/// Refuses a request from a page of an origin that is neither allowed nor the API's own.
pub async fn refuse_other_origins(State(state): Shared, req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let allowed = state.cors_allowed_origins.iter().any(|o| o == origin)
            || same_origin(origin, req.headers().get(header::HOST));
        if !allowed {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::OriginNotAllowed,
                "requests from this web origin are not allowed: the server lists the origins it \
                 serves in CHATSYS_CORS_ALLOWED_ORIGINS",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// A page served by the API's own host and port (its `Origin`'s authority is the request's `Host`).
fn same_origin(origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let (Ok(origin), Some(host)) = (origin.to_str(), host) else {
        return false;
    };
    origin_authority(origin).is_some_and(|a| a.as_bytes().eq_ignore_ascii_case(host.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_apis_own_host_is_the_same_origin() {
        let host = HeaderValue::from_static("chat.example.com");
        let same =
            |origin: &'static str| same_origin(&HeaderValue::from_static(origin), Some(&host));
        assert!(same("https://chat.example.com"));
        assert!(same("http://Chat.Example.com"));
        assert!(!same("https://chat.example.com.evil.test"));
        assert!(!same("https://evil.test"));
        assert!(!same("null"));
        assert!(!same_origin(
            &HeaderValue::from_static("https://chat.example.com"),
            None
        ));
    }
}
