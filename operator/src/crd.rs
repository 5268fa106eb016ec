//! The `ChatSystem` custom resource: spec with every default in the schema, and status.

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the operator; also the tag of the API and worker images it runs by default.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The longest name whose every derived name is valid: a StatefulSet name leaves room for the
/// `controller-revision-hash` label (63 characters, 11 of them the hash), and the longest StatefulSet
/// suffix is `-opensearch`. Checked against the builders in the tests.
pub const MAX_NAME_LENGTH: usize = 41;

/// The CEL rule on `metadata.name`: every Service, StatefulSet and Secret name derived from it is a
/// DNS-1035 label of the right length.
const NAME_RULE: &str =
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 41";
const NAME_MESSAGE: &str = "metadata.name must be at most 41 characters of lower-case letters, digits and '-', starting with a letter and ending with a letter or digit: the names of the Services and StatefulSets derived from it must be valid DNS labels";

/// A complete chat system: API, worker and their backing services.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "chatsys.io",
    version = "v1alpha1",
    kind = "ChatSystem",
    plural = "chatsystems",
    shortname = "chatsys",
    namespaced,
    doc = "A chat system: its API, worker and backing services, reconciled by chatsys-operator.",
    status = "ChatSystemStatus",
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "API", "type": "integer", "description": "Ready replicas of the API", "jsonPath": ".status.components.api.readyReplicas"}"#,
    printcolumn = r#"{"name": "URL", "type": "string", "priority": 1, "jsonPath": ".status.apiUrl"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new(NAME_RULE).message(NAME_MESSAGE)
)]
#[serde(rename_all = "camelCase", default)]
pub struct ChatSystemSpec {
    /// When true the operator changes nothing for this resource and only reports status.
    pub paused: bool,
    pub api: ApiSpec,
    pub worker: WorkerSpec,
    pub mysql: MysqlSpec,
    pub redis: BackingServiceSpec<RedisDefaults>,
    pub rabbitmq: ProvidedServiceSpec<RabbitmqDefaults, RabbitmqProvider>,
    pub opensearch: ProvidedServiceSpec<OpensearchDefaults, OpensearchProvider>,
    /// Secrets every pod pulls its images with, such as a private registry's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub monitoring: MonitoringSpec,
    pub network_policy: NetworkPolicySpec,
    pub command_queue: CommandQueueSpec,
}

/// Where a component's pods run and what they carry, as in a Pod's spec: for platform teams'
/// scheduling and ownership rules. Labels and annotations the operator sets itself win over these.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSettings {
    /// Node labels the pods must run on, as in a Pod's `spec.nodeSelector`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate, as in a Pod's `spec.tolerations`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "pod_field_schema::<Vec<Toleration>>")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod (anti-)affinity, as in a Pod's `spec.affinity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pod_field_schema::<Option<Affinity>>")]
    pub affinity: Option<Affinity>,
    /// How the pods spread over zones or nodes, as in a Pod's `spec.topologySpreadConstraints`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "pod_field_schema::<Vec<TopologySpreadConstraint>>")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Annotations added to the pods (for example a service mesh's or a backup tool's).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Labels added to the pods (never to their selectors, which cannot change).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Environment variables added to the component's container, as in a container's `env`; a name
    /// the operator also sets is replaced by this entry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "pod_field_schema::<Vec<EnvVar>>")]
    pub env: Vec<EnvVar>,
}

/// A Pod field's own schema with its nested descriptions left out: `kubectl explain pod.spec` has
/// them, and repeating them for six components would make the CRD too large to apply.
fn pod_field_schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("description");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value =
        serde_json::to_value(generator.subschema_for::<T>()).expect("a schema serialises");
    strip(&mut value);
    Schema::try_from(value).expect("still a schema")
}

/// The RabbitMQ queues chat and message creations travel through. One queue is one Erlang process with
/// a ceiling of its own; past it, spreading commands over more queues carries more (BENCHMARKS.md).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.shards >= oldSelf.shards",
    "message": "commandQueue.shards may only grow: the commands queued in a dropped queue would never be stored",
}]))]
pub struct CommandQueueSpec {
    /// Queues the commands are spread over, by chat; every worker consumes them all.
    #[schemars(range(min = 1, max = 64))]
    pub shards: i32,
}

impl Default for CommandQueueSpec {
    fn default() -> Self {
        CommandQueueSpec { shards: 1 }
    }
}

/// The HTTP API.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiSpec {
    /// The API's image; when empty, the image of this operator's version, so upgrading the operator
    /// upgrades the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Fixed replica count; used only when autoscaling is disabled.
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    #[schemars(schema_with = "resources_schema")]
    pub resources: ResourceRequirements,
    pub autoscaling: Autoscaling,
    pub ingress: IngressSpec,
    /// The Secret holding the admin key (`CHATSYS_ADMIN_KEY`, which listing applications needs).
    /// When unset, the operator generates one, `<name>-api-admin-key` with key `admin-key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key_secret: Option<SecretKeyReference>,
    /// Web pages that may call the API from a browser (`CHATSYS_CORS_ALLOWED_ORIGINS`).
    #[serde(default, skip_serializing_if = "CorsSpec::is_empty")]
    pub cors: CorsSpec,
    /// Scheduling, labels, annotations and env of the API's pods (and its migration Job's).
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for ApiSpec {
    fn default() -> Self {
        ApiSpec {
            image: None,
            replicas: 2,
            resources: resources("100m", "128Mi", "512Mi"),
            autoscaling: Autoscaling::default(),
            ingress: IngressSpec::default(),
            admin_key_secret: None,
            cors: CorsSpec::default(),
            pod: PodSettings::default(),
        }
    }
}

/// Cross-origin access for web pages (CORS).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CorsSpec {
    /// The origins whose pages may call the API, exactly as browsers send them
    /// (`https://app.example.com`, no path, no trailing `/`). None by default: a request from a web
    /// page of any other origin is refused.
    #[schemars(inner(pattern(r"^https?://[A-Za-z0-9.:\[\]-]+$")))]
    pub allowed_origins: Vec<String>,
}

impl CorsSpec {
    fn is_empty(&self) -> bool {
        self.allowed_origins.is_empty()
    }
}

/// A key of a Secret in the ChatSystem's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyReference {
    /// The Secret's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The key within it.
    #[serde(default = "default_admin_key_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_admin_key_key() -> String {
    "admin-key".to_string()
}

impl ApiSpec {
    /// The image to run: the one named, or this operator version's.
    pub fn image(&self) -> String {
        image_or_default(self.image.as_deref(), "chatsys/chatsys-api")
    }
}

/// The queue consumer that writes to MySQL and OpenSearch.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkerSpec {
    /// The worker's image; when empty, the image of this operator's version, so upgrading the operator
    /// upgrades the worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Fixed replica count; used only when autoscaling is disabled.
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    #[schemars(schema_with = "resources_schema")]
    pub resources: ResourceRequirements,
    pub autoscaling: WorkerAutoscaling,
    pub batch: BatchSpec,
    /// Scheduling, labels, annotations and env of the worker's pods.
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for WorkerSpec {
    fn default() -> Self {
        WorkerSpec {
            image: None,
            replicas: 1,
            resources: requests_only("100m", "128Mi"),
            autoscaling: WorkerAutoscaling::default(),
            batch: BatchSpec::default(),
            pod: PodSettings::default(),
        }
    }
}

impl WorkerSpec {
    /// The image to run: the one named, or this operator version's.
    pub fn image(&self) -> String {
        image_or_default(self.image.as_deref(), "chatsys/chatsys-worker")
    }
}

fn image_or_default(image: Option<&str>, repository: &str) -> String {
    match image {
        Some(image) if !image.is_empty() => image.to_string(),
        _ => format!("{repository}:{VERSION}"),
    }
}

/// A HorizontalPodAutoscaler on CPU utilisation.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.minReplicas <= self.maxReplicas",
    "message": "minReplicas must not exceed maxReplicas",
}]))]
pub struct Autoscaling {
    /// A HorizontalPodAutoscaler sets the replica count (`replicas` is then unused).
    pub enabled: bool,
    /// The fewest replicas the autoscaler keeps.
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    /// The most replicas the autoscaler runs; MySQL's connection limit is sized for it.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// The average CPU utilisation, in percent of the CPU request, aimed at.
    #[serde(rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
}

impl Default for Autoscaling {
    fn default() -> Self {
        Autoscaling {
            enabled: true,
            min_replicas: 2,
            max_replicas: 10,
            target_cpu_utilization_percentage: 70,
        }
    }
}

/// The worker's autoscaling: on CPU, as the API's, or on the command queue's backlog through KEDA.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.minReplicas <= self.maxReplicas",
        "message": "minReplicas must not exceed maxReplicas",
    },
    {
        "rule": "!self.scaleToZero || self.metric == 'QueueBacklog'",
        "message": "scaleToZero needs metric QueueBacklog: CPU cannot tell that commands wait for a worker that does not run",
    },
]))]
pub struct WorkerAutoscaling {
    /// An autoscaler sets the replica count (`replicas` is then unused).
    pub enabled: bool,
    /// What the replica count follows: `Cpu` (a HorizontalPodAutoscaler) or `QueueBacklog` (a KEDA
    /// ScaledObject on the command queue; needs KEDA in the cluster).
    pub metric: ScalingMetric,
    /// The fewest replicas the autoscaler keeps.
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    /// The most replicas the autoscaler runs; MySQL's connection limit is sized for it.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// With `Cpu`: the average CPU utilisation aimed at.
    #[serde(rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
    /// With `QueueBacklog`: commands waiting in the queue per worker replica.
    #[schemars(range(min = 1, max = 1000000))]
    pub messages_per_replica: i32,
    /// With `QueueBacklog`: no worker runs while the queue is empty, and the first command starts one.
    pub scale_to_zero: bool,
}

impl Default for WorkerAutoscaling {
    fn default() -> Self {
        let cpu = Autoscaling::default();
        WorkerAutoscaling {
            enabled: cpu.enabled,
            metric: ScalingMetric::Cpu,
            min_replicas: cpu.min_replicas,
            max_replicas: cpu.max_replicas,
            target_cpu_utilization_percentage: cpu.target_cpu_utilization_percentage,
            messages_per_replica: 5000,
            scale_to_zero: false,
        }
    }
}

impl WorkerAutoscaling {
    /// The CPU autoscaler's settings: what `Cpu` runs, and `QueueBacklog` falls back to without KEDA.
    pub fn on_cpu(&self) -> Autoscaling {
        Autoscaling {
            enabled: self.enabled,
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            target_cpu_utilization_percentage: self.target_cpu_utilization_percentage,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ScalingMetric {
    #[default]
    Cpu,
    QueueBacklog,
}

/// Batching of the worker (see the worker's settings).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct BatchSpec {
    /// Commands written per transaction.
    #[schemars(range(min = 1, max = 10000))]
    pub size: i32,
    /// How long a partial batch waits for more, in milliseconds.
    #[schemars(range(min = 0, max = 60000))]
    pub wait_ms: i32,
    /// Payload bytes written per transaction at most.
    #[schemars(range(min = 65536, max = 1073741824))]
    pub max_bytes: i64,
    /// Unacknowledged deliveries held.
    #[schemars(range(min = 1, max = 65535))]
    pub prefetch: i32,
    /// Bytes of unacknowledged deliveries held at most, each counted as the largest command can be
    /// (the prefetch is lowered to fit). With `maxBytes`, it sizes the worker's memory limit when
    /// `resources.limits.memory` is not set.
    #[schemars(range(min = 1048576, max = 17_179_869_184_i64))]
    pub prefetch_bytes: i64,
    /// Tries before a command goes to the dead-letter queue.
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: i32,
}

impl BatchSpec {
    /// The worker's memory when its limit is not given: a base for the process, three times the
    /// prefetch's bytes (a delivery held, the stored message waiting to be indexed, and what the
    /// allocator keeps of both) and four batches being decoded, applied and cached. With the defaults,
    /// 1,088 MiB; the worker peaked at 833 MiB writing 4,000 bodies of 64 KiB (BENCHMARKS.md, issue 26).
    pub fn memory_limit(&self) -> Quantity {
        const BASE: u64 = 256 << 20;
        let bytes =
            BASE + 3 * self.prefetch_bytes.unsigned_abs() + 4 * self.max_bytes.unsigned_abs();
        Quantity(format!("{}Mi", bytes.div_ceil(1 << 20)))
    }
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            size: 1000,
            wait_ms: 20,
            max_bytes: chatsys_settings::DEFAULT_BATCH_BYTES as i64,
            prefetch: 8000,
            prefetch_bytes: chatsys_settings::DEFAULT_PREFETCH_BYTES as i64,
            max_attempts: 5,
        }
    }
}

/// An Ingress in front of the API.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!self.enabled || has(self.host)",
    "message": "ingress.host is required when the ingress is enabled",
}]))]
pub struct IngressSpec {
    /// An Ingress routes the API's public paths from `host`.
    #[serde(default)]
    pub enabled: bool,
    /// The host name clients use; required when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The IngressClass; with `nginx`, the operator adds ingress-nginx's annotations for streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Secret holding the TLS certificate; the API is served over HTTPS when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Annotations of the Ingress, for its controller (they win over the operator's own, which it
    /// sets for ingress-nginx only: streaming, timeouts and the body limit).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Scraping and alerting through prometheus-operator, which must be installed in the cluster.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MonitoringSpec {
    /// Off by default: the operator then creates no ServiceMonitor, PodMonitor or PrometheusRule.
    pub enabled: bool,
    /// `ServiceMonitor` (scrapes through the Services) or `PodMonitor` (scrapes the pods directly).
    pub scrape_with: ScrapeKind,
    /// How often Prometheus scrapes each target.
    #[schemars(pattern(r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: String,
    /// Labels put on the monitors and the rules, so that a Prometheus's selectors pick them (with
    /// kube-prometheus-stack: `release: <its release name>`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A PrometheusRule with chatsys's alerts.
    pub alerts: bool,
    /// Where the alerts' runbooks are; each alert's `runbook_url` is this plus `#` and the alert's
    /// name in lower case. Unset: the alerts carry no `runbook_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook_base_url: Option<String>,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        MonitoringSpec {
            enabled: false,
            scrape_with: ScrapeKind::ServiceMonitor,
            interval: "30s".to_string(),
            labels: BTreeMap::new(),
            alerts: true,
            runbook_base_url: None,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ScrapeKind {
    #[default]
    ServiceMonitor,
    PodMonitor,
}

/// NetworkPolicies that let only this system's pods reach its databases.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkPolicySpec {
    /// On by default. Off: the operator creates no NetworkPolicy and removes those it made.
    pub enabled: bool,
    /// Who may reach the API's port, as the `from` of a NetworkPolicy rule (for example the ingress
    /// controller's namespace). Empty: anyone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "peers_schema")]
    pub api_from: Vec<NetworkPolicyPeer>,
    /// Who may scrape the metrics ports of the worker and RabbitMQ (for example Prometheus's
    /// namespace). Empty: anyone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "peers_schema")]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec {
            enabled: true,
            api_from: Vec::new(),
            metrics_from: Vec::new(),
        }
    }
}

/// Peers written as in a NetworkPolicy rule, with NetworkPolicyPeer's own schema (no field left
/// unchecked), so the API server refuses a peer the operator could not read when the ChatSystem is
/// applied, rather than after it is stored.
fn peers_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<NetworkPolicyPeer>>();
    schema.insert(
        "description".to_string(),
        "Peers as in a NetworkPolicy rule's `from`: `podSelector`, `namespaceSelector` or `ipBlock`."
            .into(),
    );
    schema
}

/// Per-service defaults of a backing service, so one generic spec type serves all four.
pub trait ServiceDefaults {
    const IMAGE: &'static str;
    const STORAGE: &'static str;
    const CPU_REQUEST: &'static str;
    const MEMORY_REQUEST: &'static str;
    const MEMORY_LIMIT: &'static str;
}

macro_rules! service_defaults {
    ($name:ident, $image:literal, $storage:literal, $cpu:literal, $mem_req:literal, $mem_lim:literal) => {
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $name;
        impl ServiceDefaults for $name {
            const IMAGE: &'static str = $image;
            const STORAGE: &'static str = $storage;
            const CPU_REQUEST: &'static str = $cpu;
            const MEMORY_REQUEST: &'static str = $mem_req;
            const MEMORY_LIMIT: &'static str = $mem_lim;
        }
    };
}

service_defaults!(MysqlDefaults, "mysql:8.4", "10Gi", "250m", "512Mi", "1Gi");
service_defaults!(RedisDefaults, "redis:7.4", "1Gi", "100m", "128Mi", "512Mi");
service_defaults!(
    RabbitmqDefaults,
    "rabbitmq:3.13-management",
    "2Gi",
    "200m",
    "256Mi",
    "1Gi"
);
service_defaults!(
    OpensearchDefaults,
    "opensearchproject/opensearch:2.17.1",
    "10Gi",
    "500m",
    "1Gi",
    "2Gi"
);

/// A backing service the operator runs as a StatefulSet, unless `external` points at one the user runs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default, bound = "")]
#[schemars(bound = "D: ServiceDefaults")]
pub struct BackingServiceSpec<D: ServiceDefaults> {
    /// The service's image.
    pub image: String,
    #[schemars(schema_with = "resources_schema")]
    pub resources: ResourceRequirements,
    pub storage: StorageSpec<D>,
    /// When set, the operator runs nothing for this service and reads its URL from this Secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalService>,
    /// Scheduling, labels, annotations and env of the service's pod.
    #[serde(flatten)]
    pub pod: PodSettings,
    #[serde(skip)]
    marker: std::marker::PhantomData<D>,
}

impl<D: ServiceDefaults> Default for BackingServiceSpec<D> {
    fn default() -> Self {
        BackingServiceSpec {
            image: D::IMAGE.to_string(),
            resources: resources(D::CPU_REQUEST, D::MEMORY_REQUEST, D::MEMORY_LIMIT),
            storage: StorageSpec::default(),
            external: None,
            pod: PodSettings::default(),
            marker: std::marker::PhantomData,
        }
    }
}

/// The CEL rules of a service another operator may run, with `more` of its own: `provider` and
/// `external` exclude each other, and the provider stays what it was (its data lives in the service
/// it chose). Its struct is flattened into `MysqlSpec`, whose schema would otherwise lose them.
fn provider_rules(more: &[(&str, &str)]) -> serde_json::Value {
    let rules = [
        (
            "!has(self.external) || self.provider == 'builtin'",
            "external and provider exclude each other: an external service is run by nobody here",
        ),
        (
            "self.provider == oldSelf.provider",
            "provider cannot change: the data stays in the service that holds it (move MySQL's with a backup and mysql.restoreFrom)",
        ),
    ];
    rules
        .iter()
        .chain(more)
        .map(|(rule, message)| serde_json::json!({ "rule": rule, "message": message }))
        .collect()
}

/// How many replicas a provider runs by default: a majority survives the loss of one.
const PROVIDER_REPLICAS: i32 = 3;

/// A backing service that an operator the cluster already runs may run instead of chatsys-operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(
    rename_all = "camelCase",
    default,
    bound = "P: Serialize + serde::de::DeserializeOwned + Default"
)]
#[schemars(bound = "D: ServiceDefaults, P: JsonSchema + Default + Serialize")]
#[schemars(extend("x-kubernetes-validations" = provider_rules(&[])))]
pub struct ProvidedServiceSpec<D: ServiceDefaults, P> {
    #[serde(flatten)]
    pub service: BackingServiceSpec<D>,
    /// Who runs the service: `builtin` (this operator, one pod) or the operator named, which must be
    /// installed in the cluster; it then runs `replicas` pods and fails over between them.
    pub provider: P,
    /// Pods the provider runs; unused with `builtin`.
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
}

impl<D: ServiceDefaults, P: Default> Default for ProvidedServiceSpec<D, P> {
    fn default() -> Self {
        ProvidedServiceSpec {
            service: BackingServiceSpec::default(),
            provider: P::default(),
            replicas: PROVIDER_REPLICAS,
        }
    }
}

impl<D: ServiceDefaults, P> std::ops::Deref for ProvidedServiceSpec<D, P> {
    type Target = BackingServiceSpec<D>;
    fn deref(&self) -> &Self::Target {
        &self.service
    }
}

impl<D: ServiceDefaults, P> std::ops::DerefMut for ProvidedServiceSpec<D, P> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.service
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MysqlProvider {
    #[default]
    Builtin,
    /// A `MariaDB` of mariadb-operator (k8s.mariadb.com), replicated, with its `Backup`.
    MariadbOperator,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RabbitmqProvider {
    #[default]
    Builtin,
    /// A `RabbitmqCluster` of RabbitMQ's cluster-operator (rabbitmq.com).
    RabbitmqClusterOperator,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OpensearchProvider {
    #[default]
    Builtin,
    /// An `OpenSearchCluster` of the OpenSearch operator (opensearch.opster.io).
    OpensearchOperator,
}

/// MySQL, with its backups and the backup a new system starts from.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(extend("x-kubernetes-validations" = provider_rules(&[
    (
        "!has(self.backup) || !has(self.external)",
        "mysql.backup needs a MySQL run here (builtin or mariadb-operator); back up an external one where it runs",
    ),
    (
        "!has(self.restoreFrom) || !has(self.external)",
        "mysql.restoreFrom needs a MySQL run here (builtin or mariadb-operator)",
    ),
])))]
pub struct MysqlSpec {
    #[serde(flatten)]
    pub service: ProvidedServiceSpec<MysqlDefaults, MysqlProvider>,
    /// Scheduled logical backups of the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<MysqlBackupSpec>,
    /// The backup a new ChatSystem starts from: restored before the schema migration, then the search
    /// index is rebuilt from it. Ignored once the system has run (data is never restored over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<RestoreSpec>,
}

impl std::ops::Deref for MysqlSpec {
    type Target = ProvidedServiceSpec<MysqlDefaults, MysqlProvider>;
    fn deref(&self) -> &Self::Target {
        &self.service
    }
}

impl std::ops::DerefMut for MysqlSpec {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.service
    }
}

/// A CronJob's consistent dump of the database (or mariadb-operator's `Backup`), checksummed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MysqlBackupSpec {
    /// When to back up, as a CronJob's schedule in UTC (`0 3 * * *`: every day at 03:00).
    #[schemars(length(min = 9))]
    pub schedule: String,
    /// How many backups to keep: older ones are removed after each new one.
    #[serde(default = "default_backups_kept")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: i32,
    pub target: BackupTarget,
}

fn default_backups_kept() -> i32 {
    7
}

/// Where backups are written: a volume claim, or an S3-compatible bucket.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.volumeClaim) != has(self.s3)",
    "message": "name one backup target: volumeClaim or s3",
}]))]
pub struct BackupTarget {
    /// A volume claim `<name>-mysql-backups`, kept when the ChatSystem is deleted so that a new one
    /// can start from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim: Option<BackupClaim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Bucket>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupClaim {
    /// Requested size, a quantity such as `20Gi`.
    #[schemars(schema_with = "size_schema")]
    pub size: Quantity,
    /// Storage class of the volume; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// A bucket of S3 or of a store that speaks its API (MinIO, Ceph, GCS's interoperability).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Bucket {
    /// The endpoint's URL (`https://s3.eu-west-1.amazonaws.com`, `http://minio.storage:9000`).
    #[schemars(pattern(r"^https?://"))]
    pub endpoint: String,
    /// The bucket's name.
    #[schemars(length(min = 3))]
    pub bucket: String,
    /// Key prefix of the backups in the bucket (`chatsys/prod/`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// The bucket's region, for stores that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A Secret in the ChatSystem's namespace with keys `access-key-id` and `secret-access-key`.
    #[schemars(length(min = 1))]
    pub credentials_secret: String,
}

/// A backup to start from: on the backup volume claim (this system's, or the one named), or in a
/// bucket.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.claimName) || !has(self.s3)",
        "message": "restoreFrom names one place: claimName or s3",
    },
    {
        "rule": "self == oldSelf",
        "message": "restoreFrom cannot change: it is what the system started from",
    },
]))]
pub struct RestoreSpec {
    /// The backup's name, as `status.lastBackup.name` showed it.
    #[schemars(length(min = 1), pattern(r"^[a-z0-9][-a-z0-9.]*$"))]
    pub backup: String,
    /// The volume claim that holds it; by default `<name>-mysql-backups` (the backup claim of a
    /// system of the same name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// The bucket that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Bucket>,
}

/// The persistent volume of a backing service. Its class and size are fixed in the StatefulSet's
/// volume claim template, which Kubernetes does not let change: a class stays, and a size only grows
/// (the operator then expands the existing volume).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default, bound = "")]
#[schemars(bound = "D: ServiceDefaults")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0",
        "message": "storage.size may only grow: a volume cannot shrink",
    },
    {
        "rule": "has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
        "message": "storage.storageClassName cannot change: a volume keeps the class it was created with",
    },
]))]
pub struct StorageSpec<D: ServiceDefaults> {
    /// Requested size, a quantity such as `10Gi`.
    #[schemars(schema_with = "size_schema")]
    pub size: Quantity,
    /// Storage class of the volume; the cluster's default class when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Delete the volume with the StatefulSet: when the ChatSystem is deleted or this service becomes
    /// external. By default the volume is kept.
    pub delete_claims_on_removal: bool,
    #[serde(skip)]
    marker: std::marker::PhantomData<D>,
}

impl<D: ServiceDefaults> Default for StorageSpec<D> {
    fn default() -> Self {
        StorageSpec {
            size: Quantity(D::STORAGE.to_string()),
            storage_class_name: None,
            delete_claims_on_removal: false,
            marker: std::marker::PhantomData,
        }
    }
}

/// Connection details of a service the user runs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalService {
    /// Secret in the ChatSystem's namespace holding the connection URL.
    #[schemars(length(min = 1))]
    pub secret_name: String,
    /// Key of the URL in that Secret.
    #[serde(default = "default_url_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_url_key() -> String {
    "url".to_string()
}

/// The Kubernetes quantity syntax (`500m`, `1Gi`, `2`), as the API server's own types declare it.
const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

fn quantity_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-int-or-string": true,
    })
}

fn size_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "pattern": QUANTITY_PATTERN })
}

/// Requests and limits of a container, written as in a Pod. A compact schema instead of the full
/// `ResourceRequirements` one, whose long descriptions would be repeated for every component.
fn resources_schema(generator: &mut SchemaGenerator) -> Schema {
    let quantities = json_schema!({
        "type": "object",
        "additionalProperties": quantity_schema(generator),
    });
    let mut requests = quantities.clone();
    requests.insert(
        "description".to_string(),
        "What the scheduler reserves for each container: `cpu` and `memory`.".into(),
    );
    let mut limits = quantities;
    limits.insert(
        "description".to_string(),
        "The most each container may use: `cpu` and `memory`.".into(),
    );
    json_schema!({
        "description": "Compute resources of the containers, as in a Pod: `requests` and `limits` of `cpu` and `memory`.",
        "type": "object",
        "properties": {
            "requests": requests,
            "limits": limits,
        },
    })
}

/// Requests without limits: a limit the operator computes (see `BatchSpec::memory_limit`).
fn requests_only(cpu_request: &str, memory_request: &str) -> ResourceRequirements {
    ResourceRequirements {
        limits: None,
        ..resources(cpu_request, memory_request, "0")
    }
}

fn resources(cpu_request: &str, memory_request: &str, memory_limit: &str) -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect::<BTreeMap<_, _>>()
    };
    ResourceRequirements {
        requests: Some(quantities(&[
            ("cpu", cpu_request),
            ("memory", memory_request),
        ])),
        limits: Some(quantities(&[("memory", memory_limit)])),
        ..ResourceRequirements::default()
    }
}

/// What the operator last saw and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatSystemStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded` and `ReconciliationPaused`, for `kubectl wait`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Ready and desired replicas of each component the operator runs.
    #[serde(default)]
    pub components: BTreeMap<String, ComponentStatus>,
    /// Where clients reach the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The operator version whose default images the API and worker run (when they follow it); an
    /// operator upgrade moves the systems behind it one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The newest backup of MySQL that completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupRecord>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// What `mysql.restoreFrom.backup` names to start from it.
    pub name: String,
    /// When it completed.
    pub time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// One word for `kubectl get`: the conditions say the rest.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Every component has its desired replicas ready.
    Ready,
    /// Applied, and components are still rolling out.
    Progressing,
    /// Something could not be applied or the spec cannot be carried out; the conditions say what.
    Degraded,
    /// `spec.paused` is true: nothing is changed.
    Paused,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub ready_replicas: i32,
    pub desired_replicas: i32,
}
