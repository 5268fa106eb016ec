//! Status: what the operator observed, as conditions `kubectl wait` understands. Pure functions of the
//! resource, what was applied, and the current time.

use crate::crd::{ChatSystem, ChatSystemStatus, ComponentStatus};
use crate::manifests::{self, ChildKind, InvalidSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::Value;
use std::collections::BTreeMap;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const PAUSED: &str = "ReconciliationPaused";

/// Readiness of every Deployment and StatefulSet, from the objects the apply calls returned.
pub fn observed(
    cs: &ChatSystem,
    applied: &[(ChildKind, DynamicObject)],
    now: Timestamp,
) -> ChatSystemStatus {
    let mut components = BTreeMap::new();
    let mut rolled_out = true;
    for (kind, object) in applied {
        if !matches!(kind, ChildKind::Deployment | ChildKind::StatefulSet) {
            continue;
        }
        let component = object
            .labels()
            .get("app.kubernetes.io/component")
            .cloned()
            .unwrap_or_else(|| object.name_any());
        let (component_status, done) = workload_status(object);
        rolled_out &= done;
        components.insert(component, component_status);
    }
    let (ready, progressing) = if rolled_out {
        (
            condition(
                cs,
                now,
                READY,
                true,
                "AllComponentsReady",
                "every component has its desired replicas ready",
            ),
            condition(
                cs,
                now,
                PROGRESSING,
                false,
                "RolloutComplete",
                "every component is rolled out",
            ),
        )
    } else {
        let waiting: Vec<&str> = components
            .iter()
            .filter(|(_, c)| c.ready_replicas < c.desired_replicas)
            .map(|(name, _)| name.as_str())
            .collect();
        let message = if waiting.is_empty() {
            "new versions are rolling out".to_string()
        } else {
            format!("waiting for {}", waiting.join(", "))
        };
        (
            condition(cs, now, READY, false, "ComponentsNotReady", &message),
            condition(cs, now, PROGRESSING, true, "RollingOut", &message),
        )
    };
    ChatSystemStatus {
        phase: Some(if rolled_out { "Ready" } else { "Progressing" }.to_string()),
        observed_generation: cs.metadata.generation,
        conditions: vec![
            ready,
            progressing,
            condition(
                cs,
                now,
                DEGRADED,
                false,
                "SpecValid",
                "the spec is valid and applied",
            ),
            condition(
                cs,
                now,
                PAUSED,
                false,
                "NotPaused",
                "the operator reconciles this resource",
            ),
        ],
        components,
        api_url: Some(manifests::api_url(cs)),
    }
}

/// `(ready/desired replicas, whether the latest spec is fully rolled out and ready)`.
fn workload_status(object: &DynamicObject) -> (ComponentStatus, bool) {
    let int = |value: &Value| value.as_i64().and_then(|v| i32::try_from(v).ok());
    let spec = &object.data["spec"];
    let status = &object.data["status"];
    let desired = int(&spec["replicas"]).unwrap_or(1);
    let ready = int(&status["readyReplicas"]).unwrap_or(0);
    let updated = int(&status["updatedReplicas"]).unwrap_or(0);
    let observed = status["observedGeneration"].as_i64().unwrap_or(0);
    let generation = object.metadata.generation.unwrap_or(0);
    let done = ready >= desired && updated >= desired && observed >= generation;
    (
        ComponentStatus {
            ready_replicas: ready,
            desired_replicas: desired,
        },
        done,
    )
}

pub fn degraded(cs: &ChatSystem, invalid: &InvalidSpec, now: Timestamp) -> ChatSystemStatus {
    let message = invalid.to_string();
    let previous = cs.status.clone().unwrap_or_default();
    ChatSystemStatus {
        phase: Some("Degraded".to_string()),
        observed_generation: cs.metadata.generation,
        conditions: vec![
            condition(cs, now, READY, false, "InvalidSpec", &message),
            condition(
                cs,
                now,
                PROGRESSING,
                false,
                "InvalidSpec",
                "nothing is applied until the spec is fixed",
            ),
            condition(cs, now, DEGRADED, true, "InvalidSpec", &message),
            condition(
                cs,
                now,
                PAUSED,
                false,
                "NotPaused",
                "the operator reconciles this resource",
            ),
        ],
        components: previous.components,
        api_url: previous.api_url,
    }
}

/// A reconcile that failed part-way (an API call refused or unreachable): `Degraded` says why, and
/// `Ready` and `Progressing` keep what was last observed, since the running system may be unaffected.
pub fn failed(cs: &ChatSystem, message: &str, now: Timestamp) -> ChatSystemStatus {
    let previous = cs.status.clone().unwrap_or_default();
    let mut conditions: Vec<Condition> = previous
        .conditions
        .into_iter()
        .filter(|c| c.type_ != DEGRADED)
        .collect();
    conditions.push(condition(
        cs,
        now,
        DEGRADED,
        true,
        "ReconcileFailed",
        message,
    ));
    ChatSystemStatus {
        phase: Some("Degraded".to_string()),
        observed_generation: cs.metadata.generation,
        conditions,
        components: previous.components,
        api_url: previous.api_url,
    }
}

/// Keeps what was last observed, flagging that it is no longer being acted on.
pub fn paused(cs: &ChatSystem, now: Timestamp) -> ChatSystemStatus {
    let previous = cs.status.clone().unwrap_or_default();
    let mut conditions: Vec<Condition> = previous
        .conditions
        .into_iter()
        .filter(|c| c.type_ != PAUSED)
        .collect();
    conditions.push(condition(
        cs,
        now,
        PAUSED,
        true,
        "Paused",
        "spec.paused is true: nothing is changed",
    ));
    ChatSystemStatus {
        phase: Some("Paused".to_string()),
        observed_generation: cs.metadata.generation,
        conditions,
        components: previous.components,
        api_url: previous.api_url,
    }
}

/// A condition whose transition time moves only when its status changes, so an unchanged status
/// applies as a no-op and does not wake the controller again.
fn condition(
    cs: &ChatSystem,
    now: Timestamp,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let previous = cs
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match previous {
        Some(previous) if previous.status == status => previous.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: cs.metadata.generation,
        last_transition_time,
    }
}
