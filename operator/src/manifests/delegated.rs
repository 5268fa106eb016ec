//! Backing services run by an operator the platform team already runs, through its custom resource
//! instead of this operator's StatefulSet: a replicated `MariaDB` with its `Backup` (mariadb-operator),
//! a `RabbitmqCluster` (RabbitMQ's cluster-operator), an `OpenSearchCluster` (the OpenSearch
//! operator). Each is built only where the cluster serves its API; otherwise the plan says what is
//! missing, and nothing of that operator's is applied.
//!
//! Names: each resource's name is chosen so that the StatefulSets its operator derives from it stay
//! within the 52 characters a StatefulSet name may have for its pods' `controller-revision-hash`
//! label (see `crd::MAX_NAME_LENGTH`): mariadb-operator names its StatefulSet as the `MariaDB`,
//! cluster-operator `<name>-server`, the OpenSearch operator `<name>-<node pool>`.

use super::backing::{BackingService, MIN_OPENSEARCH_MEMORY_MIB, Runner, opensearch_heap_mib};
use super::backup::{backup_claim_name, longest_interval};
use super::generated::GeneratedSecret;
use super::{Inputs, MissingApi, Plan, child_name, metadata};
use crate::apis::{
    Backup, BackupSchedule, BackupSpec, BackupStorage, BackupVolume, ClaimRef,
    GeneratedSecretKeyRef, MariaDB, MariaDBSpec, MariaDbAffinity, MariaDbPrimary,
    MariaDbReplication, MariaDbStorage, NameRef, OpenSearchClaim, OpenSearchCluster,
    OpenSearchClusterSpec, OpenSearchGeneral, OpenSearchNodePool, OpenSearchPersistence,
    OptionalApi, PodMetadata, RabbitmqCluster, RabbitmqClusterSpec, RabbitmqPersistence, S3Storage,
    S3Tls, SecretKeyRef,
};
use crate::crd::{ChatSystem, MysqlBackupSpec, MysqlDefaults, PodSettings, ServiceDefaults};
use crate::kinds::Child;
use k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy;
use std::collections::BTreeMap;

/// The MySQL user chatsys connects as: the one the MariaDB creates, as the builtin's generated
/// credentials name it.
pub const MARIADB_USER: &str = "chatsys";
/// The Secret keys of the S3 credentials `mysql.backup.target.s3.credentialsSecret` names.
const S3_ACCESS_KEY_ID: &str = "access-key-id";
const S3_SECRET_ACCESS_KEY: &str = "secret-access-key";
/// The one node pool of an OpenSearchCluster: every node both holds data and may be elected
/// cluster manager (`master`, which the operator renames `cluster_manager` for OpenSearch 2 and later).
const OPENSEARCH_NODE_POOL: &str = "nodes";

pub fn build(cs: &ChatSystem, inputs: &Inputs, plan: &mut Plan) {
    for service in BackingService::ALL {
        let Runner::Delegated(api) = service.runner(&cs.spec) else {
            continue;
        };
        let needed_for = match service {
            BackingService::Mysql => {
                "mysql.provider mariadb-operator (MySQL, the migration, the API and the worker wait for it)"
            }
            BackingService::Rabbitmq => {
                "rabbitmq.provider rabbitmq-cluster-operator (RabbitMQ, the migration, the API and the worker wait for it)"
            }
            BackingService::Opensearch => {
                "opensearch.provider opensearch-operator (OpenSearch, the migration, the API and the worker wait for it)"
            }
            // Redis has no provider.
            BackingService::Redis => continue,
        };
        if service.has_generated_credentials(&cs.spec) {
            GeneratedSecret::Credentials(service).build(cs, inputs, plan);
        }
        if !inputs.served.contains(&api) {
            plan.missing.push(MissingApi { api, needed_for });
            continue;
        }
        plan.children.push(match service {
            BackingService::Rabbitmq => Child::RabbitmqCluster(rabbitmq_cluster(cs)),
            BackingService::Opensearch => Child::OpenSearchCluster(opensearch_cluster(cs)),
            _ => Child::MariaDB(mariadb(cs)),
        });
        if service == BackingService::Mysql
            && let Some(backup) = &cs.spec.mysql.backup
        {
            plan.children
                .push(Child::Backup(mariadb_backup(cs, backup)));
        }
    }
}

/// Whether a backing service waits for an operator the cluster does not serve: the schema migration
/// and the API and worker wait with it, rather than fail for want of a database.
pub fn waits_for_an_operator(plan: &Plan) -> bool {
    plan.missing
        .iter()
        .any(|missing| missing.api.runs_a_backing_service())
}

/// The name of the resource another operator runs a service by.
pub fn resource_name(cs: &ChatSystem, service: BackingService) -> String {
    match service {
        BackingService::Rabbitmq => child_name(cs, "mq"),
        BackingService::Opensearch => child_name(cs, "os"),
        BackingService::Mysql | BackingService::Redis => service.workload_name(cs),
    }
}

/// The Service mariadb-operator points at the current primary, for writes (mariadb-operator
/// `api/v1alpha1/mariadb_keys.go`, `PrimaryServiceKey`; docs/high_availability.md).
pub fn mysql_primary_service(cs: &ChatSystem) -> String {
    format!("{}-primary", resource_name(cs, BackingService::Mysql))
}

/// cluster-operator's client Service: named as the RabbitmqCluster (rabbitmq/cluster-operator
/// `ChildResourceName("")`, the `serviceReference` of its status).
pub fn rabbitmq_service(cs: &ChatSystem) -> String {
    resource_name(cs, BackingService::Rabbitmq)
}

/// cluster-operator's default user, keys `username` and `password` (rabbitmq/cluster-operator
/// `internal/resource/default_user_secret.go`: URL-safe base64, so usable in a URL as they are).
pub fn rabbitmq_default_user_secret(cs: &ChatSystem) -> String {
    format!(
        "{}-default-user",
        resource_name(cs, BackingService::Rabbitmq)
    )
}

/// The labels and annotations of a service's pods, where the spec adds any.
fn pod_metadata(pod: &PodSettings) -> Option<PodMetadata> {
    let non_empty = |map: &BTreeMap<String, String>| (!map.is_empty()).then(|| map.clone());
    let metadata = PodMetadata {
        labels: non_empty(&pod.pod_labels),
        annotations: non_empty(&pod.pod_annotations),
    };
    (metadata != PodMetadata::default()).then_some(metadata)
}

fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

/// A replicated MariaDB: a primary for writes and `replicas - 1` replicas, the operator promoting one
/// when the primary fails; the database and user chatsys uses, with the passwords of the credentials
/// Secret this operator generates (as for the builtin MySQL, so a kept Secret still opens kept volumes).
fn mariadb(cs: &ChatSystem) -> MariaDB {
    let mysql = &cs.spec.mysql;
    let credentials = BackingService::Mysql.credentials_secret(cs);
    let key = |key: &str| GeneratedSecretKeyRef {
        name: credentials.clone(),
        key: key.to_string(),
        generate: false,
    };
    let claims = if mysql.storage.delete_claims_on_removal {
        "Delete"
    } else {
        "Retain"
    };
    let spec = MariaDBSpec {
        // The builtin's default is MySQL's image, which mariadb-operator cannot run: its own default
        // MariaDB then. A named image is the user's choice.
        image: (mysql.image != MysqlDefaults::IMAGE).then(|| mysql.image.clone()),
        image_pull_secrets: non_empty(&cs.spec.image_pull_secrets),
        replicas: mysql.replicas,
        replication: MariaDbReplication {
            enabled: true,
            primary: MariaDbPrimary {
                auto_failover: true,
            },
        },
        root_password_secret_key_ref: key("root-password"),
        username: MARIADB_USER.to_string(),
        password_secret_key_ref: key("password"),
        database: super::backing::MYSQL_DATABASE.to_string(),
        my_cnf: format!(
            "[mariadb]\nmax_connections = {}\n",
            super::backing::mysql_max_connections(cs)
        ),
        storage: MariaDbStorage {
            size: mysql.storage.size.clone(),
            storage_class_name: mysql.storage.storage_class_name.clone(),
            pvc_retention_policy: StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(claims.to_string()),
                when_scaled: Some("Retain".to_string()),
            },
        },
        resources: Some(mysql.resources.clone()),
        pod_metadata: pod_metadata(&mysql.pod),
        node_selector: (!mysql.pod.node_selector.is_empty())
            .then(|| mysql.pod.node_selector.clone()),
        tolerations: non_empty(&mysql.pod.tolerations),
        topology_spread_constraints: non_empty(&mysql.pod.topology_spread_constraints),
        // One server per node, so a node lost takes one replica; mariadb-operator's affinity has no
        // place for pod affinity, only for the node affinity the spec may give.
        affinity: MariaDbAffinity {
            anti_affinity_enabled: true,
            node_affinity: mysql
                .pod
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.clone()),
        },
    };
    let name = resource_name(cs, BackingService::Mysql);
    MariaDB {
        metadata: metadata(cs, &name, BackingService::Mysql.name()),
        spec,
    }
}

/// mariadb-operator's scheduled logical backups of the MariaDB: the schedule as given, kept for
/// `keep` times the longest time between two runs (so at least `keep` backups remain: mariadb-operator
/// removes by age, `maxRetention`, not by count), to the bucket or the backup claim (which
/// `backup::build` makes, and which outlives the ChatSystem).
fn mariadb_backup(cs: &ChatSystem, backup: &MysqlBackupSpec) -> Backup {
    // `validate` refused a schedule the interval cannot be read from.
    let interval = longest_interval(&backup.schedule)
        .map_or(24 * 60, |interval| interval.as_secs().unsigned_abs() / 60);
    let storage = match (&backup.target.s3, &backup.target.volume_claim) {
        (Some(bucket), _) => {
            // mariadb-operator takes a host and port, and TLS apart (docs/logical_backup.md).
            let (tls, endpoint) = match bucket.endpoint.split_once("://") {
                Some((scheme, host)) => (scheme == "https", host.trim_end_matches('/')),
                None => (true, bucket.endpoint.as_str()),
            };
            let secret_key = |key: &str| SecretKeyRef {
                name: bucket.credentials_secret.clone(),
                key: key.to_string(),
            };
            BackupStorage {
                s3: Some(S3Storage {
                    bucket: bucket.bucket.clone(),
                    endpoint: endpoint.to_string(),
                    prefix: (!bucket.prefix.is_empty()).then(|| bucket.prefix.clone()),
                    region: bucket.region.clone(),
                    access_key_id_secret_key_ref: secret_key(S3_ACCESS_KEY_ID),
                    secret_access_key_secret_key_ref: secret_key(S3_SECRET_ACCESS_KEY),
                    tls: S3Tls { enabled: tls },
                }),
                volume: None,
            }
        }
        (None, _) => BackupStorage {
            s3: None,
            volume: Some(BackupVolume {
                persistent_volume_claim: ClaimRef {
                    claim_name: backup_claim_name(cs),
                },
            }),
        },
    };
    let name = resource_name(cs, BackingService::Mysql);
    Backup {
        metadata: metadata(cs, &name, BackingService::Mysql.name()),
        spec: BackupSpec {
            maria_db_ref: NameRef { name: name.clone() },
            schedule: BackupSchedule {
                cron: backup.schedule.clone(),
            },
            max_retention: duration(u64::from(backup.keep.unsigned_abs()) * interval),
            compression: "gzip".to_string(),
            storage,
        },
    }
}

/// Minutes as a Go duration, as mariadb-operator reads `maxRetention`.
fn duration(minutes: u64) -> String {
    if minutes.is_multiple_of(60) {
        format!("{}h", minutes / 60)
    } else {
        format!("{minutes}m")
    }
}

/// A RabbitmqCluster of `replicas` brokers; cluster-operator makes their default user and its Secret.
fn rabbitmq_cluster(cs: &ChatSystem) -> RabbitmqCluster {
    let rabbitmq = &cs.spec.rabbitmq;
    let name = resource_name(cs, BackingService::Rabbitmq);
    RabbitmqCluster {
        metadata: metadata(cs, &name, BackingService::Rabbitmq.name()),
        spec: RabbitmqClusterSpec {
            replicas: rabbitmq.replicas,
            image: rabbitmq.image.clone(),
            image_pull_secrets: non_empty(&cs.spec.image_pull_secrets),
            resources: rabbitmq.resources.clone(),
            persistence: RabbitmqPersistence {
                storage: rabbitmq.storage.size.clone(),
                storage_class_name: rabbitmq.storage.storage_class_name.clone(),
            },
            tolerations: non_empty(&rabbitmq.pod.tolerations),
            affinity: rabbitmq.pod.affinity.clone(),
        },
    }
}

/// The OpenSearch version of an image's tag (`opensearchproject/opensearch:2.17.1` runs 2.17.1),
/// which the operator needs to know what the nodes understand.
fn image_version(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rsplit_once(':') {
        Some((_, tag)) if !tag.contains('/') => tag,
        _ => "latest",
    }
}

/// An OpenSearchCluster of `replicas` nodes, each holding data and eligible as cluster manager, behind
/// the Service the builtin one had, so the API's URL does not change. Without `security` the operator
/// runs OpenSearch with its security plugin disabled (opensearch-k8s-operator
/// `pkg/reconcilers/configuration.go`: `plugins.security.disabled` when `IsSecurityPluginEnabled` is
/// false, which without HTTP TLS it is): plain HTTP, as the builtin, since the API's client trusts
/// only public certificate authorities and the operator's would be its own. As the builtin, the nodes
/// do not use mmap, so no privileged init container raises `vm.max_map_count`.
fn opensearch_cluster(cs: &ChatSystem) -> OpenSearchCluster {
    let opensearch = &cs.spec.opensearch;
    // `validate` refused a limit the heap cannot be sized from.
    let heap = opensearch_heap_mib(&opensearch.resources).unwrap_or(MIN_OPENSEARCH_MEMORY_MIB / 2);
    let pod = &opensearch.pod;
    let name = resource_name(cs, BackingService::Opensearch);
    OpenSearchCluster {
        metadata: metadata(cs, &name, BackingService::Opensearch.name()),
        spec: OpenSearchClusterSpec {
            general: OpenSearchGeneral {
                service_name: BackingService::Opensearch.workload_name(cs),
                version: image_version(&opensearch.image).to_string(),
                image: opensearch.image.clone(),
                image_pull_secrets: non_empty(&cs.spec.image_pull_secrets),
                http_port: BackingService::Opensearch.port(),
                set_vm_max_map_count: false,
                additional_config: BTreeMap::from([(
                    "node.store.allow_mmap".to_string(),
                    "false".to_string(),
                )]),
            },
            node_pools: vec![OpenSearchNodePool {
                component: OPENSEARCH_NODE_POOL.to_string(),
                replicas: opensearch.replicas,
                roles: vec!["master".to_string(), "data".to_string()],
                disk_size: opensearch.storage.size.clone(),
                persistence: OpenSearchPersistence {
                    pvc: OpenSearchClaim {
                        storage_class: opensearch.storage.storage_class_name.clone(),
                        access_modes: vec!["ReadWriteOnce".to_string()],
                    },
                },
                jvm: format!("-Xms{heap}m -Xmx{heap}m"),
                resources: opensearch.resources.clone(),
                labels: (!pod.pod_labels.is_empty()).then(|| pod.pod_labels.clone()),
                annotations: (!pod.pod_annotations.is_empty()).then(|| pod.pod_annotations.clone()),
                node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
                tolerations: non_empty(&pod.tolerations),
                affinity: pod.affinity.clone(),
                topology_spread_constraints: non_empty(&pod.topology_spread_constraints),
            }],
        },
    }
}

/// What `validate` checks of a delegated MySQL: no `restoreFrom`, which mariadb-operator cannot take
/// as chatsys names backups (it restores from a place and a point in time, `bootstrapFrom`, not a named
/// backup).
pub fn problems(cs: &ChatSystem) -> Vec<String> {
    let mut problems = Vec::new();
    if BackingService::Mysql.runner(&cs.spec) != Runner::Delegated(OptionalApi::MariadbOperator) {
        return problems;
    }
    if cs.spec.mysql.restore_from.is_some() {
        problems.push(
            "mysql: restoreFrom is not supported with provider mariadb-operator; bootstrap the MariaDB from mariadb-operator's own backups (its bootstrapFrom)"
                .to_string(),
        );
    }
    problems
}
