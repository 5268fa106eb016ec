//! The chatsys operator: reconciles `ChatSystem` resources into the workloads of a chat system.

pub mod apis;
pub mod children;
pub mod controller;
pub mod crd;
pub mod error;
pub mod kinds;
pub mod leader;
pub mod manifests;
pub mod metrics;
pub mod rbac;
pub mod render;
pub mod schema;
pub mod scope;
pub mod server;
pub mod status;
pub mod unreadable;
pub mod upgrades;

use kube::CustomResourceExt;

/// The CustomResourceDefinition of `ChatSystem`, as committed in `crds/`. Written by an emitter that
/// quotes what YAML 1.1 readers such as kubectl would take for another type (`yes`, `on`).
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&crd::ChatSystem::crd())
}
