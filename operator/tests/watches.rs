//! The controller's watches, run against the stand-in API server with the chart's permissions: what
//! they list and watch, and how.

mod common;

use chatsys_operator::controller;
use chatsys_operator::server::WatchHealth;
use common::apiserver::{ApiServer, Call};
use http::{Method, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// Runs the controller until `done` holds for the calls it made (or 5 s), then stops it.
async fn run_until(server: &ApiServer, done: impl Fn(&[Call]) -> bool) -> Vec<Call> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(controller::run(
        server.client(),
        server.client(),
        None,
        Arc::new(WatchHealth::default()),
        async {
            let _ = stopped.await;
        },
    ));
    for _ in 0..100 {
        if done(&server.calls()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
    server.calls()
}

fn lists<'a>(calls: &'a [Call], path: &str) -> Vec<&'a Call> {
    calls
        .iter()
        .filter(|c| c.method == Method::GET && c.path == path && c.param("watch").is_none())
        .collect()
}

#[tokio::test]
async fn secrets_are_listed_and_watched_as_metadata_only_with_the_charts_permissions() {
    let server = ApiServer::new();
    let calls = run_until(&server, |calls| {
        calls
            .iter()
            .any(|c| c.path == "/api/v1/secrets" && c.param("watch").is_some())
    })
    .await;
    let secrets: Vec<&Call> = calls
        .iter()
        .filter(|c| c.path == "/api/v1/secrets")
        .collect();
    assert!(!secrets.is_empty(), "the Secrets are watched");
    for call in &secrets {
        assert!(
            call.accept.contains("as=PartialObjectMetadata"),
            "the data of every Secret in the cluster is never read: {call:?}"
        );
    }
    assert_eq!(
        lists(&calls, "/apis/chatsys.io/v1alpha1/chatsystems").len(),
        1,
        "the ChatSystems are listed"
    );
    let refused: Vec<String> = calls
        .iter()
        .filter(|c| c.status == StatusCode::FORBIDDEN)
        .map(|c| format!("{} {}?{}", c.method, c.path, c.query))
        .collect();
    assert_eq!(refused, Vec::<String>::new());
}
