//! The committed CRD is the generated one, and the schema carries the defaults and rules users rely on.

mod common;

use chatsys_operator::crd::{ApiSpec, ChatSystem, ChatSystemSpec, MAX_NAME_LENGTH, WorkerSpec};
use chatsys_operator::kinds::ChildKind;
use kube::CustomResourceExt;
use kube::core::cel::{validate_cel, validate_cel_update};
use serde_json::{Value, json};

fn schema() -> Value {
    let crd = serde_json::to_value(ChatSystem::crd()).expect("CRD serialises");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn the_committed_crd_is_the_generated_one() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/chatsystems.chatsys.io.yaml"
    );
    let committed = std::fs::read_to_string(path).expect("crds/chatsystems.chatsys.io.yaml exists");
    let generated = chatsys_operator::crd_yaml().expect("CRD serialises");
    assert!(
        committed == generated,
        "crds/chatsystems.chatsys.io.yaml is stale: regenerate it with `make crds` \
         (chatsys-operator crd > crds/chatsystems.chatsys.io.yaml)"
    );
}

#[test]
fn names_scope_subresources_and_printer_columns() {
    let crd = serde_json::to_value(ChatSystem::crd()).expect("CRD serialises");
    assert_eq!(crd["metadata"]["name"], "chatsystems.chatsys.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["chatsys"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"], json!({ "status": {} }));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(columns, ["Phase", "Ready", "API", "URL", "Age"]);
}

#[test]
fn every_default_is_in_the_schema_and_equals_the_operators() {
    let schema = schema();
    let spec = &schema["properties"]["spec"]["properties"];
    let defaults = serde_json::to_value(ChatSystemSpec::default()).expect("serialises");
    for (field, default) in defaults.as_object().expect("object") {
        assert_eq!(&spec[field]["default"], default, "spec.{field}");
    }
    assert_eq!(
        spec["api"]["properties"]["autoscaling"]["properties"]["minReplicas"]["default"],
        2
    );
    assert_eq!(
        spec["worker"]["properties"]["batch"]["properties"]["size"]["default"],
        1000
    );
    assert_eq!(
        spec["mysql"]["properties"]["storage"]["properties"]["size"]["default"],
        "10Gi"
    );
    // What the API server stores after defaulting `spec: {}` is exactly what the operator works from.
    let parsed: ChatSystemSpec = serde_json::from_value(json!({})).expect("empty spec parses");
    assert_eq!(parsed, ChatSystemSpec::default());
    assert_eq!(parsed.api, ApiSpec::default());
    assert_eq!(parsed.worker, WorkerSpec::default());
}

#[test]
fn limits_and_cross_field_rules_are_enforced_by_the_schema() {
    let schema = schema();
    let api = &schema["properties"]["spec"]["properties"]["api"]["properties"];
    let autoscaling = &api["autoscaling"];
    assert_eq!(
        autoscaling["x-kubernetes-validations"],
        json!([{ "rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas" }])
    );
    assert_eq!(autoscaling["properties"]["minReplicas"]["minimum"], 1.0);
    assert_eq!(
        autoscaling["properties"]["targetCPUUtilizationPercentage"]["maximum"],
        100.0
    );
    assert_eq!(api["replicas"]["minimum"], 1.0);
    assert_eq!(
        api["ingress"]["x-kubernetes-validations"][0]["rule"],
        "!self.enabled || has(self.host)"
    );
    let worker = &schema["properties"]["spec"]["properties"]["worker"]["properties"];
    let worker_rules = &worker["autoscaling"]["x-kubernetes-validations"];
    assert_eq!(worker_rules[0], autoscaling["x-kubernetes-validations"][0]);
    assert_eq!(
        worker_rules[1]["rule"],
        "!self.scaleToZero || self.metric == 'QueueBacklog'"
    );
    assert_eq!(
        worker["autoscaling"]["properties"]["metric"]["enum"],
        serde_json::json!(["Cpu", "QueueBacklog"])
    );
    assert_eq!(worker["batch"]["properties"]["size"]["minimum"], 1.0);
    let command_queue = &schema["properties"]["spec"]["properties"]["commandQueue"];
    assert_eq!(
        command_queue["x-kubernetes-validations"][0]["rule"], "self.shards >= oldSelf.shards",
        "lowering the count would strand what the dropped queues hold"
    );
    assert_eq!(command_queue["properties"]["shards"]["minimum"], 1.0);
    assert_eq!(command_queue["properties"]["shards"]["maximum"], 64.0);
    assert_eq!(command_queue["properties"]["shards"]["default"], 1);
    let external = &schema["properties"]["spec"]["properties"]["redis"]["properties"]["external"];
    assert_eq!(external["required"], json!(["secretName"]));
}

#[test]
fn quantities_are_checked_by_the_schema_and_kept_compact() {
    let schema = schema();
    let mysql = &schema["properties"]["spec"]["properties"]["mysql"]["properties"];
    let size = &mysql["storage"]["properties"]["size"];
    assert_eq!(size["type"], "string");
    let cpu = &mysql["resources"]["properties"]["requests"]["additionalProperties"];
    assert_eq!(cpu["x-kubernetes-int-or-string"], true);
    assert_eq!(cpu["pattern"], size["pattern"]);
    let pattern = size["pattern"].as_str().expect("pattern");
    assert!(pattern.starts_with('^') && pattern.contains("[KMGTPE]i"));
    assert_eq!(
        mysql["resources"]["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["limits".to_string(), "requests".to_string()])
    );
}

fn named(name: &str) -> ChatSystem {
    let mut cs = ChatSystem::new(name, ChatSystemSpec::default());
    cs.metadata.namespace = Some("team".to_string());
    cs.metadata.uid = Some("6f1c7a52-8d7e-4f0e-9a64-0d3b8f7c2e11".to_string());
    cs
}

#[test]
fn a_name_that_would_derive_an_invalid_object_name_is_refused() {
    let longest = "a".repeat(MAX_NAME_LENGTH);
    let too_long = "a".repeat(MAX_NAME_LENGTH + 1);
    for name in ["chat", "chat-2", longest.as_str()] {
        assert!(validate_cel(&named(name)).is_ok(), "{name} is accepted");
    }
    for name in ["chat.v1", "Chat", "1chat", "chat-", too_long.as_str()] {
        let errors = validate_cel(&named(name)).expect_err(name).to_string();
        assert!(
            errors.contains("metadata.name must be at most 41 characters"),
            "{name}: {errors}"
        );
    }
}

/// A DNS-1035 label: what a Service name must be, and (at most 52 long) a StatefulSet name, which
/// leaves room for the `controller-revision-hash` label of its pods.
fn is_label(name: &str, max: usize) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= max
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[test]
fn every_name_derived_from_the_longest_accepted_name_is_valid() {
    let cs = named(&"a".repeat(MAX_NAME_LENGTH));
    let built = common::children(&cs, &common::fresh_inputs(&cs));
    let mut longest_set = 0;
    for manifest in &built {
        let name = manifest.name();
        match manifest.kind() {
            ChildKind::StatefulSet => {
                assert!(is_label(name, 52), "StatefulSet {name}");
                longest_set = longest_set.max(name.len());
            }
            _ => assert!(is_label(name, 63), "{:?} {name}", manifest.kind()),
        }
    }
    assert_eq!(longest_set, 52, "the limit is as long as it can be");
}

#[test]
fn a_volume_may_grow_but_not_shrink_or_change_class() {
    let old = named("chat");
    let mut grown = old.clone();
    grown.spec.mysql.storage.size =
        k8s_openapi::apimachinery::pkg::api::resource::Quantity("20Gi".to_string());
    assert!(validate_cel_update(&grown, &old).is_ok());

    let mut shrunk = old.clone();
    shrunk.spec.mysql.storage.size =
        k8s_openapi::apimachinery::pkg::api::resource::Quantity("5Gi".to_string());
    let errors = validate_cel_update(&shrunk, &old)
        .expect_err("shrinking")
        .to_string();
    assert!(errors.contains("storage.size may only grow"), "{errors}");

    let mut classed = old.clone();
    classed.spec.redis.storage.storage_class_name = Some("fast".to_string());
    let errors = validate_cel_update(&classed, &old)
        .expect_err("a new class")
        .to_string();
    assert!(
        errors.contains("storage.storageClassName cannot change"),
        "{errors}"
    );
    let mut reclassed = classed.clone();
    reclassed.spec.redis.storage.storage_class_name = Some("slow".to_string());
    assert!(validate_cel_update(&reclassed, &classed).is_err());
    assert!(validate_cel_update(&classed, &classed).is_ok());
}

#[test]
fn the_api_and_worker_images_are_not_stored_so_an_operator_upgrade_moves_them() {
    let schema = schema();
    let spec = &schema["properties"]["spec"]["properties"];
    for component in ["api", "worker"] {
        assert!(
            spec[component]["properties"]["image"]["default"].is_null(),
            "{component}"
        );
        assert!(spec[component]["default"]["image"].is_null(), "{component}");
    }
    let cs = named("chat");
    let version = chatsys_operator::crd::VERSION;
    assert_eq!(
        cs.spec.api.image(),
        format!("chatsys/chatsys-api:{version}")
    );
    assert_eq!(
        cs.spec.worker.image(),
        format!("chatsys/chatsys-worker:{version}")
    );
    let mut named_image = cs.clone();
    named_image.spec.api.image = Some("example.org/api:1".to_string());
    assert_eq!(named_image.spec.api.image(), "example.org/api:1");
    named_image.spec.api.image = Some(String::new());
    assert_eq!(
        named_image.spec.api.image(),
        format!("chatsys/chatsys-api:{version}")
    );
}

#[test]
fn network_peers_are_checked_by_the_schema_when_applied_not_after_they_are_stored() {
    let schema = schema();
    let with_peers = |peers: Value| {
        json!({ "apiVersion": "chatsys.io/v1alpha1", "kind": "ChatSystem", "metadata": { "name": "chat" },
                "spec": { "networkPolicy": { "apiFrom": peers } } })
    };
    let good =
        with_peers(json!([{ "namespaceSelector": { "matchLabels": { "name": "ingress" } } }]));
    assert_eq!(
        chatsys_operator::schema::problems(&good, &schema),
        Vec::<String>::new()
    );
    serde_json::from_value::<ChatSystem>(good).expect("the operator reads what the schema accepts");
    let number = with_peers(json!([{ "podSelector": { "matchLabels": { "tier": 1 } } }]));
    assert_eq!(
        chatsys_operator::schema::problems(&number, &schema),
        [
            "spec.networkPolicy.apiFrom[0].podSelector.matchLabels.tier in body must be of type string: integer"
        ]
    );
    assert!(
        serde_json::from_value::<ChatSystem>(number).is_err(),
        "what the operator could not read"
    );
    let typo = with_peers(json!([{ "podSelektor": {} }]));
    assert_eq!(
        chatsys_operator::schema::problems(&typo, &schema),
        ["unknown field \"spec.networkPolicy.apiFrom[0].podSelektor\""]
    );
}

/// Every field `kubectl explain` shows has a description: ours, and the first level of the Pod and
/// NetworkPolicy fields we embed (whose own fields `kubectl explain pod.spec` documents).
#[test]
fn every_field_has_a_description() {
    fn walk(schema: &Value, path: &str, embedded: bool, missing: &mut Vec<String>) {
        if let Some(properties) = schema["properties"].as_object() {
            for (name, field) in properties {
                let field_path = format!("{path}.{name}");
                if !embedded && field["description"].as_str().is_none_or(str::is_empty) {
                    missing.push(field_path.clone());
                }
                let embeds = field["items"]["properties"].is_object()
                    && !field["items"]["description"].is_null()
                    || field_path.ends_with(".affinity")
                    || field_path.ends_with(".tolerations")
                    || field_path.ends_with(".topologySpreadConstraints")
                    || field_path.ends_with(".env")
                    || field_path.ends_with("From");
                walk(field, &field_path, embedded || embeds, missing);
            }
        }
        if schema["items"].is_object() {
            walk(&schema["items"], &format!("{path}[]"), embedded, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&schema()["properties"]["spec"], "spec", false, &mut missing);
    walk(
        &schema()["properties"]["status"],
        "status",
        false,
        &mut missing,
    );
    assert_eq!(
        missing,
        Vec::<String>::new(),
        "fields kubectl explain shows empty"
    );
}
