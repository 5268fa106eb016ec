//! Monitoring through prometheus-operator: a ServiceMonitor or PodMonitor per component that serves
//! metrics (the API, the worker, and the managed RabbitMQ's built-in Prometheus plugin), and a
//! PrometheusRule with the alerts an on-call person needs. Each alert's runbook is in `docs/runbooks.md`.

use super::backing::{BackingService, RABBITMQ_PROMETHEUS_PORT};
use super::{Inputs, MissingApi, Plan, metadata, selector, selector_labels};
use crate::apis::{
    AlertRule, OptionalApi, PodMonitor, PodMonitorSpec, PrometheusRule, PrometheusRuleSpec,
    RuleGroup, ScrapeEndpoint, ServiceMonitor, ServiceMonitorSpec,
};
use crate::crd::{ChatSystem, ScrapeKind};
use crate::kinds::Child;
use crate::metrics::{CHATSYSTEM_READY, MYSQL_BACKUP_LAST, MYSQL_BACKUP_MAX_AGE};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Pod labels copied onto every scraped series: the alerts and the dashboard select one system's
/// series by them, whichever monitor kind scraped them.
const TARGET_LABELS: [&str; 2] = ["app.kubernetes.io/instance", "app.kubernetes.io/component"];

pub fn build(cs: &ChatSystem, inputs: &Inputs, plan: &mut Plan) {
    let monitoring = &cs.spec.monitoring;
    if !monitoring.enabled {
        return;
    }
    if !inputs.served.contains(&OptionalApi::PrometheusOperator) {
        plan.missing.push(MissingApi {
            api: OptionalApi::PrometheusOperator,
            needed_for: "monitoring.enabled",
        });
        return;
    }
    for target in targets(cs) {
        let child = match monitoring.scrape_with {
            ScrapeKind::ServiceMonitor => Child::ServiceMonitor(service_monitor(cs, &target)),
            ScrapeKind::PodMonitor => Child::PodMonitor(pod_monitor(cs, &target)),
        };
        plan.children.push(child);
    }
    if monitoring.alerts {
        plan.children.push(Child::PrometheusRule(rule(cs)));
    }
}

/// A component whose pods serve metrics.
struct Target {
    component: &'static str,
    /// The port's name on the Service (and, where it has one, on the pod).
    port: &'static str,
    /// The pod's port by number, where the container does not name it.
    pod_port_number: Option<i32>,
}

fn targets(cs: &ChatSystem) -> Vec<Target> {
    let mut targets = vec![
        Target {
            component: "api",
            port: "metrics",
            pod_port_number: None,
        },
        Target {
            component: "worker",
            port: "http",
            pod_port_number: None,
        },
    ];
    if BackingService::Rabbitmq.runs_here(&cs.spec) {
        targets.push(Target {
            component: "rabbitmq",
            port: "prometheus",
            pod_port_number: Some(RABBITMQ_PROMETHEUS_PORT),
        });
    }
    targets
}

/// The monitors' and the rule's metadata: the common labels and the user's.
fn monitoring_metadata(cs: &ChatSystem, component: &str) -> ObjectMeta {
    let name = super::child_name(cs, component);
    let mut meta = metadata(cs, &name, component);
    if let Some(labels) = meta.labels.as_mut() {
        labels.extend(cs.spec.monitoring.labels.clone());
    }
    meta
}

fn target_labels() -> Vec<String> {
    TARGET_LABELS.iter().map(ToString::to_string).collect()
}

fn service_monitor(cs: &ChatSystem, target: &Target) -> ServiceMonitor {
    ServiceMonitor {
        metadata: monitoring_metadata(cs, target.component),
        spec: ServiceMonitorSpec {
            selector: selector(selector_labels(cs, target.component)),
            endpoints: vec![ScrapeEndpoint {
                port: Some(target.port.to_string()),
                target_port: None,
                path: "/metrics".to_string(),
                interval: cs.spec.monitoring.interval.clone(),
            }],
            pod_target_labels: target_labels(),
        },
    }
}

fn pod_monitor(cs: &ChatSystem, target: &Target) -> PodMonitor {
    let (port, target_port) = match target.pod_port_number {
        Some(number) => (None, Some(IntOrString::Int(number))),
        None => (Some(target.port.to_string()), None),
    };
    PodMonitor {
        metadata: monitoring_metadata(cs, target.component),
        spec: PodMonitorSpec {
            selector: selector(selector_labels(cs, target.component)),
            pod_metrics_endpoints: vec![ScrapeEndpoint {
                port,
                target_port,
                path: "/metrics".to_string(),
                interval: cs.spec.monitoring.interval.clone(),
            }],
            pod_target_labels: target_labels(),
        },
    }
}

fn rule(cs: &ChatSystem) -> PrometheusRule {
    PrometheusRule {
        metadata: monitoring_metadata(cs, "alerts"),
        spec: PrometheusRuleSpec {
            groups: vec![RuleGroup {
                name: format!(
                    "chatsys.{}",
                    cs.metadata.name.as_deref().unwrap_or_default()
                ),
                rules: alert_rules(cs),
            }],
        },
    }
}

/// The alerts of one system, each selecting its series by namespace and instance.
pub fn alert_rules(cs: &ChatSystem) -> Vec<AlertRule> {
    let namespace = super::namespace(cs);
    let name = cs.metadata.name.clone().unwrap_or_default();
    let of = |component: &str| {
        format!(
            r#"namespace="{namespace}",app_kubernetes_io_instance="{name}",app_kubernetes_io_component="{component}""#
        )
    };
    let worker = of("worker");
    let api = of("api");
    let by = "by (namespace, app_kubernetes_io_instance)";
    let commands = format!(r#"chatsys_queue_messages{{{worker},queue="commands"}}"#);
    let mut alerts = vec![
        (
            "ChatsysQueueBacklogGrowing",
            format!("min {by} (deriv({commands}[10m])) > 0"),
            "10m",
            "warning",
            "The command queue has grown for 10 minutes",
            "Chats and messages are accepted faster than the workers store them: they appear late in lists and search.",
        ),
        (
            "ChatsysDeadLetters",
            format!(r#"max {by} (chatsys_queue_messages{{{worker},queue="dead_letters"}}) > 0"#),
            "5m",
            "warning",
            "Commands are in the dead-letter queue",
            "Commands the worker refused after every retry wait in the dead-letter queue: they are not stored until someone acts.",
        ),
        (
            "ChatsysApiErrors",
            format!(
                r#"sum {by} (rate(http_requests_total{{{api},status=~"5.."}}[5m])) / sum {by} (rate(http_requests_total{{{api}}}[5m])) > 0.05"#
            ),
            "5m",
            "critical",
            "Over 5% of API requests fail with a 5xx status",
            "Clients get server errors: a backing service is unreachable or the API is overloaded.",
        ),
        (
            "ChatsysWorkerNotAcknowledging",
            format!(
                "sum {by} (rate(chatsys_worker_commands_total{{{worker}}}[5m])) == 0 and max {by} ({commands}) > 0"
            ),
            "10m",
            "critical",
            "Commands wait and no worker settles any",
            "The workers consume nothing although commands wait: new chats and messages are not stored.",
        ),
        (
            "ChatsysNotReady",
            format!(
                r#"max by (chatsystem_namespace, chatsystem) ({CHATSYSTEM_READY}{{chatsystem_namespace="{namespace}",chatsystem="{name}"}}) == 0"#
            ),
            "15m",
            "critical",
            "The ChatSystem has not been Ready for 15 minutes",
            "A component lacks ready replicas, or the operator cannot apply the spec: kubectl describe chatsystem says which.",
        ),
    ];
    if cs.spec.mysql.backup.is_some() {
        let of_system = format!(r#"chatsystem_namespace="{namespace}",chatsystem="{name}""#);
        let by_system = "by (chatsystem_namespace, chatsystem)";
        alerts.push((
            "ChatsysBackupOverdue",
            format!(
                "max {by_system} (time() - {MYSQL_BACKUP_LAST}{{{of_system}}}) > max {by_system} ({MYSQL_BACKUP_MAX_AGE}{{{of_system}}})"
            ),
            "10m",
            "critical",
            "No MySQL backup has completed for twice the schedule's interval",
            "The backup CronJob's runs fail or do not start: the data written since the newest backup would be lost with the database's volume. kubectl get jobs -l app.kubernetes.io/component=mysql-backup.",
        ));
    }
    let runbooks = cs.spec.monitoring.runbook_base_url.as_deref();
    alerts
        .into_iter()
        .map(|(alert, expr, for_, severity, summary, description)| {
            let mut annotations = BTreeMap::from([
                ("summary".to_string(), summary.to_string()),
                (
                    "description".to_string(),
                    format!("{description} ChatSystem {namespace}/{name}."),
                ),
            ]);
            if let Some(base) = runbooks {
                annotations.insert(
                    "runbook_url".to_string(),
                    format!("{base}#{}", alert.to_lowercase()),
                );
            }
            AlertRule {
                alert: alert.to_string(),
                expr,
                for_: for_.to_string(),
                labels: BTreeMap::from([("severity".to_string(), severity.to_string())]),
                annotations,
            }
        })
        .collect()
}
