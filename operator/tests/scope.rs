//! Watches of several namespaces merged into what one cache reads as one watch.

use chatsys_operator::scope::{Merge, Scope};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::ObjectMeta;
use kube::runtime::watcher::Event;

fn object(namespace: &str, name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

fn described(events: Vec<Event<ConfigMap>>) -> Vec<String> {
    events
        .into_iter()
        .map(|event| match event {
            Event::Init => "init".to_string(),
            Event::InitDone => "init done".to_string(),
            Event::InitApply(o) => format!(
                "list {}/{}",
                o.namespace().unwrap_or_default(),
                o.name_any()
            ),
            Event::Apply(o) => format!(
                "apply {}/{}",
                o.namespace().unwrap_or_default(),
                o.name_any()
            ),
            Event::Delete(o) => format!(
                "delete {}/{}",
                o.namespace().unwrap_or_default(),
                o.name_any()
            ),
        })
        .collect()
}

#[test]
fn the_list_ends_once_every_namespace_has_listed_and_changes_wait_for_it() {
    let mut merge = Merge::new(["a".to_string(), "b".to_string()]);
    let mut seen = Vec::new();
    seen.extend(merge.on("a", Event::Init));
    seen.extend(merge.on("a", Event::InitApply(object("a", "one"))));
    seen.extend(merge.on("a", Event::InitDone));
    seen.extend(merge.on("a", Event::Apply(object("a", "two"))));
    seen.extend(merge.on("b", Event::Init));
    seen.extend(merge.on("b", Event::InitApply(object("b", "three"))));
    seen.extend(merge.on("b", Event::InitDone));
    assert_eq!(
        described(seen),
        ["list a/one", "list b/three", "init done", "apply a/two"]
    );
}

#[test]
fn a_namespace_listed_again_brings_its_changes_and_leaves_the_others_alone() {
    let mut merge = Merge::new(["a".to_string(), "b".to_string()]);
    for (namespace, name) in [("a", "one"), ("a", "two"), ("b", "three")] {
        merge.on(namespace, Event::InitApply(object(namespace, name)));
    }
    merge.on("a", Event::InitDone);
    merge.on("b", Event::InitDone);
    // Namespace a's watch restarts: "two" was deleted meanwhile, "four" created.
    let mut seen = Vec::new();
    seen.extend(merge.on("a", Event::Init));
    seen.extend(merge.on("a", Event::InitApply(object("a", "one"))));
    seen.extend(merge.on("a", Event::InitApply(object("a", "four"))));
    seen.extend(merge.on("a", Event::InitDone));
    assert_eq!(
        described(seen),
        ["delete a/two", "apply a/four", "apply a/one"]
    );
}

#[test]
fn the_scope_is_every_namespace_or_a_list() {
    assert!(Scope::parse("").namespaces().is_empty());
    assert_eq!(
        Scope::parse(" team, chat ,team,").namespaces(),
        ["chat", "team"]
    );
}
