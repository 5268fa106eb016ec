//! A stand-in for kube-apiserver, as strict as the real one where the operator's defects lived.
//!
//! It serves a real `kube::Client` through its tower transport and keeps objects the way the API server
//! does: server-side apply with per-manager field ownership (a field a manager stops applying is removed
//! unless another manager owns it), defaulting of `replicas` to 1, immutable StatefulSet, Deployment,
//! Service and PersistentVolumeClaim fields refused with 422, volume expansion refused with 403 where
//! the storage class does not allow it, `stringData` folded into `data`, status subresources, honest
//! `resourceVersion`, `generation` and `uid`, and garbage collection of objects whose owners are gone.
//! The controllers of a cluster (StatefulSet volumes, the kubelet's readiness, the HPA's scaling) are
//! methods a test calls, so each test says which of them ran.
//!
//! Every request through `client()` is authorized as the operator's ServiceAccount with the RBAC the
//! Helm chart renders (`rbac.rs` beside this file); `admin_client()` plays a cluster administrator.
//!
//! The APIs other projects add (KEDA's `keda.sh`, prometheus-operator's `monitoring.coreos.com`, and
//! those of the operators a backing service may be delegated to) are
//! served only once a test installs them, as their CustomResourceDefinitions would be: before that,
//! their paths and their discovery answer 404, as the real server does. KEDA's admission webhook
//! refuses a ScaledObject for a workload an HPA already scales, and KEDA's controller (a method) makes
//! the HPA of each ScaledObject as KEDA does, with the ScaledObject's labels copied onto it.
//!
//! Simplifications, none of which the operator depends on: lists are atomic for field ownership
//! (the real server merges `containers` and `env` by key), label selectors are equality-only, and a
//! strategic merge patch is treated as a JSON merge patch.

use super::rbac::{Attributes, Authorizer};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

/// A field, as the path of keys from the object's root.
type FieldPath = Vec<String>;

/// The manager a cluster's own controllers write as.
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";

/// One request the server answered.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: Method,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// What the client asked the answer to be, e.g. metadata only.
    pub accept: String,
    pub body: Value,
    pub status: StatusCode,
}

impl Call {
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }

    /// The value of one query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        query_params(&self.query).remove(name)
    }
}

/// Who owns which fields of an object, as `metadata.managedFields` says.
#[derive(Clone, Debug, PartialEq)]
struct ManagedEntry {
    manager: String,
    operation: &'static str,
    fields: BTreeSet<FieldPath>,
}

/// One kind the server knows, from the segment of its URL.
#[derive(Clone, Copy, Debug)]
struct Kind {
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    /// Writes to the object ignore `status`, and writes to `/status` change only `status`.
    status_subresource: bool,
    /// Spec changes move `metadata.generation`.
    has_generation: bool,
}

/// The kinds served, with whether each has a status subresource and a generation as its registry
/// strategy gives it (pkg/registry/<group>/<kind>/strategy.go: `PrepareForCreate` sets generation 1
/// and `PrepareForUpdate` moves it; the status strategy writes status alone).
const KINDS: &[Kind] = &[
    kind("v1", "Secret", "secrets", false, false),
    kind("v1", "ConfigMap", "configmaps", false, false),
    kind("v1", "Service", "services", true, false),
    kind(
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
        false,
    ),
    kind("v1", "Event", "events", false, false),
    kind("apps/v1", "Deployment", "deployments", true, true),
    kind("apps/v1", "StatefulSet", "statefulsets", true, true),
    kind("batch/v1", "Job", "jobs", true, true),
    kind("batch/v1", "CronJob", "cronjobs", true, true),
    kind(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
        true,
    ),
    kind(
        "policy/v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        true,
    ),
    kind("networking.k8s.io/v1", "Ingress", "ingresses", true, true),
    kind(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        "networkpolicies",
        false,
        true,
    ),
    kind(
        "keda.sh/v1alpha1",
        "ScaledObject",
        "scaledobjects",
        true,
        true,
    ),
    kind(
        "keda.sh/v1alpha1",
        "TriggerAuthentication",
        "triggerauthentications",
        false,
        true,
    ),
    kind(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        "servicemonitors",
        false,
        true,
    ),
    kind(
        "monitoring.coreos.com/v1",
        "PodMonitor",
        "podmonitors",
        false,
        true,
    ),
    kind(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        "prometheusrules",
        false,
        true,
    ),
    // The kinds of the operators a backing service is delegated to: each CRD has a status subresource
    // (their config/crd/bases, `subresources: status`), and a custom resource's generation moves on a
    // change of anything but metadata and status (staging/src/k8s.io/apiextensions-apiserver/pkg/
    // registry/customresource/strategy.go, `PrepareForUpdate`).
    kind(
        "k8s.mariadb.com/v1alpha1",
        "MariaDB",
        "mariadbs",
        true,
        true,
    ),
    kind("k8s.mariadb.com/v1alpha1", "Backup", "backups", true, true),
    kind(
        "rabbitmq.com/v1beta1",
        "RabbitmqCluster",
        "rabbitmqclusters",
        true,
        true,
    ),
    kind(
        "opensearch.opster.io/v1",
        "OpenSearchCluster",
        "opensearchclusters",
        true,
        true,
    ),
    kind("events.k8s.io/v1", "Event", "events", false, false),
    kind("coordination.k8s.io/v1", "Lease", "leases", false, false),
    kind(
        "storage.k8s.io/v1",
        "StorageClass",
        "storageclasses",
        false,
        false,
    ),
    kind(
        "chatsys.io/v1alpha1",
        "ChatSystem",
        "chatsystems",
        true,
        true,
    ),
];

const fn kind(
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    status_subresource: bool,
    has_generation: bool,
) -> Kind {
    Kind {
        api_version,
        kind,
        plural,
        status_subresource,
        has_generation,
    }
}

/// API groups served only once their CustomResourceDefinitions are installed (staging/src/k8s.io/
/// apiextensions-apiserver serves a CRD's group from its establishment; before it, 404).
const OPTIONAL_GROUPS: [&str; 5] = [
    "keda.sh",
    "monitoring.coreos.com",
    "k8s.mariadb.com",
    "rabbitmq.com",
    "opensearch.opster.io",
];

fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(group, _)| group)
}

/// Where a request points.
#[derive(Clone, Debug)]
struct Target {
    kind: Kind,
    /// The collection's path, the key of its objects.
    collection: String,
    name: Option<String>,
    subresource: Option<String>,
}

/// A failure the next matching requests get instead of their answer.
struct Fault {
    method: Method,
    path_suffix: String,
    status: StatusCode,
    remaining: usize,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<(String, String), Value>,
    managed: BTreeMap<(String, String), Vec<ManagedEntry>>,
    /// Every version each object was stored in, oldest first.
    history: BTreeMap<(String, String), Vec<Value>>,
    resource_version: u64,
    uids: u64,
    calls: Vec<Call>,
    faults: Vec<Fault>,
    /// Optional API groups whose CustomResourceDefinitions are installed.
    installed: BTreeSet<String>,
}

/// The server; clones share it. Each clone answers as one user: the operator's ServiceAccount,
/// authorized by the chart's RBAC, or a cluster administrator.
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
    /// `None` for an administrator, whom nothing is refused.
    authorizer: Option<Arc<Authorizer>>,
}

impl ApiServer {
    /// A server whose `client()` is the operator with the chart's default permissions.
    pub fn new() -> Self {
        ApiServer::with_authorizer(Authorizer::chart_defaults())
    }

    /// A server whose `client()` has exactly these permissions.
    pub fn with_authorizer(authorizer: Arc<Authorizer>) -> Self {
        ApiServer {
            state: Arc::default(),
            authorizer: Some(authorizer),
        }
    }

    /// A client that may do anything, as a cluster administrator (or a test playing another
    /// controller) would.
    pub fn admin_client(&self) -> kube::Client {
        let admin = ApiServer {
            state: self.state.clone(),
            authorizer: None,
        };
        kube::Client::new(admin, "default")
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client whose every request this server answers, as the operator.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    /// Every request answered so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// The next `times` requests with this method whose path ends with `path_suffix` fail with `status`.
    pub fn fail(&self, method: Method, path_suffix: &str, status: StatusCode, times: usize) {
        self.state().faults.push(Fault {
            method,
            path_suffix: path_suffix.to_string(),
            status,
            remaining: times,
        });
    }

    /// The stored object at `collection/name`, with its `managedFields`.
    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        let state = self.state();
        let key = (collection.to_string(), name.to_string());
        state.objects.get(&key).map(|o| state.render(&key, o))
    }

    /// Every version of an object, oldest first.
    pub fn history(&self, collection: &str, name: &str) -> Vec<Value> {
        let key = (collection.to_string(), name.to_string());
        self.state().history.get(&key).cloned().unwrap_or_default()
    }

    /// The objects of a collection, as a LIST would answer them.
    pub fn objects(&self, collection: &str) -> Vec<Value> {
        let state = self.state();
        state
            .objects
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|(key, object)| state.render(key, object))
            .collect()
    }

    /// Names of the objects of a collection.
    pub fn names(&self, collection: &str) -> Vec<String> {
        self.state()
            .objects
            .keys()
            .filter(|(c, _)| c == collection)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Creates an object as `kubectl create` would.
    pub fn create(&self, collection: &str, object: Value) -> Value {
        let target = parse_target(collection).expect("a known collection");
        let mut state = self.state();
        let (status, created) = state.create(&target, object, "kubectl");
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created
    }

    /// Replaces an object as `kubectl edit` would.
    pub fn update(&self, collection: &str, name: &str, object: Value) -> Value {
        let target = parse_target(collection).expect("a known collection");
        let (status, updated) = self.state().replace(&target, name, object, "kubectl-edit");
        assert_eq!(status, StatusCode::OK, "{updated}");
        updated
    }

    /// Deletes an object as `kubectl delete` would; the garbage collector follows.
    pub fn delete(&self, collection: &str, name: &str) {
        let mut state = self.state();
        let key = (collection.to_string(), name.to_string());
        assert!(state.remove(&key), "no {collection}/{name}");
        state.collect_garbage();
    }

    /// Installs the CustomResourceDefinitions of an optional API group (`keda.sh`,
    /// `monitoring.coreos.com`, `k8s.mariadb.com`, `rabbitmq.com`, `opensearch.opster.io`): from now on the server serves its kinds and its discovery.
    pub fn install_crds(&self, group: &str) {
        assert!(OPTIONAL_GROUPS.contains(&group), "{group} is not optional");
        self.state().installed.insert(group.to_string());
    }

    /// KEDA's controller: an HPA `keda-hpa-<name>` for each ScaledObject, carrying KEDA's labels
    /// overwritten by the ScaledObject's, and owned by it (kedacore/keda controllers/keda/hpa.go,
    /// `newHPAForScaledObject` and `getHPAName`).
    pub fn run_keda(&self, namespace: &str) {
        let scaled_objects = format!("/apis/keda.sh/v1alpha1/namespaces/{namespace}/scaledobjects");
        let hpas = format!("/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers");
        for scaled in self.objects(&scaled_objects) {
            let name = scaled["metadata"]["name"].as_str().expect("a name");
            let hpa_name = format!("keda-hpa-{name}");
            if self.get(&hpas, &hpa_name).is_some() {
                continue;
            }
            let mut labels = json!({
                "app.kubernetes.io/name": hpa_name, "app.kubernetes.io/version": "2.20.2",
                "app.kubernetes.io/part-of": name, "app.kubernetes.io/managed-by": "keda-operator",
            });
            for (key, value) in scaled["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
            {
                labels[key] = value.clone();
            }
            let spec = &scaled["spec"];
            let min = spec["minReplicaCount"].as_i64().unwrap_or(0).max(1);
            let hpa = json!({
                "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": { "name": hpa_name, "labels": labels,
                              "ownerReferences": [owner_reference(&scaled)] },
                "spec": { "scaleTargetRef": spec["scaleTargetRef"].clone(),
                          "minReplicas": min, "maxReplicas": spec["maxReplicaCount"].as_i64().unwrap_or(100),
                          "metrics": [{ "type": "External", "external": {
                              "metric": { "name": "s0-rabbitmq-chatsys-commands" },
                              "target": { "type": "AverageValue", "averageValue": "5k" } } }] },
            });
            let target = parse_target(&hpas).expect("HPAs are known");
            let (status, created) = self.state().create(&target, hpa, "keda");
            assert_eq!(status, StatusCode::CREATED, "{created}");
        }
    }

    /// The StatefulSet controller: one claim per replica from each volume claim template, named
    /// `<template>-<set>-<ordinal>`, owned by the StatefulSet when its retention policy deletes claims
    /// with it (pkg/controller/statefulset/stateful_set_utils.go, `getPersistentVolumeClaimName` and
    /// `updateClaimOwnerRefForSetAndPod`).
    pub fn run_statefulset_controller(&self, namespace: &str) {
        let sets = format!("/apis/apps/v1/namespaces/{namespace}/statefulsets");
        let claims = format!("/api/v1/namespaces/{namespace}/persistentvolumeclaims");
        let mut state = self.state();
        let owned: Vec<Value> = state
            .objects
            .iter()
            .filter(|((c, _), _)| *c == sets)
            .map(|(_, o)| o.clone())
            .collect();
        for set in owned {
            let replicas = set["spec"]["replicas"].as_i64().unwrap_or(1);
            let set_name = set["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let delete_with_set =
                set["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete";
            for template in set["spec"]["volumeClaimTemplates"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                for ordinal in 0..replicas {
                    let template_name = template["metadata"]["name"].as_str().unwrap_or_default();
                    let name = format!("{template_name}-{set_name}-{ordinal}");
                    if state.objects.contains_key(&(claims.clone(), name.clone())) {
                        continue;
                    }
                    let mut claim = json!({
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": { "name": name, "namespace": namespace,
                                      "labels": template["metadata"]["labels"].clone() },
                        "spec": template["spec"].clone(),
                    });
                    if delete_with_set {
                        claim["metadata"]["ownerReferences"] = json!([owner_reference(&set)]);
                    }
                    let target = parse_target(&claims).expect("claims");
                    state.create(&target, claim, CONTROLLER_MANAGER);
                }
            }
        }
    }

    /// The kubelet and the workload controllers: every Deployment and StatefulSet has its replicas
    /// ready, at its current generation (the status fields pkg/controller/deployment/sync.go,
    /// `syncDeploymentStatus`, and the StatefulSet controller write).
    pub fn make_workloads_ready(&self, namespace: &str) {
        for plural in ["deployments", "statefulsets"] {
            self.set_status(
                &format!("/apis/apps/v1/namespaces/{namespace}/{plural}"),
                |object| {
                    let replicas = object["spec"]["replicas"].clone();
                    json!({
                        "observedGeneration": object["metadata"]["generation"],
                        "replicas": replicas, "readyReplicas": replicas,
                        "updatedReplicas": replicas, "availableReplicas": replicas,
                    })
                },
            );
        }
    }

    /// The operators a backing service is delegated to, once their pods are ready: each writes the
    /// status chatsys reads.
    /// - mariadb-operator: the `Ready` condition (api/v1alpha1/condition_types.go,
    ///   `ConditionTypeReady`, set by its MariaDB controller's status patch), with `status.replicas`.
    /// - RabbitMQ's cluster-operator: `AllReplicasReady` among its conditions
    ///   (internal/status/all_replicas_ready.go) and the generation observed
    ///   (controllers/rabbitmqcluster_controller.go, `Reconcile`, sets `observedGeneration` once a
    ///   reconcile has finished).
    /// - The OpenSearch operator: phase `RUNNING` and health `green`
    ///   (api/opensearch.org/v1/opensearch_types.go, `PhaseRunning`, `OpenSearchGreenHealth`), and
    ///   `availableNodes`.
    pub fn run_backing_operators(&self, namespace: &str) {
        self.set_status(
            &format!("/apis/k8s.mariadb.com/v1alpha1/namespaces/{namespace}/mariadbs"),
            |object| {
                json!({ "replicas": object["spec"]["replicas"],
                        "conditions": [{ "type": "Ready", "status": "True", "reason": "StatefulSetReady",
                                         "message": "Running" }] })
            },
        );
        self.set_status(
            &format!("/apis/rabbitmq.com/v1beta1/namespaces/{namespace}/rabbitmqclusters"),
            |object| {
                json!({ "observedGeneration": object["metadata"]["generation"],
                        "conditions": [{ "type": "AllReplicasReady", "status": "True" },
                                       { "type": "ClusterAvailable", "status": "True" }] })
            },
        );
        self.set_status(
            &format!("/apis/opensearch.opster.io/v1/namespaces/{namespace}/opensearchclusters"),
            |object| {
                json!({ "phase": "RUNNING", "health": "green", "componentsStatus": [],
                        "availableNodes": object["spec"]["nodePools"][0]["replicas"] })
            },
        );
    }

    /// The Job controller: every Job has run its pod to success (pkg/controller/job/job_controller.go
    /// writes `succeeded` and the `Complete` condition).
    pub fn complete_jobs(&self, namespace: &str) {
        self.set_status(
            &format!("/apis/batch/v1/namespaces/{namespace}/jobs"),
            |_| json!({ "succeeded": 1, "conditions": [{ "type": "Complete", "status": "True" }] }),
        );
    }

    /// The CronJob controller starting `cron_job`'s run scheduled `minutes` after the epoch, and the
    /// Job controller completing it at `completed`. The Job is the CronJob's `jobTemplate` named
    /// `<cronjob>-<minutes>` (pkg/controller/cronjob/utils.go, `getJobName`), with the template's
    /// labels and the CronJob as its controlling owner (`getJobFromTemplate2`); the Job controller
    /// writes `succeeded`, the `Complete` condition and `completionTime`
    /// (pkg/controller/job/job_controller.go, `syncJob`). Returns the Job's name.
    pub fn run_cron_job(
        &self,
        namespace: &str,
        cron_job: &str,
        minutes: u64,
        completed: &str,
    ) -> String {
        let cron_jobs = format!("/apis/batch/v1/namespaces/{namespace}/cronjobs");
        let template = self.get(&cron_jobs, cron_job).expect("the CronJob exists");
        let name = format!("{cron_job}-{minutes}");
        let job = json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": template["spec"]["jobTemplate"]["metadata"]["labels"],
                "ownerReferences": [{
                    "apiVersion": "batch/v1", "kind": "CronJob", "name": cron_job,
                    "uid": template["metadata"]["uid"], "controller": true,
                    "blockOwnerDeletion": true,
                }],
            },
            "spec": template["spec"]["jobTemplate"]["spec"],
        });
        let jobs = format!("/apis/batch/v1/namespaces/{namespace}/jobs");
        self.create(&jobs, job);
        self.set_status(&jobs, |job| {
            if job["metadata"]["name"] == name.as_str() {
                json!({ "succeeded": 1, "completionTime": completed,
                        "conditions": [{ "type": "Complete", "status": "True" }] })
            } else {
                job["status"].clone()
            }
        });
        name
    }

    /// The Job controller giving up on every Job of a namespace: its backoff limit reached
    /// (pkg/controller/job/job_controller.go, `syncJob`: reason `BackoffLimitExceeded`, message "Job
    /// has reached the specified backoff limit"; `DeadlineExceeded`, "Job was active longer than
    /// specified deadline", past `activeDeadlineSeconds`).
    pub fn fail_jobs(&self, namespace: &str) {
        self.set_status(
            &format!("/apis/batch/v1/namespaces/{namespace}/jobs"),
            |_| {
                json!({ "failed": 3, "conditions": [{ "type": "Failed", "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit" }] })
            },
        );
    }

    /// A controller's status write on every object of a collection.
    fn set_status(&self, collection: &str, status_of: impl Fn(&Value) -> Value) {
        let mut state = self.state();
        let keys: Vec<_> = state
            .objects
            .keys()
            .filter(|(c, _)| c == collection)
            .cloned()
            .collect();
        for key in keys {
            let mut updated = state.objects[&key].clone();
            updated["status"] = status_of(&updated);
            state.store(&key, updated, CONTROLLER_MANAGER, "Update", &["status"]);
        }
    }

    /// The HorizontalPodAutoscaler controller scaling a Deployment through its scale subresource.
    pub fn autoscale(&self, namespace: &str, deployment: &str, replicas: i64) {
        let mut state = self.state();
        let key = (
            format!("/apis/apps/v1/namespaces/{namespace}/deployments"),
            deployment.to_string(),
        );
        let mut updated = state.objects.get(&key).cloned().expect("deployment exists");
        updated["spec"]["replicas"] = json!(replicas);
        state.store(&key, updated, CONTROLLER_MANAGER, "Update", &["spec"]);
    }

    fn answer(&self, request: RecordedRequest) -> (StatusCode, Value) {
        let mut state = self.state();
        let outcome = match state.take_fault(&request.method, &request.path) {
            Some(status) => (
                status,
                status_body(status, "InternalError", "injected fault", None),
            ),
            None => state.serve(&request, self.authorizer.as_deref()),
        };
        state.calls.push(Call {
            method: request.method,
            path: request.path,
            query: request.query,
            content_type: request.content_type,
            accept: request.accept,
            body: request.body,
            status: outcome.0,
        });
        outcome
    }
}

struct RecordedRequest {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    accept: String,
    body: Value,
}

impl RecordedRequest {
    fn is_watch(&self) -> bool {
        self.method == Method::GET
            && query_params(&self.query)
                .get("watch")
                .is_some_and(|w| w == "true" || w == "1")
    }
}

fn header(request: &Request<Body>, name: http::header::HeaderName) -> String {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

impl tower::Service<Request<Body>> for ApiServer {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or_default().to_string();
            let content_type = header(&request, http::header::CONTENT_TYPE);
            let accept = header(&request, http::header::ACCEPT);
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("a JSON request body")
            };
            let request = RecordedRequest {
                method,
                path,
                query,
                content_type,
                accept,
                body,
            };
            let watch = request.is_watch();
            let (status, answer) = server.answer(request);
            // A watch the server allows stays open, with no event, until the client leaves (as
            // staging/src/k8s.io/apiserver/pkg/endpoints/handlers/watch.go, `serveWatch`, holds one
            // for its timeout): the tests drive changes by calling the controllers, not through
            // watches.
            if watch && status == StatusCode::OK {
                std::future::pending::<()>().await;
            }
            let bytes = serde_json::to_vec(&answer).expect("answer serialises");
            Ok(Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(bytes))
                .expect("response"))
        })
    }
}

impl State {
    fn take_fault(&mut self, method: &Method, path: &str) -> Option<StatusCode> {
        let fault = self
            .faults
            .iter_mut()
            .find(|f| f.remaining > 0 && f.method == *method && path.ends_with(&f.path_suffix))?;
        fault.remaining -= 1;
        Some(fault.status)
    }

    fn serve(
        &mut self,
        request: &RecordedRequest,
        authorizer: Option<&Authorizer>,
    ) -> (StatusCode, Value) {
        if request.method == Method::GET
            && let Some(group_version) = discovery_path(&request.path)
        {
            return self.discovery(&group_version, &request.path);
        }
        let Some(target) = parse_target(&request.path) else {
            return not_found_path(&request.path);
        };
        if !self.serves(target.kind.api_version) {
            return not_found_path(&request.path);
        }
        let params = query_params(&request.query);
        // Discovery is a non-resource request every authenticated user may make
        // (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go, `system:discovery`).
        let attributes = Attributes::of(&request.method, &request.path, &params);
        if let (Some(authorizer), Some(attributes)) = (authorizer, &attributes)
            && !authorizer.allows(attributes)
        {
            return authorizer.forbidden(attributes);
        }
        let manager = params
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| "unknown".to_string());
        match (&request.method, &target.name) {
            (&Method::GET, None) => {
                let selector = params.get("labelSelector").cloned().unwrap_or_default();
                let list = self.list(&target, &selector);
                if request.accept.contains("as=PartialObjectMetadataList") {
                    (StatusCode::OK, metadata_only(list))
                } else {
                    (StatusCode::OK, list)
                }
            }
            (&Method::GET, Some(name)) => {
                let key = (target.collection.clone(), name.clone());
                match self.objects.get(&key) {
                    Some(object) => (StatusCode::OK, self.render(&key, object)),
                    None => not_found(&target, name),
                }
            }
            (&Method::POST, None) => self.create(&target, request.body.clone(), &manager),
            (&Method::PUT, Some(name)) => {
                self.replace(&target, name, request.body.clone(), &manager)
            }
            (&Method::PATCH, Some(name)) => {
                let force = params.get("force").is_some_and(|f| f == "true");
                // staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go, `PatchResource`:
                // an apply patch that finds no object creates it, and is authorized as a `create`
                // of the same resource as well as the `patch` checked above.
                let creates = request.content_type.starts_with("application/apply-patch")
                    && target.subresource.is_none()
                    && !self
                        .objects
                        .contains_key(&(target.collection.clone(), name.clone()));
                if let (true, Some(authorizer), Some(attributes)) =
                    (creates, authorizer, &attributes)
                {
                    let create = attributes.with_verb("create");
                    if !authorizer.allows(&create) {
                        return authorizer.forbidden(&create);
                    }
                }
                self.patch(&target, name, request, &manager, force)
            }
            (&Method::DELETE, Some(name)) => {
                let key = (target.collection.clone(), name.clone());
                match self.objects.get(&key).cloned() {
                    Some(object) => {
                        self.remove(&key);
                        self.collect_garbage();
                        (StatusCode::OK, object)
                    }
                    None => not_found(&target, name),
                }
            }
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                status_body(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                    None,
                ),
            ),
        }
    }

    fn serves(&self, api_version: &str) -> bool {
        let group = group_of(api_version);
        !OPTIONAL_GROUPS.contains(&group) || self.installed.contains(group)
    }

    /// The APIResourceList of a group version the server serves.
    fn discovery(&self, group_version: &str, path: &str) -> (StatusCode, Value) {
        let kinds: Vec<&Kind> = KINDS
            .iter()
            .filter(|k| k.api_version == group_version)
            .collect();
        if kinds.is_empty() || !self.serves(group_version) {
            return not_found_path(path);
        }
        let resources: Vec<Value> = kinds
            .iter()
            .map(|k| {
                json!({
                    "name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": true,
                    "kind": k.kind,
                    "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                })
            })
            .collect();
        (
            StatusCode::OK,
            json!({ "kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": group_version, "resources": resources }),
        )
    }

    /// KEDA's admission webhook: a ScaledObject may not target a workload that an HPA it does not own
    /// already scales (kedacore/keda apis/keda/v1alpha1/scaledobject_webhook.go, `verifyHpas`).
    fn refused_by_keda_webhook(
        &self,
        target: &Target,
        object: &Value,
    ) -> Option<(StatusCode, Value)> {
        if target.kind.kind != "ScaledObject" {
            return None;
        }
        let namespace = namespace_of(&target.collection)?;
        let hpas = format!("/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers");
        let workload = &object["spec"]["scaleTargetRef"]["name"];
        let (_, hpa) = self.objects.iter().find(|((c, _), hpa)| {
            *c == hpas
                && hpa["spec"]["scaleTargetRef"]["name"] == *workload
                && !hpa["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|owners| owners.iter().any(|o| o["kind"] == "ScaledObject"))
        })?;
        let message = format!(
            "admission webhook \"vscaledobject.kb.io\" denied the request: the workload '{}' of type 'apps/v1.Deployment' is already managed by the hpa '{}'",
            workload.as_str().unwrap_or_default(),
            hpa["metadata"]["name"].as_str().unwrap_or_default()
        );
        Some((
            StatusCode::FORBIDDEN,
            status_body(StatusCode::FORBIDDEN, "Forbidden", &message, None),
        ))
    }

    fn list(&self, target: &Target, selector: &str) -> Value {
        let wanted: Vec<(&str, &str)> = selector
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.split_once('=').expect("equality selectors only"))
            .collect();
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((c, _), _)| lists(&target.collection, c))
            .filter(|(_, o)| {
                wanted
                    .iter()
                    .all(|(k, v)| o["metadata"]["labels"][*k].as_str() == Some(*v))
            })
            .map(|(key, o)| self.render(key, o))
            .collect();
        json!({
            "apiVersion": target.kind.api_version,
            "kind": format!("{}List", target.kind.kind),
            "metadata": { "resourceVersion": self.resource_version.to_string() },
            "items": items,
        })
    }

    fn create(&mut self, target: &Target, mut object: Value, manager: &str) -> (StatusCode, Value) {
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
            return invalid(
                target,
                "",
                "metadata.name: Required value: name or generateName is required",
            );
        };
        if let Some(problem) = wrong_type(target, &object) {
            return bad_request(&problem);
        }
        if let Some(refusal) = self.refused_by_keda_webhook(target, &object) {
            return refusal;
        }
        let key = (target.collection.clone(), name.clone());
        // staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go, `NewAlreadyExists`.
        if self.objects.contains_key(&key) {
            return (
                StatusCode::CONFLICT,
                status_body(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", resource_group(target)),
                    Some(details(target, &name)),
                ),
            );
        }
        if target.kind.status_subresource {
            object.as_object_mut().expect("object").remove("status");
        }
        self.uids += 1;
        object["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uids));
        object["metadata"]["creationTimestamp"] = json!("2026-11-29T00:00:00Z");
        if let Some(namespace) = namespace_of(&target.collection) {
            object["metadata"]["namespace"] = json!(namespace);
        }
        if target.kind.has_generation {
            object["metadata"]["generation"] = json!(1);
        }
        let fields = leaf_paths(&object, &[]);
        self.managed.insert(
            key.clone(),
            vec![ManagedEntry {
                manager: manager.to_string(),
                operation: "Update",
                fields,
            }],
        );
        let object = default_and_normalise(target, object);
        self.commit(&key, object);
        let stored = self.render(&key, &self.objects[&key]);
        (StatusCode::CREATED, stored)
    }

    fn replace(
        &mut self,
        target: &Target,
        name: &str,
        object: Value,
        manager: &str,
    ) -> (StatusCode, Value) {
        let key = (target.collection.clone(), name.to_string());
        let Some(current) = self.objects.get(&key).cloned() else {
            return not_found(target, name);
        };
        // The optimistic lock: staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go,
        // `OptimisticLockErrorMsg`, through `NewConflict`.
        let expected = object["metadata"]["resourceVersion"].as_str();
        if expected.is_some() && expected != current["metadata"]["resourceVersion"].as_str() {
            return (
                StatusCode::CONFLICT,
                status_body(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        resource_group(target)
                    ),
                    Some(details(target, name)),
                ),
            );
        }
        let mut updated = object;
        preserve_server_fields(&current, &mut updated);
        if target.kind.status_subresource {
            updated["status"] = current["status"].clone();
        }
        self.write(target, &key, current, updated, manager, "Update")
    }

    fn patch(
        &mut self,
        target: &Target,
        name: &str,
        request: &RecordedRequest,
        manager: &str,
        force: bool,
    ) -> (StatusCode, Value) {
        let key = (target.collection.clone(), name.to_string());
        let status_only = target.subresource.as_deref() == Some("status");
        let apply = request.content_type.starts_with("application/apply-patch");
        let current = self.objects.get(&key).cloned();
        if apply {
            // staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/validation/validation.go,
            // `ValidatePatchOptions`, wrapped by patch.go as an invalid PatchOptions.
            if manager == "unknown" {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    status_body(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                        None,
                    ),
                );
            }
            if let Some(problem) = wrong_type(target, &request.body) {
                return bad_request(&problem);
            }
            // A configuration may leave the name out; one that names another object is refused.
            if let Some(named) = request.body["metadata"]["name"].as_str()
                && named != name
            {
                return bad_request(&format!(
                    "the name of the object ({named}) does not match the name on the URL ({name})"
                ));
            }
            let Some(current) = current else {
                if status_only {
                    return not_found(target, name);
                }
                return self.create_by_apply(target, &key, request.body.clone(), manager);
            };
            let config = scope(target, &request.body, status_only);
            self.server_side_apply(target, &key, current, config, manager, force)
        } else {
            let Some(current) = current else {
                return not_found(target, name);
            };
            let mut updated = current.clone();
            let patch = scope(target, &request.body, status_only);
            merge_patch(&mut updated, &patch);
            preserve_server_fields(&current, &mut updated);
            self.write(target, &key, current, updated, manager, "Update")
        }
    }

    fn create_by_apply(
        &mut self,
        target: &Target,
        key: &(String, String),
        config: Value,
        manager: &str,
    ) -> (StatusCode, Value) {
        let config = scope(target, &config, false);
        let (status, created) = self.create(target, config.clone(), manager);
        if status != StatusCode::CREATED {
            return (status, created);
        }
        // Created by an apply: the manager owns what it applied, with the Apply operation.
        self.managed.insert(
            key.clone(),
            vec![ManagedEntry {
                manager: manager.to_string(),
                operation: "Apply",
                fields: leaf_paths(&config, &[]),
            }],
        );
        (StatusCode::CREATED, self.render(key, &self.objects[key]))
    }

    /// Server-side apply as sigs.k8s.io/structured-merge-diff merge/update.go, `Apply`, does it: the
    /// configuration merged in, a field the manager applied before and leaves out now pruned unless
    /// another manager owns it, and a change of another manager's field a conflict unless forced.
    fn server_side_apply(
        &mut self,
        target: &Target,
        key: &(String, String),
        current: Value,
        config: Value,
        manager: &str,
        force: bool,
    ) -> (StatusCode, Value) {
        let applied = leaf_paths(&config, &[]);
        let mut entries = self.managed.get(key).cloned().unwrap_or_default();
        let mut conflicts = Vec::new();
        for entry in entries
            .iter_mut()
            .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        {
            let taken: Vec<FieldPath> = entry
                .fields
                .iter()
                .filter(|owned| applied.iter().any(|a| overlaps(a, owned)))
                .filter(|owned| value_at(&current, owned) != value_at(&config, owned))
                .cloned()
                .collect();
            for field in taken {
                // staging/src/k8s.io/apimachinery/pkg/util/managedfields/internal/conflict.go,
                // `printManager`: an updater is named with the API version it wrote through.
                let named = if entry.operation == "Apply" {
                    format!("\"{}\"", entry.manager)
                } else {
                    format!(
                        "\"{}\" using {}",
                        entry.manager,
                        current["apiVersion"].as_str().unwrap_or_default()
                    )
                };
                conflicts.push((named, format!(".{}", field.join("."))));
                if force {
                    entry.fields.remove(&field);
                }
            }
        }
        if !force && !conflicts.is_empty() {
            // sigs.k8s.io/structured-merge-diff merge/update.go finds the conflicts; conflict.go,
            // `getConflictMessage`, words one and several differently.
            let message = match conflicts.as_slice() {
                [(manager, path)] => {
                    format!("Apply failed with 1 conflict: conflict with {manager}: {path}")
                }
                many => {
                    let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                    for (manager, path) in many {
                        by_manager.entry(manager).or_default().push(path);
                    }
                    let lines: Vec<String> = by_manager
                        .iter()
                        .map(|(manager, paths)| {
                            let paths: Vec<String> =
                                paths.iter().map(|p| format!("- {p}")).collect();
                            format!("conflicts with {manager}:\n{}", paths.join("\n"))
                        })
                        .collect();
                    format!(
                        "Apply failed with {} conflicts: {}",
                        many.len(),
                        lines.join("\n")
                    )
                }
            };
            return (
                StatusCode::CONFLICT,
                status_body(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &message,
                    Some(details(target, &key.1)),
                ),
            );
        }
        let previous = entries
            .iter()
            .find(|e| e.manager == manager && e.operation == "Apply")
            .map(|e| e.fields.clone())
            .unwrap_or_default();
        let mut updated = current.clone();
        for dropped in previous.difference(&applied) {
            let still_owned = entries
                .iter()
                .filter(|e| !(e.manager == manager && e.operation == "Apply"))
                .any(|e| e.fields.iter().any(|f| overlaps(f, dropped)));
            if !still_owned {
                remove_at(&mut updated, dropped);
            }
        }
        merge_config(&mut updated, &config);
        entries.retain(|e| !(e.manager == manager && e.operation == "Apply"));
        entries.push(ManagedEntry {
            manager: manager.to_string(),
            operation: "Apply",
            fields: applied,
        });
        entries.retain(|e| !e.fields.is_empty());
        let before = self.managed.insert(key.clone(), entries);
        let answer = self.validate_and_store(target, key, &current, updated);
        if answer.0.is_client_error() {
            match before {
                Some(before) => self.managed.insert(key.clone(), before),
                None => self.managed.remove(key),
            };
        }
        answer
    }

    /// A write by an update (PUT, merge patch): the manager takes the fields it changed.
    fn write(
        &mut self,
        target: &Target,
        key: &(String, String),
        current: Value,
        updated: Value,
        manager: &str,
        operation: &'static str,
    ) -> (StatusCode, Value) {
        let changed = changed_paths(&current, &updated);
        let before = self.managed.get(key).cloned();
        assign_fields(
            self.managed.entry(key.clone()).or_default(),
            manager,
            operation,
            &changed,
        );
        let answer = self.validate_and_store(target, key, &current, updated);
        if answer.0.is_client_error() {
            match before {
                Some(before) => self.managed.insert(key.clone(), before),
                None => self.managed.remove(key),
            };
        }
        answer
    }

    fn validate_and_store(
        &mut self,
        target: &Target,
        key: &(String, String),
        current: &Value,
        updated: Value,
    ) -> (StatusCode, Value) {
        let updated = default_and_normalise(target, updated);
        if let Some(refusal) = refuse_update(target, &key.1, current, &updated, self) {
            return refusal;
        }
        let mut updated = updated;
        if target.kind.has_generation && spec_changed(current, &updated) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0);
            updated["metadata"]["generation"] = json!(generation + 1);
        }
        // A write that changes nothing stores nothing and keeps the resourceVersion
        // (staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go, `GuaranteedUpdate`).
        if strip_volatile(current) != strip_volatile(&updated) {
            self.commit(key, updated);
        }
        (StatusCode::OK, self.render(key, &self.objects[key]))
    }

    /// Stores a new version under a new resourceVersion.
    fn commit(&mut self, key: &(String, String), mut object: Value) {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.history
            .entry(key.clone())
            .or_default()
            .push(object.clone());
        self.objects.insert(key.clone(), object);
    }

    /// A write by one of the cluster's controllers, owning what it changed under `roots`.
    fn store(
        &mut self,
        key: &(String, String),
        updated: Value,
        manager: &str,
        operation: &'static str,
        roots: &[&str],
    ) {
        let current = self.objects[key].clone();
        let changed: BTreeSet<FieldPath> = changed_paths(&current, &updated)
            .into_iter()
            .filter(|p| roots.contains(&p[0].as_str()))
            .collect();
        assign_fields(
            self.managed.entry(key.clone()).or_default(),
            manager,
            operation,
            &changed,
        );
        if current != updated {
            self.commit(key, updated);
        }
    }

    fn remove(&mut self, key: &(String, String)) -> bool {
        self.managed.remove(key);
        self.objects.remove(key).is_some()
    }

    /// Deletes, until none is left, every object all of whose owners are gone: the garbage
    /// collector's rule (pkg/controller/garbagecollector/garbagecollector.go, `attemptToDeleteItem`:
    /// an owner reference dangles when no object has its uid).
    fn collect_garbage(&mut self) {
        loop {
            let uids: BTreeSet<String> = self
                .objects
                .values()
                .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_string))
                .collect();
            let orphans: Vec<(String, String)> = self
                .objects
                .iter()
                .filter(|(_, o)| {
                    o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|owners| {
                            !owners.is_empty()
                                && owners
                                    .iter()
                                    .all(|r| !r["uid"].as_str().is_some_and(|u| uids.contains(u)))
                        })
                })
                .map(|(k, _)| k.clone())
                .collect();
            if orphans.is_empty() {
                return;
            }
            for key in orphans {
                self.remove(&key);
            }
        }
    }

    /// The object with its `managedFields`, as the server answers it.
    fn render(&self, key: &(String, String), object: &Value) -> Value {
        let mut rendered = object.clone();
        let entries = self.managed.get(key).cloned().unwrap_or_default();
        let api_version = object["apiVersion"].clone();
        rendered["metadata"]["managedFields"] = entries
            .iter()
            .map(|e| {
                json!({
                    "manager": e.manager, "operation": e.operation, "apiVersion": api_version,
                    "time": "2026-11-29T00:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(&e.fields),
                })
            })
            .collect();
        rendered
    }

    fn storage_class_expands(&self, class: Option<&str>) -> bool {
        let Some(class) = class else { return false };
        self.objects
            .get(&(
                "/apis/storage.k8s.io/v1/storageclasses".to_string(),
                class.to_string(),
            ))
            .is_some_and(|c| c["allowVolumeExpansion"] == true)
    }
}

/// Whether a list of `requested` holds the objects of `stored`: its own, or, for a list across
/// namespaces (`/apis/<group>/<version>/<plural>`), those of every namespace (the generic registry
/// lists with no namespace in its context: staging/src/k8s.io/apiserver/pkg/registry/generic/
/// registry/store.go, `List` over the kind's whole key prefix).
fn lists(requested: &str, stored: &str) -> bool {
    if requested == stored {
        return true;
    }
    let Some((prefix, plural)) = requested.rsplit_once('/') else {
        return false;
    };
    !requested.contains("/namespaces/")
        && stored
            .strip_prefix(&format!("{prefix}/namespaces/"))
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(_, kind)| kind == plural)
}

/// A list as the server answers a client that asks for metadata alone
/// (`Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`):
/// staging/src/k8s.io/apiserver/pkg/endpoints/handlers/response.go, `transformResponseObject` through
/// `asPartialObjectMetadataList`, which keeps each item's `metadata` under kind
/// `PartialObjectMetadata` and drops the rest.
fn metadata_only(list: Value) -> Value {
    let items: Vec<Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            json!({ "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                    "metadata": item["metadata"] })
        })
        .collect();
    json!({ "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
            "metadata": list["metadata"], "items": items })
}

/// What the API server refuses on update, with its own words.
fn refuse_update(
    target: &Target,
    name: &str,
    current: &Value,
    updated: &Value,
    state: &State,
) -> Option<(StatusCode, Value)> {
    let spec = |o: &Value, field: &str| o["spec"][field].clone();
    match target.kind.kind {
        // pkg/apis/batch/validation/validation.go, `ValidateJobSpecUpdate`, through
        // `ValidateImmutableField` (staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go).
        "Job" => ["selector", "template"].into_iter().find_map(|field| {
            (spec(current, field) != spec(updated, field)).then(|| {
                invalid(
                    target,
                    name,
                    &format!(
                        "spec.{field}: Invalid value: {}: field is immutable",
                        spec(updated, field)
                    ),
                )
            })
        }),
        // pkg/apis/apps/validation/validation.go, `ValidateStatefulSetUpdate` (the wording of
        // Kubernetes 1.33).
        "StatefulSet" => {
            const MUTABLE: [&str; 6] = [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ];
            let frozen = |o: &Value| {
                let mut spec = o["spec"].as_object().cloned().unwrap_or_default();
                spec.retain(|k, _| !MUTABLE.contains(&k.as_str()));
                spec
            };
            (frozen(current) != frozen(updated)).then(|| {
                invalid(target, name, "spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden")
            })
        }
        // pkg/registry/apps/deployment/strategy.go, `ValidateUpdate`.
        "Deployment" => (spec(current, "selector") != spec(updated, "selector")).then(|| {
            invalid(
                target,
                name,
                &format!(
                    "spec.selector: Invalid value: {}: field is immutable",
                    spec(updated, "selector")
                ),
            )
        }),
        // pkg/apis/core/validation/validation.go, `ValidateServiceUpdate` through
        // `validateUpgradeDowngradeClusterIPs`; an update that leaves the IP out keeps it
        // (pkg/registry/core/service/storage/storage.go, `patchAllocatedValues`).
        "Service" => {
            let ip = |o: &Value| o["spec"]["clusterIP"].clone();
            (!ip(current).is_null() && ip(current) != ip(updated)).then(|| {
                invalid(
                    target,
                    name,
                    "spec.clusterIPs[0]: Invalid value: []string(nil): may not change once set",
                )
            })
        }
        // pkg/apis/core/validation/validation.go, `ValidatePersistentVolumeClaimUpdate`; growing is
        // admitted by plugin/pkg/admission/storage/persistentvolume/resize/admission.go only where
        // the storage class allows expansion.
        "PersistentVolumeClaim" => {
            let size = |o: &Value| {
                o["spec"]["resources"]["requests"]["storage"]
                    .as_str()
                    .and_then(bytes)
            };
            let mut frozen_current = current["spec"].clone();
            let mut frozen_updated = updated["spec"].clone();
            for spec in [&mut frozen_current, &mut frozen_updated] {
                if let Some(resources) = spec.get_mut("resources").and_then(Value::as_object_mut) {
                    resources.remove("requests");
                }
            }
            if frozen_current != frozen_updated {
                return Some(invalid(
                    target,
                    name,
                    "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
                ));
            }
            match (size(current), size(updated)) {
                (Some(before), Some(after)) if after < before => Some(invalid(
                    target,
                    name,
                    "spec.resources.requests.storage: Forbidden: field can not be less than status.capacity",
                )),
                (Some(before), Some(after))
                    if after > before
                        && !state.storage_class_expands(
                            current["spec"]["storageClassName"].as_str(),
                        ) =>
                {
                    Some((
                        StatusCode::FORBIDDEN,
                        status_body(
                            StatusCode::FORBIDDEN,
                            "Forbidden",
                            &format!(
                                "persistentvolumeclaims \"{name}\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"
                            ),
                            Some(details(target, name)),
                        ),
                    ))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Defaults the API server fills in (see `defaults.rs`), and `stringData` folded into `data`.
fn default_and_normalise(target: &Target, mut object: Value) -> Value {
    super::defaults::apply(target.kind.kind, &mut object);
    match target.kind.kind {
        // pkg/apis/core/v1/conversion.go, `Convert_v1_Secret_To_core_Secret`: `stringData`
        // overwrites `data` and is never stored.
        "Secret" => {
            if let Some(Value::Object(strings)) =
                object.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                for (key, value) in strings {
                    let bytes = k8s_openapi::ByteString(
                        value.as_str().unwrap_or_default().as_bytes().to_vec(),
                    );
                    object["data"][key] = serde_json::to_value(bytes).expect("base64");
                }
            }
        }
        _ => {}
    }
    object
}

/// What a write may change: the object without `status` for a status subresource kind, or only
/// `status` through `/status` (each kind's strategy in pkg/registry: `PrepareForUpdate` keeps the old
/// status, and its status strategy the old spec).
fn scope(target: &Target, body: &Value, status_only: bool) -> Value {
    let mut scoped = body.clone();
    let object = scoped.as_object_mut().expect("an object body");
    if status_only {
        object.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "resourceVersion"));
        }
    } else if target.kind.status_subresource {
        object.remove("status");
    }
    scoped
}

/// Fields only the server sets, kept through an update (staging/src/k8s.io/apiserver/pkg/registry/
/// rest/update.go, `BeforeUpdate`).
fn preserve_server_fields(current: &Value, updated: &mut Value) {
    for field in [
        "uid",
        "creationTimestamp",
        "generation",
        "resourceVersion",
        "namespace",
    ] {
        updated["metadata"][field] = current["metadata"][field].clone();
    }
}

fn strip_volatile(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object["metadata"].as_object_mut() {
        metadata.remove("resourceVersion");
        metadata.remove("managedFields");
    }
    object
}

/// Whether `generation` moves: on a change of anything but metadata and status (each strategy's
/// `PrepareForUpdate`, e.g. pkg/registry/apps/statefulset/strategy.go; a Deployment's also on a change
/// of its annotations, pkg/registry/apps/deployment/strategy.go).
fn spec_changed(current: &Value, updated: &Value) -> bool {
    if updated["kind"] == "Deployment"
        && current["metadata"]["annotations"] != updated["metadata"]["annotations"]
    {
        return true;
    }
    let body = |o: &Value| {
        let mut o = o.as_object().cloned().unwrap_or_default();
        o.retain(|k, _| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"));
        o
    };
    body(current) != body(updated)
}

/// A body of another group version than its URL's: staging/src/k8s.io/apiserver/pkg/endpoints/
/// handlers/create.go, `createHandler`, answers 400 "the API version in the data (…) does not match
/// the expected API version (…)" (the kind is named too here, for the tests' sake).
fn wrong_type(target: &Target, object: &Value) -> Option<String> {
    let (api_version, kind) = (object["apiVersion"].as_str(), object["kind"].as_str());
    (api_version != Some(target.kind.api_version) || kind != Some(target.kind.kind)).then(|| {
        format!(
            "the API version in the data ({}) does not match the expected API version ({}) or kind {:?} is not {}",
            api_version.unwrap_or_default(),
            target.kind.api_version,
            kind.unwrap_or_default(),
            target.kind.kind
        )
    })
}

/// The fields a manager states in an object: each leaf, with lists as one field. Identity and
/// server-set metadata are nobody's.
fn leaf_paths(value: &Value, prefix: &[String]) -> BTreeSet<FieldPath> {
    let mut paths = BTreeSet::new();
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                if prefix.is_empty() && matches!(key.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                if prefix.len() == 1
                    && prefix[0] == "metadata"
                    && !matches!(
                        key.as_str(),
                        "labels" | "annotations" | "ownerReferences" | "finalizers"
                    )
                {
                    continue;
                }
                let mut path = prefix.to_vec();
                path.push(key.clone());
                paths.extend(leaf_paths(child, &path));
            }
        }
        _ if !prefix.is_empty() => {
            paths.insert(prefix.to_vec());
        }
        _ => {}
    }
    paths
}

fn changed_paths(before: &Value, after: &Value) -> BTreeSet<FieldPath> {
    let before_paths = leaf_paths(before, &[]);
    let after_paths = leaf_paths(after, &[]);
    before_paths
        .union(&after_paths)
        .filter(|p| value_at(before, p) != value_at(after, p))
        .cloned()
        .collect()
}

/// Gives `manager` the fields it changed, taking them from every other manager.
fn assign_fields(
    entries: &mut Vec<ManagedEntry>,
    manager: &str,
    operation: &'static str,
    changed: &BTreeSet<FieldPath>,
) {
    for entry in entries.iter_mut() {
        entry
            .fields
            .retain(|f| !changed.iter().any(|c| overlaps(c, f)));
    }
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == operation)
    {
        Some(entry) => entry.fields.extend(changed.iter().cloned()),
        None => entries.push(ManagedEntry {
            manager: manager.to_string(),
            operation,
            fields: changed.clone(),
        }),
    }
    entries.retain(|e| !e.fields.is_empty());
}

fn overlaps(a: &FieldPath, b: &FieldPath) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn value_at<'a>(value: &'a Value, path: &FieldPath) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// Removes a field, and the objects it leaves empty below the top level: a manager that set every
/// field of a map entry owned the entry too (the `.` of real field sets), so the entry goes with its
/// last field.
fn remove_at(value: &mut Value, path: &FieldPath) {
    remove_below(value, path, 0);
}

fn remove_below(value: &mut Value, path: &[String], depth: usize) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(map) = value.as_object_mut() else {
        return;
    };
    if rest.is_empty() {
        map.remove(first);
        return;
    }
    if let Some(child) = map.get_mut(first) {
        remove_below(child, rest, depth + 1);
        if depth > 0 && child.as_object().is_some_and(|c| c.is_empty()) {
            map.remove(first);
        }
    }
}

/// An applied configuration merged into the live object: objects field by field, lists and scalars whole.
fn merge_config(live: &mut Value, config: &Value) {
    match (live, config) {
        (Value::Object(live), Value::Object(config)) => {
            for (key, value) in config {
                match live.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge_config(existing, value)
                    }
                    _ => {
                        live.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (live, config) => *live = config.clone(),
    }
}

/// RFC 7386: `null` deletes (the merge patch of staging/src/k8s.io/apiserver/pkg/endpoints/handlers/
/// patch.go, `jsonPatcher`).
fn merge_patch(live: &mut Value, patch: &Value) {
    match (live, patch) {
        (Value::Object(live), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    live.remove(key);
                } else {
                    merge_patch(live.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (live, patch) => *live = patch.clone(),
    }
}

fn fields_v1(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for key in path {
            node = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("object");
        }
    }
    Value::Object(root)
}

fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"], "kind": owner["kind"],
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// The group version of a discovery request (`/apis/<group>/<version>`, `/api/v1`).
fn discovery_path(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "v1"] => Some("v1".to_string()),
        ["apis", group, version] => Some(format!("{group}/{version}")),
        _ => None,
    }
}

fn parse_target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _, rest @ ..] => rest,
        rest => rest,
    };
    let (plural, rest) = rest.split_first()?;
    let kind = *KINDS
        .iter()
        .find(|k| k.api_version == api_version && k.plural == *plural)?;
    let prefix_len = segments.len() - rest.len();
    let collection = format!("/{}", segments[..prefix_len].join("/"));
    Some(Target {
        kind,
        collection,
        name: rest.first().map(|s| s.to_string()),
        subresource: rest.get(1).map(|s| s.to_string()),
    })
}

fn namespace_of(collection: &str) -> Option<&str> {
    let mut segments = collection.split('/');
    segments.find(|s| *s == "namespaces")?;
    segments.next()
}

fn resource_group(target: &Target) -> String {
    match target.kind.api_version.split_once('/') {
        Some((group, _)) => format!("{}.{group}", target.kind.plural),
        None => target.kind.plural.to_string(),
    }
}

fn details(target: &Target, name: &str) -> Value {
    let group = target
        .kind
        .api_version
        .split_once('/')
        .map(|(g, _)| g)
        .unwrap_or("");
    json!({ "name": name, "group": group, "kind": target.kind.plural })
}

fn status_body(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code.is_success() { "Success" } else { "Failure" },
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

/// staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go, `NewNotFound`.
fn not_found(target: &Target, name: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        status_body(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} \"{name}\" not found", resource_group(target)),
            Some(details(target, name)),
        ),
    )
}

/// A path no installed API serves: staging/src/k8s.io/apiserver/pkg/endpoints/handlers/
/// responsewriters/errors.go by way of `NewGenericServerResponse`'s 404 wording.
fn not_found_path(path: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        status_body(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
            None,
        ),
    )
}

fn bad_request(message: &str) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        status_body(StatusCode::BAD_REQUEST, "BadRequest", message, None),
    )
}

/// A 422 as the API server words it: `<Kind>.<group> "<name>" is invalid: <field>: <problem>`
/// (staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go, `NewInvalid`).
fn invalid(target: &Target, name: &str, problem: &str) -> (StatusCode, Value) {
    let group = target
        .kind
        .api_version
        .split_once('/')
        .map(|(g, _)| format!(".{g}"))
        .unwrap_or_default();
    let (field, cause) = problem.split_once(": ").unwrap_or(("", problem));
    let mut details = details(target, name);
    details["kind"] = json!(target.kind.kind);
    details["causes"] =
        json!([{ "reason": "FieldValueInvalid", "message": cause, "field": field }]);
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        status_body(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!(
                "{}{group} \"{name}\" is invalid: {problem}",
                target.kind.kind
            ),
            Some(details),
        ),
    )
}

/// A quantity in bytes, for comparing storage requests.
fn bytes(quantity: &str) -> Option<u128> {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: u128 = number.parse().ok()?;
    let factor: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    Some(number * factor)
}

fn query_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        decoded.push(byte);
                        i += 3;
                    }
                    None => {
                        decoded.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                decoded.push(b' ');
                i += 1;
            }
            byte => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}
