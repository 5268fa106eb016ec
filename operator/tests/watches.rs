//! The controller's watches, run against the stand-in API server with the chart's permissions: what
//! they list and watch, and how.

mod common;

use chatsys_operator::controller;
use chatsys_operator::scope::Scope;
use chatsys_operator::server::WatchHealth;
use common::apiserver::{ApiServer, Call};
use common::rbac::Authorizer;
use http::Method;
use std::sync::Arc;
use std::time::Duration;

/// Runs the controller until `done` holds for the calls it made (or 5 s), then stops it.
async fn run_until(server: &ApiServer, scope: Scope, done: impl Fn(&[Call]) -> bool) -> Vec<Call> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(controller::run(
        server.client(),
        server.client(),
        None,
        scope,
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
    let calls = run_until(&server, Scope::default(), |calls| {
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
    assert_eq!(common::forbidden(&calls), Vec::<String>::new());
}

#[tokio::test]
async fn a_namespace_scoped_operator_watches_only_its_namespaces_with_their_roles() {
    let roles = Authorizer::from_chart(&["watchNamespaces={team,chat}"]);
    let server = ApiServer::with_authorizer(Arc::new(roles));
    let calls = run_until(&server, Scope::parse("team,chat"), |calls| {
        ["team", "chat"].iter().all(|namespace| {
            calls.iter().any(|c| {
                c.path == format!("/api/v1/namespaces/{namespace}/secrets")
                    && c.param("watch").is_some()
            })
        })
    })
    .await;
    let reads: Vec<&Call> = calls.iter().filter(|c| c.method == Method::GET).collect();
    assert!(!reads.is_empty());
    for call in &reads {
        assert!(
            call.path.contains("/namespaces/team/")
                || call.path.contains("/namespaces/chat/")
                || call.path.matches('/').count() <= 3,
            "only the watched namespaces (and discovery): {}",
            call.path
        );
    }
    for namespace in ["team", "chat"] {
        assert_eq!(
            lists(
                &calls,
                &format!("/apis/chatsys.io/v1alpha1/namespaces/{namespace}/chatsystems")
            )
            .len(),
            1,
            "{namespace}"
        );
    }
    assert_eq!(common::forbidden(&calls), Vec::<String>::new());
}

#[tokio::test]
async fn a_stored_chatsystem_the_operator_cannot_read_stops_none_of_the_others() {
    let server = ApiServer::new();
    let chatsystems = "/apis/chatsys.io/v1alpha1/namespaces/team/chatsystems";
    for (name, spec) in [
        ("good", serde_json::json!({})),
        // What an earlier, looser schema let through: a label value that is not a string.
        (
            "bad",
            serde_json::json!({ "networkPolicy": { "apiFrom": [{ "podSelector": { "matchLabels": { "tier": 1 } } }] } }),
        ),
    ] {
        server.create(
            chatsystems,
            serde_json::json!({ "apiVersion": "chatsys.io/v1alpha1", "kind": "ChatSystem",
                                "metadata": { "name": name }, "spec": spec }),
        );
    }
    let status_written = |name: &str| {
        let path = format!("{chatsystems}/{name}/status");
        move |calls: &[Call]| {
            calls
                .iter()
                .any(|c| c.method == Method::PATCH && c.path == path)
        }
    };
    let (good, bad) = (status_written("good"), status_written("bad"));
    run_until(&server, Scope::default(), |calls| good(calls) && bad(calls)).await;
    let stored = |name: &str| server.get(chatsystems, name).expect("stored")["status"].clone();
    assert!(
        stored("good")["phase"].is_string(),
        "the readable system is reconciled: {}",
        stored("good")
    );
    assert_eq!(stored("bad")["conditions"][0]["reason"], "Unreadable");
}
