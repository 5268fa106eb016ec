//! The backing services on the volumes and nodes of a real cluster: data below the volume's root, the
//! Erlang cookie off the volume, ownership changed once, time to stop cleanly, liveness that does not
//! kill a slow database, and a MySQL connection limit the autoscalers' maxima fit in.

mod common;

use chatsys_operator::kinds::ChildKind;
use chatsys_operator::manifests::BackingService;
use chatsys_settings::connections;
use common::{build_fixture, containers, find, main_container, of_kind};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

fn pod(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn mounts(container: &Value) -> Vec<&Value> {
    container["volumeMounts"]
        .as_array()
        .map(|m| m.iter().collect())
        .unwrap_or_default()
}

#[test]
fn rabbitmqs_cookie_comes_from_its_secret_through_a_private_copy_never_the_volume() {
    let (_, built) = build_fixture("defaults");
    let cookie = &find(&built, ChildKind::Secret, "chat-rabbitmq-cookie");
    assert_eq!(
        cookie["metadata"]["labels"]["app.kubernetes.io/component"],
        "rabbitmq"
    );
    let set = &find(&built, ChildKind::StatefulSet, "chat-rabbitmq");
    let volumes = pod(set)["volumes"].as_array().expect("volumes");
    let secret = volumes
        .iter()
        .find(|v| v["name"] == "erlang-cookie")
        .expect("the cookie's Secret is a volume");
    assert_eq!(
        secret["secret"],
        json!({ "secretName": "chat-rabbitmq-cookie", "defaultMode": 0o400 })
    );
    assert!(
        volumes
            .iter()
            .any(|v| v["name"] == "home" && v["emptyDir"].is_object()),
        "the broker's home, where the copy lives, is not the data volume"
    );
    let copy = &pod(set)["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "erlang-cookie"))
        .expect("an init container copies the cookie");
    let script = copy["command"][2].as_str().expect("a shell script");
    assert!(
        script.contains("/var/lib/rabbitmq/.erlang.cookie") && script.contains("chmod 0400"),
        "{script}"
    );
    let broker = main_container(set);
    let home = mounts(broker)
        .into_iter()
        .find(|m| m["mountPath"] == "/var/lib/rabbitmq")
        .expect("the home directory is mounted");
    assert_eq!(home["name"], "home");
    assert!(
        !mounts(broker)
            .iter()
            .any(|m| m["name"] == "data" && m["mountPath"] == "/var/lib/rabbitmq"),
        "the data volume holds the cookie no more"
    );
    assert!(
        broker["env"]
            .as_array()
            .is_some_and(|env| !env.iter().any(|e| e["name"] == "RABBITMQ_ERLANG_COOKIE")),
        "the deprecated variable is not used"
    );
}

#[test]
fn every_pod_with_an_fs_group_changes_ownership_only_on_a_mismatch() {
    let (_, built) = build_fixture("defaults");
    let workloads = built
        .iter()
        .filter(|m| {
            matches!(
                m.kind(),
                ChildKind::Deployment | ChildKind::StatefulSet | ChildKind::Job
            )
        })
        .collect::<Vec<_>>();
    assert_eq!(workloads.len(), 7);
    for workload in workloads {
        let object = workload.to_json();
        let context = &pod(&object)["securityContext"];
        if context["fsGroup"].is_i64() {
            assert_eq!(
                context["fsGroupChangePolicy"],
                "OnRootMismatch",
                "{}",
                workload.name()
            );
        }
    }
}

#[test]
fn databases_get_time_to_stop_and_liveness_that_waits_out_slow_storage() {
    let (_, built) = build_fixture("defaults");
    for set in &of_kind(&built, ChildKind::StatefulSet) {
        let name = set["metadata"]["name"].as_str().unwrap_or_default();
        let grace = pod(set)["terminationGracePeriodSeconds"]
            .as_i64()
            .expect("a grace period");
        if name == "chat-mysql" || name == "chat-rabbitmq" {
            assert!(grace >= 60, "{name}: {grace} s");
        }
        let container = main_container(set);
        let liveness = &container["livenessProbe"];
        assert!(
            liveness["tcpSocket"].is_object(),
            "{name}: a connection, not a query that an I/O stall times out: {liveness}"
        );
        let patience = liveness["periodSeconds"].as_i64().unwrap_or(10)
            * liveness["failureThreshold"].as_i64().unwrap_or(3);
        assert!(patience >= 120, "{name}: killed after {patience} s");
        assert!(
            container["readinessProbe"].is_object() && container["startupProbe"].is_object(),
            "{name}"
        );
    }
}

#[test]
fn mysqls_connection_limit_fits_every_pool_at_the_autoscalers_maxima() {
    let (cs, built) = build_fixture("defaults");
    let config = &find(&built, ChildKind::ConfigMap, "chat-mysql");
    let file = config["data"]["chatsys.cnf"]
        .as_str()
        .expect("a settings file");
    let limit: u32 = file
        .lines()
        .find_map(|line| line.strip_prefix("max_connections = "))
        .and_then(|n| n.parse().ok())
        .expect("max_connections is set");
    let opened = cs.spec.api.autoscaling.max_replicas as u32 * connections::API_POOL
        + cs.spec.worker.autoscaling.max_replicas as u32 * connections::WORKER_POOL
        + connections::MIGRATE;
    assert!(
        limit > opened + 10,
        "{limit} connections for {opened} at the maxima, above MySQL's default of 151"
    );
    assert!(
        opened > 151,
        "the defaults alone exceed MySQL's default limit"
    );

    let set = &find(&built, ChildKind::StatefulSet, "chat-mysql");
    assert!(
        mounts(main_container(set))
            .iter()
            .any(|m| m["name"] == "config"
                && m["mountPath"] == "/etc/mysql/conf.d"
                && m["readOnly"] == true)
    );
    let mut bigger = cs.clone();
    bigger.spec.api.autoscaling.max_replicas = 40;
    let rebuilt = common::children(&bigger, &common::fresh_inputs(&bigger));
    let hash = |built: &[chatsys_operator::kinds::Child]| {
        find(built, ChildKind::StatefulSet, "chat-mysql")["spec"]["template"]["metadata"]
            ["annotations"]["chatsys.io/config-hash"]
            .clone()
    };
    assert_ne!(
        hash(&built),
        hash(&rebuilt),
        "a new limit restarts MySQL with it"
    );
}

/// The init container's script, run by a real shell on a directory laid out as a volume is.
fn adopt(volume: &Path, marker: &str, subdirectory: &str) {
    let (_, built) = build_fixture("defaults");
    let set = &find(&built, ChildKind::StatefulSet, "chat-mysql");
    let init = containers(set)
        .into_iter()
        .find(|c| c["name"] == "adopt-data-layout")
        .expect("an init container adopts an earlier layout");
    let script = init["command"][2].as_str().expect("a script");
    let script = script.replace("cd /volume", &format!("cd '{}'", volume.display()));
    let status = Command::new("sh")
        .args(["-c", &script])
        .env("MARKER", marker)
        .env("SUBDIR", subdirectory)
        .status()
        .expect("sh runs");
    assert!(status.success());
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn data_an_earlier_release_kept_at_the_volumes_root_moves_into_the_subdirectory_once() {
    let volume = std::env::temp_dir().join(format!("chatsys-volume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&volume);
    for dir in ["lost+found", "mysql", "chatsys"] {
        std::fs::create_dir_all(volume.join(dir)).expect("mkdir");
    }
    for file in ["ibdata1", ".hidden", "chatsys/messages.ibd"] {
        std::fs::write(volume.join(file), file).expect("write");
    }
    adopt(&volume, "ibdata1", "data");
    assert_eq!(entries(&volume), ["data", "lost+found"]);
    assert_eq!(
        entries(&volume.join("data")),
        [".hidden", "chatsys", "ibdata1", "mysql"]
    );
    assert_eq!(
        std::fs::read_to_string(volume.join("data/chatsys/messages.ibd")).expect("kept"),
        "chatsys/messages.ibd"
    );

    // Run again (every pod start): nothing moves.
    std::fs::write(volume.join("data/ibdata2"), "new").expect("write");
    adopt(&volume, "ibdata1", "data");
    assert_eq!(entries(&volume), ["data", "lost+found"]);

    // A move cut off half-way resumes.
    let half = volume.join("half");
    std::fs::create_dir_all(half.join(".adopting")).expect("mkdir");
    std::fs::write(half.join(".adopting/ibdata1"), "moved").expect("write");
    std::fs::write(half.join("undo_001"), "left").expect("write");
    adopt(&half, "ibdata1", "data");
    assert_eq!(entries(&half), ["data"]);
    assert_eq!(entries(&half.join("data")), ["ibdata1", "undo_001"]);

    // A new, empty volume: nothing to adopt, the kubelet creates the subdirectory.
    let fresh = volume.join("fresh");
    std::fs::create_dir_all(fresh.join("lost+found")).expect("mkdir");
    adopt(&fresh, "ibdata1", "data");
    assert_eq!(entries(&fresh), ["lost+found"]);
    std::fs::remove_dir_all(&volume).expect("clean up");
}

#[test]
fn each_service_adopting_its_layout_names_a_file_only_its_data_directory_has() {
    let (_, built) = build_fixture("defaults");
    for (service, marker) in [
        (BackingService::Mysql, Some("ibdata1")),
        (BackingService::Redis, Some("appendonlydir")),
        (BackingService::Opensearch, Some("nodes")),
        (BackingService::Rabbitmq, None),
    ] {
        let set = &find(
            &built,
            ChildKind::StatefulSet,
            &format!("chat-{}", service.name()),
        );
        let init = containers(set)
            .into_iter()
            .find(|c| c["name"] == "adopt-data-layout");
        let named = init.and_then(|c| {
            c["env"]
                .as_array()
                .and_then(|env| env.iter().find(|e| e["name"] == "MARKER"))
                .and_then(|e| e["value"].as_str())
        });
        assert_eq!(named, marker, "{}", service.name());
    }
}
