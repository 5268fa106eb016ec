//! `render`: the examples become YAML streams that read back as the manifests `build` makes.

use chatsys_operator::render;
use serde_json::Value;

fn example(name: &str) -> String {
    format!("{}/../examples/{name}.yaml", env!("CARGO_MANIFEST_DIR"))
}

fn documents(stream: &str) -> Vec<Value> {
    stream
        .split("---\n")
        .filter(|document| !document.trim().is_empty())
        .map(|document| serde_saphyr::from_str(document).expect("each document is YAML"))
        .collect()
}

#[test]
fn every_example_renders_every_manifest() {
    for (name, count) in [
        ("minimal", 30),
        ("full", 36),
        ("external", 13),
        ("autoscaling-off", 28),
        ("scale-to-zero", 29),
    ] {
        let cs = render::read(&example(name)).expect("example parses");
        let stream = render::render(cs).expect("example renders");
        let rendered = documents(&stream);
        assert_eq!(rendered.len(), count, "{name}");
        for object in &rendered {
            assert!(
                object["apiVersion"].is_string() && object["kind"].is_string(),
                "{name}"
            );
        }
    }
}

#[test]
fn the_namespace_defaults_and_owner_references_are_shown_without_a_cluster() {
    let minimal =
        render::render(render::read(&example("minimal")).expect("parses")).expect("renders");
    for object in documents(&minimal) {
        assert_eq!(object["metadata"]["namespace"], "default");
        if object["kind"] == "Secret" {
            // Kept credentials have no owner: they outlive the resource with their volumes.
            assert!(object["metadata"]["ownerReferences"].is_null(), "{object}");
            continue;
        }
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(owner["name"], "chat");
        assert_eq!(owner["uid"], "00000000-0000-0000-0000-000000000000");
    }
    let full = render::render(render::read(&example("full")).expect("parses")).expect("renders");
    assert!(
        documents(&full)
            .iter()
            .all(|o| o["metadata"]["namespace"] == "chat-prod")
    );
}

#[test]
fn strings_a_yaml_1_1_reader_would_take_for_booleans_are_quoted() {
    let stream =
        render::render(render::read(&example("minimal")).expect("parses")).expect("renders");
    assert!(
        stream.contains("- \"yes\"\n"),
        "redis' `--appendonly yes` must stay a string for kubectl"
    );
    assert!(stream.contains("CHATSYS_MIGRATE: \"false\"\n"));
}

#[test]
fn an_unreadable_or_invalid_file_is_an_error_naming_it() {
    let missing = render::read("/nonexistent/chatsystem.yaml").expect_err("no such file");
    assert!(missing.to_string().contains("/nonexistent/chatsystem.yaml"));
    let mut cs = render::read(&example("minimal")).expect("parses");
    cs.spec.opensearch.resources.limits = None;
    let invalid = render::render(cs).expect_err("no heap size");
    assert_eq!(
        invalid.to_string(),
        "invalid spec: opensearch: resources.limits.memory is required to size the heap"
    );
}

#[test]
fn the_crds_cel_rules_are_enforced_without_an_api_server() {
    let mut cs = render::read(&example("full")).expect("parses");
    render::check_schema_rules(&cs).expect("the full example passes the rules");
    cs.spec.worker.autoscaling.min_replicas = 9;
    cs.spec.worker.autoscaling.max_replicas = 3;
    cs.spec.api.ingress.host = None;
    let refused = render::render(cs).expect_err("rules broken");
    let message = refused.to_string();
    assert!(
        message.contains("minReplicas must not exceed maxReplicas"),
        "{message}"
    );
    assert!(
        message.contains("ingress.host is required when the ingress is enabled"),
        "{message}"
    );
    for name in ["minimal", "external", "autoscaling-off"] {
        render::check_schema_rules(&render::read(&example(name)).expect("parses")).expect(name);
    }
}
