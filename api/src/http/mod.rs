//! The REST API: one module per resource, each with its `router()`, merged here with the layers every
//! request goes through (request id, logs, metrics, body limit, JSON errors).

mod applications;
mod chats;
mod conditional;
mod cors;
pub mod error;
mod events;
mod extract;
mod messages;
pub mod openapi;
mod ops;
mod params;
pub mod render;
pub mod views;

use chatsys_core::telemetry;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use chatsys_core::domain::{Order, Page};
use chatsys_core::pages::ListPage;
use chatsys_core::service::ChatService;
use chatsys_runtime::boot::Readiness;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use chatsys_core::idempotency::token_fingerprint;
use error::{ApiError, ErrorCode};
pub use extract::BodyBudget;

pub struct AppState {
    pub service: ChatService,
    /// What `/readyz` checks.
    pub readiness: Readiness,
    pub admin_key: Option<String>,
    /// Larger request bodies are answered 413.
    pub max_request_bytes: usize,
    /// A body not received whole this long after its handler started reading it is answered 408.
    pub body_timeout: Duration,
    /// Bytes of request bodies held at once, over all requests.
    pub body_budget: BodyBudget,
    /// `/metrics` is served on a port of its own, not on this one.
    pub metrics_elsewhere: bool,
    /// Origins whose web pages may call the API; requests from others are refused.
    pub cors_allowed_origins: Vec<HeaderValue>,
    /// The request line and headers answered at most.
    pub limits: RequestLimits,
}

/// The most of a request head the API answers: more is a 414 or a 431 in the API's error format.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub uri_bytes: usize,
    pub headers: usize,
    pub header_bytes: usize,
}

pub type Shared = State<Arc<AppState>>;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client request id kept; a longer one is replaced by a fresh id.
const REQUEST_ID_MAX_BYTES: usize = 128;

/// A client's request id is echoed and logged, so only a short one of visible ASCII is kept; any other
/// (or a repeated header) is removed, and `SetRequestIdLayer` then gives the request a fresh one.
fn drop_unusable_request_id(mut req: Request) -> Request {
    let mut ids = req.headers().get_all(REQUEST_ID).iter();
    let usable = match (ids.next(), ids.next()) {
        (None, _) => true,
        (Some(id), None) => {
            (1..=REQUEST_ID_MAX_BYTES).contains(&id.len())
                && id.as_bytes().iter().all(u8::is_ascii_graphic)
        }
        (Some(_), Some(_)) => false,
    };
    if !usable {
        req.headers_mut().remove(REQUEST_ID);
    }
    req
}

/// Every route with its documentation: the router serves what this lists, and the document describes it.
fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(applications::router())
        .merge(chats::router())
        .merge(messages::router())
        .merge(events::router())
        .merge(ops::router())
}

pub fn router(state: Arc<AppState>) -> Router {
    let (routes, _) = routes().split_for_parts();
    routes
        .fallback(|| async { ApiError::for_status(StatusCode::NOT_FOUND) })
        .layer(middleware::from_fn(json_errors))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(middleware::from_fn(record_metrics))
        .layer(cors::layer(&state.cors_allowed_origins))
        .layer(middleware::from_fn(cors::preflights_have_no_content))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cors::refuse_other_origins,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            within_request_limits,
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<Body>| {
            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            let path = loggable_path(req.uri().path());
            tracing::info_span!("request", method = %req.method(), path = %path, request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(tower::util::MapRequestLayer::new(drop_unusable_request_id))
        .with_state(state)
}

/// A request path as logs show it: an application's token replaced by `~` and its fingerprint, so
/// that logs never hold a credential yet still tell one application's requests from another's.
fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    let Some(rest) = path.strip_prefix("/applications/") else {
        return path.into();
    };
    let (token, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if token.is_empty() {
        return path.into();
    }
    format!("/applications/~{}{tail}", token_fingerprint(token)).into()
}

/// Answers a request over the limits on its target or headers with 414 or 431, in the API's error
/// format (hyper's own limits are set above these; see `chatsys_runtime::server`).
async fn within_request_limits(State(state): Shared, req: Request, next: Next) -> Response {
    let limits = state.limits;
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > limits.uri_bytes {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            ErrorCode::UriTooLong,
            format!("the path and query are over {} bytes", limits.uri_bytes),
        )
        .into_response();
    }
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > limits.headers || header_bytes > limits.header_bytes {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::HeadersTooLarge,
            format!(
                "over {} headers or {} bytes of them",
                limits.headers, limits.header_bytes
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// Errors produced outside the handlers (unknown method, body over the limit) get the JSON error body too.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (response.status().is_client_error() || response.status().is_server_error()) && !is_json {
        let allow = response.headers().get(header::ALLOW).cloned();
        let mut replaced = ApiError::for_status(response.status()).into_response();
        if let Some(allow) = allow {
            replaced.headers_mut().insert(header::ALLOW, allow);
        }
        return replaced;
    }
    response
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    let labels = [
        ("method", method.to_string()),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!(telemetry::HTTP_REQUESTS.name, &labels).increment(1);
    metrics::histogram!(telemetry::HTTP_REQUEST_DURATION.name, &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// A method's metric label: the standard methods by name, any other as `other`, so that a client
/// inventing methods cannot add label values (each one a series in every replica and every scrape).
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];
    STANDARD
        .iter()
        .find(|standard| *standard == method)
        .map_or("other", Method::as_str)
}

/// The change a chat's list of messages was read at: where its event stream continues from.
pub const CHAT_LAST_EVENT_ID: HeaderName = HeaderName::from_static("chat-last-event-id");
/// The order a page of search results is in.
pub const SEARCH_ORDER: HeaderName = HeaderName::from_static("search-order");

/// A rendered list with its `Link` header naming the `next` page while the list goes on and the `prev`
/// one after a cursor, in the same order (`order` and `limit` are kept, as is `extra`), and for a chat's
/// messages the change they were read at.
pub fn list_response(page: ListPage, path: &str, query: &ListLinks<'_>) -> Response {
    let mut response = Response::new(Body::from(page.json));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let links: Vec<String> = [("next", page.next), ("prev", page.prev)]
        .into_iter()
        .filter_map(|(rel, link)| {
            let link = link?;
            let mut pairs = form_pairs(query.extra);
            if query.order == Order::Desc {
                pairs.push(("order".to_string(), "desc".to_string()));
            }
            pairs.push(("limit".to_string(), query.limit.to_string()));
            pairs.extend(
                link.params()
                    .map(|(name, value)| (name.to_string(), value.to_string())),
            );
            let encoded = serde_urlencoded::to_string(&pairs).unwrap_or_default();
            Some(format!("<{path}?{encoded}>; rel=\"{rel}\""))
        })
        .collect();
    if !links.is_empty()
        && let Ok(link) = HeaderValue::from_str(&links.join(", "))
    {
        headers.insert(header::LINK, link);
    }
    if let Some(last_event) = page.last_event {
        headers.insert(CHAT_LAST_EVENT_ID, HeaderValue::from(last_event));
    }
    response
}

/// What a list's links keep of the request: its order, its page size, and any other parameters.
pub struct ListLinks<'a> {
    pub order: Order,
    pub limit: u32,
    pub extra: &'a [(&'a str, &'a str)],
}

impl ListLinks<'_> {
    pub fn of(page: Page) -> Self {
        ListLinks {
            order: page.order,
            limit: page.limit,
            extra: &[],
        }
    }
}

fn form_pairs(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Marks an answer repeated from an earlier request with the same idempotency key.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A 201 with the created resource and its `Location`, marked when it repeats an earlier answer.
pub fn created(location: String, view: impl serde::Serialize, replayed: bool) -> Response {
    let mut response = (StatusCode::CREATED, axum::Json(view)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_paths_hold_a_fingerprint_in_place_of_the_token() {
        let fingerprint = token_fingerprint("SecretToken");
        assert_eq!(
            loggable_path("/applications/SecretToken/chats/1"),
            format!("/applications/~{fingerprint}/chats/1")
        );
        assert_eq!(
            loggable_path("/applications/SecretToken"),
            format!("/applications/~{fingerprint}")
        );
        for untouched in ["/applications", "/applications/", "/healthz", "/"] {
            assert_eq!(loggable_path(untouched), untouched);
        }
    }
}
