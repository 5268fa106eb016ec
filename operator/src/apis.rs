//! The APIs other projects add to a cluster with their CustomResourceDefinitions (KEDA's and
//! prometheus-operator's), which the operator uses when they are served and reports when they are not.
//! Their types are written here as the project writes its own CRD's: the fields the operator sets.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
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
}

impl OptionalApi {
    pub const ALL: [OptionalApi; 2] = [OptionalApi::Keda, OptionalApi::PrometheusOperator];

    /// The project that installs it, as users know it.
    pub fn project(self) -> &'static str {
        match self {
            OptionalApi::Keda => "KEDA",
            OptionalApi::PrometheusOperator => "prometheus-operator",
        }
    }

    pub fn group_version(self) -> &'static str {
        match self {
            OptionalApi::Keda => "keda.sh/v1alpha1",
            OptionalApi::PrometheusOperator => "monitoring.coreos.com/v1",
        }
    }

    /// The resources the operator uses, each served by one CustomResourceDefinition.
    pub fn resources(self) -> &'static [&'static str] {
        match self {
            OptionalApi::Keda => &["scaledobjects", "triggerauthentications"],
            OptionalApi::PrometheusOperator => {
                &["servicemonitors", "podmonitors", "prometheusrules"]
            }
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

    /// The condition reason when it is needed and not served.
    pub fn missing_reason(self) -> &'static str {
        match self {
            OptionalApi::Keda => "KedaCRDsNotFound",
            OptionalApi::PrometheusOperator => "PrometheusOperatorCRDsNotFound",
        }
    }
}

/// The optional APIs a cluster serves.
pub type Served = BTreeSet<OptionalApi>;

/// What the cluster serves, asked again when older than `max_age`, so installing KEDA or
/// prometheus-operator is noticed without a restart. Watches of the optional kinds wait on
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
