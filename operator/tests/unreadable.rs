//! A ChatSystem the operator cannot decode is reported in its own status and stops none of the others.

mod common;

use chatsys_operator::crd::ChatSystem;
use chatsys_operator::unreadable::{self, Unreadable};
use common::apiserver::ApiServer;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

const CHATSYSTEMS: &str = "/apis/chatsys.io/v1alpha1/namespaces/team/chatsystems";

fn object(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "chatsys.io/v1alpha1", "kind": "ChatSystem",
        "metadata": { "name": name, "namespace": "team", "generation": 2, "resourceVersion": "7" },
        "spec": spec,
    }))
    .expect("an object")
}

/// What an earlier, looser schema let through: a label value that is not a string.
fn bad_peers() -> Value {
    json!({ "networkPolicy": { "apiFrom": [{ "podSelector": { "matchLabels": { "tier": 1 } } }] } })
}

#[test]
fn a_list_holding_one_unreadable_system_still_yields_the_others() {
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let (store, mut writer) = reflector::store::<ChatSystem>();
    let events = [
        Event::Init,
        Event::InitApply(object("good", json!({}))),
        Event::InitApply(object("bad", bad_peers())),
        Event::InitApply(object("other", json!({ "api": { "replicas": 3 } }))),
        Event::InitDone,
    ];
    for event in events {
        if let Some(typed) = unreadable::typed(event, &report) {
            writer.apply_watcher_event(&typed);
        }
    }
    let mut names: Vec<String> = store
        .state()
        .iter()
        .map(|cs| cs.metadata.name.clone().unwrap_or_default())
        .collect();
    names.sort();
    assert_eq!(names, ["good", "other"]);
    let reported = reports.try_recv().expect("the bad one is reported");
    assert_eq!(
        (reported.name.as_str(), reported.generation),
        ("bad", Some(2))
    );
    assert!(
        reported.reason.contains("invalid type"),
        "{}",
        reported.reason
    );
    assert!(reports.try_recv().is_err(), "only the bad one");

    // A system edited into a shape the operator cannot read is no longer reconciled from its old spec.
    let edited =
        unreadable::typed(Event::Apply(object("good", bad_peers())), &report).expect("an event");
    writer.apply_watcher_event(&edited);
    assert!(
        store
            .get(&ObjectRef::<ChatSystem>::new("good").within("team"))
            .is_none()
    );
}

#[tokio::test]
async fn the_report_is_a_degraded_condition_on_the_unreadable_system() {
    let server = ApiServer::new();
    server.create(
        CHATSYSTEMS,
        serde_json::to_value(object("bad", bad_peers())).expect("serialises"),
    );
    let bad = Unreadable {
        namespace: "team".to_string(),
        name: "bad".to_string(),
        generation: Some(1),
        resource_version: Some("1".to_string()),
        reason: "invalid type: integer `1`, expected a string".to_string(),
    };
    unreadable::report(&server.client(), &bad, Timestamp::now())
        .await
        .expect("written");
    let status = &server.get(CHATSYSTEMS, "bad").expect("stored")["status"];
    assert_eq!(status["phase"], "Degraded");
    assert_eq!(status["conditions"][0]["reason"], "Unreadable");
    assert!(
        status["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("invalid type: integer `1`")),
        "{status}"
    );
}
