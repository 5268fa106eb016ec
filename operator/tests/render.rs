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
        ("minimal", 31),
        ("full", 37),
        ("external", 14),
        ("autoscaling-off", 29),
        ("scale-to-zero", 30),
    ] {
        let cs = render::read(&example(name))
            .expect("example parses")
            .remove(0);
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
    let minimal = render::render(render::read(&example("minimal")).expect("parses").remove(0))
        .expect("renders");
    for object in documents(&minimal) {
        assert_eq!(object["metadata"]["namespace"], "default");
        if object["kind"] == "Secret" && object["metadata"]["name"] != "chat-api-admin-key" {
            // Kept credentials have no owner: they outlive the resource with their volumes.
            assert!(object["metadata"]["ownerReferences"].is_null(), "{object}");
            continue;
        }
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(owner["name"], "chat");
        assert_eq!(owner["uid"], "00000000-0000-0000-0000-000000000000");
    }
    let full =
        render::render(render::read(&example("full")).expect("parses").remove(0)).expect("renders");
    assert!(
        documents(&full)
            .iter()
            .all(|o| o["metadata"]["namespace"] == "chat-prod")
    );
}

#[test]
fn strings_a_yaml_1_1_reader_would_take_for_booleans_are_quoted() {
    let stream = render::render(render::read(&example("minimal")).expect("parses").remove(0))
        .expect("renders");
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
    let mut cs = render::read(&example("minimal")).expect("parses").remove(0);
    cs.spec.opensearch.resources.limits = None;
    let invalid = render::render(cs).expect_err("no heap size");
    assert_eq!(
        invalid.to_string(),
        "invalid spec: opensearch: resources.limits.memory is required to size the heap"
    );
}

#[test]
fn the_crds_cel_rules_are_enforced_without_an_api_server() {
    let mut cs = render::read(&example("full")).expect("parses").remove(0);
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
        render::check_schema_rules(&render::read(&example(name)).expect("parses").remove(0))
            .expect(name);
    }
}

fn write_file(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("chatsys-render-{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("writes");
    path.to_string_lossy().into_owned()
}

const MINIMAL: &str =
    "apiVersion: chatsys.io/v1alpha1\nkind: ChatSystem\nmetadata:\n  name: chat\nspec: {}\n";

#[test]
fn fields_the_crd_does_not_declare_or_values_of_the_wrong_type_are_refused_with_their_path() {
    let typo = write_file(
        "typo.yaml",
        &format!("{MINIMAL}  api:\n    replica: 3\n").replace("spec: {}\n", "spec:\n"),
    );
    let refused = render::read(&typo).expect_err("an unknown field");
    assert_eq!(
        refused.to_string(),
        format!("{typo}: document 1: unknown field \"spec.api.replica\"")
    );
    let wrong_type = write_file(
        "type.yaml",
        &MINIMAL.replace("spec: {}\n", "spec:\n  api:\n    replicas: three\n"),
    );
    let refused = render::read(&wrong_type).expect_err("a string for an integer");
    assert!(
        refused
            .to_string()
            .contains("spec.api.replicas in body must be of type integer: string"),
        "{refused}"
    );
}

#[test]
fn a_file_that_is_not_a_chatsystem_is_refused_and_several_are_each_rendered() {
    let deployment = write_file(
        "deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n",
    );
    let refused = render::read(&deployment).expect_err("not a ChatSystem");
    assert_eq!(
        refused.to_string(),
        format!(
            "{deployment}: document 1 is apps/v1 Deployment, not a chatsys.io/v1alpha1 ChatSystem"
        )
    );
    let two = write_file(
        "two.yaml",
        &format!(
            "{MINIMAL}---\n{}",
            MINIMAL.replace("name: chat", "name: other")
        ),
    );
    let systems = render::read(&two).expect("two ChatSystems");
    let names: Vec<String> = systems
        .iter()
        .map(|cs| cs.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["chat", "other"]);
}

#[test]
fn render_reads_standard_input_from_dash() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatsys-operator"))
        .args(["render", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the operator runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(MINIMAL.as_bytes())
        .expect("written");
    let output = child.wait_with_output().expect("it ends");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stream = String::from_utf8(output.stdout).expect("UTF-8");
    assert_eq!(documents(&stream).len(), 31);
}

/// What a cluster's storage, kubelet and Ingress need, in what `render` prints for every example.
#[test]
fn every_rendered_example_keeps_data_below_the_volume_root_and_the_cookie_and_metrics_safe() {
    for name in [
        "minimal",
        "full",
        "external",
        "autoscaling-off",
        "scale-to-zero",
    ] {
        let cs = render::read(&example(name)).expect("parses").remove(0);
        let rendered = documents(&render::render(cs).expect("renders"));
        let of_kind = |kind: &'static str| rendered.iter().filter(move |o| o["kind"] == kind);
        for set in of_kind("StatefulSet") {
            let pod = &set["spec"]["template"]["spec"];
            let data = pod["containers"][0]["volumeMounts"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == "data"))
                .expect("the data volume is mounted");
            assert!(
                data["subPath"].as_str().is_some_and(|p| !p.is_empty()),
                "{name}: {} keeps its data at the volume's root",
                set["metadata"]["name"]
            );
            assert_eq!(
                pod["securityContext"]["fsGroupChangePolicy"],
                "OnRootMismatch"
            );
            if set["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-rabbitmq"))
            {
                let cookie = pod["volumes"]
                    .as_array()
                    .and_then(|v| v.iter().find(|v| v["name"] == "erlang-cookie"))
                    .expect("the cookie's volume");
                assert!(cookie["secret"]["secretName"].is_string(), "{name}");
            }
        }
        for job in of_kind("Job") {
            assert!(
                job["spec"]["activeDeadlineSeconds"].is_i64(),
                "{name}: a Job without a deadline"
            );
            assert!(job["spec"]["backoffLimit"].is_i64(), "{name}");
        }
        let api = of_kind("Deployment")
            .find(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "api")
            .expect("the API");
        let env = api["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env");
        let admin_key = env
            .iter()
            .find(|e| e["name"] == "CHATSYS_ADMIN_KEY")
            .expect("an admin key");
        assert!(
            admin_key["valueFrom"]["secretKeyRef"]["name"].is_string(),
            "{name}"
        );
        for ingress in of_kind("Ingress") {
            for path in ingress["spec"]["rules"][0]["http"]["paths"]
                .as_array()
                .expect("paths")
            {
                let path = path["path"].as_str().unwrap_or_default();
                assert!(
                    path.starts_with("/applications") || path == "/openapi.json",
                    "{name}: {path} reaches more than the API's public paths"
                );
            }
        }
    }
}
