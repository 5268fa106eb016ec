//! The reconcile pipeline: dereference → validate → build → apply → delete orphans → status.
//! Only dereference, apply, orphan deletion and status talk to the API server; build is pure.

use crate::crd::{ChatSystem, ChatSystemStatus};
use crate::error::{Error, Result};
use crate::manifests::{
    self, BackingService, ChildKind, Credentials, Inputs, InvalidSpec, MANAGER, Manifest,
};
use crate::status;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
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
    // Children carry the managed-by label: watching only those keeps the caches small in a busy cluster.
    let children = config
        .clone()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    Controller::new(Api::<ChatSystem>::all(client.clone()), config)
        .owns(Api::<Secret>::all(client.clone()), children.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), children.clone())
        .owns(Api::<Service>::all(client.clone()), children.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), children.clone())
        .owns(Api::<Deployment>::all(client.clone()), children.clone())
        .owns(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            children.clone(),
        )
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            children.clone(),
        )
        .owns(Api::<Ingress>::all(client), children)
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
    if let Err(error) = &result {
        // Best effort, so the failure shows in `kubectl get`; error_policy still retries and counts it.
        let failed = status::failed(&cs, &error.to_string(), Timestamp::now());
        if let Err(status_error) = write_status(&ctx.client, &cs, failed).await {
            warn!(%status_error, "recording the failure in the status");
        }
    }
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
    if cs.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the children; applying them again would fight it.
        return Ok(Action::await_change());
    }
    if cs.spec.paused {
        info!(name = %cs.name_any(), %namespace, "reconciliation paused");
        write_status(&ctx.client, cs, status::paused(cs, Timestamp::now())).await?;
        return Ok(Action::await_change());
    }
    let inputs = dereference(&ctx.client, cs, &namespace).await?;
    let manifests = match manifests::build(cs, &inputs) {
        Ok(manifests) => manifests,
        Err(invalid) => {
            warn!(name = %cs.name_any(), %namespace, %invalid, "invalid spec");
            publish_invalid_spec(ctx, cs, &invalid).await?;
            write_status(
                &ctx.client,
                cs,
                status::degraded(cs, &invalid, Timestamp::now()),
            )
            .await?;
            return Ok(Action::requeue(INVALID_RECHECK));
        }
    };
    let applied = apply(&ctx.client, &namespace, &manifests).await?;
    delete_orphans(&ctx.client, cs, &namespace, &manifests).await?;
    let status = status::observed(cs, &applied, Timestamp::now());
    let ready = status.phase.as_deref() == Some("Ready");
    info!(name = %cs.name_any(), %namespace, phase = ?status.phase, applied = manifests.len(), "reconciled");
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
