//! ChatSystems stored in a shape this operator cannot read (written under an older, looser schema, or
//! by a newer operator's). The watch decodes each object by itself: one that does not decode is
//! reported in its own status and left out, so it never fails the list of all the others (a typed
//! watch fails the whole list on one bad object: kube-rs#774).

use crate::crd::ChatSystem;
use crate::manifests::MANAGER;
use crate::metrics;
use crate::status::DEGRADED;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher::Event;
use kube::{Client, Resource};
use serde_json::json;
use std::collections::HashSet;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tracing::warn;

/// A stored ChatSystem that does not decode, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Unreadable {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub resource_version: Option<String>,
    pub reason: String,
}

/// The watch's event with each object typed. One that does not decode is sent to `report` and becomes
/// the deletion of its name from the cache (a version read earlier must not go on being reconciled),
/// or nothing while the watch lists.
pub fn typed(
    event: Event<DynamicObject>,
    report: &UnboundedSender<Unreadable>,
) -> Option<Event<ChatSystem>> {
    let decode = |object: DynamicObject| -> Result<ChatSystem, Box<ChatSystem>> {
        let metadata = object.metadata.clone();
        let value = serde_json::to_value(&object).expect("an object serialises");
        serde_json::from_value::<ChatSystem>(value).map_err(|error| {
            let _ = report.send(Unreadable {
                namespace: metadata.namespace.clone().unwrap_or_default(),
                name: metadata.name.clone().unwrap_or_default(),
                generation: metadata.generation,
                resource_version: metadata.resource_version.clone(),
                reason: error.to_string(),
            });
            let mut stub = ChatSystem::new(
                &metadata.name.clone().unwrap_or_default(),
                Default::default(),
            );
            stub.metadata = metadata;
            Box::new(stub)
        })
    };
    match event {
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
        Event::InitApply(object) => decode(object).ok().map(Event::InitApply),
        Event::Apply(object) => Some(match decode(object) {
            Ok(cs) => Event::Apply(cs),
            Err(stub) => Event::Delete(*stub),
        }),
        Event::Delete(object) => Some(Event::Delete(decode(object).unwrap_or_else(|stub| *stub))),
    }
}

/// Writes each unreadable ChatSystem's status once per version: `Degraded`, reason `Unreadable`.
pub async fn report_all(client: Client, mut unreadable: UnboundedReceiver<Unreadable>) {
    let mut reported = HashSet::new();
    while let Some(object) = unreadable.recv().await {
        let version = (
            object.namespace.clone(),
            object.name.clone(),
            object.resource_version.clone(),
        );
        if !reported.insert(version) {
            continue;
        }
        metrics::unreadable_resource();
        warn!(namespace = %object.namespace, name = %object.name, reason = %object.reason, "a ChatSystem the operator cannot read");
        if let Err(error) = report(&client, &object, Timestamp::now()).await {
            warn!(%error, name = %object.name, "recording an unreadable ChatSystem in its status");
        }
    }
}

pub async fn report(client: &Client, object: &Unreadable, now: Timestamp) -> kube::Result<()> {
    // Untyped: the answer is the same object, which does not decode either.
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &object.namespace,
        &ApiResource::erase::<ChatSystem>(&()),
    );
    let condition = Condition {
        type_: DEGRADED.to_string(),
        status: "True".to_string(),
        reason: "Unreadable".to_string(),
        message: format!(
            "the operator cannot read this ChatSystem, so it is not reconciled: {}",
            object.reason
        ),
        observed_generation: object.generation,
        last_transition_time: Time(now),
    };
    let patch = json!({
        "apiVersion": ChatSystem::api_version(&()),
        "kind": ChatSystem::kind(&()),
        "status": { "phase": "Degraded", "observedGeneration": object.generation,
                    "conditions": [condition] },
    });
    api.patch_status(
        &object.name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}
