//! Request-sequence tests: the reconcile runs against a real `kube::Client` whose transport is a
//! `tower-test` mock answering as an API server would. Each test asserts every call in order: method,
//! URI (field manager and force on every apply) and body.

mod common;

use chatsys_operator::controller::{self, Context};
use chatsys_operator::crd::ChatSystem;
use chatsys_operator::manifests::{self, ChildKind};
use common::{fixture, fresh_inputs};
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const APPLY: &str = "?&force=true&fieldManager=chatsys-operator";
const UID: &str = "6f1c7a52-8d7e-4f0e-9a64-0d3b8f7c2e11";

fn collection(kind: ChildKind) -> &'static str {
    match kind {
        ChildKind::Secret => "/api/v1/namespaces/team/secrets",
        ChildKind::ConfigMap => "/api/v1/namespaces/team/configmaps",
        ChildKind::Service => "/api/v1/namespaces/team/services",
        ChildKind::StatefulSet => "/apis/apps/v1/namespaces/team/statefulsets",
        ChildKind::Deployment => "/apis/apps/v1/namespaces/team/deployments",
        ChildKind::HorizontalPodAutoscaler => {
            "/apis/autoscaling/v2/namespaces/team/horizontalpodautoscalers"
        }
        ChildKind::PodDisruptionBudget => "/apis/policy/v1/namespaces/team/poddisruptionbudgets",
        ChildKind::Ingress => "/apis/networking.k8s.io/v1/namespaces/team/ingresses",
    }
}

const STATUS_URI: &str = "/apis/chatsys.io/v1alpha1/namespaces/team/chatsystems/chat/status";
const LIST_QUERY: &str = "?&labelSelector=app.kubernetes.io%2Finstance%3Dchat%2Capp.kubernetes.io%2Fmanaged-by%3Dchatsys-operator";

#[derive(Debug)]
struct Call {
    method: Method,
    uri: String,
    body: Value,
}

/// What the mock API server holds, and how its workloads are doing.
#[derive(Default)]
struct Cluster {
    /// Secrets by name; a GET of any other answers 404.
    secrets: BTreeMap<String, Value>,
    /// Items of each LIST, by collection path; empty when absent.
    lists: BTreeMap<&'static str, Vec<Value>>,
    /// Whether applied Deployments and StatefulSets report all replicas ready.
    workloads_ready: bool,
    /// Answer the first apply with this failure.
    fail_first_apply: Option<StatusCode>,
}

impl Cluster {
    fn respond(
        &mut self,
        cs: &ChatSystem,
        method: &Method,
        uri: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        let path = uri.split('?').next().unwrap_or_default();
        if *method == Method::GET
            && let Some(name) = path.strip_prefix("/api/v1/namespaces/team/secrets/")
        {
            return match self.secrets.get(name) {
                Some(secret) => (StatusCode::OK, secret.clone()),
                None => (StatusCode::NOT_FOUND, status_body(404, "NotFound")),
            };
        }
        if *method == Method::GET {
            let items = self.lists.get(path).cloned().unwrap_or_default();
            return (
                StatusCode::OK,
                json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": items }),
            );
        }
        if *method == Method::PATCH && path == STATUS_URI {
            let mut updated = serde_json::to_value(cs).expect("ChatSystem serialises");
            updated["status"] = body["status"].clone();
            return (StatusCode::OK, updated);
        }
        if *method == Method::PATCH {
            if let Some(code) = self.fail_first_apply.take() {
                return (code, status_body(code.as_u16(), "InternalError"));
            }
            let mut applied = body.clone();
            applied["metadata"]["generation"] = json!(1);
            if matches!(body["kind"].as_str(), Some("Deployment" | "StatefulSet")) {
                let replicas = body["spec"]["replicas"].as_i64().unwrap_or(2);
                applied["spec"]["replicas"] = json!(replicas);
                let ready = if self.workloads_ready { replicas } else { 0 };
                applied["status"] = json!({ "observedGeneration": 1, "readyReplicas": ready, "updatedReplicas": ready });
            }
            return (StatusCode::OK, applied);
        }
        if *method == Method::POST {
            return (StatusCode::CREATED, body.clone());
        }
        if *method == Method::DELETE {
            return (StatusCode::OK, status_body(200, ""));
        }
        panic!("unexpected request {method} {uri}");
    }
}

fn status_body(code: u16, reason: &str) -> Value {
    let status = if code < 400 { "Success" } else { "Failure" };
    json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": status, "reason": reason, "code": code, "message": reason })
}

/// Runs one reconcile against the mock, under a timeout, and returns its result and every call made.
async fn reconcile(
    cs: ChatSystem,
    mut cluster: Cluster,
) -> (Result<Action, chatsys_operator::error::Error>, Vec<Call>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let context = Arc::new(Context::new(Client::new(service, "default"), None));
    let served = cs.clone();
    let server = tokio::spawn(async move {
        let mut calls = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let uri = request.uri().to_string();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON body")
            };
            let (status, response) = cluster.respond(&served, &method, &uri, &body);
            let response = serde_json::to_vec(&response).expect("response serialises");
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(response))
                    .expect("response"),
            );
            calls.push(Call { method, uri, body });
        }
        calls
    });
    let result = tokio::time::timeout(
        Duration::from_secs(1),
        controller::reconcile(Arc::new(cs), context),
    )
    .await
    .expect("reconcile finished within 1 s");
    // The context (and with it every client) is gone: the mock's request stream ends.
    let calls = tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("mock finished")
        .expect("mock ran");
    (result, calls)
}

fn requests(calls: &[Call]) -> Vec<(Method, String)> {
    calls
        .iter()
        .map(|c| (c.method.clone(), c.uri.clone()))
        .collect()
}

fn get_secret(name: &str) -> (Method, String) {
    (
        Method::GET,
        format!("{}/{name}", collection(ChildKind::Secret)),
    )
}

fn apply(kind: ChildKind, name: &str) -> (Method, String) {
    (Method::PATCH, format!("{}/{name}{APPLY}", collection(kind)))
}

fn delete(kind: ChildKind, name: &str) -> (Method, String) {
    (Method::DELETE, format!("{}/{name}?", collection(kind)))
}

/// One LIST per kind that can be orphaned; credentials Secrets are never listed for deletion.
fn orphan_lists() -> Vec<(Method, String)> {
    ChildKind::ALL
        .into_iter()
        .filter(|k| *k != ChildKind::Secret)
        .map(|k| (Method::GET, format!("{}{LIST_QUERY}", collection(k))))
        .collect()
}

fn status_patch() -> (Method, String) {
    (Method::PATCH, format!("{STATUS_URI}{APPLY}"))
}

fn owned(kind: &str, name: &str, owner_uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": kind,
        "metadata": { "name": name, "namespace": "team",
                      "ownerReferences": [{ "apiVersion": "chatsys.io/v1alpha1", "kind": "ChatSystem",
                                            "name": "chat", "uid": owner_uid, "controller": true }] },
    })
}

fn secret(name: &str, keys: &[&str]) -> Value {
    let data: BTreeMap<&str, &str> = keys.iter().map(|k| (*k, "c2VjcmV0")).collect();
    json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name, "namespace": "team" }, "data": data })
}

fn condition<'a>(status_body: &'a Value, type_: &str) -> &'a Value {
    status_body["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

#[tokio::test]
async fn a_new_resource_gets_everything_applied_then_its_status() {
    let cs = fixture("defaults");
    let (result, calls) = reconcile(cs.clone(), Cluster::default()).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(15))
    );

    let expected_build = manifests::build(&cs, &fresh_inputs(&cs)).expect("builds");
    let mut expected = vec![
        get_secret("chat-mysql-credentials"),
        get_secret("chat-redis-credentials"),
        get_secret("chat-rabbitmq-credentials"),
    ];
    expected.extend(expected_build.iter().map(|m| apply(m.kind, m.name())));
    expected.extend(orphan_lists());
    expected.push(status_patch());
    assert_eq!(requests(&calls), expected);

    let applies = &calls[3..3 + expected_build.len()];
    for (call, manifest) in applies.iter().zip(&expected_build) {
        if manifest.kind == ChildKind::Secret {
            // Freshly generated: the same keys, different random values.
            let keys = |v: &Value| {
                v["stringData"]
                    .as_object()
                    .expect("stringData")
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            };
            assert_eq!(keys(&call.body), keys(&manifest.object));
            assert_eq!(call.body["metadata"], manifest.object["metadata"]);
            assert!(
                call.body["stringData"]
                    .as_object()
                    .expect("stringData")
                    .values()
                    .all(|v| v.as_str().is_some_and(|s| !s.is_empty()))
            );
        } else {
            assert_eq!(
                call.body,
                manifest.object,
                "{:?} {}",
                manifest.kind,
                manifest.name()
            );
        }
    }

    let status = &calls.last().expect("status call").body;
    assert_eq!(status["apiVersion"], "chatsys.io/v1alpha1");
    assert_eq!(status["kind"], "ChatSystem");
    assert_eq!(status["status"]["phase"], "Progressing");
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Progressing")["status"], "True");
    assert_eq!(
        status["status"]["components"]["api"],
        json!({ "readyReplicas": 0, "desiredReplicas": 2 })
    );
    assert_eq!(status["status"]["apiUrl"], "http://chat-api.team.svc:8080");
}

#[tokio::test]
async fn existing_credentials_are_read_and_never_rewritten() {
    let cs = fixture("defaults");
    let mut cluster = Cluster::default();
    for (name, keys) in [
        (
            "chat-mysql-credentials",
            &["username", "password", "root-password"][..],
        ),
        ("chat-redis-credentials", &["password"][..]),
        ("chat-rabbitmq-credentials", &["username", "password"][..]),
    ] {
        cluster.secrets.insert(name.to_string(), secret(name, keys));
    }
    let (result, calls) = reconcile(cs, cluster).await;
    result.expect("reconciled");
    assert!(
        !calls
            .iter()
            .any(|c| c.method != Method::GET && c.uri.contains("/secrets")),
        "no Secret is written: {:?}",
        requests(&calls)
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.uri.contains(APPLY) && !c.uri.contains("/status"))
            .count(),
        17
    );
}

#[tokio::test]
async fn ready_workloads_make_the_resource_ready() {
    let cluster = Cluster {
        workloads_ready: true,
        ..Cluster::default()
    };
    let (result, calls) = reconcile(fixture("defaults"), cluster).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(300))
    );
    let status = &calls.last().expect("status call").body;
    assert_eq!(status["status"]["phase"], "Ready");
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "Progressing")["status"], "False");
    assert_eq!(condition(status, "Degraded")["status"], "False");
    assert_eq!(
        status["status"]["components"]["mysql"],
        json!({ "readyReplicas": 1, "desiredReplicas": 1 })
    );
}

#[tokio::test]
async fn turning_autoscaling_off_deletes_the_autoscalers_it_owns_and_nothing_else() {
    let cs = fixture("autoscaling-off");
    let hpas = collection(ChildKind::HorizontalPodAutoscaler);
    let mut cluster = Cluster::default();
    cluster.lists.insert(
        hpas,
        vec![
            owned("HorizontalPodAutoscaler", "chat-api", UID),
            owned("HorizontalPodAutoscaler", "chat-worker", UID),
            owned("HorizontalPodAutoscaler", "chat-other", "another-owner"),
        ],
    );
    let (result, calls) = reconcile(cs, cluster).await;
    result.expect("reconciled");
    let deletes: Vec<&Call> = calls
        .iter()
        .filter(|c| c.method == Method::DELETE)
        .collect();
    assert_eq!(
        deletes
            .iter()
            .map(|c| (c.method.clone(), c.uri.clone()))
            .collect::<Vec<_>>(),
        [
            delete(ChildKind::HorizontalPodAutoscaler, "chat-api"),
            delete(ChildKind::HorizontalPodAutoscaler, "chat-worker")
        ]
    );
    assert_eq!(deletes[0].body["propagationPolicy"], "Background");
    assert!(
        !calls
            .iter()
            .any(|c| c.method == Method::PATCH && c.uri.starts_with(hpas))
    );
    let list_position = calls
        .iter()
        .position(|c| c.uri == format!("{hpas}{LIST_QUERY}"))
        .expect("HPAs listed");
    let delete_position = calls
        .iter()
        .position(|c| c.method == Method::DELETE)
        .expect("deleted");
    assert_eq!(
        delete_position,
        list_position + 1,
        "deletes follow their list"
    );
    assert_eq!(requests(&calls).last(), Some(&status_patch()));
}

#[tokio::test]
async fn a_service_turned_external_loses_its_workload_but_keeps_credentials_and_volumes() {
    let cs = fixture("external");
    let mut cluster = Cluster::default();
    for (name, key) in [
        ("db", "url"),
        ("cache", "url"),
        ("queue", "amqp"),
        ("search", "endpoint"),
    ] {
        cluster
            .secrets
            .insert(name.to_string(), secret(name, &[key]));
    }
    cluster.lists.insert(
        collection(ChildKind::StatefulSet),
        vec![owned("StatefulSet", "chat-mysql", UID)],
    );
    cluster.lists.insert(
        collection(ChildKind::Service),
        vec![
            owned("Service", "chat-mysql", UID),
            owned("Service", "chat-api", UID),
        ],
    );
    let (result, calls) = reconcile(cs.clone(), cluster).await;
    result.expect("reconciled");
    let built = manifests::build(&cs, &fresh_inputs(&cs)).expect("builds");
    let mut expected = vec![
        get_secret("db"),
        get_secret("cache"),
        get_secret("queue"),
        get_secret("search"),
    ];
    expected.extend(built.iter().map(|m| apply(m.kind, m.name())));
    for kind in ChildKind::ALL
        .into_iter()
        .filter(|k| *k != ChildKind::Secret)
    {
        expected.push((Method::GET, format!("{}{LIST_QUERY}", collection(kind))));
        if kind == ChildKind::Service {
            expected.push(delete(ChildKind::Service, "chat-mysql"));
        }
        if kind == ChildKind::StatefulSet {
            expected.push(delete(ChildKind::StatefulSet, "chat-mysql"));
        }
    }
    expected.push(status_patch());
    assert_eq!(requests(&calls), expected);
    assert!(
        !calls
            .iter()
            .any(|c| c.uri.contains("persistentvolumeclaims"))
    );
}

#[tokio::test]
async fn a_paused_resource_causes_no_write_but_its_status() {
    let cs = fixture("paused");
    let (result, calls) = reconcile(cs, Cluster::default()).await;
    assert_eq!(result.expect("reconciled"), Action::await_change());
    assert_eq!(requests(&calls), [status_patch()]);
    let status = &calls[0].body;
    assert_eq!(status["status"]["phase"], "Paused");
    assert_eq!(condition(status, "ReconciliationPaused")["status"], "True");
    assert_eq!(
        condition(status, "Ready")["status"],
        "True",
        "the last observation is kept"
    );
    assert_eq!(status["status"]["observedGeneration"], 7);
}

#[tokio::test]
async fn a_resource_being_deleted_is_left_to_the_garbage_collector() {
    let mut cs = fixture("defaults");
    cs.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-02-02T10:00:00Z".parse().expect("timestamp"),
    ));
    let (result, calls) = reconcile(cs, Cluster::default()).await;
    assert_eq!(result.expect("reconciled"), Action::await_change());
    assert!(calls.is_empty(), "{:?}", requests(&calls));
}

#[tokio::test]
async fn an_invalid_spec_applies_nothing_and_warns_in_an_event_and_the_status() {
    let cs = fixture("external");
    let mut cluster = Cluster::default();
    cluster
        .secrets
        .insert("cache".to_string(), secret("cache", &["url"]));
    cluster
        .secrets
        .insert("queue".to_string(), secret("queue", &["amqp"]));
    cluster
        .secrets
        .insert("search".to_string(), secret("search", &["url"]));
    let (result, calls) = reconcile(cs, cluster).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(60))
    );
    assert_eq!(
        requests(&calls),
        [
            get_secret("db"),
            get_secret("cache"),
            get_secret("queue"),
            get_secret("search"),
            (
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/team/events?".to_string()
            ),
            status_patch(),
        ]
    );
    let event = &calls[4].body;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidSpec");
    assert_eq!(event["regarding"]["name"], "chat");
    let reason = "mysql: Secret db not found; opensearch: Secret search has no key endpoint";
    assert_eq!(event["note"], reason);
    let status = &calls[5].body;
    assert_eq!(status["status"]["phase"], "Degraded");
    assert_eq!(condition(status, "Degraded")["status"], "True");
    assert_eq!(condition(status, "Degraded")["message"], reason);
    assert_eq!(condition(status, "Ready")["status"], "False");
}

#[tokio::test]
async fn a_failing_call_is_an_error_retried_with_a_growing_backoff_and_counted() {
    let cs = fixture("defaults");
    let cluster = Cluster {
        fail_first_apply: Some(StatusCode::INTERNAL_SERVER_ERROR),
        ..Cluster::default()
    };
    let (result, calls) = reconcile(cs.clone(), cluster).await;
    let error = result.expect_err("the failed apply fails the reconcile");
    assert_eq!(error.metric_label(), "kube");
    let mut expected = requests(&calls[..4]);
    assert_eq!(
        expected[3],
        apply(ChildKind::Secret, "chat-mysql-credentials"),
        "the failed apply"
    );
    expected.push(status_patch());
    assert_eq!(
        requests(&calls),
        expected,
        "nothing but the status after the failed apply"
    );
    let status = &calls[4].body;
    assert_eq!(status["status"]["phase"], "Degraded");
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["reason"], "ReconcileFailed");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Kubernetes API:")),
        "{status}"
    );

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let context = Arc::new(Context::new(Client::new(service, "default"), None));
    let resource = Arc::new(cs);
    let delays: Vec<Action> = metrics::with_local_recorder(&recorder, || {
        (0..8)
            .map(|_| controller::error_policy(resource.clone(), &error, context.clone()))
            .collect()
    });
    let seconds = [5, 10, 20, 40, 80, 160, 300, 300];
    assert_eq!(
        delays,
        seconds.map(|s| Action::requeue(Duration::from_secs(s)))
    );
    assert!(
        handle
            .render()
            .contains("chatsys_operator_reconcile_errors_total{error=\"kube\"} 8"),
        "{}",
        handle.render()
    );
}
