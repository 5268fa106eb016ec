//! The reconcile against `common::apiserver`, a stand-in as strict as kube-apiserver where it matters:
//! server-side apply ownership, defaulting, immutable fields, garbage collection. Each day-two test
//! plays what a user does (delete and re-apply, grow a volume, turn autoscaling on) and what the
//! cluster's controllers do, and asserts what the user would see.

mod common;

use chatsys_operator::apis::Discovery;
use chatsys_operator::children::Children;
use chatsys_operator::controller::{self, Context};
use chatsys_operator::crd::ChatSystem;
use chatsys_operator::error::{Error, InvalidSpec};
use chatsys_operator::kinds::ChildKind;
use chatsys_operator::manifests::{self, GeneratedSecret};
use common::apiserver::{ApiServer, Call};
use common::{fixture, fresh_inputs};
use http::{Method, StatusCode};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const CHATSYSTEMS: &str = "/apis/chatsys.io/v1alpha1/namespaces/team/chatsystems";
const SECRETS: &str = "/api/v1/namespaces/team/secrets";
const CLAIMS: &str = "/api/v1/namespaces/team/persistentvolumeclaims";
const STATEFULSETS: &str = "/apis/apps/v1/namespaces/team/statefulsets";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/team/deployments";
const HPAS: &str = "/apis/autoscaling/v2/namespaces/team/horizontalpodautoscalers";
const SERVICES: &str = "/api/v1/namespaces/team/services";
const JOBS: &str = "/apis/batch/v1/namespaces/team/jobs";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team/events";
const STORAGE_CLASSES: &str = "/apis/storage.k8s.io/v1/storageclasses";
const NETWORK_POLICIES: &str = "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies";
const SCALED_OBJECTS: &str = "/apis/keda.sh/v1alpha1/namespaces/team/scaledobjects";
const TRIGGER_AUTHENTICATIONS: &str =
    "/apis/keda.sh/v1alpha1/namespaces/team/triggerauthentications";
const SERVICE_MONITORS: &str = "/apis/monitoring.coreos.com/v1/namespaces/team/servicemonitors";
const POD_MONITORS: &str = "/apis/monitoring.coreos.com/v1/namespaces/team/podmonitors";
const PROMETHEUS_RULES: &str = "/apis/monitoring.coreos.com/v1/namespaces/team/prometheusrules";

/// Creates a fixture's ChatSystem as `kubectl apply` would, with `changes` merged into its spec.
fn create(server: &ApiServer, name: &str, changes: Value) -> Value {
    let mut object = serde_json::to_value(fixture(name)).expect("fixture serialises");
    let metadata = object["metadata"].as_object_mut().expect("metadata");
    metadata.retain(|k, _| matches!(k.as_str(), "name" | "namespace"));
    merge(&mut object["spec"], &changes);
    server.create(CHATSYSTEMS, object)
}

/// A user's edit of the stored spec (`kubectl edit`).
fn edit(server: &ApiServer, changes: Value) {
    let mut object = server
        .get(CHATSYSTEMS, "chat")
        .expect("the ChatSystem exists");
    merge(&mut object["spec"], &changes);
    server.update(CHATSYSTEMS, "chat", object);
}

fn merge(target: &mut Value, changes: &Value) {
    match (target, changes) {
        (Value::Object(target), Value::Object(changes)) => {
            for (key, value) in changes {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (target, changes) => *target = changes.clone(),
    }
}

/// Reconciles, lets the Job controller run the migration, and reconciles again: until a version's
/// migration has run, its Deployments are held back.
async fn settle(server: &ApiServer) -> Result<Action, Error> {
    let _ = reconcile(server).await;
    server.complete_jobs("team");
    reconcile(server).await
}

/// One reconcile of the stored ChatSystem, as the controller would run it.
async fn reconcile(server: &ApiServer) -> Result<Action, Error> {
    common::reconcile(server, "chat").await
}

fn stored_status(server: &ApiServer) -> Value {
    server
        .get(CHATSYSTEMS, "chat")
        .expect("the ChatSystem exists")["status"]
        .clone()
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// A discovery request: `/apis/<group>/<version>`.
fn is_discovery(call: &Call) -> bool {
    call.method == Method::GET
        && call.path.starts_with("/apis/")
        && call.path.matches('/').count() == 3
}

fn writes(calls: &[Call]) -> Vec<(Method, String)> {
    calls
        .iter()
        .filter(|c| c.is_write())
        .map(|c| (c.method.clone(), c.path.clone()))
        .collect()
}

fn event_reasons(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method == Method::POST && c.path == EVENTS)
        .map(|c| c.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn secret_data(server: &ApiServer, name: &str) -> Value {
    server
        .get(SECRETS, name)
        .unwrap_or_else(|| panic!("Secret {name} exists"))["data"]
        .clone()
}

fn replicas(object: &Value) -> i64 {
    object["spec"]["replicas"].as_i64().expect("replicas")
}

#[tokio::test]
async fn a_new_resource_gets_credentials_created_every_child_applied_then_its_status() {
    let server = ApiServer::new();
    let stored = create(&server, "defaults", json!({}));
    let result = reconcile(&server).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(15))
    );

    let cs: ChatSystem = serde_json::from_value(stored).expect("a ChatSystem");
    let inputs = fresh_inputs(&cs);
    let first = manifests::build(&manifests::validate(&cs, &inputs).expect("valid"));
    assert!(
        first
            .children
            .iter()
            .all(|m| m.kind() != ChildKind::Deployment),
        "no Deployment before its migration has run"
    );
    let planned = first.children;
    let calls = server.calls();
    let mut expected: Vec<(Method, String)> = GeneratedSecret::needed(&cs)
        .iter()
        .map(|_| (Method::POST, SECRETS.to_string()))
        .collect();
    for manifest in &planned {
        let collection = match manifest.kind().name() {
            "Secret" => SECRETS,
            "Service" => SERVICES,
            "StatefulSet" => STATEFULSETS,
            "Deployment" => DEPLOYMENTS,
            "HorizontalPodAutoscaler" => HPAS,
            "ConfigMap" => "/api/v1/namespaces/team/configmaps",
            "Job" => JOBS,
            "PodDisruptionBudget" => "/apis/policy/v1/namespaces/team/poddisruptionbudgets",
            "NetworkPolicy" => NETWORK_POLICIES,
            other => panic!("unexpected {other}"),
        };
        expected.push((Method::PATCH, format!("{collection}/{}", manifest.name())));
    }
    expected.push((Method::POST, EVENTS.to_string()));
    expected.push((Method::PATCH, format!("{CHATSYSTEMS}/chat/status")));
    assert_eq!(writes(&calls), expected);
    for apply in calls.iter().filter(|c| c.method == Method::PATCH) {
        assert_eq!(
            apply.param("fieldManager").as_deref(),
            Some("chatsys-operator")
        );
        assert_eq!(apply.param("force").as_deref(), Some("true"));
    }
    assert_eq!(event_reasons(&calls), ["Created"]);

    let password = &secret_data(&server, "chat-mysql-credentials")["password"];
    assert!(
        password.as_str().is_some_and(|p| p.len() > 40),
        "base64 of 32 characters: {password}"
    );
    let status = stored_status(&server);
    assert_eq!(status["phase"], "Progressing");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "Progressing")["status"], "True");
    let job = server.names(JOBS).pop().expect("the migration Job");
    assert!(
        condition(&status, "Ready")["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("the schema migration (Job {job})"))),
        "{status}"
    );
    assert!(status["components"]["api"].is_null());
    assert_eq!(status["apiUrl"], "http://chat-api.team.svc:8080");

    // The migration ran: the API and the worker start.
    server.complete_jobs("team");
    reconcile(&server).await.expect("reconciled");
    assert!(server.get(DEPLOYMENTS, "chat-api").is_some());
    assert!(server.get(DEPLOYMENTS, "chat-worker").is_some());
    assert_eq!(
        stored_status(&server)["components"]["api"],
        json!({ "readyReplicas": 0, "desiredReplicas": 1 })
    );
}

#[tokio::test]
async fn a_new_version_waits_for_its_migration_and_keeps_the_running_one_meanwhile() {
    let server = ApiServer::new();
    create(&server, "defaults", json!({}));
    settle(&server).await.expect("reconciled");
    let first_job = server.names(JOBS);
    edit(&server, json!({ "api": { "image": "example.org/api:2" } }));
    reconcile(&server).await.expect("reconciled");
    let api = server
        .get(DEPLOYMENTS, "chat-api")
        .expect("the running API stays");
    assert_ne!(
        api["spec"]["template"]["spec"]["containers"][0]["image"], "example.org/api:2",
        "not before the new schema"
    );
    let jobs = server.names(JOBS);
    assert_eq!(jobs.len(), 1);
    assert_ne!(
        jobs, first_job,
        "a new Job for the new version; the old one is gone"
    );
    let job = server.get(JOBS, &jobs[0]).expect("Job");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.org/api:2"
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["migrate"])
    );
    server.complete_jobs("team");
    reconcile(&server).await.expect("reconciled");
    let api = server.get(DEPLOYMENTS, "chat-api").expect("API");
    assert_eq!(
        api["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.org/api:2"
    );
}

#[tokio::test]
async fn a_rollback_whose_migration_fails_is_degraded_with_the_reason_and_a_fixed_image_recovers() {
    let server = ApiServer::new();
    create(
        &server,
        "defaults",
        json!({ "api": { "image": "example.org/api:2" } }),
    );
    settle(&server).await.expect("reconciled");
    server.make_workloads_ready("team");
    reconcile(&server).await.expect("reconciled");

    // An older release's migrator finds versions it does not know and exits; the Job gives up.
    edit(&server, json!({ "api": { "image": "example.org/api:1" } }));
    reconcile(&server).await.expect("reconciled");
    let rollback = server.names(JOBS).pop().expect("the rollback's Job");
    let job = server.get(JOBS, &rollback).expect("Job");
    assert_eq!(job["spec"]["backoffLimit"], 2);
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 900);
    server.fail_jobs("team");
    let _ = reconcile(&server).await;
    let status = stored_status(&server);
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True", "{status}");
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("Job {rollback}: the schema migration failed"))
            && message.contains("BackoffLimitExceeded"),
        "{message}"
    );
    let api = server.get(DEPLOYMENTS, "chat-api").expect("API");
    assert_eq!(
        api["spec"]["template"]["spec"]["containers"][0]["image"], "example.org/api:2",
        "the running version stays"
    );

    edit(&server, json!({ "api": { "image": "example.org/api:2" } }));
    settle(&server).await.expect("reconciled");
    server.make_workloads_ready("team");
    reconcile(&server).await.expect("reconciled");
    let status = stored_status(&server);
    assert_eq!(
        condition(&status, "Degraded")["status"],
        "False",
        "{status}"
    );
    assert_eq!(condition(&status, "Ready")["status"], "True", "{status}");
}

#[tokio::test]
async fn existing_credentials_are_read_and_their_values_never_written() {
    let server = ApiServer::new();
    for (name, keys) in [
        (
            "chat-mysql-credentials",
            &["username", "password", "root-password"][..],
        ),
        ("chat-redis-credentials", &["password"][..]),
        ("chat-rabbitmq-credentials", &["username", "password"][..]),
        ("chat-rabbitmq-cookie", &["cookie"][..]),
        ("chat-api-admin-key", &["admin-key"][..]),
    ] {
        let data: serde_json::Map<String, Value> = keys
            .iter()
            .map(|k| (k.to_string(), json!("c2VjcmV0")))
            .collect();
        server.create(
            SECRETS,
            json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "data": data }),
        );
    }
    create(&server, "defaults", json!({}));
    reconcile(&server).await.expect("reconciled");
    assert!(
        !server
            .calls()
            .iter()
            .any(|c| c.method == Method::POST && c.path == SECRETS),
        "no credentials are generated"
    );
    assert_eq!(
        secret_data(&server, "chat-mysql-credentials")["password"],
        "c2VjcmV0"
    );
    let secret = server
        .get(SECRETS, "chat-mysql-credentials")
        .expect("Secret");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/instance"],
        "chat"
    );
}

#[tokio::test]
async fn ready_workloads_make_the_resource_ready_and_say_so_once() {
    let server = ApiServer::new();
    create(&server, "defaults", json!({}));
    settle(&server).await.expect("reconciled");
    server.make_workloads_ready("team");
    server.clear_calls();
    let result = reconcile(&server).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(300))
    );
    let status = stored_status(&server);
    assert_eq!(status["phase"], "Ready");
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    assert_eq!(
        status["components"]["mysql"],
        json!({ "readyReplicas": 1, "desiredReplicas": 1 })
    );
    assert_eq!(event_reasons(&server.calls()), ["Ready"]);
    server.clear_calls();
    reconcile(&server).await.expect("reconciled");
    assert!(event_reasons(&server.calls()).is_empty());
}

#[tokio::test]
async fn a_paused_resource_gets_no_write_but_its_status_and_one_event() {
    let server = ApiServer::new();
    create(&server, "paused", json!({}));
    let result = reconcile(&server).await;
    assert_eq!(result.expect("reconciled"), Action::await_change());
    assert_eq!(
        writes(&server.calls()),
        [
            (Method::POST, EVENTS.to_string()),
            (Method::PATCH, format!("{CHATSYSTEMS}/chat/status")),
        ]
    );
    assert_eq!(event_reasons(&server.calls()), ["Paused"]);
    let status = stored_status(&server);
    assert_eq!(status["phase"], "Paused");
    assert_eq!(condition(&status, "ReconciliationPaused")["status"], "True");
}

#[tokio::test]
async fn a_resource_being_deleted_is_left_to_the_garbage_collector() {
    let server = ApiServer::new();
    let mut cs = fixture("defaults");
    cs.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-02-02T10:00:00Z".parse().expect("timestamp"),
    ));
    let context = empty_context(&server);
    let result = controller::reconcile(Arc::new(cs), context).await;
    assert_eq!(result.expect("reconciled"), Action::await_change());
    assert!(server.calls().is_empty());
}

#[tokio::test]
async fn an_invalid_spec_applies_nothing_and_warns_in_an_event_and_the_status() {
    let server = ApiServer::new();
    for (name, key) in [("cache", "url"), ("queue", "amqp"), ("search", "url")] {
        server.create(
            SECRETS,
            json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "data": { key: "dXJs" } }),
        );
    }
    create(&server, "external", json!({}));
    server.clear_calls();
    let result = reconcile(&server).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(60))
    );
    assert_eq!(
        writes(&server.calls()),
        [
            (Method::POST, EVENTS.to_string()),
            (Method::PATCH, format!("{CHATSYSTEMS}/chat/status")),
        ]
    );
    let event = &server
        .calls()
        .into_iter()
        .find(|c| c.path == EVENTS)
        .expect("event")
        .body;
    let reason = "mysql: Secret db not found; opensearch: Secret search has no key endpoint";
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("InvalidSpec"))
    );
    assert_eq!(event["note"], reason);
    let status = stored_status(&server);
    assert_eq!(status["phase"], "Degraded");
    assert_eq!(condition(&status, "Degraded")["message"], reason);
}

#[tokio::test]
async fn a_service_turned_external_loses_its_workload_but_keeps_credentials_and_volumes() {
    let server = ApiServer::new();
    create(&server, "defaults", json!({}));
    settle(&server).await.expect("reconciled");
    server.run_statefulset_controller("team");
    for (name, key) in [
        ("db", "url"),
        ("cache", "url"),
        ("queue", "amqp"),
        ("search", "endpoint"),
    ] {
        server.create(
            SECRETS,
            json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "data": { key: "dXJs" } }),
        );
    }
    let external = serde_json::to_value(fixture("external").spec).expect("spec");
    edit(&server, external);
    reconcile(&server).await.expect("reconciled");
    assert!(server.get(STATEFULSETS, "chat-mysql").is_none());
    assert!(server.get(SERVICES, "chat-mysql").is_none());
    assert!(server.get(SERVICES, "chat-api").is_some());
    assert!(server.get(SECRETS, "chat-mysql-credentials").is_some());
    assert!(server.get(CLAIMS, "data-chat-mysql-0").is_some());
}

#[tokio::test]
async fn one_refused_child_blocks_no_other_and_is_named_in_the_status() {
    let server = ApiServer::new();
    create(&server, "defaults", json!({}));
    server.fail(
        Method::PATCH,
        "/statefulsets/chat-mysql",
        StatusCode::INTERNAL_SERVER_ERROR,
        1,
    );
    let error = reconcile(&server).await.expect_err("a child failed");
    assert_eq!(error.metric_label(), "apply");
    for (collection, name) in [
        (STATEFULSETS, "chat-redis"),
        (STATEFULSETS, "chat-opensearch"),
        (HPAS, "chat-api"),
        ("/api/v1/namespaces/team/configmaps", "chat-worker"),
    ] {
        assert!(
            server.get(collection, name).is_some(),
            "{collection}/{name} applied"
        );
    }
    let status = stored_status(&server);
    assert_eq!(status["phase"], "Degraded");
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["reason"], "ApplyFailed");
    assert_eq!(
        degraded["message"],
        "StatefulSet chat-mysql: injected fault"
    );
    assert!(event_reasons(&server.calls()).contains(&"ApplyFailed".to_string()));

    // The next reconcile applies it, and the status recovers.
    settle(&server).await.expect("reconciled");
    assert!(server.get(STATEFULSETS, "chat-mysql").is_some());
    assert_eq!(
        condition(&stored_status(&server), "Degraded")["status"],
        "False"
    );
}

/// A controller context whose caches hold nothing, for a call that reads none of them.
fn empty_context(server: &ApiServer) -> Arc<Context> {
    Arc::new(Context::new(
        server.client(),
        None,
        Children::new().0,
        Discovery::new(Duration::ZERO),
    ))
}

#[tokio::test]
async fn an_invalid_spec_waits_for_a_change_instead_of_backing_off() {
    let server = ApiServer::new();
    let context = empty_context(&server);
    let resource = Arc::new(fixture("defaults"));
    let error = Error::InvalidSpec(InvalidSpec(vec!["mysql: Secret db not found".into()]));
    let delays: Vec<Action> = (0..3)
        .map(|_| controller::error_policy(resource.clone(), &error, context.clone()))
        .collect();
    assert_eq!(delays, vec![Action::requeue(Duration::from_secs(60)); 3]);
}

#[tokio::test]
async fn failures_back_off_exponentially_and_are_counted() {
    let server = ApiServer::new();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let context = empty_context(&server);
    let resource = Arc::new(fixture("defaults"));
    let error = Error::MissingNamespace("chat".to_string());
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
            .contains("chatsys_operator_reconcile_errors_total{error=\"missing_namespace\"} 8"),
        "{}",
        handle.render()
    );
}

// Day two: what users do after the first apply.

#[tokio::test]
async fn deleting_and_reapplying_with_kept_volumes_comes_back_with_the_same_credentials() {
    let server = ApiServer::new();
    create(&server, "defaults", json!({}));
    reconcile(&server).await.expect("reconciled");
    server.run_statefulset_controller("team");
    let before = secret_data(&server, "chat-mysql-credentials");

    server.delete(CHATSYSTEMS, "chat");
    assert!(
        server.get(STATEFULSETS, "chat-mysql").is_none(),
        "children are collected"
    );
    assert!(
        server.get(CLAIMS, "data-chat-mysql-0").is_some(),
        "volumes are retained"
    );
    assert!(
        server.get(SECRETS, "chat-mysql-credentials").is_some(),
        "the credentials of a retained volume are retained with it"
    );

    create(&server, "defaults", json!({}));
    server.clear_calls();
    reconcile(&server).await.expect("reconciled");
    assert_eq!(secret_data(&server, "chat-mysql-credentials"), before);
    let created: Vec<Value> = server
        .calls()
        .iter()
        .filter(|c| c.method == Method::POST && c.path == SECRETS)
        .map(|c| c.body["metadata"]["name"].clone())
        .collect();
    assert_eq!(
        created,
        ["chat-api-admin-key"],
        "only the admin key, which went with the ChatSystem, is new"
    );
}

#[tokio::test]
async fn credentials_of_volumes_deleted_with_the_resource_go_with_them() {
    let server = ApiServer::new();
    let delete = json!({ "storage": { "deleteClaimsOnRemoval": true } });
    create(
        &server,
        "defaults",
        json!({ "mysql": delete, "redis": delete, "rabbitmq": delete, "opensearch": delete }),
    );
    reconcile(&server).await.expect("reconciled");
    server.run_statefulset_controller("team");
    assert!(server.get(CLAIMS, "data-chat-mysql-0").is_some());
    server.delete(CHATSYSTEMS, "chat");
    assert!(
        server.names(CLAIMS).is_empty(),
        "{:?}",
        server.names(CLAIMS)
    );
    assert!(
        server.names(SECRETS).is_empty(),
        "{:?}",
        server.names(SECRETS)
    );
}

#[tokio::test]
async fn credentials_an_earlier_operator_tied_to_the_resource_are_released() {
    let server = ApiServer::new();
    let stored = create(&server, "defaults", json!({}));
    // What the previous operator version applied: values and owner in one configuration.
    let owner = json!([{ "apiVersion": "chatsys.io/v1alpha1", "kind": "ChatSystem", "name": "chat",
                         "uid": stored["metadata"]["uid"], "controller": true }]);
    let secret = json!({ "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "chat-mysql-credentials", "namespace": "team", "ownerReferences": owner,
                      "labels": { "app.kubernetes.io/name": "chatsys", "app.kubernetes.io/instance": "chat",
                                  "app.kubernetes.io/component": "mysql", "app.kubernetes.io/managed-by": "chatsys-operator",
                                  "app.kubernetes.io/part-of": "chatsys", "app.kubernetes.io/version": chatsys_operator::crd::VERSION } },
        "stringData": { "username": "chatsys", "password": "old", "root-password": "old-root" } });
    let client = server.client();
    let secrets: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        client,
        "team",
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
    );
    secrets
        .patch(
            "chat-mysql-credentials",
            &kube::api::PatchParams::apply("chatsys-operator").force(),
            &kube::api::Patch::Apply(&secret),
        )
        .await
        .expect("applied");
    settle(&server).await.expect("reconciled");
    let released = server
        .get(SECRETS, "chat-mysql-credentials")
        .expect("Secret");
    assert_eq!(
        released["metadata"]["ownerReferences"],
        Value::Null,
        "{released}"
    );
    assert_eq!(released["data"]["password"], "b2xk", "the values stay");
}

#[tokio::test]
async fn a_larger_volume_grows_the_claim_and_the_rest_of_the_spec_still_applies() {
    let server = ApiServer::new();
    server.create(
        STORAGE_CLASSES,
        json!({ "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": { "name": "expandable" }, "provisioner": "csi", "allowVolumeExpansion": true }),
    );
    create(
        &server,
        "defaults",
        json!({ "mysql": { "storage": { "storageClassName": "expandable" } } }),
    );
    reconcile(&server).await.expect("reconciled");
    server.run_statefulset_controller("team");

    edit(
        &server,
        json!({ "mysql": { "storage": { "size": "20Gi" } }, "api": { "image": "example.org/api:2" } }),
    );
    settle(&server).await.expect("reconciled");
    let claim = server.get(CLAIMS, "data-chat-mysql-0").expect("claim");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "20Gi");
    let set = server.get(STATEFULSETS, "chat-mysql").expect("StatefulSet");
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "10Gi",
        "the immutable template is kept"
    );
    let api = server.get(DEPLOYMENTS, "chat-api").expect("Deployment");
    assert_eq!(
        api["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.org/api:2"
    );
    assert_eq!(
        condition(&stored_status(&server), "Degraded")["status"],
        "False"
    );
}

#[tokio::test]
async fn a_volume_whose_class_cannot_expand_is_reported_and_blocks_nothing() {
    let server = ApiServer::new();
    create(&server, "defaults", json!({}));
    settle(&server).await.expect("reconciled");
    server.run_statefulset_controller("team");
    edit(
        &server,
        json!({ "mysql": { "storage": { "size": "20Gi" } }, "api": { "image": "example.org/api:2" } }),
    );
    settle(&server).await.expect_err("the claim cannot grow");
    let api = server.get(DEPLOYMENTS, "chat-api").expect("Deployment");
    assert_eq!(
        api["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.org/api:2"
    );
    let status = stored_status(&server);
    assert_eq!(status["phase"], "Degraded");
    let message = condition(&status, "Degraded")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.starts_with("PersistentVolumeClaim data-chat-mysql-0: ")
            && message.contains("storageclass that provisions the pvc must support resize"),
        "{message}"
    );
}

#[tokio::test]
async fn turning_autoscaling_on_hands_the_replicas_over_without_a_dip() {
    let server = ApiServer::new();
    create(&server, "autoscaling-off", json!({}));
    settle(&server).await.expect("reconciled");
    assert_eq!(
        replicas(&server.get(DEPLOYMENTS, "chat-api").expect("api")),
        3
    );

    edit(
        &server,
        json!({ "api": { "autoscaling": { "enabled": true } }, "worker": { "autoscaling": { "enabled": true } } }),
    );
    reconcile(&server).await.expect("reconciled");
    for (name, before) in [("chat-api", 3), ("chat-worker", 5)] {
        let history: Vec<i64> = server
            .history(DEPLOYMENTS, name)
            .iter()
            .map(replicas)
            .collect();
        assert!(history.iter().all(|r| *r == before), "{name}: {history:?}");
        assert!(server.get(HPAS, name).is_some());
    }

    // The autoscaler takes the count; the operator does not fight it.
    server.autoscale("team", "chat-api", 6);
    reconcile(&server).await.expect("reconciled");
    reconcile(&server).await.expect("reconciled");
    assert_eq!(
        replicas(&server.get(DEPLOYMENTS, "chat-api").expect("api")),
        6
    );
}

#[tokio::test]
async fn turning_autoscaling_off_takes_the_replicas_back_and_deletes_only_its_autoscalers() {
    let server = ApiServer::new();
    create(&server, "defaults", json!({}));
    settle(&server).await.expect("reconciled");
    server.autoscale("team", "chat-api", 6);
    server.create(
        HPAS,
        json!({ "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": { "name": "chat-other", "labels": {
                    "app.kubernetes.io/instance": "chat", "app.kubernetes.io/managed-by": "chatsys-operator" } },
                "spec": { "scaleTargetRef": { "kind": "Deployment", "name": "other" }, "maxReplicas": 2 } }),
    );
    edit(
        &server,
        json!({ "api": { "replicas": 4, "autoscaling": { "enabled": false } } }),
    );
    server.clear_calls();
    let earlier = server.history(DEPLOYMENTS, "chat-api").len();
    reconcile(&server).await.expect("reconciled");
    let history: Vec<i64> = server.history(DEPLOYMENTS, "chat-api")[earlier..]
        .iter()
        .map(replicas)
        .collect();
    assert_eq!(history.last(), Some(&4));
    assert!(history.iter().all(|r| *r >= 4), "{history:?}");
    assert!(server.get(HPAS, "chat-api").is_none());
    assert!(
        server.get(HPAS, "chat-worker").is_some(),
        "the worker still autoscales"
    );
    assert!(server.get(HPAS, "chat-other").is_some(), "not ours");
    let calls = server.calls();
    let applied = calls
        .iter()
        .position(|c| c.method == Method::PATCH && c.path.ends_with("/deployments/chat-api"));
    let deleted = calls.iter().position(|c| {
        c.method == Method::DELETE && c.path.ends_with("/horizontalpodautoscalers/chat-api")
    });
    assert!(
        applied < deleted,
        "the count is taken before the autoscaler goes"
    );
}

#[tokio::test]
async fn the_default_images_follow_the_operator_and_named_ones_stay() {
    let server = ApiServer::new();
    create(
        &server,
        "defaults",
        json!({ "worker": { "image": "example.org/worker:9" }, "imagePullSecrets": [{ "name": "registry" }] }),
    );
    settle(&server).await.expect("reconciled");
    let pod = |collection: &str, name: &str| {
        server.get(collection, name).expect("workload")["spec"]["template"]["spec"].clone()
    };
    let version = chatsys_operator::crd::VERSION;
    assert_eq!(
        pod(DEPLOYMENTS, "chat-api")["containers"][0]["image"],
        format!("chatsys/chatsys-api:{version}")
    );
    assert_eq!(
        pod(DEPLOYMENTS, "chat-worker")["containers"][0]["image"],
        "example.org/worker:9"
    );
    for (collection, name) in [
        (DEPLOYMENTS, "chat-api"),
        (DEPLOYMENTS, "chat-worker"),
        (STATEFULSETS, "chat-mysql"),
    ] {
        assert_eq!(
            pod(collection, name)["imagePullSecrets"],
            json!([{ "name": "registry" }]),
            "{name}"
        );
    }
}

fn pod_annotation(server: &ApiServer, deployment: &str, name: &str) -> Value {
    server.get(DEPLOYMENTS, deployment).expect("Deployment")["spec"]["template"]["metadata"]
        ["annotations"][name]
        .clone()
}

#[tokio::test]
async fn a_changed_external_secret_rolls_the_pods_that_read_it() {
    let server = ApiServer::new();
    for (name, key) in [
        ("db", "url"),
        ("cache", "url"),
        ("queue", "amqp"),
        ("search", "endpoint"),
    ] {
        server.create(
            SECRETS,
            json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "data": { key: "dXJs" } }),
        );
    }
    create(&server, "external", json!({}));
    settle(&server).await.expect("reconciled");
    let hash = "chatsys.io/external-secrets-hash";
    let before = pod_annotation(&server, "chat-api", hash);
    assert!(before.is_string(), "{before}");
    assert_eq!(pod_annotation(&server, "chat-worker", hash), before);

    let mut db = server.get(SECRETS, "db").expect("Secret");
    db["data"]["url"] = json!("bmV3");
    server.update(SECRETS, "db", db);
    reconcile(&server).await.expect("reconciled");
    let after = pod_annotation(&server, "chat-api", hash);
    assert_ne!(after, before, "the API's pods roll");
    assert_eq!(pod_annotation(&server, "chat-worker", hash), after);
    let template =
        server.get(DEPLOYMENTS, "chat-api").expect("Deployment")["spec"]["template"].to_string();
    assert!(
        !template.contains("bmV3") && !template.contains("new"),
        "no secret value in a pod template"
    );
}

#[test]
fn a_secret_wakes_only_the_systems_that_read_it() {
    let reading = Arc::new(fixture("external"));
    let mut elsewhere = fixture("external");
    elsewhere.metadata.namespace = Some("other".to_string());
    let managed = Arc::new(fixture("defaults"));
    let systems = [reading.clone(), Arc::new(elsewhere), managed];
    let secret = |name: &str| k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("team".to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        controller::systems_reading(&secret("db"), &systems),
        [kube::runtime::reflector::ObjectRef::from_obj(
            reading.as_ref()
        )]
    );
    assert!(controller::systems_reading(&secret("chat-mysql-credentials"), &systems).is_empty());
}

#[tokio::test]
async fn a_settled_system_is_reconciled_without_a_write_and_a_pod_becoming_ready_only_updates_status()
 {
    let server = ApiServer::new();
    create(&server, "defaults", json!({}));
    settle(&server).await.expect("reconciled");
    reconcile(&server).await.expect("reconciled");
    server.clear_calls();
    reconcile(&server).await.expect("reconciled");
    assert_eq!(
        writes(&server.calls()),
        [],
        "nothing changed, nothing written"
    );

    server.make_workloads_ready("team");
    server.clear_calls();
    reconcile(&server).await.expect("reconciled");
    let calls = server.calls();
    assert_eq!(
        writes(&calls),
        [
            (Method::POST, EVENTS.to_string()),
            (Method::PATCH, format!("{CHATSYSTEMS}/chat/status")),
        ],
        "the status and its Ready event, and nothing re-applied"
    );
    // Discovery of the optional APIs (asked at most every 30 s by the operator; at each reconcile here,
    // where every reconcile has a context of its own) is the only other read.
    assert!(
        calls
            .iter()
            .all(|c| c.path.starts_with(SECRETS) || c.is_write() || is_discovery(c)),
        "no kind is listed again: {:?}",
        calls.iter().map(|c| &c.path).collect::<Vec<_>>()
    );
    assert_eq!(stored_status(&server)["phase"], "Ready");
}

#[tokio::test]
async fn quantities_the_api_server_rewrites_in_canonical_form_cause_no_write() {
    let server = ApiServer::new();
    create(
        &server,
        "defaults",
        json!({ "api": { "resources": { "requests": { "cpu": "0.5", "memory": "1024Mi" },
                                         "limits": { "memory": "1.5Gi" } } },
                "mysql": { "resources": { "requests": { "cpu": "1000m" } } } }),
    );
    settle(&server).await.expect("reconciled");
    let api = server.get(DEPLOYMENTS, "chat-api").expect("API");
    assert_eq!(
        api["spec"]["template"]["spec"]["containers"][0]["resources"],
        json!({ "requests": { "cpu": "500m", "memory": "1Gi" }, "limits": { "memory": "1536Mi" } }),
        "as kube-apiserver stores them"
    );
    reconcile(&server).await.expect("reconciled");
    server.clear_calls();
    reconcile(&server).await.expect("reconciled");
    assert_eq!(
        writes(&server.calls()),
        [],
        "the same amounts, written another way, are not a change"
    );
}

#[tokio::test]
async fn a_field_changed_by_hand_is_put_back() {
    let server = ApiServer::new();
    create(&server, "defaults", json!({}));
    settle(&server).await.expect("reconciled");
    let mut service = server.get(SERVICES, "chat-api").expect("Service");
    service["spec"]["ports"][0]["port"] = json!(9999);
    server.update(SERVICES, "chat-api", service);
    reconcile(&server).await.expect("reconciled");
    assert_eq!(
        server.get(SERVICES, "chat-api").expect("Service")["spec"]["ports"][0]["port"],
        8080
    );
}

/// The worker scaled on the queue's backlog, as `spec.worker.autoscaling` asks.
fn on_backlog() -> Value {
    json!({ "worker": { "autoscaling": { "metric": "QueueBacklog", "messagesPerReplica": 2000 } } })
}

fn position(calls: &[Call], method: Method, path: &str) -> usize {
    calls
        .iter()
        .position(|c| c.method == method && c.path == path)
        .unwrap_or_else(|| panic!("no {method} {path}"))
}

#[tokio::test]
async fn with_keda_the_worker_scales_on_the_backlog_and_kedas_own_autoscaler_is_left_alone() {
    let server = ApiServer::new();
    server.install_crds("keda.sh");
    create(&server, "defaults", on_backlog());
    settle(&server).await.expect("reconciled");
    let scaled = server
        .get(SCALED_OBJECTS, "chat-worker")
        .expect("the ScaledObject");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], "chat-worker");
    assert_eq!(scaled["spec"]["minReplicaCount"], 2);
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "rabbitmq");
    assert_eq!(trigger["metadata"]["queueName"], "chatsys.commands.quorum");
    assert_eq!(trigger["metadata"]["value"], "2000");
    assert_eq!(trigger["authenticationRef"]["name"], "chat-worker");
    let authentication = server
        .get(TRIGGER_AUTHENTICATIONS, "chat-worker")
        .expect("the TriggerAuthentication");
    assert_eq!(
        authentication["spec"]["secretTargetRef"][0],
        json!({ "parameter": "username", "name": "chat-rabbitmq-credentials", "key": "username" })
    );
    assert!(server.get(HPAS, "chat-worker").is_none(), "no HPA of ours");
    assert!(server.get(HPAS, "chat-api").is_some());

    // KEDA's HPA carries the ScaledObject's labels, ours among them, and is owned by the ScaledObject.
    server.run_keda("team");
    let keda_hpa = server
        .get(HPAS, "keda-hpa-chat-worker")
        .expect("KEDA's HPA");
    assert_eq!(
        keda_hpa["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "chatsys-operator"
    );
    server.clear_calls();
    reconcile(&server).await.expect("reconciled");
    assert!(
        server.get(HPAS, "keda-hpa-chat-worker").is_some(),
        "not deleted as an orphan: {:?}",
        writes(&server.calls())
    );
    assert_eq!(
        condition(&stored_status(&server), "Degraded")["status"],
        "False"
    );
}

#[tokio::test]
async fn switching_the_worker_between_cpu_and_backlog_removes_the_old_autoscaler_first() {
    let server = ApiServer::new();
    server.install_crds("keda.sh");
    create(&server, "defaults", json!({}));
    settle(&server).await.expect("reconciled");
    assert!(server.get(HPAS, "chat-worker").is_some());

    edit(&server, on_backlog());
    server.clear_calls();
    reconcile(&server)
        .await
        .expect("KEDA's webhook accepts the ScaledObject");
    let calls = server.calls();
    assert!(
        position(&calls, Method::DELETE, &format!("{HPAS}/chat-worker"))
            < position(
                &calls,
                Method::PATCH,
                &format!("{SCALED_OBJECTS}/chat-worker")
            )
    );
    assert!(server.get(HPAS, "chat-worker").is_none());
    server.run_keda("team");

    edit(
        &server,
        json!({ "worker": { "autoscaling": { "metric": "Cpu" } } }),
    );
    server.clear_calls();
    reconcile(&server).await.expect("reconciled");
    let calls = server.calls();
    assert!(
        position(
            &calls,
            Method::DELETE,
            &format!("{SCALED_OBJECTS}/chat-worker")
        ) < position(&calls, Method::PATCH, &format!("{HPAS}/chat-worker"))
    );
    assert!(server.get(HPAS, "chat-worker").is_some());
    assert!(
        server.get(HPAS, "keda-hpa-chat-worker").is_none(),
        "collected with its ScaledObject"
    );
    assert!(server.get(TRIGGER_AUTHENTICATIONS, "chat-worker").is_none());
}

#[tokio::test]
async fn without_keda_the_worker_scales_on_cpu_and_the_status_names_the_missing_crds() {
    let server = ApiServer::new();
    create(&server, "defaults", on_backlog());
    let action = settle(&server).await.expect("no crash loop");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    assert!(server.get(HPAS, "chat-worker").is_some(), "CPU meanwhile");
    assert!(
        server
            .calls()
            .iter()
            .all(|c| !c.path.contains("keda.sh") || is_discovery(c)),
        "no call to an API the cluster does not serve"
    );
    let degraded = condition(&stored_status(&server), "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "KedaCRDsNotFound");
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("scaledobjects.keda.sh")
            && message.contains("triggerauthentications.keda.sh"),
        "{message}"
    );
    assert_eq!(stored_status(&server)["phase"], "Degraded");
    assert!(event_reasons(&server.calls()).contains(&"KedaCRDsNotFound".to_string()));

    server.install_crds("keda.sh");
    reconcile(&server).await.expect("reconciled");
    assert!(server.get(SCALED_OBJECTS, "chat-worker").is_some());
    assert!(server.get(HPAS, "chat-worker").is_none());
    assert_eq!(
        condition(&stored_status(&server), "Degraded")["status"],
        "False"
    );
}

#[tokio::test]
async fn monitoring_waits_for_prometheus_operator_then_scrapes_and_alerts() {
    let server = ApiServer::new();
    create(
        &server,
        "defaults",
        json!({ "monitoring": { "enabled": true, "labels": { "release": "kps" } } }),
    );
    settle(&server).await.expect("reconciled");
    let degraded = condition(&stored_status(&server), "Degraded");
    assert_eq!(degraded["reason"], "PrometheusOperatorCRDsNotFound");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("servicemonitors.monitoring.coreos.com")),
        "{degraded}"
    );
    assert!(
        server.get(SERVICES, "chat-worker").is_some(),
        "the worker's metrics have a Service"
    );

    server.install_crds("monitoring.coreos.com");
    reconcile(&server).await.expect("reconciled");
    assert_eq!(
        server.names(SERVICE_MONITORS),
        ["chat-api", "chat-rabbitmq", "chat-worker"]
    );
    let rule = server
        .get(PROMETHEUS_RULES, "chat-alerts")
        .expect("the alerts");
    assert_eq!(rule["metadata"]["labels"]["release"], "kps");
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(
        alerts,
        [
            "ChatsysQueueBacklogGrowing",
            "ChatsysDeadLetters",
            "ChatsysApiErrors",
            "ChatsysWorkerNotAcknowledging",
            "ChatsysNotReady"
        ]
    );
    assert_eq!(
        condition(&stored_status(&server), "Degraded")["status"],
        "False"
    );

    edit(
        &server,
        json!({ "monitoring": { "scrapeWith": "PodMonitor" } }),
    );
    reconcile(&server).await.expect("reconciled");
    assert!(server.names(SERVICE_MONITORS).is_empty());
    assert_eq!(
        server.names(POD_MONITORS),
        ["chat-api", "chat-rabbitmq", "chat-worker"]
    );
}

#[tokio::test]
async fn the_network_is_closed_by_default_and_opened_when_asked() {
    let server = ApiServer::new();
    create(&server, "defaults", json!({}));
    settle(&server).await.expect("reconciled");
    assert_eq!(
        server.names(NETWORK_POLICIES),
        [
            "chat-api",
            "chat-mysql",
            "chat-opensearch",
            "chat-rabbitmq",
            "chat-redis",
            "chat-worker"
        ]
    );
    edit(&server, json!({ "networkPolicy": { "enabled": false } }));
    reconcile(&server).await.expect("reconciled");
    assert!(server.names(NETWORK_POLICIES).is_empty());
}

#[tokio::test]
async fn readiness_is_a_gauge_the_not_ready_alert_reads() {
    let server = ApiServer::new();
    create(&server, "defaults", json!({}));
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    settle(&server).await.expect("reconciled");
    let series =
        r#"chatsys_operator_chatsystem_ready{chatsystem_namespace="team",chatsystem="chat"}"#;
    assert!(
        handle.render().contains(&format!("{series} 0")),
        "{}",
        handle.render()
    );
    server.make_workloads_ready("team");
    reconcile(&server).await.expect("reconciled");
    assert!(
        handle.render().contains(&format!("{series} 1")),
        "{}",
        handle.render()
    );

    let rules = manifests::alert_rules(&fixture("defaults"));
    let not_ready = rules
        .iter()
        .find(|r| r.alert == "ChatsysNotReady")
        .expect("the alert");
    assert!(
        not_ready.expr.contains(
            r#"chatsys_operator_chatsystem_ready{chatsystem_namespace="team",chatsystem="chat"}"#
        ),
        "{}",
        not_ready.expr
    );
}

const MARIADBS: &str = "/apis/k8s.mariadb.com/v1alpha1/namespaces/team/mariadbs";
const BACKUPS: &str = "/apis/k8s.mariadb.com/v1alpha1/namespaces/team/backups";
const RABBITMQ_CLUSTERS: &str = "/apis/rabbitmq.com/v1beta1/namespaces/team/rabbitmqclusters";
const OPENSEARCH_CLUSTERS: &str =
    "/apis/opensearch.opster.io/v1/namespaces/team/opensearchclusters";
const DELEGATED_GROUPS: [&str; 3] = ["k8s.mariadb.com", "rabbitmq.com", "opensearch.opster.io"];

/// Every backing service but Redis run by the operator the platform team runs, MySQL backed up nightly.
fn delegated() -> Value {
    json!({
        "mysql": { "provider": "mariadb-operator", "backup": {
            "schedule": "0 3 * * *", "keep": 7,
            "target": { "volumeClaim": { "size": "20Gi" } },
        } },
        "rabbitmq": { "provider": "rabbitmq-cluster-operator" },
        "opensearch": { "provider": "opensearch-operator" },
    })
}

#[tokio::test]
async fn with_the_operators_installed_their_resources_are_applied_and_their_status_makes_ready() {
    let server = ApiServer::new();
    for group in DELEGATED_GROUPS {
        server.install_crds(group);
    }
    create(&server, "defaults", delegated());
    settle(&server).await.expect("reconciled");
    assert_eq!(server.names(MARIADBS), ["chat-mysql"]);
    assert_eq!(server.names(BACKUPS), ["chat-mysql"]);
    assert_eq!(server.names(RABBITMQ_CLUSTERS), ["chat-mq"]);
    assert_eq!(server.names(OPENSEARCH_CLUSTERS), ["chat-os"]);
    assert_eq!(server.names(STATEFULSETS), ["chat-redis"]);
    assert_eq!(
        server.names(NETWORK_POLICIES),
        ["chat-api", "chat-redis", "chat-worker"]
    );
    let mariadb = server.get(MARIADBS, "chat-mysql").expect("the MariaDB");
    assert_eq!(mariadb["spec"]["replicas"], 3);
    assert!(server.get(DEPLOYMENTS, "chat-api").is_some());

    server.make_workloads_ready("team");
    reconcile(&server).await.expect("reconciled");
    let status = stored_status(&server);
    assert_eq!(condition(&status, "Ready")["status"], "False");
    let message = condition(&status, "Ready")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for component in ["mysql", "rabbitmq", "opensearch"] {
        assert_eq!(
            status["components"][component],
            json!({ "readyReplicas": 0, "desiredReplicas": 3 }),
            "{component}"
        );
        assert!(message.contains(component), "{message}");
    }

    server.run_backing_operators("team");
    reconcile(&server).await.expect("reconciled");
    let status = stored_status(&server);
    assert_eq!(condition(&status, "Ready")["status"], "True", "{status}");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    for component in ["mysql", "rabbitmq", "opensearch"] {
        assert_eq!(
            status["components"][component],
            json!({ "readyReplicas": 3, "desiredReplicas": 3 }),
            "{component}"
        );
    }

    edit(&server, json!({ "mysql": { "backup": null } }));
    reconcile(&server).await.expect("reconciled");
    assert!(server.names(BACKUPS).is_empty(), "the Backup goes with it");
    assert_eq!(server.names(MARIADBS), ["chat-mysql"]);
}

#[tokio::test]
async fn without_its_operator_a_delegated_service_is_degraded_and_nothing_of_its_is_applied() {
    for (group, provider, reason, crd) in [
        (
            "k8s.mariadb.com",
            json!({ "mysql": { "provider": "mariadb-operator" } }),
            "MariadbOperatorCRDsNotFound",
            "mariadbs.k8s.mariadb.com",
        ),
        (
            "rabbitmq.com",
            json!({ "rabbitmq": { "provider": "rabbitmq-cluster-operator" } }),
            "RabbitmqClusterOperatorCRDsNotFound",
            "rabbitmqclusters.rabbitmq.com",
        ),
        (
            "opensearch.opster.io",
            json!({ "opensearch": { "provider": "opensearch-operator" } }),
            "OpensearchOperatorCRDsNotFound",
            "opensearchclusters.opensearch.opster.io",
        ),
    ] {
        let server = ApiServer::new();
        create(&server, "defaults", provider);
        let action = settle(&server).await.expect("no crash loop");
        assert_eq!(action, Action::requeue(Duration::from_secs(60)), "{group}");
        assert!(
            server
                .calls()
                .iter()
                .all(|c| !c.path.contains(group) || is_discovery(c)),
            "{group}: no call to an API the cluster does not serve"
        );
        let degraded = condition(&stored_status(&server), "Degraded");
        assert_eq!(degraded["status"], "True");
        assert_eq!(degraded["reason"], reason);
        assert!(
            degraded["message"]
                .as_str()
                .is_some_and(|m| m.contains(crd)),
            "{degraded}"
        );
        assert!(
            server.names(JOBS).is_empty() && server.names(DEPLOYMENTS).is_empty(),
            "{group}: nothing starts without its database"
        );
        assert!(event_reasons(&server.calls()).contains(&reason.to_string()));

        server.install_crds(group);
        settle(&server).await.expect("reconciled");
        assert_eq!(
            condition(&stored_status(&server), "Degraded")["status"],
            "False",
            "{group}"
        );
        assert!(server.get(DEPLOYMENTS, "chat-worker").is_some(), "{group}");
    }
}
