//! The API-server stand-in behaves as kube-apiserver does where the operator's defects lived. The
//! messages are kube-apiserver's own wording (from its validation code), since a server cannot run here.

mod common;

use common::apiserver::ApiServer;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/team/deployments";

fn api<K: kube::Resource<DynamicType = ()>>(server: &ApiServer) -> Api<DynamicObject> {
    Api::namespaced_with(server.admin_client(), "team", &ApiResource::erase::<K>(&()))
}

async fn apply(
    api: &Api<DynamicObject>,
    manager: &str,
    object: Value,
) -> kube::Result<DynamicObject> {
    let name = object["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    api.patch(
        &name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&object),
    )
    .await
}

fn deployment(replicas: Option<i64>) -> Value {
    let mut object = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "web" },
        "spec": { "selector": { "matchLabels": { "app": "web" } },
                  "template": { "metadata": { "labels": { "app": "web" } },
                                "spec": { "containers": [{ "name": "web", "image": "web:1" }] } } },
    });
    if let Some(replicas) = replicas {
        object["spec"]["replicas"] = json!(replicas);
    }
    object
}

fn api_status(error: kube::Error) -> (u16, String) {
    match error {
        kube::Error::Api(status) => (status.code, status.message),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn a_field_its_manager_stops_applying_is_removed_and_replicas_default_to_one() {
    let server = ApiServer::new();
    let deployments = api::<Deployment>(&server);
    let applied = apply(&deployments, "me", deployment(Some(3)))
        .await
        .expect("applied");
    assert_eq!(applied.data["spec"]["replicas"], 3);
    assert_eq!(applied.metadata.generation, Some(1));
    let dropped = apply(&deployments, "me", deployment(None))
        .await
        .expect("applied");
    assert_eq!(
        dropped.data["spec"]["replicas"], 1,
        "removed, then defaulted"
    );
    assert_eq!(dropped.metadata.generation, Some(2));
}

#[tokio::test]
async fn a_field_another_manager_also_owns_stays() {
    let server = ApiServer::new();
    let deployments = api::<Deployment>(&server);
    apply(&deployments, "me", deployment(Some(3)))
        .await
        .expect("applied");
    let replicas_only = json!({ "apiVersion": "apps/v1", "kind": "Deployment",
                                "metadata": { "name": "web" }, "spec": { "replicas": 3 } });
    apply(&deployments, "other", replicas_only)
        .await
        .expect("applied");
    let kept = apply(&deployments, "me", deployment(None))
        .await
        .expect("applied");
    assert_eq!(kept.data["spec"]["replicas"], 3);
    let owners: Vec<String> = kept
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| {
            f.fields_v1
                .as_ref()
                .is_some_and(|v| v.0["f:spec"].get("f:replicas").is_some())
        })
        .filter_map(|f| f.manager.clone())
        .collect();
    assert_eq!(owners, ["other"]);
}

#[tokio::test]
async fn without_force_a_conflicting_apply_is_refused() {
    let server = ApiServer::new();
    let deployments = api::<Deployment>(&server);
    apply(&deployments, "me", deployment(Some(3)))
        .await
        .expect("applied");
    server.autoscale("team", "web", 5);
    let error = deployments
        .patch(
            "web",
            &PatchParams::apply("me"),
            &Patch::Apply(&deployment(Some(3))),
        )
        .await
        .expect_err("conflict");
    let (code, message) = api_status(error);
    assert_eq!(code, 409);
    assert_eq!(
        message,
        "Apply failed with 1 conflict: conflict with \"kube-controller-manager\" using apps/v1: .spec.replicas"
    );
}

#[tokio::test]
async fn a_no_op_apply_keeps_the_resource_version() {
    let server = ApiServer::new();
    let deployments = api::<Deployment>(&server);
    let first = apply(&deployments, "me", deployment(Some(2)))
        .await
        .expect("applied");
    let again = apply(&deployments, "me", deployment(Some(2)))
        .await
        .expect("applied");
    assert_eq!(
        first.metadata.resource_version,
        again.metadata.resource_version
    );
    assert_eq!(server.history(DEPLOYMENTS, "web").len(), 1);
}

#[tokio::test]
async fn a_statefulset_claim_template_cannot_change() {
    let server = ApiServer::new();
    let sets = api::<StatefulSet>(&server);
    let set = |size: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": { "name": "db" },
            "spec": { "serviceName": "db", "selector": { "matchLabels": { "app": "db" } },
                      "template": { "metadata": { "labels": { "app": "db" } },
                                    "spec": { "containers": [{ "name": "db", "image": "db:1" }] } },
                      "volumeClaimTemplates": [{ "metadata": { "name": "data" },
                          "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": size } } } }] },
        })
    };
    apply(&sets, "me", set("10Gi")).await.expect("applied");
    let (code, message) = api_status(
        apply(&sets, "me", set("20Gi"))
            .await
            .expect_err("immutable"),
    );
    assert_eq!(code, 422);
    assert_eq!(
        message,
        "StatefulSet.apps \"db\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
    );
}

#[tokio::test]
async fn deleting_an_owner_collects_what_it_owns_and_string_data_becomes_data() {
    let server = ApiServer::new();
    let deployments = api::<Deployment>(&server);
    let owner = apply(&deployments, "me", deployment(Some(1)))
        .await
        .expect("applied");
    let secrets = api::<Secret>(&server);
    let secret = |name: &str, owned: bool| {
        let mut object = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name },
                                 "stringData": { "password": "p" } });
        if owned {
            object["metadata"]["ownerReferences"] = json!([{ "apiVersion": "apps/v1", "kind": "Deployment",
                "name": "web", "uid": owner.metadata.uid.clone().expect("uid") }]);
        }
        object
    };
    let stored = apply(&secrets, "me", secret("owned", true))
        .await
        .expect("applied");
    assert_eq!(stored.data["data"]["password"], "cA==");
    assert!(stored.data.get("stringData").is_none());
    apply(&secrets, "me", secret("free", false))
        .await
        .expect("applied");
    server.delete(DEPLOYMENTS, "web");
    assert_eq!(server.names("/api/v1/namespaces/team/secrets"), ["free"]);
}

#[test]
fn quantities_are_written_back_in_their_canonical_form() {
    use common::defaults::canonical;
    for (written, stored) in [
        ("0.5", "500m"),
        ("1.5", "1500m"),
        ("1000m", "1"),
        ("100m", "100m"),
        ("1024Mi", "1Gi"),
        ("1.5Gi", "1536Mi"),
        ("1Gi", "1Gi"),
        ("512Mi", "512Mi"),
        ("0.5Ki", "512"),
        ("1000M", "1G"),
        ("2", "2"),
        ("0", "0"),
    ] {
        assert_eq!(canonical(written).as_deref(), Some(stored), "{written}");
    }
}

#[tokio::test]
async fn the_server_fills_in_the_defaults_of_what_it_stores() {
    let server = ApiServer::new();
    let deployments = api::<Deployment>(&server);
    let stored = apply(&deployments, "test", deployment(None))
        .await
        .expect("applied");
    let stored = serde_json::to_value(stored).expect("JSON");
    assert_eq!(stored["spec"]["replicas"], 1);
    assert_eq!(
        stored["spec"]["strategy"],
        json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": "25%", "maxSurge": "25%" } })
    );
    let container = &stored["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(
        stored["spec"]["template"]["spec"]["dnsPolicy"],
        "ClusterFirst"
    );
}

#[tokio::test]
async fn a_jobs_template_cannot_change() {
    let server = ApiServer::new();
    let jobs = api::<k8s_openapi::api::batch::v1::Job>(&server);
    let job = |image: &str| {
        json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "migrate" },
                "spec": { "template": { "spec": { "restartPolicy": "OnFailure",
                    "containers": [{ "name": "migrate", "image": image }] } } } })
    };
    apply(&jobs, "test", job("example.org/api:1"))
        .await
        .expect("created");
    let refused = apply(&jobs, "test", job("example.org/api:2"))
        .await
        .expect_err("immutable");
    let kube::Error::Api(status) = refused else {
        panic!("an API error: {refused}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .starts_with("Job.batch \"migrate\" is invalid: spec.template: Invalid value:")
            && status.message.ends_with("field is immutable"),
        "{}",
        status.message
    );
}
