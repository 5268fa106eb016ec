//! Builder tests: YAML fixtures of the resource in, the manifests the operator would apply out.

mod common;

use chatsys_operator::crd::VERSION;
use chatsys_operator::error::InvalidSpec;
use chatsys_operator::kinds::{Child, ChildKind};
use chatsys_operator::manifests::{self, BackingService, Credentials, GeneratedSecret, Inputs};
use common::{
    FIXTURES, build_fixture, children, container, containers, env, find, fixture, fresh_inputs,
    has_env, main_container, of_kind,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The migration Job among the children.
fn migration(built: &[Child]) -> Value {
    of_kind(built, ChildKind::Job)
        .into_iter()
        .next()
        .expect("a migration Job")
}

/// A Deployment by name, or the migration Job for `migrate`.
fn workload(built: &[Child], name: &str) -> Value {
    if name == "migrate" {
        migration(built)
    } else {
        find(built, ChildKind::Deployment, name)
    }
}

#[test]
fn a_new_version_is_migrated_once_by_a_job_before_its_pods_run() {
    let cs = fixture("defaults");
    let mut inputs = fresh_inputs(&cs);
    let plan = manifests::build(&manifests::validate(&cs, &inputs).expect("valid"));
    let job = migration(&plan.children)["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    assert!(of_kind(&plan.children, ChildKind::Deployment).is_empty());
    assert_eq!(
        plan.held,
        [
            (ChildKind::Deployment, "chat-api".to_string()),
            (ChildKind::Deployment, "chat-worker".to_string())
        ]
    );
    assert_eq!(
        plan.waiting_for,
        [format!("the schema migration (Job {job})")]
    );
    inputs.completed_jobs.insert(job.clone());
    let migrated = manifests::build(&manifests::validate(&cs, &inputs).expect("valid"));
    assert_eq!(of_kind(&migrated.children, ChildKind::Deployment).len(), 2);
    assert!(migrated.held.is_empty() && migrated.waiting_for.is_empty());

    let mut upgraded = cs.clone();
    upgraded.spec.api.image = Some("example.org/api:2".to_string());
    let next = manifests::build(&manifests::validate(&upgraded, &inputs).expect("valid"));
    assert_ne!(
        migration(&next.children)["metadata"]["name"],
        job.as_str(),
        "another version, another Job"
    );
    assert!(of_kind(&next.children, ChildKind::Deployment).is_empty());

    inputs.failed_jobs.insert(
        job.clone(),
        "BackoffLimitExceeded: Job has reached the specified backoff limit".to_string(),
    );
    inputs.completed_jobs.clear();
    let failed = manifests::build(&manifests::validate(&cs, &inputs).expect("valid"));
    assert_eq!(
        failed.refused,
        [format!(
            "Job {job}: the schema migration failed (BackoffLimitExceeded: Job has reached the specified backoff limit; kubectl logs job/{job}); the running version stays"
        )]
    );
}

#[test]
fn an_empty_spec_yields_every_component_in_apply_order() {
    let (_, built) = build_fixture("defaults");
    let listed: Vec<(ChildKind, &str)> = built.iter().map(|m| (m.kind(), m.name())).collect();
    assert_eq!(
        listed,
        vec![
            (ChildKind::Secret, "chat-mysql-credentials"),
            (ChildKind::Secret, "chat-redis-credentials"),
            (ChildKind::Secret, "chat-rabbitmq-credentials"),
            (ChildKind::Secret, "chat-rabbitmq-cookie"),
            (ChildKind::Secret, "chat-api-admin-key"),
            (ChildKind::ConfigMap, "chat-mysql"),
            (ChildKind::ConfigMap, "chat-api"),
            (ChildKind::ConfigMap, "chat-worker"),
            (ChildKind::NetworkPolicy, "chat-mysql"),
            (ChildKind::NetworkPolicy, "chat-redis"),
            (ChildKind::NetworkPolicy, "chat-rabbitmq"),
            (ChildKind::NetworkPolicy, "chat-opensearch"),
            (ChildKind::NetworkPolicy, "chat-api"),
            (ChildKind::NetworkPolicy, "chat-worker"),
            (ChildKind::Service, "chat-mysql"),
            (ChildKind::Service, "chat-redis"),
            (ChildKind::Service, "chat-rabbitmq"),
            (ChildKind::Service, "chat-opensearch"),
            (ChildKind::Service, "chat-api"),
            (ChildKind::Service, "chat-worker"),
            (ChildKind::StatefulSet, "chat-mysql"),
            (ChildKind::StatefulSet, "chat-redis"),
            (ChildKind::StatefulSet, "chat-rabbitmq"),
            (ChildKind::StatefulSet, "chat-opensearch"),
            (ChildKind::Job, "chat-migrate-13f93ca8"),
            (ChildKind::Deployment, "chat-api"),
            (ChildKind::Deployment, "chat-worker"),
            (ChildKind::HorizontalPodAutoscaler, "chat-api"),
            (ChildKind::HorizontalPodAutoscaler, "chat-worker"),
            (ChildKind::PodDisruptionBudget, "chat-api"),
            (ChildKind::PodDisruptionBudget, "chat-worker"),
        ]
    );
}

#[test]
fn defaults_use_the_operator_version_and_the_documented_settings() {
    let (cs, built) = build_fixture("defaults");
    let api = &find(&built, ChildKind::Deployment, "chat-api");
    let worker = &find(&built, ChildKind::Deployment, "chat-worker");
    assert_eq!(
        container(api, "api")["image"],
        format!("chatsys/chatsys-api:{VERSION}")
    );
    assert_eq!(
        container(&migration(&built), "migrate")["image"],
        format!("chatsys/chatsys-api:{VERSION}")
    );
    assert_eq!(
        container(worker, "worker")["image"],
        format!("chatsys/chatsys-worker:{VERSION}")
    );
    for workload in [api, worker] {
        for c in containers(workload) {
            assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        }
        assert_eq!(
            workload["spec"]["replicas"],
            Value::Null,
            "the HPA owns the replica count"
        );
    }
    for (name, image) in [
        ("chat-mysql", "mysql:8.4"),
        ("chat-redis", "redis:7.4"),
        ("chat-rabbitmq", "rabbitmq:3.13-management"),
        ("chat-opensearch", "opensearchproject/opensearch:2.17.1"),
    ] {
        let set = &find(&built, ChildKind::StatefulSet, name);
        assert_eq!(main_container(set)["image"], image);
        assert_eq!(
            set["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
            "Retain"
        );
        assert_eq!(
            set["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
            Value::Null
        );
    }
    let hpa = &find(&built, ChildKind::HorizontalPodAutoscaler, "chat-api");
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 10);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );
    assert_eq!(
        find(&built, ChildKind::ConfigMap, "chat-worker")["data"],
        json!({
            "CHATSYS_MIGRATE": "false",
            "CHATSYS_LOG_FORMAT": "json",
            "CHATSYS_QUEUE_SHARDS": "1",
            "OPENSEARCH_URL": "http://chat-opensearch:9200",
            "CHATSYS_BATCH_SIZE": "1000",
            "CHATSYS_BATCH_WAIT_MS": "20",
            "CHATSYS_BATCH_BYTES": "16777216",
            "CHATSYS_PREFETCH": "8000",
            "CHATSYS_PREFETCH_BYTES": "268435456",
            "CHATSYS_MAX_ATTEMPTS": "5",
        })
    );
    assert_eq!(
        find(&built, ChildKind::ConfigMap, "chat-api")["data"],
        json!({
            "CHATSYS_METRICS_LISTEN": "0.0.0.0:9090",
            "CHATSYS_MIGRATE": "false",
            "CHATSYS_LOG_FORMAT": "json",
            "CHATSYS_QUEUE_SHARDS": "1",
            "OPENSEARCH_URL": "http://chat-opensearch:9200",
        })
    );
    assert_eq!(manifests::api_url(&cs), "http://chat-api.team.svc:8080");
}

#[test]
fn backing_services_are_configured_as_their_images_expect() {
    let (_, built) = build_fixture("defaults");
    // The state's Redis never evicts, the cache's evicts the least recently used, each within three
    // quarters of its 512Mi limit (what Redis counts as data, not the process).
    let set = &find(&built, ChildKind::StatefulSet, "chat-redis");
    let redis = main_container(set);
    assert_eq!(
        redis["args"],
        json!([
            "--appendonly",
            "yes",
            "--requirepass",
            "$(REDIS_PASSWORD)",
            "--maxmemory",
            "402653184",
            "--maxmemory-policy",
            "noeviction"
        ])
    );
    let cache = container(set, "redis-cache");
    assert_eq!(
        cache["args"],
        json!([
            "--port",
            "6380",
            "--maxmemory",
            "402653184",
            "--maxmemory-policy",
            "allkeys-lru",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "$(REDIS_PASSWORD)"
        ])
    );
    assert!(
        cache["volumeMounts"].is_null(),
        "the cache keeps nothing on disk"
    );
    for deployment in ["chat-api", "chat-worker"] {
        let name = deployment.trim_start_matches("chat-");
        assert_eq!(
            env(
                container(&workload(&built, deployment), name),
                "REDIS_CACHE_URL"
            )["value"],
            "redis://:$(REDIS_PASSWORD)@chat-redis:6380/0"
        );
    }
    let service = &find(&built, ChildKind::Service, "chat-redis");
    assert_eq!(service["spec"]["ports"][1]["port"], 6380);
    let opensearch_set = find(&built, ChildKind::StatefulSet, "chat-opensearch");
    let opensearch = main_container(&opensearch_set);
    assert_eq!(
        env(opensearch, "OPENSEARCH_JAVA_OPTS")["value"],
        "-Xms1024m -Xmx1024m",
        "half of 2Gi"
    );
    assert_eq!(env(opensearch, "discovery.type")["value"], "single-node");
    assert_eq!(env(opensearch, "DISABLE_SECURITY_PLUGIN")["value"], "true");
    assert_eq!(env(opensearch, "node.store.allow_mmap")["value"], "false");
    let mysql_set = find(&built, ChildKind::StatefulSet, "chat-mysql");
    let mysql = main_container(&mysql_set);
    assert_eq!(env(mysql, "MYSQL_DATABASE")["value"], "chatsys");
    assert_eq!(
        env(mysql, "MYSQL_ROOT_PASSWORD")["valueFrom"]["secretKeyRef"],
        json!({ "name": "chat-mysql-credentials", "key": "root-password" })
    );
    let rabbitmq_set = find(&built, ChildKind::StatefulSet, "chat-rabbitmq");
    let rabbitmq = main_container(&rabbitmq_set);
    assert_eq!(
        env(rabbitmq, "RABBITMQ_DEFAULT_PASS")["valueFrom"]["secretKeyRef"],
        json!({ "name": "chat-rabbitmq-credentials", "key": "password" })
    );
    for (name, uid, path, subdirectory) in [
        ("chat-mysql", 999, "/var/lib/mysql", "data"),
        ("chat-redis", 999, "/data", "data"),
        ("chat-rabbitmq", 999, "/var/lib/rabbitmq/mnesia", "mnesia"),
        (
            "chat-opensearch",
            1000,
            "/usr/share/opensearch/data",
            "data",
        ),
    ] {
        let set = &find(&built, ChildKind::StatefulSet, name);
        assert_eq!(
            set["spec"]["template"]["spec"]["securityContext"]["runAsUser"], uid,
            "{name}"
        );
        assert_eq!(
            set["spec"]["template"]["spec"]["securityContext"]["fsGroup"], uid,
            "{name}"
        );
        assert_eq!(
            set["spec"]["template"]["spec"]["securityContext"]["fsGroupChangePolicy"],
            "OnRootMismatch",
            "{name}"
        );
        let data = main_container(set)["volumeMounts"]
            .as_array()
            .and_then(|mounts| mounts.iter().find(|m| m["name"] == "data"))
            .expect("the data volume is mounted");
        assert_eq!(
            data,
            &json!({ "name": "data", "mountPath": path, "subPath": subdirectory }),
            "{name}: data in a subdirectory, never the volume's root"
        );
        assert_eq!(
            set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
            "data"
        );
    }
}

/// A worker without a memory limit of its own gets one sized from the bytes its batch settings let it
/// hold, so raising them raises the limit (and an explicit limit is kept, as the overrides show).
#[test]
fn the_workers_memory_limit_follows_its_byte_budgets() {
    let worker_limit = |cs: &chatsys_operator::crd::ChatSystem| {
        let built = common::children(cs, &common::fresh_inputs(cs));
        container(
            &find(&built, ChildKind::Deployment, "chat-worker"),
            "worker",
        )["resources"]["limits"]["memory"]
            .clone()
    };
    let mut cs = common::fixture("defaults");
    // 256 MiB for the process, three times the 256 MiB prefetch, four batches of 16 MiB.
    assert_eq!(worker_limit(&cs), "1088Mi");
    cs.spec.worker.batch.prefetch_bytes = 512 << 20;
    assert_eq!(worker_limit(&cs), "1856Mi");
}

#[test]
fn every_override_reaches_the_manifests() {
    let (cs, built) = build_fixture("overrides");
    let api = &find(&built, ChildKind::Deployment, "chat-api");
    let worker = &find(&built, ChildKind::Deployment, "chat-worker");
    assert_eq!(container(api, "api")["image"], "example.org/api:1.2.3");
    assert_eq!(
        container(&migration(&built), "migrate")["image"],
        "example.org/api:1.2.3"
    );
    assert_eq!(
        container(api, "api")["resources"],
        json!({ "requests": { "cpu": "300m", "memory": "300Mi" }, "limits": { "cpu": "3", "memory": "3Gi" } })
    );
    assert_eq!(
        container(worker, "worker")["image"],
        "example.org/worker:1.2.3"
    );
    assert_eq!(
        container(worker, "worker")["resources"]["limits"]["memory"],
        "4Gi"
    );
    for (name, min, max, target) in [("chat-api", 3, 30, 55), ("chat-worker", 2, 9, 65)] {
        let hpa = &find(&built, ChildKind::HorizontalPodAutoscaler, name);
        assert_eq!(hpa["spec"]["minReplicas"], min);
        assert_eq!(hpa["spec"]["maxReplicas"], max);
        assert_eq!(
            hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            target
        );
    }
    let worker_settings = &find(&built, ChildKind::ConfigMap, "chat-worker")["data"];
    assert_eq!(worker_settings["CHATSYS_BATCH_SIZE"], "1000");
    assert_eq!(worker_settings["CHATSYS_BATCH_WAIT_MS"], "50");
    assert_eq!(worker_settings["CHATSYS_PREFETCH"], "4000");
    assert_eq!(worker_settings["CHATSYS_MAX_ATTEMPTS"], "8");

    for (name, image, size, class, when_deleted) in [
        (
            "chat-mysql",
            "example.org/mysql:8.4.1",
            "50Gi",
            json!("fast"),
            "Delete",
        ),
        (
            "chat-redis",
            "example.org/redis:7.4.1",
            "3Gi",
            json!("fast"),
            "Retain",
        ),
        (
            "chat-rabbitmq",
            "example.org/rabbitmq:3.13.7-management",
            "4Gi",
            Value::Null,
            "Retain",
        ),
        (
            "chat-opensearch",
            "example.org/opensearch:2.17.1",
            "200Gi",
            json!("big"),
            "Retain",
        ),
    ] {
        let set = &find(&built, ChildKind::StatefulSet, name);
        assert_eq!(main_container(set)["image"], image);
        let claim = &set["spec"]["volumeClaimTemplates"][0]["spec"];
        assert_eq!(claim["resources"]["requests"]["storage"], size, "{name}");
        assert_eq!(claim["storageClassName"], class, "{name}");
        assert_eq!(
            set["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
            when_deleted
        );
    }
    let mysql_set = find(&built, ChildKind::StatefulSet, "chat-mysql");
    let mysql = main_container(&mysql_set);
    assert_eq!(mysql["resources"]["requests"]["cpu"], "1");
    let opensearch_set = find(&built, ChildKind::StatefulSet, "chat-opensearch");
    let opensearch = main_container(&opensearch_set);
    assert_eq!(
        env(opensearch, "OPENSEARCH_JAVA_OPTS")["value"],
        "-Xms3072m -Xmx3072m",
        "half of 6Gi"
    );

    let ingress = &find(&built, ChildKind::Ingress, "chat-api");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    assert_eq!(ingress["spec"]["rules"][0]["host"], "chat.example.org");
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"], "8m",
        "requests just over the API's 1 MiB limit must reach the API, which answers its own JSON 413"
    );
    let annotations = &ingress["metadata"]["annotations"];
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/proxy-buffering"], "off",
        "a chat's event stream must reach the client as it is written"
    );
    for timeout in ["proxy-read-timeout", "proxy-send-timeout"] {
        assert_eq!(
            annotations[format!("nginx.ingress.kubernetes.io/{timeout}")],
            "3600",
            "an event stream stays open for as long as its client reads it"
        );
    }
    assert_eq!(
        ingress["spec"]["tls"],
        json!([{ "hosts": ["chat.example.org"], "secretName": "chat-tls" }])
    );
    assert_eq!(manifests::api_url(&cs), "https://chat.example.org");
}

#[test]
fn external_services_run_no_workload_and_are_read_from_the_users_secrets() {
    let (_, built) = build_fixture("external");
    assert!(of_kind(&built, ChildKind::StatefulSet).is_empty());
    let secrets: Vec<Value> = of_kind(&built, ChildKind::Secret)
        .into_iter()
        .map(|s| s["metadata"]["name"].clone())
        .collect();
    assert_eq!(
        secrets,
        ["chat-api-admin-key"],
        "no credentials are generated"
    );
    let services: Vec<Value> = of_kind(&built, ChildKind::Service);
    let names: Vec<&Value> = services.iter().map(|s| &s["metadata"]["name"]).collect();
    assert_eq!(names, ["chat-api", "chat-worker"]);
    let policies: Vec<Value> = of_kind(&built, ChildKind::NetworkPolicy)
        .into_iter()
        .map(|p| p["metadata"]["name"].clone())
        .collect();
    assert_eq!(
        policies,
        ["chat-api", "chat-worker"],
        "no policy for a service the user runs"
    );
    for (deployment, name) in [
        ("chat-api", "api"),
        ("migrate", "migrate"),
        ("chat-worker", "worker"),
    ] {
        let workload = workload(&built, deployment);
        let c = container(&workload, name);
        for (var, secret, key) in [
            ("DATABASE_URL", "db", "url"),
            ("REDIS_URL", "cache", "url"),
            ("AMQP_URL", "queue", "amqp"),
            ("OPENSEARCH_URL", "search", "endpoint"),
        ] {
            assert_eq!(
                env(c, var)["valueFrom"]["secretKeyRef"],
                json!({ "name": secret, "key": key }),
                "{name}: {var}"
            );
        }
        for composed in ["MYSQL_PASSWORD", "REDIS_PASSWORD", "AMQP_PASSWORD"] {
            assert!(!has_env(c, composed), "{name} still composes {composed}");
        }
    }
    for config in ["chat-api", "chat-worker"] {
        let data = &find(&built, ChildKind::ConfigMap, config)["data"];
        assert_eq!(
            data["OPENSEARCH_URL"],
            Value::Null,
            "the Secret's URL must not be shadowed"
        );
    }
}

#[test]
fn autoscaling_off_fixes_the_replicas_and_builds_no_autoscaler() {
    let (_, built) = build_fixture("autoscaling-off");
    assert!(of_kind(&built, ChildKind::HorizontalPodAutoscaler).is_empty());
    assert_eq!(
        find(&built, ChildKind::Deployment, "chat-api")["spec"]["replicas"],
        3
    );
    assert_eq!(
        find(&built, ChildKind::Deployment, "chat-worker")["spec"]["replicas"],
        5
    );
    assert_eq!(of_kind(&built, ChildKind::PodDisruptionBudget).len(), 2);
}

#[test]
fn a_paused_resource_builds_the_same_as_an_unpaused_one() {
    let paused = fixture("paused");
    let mut unpaused = paused.clone();
    unpaused.spec.paused = false;
    let inputs = fresh_inputs(&paused);
    assert_eq!(children(&paused, &inputs), children(&unpaused, &inputs));
}

#[test]
fn every_object_carries_the_common_labels_and_a_controller_owner_reference_but_kept_credentials() {
    for name in FIXTURES {
        let (cs, built) = build_fixture(name);
        for child in &built {
            let object = child.to_json();
            let metadata = &object["metadata"];
            let what = format!("{name}: {:?} {}", child.kind(), child.name());
            assert_eq!(metadata["namespace"], "team", "{what}");
            let labels = &metadata["labels"];
            assert_eq!(labels["app.kubernetes.io/name"], "chatsys", "{what}");
            assert_eq!(labels["app.kubernetes.io/instance"], "chat", "{what}");
            assert_eq!(
                labels["app.kubernetes.io/managed-by"], "chatsys-operator",
                "{what}"
            );
            assert_eq!(labels["app.kubernetes.io/part-of"], "chatsys", "{what}");
            assert_eq!(labels["app.kubernetes.io/version"], VERSION, "{what}");
            assert!(labels["app.kubernetes.io/component"].is_string(), "{what}");
            if child.kind() == ChildKind::Secret {
                // Credentials outlive the resource with the volumes they open (see `day_two`).
                continue;
            }
            assert_eq!(
                metadata["ownerReferences"],
                json!([{
                    "apiVersion": "chatsys.io/v1alpha1",
                    "kind": "ChatSystem",
                    "name": "chat",
                    "uid": cs.metadata.uid.clone().expect("fixtures have a uid"),
                    "controller": true,
                }]),
                "{what}"
            );
        }
    }
}

#[test]
fn every_container_has_probes_resources_and_a_non_root_security_context() {
    for name in FIXTURES {
        let (_, built) = build_fixture(name);
        let workloads = of_kind(&built, ChildKind::Deployment)
            .into_iter()
            .chain(of_kind(&built, ChildKind::StatefulSet));
        for workload in workloads {
            let pod = &workload["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            assert_ne!(pod["securityContext"]["runAsUser"], 0);
            assert!(pod["securityContext"]["runAsUser"].is_i64());
            let init: Vec<&Value> = pod["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            for c in containers(&workload) {
                let what = format!("{name}: {} / {}", workload["metadata"]["name"], c["name"]);
                let requests = &c["resources"]["requests"];
                assert!(
                    requests["cpu"].is_string() && requests["memory"].is_string(),
                    "{what}"
                );
                assert!(c["resources"]["limits"]["memory"].is_string(), "{what}");
                let security = &c["securityContext"];
                assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
                assert_eq!(security["runAsNonRoot"], true, "{what}");
                assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{what}");
                assert_ne!(security["privileged"], true, "{what}");
                // An init container runs to completion; probes are for the long-running ones.
                if !init.contains(&c) {
                    assert!(
                        c["readinessProbe"].is_object(),
                        "{what} has no readiness probe"
                    );
                    assert!(
                        c["livenessProbe"].is_object(),
                        "{what} has no liveness probe"
                    );
                }
            }
        }
    }
}

#[test]
fn api_and_worker_probe_their_health_endpoints_and_migrate_before_serving() {
    let (_, built) = build_fixture("defaults");
    for (deployment, name, ports) in [
        (
            "chat-api",
            "api",
            json!([{ "name": "http", "containerPort": 8080 }, { "name": "metrics", "containerPort": 9090 }]),
        ),
        (
            "chat-worker",
            "worker",
            json!([{ "name": "http", "containerPort": 9090 }]),
        ),
    ] {
        let workload = &find(&built, ChildKind::Deployment, deployment);
        let c = container(workload, name);
        assert_eq!(c["ports"], ports);
        assert_eq!(
            c["readinessProbe"]["httpGet"],
            json!({ "path": "/readyz", "port": "http" })
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"],
            json!({ "path": "/healthz", "port": "http" })
        );
        assert_eq!(workload["spec"]["strategy"]["type"], "RollingUpdate");
        assert_eq!(
            workload["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            0
        );
    }
    let api = &find(&built, ChildKind::Deployment, "chat-api");
    let worker = &find(&built, ChildKind::Deployment, "chat-worker");
    for workload in [api, worker] {
        assert_eq!(
            workload["spec"]["template"]["spec"]["initContainers"],
            Value::Null,
            "the pods do not migrate: the Job does, once per version"
        );
        let c = &workload["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["startupProbe"]["httpGet"],
            json!({ "path": "/healthz", "port": "http" })
        );
        assert_eq!(c["startupProbe"]["failureThreshold"], 30);
    }
    let job = migration(&built);
    let migrate = container(&job, "migrate");
    assert_eq!(migrate["command"], json!(["/usr/local/bin/chatsys-api"]));
    assert_eq!(migrate["args"], json!(["migrate"]));
    assert_eq!(
        job["spec"]["template"]["spec"]["restartPolicy"],
        "OnFailure"
    );
    assert_eq!(container(api, "api")["args"], json!(["serve"]));
    assert_eq!(
        container(worker, "worker")["command"],
        json!(["/usr/local/bin/chatsys-worker"])
    );
}

#[test]
fn api_and_worker_are_wired_to_the_managed_services_and_their_secrets() {
    let (cs, built) = build_fixture("defaults");
    let inputs = fresh_inputs(&cs);
    let created =
        manifests::build(&manifests::validate(&cs, &inputs).expect("valid")).new_credentials;
    let secret_keys = |name: &str| -> BTreeSet<String> {
        let secret = created
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Secret {name} created"));
        secret
            .string_data
            .as_ref()
            .expect("stringData")
            .keys()
            .cloned()
            .collect()
    };
    for (deployment, name) in [
        ("chat-api", "api"),
        ("migrate", "migrate"),
        ("chat-worker", "worker"),
    ] {
        let workload = workload(&built, deployment);
        let c = container(&workload, name);
        assert_eq!(
            env(c, "DATABASE_URL")["value"],
            "mysql://$(MYSQL_USERNAME):$(MYSQL_PASSWORD)@chat-mysql:3306/chatsys"
        );
        assert_eq!(
            env(c, "REDIS_URL")["value"],
            "redis://:$(REDIS_PASSWORD)@chat-redis:6379/0"
        );
        assert_eq!(
            env(c, "AMQP_URL")["value"],
            "amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@chat-rabbitmq:5672/%2f"
        );
        let env_list = c["env"].as_array().expect("env");
        let position = |var: &str| env_list.iter().position(|e| e["name"] == var).expect(var);
        for (variable, url) in [
            ("MYSQL_USERNAME", "DATABASE_URL"),
            ("MYSQL_PASSWORD", "DATABASE_URL"),
            ("REDIS_PASSWORD", "REDIS_URL"),
            ("AMQP_USERNAME", "AMQP_URL"),
            ("AMQP_PASSWORD", "AMQP_URL"),
        ] {
            assert!(
                position(variable) < position(url),
                "{variable} must precede {url} for $(…) expansion"
            );
        }
        for e in env_list {
            if let Some(reference) = e["valueFrom"]["secretKeyRef"].as_object() {
                let secret = reference["name"].as_str().expect("secret name");
                let key = reference["key"].as_str().expect("key").to_string();
                assert!(
                    secret_keys(secret).contains(&key),
                    "{name}: {secret} has no key {key}"
                );
            }
        }
        let config = c["envFrom"][0]["configMapRef"]["name"]
            .as_str()
            .expect("configMapRef");
        assert_eq!(
            config,
            format!(
                "chat-{}",
                if deployment == "chat-worker" {
                    "worker"
                } else {
                    "api"
                }
            )
        );
        find(&built, ChildKind::ConfigMap, config);
    }
    // Every URL names a Service that selects the pods listening on that port.
    for (service, port) in [
        ("chat-mysql", 3306),
        ("chat-redis", 6379),
        ("chat-rabbitmq", 5672),
        ("chat-opensearch", 9200),
    ] {
        let svc = &find(&built, ChildKind::Service, service);
        assert_eq!(svc["spec"]["ports"][0]["port"], port);
        let set = &find(&built, ChildKind::StatefulSet, service);
        assert_eq!(set["spec"]["serviceName"], service);
        assert_selects(&svc["spec"]["selector"], set);
        assert_eq!(main_container(set)["ports"][0]["containerPort"], port);
    }
    let api_service = &find(&built, ChildKind::Service, "chat-api");
    assert_eq!(api_service["spec"]["ports"][0]["port"], 8080);
    assert_selects(
        &api_service["spec"]["selector"],
        &find(&built, ChildKind::Deployment, "chat-api"),
    );
    for name in ["chat-api", "chat-worker"] {
        let deployment = &find(&built, ChildKind::Deployment, name);
        assert_selects(&deployment["spec"]["selector"]["matchLabels"], deployment);
        let pdb = &find(&built, ChildKind::PodDisruptionBudget, name);
        assert_selects(&pdb["spec"]["selector"]["matchLabels"], deployment);
        let hpa = &find(&built, ChildKind::HorizontalPodAutoscaler, name);
        assert_eq!(
            hpa["spec"]["scaleTargetRef"],
            json!({ "apiVersion": "apps/v1", "kind": "Deployment", "name": name })
        );
    }
    let (_, with_ingress) = build_fixture("overrides");
    let backend = json!({ "service": { "name": "chat-api", "port": { "name": "http" } } });
    assert_eq!(
        find(&with_ingress, ChildKind::Ingress, "chat-api")["spec"]["rules"][0]["http"]["paths"],
        json!([
            { "path": "/applications", "pathType": "Prefix", "backend": backend },
            { "path": "/openapi.json", "pathType": "Exact", "backend": backend },
        ]),
        "the API's public paths only: no /metrics, /healthz or /readyz from outside"
    );
}

fn assert_selects(selector: &Value, workload: &Value) {
    let labels = &workload["spec"]["template"]["metadata"]["labels"];
    let selector = selector.as_object().expect("selector");
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(
            &labels[key], value,
            "{} does not carry {key}",
            workload["metadata"]["name"]
        );
    }
}

#[test]
fn existing_credentials_are_reused_and_never_regenerated() {
    let cs = fixture("defaults");
    let mut inputs = Inputs::default();
    for secret in GeneratedSecret::needed(&cs) {
        let keys = secret.keys().iter().map(|k| k.to_string()).collect();
        inputs
            .credentials
            .insert(secret, Credentials::Existing { keys });
    }
    let plan = manifests::build(&manifests::validate(&cs, &inputs).expect("valid"));
    assert!(
        plan.new_credentials.is_empty(),
        "an existing Secret's values are never rewritten"
    );
    let built = children(&cs, &inputs);
    for secret in &of_kind(&built, ChildKind::Secret) {
        assert_eq!(
            secret
                .as_object()
                .expect("object")
                .keys()
                .collect::<Vec<_>>(),
            ["apiVersion", "kind", "metadata"],
            "only the labels and owner of a credentials Secret are applied: {secret}"
        );
    }
    let api = &find(&built, ChildKind::Deployment, "chat-api");
    assert_eq!(
        env(container(api, "api"), "MYSQL_PASSWORD")["valueFrom"]["secretKeyRef"]["name"],
        "chat-mysql-credentials"
    );
}

#[test]
fn generated_credentials_are_long_random_and_url_safe() {
    let mysql = GeneratedSecret::Credentials(BackingService::Mysql);
    let (first, second) = (mysql.generate(), mysql.generate());
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        ["password", "root-password", "username"]
    );
    assert_eq!(first["username"], "chatsys");
    for password in [
        &first["password"],
        &first["root-password"],
        &second["password"],
    ] {
        assert_eq!(password.len(), 32);
        assert!(
            password.chars().all(|c| c.is_ascii_alphanumeric()),
            "{password}"
        );
    }
    assert_ne!(first["password"], second["password"]);
    assert_ne!(first["password"], first["root-password"]);
}

#[test]
fn a_settings_change_rolls_the_pods() {
    let (_, before) = build_fixture("defaults");
    let mut cs = fixture("defaults");
    cs.spec.worker.batch.size = 900;
    let after = children(&cs, &fresh_inputs(&cs));
    let hash = |built: &[Child], name: &str| {
        find(built, ChildKind::Deployment, name)["spec"]["template"]["metadata"]["annotations"]["chatsys.io/config-hash"]
            .clone()
    };
    assert!(hash(&before, "chat-worker").is_string());
    assert_ne!(hash(&before, "chat-worker"), hash(&after, "chat-worker"));
    assert_eq!(hash(&before, "chat-api"), hash(&after, "chat-api"));
}

#[test]
fn specs_the_schema_cannot_refuse_are_refused_with_a_reason() {
    let external = fixture("external");
    let mut inputs = fresh_inputs(&external);
    inputs.external_secret_keys.remove("db");
    inputs
        .external_secret_keys
        .insert("search".to_string(), BTreeSet::from(["url".to_string()]));
    let problems = manifests::validate(&external, &inputs)
        .expect_err("invalid")
        .0;
    assert_eq!(
        problems,
        [
            "mysql: Secret db not found",
            "opensearch: Secret search has no key endpoint"
        ]
    );

    let mut cs = fixture("defaults");
    cs.spec.opensearch.resources.limits = None;
    cs.spec.api.resources.requests = None;
    cs.spec.redis.storage.size.0 = "plenty".to_string();
    let mut inputs = fresh_inputs(&cs);
    inputs.credentials.insert(
        GeneratedSecret::Credentials(BackingService::Mysql),
        Credentials::Existing {
            keys: BTreeSet::from(["password".to_string()]),
        },
    );
    let problems = manifests::validate(&cs, &inputs).expect_err("invalid").0;
    assert_eq!(
        problems,
        [
            "mysql: Secret chat-mysql-credentials has no key username",
            "mysql: Secret chat-mysql-credentials has no key root-password",
            "redis: storage.size plenty is not a quantity",
            "opensearch: resources.limits.memory is required to size the heap",
            "api: autoscaling needs resources.requests.cpu",
        ]
    );
    assert_eq!(
        manifests::validate(&cs, &inputs).map(|_| ()),
        Err(InvalidSpec(problems))
    );

    let mut no_host = fixture("overrides");
    no_host.spec.api.ingress.host = None;
    let problems = manifests::validate(&no_host, &fresh_inputs(&no_host))
        .expect_err("invalid")
        .0;
    assert_eq!(
        problems,
        ["api: ingress.host is required when the ingress is enabled"]
    );

    let mut small = fixture("defaults");
    small
        .spec
        .opensearch
        .resources
        .limits
        .as_mut()
        .expect("limits")
        .insert(
            "memory".to_string(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("256Mi".to_string()),
        );
    let problems = manifests::validate(&small, &fresh_inputs(&small))
        .expect_err("invalid")
        .0;
    assert_eq!(problems, ["opensearch: memory limit 256Mi is below 512Mi"]);
}

#[test]
fn database_pods_and_volumes_do_not_change_with_the_operator_version() {
    let (_, built) = build_fixture("defaults");
    for set in &of_kind(&built, ChildKind::StatefulSet) {
        let template_labels = &set["spec"]["template"]["metadata"]["labels"];
        let claim_labels = &set["spec"]["volumeClaimTemplates"][0]["metadata"]["labels"];
        for labels in [template_labels, claim_labels] {
            assert_eq!(
                labels["app.kubernetes.io/version"],
                Value::Null,
                "{}",
                set["metadata"]["name"]
            );
            assert_eq!(labels["app.kubernetes.io/instance"], "chat");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "chatsys-operator");
        }
    }
}

#[test]
fn the_operators_own_version_reaches_no_pod_template_of_pinned_images() {
    let (_, built) = build_fixture("overrides");
    let templates: Vec<Value> = built
        .iter()
        .filter(|m| {
            matches!(
                m.kind(),
                ChildKind::Deployment | ChildKind::StatefulSet | ChildKind::Job
            )
        })
        .map(|m| m.to_json()["spec"]["template"].clone())
        .collect();
    assert_eq!(
        templates.len(),
        7,
        "two Deployments, four StatefulSets, a Job"
    );
    for template in templates {
        let text = template.to_string();
        assert!(
            !text.contains("app.kubernetes.io/version")
                && !text.contains(chatsys_operator::crd::VERSION),
            "an operator upgrade would roll this: {text}"
        );
    }
}
