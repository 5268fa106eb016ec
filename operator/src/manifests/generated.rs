//! Secrets the operator generates once and never writes again: each managed service's credentials,
//! RabbitMQ's Erlang cookie and the API's admin key. A Secret that exists is reused as it is, whoever
//! made it.

use super::backing::BackingService;
use super::{Credentials, Inputs, Plan, child_name, metadata};
use crate::crd::ChatSystem;
use crate::kinds::Child;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// One Secret of generated values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GeneratedSecret {
    /// A managed service's user and passwords.
    Credentials(BackingService),
    /// The shared secret of RabbitMQ's Erlang distribution (the broker and its CLI tools). Kept out of
    /// the broker's volume: the kubelet makes a volume's files group-readable, which Erlang refuses.
    ErlangCookie,
    /// The API's admin key, unless the spec names a Secret of the user's.
    AdminKey,
}

impl GeneratedSecret {
    /// Every generated Secret a spec needs: none for a service that is external, nor for one whose
    /// operator makes its own (see [`BackingService::has_generated_credentials`]).
    pub fn needed(cs: &ChatSystem) -> Vec<GeneratedSecret> {
        let mut needed: Vec<GeneratedSecret> = BackingService::ALL
            .into_iter()
            .filter(|s| s.has_generated_credentials(&cs.spec))
            .map(GeneratedSecret::Credentials)
            .collect();
        if BackingService::Rabbitmq.runs_here(&cs.spec) {
            needed.push(GeneratedSecret::ErlangCookie);
        }
        if cs.spec.api.admin_key_secret.is_none() {
            needed.push(GeneratedSecret::AdminKey);
        }
        needed
    }

    pub fn name(self, cs: &ChatSystem) -> String {
        match self {
            GeneratedSecret::Credentials(service) => service.credentials_secret(cs),
            GeneratedSecret::ErlangCookie => child_name(cs, "rabbitmq-cookie"),
            GeneratedSecret::AdminKey => child_name(cs, "api-admin-key"),
        }
    }

    /// The component the values are for, as its objects' labels name it.
    pub fn component(self) -> &'static str {
        match self {
            GeneratedSecret::Credentials(service) => service.name(),
            GeneratedSecret::ErlangCookie => BackingService::Rabbitmq.name(),
            GeneratedSecret::AdminKey => "api",
        }
    }

    /// The backing service whose volume the values open, if any: they then live exactly as long as
    /// it. The others go with the ChatSystem.
    pub fn volume_of(self) -> Option<BackingService> {
        match self {
            GeneratedSecret::Credentials(service) => Some(service),
            GeneratedSecret::ErlangCookie => Some(BackingService::Rabbitmq),
            GeneratedSecret::AdminKey => None,
        }
    }

    pub fn keys(self) -> &'static [&'static str] {
        match self {
            GeneratedSecret::Credentials(service) => service.credential_keys(),
            GeneratedSecret::ErlangCookie => &[ERLANG_COOKIE_KEY],
            GeneratedSecret::AdminKey => &[ADMIN_KEY_KEY],
        }
    }

    /// Its values created once when it is missing, and its labels and owner applied. The owner is
    /// the ChatSystem unless the values open a volume that is kept when the ChatSystem goes, so
    /// re-applying a ChatSystem whose volumes were kept finds both again. The values are never
    /// applied.
    pub fn build(self, cs: &ChatSystem, inputs: &Inputs, plan: &mut Plan) {
        let name = self.name(cs);
        if let Some(Credentials::Generated(values)) = inputs.credentials.get(&self) {
            plan.new_credentials.push(Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(super::namespace(cs)),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".to_string()),
                string_data: Some(values.clone()),
                ..Secret::default()
            });
        }
        if inputs.credentials.contains_key(&self) {
            let mut metadata = metadata(cs, &name, self.component());
            let kept = self
                .volume_of()
                .is_some_and(|service| !service.spec(&cs.spec).delete_claims_on_removal);
            if kept {
                metadata.owner_references = None;
            }
            plan.children.push(Child::Secret(Secret {
                metadata,
                ..Secret::default()
            }));
        }
    }

    /// Fresh values: 32 random alphanumerics each (URL-safe, since credentials go into connection
    /// URLs), and the user name `chatsys`.
    pub fn generate(self) -> BTreeMap<String, String> {
        self.keys()
            .iter()
            .map(|key| {
                let value = if *key == "username" {
                    "chatsys".to_string()
                } else {
                    random_alphanumerics()
                };
                (key.to_string(), value)
            })
            .collect()
    }
}

/// The key of the Erlang cookie's Secret.
pub const ERLANG_COOKIE_KEY: &str = "cookie";
/// The key of the generated admin key's Secret.
pub const ADMIN_KEY_KEY: &str = "admin-key";

fn random_alphanumerics() -> String {
    use rand::RngExt;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}
