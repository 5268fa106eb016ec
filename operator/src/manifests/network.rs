//! NetworkPolicies: each database the operator runs accepts connections only from this system's pods
//! that use it; the API accepts on its port from `apiFrom` (anyone by default) and on its metrics port
//! from `metricsFrom`; the worker accepts only scrapes of its metrics port. Egress is left open, and neither external services nor those another operator runs are touched.

use super::backing::{BackingService, RABBITMQ_PROMETHEUS_PORT, REDIS_CACHE_PORT};
use super::backup::{BACKUP_COMPONENT, RESTORE_COMPONENT};
use super::{Labels, Plan, WORKER_PORT, metadata, selector, selector_labels};
use crate::crd::{ChatSystem, ScalingMetric};
use crate::kinds::Child;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label KEDA's chart puts on its operator's pods, which read the queue's length.
const KEDA_OPERATOR_LABEL: (&str, &str) = ("app.kubernetes.io/name", "keda-operator");

pub fn build(cs: &ChatSystem, plan: &mut Plan) {
    let spec = &cs.spec.network_policy;
    if !spec.enabled {
        return;
    }
    // Only the databases this operator runs: another operator's pods carry that operator's labels
    // (which change between its releases), and need ingress of their own (replication between them,
    // their operator's health checks) that a policy written here could not know.
    for service in BackingService::ALL {
        if !service.runs_here(&cs.spec) {
            continue;
        }
        let mut rules = vec![rule(vec![components(cs, clients(service))], service.port())];
        if service == BackingService::Redis {
            rules.push(rule(
                vec![components(cs, &["api", "worker"])],
                REDIS_CACHE_PORT,
            ));
        }
        if service == BackingService::Rabbitmq {
            let autoscaling = &cs.spec.worker.autoscaling;
            if autoscaling.enabled && autoscaling.metric == ScalingMetric::QueueBacklog {
                rules.push(rule(vec![keda_operator()], service.port()));
            }
            if cs.spec.monitoring.enabled {
                rules.push(rule(spec.metrics_from.clone(), RABBITMQ_PROMETHEUS_PORT));
            }
        }
        plan.children
            .push(Child::NetworkPolicy(policy(cs, service.name(), rules)));
    }
    plan.children.push(Child::NetworkPolicy(policy(
        cs,
        "api",
        vec![
            rule(spec.api_from.clone(), super::app::API_PORT),
            rule(spec.metrics_from.clone(), super::app::API_METRICS_PORT),
        ],
    )));
    plan.children.push(Child::NetworkPolicy(policy(
        cs,
        "worker",
        vec![rule(spec.metrics_from.clone(), WORKER_PORT)],
    )));
}

/// The components of this system that connect to a backing service: the migration Job, the backups
/// and a restore only to MySQL; the reindex after a restore to MySQL and OpenSearch.
fn clients(service: BackingService) -> &'static [&'static str] {
    match service {
        BackingService::Mysql => &[
            "api",
            "worker",
            "migrate",
            BACKUP_COMPONENT,
            RESTORE_COMPONENT,
            "reindex",
        ],
        BackingService::Opensearch => &["api", "worker", "reindex"],
        BackingService::Redis | BackingService::Rabbitmq => &["api", "worker"],
    }
}

/// The pods of the named components of this system, in its namespace.
fn components(cs: &ChatSystem, names: &[&str]) -> NetworkPolicyPeer {
    let mut labels: Labels = selector_labels(cs, "");
    labels.remove("app.kubernetes.io/component");
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app.kubernetes.io/component".to_string(),
                operator: "In".to_string(),
                values: Some(names.iter().map(ToString::to_string).collect()),
            }]),
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn keda_operator() -> NetworkPolicyPeer {
    let (key, value) = KEDA_OPERATOR_LABEL;
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(selector(Labels::from([(
            key.to_string(),
            value.to_string(),
        )]))),
        ..NetworkPolicyPeer::default()
    }
}

/// Connections to `port` from `from`; an empty `from` is anyone, as Kubernetes reads an absent one.
fn rule(from: Vec<NetworkPolicyPeer>, port: i32) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: (!from.is_empty()).then_some(from),
        ports: Some(vec![NetworkPolicyPort {
            protocol: Some("TCP".to_string()),
            port: Some(IntOrString::Int(port)),
            ..NetworkPolicyPort::default()
        }]),
    }
}

fn policy(
    cs: &ChatSystem,
    component: &str,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: metadata(cs, &super::child_name(cs, component), component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(selector_labels(cs, component))),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}
