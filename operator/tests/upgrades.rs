//! An operator upgrade moves the systems that follow its default images one at a time: each waits,
//! on its running images and still Ready, until the one moving is Ready on the new version.

mod common;

use chatsys_operator::apis::Discovery;
use chatsys_operator::controller::{self, Context};
use chatsys_operator::crd::{ChatSystem, VERSION};
use chatsys_operator::upgrades::{Admitted, Turn};
use common::apiserver::ApiServer;
use common::{children_of, fixture};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const CHATSYSTEMS: &str = "/apis/chatsys.io/v1alpha1/namespaces/team/chatsystems";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/team/deployments";
const OLD: &str = "0.0.9";

fn stored(server: &ApiServer, name: &str) -> ChatSystem {
    serde_json::from_value(server.get(CHATSYSTEMS, name).expect("stored")).expect("a ChatSystem")
}

/// One reconcile of `name`, with the operator's cache of every ChatSystem as the server holds them.
async fn reconcile(server: &ApiServer, name: &str) {
    let (systems, mut writer) = reflector::store::<ChatSystem>();
    writer.apply_watcher_event(&Event::Init);
    for object in server.objects(CHATSYSTEMS) {
        let cs: ChatSystem = serde_json::from_value(object).expect("a ChatSystem");
        writer.apply_watcher_event(&Event::InitApply(cs));
    }
    writer.apply_watcher_event(&Event::InitDone);
    let context = Context::new(
        server.client(),
        None,
        children_of(server, "team"),
        Discovery::new(Duration::ZERO),
    )
    .with_systems(systems);
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        controller::reconcile(Arc::new(stored(server, name)), Arc::new(context)),
    )
    .await
    .expect("the reconcile ends");
}

fn api_image(server: &ApiServer, name: &str) -> Value {
    server
        .get(DEPLOYMENTS, &format!("{name}-api"))
        .expect("the API")["spec"]["template"]["spec"]["containers"][0]["image"]
        .clone()
}

fn condition(server: &ApiServer, name: &str, type_: &str) -> Value {
    let status = &server.get(CHATSYSTEMS, name).expect("stored")["status"];
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Two Ready systems as the previous operator version left them: its default images running, and
/// its version in their status.
async fn two_systems_on_the_previous_version(server: &ApiServer) {
    for name in ["chat", "other"] {
        let mut object = serde_json::to_value(fixture("defaults")).expect("serialises");
        object["metadata"] = json!({ "name": name, "namespace": "team" });
        server.create(CHATSYSTEMS, object);
        reconcile(server, name).await;
        server.complete_jobs("team");
        reconcile(server, name).await;
    }
    server.make_workloads_ready("team");
    let admin: kube::Api<DynamicObject> = kube::Api::namespaced_with(
        server.admin_client(),
        "team",
        &ApiResource::erase::<ChatSystem>(&()),
    );
    for name in ["chat", "other"] {
        reconcile(server, name).await;
        for component in ["api", "worker"] {
            let deployment = format!("{name}-{component}");
            let mut live = server.get(DEPLOYMENTS, &deployment).expect("Deployment");
            live["spec"]["template"]["spec"]["containers"][0]["image"] =
                json!(format!("chatsys/chatsys-{component}:{OLD}"));
            server.update(DEPLOYMENTS, &deployment, live);
        }
        admin
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "version": OLD } })),
            )
            .await
            .expect("status written");
    }
    server.make_workloads_ready("team");
}

#[tokio::test]
async fn systems_following_the_default_images_move_to_a_new_operator_version_one_at_a_time() {
    let server = ApiServer::new();
    two_systems_on_the_previous_version(&server).await;
    let jobs_before = server.names("/apis/batch/v1/namespaces/team/jobs");

    reconcile(&server, "chat").await;
    assert_eq!(
        api_image(&server, "chat"),
        format!("chatsys/chatsys-api:{VERSION}")
    );
    assert_eq!(
        stored(&server, "chat").status.and_then(|s| s.version),
        Some(VERSION.to_string())
    );

    reconcile(&server, "other").await;
    assert_eq!(
        api_image(&server, "other"),
        format!("chatsys/chatsys-api:{OLD}"),
        "waits while another system moves"
    );
    let progressing = condition(&server, "other", "Progressing");
    assert_eq!(progressing["reason"], "UpgradeQueued", "{progressing}");
    assert_eq!(
        condition(&server, "other", "Ready")["status"],
        "True",
        "a system waiting its turn is still Ready: {}",
        condition(&server, "other", "Ready")
    );
    assert_eq!(
        stored(&server, "other").status.and_then(|s| s.version),
        Some(OLD.to_string())
    );
    let jobs_now = server.names("/apis/batch/v1/namespaces/team/jobs");
    assert!(
        jobs_before
            .iter()
            .filter(|j| j.starts_with("other-"))
            .all(|j| jobs_now.contains(j))
            && jobs_now.iter().filter(|j| j.starts_with("other-")).count() == 1,
        "no migration for the waiting system: {jobs_now:?}"
    );

    // The first is Ready on the new version: the next one's turn.
    server.complete_jobs("team");
    reconcile(&server, "chat").await;
    server.make_workloads_ready("team");
    reconcile(&server, "chat").await;
    assert_eq!(condition(&server, "chat", "Ready")["status"], "True");
    reconcile(&server, "other").await;
    assert_eq!(
        api_image(&server, "other"),
        format!("chatsys/chatsys-api:{VERSION}")
    );
}

#[test]
fn two_reconciles_at_once_cannot_both_take_the_last_place() {
    let behind = |name: &str| {
        let mut cs = fixture("defaults");
        cs.metadata.name = Some(name.to_string());
        cs.status = Some(chatsys_operator::crd::ChatSystemStatus {
            phase: Some(chatsys_operator::crd::Phase::Ready),
            version: Some(OLD.to_string()),
            ..Default::default()
        });
        Arc::new(cs)
    };
    let (a, b) = (behind("a"), behind("b"));
    let systems = [a.clone(), b.clone()];
    let admitted = Admitted::default();
    assert_eq!(admitted.turn(&a, &systems), Turn::Go);
    assert_eq!(
        admitted.turn(&b, &systems),
        Turn::Wait { moving: 1 },
        "a was let through before its status says so"
    );
    assert_eq!(admitted.turn(&a, &systems), Turn::Go, "a keeps its place");
    let mut pinned = fixture("defaults");
    pinned.spec.api.image = Some("example.org/api:1".to_string());
    pinned.spec.worker.image = Some("example.org/worker:1".to_string());
    assert_eq!(
        admitted.turn(&pinned, &systems),
        Turn::Go,
        "pinned images never wait"
    );
}
