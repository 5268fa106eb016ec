//! The APIs other projects add to a cluster with their CustomResourceDefinitions (KEDA's,
//! prometheus-operator's, and those of the operators a backing service may be delegated to:
//! mariadb-operator, RabbitMQ's cluster-operator, the OpenSearch operator), which the operator uses when
//! they are served and reports when they are not. Their types are written here as the project writes
//! its own CRD's: the fields the operator sets.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, NodeAffinity, ResourceRequirements, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Client, CustomResource};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// An API group a cluster serves only when another project is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OptionalApi {
    Keda,
    PrometheusOperator,
    MariadbOperator,
    RabbitmqClusterOperator,
    OpensearchOperator,
}

impl OptionalApi {
    pub const ALL: [OptionalApi; 5] = [
        OptionalApi::Keda,
        OptionalApi::PrometheusOperator,
        OptionalApi::MariadbOperator,
        OptionalApi::RabbitmqClusterOperator,
        OptionalApi::OpensearchOperator,
    ];

    /// The project that installs it, as users know it.
    pub fn project(self) -> &'static str {
        match self {
            OptionalApi::Keda => "KEDA",
            OptionalApi::PrometheusOperator => "prometheus-operator",
            OptionalApi::MariadbOperator => "mariadb-operator",
            OptionalApi::RabbitmqClusterOperator => "RabbitMQ's cluster-operator",
            OptionalApi::OpensearchOperator => "the OpenSearch operator",
        }
    }

    pub fn group_version(self) -> &'static str {
        match self {
            OptionalApi::Keda => "keda.sh/v1alpha1",
            OptionalApi::PrometheusOperator => "monitoring.coreos.com/v1",
            OptionalApi::MariadbOperator => "k8s.mariadb.com/v1alpha1",
            OptionalApi::RabbitmqClusterOperator => "rabbitmq.com/v1beta1",
            OptionalApi::OpensearchOperator => "opensearch.opster.io/v1",
        }
    }

    /// The resources the operator uses, each served by one CustomResourceDefinition.
    pub fn resources(self) -> &'static [&'static str] {
        match self {
            OptionalApi::Keda => &["scaledobjects", "triggerauthentications"],
            OptionalApi::PrometheusOperator => {
                &["servicemonitors", "podmonitors", "prometheusrules"]
            }
            OptionalApi::MariadbOperator => &["mariadbs", "backups"],
            OptionalApi::RabbitmqClusterOperator => &["rabbitmqclusters"],
            OptionalApi::OpensearchOperator => &["opensearchclusters"],
        }
    }

    /// The names of those CustomResourceDefinitions, as `kubectl get crd` shows them.
    pub fn crd_names(self) -> Vec<String> {
        let group = self
            .group_version()
            .split_once('/')
            .map_or("", |(group, _)| group);
        self.resources()
            .iter()
            .map(|resource| format!("{resource}.{group}"))
            .collect()
    }

    /// Whether it runs a backing service chatsys may delegate to it.
    pub fn runs_a_backing_service(self) -> bool {
        matches!(
            self,
            OptionalApi::MariadbOperator
                | OptionalApi::RabbitmqClusterOperator
                | OptionalApi::OpensearchOperator
        )
    }

    /// The condition reason when it is needed and not served.
    pub fn missing_reason(self) -> &'static str {
        match self {
            OptionalApi::Keda => "KedaCRDsNotFound",
            OptionalApi::PrometheusOperator => "PrometheusOperatorCRDsNotFound",
            OptionalApi::MariadbOperator => "MariadbOperatorCRDsNotFound",
            OptionalApi::RabbitmqClusterOperator => "RabbitmqClusterOperatorCRDsNotFound",
            OptionalApi::OpensearchOperator => "OpensearchOperatorCRDsNotFound",
        }
    }
}

/// The optional APIs a cluster serves.
pub type Served = BTreeSet<OptionalApi>;

/// What the cluster serves, asked again when older than `max_age`, so installing KEDA, an operator
/// chatsys delegates to, or prometheus-operator is noticed without a restart. Watches of the optional kinds wait on
/// [`Discovery::subscribe`] until their API is served: a watch of an absent API would fail forever.
pub struct Discovery {
    served: watch::Sender<Served>,
    checked: Mutex<Option<Instant>>,
    max_age: Duration,
}

impl Discovery {
    pub fn new(max_age: Duration) -> Self {
        Discovery {
            served: watch::Sender::new(Served::new()),
            checked: Mutex::new(None),
            max_age,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Served> {
        self.served.subscribe()
    }

    /// The optional APIs served: an API counts only when every resource the operator uses is served.
    pub async fn served(&self, client: &Client) -> kube::Result<Served> {
        if self.checked().is_some_and(|at| at.elapsed() < self.max_age) {
            return Ok(self.served.borrow().clone());
        }
        let mut served = Served::new();
        for api in OptionalApi::ALL {
            match client.list_api_group_resources(api.group_version()).await {
                Ok(list) => {
                    let all = api
                        .resources()
                        .iter()
                        .all(|wanted| list.resources.iter().any(|r| r.name == *wanted));
                    if all {
                        served.insert(api);
                    }
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
        self.served.send_if_modified(|current| {
            let changed = *current != served;
            *current = served.clone();
            changed
        });
        *self.checked_guard() = Some(Instant::now());
        Ok(served)
    }

    fn checked(&self) -> Option<Instant> {
        *self.checked_guard()
    }

    fn checked_guard(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.checked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// KEDA's ScaledObject: scales a workload on its triggers through an HPA that KEDA owns.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "keda.sh",
    version = "v1alpha1",
    kind = "ScaledObject",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    pub scale_target_ref: ScaleTargetRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polling_interval: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_period: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advanced: Option<ScaledObjectAdvanced>,
    pub triggers: Vec<ScaleTrigger>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectAdvanced {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizontal_pod_autoscaler_config: Option<HorizontalPodAutoscalerConfig>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HorizontalPodAutoscalerConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// One scaler: its type, its settings (all strings, as KEDA reads them) and where its secrets are.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTrigger {
    #[serde(rename = "type")]
    pub type_: String,
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication_ref: Option<AuthenticationRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AuthenticationRef {
    pub name: String,
}

/// KEDA's TriggerAuthentication: the Secret keys a scaler reads its parameters from.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "keda.sh",
    version = "v1alpha1",
    kind = "TriggerAuthentication",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct TriggerAuthenticationSpec {
    pub secret_target_ref: Vec<SecretTargetRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SecretTargetRef {
    pub parameter: String,
    pub name: String,
    pub key: String,
}

/// prometheus-operator's ServiceMonitor: Prometheus scrapes the endpoints of the selected Services.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "ServiceMonitor",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    pub endpoints: Vec<ScrapeEndpoint>,
    /// Pod labels copied onto every series scraped.
    pub pod_target_labels: Vec<String>,
}

/// prometheus-operator's PodMonitor: Prometheus scrapes the selected pods directly.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "PodMonitor",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    pub selector: LabelSelector,
    pub pod_metrics_endpoints: Vec<ScrapeEndpoint>,
    /// Pod labels copied onto every series scraped.
    pub pod_target_labels: Vec<String>,
}

/// A port and path to scrape, in a ServiceMonitor or a PodMonitor: the port by name, or (for a pod
/// port that has none) by number.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScrapeEndpoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    pub path: String,
    pub interval: String,
}

/// prometheus-operator's PrometheusRule: alerting rules Prometheus loads.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "PrometheusRule",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
pub struct PrometheusRuleSpec {
    pub groups: Vec<RuleGroup>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<AlertRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AlertRule {
    pub alert: String,
    pub expr: String,
    #[serde(rename = "for")]
    pub for_: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A reference to one key of a Secret, as mariadb-operator writes it; `generate: false` since the
/// Secret is chatsys's own (see `manifests::delegated`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct GeneratedSecretKeyRef {
    pub name: String,
    pub key: String,
    pub generate: bool,
}

/// A reference to one key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// mariadb-operator's MariaDB: a StatefulSet of MariaDB servers, here replicated (a primary and
/// replicas, with automatic failover), and the database and user chatsys uses.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "k8s.mariadb.com",
    version = "v1alpha1",
    kind = "MariaDB",
    plural = "mariadbs",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct MariaDBSpec {
    /// Unset: mariadb-operator's own default MariaDB image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    pub replicas: i32,
    pub replication: MariaDbReplication,
    pub root_password_secret_key_ref: GeneratedSecretKeyRef,
    pub username: String,
    pub password_secret_key_ref: GeneratedSecretKeyRef,
    pub database: String,
    pub my_cnf: String,
    pub storage: MariaDbStorage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_metadata: Option<PodMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    pub affinity: MariaDbAffinity,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MariaDbReplication {
    pub enabled: bool,
    pub primary: MariaDbPrimary,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MariaDbPrimary {
    /// The operator promotes a replica when the primary fails.
    pub auto_failover: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MariaDbStorage {
    pub size: Quantity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    pub pvc_retention_policy: StatefulSetPersistentVolumeClaimRetentionPolicy,
}

/// mariadb-operator's own affinity: its anti-affinity switch spreads the servers over nodes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MariaDbAffinity {
    pub anti_affinity_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,
}

/// Labels and annotations of a project's pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PodMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// mariadb-operator's Backup: logical backups of a MariaDB on a schedule, kept for `maxRetention`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "k8s.mariadb.com",
    version = "v1alpha1",
    kind = "Backup",
    plural = "backups",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    pub maria_db_ref: NameRef,
    pub schedule: BackupSchedule,
    /// A duration (`168h`): backups older than it are removed.
    pub max_retention: String,
    pub compression: String,
    pub storage: BackupStorage,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct NameRef {
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct BackupSchedule {
    pub cron: String,
}

/// Where the backups go: exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct BackupStorage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<BackupVolume>,
}

/// A bucket, as mariadb-operator addresses it: `endpoint` is a host and port, TLS is said apart.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    pub bucket: String,
    pub endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub access_key_id_secret_key_ref: SecretKeyRef,
    pub secret_access_key_secret_key_ref: SecretKeyRef,
    pub tls: S3Tls,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct S3Tls {
    pub enabled: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupVolume {
    pub persistent_volume_claim: ClaimRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRef {
    pub claim_name: String,
}

/// RabbitMQ's cluster-operator's RabbitmqCluster: a StatefulSet of clustered brokers, with the
/// default user's credentials in a Secret it creates.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "rabbitmq.com",
    version = "v1beta1",
    kind = "RabbitmqCluster",
    plural = "rabbitmqclusters",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct RabbitmqClusterSpec {
    pub replicas: i32,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    pub resources: ResourceRequirements,
    pub persistence: RabbitmqPersistence,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RabbitmqPersistence {
    pub storage: Quantity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// The OpenSearch operator's OpenSearchCluster: node pools, each a StatefulSet, behind one Service.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "opensearch.opster.io",
    version = "v1",
    kind = "OpenSearchCluster",
    plural = "opensearchclusters",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct OpenSearchClusterSpec {
    pub general: OpenSearchGeneral,
    pub node_pools: Vec<OpenSearchNodePool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenSearchGeneral {
    pub service_name: String,
    pub version: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    pub http_port: i32,
    #[serde(rename = "setVMMaxMapCount")]
    pub set_vm_max_map_count: bool,
    /// Entries of `opensearch.yml`.
    pub additional_config: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenSearchNodePool {
    pub component: String,
    pub replicas: i32,
    pub roles: Vec<String>,
    pub disk_size: Quantity,
    pub persistence: OpenSearchPersistence,
    /// The JVM's options, where the heap is sized.
    pub jvm: String,
    pub resources: ResourceRequirements,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct OpenSearchPersistence {
    pub pvc: OpenSearchClaim,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenSearchClaim {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    pub access_modes: Vec<String>,
}
