//! Build: the pure part of the reconcile. From a `ChatSystem` and what `dereference` read, compute every
//! object the operator applies. No client here, so every rule is unit-tested from YAML fixtures.

mod app;
mod backing;
pub mod backup;
mod delegated;
mod generated;
mod monitoring;
mod network;
mod quantity;

use crate::apis::{OptionalApi, Served};
use crate::crd::{BackupRecord, ChatSystem, PodSettings};
use crate::error::InvalidSpec;
use crate::kinds::{Child, ChildKind};
use k8s_openapi::api::core::v1::{
    Capabilities, EnvVar, EnvVarSource, HTTPGetAction, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret, SecretKeySelector,
    SecurityContext, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};

pub use app::WORKER_PORT;
pub use backing::BackingService;
pub use delegated::resource_name;
use delegated::{mysql_primary_service, rabbitmq_default_user_secret, rabbitmq_service};
pub use generated::GeneratedSecret;
pub use monitoring::alert_rules;
pub use quantity::parse_bytes;

pub const MANAGER: &str = "chatsys-operator";
/// The field manager that holds a Deployment's replica count while it passes from the operator to a
/// HorizontalPodAutoscaler, so the count is never dropped to the default of 1.
pub const HANDOVER_MANAGER: &str = "chatsys-operator-handover";

/// A Deployment's replica count alone, applied by [`HANDOVER_MANAGER`] before the operator's own
/// configuration drops it: the count then has an owner until the autoscaler takes it, as server-side
/// apply's ownership transfer prescribes. The apply sends it as a partial configuration, which a typed
/// Deployment (with its required selector and template) cannot express.
#[derive(Clone, Debug, PartialEq)]
pub struct Handover {
    pub deployment: String,
    pub replicas: i32,
}

/// A generated Secret (see [`GeneratedSecret`]), as `dereference` found it.
#[derive(Clone, Debug, PartialEq)]
pub enum Credentials {
    /// The Secret exists (created by an earlier reconcile or by the user): it is reused as it is.
    Existing { keys: BTreeSet<String> },
    /// The Secret is absent: these freshly generated values are written once.
    Generated(BTreeMap<String, String>),
}

/// The volume claim template of a backing service's StatefulSet as it exists: Kubernetes does not let
/// it change, so the operator keeps it and grows the claims themselves.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimTemplate {
    pub size: Quantity,
    pub storage_class_name: Option<String>,
}

/// A Deployment as it exists, for handing its replica count to or from an autoscaler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExistingDeployment {
    pub replicas: i32,
    /// Whether the operator's own applied configuration sets `spec.replicas`.
    pub replicas_applied_by_operator: bool,
}

/// What the resource refers to, read from the cluster by `dereference` (or made up by `render`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    /// Each generated Secret the spec needs (see [`GeneratedSecret::needed`]).
    pub credentials: BTreeMap<GeneratedSecret, Credentials>,
    /// Keys of each Secret that an `external` service points at; a missing entry means no such Secret.
    pub external_secret_keys: BTreeMap<String, BTreeSet<String>>,
    /// The version (`uid/resourceVersion`) of each Secret an `external` service points at: a change
    /// rolls the pods that read it. The version, not the values, so no secret reaches a pod template.
    pub external_secret_versions: BTreeMap<String, String>,
    /// The claim template of each backing service whose StatefulSet exists.
    pub claim_templates: BTreeMap<BackingService, ClaimTemplate>,
    /// The storage requested by each backing service's first claim, where it exists.
    pub claim_sizes: BTreeMap<BackingService, Quantity>,
    /// The API's and the worker's Deployments, by component, where they exist.
    pub deployments: BTreeMap<&'static str, ExistingDeployment>,
    /// The images the API's and the worker's Deployments run now, by component.
    pub running_images: BTreeMap<&'static str, String>,
    /// Components whose running image stays instead of this version's default (an upgrade waiting
    /// for its turn, see [`crate::upgrades`]).
    pub held_images: BTreeSet<&'static str>,
    /// Names of the resource's Jobs (migrations, a restore, a reindex) that have succeeded.
    pub completed_jobs: BTreeSet<String>,
    /// The resource's Jobs that have failed for good, with the Job controller's reason and message
    /// (a deadline or the backoff limit reached).
    pub failed_jobs: BTreeMap<String, String>,
    /// The resource's Jobs that have neither succeeded nor failed yet.
    pub running_jobs: BTreeSet<String>,
    /// The newest backup Job that succeeded.
    pub last_backup: Option<BackupRecord>,
    /// The optional APIs (KEDA's, prometheus-operator's, the delegated services' operators') the
    /// cluster serves.
    pub served: Served,
}

/// A `ChatSystem` that `validate` accepted with the inputs it was checked against: the only thing the
/// builders take, so an unchecked spec cannot be built.
#[derive(Clone, Copy, Debug)]
pub struct Valid<'a> {
    cs: &'a ChatSystem,
    inputs: &'a Inputs,
}

impl<'a> std::ops::Deref for Valid<'a> {
    type Target = ChatSystem;
    fn deref(&self) -> &ChatSystem {
        self.cs
    }
}

/// A key of a Secret of the user's that the spec names: an external service's URL, or the API's
/// admin key. `dereference` reads them, `validate` checks them, and a change rolls their readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretReference<'a> {
    /// The component the Secret is for: a backing service (read by the API and the worker), or `api`.
    pub component: &'static str,
    pub name: &'a str,
    pub key: &'a str,
}

pub fn referenced_secrets(cs: &ChatSystem) -> Vec<SecretReference<'_>> {
    BackingService::ALL
        .into_iter()
        .filter_map(|service| {
            service.external(&cs.spec).map(|external| SecretReference {
                component: service.name(),
                name: &external.secret_name,
                key: &external.key,
            })
        })
        .chain(
            cs.spec
                .api
                .admin_key_secret
                .as_ref()
                .map(|reference| SecretReference {
                    component: "api",
                    name: &reference.name,
                    key: &reference.key,
                }),
        )
        .chain(backup::bucket_secrets(cs))
        .collect()
}

/// Checks what the schema cannot express: references to Secrets, and quantities the operator computes with.
pub fn validate<'a>(cs: &'a ChatSystem, inputs: &'a Inputs) -> Result<Valid<'a>, InvalidSpec> {
    let mut problems = Vec::new();
    for (secret, credentials) in &inputs.credentials {
        if let Credentials::Existing { keys } = credentials {
            for key in secret.keys() {
                if !keys.contains(*key) {
                    problems.push(format!(
                        "{}: Secret {} has no key {key}",
                        secret.component(),
                        secret.name(cs)
                    ));
                }
            }
        }
    }
    for reference in referenced_secrets(cs) {
        let SecretReference {
            component,
            name,
            key,
        } = reference;
        match inputs.external_secret_keys.get(name) {
            None => problems.push(format!("{component}: Secret {name} not found")),
            Some(keys) if !keys.contains(key) => {
                problems.push(format!("{component}: Secret {name} has no key {key}"))
            }
            Some(_) => {}
        }
    }
    for service in BackingService::ALL {
        let size = &service.spec(&cs.spec).storage_size.0;
        if service.external(&cs.spec).is_none() && parse_bytes(size).is_none() {
            problems.push(format!(
                "{}: storage.size {size} is not a quantity",
                service.name()
            ));
        }
    }
    problems.extend(delegated::problems(cs));
    if cs.spec.opensearch.external.is_none()
        && let Err(problem) = backing::opensearch_heap_mib(&cs.spec.opensearch.resources)
    {
        problems.push(problem);
    }
    // Also on the queue's backlog: without KEDA the worker falls back to scaling on CPU.
    for (component, resources, autoscaled) in [
        (
            "api",
            &cs.spec.api.resources,
            cs.spec.api.autoscaling.enabled,
        ),
        (
            "worker",
            &cs.spec.worker.resources,
            cs.spec.worker.autoscaling.enabled,
        ),
    ] {
        let cpu_request = resources.requests.as_ref().and_then(|r| r.get("cpu"));
        if autoscaled && cpu_request.is_none() {
            problems.push(format!(
                "{component}: autoscaling needs resources.requests.cpu"
            ));
        }
    }
    if let Some(backup) = &cs.spec.mysql.backup
        && let Err(problem) = backup::longest_interval(&backup.schedule)
    {
        problems.push(format!("mysql: backup.schedule {problem}"));
    }
    let ingress = &cs.spec.api.ingress;
    if ingress.enabled && ingress.host.as_deref().is_none_or(str::is_empty) {
        // Also a CEL rule; checked here too for `render`, which has no API server.
        problems.push("api: ingress.host is required when the ingress is enabled".to_string());
    }
    if problems.is_empty() {
        Ok(Valid { cs, inputs })
    } else {
        Err(InvalidSpec(problems))
    }
}

/// A claim to grow: Kubernetes expands the volume behind it where its storage class allows.
#[derive(Clone, Debug, PartialEq)]
pub struct Expansion {
    pub claim: String,
    pub size: Quantity,
}

/// Everything one reconcile writes, in the order it writes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Credentials generated now: created once, and never written again.
    pub new_credentials: Vec<Secret>,
    /// Replica counts handed to [`HANDOVER_MANAGER`] before the operator stops applying them.
    pub handovers: Vec<Handover>,
    /// Every object the resource needs, in apply order.
    pub children: Vec<Child>,
    pub expansions: Vec<Expansion>,
    /// Changes of the spec the cluster cannot carry out, reported in status.
    pub refused: Vec<String>,
    /// Objects the resource needs but that wait (for a migration) before they are applied: they are
    /// kept as they are, never deleted as orphans.
    pub held: Vec<(ChildKind, String)>,
    /// What the held objects wait for, for the status.
    pub waiting_for: Vec<String>,
    /// Optional APIs the spec needs and the cluster does not serve, for the status.
    pub missing: Vec<MissingApi>,
}

impl Plan {
    /// Whether an existing autoscaler is replaced by one of the other kind for the same workload (a
    /// CPU HPA by a ScaledObject, or back). It must be gone before its successor is applied: KEDA's
    /// admission webhook refuses a ScaledObject for a workload an HPA already scales, and two
    /// autoscalers of one Deployment fight over its replicas.
    pub fn replaces(&self, kind: ChildKind, name: &str) -> bool {
        kind.is_autoscaler()
            && self
                .children
                .iter()
                .any(|c| c.kind().is_autoscaler() && c.kind() != kind && c.name() == name)
    }
}

/// An optional API the spec needs and the cluster does not serve: what is built without it is built,
/// and the status says what is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingApi {
    pub api: OptionalApi,
    /// The field that needs it, and what happens meanwhile.
    pub needed_for: &'static str,
}

impl std::fmt::Display for MissingApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} needs {}: CustomResourceDefinitions {} not found",
            self.needed_for,
            self.api.project(),
            self.api.crd_names().join(", ")
        )
    }
}

/// Everything the resource needs.
pub fn build(valid: &Valid) -> Plan {
    let (cs, inputs) = (valid.cs, valid.inputs);
    let mut plan = Plan::default();
    for service in BackingService::ALL {
        if service.runs_here(&cs.spec) {
            backing::build(cs, service, inputs, &mut plan);
        }
    }
    backup::build(cs, &mut plan);
    delegated::build(cs, inputs, &mut plan);
    let restore = backup::restore(cs, inputs, &mut plan);
    app::build(cs, inputs, &restore, &mut plan);
    network::build(cs, &mut plan);
    monitoring::build(cs, inputs, &mut plan);
    plan.children.sort_by_key(Child::kind);
    plan
}

/// The plan as it is once every Job it starts has succeeded (a restore, the migration, a reindex),
/// each run in turn: what `render` shows.
pub fn build_settled(cs: &ChatSystem, inputs: &Inputs) -> Result<Plan, InvalidSpec> {
    let mut inputs = inputs.clone();
    loop {
        let plan = build(&validate(cs, &inputs)?);
        let started: Vec<String> = plan
            .children
            .iter()
            .filter(|c| c.kind() == ChildKind::Job && !inputs.completed_jobs.contains(c.name()))
            .map(|c| c.name().to_string())
            .collect();
        if started.is_empty() {
            return Ok(plan);
        }
        inputs.completed_jobs.extend(started);
    }
}

/// Where clients reach the API.
pub fn api_url(cs: &ChatSystem) -> String {
    let ingress = &cs.spec.api.ingress;
    match (&ingress.host, ingress.enabled) {
        (Some(host), true) => {
            let scheme = if ingress.tls_secret_name.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}")
        }
        _ => format!(
            "http://{}.{}.svc:{}",
            app::api_name(cs),
            namespace(cs),
            app::API_PORT
        ),
    }
}

fn namespace(cs: &ChatSystem) -> String {
    cs.namespace().unwrap_or_else(|| "default".to_string())
}

fn child_name(cs: &ChatSystem, suffix: &str) -> String {
    format!("{}-{suffix}", cs.name_any())
}

/// Labels, by name.
type Labels = BTreeMap<String, String>;

/// Labels that select the pods of one component; never change once deployed.
fn selector_labels(cs: &ChatSystem, component: &str) -> Labels {
    Labels::from([
        ("app.kubernetes.io/name".to_string(), "chatsys".to_string()),
        ("app.kubernetes.io/instance".to_string(), cs.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
    ])
}

/// Labels that stay the same across operator versions: on the pod templates and claim templates of
/// the backing services, where a change would restart a database or be refused (claim templates are
/// immutable).
fn stable_labels(cs: &ChatSystem, component: &str) -> Labels {
    let mut labels = selector_labels(cs, component);
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        MANAGER.to_string(),
    );
    labels.insert(
        "app.kubernetes.io/part-of".to_string(),
        "chatsys".to_string(),
    );
    labels
}

/// The common labels on every object's metadata; `instance` and `managed-by` find the children of a
/// resource. Pod templates take [`stable_labels`]: the operator's version in a template would roll
/// every system's pods (and re-run its migration) on an operator upgrade that changed nothing of theirs.
fn labels(cs: &ChatSystem, component: &str) -> Labels {
    let mut labels = stable_labels(cs, component);
    labels.insert(
        "app.kubernetes.io/version".to_string(),
        crate::crd::VERSION.to_string(),
    );
    labels
}

/// Label selector listing every object the operator made for this resource.
pub fn children_selector(cs: &ChatSystem) -> String {
    format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={MANAGER}",
        cs.name_any()
    )
}

fn metadata(cs: &ChatSystem, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace(cs)),
        labels: Some(labels(cs, component)),
        owner_references: Some(cs.controller_owner_ref(&()).into_iter().collect()),
        ..ObjectMeta::default()
    }
}

/// A claim of one node (`ReadWriteOnce`) for `size` of the class named, or the cluster's default.
fn claim_spec(size: &Quantity, storage_class_name: Option<String>) -> PersistentVolumeClaimSpec {
    PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".to_string()]),
        resources: Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([("storage".to_string(), size.clone())])),
            ..VolumeResourceRequirements::default()
        }),
        storage_class_name,
        ..PersistentVolumeClaimSpec::default()
    }
}

/// A label selector matching exactly these labels.
fn selector(labels: Labels) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}

/// A component's [`PodSettings`] laid over its pod template: the scheduling fields as given, labels
/// and annotations added (the operator's own win: they select the pods and roll them), and the extra
/// env appended to the main container (the last of two entries of one name is the one a container
/// gets).
fn with_pod_settings(
    mut template: PodTemplateSpec,
    settings: &PodSettings,
    main_container: &str,
) -> PodTemplateSpec {
    let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
    for (own, extra) in [
        (&mut metadata.labels, &settings.pod_labels),
        (&mut metadata.annotations, &settings.pod_annotations),
    ] {
        if extra.is_empty() {
            continue;
        }
        let mut merged = extra.clone();
        merged.extend(own.take().unwrap_or_default());
        *own = Some(merged);
    }
    if let Some(pod) = template.spec.as_mut() {
        if !settings.node_selector.is_empty() {
            pod.node_selector = Some(settings.node_selector.clone());
        }
        if !settings.tolerations.is_empty() {
            pod.tolerations = Some(settings.tolerations.clone());
        }
        pod.affinity = settings.affinity.clone();
        if !settings.topology_spread_constraints.is_empty() {
            pod.topology_spread_constraints = Some(settings.topology_spread_constraints.clone());
        }
        if !settings.env.is_empty()
            && let Some(container) = pod.containers.iter_mut().find(|c| c.name == main_container)
        {
            container
                .env
                .get_or_insert_with(Vec::new)
                .extend(settings.env.iter().cloned());
        }
    }
    template
}

/// A pod spec with the resource's image pull Secrets.
fn with_pull_secrets(cs: &ChatSystem, mut pod_spec: PodSpec) -> PodSpec {
    if !cs.spec.image_pull_secrets.is_empty() {
        pod_spec.image_pull_secrets = Some(cs.spec.image_pull_secrets.clone());
    }
    pod_spec
}

/// Restricted container security context; backing services add their image's user at pod level.
fn container_security_context(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(read_only_root),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

/// The image's user, and its group on the volumes. The kubelet gives a volume to `fsGroup` at every
/// mount, walking every file, unless the policy is `OnRootMismatch`: then only when the volume's root
/// is not already the group's. That keeps a large volume's pod from taking minutes to start, and
/// the files' modes as the service left them.
fn pod_security_context(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        fs_group_change_policy: Some("OnRootMismatch".to_string()),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..PodSecurityContext::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        ..SeccompProfile::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

/// A probe with the timing every probe of a kind shares.
fn probe(action: Probe, period: i32, timeout: i32, failures: i32) -> Probe {
    Probe {
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        failure_threshold: Some(failures),
        ..action
    }
}

fn http_get(path: &str, port: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(port.to_string()),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    }
}

/// FNV-1a of what pods read (settings, a pod template), put on pod templates so a change rolls them.
fn config_hash(data: &impl serde::Serialize) -> String {
    let text = serde_json::to_string(data).expect("serialises");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}
