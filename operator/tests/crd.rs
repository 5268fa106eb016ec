//! The committed CRD is the generated one, and the schema carries the defaults and rules users rely on.

use chatsys_operator::crd::{ApiSpec, ChatSystem, ChatSystemSpec, WorkerSpec};
use kube::CustomResourceExt;
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
    assert_eq!(columns, ["Phase", "Ready", "Age"]);
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
    assert_eq!(
        worker["autoscaling"]["x-kubernetes-validations"],
        autoscaling["x-kubernetes-validations"]
    );
    assert_eq!(worker["batch"]["properties"]["size"]["minimum"], 1.0);
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
