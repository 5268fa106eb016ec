//! Builder tests of the backing services delegated to the operators a platform team already runs: what
//! a user sees of each (no StatefulSet of chatsys's, the other operator's resource with its replicas,
//! the API and the worker reading that operator's Services and Secrets, MySQL's backups), from
//! `examples/ha.yaml` and variations of it.

mod common;

use chatsys_operator::apis::OptionalApi;
use chatsys_operator::crd::ChatSystem;
use chatsys_operator::kinds::{Child, ChildKind};
use chatsys_operator::manifests::{self, BackingService};
use chatsys_operator::render;
use common::{children, container, env, find, fresh_inputs, of_kind};
use serde_json::{Value, json};

fn ha() -> ChatSystem {
    let path = format!("{}/../examples/ha.yaml", env!("CARGO_MANIFEST_DIR"));
    let mut cs = render::read(&path).expect("the example parses").remove(0);
    cs.metadata.uid = Some("6f1c7a52-8d7e-4f0e-9a64-0d3b8f7c2e11".to_string());
    cs
}

fn built(cs: &ChatSystem) -> Vec<Child> {
    children(cs, &fresh_inputs(cs))
}

fn names(built: &[Child], kind: ChildKind) -> Vec<String> {
    of_kind(built, kind)
        .iter()
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The env a container of a Deployment or the migration Job gets for `name`.
fn env_of(workload: &Value, name: &str) -> Value {
    env(container(workload, workload_container(workload)), name).clone()
}

fn workload_container(workload: &Value) -> &str {
    workload["spec"]["template"]["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap_or_default()
}

fn secret_ref(secret: &str, key: &str) -> Value {
    json!({ "secretKeyRef": { "name": secret, "key": key } })
}

#[test]
fn each_delegated_service_is_the_other_operators_resource_and_no_statefulset_of_ours() {
    let built = built(&ha());
    assert_eq!(
        names(&built, ChildKind::StatefulSet),
        ["chat-redis"],
        "only Redis runs here"
    );
    assert_eq!(names(&built, ChildKind::MariaDB), ["chat-mysql"]);
    assert_eq!(names(&built, ChildKind::RabbitmqCluster), ["chat-mq"]);
    assert_eq!(names(&built, ChildKind::OpenSearchCluster), ["chat-os"]);
    assert_eq!(
        names(&built, ChildKind::Service),
        ["chat-redis", "chat-api", "chat-worker"],
        "no headless Service of a delegated service"
    );
    assert_eq!(
        names(&built, ChildKind::ConfigMap),
        ["chat-api", "chat-worker"],
        "no MySQL settings file: the MariaDB carries its own"
    );
    assert_eq!(
        names(&built, ChildKind::Secret),
        [
            "chat-redis-credentials",
            "chat-mysql-credentials",
            "chat-api-admin-key"
        ],
        "no RabbitMQ credentials nor Erlang cookie: its operator makes its own"
    );
    for object in of_kind(&built, ChildKind::MariaDB)
        .into_iter()
        .chain(of_kind(&built, ChildKind::RabbitmqCluster))
        .chain(of_kind(&built, ChildKind::OpenSearchCluster))
    {
        assert_eq!(
            object["metadata"]["ownerReferences"][0]["kind"],
            "ChatSystem"
        );
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "chatsys-operator"
        );
    }
}

#[test]
fn mysql_is_a_replicated_mariadb_with_failover_and_chatsyss_database_user_and_passwords() {
    let built = built(&ha());
    let mariadb = find(&built, ChildKind::MariaDB, "chat-mysql");
    assert_eq!(mariadb["apiVersion"], "k8s.mariadb.com/v1alpha1");
    let spec = &mariadb["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(
        spec["replication"],
        json!({ "enabled": true, "primary": { "autoFailover": true } })
    );
    assert_eq!(spec["image"], "mariadb:11.4");
    assert_eq!(spec["database"], "chatsys");
    assert_eq!(spec["username"], "chatsys");
    assert_eq!(
        spec["passwordSecretKeyRef"],
        json!({ "name": "chat-mysql-credentials", "key": "password", "generate": false })
    );
    assert_eq!(
        spec["rootPasswordSecretKeyRef"]["name"],
        "chat-mysql-credentials"
    );
    assert_eq!(spec["storage"]["size"], "50Gi");
    assert_eq!(
        spec["storage"]["pvcRetentionPolicy"]["whenDeleted"], "Retain",
        "volumes are kept by default, as the builtin's"
    );
    assert_eq!(spec["affinity"]["antiAffinityEnabled"], true);
    assert!(
        spec["myCnf"]
            .as_str()
            .is_some_and(|cnf| cnf.contains("max_connections = "))
    );

    let mut default_image = ha();
    default_image.spec.mysql.image = chatsys_operator::crd::MysqlSpec::default().image.clone();
    let mariadb = find(
        &children(&default_image, &fresh_inputs(&default_image)),
        ChildKind::MariaDB,
        "chat-mysql",
    );
    assert!(
        mariadb["spec"].get("image").is_none(),
        "the builtin's MySQL image is not MariaDB: mariadb-operator's default runs"
    );
}

#[test]
fn the_api_the_worker_and_the_migration_write_to_the_mariadbs_primary() {
    let built = built(&ha());
    let migration = of_kind(&built, ChildKind::Job).remove(0);
    for workload in [
        find(&built, ChildKind::Deployment, "chat-api"),
        find(&built, ChildKind::Deployment, "chat-worker"),
        migration,
    ] {
        assert_eq!(env_of(&workload, "MYSQL_USERNAME")["value"], "chatsys");
        assert_eq!(
            env_of(&workload, "MYSQL_PASSWORD")["valueFrom"],
            secret_ref("chat-mysql-credentials", "password")
        );
        assert_eq!(
            env_of(&workload, "DATABASE_URL")["value"],
            "mysql://$(MYSQL_USERNAME):$(MYSQL_PASSWORD)@chat-mysql-primary:3306/chatsys"
        );
    }
}

fn backup_of(changes: impl FnOnce(&mut ChatSystem)) -> Value {
    let mut cs = ha();
    changes(&mut cs);
    find(&built(&cs), ChildKind::Backup, "chat-mysql")
}

#[test]
fn mysqls_backup_runs_on_the_schedule_to_the_bucket_and_keeps_at_least_keep_backups() {
    let backup = backup_of(|_| {});
    assert_eq!(backup["apiVersion"], "k8s.mariadb.com/v1alpha1");
    let spec = &backup["spec"];
    assert_eq!(spec["mariaDbRef"], json!({ "name": "chat-mysql" }));
    assert_eq!(spec["schedule"], json!({ "cron": "0 3 * * *" }));
    assert_eq!(spec["maxRetention"], "336h", "14 daily backups");
    assert_eq!(
        spec["storage"],
        json!({ "s3": {
            "bucket": "chat-prod-backups",
            "endpoint": "s3.eu-west-1.amazonaws.com",
            "prefix": "chatsys/mysql",
            "region": "eu-west-1",
            "accessKeyIdSecretKeyRef": { "name": "chat-backup-bucket", "key": "access-key-id" },
            "secretAccessKeySecretKeyRef": { "name": "chat-backup-bucket", "key": "secret-access-key" },
            "tls": { "enabled": true },
        } })
    );

    // The retention covers `keep` of the longest gaps between two runs.
    for (schedule, keep, retention) in [
        ("0 2 * * 0", 4, "672h"),
        ("@weekly", 4, "672h"),
        ("0 3 * * 1,4", 2, "192h"),
        ("*/30 * * * *", 48, "24h"),
        ("15 */6 * * *", 3, "18h"),
        ("0 0 1 * *", 3, "2232h"),
    ] {
        let backup = backup_of(|cs| {
            let backup = cs.spec.mysql.backup.as_mut().expect("a backup");
            backup.schedule = schedule.to_string();
            backup.keep = keep;
        });
        assert_eq!(backup["spec"]["maxRetention"], retention, "{schedule}");
    }

    let mut on_claim = ha();
    let target = &mut on_claim
        .spec
        .mysql
        .backup
        .as_mut()
        .expect("a backup")
        .target;
    target.s3 = None;
    target.volume_claim = Some(chatsys_operator::crd::BackupClaim {
        size: k8s_openapi::apimachinery::pkg::api::resource::Quantity("20Gi".to_string()),
        storage_class_name: None,
    });
    let on_claim = built(&on_claim);
    assert_eq!(
        find(&on_claim, ChildKind::Backup, "chat-mysql")["spec"]["storage"],
        json!({ "volume": { "persistentVolumeClaim": { "claimName": "chat-mysql-backups" } } }),
        "the backup claim chatsys keeps beyond the ChatSystem"
    );
    let claim = find(
        &on_claim,
        ChildKind::PersistentVolumeClaim,
        "chat-mysql-backups",
    );
    assert!(
        claim["metadata"].get("ownerReferences").is_none(),
        "it outlives the ChatSystem"
    );
    assert!(
        of_kind(&on_claim, ChildKind::CronJob).is_empty(),
        "mariadb-operator's Backup replaces chatsys's own backups"
    );

    let mut no_backup = ha();
    no_backup.spec.mysql.backup = None;
    assert!(of_kind(&built(&no_backup), ChildKind::Backup).is_empty());
}

#[test]
fn a_delegated_mysql_refuses_a_schedule_it_cannot_read_and_a_restore_it_cannot_name() {
    let mut cs = ha();
    cs.spec.mysql.backup.as_mut().expect("a backup").schedule = "every night".to_string();
    cs.spec.mysql.restore_from = Some(chatsys_operator::crd::RestoreSpec {
        backup: "chat-20260101-030000".to_string(),
        claim_name: None,
        s3: None,
    });
    let problems = manifests::validate(&cs, &fresh_inputs(&cs))
        .expect_err("refused")
        .0;
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("every night")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("restoreFrom")),
        "{problems:?}"
    );
}

#[test]
fn rabbitmq_is_a_cluster_of_three_brokers_and_its_clients_read_the_default_user_it_makes() {
    let built = built(&ha());
    let cluster = find(&built, ChildKind::RabbitmqCluster, "chat-mq");
    assert_eq!(cluster["apiVersion"], "rabbitmq.com/v1beta1");
    assert_eq!(cluster["spec"]["replicas"], 3);
    assert_eq!(cluster["spec"]["image"], "rabbitmq:3.13-management");
    assert_eq!(cluster["spec"]["persistence"]["storage"], "2Gi");
    assert_eq!(cluster["spec"]["resources"]["limits"]["memory"], "1Gi");
    for workload in ["chat-api", "chat-worker"] {
        let deployment = find(&built, ChildKind::Deployment, workload);
        assert_eq!(
            env_of(&deployment, "AMQP_USERNAME")["valueFrom"],
            secret_ref("chat-mq-default-user", "username")
        );
        assert_eq!(
            env_of(&deployment, "AMQP_PASSWORD")["valueFrom"],
            secret_ref("chat-mq-default-user", "password")
        );
        assert_eq!(
            env_of(&deployment, "AMQP_URL")["value"],
            "amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@chat-mq:5672/%2f"
        );
    }
    let authentication = find(&built, ChildKind::TriggerAuthentication, "chat-worker");
    assert_eq!(
        authentication["spec"]["secretTargetRef"][0],
        json!({ "parameter": "username", "name": "chat-mq-default-user", "key": "username" })
    );
    let scaled = find(&built, ChildKind::ScaledObject, "chat-worker");
    assert_eq!(
        scaled["spec"]["triggers"][0]["metadata"]["host"],
        "amqp://chat-mq.chat-prod.svc:5672/%2f"
    );
}

#[test]
fn opensearch_is_a_cluster_of_three_nodes_behind_the_service_the_api_already_reads() {
    let built = built(&ha());
    let cluster = find(&built, ChildKind::OpenSearchCluster, "chat-os");
    assert_eq!(cluster["apiVersion"], "opensearch.opster.io/v1");
    let general = &cluster["spec"]["general"];
    assert_eq!(general["serviceName"], "chat-opensearch");
    assert_eq!(general["version"], "2.17.1", "the image's tag");
    assert_eq!(general["httpPort"], 9200);
    assert!(
        cluster["spec"].get("security").is_none(),
        "plain HTTP inside the cluster, as the builtin"
    );
    let pool = &cluster["spec"]["nodePools"][0];
    assert_eq!(pool["replicas"], 3);
    assert_eq!(pool["roles"], json!(["master", "data"]));
    assert_eq!(pool["diskSize"], "20Gi");
    assert_eq!(
        pool["jvm"], "-Xms1024m -Xmx1024m",
        "half the memory limit, as the builtin"
    );
    for settings in ["chat-api", "chat-worker"] {
        assert_eq!(
            find(&built, ChildKind::ConfigMap, settings)["data"]["OPENSEARCH_URL"],
            "http://chat-opensearch:9200"
        );
    }
}

#[test]
fn network_policies_guard_only_the_databases_this_operator_runs() {
    let built = built(&ha());
    assert_eq!(
        names(&built, ChildKind::NetworkPolicy),
        ["chat-redis", "chat-api", "chat-worker"]
    );
}

#[test]
fn the_statefulsets_the_other_operators_derive_fit_the_longest_name() {
    let mut cs = ha();
    cs.metadata.name = Some("a".repeat(chatsys_operator::crd::MAX_NAME_LENGTH));
    // mariadb-operator names its StatefulSet as the MariaDB, cluster-operator `<name>-server`, the
    // OpenSearch operator `<name>-<node pool>`: each leaves room for the revision hash label.
    let built = built(&cs);
    let mariadb = &names(&built, ChildKind::MariaDB)[0];
    let rabbitmq = format!("{}-server", names(&built, ChildKind::RabbitmqCluster)[0]);
    let cluster = &of_kind(&built, ChildKind::OpenSearchCluster)[0];
    let opensearch = format!(
        "{}-{}",
        cluster["metadata"]["name"].as_str().unwrap_or_default(),
        cluster["spec"]["nodePools"][0]["component"]
            .as_str()
            .unwrap_or_default()
    );
    for set in [mariadb.as_str(), &rabbitmq, &opensearch] {
        assert!(set.len() <= 52, "{set} ({} characters)", set.len());
    }
    assert_eq!(
        manifests::resource_name(&cs, BackingService::Mysql),
        *mariadb
    );
}

#[test]
fn without_an_operators_api_nothing_of_it_is_built_and_nothing_starts() {
    for (provider, api) in [
        (
            json!({ "mysql": { "provider": "mariadb-operator" } }),
            OptionalApi::MariadbOperator,
        ),
        (
            json!({ "rabbitmq": { "provider": "rabbitmq-cluster-operator" } }),
            OptionalApi::RabbitmqClusterOperator,
        ),
        (
            json!({ "opensearch": { "provider": "opensearch-operator" } }),
            OptionalApi::OpensearchOperator,
        ),
    ] {
        let cs: ChatSystem = serde_json::from_value(json!({
            "apiVersion": "chatsys.io/v1alpha1", "kind": "ChatSystem",
            "metadata": { "name": "chat", "namespace": "team", "uid": "u" },
            "spec": provider,
        }))
        .expect("a ChatSystem");
        let mut inputs = fresh_inputs(&cs);
        inputs.served.remove(&api);
        let plan = manifests::build(&manifests::validate(&cs, &inputs).expect("valid"));
        assert_eq!(
            plan.missing.iter().map(|m| m.api).collect::<Vec<_>>(),
            [api]
        );
        assert!(
            plan.children
                .iter()
                .all(|c| c.kind().optional_api() != Some(api)),
            "{api:?}"
        );
        assert!(
            plan.children
                .iter()
                .all(|c| !matches!(c.kind(), ChildKind::Job | ChildKind::Deployment)),
            "{api:?}: no migration waiting past its deadline, no pods without a database"
        );
    }
}
