//! The operator with exactly the permissions the Helm chart gives it, as kube-apiserver's RBAC would
//! judge each call (see `common::rbac`): everything it needs is granted, and nothing it does is refused.

mod common;

use chatsys_operator::crd::ChatSystem;
use chatsys_operator::kinds::ChildKind;
use chatsys_operator::manifests;
use common::apiserver::ApiServer;
use common::rbac::{Attributes, Authorizer};
use common::{collection, fixture, fresh_inputs};
use http::Method;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

const CHATSYSTEMS: &str = "/apis/chatsys.io/v1alpha1/namespaces/team/chatsystems";

async fn reconcile(server: &ApiServer) {
    let _ = common::reconcile(server, "chat").await;
}

fn create_system(server: &ApiServer) {
    let mut object = serde_json::to_value(fixture("defaults")).expect("fixture serialises");
    object["metadata"] = json!({ "name": "chat", "namespace": "team" });
    server.create(CHATSYSTEMS, object);
}

fn attributes(method: Method, path: &str) -> Attributes {
    Attributes::of(&method, path, &BTreeMap::new()).expect("a resource request")
}

#[tokio::test]
async fn a_first_reconcile_with_the_charts_permissions_creates_every_child() {
    let server = ApiServer::new();
    create_system(&server);
    reconcile(&server).await;
    server.complete_jobs("team");
    reconcile(&server).await;

    assert_eq!(
        common::forbidden(&server.calls()),
        Vec::<String>::new(),
        "calls the chart does not allow"
    );
    let cs: ChatSystem =
        serde_json::from_value(server.get(CHATSYSTEMS, "chat").expect("stored")).expect("parses");
    let mut inputs = fresh_inputs(&cs);
    inputs.completed_jobs = server
        .names(&collection(ChildKind::Job, "team"))
        .into_iter()
        .collect();
    let plan = manifests::build(&manifests::validate(&cs, &inputs).expect("valid"));
    for child in &plan.children {
        assert!(
            server
                .get(&collection(child.kind(), "team"), child.name())
                .is_some(),
            "{:?} {} was not created",
            child.kind(),
            child.name()
        );
    }
}

/// A ClusterRole granting ConfigMaps' `patch` alone, bound to the chart's ServiceAccount.
const PATCH_ONLY: &str = r#"
kind: ServiceAccount
metadata: { name: chatsys-operator, namespace: ops }
---
kind: ClusterRole
metadata: { name: patch-only }
rules: [{ apiGroups: [""], resources: [configmaps], verbs: [patch] }]
---
kind: ClusterRoleBinding
metadata: { name: patch-only }
roleRef: { kind: ClusterRole, name: patch-only }
subjects: [{ kind: ServiceAccount, name: chatsys-operator, namespace: ops }]
"#;

#[tokio::test]
async fn an_apply_that_creates_is_refused_without_create_and_one_that_updates_is_not() {
    let server = ApiServer::with_authorizer(Arc::new(Authorizer::from_manifests(PATCH_ONLY)));
    let config_maps: Api<DynamicObject> = Api::namespaced_with(
        server.client(),
        "team",
        &ApiResource::erase::<ConfigMap>(&()),
    );
    let config = json!({ "apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": { "name": "settings" }, "data": { "a": "1" } });
    let apply = PatchParams::apply("chatsys-operator").force();
    let refused = config_maps
        .patch("settings", &apply, &Patch::Apply(&config))
        .await
        .expect_err("creating needs create");
    let kube::Error::Api(status) = refused else {
        panic!("an API error: {refused}")
    };
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        "configmaps \"settings\" is forbidden: User \"system:serviceaccount:ops:chatsys-operator\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"team\""
    );

    let admin: Api<DynamicObject> = Api::namespaced_with(
        server.admin_client(),
        "team",
        &ApiResource::erase::<ConfigMap>(&()),
    );
    admin
        .patch(
            "settings",
            &PatchParams::apply("admin"),
            &Patch::Apply(&config),
        )
        .await
        .expect("an administrator may");
    config_maps
        .patch("settings", &apply, &Patch::Apply(&config))
        .await
        .expect("updating by apply is a patch");
}

#[test]
fn the_charts_permissions_follow_kube_apiservers_verbs_and_scopes() {
    let chart = Authorizer::chart_defaults();
    let watch = Attributes::of(
        &Method::GET,
        "/apis/chatsys.io/v1alpha1/chatsystems",
        &BTreeMap::from([("watch".to_string(), "true".to_string())]),
    )
    .expect("a resource request");
    assert_eq!(watch.verb, "watch");
    assert!(chart.allows(&watch));
    let status = attributes(
        Method::PATCH,
        "/apis/chatsys.io/v1alpha1/namespaces/team/chatsystems/chat/status",
    );
    assert_eq!(status.subresource.as_deref(), Some("status"));
    assert!(chart.allows(&status), "status is its own resource");
    assert!(
        !chart.allows(&attributes(
            Method::PATCH,
            "/apis/chatsys.io/v1alpha1/namespaces/team/chatsystems/chat"
        )),
        "the spec is the user's"
    );
    assert!(
        !chart.allows(&attributes(
            Method::DELETE,
            "/api/v1/namespaces/team/secrets/chat-mysql-credentials"
        )),
        "credentials are never deleted"
    );
    let lease = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/chatsys-operator";
    assert!(chart.allows(&attributes(Method::PUT, lease)));
    assert!(
        !chart.allows(&attributes(
            Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/team/leases/chatsys-operator"
        )),
        "the Lease is granted in the release namespace only"
    );
    assert_eq!(
        Attributes::of(&Method::GET, "/apis/apps/v1", &BTreeMap::new()),
        None,
        "discovery is a non-resource request"
    );
}
