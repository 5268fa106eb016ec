//! Status: what the operator observed, as conditions `kubectl wait` understands. Pure functions of the
//! resource, what was applied, and the current time.

use crate::crd::{BackupRecord, ChatSystem, ChatSystemStatus, ComponentStatus, Phase};
use crate::error::InvalidSpec;
use crate::kinds::ChildKind;
use crate::manifests::{self, MissingApi, backup};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::Value;
use std::collections::BTreeMap;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const PAUSED: &str = "ReconciliationPaused";

/// Readiness of every Deployment and StatefulSet, and of every backing service another operator runs,
/// from the objects the apply calls returned, whatever
/// could not be applied (each failure names its object and the field the API server refused), and
/// the optional APIs the spec needs that the cluster does not serve.
pub fn observed(
    cs: &ChatSystem,
    applied: &[(ChildKind, DynamicObject)],
    failures: &[String],
    missing: &[MissingApi],
    waiting_for: &[String],
    backups: Backups,
    now: Timestamp,
) -> ChatSystemStatus {
    let mut components = BTreeMap::new();
    let mut rolled_out = waiting_for.is_empty();
    for (kind, object) in applied {
        let (component_status, done) = match kind {
            ChildKind::Deployment | ChildKind::StatefulSet => workload_status(object),
            ChildKind::MariaDB | ChildKind::RabbitmqCluster | ChildKind::OpenSearchCluster => {
                delegated_status(*kind, object)
            }
            _ => continue,
        };
        let component = object
            .labels()
            .get("app.kubernetes.io/component")
            .cloned()
            .unwrap_or_else(|| object.name_any());
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
        let waiting: Vec<&str> = waiting_for
            .iter()
            .map(String::as_str)
            .chain(
                components
                    .iter()
                    .filter(|(_, c)| c.ready_replicas < c.desired_replicas)
                    .map(|(name, _)| name.as_str()),
            )
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
    let problems: Vec<String> = failures
        .iter()
        .cloned()
        .chain(missing.iter().map(ToString::to_string))
        .chain(backups.overdue.clone())
        .collect();
    let degraded = match (failures.is_empty(), missing.first()) {
        (true, None) if backups.overdue.is_some() => condition(
            cs,
            now,
            DEGRADED,
            true,
            "BackupOverdue",
            &problems.join("; "),
        ),
        (true, None) => condition(
            cs,
            now,
            DEGRADED,
            false,
            "SpecValid",
            "the spec is valid and applied",
        ),
        (true, Some(first)) => condition(
            cs,
            now,
            DEGRADED,
            true,
            first.api.missing_reason(),
            &problems.join("; "),
        ),
        (false, _) => condition(cs, now, DEGRADED, true, "ApplyFailed", &problems.join("; ")),
    };
    let phase = match (problems.is_empty(), rolled_out) {
        (false, _) => Phase::Degraded,
        (true, true) => Phase::Ready,
        (true, false) => Phase::Progressing,
    };
    ChatSystemStatus {
        phase: Some(phase),
        observed_generation: cs.metadata.generation,
        conditions: vec![
            ready,
            progressing,
            degraded,
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
        version: cs.status.as_ref().and_then(|s| s.version.clone()),
        last_backup: backups.last,
    }
}

/// MySQL's backups, as the status reports them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backups {
    pub last: Option<BackupRecord>,
    /// What the age of the backups is measured by, while backups are asked for.
    pub clock: Option<BackupClock>,
    /// Why they are overdue, if they are.
    pub overdue: Option<String>,
}

/// The newest backup's time (or the schedule's start, before the first) and the age past which it is
/// overdue: what the status judges and the `ChatsysBackupOverdue` alert's gauges carry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackupClock {
    pub newest: Timestamp,
    pub max_age: SignedDuration,
}

impl Backups {
    /// `last` is the newest backup that completed; `scheduled_since` when the schedule began (the
    /// backup CronJob's creation), the reference before the first backup. Overdue when the newer of
    /// the two is older than twice the schedule's longest interval: one run may fail and be retried
    /// at the next before anyone is told.
    pub fn of(
        cs: &ChatSystem,
        last: Option<BackupRecord>,
        scheduled_since: Option<&Time>,
        now: Timestamp,
    ) -> Backups {
        let clock = cs.spec.mysql.backup.as_ref().and_then(|backup| {
            let interval = backup::longest_interval(&backup.schedule).ok()?;
            let newest = last.as_ref().map(|b| &b.time).or(scheduled_since)?;
            Some(BackupClock {
                newest: newest.0,
                max_age: interval * 2,
            })
        });
        let overdue = clock.and_then(|clock| {
            let age = now.duration_since(clock.newest);
            let interval = rounded(clock.max_age / 2);
            let runs = backup::BACKUP_COMPONENT;
            (age > clock.max_age).then(|| match &last {
                Some(last) => format!(
                    "the newest MySQL backup, {}, completed {} ago: over twice the schedule's interval ({interval}); kubectl get jobs -l app.kubernetes.io/component={runs}",
                    last.name,
                    rounded(age),
                ),
                None => format!(
                    "no MySQL backup has completed in the {} since the schedule began: over twice its interval ({interval}); kubectl get jobs -l app.kubernetes.io/component={runs}",
                    rounded(age),
                ),
            })
        });
        Backups {
            last,
            clock,
            overdue,
        }
    }
}

/// A duration to the minute, as people read it (`26h 5m`).
fn rounded(duration: SignedDuration) -> String {
    let minutes = duration.as_secs() / 60;
    match (minutes / 60, minutes % 60) {
        (0, minutes) => format!("{minutes}m"),
        (hours, 0) => format!("{hours}h"),
        (hours, minutes) => format!("{hours}h {minutes}m"),
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

/// `(ready/desired replicas, whether it is ready)` of a service another operator runs, from the
/// status that operator writes. Their statuses say whether the whole is ready, not how many pods are:
/// the count is all or none.
/// - MariaDB: the `Ready` condition (mariadb-operator `api/v1alpha1/condition_types.go`,
///   `ConditionTypeReady`), true once the primary and replicas are ready and replicating.
/// - RabbitmqCluster: the `AllReplicasReady` condition (rabbitmq/cluster-operator
///   `internal/status/all_replicas_ready.go`), of the generation it last reconciled
///   (`status.observedGeneration`, controllers/rabbitmqcluster_controller.go).
/// - OpenSearchCluster: `status.phase` `RUNNING` and `status.health` `green`
///   (opensearch-k8s-operator `api/opensearch.org/v1/opensearch_types.go`, `PhaseRunning` and
///   `OpenSearchGreenHealth`): every shard and its replicas allocated.
fn delegated_status(kind: ChildKind, object: &DynamicObject) -> (ComponentStatus, bool) {
    let spec = &object.data["spec"];
    let status = &object.data["status"];
    let desired = match kind {
        ChildKind::OpenSearchCluster => spec["nodePools"]
            .as_array()
            .map(|pools| pools.iter().filter_map(|p| p["replicas"].as_i64()).sum())
            .unwrap_or(0),
        _ => spec["replicas"].as_i64().unwrap_or(1),
    };
    let condition_true = |type_: &str| {
        status["conditions"].as_array().is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == type_ && c["status"] == "True")
        })
    };
    let ready = match kind {
        ChildKind::MariaDB => condition_true("Ready"),
        ChildKind::RabbitmqCluster => {
            let observed = status["observedGeneration"].as_i64().unwrap_or(0);
            condition_true("AllReplicasReady")
                && observed >= object.metadata.generation.unwrap_or(0)
        }
        _ => status["phase"] == "RUNNING" && status["health"] == "green",
    };
    let desired = i32::try_from(desired).unwrap_or(0);
    (
        ComponentStatus {
            ready_replicas: if ready { desired } else { 0 },
            desired_replicas: desired,
        },
        ready,
    )
}

pub fn degraded(cs: &ChatSystem, invalid: &InvalidSpec, now: Timestamp) -> ChatSystemStatus {
    let message = invalid.to_string();
    let previous = cs.status.clone().unwrap_or_default();
    ChatSystemStatus {
        phase: Some(Phase::Degraded),
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
        version: previous.version,
        last_backup: previous.last_backup,
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
        phase: Some(Phase::Degraded),
        observed_generation: cs.metadata.generation,
        conditions,
        components: previous.components,
        api_url: previous.api_url,
        version: previous.version,
        last_backup: previous.last_backup,
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
        phase: Some(Phase::Paused),
        observed_generation: cs.metadata.generation,
        conditions,
        components: previous.components,
        api_url: previous.api_url,
        version: previous.version,
        last_backup: previous.last_backup,
    }
}

/// An event to publish for a change of status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// What changed between the last status and the next one that a user wants to see in
/// `kubectl describe`: the first reconcile, becoming Ready, becoming Degraded or degraded for
/// another reason, and pausing.
pub fn transitions(previous: Option<&ChatSystemStatus>, next: &ChatSystemStatus) -> Vec<Notice> {
    let find = |status: Option<&ChatSystemStatus>, type_: &str| {
        status.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_).cloned())
    };
    let is_true = |c: &Option<Condition>| c.as_ref().is_some_and(|c| c.status == "True");
    let mut notices = Vec::new();
    let applied = match next.phase {
        Some(Phase::Ready | Phase::Progressing) => true,
        Some(Phase::Degraded) => {
            // Degraded after applying: something was refused, or an optional API is missing.
            find(Some(next), DEGRADED)
                .is_some_and(|c| !matches!(c.reason.as_str(), "InvalidSpec" | "ReconcileFailed"))
        }
        Some(Phase::Paused) | None => false,
    };
    if previous.is_none_or(|p| p.phase.is_none()) && applied {
        notices.push(Notice {
            warning: false,
            reason: "Created".to_string(),
            note: "applied the chat system's workloads".to_string(),
        });
    }
    let (was_ready, ready) = (find(previous, READY), find(Some(next), READY));
    if is_true(&ready) && !is_true(&was_ready) {
        notices.push(Notice {
            warning: false,
            reason: "Ready".to_string(),
            note: "every component has its desired replicas ready".to_string(),
        });
    }
    let (was_degraded, degraded) = (find(previous, DEGRADED), find(Some(next), DEGRADED));
    if let Some(degraded) = degraded.filter(|c| c.status == "True")
        && was_degraded.is_none_or(|w| w.status != "True" || w.message != degraded.message)
    {
        notices.push(Notice {
            warning: true,
            reason: degraded.reason,
            note: degraded.message,
        });
    }
    let (was_paused, paused) = (find(previous, PAUSED), find(Some(next), PAUSED));
    if is_true(&paused) && !is_true(&was_paused) {
        notices.push(Notice {
            warning: false,
            reason: "Paused".to_string(),
            note: "spec.paused is true: the operator changes nothing".to_string(),
        });
    }
    notices
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

/// An operator upgrade held back for this system: Progressing says why, and the running version
/// stays (it is still Ready if it was).
pub fn upgrade_queued(
    status: &mut ChatSystemStatus,
    cs: &ChatSystem,
    moving: usize,
    now: Timestamp,
) {
    let message = format!(
        "keeping the running images until its turn to move to chatsys {}: {moving} system(s) moving now",
        crate::crd::VERSION
    );
    let queued = condition(cs, now, PROGRESSING, true, "UpgradeQueued", &message);
    match status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == PROGRESSING)
    {
        Some(progressing) => *progressing = queued,
        None => status.conditions.push(queued),
    }
}
