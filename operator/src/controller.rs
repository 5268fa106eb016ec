//! The reconcile pipeline: dereference → validate → build → apply → delete orphans → status.
//! Only dereference, apply, orphan deletion and status talk to the API server; build is pure.

use crate::apis::Discovery;
use crate::children::{self, Children};
use crate::crd::{BackupRecord, ChatSystem, ChatSystemStatus, Phase};
use crate::error::{ChildFailure, Error, Result, Retry};
use crate::kinds::{Child, ChildKind};
use crate::manifests::{
    self, BackingService, ClaimTemplate, Credentials, ExistingDeployment, GeneratedSecret,
    HANDOVER_MANAGER, Handover, Inputs, MANAGER, Plan, backup,
};
use crate::metrics;
use crate::scope::Scope;
use crate::server::WatchHealth;
use crate::status;
use crate::unreadable;
use crate::upgrades::{self, Turn};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
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
/// An invalid spec becomes valid by a change the watches see (a Secret created, the spec edited);
/// the recheck is a floor in case a watch event was missed.
const INVALID_RECHECK: Duration = Duration::from_secs(60);
/// How old the cluster's answer about optional APIs may be: installing KEDA or prometheus-operator is
/// noticed within this time plus a recheck.
const DISCOVERY_MAX_AGE: Duration = Duration::from_secs(30);
/// After a failed reconcile: 5 s, doubling per consecutive failure of the same resource, up to 5 min.
fn error_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(5))
        .with_max_delay(Duration::from_secs(300))
        .without_max_times()
        .build()
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// What the watches have seen of the children.
    pub children: Children,
    /// Which optional APIs the cluster serves.
    pub discovery: Discovery,
    /// The backoff of each resource whose last reconcile failed.
    failures: Mutex<HashMap<ObjectRef<ChatSystem>, ExponentialBackoff>>,
    /// Every ChatSystem the operator sees, for the turns of an operator upgrade.
    systems: reflector::Store<ChatSystem>,
    /// Systems let through to this version's default images (see [`upgrades`]).
    admitted: upgrades::Admitted,
}

impl Context {
    pub fn new(
        client: Client,
        instance: Option<String>,
        children: Children,
        discovery: Discovery,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_string(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            children,
            discovery,
            failures: Mutex::default(),
            systems: reflector::store().0,
            admitted: upgrades::Admitted::default(),
        }
    }

    /// The cache of every ChatSystem, which an upgrade's turns are decided over.
    pub fn with_systems(mut self, systems: reflector::Store<ChatSystem>) -> Self {
        self.systems = systems;
        self
    }

    /// How long a failed resource waits: a transient failure the resource's backoff (see
    /// [`error_backoff`]), one that waits for a change [`INVALID_RECHECK`].
    fn retry_delay(&self, cs: &ChatSystem, retry: Retry) -> Duration {
        match retry {
            Retry::Soon => self
                .failures()
                .entry(ObjectRef::from_obj(cs))
                .or_insert_with(error_backoff)
                .next()
                .expect("a backoff without a maximum of tries never ends"),
            Retry::AfterChange => INVALID_RECHECK,
        }
    }

    fn failures(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ChatSystem>, ExponentialBackoff>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs the controller until the shutdown future completes. Watches and reconcile calls take separate
/// clients: a watch waits minutes for an event, a reconcile's call must not.
pub async fn run(
    watch_client: Client,
    client: Client,
    instance: Option<String>,
    scope: Scope,
    watches: Arc<WatchHealth>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (children, writers) = Children::new();
    let discovery = Discovery::new(DISCOVERY_MAX_AGE);
    let served = discovery.subscribe();
    // ChatSystems are decoded one by one, so one the operator cannot read stops none of the others.
    let (systems, systems_writer) = reflector::store::<ChatSystem>();
    let context =
        Arc::new(Context::new(client, instance, children, discovery).with_systems(systems.clone()));
    let client = watch_client;
    let config = watcher::Config::default().any_semantic();
    // Children carry the managed-by label: watching only those keeps the caches small in a busy cluster.
    let owned = config
        .clone()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let (unreadable, unreadable_reports) = tokio::sync::mpsc::unbounded_channel();
    let reporter = tokio::spawn(unreadable::report_all(
        context.client.clone(),
        unreadable_reports,
    ));
    let trigger = scope
        .watch(
            scoped_api::<DynamicObject>(&client, ApiResource::erase::<ChatSystem>(&())),
            config.clone(),
        )
        .default_backoff()
        .filter_map(move |event| {
            std::future::ready(match event {
                Ok(event) => unreadable::typed(event, &unreadable).map(Ok),
                Err(error) => Some(Err(error)),
            })
        })
        .reflect(systems_writer)
        .applied_objects();
    let mut controller = Controller::for_stream(trigger, systems.clone());
    for (kind, writer) in writers {
        // One watch per kind both fills the reconcile's cache and wakes the owner on a change.
        let resource = kind.api_resource();
        let config = owned.clone();
        let mut served = served.clone();
        let client = client.clone();
        let scope = scope.clone();
        // A kind of an optional API is watched from when the cluster serves it: a watch of an absent
        // API would fail, and be retried, forever.
        let stream = futures::stream::once(async move {
            let _ = served.wait_for(|served| kind.is_served(served)).await;
            watch_kind(&client, &scope, kind, config)
        })
        .flatten()
        .default_backoff()
        .reflect(writer)
        .touched_objects();
        controller = controller.owns_stream_with(stream, resource);
    }
    // The users' Secrets of external services: a change reaches the systems that read them. Their
    // metadata alone is listed and watched (the roll trigger is a Secret's version, never its
    // data), and each event is mapped and dropped, so no Secret is held.
    let secret = ApiResource::erase::<Secret>(&());
    let secrets = scope
        .watch(
            scoped_api::<PartialObjectMeta<DynamicObject>>(&client, secret.clone()),
            config,
        )
        .default_backoff()
        .touched_objects();
    controller
        .watches_stream_with(
            secrets,
            move |secret| systems_reading(&secret, &systems.state()),
            secret,
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            if let Err(error) = &result {
                warn!(%error, "controller stream");
                if let kube::runtime::controller::Error::QueueError(watch) = error {
                    watches.failed(&watch.to_string());
                }
            }
            std::future::ready(())
        })
        .await;
    reporter.abort();
}

/// The watch of one kind of child. Secrets are watched as metadata alone: what the operator applies
/// to them is labels and an owner, so their values are never held in its memory.
fn watch_kind(
    client: &Client,
    scope: &Scope,
    kind: ChildKind,
    config: watcher::Config,
) -> futures::stream::BoxStream<'static, watcher::Result<watcher::Event<DynamicObject>>> {
    let resource = kind.api_resource();
    if kind == ChildKind::Secret {
        scope
            .watch(
                scoped_api::<PartialObjectMeta<DynamicObject>>(client, resource.clone()),
                config,
            )
            .map_ok(move |event| {
                let types = kube::api::TypeMeta {
                    api_version: resource.api_version.clone(),
                    kind: resource.kind.clone(),
                };
                let object = |meta: PartialObjectMeta<DynamicObject>| DynamicObject {
                    types: Some(types.clone()),
                    metadata: meta.metadata,
                    data: serde_json::Value::Object(Default::default()),
                };
                match event {
                    watcher::Event::Apply(m) => watcher::Event::Apply(object(m)),
                    watcher::Event::Delete(m) => watcher::Event::Delete(object(m)),
                    watcher::Event::InitApply(m) => watcher::Event::InitApply(object(m)),
                    watcher::Event::Init => watcher::Event::Init,
                    watcher::Event::InitDone => watcher::Event::InitDone,
                }
            })
            .boxed()
    } else {
        scope.watch(scoped_api::<DynamicObject>(client, resource), config)
    }
}

/// The Api of a kind, whole objects or metadata alone, in a namespace or in all.
fn scoped_api<K>(client: &Client, resource: ApiResource) -> impl Fn(Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = ApiResource, Scope = kube::core::DynamicResourceScope>,
{
    move |namespace| match namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// The ChatSystems whose `external` services read this Secret.
pub fn systems_reading(
    secret: &impl ResourceExt,
    systems: &[Arc<ChatSystem>],
) -> Vec<ObjectRef<ChatSystem>> {
    let name = secret.name_any();
    systems
        .iter()
        .filter(|cs| cs.namespace() == secret.namespace())
        .filter(|cs| {
            BackingService::ALL
                .into_iter()
                .filter_map(|service| service.external(&cs.spec))
                .any(|external| external.secret_name == name)
        })
        .map(|cs| ObjectRef::from_obj(cs.as_ref()))
        .collect()
}

pub async fn reconcile(cs: Arc<ChatSystem>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    metrics::reconcile_started();
    let result = reconcile_pipeline(&cs, &ctx).await;
    if let Err(error) = &result
        && !matches!(error, Error::Children(_))
    {
        // Best effort, so the failure shows in `kubectl get`; error_policy still retries and counts it.
        let failed = status::failed(&cs, &error.to_string(), Timestamp::now());
        if let Err(status_error) = write_status(&ctx.client, &cs, failed).await {
            warn!(%status_error, "recording the failure in the status");
        }
    }
    metrics::reconcile_finished(started.elapsed());
    if result.is_ok() {
        ctx.failures().remove(&ObjectRef::from_obj(cs.as_ref()));
    }
    result
}

/// Requeues as the failure's [`Retry`] says, and counts the failure.
pub fn error_policy(cs: Arc<ChatSystem>, error: &Error, ctx: Arc<Context>) -> Action {
    metrics::reconcile_failed(error.metric_label());
    let delay = ctx.retry_delay(&cs, error.retry());
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
        let status = status::paused(cs, Timestamp::now());
        publish_transitions(ctx, cs, &status).await;
        write_status(&ctx.client, cs, status).await?;
        return Ok(Action::await_change());
    }
    let served = ctx.discovery.served(&ctx.client).await?;
    ctx.children.synced(&served).await?;
    let mut inputs = dereference(&ctx.client, &ctx.children, cs, &namespace).await?;
    inputs.served = served;
    let turn = ctx.admitted.turn(cs, &ctx.systems.state());
    if let Turn::Wait { moving } = turn {
        info!(name = %cs.name_any(), %namespace, moving, "upgrade waits for its turn");
        if cs.spec.api.image.is_none() {
            inputs.held_images.insert("api");
        }
        if cs.spec.worker.image.is_none() {
            inputs.held_images.insert("worker");
        }
    }
    let valid = match manifests::validate(cs, &inputs) {
        Ok(valid) => valid,
        Err(invalid) => {
            warn!(name = %cs.name_any(), %namespace, %invalid, "invalid spec");
            let status = status::degraded(cs, &invalid, Timestamp::now());
            publish_transitions(ctx, cs, &status).await;
            write_status(&ctx.client, cs, status).await?;
            return Ok(Action::requeue(ctx.retry_delay(cs, invalid.retry())));
        }
    };
    let plan = manifests::build(&valid);
    let outcome = carry_out(&ctx.client, &ctx.children, cs, &namespace, &plan).await;
    let mut failures: Vec<String> = plan.refused.clone();
    failures.extend(outcome.failures.iter().map(ToString::to_string));
    let scheduled_since = ctx
        .children
        .get(ChildKind::CronJob, &namespace, &backup::cron_job_name(cs))
        .and_then(|cron_job| cron_job.metadata.creation_timestamp.clone());
    let backups = status::Backups::of(
        cs,
        inputs.last_backup.clone(),
        scheduled_since.as_ref(),
        Timestamp::now(),
    );
    record_backups(cs, &namespace, &backups);
    let mut status = status::observed(
        cs,
        &outcome.applied,
        &failures,
        &plan.missing,
        &plan.waiting_for,
        backups,
        Timestamp::now(),
    );
    let held = matches!(turn, Turn::Wait { .. });
    match turn {
        Turn::Wait { moving } => status::upgrade_queued(&mut status, cs, moving, Timestamp::now()),
        Turn::Go if upgrades::follows_defaults(cs) => {
            status.version = Some(crate::crd::VERSION.to_string());
        }
        Turn::Go => {}
    }
    info!(name = %cs.name_any(), %namespace, phase = ?status.phase, applied = outcome.applied.len(), failed = outcome.failures.len(), "reconciled");
    let ready = status.phase == Some(Phase::Ready);
    record_readiness(cs, &namespace, &status);
    publish_transitions(ctx, cs, &status).await;
    write_status(&ctx.client, cs, status).await?;
    if !outcome.failures.is_empty() {
        // Recorded in the status already; the error only brings the backoff.
        return Err(Error::Children(outcome.failures));
    }
    if !plan.missing.is_empty() {
        // Installing the missing API changes nothing the watches see: look again.
        return Ok(Action::requeue(INVALID_RECHECK));
    }
    Ok(Action::requeue(if ready && !held {
        READY_RECHECK
    } else {
        PROGRESS_RECHECK
    }))
}

/// The gauge of the `ChatsysNotReady` alert: 1 while the Ready condition is true.
fn record_readiness(cs: &ChatSystem, namespace: &str, status: &ChatSystemStatus) {
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    metrics::chatsystem_ready(namespace, cs.name_any(), ready);
}

/// The gauges of the `ChatsysBackupOverdue` alert: when the newest backup completed (or the schedule
/// began), and the age past which it is overdue.
fn record_backups(cs: &ChatSystem, namespace: &str, backups: &status::Backups) {
    if let Some(clock) = backups.clock {
        metrics::mysql_backup(
            namespace,
            cs.name_any(),
            clock.newest.as_second() as f64,
            clock.max_age.as_secs_f64(),
        );
    }
}

/// Reads the Secrets the resource refers to (existing credentials are reused, never regenerated),
/// and, from the watches' caches, the parts of its workloads that cannot simply be applied over:
/// StatefulSets' claim templates (and their claims' sizes, read when they may grow), who sets each
/// Deployment's replica count, and which migration Jobs ran.
pub async fn dereference(
    client: &Client,
    children: &Children,
    cs: &ChatSystem,
    namespace: &str,
) -> Result<Inputs> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let mut inputs = Inputs::default();
    for reference in manifests::referenced_secrets(cs) {
        if let Some(secret) = secrets.get_opt(reference.name).await? {
            let name = reference.name.to_string();
            inputs
                .external_secret_keys
                .insert(name.clone(), secret_keys(&secret));
            inputs
                .external_secret_versions
                .insert(name, secret_version(&secret));
        }
    }
    for service in BackingService::ALL {
        if !service.runs_here(&cs.spec) {
            continue;
        }
        let workload = service.workload_name(cs);
        let Some(template) = children
            .get(ChildKind::StatefulSet, namespace, &workload)
            .and_then(|set| typed::<StatefulSet>(&set))
            .and_then(|set| claim_template(&set))
        else {
            continue;
        };
        let wanted = &service.spec(&cs.spec).storage_size;
        if template.size != **wanted
            && let Some(claim) = claims.get_opt(&format!("data-{workload}-0")).await?
            && let Some(size) = claim_size(&claim)
        {
            inputs.claim_sizes.insert(service, size);
        }
        inputs.claim_templates.insert(service, template);
    }
    for generated in GeneratedSecret::needed(cs) {
        let credentials = match secrets.get_opt(&generated.name(cs)).await? {
            Some(secret) => Credentials::Existing {
                keys: secret_keys(&secret),
            },
            None => Credentials::Generated(generated.generate()),
        };
        inputs.credentials.insert(generated, credentials);
    }
    for component in ["api", "worker"] {
        let name = format!("{}-{component}", cs.name_any());
        if let Some(deployment) = children
            .get(ChildKind::Deployment, namespace, &name)
            .and_then(|d| typed::<Deployment>(&d))
        {
            inputs
                .deployments
                .insert(component, existing_deployment(&deployment));
            if let Some(image) = deployment
                .spec
                .template
                .spec
                .as_ref()
                .and_then(|pod| pod.containers.iter().find(|c| c.name == component))
                .and_then(|container| container.image.clone())
            {
                inputs.running_images.insert(component, image);
            }
        }
    }
    let jobs = children
        .owned_by(ChildKind::Job, cs)
        .into_iter()
        .filter_map(|job| typed::<Job>(&job));
    for job in jobs {
        let name = job.metadata.name.clone().unwrap_or_default();
        match job_outcome(&job) {
            JobOutcome::Succeeded(_) => {
                inputs.completed_jobs.insert(name);
            }
            JobOutcome::Failed(reason) => {
                inputs.failed_jobs.insert(name, reason);
            }
            JobOutcome::Running => {
                inputs.running_jobs.insert(name);
            }
        }
    }
    inputs.last_backup = last_backup(children, cs, namespace);
    Ok(inputs)
}

enum JobOutcome {
    /// With the time it completed.
    Succeeded(Option<Time>),
    /// With the Job controller's reason and message.
    Failed(String),
    Running,
}

fn job_outcome(job: &Job) -> JobOutcome {
    let status = job.status.clone().unwrap_or_default();
    if status.succeeded.unwrap_or(0) > 0 {
        return JobOutcome::Succeeded(status.completion_time);
    }
    match status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")
    {
        Some(failed) => JobOutcome::Failed(
            match (failed.reason.as_deref(), failed.message.as_deref()) {
                (Some(reason), Some(message)) => format!("{reason}: {message}"),
                (Some(text), None) | (None, Some(text)) => text.to_string(),
                (None, None) => "Failed".to_string(),
            },
        ),
        None => JobOutcome::Running,
    }
}

/// The newest Job of the backup CronJob that succeeded: the backup it wrote is named after it. The
/// CronJob owns them; they carry the system's labels, so the Jobs' watch caches them.
fn last_backup(children: &Children, cs: &ChatSystem, namespace: &str) -> Option<BackupRecord> {
    let cron_job = children.get(ChildKind::CronJob, namespace, &backup::cron_job_name(cs))?;
    let uid = cron_job.metadata.uid.clone()?;
    children
        .of(ChildKind::Job, cs, &uid)
        .into_iter()
        .filter_map(|job| typed::<Job>(&job))
        .filter_map(|job| match job_outcome(&job) {
            JobOutcome::Succeeded(Some(time)) => Some(BackupRecord {
                name: job.metadata.name.clone().unwrap_or_default(),
                time,
            }),
            _ => None,
        })
        .max_by(|a, b| a.time.0.cmp(&b.time.0))
}

/// A cached object as its typed self; `None` for one the API server would not have sent.
fn typed<K: serde::de::DeserializeOwned>(object: &DynamicObject) -> Option<K> {
    serde_json::from_value(children::as_json(object)).ok()
}

/// What changes whenever a Secret's values do: its uid and resourceVersion, never the values.
fn secret_version(secret: &Secret) -> String {
    format!(
        "{}/{}",
        secret.metadata.uid.as_deref().unwrap_or_default(),
        secret
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
    )
}

fn secret_keys(secret: &Secret) -> BTreeSet<String> {
    let data = secret.data.iter().flat_map(|d| d.keys());
    let string_data = secret.string_data.iter().flat_map(|d| d.keys());
    data.chain(string_data).cloned().collect()
}

fn claim_template(set: &StatefulSet) -> Option<ClaimTemplate> {
    let template = set
        .spec
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some("data"))?;
    let spec = template.spec.as_ref()?;
    Some(ClaimTemplate {
        size: spec
            .resources
            .as_ref()?
            .requests
            .as_ref()?
            .get("storage")?
            .clone(),
        storage_class_name: spec.storage_class_name.clone(),
    })
}

fn claim_size(claim: &PersistentVolumeClaim) -> Option<Quantity> {
    let spec = claim.spec.as_ref()?;
    spec.resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .cloned()
}

/// The replica count, and whether the operator's applied configuration holds it, read from the
/// managed fields the API server keeps.
fn existing_deployment(deployment: &Deployment) -> ExistingDeployment {
    let replicas = deployment.spec.replicas.unwrap_or(1);
    let replicas_applied_by_operator = deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| {
            entry.manager.as_deref() == Some(MANAGER) && entry.operation.as_deref() == Some("Apply")
        })
        .filter_map(|entry| entry.fields_v1.as_ref())
        .any(|fields| fields.0["f:spec"].get("f:replicas").is_some());
    ExistingDeployment {
        replicas,
        replicas_applied_by_operator,
    }
}

/// What one pass over the plan did.
#[derive(Default)]
struct Outcome {
    applied: Vec<(ChildKind, DynamicObject)>,
    failures: Vec<ChildFailure>,
}

/// Writes the whole plan. A failure of one object never stops the others: each is tried, and every
/// failure is reported.
async fn carry_out(
    client: &Client,
    children: &Children,
    cs: &ChatSystem,
    namespace: &str,
    plan: &Plan,
) -> Outcome {
    let mut outcome = Outcome::default();
    let api = |kind: ChildKind| -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), namespace, &kind.api_resource())
    };
    let created = PostParams {
        field_manager: Some(MANAGER.to_string()),
        ..PostParams::default()
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for secret in &plan.new_credentials {
        match secrets.create(&created, secret).await {
            Ok(_) => {}
            // Created since it was read (by another replica): its values are the ones to keep.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => outcome.failures.push(ChildFailure {
                kind: ChildKind::Secret.name(),
                name: secret.name_any(),
                error,
            }),
        }
    }
    // Replaced autoscalers go first (see `Plan::replaces`).
    if let Err(error) = delete_orphans(client, children, cs, namespace, plan, true).await {
        outcome.failures.push(ChildFailure {
            kind: "orphans of",
            name: cs.name_any(),
            error,
        });
    }
    let handover = PatchParams::apply(HANDOVER_MANAGER);
    for Handover {
        deployment,
        replicas,
    } in &plan.handovers
    {
        let configuration = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": deployment, "namespace": namespace },
            "spec": { "replicas": replicas },
        });
        if let Err(error) = api(ChildKind::Deployment)
            .patch(deployment, &handover, &Patch::Apply(&configuration))
            .await
        {
            outcome.failures.push(ChildFailure {
                kind: ChildKind::Deployment.name(),
                name: deployment.clone(),
                error,
            });
        }
    }
    let params = PatchParams::apply(MANAGER).force();
    for child in &plan.children {
        let (kind, name) = (child.kind(), child.name());
        if kind == ChildKind::Secret && outcome.failures.iter().any(|f| f.name == name) {
            // Applying the labels of a Secret that could not be created would create it empty.
            continue;
        }
        let configuration = child.to_json();
        if let Some(live) = children.get(kind, namespace, name)
            && children::applied(&live, &configuration)
        {
            // Already as configured: applying it again would be a write that changes nothing.
            outcome.applied.push((kind, live.as_ref().clone()));
            continue;
        }
        match api(kind)
            .patch(name, &params, &Patch::Apply(&configuration))
            .await
        {
            Ok(object) => outcome.applied.push((kind, object)),
            Err(error) => outcome.failures.push(ChildFailure {
                kind: kind.name(),
                name: name.to_string(),
                error,
            }),
        }
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    for expansion in &plan.expansions {
        let patch =
            json!({ "spec": { "resources": { "requests": { "storage": expansion.size } } } });
        if let Err(error) = claims
            .patch(
                &expansion.claim,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            outcome.failures.push(ChildFailure {
                kind: "PersistentVolumeClaim",
                name: expansion.claim.clone(),
                error,
            });
        }
    }
    if let Err(error) = delete_orphans(client, children, cs, namespace, plan, false).await {
        outcome.failures.push(ChildFailure {
            kind: "orphans of",
            name: cs.name_any(),
            error,
        });
    }
    outcome
}

/// Deletes what this resource owns but no longer needs: the autoscalers the plan replaces, or all of
/// it. Credentials Secrets stay, and volumes are never touched (a StatefulSet's claims follow its
/// retention policy).
async fn delete_orphans(
    client: &Client,
    children: &Children,
    cs: &ChatSystem,
    namespace: &str,
    plan: &Plan,
    only_replaced: bool,
) -> kube::Result<()> {
    for kind in ChildKind::ALL
        .into_iter()
        .filter(|k| k.deleted_when_orphaned())
    {
        let wanted: BTreeSet<&str> = plan
            .children
            .iter()
            .filter(|child| child.kind() == kind)
            .map(Child::name)
            .chain(
                plan.held
                    .iter()
                    .filter(|(held, _)| *held == kind)
                    .map(|(_, name)| name.as_str()),
            )
            .collect();
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &kind.api_resource());
        for existing in children.owned_by(kind, cs) {
            let name = existing.name_any();
            if !wanted.contains(name.as_str()) && (!only_replaced || plan.replaces(kind, &name)) {
                info!(kind = ?kind, %name, %namespace, "deleting orphan");
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => return Err(error),
                }
            }
        }
    }
    Ok(())
}

/// Events for what users look for in `kubectl describe`: the first apply, becoming Ready, becoming
/// Degraded (and why), and pausing. An event that cannot be written is logged, not retried.
async fn publish_transitions(ctx: &Context, cs: &ChatSystem, next: &ChatSystemStatus) {
    for notice in status::transitions(cs.status.as_ref(), next) {
        let event = Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason.clone(),
            note: Some(notice.note),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &cs.object_ref(&())).await {
            warn!(%error, reason = %notice.reason, "publishing an event");
        }
    }
}

/// Writes the status, unless it is the one already stored: a settled system's reconcile writes nothing.
async fn write_status(client: &Client, cs: &ChatSystem, status: ChatSystemStatus) -> Result<()> {
    if cs.status.as_ref() == Some(&status) {
        return Ok(());
    }
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
