//! Helpers shared by the operator's test files.
#![allow(dead_code)] // each test file uses its own subset

pub mod apiserver;
pub mod defaults;
pub mod rbac;

use apiserver::ApiServer;
use chatsys_operator::children::Children;
use kube::api::DynamicObject;
use kube::runtime::watcher::Event;

use chatsys_operator::crd::ChatSystem;
use chatsys_operator::kinds::{Child, ChildKind};
use chatsys_operator::manifests::{self, Inputs};
use serde_json::Value;

/// The children `build` plans for a spec, which must be valid, once its Jobs have run (so the
/// Deployments are among them).
pub fn children(cs: &ChatSystem, inputs: &Inputs) -> Vec<Child> {
    manifests::build_settled(cs, inputs)
        .expect("a valid spec")
        .children
}

/// Every fixture of `tests/fixtures`.
pub const FIXTURES: [&str; 5] = [
    "defaults",
    "overrides",
    "external",
    "autoscaling-off",
    "paused",
];

pub fn fixture(name: &str) -> ChatSystem {
    let path = format!("{}/tests/fixtures/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

/// Inputs as on a cluster where no credentials exist yet and every external Secret holds its key.
pub fn fresh_inputs(cs: &ChatSystem) -> Inputs {
    chatsys_operator::render::offline_inputs(cs)
}

pub fn build_fixture(name: &str) -> (ChatSystem, Vec<Child>) {
    let cs = fixture(name);
    let built = children(&cs, &fresh_inputs(&cs));
    (cs, built)
}

/// A child by kind and name, as the JSON the apply sends.
pub fn find(children: &[Child], kind: ChildKind, name: &str) -> Value {
    children
        .iter()
        .find(|c| c.kind() == kind && c.name() == name)
        .unwrap_or_else(|| panic!("no {kind:?} {name}"))
        .to_json()
}

/// Every child of a kind, as the JSON the apply sends.
pub fn of_kind(children: &[Child], kind: ChildKind) -> Vec<Value> {
    children
        .iter()
        .filter(|c| c.kind() == kind)
        .map(Child::to_json)
        .collect()
}

/// Every container and init container of a workload's pod template.
pub fn containers(workload: &Value) -> Vec<&Value> {
    let pod = &workload["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .filter_map(|field| pod[field].as_array())
        .flatten()
        .collect()
}

/// A workload's first (main) container, after any init containers.
pub fn main_container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

pub fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    containers(workload)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

pub fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("container {} has no env {name}", container["name"]))
}

pub fn has_env(container: &Value, name: &str) -> bool {
    container["env"]
        .as_array()
        .is_some_and(|env| env.iter().any(|e| e["name"] == name))
}

/// The path of a kind's collection in a namespace.
pub fn collection(kind: ChildKind, namespace: &str) -> String {
    let resource = kind.api_resource();
    if resource.group.is_empty() {
        format!(
            "/api/{}/namespaces/{namespace}/{}",
            resource.version, resource.plural
        )
    } else {
        format!(
            "/apis/{}/{}/namespaces/{namespace}/{}",
            resource.group, resource.version, resource.plural
        )
    }
}

/// The operator's caches as its watches would fill them from what the server holds now.
pub fn children_of(server: &ApiServer, namespace: &str) -> Children {
    let (children, writers) = Children::new();
    for (kind, mut writer) in writers {
        writer.apply_watcher_event(&Event::Init);
        for object in server.objects(&collection(kind, namespace)) {
            let labels = &object["metadata"]["labels"];
            if labels["app.kubernetes.io/managed-by"] != "chatsys-operator" {
                continue;
            }
            let object: DynamicObject = serde_json::from_value(object).expect("an object");
            writer.apply_watcher_event(&Event::InitApply(object));
        }
        writer.apply_watcher_event(&Event::InitDone);
    }
    children
}

/// One reconcile of the ChatSystem `name` in namespace `team`, as the controller would run it.
pub async fn reconcile(
    server: &ApiServer,
    name: &str,
) -> Result<kube::runtime::controller::Action, chatsys_operator::error::Error> {
    let stored = server
        .get(
            "/apis/chatsys.io/v1alpha1/namespaces/team/chatsystems",
            name,
        )
        .expect("the ChatSystem exists");
    let cs: ChatSystem = serde_json::from_value(stored).expect("a ChatSystem");
    let context = std::sync::Arc::new(chatsys_operator::controller::Context::new(
        server.client(),
        None,
        children_of(server, "team"),
        chatsys_operator::apis::Discovery::new(std::time::Duration::ZERO),
    ));
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        chatsys_operator::controller::reconcile(std::sync::Arc::new(cs), context),
    )
    .await
    .expect("the reconcile ends")
}

/// The calls the API server refused for want of a permission, as `METHOD path?query`.
pub fn forbidden(calls: &[apiserver::Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.status == http::StatusCode::FORBIDDEN)
        .map(|c| format!("{} {}?{}", c.method, c.path, c.query))
        .collect()
}
