//! What the watches have seen of the objects ChatSystems own, one cache per kind. A reconcile reads
//! them instead of asking the API server again, and applies only what differs from them: a settled
//! system's reconcile makes no write.

use crate::apis::Served;
use crate::crd::ChatSystem;
use crate::error::Error;
use crate::kinds::ChildKind;
use crate::manifests::MANAGER;
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a reconcile waits for the caches' first complete listing before it gives up (and is
/// retried): acting on an empty cache would re-create or mis-hand-over what exists.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Children {
    stores: BTreeMap<ChildKind, Store<DynamicObject>>,
}

/// The writers that fill [`Children`]: the watches in `controller::run`, or a test's objects.
pub type ChildWriters = Vec<(ChildKind, Writer<DynamicObject>)>;

impl Children {
    pub fn new() -> (Children, ChildWriters) {
        let mut stores = BTreeMap::new();
        let mut writers = Vec::new();
        for kind in ChildKind::ALL {
            let writer = Writer::new(kind.api_resource());
            stores.insert(kind, writer.as_reader());
            writers.push((kind, writer));
        }
        (Children { stores }, writers)
    }

    /// Waits until the cache of every kind the cluster serves has been listed once; an error if one is
    /// not within `SYNC_TIMEOUT`.
    pub async fn synced(&self, served: &Served) -> Result<(), Error> {
        for (kind, store) in &self.stores {
            if !kind.is_served(served) {
                continue;
            }
            match tokio::time::timeout(SYNC_TIMEOUT, store.wait_until_ready()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(Error::NotSynced(kind.name())),
            }
        }
        Ok(())
    }

    /// The object of this kind, name and namespace, as last seen.
    pub fn get(&self, kind: ChildKind, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let reference = ObjectRef::new_with(name, kind.api_resource()).within(namespace);
        self.stores.get(&kind)?.get(&reference)
    }

    /// Every object of this kind the resource owns (its labels and its uid in the owner references).
    pub fn owned_by(&self, kind: ChildKind, cs: &ChatSystem) -> Vec<Arc<DynamicObject>> {
        match cs.uid() {
            Some(uid) => self.of(kind, cs, &uid),
            None => Vec::new(),
        }
    }

    /// Every object of this kind with the resource's labels that the object of `owner_uid` owns: the
    /// resource itself, or one of its children (a CronJob's Jobs).
    pub fn of(&self, kind: ChildKind, cs: &ChatSystem, owner_uid: &str) -> Vec<Arc<DynamicObject>> {
        let Some(store) = self.stores.get(&kind) else {
            return Vec::new();
        };
        store
            .state()
            .into_iter()
            .filter(|object| object.namespace() == cs.namespace())
            .filter(|object| {
                let labels = object.labels();
                labels.get("app.kubernetes.io/instance") == Some(&cs.name_any())
                    && labels
                        .get("app.kubernetes.io/managed-by")
                        .map(String::as_str)
                        == Some(MANAGER)
            })
            .filter(|object| {
                object
                    .owner_references()
                    .iter()
                    .any(|owner| owner.uid == owner_uid)
            })
            .collect()
    }
}

/// Whether applying `config` to `live` would change nothing: `live` holds every field of `config`,
/// and the operator's earlier configuration set no field that `config` leaves out (server-side apply
/// would remove it).
pub fn applied(live: &DynamicObject, config: &Value) -> bool {
    holds(&as_json(live), config)
        && operator_fields(live)
            .iter()
            .all(|path| value_at(config, path).is_some())
}

/// The fields the operator's applied configuration sets, from `managedFields`, down to the first
/// list or leaf.
fn operator_fields(live: &DynamicObject) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for entry in live.metadata.managed_fields.iter().flatten() {
        if entry.manager.as_deref() == Some(MANAGER)
            && entry.operation.as_deref() == Some("Apply")
            && let Some(fields) = &entry.fields_v1
        {
            collect_paths(&fields.0, &mut Vec::new(), &mut paths);
        }
    }
    paths
}

fn collect_paths(fields: &Value, prefix: &mut Vec<String>, paths: &mut Vec<Vec<String>>) {
    let children: Vec<(&String, &Value)> = fields
        .as_object()
        .map(|map| {
            map.iter()
                .filter(|(key, _)| key.starts_with("f:"))
                .collect()
        })
        .unwrap_or_default();
    let leaf = fields
        .as_object()
        .is_none_or(|map| map.is_empty() || map.keys().any(|key| !key.starts_with("f:")));
    if leaf {
        if !prefix.is_empty() {
            paths.push(prefix.clone());
        }
        return;
    }
    for (key, child) in children {
        prefix.push(key["f:".len()..].to_string());
        collect_paths(child, prefix, paths);
        prefix.pop();
    }
}

fn value_at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// Whether `live` already holds everything `config` states: each field of `config` is in `live`
/// with the same value (`live` may have more: defaults, status, other managers' fields), and lists
/// have the same length with each item held. Any difference means the configuration is applied again.
pub fn holds(live: &Value, config: &Value) -> bool {
    match (live, config) {
        (Value::Object(live), Value::Object(config)) => config.iter().all(|(key, value)| {
            live.get(key).is_some_and(|held| {
                holds(held, value)
                    || (QUANTITIES.contains(&key.as_str()) && same_quantity(held, value))
            })
        }),
        (Value::Array(live), Value::Array(config)) => {
            live.len() == config.len() && live.iter().zip(config).all(|(l, c)| holds(l, c))
        }
        (live, config) => live == config,
    }
}

/// The fields whose values are quantities, which the API server writes back in their canonical form
/// (`0.5` as `500m`, `1024Mi` as `1Gi`): the same amount is the same value.
const QUANTITIES: [&str; 4] = ["cpu", "memory", "storage", "ephemeral-storage"];

fn same_quantity(live: &Value, config: &Value) -> bool {
    let amount = |v: &Value| v.as_str().and_then(crate::manifests::parse_bytes);
    matches!((amount(live), amount(config)), (Some(a), Some(b)) if a == b)
}

/// A cached object as the JSON the API server sent.
pub fn as_json(object: &DynamicObject) -> Value {
    serde_json::to_value(object).expect("a cached object serialises")
}
