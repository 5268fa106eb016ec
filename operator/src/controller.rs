//! The reconcile pipeline: dereference → validate → build → apply → delete orphans → status.
//! Only dereference, apply, orphan deletion and status talk to the API server; build is pure.

use crate::crd::{ChatSystem, ChatSystemStatus, ComponentStatus};
use crate::error::{Error, Result};
use crate::manifests::{
    self, BackingService, ChildKind, Credentials, Inputs, InvalidSpec, MANAGER, Manifest,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How often a ready system is checked again without any change.
const READY_RECHECK: Duration = Duration::from_secs(300);
/// How often a system still rolling out is checked again.
const PROGRESS_RECHECK: Duration = Duration::from_secs(15);
/// An invalid spec may become valid by a Secret the operator does not watch being created.
const INVALID_RECHECK: Duration = Duration::from_secs(60);
const ERROR_BACKOFF_START: Duration = Duration::from_secs(5);
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(300);

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// Consecutive failures per resource, for the exponential backoff.
    failures: Mutex<HashMap<ObjectRef<ChatSystem>, u32>>,
}

impl Context {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_string(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ChatSystem>, u32>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs the controller until the shutdown future completes.
pub async fn run(
    client: Client,
    instance: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let context = Arc::new(Context::new(client.clone(), instance));
    let config = watcher::Config::default().any_semantic();
    Controller::new(Api::<ChatSystem>::all(client.clone()), config.clone())
        .owns(Api::<Secret>::all(client.clone()), config.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), config.clone())
        .owns(Api::<Service>::all(client.clone()), config.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), config.clone())
        .owns(Api::<Deployment>::all(client.clone()), config.clone())
        .owns(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            config.clone(),
        )
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            config.clone(),
        )
        .owns(Api::<Ingress>::all(client), config)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "controller stream");
            }
        })
        .await;
}

pub async fn reconcile(cs: Arc<ChatSystem>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    metrics::counter!("chatsys_operator_reconciles_total").increment(1);
    let result = reconcile_pipeline(&cs, &ctx).await;
    metrics::histogram!("chatsys_operator_reconcile_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures().remove(&ObjectRef::from_obj(cs.as_ref()));
    }
    result
}

/// Requeues with a backoff that doubles per consecutive failure of the same resource.
pub fn error_policy(cs: Arc<ChatSystem>, error: &Error, ctx: Arc<Context>) -> Action {
    metrics::counter!("chatsys_operator_reconcile_errors_total", "error" => error.metric_label())
        .increment(1);
    let mut failures = ctx.failures();
    let count = failures
        .entry(ObjectRef::from_obj(cs.as_ref()))
        .or_insert(0);
    let delay = ERROR_BACKOFF_START
        .saturating_mul(2u32.saturating_pow(*count))
        .min(ERROR_BACKOFF_MAX);
    *count = count.saturating_add(1);
    warn!(name = %cs.name_any(), namespace = ?cs.namespace(), %error, retry_in_secs = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_pipeline(cs: &ChatSystem, ctx: &Context) -> Result<Action> {
    let namespace = cs
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(cs.name_any()))?;
    if cs.spec.paused {
        info!(name = %cs.name_any(), %namespace, "reconciliation paused");
        write_status(&ctx.client, cs, paused_status(cs)).await?;
        return Ok(Action::await_change());
    }
    let inputs = dereference(&ctx.client, cs, &namespace).await?;
    let manifests = match manifests::build(cs, &inputs) {
        Ok(manifests) => manifests,
        Err(invalid) => {
            warn!(name = %cs.name_any(), %namespace, %invalid, "invalid spec");
            publish_invalid_spec(ctx, cs, &invalid).await?;
            write_status(&ctx.client, cs, degraded_status(cs, &invalid)).await?;
            return Ok(Action::requeue(INVALID_RECHECK));
        }
    };
    let applied = apply(&ctx.client, &namespace, &manifests).await?;
    delete_orphans(&ctx.client, cs, &namespace, &manifests).await?;
    let status = observed_status(cs, &applied);
    let ready = status.phase.as_deref() == Some("Ready");
    write_status(&ctx.client, cs, status).await?;
    Ok(Action::requeue(if ready {
        READY_RECHECK
    } else {
        PROGRESS_RECHECK
    }))
}

/// Reads the Secrets the resource refers to: existing credentials are reused, never regenerated.
pub async fn dereference(client: &Client, cs: &ChatSystem, namespace: &str) -> Result<Inputs> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut inputs = Inputs::default();
    for service in BackingService::ALL {
        if let Some(external) = service.external(&cs.spec) {
            if let Some(secret) = secrets.get_opt(&external.secret_name).await? {
                inputs
                    .external_secret_keys
                    .insert(external.secret_name.clone(), secret_keys(&secret));
            }
        } else if !service.credential_keys().is_empty() {
            let credentials = match secrets.get_opt(&service.credentials_secret(cs)).await? {
                Some(secret) => Credentials::Existing {
                    keys: secret_keys(&secret),
                },
                None => Credentials::Generated(manifests::generate_credentials(service)),
            };
            inputs.credentials.insert(service, credentials);
        }
    }
    Ok(inputs)
}

fn secret_keys(secret: &Secret) -> BTreeSet<String> {
    let data = secret.data.iter().flat_map(|d| d.keys());
    let string_data = secret.string_data.iter().flat_map(|d| d.keys());
    data.chain(string_data).cloned().collect()
}

/// Server-side applies every manifest under one field manager, taking over conflicting fields.
async fn apply(
    client: &Client,
    namespace: &str,
    manifests: &[Manifest],
) -> Result<Vec<(ChildKind, DynamicObject)>> {
    let params = PatchParams::apply(MANAGER).force();
    let mut applied = Vec::with_capacity(manifests.len());
    for manifest in manifests {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &manifest.kind.api_resource());
        let object = api
            .patch(manifest.name(), &params, &Patch::Apply(&manifest.object))
            .await?;
        applied.push((manifest.kind, object));
    }
    Ok(applied)
}

/// Deletes what this resource owns but no longer needs. Credentials Secrets stay, and volumes are never
/// touched (a StatefulSet's claims follow its retention policy).
async fn delete_orphans(
    client: &Client,
    cs: &ChatSystem,
    namespace: &str,
    manifests: &[Manifest],
) -> Result<()> {
    let uid = cs.uid();
    let list = ListParams::default().labels(&manifests::children_selector(cs));
    for kind in ChildKind::ALL
        .into_iter()
        .filter(|k| k.deleted_when_orphaned())
    {
        let wanted: BTreeSet<&str> = manifests
            .iter()
            .filter(|m| m.kind == kind)
            .map(Manifest::name)
            .collect();
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &kind.api_resource());
        for existing in api.list(&list).await? {
            let owned = existing
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref());
            let name = existing.name_any();
            if owned && !wanted.contains(name.as_str()) {
                info!(kind = ?kind, %name, %namespace, "deleting orphan");
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
    Ok(())
}

async fn publish_invalid_spec(ctx: &Context, cs: &ChatSystem, invalid: &InvalidSpec) -> Result<()> {
    let event = Event {
        type_: EventType::Warning,
        reason: "InvalidSpec".to_string(),
        note: Some(invalid.to_string()),
        action: "Validate".to_string(),
        secondary: None,
    };
    ctx.recorder.publish(&event, &cs.object_ref(&())).await?;
    Ok(())
}

async fn write_status(client: &Client, cs: &ChatSystem, status: ChatSystemStatus) -> Result<()> {
    let namespace = cs
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(cs.name_any()))?;
    let api: Api<ChatSystem> = Api::namespaced(client.clone(), &namespace);
    let patch = json!({
        "apiVersion": ChatSystem::api_version(&()),
        "kind": ChatSystem::kind(&()),
        "status": status,
    });
    api.patch_status(
        &cs.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Readiness of every Deployment and StatefulSet, from the objects the apply calls returned.
fn observed_status(cs: &ChatSystem, applied: &[(ChildKind, DynamicObject)]) -> ChatSystemStatus {
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
                "Ready",
                true,
                "AllComponentsReady",
                "every component has its desired replicas ready",
            ),
            condition(
                cs,
                "Progressing",
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
            condition(cs, "Ready", false, "ComponentsNotReady", &message),
            condition(cs, "Progressing", true, "RollingOut", &message),
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
                "Degraded",
                false,
                "SpecValid",
                "the spec is valid and applied",
            ),
            condition(
                cs,
                "ReconciliationPaused",
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

fn degraded_status(cs: &ChatSystem, invalid: &InvalidSpec) -> ChatSystemStatus {
    let message = invalid.to_string();
    let previous = cs.status.clone().unwrap_or_default();
    ChatSystemStatus {
        phase: Some("Degraded".to_string()),
        observed_generation: cs.metadata.generation,
        conditions: vec![
            condition(cs, "Ready", false, "InvalidSpec", &message),
            condition(
                cs,
                "Progressing",
                false,
                "InvalidSpec",
                "nothing is applied until the spec is fixed",
            ),
            condition(cs, "Degraded", true, "InvalidSpec", &message),
            condition(
                cs,
                "ReconciliationPaused",
                false,
                "NotPaused",
                "the operator reconciles this resource",
            ),
        ],
        components: previous.components,
        api_url: previous.api_url,
    }
}

/// Keeps what was last observed, flagging that it is no longer being acted on.
fn paused_status(cs: &ChatSystem) -> ChatSystemStatus {
    let previous = cs.status.clone().unwrap_or_default();
    let mut conditions: Vec<Condition> = previous
        .conditions
        .into_iter()
        .filter(|c| c.type_ != "ReconciliationPaused")
        .collect();
    conditions.push(condition(
        cs,
        "ReconciliationPaused",
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
fn condition(cs: &ChatSystem, type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let previous = cs
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match previous {
        Some(previous) if previous.status == status => previous.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
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
