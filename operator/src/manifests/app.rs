//! The API and the worker: ConfigMaps, Deployments, the API Service, HorizontalPodAutoscalers,
//! PodDisruptionBudgets and the optional Ingress.

use super::backing::{BackingService, MYSQL_DATABASE};
use super::{
    ChildKind, Inputs, Manifest, Plan, child_name, config_hash, container_security_context,
    metadata, object, pod_security_context, secret_env, selector_labels, value_env,
    with_pull_secrets,
};
use crate::crd::{Autoscaling, ChatSystem};
use k8s_openapi::api::core::v1::ResourceRequirements;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub const API_PORT: i32 = 8080;
const WORKER_PORT: i32 = 9090;
/// The user of the chatsys images.
const APP_UID: i64 = 65532;

pub fn api_name(cs: &ChatSystem) -> String {
    child_name(cs, "api")
}

pub fn build(cs: &ChatSystem, inputs: &Inputs, plan: &mut Plan) {
    let api = Component::api(cs);
    let worker = Component::worker(cs);
    let migration = api.migration_job(cs);
    // A new version's API and worker start only on a migrated schema: until the migration Job of this
    // version has succeeded, their Deployments stay as they are (or are not created yet).
    let migrated = inputs.completed_migrations.contains(migration.name());
    if inputs.failed_migrations.contains(migration.name()) {
        plan.refused.push(format!(
            "Job {}: the schema migration failed (kubectl logs job/{}); the running version stays",
            migration.name(),
            migration.name()
        ));
    } else if !migrated {
        plan.waiting_for
            .push(format!("the schema migration (Job {})", migration.name()));
    }
    plan.children.push(migration);
    for component in [&api, &worker] {
        plan.children.push(component.config_map(cs));
        let deployment = component.deployment(cs, inputs);
        if migrated {
            plan.children.push(deployment);
        } else {
            plan.held
                .push((ChildKind::Deployment, deployment.name().to_string()));
        }
        if component.autoscaling.enabled {
            plan.children.push(component.autoscaler(cs));
            if let Some(existing) = inputs.deployments.get(component.name)
                && existing.replicas_applied_by_operator
            {
                plan.handovers
                    .push(component.replicas_handover(cs, existing.replicas));
            }
        }
        plan.children.push(component.disruption_budget(cs));
    }
    plan.children.push(api_service(cs));
    if cs.spec.api.ingress.enabled {
        plan.children.push(ingress(cs));
    }
}

/// What the API and the worker have in common, so one set of builders serves both.
struct Component<'a> {
    name: &'static str,
    binary: &'static str,
    port: i32,
    image: String,
    replicas: i32,
    resources: &'a ResourceRequirements,
    autoscaling: &'a Autoscaling,
    settings: Value,
}

impl<'a> Component<'a> {
    fn api(cs: &'a ChatSystem) -> Self {
        let api = &cs.spec.api;
        Component {
            name: "api",
            binary: "/usr/local/bin/chatsys-api",
            port: API_PORT,
            image: api.image(),
            replicas: api.replicas,
            resources: &api.resources,
            autoscaling: &api.autoscaling,
            settings: common_settings(cs),
        }
    }

    fn worker(cs: &'a ChatSystem) -> Self {
        let worker = &cs.spec.worker;
        let mut settings = common_settings(cs);
        let batch = &worker.batch;
        settings.as_object_mut().expect("settings").extend([
            (
                "CHATSYS_BATCH_SIZE".to_string(),
                json!(batch.size.to_string()),
            ),
            (
                "CHATSYS_BATCH_WAIT_MS".to_string(),
                json!(batch.wait_ms.to_string()),
            ),
            (
                "CHATSYS_PREFETCH".to_string(),
                json!(batch.prefetch.to_string()),
            ),
            (
                "CHATSYS_MAX_ATTEMPTS".to_string(),
                json!(batch.max_attempts.to_string()),
            ),
        ]);
        Component {
            name: "worker",
            binary: "/usr/local/bin/chatsys-worker",
            port: WORKER_PORT,
            image: worker.image(),
            replicas: worker.replicas,
            resources: &worker.resources,
            autoscaling: &worker.autoscaling,
            settings,
        }
    }

    fn object_name(&self, cs: &ChatSystem) -> String {
        child_name(cs, self.name)
    }

    fn config_map(&self, cs: &ChatSystem) -> Manifest {
        object(
            ChildKind::ConfigMap,
            metadata(cs, &self.object_name(cs), self.name),
            json!({ "data": self.settings }),
        )
    }

    fn container(&self, cs: &ChatSystem, name: &str, subcommand: Option<&str>) -> Value {
        let mut container = json!({
            "name": name,
            "image": self.image,
            "imagePullPolicy": "IfNotPresent",
            "command": [self.binary],
            "envFrom": [{ "configMapRef": { "name": self.object_name(cs) } }],
            "env": connection_env(cs),
            "resources": self.resources,
            "securityContext": container_security_context(true),
        });
        if let Some(subcommand) = subcommand {
            container["args"] = json!([subcommand]);
        }
        container
    }

    /// Hashes of what the pods read at start: a change of either rolls them.
    fn pod_annotations(&self, cs: &ChatSystem, inputs: &Inputs) -> Value {
        let mut annotations = json!({ "chatsys.io/config-hash": config_hash(&self.settings) });
        let external: BTreeMap<&str, &str> = BackingService::ALL
            .into_iter()
            .filter_map(|service| service.external(&cs.spec))
            .filter_map(|external| {
                let version = inputs.external_secret_versions.get(&external.secret_name)?;
                Some((external.secret_name.as_str(), version.as_str()))
            })
            .collect();
        if !external.is_empty() {
            annotations["chatsys.io/external-secrets-hash"] = json!(config_hash(&json!(external)));
        }
        annotations
    }

    fn deployment(&self, cs: &ChatSystem, inputs: &Inputs) -> Manifest {
        // The worker has no subcommands; the API's default is `serve`, named here for clarity.
        let subcommand = (self.name == "api").then_some("serve");
        let mut container = self.container(cs, self.name, subcommand);
        let probe = |path: &str, failures: i32| {
            json!({
                "httpGet": { "path": path, "port": "http" },
                "periodSeconds": 10,
                "timeoutSeconds": 3,
                "failureThreshold": failures,
            })
        };
        // `/healthz` answers as soon as the process listens, before it has reached its backing
        // services; the startup probe holds liveness off until then, and `/readyz` says what it awaits.
        let extra = json!({
            "ports": [{ "name": "http", "containerPort": self.port }],
            "startupProbe": {
                "httpGet": { "path": "/healthz", "port": "http" },
                "periodSeconds": 2,
                "timeoutSeconds": 3,
                "failureThreshold": 30,
            },
            "readinessProbe": probe("/readyz", 3),
            "livenessProbe": probe("/healthz", 6),
        });
        container
            .as_object_mut()
            .expect("container")
            .extend(extra.as_object().expect("object").clone());
        let pod_spec = with_pull_secrets(
            cs,
            json!({
                "securityContext": pod_security_context(APP_UID),
                "containers": [container],
            }),
        );
        let mut spec = json!({
            "selector": { "matchLabels": selector_labels(cs, self.name) },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": "25%" } },
            "template": {
                "metadata": {
                    "labels": super::labels(cs, self.name),
                    "annotations": self.pod_annotations(cs, inputs),
                },
                "spec": pod_spec,
            },
        });
        // With autoscaling the HPA owns the replica count; applying one here would fight it. When the
        // operator stops applying it, `replicas_handover` keeps the count from falling to the default.
        if !self.autoscaling.enabled {
            spec["replicas"] = json!(self.replicas);
        }
        object(
            ChildKind::Deployment,
            metadata(cs, &self.object_name(cs), self.name),
            json!({ "spec": spec }),
        )
    }

    /// The replica count alone, applied by [`super::HANDOVER_MANAGER`] before the operator's own configuration
    /// drops it: the count then has an owner until the autoscaler takes it, as server-side apply's
    /// ownership transfer prescribes.
    fn replicas_handover(&self, cs: &ChatSystem, replicas: i32) -> Manifest {
        Manifest::new(
            ChildKind::Deployment,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": self.object_name(cs), "namespace": super::namespace(cs) },
                "spec": { "replicas": replicas },
            }),
        )
    }

    /// `chatsys-api migrate` once per version: a Job named after a hash of its pod template, since a
    /// Job's template cannot change. The migration takes a MySQL lock and waits for MySQL to answer,
    /// so it neither races another run nor fails on a database still starting.
    fn migration_job(&self, cs: &ChatSystem) -> Manifest {
        let template = json!({
            "metadata": { "labels": super::labels(cs, "migrate") },
            "spec": with_pull_secrets(cs, json!({
                "securityContext": pod_security_context(APP_UID),
                "restartPolicy": "OnFailure",
                "containers": [self.container(cs, "migrate", Some("migrate"))],
            })),
        });
        let name = child_name(cs, &format!("migrate-{}", &config_hash(&template)[..8]));
        object(
            ChildKind::Job,
            metadata(cs, &name, "migrate"),
            json!({ "spec": { "backoffLimit": 6, "template": template } }),
        )
    }

    fn autoscaler(&self, cs: &ChatSystem) -> Manifest {
        let autoscaling = self.autoscaling;
        object(
            ChildKind::HorizontalPodAutoscaler,
            metadata(cs, &self.object_name(cs), self.name),
            json!({ "spec": {
                "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": self.object_name(cs) },
                "minReplicas": autoscaling.min_replicas,
                "maxReplicas": autoscaling.max_replicas,
                "metrics": [{
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": { "type": "Utilization", "averageUtilization": autoscaling.target_cpu_utilization_percentage },
                    },
                }],
            }}),
        )
    }

    fn disruption_budget(&self, cs: &ChatSystem) -> Manifest {
        object(
            ChildKind::PodDisruptionBudget,
            metadata(cs, &self.object_name(cs), self.name),
            json!({ "spec": { "maxUnavailable": 1, "selector": { "matchLabels": selector_labels(cs, self.name) } } }),
        )
    }
}

/// Settings shared by the API and the worker that are not secret.
fn common_settings(cs: &ChatSystem) -> Value {
    let mut settings = json!({
        // The migration Job migrates once per version; replicas must not each migrate at start.
        "CHATSYS_MIGRATE": "false",
        "CHATSYS_LOG_FORMAT": "json",
    });
    if cs.spec.opensearch.external.is_none() {
        settings["OPENSEARCH_URL"] = json!(format!(
            "http://{}:{}",
            BackingService::Opensearch.workload_name(cs),
            BackingService::Opensearch.port()
        ));
    }
    settings
}

/// Connection URLs: whole from the user's Secret for an external service, otherwise composed from the
/// generated credentials with `$(VAR)` expansion (each variable declared before the URL that uses it).
fn connection_env(cs: &ChatSystem) -> Vec<Value> {
    let mut env = Vec::new();
    for (service, url_var) in [
        (BackingService::Mysql, "DATABASE_URL"),
        (BackingService::Redis, "REDIS_URL"),
        (BackingService::Rabbitmq, "AMQP_URL"),
        (BackingService::Opensearch, "OPENSEARCH_URL"),
    ] {
        if let Some(external) = service.external(&cs.spec) {
            env.push(secret_env(url_var, &external.secret_name, &external.key));
            continue;
        }
        let secret = service.credentials_secret(cs);
        let host = format!("{}:{}", service.workload_name(cs), service.port());
        match service {
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
            // Managed OpenSearch has no credentials; its URL is in the ConfigMap.
            BackingService::Opensearch => {}
        }
    }
    env
}

fn api_service(cs: &ChatSystem) -> Manifest {
    object(
        ChildKind::Service,
        metadata(cs, &api_name(cs), "api"),
        json!({ "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(cs, "api"),
            "ports": [{ "name": "http", "port": API_PORT, "targetPort": "http" }],
        }}),
    )
}

fn ingress(cs: &ChatSystem) -> Manifest {
    let ingress = &cs.spec.api.ingress;
    let host = ingress.host.clone().unwrap_or_default();
    let mut spec = json!({
        "rules": [{
            "host": host,
            "http": { "paths": [{
                "path": "/",
                "pathType": "Prefix",
                "backend": { "service": { "name": api_name(cs), "port": { "number": API_PORT } } },
            }]},
        }],
    });
    if let Some(class) = &ingress.class_name {
        spec["ingressClassName"] = json!(class);
    }
    if let Some(tls) = &ingress.tls_secret_name {
        spec["tls"] = json!([{ "hosts": [host], "secretName": tls }]);
    }
    let mut metadata = metadata(cs, &api_name(cs), "api");
    // ingress-nginx refuses bodies over 1 MiB with its own HTML 413; let the API answer its own limit.
    metadata["annotations"] =
        json!({ "nginx.ingress.kubernetes.io/proxy-body-size": INGRESS_BODY_LIMIT });
    object(ChildKind::Ingress, metadata, json!({ "spec": spec }))
}

/// Above the API's default request limit (1 MiB), so requests just over it reach the API.
const INGRESS_BODY_LIMIT: &str = "8m";
