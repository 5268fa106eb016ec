//! Start-up: waiting for a backing service is not a crash. The process listens at once, answering
//! `/healthz` and a `/readyz` that names what it waits for, while it connects to each service with a
//! growing delay between tries; then it serves its own routes.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::health::{self, Check, CheckState};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use backon::{ExponentialBuilder, Retryable};
use chatsys_core::error::{CoreError, CoreResult};
use tower::ServiceExt;

/// The first retry after this, doubling up to `MAX_DELAY`: a service that starts in seconds is
/// found in seconds, and one down for minutes costs a try every ten seconds.
const MIN_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(10);

/// What a starting process waits for, by check name.
pub struct Connecting {
    checks: Mutex<BTreeMap<&'static str, CheckState>>,
}

impl Connecting {
    /// Waiting for each of `names`.
    pub fn new(names: &[&'static str]) -> Arc<Self> {
        Arc::new(Connecting {
            checks: Mutex::new(names.iter().map(|n| (*n, CheckState::Waiting)).collect()),
        })
    }

    /// Tries `attempt` until it succeeds or fails for good: an unavailable service is waited for,
    /// any other error ends the start.
    pub async fn connect<T, F, Fut>(&self, name: &'static str, attempt: F) -> CoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = CoreResult<T>>,
    {
        let policy = ExponentialBuilder::default()
            .with_min_delay(MIN_DELAY)
            .with_max_delay(MAX_DELAY)
            .with_jitter()
            .without_max_times();
        let result = attempt
            .retry(policy)
            .when(CoreError::is_transient)
            .notify(|error, delay| {
                tracing::warn!(service = name, %error, retry_in_ms = delay.as_millis() as u64, "waiting for a backing service");
            })
            .await;
        if result.is_ok() {
            self.lock().insert(name, CheckState::Ok);
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, CheckState>> {
        self.checks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn readiness(&self) -> Response {
        let checks: Vec<Check> = self
            .lock()
            .iter()
            .map(|(name, state)| Check {
                name,
                state: *state,
            })
            .collect();
        let (_, body) = health::report(&checks);
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// The router to serve from the first moment: `app` once it is set; until then `/healthz`, a
/// `/readyz` naming what the process waits for, and `starting` (a 503 in the binary's own error format)
/// for anything else.
pub fn switch(
    connecting: Arc<Connecting>,
    app: Arc<OnceLock<Router>>,
    starting: fn() -> Response,
) -> Router {
    Router::new().fallback_service(tower::service_fn(move |request: Request<Body>| {
        let connecting = connecting.clone();
        let app = app.get().cloned();
        async move {
            if let Some(app) = app {
                return app.oneshot(request).await;
            }
            Ok(match request.uri().path() {
                "/healthz" => Json(serde_json::json!({ "status": "ok" })).into_response(),
                "/readyz" => connecting.readiness(),
                _ => starting(),
            })
        }
    }))
}
