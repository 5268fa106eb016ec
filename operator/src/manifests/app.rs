//! The API and the worker: ConfigMaps, the migration Job, Deployments, their Services, autoscalers
//! (HorizontalPodAutoscalers, or KEDA's ScaledObject for the worker), PodDisruptionBudgets and the
//! optional Ingress.

use super::backing::{BackingService, MYSQL_DATABASE, REDIS_CACHE_PORT, Runner};
use super::backup::{BACKUP_COMPONENT, Restore};
use super::delegated::MARIADB_USER;
use super::generated::{ADMIN_KEY_KEY, GeneratedSecret};
use super::{
    Handover, Inputs, MissingApi, Plan, child_name, config_hash, container_security_context,
    http_get, metadata, pod_security_context, probe, secret_env, selector, selector_labels,
    value_env, with_pod_settings, with_pull_secrets,
};
use crate::apis::{
    AuthenticationRef, OptionalApi, ScaleTargetRef, ScaleTrigger, ScaledObject, ScaledObjectSpec,
    SecretTargetRef, TriggerAuthentication, TriggerAuthenticationSpec,
};
use crate::crd::{Autoscaling, ChatSystem, PodSettings, ScalingMetric};
use crate::kinds::{Child, ChildKind};
use chatsys_settings::env;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar, PodSpec,
    PodTemplateSpec, ResourceRequirements, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

pub const API_PORT: i32 = 8080;
/// The worker's health and metrics port.
pub const WORKER_PORT: i32 = 9090;
/// The API's metrics port: a port of its own, which no Ingress routes to.
pub const API_METRICS_PORT: i32 = 9090;
/// What the Ingress routes to the API: its resources and its description, nothing of operations.
const PUBLIC_PATHS: [(&str, &str); 2] = [("/applications", "Prefix"), ("/openapi.json", "Exact")];
/// Restarts of a failed migration before its Job fails: one for a pod lost with its node, one more
/// in case; a schema that cannot be migrated fails the same way every time.
const MIGRATION_RETRIES: i32 = 2;
/// How long a migration may wait for MySQL, whose first start on a new volume takes a minute or two.
const MIGRATION_DEADLINE_SECS: i64 = 900;
/// A reindex reads every message of the store: hours for a large one.
const REINDEX_DEADLINE_SECS: i64 = 6 * 3600;
/// The user of the chatsys images.
const APP_UID: i64 = 65532;

pub fn api_name(cs: &ChatSystem) -> String {
    child_name(cs, "api")
}

pub fn worker_name(cs: &ChatSystem) -> String {
    child_name(cs, "worker")
}

/// How a component's replica count is set.
enum Scaling {
    Fixed,
    Cpu,
    /// KEDA, on the command queue's backlog (the worker only).
    QueueBacklog,
}

pub fn build(cs: &ChatSystem, inputs: &Inputs, restore: &Restore, plan: &mut Plan) {
    if cs.spec.api.admin_key_secret.is_none() {
        GeneratedSecret::AdminKey.build(cs, inputs, plan);
    }
    let api = Component::api(cs, inputs);
    let worker = Component::worker(cs, inputs);
    let migration = api.job(cs, "migrate", MIGRATION_DEADLINE_SECS);
    let job_name = migration.metadata.name.clone().unwrap_or_default();
    // A new version's API and worker start only on a migrated schema: until the migration Job of this
    // version has succeeded, their Deployments stay as they are (or are not created yet).
    let mut migrated = inputs.completed_jobs.contains(&job_name);
    if super::delegated::waits_for_an_operator(plan) {
        // A database another operator is to run is not there: a migration would wait for it past its
        // deadline and fail for good. Nothing starts until the operator is installed.
        migrated = false;
        plan.held.push((ChildKind::Job, job_name));
    } else if !inputs.held_images.is_empty() {
        // An upgrade waiting for its turn touches nothing of the running version: its schema is
        // migrated already, and its Jobs stay as they are.
        migrated = true;
        for job in inputs
            .completed_jobs
            .iter()
            .chain(inputs.failed_jobs.keys())
        {
            plan.held.push((ChildKind::Job, job.clone()));
        }
    } else {
        match restore {
            // The schema is migrated once the backup is in: its own schema may be older.
            Restore::Running { job } => {
                plan.waiting_for
                    .push(format!("the restore of mysql.restoreFrom (Job {job})"));
            }
            Restore::Failed { job, reason } => plan.refused.push(format!(
                "Job {job}: the restore of mysql.restoreFrom failed ({reason}; kubectl logs job/{job}); nothing else starts until it succeeds"
            )),
            Restore::None | Restore::Done { .. } => {
                if let Some(reason) = inputs.failed_jobs.get(&job_name) {
                    plan.refused.push(format!(
                        "Job {job_name}: the schema migration failed ({reason}; kubectl logs job/{job_name}); the running version stays"
                    ));
                } else if !migrated {
                    plan.waiting_for
                        .push(format!("the schema migration (Job {job_name})"));
                }
                plan.children.push(Child::Job(migration));
            }
        }
        // The search index of a restored store is rebuilt from it; the API serves meanwhile, with
        // search results filling in.
        if migrated && let Restore::Done { .. } = restore {
            plan.children
                .push(Child::Job(api.job(cs, "reindex", REINDEX_DEADLINE_SECS)));
        }
    }
    for component in [&api, &worker] {
        plan.children
            .push(Child::ConfigMap(component.config_map(cs)));
        if migrated {
            plan.children
                .push(Child::Deployment(component.deployment(cs, inputs)));
        } else {
            plan.held
                .push((ChildKind::Deployment, component.object_name(cs)));
        }
        match component.scaling(inputs, plan) {
            Scaling::Fixed => {}
            Scaling::Cpu => plan
                .children
                .push(Child::HorizontalPodAutoscaler(component.autoscaler(cs))),
            Scaling::QueueBacklog => {
                plan.children
                    .push(Child::TriggerAuthentication(queue_authentication(cs)));
                plan.children.push(Child::ScaledObject(backlog_scaler(cs)));
            }
        }
        if component.autoscaling.enabled
            && let Some(existing) = inputs.deployments.get(component.name)
            && existing.replicas_applied_by_operator
        {
            plan.handovers
                .push(component.replicas_handover(cs, existing.replicas));
        }
        plan.children
            .push(Child::PodDisruptionBudget(component.disruption_budget(cs)));
        plan.children.push(Child::Service(component.service(cs)));
    }
    if cs.spec.api.ingress.enabled {
        plan.children.push(Child::Ingress(ingress(cs)));
    }
}

/// The resources as given, with a memory limit from `default` when they set none.
fn with_memory_limit(
    resources: &ResourceRequirements,
    default: impl FnOnce() -> Quantity,
) -> ResourceRequirements {
    let mut resources = resources.clone();
    resources
        .limits
        .get_or_insert_with(Default::default)
        .entry("memory".to_string())
        .or_insert_with(default);
    resources
}

/// What the API and the worker have in common, so one set of builders serves both.
struct Component<'a> {
    name: &'static str,
    binary: &'static str,
    port: i32,
    /// A port serving metrics alone, apart from `port`.
    metrics_port: Option<i32>,
    pod: &'a PodSettings,
    image: String,
    replicas: i32,
    resources: ResourceRequirements,
    autoscaling: Autoscaling,
    /// Whether the spec asks for scaling on the queue's backlog.
    on_backlog: bool,
    settings: BTreeMap<String, String>,
}

impl<'a> Component<'a> {
    fn api(cs: &'a ChatSystem, inputs: &Inputs) -> Self {
        let api = &cs.spec.api;
        let mut settings = common_settings(cs);
        settings.insert(
            env::CHATSYS_METRICS_LISTEN.to_string(),
            format!("0.0.0.0:{API_METRICS_PORT}"),
        );
        if !api.cors.allowed_origins.is_empty() {
            settings.insert(
                env::CHATSYS_CORS_ALLOWED_ORIGINS.to_string(),
                api.cors.allowed_origins.join(","),
            );
        }
        Component {
            name: "api",
            binary: "/usr/local/bin/chatsys-api",
            port: API_PORT,
            metrics_port: Some(API_METRICS_PORT),
            pod: &api.pod,
            image: held_image(inputs, "api").unwrap_or_else(|| api.image()),
            replicas: api.replicas,
            resources: api.resources.clone(),
            autoscaling: api.autoscaling.clone(),
            on_backlog: false,
            settings,
        }
    }

    fn worker(cs: &'a ChatSystem, inputs: &Inputs) -> Self {
        let worker = &cs.spec.worker;
        let mut settings = common_settings(cs);
        let batch = &worker.batch;
        for (name, value) in [
            (env::CHATSYS_BATCH_SIZE, batch.size),
            (env::CHATSYS_BATCH_WAIT_MS, batch.wait_ms),
            (env::CHATSYS_PREFETCH, batch.prefetch),
            (env::CHATSYS_MAX_ATTEMPTS, batch.max_attempts),
        ] {
            settings.insert(name.to_string(), value.to_string());
        }
        for (name, value) in [
            (env::CHATSYS_BATCH_BYTES, batch.max_bytes),
            (env::CHATSYS_PREFETCH_BYTES, batch.prefetch_bytes),
        ] {
            settings.insert(name.to_string(), value.to_string());
        }
        Component {
            name: "worker",
            binary: "/usr/local/bin/chatsys-worker",
            port: WORKER_PORT,
            metrics_port: None,
            pod: &worker.pod,
            image: held_image(inputs, "worker").unwrap_or_else(|| worker.image()),
            replicas: worker.replicas,
            resources: with_memory_limit(&worker.resources, || batch.memory_limit()),
            autoscaling: worker.autoscaling.on_cpu(),
            on_backlog: worker.autoscaling.metric == ScalingMetric::QueueBacklog,
            settings,
        }
    }

    fn object_name(&self, cs: &ChatSystem) -> String {
        child_name(cs, self.name)
    }

    /// How the replica count is set. Scaling on the backlog needs KEDA: without it the worker scales
    /// on CPU, which still follows load, and the plan says what is missing.
    fn scaling(&self, inputs: &Inputs, plan: &mut Plan) -> Scaling {
        if !self.autoscaling.enabled {
            return Scaling::Fixed;
        }
        if !self.on_backlog {
            return Scaling::Cpu;
        }
        if inputs.served.contains(&OptionalApi::Keda) {
            return Scaling::QueueBacklog;
        }
        plan.missing.push(MissingApi {
            api: OptionalApi::Keda,
            needed_for: "worker.autoscaling.metric QueueBacklog (the worker scales on CPU until it is installed)",
        });
        Scaling::Cpu
    }

    /// The Service in front of the pods' port: the API's for clients, the worker's for its metrics.
    fn service(&self, cs: &ChatSystem) -> Service {
        Service {
            metadata: metadata(cs, &self.object_name(cs), self.name),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".to_string()),
                selector: Some(selector_labels(cs, self.name)),
                ports: Some(
                    self.named_ports()
                        .map(|(name, port)| ServicePort {
                            name: Some(name.to_string()),
                            port,
                            target_port: Some(IntOrString::String(name.to_string())),
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// `http`, and `metrics` where it has a port of its own.
    fn named_ports(&self) -> impl Iterator<Item = (&'static str, i32)> {
        std::iter::once(("http", self.port)).chain(self.metrics_port.map(|port| ("metrics", port)))
    }

    fn config_map(&self, cs: &ChatSystem) -> ConfigMap {
        ConfigMap {
            metadata: metadata(cs, &self.object_name(cs), self.name),
            data: Some(self.settings.clone()),
            ..ConfigMap::default()
        }
    }

    fn container(&self, cs: &ChatSystem, name: &str, subcommand: Option<&str>) -> Container {
        Container {
            name: name.to_string(),
            image: Some(self.image.clone()),
            image_pull_policy: Some("IfNotPresent".to_string()),
            command: Some(vec![self.binary.to_string()]),
            args: subcommand.map(|s| vec![s.to_string()]),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: self.object_name(cs),
                    ..ConfigMapEnvSource::default()
                }),
                ..EnvFromSource::default()
            }]),
            env: Some(match subcommand {
                // The migration uses the database alone.
                Some("migrate") => connection_env(cs),
                _ => connection_env(cs)
                    .into_iter()
                    .chain(cache_env(cs))
                    .collect(),
            }),
            resources: Some(self.resources.clone()),
            security_context: Some(container_security_context(true)),
            ..Container::default()
        }
    }

    /// Hashes of what the pods read at start: a change of either rolls them.
    fn pod_annotations(&self, cs: &ChatSystem, inputs: &Inputs) -> BTreeMap<String, String> {
        let mut annotations = BTreeMap::from([(
            "chatsys.io/config-hash".to_string(),
            config_hash(&self.settings),
        )]);
        // A backing service's Secret is read by both; the API's own by the API alone; a bucket's by
        // the backup's pods, which read it afresh at every run.
        let external: BTreeMap<&str, &str> = super::referenced_secrets(cs)
            .into_iter()
            .filter(|reference| match reference.component {
                "api" => self.name == "api",
                component => component != BACKUP_COMPONENT,
            })
            .filter_map(|reference| {
                let version = inputs.external_secret_versions.get(reference.name)?;
                Some((reference.name, version.as_str()))
            })
            .collect();
        if !external.is_empty() {
            annotations.insert(
                "chatsys.io/external-secrets-hash".to_string(),
                config_hash(&external),
            );
        }
        annotations
    }

    fn deployment(&self, cs: &ChatSystem, inputs: &Inputs) -> Deployment {
        // The worker has no subcommands; the API's default is `serve`, named here for clarity.
        let subcommand = (self.name == "api").then_some("serve");
        // `/healthz` answers as soon as the process listens, before it has reached its backing
        // services; the startup probe holds liveness off until then, and `/readyz` says what it awaits.
        let mut container = Container {
            ports: Some(
                self.named_ports()
                    .map(|(name, port)| ContainerPort {
                        name: Some(name.to_string()),
                        container_port: port,
                        ..ContainerPort::default()
                    })
                    .collect(),
            ),
            startup_probe: Some(probe(http_get("/healthz", "http"), 2, 3, 30)),
            readiness_probe: Some(probe(http_get("/readyz", "http"), 10, 3, 3)),
            liveness_probe: Some(probe(http_get("/healthz", "http"), 10, 3, 6)),
            ..self.container(cs, self.name, subcommand)
        };
        if self.name == "api" {
            let (secret, key) = admin_key(cs);
            container.env.get_or_insert_with(Vec::new).push(secret_env(
                env::CHATSYS_ADMIN_KEY,
                &secret,
                &key,
            ));
        }
        let pod_spec = with_pull_secrets(
            cs,
            PodSpec {
                security_context: Some(pod_security_context(APP_UID)),
                containers: vec![container],
                ..PodSpec::default()
            },
        );
        Deployment {
            metadata: metadata(cs, &self.object_name(cs), self.name),
            spec: DeploymentSpec {
                // With autoscaling the HPA owns the replica count; applying one here would fight it.
                // When the operator stops applying it, `replicas_handover` keeps the count from
                // falling to the default.
                replicas: (!self.autoscaling.enabled).then_some(self.replicas),
                selector: selector(selector_labels(cs, self.name)),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".to_string()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString::Int(0)),
                        max_surge: Some(IntOrString::String("25%".to_string())),
                    }),
                }),
                template: with_pod_settings(
                    PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(super::stable_labels(cs, self.name)),
                            annotations: Some(self.pod_annotations(cs, inputs)),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(pod_spec),
                    },
                    self.pod,
                    self.name,
                ),
                ..DeploymentSpec::default()
            },
            ..Deployment::default()
        }
    }

    fn replicas_handover(&self, cs: &ChatSystem, replicas: i32) -> Handover {
        Handover {
            deployment: self.object_name(cs),
            replicas,
        }
    }

    /// `chatsys-api <subcommand>` once per version: `migrate`, and `reindex` after a restore. A Job
    /// is named after a hash of its pod template, since a Job's template cannot change. The migration
    /// takes a MySQL lock and waits for MySQL to answer, so it neither races another run nor fails on
    /// a database still starting; a schema it cannot migrate (a rollback to an older release, a
    /// changed migration, an SQL error) exits non-zero at once, and the Job fails after
    /// [`MIGRATION_RETRIES`] restarts or `deadline_secs`.
    fn job(&self, cs: &ChatSystem, subcommand: &str, deadline_secs: i64) -> Job {
        let template = with_pod_settings(
            PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(super::stable_labels(cs, subcommand)),
                    ..ObjectMeta::default()
                }),
                spec: Some(with_pull_secrets(
                    cs,
                    PodSpec {
                        security_context: Some(pod_security_context(APP_UID)),
                        restart_policy: Some("OnFailure".to_string()),
                        containers: vec![self.container(cs, subcommand, Some(subcommand))],
                        ..PodSpec::default()
                    },
                )),
            },
            self.pod,
            subcommand,
        );
        let name = child_name(
            cs,
            &format!("{subcommand}-{}", &config_hash(&template)[..8]),
        );
        Job {
            metadata: metadata(cs, &name, subcommand),
            spec: Some(JobSpec {
                backoff_limit: Some(MIGRATION_RETRIES),
                active_deadline_seconds: Some(deadline_secs),
                template,
                ..JobSpec::default()
            }),
            ..Job::default()
        }
    }

    fn autoscaler(&self, cs: &ChatSystem) -> HorizontalPodAutoscaler {
        let autoscaling = &self.autoscaling;
        HorizontalPodAutoscaler {
            metadata: metadata(cs, &self.object_name(cs), self.name),
            spec: HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".to_string()),
                    kind: "Deployment".to_string(),
                    name: self.object_name(cs),
                },
                min_replicas: Some(autoscaling.min_replicas),
                max_replicas: autoscaling.max_replicas,
                metrics: Some(vec![MetricSpec {
                    type_: "Resource".to_string(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".to_string(),
                        target: MetricTarget {
                            type_: "Utilization".to_string(),
                            average_utilization: Some(
                                autoscaling.target_cpu_utilization_percentage,
                            ),
                            ..MetricTarget::default()
                        },
                    }),
                    ..MetricSpec::default()
                }]),
                ..HorizontalPodAutoscalerSpec::default()
            },
            ..HorizontalPodAutoscaler::default()
        }
    }

    fn disruption_budget(&self, cs: &ChatSystem) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: metadata(cs, &self.object_name(cs), self.name),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(selector(selector_labels(cs, self.name))),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        }
    }
}

/// Settings shared by the API and the worker that are not secret.
fn common_settings(cs: &ChatSystem) -> BTreeMap<String, String> {
    let mut settings = BTreeMap::from([
        // The migration Job migrates once per version; replicas must not each migrate at start.
        (env::CHATSYS_MIGRATE.to_string(), "false".to_string()),
        (env::CHATSYS_LOG_FORMAT.to_string(), "json".to_string()),
        (
            env::CHATSYS_QUEUE_SHARDS.to_string(),
            cs.spec.command_queue.shards.to_string(),
        ),
    ]);
    if cs.spec.opensearch.external.is_none() {
        settings.insert(
            env::OPENSEARCH_URL.to_string(),
            format!(
                "http://{}:{}",
                BackingService::Opensearch.workload_name(cs),
                BackingService::Opensearch.port()
            ),
        );
    }
    settings
}

/// Connection URLs: whole from the user's Secret for an external service, otherwise composed from the
/// generated credentials with `$(VAR)` expansion (each variable declared before the URL that uses it).
fn connection_env(cs: &ChatSystem) -> Vec<EnvVar> {
    let mut env = Vec::new();
    for (service, url_var) in [
        (BackingService::Mysql, env::DATABASE_URL),
        (BackingService::Redis, env::REDIS_URL),
        (BackingService::Rabbitmq, env::AMQP_URL),
        (BackingService::Opensearch, env::OPENSEARCH_URL),
    ] {
        let delegated = match service.runner(&cs.spec) {
            Runner::External(external) => {
                env.push(secret_env(url_var, &external.secret_name, &external.key));
                continue;
            }
            Runner::Delegated(_) => true,
            Runner::Here => false,
        };
        let (secret, host) = connection(cs, service, delegated);
        match service {
            // mariadb-operator creates the user by name, with the password of the generated Secret.
            BackingService::Mysql if delegated => {
                env.push(value_env("MYSQL_USERNAME", MARIADB_USER));
                env.push(secret_env("MYSQL_PASSWORD", &secret, "password"));
                env.push(value_env(
                    url_var,
                    &format!("mysql://$(MYSQL_USERNAME):$(MYSQL_PASSWORD)@{host}/{MYSQL_DATABASE}"),
                ));
            }
            BackingService::Mysql => {
                env.push(secret_env("MYSQL_USERNAME", &secret, "username"));
                env.push(secret_env("MYSQL_PASSWORD", &secret, "password"));
                env.push(value_env(
                    url_var,
                    &format!("mysql://$(MYSQL_USERNAME):$(MYSQL_PASSWORD)@{host}/{MYSQL_DATABASE}"),
                ));
            }
            BackingService::Redis => {
                env.push(secret_env("REDIS_PASSWORD", &secret, "password"));
                env.push(value_env(
                    url_var,
                    &format!("redis://:$(REDIS_PASSWORD)@{host}/0"),
                ));
            }
            BackingService::Rabbitmq => {
                env.push(secret_env("AMQP_USERNAME", &secret, "username"));
                env.push(secret_env("AMQP_PASSWORD", &secret, "password"));
                env.push(value_env(
                    url_var,
                    &format!("amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@{host}/%2f"),
                ));
            }
            // OpenSearch, run here or by its operator, has no credentials; its URL is in the ConfigMap.
            BackingService::Opensearch => {}
        }
    }
    env
}

/// The Secret holding a service's credentials and the host and port the API and the worker reach it
/// at: the generated Secret and the StatefulSet's Service of a service run here; the Secret and the
/// Service its operator makes (for writes: the MariaDB's primary) of a delegated one.
fn connection(cs: &ChatSystem, service: BackingService, delegated: bool) -> (String, String) {
    let port = service.port();
    match service {
        BackingService::Mysql if delegated => (
            service.credentials_secret(cs),
            format!("{}:{port}", super::mysql_primary_service(cs)),
        ),
        BackingService::Rabbitmq if delegated => (
            super::rabbitmq_default_user_secret(cs),
            format!("{}:{port}", super::rabbitmq_service(cs)),
        ),
        _ => (
            service.credentials_secret(cs),
            format!("{}:{port}", service.workload_name(cs)),
        ),
    }
}

/// The cache's Redis, beside a managed Redis (its password declared before, with the state's URL).
fn cache_env(cs: &ChatSystem) -> Option<EnvVar> {
    let redis = BackingService::Redis;
    redis.external(&cs.spec).is_none().then(|| {
        value_env(
            env::REDIS_CACHE_URL,
            &format!(
                "redis://:$(REDIS_PASSWORD)@{}:{REDIS_CACHE_PORT}/0",
                redis.workload_name(cs)
            ),
        )
    })
}

/// The running image of a component whose upgrade waits for its turn.
fn held_image(inputs: &Inputs, component: &str) -> Option<String> {
    inputs
        .held_images
        .contains(component)
        .then(|| inputs.running_images.get(component).cloned())
        .flatten()
}

/// The Secret and key of the API's admin key: the user's, or the generated one.
pub fn admin_key(cs: &ChatSystem) -> (String, String) {
    match &cs.spec.api.admin_key_secret {
        Some(reference) => (reference.name.clone(), reference.key.clone()),
        None => (
            GeneratedSecret::AdminKey.name(cs),
            ADMIN_KEY_KEY.to_string(),
        ),
    }
}

/// The base name of the command queues the API publishes to and the worker consumes, the quorum queues
/// that `chatsys_settings::command_queue_name` names: the settings' default, since the operator sets
/// no other.
const COMMAND_QUEUE: &str = "chatsys.commands";

/// The credentials Secret and the host and port of a RabbitMQ run here or by its operator.
fn queue_connection(cs: &ChatSystem) -> (String, String) {
    let service = BackingService::Rabbitmq;
    connection(
        cs,
        service,
        matches!(service.runner(&cs.spec), Runner::Delegated(_)),
    )
}

/// Where KEDA's RabbitMQ scaler reads its connection: the user's URL for an external RabbitMQ, or
/// the credentials of one run here or by its operator (the scaler puts them into the URL it is given).
fn queue_authentication(cs: &ChatSystem) -> TriggerAuthentication {
    let service = BackingService::Rabbitmq;
    let secret_target_ref = match service.external(&cs.spec) {
        Some(external) => vec![SecretTargetRef {
            parameter: "host".to_string(),
            name: external.secret_name.clone(),
            key: external.key.clone(),
        }],
        None => ["username", "password"]
            .into_iter()
            .map(|key| SecretTargetRef {
                parameter: key.to_string(),
                name: queue_connection(cs).0,
                key: key.to_string(),
            })
            .collect(),
    };
    TriggerAuthentication {
        metadata: metadata(cs, &worker_name(cs), "worker"),
        spec: TriggerAuthenticationSpec { secret_target_ref },
    }
}

/// KEDA's ScaledObject for the worker: one replica per `messagesPerReplica` commands waiting, between
/// the minimum (zero only when asked) and the maximum.
/// One trigger per command queue. The HPA KEDA drives takes the largest replica count the triggers ask
/// for; with the backlog spread evenly over `shards` queues, a target of `messagesPerReplica / shards`
/// per queue asks for one replica per `messagesPerReplica` of the whole backlog.
fn backlog_scaler(cs: &ChatSystem) -> ScaledObject {
    let autoscaling = &cs.spec.worker.autoscaling;
    let service = BackingService::Rabbitmq;
    let shards = cs.spec.command_queue.shards.max(1);
    let per_queue = (autoscaling.messages_per_replica + shards - 1) / shards;
    let triggers = (0..shards as usize)
        .map(|shard| chatsys_settings::command_queue_name(COMMAND_QUEUE, shard))
        .map(|queue| {
            let mut metadata = BTreeMap::from([
                ("protocol".to_string(), "amqp".to_string()),
                ("queueName".to_string(), queue),
                ("mode".to_string(), "QueueLength".to_string()),
                ("value".to_string(), per_queue.max(1).to_string()),
            ]);
            if service.external(&cs.spec).is_none() {
                let (_, host) = queue_connection(cs);
                let (name, port) = host.split_once(':').unwrap_or((&host, ""));
                metadata.insert(
                    "host".to_string(),
                    format!("amqp://{name}.{}.svc:{port}/%2f", super::namespace(cs)),
                );
            }
            ScaleTrigger {
                type_: "rabbitmq".to_string(),
                metadata,
                authentication_ref: Some(AuthenticationRef {
                    name: worker_name(cs),
                }),
            }
        })
        .collect();
    let mut object = ScaledObject::new(
        &worker_name(cs),
        ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: Some("apps/v1".to_string()),
                kind: Some("Deployment".to_string()),
                name: worker_name(cs),
            },
            min_replica_count: Some(if autoscaling.scale_to_zero {
                0
            } else {
                autoscaling.min_replicas
            }),
            max_replica_count: Some(autoscaling.max_replicas),
            triggers,
            ..ScaledObjectSpec::default()
        },
    );
    object.metadata = metadata(cs, &worker_name(cs), "worker");
    object
}

fn ingress(cs: &ChatSystem) -> Ingress {
    let ingress = &cs.spec.api.ingress;
    let host = ingress.host.clone().unwrap_or_default();
    let mut metadata = metadata(cs, &api_name(cs), "api");
    // ingress-nginx's own annotations, for its class only: another controller reads its own.
    let nginx: BTreeMap<String, String> = if ingress.class_name.as_deref() == Some("nginx") {
        [
            // ingress-nginx refuses bodies over 1 MiB with its own HTML 413; let the API answer its own
            // limit.
            ("proxy-body-size", INGRESS_BODY_LIMIT),
            // Chats' event streams: passed on as written, and open for as long as the client reads
            // (the API writes at least a heartbeat every 15 s, so a dead client is still noticed).
            ("proxy-buffering", "off"),
            ("proxy-read-timeout", INGRESS_STREAM_TIMEOUT_SECS),
            ("proxy-send-timeout", INGRESS_STREAM_TIMEOUT_SECS),
        ]
        .into_iter()
        .map(|(name, value)| {
            (
                format!("nginx.ingress.kubernetes.io/{name}"),
                value.to_string(),
            )
        })
        .collect()
    } else {
        BTreeMap::new()
    };
    let mut annotations = nginx;
    annotations.extend(ingress.annotations.clone());
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: ingress.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: PUBLIC_PATHS
                        .iter()
                        .map(|(path, path_type)| HTTPIngressPath {
                            path: Some(path.to_string()),
                            path_type: path_type.to_string(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend {
                                    name: api_name(cs),
                                    port: Some(ServiceBackendPort {
                                        name: Some("http".to_string()),
                                        ..ServiceBackendPort::default()
                                    }),
                                }),
                                ..IngressBackend::default()
                            },
                        })
                        .collect(),
                }),
            }]),
            tls: ingress.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![host]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}

/// Above the API's default request limit (1 MiB), so requests just over it reach the API.
const INGRESS_BODY_LIMIT: &str = "8m";
/// How long nginx keeps a proxied connection with nothing to pass on: an hour, since an event stream
/// is long-lived (a client reconnects after it with its last event id, losing nothing).
const INGRESS_STREAM_TIMEOUT_SECS: &str = "3600";
