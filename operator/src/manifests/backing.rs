//! MySQL, Redis, RabbitMQ and OpenSearch: one StatefulSet, one Service and (except OpenSearch, which runs
//! without its security plugin inside the cluster) one credentials Secret each.

use super::generated::{ERLANG_COOKIE_KEY, GeneratedSecret};
use super::{
    ClaimTemplate, Expansion, Inputs, Plan, child_name, config_hash, container_security_context,
    http_get, metadata, parse_bytes, pod_security_context, probe, secret_env, selector,
    selector_labels, stable_labels, value_env, with_pod_settings, with_pull_secrets,
};
use crate::apis::OptionalApi;
use crate::crd::{
    BackingServiceSpec, ChatSystem, ChatSystemSpec, ExternalService, MysqlProvider,
    OpensearchProvider, PodSettings, RabbitmqProvider, ServiceDefaults,
};
use crate::kinds::Child;
use chatsys_settings::connections;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, ExecAction,
    PersistentVolumeClaim, PodSpec, PodTemplateSpec, Probe, SecretVolumeSource, Service,
    ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

pub const MYSQL_DATABASE: &str = "chatsys";
const RABBITMQ_MANAGEMENT_PORT: i32 = 15672;
/// The port of the image's built-in Prometheus plugin (`rabbitmq_prometheus`).
pub const RABBITMQ_PROMETHEUS_PORT: i32 = 15692;
const MIB: f64 = 1024.0 * 1024.0;
/// OpenSearch refuses to start usefully below this heap.
pub const MIN_OPENSEARCH_MEMORY_MIB: u64 = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackingService {
    Mysql,
    Redis,
    Rabbitmq,
    Opensearch,
}

impl BackingService {
    pub const ALL: [BackingService; 4] = [
        BackingService::Mysql,
        BackingService::Redis,
        BackingService::Rabbitmq,
        BackingService::Opensearch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackingService::Mysql => "mysql",
            BackingService::Redis => "redis",
            BackingService::Rabbitmq => "rabbitmq",
            BackingService::Opensearch => "opensearch",
        }
    }

    /// This service's part of the spec, whatever its defaults type.
    pub fn spec(self, spec: &ChatSystemSpec) -> ServiceSettings<'_> {
        match self {
            BackingService::Mysql => ServiceSettings::of(&spec.mysql.service.service),
            BackingService::Redis => ServiceSettings::of(&spec.redis),
            BackingService::Rabbitmq => ServiceSettings::of(&spec.rabbitmq.service),
            BackingService::Opensearch => ServiceSettings::of(&spec.opensearch.service),
        }
    }

    pub fn external(self, spec: &ChatSystemSpec) -> Option<&ExternalService> {
        self.spec(spec).external
    }

    /// Who runs the service: the user elsewhere, this operator, or another operator of the cluster.
    pub fn runner(self, spec: &ChatSystemSpec) -> Runner<'_> {
        if let Some(external) = self.external(spec) {
            return Runner::External(external);
        }
        let delegated = match self {
            BackingService::Mysql => (spec.mysql.provider == MysqlProvider::MariadbOperator)
                .then_some(OptionalApi::MariadbOperator),
            BackingService::Rabbitmq => (spec.rabbitmq.provider
                == RabbitmqProvider::RabbitmqClusterOperator)
                .then_some(OptionalApi::RabbitmqClusterOperator),
            BackingService::Opensearch => (spec.opensearch.provider
                == OpensearchProvider::OpensearchOperator)
                .then_some(OptionalApi::OpensearchOperator),
            BackingService::Redis => None,
        };
        delegated.map_or(Runner::Here, Runner::Delegated)
    }

    /// Whether this operator runs the service, as its own StatefulSet.
    pub fn runs_here(self, spec: &ChatSystemSpec) -> bool {
        matches!(self.runner(spec), Runner::Here)
    }

    /// Whether its credentials are a Secret this operator generates: for the services it runs, and for
    /// a MariaDB, whose users mariadb-operator creates from that Secret. RabbitMQ's cluster-operator
    /// makes its own default user.
    pub fn has_generated_credentials(self, spec: &ChatSystemSpec) -> bool {
        !self.credential_keys().is_empty()
            && match self.runner(spec) {
                Runner::Here => true,
                Runner::Delegated(api) => api == OptionalApi::MariadbOperator,
                Runner::External(_) => false,
            }
    }

    /// Keys of its credentials Secret; empty for a service without credentials.
    pub fn credential_keys(self) -> &'static [&'static str] {
        match self {
            BackingService::Mysql => &["username", "password", "root-password"],
            BackingService::Redis => &["password"],
            BackingService::Rabbitmq => &["username", "password"],
            BackingService::Opensearch => &[],
        }
    }

    pub fn credentials_secret(self, cs: &ChatSystem) -> String {
        child_name(cs, &format!("{}-credentials", self.name()))
    }

    /// Name of its StatefulSet and Service.
    pub fn workload_name(self, cs: &ChatSystem) -> String {
        child_name(cs, self.name())
    }

    pub fn port(self) -> i32 {
        match self {
            BackingService::Mysql => 3306,
            BackingService::Redis => 6379,
            BackingService::Rabbitmq => 5672,
            BackingService::Opensearch => 9200,
        }
    }

    /// The user id the image runs as (each image creates that user).
    fn uid(self) -> i64 {
        match self {
            BackingService::Opensearch => 1000,
            _ => 999,
        }
    }

    /// Where the service's data directory is mounted, and the subdirectory of the volume it is: never
    /// the volume's root, where a cloud block volume formatted ext4 keeps `lost+found`, which the
    /// MySQL image's first start refuses ("--initialize specified but the data directory has files
    /// in it"; docker-library/mysql#186, #69: its maintainers recommend a subdirectory). RabbitMQ's
    /// is `mnesia`, where earlier releases (which mounted the volume at `/var/lib/rabbitmq`) left it.
    pub fn data_mount(self) -> (&'static str, &'static str) {
        match self {
            BackingService::Mysql => ("/var/lib/mysql", "data"),
            BackingService::Redis => ("/data", "data"),
            BackingService::Rabbitmq => ("/var/lib/rabbitmq/mnesia", "mnesia"),
            BackingService::Opensearch => ("/usr/share/opensearch/data", "data"),
        }
    }

    /// An entry that only a data directory at the volume's root has (as earlier releases left it):
    /// InnoDB's system tablespace, Redis's append-only directory, OpenSearch's node directory.
    fn root_layout_marker(self) -> Option<&'static str> {
        match self {
            BackingService::Mysql => Some("ibdata1"),
            BackingService::Redis => Some("appendonlydir"),
            BackingService::Opensearch => Some("nodes"),
            BackingService::Rabbitmq => None,
        }
    }

    /// Time to flush and stop cleanly after SIGTERM before the kubelet kills the process: InnoDB's
    /// buffer pool, RabbitMQ's message store, Redis's append-only file, OpenSearch's translog.
    fn termination_grace_secs(self) -> i64 {
        match self {
            BackingService::Redis => 60,
            _ => 120,
        }
    }
}

/// Who runs a backing service.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Runner<'a> {
    /// This operator, as a StatefulSet of one pod.
    Here,
    /// The user, elsewhere: the API and the worker read its URL from the user's Secret.
    External(&'a ExternalService),
    /// Another operator of the cluster, through its custom resource (see `delegated`).
    Delegated(OptionalApi),
}

/// Moves a data directory an earlier release kept at the volume's root into the subdirectory now
/// mounted, so an upgrade finds its data. Safe to rerun at any point: entries move one by one into
/// `.adopting`, which is renamed last, and a half-done move resumes.
const ADOPT_LAYOUT_SCRIPT: &str = r#"set -eu
cd /volume
if [ ! -e "$SUBDIR" ] && { [ -e "$MARKER" ] || [ -d .adopting ]; }; then
  mkdir -p .adopting
  for entry in * .[!.]* ..?*; do
    case "$entry" in lost+found|.adopting) continue ;; esac
    [ -e "$entry" ] || continue
    mv "$entry" .adopting/
  done
  mv .adopting "$SUBDIR"
  echo "moved the data directory at the volume's root into $SUBDIR"
fi
"#;

/// Where the Erlang cookie's Secret is mounted; the broker reads a copy in its home directory.
const ERLANG_COOKIE_SECRET_PATH: &str = "/run/chatsys/erlang-cookie";
const RABBITMQ_HOME: &str = "/var/lib/rabbitmq";

/// The MySQL settings file the operator owns, in the image's include directory (`/etc/my.cnf` of
/// mysql:8.4 reads `/etc/mysql/conf.d/*.cnf`).
const MYSQL_CONFIG_DIR: &str = "/etc/mysql/conf.d";
const MYSQL_CONFIG_FILE: &str = "chatsys.cnf";

/// The fields of a `BackingServiceSpec`, without its defaults type parameter.
pub struct ServiceSettings<'a> {
    pub image: &'a str,
    pub resources: &'a ResourceRequirements,
    pub storage_size: &'a Quantity,
    pub storage_class_name: Option<&'a str>,
    pub delete_claims_on_removal: bool,
    pub external: Option<&'a ExternalService>,
    pub pod: &'a PodSettings,
}

impl<'a> ServiceSettings<'a> {
    fn of<D: ServiceDefaults>(spec: &'a BackingServiceSpec<D>) -> Self {
        ServiceSettings {
            image: &spec.image,
            resources: &spec.resources,
            storage_size: &spec.storage.size,
            storage_class_name: spec.storage.storage_class_name.as_deref(),
            delete_claims_on_removal: spec.storage.delete_claims_on_removal,
            external: spec.external.as_ref(),
            pod: &spec.pod,
        }
    }
}

/// Half the memory limit, in MiB: the rest is for Lucene's file cache and the JVM's own memory.
pub fn opensearch_heap_mib(resources: &ResourceRequirements) -> Result<u64, String> {
    let limit = resources
        .limits
        .as_ref()
        .and_then(|l| l.get("memory"))
        .ok_or("opensearch: resources.limits.memory is required to size the heap")?;
    let bytes = parse_bytes(&limit.0).ok_or(format!(
        "opensearch: memory limit {} is not a quantity",
        limit.0
    ))?;
    let mib = (bytes / MIB) as u64;
    if mib < MIN_OPENSEARCH_MEMORY_MIB {
        return Err(format!(
            "opensearch: memory limit {} is below {MIN_OPENSEARCH_MEMORY_MIB}Mi",
            limit.0
        ));
    }
    Ok(mib / 2)
}

pub fn build(cs: &ChatSystem, service: BackingService, inputs: &Inputs, plan: &mut Plan) {
    for secret in GeneratedSecret::needed(cs)
        .into_iter()
        .filter(|s| s.volume_of() == Some(service))
    {
        secret.build(cs, inputs, plan);
    }
    if service == BackingService::Mysql {
        plan.children.push(Child::ConfigMap(mysql_config_map(cs)));
    }
    plan.children
        .push(Child::Service(headless_service(cs, service)));
    let claim = claim_template(cs, service, inputs, plan);
    plan.children
        .push(Child::StatefulSet(stateful_set(cs, service, &claim)));
}

/// The claim template to apply: the existing one where the StatefulSet exists, since Kubernetes
/// refuses any change to it. A larger size grows the claim itself; what cannot be done is refused.
fn claim_template(
    cs: &ChatSystem,
    service: BackingService,
    inputs: &Inputs,
    plan: &mut Plan,
) -> ClaimTemplate {
    let settings = service.spec(&cs.spec);
    let wanted = ClaimTemplate {
        size: settings.storage_size.clone(),
        storage_class_name: settings.storage_class_name.map(str::to_string),
    };
    let Some(existing) = inputs.claim_templates.get(&service) else {
        return wanted;
    };
    let workload = service.workload_name(cs);
    if existing.storage_class_name != wanted.storage_class_name {
        plan.refused.push(format!(
            "StatefulSet {workload}: storage.storageClassName cannot change from {} to {}: a volume keeps its class",
            existing.storage_class_name.as_deref().unwrap_or("the default class"),
            wanted.storage_class_name.as_deref().unwrap_or("the default class"),
        ));
    }
    let bytes = |q: &Quantity| parse_bytes(&q.0);
    let current = inputs.claim_sizes.get(&service).unwrap_or(&existing.size);
    match (bytes(&wanted.size), bytes(current)) {
        (Some(wanted_bytes), Some(current_bytes))
            if wanted_bytes > current_bytes && inputs.claim_sizes.contains_key(&service) =>
        {
            plan.expansions.push(Expansion {
                claim: format!("data-{workload}-0"),
                size: wanted.size.clone(),
            });
        }
        (Some(wanted_bytes), Some(current_bytes)) if wanted_bytes < current_bytes => {
            plan.refused.push(format!(
                "StatefulSet {workload}: storage.size {} is below the volume's {}: a volume cannot shrink",
                wanted.size.0, current.0
            ));
        }
        _ => {}
    }
    existing.clone()
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        ..ServicePort::default()
    }
}

/// The port of the cache's Redis, a second container of the Redis pod (see [`redis_cache_container`]).
pub const REDIS_CACHE_PORT: i32 = 6380;

/// Redis's `maxmemory` from a container's memory limit: three quarters of it, leaving room for the
/// allocator's overhead, replication buffers and a fork's copied pages (Redis documents `maxmemory`
/// as the data's size, not the process's). `None` without a limit.
fn redis_maxmemory(resources: &ResourceRequirements) -> Option<u64> {
    let limit = resources.limits.as_ref()?.get("memory")?;
    let bytes = super::quantity::parse_bytes(&limit.0)?;
    Some((bytes * 0.75) as u64)
}

/// `redis-server`'s arguments for a memory bound and what to do at it.
fn memory_policy(resources: &ResourceRequirements, policy: &str) -> Vec<String> {
    match redis_maxmemory(resources) {
        Some(bytes) => vec![
            "--maxmemory".to_string(),
            bytes.to_string(),
            "--maxmemory-policy".to_string(),
            policy.to_string(),
        ],
        None => Vec::new(),
    }
}

/// The cache's Redis, beside the state's in the Redis pod: what the database can always answer again
/// (stored records, list pages), bounded by `maxmemory` and evicting the least recently used of them
/// when full, with no persistence (a restart starts it empty). It takes the Redis spec's resources.
fn redis_cache_container(cs: &ChatSystem) -> Container {
    let settings = BackingService::Redis.spec(&cs.spec);
    let secret = BackingService::Redis.credentials_secret(cs);
    let mut args: Vec<String> = ["--port", &REDIS_CACHE_PORT.to_string()]
        .map(String::from)
        .to_vec();
    args.extend(memory_policy(settings.resources, "allkeys-lru"));
    args.extend(
        [
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "$(REDIS_PASSWORD)",
        ]
        .map(String::from),
    );
    Container {
        name: "redis-cache".to_string(),
        image: Some(settings.image.to_string()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(vec!["redis-server".to_string()]),
        args: Some(args),
        env: Some(vec![
            secret_env("REDIS_PASSWORD", &secret, "password"),
            secret_env("REDISCLI_AUTH", &secret, "password"),
        ]),
        ports: Some(vec![container_port("cache", REDIS_CACHE_PORT)]),
        resources: Some(settings.resources.clone()),
        security_context: Some(container_security_context(false)),
        startup_probe: Some(tcp_probe("cache", 5, 30)),
        liveness_probe: Some(tcp_probe("cache", 20, 6)),
        readiness_probe: Some(exec_probe(
            &format!("redis-cli -p {REDIS_CACHE_PORT} ping | grep -q PONG"),
            10,
            5,
            3,
        )),
        ..Container::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        ..ContainerPort::default()
    }
}

fn headless_service(cs: &ChatSystem, service: BackingService) -> Service {
    let mut ports = vec![service_port(service.name(), service.port())];
    if service == BackingService::Redis {
        ports.push(service_port("cache", REDIS_CACHE_PORT));
    }
    if service == BackingService::Rabbitmq {
        ports.push(service_port("management", RABBITMQ_MANAGEMENT_PORT));
        // By number: naming it in the container would change the pod template and restart the broker.
        ports.push(ServicePort {
            name: Some("prometheus".to_string()),
            port: RABBITMQ_PROMETHEUS_PORT,
            target_port: Some(IntOrString::Int(RABBITMQ_PROMETHEUS_PORT)),
            ..ServicePort::default()
        });
    }
    Service {
        metadata: metadata(cs, &service.workload_name(cs), service.name()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(selector_labels(cs, service.name())),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn stateful_set(cs: &ChatSystem, service: BackingService, claim: &ClaimTemplate) -> StatefulSet {
    let settings = service.spec(&cs.spec);
    let name = service.workload_name(cs);
    let (data_path, data_subdirectory) = service.data_mount();
    let mut mounts = vec![VolumeMount {
        name: "data".to_string(),
        mount_path: data_path.to_string(),
        sub_path: Some(data_subdirectory.to_string()),
        ..VolumeMount::default()
    }];
    let mut volumes = Vec::new();
    let mut init_containers = Vec::new();
    let mut annotations = BTreeMap::new();
    if let Some(marker) = service.root_layout_marker() {
        init_containers.push(Container {
            env: Some(vec![
                value_env("MARKER", marker),
                value_env("SUBDIR", data_subdirectory),
            ]),
            ..shell_step(
                "adopt-data-layout",
                settings.image,
                ADOPT_LAYOUT_SCRIPT,
                vec![VolumeMount {
                    name: "data".to_string(),
                    mount_path: "/volume".to_string(),
                    ..VolumeMount::default()
                }],
            )
        });
    }
    match service {
        BackingService::Mysql => {
            let config = mysql_config(cs);
            annotations.insert("chatsys.io/config-hash".to_string(), config_hash(&config));
            volumes.push(Volume {
                name: "config".to_string(),
                config_map: Some(ConfigMapVolumeSource {
                    name: mysql_config_name(cs),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "config".to_string(),
                mount_path: MYSQL_CONFIG_DIR.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        BackingService::Rabbitmq => {
            volumes.push(Volume {
                name: "home".to_string(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            volumes.push(Volume {
                name: "erlang-cookie".to_string(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(GeneratedSecret::ErlangCookie.name(cs)),
                    default_mode: Some(0o400),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            let home = VolumeMount {
                name: "home".to_string(),
                mount_path: RABBITMQ_HOME.to_string(),
                ..VolumeMount::default()
            };
            // The cookie where RabbitMQ and its CLI tools read it (`$HOME/.erlang.cookie`), with the
            // owner-only mode Erlang demands: a Secret volume cannot give it, since the kubelet adds
            // group read to a Secret's files when the pod has an `fsGroup` (kubernetes#57923).
            let copy = format!(
                "cp {ERLANG_COOKIE_SECRET_PATH}/{ERLANG_COOKIE_KEY} {RABBITMQ_HOME}/.erlang.cookie \
                 && chmod 0400 {RABBITMQ_HOME}/.erlang.cookie"
            );
            init_containers.push(shell_step(
                "erlang-cookie",
                settings.image,
                &copy,
                vec![
                    home.clone(),
                    VolumeMount {
                        name: "erlang-cookie".to_string(),
                        mount_path: ERLANG_COOKIE_SECRET_PATH.to_string(),
                        read_only: Some(true),
                        ..VolumeMount::default()
                    },
                ],
            ));
            // The home directory first: the data directory is mounted inside it.
            mounts.insert(0, home);
        }
        BackingService::Redis | BackingService::Opensearch => {}
    }
    let container = Container {
        name: service.name().to_string(),
        image: Some(settings.image.to_string()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        resources: Some(settings.resources.clone()),
        security_context: Some(container_security_context(false)),
        volume_mounts: Some(mounts),
        ..container_specifics(cs, service)
    };
    let claim_policy = if settings.delete_claims_on_removal {
        "Delete"
    } else {
        "Retain"
    };
    StatefulSet {
        metadata: metadata(cs, &name, service.name()),
        spec: StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name),
            selector: selector(selector_labels(cs, service.name())),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(claim_policy.to_string()),
                    when_scaled: Some("Retain".to_string()),
                },
            ),
            template: with_pod_settings(
                PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(stable_labels(cs, service.name())),
                        annotations: (!annotations.is_empty()).then_some(annotations),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(with_pull_secrets(
                        cs,
                        PodSpec {
                            security_context: Some(pod_security_context(service.uid())),
                            termination_grace_period_seconds: Some(
                                service.termination_grace_secs(),
                            ),
                            init_containers: (!init_containers.is_empty())
                                .then_some(init_containers),
                            containers: match service {
                                BackingService::Redis => vec![container, redis_cache_container(cs)],
                                _ => vec![container],
                            },
                            volumes: (!volumes.is_empty()).then_some(volumes),
                            ..PodSpec::default()
                        },
                    )),
                },
                settings.pod,
                service.name(),
            ),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".to_string()),
                    labels: Some(stable_labels(cs, service.name())),
                    ..ObjectMeta::default()
                },
                spec: Some(super::claim_spec(
                    &claim.size,
                    claim.storage_class_name.clone(),
                )),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

/// A one-shot init container running `script` with the service's own image (which has a shell), as
/// restricted as the service and with little CPU and memory.
fn shell_step(name: &str, image: &str, script: &str, mounts: Vec<VolumeMount>) -> Container {
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(vec!["sh".to_string(), "-c".to_string(), script.to_string()]),
        resources: Some(small_resources()),
        security_context: Some(container_security_context(true)),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// Requests and limits of the one-shot init containers.
fn small_resources() -> ResourceRequirements {
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])
    };
    ResourceRequirements {
        requests: Some(quantities("10m", "16Mi")),
        limits: Some(quantities("100m", "64Mi")),
        ..ResourceRequirements::default()
    }
}

pub fn mysql_config_name(cs: &ChatSystem) -> String {
    child_name(cs, "mysql")
}

/// MySQL's connection limit: what every process may open at once, at the replica maxima the spec
/// allows (each API's and worker's pool, and a migration), with a quarter more (at least 20) for
/// rolling updates, which run old and new pods together, and for an administrator.
pub fn mysql_max_connections(cs: &ChatSystem) -> u32 {
    let most = |replicas: i32, autoscaling: &crate::crd::Autoscaling| {
        let most = if autoscaling.enabled {
            autoscaling.max_replicas
        } else {
            replicas
        };
        u32::try_from(most).unwrap_or(0)
    };
    let api = most(cs.spec.api.replicas, &cs.spec.api.autoscaling);
    let worker = most(
        cs.spec.worker.replicas,
        &cs.spec.worker.autoscaling.on_cpu(),
    );
    let needed =
        api * connections::API_POOL + worker * connections::WORKER_POOL + connections::MIGRATE;
    needed + (needed / 4).max(20)
}

fn mysql_config(cs: &ChatSystem) -> BTreeMap<String, String> {
    BTreeMap::from([(
        MYSQL_CONFIG_FILE.to_string(),
        format!(
            "# Written by chatsys-operator; edits are replaced.\n[mysqld]\nmax_connections = {}\n",
            mysql_max_connections(cs)
        ),
    )])
}

/// The ConfigMap of MySQL's settings file.
fn mysql_config_map(cs: &ChatSystem) -> ConfigMap {
    ConfigMap {
        metadata: metadata(cs, &mysql_config_name(cs), BackingService::Mysql.name()),
        data: Some(mysql_config(cs)),
        ..ConfigMap::default()
    }
}

fn exec_probe(command: &str, period: i32, timeout: i32, failures: i32) -> Probe {
    let action = Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "sh".to_string(),
                "-c".to_string(),
                command.to_string(),
            ]),
        }),
        ..Probe::default()
    };
    probe(action, period, timeout, failures)
}

fn tcp_probe(port: &str, period: i32, failures: i32) -> Probe {
    let action = Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(port.to_string()),
            ..TCPSocketAction::default()
        }),
        ..Probe::default()
    };
    probe(action, period, 5, failures)
}

/// Liveness only asks whether the process still accepts connections, and gives it two minutes: a
/// database stalled on slow storage is not helped by a restart (which replays its logs on the same
/// storage). Readiness does the fine-grained checking.
fn liveness(service: BackingService) -> Probe {
    tcp_probe(service.name(), 20, 6)
}

/// Env, ports, arguments and probes particular to each service. A startup probe gives a first start
/// (initialising the data directory) time before liveness counts.
fn container_specifics(cs: &ChatSystem, service: BackingService) -> Container {
    let secret = service.credentials_secret(cs);
    let ports = Some(vec![container_port(service.name(), service.port())]);
    match service {
        BackingService::Mysql => Container {
            env: Some(vec![
                secret_env("MYSQL_ROOT_PASSWORD", &secret, "root-password"),
                secret_env("MYSQL_USER", &secret, "username"),
                secret_env("MYSQL_PASSWORD", &secret, "password"),
                value_env("MYSQL_DATABASE", MYSQL_DATABASE),
            ]),
            ports,
            startup_probe: Some(exec_probe("mysqladmin ping -h 127.0.0.1", 10, 5, 30)),
            liveness_probe: Some(liveness(service)),
            readiness_probe: Some(exec_probe(
                "MYSQL_PWD=\"$MYSQL_ROOT_PASSWORD\" mysql -h 127.0.0.1 -u root -e 'SELECT 1'",
                10,
                5,
                3,
            )),
            ..Container::default()
        },
        // Numbers, tokens, idempotency keys and writes not yet stored: never evicted. At its
        // `maxmemory` it refuses writes (the API answers 503) rather than drop one.
        BackingService::Redis => Container {
            command: Some(vec!["redis-server".to_string()]),
            args: Some(
                ["--appendonly", "yes", "--requirepass", "$(REDIS_PASSWORD)"]
                    .map(String::from)
                    .into_iter()
                    .chain(memory_policy(&cs.spec.redis.resources, "noeviction"))
                    .collect(),
            ),
            env: Some(vec![
                secret_env("REDIS_PASSWORD", &secret, "password"),
                secret_env("REDISCLI_AUTH", &secret, "password"),
            ]),
            ports,
            startup_probe: Some(tcp_probe(service.name(), 5, 30)),
            liveness_probe: Some(liveness(service)),
            readiness_probe: Some(exec_probe("redis-cli ping | grep -q PONG", 10, 5, 3)),
            ..Container::default()
        },
        BackingService::Rabbitmq => Container {
            env: Some(vec![
                secret_env("RABBITMQ_DEFAULT_USER", &secret, "username"),
                secret_env("RABBITMQ_DEFAULT_PASS", &secret, "password"),
            ]),
            ports: Some(vec![
                container_port(service.name(), service.port()),
                container_port("management", RABBITMQ_MANAGEMENT_PORT),
            ]),
            startup_probe: Some(exec_probe("rabbitmq-diagnostics -q ping", 10, 20, 30)),
            liveness_probe: Some(liveness(service)),
            readiness_probe: Some(exec_probe(
                "rabbitmq-diagnostics -q check_port_connectivity",
                10,
                20,
                3,
            )),
            ..Container::default()
        },
        BackingService::Opensearch => {
            // `validate` refused a limit the heap cannot be sized from.
            let heap = opensearch_heap_mib(&cs.spec.opensearch.resources)
                .unwrap_or(MIN_OPENSEARCH_MEMORY_MIB / 2);
            Container {
                env: Some(vec![
                    value_env("discovery.type", "single-node"),
                    value_env("DISABLE_SECURITY_PLUGIN", "true"),
                    value_env("DISABLE_INSTALL_DEMO_CONFIG", "true"),
                    // Without mmap the node does not need vm.max_map_count raised, so no privileged
                    // init container.
                    value_env("node.store.allow_mmap", "false"),
                    value_env("OPENSEARCH_JAVA_OPTS", &format!("-Xms{heap}m -Xmx{heap}m")),
                ]),
                ports,
                startup_probe: Some(tcp_probe(service.name(), 10, 30)),
                liveness_probe: Some(liveness(service)),
                readiness_probe: Some(probe(
                    http_get("/_cluster/health?local=true", service.name()),
                    10,
                    5,
                    3,
                )),
                ..Container::default()
            }
        }
    }
}
