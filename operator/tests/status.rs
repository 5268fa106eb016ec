//! Status from what was applied: the conditions `kubectl wait` reads.

mod common;

use chatsys_operator::crd::{ComponentStatus, Phase};
use chatsys_operator::error::InvalidSpec;
use chatsys_operator::kinds::ChildKind;
use chatsys_operator::status::{self, Backups};
use common::fixture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use serde_json::json;

fn now() -> Timestamp {
    "2026-02-02T10:00:00Z".parse().expect("timestamp")
}

fn workload(kind: &str, component: &str, replicas: i64, ready: i64) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": { "name": format!("chat-{component}"), "generation": 2,
                      "labels": { "app.kubernetes.io/component": component } },
        "spec": { "replicas": replicas },
        "status": { "observedGeneration": 2, "readyReplicas": ready, "updatedReplicas": ready },
    }))
    .expect("workload")
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

#[test]
fn all_components_ready_means_ready_and_not_progressing() {
    let cs = fixture("defaults");
    let applied = vec![
        (ChildKind::Deployment, workload("Deployment", "api", 2, 2)),
        (
            ChildKind::StatefulSet,
            workload("StatefulSet", "mysql", 1, 1),
        ),
    ];
    let observed = observed(&cs, &applied, now());
    assert_eq!(observed.phase, Some(Phase::Ready));
    assert_eq!(observed.observed_generation, Some(1));
    assert_eq!(find(&observed.conditions, status::READY).status, "True");
    assert_eq!(
        find(&observed.conditions, status::PROGRESSING).status,
        "False"
    );
    assert_eq!(find(&observed.conditions, status::DEGRADED).status, "False");
    assert_eq!(find(&observed.conditions, status::PAUSED).status, "False");
    assert_eq!(
        observed.components["api"],
        ComponentStatus {
            ready_replicas: 2,
            desired_replicas: 2
        }
    );
    assert_eq!(
        observed.api_url.as_deref(),
        Some("http://chat-api.team.svc:8080")
    );
}

#[test]
fn a_component_short_of_replicas_is_named_while_progressing() {
    let cs = fixture("defaults");
    let applied = vec![
        (ChildKind::Deployment, workload("Deployment", "api", 3, 1)),
        (
            ChildKind::StatefulSet,
            workload("StatefulSet", "mysql", 1, 1),
        ),
    ];
    let observed = observed(&cs, &applied, now());
    assert_eq!(observed.phase, Some(Phase::Progressing));
    let ready = find(&observed.conditions, status::READY);
    assert_eq!(
        (ready.status.as_str(), ready.message.as_str()),
        ("False", "waiting for api")
    );
    assert_eq!(
        find(&observed.conditions, status::PROGRESSING).status,
        "True"
    );
    assert_eq!(
        observed.components["api"],
        ComponentStatus {
            ready_replicas: 1,
            desired_replicas: 3
        }
    );
}

/// The status observed from what was applied, with nothing refused, missing or waited for.
fn observed(
    cs: &chatsys_operator::crd::ChatSystem,
    applied: &[(ChildKind, DynamicObject)],
    at: Timestamp,
) -> chatsys_operator::crd::ChatSystemStatus {
    status::observed(cs, applied, &[], &[], &[], Backups::default(), at)
}

#[test]
fn a_transition_time_moves_only_when_the_condition_changes() {
    let mut cs = fixture("defaults");
    let applied = vec![(ChildKind::Deployment, workload("Deployment", "api", 2, 2))];
    cs.status = Some(observed(&cs, &applied, now()));
    let later: Timestamp = "2026-02-02T11:00:00Z".parse().expect("timestamp");
    let again = observed(&cs, &applied, later);
    assert_eq!(
        again,
        cs.status.clone().expect("status"),
        "an unchanged status is identical"
    );
    let degraded = status::degraded(
        &cs,
        &InvalidSpec(vec!["mysql: Secret db not found".into()]),
        later,
    );
    assert_eq!(
        find(&degraded.conditions, status::DEGRADED)
            .last_transition_time
            .0,
        later
    );
    assert_eq!(
        find(&degraded.conditions, status::PAUSED)
            .last_transition_time
            .0,
        now()
    );
}

#[test]
fn an_invalid_spec_is_degraded_with_the_reason() {
    let cs = fixture("external");
    let degraded = status::degraded(
        &cs,
        &InvalidSpec(vec!["mysql: Secret db not found".into()]),
        now(),
    );
    assert_eq!(degraded.phase, Some(Phase::Degraded));
    let condition = find(&degraded.conditions, status::DEGRADED);
    assert_eq!(condition.status, "True");
    assert_eq!(condition.reason, "InvalidSpec");
    assert_eq!(condition.message, "mysql: Secret db not found");
    assert_eq!(find(&degraded.conditions, status::READY).status, "False");
    assert_eq!(degraded.observed_generation, Some(2));
}

#[test]
fn a_paused_resource_keeps_what_was_observed_and_says_it_is_paused() {
    let cs = fixture("paused");
    let previous = cs.status.clone().expect("fixture has a status");
    let paused = status::paused(&cs, now());
    assert_eq!(paused.phase, Some(Phase::Paused));
    assert_eq!(paused.observed_generation, Some(7));
    assert_eq!(paused.components, previous.components);
    assert_eq!(paused.api_url, previous.api_url);
    assert_eq!(
        find(&paused.conditions, status::READY),
        find(&previous.conditions, status::READY)
    );
    let condition = find(&paused.conditions, status::PAUSED);
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "Paused")
    );
    assert_eq!(condition.last_transition_time.0, now());
    assert_eq!(
        paused
            .conditions
            .iter()
            .filter(|c| c.type_ == status::PAUSED)
            .count(),
        1
    );
}

#[test]
fn a_failed_reconcile_is_degraded_but_keeps_the_last_readiness() {
    let mut cs = fixture("defaults");
    let applied = vec![(ChildKind::Deployment, workload("Deployment", "api", 2, 2))];
    cs.status = Some(observed(&cs, &applied, now()));
    let failed = status::failed(&cs, "Kubernetes API: connection refused", now());
    assert_eq!(failed.phase, Some(Phase::Degraded));
    let degraded = find(&failed.conditions, status::DEGRADED);
    assert_eq!(
        (
            degraded.status.as_str(),
            degraded.reason.as_str(),
            degraded.message.as_str()
        ),
        (
            "True",
            "ReconcileFailed",
            "Kubernetes API: connection refused"
        )
    );
    assert_eq!(
        find(&failed.conditions, status::READY).status,
        "True",
        "the system may still serve"
    );
    assert_eq!(failed.conditions.len(), 4);
    assert_eq!(
        failed.components["api"],
        ComponentStatus {
            ready_replicas: 2,
            desired_replicas: 2
        }
    );
}

#[test]
fn a_failed_apply_degrades_the_status_naming_each_object() {
    let cs = fixture("defaults");
    let applied = vec![(ChildKind::Deployment, workload("Deployment", "api", 2, 2))];
    let failure =
        "StatefulSet chat-mysql: StatefulSet.apps \"chat-mysql\" is invalid: spec: Forbidden";
    let observed = status::observed(
        &cs,
        &applied,
        &[failure.to_string()],
        &[],
        &[],
        Backups::default(),
        now(),
    );
    assert_eq!(observed.phase, Some(Phase::Degraded));
    let degraded = find(&observed.conditions, status::DEGRADED);
    assert_eq!(
        (
            degraded.status.as_str(),
            degraded.reason.as_str(),
            degraded.message.as_str()
        ),
        ("True", "ApplyFailed", failure)
    );
    assert_eq!(find(&observed.conditions, status::READY).status, "True");
}

#[test]
fn events_mark_the_first_apply_readiness_degradation_and_pausing() {
    let mut cs = fixture("defaults");
    let ready = vec![(ChildKind::Deployment, workload("Deployment", "api", 2, 2))];
    let waiting = vec![(ChildKind::Deployment, workload("Deployment", "api", 2, 0))];
    let reasons = |notices: Vec<status::Notice>| -> Vec<String> {
        notices.into_iter().map(|n| n.reason).collect()
    };

    let first = observed(&cs, &waiting, now());
    assert_eq!(reasons(status::transitions(None, &first)), ["Created"]);
    cs.status = Some(first.clone());
    let again = observed(&cs, &waiting, now());
    assert!(
        status::transitions(Some(&first), &again).is_empty(),
        "nothing changed, nothing said"
    );

    let became_ready = observed(&cs, &ready, now());
    assert_eq!(
        reasons(status::transitions(Some(&again), &became_ready)),
        ["Ready"]
    );
    cs.status = Some(became_ready.clone());

    let failed = status::observed(
        &cs,
        &ready,
        &["Ingress chat-api: refused".to_string()],
        &[],
        &[],
        Backups::default(),
        now(),
    );
    let notices = status::transitions(Some(&became_ready), &failed);
    assert_eq!(notices.len(), 1);
    assert!(notices[0].warning);
    assert_eq!(
        (notices[0].reason.as_str(), notices[0].note.as_str()),
        ("ApplyFailed", "Ingress chat-api: refused")
    );

    let paused = status::paused(&cs, now());
    assert_eq!(
        reasons(status::transitions(Some(&became_ready), &paused)),
        ["Paused"]
    );
}
